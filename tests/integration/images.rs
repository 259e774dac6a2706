//! Image references and the registry, without Docker: what `validate` refuses before any
//! build, and what a registry that answers but fails is reported as.

use std::io::{Read, Write};
use std::net::TcpListener;

use crate::harness::{Playbook, Sandbox};

/// A registry stand-in on a loopback port: every request is answered `500` with `body`.
fn failing_registry(body: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn a_registry_answering_500_is_reported_with_what_it_answered() {
    let sb = Sandbox::new();
    let port = failing_registry("storage driver: filesystem: no space left on device\n");
    sb.write(
        "t.toml",
        &format!("name = \"t\"\n[registry]\nurl = \"127.0.0.1:{port}\"\n"),
    );
    std::fs::create_dir_all(sb.path("docker-config")).unwrap();
    Playbook::new("push")
        .step("push", "image_push")
        .str("image", &format!("127.0.0.1:{port}/bd-fhir-hapi:1.1.0"))
        .write(&sb, "pb.toml");
    let docker_config = sb.path("docker-config");
    let out = sb.run_env(
        &["run", "pb.toml", "--target", "t.toml", "--dry-run"],
        &[("DOCKER_CONFIG", docker_config.to_str().unwrap())],
    );
    out.expect(3);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains(&format!(
            "registry 127.0.0.1:{port} answered GET /v2/ with 500 Internal Server Error: storage driver: filesystem: no space left on device"
        )),
        "{all}"
    );
    assert!(!all.contains("unreachable"), "it answered: {all}");
}

#[test]
fn image_references_docker_would_refuse_are_refused_at_validate() {
    let sb = Sandbox::new();
    Playbook::new("refs")
        .var("version", "1.1.0")
        .step("build", "image_build")
        .str("context", "ctx")
        .raw(
            "tags",
            "[\"reg.example:5000/bd-fhir-hapi:{{ version }}\", \"reg.example:5000/Bd-Fhir:{{ version }}\"]",
        )
        .raw("build_args", "{ BUILD_VERSION = \"{{ version }}\" }")
        .step("push", "image_push")
        .str("image", "reg.example:5000/bd-fhir-hapi:{{ version }}")
        .write(&sb, "pb.toml");
    // The value of a variable is checked as rendered: a tag over 128 characters, a newline.
    let long = format!("1.{}", "0".repeat(127));
    let out = sb.run(&["validate", "pb.toml", "--var", &format!("version={long}")]);
    out.expect(2);
    assert_eq!(
        out.stderr
            .matches("is 129 characters long (at most 128)")
            .count(),
        3,
        "both tags and the pushed image: {}",
        out.stderr
    );
    let out = sb.run(&["validate", "pb.toml", "--var", "version=1.1.0\nlabel=x"]);
    out.expect(2);
    assert!(
        out.stderr
            .contains("build arg `BUILD_VERSION` contains a newline"),
        "{}",
        out.stderr
    );
    let out = sb.run(&["validate", "pb.toml"]);
    out.expect(2);
    assert!(
        out.stderr.contains(
            "`reg.example:5000/Bd-Fhir:1.1.0` is not a valid image reference: the name component `Bd-Fhir` must be lower-case"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.matches("error:").count(), 1, "{}", out.stderr);
    // Placeholders stand in where values are not known yet (no target, a required var).
    Playbook::new("later")
        .step("push", "image_push")
        .str("image", "{{ target.registry.url }}/bd-fhir-hapi:1.1.0")
        .write(&sb, "later.toml");
    sb.run(&["validate", "later.toml"]).expect(0);
}
