//! A linearizability checker for one object: the Wing–Gong search with Lowe's memoisation
//! (the algorithm of Knossos' `wgl` and of Porcupine).
//!
//! The history is a list of operations, each with an invocation time and, if it completed, a
//! return time. An operation without a return time (Jepsen's `info`: its outcome is unknown)
//! may take effect at any moment after its invocation, or never. The search looks for a total
//! order of operations that (a) respects real time — an operation that returned before another
//! was invoked comes first — and (b) is a legal sequential run of the model. It walks a linked
//! list of call and return events: it linearizes a pending call whose model step is legal, lifts
//! it out of the list, and starts again from the head; when it meets a return event whose call
//! has not been linearized, it backtracks. A set of (linearized operations, model state) pairs
//! already explored cuts off repeated work (Lowe). The search succeeds when every completed
//! operation is linearized; `info` operations left over are the ones that never took effect.
//!
//! Operations without a return time that have the same effect (say, two writes whose values
//! no read ever saw) are interchangeable: the caller gives them the same `class`, and the search
//! linearizes the members of a class in invocation order only. Without this, `k` such writes
//! would make `2^k` equivalent states.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Op;
    /// The state after `op` runs in `state`, or `None` if `op` cannot happen there (a read that
    /// returned another value, a compare-and-set whose condition does not hold).
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// One operation of the history.
#[derive(Clone, Debug)]
pub struct Entry<O> {
    pub op: O,
    /// Invocation time.
    pub call: u64,
    /// Return time; `None` when the outcome is unknown.
    pub ret: Option<u64>,
    /// Interchangeable no-return operations share a class (see the module docs).
    pub class: Option<u32>,
}

/// What the search found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A linearization: the operations (indexes into the input) in order.
    Linearizable { order: Vec<usize> },
    /// No linearization exists. `prefix` is the longest legal order the search built and
    /// `stuck` the completed operation it could not place after it (the first return event it
    /// could not get past at that depth).
    NotLinearizable { prefix: Vec<usize>, stuck: usize },
    /// The search gave up after exploring `explored` states.
    Unknown { explored: usize },
}

#[derive(Clone, Copy)]
enum Ev {
    Call(usize),
    Ret(usize),
}

/// A fixed-size bit set, hashed by value.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Searches for a linearization of `ops` from `init`. Gives up (`Unknown`) after `budget`
/// distinct states.
pub fn check<M: Model>(model: &M, init: M::State, ops: &[Entry<M::Op>], budget: usize) -> Outcome {
    let n = ops.len();
    // Events sorted by time; at equal times calls come first (the operations overlap).
    let mut events: Vec<(u64, u8, Ev)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, 0, Ev::Call(i)));
        if let Some(r) = o.ret {
            // A return before its own call would be a recording error; clamp it.
            events.push((r.max(o.call), 1, Ev::Ret(i)));
        }
    }
    events.sort_by_key(|e| (e.0, e.1));
    let m = events.len();
    // Doubly linked list over event slots; slot m is the head sentinel, m + 1 the tail.
    let head = m;
    let tail = m + 1;
    let mut next = vec![0usize; m + 2];
    let mut prev = vec![0usize; m + 2];
    for i in 0..m {
        next[i] = i + 1;
        prev[i] = if i == 0 { head } else { i - 1 };
    }
    if m == 0 {
        next[head] = tail;
        prev[tail] = head;
    } else {
        next[head] = 0;
        prev[tail] = m - 1;
        next[m - 1] = tail;
    }
    let mut call_slot = vec![0usize; n];
    let mut ret_slot: Vec<Option<usize>> = vec![None; n];
    for (s, e) in events.iter().enumerate() {
        match e.2 {
            Ev::Call(i) => call_slot[i] = s,
            Ev::Ret(i) => ret_slot[i] = Some(s),
        }
    }
    // Position of each no-return operation within its class, in invocation order.
    let classes = ops
        .iter()
        .filter_map(|o| o.class)
        .max()
        .map_or(0, |c| c as usize + 1);
    let mut class_pos = vec![0u32; n];
    {
        let mut count = vec![0u32; classes];
        let mut by_call: Vec<usize> = (0..n).collect();
        by_call.sort_by_key(|&i| (ops[i].call, i));
        for i in by_call {
            if let Some(c) = ops[i].class {
                class_pos[i] = count[c as usize];
                count[c as usize] += 1;
            }
        }
    }
    let mut class_next = vec![0u32; classes];

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, s: usize| {
        let (p, q) = (prev[s], next[s]);
        next[p] = q;
        prev[q] = p;
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, s: usize| {
        let (p, q) = (prev[s], next[s]);
        next[p] = s;
        prev[q] = s;
    };

    let mut returns_left = ops.iter().filter(|o| o.ret.is_some()).count();
    let mut linearized = Bits::new(n);
    let mut cache: HashSet<(Bits, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = init;
    let mut cur = next[head];
    // The deepest point reached, for the report.
    let mut best: (usize, Vec<usize>, usize) = (0, Vec::new(), usize::MAX);

    loop {
        if returns_left == 0 {
            return Outcome::Linearizable {
                order: stack.iter().map(|(i, _)| *i).collect(),
            };
        }
        let ev = if cur == tail {
            None
        } else {
            Some(events[cur].2)
        };
        match ev {
            Some(Ev::Call(i)) => {
                let allowed = ops[i]
                    .class
                    .is_none_or(|c| class_next[c as usize] == class_pos[i]);
                if allowed && let Some(ns) = model.step(&state, &ops[i].op) {
                    linearized.set(i);
                    if cache.insert((linearized.clone(), ns.clone())) {
                        if cache.len() > budget {
                            return Outcome::Unknown {
                                explored: cache.len(),
                            };
                        }
                        let old = std::mem::replace(&mut state, ns);
                        stack.push((i, old));
                        lift(&mut next, &mut prev, call_slot[i]);
                        if let Some(r) = ret_slot[i] {
                            lift(&mut next, &mut prev, r);
                            returns_left -= 1;
                        }
                        if let Some(c) = ops[i].class {
                            class_next[c as usize] += 1;
                        }
                        cur = next[head];
                        continue;
                    }
                    linearized.clear(i);
                }
                cur = next[cur];
            }
            Some(Ev::Ret(_)) | None => {
                // A completed operation cannot be placed here: undo the last choice.
                if stack.len() >= best.0 {
                    let stuck = match ev {
                        Some(Ev::Ret(j)) => j,
                        _ => usize::MAX,
                    };
                    if stack.len() > best.0 || best.2 == usize::MAX {
                        best = (stack.len(), stack.iter().map(|(i, _)| *i).collect(), stuck);
                    }
                }
                let Some((i, old)) = stack.pop() else {
                    let stuck = if best.2 == usize::MAX {
                        // Nothing could be linearized at all: the first completed operation.
                        (0..m)
                            .find_map(|s| match events[s].2 {
                                Ev::Ret(j) => Some(j),
                                _ => None,
                            })
                            .unwrap_or(0)
                    } else {
                        best.2
                    };
                    return Outcome::NotLinearizable {
                        prefix: best.1,
                        stuck,
                    };
                };
                state = old;
                linearized.clear(i);
                if let Some(c) = ops[i].class {
                    class_next[c as usize] -= 1;
                }
                if let Some(r) = ret_slot[i] {
                    unlift(&mut next, &mut prev, r);
                    returns_left += 1;
                }
                unlift(&mut next, &mut prev, call_slot[i]);
                cur = next[call_slot[i]];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain register of small integers (0 = initial).
    struct Reg;
    #[derive(Clone, Debug)]
    enum R {
        Read(u32),
        Write(u32),
    }
    impl Model for Reg {
        type State = u32;
        type Op = R;
        fn step(&self, s: &u32, op: &R) -> Option<u32> {
            match op {
                R::Read(v) => (v == s).then_some(*s),
                R::Write(v) => Some(*v),
            }
        }
    }

    fn e(op: R, call: u64, ret: Option<u64>) -> Entry<R> {
        Entry {
            op,
            call,
            ret,
            class: None,
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert!(matches!(
            check(&Reg, 0, &[], 1000),
            Outcome::Linearizable { .. }
        ));
    }

    #[test]
    fn concurrent_write_and_read_may_go_either_way() {
        for seen in [0, 1] {
            let h = [e(R::Write(1), 0, Some(10)), e(R::Read(seen), 5, Some(15))];
            assert!(
                matches!(check(&Reg, 0, &h, 1000), Outcome::Linearizable { .. }),
                "read of {seen}"
            );
        }
    }

    #[test]
    fn a_read_after_a_completed_write_must_see_it() {
        let h = [e(R::Write(1), 0, Some(10)), e(R::Read(0), 11, Some(15))];
        match check(&Reg, 0, &h, 1000) {
            Outcome::NotLinearizable { stuck, .. } => assert_eq!(stuck, 1),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn reads_may_not_go_back_in_time() {
        // w1 and w2 concurrent; one reader sees 2 then 1 after both writes completed.
        let h = [
            e(R::Write(1), 0, Some(10)),
            e(R::Write(2), 0, Some(10)),
            e(R::Read(2), 11, Some(12)),
            e(R::Read(1), 13, Some(14)),
        ];
        assert!(matches!(
            check(&Reg, 0, &h, 1000),
            Outcome::NotLinearizable { .. }
        ));
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        // The write never returned: a later read may see it, or not see it.
        for seen in [0, 1] {
            let h = [e(R::Write(1), 0, None), e(R::Read(seen), 100, Some(110))];
            assert!(matches!(
                check(&Reg, 0, &h, 1000),
                Outcome::Linearizable { .. }
            ));
        }
        // ...but not flicker: 1, then 0 again.
        let h = [
            e(R::Write(1), 0, None),
            e(R::Read(1), 100, Some(110)),
            e(R::Read(0), 120, Some(130)),
        ];
        assert!(matches!(
            check(&Reg, 0, &h, 1000),
            Outcome::NotLinearizable { .. }
        ));
    }

    #[test]
    fn classes_keep_many_unknown_writes_cheap() {
        // 40 unknown writes of the same (unobserved) value, then a read of a completed write.
        let mut h: Vec<Entry<R>> = (0..40)
            .map(|i| Entry {
                op: R::Write(7),
                call: i,
                ret: None,
                class: Some(0),
            })
            .collect();
        h.push(e(R::Write(3), 50, Some(60)));
        h.push(e(R::Read(3), 70, Some(80)));
        h.push(e(R::Read(2), 90, Some(95)));
        match check(&Reg, 0, &h, 100_000) {
            Outcome::NotLinearizable { stuck, .. } => assert_eq!(stuck, 42),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn the_budget_gives_unknown() {
        let h: Vec<Entry<R>> = (0..30)
            .map(|i| e(R::Write(i), 0, Some(100)))
            .chain([e(R::Read(999), 200, Some(300))])
            .collect();
        assert!(matches!(check(&Reg, 0, &h, 50), Outcome::Unknown { .. }));
    }
}
