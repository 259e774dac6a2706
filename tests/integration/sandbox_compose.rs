//! `ferry sandbox up --stack compose`: the seed's compose stack for real. nginx (from the
//! debootstrap base image) routes to every `hapi` replica and learns a replaced replica's
//! address (a rolling redeploy under a probe loop through nginx: no failed request);
//! pgbouncer-fhir, postgres-fhir and postgres-audit are healthy containers; the admin console
//! answers on 127.0.0.1; the target file works for `ferry check` and metadata_check; `down`
//! leaves no container, network, volume or image. Docker: in the nextest `docker` group.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::Playbook;
use crate::sandbox::{Sbx, docker};

/// `127.0.0.1:PORT` of the base URL.
fn front_door(s: &Sbx) -> String {
    let base = s.base_url();
    base.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

/// One `GET /fhir/metadata` through nginx on a fresh connection: the status line and the
/// `X-Upstream` header nginx adds (the replica's address that answered).
fn get_metadata(addr: &str) -> Result<(u16, String), String> {
    let mut c = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        b"GET /fhir/metadata HTTP/1.0\r\nHost: sandbox\r\nAccept: application/fhir+json\r\n\r\n",
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {text:.200}"))?;
    let upstream = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Upstream: "))
        .unwrap_or("")
        .trim()
        .to_owned();
    Ok((status, upstream))
}

/// The replicas' addresses on the frontend network, as nginx sees them (`IP:8080`). Read
/// from Docker, never connected to: the host only talks to 127.0.0.1.
fn frontend_addresses(s: &Sbx) -> BTreeSet<String> {
    let net = format!("{}_frontend", s.project());
    s.replicas()
        .iter()
        .map(|(name, _, _)| {
            let f = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
            format!("{}:8080", docker(&["inspect", "--format", &f, name]))
        })
        .collect()
}

/// The distinct upstreams of `n` requests through nginx (each must answer 200).
fn upstreams_seen(addr: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            let (code, up) = get_metadata(addr).unwrap();
            assert_eq!(code, 200, "through nginx ({up})");
            up
        })
        .collect()
}

#[test]
fn sandbox_compose_nginx_routes_to_every_replica_and_a_rolling_redeploy_fails_no_request() {
    let Some(s) = Sbx::up_compose(3) else { return };
    let addr = front_door(&s);
    let before = frontend_addresses(&s);
    assert_eq!(before.len(), 3, "{before:?}");
    // Docker's DNS rotates the replicas' addresses: 60 requests reach all three.
    assert_eq!(upstreams_seen(&addr, 60), before);

    // A rolling redeploy (a new tag of the running image: every replica is a new container)
    // under a back-to-back probe through nginx.
    let current = s.state()["image"].as_str().unwrap().to_owned();
    let promoted = format!("{current}-redeploy");
    docker(&["tag", &current, &promoted]);
    Playbook::new("redeploy")
        .step("rollout", "rolling_redeploy")
        .str("image", &promoted)
        .str("verify_version", "0.2.1")
        .str("health_timeout", "60s")
        .write(&s.sb, "redeploy.toml");
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (stop, addr) = (stop.clone(), addr.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match get_metadata(&addr) {
                    Ok((200, _)) => ok += 1,
                    Ok((code, up)) => failed.push(format!("HTTP {code} from {up:?}")),
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        })
    };
    let old_ids: BTreeSet<String> = s.replicas().into_iter().map(|r| r.2).collect();
    let out = s.run(&["run", "redeploy.toml"]);
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = probe.join().unwrap();
    out.expect(0);
    assert!(
        failed.is_empty(),
        "{} of {} requests through nginx failed during the redeploy: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 0, "the probe ran");
    let new_ids: BTreeSet<String> = s.replicas().into_iter().map(|r| r.2).collect();
    assert_eq!(new_ids.len(), 3);
    assert!(old_ids.is_disjoint(&new_ids), "every replica was replaced");
    // nginx sends to the new replicas' addresses (resolved per request), and only to them.
    let after = frontend_addresses(&s);
    assert_eq!(upstreams_seen(&addr, 60), after);
    let _ = Command::new("docker").args(["rmi", &promoted]).output();
    s.finish();
}

/// psql against a published port of the sandbox (127.0.0.1), as `user` with `password_env`
/// from secrets.env.
fn psql_at(s: &Sbx, port: &str, user: &str, password_env: &str, db: &str, sql: &str) -> String {
    let secrets = std::fs::read_to_string(s.dir.join("secrets.env")).unwrap();
    let pw = secrets
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{password_env}=")))
        .unwrap()
        .to_owned();
    let o = Command::new("psql")
        .env("PGPASSWORD", pw)
        .args(["-h", "127.0.0.1", "-p", port, "-U", user, "-d", db])
        .args(["-XAtq", "-F", "|", "-c", sql])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{sql} on {port}/{db}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// The port of `[section] key = "…127.0.0.1:PORT/…"` in the target file.
fn target_port(s: &Sbx, key_prefix: &str) -> String {
    let t = std::fs::read_to_string(s.target()).unwrap();
    let line = t
        .lines()
        .find(|l| l.starts_with(key_prefix))
        .unwrap_or_else(|| panic!("{key_prefix} in {t}"));
    let after = line.split("127.0.0.1:").nth(1).unwrap();
    after
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
}

#[test]
fn sandbox_compose_databases_and_pgbouncer_are_healthy_containers_reached_on_loopback() {
    let Some(s) = Sbx::up_compose(1) else { return };
    let project = s.project();
    for svc in ["nginx", "pgbouncer-fhir", "postgres-fhir", "postgres-audit"] {
        let name = format!("{project}_{svc}_1");
        assert_eq!(
            docker(&["inspect", "--format", "{{.State.Health.Status}}", &name]),
            "healthy",
            "{name}"
        );
        // Published on 127.0.0.1 only.
        let ports = docker(&["port", &name]);
        assert!(
            !ports.is_empty() && ports.lines().all(|l| l.contains("-> 127.0.0.1:")),
            "{name}: {ports}"
        );
        // The databases keep their data in named volumes of the project (and see the shared
        // data cache they were copied from: postgres-entrypoint.sh).
        if svc.starts_with("postgres") {
            let vols = docker(&[
                "inspect",
                "--format",
                "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}}={{.Destination}} {{end}}{{end}}",
                &name,
            ]);
            let mut vols: Vec<&str> = vols.split_whitespace().collect();
            vols.sort();
            let db = svc.trim_start_matches("postgres-");
            assert_eq!(vols.len(), 2, "{name}: {vols:?}");
            assert!(
                vols[0].starts_with(&format!("ferry-sandbox-pgcache-{db}-"))
                    && vols[0].ends_with("=/var/lib/ferry/cache"),
                "{name}: {vols:?}"
            );
            assert_eq!(
                vols[1],
                format!("{project}_{svc}-data=/var/lib/postgresql/data"),
                "{name}"
            );
        }
    }
    // The admin console on 127.0.0.1: SHOW POOLS has HAPI's pool, the size is the env's.
    let bouncer = target_port(&s, "admin_url");
    let pools = psql_at(
        &s,
        &bouncer,
        "pgbouncer_admin",
        "SANDBOX_PGBOUNCER_PASSWORD",
        "pgbouncer",
        "SHOW POOLS",
    );
    assert!(
        pools.lines().any(|l| l.starts_with("fhirdb|hapi|")),
        "{pools}"
    );
    let config = psql_at(
        &s,
        &bouncer,
        "pgbouncer_admin",
        "SANDBOX_PGBOUNCER_PASSWORD",
        "pgbouncer",
        "SHOW CONFIG",
    );
    assert!(
        config
            .lines()
            .any(|l| l.starts_with("default_pool_size|20|")),
        "{config}"
    );
    // postgres-fhir: max_connections from the mounted postgresql.conf, HAPI's schema loaded
    // and owned by hapi; postgres-audit: the partitioned audit schema.
    let pg = target_port(&s, "url = \"postgres://hapi@");
    assert_eq!(s.psql("SHOW max_connections"), "30");
    assert_eq!(
        psql_at(
            &s,
            &pg,
            "hapi",
            "SANDBOX_FHIR_DB_PASSWORD",
            "fhirdb",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'hfj_resource'"
        ),
        "hapi"
    );
    let audit = target_port(&s, "url = \"postgres://audit_maintainer_login@");
    assert_ne!(audit, pg, "auditdb is its own container");
    assert_eq!(
        psql_at(
            &s,
            &audit,
            "audit_maintainer_login",
            "SANDBOX_AUDIT_DB_PASSWORD",
            "auditdb",
            "SELECT count(*) > 0 FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'audit_events'"
        ),
        "t"
    );
    // The target file works: checks on both databases, metadata through nginx and per replica.
    for check in ["connections", "audit-partitions"] {
        let out = s.run(&["check", check]);
        out.expect(0);
        assert!(out.stdout.contains("OK"), "{check}: {}", out.stdout);
    }
    Playbook::new("each")
        .step("each", "metadata_check")
        .raw("per_replica", "true")
        .str("expect_version", "0.2.1")
        .write(&s.sb, "each.toml");
    s.run(&["run", "each.toml"]).expect(0);
    let st =
        s.sb.run(&["sandbox", "status", "--dir", s.dir.to_str().unwrap()]);
    st.expect(0);
    for c in [
        "nginx",
        "pgbouncer-fhir",
        "postgres-fhir",
        "postgres-audit",
        "registry",
    ] {
        assert!(
            st.stdout
                .lines()
                .any(|l| l.contains(c) && l.contains(" up ")),
            "{c}: {}",
            st.stdout
        );
    }
    s.finish();
}

/// The data cache volumes the compose file of `s` names: `[fhir, audit]`.
fn cache_volumes(s: &Sbx) -> Vec<String> {
    let y = std::fs::read_to_string(s.dir.join("files/docker-compose.yml")).unwrap();
    let names: Vec<String> = y
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name: \"ferry-sandbox-pgcache-"))
        .map(|n| format!("ferry-sandbox-pgcache-{}", n.trim_end_matches('"')))
        .collect();
    assert_eq!(names.len(), 2, "{y}");
    names
}

fn volumes() -> BTreeSet<String> {
    docker(&["volume", "ls", "-q"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What postgres-entrypoint.sh said it did with the data cache of `svc`.
fn cache_use(s: &Sbx, svc: &str) -> &'static str {
    let o = Command::new("docker")
        .args(["logs", &format!("{}_{svc}_1", s.project())])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    match (
        log.contains("filled the data cache"),
        log.contains("copied the cluster from the data cache"),
    ) {
        (true, false) => "filled",
        (false, true) => "copied",
        _ => panic!("{svc}: neither or both in its log:\n{log}"),
    }
}

/// The initialised databases are cached (postgres-entrypoint.sh): the first sandbox of a
/// kind initialises them and fills the cache, the next one copies it and sets its own
/// passwords; a changed input (here the resource count) names another cache. `down` leaves
/// the cache; the test removes the ones it made.
#[test]
fn sandbox_compose_a_second_up_copies_the_data_cache_and_a_changed_input_makes_another() {
    // A resource count no other sandbox uses: this test's fhirdb caches are its own.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let r = 100 + nanos % 900;
    let before = volumes();
    let up =
        |rel: &str, r: u32| Sbx::start(1, rel, "compose", |_| {}, &["--resources", &r.to_string()]);
    let Some(a) = up("sbx-a", r) else { return };
    let caches = cache_volumes(&a);
    assert!(!before.contains(&caches[0]), "{} is new", caches[0]);
    let made: Vec<String> = caches
        .iter()
        .filter(|c| !before.contains(*c))
        .cloned()
        .collect();
    for c in &caches {
        assert_eq!(
            docker(&[
                "volume",
                "inspect",
                "--format",
                "{{index .Labels \"ferry.test\"}}",
                c
            ]),
            "1",
            "{c}: labelled as the sandbox's other objects"
        );
    }
    assert_eq!(cache_use(&a, "postgres-fhir"), "filled");
    assert_eq!(a.psql("SELECT count(*) FROM hfj_resource"), r.to_string());
    let a_password = a.secret("SANDBOX_PG_SUPERUSER_PASSWORD");
    a.finish();
    assert!(
        volumes().is_superset(&caches.iter().cloned().collect()),
        "`down` leaves the cache"
    );

    let Some(b) = up("sbx-b", r) else { return };
    assert_eq!(
        cache_volumes(&b),
        caches,
        "the same inputs name the same cache"
    );
    assert_eq!(cache_use(&b, "postgres-fhir"), "copied");
    assert_eq!(cache_use(&b, "postgres-audit"), "copied");
    assert_eq!(b.psql("SELECT count(*) FROM hfj_resource"), r.to_string());
    // b's own passwords: its superuser's works (psql above), the cache maker's does not, and
    // HAPI's and pgBouncer's (through pgBouncer, the replica is healthy; the admin console).
    let port = b.state()["pg_port"].to_string();
    let o = Command::new("psql")
        .env("PGPASSWORD", &a_password)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "fhirdb",
        ])
        .args(["-XAtqc", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "the cache maker's password is not b's");
    assert_eq!(b.version(), "0.2.1");
    b.finish();

    let Some(c) = up("sbx-c", r + 1) else { return };
    let other = cache_volumes(&c);
    assert_ne!(
        other[0], caches[0],
        "another resource count, another fhirdb cache"
    );
    assert_eq!(other[1], caches[1], "auditdb's does not hold the count");
    assert_eq!(cache_use(&c, "postgres-fhir"), "filled");
    assert_eq!(
        c.psql("SELECT count(*) FROM hfj_resource"),
        (r + 1).to_string()
    );
    c.finish();

    for v in made.iter().chain([&other[0]]) {
        // A cache another sandbox uses right now stays (auditdb's is shared by every one).
        let _ = Command::new("docker").args(["volume", "rm", v]).output();
    }
    assert!(!volumes().contains(&caches[0]) && !volumes().contains(&other[0]));
}
