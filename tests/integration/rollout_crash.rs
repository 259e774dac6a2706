//! Crash tests of `rolling_redeploy` and `scale` at the Docker API (issue 11, items 1 and 8),
//! on the real engine and sandbox: ferry is killed (SIGKILL) right before each Docker
//! request of a clean run, through the `proxy` in front of the engine, then resumed, or
//! the run rolled back, or its killed rollback run again, and every time the service must
//! come back converged (`stack::Crash::assert_converged`).
//!
//! The every-call sweeps replace one replica to keep CI time reasonable: each kill costs a
//! resume and the compose checks, and a further replica only repeats the calls of the one
//! before it (the 3-replica sandbox tests cover the order of replicas). They run on the host
//! stack (`stack::sweep_stack`); the `…_on_compose` tests sweep, on the compose stack, the
//! kill points only it has: between a new replica's create and its start, where it is
//! connected to the service's other networks (compose's hapi is on three).

mod proxy;
mod stack;

use std::time::Instant;

use stack::{Crash, sweep_stack};

/// Runs `args` killed before its `n`-th Docker call; whether it had journaled a run by
/// then (a kill during the first requests may come before that).
#[track_caller]
fn kill(c: &Crash, args: &[&str], n: usize, what: &str) -> bool {
    let runs = c.s.sb.run_ids().len();
    let out = c.ferry(args, n);
    assert_eq!(out.signal, Some(9), "{what}: not killed\n{}", out.stderr);
    c.s.sb.run_ids().len() > runs
}

/// The Docker calls of a clean `args`, which must exit 0.
fn clean(c: &Crash, args: &[&str], what: &str) -> Vec<String> {
    let out = c.ferry(args, 0);
    assert_eq!(out.code, Some(0), "{what}\n{}", out.stderr);
    let calls = c.proxy.trace();
    eprintln!(
        "{what} makes {} Docker calls:\n{}",
        calls.len(),
        calls.join("\n")
    );
    calls
}

#[track_caller]
fn exits(out: &crate::harness::Out, code: i32, what: &str) {
    assert_eq!(out.code, Some(code), "{what}\n{}", out.stderr);
}

/// Kill a rollout to the other image before call n, resume: converged on that image; kill
/// the next rollout before call n, roll it back: converged on the image it started from.
fn sweep_rollout(replicas: u32, extra: &[(&str, &str)], stack: &'static str, pick: Pick) {
    let Some(c) = Crash::up(replicas, stack) else {
        return;
    };
    let other = |img: &str| {
        if img == c.new {
            c.old.clone()
        } else {
            c.new.clone()
        }
    };
    let calls = clean(&c, &["run", &c.rollout(&c.new, extra)], "a clean rollout");
    let swept = picked(&calls, pick, "a clean rollout");
    c.assert_converged(&c.new, &c.env_for(&c.new), replicas, "the clean rollout");
    let mut cur = c.new.clone();
    let t_all = Instant::now();
    let from = sweep_from();
    for (n, call) in calls.iter().enumerate().map(|(i, c)| (i + 1, c)) {
        if n < from || !pick(&calls, n) {
            continue;
        }
        let t0 = Instant::now();
        let to = other(&cur);
        let pb = c.rollout(&to, extra);
        let what = format!("a rollout to {to} killed before Docker call {n} ({call}), resumed");
        let out = if kill(&c, &["run", &pb], n, &what) {
            c.ferry(&["resume"], 0)
        } else {
            c.ferry(&["run", &pb], 0)
        };
        exits(&out, 0, &what);
        c.assert_converged(&to, &c.env_for(&to), replicas, &what);
        assert_eq!(c.last_run().1, "done", "{what}");
        cur = to;
        let to = other(&cur);
        let pb = c.rollout(&to, extra);
        let what = format!("a rollout to {to} killed before Docker call {n} ({call}), rolled back");
        if kill(&c, &["run", &pb], n, &what) {
            let id = c.last_run().0;
            exits(&c.ferry(&["rollback", &id], 0), 0, &what);
            assert_eq!(c.last_run().1, "rolled_back", "{what}");
        }
        c.assert_converged(&cur, &c.env_for(&cur), replicas, &what);
        eprintln!(
            "call {n}: resumed and rolled back, converged each time ({:.1?})",
            t0.elapsed()
        );
    }
    eprintln!(
        "{} kills of each kind in {:.1?}",
        calls.len(),
        t_all.elapsed()
    );
    // And at the step's journal records: the first checkpoints are the previous image and
    // the `.env` edit, journaled before the file is written (a resume writes it then).
    // (A sweep of some calls only leaves them to the full sweep.)
    let records = if swept == calls.len() { 4 } else { 0 };
    for k in 1..=records {
        let to = other(&cur);
        let fp = format!("checkpoint:rollout#{k}");
        let what = format!("a rollout to {to} killed at {fp}, resumed");
        let pb = c.rollout(&to, extra);
        let out = c.ferry_env(&["run", &pb], 0, &[("FERRY_FAILPOINT", &fp)]);
        assert_eq!(out.signal, Some(9), "{what}: not killed\n{}", out.stderr);
        exits(&c.ferry(&["resume"], 0), 0, &what);
        c.assert_converged(&to, &c.env_for(&to), replicas, &what);
        cur = to;
    }
    c.finish();
}

/// Which kill points (1-based, into a clean run's calls) a sweep kills at.
type Pick = fn(&[String], usize) -> bool;

fn every(_: &[String], _: usize) -> bool {
    true
}

/// How many kill points `pick` takes of a clean run's `calls`; none is a broken sweep.
fn picked(calls: &[String], pick: Pick, what: &str) -> usize {
    let k = (1..=calls.len()).filter(|&n| pick(calls, n)).count();
    assert!(
        k > 0,
        "{what}: no kill point picked of\n{}",
        calls.join("\n")
    );
    eprintln!("{what}: {k} of {} kill points", calls.len());
    k
}

/// The calls after a container's create up to its start: the connects to its other
/// networks, and the start.
fn between_create_and_start(calls: &[String], n: usize) -> bool {
    let created = calls[..n - 1]
        .iter()
        .rposition(|c| c.starts_with("POST /containers/create"));
    created.is_some_and(|i| {
        !calls[i + 1..n - 1]
            .iter()
            .any(|c| c.starts_with("POST /containers/") && c.ends_with("/start"))
            && (calls[n - 1].starts_with("POST /networks/")
                || (calls[n - 1].starts_with("POST /containers/")
                    && calls[n - 1].ends_with("/start")))
    })
}

/// The replicas of the rollout sweeps: 1 in CI, `FERRY_SWEEP_REPLICAS` (1 to 5) from
/// `scripts/sweep-rollout` (the issue reproduced on 3).
fn sweep_replicas() -> u32 {
    match std::env::var("FERRY_SWEEP_REPLICAS") {
        Ok(n) => {
            let n: u32 = n.parse().expect("FERRY_SWEEP_REPLICAS: a number");
            assert!(
                (1..=5).contains(&n),
                "FERRY_SWEEP_REPLICAS: 1 to 5, not {n}"
            );
            n
        }
        Err(_) => 1,
    }
}

/// The first kill point of the rollout sweeps: 1, or `FERRY_SWEEP_FROM` (from
/// `scripts/sweep-rollout --from N`, to go on with a long sweep that was interrupted).
fn sweep_from() -> usize {
    std::env::var("FERRY_SWEEP_FROM").map_or(1, |n| n.parse().expect("FERRY_SWEEP_FROM: a number"))
}

#[test]
fn rollout_killed_before_every_docker_call_then_resumed_or_rolled_back() {
    sweep_rollout(sweep_replicas(), &[], sweep_stack(), every);
}

#[test]
fn rollout_without_surge_killed_before_every_docker_call() {
    // The replica is stopped before its successor is created.
    sweep_rollout(sweep_replicas(), NO_SURGE, sweep_stack(), every);
}

const NO_SURGE: &[(&str, &str)] = &[("max_surge", "0"), ("max_unavailable", "1")];

#[test]
fn rollback_killed_before_every_docker_call_then_run_again_or_resumed() {
    sweep_rollback(sweep_stack(), every);
}

fn sweep_rollback(stack: &'static str, pick: Pick) {
    let Some(c) = Crash::up(1, stack) else {
        return;
    };
    let pb = c.rollout(&c.new, &[]);
    exits(&c.ferry(&["run", &pb], 0), 0, "a rollout");
    let id = c.last_run().0;
    let calls = clean(&c, &["rollback", &id], "a clean rollback");
    picked(&calls, pick, "a clean rollback");
    c.assert_converged(&c.old, &c.env0, 1, "the clean rollback");
    let t_all = Instant::now();
    for (n, call) in calls.iter().enumerate().map(|(i, c)| (i + 1, c)) {
        if !pick(&calls, n) {
            continue;
        }
        let t0 = Instant::now();
        exits(&c.ferry(&["run", &pb], 0), 0, "a rollout");
        c.assert_converged(&c.new, &c.env_for(&c.new), 1, "a rollout");
        let id = c.last_run().0;
        // Half of them are finished by `ferry rollback` again, half by `ferry resume`.
        let what = format!("a rollback killed before Docker call {n} ({call})");
        kill(&c, &["rollback", &id], n, &what);
        // (Killed before the rollback journaled its start, the run is still done.)
        let again = if n % 2 == 1 || c.last_run().1 == "done" {
            "rollback"
        } else {
            "resume"
        };
        let what = format!("{what}, then {again}");
        let out = c.ferry(&[again, &id], 0);
        exits(&out, 0, &what);
        assert_eq!(c.last_run(), (id, "rolled_back".into()), "{what}");
        c.assert_converged(&c.old, &c.env0, 1, &what);
        eprintln!("{what}: converged ({:.1?})", t0.elapsed());
    }
    eprintln!("{} kills in {:.1?}", calls.len(), t_all.elapsed());
    c.finish();
}

#[test]
fn scale_killed_before_every_docker_call_then_resumed_or_rolled_back() {
    sweep_scale(sweep_stack(), every);
}

fn sweep_scale(stack: &'static str, pick: Pick) {
    let Some(c) = Crash::up(1, stack) else {
        return;
    };
    let pb = crate::harness::Playbook::new("scale")
        .step("scale", "scale")
        .raw("replicas", "2")
        .write(&c.s.sb, "scale.toml");
    let calls = clean(&c, &["run", &pb], "a clean scale from 1 to 2");
    picked(&calls, pick, "a clean scale from 1 to 2");
    c.assert_converged(&c.old, &c.env0, 2, "the clean scale");
    let id = c.last_run().0;
    exits(&c.ferry(&["rollback", &id], 0), 0, "its rollback");
    c.assert_converged(&c.old, &c.env0, 1, "the clean scale's rollback");
    let t_all = Instant::now();
    for (n, call) in calls.iter().enumerate().map(|(i, c)| (i + 1, c)) {
        if !pick(&calls, n) {
            continue;
        }
        let t0 = Instant::now();
        let what = format!("a scale to 2 killed before Docker call {n} ({call}), resumed");
        let out = if kill(&c, &["run", &pb], n, &what) {
            c.ferry(&["resume"], 0)
        } else {
            c.ferry(&["run", &pb], 0)
        };
        exits(&out, 0, &what);
        // Healthy as soon as resume returns: a replica killed while `starting` is gated.
        c.assert_converged(&c.old, &c.env0, 2, &what);
        exits(&c.ferry(&["rollback", &c.last_run().0], 0), 0, &what);
        c.assert_converged(&c.old, &c.env0, 1, &what);
        // Killed just before the new replica's start (created, never started) or while its
        // health is `starting`: the rollback removes it too.
        let moment = call.ends_with("_hapi_2/start") || call.ends_with("_hapi_2/json");
        if moment {
            let what = format!("a scale to 2 killed before Docker call {n} ({call}), rolled back");
            assert!(kill(&c, &["run", &pb], n, &what), "{what}: journaled");
            exits(&c.ferry(&["rollback", &c.last_run().0], 0), 0, &what);
            c.assert_converged(&c.old, &c.env0, 1, &what);
        }
        eprintln!("call {n}: converged ({:.1?})", t0.elapsed());
    }
    eprintln!("{} kills in {:.1?}", calls.len(), t_all.elapsed());
    c.finish();
}

// On the compose stack, the kill points between a new container's create and its start
// (its connects to hapi's other networks): resumed, the container must be on every network
// before it starts, or it cannot reach pgbouncer-fhir and never turns healthy.

#[test]
fn rollout_killed_between_a_clones_create_and_start_on_compose() {
    sweep_rollout(1, &[], "compose", between_create_and_start);
}

#[test]
fn rollout_without_surge_killed_between_a_clones_create_and_start_on_compose() {
    sweep_rollout(1, NO_SURGE, "compose", between_create_and_start);
}

#[test]
fn rollback_killed_between_a_clones_create_and_start_on_compose() {
    sweep_rollback("compose", between_create_and_start);
}

#[test]
fn scale_killed_between_a_new_replicas_create_and_start_on_compose() {
    sweep_scale("compose", between_create_and_start);
}
