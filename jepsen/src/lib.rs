//! A Jepsen-style fault-injection harness for the gateway cluster, in Rust.
//!
//! It drives the real `gateway` binary from outside — processes, signals, a TCP relay in front
//! of every node's cluster port, the REST admin API — and depends on none of the gateway's
//! crates. Clients record a history of operations (invoke, then ok / fail / info); a nemesis
//! injects faults on a random schedule; checkers decide, from the history alone, whether the
//! cluster kept its promises:
//!
//! * [`checker::register`]: linearizability per key ([`checker::linear`], Wing–Gong with
//!   Lowe's memoisation) of routes used as registers with compare-and-set on revision;
//! * [`checker::order`]: configuration revisions in real-time order across all keys;
//! * [`checker::set`]: no acknowledged add lost, nothing unexpected, nothing applied twice;
//! * [`checker::observe`]: one leader per term, terms never going backwards on a node,
//!   elections and failover gaps;
//! * convergence after healing and unexpected exits, as recorded by the harness.
//!
//! Layout: [`net`] (the relays), [`db`] (the processes), [`workload`] (clients), [`nemesis`]
//! (faults), [`run`] (one test from start to verdict), [`history`], [`http`].

pub mod checker;
pub mod db;
pub mod history;
pub mod http;
pub mod nemesis;
pub mod net;
pub mod run;
pub mod workload;

pub use run::{Options, Report, run};
