//! The base image of the compose stack's nginx, pgBouncer and PostgreSQL containers, built
//! from Debian packages by scripts/build-base-image (debootstrap + `docker import`; there is no
//! registry to pull from). The recipe is embedded, so an installed ferry builds the same image
//! (its tag is a hash of the recipe) without a checkout; the script caches by that tag and
//! serialises concurrent builds with a lock file, so tests, the demo and CI build it once.
//! `FERRY_SANDBOX_BASE_IMAGE` names an image to use instead (it must exist).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use super::proc;

pub const RECIPE: &str = include_str!("../../scripts/build-base-image");

/// The base image's name, built first when it is not on this Docker host.
pub fn ensure(work: &Path) -> anyhow::Result<String> {
    if let Ok(name) = std::env::var("FERRY_SANDBOX_BASE_IMAGE") {
        let mut c = Command::new("docker");
        c.args(["image", "inspect", "--format", "{{.Id}}", &name]);
        proc::run(c, "docker image inspect").with_context(|| {
            format!("FERRY_SANDBOX_BASE_IMAGE={name} is not on this Docker host: unset it to build the base image, or run scripts/build-base-image")
        })?;
        return Ok(name);
    }
    // The script hashes its own text ($0): written out byte for byte, it finds the image the
    // checkout's copy built, and the other way round.
    let script = work.join("build-base-image");
    std::fs::write(&script, RECIPE)?;
    let mut c = Command::new("bash");
    c.arg(&script);
    let out = proc::run(c, "scripts/build-base-image (debootstrap bookworm + docker import)")
        .context("building the sandbox's base image: is `debootstrap` installed (scripts/setup-deps) and the Debian mirror reachable?")?;
    std::fs::remove_file(&script)?;
    match out.lines().last().map(str::trim) {
        Some(name) if name.starts_with("ferry-sandbox-base:") => Ok(name.to_owned()),
        _ => bail!("scripts/build-base-image printed no image name: {out}"),
    }
}

/// The image id of `name` (the data cache's key holds it: a rebuilt image is another cache).
pub fn id(name: &str) -> anyhow::Result<String> {
    let mut c = Command::new("docker");
    c.args(["image", "inspect", "--format", "{{.Id}}", name]);
    Ok(proc::run(c, "docker image inspect")?.trim().to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_recipe_names_the_packages_the_containers_run() {
        for p in [
            "nginx-light",
            "postgresql-15",
            "pgbouncer",
            "--variant=minbase",
            "flock",
        ] {
            assert!(super::RECIPE.contains(p), "{p}");
        }
    }
}
