//! Checkers: everything is decided from the history alone, so `jepsen check history.jsonl`
//! reaches the same verdict as the run that wrote it.

pub mod linear;
pub mod observe;
pub mod order;
pub mod register;
pub mod set;

use crate::history::{Op, Process, Type, pairs};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// One checker's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    /// `Some(true)` valid, `Some(false)` a violation, `None` unknown (could not decide).
    pub valid: Option<bool>,
    /// One line for the summary.
    pub summary: String,
    pub details: Value,
}

/// Counts of client operations.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// Per operation: [ops, ok, fail, info].
    pub by_f: BTreeMap<String, [usize; 4]>,
    /// Faults the nemesis started, by kind (kill, pause, partition, net, remove-node, add-node).
    pub faults: BTreeMap<String, usize>,
}

/// Everything the checkers found.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    pub stats: Stats,
    pub results: Vec<CheckResult>,
    pub gaps: observe::GapReport,
    pub elections: usize,
}

impl Analysis {
    /// Valid only if every checker is (unknown counts as not valid).
    pub fn valid(&self) -> bool {
        self.results.iter().all(|r| r.valid == Some(true))
    }

    pub fn result(&self, name: &str) -> Option<&CheckResult> {
        self.results.iter().find(|r| r.name == name)
    }
}

/// Options of the checkers.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// States the linearizability search may explore per key before giving up.
    pub budget: usize,
    /// Shortest window without acknowledged writes that is reported as a gap, in seconds.
    pub gap_secs: f64,
    /// What "one leader per term" means.
    pub leader_mode: observe::LeaderMode,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            budget: 2_000_000,
            gap_secs: 1.0,
            leader_mode: observe::LeaderMode::Raft,
        }
    }
}

fn stats(history: &[Op]) -> Stats {
    let mut s = Stats::default();
    for p in pairs(history) {
        if !p.invoke.is_client() {
            if p.invoke.process == Process::nemesis()
                && !matches!(
                    p.invoke.f.as_str(),
                    "heal" | "heal-all" | "restart" | "resume"
                )
            {
                *s.faults.entry(p.invoke.f.clone()).or_default() += 1;
            }
            continue;
        }
        let e = s.by_f.entry(p.invoke.f.clone()).or_default();
        e[0] += 1;
        s.ops += 1;
        match p.outcome() {
            Type::Ok => {
                e[1] += 1;
                s.ok += 1;
            }
            Type::Fail => {
                e[2] += 1;
                s.fail += 1;
            }
            _ => {
                e[3] += 1;
                s.info += 1;
            }
        }
    }
    s
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "valid",
        Some(false) => "INVALID",
        None => "unknown",
    }
}

/// Runs every checker over `history`.
pub fn analyse(history: &[Op], opts: &CheckOptions) -> Analysis {
    let mut results = Vec::new();

    let reg = register::check(history, opts.budget);
    let mut summary = format!(
        "{}: {} keys, {} ops ({} ok, {} info), {} keys not linearizable, {} undecided, {} revision conflicts",
        yes_no(reg.valid()),
        reg.keys,
        reg.ops,
        reg.ok,
        reg.info,
        reg.failures.len(),
        reg.unknown.len(),
        reg.revision_conflicts.len()
    );
    if let Some(f) = reg.failures.first() {
        summary.push_str(&format!("\n      first: key {}: {}", f.key, f.explanation));
    }
    results.push(CheckResult {
        name: "linearizable-registers",
        valid: if reg.keys == 0 { None } else { reg.valid() },
        summary,
        details: json!({
            "keys": reg.keys, "ops": reg.ops, "ok": reg.ok, "info": reg.info,
            "unknown_keys": reg.unknown,
            "revision_conflicts": reg.revision_conflicts,
            "failures": reg.failures.iter().map(register::failure_json).collect::<Vec<_>>(),
        }),
    });

    let ord = order::check(history);
    results.push(CheckResult {
        name: "revision-order",
        valid: ord.valid(),
        summary: format!(
            "{}: {} acknowledged answers, {} out of real-time order{}",
            yes_no(ord.valid()),
            ord.checked,
            ord.violations,
            ord.examples
                .first()
                .map(|e| format!("\n      first: {e}"))
                .unwrap_or_default()
        ),
        details: json!(ord),
    });

    let set = set::check(history);
    results.push(CheckResult {
        name: "set",
        valid: set.valid(),
        summary: format!(
            "{}: {} attempted, {} acknowledged, {} unknown ({} recovered), lost {}, unexpected {}, duplicated {}, read on nodes {:?}{}{}",
            yes_no(set.valid()),
            set.attempted,
            set.acknowledged,
            set.unknown,
            set.recovered,
            set.lost.len(),
            set.unexpected.len(),
            set.duplicated.len(),
            set.nodes_read,
            if set.unread.is_empty() { String::new() } else { format!(", unread: {:?}", set.unread) },
            if set.divergent.is_empty() { String::new() } else { format!(", divergent: {:?}", set.divergent) },
        ),
        details: json!(set),
    });

    let lead = observe::check_leaders(history, opts.leader_mode);
    results.push(CheckResult {
        name: "one-leader-per-term",
        valid: lead.one_leader_per_term(),
        summary: format!(
            "{}: {} observations, terms up to {}, {} terms with more than one leader{}{}",
            yes_no(lead.one_leader_per_term()),
            lead.observations,
            lead.highest_term,
            lead.multiple_leaders.len(),
            if opts.leader_mode == observe::LeaderMode::Openraft {
                " (allowed: --leader-mode openraft)"
            } else {
                ""
            },
            lead.multiple_leader_evidence
                .first()
                .map(|e| format!("\n      first: {e}"))
                .unwrap_or_default()
        ),
        details: json!({
            "mode": lead.mode,
            "multiple_leaders": lead.multiple_leaders,
            "evidence": lead.multiple_leader_evidence,
        }),
    });
    results.push(CheckResult {
        name: "monotonic-terms",
        valid: lead.monotonic_terms(),
        summary: format!(
            "{}: {} times a node's (term, leader) went backwards{}",
            yes_no(lead.monotonic_terms()),
            lead.term_regressions.len(),
            lead.term_regressions
                .first()
                .map(|e| format!("\n      first: {e}"))
                .unwrap_or_default()
        ),
        details: json!(lead.term_regressions),
    });

    // Convergence after healing, as the harness recorded it.
    let conv = pairs(history)
        .into_iter()
        .rfind(|p| p.invoke.f == "converge");
    let (cv, cs, cd) = match conv {
        Some(p) => match p.complete {
            Some(c) if c.kind == Type::Ok => (
                Some(true),
                format!(
                    "valid: every node at revision {} with the same configuration and routing, {:.1}s after healing",
                    c.value.get("revision").cloned().unwrap_or(Value::Null),
                    c.value.get("secs").and_then(|s| s.as_f64()).unwrap_or(0.0)
                ),
                c.value.clone(),
            ),
            Some(c) => (
                Some(false),
                format!(
                    "INVALID: {}",
                    c.error.clone().unwrap_or_else(|| "did not converge".into())
                ),
                c.value.clone(),
            ),
            None => (Some(false), "INVALID: never finished".into(), Value::Null),
        },
        None => (
            None,
            "unknown: no convergence check in this history".into(),
            Value::Null,
        ),
    };
    results.push(CheckResult {
        name: "convergence",
        valid: cv,
        summary: cs,
        details: cd,
    });

    let crashes: Vec<&Op> = history
        .iter()
        .filter(|o| o.process == Process::harness() && o.f == "crash")
        .collect();
    results.push(CheckResult {
        name: "no-crashes",
        valid: Some(crashes.is_empty()),
        summary: if crashes.is_empty() {
            "valid: no node exited unless the nemesis killed it".into()
        } else {
            format!(
                "INVALID: {} unexpected exits: {}",
                crashes.len(),
                crashes
                    .iter()
                    .map(|o| format!("node {}", o.node.unwrap_or(0)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        details: json!(crashes),
    });

    Analysis {
        stats: stats(history),
        results,
        gaps: observe::gaps(history, opts.gap_secs),
        elections: lead.elections.len(),
    }
}

#[cfg(test)]
mod tests;
