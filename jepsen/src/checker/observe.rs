//! Checks on the `/leader` and `/status` observations, and the availability figures.
//!
//! * At most one leader per term: every `(term, leader)` any node reported — a node saying it
//!   is the leader (`/status` role `leader`), or naming the leader it follows (`/leader`) —
//!   must agree on one leader per term. (openraft's default "advanced" leader ids, which the
//!   gateway uses, allow a second leader with a higher node id in the same term; with
//!   [`LeaderMode::Openraft`] such terms are reported but accepted.)
//! * Votes never go backwards on a node: if one observation of a node completed before another
//!   began, the later one reports a term at least as high, and in the same term not a leader
//!   with a lower id (across restarts too: the vote is durable). This holds in both modes.
//! * Elections: the distinct `(term, leader)` pairs seen.
//! * Failover gaps: windows in which no acknowledged write (`write`, `cas`, `add`) completed,
//!   and windows in which every node that answered `/leader` said no leader is known (503).

use crate::history::{Op, Pair, Process, Type, pairs};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What "one leader per term" means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum LeaderMode {
    /// Standard Raft: at most one leader per term.
    #[default]
    Raft,
    /// openraft's advanced leader ids `(term, node id)`: a term may see several leaders, each
    /// later one with a higher id; per-node vote order is still checked.
    Openraft,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LeaderReport {
    pub mode: LeaderMode,
    pub observations: usize,
    /// `term → leaders` where more than one leader was reported for a term.
    pub multiple_leaders: BTreeMap<u64, BTreeSet<u64>>,
    /// Evidence for each doubled term: which node said what, when.
    pub multiple_leader_evidence: Vec<String>,
    /// Terms going backwards on a node.
    pub term_regressions: Vec<String>,
    /// Distinct (term, leader) pairs, in order of first sight: (seconds, term, leader).
    pub elections: Vec<(f64, u64, u64)>,
    pub highest_term: u64,
}

impl LeaderReport {
    pub fn one_leader_per_term(&self) -> Option<bool> {
        if self.observations == 0 {
            return None;
        }
        Some(self.mode == LeaderMode::Openraft || self.multiple_leaders.is_empty())
    }
    pub fn monotonic_terms(&self) -> Option<bool> {
        if self.observations == 0 {
            return None;
        }
        Some(self.term_regressions.is_empty())
    }
}

/// (invoke, complete, term, leader claimed, source) of an ok observation.
struct Obs<'a> {
    start: u64,
    end: u64,
    node: u64,
    term: u64,
    leader: Option<u64>,
    op: &'a Op,
}

fn observations<'a>(ps: &[Pair<'a>]) -> Vec<Obs<'a>> {
    let mut out = Vec::new();
    for p in ps {
        let Some(c) = p.complete else { continue };
        if c.kind != Type::Ok {
            continue;
        }
        let Some(node) = p.invoke.node else { continue };
        let v = &c.value;
        let (term, leader) = match p.invoke.f.as_str() {
            "status" => (
                v.get("term").and_then(|t| t.as_u64()),
                (v.get("role").and_then(|r| r.as_str()) == Some("leader")).then_some(node),
            ),
            "leader" => (
                v.get("term").and_then(|t| t.as_u64()),
                v.get("id").and_then(|t| t.as_u64()),
            ),
            _ => continue,
        };
        let Some(term) = term else { continue };
        out.push(Obs {
            start: p.invoke.time,
            end: c.time,
            node,
            term,
            leader,
            op: c,
        });
    }
    out
}

pub fn check_leaders(history: &[Op], mode: LeaderMode) -> LeaderReport {
    let ps = pairs(history);
    let obs = observations(&ps);
    let mut r = LeaderReport {
        mode,
        observations: obs.len(),
        ..Default::default()
    };
    let mut leaders: BTreeMap<u64, BTreeMap<u64, &Obs>> = BTreeMap::new();
    let mut first_seen: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for o in &obs {
        r.highest_term = r.highest_term.max(o.term);
        if let Some(l) = o.leader {
            leaders.entry(o.term).or_default().entry(l).or_insert(o);
            let e = first_seen.entry((o.term, l)).or_insert(o.end);
            *e = (*e).min(o.end);
        }
    }
    for (term, ls) in &leaders {
        if ls.len() > 1 {
            r.multiple_leaders
                .insert(*term, ls.keys().copied().collect());
            for (l, o) in ls {
                r.multiple_leader_evidence.push(format!(
                    "term {term}: leader {l} first reported by node {} in `{}` at {:.3}s (op {}): {}",
                    o.node,
                    o.op.f,
                    o.end as f64 / 1e9,
                    o.op.index,
                    o.op.value
                ));
            }
        }
    }
    let mut el: Vec<(f64, u64, u64)> = first_seen
        .iter()
        .map(|((t, l), at)| (*at as f64 / 1e9, *t, *l))
        .collect();
    el.sort_by(|a, b| a.0.total_cmp(&b.0));
    r.elections = el;

    // Terms per node: sweep in invocation order, keeping the highest term among observations
    // that completed before.
    let mut by_node: BTreeMap<u64, Vec<&Obs>> = BTreeMap::new();
    for o in &obs {
        by_node.entry(o.node).or_default().push(o);
    }
    for (node, list) in by_node {
        let mut by_start = list.clone();
        by_start.sort_by_key(|o| o.start);
        let mut by_end = list;
        by_end.sort_by_key(|o| o.end);
        // The highest vote, (term, leader id or 0 when unknown), among observations that
        // completed before each one began.
        let vote = |o: &Obs| (o.term, o.leader.unwrap_or(0));
        let mut i = 0;
        let mut best: Option<&Obs> = None;
        for b in by_start {
            while i < by_end.len() && by_end[i].end < b.start {
                if best.is_none_or(|x| vote(by_end[i]) > vote(x)) {
                    best = Some(by_end[i]);
                }
                i += 1;
            }
            let Some(a) = best else { continue };
            let back = a.term > b.term
                || (a.term == b.term
                    && b.leader.is_some()
                    && a.leader.is_some_and(|l| Some(l) > b.leader));
            if back && r.term_regressions.len() < 20 {
                r.term_regressions.push(format!(
                    "node {node}: term {} leader {:?} at {:.3}s (op {}), then term {} leader {:?} at {:.3}s (op {})",
                    a.term,
                    a.leader,
                    a.end as f64 / 1e9,
                    a.op.index,
                    b.term,
                    b.leader,
                    b.end as f64 / 1e9,
                    b.op.index
                ));
            }
        }
    }
    r
}

/// A window of unavailability.
#[derive(Clone, Debug, Serialize)]
pub struct Gap {
    pub from: f64,
    pub to: f64,
    pub secs: f64,
    /// The faults active or healed during the window.
    pub faults: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GapReport {
    /// Windows of at least `threshold` seconds without an acknowledged write.
    pub write_gaps: Vec<Gap>,
    /// Windows in which every `/leader` answer said no leader is known.
    pub leaderless: Vec<Gap>,
    pub threshold: f64,
}

impl GapReport {
    pub fn longest_write_gap(&self) -> f64 {
        self.write_gaps.iter().map(|g| g.secs).fold(0.0, f64::max)
    }
    pub fn longest_leaderless(&self) -> f64 {
        self.leaderless.iter().map(|g| g.secs).fold(0.0, f64::max)
    }
}

/// Nemesis actions as (time, description).
fn fault_timeline(history: &[Op]) -> Vec<(u64, String)> {
    history
        .iter()
        .filter(|o| o.process == Process::nemesis() && o.kind != Type::Invoke)
        .map(|o| (o.time, format!("{} {}", o.f, o.value)))
        .collect()
}

fn faults_in(timeline: &[(u64, String)], from: u64, to: u64) -> Vec<String> {
    // The last action before the window (the fault in force) and those during it.
    let mut out = Vec::new();
    if let Some((t, d)) = timeline.iter().rev().find(|(t, _)| *t <= from) {
        out.push(format!("{:.1}s {d}", *t as f64 / 1e9));
    }
    for (t, d) in timeline.iter().filter(|(t, _)| *t > from && *t <= to) {
        out.push(format!("{:.1}s {d}", *t as f64 / 1e9));
    }
    out
}

pub fn gaps(history: &[Op], threshold_secs: f64) -> GapReport {
    let ps = pairs(history);
    let timeline = fault_timeline(history);
    let threshold = (threshold_secs * 1e9) as u64;
    let client: Vec<&Pair> = ps.iter().filter(|p| p.invoke.is_client()).collect();
    let (Some(first), Some(last)) = (
        client.iter().map(|p| p.invoke.time).min(),
        client
            .iter()
            .filter_map(|p| p.complete.map(|c| c.time))
            .max(),
    ) else {
        return GapReport {
            threshold: threshold_secs,
            ..Default::default()
        };
    };
    let mut writes: Vec<u64> = client
        .iter()
        .filter(|p| matches!(p.invoke.f.as_str(), "write" | "cas" | "add"))
        .filter(|p| p.outcome() == Type::Ok)
        .filter_map(|p| p.complete.map(|c| c.time))
        .collect();
    writes.sort_unstable();
    let mut r = GapReport {
        threshold: threshold_secs,
        ..Default::default()
    };
    let mut prev = first;
    for t in writes.iter().copied().chain(std::iter::once(last)) {
        if t > prev && t - prev >= threshold {
            r.write_gaps.push(Gap {
                from: prev as f64 / 1e9,
                to: t as f64 / 1e9,
                secs: (t - prev) as f64 / 1e9,
                faults: faults_in(&timeline, prev, t),
            });
        }
        prev = prev.max(t);
    }
    // /leader answers (200 or 503; a node that did not answer says nothing), in completion
    // order. The cluster is leaderless while every node that answered within the last second
    // says no leader is known.
    let mut answers: Vec<(u64, u64, bool)> = ps
        .iter()
        .filter(|p| p.invoke.f == "leader")
        .filter_map(|p| p.complete)
        .filter(|c| matches!(c.code, Some(200) | Some(503)))
        .map(|c| (c.time, c.node.unwrap_or(0), c.kind == Type::Ok))
        .collect();
    answers.sort_unstable();
    let recent = 1_000_000_000u64;
    let mut last: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
    let mut since: Option<u64> = None;
    for (t, node, ok) in answers {
        last.insert(node, (t, ok));
        let leaderless = last
            .values()
            .filter(|(at, _)| t.saturating_sub(*at) <= recent)
            .all(|(_, ok)| !ok);
        match (leaderless, since) {
            (true, None) => since = Some(t),
            (false, Some(s)) => {
                if t - s >= threshold / 5 {
                    r.leaderless.push(Gap {
                        from: s as f64 / 1e9,
                        to: t as f64 / 1e9,
                        secs: (t - s) as f64 / 1e9,
                        faults: faults_in(&timeline, s, t),
                    });
                }
                since = None;
            }
            _ => {}
        }
    }
    r
}
