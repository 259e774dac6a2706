//! Re-entry of an interrupted replacement: what `rolling_redeploy` (and its rollback) and
//! `scale` find of a replica after ferry was killed at any point of `swap::replace` (or of a
//! scale-up), and what they do about it before anything else, so that every replica ends
//! up on one image under its own name and compose labels, and no `-ferry-next` clone stays.
//!
//! A replacement goes: [stop the original, when there is no surge] → create the clone under
//! `<name>-ferry-next` → start it → gate it → stop the original → remove it → rename the
//! clone. A kill between any two of these leaves one of {original running / stopped /
//! gone} × {clone absent / created / running / healthy}; [`decide`] is the table of what
//! each means (see the comment on it). Two facts beyond the states decide it:
//! - whether the clone is *wanted*: it runs what this pass installs (the rollout's image,
//!   or for a rollback the previous one, with compose's config hash of the `.env` as it is
//!   now). A rollback finds the rollout's clones unwanted, a rollout the rollback's;
//! - whether the checkpoint names the replica as *in flight*: only then is a stopped
//!   original with no clone ferry's doing (stopped for a surge-less replacement) rather
//!   than a replica an operator stopped, which is never started behind their back (the
//!   step then fails naming it, as for any replica that is not running).
//!
//! Invariant after [`settle`]: no clone is left, and every original ferry stopped runs
//! again or was replaced; the normal pass then replaces what is not yet on the image.

use anyhow::{Context, bail};

use super::swap::{self, CONFIG_HASH, Gate, gate};
use super::{TEMP_SUFFIX, traffic};
use crate::infra::docker::{ContainerInfo, Docker, Replica};
use crate::report::Level;
use crate::steps::StepCx;

/// The replica under its own name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Original {
    /// Running (or paused: not ferry's to start or stop outside a replacement).
    Running,
    /// Exited or created.
    Stopped,
    Gone,
}

/// The replica's successor: the clone under the temporary name (for `scale`, the new
/// replica under its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Successor {
    Absent,
    /// Created and never started (or exited since): it must be started.
    Created,
    /// Running, health still `starting` (or `unhealthy`): its gate decides.
    Running,
    /// Running and healthy (or running without a healthcheck).
    Healthy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub original: Original,
    pub clone: Successor,
    /// The clone runs what this pass installs (image id and config hash).
    pub wanted: bool,
    /// The step's checkpoint names this replica as the one being replaced.
    pub in_flight: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing was interrupted here.
    Nothing,
    /// Ferry stopped the original and died before creating its clone: start it again.
    StartOriginal,
    /// Finish the replacement forward: start the clone if needed, gate it, and it takes
    /// the original's place (stopped and removed if still there).
    Finish { start: bool },
    /// The clone belongs to the other direction: remove it; the original (started again
    /// when ferry had stopped it) is what the normal pass replaces or keeps.
    Discard { start_original: bool },
    /// An unwanted clone is all that is left of the replica: it takes the name (started if
    /// needed) and the normal pass replaces it like any replica on another image.
    Adopt { start: bool },
    /// The replica in flight has neither its original nor a clone: a person must restore it.
    Missing,
}

/// The decision per observed state. The reasoning, row by row:
/// - no clone: either nothing was started (original running: nothing to do), or ferry
///   stopped the original for a surge-less replacement and died (in flight, stopped:
///   start it again), or the original is gone with nothing in its place, which no kill of
///   ferry can cause (removal comes after a healthy clone exists, rename is atomic):
///   someone removed it, and ferry will not invent a replica's config from nothing;
/// - a wanted clone, in any state: going forward is always possible and costs least (its
///   gate still decides; a failed gate falls back to the original as `replace` does);
///   with the original gone it is the only way, and the state the issue found (original
///   exited beside a healthy clone) is finished rather than left or rolled back by hand;
/// - an unwanted clone (a rollback meeting the rollout's clone, or the reverse): the
///   original is the way back, so the clone goes; if the original is gone the clone is the
///   replica now, and the pass replaces it like any other on the wrong image.
pub fn decide(o: Observed) -> Action {
    use Original as O;
    use Successor as S;
    let start = o.clone == S::Created;
    match (o.original, o.clone) {
        (O::Running, S::Absent) => Action::Nothing,
        (O::Stopped, S::Absent) if o.in_flight => Action::StartOriginal,
        (O::Stopped, S::Absent) => Action::Nothing,
        (O::Gone, S::Absent) if o.in_flight => Action::Missing,
        (O::Gone, S::Absent) => Action::Nothing,
        (_, _) if o.wanted => Action::Finish { start },
        (O::Running, _) => Action::Discard {
            start_original: false,
        },
        (O::Stopped, _) => Action::Discard {
            start_original: true,
        },
        (O::Gone, _) => Action::Adopt { start },
    }
}

/// What this pass installs: a container is wanted when it runs `image_id` and, when the
/// hash is known, carries compose's config hash of the service.
pub struct Want<'a> {
    pub image_id: &'a str,
    pub hash: Option<&'a str>,
}

impl Want<'_> {
    pub fn holds(&self, c: &ContainerInfo) -> bool {
        c.image_id == self.image_id
            && self.hash.is_none_or(|h| {
                c.config.labels.as_ref().and_then(|l| l.get(CONFIG_HASH)) == Some(&h.to_owned())
            })
    }
}

pub fn original(c: Option<&ContainerInfo>) -> Original {
    match c {
        None => Original::Gone,
        Some(c) if c.running => Original::Running,
        Some(_) => Original::Stopped,
    }
}

pub fn successor(c: Option<&ContainerInfo>) -> Successor {
    match c {
        None => Successor::Absent,
        Some(c) if !c.running => Successor::Created,
        Some(c) if matches!(c.health.as_deref(), None | Some("healthy")) => Successor::Healthy,
        Some(_) => Successor::Running,
    }
}

/// Brings every interrupted replacement of `project`/`service` to an end (see the module
/// doc): each clone found, and the replica the checkpoint names as `in_flight` (by its
/// container number), is decided by [`decide`] and acted on.
pub async fn settle(
    engine: &Docker,
    cx: &StepCx,
    (project, service): (&str, &str),
    want: &Want<'_>,
    in_flight: Option<u32>,
    g: &Gate<'_>,
) -> anyhow::Result<()> {
    let all = engine.replicas(project, service).await?;
    let mut slots: Vec<String> = all
        .iter()
        .filter_map(|r| r.name.strip_suffix(TEMP_SUFFIX).map(str::to_owned))
        .collect();
    if let Some(k) = in_flight {
        match all.iter().find(|r| r.number == k) {
            Some(r) => {
                let base = r.name.trim_end_matches(TEMP_SUFFIX).to_owned();
                if !slots.contains(&base) {
                    slots.push(base);
                }
            }
            None => bail!(
                "replica number {k} of {project}/{service}, which ferry was replacing, is gone (neither it nor its {TEMP_SUFFIX} clone exists): someone removed it; restore it with `docker-compose -p {project} up -d --no-recreate --scale {service}=N {service}` (N: the replica count) in the compose directory, then resume"
            ),
        }
    }
    for base in slots {
        let tmp = swap::temp_name(&base);
        let old = engine.inspect_container(&base).await?;
        let new = engine.inspect_container(&tmp).await?;
        let number = |c: &ContainerInfo| {
            c.config
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::infra::docker::NUMBER))
                .and_then(|n| n.parse::<u32>().ok())
        };
        let seen = Observed {
            original: original(old.as_ref()),
            clone: successor(new.as_ref()),
            wanted: new.as_ref().is_some_and(|c| want.holds(c)),
            in_flight: in_flight.is_some()
                && old.iter().chain(new.iter()).any(|c| number(c) == in_flight),
        };
        let action = decide(seen);
        if action != Action::Nothing {
            cx.log(
                Level::Info,
                format!(
                    "{base}: an interrupted replacement (original {:?}, clone {:?}{}): {action:?}",
                    seen.original,
                    seen.clone,
                    if seen.wanted { ", wanted" } else { "" }
                ),
            );
        }
        act(engine, cx, &base, action, g).await?;
    }
    // A replica ferry left out of the rotation (it died while one was draining, or before a
    // started-again original rejoined) serves again.
    // One listing and one inspect per replica (a replica's networks are a sibling's), not
    // a sibling look-up per replica. Only the service's alias is asked for here: a replica
    // not being replaced is not reconnected for an alias the compose file added since.
    let mut infos = vec![];
    for r in super::all_replicas(engine, project, service).await? {
        infos.extend(engine.inspect_container(&r.id).await?);
    }
    for (i, info) in infos.iter().enumerate() {
        let sibling = infos.iter().enumerate().find(|(j, _)| *j != i).map(|x| x.1);
        if traffic::reattached(engine, info, &networks_of(sibling)).await? {
            traffic::ensure_joined(engine, &info.name, None).await?;
        } else {
            traffic::joined(engine, info, None).await?;
        }
    }
    Ok(())
}

/// The replicas a re-entered step's check expects: like `running_replicas`, except that
/// one taking part in an interrupted replacement (it has a clone, or it is the replica
/// `in_flight`) may be stopped or created, since `settle` (`settle_new`) deals with it;
/// and a clone whose original is gone stands for that replica (it takes its name).
pub async fn replicas_on_reentry(
    engine: &Docker,
    project: &str,
    service: &str,
    in_flight: Option<u32>,
) -> anyhow::Result<Vec<Replica>> {
    let (all, settled) = on_reentry(&engine.replicas(project, service).await?, in_flight);
    if let Some(msg) = super::not_running(&settled, all.len(), project, service) {
        bail!(msg);
    }
    Ok(all)
}

/// (the replicas, those of them not in an interrupted replacement) of `every` container
/// of the service, clones included.
fn on_reentry(every: &[Replica], in_flight: Option<u32>) -> (Vec<Replica>, Vec<Replica>) {
    let base = |r: &Replica| r.name.strip_suffix(TEMP_SUFFIX).map(str::to_owned);
    let clones: Vec<String> = every.iter().filter_map(base).collect();
    let originals: Vec<&str> = every
        .iter()
        .filter(|r| base(r).is_none())
        .map(|r| r.name.as_str())
        .collect();
    let all: Vec<Replica> = every
        .iter()
        .filter(|r| base(r).is_none_or(|b| !originals.contains(&b.as_str())))
        .cloned()
        .collect();
    let settled = all
        .iter()
        .filter(|r| Some(r.number) != in_flight && base(r).is_none() && !clones.contains(&r.name))
        .cloned()
        .collect();
    (all, settled)
}

fn networks_of(c: Option<&ContainerInfo>) -> Vec<String> {
    c.map(|c| c.networks.keys().cloned().collect())
        .unwrap_or_default()
}

/// The networks of another container of `name`'s compose service (what `name` belongs on).
async fn sibling_networks(engine: &Docker, name: &str) -> anyhow::Result<Vec<String>> {
    let Some(me) = engine.inspect_container(name).await? else {
        return Ok(vec![]);
    };
    let label = |k: &str| me.config.labels.as_ref().and_then(|l| l.get(k)).cloned();
    let (Some(project), Some(service)) = (
        label("com.docker.compose.project"),
        label("com.docker.compose.service"),
    ) else {
        return Ok(vec![]);
    };
    for r in engine.replicas(&project, &service).await? {
        if r.name != name {
            let other = engine.inspect_container(&r.name).await?;
            return Ok(networks_of(other.as_ref()));
        }
    }
    Ok(vec![])
}

async fn act(
    engine: &Docker,
    cx: &StepCx,
    base: &str,
    action: Action,
    g: &Gate<'_>,
) -> anyhow::Result<()> {
    let tmp = swap::temp_name(base);
    // A replica started again runs what it ran before: only its health is asked for.
    let health = Gate {
        verify_version: None,
        ..*g
    };
    match action {
        Action::Nothing => Ok(()),
        Action::Missing => {
            bail!("replica {base} is gone and has no clone: restore it, then resume")
        }
        Action::StartOriginal => {
            traffic::reattach(engine, base, &sibling_networks(engine, base).await?).await?;
            engine.start_container(base).await?;
            gate(engine, cx, base, &health).await
        }
        // (Every replica is put back into the aliases by `settle` once all are decided.)
        Action::Discard { start_original } => {
            let nets = networks_of(engine.inspect_container(&tmp).await?.as_ref());
            engine.remove_container(&tmp).await?;
            if start_original {
                traffic::reattach(engine, base, &nets).await?;
                engine.start_container(base).await?;
                gate(engine, cx, base, &health).await?;
            }
            Ok(())
        }
        Action::Adopt { start } => {
            if start {
                let nets = sibling_networks(engine, &tmp).await?;
                traffic::complete_unaliased(engine, &tmp, g.spec, &nets).await?;
                engine.start_container(&tmp).await?;
            }
            engine.rename_container(&tmp, base).await?;
            traffic::ensure_joined(engine, base, g.spec)
                .await
                .map(|_| ())
        }
        Action::Finish { start } => {
            let old = engine.inspect_container(base).await?;
            let attempt = async {
                if start {
                    // The original's networks and a sibling's: a kill inside the
                    // original's leave can have left it off one.
                    let mut nets = networks_of(old.as_ref());
                    nets.extend(sibling_networks(engine, &tmp).await?);
                    nets.sort();
                    nets.dedup();
                    traffic::complete_unaliased(engine, &tmp, g.spec, &nets).await?;
                    engine.start_container(&tmp).await?;
                }
                gate(engine, cx, &tmp, g).await
            };
            if let Err(e) = attempt.await {
                let Some(old) = old else {
                    return Err(e.context(format!(
                        "{tmp} is all that is left of {base}: fix its image, or roll back"
                    )));
                };
                let _ = engine.remove_container(&tmp).await;
                if !old.running {
                    let _ = engine.start_container(base).await;
                }
                return Err(e.context(format!("replica {base} kept on its old image")));
            }
            swap::promote(engine, cx, base, g)
                .await
                .with_context(|| format!("finishing the replacement of {base}"))
        }
    }
}

/// What `scale` does with the replica it was creating when it was killed (the checkpoint
/// names its number), by that replica's state and whether the count still needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewReplica {
    Nothing,
    /// Killed before its start: start it (it keeps its number), then gate it.
    StartAndGate,
    /// Killed while its health was `starting`: the gate, not the count, says it is done.
    Gate,
    /// Not needed (a rollback to fewer replicas) and it never served: remove it.
    Remove,
}

pub fn decide_new(s: Successor, needed: bool) -> NewReplica {
    match (s, needed) {
        (Successor::Absent, _) => NewReplica::Nothing,
        (Successor::Created, true) => NewReplica::StartAndGate,
        (Successor::Running | Successor::Healthy, true) => NewReplica::Gate,
        (Successor::Created | Successor::Running, false) => NewReplica::Remove,
        // Healthy and in service: the scale-down removes the highest numbers as usual.
        (Successor::Healthy, false) => NewReplica::Nothing,
    }
}

/// `scale`'s re-entry: the replica numbered `number` it was creating, towards `want`
/// replicas. Afterwards it is gone or running and past its gate.
pub async fn settle_new(
    engine: &Docker,
    cx: &StepCx,
    (project, service): (&str, &str),
    number: u32,
    want: u32,
    g: &Gate<'_>,
) -> anyhow::Result<()> {
    let all = super::all_replicas(engine, project, service).await?;
    let Some(r) = all.iter().find(|r| r.number == number) else {
        return Ok(());
    };
    let info = engine.inspect_container(&r.id).await?;
    let others = all
        .iter()
        .filter(|o| o.number != number && o.state == "running")
        .count() as u32;
    let seen = successor(info.as_ref());
    let action = decide_new(seen, others < want);
    if action != NewReplica::Nothing {
        cx.log(
            Level::Info,
            format!("{}: an interrupted scale ({seen:?}): {action:?}", r.name),
        );
    }
    match action {
        NewReplica::Nothing if seen == Successor::Healthy => join_new(engine, &r.name, g).await,
        NewReplica::Nothing => Ok(()),
        NewReplica::Remove => engine.remove_container(&r.name).await.map(drop),
        NewReplica::StartAndGate | NewReplica::Gate => {
            if action == NewReplica::StartAndGate {
                let nets = sibling_networks(engine, &r.name).await?;
                traffic::complete_unaliased(engine, &r.name, g.spec, &nets).await?;
                engine.start_container(&r.name).await?;
            }
            let joined = async {
                gate(engine, cx, &r.name, g).await?;
                join_new(engine, &r.name, g).await
            };
            if let Err(e) = joined.await {
                let _ = engine.remove_container(&r.name).await;
                return Err(e);
            }
            Ok(())
        }
    }
}

/// A new replica past its gate joins the service's rotation, as `scale` would have done
/// had it not been killed: on every network of its siblings (a kill between a join's
/// disconnect and connect leaves it off one), with the service's aliases.
async fn join_new(engine: &Docker, name: &str, g: &Gate<'_>) -> anyhow::Result<()> {
    traffic::reattach(engine, name, &sibling_networks(engine, name).await?).await?;
    traffic::ensure_joined(engine, name, g.spec).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Original as O;
    use Successor as S;

    fn at(original: Original, clone: Successor, wanted: bool, in_flight: bool) -> Action {
        decide(Observed {
            original,
            clone,
            wanted,
            in_flight,
        })
    }

    #[test]
    fn no_clone_only_a_stopped_original_in_flight_is_started() {
        for f in [false, true] {
            assert_eq!(at(O::Running, S::Absent, false, f), Action::Nothing);
        }
        assert_eq!(
            at(O::Stopped, S::Absent, false, true),
            Action::StartOriginal
        );
        // An operator's stopped replica is not started: the step refuses it by name.
        assert_eq!(at(O::Stopped, S::Absent, false, false), Action::Nothing);
        assert_eq!(at(O::Gone, S::Absent, false, true), Action::Missing);
        assert_eq!(at(O::Gone, S::Absent, false, false), Action::Nothing);
    }

    #[test]
    fn a_wanted_clone_is_finished_forward_whatever_the_original() {
        for o in [O::Running, O::Stopped, O::Gone] {
            for f in [false, true] {
                assert_eq!(at(o, S::Created, true, f), Action::Finish { start: true });
                assert_eq!(at(o, S::Running, true, f), Action::Finish { start: false });
                assert_eq!(at(o, S::Healthy, true, f), Action::Finish { start: false });
            }
        }
    }

    #[test]
    fn an_unwanted_clone_goes_and_the_original_comes_back() {
        for c in [S::Created, S::Running, S::Healthy] {
            for f in [false, true] {
                assert_eq!(
                    at(O::Running, c, false, f),
                    Action::Discard {
                        start_original: false
                    }
                );
                // The rollback: hapi_2 exited beside the rollout's healthy clone.
                assert_eq!(
                    at(O::Stopped, c, false, f),
                    Action::Discard {
                        start_original: true
                    }
                );
                assert_eq!(
                    at(O::Gone, c, false, f),
                    Action::Adopt {
                        start: c == S::Created
                    }
                );
            }
        }
    }

    #[test]
    fn the_new_replica_of_scale() {
        assert_eq!(decide_new(S::Absent, true), NewReplica::Nothing);
        assert_eq!(decide_new(S::Absent, false), NewReplica::Nothing);
        assert_eq!(decide_new(S::Created, true), NewReplica::StartAndGate);
        assert_eq!(decide_new(S::Running, true), NewReplica::Gate);
        assert_eq!(decide_new(S::Healthy, true), NewReplica::Gate);
        assert_eq!(decide_new(S::Created, false), NewReplica::Remove);
        assert_eq!(decide_new(S::Running, false), NewReplica::Remove);
        assert_eq!(decide_new(S::Healthy, false), NewReplica::Nothing);
    }

    #[test]
    fn a_reentered_check_leaves_the_interrupted_replicas_to_settle() {
        let r = |name: &str, number: u32, state: &str| Replica {
            id: name.into(),
            name: name.into(),
            number,
            image: "i".into(),
            image_id: "sha256:i".into(),
            state: state.into(),
            status: String::new(),
            labels: Default::default(),
        };
        let names = |v: &[Replica]| v.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        // hapi_1 exited beside its clone, hapi_2 stopped in flight, hapi_3 gone (its clone
        // stands for it), hapi_4 stopped by someone else.
        let every = [
            r("p_hapi_1", 1, "exited"),
            r("p_hapi_1-ferry-next", 1, "running"),
            r("p_hapi_2", 2, "exited"),
            r("p_hapi_3-ferry-next", 3, "created"),
            r("p_hapi_4", 4, "exited"),
        ];
        let (all, settled) = on_reentry(&every, Some(2));
        assert_eq!(
            names(&all),
            ["p_hapi_1", "p_hapi_2", "p_hapi_3-ferry-next", "p_hapi_4"]
        );
        assert_eq!(names(&settled), ["p_hapi_4"], "only hapi_4 must be running");
    }

    fn info(running: bool, health: Option<&str>) -> ContainerInfo {
        ContainerInfo {
            id: "c".into(),
            name: "p_hapi_1".into(),
            image_id: "sha256:new".into(),
            config: Default::default(),
            host_config: Default::default(),
            networks: Default::default(),
            running,
            health: health.map(str::to_owned),
            health_log: None,
            exit_code: None,
            host_ports: Default::default(),
            mounts: vec![],
        }
    }

    #[test]
    fn states_are_read_from_the_container() {
        assert_eq!(original(None), O::Gone);
        assert_eq!(original(Some(&info(false, None))), O::Stopped);
        assert_eq!(original(Some(&info(true, Some("starting")))), O::Running);
        assert_eq!(successor(None), S::Absent);
        assert_eq!(successor(Some(&info(false, Some("healthy")))), S::Created);
        assert_eq!(successor(Some(&info(true, Some("starting")))), S::Running);
        assert_eq!(successor(Some(&info(true, Some("unhealthy")))), S::Running);
        assert_eq!(successor(Some(&info(true, Some("healthy")))), S::Healthy);
        assert_eq!(successor(Some(&info(true, None))), S::Healthy);
        let mut c = info(true, None);
        let want = |hash| Want {
            image_id: "sha256:new",
            hash,
        };
        assert!(want(None).holds(&c));
        assert!(!want(Some("h1")).holds(&c), "no hash label: not compose's");
        c.config.labels = Some([(CONFIG_HASH.to_owned(), "h1".to_owned())].into());
        assert!(want(Some("h1")).holds(&c));
        c.image_id = "sha256:old".into();
        assert!(!want(Some("h1")).holds(&c));
    }
}
