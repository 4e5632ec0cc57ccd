//! Linearizability of the register workload, per key (P-compositionality: a history is
//! linearizable iff each key's sub-history is).
//!
//! A key is a route; its register value is the number in the route's `path_prefix`
//! (`/v/<n>`), and every write writes a number never written before. The model is a register
//! with compare-and-set on the route's revision:
//!
//! * `read` returns the current value (or absent), with its revision;
//! * `write n` sets the value (the route gets the revision of the command);
//! * `cas [e, n]` sets the value if the route is at revision `e` (`0`: absent) — `PUT` with
//!   `If-Match: "e"` (`If-None-Match: *` for 0). A `412` (recorded `fail`) says that at its
//!   linearization point the revision was *not* `e`, so it is kept as an observation.
//!
//! Values and revisions are tied one to one: the checker first gathers every (key, value,
//! revision) that an acknowledged write or a read reported, and flags a revision claimed by
//! two values, or a value seen at two revisions (a write applied twice), as a violation of its
//! own. The model then compares values; a CAS's expected revision is turned into the value
//! that revision belongs to. Values no read ever saw and no CAS ever expected cannot be told
//! apart by any later operation, so they are all one value, `Unseen`, which lets the search
//! treat unknown writes of them as interchangeable (see [`super::linear`]).

use super::linear::{self, Entry, Model, Outcome};
use crate::history::{Op, Pair, Type};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A register value as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Val {
    Absent,
    Seen(u64),
    /// Any value no operation could observe.
    Unseen,
}

#[derive(Clone, Debug)]
pub enum RegOp {
    Read(Val),
    Write(Val),
    Cas {
        expect: u64,
        new: Val,
    },
    /// A compare-and-set refused with 412: the revision was not `expect`.
    CasFail {
        expect: u64,
    },
}

/// The register model, knowing which revision each value was written at.
pub struct Register<'a> {
    /// Revision of each value of this key, when some operation reported it.
    rev_of: HashMap<u64, u64>,
    /// Every revision some operation reported, on any key.
    claimed: &'a HashMap<u64, (String, u64)>,
}

impl Register<'_> {
    /// Whether the register, in `state`, is at revision `e`: known yes, known no, or unknown
    /// (a value whose revision nobody reported).
    fn at_revision(&self, state: Val, e: u64) -> Option<bool> {
        if e == 0 {
            return Some(state == Val::Absent);
        }
        match state {
            Val::Absent => Some(false),
            Val::Seen(v) => match self.rev_of.get(&v) {
                Some(r) => Some(*r == e),
                None if self.claimed.contains_key(&e) => Some(false),
                None => None,
            },
            Val::Unseen if self.claimed.contains_key(&e) => Some(false),
            Val::Unseen => None,
        }
    }
}

impl Model for Register<'_> {
    type State = Val;
    type Op = RegOp;
    fn step(&self, s: &Val, op: &RegOp) -> Option<Val> {
        match op {
            RegOp::Read(v) => (v == s).then_some(*s),
            RegOp::Write(v) => Some(*v),
            RegOp::Cas { expect, new } => {
                (self.at_revision(*s, *expect) != Some(false)).then_some(*new)
            }
            RegOp::CasFail { expect } => {
                (self.at_revision(*s, *expect) != Some(true)).then_some(*s)
            }
        }
    }
}

/// One key that is not linearizable.
#[derive(Clone, Debug, Serialize)]
pub struct KeyFailure {
    pub key: String,
    /// Why, in words.
    pub explanation: String,
    /// The operation that could not be placed (invoke and completion).
    pub stuck: Vec<Op>,
    /// How many operations the longest legal order held.
    pub linearized: usize,
    /// The key's operations around the failure (invoke and completion lines), oldest first.
    pub window: Vec<Op>,
}

/// The register checker's result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RegisterReport {
    pub keys: usize,
    pub ops: usize,
    pub ok: usize,
    pub info: usize,
    pub failures: Vec<KeyFailure>,
    /// Keys the search gave up on (too many states).
    pub unknown: Vec<String>,
    /// Revisions claimed by two (key, value)s, or values seen at two revisions.
    pub revision_conflicts: Vec<String>,
}

impl RegisterReport {
    pub fn valid(&self) -> Option<bool> {
        if !self.failures.is_empty() || !self.revision_conflicts.is_empty() {
            Some(false)
        } else if !self.unknown.is_empty() {
            None
        } else {
            Some(true)
        }
    }
}

const REGISTER_FS: [&str; 3] = ["read", "write", "cas"];

/// Numbers of a `cas` invocation: `[expected revision, new value]`.
fn cas_args(v: &Value) -> Option<(u64, u64)> {
    Some((v.get(0)?.as_u64()?, v.get(1)?.as_u64()?))
}

/// Every (revision → (key, value)) reported by acknowledged operations, with conflicts.
pub fn revision_claims(pairs: &[Pair]) -> (HashMap<u64, (String, u64)>, Vec<String>) {
    let mut claims: HashMap<u64, (String, u64)> = HashMap::new();
    let mut rev_of: HashMap<(String, u64), u64> = HashMap::new();
    let mut conflicts = Vec::new();
    for p in pairs {
        let Some(c) = p.complete else { continue };
        if c.kind != Type::Ok {
            continue;
        }
        let (Some(key), Some(rev)) = (c.key.clone(), c.rev) else {
            continue;
        };
        let value = match p.invoke.f.as_str() {
            "write" | "add" => p.invoke.value_u64(),
            "cas" => cas_args(&p.invoke.value).map(|(_, n)| n),
            "read" => c.value_u64(),
            _ => None,
        };
        let Some(value) = value else { continue };
        match claims.get(&rev) {
            Some((k, v)) if (k, *v) != (&key, value) => conflicts.push(format!(
                "revision {rev} was reported for {k}={v} and for {key}={value} (op {})",
                c.index
            )),
            Some(_) => {}
            None => {
                claims.insert(rev, (key.clone(), value));
            }
        }
        match rev_of.get(&(key.clone(), value)) {
            Some(r) if *r != rev => conflicts.push(format!(
                "{key}={value} was reported at revision {r} and at revision {rev} (op {}): applied twice?",
                c.index
            )),
            Some(_) => {}
            None => {
                rev_of.insert((key, value), rev);
            }
        }
    }
    (claims, conflicts)
}

/// Checks every key of the register workload. `budget` bounds the states explored per key.
pub fn check(history: &[Op], budget: usize) -> RegisterReport {
    let all = crate::history::pairs(history);
    let (claims, conflicts) = revision_claims(&all);
    let mut by_key: BTreeMap<String, Vec<Pair>> = BTreeMap::new();
    for p in all {
        if p.invoke.is_client()
            && REGISTER_FS.contains(&p.invoke.f.as_str())
            && let Some(k) = &p.invoke.key
        {
            by_key.entry(k.clone()).or_default().push(p);
        }
    }
    let mut report = RegisterReport {
        keys: by_key.len(),
        revision_conflicts: conflicts,
        ..Default::default()
    };
    for (key, pairs) in &by_key {
        report.ops += pairs.len();
        report.ok += pairs.iter().filter(|p| p.outcome() == Type::Ok).count();
        report.info += pairs.iter().filter(|p| p.outcome() == Type::Info).count();
        match check_key(key, pairs, &claims, budget) {
            KeyResult::Ok => {}
            KeyResult::Unknown => report.unknown.push(key.clone()),
            KeyResult::Fail(f) => report.failures.push(*f),
        }
    }
    report
}

enum KeyResult {
    Ok,
    Unknown,
    Fail(Box<KeyFailure>),
}

fn check_key(
    key: &str,
    pairs: &[Pair],
    claims: &HashMap<u64, (String, u64)>,
    budget: usize,
) -> KeyResult {
    // Revisions of this key's values, and the value each claimed revision holds here.
    let mut rev_of = HashMap::new();
    let mut value_at: HashMap<u64, u64> = HashMap::new();
    for (rev, (k, v)) in claims {
        if k == key {
            rev_of.insert(*v, *rev);
            value_at.insert(*rev, *v);
        }
    }
    // Values some operation can observe: read results and values a CAS expected.
    let mut seen: HashSet<u64> = HashSet::new();
    for p in pairs {
        match p.invoke.f.as_str() {
            "read" => {
                if let Some(c) = p.complete
                    && c.kind == Type::Ok
                    && let Some(v) = c.value_u64()
                {
                    seen.insert(v);
                }
            }
            "cas" => {
                if let Some((e, _)) = cas_args(&p.invoke.value)
                    && let Some(v) = value_at.get(&e)
                {
                    seen.insert(*v);
                }
            }
            _ => {}
        }
    }
    let canon = |v: u64| {
        if seen.contains(&v) {
            Val::Seen(v)
        } else {
            Val::Unseen
        }
    };
    let mut entries: Vec<Entry<RegOp>> = Vec::new();
    let mut source: Vec<&Pair> = Vec::new();
    let mut classes: HashMap<String, u32> = HashMap::new();
    for p in pairs {
        let outcome = p.outcome();
        let op = match (p.invoke.f.as_str(), outcome) {
            ("read", Type::Ok) => {
                let c = p.complete.expect("ok has a completion");
                Some(RegOp::Read(match (c.value_u64(), c.value.is_null()) {
                    (Some(v), _) => Val::Seen(v),
                    (None, true) => Val::Absent,
                    // A route holding something no write wrote: matches no state.
                    (None, false) => Val::Seen(u64::MAX),
                }))
            }
            ("write", Type::Ok | Type::Info) => {
                p.invoke.value_u64().map(|v| RegOp::Write(canon(v)))
            }
            ("cas", Type::Ok | Type::Info) => cas_args(&p.invoke.value).map(|(e, n)| RegOp::Cas {
                expect: e,
                new: canon(n),
            }),
            ("cas", Type::Fail) if p.complete.and_then(|c| c.code) == Some(412) => {
                cas_args(&p.invoke.value).map(|(e, _)| RegOp::CasFail { expect: e })
            }
            // Failed reads and definitely failed writes had no effect.
            _ => None,
        };
        let Some(op) = op else { continue };
        let ret = p.end();
        let class = if ret.is_none() {
            let sig = format!("{op:?}");
            let next = classes.len() as u32;
            Some(*classes.entry(sig).or_insert(next))
        } else {
            None
        };
        entries.push(Entry {
            op,
            call: p.invoke.time,
            ret,
            class,
        });
        source.push(p);
    }
    let model = Register {
        rev_of: rev_of.clone(),
        claimed: claims,
    };
    match linear::check(&model, Val::Absent, &entries, budget) {
        Outcome::Linearizable { .. } => KeyResult::Ok,
        Outcome::Unknown { .. } => KeyResult::Unknown,
        Outcome::NotLinearizable { prefix, stuck } => {
            let stuck_pair = source[stuck.min(source.len() - 1)];
            KeyResult::Fail(Box::new(KeyFailure {
                key: key.to_string(),
                explanation: explain(stuck_pair, &source, &rev_of),
                stuck: std::iter::once(stuck_pair.invoke.clone())
                    .chain(stuck_pair.complete.cloned())
                    .collect(),
                linearized: prefix.len(),
                window: window(stuck_pair, &source),
            }))
        }
    }
}

/// Acknowledged writes of this key that completed before `t`, as (revision, value, pair).
fn completed_writes_before<'a>(t: u64, source: &[&'a Pair<'a>]) -> Vec<(u64, u64, &'a Pair<'a>)> {
    let mut out = Vec::new();
    for p in source {
        let Some(c) = p.complete else { continue };
        if c.kind != Type::Ok || c.time >= t {
            continue;
        }
        let value = match p.invoke.f.as_str() {
            "write" => p.invoke.value_u64(),
            "cas" => cas_args(&p.invoke.value).map(|(_, n)| n),
            _ => None,
        };
        if let (Some(v), Some(r)) = (value, c.rev) {
            out.push((r, v, *p));
        }
    }
    out.sort_by_key(|x| x.0);
    out
}

fn describe(p: &Pair) -> String {
    let c = p.complete;
    format!(
        "{} {} by process {:?} on node {} (invoked at {:.3}s, {} at {})",
        p.invoke.f,
        match p.invoke.f.as_str() {
            "read" => c.map(|c| c.value.to_string()).unwrap_or_default(),
            _ => p.invoke.value.to_string(),
        },
        p.invoke.process,
        p.invoke.node.map(|n| n.to_string()).unwrap_or("?".into()),
        p.invoke.time as f64 / 1e9,
        c.map(|c| format!("{:?}", c.kind).to_lowercase())
            .unwrap_or("never completed".into()),
        c.map(|c| format!("{:.3}s", c.time as f64 / 1e9))
            .unwrap_or("-".into()),
    )
}

/// Says why `stuck` cannot be placed, in the terms of the usual anomalies.
fn explain(stuck: &Pair, source: &[&Pair], rev_of: &HashMap<u64, u64>) -> String {
    let before = completed_writes_before(stuck.invoke.time, source);
    let latest = before.last();
    let c = stuck.complete;
    match stuck.invoke.f.as_str() {
        "read" => {
            let got = c.and_then(|c| c.value_u64());
            let got_rev = got.and_then(|v| rev_of.get(&v).copied());
            if let Some((r, v, w)) = latest
                && Some(*v) != got
                && got_rev.is_none_or(|g| g < *r)
            {
                return format!(
                    "stale read: {} returned {} (revision {}), but {} had completed at revision {r} before the read began",
                    describe(stuck),
                    got.map(|v| v.to_string()).unwrap_or("absent".into()),
                    got_rev.map(|r| r.to_string()).unwrap_or("?".into()),
                    describe(w),
                );
            }
            format!(
                "no order of this key's operations lets {} return {}",
                describe(stuck),
                got.map(|v| v.to_string()).unwrap_or("absent".into())
            )
        }
        "cas" => {
            let (e, _) = cas_args(&stuck.invoke.value).unwrap_or((0, 0));
            if c.map(|c| c.kind) == Some(Type::Ok)
                && let Some((r, _, w)) = latest
                && *r > e
            {
                return format!(
                    "compare-and-set succeeded on a wrong revision: {} expected revision {e}, but {} had moved the route to revision {r} before it began",
                    describe(stuck),
                    describe(w)
                );
            }
            format!(
                "no order of this key's operations allows {}",
                describe(stuck)
            )
        }
        _ => format!(
            "no order of this key's operations allows {} (a lost or reordered write)",
            describe(stuck)
        ),
    }
}

/// The key's operations around `stuck`: those overlapping it, and the ten that completed last
/// before it began.
fn window(stuck: &Pair, source: &[&Pair]) -> Vec<Op> {
    let start = stuck.invoke.time;
    let end = stuck.end().unwrap_or(u64::MAX);
    let mut before: Vec<&Pair> = source
        .iter()
        .copied()
        .filter(|p| p.end().is_some_and(|e| e < start))
        .collect();
    before.sort_by_key(|p| p.end());
    let skip = before.len().saturating_sub(10);
    let mut chosen: Vec<&Pair> = before.into_iter().skip(skip).collect();
    chosen.extend(
        source
            .iter()
            .copied()
            .filter(|p| p.invoke.time <= end && p.end().is_none_or(|e| e >= start)),
    );
    let mut ops: Vec<Op> = chosen
        .iter()
        .flat_map(|p| std::iter::once(p.invoke.clone()).chain(p.complete.cloned()))
        .collect();
    ops.sort_by_key(|o| o.index);
    ops.dedup_by_key(|o| o.index);
    ops
}

/// A JSON summary of a failure for the results file.
pub fn failure_json(f: &KeyFailure) -> Value {
    json!({
        "key": f.key,
        "explanation": f.explanation,
        "linearized": f.linearized,
        "stuck": f.stuck,
        "window": f.window,
    })
}
