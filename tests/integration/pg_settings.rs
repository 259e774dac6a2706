//! `pgbouncer_pool` and `pg_setting` against a real PostgreSQL 15 cluster with a real
//! pgBouncer (transaction pooling) in front of it, both started by the test. The cluster's
//! max_connections lives in postgresql.conf (not on the command line, where ALTER SYSTEM
//! could not override it) and it is restarted by a `pg_ctl restart` command the target
//! names. A client loop queries through pgBouncer during every restart: none may fail.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{
    HAPI_PW, Leftover, PG_SUPERUSER_PW, Pg, Sandbox, free_port, pid_alive, wait_for,
};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const BOUNCER_PW: &str = "bouncer-admin-pw-31f7";

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command as the cluster's owner (postgres when the tests run as root).
fn as_owner(prog: &str) -> Command {
    if root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", prog]);
        c
    } else {
        Command::new(prog)
    }
}

fn shell_as_owner(cmd: &str) -> String {
    if root() {
        format!("runuser -u postgres -- {cmd}")
    } else {
        cmd.to_owned()
    }
}

struct Stack {
    pg: Pg,
    sb: Sandbox,
    bouncer_dir: tempfile::TempDir,
    bouncer_port: u16,
    bouncer_pid: u32,
}

impl Stack {
    /// The cluster (fhirdb owned by hapi; max_connections = 30 in postgresql.conf) and
    /// pgBouncer (default_pool_size = 20) in front of it; the target names both, with
    /// `restart` as the cluster's restart_command (None: the pg_ctl restart).
    fn start(restart: Option<&str>) -> Option<Stack> {
        Stack::start_with(|pg_restart| restart.map_or(pg_restart.to_owned(), str::to_owned))
    }

    /// As [`Stack::start`], the restart_command made from the pg_ctl restart by `restart`.
    fn start_with(restart: impl FnOnce(&str) -> String) -> Option<Stack> {
        let pg = Pg::start()?;
        pg.psql(
            "postgres",
            &format!("CREATE ROLE hapi LOGIN PASSWORD '{HAPI_PW}'"),
        );
        pg.psql("postgres", "CREATE DATABASE fhirdb OWNER hapi");
        let dir = pg.dir.path().to_owned();
        let data = dir.join("data");
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        let ok = as_owner(&pg_ctl)
            .args(["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"])
            .status()
            .unwrap();
        assert!(ok.success());
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nmax_connections = 30\n");
        std::fs::write(&conf, text).unwrap();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            pg.port,
            dir.display()
        );
        let log = dir.join("pg.log");
        let out = as_owner(&pg_ctl)
            .args(["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()])
            .args(["-w", "-t", "30", "-o", &opts, "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(pg.psql("postgres", "SHOW max_connections"), "30");

        let bouncer_dir = tempfile::Builder::new()
            .prefix("ferry-bouncer-")
            .tempdir()
            .unwrap();
        let b = bouncer_dir.path();
        let bouncer_port = free_port();
        std::fs::write(
            b.join("pgbouncer.ini"),
            format!(
                "[databases]\nfhirdb = host=127.0.0.1 port={} dbname=fhirdb\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {bouncer_port}\nunix_socket_dir =\n\
                 auth_type = scram-sha-256\nauth_file = {d}/userlist.txt\nadmin_users = pgbouncer_admin\n\
                 pool_mode = transaction\ndefault_pool_size = 20\nmax_client_conn = 200\n\
                 logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
                pg.port,
                d = b.display()
            ),
        )
        .unwrap();
        std::fs::write(
            b.join("userlist.txt"),
            format!("\"hapi\" \"{HAPI_PW}\"\n\"pgbouncer_admin\" \"{BOUNCER_PW}\"\n"),
        )
        .unwrap();
        if root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(b)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let out = as_owner("pgbouncer")
            .arg("-d")
            .arg(b.join("pgbouncer.ini"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbouncer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pidfile = b.join("pgbouncer.pid");
        wait_for("pgBouncer's pidfile", Duration::from_secs(10), || {
            std::fs::read_to_string(&pidfile).is_ok_and(|s| s.trim().parse::<u32>().is_ok())
        });
        let bouncer_pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_for("pgBouncer's port", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", bouncer_port)).is_ok()
        });

        let sb = Sandbox::new();
        let pg_restart = shell_as_owner(&format!(
            "{pg_ctl} -D {} -l {} -m fast -w -t 60 restart",
            data.display(),
            log.display()
        ));
        let restart = restart(&pg_restart);
        sb.write(
            "target.toml",
            &format!(
                "name = \"test\"\n\n[postgres.fhir]\nurl = \"{}\"\npassword_env = \"FHIR_DB_PASSWORD\"\n\n\
                 [postgres.fhir_admin]\nurl = \"{}\"\npassword_env = \"PG_SUPERUSER_PASSWORD\"\nrestart_command = {}\n\n\
                 [postgres.no_restart]\nurl = \"{}\"\npassword_env = \"PG_SUPERUSER_PASSWORD\"\n\n\
                 [pgbouncer]\nadmin_url = \"postgres://pgbouncer_admin@127.0.0.1:{bouncer_port}/pgbouncer\"\n\
                 password_env = \"PGBOUNCER_ADMIN_PASSWORD\"\nini_path = {}\npool_size_key = \"PGBOUNCER_DEFAULT_POOL_SIZE\"\n\n\
                 [files]\nroot = \".\"\n",
                pg.url("hapi", "fhirdb"),
                pg.url("postgres", "fhirdb"),
                crate::harness::toml_str(&restart),
                pg.url("postgres", "fhirdb"),
                crate::harness::toml_str(&b.join("pgbouncer.ini").display().to_string()),
            ),
        );
        sb.write(
            ".env",
            "COMPOSE_PROJECT_NAME=bd\nPGBOUNCER_DEFAULT_POOL_SIZE=20\n",
        );
        Some(Stack {
            pg,
            sb,
            bouncer_dir,
            bouncer_port,
            bouncer_pid,
        })
    }

    fn env(&self) -> [(&'static str, &'static str); 3] {
        [
            ("FHIR_DB_PASSWORD", HAPI_PW),
            ("PG_SUPERUSER_PASSWORD", PG_SUPERUSER_PW),
            ("PGBOUNCER_ADMIN_PASSWORD", BOUNCER_PW),
        ]
    }

    fn ferry(&self, args: &[&str]) -> crate::harness::Out {
        self.sb.run_env(args, &self.env())
    }

    fn run(&self, playbook: &str, extra: &[&str]) -> crate::harness::Out {
        self.sb.write("pb.toml", playbook);
        let mut args = vec!["run", "pb.toml", "--target", "target.toml", "--yes"];
        args.extend_from_slice(extra);
        self.ferry(&args)
    }

    fn ini(&self) -> String {
        std::fs::read_to_string(self.bouncer_dir.path().join("pgbouncer.ini")).unwrap()
    }

    /// The messages of each admin-console command, on one connection.
    fn admin(&self, cmds: &[&str]) -> Vec<Vec<tokio_postgres::SimpleQueryMessage>> {
        let url = format!(
            "host=127.0.0.1 port={} user=pgbouncer_admin password={BOUNCER_PW} dbname=pgbouncer",
            self.bouncer_port
        );
        block_on(async {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut out = vec![];
            for q in cmds {
                out.push(c.simple_query(q).await.unwrap());
            }
            out
        })
    }

    /// `SHOW CONFIG`'s default_pool_size and `SHOW DATABASES`' pool_size of fhirdb.
    fn pools(&self) -> (String, String) {
        let mut m = self.admin(&["SHOW CONFIG", "SHOW DATABASES"]).into_iter();
        let find = |msgs: Vec<tokio_postgres::SimpleQueryMessage>, k: &str, kv: &str, v: &str| {
            msgs.into_iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) if r.get(k) == Some(kv) => {
                        r.get(v).map(str::to_owned)
                    }
                    _ => None,
                })
                .unwrap()
        };
        let config = find(m.next().unwrap(), "key", "default_pool_size", "value");
        let db = find(m.next().unwrap(), "name", "fhirdb", "pool_size");
        (config, db)
    }

    /// Whether pgBouncer's fhirdb is paused (`SHOW DATABASES`' `paused`).
    fn paused(&self) -> bool {
        self.admin(&["SHOW DATABASES"])
            .remove(0)
            .into_iter()
            .any(|m| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(r)
                    if r.get("name") == Some("fhirdb") && r.get("paused") == Some("1"))
            })
    }

    fn auto_conf_lines(&self) -> String {
        self.pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'",
        )
    }

    /// Stops pgBouncer (started by the test, by its pid), then checks the cluster and the
    /// sandbox leave nothing behind.
    fn finish(self) {
        // SAFETY: plain syscall on the pid of the pgBouncer this test started.
        unsafe { libc::kill(self.bouncer_pid as i32, libc::SIGINT) };
        wait_for("pgBouncer to exit", Duration::from_secs(10), || {
            !pid_alive(self.bouncer_pid)
        });
        let more = vec![
            Leftover::process(self.bouncer_pid),
            Leftover::Path(self.bouncer_dir.path().to_owned()),
        ];
        wait_for(
            "pgBouncer's sessions to end",
            Duration::from_secs(10),
            || {
                self.pg.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            ) == "0"
            },
        );
        let Stack {
            pg,
            sb,
            bouncer_dir,
            ..
        } = self;
        drop(bouncer_dir);
        pg.finish(sb, &[], more);
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Clients querying through pgBouncer until stopped: every query that fails is recorded.
struct Clients {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Stats {
    ok: u64,
    failed: Vec<String>,
    longest: Duration,
}

impl Clients {
    fn start(port: u16, n: usize) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let url = format!(
            "host=127.0.0.1 port={port} user=hapi password={HAPI_PW} dbname=fhirdb connect_timeout=60"
        );
        let (s2, st2) = (stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            block_on(async move {
                let mut tasks = vec![];
                for _ in 0..n {
                    let (stop, stats, url) = (s2.clone(), st2.clone(), url.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut client = None;
                        while !stop.load(Ordering::SeqCst) {
                            let t0 = Instant::now();
                            let r = async {
                                if client.is_none() {
                                    let (c, conn) =
                                        tokio_postgres::connect(&url, tokio_postgres::NoTls)
                                            .await?;
                                    tokio::spawn(conn);
                                    client = Some(c);
                                }
                                client.as_ref().unwrap().simple_query("SELECT 1").await
                            }
                            .await;
                            let took = t0.elapsed();
                            let failed = {
                                let mut s = stats.lock().unwrap();
                                s.longest = s.longest.max(took);
                                match r {
                                    Ok(_) => {
                                        s.ok += 1;
                                        false
                                    }
                                    Err(e) => {
                                        s.failed.push(e.to_string());
                                        true
                                    }
                                }
                            };
                            if failed {
                                client = None;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            })
        });
        let c = Clients {
            stop,
            stats,
            thread: Some(thread),
        };
        wait_for(
            "the clients' first queries",
            Duration::from_secs(10),
            || c.stats.lock().unwrap().ok >= n as u64,
        );
        c
    }

    /// The clients go on querying (ten more answered), then stop: none of theirs failed.
    fn recovered_then_stop(self) -> Stats {
        let ok = self.stats.lock().unwrap().ok;
        wait_for("queries after the resume", Duration::from_secs(10), || {
            self.stats.lock().unwrap().ok > ok + 10
        });
        self.stop_without_failures()
    }

    fn stop_without_failures(self) -> Stats {
        let stats = self.stop();
        assert!(
            stats.failed.is_empty(),
            "failed queries: {:?}",
            stats.failed
        );
        stats
    }

    fn stop(mut self) -> Stats {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.stats.lock().unwrap())
    }
}

fn pool_playbook(size: &str) -> String {
    format!(
        "name = \"pool\"\n\n[[steps]]\nid = \"pool\"\nkind = \"pgbouncer_pool\"\ndefault_pool_size = {size}\n"
    )
}

fn setting_playbook(setting: &str, value: &str, postgres: &str, extra: &str) -> String {
    format!(
        "name = \"setting\"\n\n[[steps]]\nid = \"setting\"\nkind = \"pg_setting\"\nsetting = \"{setting}\"\nvalue = \"{value}\"\npostgres = \"{postgres}\"\n{extra}"
    )
}

/// `out` ended with `code` and its messages say `text`.
fn says(out: &crate::harness::Out, code: i32, text: &str) {
    out.expect(code);
    assert!(
        out.stderr.contains(text),
        "expected {text:?} in:\n{}",
        out.stderr
    );
}

/// The restart tests' playbook: max_connections 30 → 40 through the superuser's connection.
fn raise_max_connections(extra: &str) -> String {
    setting_playbook("max_connections", "40", "fhir_admin", extra)
}

/// A stack (restart command shaped by `restart`, as [`Stack::start_with`]) with `n` clients
/// querying through pgBouncer from the start.
fn stack_with_clients(n: usize, restart: impl FnOnce(&str) -> String) -> Option<(Stack, Clients)> {
    let s = Stack::start_with(restart)?;
    let clients = Clients::start(s.bouncer_port, n);
    Some((s, clients))
}

#[test]
fn a_pool_change_is_live_and_in_the_ini_and_env_file_and_its_rollback_restores_all() {
    let Some(s) = Stack::start(None) else { return };
    let before_ini = s.ini();
    s.run(&pool_playbook("25"), &[]).expect(0);
    assert_eq!(s.pools(), ("25".into(), "25".into()));
    assert!(
        s.ini().contains("\ndefault_pool_size = 25\n"),
        "{}",
        s.ini()
    );
    assert_eq!(
        s.sb.read(".env"),
        "COMPOSE_PROJECT_NAME=bd\nPGBOUNCER_DEFAULT_POOL_SIZE=25\n"
    );
    // Again: already applied, nothing to do.
    s.run(&pool_playbook("25"), &[]).expect(0);
    let id = s.sb.run_ids().into_iter().next().unwrap();
    let out = s.ferry(&["rollback", &id]);
    out.expect(0);
    assert_eq!(s.pools(), ("20".into(), "20".into()));
    assert_eq!(s.ini(), before_ini);
    assert_eq!(
        s.sb.read(".env"),
        "COMPOSE_PROJECT_NAME=bd\nPGBOUNCER_DEFAULT_POOL_SIZE=20\n"
    );
    s.finish();
}

/// max_connections 30 → 40 by a restart behind PAUSE, and back by its rollback, while four
/// clients query through pgBouncer the whole time.
#[test]
fn max_connections_is_raised_by_a_restart_behind_pause_without_a_failed_query() {
    let Some((s, clients)) = stack_with_clients(4, str::to_owned) else {
        return;
    };
    says(
        &s.run(&raise_max_connections(""), &[]),
        0,
        "restarted behind `PAUSE fhirdb`",
    );
    assert_eq!(s.pg.psql("postgres", "SHOW max_connections"), "40");
    std::thread::sleep(Duration::from_millis(300));
    let id = s.sb.run_ids().into_iter().next().unwrap();
    s.ferry(&["rollback", &id]).expect(0);
    assert_eq!(s.pg.psql("postgres", "SHOW max_connections"), "30");
    assert_eq!(s.auto_conf_lines(), "0");
    std::thread::sleep(Duration::from_millis(300));
    let stats = clients.stop_without_failures();
    eprintln!(
        "controlled restarts (raise + rollback): {} queries, longest wait {} ms",
        stats.ok,
        stats.longest.as_millis()
    );
    s.finish();
}

#[test]
fn a_restart_that_hangs_resumes_pgbouncer_and_rolls_the_setting_back() {
    let Some((s, clients)) = stack_with_clients(2, |_| "sleep 600".to_owned()) else {
        return;
    };
    says(
        &s.run(&raise_max_connections("stage_timeout = \"2s\"\n"), &[]),
        1,
        "pgBouncer fhirdb was RESUMEd",
    );
    assert_eq!(s.pg.psql("postgres", "SHOW max_connections"), "30");
    assert_eq!(s.auto_conf_lines(), "0");
    assert_eq!(
        s.pg.psql(
            "postgres",
            "SELECT pending_restart FROM pg_settings WHERE name = 'max_connections'"
        ),
        "f"
    );
    // The clients recovered: they go on querying after the failed restart.
    clients.recovered_then_stop();
    s.finish();
}

/// kill -9 while pgBouncer is paused and the restart has not happened: the clients wait;
/// `ferry resume` RESUMEs pgBouncer first, then finishes the restart behind a new PAUSE.
#[test]
fn a_run_killed_during_the_restart_resumes_pgbouncer_on_resume() {
    let Some((s, clients)) = stack_with_clients(2, |pg| {
        format!("if [ -e slow ]; then rm slow; sleep 30; fi; {pg}")
    }) else {
        return;
    };
    s.sb.write("slow", "");
    s.sb.write("pb.toml", &raise_max_connections(""));
    let mut child = s.sb.spawn(
        &["run", "pb.toml", "--target", "target.toml", "--yes"],
        &s.env(),
    );
    wait_for(
        "the restart command to start",
        Duration::from_secs(30),
        || !s.sb.path("slow").exists(),
    );
    assert!(s.paused());
    // SAFETY: plain syscall on the ferry this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert!(s.paused(), "pgBouncer stays paused until ferry comes back");
    let id = s.sb.run_ids().into_iter().next().unwrap();
    says(
        &s.ferry(&["resume", &id]),
        0,
        "RESUMEd after an interrupted restart",
    );
    assert!(!s.paused());
    assert_eq!(s.pg.psql("postgres", "SHOW max_connections"), "40");
    clients.recovered_then_stop();
    s.finish();
}

#[test]
fn a_dry_run_changes_nothing() {
    let Some(s) = Stack::start(None) else { return };
    let (ini, env) = (s.ini(), s.sb.read(".env"));
    let pb = "name = \"phase2\"\n\n[[steps]]\nid = \"max-connections\"\nkind = \"pg_setting\"\nsetting = \"max_connections\"\nvalue = 40\npostgres = \"fhir_admin\"\n\n\
              [[steps]]\nid = \"pool\"\nkind = \"pgbouncer_pool\"\ndefault_pool_size = 30\n";
    let out = s.run(pb, &["--dry-run"]);
    for text in [
        "max_connections = 30 → 40",
        "pool 20 + 3 reserved = 23 ≤ 40 max_connections",
        "an earlier step may raise max_connections",
    ] {
        says(&out, 0, text);
    }
    assert_eq!((s.ini(), s.sb.read(".env")), (ini, env));
    assert_eq!(s.pools(), ("20".into(), "20".into()));
    assert_eq!(s.pg.psql("postgres", "SHOW max_connections"), "30");
    assert_eq!(s.auto_conf_lines(), "0");
    s.finish();
}

#[test]
fn bad_input_is_refused_at_check_with_what_to_do() {
    let Some(s) = Stack::start(None) else { return };
    let setting =
        |name: &str, value: &str, postgres: &str| setting_playbook(name, value, postgres, "");
    let cases = [
        (
            setting("max_conections", "40", "fhir_admin"),
            3,
            "PostgreSQL has no setting `max_conections` (did you mean `max_connections`?)",
        ),
        (
            setting("max_connections", "300000", "fhir_admin"),
            3,
            "300000 is out of range for max_connections (1 … 262143)",
        ),
        (
            setting("max_connections", "20", "fhir_admin"),
            3,
            "pool 20 + 3 reserved = 23 > 20 max_connections: lower pgBouncer's pool first",
        ),
        (
            setting("max_connections", "40", "no_restart"),
            3,
            "max_connections needs a restart and [postgres.no_restart] has no restart_command or restart_service",
        ),
        (
            setting("max_connections", "40", "fhir"),
            3,
            "ALTER SYSTEM needs a superuser",
        ),
        (
            pool_playbook("40"),
            3,
            "pool 40 + 3 reserved = 43 > 30 max_connections: raise max_connections first",
        ),
        (pool_playbook("0"), 2, "a pool of 0 lets no query through"),
    ];
    for (pb, code, text) in cases {
        says(&s.run(&pb, &["--dry-run"]), code, text);
    }
    assert_eq!(s.pools(), ("20".into(), "20".into()));
    assert_eq!(s.auto_conf_lines(), "0");
    s.finish();
}

#[test]
fn the_phase2_playbook_validates() {
    let sb = Sandbox::new();
    let pb: PathBuf = crate::harness::repo().join("playbooks/phase2-scale.toml");
    sb.run(&["validate", pb.to_str().unwrap()]).expect(0);
    sb.finish();
}
