//! The external programs the sandbox runs, found and checked before `up` starts anything, so
//! that a missing one is named with the package and the command that installs it (rather
//! than surfacing as a bare `runuser: failed to execute …` half-way through).
//!
//! Each program is looked up in its fixed directory (PostgreSQL's own bin dir, `/usr/sbin`)
//! and in `$PATH`. `FERRY_SANDBOX_PATH` (a `:`-separated list) replaces that whole search,
//! for tests and for installations elsewhere.

use std::path::{Path, PathBuf};

use super::Stack;

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Where a program is looked for, in order.
enum Dir {
    Fixed(&'static str),
    Path,
}

struct Need {
    program: &'static str,
    package: &'static str,
    search: &'static [Dir],
    /// Only needed when ferry runs as root (services then run as `postgres`).
    root_only: bool,
    /// Only the host stack runs it (PostgreSQL and pgBouncer as host processes); the compose
    /// stack runs those in containers from its base image.
    host_only: bool,
}

const NEEDS: &[Need] = &[
    Need {
        program: "initdb",
        package: "postgresql-15",
        search: &[Dir::Fixed(PG_BIN)],
        root_only: false,
        host_only: true,
    },
    Need {
        program: "pg_ctl",
        package: "postgresql-15",
        search: &[Dir::Fixed(PG_BIN)],
        root_only: false,
        host_only: true,
    },
    Need {
        program: "psql",
        package: "postgresql-client-15",
        search: &[Dir::Path, Dir::Fixed(PG_BIN)],
        root_only: false,
        host_only: true,
    },
    Need {
        program: "pgbouncer",
        package: "pgbouncer",
        search: &[Dir::Fixed("/usr/sbin"), Dir::Path],
        root_only: false,
        host_only: true,
    },
    Need {
        program: "docker-registry",
        package: "docker-registry",
        search: &[Dir::Path],
        root_only: false,
        host_only: false,
    },
    Need {
        program: "htpasswd",
        package: "apache2-utils",
        search: &[Dir::Path],
        root_only: false,
        host_only: false,
    },
    Need {
        program: "docker-compose",
        package: "docker-compose",
        search: &[Dir::Path],
        root_only: false,
        host_only: false,
    },
    Need {
        program: "git",
        package: "git",
        search: &[Dir::Path],
        root_only: false,
        host_only: false,
    },
    Need {
        program: "runuser",
        package: "util-linux",
        search: &[Dir::Path],
        root_only: true,
        host_only: true,
    },
    Need {
        program: "chown",
        package: "coreutils",
        search: &[Dir::Path],
        root_only: true,
        host_only: true,
    },
];

fn is_exec(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The directories searched for `need`, in order.
fn dirs(need: &Need) -> Vec<PathBuf> {
    let split = |v: std::ffi::OsString| std::env::split_paths(&v).collect::<Vec<_>>();
    if let Some(v) = std::env::var_os("FERRY_SANDBOX_PATH") {
        return split(v);
    }
    let path = std::env::var_os("PATH").map(split).unwrap_or_default();
    let mut out = vec![];
    for d in need.search {
        match d {
            Dir::Fixed(f) => out.push(PathBuf::from(f)),
            Dir::Path => out.extend(path.iter().cloned()),
        }
    }
    out
}

fn find(need: &Need) -> Option<PathBuf> {
    dirs(need)
        .into_iter()
        .map(|d| d.join(need.program))
        .find(|p| is_exec(p))
}

/// The full path of a sandbox program (or its bare name when not found: [`check`] has
/// already said so before anything started).
pub fn bin(program: &str) -> String {
    NEEDS
        .iter()
        .find(|n| n.program == program)
        .and_then(find)
        .map_or_else(|| program.to_owned(), |p| p.display().to_string())
}

fn postgres_user_exists() -> bool {
    // SAFETY: getpwnam reads the password database; the name is NUL-terminated.
    unsafe { !libc::getpwnam(c"postgres".as_ptr()).is_null() }
}

/// Every program `sandbox up` of `stack` needs, or an error naming each missing one, its
/// package and how to install it.
pub fn check(root: bool, stack: Stack) -> anyhow::Result<()> {
    let host = stack == Stack::Host;
    let mut missing: Vec<String> = vec![];
    let mut packages: Vec<&str> = vec![];
    for need in NEEDS
        .iter()
        .filter(|n| (root || !n.root_only) && (host || !n.host_only))
    {
        if find(need).is_none() {
            let searched: Vec<String> =
                dirs(need).iter().map(|d| d.display().to_string()).collect();
            missing.push(format!(
                "  {} (Debian package {}): not found in {}",
                need.program,
                need.package,
                if searched.is_empty() {
                    "(empty search path)".to_owned()
                } else {
                    searched.join(":")
                }
            ));
            if !packages.contains(&need.package) {
                packages.push(need.package);
            }
        }
    }
    if host && root && !postgres_user_exists() {
        missing.push(
            "  the `postgres` user, which runs PostgreSQL and pgBouncer (Debian package postgresql-15 creates it)"
                .into(),
        );
        if !packages.contains(&"postgresql-15") {
            packages.push("postgresql-15");
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "the sandbox needs programs that are not installed (nothing was started):\n{}\n\
         install them with `scripts/setup-deps` (or `apt-get install {}`)",
        missing.join("\n"),
        packages.join(" ")
    )
}
