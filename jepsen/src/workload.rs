//! Clients: concurrent workers sending operations through random nodes and recording them.
//!
//! * Registers: route `r<k>` holds the register value in its `path_prefix` (`/v/<n>`). Workers
//!   read (`GET`, linearizable), write (`PUT`) and compare-and-set (`GET`, then `PUT` with
//!   `If-Match: "<revision>"`, or `If-None-Match: *` when the route does not exist). A few keys
//!   are active at a time; each is retired after `ops_per_key` operations (or after too many
//!   unknown outcomes) and a fresh key takes its place, which keeps each key's history small
//!   enough for the linearizability search.
//! * Set: routes `s<n>` added once each with `If-None-Match: *`; read back at the end.
//! * Observations: `/status` and `/leader` of every node, in rounds.
//!
//! A request that failed before it was sent is `fail`; a write that timed out or got 503 after
//! it was sent is `info` (it may still be committed: the node retries through elections), and
//! the worker continues as a new process.

use crate::db::Db;
use crate::history::{Op, Process, Recorder, Type};
use crate::http::{self, Failure, Reply};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The pool every route of the test uses (no backends: the data plane answers 503 naming the
/// route, which is how convergence checks routing).
pub const POOL: &str = "jepsen";

#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// Register workers.
    pub concurrency: usize,
    /// Keys in use at a time.
    pub keys: usize,
    pub ops_per_key: usize,
    /// A key is retired early once this many of its operations ended `info`.
    pub max_info_per_key: usize,
    /// Set workers (0: no set workload).
    pub set_workers: usize,
    /// Most elements the set workload adds.
    pub set_max: u64,
    /// Pause between a worker's operations: uniform in [0, 2 × stagger].
    pub stagger: Duration,
    pub timeout: Duration,
    /// Between observation rounds.
    pub observe_every: Duration,
}

struct Slot {
    key: String,
    ops: usize,
    info: usize,
}

/// Shared by the workers.
pub struct Clients {
    pub db: Arc<Db>,
    pub rec: Arc<Recorder>,
    pub opts: WorkloadOptions,
    slots: Mutex<(Vec<Slot>, u64)>,
    next_value: AtomicU64,
    next_element: AtomicU64,
    next_process: AtomicU64,
}

impl Clients {
    pub fn new(db: Arc<Db>, rec: Arc<Recorder>, opts: WorkloadOptions) -> Arc<Clients> {
        let slots = (0..opts.keys.max(1))
            .map(|k| Slot {
                key: format!("r{k}"),
                ops: 0,
                info: 0,
            })
            .collect();
        let workers = (opts.concurrency + opts.set_workers) as u64;
        Arc::new(Clients {
            db,
            rec,
            slots: Mutex::new((slots, opts.keys.max(1) as u64)),
            next_value: AtomicU64::new(1),
            next_element: AtomicU64::new(1),
            // Processes 0..workers are the workers' first; crashed processes get fresh ids.
            next_process: AtomicU64::new(workers),
            opts,
        })
    }

    fn fresh_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::SeqCst)
    }

    /// A key for the next operation, rotating worn-out keys.
    fn pick_key(&self, rng: &mut StdRng) -> String {
        let mut g = self.slots.lock().unwrap();
        let (slots, next) = &mut *g;
        let i = rng.random_range(0..slots.len());
        if slots[i].ops >= self.opts.ops_per_key || slots[i].info >= self.opts.max_info_per_key {
            slots[i] = Slot {
                key: format!("r{next}"),
                ops: 0,
                info: 0,
            };
            *next += 1;
        }
        slots[i].ops += 1;
        slots[i].key.clone()
    }

    fn note_info(&self, key: &str) {
        let mut g = self.slots.lock().unwrap();
        if let Some(s) = g.0.iter_mut().find(|s| s.key == key) {
            s.info += 1;
        }
    }

    fn pick_node(&self, rng: &mut StdRng) -> Option<u64> {
        self.db.targets().choose(rng).copied()
    }

    async fn send(
        &self,
        node: u64,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply, Failure> {
        let addr = match self.db.spec_of(node) {
            Ok(s) => s.admin,
            Err(e) => return Err(Failure::NotSent(e.to_string())),
        };
        http::request(addr, method, path, headers, body, self.opts.timeout).await
    }

    /// Register worker `w` until `deadline`.
    pub async fn register_worker(self: Arc<Self>, w: usize, seed: u64, deadline: Instant) {
        let mut rng: StdRng = rand::SeedableRng::seed_from_u64(seed);
        let mut process = w as u64;
        while Instant::now() < deadline {
            let Some(node) = self.pick_node(&mut rng) else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let key = self.pick_key(&mut rng);
            let roll = rng.random_range(0..10);
            let outcome = if roll < 4 {
                self.read(process, &key, node).await.0
            } else if roll < 7 {
                let v = self.next_value.fetch_add(1, Ordering::SeqCst);
                self.write(process, &key, node, v).await
            } else {
                let (t, seen) = self.read(process, &key, node).await;
                match (t, seen) {
                    (Type::Ok, Some(expect)) => {
                        let v = self.next_value.fetch_add(1, Ordering::SeqCst);
                        let node = self.pick_node(&mut rng).unwrap_or(node);
                        self.cas(process, &key, node, expect, v).await
                    }
                    (t, _) => t,
                }
            };
            if outcome == Type::Info {
                self.note_info(&key);
                process = self.fresh_process();
            }
            if !self.db.live().contains(&node) {
                // The node is down or stopped: back off as a client reconnecting would,
                // instead of spinning on refused connections.
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
            }
            self.stagger(&mut rng).await;
        }
    }

    async fn stagger(&self, rng: &mut StdRng) {
        let max = self.opts.stagger.as_micros() as u64 * 2;
        if max > 0 {
            tokio::time::sleep(Duration::from_micros(rng.random_range(0..max))).await;
        }
    }

    /// Reads key; returns the outcome and, if ok, the route's revision (0 when absent).
    async fn read(&self, p: u64, key: &str, node: u64) -> (Type, Option<u64>) {
        let inv = self
            .rec
            .record(Op::invoke(Process::Client(p), "read", Some(key.into()), Value::Null).at(node));
        let res = self
            .send(node, "GET", &format!("/v1/routes/{key}"), &[], None)
            .await;
        let mut done = Op::complete(&inv, Type::Fail, Value::Null);
        let mut seen = None;
        match res {
            Ok(r) if r.status == 200 => {
                let body = r.json().unwrap_or(Value::Null);
                let route = &body["route"];
                done.kind = Type::Ok;
                done.value = register_value(route["path_prefix"].as_str());
                done.rev = route["revision"].as_u64();
                done.state_rev = body["revision"].as_u64().or(r.revision());
                done.code = Some(200);
                seen = done.rev;
            }
            Ok(r) if r.status == 404 => {
                done.kind = Type::Ok;
                done.state_rev = r.revision();
                done.code = Some(404);
                seen = Some(0);
            }
            Ok(r) => {
                done.code = Some(r.status);
                done.error = Some(short(&r.text()));
            }
            // A read changes nothing: not knowing its outcome is the same as failing.
            Err(e) => done.error = Some(e.to_string()),
        }
        let t = done.kind;
        self.rec.record(done);
        (t, seen)
    }

    async fn write(&self, p: u64, key: &str, node: u64, v: u64) -> Type {
        let inv = self
            .rec
            .record(Op::invoke(Process::Client(p), "write", Some(key.into()), json!(v)).at(node));
        let body = route_body(&format!("/v/{v}"));
        let res = self
            .send(node, "PUT", &format!("/v1/routes/{key}"), &[], Some(&body))
            .await;
        self.finish_write(inv, res)
    }

    async fn cas(&self, p: u64, key: &str, node: u64, expect: u64, v: u64) -> Type {
        let inv = self.rec.record(
            Op::invoke(
                Process::Client(p),
                "cas",
                Some(key.into()),
                json!([expect, v]),
            )
            .at(node),
        );
        let body = route_body(&format!("/v/{v}"));
        let etag = format!("\"{expect}\"");
        let header = if expect == 0 {
            ("If-None-Match", "*")
        } else {
            ("If-Match", etag.as_str())
        };
        let res = self
            .send(
                node,
                "PUT",
                &format!("/v1/routes/{key}"),
                &[header],
                Some(&body),
            )
            .await;
        self.finish_write(inv, res)
    }

    /// Classifies a write's answer: 200 ok; 4xx certainly not applied (412 refused on its
    /// condition); 503, other 5xx, timeouts after sending: unknown.
    fn finish_write(&self, inv: Op, res: Result<Reply, Failure>) -> Type {
        let mut done = Op::complete(&inv, Type::Info, inv.value.clone());
        match res {
            Ok(r) if r.status == 200 => {
                let body = r.json().unwrap_or(Value::Null);
                done.kind = Type::Ok;
                done.rev = body["revision"].as_u64().or(r.revision());
                done.state_rev = done.rev;
                done.code = Some(200);
            }
            Ok(r) if (400..500).contains(&r.status) => {
                done.kind = Type::Fail;
                done.code = Some(r.status);
                done.state_rev = r.revision();
                done.error = Some(short(&r.text()));
            }
            Ok(r) => {
                done.code = Some(r.status);
                done.error = Some(short(&r.text()));
            }
            Err(Failure::NotSent(e)) => {
                done.kind = Type::Fail;
                done.error = Some(e);
            }
            Err(e @ Failure::Unknown(_)) => done.error = Some(e.to_string()),
        }
        let t = done.kind;
        self.rec.record(done);
        t
    }

    /// Set worker `w` until `deadline` (or `set_max` elements).
    pub async fn set_worker(self: Arc<Self>, w: usize, seed: u64, deadline: Instant) {
        let mut rng: StdRng = rand::SeedableRng::seed_from_u64(seed);
        let mut process = (self.opts.concurrency + w) as u64;
        while Instant::now() < deadline {
            let n = self.next_element.fetch_add(1, Ordering::SeqCst);
            if n > self.opts.set_max {
                break;
            }
            let Some(node) = self.pick_node(&mut rng) else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let key = format!("s{n}");
            let inv = self.rec.record(
                Op::invoke(Process::Client(process), "add", Some(key.clone()), json!(n)).at(node),
            );
            let body = route_body(&format!("/s/{n}"));
            let res = self
                .send(
                    node,
                    "PUT",
                    &format!("/v1/routes/{key}"),
                    &[("If-None-Match", "*")],
                    Some(&body),
                )
                .await;
            if self.finish_write(inv, res) == Type::Info {
                process = self.fresh_process();
            }
            // Adds are a side show: at most a few per second per worker.
            self.stagger(&mut rng).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Observes `/status` and `/leader` of every node, in rounds, until `deadline`.
    pub async fn observer(self: Arc<Self>, deadline: Instant) {
        // Observation processes are numbered per node, far above the workers'.
        const BASE: u64 = 1_000_000;
        let limit = self.opts.timeout.min(Duration::from_secs(1));
        while Instant::now() < deadline {
            let round_end = Instant::now() + self.opts.observe_every;
            let mut tasks = tokio::task::JoinSet::new();
            for node in self.db.targets() {
                let me = self.clone();
                tasks.spawn(async move {
                    let Ok(spec) = me.db.spec_of(node) else { return };
                    for (f, path) in [("status", "/status"), ("leader", "/leader")] {
                        let inv = me.rec.record(
                            Op::invoke(Process::Client(BASE + node), f, None, Value::Null).at(node),
                        );
                        let res = http::request(spec.admin, "GET", path, &[], None, limit).await;
                        let mut done = Op::complete(&inv, Type::Fail, Value::Null);
                        match res {
                            Ok(r) if r.status == 200 => {
                                let v = r.json().unwrap_or(Value::Null);
                                done.kind = Type::Ok;
                                done.code = Some(200);
                                done.value = if f == "status" {
                                    json!({
                                        "role": v["role"], "term": v["term"], "leader": v["leader"],
                                        "applied_index": v["applied_index"], "revision": v["revision"],
                                        "voters": crate::db::ids(&v["voters"]),
                                    })
                                } else {
                                    json!({"id": v["id"], "term": v["term"]})
                                };
                            }
                            Ok(r) => {
                                done.code = Some(r.status);
                                done.error = Some(short(&r.text()));
                            }
                            Err(e) => done.error = Some(e.to_string()),
                        }
                        me.rec.record(done);
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            tokio::time::sleep_until(round_end).await;
        }
    }
}

/// The register value in a route's path prefix: `/v/<n>` gives n; absent gives null; anything
/// else is kept as text (and can match no write).
pub fn register_value(prefix: Option<&str>) -> Value {
    match prefix {
        None => Value::Null,
        Some(p) => match p.strip_prefix("/v/").and_then(|n| n.parse::<u64>().ok()) {
            Some(n) => json!(n),
            None => json!(p),
        },
    }
}

fn route_body(prefix: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"pool": POOL, "path_prefix": prefix})).unwrap_or_default()
}

fn short(s: &str) -> String {
    let s = s.trim();
    if s.len() > 200 {
        format!("{}...", &s[..s.floor_char_boundary(200)])
    } else {
        s.to_string()
    }
}
