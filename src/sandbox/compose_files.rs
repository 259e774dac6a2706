//! The compose stack's part of the files root: docker-compose.yml (from
//! fixtures/sandbox/docker-compose.yml), nginx/, pgbouncer/ and postgres/{fhir,audit}/ with the
//! configs and entrypoints the containers mount, and each database's init scripts. Secrets go
//! only into `db.env` (0600, git-ignored), which compose hands to the database containers.

use std::path::Path;

use super::files::Layout;

const COMPOSE: &str = include_str!("../../fixtures/sandbox/docker-compose.yml");
const NGINX: &str = include_str!("../../fixtures/sandbox/nginx.conf");
const POSTGRESQL_CONF: &str = include_str!("../../fixtures/sandbox/postgresql.conf");
const PGBOUNCER_INI: &str = include_str!("../../fixtures/sandbox/pgbouncer.ini");
const PG_ENTRYPOINT: &str = include_str!("../../fixtures/sandbox/postgres-entrypoint.sh");
const BOUNCER_ENTRYPOINT: &str = include_str!("../../fixtures/sandbox/pgbouncer-entrypoint.sh");
const FHIR_ROLES: &str = include_str!("../../fixtures/sandbox/fhir-roles.sql");
const FHIR_OWNERS: &str = include_str!("../../fixtures/sandbox/fhir-owners.sql");
const AUDIT_ROLES: &str = include_str!("../../fixtures/sandbox/audit-roles.sql");
const AUDIT_PASSWORD: &str = include_str!("../../fixtures/sandbox/audit-password.sql");
const FHIR_PASSWORDS: &str = include_str!("../../fixtures/sandbox/fhir-passwords.sql");
const AUDIT_PASSWORDS: &str = include_str!("../../fixtures/sandbox/audit-passwords.sql");

/// The secrets env file of the database containers.
pub const DB_ENV: &str = "db.env";

pub struct Ports {
    pub http: u16,
    pub pg: u16,
    pub audit: u16,
    pub bouncer: u16,
}

pub struct DbSecrets<'a> {
    pub superuser: &'a str,
    pub hapi: &'a str,
    pub audit: &'a str,
    pub bouncer_admin: &'a str,
}

/// A label value as a double-quoted YAML scalar.
fn yaml_str(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// One database container's files: its init scripts (`NN-DB-name.sql`, run in name order on
/// an empty volume) and the script that sets a sandbox's own passwords on a cluster copied
/// from the data cache.
struct DbFiles {
    name: &'static str,
    init: Vec<(&'static str, String)>,
    passwords: &'static str,
}

fn databases(resources: u64) -> [DbFiles; 2] {
    let mut fhir = vec![
        ("00-postgres-roles.sql", FHIR_ROLES.to_owned()),
        (
            "10-fhirdb-hapi-schema.sql",
            super::pg::HAPI_SCHEMA.to_owned(),
        ),
        ("20-fhirdb-owners.sql", FHIR_OWNERS.to_owned()),
        ("30-fhirdb-datagen.sql", super::pg::HAPI_DATAGEN.to_owned()),
    ];
    if resources > 0 {
        fhir.push((
            "40-fhirdb-resources.sql",
            format!("SELECT ferry_gen.gen_hapi({resources}, 1);\nANALYZE;\n"),
        ));
    }
    [
        DbFiles {
            name: "fhir",
            init: fhir,
            passwords: FHIR_PASSWORDS,
        },
        DbFiles {
            name: "audit",
            init: vec![
                ("00-postgres-roles.sql", AUDIT_ROLES.to_owned()),
                ("10-auditdb-schema.sql", super::pg::AUDIT_SCHEMA.to_owned()),
                ("20-auditdb-password.sql", AUDIT_PASSWORD.to_owned()),
            ],
            passwords: AUDIT_PASSWORDS,
        },
    ]
}

/// The data cache volumes' names, `[fhir, audit]`: `ferry-sandbox-pgcache-DB-HASH`, HASH
/// over everything that determines the initialised cluster: the base image (its id), the
/// entrypoint, postgresql.conf and every init script (the resource count is in one). The
/// passwords are not in it: they are psql variables, set again on every copy.
pub fn cache_volumes(base_image_id: &str, resources: u64) -> [String; 2] {
    use sha2::Digest;
    databases(resources).map(|db| {
        let mut h = sha2::Sha256::new();
        for part in [
            "ferry sandbox data cache 1",
            base_image_id,
            db.name,
            PG_ENTRYPOINT,
            POSTGRESQL_CONF,
        ] {
            h.update(part.len().to_le_bytes());
            h.update(part.as_bytes());
        }
        for (name, body) in &db.init {
            for part in [*name, body.as_str()] {
                h.update(part.len().to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        let hash = hex::encode(h.finalize());
        format!("ferry-sandbox-pgcache-{}-{}", db.name, &hash[..16])
    })
}

/// The compose file; `caches` as [`cache_volumes`] names them.
pub fn compose_file(l: &Layout, p: &Ports, caches: &[String; 2]) -> String {
    let extra: String = l
        .labels
        .iter()
        .map(|(k, v)| format!("\n  {}: {}", yaml_str(k), yaml_str(v)))
        .collect();
    COMPOSE
        .replace("@ID@", l.sandbox_id)
        .replace("@LABELS@", &extra)
        .replace("@HTTP_PORT@", &p.http.to_string())
        .replace("@PG_PORT@", &p.pg.to_string())
        .replace("@AUDIT_PORT@", &p.audit.to_string())
        .replace("@BOUNCER_PORT@", &p.bouncer.to_string())
        .replace("@PG_CACHE_FHIR@", &caches[0])
        .replace("@PG_CACHE_AUDIT@", &caches[1])
}

/// The seed's pool knob and the base image, after the checkout's usual `.env` lines.
pub fn env_extra(base_image: &str) -> String {
    format!("SANDBOX_BASE_IMAGE={base_image}\nPGBOUNCER_DEFAULT_POOL_SIZE=20\n")
}

fn write_mode(path: &Path, body: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, body)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Writes the stack's files under `root` (before the checkout is committed).
pub fn write(root: &Path, s: &DbSecrets, resources: u64) -> anyhow::Result<()> {
    write_mode(&root.join("nginx/nginx.conf"), NGINX, 0o644)?;
    write_mode(&root.join("pgbouncer/pgbouncer.ini"), PGBOUNCER_INI, 0o644)?;
    write_mode(
        &root.join("pgbouncer/entrypoint.sh"),
        BOUNCER_ENTRYPOINT,
        0o755,
    )?;
    write_mode(&root.join("postgres/entrypoint.sh"), PG_ENTRYPOINT, 0o755)?;
    for db in databases(resources) {
        let dir = root.join("postgres").join(db.name);
        write_mode(&dir.join("postgresql.conf"), POSTGRESQL_CONF, 0o644)?;
        for (name, body) in &db.init {
            write_mode(&dir.join("init").join(name), body, 0o644)?;
        }
        let passwords = dir.join("passwords").join(format!("{}db.sql", db.name));
        write_mode(&passwords, db.passwords, 0o644)?;
    }
    write_mode(
        &root.join(DB_ENV),
        &format!(
            "POSTGRES_PASSWORD={}\nFHIR_DB_PASSWORD={}\nAUDIT_DB_PASSWORD={}\nPGBOUNCER_ADMIN_PASSWORD={}\n",
            s.superuser, s.hapi, s.audit, s.bouncer_admin
        ),
        0o600,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compose_file_has_the_seeds_services_on_loopback_ports_with_every_label() {
        let labels = vec![("ferry.test".to_owned(), "1".to_owned())];
        let l = Layout {
            project: "p",
            image: "img",
            lb_image: "",
            http_port: 1,
            sandbox_id: "abc",
            labels: &labels,
            bouncer_port: 3,
            host_address: std::net::Ipv4Addr::LOCALHOST,
        };
        let p = Ports {
            http: 1,
            pg: 2,
            audit: 4,
            bouncer: 3,
        };
        let caches = cache_volumes("sha256:1", 0);
        let y = compose_file(&l, &p, &caches);
        assert!(!y.contains('@'), "every placeholder filled:\n{y}");
        for svc in [
            "nginx",
            "hapi",
            "pgbouncer-fhir",
            "postgres-fhir",
            "postgres-audit",
        ] {
            assert!(y.contains(&format!("\n  {svc}:\n")), "{svc}");
        }
        for port in [
            "127.0.0.1:1:80",
            "127.0.0.1:2:5432",
            "127.0.0.1:4:5432",
            "127.0.0.1:3:6432",
        ] {
            assert!(y.contains(port), "{port}");
        }
        for c in &caches {
            assert!(y.contains(&format!("name: \"{c}\"")), "{c}");
        }
        assert!(
            y.contains("ferry.sandbox: \"abc\"\n  \"ferry.test\": \"1\"\n"),
            "{y}"
        );
        assert_eq!(
            y.matches("labels: *labels").count(),
            10,
            "5 services, 3 networks, 2 volumes"
        );
        assert_eq!(
            y.matches("healthcheck:").count(),
            5,
            "every service's (hapi's checks every 1s, the image's every 2s)"
        );
    }

    #[test]
    fn the_data_cache_is_named_by_what_determines_the_cluster() {
        let a = cache_volumes("sha256:1", 2000);
        assert_eq!(a, cache_volumes("sha256:1", 2000), "stable");
        assert!(a[0].starts_with("ferry-sandbox-pgcache-fhir-"), "{a:?}");
        assert!(a[1].starts_with("ferry-sandbox-pgcache-audit-"), "{a:?}");
        let more = cache_volumes("sha256:1", 2001);
        assert_ne!(a[0], more[0], "the resource count is in fhirdb's");
        assert_eq!(a[1], more[1], "and not in auditdb's");
        let other = cache_volumes("sha256:2", 2000);
        assert!(a[0] != other[0] && a[1] != other[1], "the base image");
    }
}
