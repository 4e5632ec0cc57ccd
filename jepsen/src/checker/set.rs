//! The set workload: unique routes `s<n>` added through random nodes (`PUT` with
//! `If-None-Match: *`), then read back from every node at the end (`read-all`).
//!
//! * lost: acknowledged adds missing from a final read;
//! * unexpected: routes in a final read that were never added, or whose add certainly failed;
//! * duplicated: acknowledged adds the cluster applied more than once — the route's final
//!   revision differs from the one its add was acknowledged with (it was written again), its
//!   create-only add was refused with 412 although no one else ever wrote that name (the same
//!   request was applied twice), or a listing names it twice.
//!
//! Every node's final read must succeed and all of them must hold the same set.

use crate::history::{Op, Type, pairs};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, Default, Serialize)]
pub struct SetReport {
    pub attempted: usize,
    pub acknowledged: usize,
    /// Adds whose outcome is unknown, and how many of those are present at the end.
    pub unknown: usize,
    pub recovered: usize,
    pub definitely_failed: usize,
    /// Nodes whose final read succeeded.
    pub nodes_read: Vec<u64>,
    /// Final reads that failed (node, error).
    pub unread: Vec<String>,
    pub lost: BTreeSet<u64>,
    pub unexpected: BTreeSet<u64>,
    pub duplicated: BTreeSet<u64>,
    /// Nodes whose final set differs from the first node's.
    pub divergent: Vec<String>,
}

impl SetReport {
    pub fn valid(&self) -> Option<bool> {
        if self.attempted == 0 {
            return None;
        }
        Some(
            self.lost.is_empty()
                && self.unexpected.is_empty()
                && self.duplicated.is_empty()
                && self.unread.is_empty()
                && self.divergent.is_empty()
                && !self.nodes_read.is_empty(),
        )
    }
}

/// Elements of a `read-all` result: `[[n, revision], ...]`.
fn elements(op: &Op) -> Vec<(u64, u64)> {
    op.value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| Some((e.get(0)?.as_u64()?, e.get(1)?.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn check(history: &[Op]) -> SetReport {
    let mut r = SetReport::default();
    let mut attempted = BTreeSet::new();
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut failed = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    let mut reads: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
    for p in pairs(history) {
        match p.invoke.f.as_str() {
            "add" => {
                let Some(n) = p.invoke.value_u64() else {
                    continue;
                };
                attempted.insert(n);
                match p.complete {
                    Some(c) if c.kind == Type::Ok => {
                        acked.insert(n, c.rev.unwrap_or(0));
                    }
                    Some(c) if c.kind == Type::Fail && c.code == Some(412) => {
                        // Create-only refused for a name only this add ever used.
                        r.duplicated.insert(n);
                    }
                    Some(c) if c.kind == Type::Fail => {
                        failed.insert(n);
                    }
                    _ => {
                        unknown.insert(n);
                    }
                }
            }
            "read-all" => {
                let node = p.invoke.node.unwrap_or(0);
                match p.complete {
                    Some(c) if c.kind == Type::Ok => reads.push((node, elements(c))),
                    Some(c) => r.unread.push(format!(
                        "node {node}: {}",
                        c.error.clone().unwrap_or_else(|| format!("{:?}", c.kind))
                    )),
                    None => r.unread.push(format!("node {node}: never answered")),
                }
            }
            _ => {}
        }
    }
    r.attempted = attempted.len();
    r.acknowledged = acked.len();
    r.unknown = unknown.len();
    r.definitely_failed = failed.len();
    let mut first: Option<(u64, BTreeSet<u64>)> = None;
    for (node, elems) in &reads {
        r.nodes_read.push(*node);
        let mut present: BTreeMap<u64, u64> = BTreeMap::new();
        for (n, rev) in elems {
            if present.insert(*n, *rev).is_some() {
                r.duplicated.insert(*n);
            }
        }
        for (n, rev) in &acked {
            match present.get(n) {
                None => {
                    r.lost.insert(*n);
                }
                Some(got) if *rev != 0 && got != rev => {
                    r.duplicated.insert(*n);
                }
                Some(_) => {}
            }
        }
        for n in present.keys() {
            if !attempted.contains(n) || failed.contains(n) {
                r.unexpected.insert(*n);
            }
        }
        let set: BTreeSet<u64> = present.keys().copied().collect();
        match &first {
            None => {
                r.recovered = unknown.intersection(&set).count();
                first = Some((*node, set));
            }
            Some((n0, s0)) if *s0 != set => r.divergent.push(format!(
                "node {node} holds {} elements, node {n0} holds {} ({} differ)",
                set.len(),
                s0.len(),
                s0.symmetric_difference(&set).count()
            )),
            Some(_) => {}
        }
    }
    r
}
