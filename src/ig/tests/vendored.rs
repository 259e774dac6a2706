//! The real packages the tests read are vendored in the repository, byte for byte as their
//! README records them (a clone without `../shared` must pass).

use super::*;

/// `(file, sha256)` for every `.tgz` row of `fixtures/ig/real/README.md`'s origin table.
fn readme_rows() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(real("README.md")).expect("fixtures/ig/real/README.md");
    readme
        .lines()
        .filter(|l| l.starts_with("| `") && l.contains(".tgz`"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let file = cells[1].trim_matches('`').to_string();
            let sha = cells[cells.len() - 2].to_string();
            (file, sha)
        })
        .collect()
}

#[test]
fn real_packages_are_vendored_with_the_readme_sha256() {
    let rows = readme_rows();
    for name in [
        "hl7.fhir.us.core-3.1.1.tgz",
        "hl7.fhir.us.core-4.0.0.tgz",
        "hl7.fhir.us.core-6.1.0.tgz",
        "hl7.fhir.us.core-7.0.0.tgz",
    ] {
        let path = real(name);
        assert!(
            path.starts_with(env!("CARGO_MANIFEST_DIR")),
            "{} is outside the repository",
            path.display()
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let sha = hex::encode(Sha256::digest(&bytes));
        let (_, want) = rows
            .iter()
            .find(|(f, _)| f == name)
            .unwrap_or_else(|| panic!("{name} is not in the README's table"));
        assert_eq!(&sha, want, "{name}");
    }
}
