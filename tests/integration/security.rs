//! The guarantees of README's "Security" section: `{{ … }}` quoted for the shell and for SQL
//! (a `--var` cannot add a command or a statement), passwords refused wherever a URL could
//! carry one, secrets masked in every output, `env_set` showing no secret value, and
//! read-only EXPLAIN checks that cannot run side-effecting functions.

use crate::harness::{Pg, Sandbox};

const GREETING: &str = r#"name = "greet"
[vars]
greeting = "hello"
[[steps]]
id = "write-greeting"
kind = "exec"
check = "echo checking {{ greeting }}"
run = "echo {{ greeting }} >> g.txt"
done_if = "grep -qxF -- {{ greeting }} g.txt 2>/dev/null"
undo = "grep -vxF -- {{ greeting }} g.txt > g.new; mv g.new g.txt"
"#;

#[test]
fn a_var_cannot_add_a_shell_command() {
    let sb = Sandbox::new();
    sb.write("pb.toml", GREETING);
    let evil = "greeting=x; touch pwned";
    sb.run(&["run", "pb.toml", "--dry-run", "--var", evil])
        .expect(0);
    assert!(!sb.path("pwned").exists(), "dry-run's check ran the --var");
    sb.run(&["run", "pb.toml", "--var", evil]).expect(0);
    assert!(!sb.path("pwned").exists(), "run ran the --var");
    assert_eq!(sb.read("g.txt"), "x; touch pwned\n");
    let quote = "greeting=it's $(touch pwned2) `touch pwned3`";
    sb.run(&["run", "pb.toml", "--var", quote]).expect(0);
    assert_eq!(
        sb.read("g.txt"),
        "x; touch pwned\nit's $(touch pwned2) `touch pwned3`\n"
    );
    let id = sb.run_ids().pop().unwrap();
    sb.run(&["rollback", &id]).expect(0);
    assert_eq!(
        sb.read("g.txt"),
        "x; touch pwned\n",
        "undo removed exactly its line"
    );
    for f in ["pwned", "pwned2", "pwned3"] {
        assert!(!sb.path(f).exists(), "{f}");
    }
}

#[test]
fn raw_is_a_located_warning_and_quotes_around_a_placeholder_an_error() {
    let sb = Sandbox::new();
    sb.write(
        "pb.toml",
        "name = \"raw\"\n[vars]\nflags = \"-n\"\n[[steps]]\nid = \"a\"\nkind = \"exec\"\nrun = \"echo {{ flags | raw }} hi\"\n",
    );
    let out = sb.run(&["validate", "pb.toml"]);
    out.expect(0);
    assert!(
        out.stdout
            .contains("warning: `flags | raw` is pasted unquoted into a shell command")
            && out.stdout.contains("pb.toml:7:13"),
        "{}",
        out.stdout
    );
    sb.write(
        "pb.toml",
        "name = \"q\"\n[vars]\ng = \"x\"\n[[steps]]\nid = \"a\"\nkind = \"exec\"\nrun = \"echo '{{ g }}'\"\n",
    );
    let out = sb.run(&["validate", "pb.toml"]);
    out.expect(2);
    assert!(
        out.stderr.contains("inside single quotes"),
        "{}",
        out.stderr
    );
}

/// A cluster with database `app` owned by `hapi` and a target for it.
fn pg_target(pw: &str) -> Option<(Pg, Sandbox)> {
    Pg::with_app_db("app", pw)
}

const PW: &str = "Sec-Planted-7c1d2e";

#[test]
fn a_var_cannot_add_an_sql_statement() {
    let Some((pg, sb)) = pg_target(PW) else {
        return;
    };
    let env = [("FHIR_DB_PASSWORD", PW)];
    pg.psql(
        "app",
        "CREATE TABLE important (id int); CREATE TABLE notes (note text); ALTER TABLE important OWNER TO hapi; ALTER TABLE notes OWNER TO hapi",
    );
    sb.write(
        "pb.toml",
        "name = \"note\"\n[vars]\nnote = \"hi\"\ntable = \"notes\"\n[[steps]]\nid = \"note\"\nkind = \"sql\"\ndatabase = \"fhir\"\ncheck = \"SELECT {{ note }} IS NOT NULL\"\nstatement = \"INSERT INTO {{ table | ident }} VALUES ({{ note }})\"\nverify = \"SELECT count(*) = 1 FROM notes WHERE note = {{ note }}\"\nrollback = \"DELETE FROM notes WHERE note = {{ note }}\"\n",
    );
    let evil = "note=x'); DROP TABLE important; --";
    let out = sb.run_env(
        &["run", "pb.toml", "--target", "target.toml", "--var", evil],
        &env,
    );
    out.expect(0);
    assert_eq!(
        pg.psql("app", "SELECT to_regclass('public.important') IS NOT NULL"),
        "t",
        "the table survived"
    );
    assert_eq!(
        pg.psql("app", "SELECT note FROM notes"),
        "x'); DROP TABLE important; --"
    );
    let back = "note=a\\'); DROP TABLE important; --";
    sb.run_env(
        &["run", "pb.toml", "--target", "target.toml", "--var", back],
        &env,
    )
    .expect(0);
    assert_eq!(pg.psql("app", "SELECT count(*) FROM notes"), "2");
    assert_eq!(
        pg.psql("app", "SELECT to_regclass('public.important') IS NOT NULL"),
        "t"
    );
    // The old way of writing it, with its own quotes, no longer validates.
    sb.write(
        "old.toml",
        "name = \"note\"\n[vars]\nnote = \"hi\"\n[[steps]]\nid = \"note\"\nkind = \"sql\"\ndatabase = \"fhir\"\nstatement = \"INSERT INTO notes VALUES ('{{ note }}')\"\n",
    );
    let out = sb.run_env(
        &["run", "old.toml", "--target", "target.toml", "--var", evil],
        &env,
    );
    out.expect(2);
    assert!(
        out.stderr.contains("inside a string literal"),
        "{}",
        out.stderr
    );
    assert_eq!(
        pg.psql("app", "SELECT to_regclass('public.important') IS NOT NULL"),
        "t"
    );
}

#[test]
fn a_password_in_a_url_query_or_conninfo_is_refused() {
    let sb = Sandbox::new();
    sb.write(
        "pb.toml",
        "name = \"x\"\n[[steps]]\nid = \"a\"\nkind = \"exec\"\nrun = \"true\"\n",
    );
    for (url, what) in [
        (
            "postgres://hapi@127.0.0.1:1/fhirdb?password=Query-Pw-81c2",
            "this URL carries a password (`password=` parameter)",
        ),
        (
            "host=127.0.0.1 port=1 dbname=fhirdb user=hapi password=Conninfo-Pw-77aa",
            "this connection string carries a password",
        ),
    ] {
        let pw = url.rsplit('=').next().unwrap();
        sb.write(
            "t.toml",
            &format!("name = \"staging\"\n[postgres.fhir]\nurl = \"{url}\"\n"),
        );
        for args in [
            &["validate", "pb.toml", "--target", "t.toml"][..],
            &["run", "pb.toml", "--target", "t.toml", "--format", "json"],
            &[
                "check",
                "connections",
                "--target",
                "t.toml",
                "--format",
                "json",
            ],
        ] {
            let out = sb.run(args);
            out.expect(2);
            assert!(
                out.stderr
                    .contains(&format!("the target must not hold secrets: {what}")),
                "{args:?}: {}",
                out.stderr
            );
            assert!(
                !out.stderr.contains(pw) && !out.stdout.contains(pw),
                "{args:?} shows the password:\n{}{}",
                out.stdout,
                out.stderr
            );
        }
    }
}

#[test]
fn check_json_masks_a_secret_the_plan_quotes() {
    let Some((pg, sb)) = pg_target(PW) else {
        return;
    };
    pg.psql(
        "app",
        "CREATE TABLE demo (id int, v text); INSERT INTO demo SELECT g, 'x' || g FROM generate_series(1, 100) g; ALTER TABLE demo OWNER TO hapi; ANALYZE demo",
    );
    let env = [("FHIR_DB_PASSWORD", PW)];
    // The plan's Seq Scan filter quotes the literal, which is the registered password.
    let query = format!("query=SELECT id FROM demo WHERE v = '{PW}'");
    for format in ["human", "json"] {
        let out = sb.run_env(
            &[
                "check",
                "seqscan",
                "--target",
                "target.toml",
                "--set",
                &query,
                "--set",
                "tables=demo",
                "--format",
                format,
            ],
            &env,
        );
        out.expect(1);
        assert!(
            !out.stdout.contains(PW) && !out.stderr.contains(PW),
            "{format} shows the secret:\n{}{}",
            out.stdout,
            out.stderr
        );
        assert!(out.stdout.contains("***"), "{format}: {}", out.stdout);
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!(v["status"], "alert");
            let filter = v["data"]["seq_scans"][0]["filter"].as_str().unwrap();
            assert!(filter.contains("'***'"), "{filter}");
        }
    }
}

const ENV_ORIG: &str = "# deployment\r\nSPRING_DATASOURCE_PASSWORD=Old-Db-Secret-91f3\nHAPI_IMAGE=reg/hapi:1.0.0\napi_token=\"Old Token-55aa\"";
const ENV_SECRETS: &[&str] = &[
    "Old-Db-Secret-91f3",
    "Old Token-55aa",
    "New-Db-Secret-42c8",
    "New-Token-77bb",
];

fn env_set_playbook(boom: bool) -> String {
    // (A secret given as --var would be journaled as given: resume needs it. README says so.)
    let mut pb = "name = \"env\"\n[vars]\ndb_password = \"New-Db-Secret-42c8\"\ntag = { required = true }\n[[steps]]\nid = \"creds\"\nkind = \"env_set\"\nset = { SPRING_DATASOURCE_PASSWORD = \"{{ db_password }}\", HAPI_IMAGE = \"reg/hapi:{{ tag }}\", api_token = \"New-Token-77bb\" }\n".to_owned();
    if boom {
        pb += "[[steps]]\nid = \"boom\"\nkind = \"exec\"\nrun = \"exit 9\"\n";
    }
    pb
}

fn no_env_secret_in(sb: &Sandbox, what: &str, text: &str) {
    for s in ENV_SECRETS {
        assert!(!text.contains(s), "{what} shows {s}:\n{text}");
    }
    let _ = sb;
}

#[test]
fn env_set_masks_secret_values_and_journals_none_yet_restores_them() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    sb.write("files/.env", ENV_ORIG);
    sb.write("t.toml", "name = \"t\"\n[files]\nroot = \"files\"\n");
    sb.write("pb.toml", &env_set_playbook(true));
    let var = "tag=1.1.0";
    let base = ["run", "pb.toml", "--target", "t.toml", "--var", var];
    // Dry-run, human: old → new with the secrets masked, the image shown.
    let mut args = base.to_vec();
    args.push("--dry-run");
    let out = sb.run(&args);
    out.expect(0);
    no_env_secret_in(&sb, "dry-run", &format!("{}{}", out.stdout, out.stderr));
    assert!(
        out.stderr.contains("SPRING_DATASOURCE_PASSWORD: *** → ***")
            && out.stderr.contains("api_token: *** → ***")
            && out
                .stderr
                .contains("HAPI_IMAGE: reg/hapi:1.0.0 → reg/hapi:1.1.0"),
        "{}",
        out.stderr
    );
    // A run that fails after the edit and rolls back: JSON and JUnit show no value.
    let mut args = base.to_vec();
    args.extend(["--format", "json", "--junit", "j.xml"]);
    let out = sb.run(&args);
    out.expect(1);
    no_env_secret_in(&sb, "json", &format!("{}{}", out.stdout, out.stderr));
    no_env_secret_in(&sb, "junit", &sb.read("j.xml"));
    let detail = out
        .events()
        .into_iter()
        .find(|e| e["event"] == "check" && e["step"] == "creds")
        .map(|e| e["detail"].as_str().unwrap_or("").to_owned())
        .unwrap();
    assert!(
        detail.contains("SPRING_DATASOURCE_PASSWORD: *** → ***"),
        "{detail}"
    );
    assert_eq!(
        std::fs::read(sb.path("files/.env")).unwrap(),
        ENV_ORIG.as_bytes()
    );
    let id = sb.run_ids().pop().unwrap();
    no_env_secret_in(&sb, "the journal", &sb.journal(&id));
    // A run that succeeds keeps the old lines in a 0600 backup beside the journal; the
    // journal names it by path and sha256 only; rollback restores byte for byte.
    sb.write("pb.toml", &env_set_playbook(false));
    sb.run(&base).expect(0);
    let env_now = sb.read("files/.env");
    assert!(env_now.contains("SPRING_DATASOURCE_PASSWORD=New-Db-Secret-42c8"));
    let id = sb.run_ids().pop().unwrap();
    let journal = sb.journal(&id);
    no_env_secret_in(&sb, "the journal", &journal);
    assert!(journal.contains("sha256"), "{journal}");
    let backup = sb
        .state
        .join(format!("runs/{id}/backup/creds.env-lines.json"));
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        std::fs::read_to_string(&backup)
            .unwrap()
            .contains("Old-Db-Secret-91f3")
    );
    let out = sb.run(&["rollback", &id, "--format", "json"]);
    out.expect(0);
    no_env_secret_in(&sb, "rollback", &format!("{}{}", out.stdout, out.stderr));
    assert_eq!(
        std::fs::read(sb.path("files/.env")).unwrap(),
        ENV_ORIG.as_bytes()
    );
    assert!(!backup.exists(), "the backup goes once the lines are back");
    no_env_secret_in(&sb, "the journal", &sb.journal(&id));
    let leftovers: Vec<_> = std::fs::read_dir(sb.path("files"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn explain_checks_do_not_run_volatile_functions() {
    let Some((pg, sb)) = pg_target(PW) else {
        return;
    };
    pg.psql(
        "app",
        "CREATE TABLE hfj_resource (res_id bigint, res_type text); INSERT INTO hfj_resource SELECT g, 'Patient' FROM generate_series(1, 500) g; ALTER TABLE hfj_resource OWNER TO hapi; ANALYZE hfj_resource",
    );
    let env = [("FHIR_DB_PASSWORD", PW)];
    // A second session of the same role, which pg_terminate_backend may end.
    let url = format!("{}?application_name=ferry-victim", pg.url("hapi", "app"));
    let mut victim = std::process::Command::new("psql")
        .args([url.as_str(), "-XAtq", "-c", "SELECT pg_sleep(120)"])
        .env("PGPASSWORD", PW)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    let alive = |pg: &Pg| {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ferry-victim'",
        ) == "1"
    };
    crate::harness::wait_for(
        "the second session",
        std::time::Duration::from_secs(20),
        || alive(&pg),
    );
    let kill = "query=SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'ferry-victim'";
    let out = sb.run_env(
        &[
            "check",
            "seqscan",
            "--target",
            "target.toml",
            "--set",
            kill,
            "--format",
            "json",
        ],
        &env,
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let survived = alive(&pg) && victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(
        survived,
        "the check terminated the other session\n{}",
        out.stdout
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect(&out.stdout);
    let summary = v["summary"].as_str().unwrap();
    assert!(
        summary.contains("not ANALYZEd") && summary.contains("pg_terminate_backend("),
        "{summary}"
    );
    assert_eq!(v["data"]["analyzed"], false);
    // A harmless query is still ANALYZEd, and sees the Seq Scan.
    let out = sb.run_env(
        &[
            "check",
            "seqscan",
            "--target",
            "target.toml",
            "--set",
            "query=SELECT res_id FROM hfj_resource WHERE res_type = 'Patient' AND random() < 2",
            "--format",
            "json",
        ],
        &env,
    );
    out.expect(1);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["data"]["analyzed"], true, "{}", out.stdout);
    assert_eq!(v["data"]["seq_scans"][0]["actual_rows"], 500.0);
    // A data-modifying CTE is refused before anything is sent.
    let out = sb.run_env(
        &[
            "check",
            "seqscan",
            "--target",
            "target.toml",
            "--set",
            "query=WITH d AS (DELETE FROM hfj_resource RETURNING *) SELECT * FROM d",
        ],
        &env,
    );
    out.expect(3);
    assert!(
        out.stdout.contains("`DELETE` changes data"),
        "{}",
        out.stdout
    );
    assert_eq!(pg.psql("app", "SELECT count(*) FROM hfj_resource"), "500");
    // The step says the same in its check detail.
    sb.write(
        "pb.toml",
        "name = \"x\"\n[[steps]]\nid = \"plan\"\nkind = \"explain_seqscan\"\ndatabase = \"fhir\"\nquery = \"SELECT nextval('s') FROM hfj_resource\"\nexpect = \"seqscan\"\n",
    );
    pg.psql("app", "CREATE SEQUENCE s; ALTER SEQUENCE s OWNER TO hapi");
    let out = sb.run_env(
        &["run", "pb.toml", "--target", "target.toml", "--dry-run"],
        &env,
    );
    out.expect(0);
    assert!(
        out.stderr
            .contains("not ANALYZEd: the query calls volatile nextval(regclass)"),
        "{}",
        out.stderr
    );
    assert_eq!(pg.psql("app", "SELECT last_value FROM s"), "1");
    assert_eq!(
        pg.psql("app", "SELECT is_called FROM s"),
        "f",
        "nextval never ran"
    );
}
