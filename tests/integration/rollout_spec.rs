//! A new replica is the container `docker-compose up` would create (issue 11, item 3, and
//! `scale` up): after a compose change of ports, volumes, restart policy, networks (with
//! aliases), extra_hosts, a ulimit, cap_add, a logging option, mem_limit, shm_size,
//! working_dir, init, isolation, and of what compose resolves against another service's
//! container (links, external_links, volumes_from, `pid`/`ipc: service:…`) together with the
//! image, each replica ferry creates carries them
//! and is compared field by field (its whole host config, and its config but for the
//! hostname, environment order and labels) with the one compose itself then creates from
//! the same files in its place, and carries
//! compose's config hash (`docker-compose up -d` finds a rolled-out service up to date).
//! Each test starts its own sandbox (FERRY_TEST_SANDBOX_STACK's stack, default compose;
//! labelled `ferry.test=1`) and takes it down.

use serde_json::Value;

use crate::harness::Playbook;
use crate::sandbox::{Sbx, docker};

/// The hapi service of the sandbox's compose file with another port, a bind mount, another
/// restart policy, a network alias, an `.env`-interpolated variable, and runtime settings:
/// one more extra host, a ulimit, cap_add, a logging option, mem_limit, shm_size,
/// working_dir, init.
fn change_compose(s: &Sbx) {
    let path = s.dir.join("files/docker-compose.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (head, rest) = text.split_once("  hapi:\n").unwrap();
    // The service ends at the next line indented less than its keys (the next service).
    let end = rest
        .match_indices('\n')
        .map(|(i, _)| i)
        .find(|&i| {
            let next = &rest[i + 1..];
            !next.starts_with("   ") && !next.starts_with('\n') && !next.is_empty()
        })
        .unwrap();
    let (hapi, tail) = rest.split_at(end);
    let hapi = hapi
        .replacen(
            "      - \"127.0.0.1::8080\"\n",
            "      - \"127.0.0.1::8080\"\n      - \"127.0.0.1::8081\"\n",
            1,
        )
        .replacen(
            "    restart: unless-stopped",
            "    restart: on-failure:3",
            1,
        )
        .replacen(
            "    environment:\n",
            "    environment:\n      HAPI_IG_VERSION: \"${HAPI_IG_VERSION}\"\n",
            1,
        );
    let extra_host = "      - \"ferry-extra.test:127.0.0.9\"\n";
    // The host stack's hapi has extra_hosts (pgBouncer on the host) and compose's default
    // network; the compose stack's, none and a list of the seed's networks.
    let mut hapi = if hapi.contains("    extra_hosts:\n") {
        hapi.replacen(
            "    extra_hosts:\n",
            &format!("    extra_hosts:\n{extra_host}"),
            1,
        )
    } else {
        format!(
            "{}\n    extra_hosts:\n{}",
            hapi.trim_end(),
            extra_host.trim_end()
        )
    };
    let alias = "        aliases:\n          - fhir-api";
    if hapi.contains("    networks:\n      - frontend\n") {
        hapi = hapi.replacen(
            "      - frontend\n      - backend-fhir\n      - backend-audit\n",
            &format!(
                "      frontend:\n{alias}\n      backend-fhir: {{}}\n      backend-audit: {{}}\n"
            ),
            1,
        );
        assert!(
            hapi.contains("frontend:\n"),
            "the seed's three networks:\n{hapi}"
        );
    } else {
        hapi = format!(
            "{}\n    networks:\n      default:\n{alias}",
            hapi.trim_end()
        );
    }
    let hapi = format!(
        "{}\n    ulimits:\n      nofile:\n        soft: 4096\n        hard: 8192\n    cap_add:\n      - NET_ADMIN\n    logging:\n      driver: json-file\n      options:\n        max-size: 5m\n    mem_limit: 256m\n    shm_size: 32m\n    working_dir: /app\n    init: true\n    volumes:\n      - ./extra:/extra:ro",
        hapi.trim_end()
    );
    // What compose resolves against another container: a `side` service (sharing its IPC
    // namespace and a volume) that hapi links to, by name and as an external link, takes
    // the volumes and the PID and IPC namespaces of.
    let project = std::fs::read_to_string(s.dir.join("files/.env"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("COMPOSE_PROJECT_NAME=").map(str::to_owned))
        .unwrap();
    let hapi = format!(
        "{hapi}\n    links:\n      - side\n      - \"side:sidekick\"\n    external_links:\n      - \"{project}_side_1:ext-side\"\n    volumes_from:\n      - \"side:ro\"\n    pid: \"service:side\"\n    ipc: \"service:side\"\n    isolation: default"
    );
    // A block (host stack) or one line naming the file's anchor (compose: `labels: *labels`).
    let labels = &hapi[hapi.find("    labels:").unwrap()..];
    let labels: String = labels
        .lines()
        .take_while(|l| l.starts_with("    labels:") || l.starts_with("      "))
        .map(|l| format!("{l}\n"))
        .collect();
    // On the proxy's image (the host stack's lb) or the current hapi image named literally
    // (compose): the rollout changes `HAPI_IMAGE`, which would recreate side. On compose,
    // on hapi's frontend network (links are per network).
    let (side_image, side_networks) = match tail
        .split_once("  lb:\n    image: ")
        .and_then(|(_, r)| r.lines().next())
    {
        Some(lb) => (lb.to_owned(), String::new()),
        None => (
            s.state()["image"].as_str().unwrap().to_owned(),
            "    networks:\n      - frontend\n".to_owned(),
        ),
    };
    let side = format!(
        "  side:\n    image: {side_image}\n    entrypoint: [\"/app/hapi-standin\", \"proxy\", \"--listen\", \"0.0.0.0:9999\", \"--upstream\", \"hapi:8080\"]\n    ipc: shareable\n    volumes:\n      - /shared\n    healthcheck:\n      disable: true\n{side_networks}{labels}"
    );
    let tail = tail.replacen("\nnetworks:\n", &format!("\n{side}networks:\n"), 1);
    std::fs::create_dir_all(s.dir.join("files/extra")).unwrap();
    std::fs::write(&path, format!("{head}  hapi:\n{hapi}\n{tail}")).unwrap();
    let (ok, cfg) = s.compose(&["config", "-q"]);
    assert!(ok, "the changed compose file: {cfg}");
    let (ok, up) = s.compose(&["up", "-d", "--no-deps", "side"]);
    assert!(ok, "{up}");
    let side = format!("{project}_side_1");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let state = docker(&["inspect", "--format", "{{.State.Status}}", &side]);
    let (_, ps) = s.compose(&["ps"]);
    assert_eq!(state, "running", "{side}: {up}\n{ps}");
}

/// What compose derives from the files, of container `name`: image, environment, ports,
/// volumes, restart policy, network mode, networks and their aliases (without the
/// container's short id, which Docker adds to each), the whole host config, and the
/// config but for its hostname (the container's short id), environment and labels.
fn fields(name: &str) -> Value {
    let c: Value = serde_json::from_str(&docker(&["inspect", name])).unwrap();
    let c = &c[0];
    let short = &c["Id"].as_str().unwrap()[..12];
    let mut env: Vec<String> = serde_json::from_value(c["Config"]["Env"].clone()).unwrap();
    env.sort();
    let nets: serde_json::Map<String, Value> = c["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, e)| {
            let mut a: Vec<String> = e["Aliases"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|a| *a != short)
                .map(str::to_owned)
                .collect();
            a.sort();
            (
                n.clone(),
                serde_json::json!({"aliases": a, "links": e["Links"]}),
            )
        })
        .collect();
    let mut mounts: Vec<String> = c["Mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{} {} {} {}",
                m["Type"], m["Source"], m["Destination"], m["RW"]
            )
        })
        .collect();
    mounts.sort();
    // Docker lists a container's links from a map: in no fixed order.
    let mut hc = c["HostConfig"].clone();
    if let Some(l) = hc["Links"].as_array_mut() {
        l.sort_by_key(|x| x.to_string());
    }
    let h = &hc;
    let mut config = c["Config"].clone();
    for k in ["Hostname", "Env", "Labels"] {
        config.as_object_mut().unwrap().remove(k);
    }
    serde_json::json!({
        "host_config": h,
        "config": config,
        "image": c["Image"],
        "env": env,
        "port_bindings": h["PortBindings"],
        "exposed": c["Config"]["ExposedPorts"],
        "binds": h["Binds"],
        "mounts": mounts,
        "restart": h["RestartPolicy"],
        "network_mode": h["NetworkMode"],
        "networks": nets,
        "cmd": c["Config"]["Cmd"],
        "healthcheck": c["Config"]["Healthcheck"],
    })
}

fn up_to_date(s: &Sbx, n: u32) {
    let (ok, up) = s.compose(&["up", "-d", "--scale", &format!("hapi={n}")]);
    assert!(ok, "{up}");
    // hapi's replicas, the stack's other services and side.
    assert_eq!(
        up.matches("is up-to-date").count(),
        n as usize + s.other_services() + 1,
        "{up}"
    );
    assert!(!up.contains("Recreating"), "{up}");
}

#[test]
fn a_rolled_out_replica_is_the_container_compose_would_create_after_a_compose_change() {
    let Some(s) = Sbx::up(2) else {
        return;
    };
    let current = s.state()["image"].as_str().unwrap().to_owned();
    let ctx = s.sb.path("next");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {current}\nLABEL ferry.test=1 variant=spec\n"),
    )
    .unwrap();
    let image = format!(
        "ferry-test-rollout-spec-{}:1",
        s.state()["id"].as_str().unwrap()
    );
    docker(&["build", "-q", "-t", &image, ctx.to_str().unwrap()]);
    change_compose(&s);
    Playbook::new("roll")
        .step("rollout", "rolling_redeploy")
        .str("image", &image)
        .str("drain", "1s")
        .write(&s.sb, "roll.toml");
    s.run(&["run", "roll.toml"]).expect(0);
    let ours: Vec<(String, Value)> = s
        .replicas()
        .into_iter()
        .map(|r| (r.0.clone(), fields(&r.0)))
        .collect();
    assert_eq!(ours.len(), 2);
    for (n, f) in &ours {
        assert_eq!(f["restart"]["Name"], "on-failure", "{n}: {f:#}");
        assert!(f["binds"].to_string().contains("/extra:ro"), "{n}: {f:#}");
        assert!(f["port_bindings"].get("8081/tcp").is_some(), "{n}: {f:#}");
        assert!(f["networks"].to_string().contains("fhir-api"), "{n}: {f:#}");
        let h = &f["host_config"];
        assert!(
            h["ExtraHosts"]
                .to_string()
                .contains("ferry-extra.test:127.0.0.9"),
            "{n}: {h:#}"
        );
        assert_eq!(
            h["Ulimits"],
            serde_json::json!([{"Name": "nofile", "Soft": 4096, "Hard": 8192}]),
            "{n}"
        );
        assert_eq!(h["CapAdd"], serde_json::json!(["NET_ADMIN"]), "{n}");
        assert_eq!(h["LogConfig"]["Config"]["max-size"], "5m", "{n}");
        assert_eq!(h["Memory"], 256 << 20, "{n}");
        assert_eq!(h["ShmSize"], 32 << 20, "{n}");
        assert_eq!(h["Init"], true, "{n}");
        assert_eq!(f["config"]["WorkingDir"], "/app", "{n}");
        let side = docker(&[
            "inspect",
            "--format",
            "{{.Id}}",
            &format!(
                "{}_side_1",
                s.state()["project"].as_str().unwrap_or_default()
            ),
        ]);
        assert_eq!(h["PidMode"], format!("container:{side}"), "{n}");
        assert_eq!(h["IpcMode"], format!("container:{side}"), "{n}");
        assert_eq!(
            h["VolumesFrom"],
            serde_json::json!([format!("{side}:ro")]),
            "{n}"
        );
        assert_eq!(h["Isolation"], "default", "{n}");
        // On a user-defined network the links are the endpoint's.
        let links = f["networks"].to_string();
        for l in [":side\"", ":sidekick\"", ":ext-side\""] {
            assert!(links.contains(l), "{n}: {l} in {links}");
        }
    }
    up_to_date(&s, 2);
    // compose's own containers from the same files: the same, field by field.
    let (ok, up) = s.compose(&[
        "up",
        "-d",
        "--no-deps",
        "--force-recreate",
        "--scale",
        "hapi=2",
        "hapi",
    ]);
    assert!(ok, "{up}");
    for (n, f) in &ours {
        assert_eq!(&fields(n), f, "{n}: ferry's replica vs compose's");
    }
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &image])
        .output();
    s.finish();
}

#[test]
fn a_replica_scale_adds_is_the_container_compose_would_create() {
    let Some(s) = Sbx::up(1) else {
        return;
    };
    change_compose(&s);
    let env = s.dir.join("files/.env");
    let text = std::fs::read_to_string(&env).unwrap();
    std::fs::write(
        &env,
        text.replace("HAPI_IG_VERSION=0.2.1", "HAPI_IG_VERSION=0.2.2"),
    )
    .unwrap();
    Playbook::new("scale")
        .step("scale", "scale")
        .raw("replicas", "2")
        .write(&s.sb, "scale.toml");
    s.run(&["run", "scale.toml"]).expect(0);
    let names: Vec<String> = s.replicas().into_iter().map(|r| r.0).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let added = names
        .iter()
        .find(|n| n.ends_with("_hapi_2"))
        .unwrap()
        .clone();
    let ours = fields(&added);
    assert!(
        ours["env"].to_string().contains("HAPI_IG_VERSION=0.2.2"),
        "the env file's value, not hapi_1's: {ours:#}"
    );
    // Labelled with compose's hash of the files now: compose takes it as up to date.
    let (ok, hash) = s.compose(&["config", "--hash=hapi"]);
    assert!(ok, "{hash}");
    let label = docker(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"com.docker.compose.config-hash\"}}",
        &added,
    ]);
    assert_eq!(Some(label.as_str()), hash.split_whitespace().nth(1));
    // hapi_1 predates the change, so compose recreates the service (both): its hapi_2 is
    // the one ferry made, field by field.
    let (ok, up) = s.compose(&["up", "-d", "--no-deps", "--scale", "hapi=2", "hapi"]);
    assert!(ok, "{up}");
    assert!(up.contains(&format!("Recreating {added}")), "{up}");
    assert_eq!(
        fields(&added),
        ours,
        "compose's hapi_2 vs the one ferry added"
    );
    s.finish();
}
