//! IG package integration tests. The `ferry ig` CLI is wired on another branch; until
//! then the behavioural tests live in `src/ig/tests.rs`. This module only checks that the
//! committed fixtures exist where those tests expect them.

use std::path::Path;

#[test]
fn fixtures_are_committed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ig");
    for name in [
        "bd.gov.dghs.core-0.2.1.tgz",
        "bd.gov.dghs.core-0.2.2.tgz",
        "bd.gov.dghs.core-0.3.0.tgz",
    ] {
        assert!(dir.join(name).is_file(), "missing fixture {name}");
    }
}
