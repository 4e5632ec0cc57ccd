//! The leader's watch over the cluster: it gathers every node's view of backend health and
//! commits the cluster's verdict when a pool's policy is met, records nodes lost and back, and
//! records its own election — each as one replicated command, so alerts are sent once per
//! transition, by the leader only.
//!
//! Every node reports the backends it sees down about once a second (and at once on a change);
//! the report is also its liveness signal. The leader keeps the reports in memory: a new
//! leader waits until it holds fresh reports from a majority of members before it judges, and
//! until it has led for [`NODE_LOST_AFTER`] before it calls anyone lost.

use crate::handle::{Inner, Op, Out};
use gateway_model::{
    Command, EventKind, HealthCheck, HealthPolicy, NodeId, Pool, Request, SeenDown, State,
};
use openraft::ServerState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How often a node sends its view (it also sends at once when the view changes).
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// A report older than this no longer counts towards a verdict.
pub const REPORT_STALE: Duration = Duration::from_millis(3_500);
/// A member the leader has not heard from for this long is recorded as lost.
pub const NODE_LOST_AFTER: Duration = Duration::from_secs(5);
/// How often the leader judges.
const TICK: Duration = Duration::from_millis(200);

/// The reports the leader holds: per node, when it last reported and what it sees down.
#[derive(Default)]
pub(crate) struct Reports {
    by_node: HashMap<NodeId, (Instant, BTreeSet<SeenDown>)>,
}

impl Reports {
    pub(crate) fn put(&mut self, node: NodeId, down: BTreeSet<SeenDown>) {
        self.by_node.insert(node, (Instant::now(), down));
    }
}

/// A node's report, as it travels to the leader.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Report {
    pub(crate) node: NodeId,
    pub(crate) down: BTreeSet<SeenDown>,
}

/// Wall-clock milliseconds since the Unix epoch, for times chosen before proposing (never in
/// `apply`, which must stay pure).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the leader decided to propose at one tick.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Health {
        pool: String,
        backend: String,
        up: bool,
        down_on: Vec<NodeId>,
    },
    Lost(NodeId),
    Back(NodeId),
}

/// Judges health and liveness from the reports (pure, for tests).
pub(crate) fn judge(
    state: &State,
    members: &BTreeSet<NodeId>,
    me: NodeId,
    reports: &HashMap<NodeId, (Instant, BTreeSet<SeenDown>)>,
    now: Instant,
    led_for: Duration,
) -> Vec<Decision> {
    let mut out = Vec::new();
    let fresh: Vec<(&NodeId, &BTreeSet<SeenDown>)> = reports
        .iter()
        .filter(|(n, (at, _))| members.contains(n) && now.duration_since(*at) < REPORT_STALE)
        .map(|(n, (_, d))| (n, d))
        .collect();
    if led_for >= NODE_LOST_AFTER {
        for &m in members {
            if m == me {
                continue;
            }
            let alive = reports
                .get(&m)
                .is_some_and(|(at, _)| now.duration_since(*at) < NODE_LOST_AFTER);
            if !alive && !state.lost.contains(&m) {
                out.push(Decision::Lost(m));
            } else if alive && state.lost.contains(&m) {
                out.push(Decision::Back(m));
            }
        }
    }
    // Judge health only on fresh reports from a majority, so a new leader does not undo
    // verdicts before it has heard from the nodes that made them.
    if fresh.len() * 2 <= members.len() {
        return out;
    }
    // Only a backend some fresh report sees down, or one the state holds down, can change:
    // visiting those alone keeps a tick cheap however many pools there are. Visited in the
    // order of the pools (by name) and of their backends.
    let mut candidates: BTreeMap<(&str, usize), (&Pool, &HealthCheck)> = BTreeMap::new();
    let mut consider = |pool: &str, backend: &str| {
        if let Some((name, p)) = state.pools.get_key_value(pool)
            && let Some(check) = &p.health_check
            && let Some(i) = p.backends.iter().position(|b| b.id == backend)
        {
            candidates.insert((name.as_str(), i), (&**p, check));
        }
    };
    for (_, seen) in &fresh {
        for s in seen.iter() {
            consider(&s.pool, &s.backend);
        }
    }
    for (pool, backends) in state.health.iter() {
        for (backend, h) in backends.iter() {
            if !h.up {
                consider(pool, backend);
            }
        }
    }
    for ((_, i), (pool, check)) in candidates {
        let b = &pool.backends[i];
        let seen = SeenDown {
            pool: pool.name.clone(),
            backend: b.id.clone(),
            address: b.address.clone(),
        };
        let down_on: Vec<NodeId> = fresh
            .iter()
            .filter(|(_, d)| d.contains(&seen))
            .map(|(n, _)| **n)
            .collect();
        let met = match check.policy {
            HealthPolicy::Majority => down_on.len() * 2 > members.len(),
            HealthPolicy::Any => !down_on.is_empty(),
        };
        if met != state.is_down(&pool.name, &b.id) {
            out.push(Decision::Health {
                pool: pool.name.clone(),
                backend: b.id.clone(),
                up: !met,
                down_on,
            });
        }
    }
    out
}

/// Runs the leader's duties on whichever node leads, until `stop`.
pub(crate) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut led: Option<(u64, Instant)> = None;
    let mut previous: Option<NodeId> = None;
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let (state_now, leader, term, members) = {
            let m = inner.raft.metrics();
            let m = m.borrow();
            let members: BTreeSet<NodeId> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect();
            (m.state, m.current_leader, m.current_term, members)
        };
        if state_now != ServerState::Leader || leader != Some(inner.id) {
            led = None;
            if let Some(l) = leader
                && l != inner.id
            {
                previous = Some(l);
            }
            continue;
        }
        if inner.transferring.load(Ordering::Acquire) {
            continue;
        }
        let now = Instant::now();
        let since = match led {
            Some((t, since)) if t == term => since,
            _ => {
                led = Some((term, now));
                let event = EventKind::LeaderChange {
                    leader: inner.id,
                    term,
                    previous: previous.filter(|p| *p != inner.id),
                };
                propose(
                    &inner,
                    Command::Record {
                        event,
                        at_ms: unix_ms(),
                    },
                )
                .await;
                now
            }
        };
        let state = inner.state.borrow().clone();
        let decisions = {
            let reports = inner.reports.lock().unwrap_or_else(|e| e.into_inner());
            judge(
                &state,
                &members,
                inner.id,
                &reports.by_node,
                now,
                now.duration_since(since),
            )
        };
        for d in decisions {
            let at_ms = unix_ms();
            let command = match d {
                Decision::Health {
                    pool,
                    backend,
                    up,
                    down_on,
                } => {
                    tracing::info!(%pool, %backend, up, ?down_on, "committing a backend health transition");
                    Command::SetHealth {
                        pool,
                        backend,
                        up,
                        down_on,
                        at_ms,
                    }
                }
                Decision::Lost(node) => {
                    tracing::warn!(
                        node,
                        "no report from node for {NODE_LOST_AFTER:?}: recording it lost"
                    );
                    Command::Record {
                        event: EventKind::NodeLost { node },
                        at_ms,
                    }
                }
                Decision::Back(node) => Command::Record {
                    event: EventKind::NodeBack { node },
                    at_ms,
                },
            };
            propose(&inner, command).await;
        }
    }
}

/// Proposes a command on this (leading) node; a failure is logged, and the next tick judges
/// again.
async fn propose(inner: &Arc<Inner>, command: Command) {
    let n = inner.counter.fetch_add(1, Ordering::Relaxed);
    let req = Request {
        id: format!("overseer:{:x}-{:x}-{n}", inner.id, inner.nonce),
        command,
    };
    match tokio::time::timeout(
        Duration::from_secs(5),
        inner.leader_call(Op::Write(req), Duration::from_secs(5), true),
    )
    .await
    {
        Ok(Ok(Out::Write(r))) => {
            if let Err(e) = r.outcome {
                tracing::debug!("overseer command refused: {e}");
            }
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!("overseer command failed: {e}"),
        Err(_) => tracing::debug!("overseer command timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_model::Backend;

    fn state(policy: HealthPolicy) -> State {
        let mut s = State::default();
        let pool = Pool {
            name: "web".into(),
            backends: vec![Backend {
                id: "a".into(),
                address: "127.0.0.1:1".into(),
                ..Default::default()
            }],
            health_check: Some(HealthCheck {
                policy,
                ..Default::default()
            }),
            ..Default::default()
        };
        s.apply(&Request {
            id: "1".into(),
            command: Command::PutPool { pool, expect: None },
        });
        s
    }

    fn seen() -> BTreeSet<SeenDown> {
        BTreeSet::from([SeenDown {
            pool: "web".into(),
            backend: "a".into(),
            address: "127.0.0.1:1".into(),
        }])
    }

    #[test]
    fn majority_needs_more_than_half_and_any_needs_one() {
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let now = Instant::now();
        let mut reports = HashMap::new();
        reports.insert(1, (now, seen()));
        reports.insert(2, (now, BTreeSet::new()));
        let led = Duration::from_secs(1);
        let s = state(HealthPolicy::Majority);
        assert!(judge(&s, &members, 1, &reports, now, led).is_empty());
        let any = state(HealthPolicy::Any);
        assert_eq!(
            judge(&any, &members, 1, &reports, now, led),
            vec![Decision::Health {
                pool: "web".into(),
                backend: "a".into(),
                up: false,
                down_on: vec![1]
            }]
        );
        reports.insert(2, (now, seen()));
        assert_eq!(judge(&s, &members, 1, &reports, now, led).len(), 1);
        // Only one fresh report of three: no verdict either way.
        reports.insert(2, (now - REPORT_STALE, seen()));
        reports.remove(&1);
        reports.insert(1, (now, seen()));
        reports.remove(&3);
        let only_one: HashMap<_, _> = reports
            .iter()
            .filter(|(n, _)| **n == 1)
            .map(|(n, r)| (*n, r.clone()))
            .collect();
        assert!(judge(&s, &members, 1, &only_one, now, led).is_empty());
    }

    #[test]
    fn only_backends_seen_or_held_down_are_judged_in_pool_and_backend_order() {
        let mut s = State::default();
        let backend = |id: &str, port: u16| Backend {
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            ..Default::default()
        };
        let pools = [
            ("zz", true, vec![backend("a", 1), backend("b", 2)]),
            ("aa", true, vec![backend("x", 3), backend("y", 4)]),
            ("plain", false, vec![backend("p", 5)]),
        ];
        let filler = (0..2000).map(|i| (format!("f{i}"), false, vec![backend("f", 6)]));
        for (n, (name, checked, backends)) in pools
            .into_iter()
            .map(|(n, c, b)| (n.to_string(), c, b))
            .chain(filler)
            .enumerate()
        {
            let pool = Pool {
                name,
                backends,
                health_check: checked.then(|| HealthCheck {
                    policy: HealthPolicy::Any,
                    ..Default::default()
                }),
                ..Default::default()
            };
            s.apply(&Request {
                id: format!("p{n}"),
                command: Command::PutPool { pool, expect: None },
            });
        }
        // zz/b was held down, and nobody sees it down any more: it comes back up.
        s.apply(&Request {
            id: "h".into(),
            command: Command::SetHealth {
                pool: "zz".into(),
                backend: "b".into(),
                up: false,
                down_on: vec![2],
                at_ms: 1,
            },
        });
        let down = |pool: &str, backend: &str, port: u16| SeenDown {
            pool: pool.into(),
            backend: backend.into(),
            address: format!("127.0.0.1:{port}"),
        };
        let now = Instant::now();
        let reports = HashMap::from([
            (
                1,
                (
                    now,
                    BTreeSet::from([
                        down("zz", "a", 1),
                        down("aa", "y", 4),
                        down("aa", "x", 9), // an old address of x: not x any more
                        down("plain", "p", 5), // no health check: no verdict
                        down("gone", "g", 7), // no such pool
                    ]),
                ),
            ),
            (2, (now, BTreeSet::new())),
        ]);
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let health = |pool: &str, backend: &str, up: bool, down_on: Vec<NodeId>| Decision::Health {
            pool: pool.into(),
            backend: backend.into(),
            up,
            down_on,
        };
        assert_eq!(
            judge(&s, &members, 1, &reports, now, Duration::from_secs(1)),
            vec![
                health("aa", "y", false, vec![1]),
                health("zz", "a", false, vec![1]),
                health("zz", "b", true, vec![]),
            ]
        );
    }

    #[test]
    fn silent_members_are_lost_only_after_the_leader_has_led_a_while() {
        let members: BTreeSet<NodeId> = [1, 2].into();
        let now = Instant::now();
        let reports = HashMap::from([(1, (now, BTreeSet::new()))]);
        let s = State::default();
        assert!(judge(&s, &members, 1, &reports, now, Duration::from_secs(1)).is_empty());
        assert_eq!(
            judge(&s, &members, 1, &reports, now, NODE_LOST_AFTER),
            vec![Decision::Lost(2)]
        );
    }
}
