//! Real-time order of configuration revisions, across all keys.
//!
//! Every answer carries the configuration revision it reflects: a linearizable read the whole
//! state at revision `S` (it is placed after command `S` and before `S + 1`), an acknowledged
//! write the revision of its own command `R`. Linearizability of the whole configuration then
//! implies, for two operations A and B where A completed before B was invoked:
//!
//! * B a read: `S(B) >= pos(A)`;
//! * B a write: `R(B) > pos(A)`;
//!
//! where `pos` is `S` for reads and `R` for writes. This is cheap (one sweep) and catches stale
//! reads on any key, including reads of keys nobody wrote lately.

use crate::history::{Op, Type, pairs};
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct OrderReport {
    pub checked: usize,
    pub violations: usize,
    /// The first violations, in words.
    pub examples: Vec<String>,
}

impl OrderReport {
    pub fn valid(&self) -> Option<bool> {
        if self.checked == 0 {
            None
        } else {
            Some(self.violations == 0)
        }
    }
}

struct Item<'a> {
    start: u64,
    end: u64,
    pos: u64,
    write: bool,
    op: &'a Op,
}

pub fn check(history: &[Op]) -> OrderReport {
    let mut items = Vec::new();
    for p in pairs(history) {
        let Some(c) = p.complete else { continue };
        if c.kind != Type::Ok {
            continue;
        }
        let (pos, write) = match p.invoke.f.as_str() {
            "read" | "read-all" => (c.state_rev, false),
            "write" | "cas" | "add" => (c.rev, true),
            _ => continue,
        };
        let Some(pos) = pos else { continue };
        items.push(Item {
            start: p.invoke.time,
            end: c.time,
            pos,
            write,
            op: c,
        });
    }
    let mut r = OrderReport {
        checked: items.len(),
        ..Default::default()
    };
    let mut by_end: Vec<&Item> = items.iter().collect();
    by_end.sort_by_key(|i| i.end);
    let mut by_start: Vec<&Item> = items.iter().collect();
    by_start.sort_by_key(|i| i.start);
    let mut k = 0;
    let mut best: Option<&Item> = None;
    for b in by_start {
        while k < by_end.len() && by_end[k].end < b.start {
            if best.is_none_or(|x| by_end[k].pos > x.pos) {
                best = Some(by_end[k]);
            }
            k += 1;
        }
        let Some(a) = best else { continue };
        let bad = if b.write {
            b.pos <= a.pos
        } else {
            b.pos < a.pos
        };
        if bad {
            r.violations += 1;
            if r.examples.len() < 10 {
                let what = |i: &Item| {
                    format!(
                        "{} {} on node {} ({} revision {}, op {}, {:.3}s-{:.3}s)",
                        i.op.f,
                        i.op.key.clone().unwrap_or_default(),
                        i.op.node.map(|n| n.to_string()).unwrap_or("?".into()),
                        if i.write { "wrote" } else { "read at" },
                        i.pos,
                        i.op.index,
                        i.start as f64 / 1e9,
                        i.end as f64 / 1e9
                    )
                };
                r.examples
                    .push(format!("{} began after {} had completed", what(b), what(a)));
            }
        }
    }
    r
}
