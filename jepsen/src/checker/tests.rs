//! The checkers must reject known anomalies and accept valid concurrent histories.

use super::*;
use crate::history::{Op, Process, Type};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// A history line: process `p` at time `t` (milliseconds).
fn ev(p: u64, kind: Type, f: &str, key: &str, value: Value, t: u64) -> Op {
    Op {
        index: 0,
        process: Process::Client(p),
        kind,
        f: f.into(),
        key: (!key.is_empty()).then(|| key.to_string()),
        value,
        node: Some(1 + p % 3),
        time: t * 1_000_000,
        rev: None,
        state_rev: None,
        code: None,
        error: None,
    }
}

trait With {
    fn rev(self, r: u64) -> Op;
    fn srev(self, r: u64) -> Op;
    fn code(self, c: u16) -> Op;
}
impl With for Op {
    fn rev(mut self, r: u64) -> Op {
        self.rev = Some(r);
        self
    }
    fn srev(mut self, r: u64) -> Op {
        self.state_rev = Some(r);
        self
    }
    fn code(mut self, c: u16) -> Op {
        self.code = Some(c);
        self
    }
}

/// Orders lines by time (stable) and numbers them.
fn hist(mut ops: Vec<Op>) -> Vec<Op> {
    ops.sort_by_key(|o| o.time);
    for (i, o) in ops.iter_mut().enumerate() {
        o.index = i as u64;
    }
    ops
}

use Type::{Fail, Info, Invoke, Ok as Done};

// Shorthands for register operations on key "r1".
fn write(p: u64, v: u64, t0: u64, t1: u64, rev: u64) -> Vec<Op> {
    vec![
        ev(p, Invoke, "write", "r1", json!(v), t0),
        ev(p, Done, "write", "r1", json!(v), t1).rev(rev).srev(rev),
    ]
}
fn write_info(p: u64, v: u64, t0: u64, t1: u64) -> Vec<Op> {
    vec![
        ev(p, Invoke, "write", "r1", json!(v), t0),
        ev(p, Info, "write", "r1", json!(v), t1),
    ]
}
fn read(p: u64, v: Option<(u64, u64)>, t0: u64, t1: u64, srev: u64) -> Vec<Op> {
    let mut done = match v {
        Some((v, r)) => ev(p, Done, "read", "r1", json!(v), t1).rev(r),
        None => ev(p, Done, "read", "r1", Value::Null, t1),
    };
    done.state_rev = Some(srev);
    vec![ev(p, Invoke, "read", "r1", Value::Null, t0), done]
}
fn cas(p: u64, expect: u64, v: u64, t0: u64, t1: u64, outcome: Result<u64, u16>) -> Vec<Op> {
    let inv = ev(p, Invoke, "cas", "r1", json!([expect, v]), t0);
    let done = match outcome {
        Ok(rev) => ev(p, Done, "cas", "r1", json!([expect, v]), t1)
            .rev(rev)
            .srev(rev),
        Err(0) => ev(p, Info, "cas", "r1", json!([expect, v]), t1),
        Err(code) => ev(p, Fail, "cas", "r1", json!([expect, v]), t1).code(code),
    };
    vec![inv, done]
}

fn lin(h: &[Op]) -> register::RegisterReport {
    register::check(h, 1_000_000)
}

fn concat(parts: Vec<Vec<Op>>) -> Vec<Op> {
    hist(parts.into_iter().flatten().collect())
}

// ---- valid histories ------------------------------------------------------------------

#[test]
fn sequential_history_is_valid() {
    let h = concat(vec![
        read(1, None, 0, 1, 1),
        write(1, 1, 2, 3, 2),
        read(2, Some((1, 2)), 4, 5, 2),
        cas(2, 2, 2, 6, 7, Ok(3)),
        read(1, Some((2, 3)), 8, 9, 3),
        cas(1, 2, 3, 10, 11, Err(412)),
        read(3, Some((2, 3)), 12, 13, 3),
    ]);
    let r = lin(&h);
    assert_eq!(r.valid(), Some(true), "{r:?}");
    assert_eq!(order::check(&h).valid(), Some(true));
}

#[test]
fn concurrent_writes_may_land_in_either_order() {
    // Two overlapping writes; readers after both see the one with the higher revision.
    let h = concat(vec![
        write(1, 1, 0, 10, 3),
        write(2, 2, 1, 9, 2),
        read(3, Some((1, 3)), 5, 12, 3), // overlaps the writes
        read(3, Some((1, 3)), 13, 14, 3),
    ]);
    assert_eq!(lin(&h).valid(), Some(true), "{:?}", lin(&h));
    // A read concurrent with both may also see the first-applied one.
    let h = concat(vec![
        write(1, 1, 0, 10, 3),
        write(2, 2, 1, 9, 2),
        read(3, Some((2, 2)), 5, 11, 2),
        read(4, Some((1, 3)), 12, 14, 3),
    ]);
    assert_eq!(lin(&h).valid(), Some(true));
}

#[test]
fn unknown_writes_may_or_may_not_take_effect() {
    // An info write that a later read sees, and another one nobody ever sees.
    let h = concat(vec![
        write(1, 1, 0, 1, 2),
        write_info(2, 2, 2, 30),
        write_info(3, 3, 3, 30),
        read(4, Some((1, 2)), 4, 5, 2),
        read(4, Some((2, 7)), 40, 41, 7),
        read(5, Some((2, 7)), 42, 43, 7),
    ]);
    let r = lin(&h);
    assert_eq!(r.valid(), Some(true), "{r:?}");
    assert_eq!(r.info, 2);
}

#[test]
fn concurrent_compare_and_sets_one_wins() {
    // Both read revision 2, both CAS from 2: one succeeds, the other gets 412.
    let h = concat(vec![
        write(1, 1, 0, 1, 2),
        read(2, Some((1, 2)), 2, 3, 2),
        read(3, Some((1, 2)), 2, 3, 2),
        cas(2, 2, 5, 4, 8, Ok(4)),
        cas(3, 2, 6, 4, 9, Err(412)),
        read(4, Some((5, 4)), 10, 11, 4),
    ]);
    assert_eq!(lin(&h).valid(), Some(true));
    // create-only (expected revision 0) races the same way
    let h = concat(vec![
        cas(1, 0, 1, 0, 5, Ok(2)),
        cas(2, 0, 2, 1, 6, Err(412)),
        read(3, Some((1, 2)), 7, 8, 2),
    ]);
    assert_eq!(lin(&h).valid(), Some(true));
}

#[test]
fn an_unknown_cas_may_have_applied() {
    let h = concat(vec![
        write(1, 1, 0, 1, 2),
        read(2, Some((1, 2)), 2, 3, 2),
        cas(2, 2, 7, 4, 9, Err(0)), // timed out
        read(3, Some((7, 5)), 20, 21, 5),
    ]);
    assert_eq!(lin(&h).valid(), Some(true), "{:?}", lin(&h));
}

// ---- anomalies ------------------------------------------------------------------------

#[test]
fn a_stale_read_is_rejected() {
    let h = concat(vec![
        write(1, 1, 0, 1, 2),
        write(1, 2, 2, 3, 3),
        read(2, Some((1, 2)), 4, 5, 2), // began after the write of 2 completed
    ]);
    let r = lin(&h);
    assert_eq!(r.valid(), Some(false));
    let f = &r.failures[0];
    assert!(f.explanation.starts_with("stale read"), "{}", f.explanation);
    assert!(!f.window.is_empty());
    let o = order::check(&h);
    assert_eq!(o.valid(), Some(false), "the revision order sees it too");
    let a = analyse(&h, &CheckOptions::default());
    assert!(!a.valid());
}

#[test]
fn a_lost_write_is_rejected() {
    // An acknowledged write that later reads never see.
    let h = concat(vec![
        write(1, 1, 0, 1, 2),
        write(2, 2, 2, 3, 3),
        read(3, Some((2, 3)), 4, 5, 3),
        write(1, 3, 6, 7, 4),
        read(3, Some((2, 3)), 8, 9, 4),
    ]);
    assert_eq!(lin(&h).valid(), Some(false));
    // ...even when the write was the key's first: a later read finds the key absent.
    let h = concat(vec![write(1, 1, 0, 1, 2), read(2, None, 5, 6, 2)]);
    assert_eq!(lin(&h).valid(), Some(false));
}

#[test]
fn a_cas_that_succeeded_on_a_wrong_revision_is_rejected() {
    let h = concat(vec![
        write(1, 1, 0, 1, 2),
        read(2, Some((1, 2)), 2, 3, 2),
        write(1, 2, 4, 5, 3),
        cas(2, 2, 3, 6, 7, Ok(4)), // the route was at revision 3, not 2
    ]);
    let r = lin(&h);
    assert_eq!(r.valid(), Some(false));
    assert!(
        r.failures[0].explanation.contains("wrong revision"),
        "{}",
        r.failures[0].explanation
    );
}

#[test]
fn a_cas_refused_although_the_revision_matched_is_rejected() {
    let h = concat(vec![
        write(1, 1, 0, 1, 2),
        read(2, Some((1, 2)), 2, 3, 2),
        cas(2, 2, 3, 4, 5, Err(412)),
        read(2, Some((1, 2)), 6, 7, 2), // nothing else happened: the condition held
    ]);
    assert_eq!(lin(&h).valid(), Some(false));
}

#[test]
fn a_value_at_two_revisions_is_a_double_apply() {
    let h = concat(vec![write(1, 1, 0, 1, 2), read(2, Some((1, 5)), 2, 3, 5)]);
    let r = lin(&h);
    assert_eq!(r.valid(), Some(false));
    assert_eq!(r.revision_conflicts.len(), 1, "{r:?}");
}

#[test]
fn keys_are_checked_independently() {
    let mut h = concat(vec![write(1, 1, 0, 1, 2), read(2, Some((1, 2)), 2, 3, 2)]);
    // Another key with its own (valid) history interleaved.
    let mut other = concat(vec![write(5, 9, 0, 1, 3), read(6, None, 0, 4, 3)]);
    for o in &mut other {
        o.key = Some("r2".into());
    }
    h.extend(other);
    let h = hist(h);
    let r = lin(&h);
    assert_eq!((r.keys, r.valid()), (2, Some(true)), "{r:?}");
}

// ---- randomized: simulated linearizable executions are accepted ------------------------

/// Simulates `procs` clients on one linearizable register with random latencies; some
/// operations end `info` (and some of those never take effect). Returns the history.
fn simulate(seed: u64, ops: usize, procs: u64) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    // (time the client is free, process id)
    let mut free: Vec<(u64, u64)> = (0..procs).map(|p| (0, p)).collect();
    let mut next_proc = procs;
    // Linearization points are handed out in increasing order, so the register's history is
    // the order of those points.
    let mut state: Option<(u64, u64)> = None; // (value, revision)
    let mut revision = 1u64;
    let mut value = 0u64;
    let mut last_lin = 0u64;
    let mut pending: Vec<(u64, Op)> = Vec::new(); // completions to emit
    for _ in 0..ops {
        free.sort();
        let (t_free, p) = free.remove(0);
        let call = t_free + rng.random_range(0..5);
        let lin_at = (call + rng.random_range(1..20)).max(last_lin + 1);
        last_lin = lin_at;
        let ret = lin_at + rng.random_range(1..20);
        let kind = rng.random_range(0..3);
        let crash = rng.random_bool(0.08);
        let takes_effect = !crash || rng.random_bool(0.5);
        let (inv, done) = match kind {
            0 => {
                let inv = ev(p, Invoke, "read", "r1", Value::Null, call);
                let mut d = match state {
                    Some((v, r)) => ev(p, Done, "read", "r1", json!(v), ret).rev(r),
                    None => ev(p, Done, "read", "r1", Value::Null, ret),
                };
                d.state_rev = Some(revision);
                (
                    inv,
                    if crash {
                        ev(p, Fail, "read", "r1", Value::Null, ret)
                    } else {
                        d
                    },
                )
            }
            1 => {
                value += 1;
                let inv = ev(p, Invoke, "write", "r1", json!(value), call);
                if takes_effect {
                    revision += 1;
                    state = Some((value, revision));
                }
                let d = if crash {
                    ev(p, Info, "write", "r1", json!(value), ret)
                } else {
                    ev(p, Done, "write", "r1", json!(value), ret)
                        .rev(revision)
                        .srev(revision)
                };
                (inv, d)
            }
            _ => {
                value += 1;
                let expect = match (state, rng.random_bool(0.7)) {
                    (Some((_, r)), true) => r,
                    (Some((_, r)), false) => r.saturating_sub(1),
                    (None, _) => 0,
                };
                let inv = ev(p, Invoke, "cas", "r1", json!([expect, value]), call);
                let holds = match state {
                    Some((_, r)) => r == expect,
                    None => expect == 0,
                };
                let d = if crash {
                    if holds && takes_effect {
                        revision += 1;
                        state = Some((value, revision));
                    }
                    ev(p, Info, "cas", "r1", json!([expect, value]), ret)
                } else if holds {
                    revision += 1;
                    state = Some((value, revision));
                    ev(p, Done, "cas", "r1", json!([expect, value]), ret)
                        .rev(revision)
                        .srev(revision)
                } else {
                    ev(p, Fail, "cas", "r1", json!([expect, value]), ret).code(412)
                };
                (inv, d)
            }
        };
        out.push(inv);
        pending.push((ret, done.clone()));
        let np = if done.kind == Info {
            next_proc += 1;
            next_proc - 1
        } else {
            p
        };
        free.push((ret + 1, np));
    }
    out.extend(pending.into_iter().map(|(_, d)| d));
    hist(out)
}

#[test]
fn random_linearizable_histories_are_accepted() {
    for seed in 0..40 {
        let h = simulate(seed, 150, 5);
        let r = lin(&h);
        assert_eq!(
            r.valid(),
            Some(true),
            "seed {seed}: {:?}",
            r.failures.first()
        );
        assert_eq!(order::check(&h).valid(), Some(true), "seed {seed}");
    }
}

#[test]
fn random_histories_with_a_stale_read_are_rejected() {
    let mut rejected = 0;
    for seed in 0..40 {
        let mut h = simulate(seed, 150, 5);
        // Make one late read return the first value written, long overwritten.
        let first = h.iter().find(|o| o.f == "write" && o.kind == Done).cloned();
        let Some(first) = first else { continue };
        let target = h
            .iter()
            .enumerate()
            .rev()
            .find(|(_, o)| {
                o.f == "read" && o.kind == Done && o.value.as_u64().is_some_and(|v| v > 3)
            })
            .map(|(i, _)| i);
        let Some(i) = target else { continue };
        h[i].value = first.value.clone();
        h[i].rev = first.rev;
        if lin(&h).valid() == Some(false) {
            rejected += 1;
        }
    }
    assert!(
        rejected >= 30,
        "only {rejected} of 40 stale reads were caught"
    );
}

// ---- set ------------------------------------------------------------------------------

fn add(p: u64, n: u64, t0: u64, t1: u64, outcome: Result<u64, u16>) -> Vec<Op> {
    let key = format!("s{n}");
    let inv = ev(p, Invoke, "add", &key, json!(n), t0);
    let done = match outcome {
        Ok(rev) => ev(p, Done, "add", &key, json!(n), t1).rev(rev),
        Err(0) => ev(p, Info, "add", &key, json!(n), t1),
        Err(c) => ev(p, Fail, "add", &key, json!(n), t1).code(c),
    };
    vec![inv, done]
}
fn read_all(node: u64, elems: &[(u64, u64)], t: u64) -> Vec<Op> {
    let mut inv = ev(900 + node, Invoke, "read-all", "", Value::Null, t);
    inv.node = Some(node);
    let mut done = ev(900 + node, Done, "read-all", "", json!(elems), t + 1);
    done.node = Some(node);
    vec![inv, done]
}

#[test]
fn the_set_checker_counts_lost_unexpected_and_duplicated() {
    let base = vec![
        add(1, 1, 0, 1, Ok(2)),
        add(1, 2, 2, 3, Ok(3)),
        add(1, 3, 4, 5, Err(0)),   // unknown
        add(1, 4, 6, 7, Err(400)), // certainly failed
    ];
    // valid: the unknown one recovered, on both nodes
    let mut h = base.clone();
    h.push(read_all(1, &[(1, 2), (2, 3), (3, 9)], 20));
    h.push(read_all(2, &[(1, 2), (2, 3), (3, 9)], 22));
    let r = set::check(&concat(h));
    assert_eq!(r.valid(), Some(true), "{r:?}");
    assert_eq!(r.recovered, 1);
    // lost, unexpected (a failed add and a never-attempted one), duplicated (rewritten)
    let mut h = base.clone();
    h.push(read_all(1, &[(1, 7), (4, 4), (99, 9)], 20));
    let r = set::check(&concat(h));
    assert_eq!(r.valid(), Some(false));
    assert_eq!(r.lost.iter().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(
        r.unexpected.iter().copied().collect::<Vec<_>>(),
        vec![4, 99]
    );
    assert_eq!(r.duplicated.iter().copied().collect::<Vec<_>>(), vec![1]);
    // nodes that disagree
    let mut h = base;
    h.push(read_all(1, &[(1, 2), (2, 3)], 20));
    h.push(read_all(2, &[(1, 2), (2, 3), (3, 9)], 22));
    let r = set::check(&concat(h));
    assert_eq!(r.valid(), Some(false));
    assert_eq!(r.divergent.len(), 1);
}

// ---- leaders and terms ------------------------------------------------------------------

fn status(node: u64, role: &str, term: u64, t: u64) -> Vec<Op> {
    let mut inv = ev(500, Invoke, "status", "", Value::Null, t);
    inv.node = Some(node);
    let mut done = ev(
        500,
        Done,
        "status",
        "",
        json!({"role": role, "term": term}),
        t + 1,
    );
    done.node = Some(node);
    vec![inv, done]
}

#[test]
fn two_leaders_in_one_term_and_terms_going_back_are_caught() {
    let good = concat(vec![
        status(1, "leader", 2, 0),
        status(2, "follower", 2, 2),
        status(2, "leader", 3, 4),
        status(1, "follower", 3, 6),
    ]);
    let r = observe::check_leaders(&good, observe::LeaderMode::Raft);
    assert_eq!(
        (r.one_leader_per_term(), r.monotonic_terms()),
        (Some(true), Some(true))
    );
    assert_eq!(r.elections.len(), 2);
    let two = concat(vec![status(1, "leader", 2, 0), status(2, "leader", 2, 2)]);
    assert_eq!(
        observe::check_leaders(&two, observe::LeaderMode::Raft).one_leader_per_term(),
        Some(false)
    );
    // openraft's advanced mode allows it...
    let r = observe::check_leaders(&two, observe::LeaderMode::Openraft);
    assert_eq!(r.one_leader_per_term(), Some(true));
    assert_eq!(r.multiple_leaders.len(), 1, "but still reports it");
    let back = concat(vec![
        status(1, "follower", 5, 0),
        status(1, "follower", 4, 2),
    ]);
    assert_eq!(
        observe::check_leaders(&back, observe::LeaderMode::Raft).monotonic_terms(),
        Some(false)
    );
}

fn leader_seen(node: u64, id: u64, term: u64, t: u64) -> Vec<Op> {
    let mut inv = ev(600 + node, Invoke, "leader", "", Value::Null, t);
    inv.node = Some(node);
    let mut done = ev(
        600 + node,
        Done,
        "leader",
        "",
        json!({"id": id, "term": term}),
        t + 1,
    );
    done.node = Some(node);
    done.code = Some(200);
    vec![inv, done]
}

#[test]
fn a_vote_going_back_within_a_term_is_caught_in_both_modes() {
    // Node 3 follows leader 5 in term 7, then leader 4 in term 7: its vote went back.
    let h = concat(vec![leader_seen(3, 5, 7, 0), leader_seen(3, 4, 7, 5)]);
    for mode in [observe::LeaderMode::Raft, observe::LeaderMode::Openraft] {
        assert_eq!(
            observe::check_leaders(&h, mode).monotonic_terms(),
            Some(false),
            "{mode:?}"
        );
    }
    // Leader 4 then leader 5 in the same term is openraft's rule (higher id wins).
    let h = concat(vec![leader_seen(3, 4, 7, 0), leader_seen(3, 5, 7, 5)]);
    let r = observe::check_leaders(&h, observe::LeaderMode::Openraft);
    assert_eq!(
        (r.monotonic_terms(), r.one_leader_per_term()),
        (Some(true), Some(true))
    );
}

#[test]
fn gaps_are_measured_between_acknowledged_writes() {
    let h = concat(vec![
        write(1, 1, 0, 100, 2),
        write(1, 2, 200, 3000, 3), // 2.9 s without an acknowledged write
        write(1, 3, 3100, 3200, 4),
    ]);
    let g = observe::gaps(&h, 1.0);
    assert_eq!(g.write_gaps.len(), 1, "{g:?}");
    assert!((g.longest_write_gap() - 2.9).abs() < 0.01);
}
