//! The history: every operation's invocation and completion, as Jepsen records it.
//!
//! One JSON object per line (`history.jsonl`):
//!
//! ```json
//! {"index":12,"process":3,"type":"invoke","f":"write","key":"r3","value":17,"node":2,"time":1234567}
//! {"index":13,"process":3,"type":"ok","f":"write","key":"r3","value":17,"node":2,"time":1334567,"rev":455}
//! ```
//!
//! `process` is a client's logical process (a number) or `"nemesis"`/`"harness"`; `type` is
//! `invoke`, `ok` (it happened), `fail` (it certainly did not happen) or `info` (unknown: it may
//! or may not have happened — a timeout after the request was sent). A process whose operation
//! ended `info` never invokes again; its worker goes on as a new process, as in Jepsen. `time`
//! is nanoseconds since the start of the test on one monotonic clock.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// Who performed an operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    Client(u64),
    Named(String),
}

impl Process {
    pub fn nemesis() -> Self {
        Process::Named("nemesis".into())
    }
    pub fn harness() -> Self {
        Process::Named("harness".into())
    }
}

/// `invoke`, `ok`, `fail` or `info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    #[serde(default)]
    pub index: u64,
    pub process: Process,
    #[serde(rename = "type")]
    pub kind: Type,
    /// The operation: `read`, `write`, `cas` (registers), `add`, `read-all` (set), `status`,
    /// `leader` (observations), or a nemesis or harness action.
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The operation's argument on `invoke`, its result on completion. Registers: `write` n;
    /// `read` null, then n or null (absent); `cas` `[expected revision, n]` (revision 0: the
    /// route must not exist yet).
    #[serde(default)]
    pub value: Value,
    /// The node the request went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// Nanoseconds since the test began.
    #[serde(default)]
    pub time: u64,
    /// The route's revision: the one a write created, or the one a read saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<u64>,
    /// The configuration revision the answer reflects (`X-Gateway-Revision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_rev: Option<u64>,
    /// HTTP status of the answer, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    /// An invocation by `process`.
    pub fn invoke(process: Process, f: &str, key: Option<String>, value: Value) -> Op {
        Op {
            index: 0,
            process,
            kind: Type::Invoke,
            f: f.to_string(),
            key,
            value,
            node: None,
            time: 0,
            rev: None,
            state_rev: None,
            code: None,
            error: None,
        }
    }

    /// A completion of `invoke` with `kind`, keeping its process, f, key and node.
    pub fn complete(invoke: &Op, kind: Type, value: Value) -> Op {
        Op {
            kind,
            value,
            index: 0,
            time: 0,
            ..invoke.clone()
        }
    }

    pub fn at(mut self, node: u64) -> Op {
        self.node = Some(node);
        self
    }

    pub fn is_client(&self) -> bool {
        matches!(self.process, Process::Client(_))
    }

    /// The value as a u64, if it is one.
    pub fn value_u64(&self) -> Option<u64> {
        self.value.as_u64()
    }
}

/// Writes the history as it happens (one line per operation) and keeps it in memory.
pub struct Recorder {
    start: Instant,
    inner: Mutex<RecInner>,
}

struct RecInner {
    file: Option<BufWriter<File>>,
    ops: Vec<Op>,
    /// Client operations completed so far.
    completed: usize,
    /// The last nemesis action's completion, in words.
    last_fault: String,
}

impl Recorder {
    /// A recorder writing to `path` (created), or only in memory when `None`.
    pub fn new(path: Option<&Path>) -> std::io::Result<Recorder> {
        let file = match path {
            Some(p) => Some(BufWriter::new(File::create(p)?)),
            None => None,
        };
        Ok(Recorder {
            start: Instant::now(),
            inner: Mutex::new(RecInner {
                file,
                ops: Vec::new(),
                completed: 0,
                last_fault: String::new(),
            }),
        })
    }

    /// The instant `time` 0 stands for.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Stamps `op` with the next index and the current time, writes it and returns it.
    pub fn record(&self, mut op: Op) -> Op {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        op.index = g.ops.len() as u64;
        op.time = self.now();
        if let Some(f) = g.file.as_mut() {
            if let Ok(line) = serde_json::to_string(&op) {
                let _ = writeln!(f, "{line}");
            }
            if op.index.is_multiple_of(512) {
                let _ = f.flush();
            }
        }
        if op.kind != Type::Invoke {
            if op.is_client() {
                g.completed += 1;
            } else if op.process == Process::nemesis() {
                g.last_fault = format!("{} {}", op.f, op.value);
            }
        }
        g.ops.push(op.clone());
        op
    }

    /// Client operations completed so far, and the last nemesis action.
    pub fn progress(&self) -> (usize, String) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (g.completed, g.last_fault.clone())
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Vec<Op> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.ops.clone()
    }

    pub fn flush(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = g.file.as_mut() {
            let _ = f.flush();
        }
    }
}

/// Reads a history written by [`Recorder`]. A cut-off last line (a run that was killed, or
/// one still being written) is left out.
pub fn load(path: &Path) -> anyhow::Result<Vec<Op>> {
    let f = BufReader::new(File::open(path)?);
    let lines: Vec<String> = f.lines().collect::<Result<_, _>>()?;
    let mut ops = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Op>(line) {
            Ok(op) => ops.push(op),
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => anyhow::bail!("{}:{}: {e}", path.display(), i + 1),
        }
    }
    Ok(ops)
}

/// An invocation and its completion (none if the history ended first, which counts as `info`).
#[derive(Clone, Copy, Debug)]
pub struct Pair<'a> {
    pub invoke: &'a Op,
    pub complete: Option<&'a Op>,
}

impl Pair<'_> {
    /// The completion's type; `Info` when it never completed.
    pub fn outcome(&self) -> Type {
        self.complete.map(|c| c.kind).unwrap_or(Type::Info)
    }

    /// When it completed; `None` for `info` (it may take effect at any time after invoking).
    pub fn end(&self) -> Option<u64> {
        match self.complete {
            Some(c) if c.kind != Type::Info => Some(c.time),
            _ => None,
        }
    }
}

/// Pairs every invocation with the next completion by the same process, in history order.
pub fn pairs(history: &[Op]) -> Vec<Pair<'_>> {
    let mut open: HashMap<&Process, usize> = HashMap::new();
    let mut out: Vec<Pair> = Vec::new();
    for op in history {
        match op.kind {
            Type::Invoke => {
                open.insert(&op.process, out.len());
                out.push(Pair {
                    invoke: op,
                    complete: None,
                });
            }
            _ => {
                if let Some(i) = open.remove(&op.process) {
                    out[i].complete = Some(op);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ops_round_trip_through_json_lines() {
        let dir = std::env::temp_dir().join(format!("jepsen-hist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.jsonl");
        let r = Recorder::new(Some(&path)).unwrap();
        let inv =
            r.record(Op::invoke(Process::Client(3), "write", Some("r1".into()), json!(17)).at(2));
        let mut ok = Op::complete(&inv, Type::Ok, json!(17));
        ok.rev = Some(9);
        r.record(ok);
        r.record(Op::invoke(
            Process::nemesis(),
            "kill",
            None,
            json!("leader"),
        ));
        r.flush();
        let back = load(&path).unwrap();
        assert_eq!(back, r.snapshot());
        assert_eq!(back[1].rev, Some(9));
        assert_eq!(back[2].process, Process::nemesis());
        let p = pairs(&back);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].outcome(), Type::Ok);
        assert_eq!(p[1].outcome(), Type::Info, "never completed counts as info");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
