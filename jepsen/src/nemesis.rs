//! Faults on a random schedule, with quiet periods between them.
//!
//! | name | faults |
//! |---|---|
//! | `kill` | `kill -9` a random node, or the leader, and restart it; or kill every node and restart them all |
//! | `pause` | `SIGSTOP` the leader (or a random node) for 4–10 maximum election timeouts, then `SIGCONT` |
//! | `partition` | blackhole links in the relays: two halves, the leader alone, or a majority ring (every node sees a majority, no two the same one; three nodes: a bridge) |
//! | `net` | delay (30–150 ms + jitter) and/or loss (5–20 % of chunks stall for a retransmission timeout) on every link or on a random node's links |
//! | `membership` | remove a node (sometimes the leader, sometimes one that is down) with `DELETE /v1/nodes/{id}`, then add a node with a new id with `gateway join`; half the time while another fault is in force (the change runs alongside it and may finish only after it heals) |
//!
//! Every action is recorded in the history (process `nemesis`) with what it did.

use crate::db::{Db, Life};
use crate::history::{Op, Process, Recorder, Type};
use crate::net::Shape;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub const ALL: [&str; 5] = ["kill", "pause", "partition", "net", "membership"];

#[derive(Clone, Debug)]
pub struct NemesisOptions {
    pub enabled: Vec<String>,
    /// Quiet period between faults: uniform in this range.
    pub quiet: (Duration, Duration),
    /// How long a fault lasts (pauses are shorter, see the module docs).
    pub hold: (Duration, Duration),
    /// The target cluster size (membership keeps it).
    pub nodes: usize,
    /// Maximum election timeout of the nodes (pauses last 4–10 of them).
    pub election_max: Duration,
}

/// What to undo.
enum Undo {
    Restart(Vec<u64>),
    Resume(Vec<u64>),
    Net,
    Nothing,
}

pub struct Nemesis {
    db: Arc<Db>,
    rec: Arc<Recorder>,
    opts: NemesisOptions,
    rng: StdRng,
}

impl Nemesis {
    pub fn new(db: Arc<Db>, rec: Arc<Recorder>, opts: NemesisOptions, seed: u64) -> Nemesis {
        Nemesis {
            db,
            rec,
            opts,
            rng: rand::SeedableRng::seed_from_u64(seed),
        }
    }

    fn log(&self, f: &str, value: Value) -> Op {
        self.rec
            .record(Op::invoke(Process::nemesis(), f, None, value))
    }

    fn done(&self, inv: &Op, value: Value) {
        self.rec.record(Op::complete(inv, Type::Info, value));
    }

    fn between(&mut self, r: (Duration, Duration)) -> Duration {
        if r.1 <= r.0 {
            return r.0;
        }
        Duration::from_millis(
            self.rng
                .random_range(r.0.as_millis() as u64..r.1.as_millis() as u64),
        )
    }

    /// Sleeps `d`, or until `deadline`, whichever comes first.
    async fn hold(&self, d: Duration, deadline: Instant) {
        tokio::time::sleep_until((Instant::now() + d).min(deadline)).await;
    }

    /// Runs faults until `deadline`; everything it broke is healed when it returns.
    pub async fn run(&mut self, deadline: Instant) {
        if self.opts.enabled.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        loop {
            let quiet = self.between(self.opts.quiet);
            self.hold(quiet, deadline).await;
            if Instant::now() + Duration::from_secs(1) >= deadline {
                return;
            }
            let kind = self
                .opts
                .enabled
                .choose(&mut self.rng)
                .cloned()
                .unwrap_or_default();
            if kind == "membership" {
                let others: Vec<String> = self
                    .opts
                    .enabled
                    .iter()
                    .filter(|k| *k != "membership")
                    .cloned()
                    .collect();
                let with = if !others.is_empty() && self.rng.random_bool(0.5) {
                    others.choose(&mut self.rng).cloned()
                } else {
                    None
                };
                let undo = match &with {
                    Some(k) => self.start(k, false).await,
                    None => Undo::Nothing,
                };
                let hold = self.between(self.opts.hold);
                let leader_bias = self.rng.random_bool(0.3);
                let pick: usize = self.rng.random_range(0..1000);
                let me = &*self;
                tokio::join!(me.membership(leader_bias, pick), async move {
                    me.hold(hold, deadline).await;
                    me.heal(undo);
                });
            } else {
                let undo = self.start(&kind, true).await;
                let d = if kind == "pause" {
                    let ms = self.opts.election_max.as_millis() as u64;
                    Duration::from_millis(self.rng.random_range(4 * ms..10 * ms))
                } else {
                    self.between(self.opts.hold)
                };
                self.hold(d, deadline).await;
                self.heal(undo);
            }
        }
    }

    /// The leader some live node names, if any.
    async fn leader(&self) -> Option<u64> {
        self.db.leader().await.ok()
    }

    /// Starts a fault of `kind`. `drastic` allows killing every node.
    async fn start(&mut self, kind: &str, drastic: bool) -> Undo {
        let members = self.db.members();
        let running: Vec<u64> = members
            .iter()
            .copied()
            .filter(|&id| self.db.life(id) == Some(Life::Running))
            .collect();
        match kind {
            "kill" => {
                let roll = self.rng.random_range(0..10);
                let (what, victims) = if drastic && roll == 0 {
                    ("all", running.clone())
                } else if roll < 5 {
                    match self.leader().await {
                        Some(l) if running.contains(&l) => ("leader", vec![l]),
                        _ => (
                            "random",
                            running.choose(&mut self.rng).copied().into_iter().collect(),
                        ),
                    }
                } else {
                    (
                        "random",
                        running.choose(&mut self.rng).copied().into_iter().collect(),
                    )
                };
                let inv = self.log("kill", json!(what));
                for id in &victims {
                    let _ = self.db.kill(*id);
                }
                self.done(&inv, json!({"killed": victims}));
                Undo::Restart(victims)
            }
            "pause" => {
                let target = if self.rng.random_bool(0.7) {
                    self.leader().await.filter(|l| running.contains(l))
                } else {
                    None
                }
                .or_else(|| running.choose(&mut self.rng).copied());
                let inv = self.log(
                    "pause",
                    json!(if target.is_some() { "leader" } else { "none" }),
                );
                let mut paused = Vec::new();
                if let Some(id) = target
                    && self.db.pause(id).is_ok()
                {
                    paused.push(id);
                }
                self.done(&inv, json!({"paused": paused}));
                Undo::Resume(paused)
            }
            "partition" => {
                let mut ids = members.clone();
                ids.shuffle(&mut self.rng);
                let roll = self.rng.random_range(0..3);
                let (what, blocked) = match roll {
                    0 => {
                        // Two halves: a minority and a majority.
                        let cut = ids.len() / 2;
                        let (a, b) = ids.split_at(cut.max(1));
                        ("halves", pairs_between(a, b))
                    }
                    1 => {
                        let l = self
                            .leader()
                            .await
                            .filter(|l| ids.contains(l))
                            .unwrap_or(ids[0]);
                        let rest: Vec<u64> = ids.iter().copied().filter(|&i| i != l).collect();
                        ("isolated-leader", pairs_between(&[l], &rest))
                    }
                    _ => ("majority-ring", ring(&ids)),
                };
                let inv = self.log("partition", json!(what));
                self.db.net.set_blocked(blocked.clone());
                self.done(
                    &inv,
                    json!({"blocked": blocked.iter().map(|(a, b)| format!("{a}-{b}")).collect::<Vec<_>>()}),
                );
                Undo::Net
            }
            "net" => {
                let delay = self.rng.random_bool(0.7);
                let loss = !delay || self.rng.random_bool(0.4);
                let shape = Shape {
                    delay: if delay {
                        Duration::from_millis(self.rng.random_range(30..150))
                    } else {
                        Duration::ZERO
                    },
                    jitter: if delay {
                        Duration::from_millis(self.rng.random_range(5..50))
                    } else {
                        Duration::ZERO
                    },
                    loss: if loss {
                        self.rng.random_range(0.05..0.2)
                    } else {
                        0.0
                    },
                };
                let links: Vec<(u64, u64)> = if self.rng.random_bool(0.5) {
                    all_pairs(&members)
                } else {
                    let n = *members.choose(&mut self.rng).unwrap_or(&0);
                    members
                        .iter()
                        .filter(|&&m| m != n)
                        .map(|&m| (n, m))
                        .collect()
                };
                let inv = self.log("net", json!("shape"));
                self.db.net.shape(&links, shape);
                self.done(
                    &inv,
                    json!({
                        "delay_ms": shape.delay.as_millis() as u64,
                        "jitter_ms": shape.jitter.as_millis() as u64,
                        "loss": (shape.loss * 100.0).round() / 100.0,
                        "links": links.iter().map(|(a, b)| format!("{a}-{b}")).collect::<Vec<_>>(),
                    }),
                );
                Undo::Net
            }
            _ => Undo::Nothing,
        }
    }

    /// Undoes a fault.
    fn heal(&self, undo: Undo) {
        match undo {
            Undo::Restart(ids) => {
                let inv = self.log("restart", json!(ids));
                let mut started = Vec::new();
                for id in ids {
                    if self.db.life(id) == Some(Life::Down) && self.db.restart(id).is_ok() {
                        started.push(id);
                    }
                }
                self.done(&inv, json!({"restarted": started}));
            }
            Undo::Resume(ids) => {
                let inv = self.log("resume", json!(ids));
                for id in &ids {
                    let _ = self.db.resume(*id);
                }
                self.done(&inv, json!({"resumed": ids}));
            }
            Undo::Net => {
                let inv = self.log("heal", Value::Null);
                self.db.net.heal();
                self.done(&inv, json!("network healed"));
            }
            Undo::Nothing => {}
        }
    }

    /// Removes a node (if the cluster is at its size) and adds one with a new id. The victim
    /// is the leader if `leader_bias`, else member number `pick` (modulo their count).
    async fn membership(&self, leader_bias: bool, pick: usize) {
        let members = self.db.members();
        if members.len() >= self.opts.nodes && members.len() > 1 {
            let victim = if leader_bias {
                self.leader().await.filter(|l| members.contains(l))
            } else {
                None
            }
            .or_else(|| members.get(pick % members.len()).copied());
            if let Some(victim) = victim {
                let inv = self.log("remove-node", json!(victim));
                let res = self.db.remove_node(victim, Duration::from_secs(15)).await;
                // The CLI's answer may be lost; the leader's membership says what happened.
                let gone = wait_until(Duration::from_secs(20), || async {
                    self.db.voters().await.ok().map(|v| !v.contains(&victim))
                })
                .await;
                match (gone, &res) {
                    (Some(true), _) => {
                        self.db.retire(victim);
                        self.done(&inv, json!({"removed": victim}));
                    }
                    _ => self.done(
                        &inv,
                        json!({"removed": Value::Null, "node": victim, "answer": res.as_ref().ok(), "error": res.as_ref().err().map(|e| format!("{e:#}"))}),
                    ),
                }
            }
        }
        if self.db.members().len() < self.opts.nodes {
            if self.db.peek_id() > crate::net::MAX_ID {
                let inv = self.log("add-node", Value::Null);
                self.done(&inv, json!({"added": Value::Null, "error": "node ids are used up (the address plan holds 110)"}));
                return;
            }
            let id = self.db.new_id();
            let inv = self.log("add-node", json!(id));
            let res = match self.db.spawn_join(id).await {
                Ok(()) => self.db.wait_voter(id, Duration::from_secs(60)).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => self.done(&inv, json!({"added": id})),
                Err(e) => {
                    // Leave it joining: the final reconciliation decides (a late join may
                    // still complete).
                    self.done(
                        &inv,
                        json!({"added": Value::Null, "node": id, "error": format!("{e:#}")}),
                    );
                }
            }
        }
    }
}

/// Polls `f` every 200 ms until it returns `Some(true)` or `within` passes.
async fn wait_until<F, Fut>(within: Duration, mut f: F) -> Option<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<bool>>,
{
    let deadline = Instant::now() + within;
    loop {
        let v = f().await;
        if v == Some(true) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pairs_between(a: &[u64], b: &[u64]) -> BTreeSet<(u64, u64)> {
    let mut s = BTreeSet::new();
    for &x in a {
        for &y in b {
            s.insert((x.min(y), x.max(y)));
        }
    }
    s
}

fn all_pairs(ids: &[u64]) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    for (i, &a) in ids.iter().enumerate() {
        for &b in &ids[i + 1..] {
            v.push((a, b));
        }
    }
    v
}

/// Links to block so that, in ring order, every node sees itself and its ⌊n/2⌋ nearest
/// neighbours (a majority) and no two nodes see the same majority. With three nodes that is
/// impossible with symmetric links; one link is cut instead (a bridge through the third).
pub fn ring(ids: &[u64]) -> BTreeSet<(u64, u64)> {
    let n = ids.len();
    let mut blocked = BTreeSet::new();
    if n < 3 {
        return blocked;
    }
    if n == 3 {
        blocked.insert((ids[0].min(ids[1]), ids[0].max(ids[1])));
        return blocked;
    }
    let reach = n / 2 / 2 + (n / 2) % 2; // neighbours on each side
    for i in 0..n {
        for j in i + 1..n {
            let d = (j - i).min(n - (j - i));
            if d > reach {
                blocked.insert((ids[i].min(ids[j]), ids[i].max(ids[j])));
            }
        }
    }
    blocked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sees(ids: &[u64], blocked: &BTreeSet<(u64, u64)>, me: u64) -> BTreeSet<u64> {
        ids.iter()
            .copied()
            .filter(|&o| o == me || !blocked.contains(&(me.min(o), me.max(o))))
            .collect()
    }

    #[test]
    fn a_majority_ring_gives_every_node_its_own_majority() {
        for n in [4u64, 5, 7] {
            let ids: Vec<u64> = (1..=n).collect();
            let b = ring(&ids);
            let views: Vec<BTreeSet<u64>> = ids.iter().map(|&i| sees(&ids, &b, i)).collect();
            for v in &views {
                assert!(v.len() as u64 > n / 2, "n={n}: {v:?} is no majority");
                assert!((v.len() as u64) < n, "n={n}: {v:?} sees everyone");
            }
            let distinct: BTreeSet<_> = views.iter().collect();
            assert_eq!(distinct.len(), n as usize, "n={n}: views repeat");
        }
        assert_eq!(ring(&[1, 2, 3]).len(), 1);
    }
}
