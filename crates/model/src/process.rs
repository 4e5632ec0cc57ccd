//! Managed backends: a pool's process spec, which every node's supervisor runs, registers as
//! backends it owns, restarts and stops; and the state of a rolling restart of a pool.
//!
//! A managed instance is registered as backend `nN-I` (node N, instance I) with `node: N`; the
//! node replaces its own set in one step ([`crate::Command::SetManaged`]) so it never races
//! user edits of the rest of the pool.

use crate::config::{NodeId, Pool};
use crate::error::Invalid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn default_instances() -> u32 {
    1
}
fn default_backoff() -> u64 {
    500
}
fn default_max_backoff() -> u64 {
    30_000
}
fn default_crash_limit() -> u32 {
    5
}
fn default_min_uptime() -> u64 {
    10_000
}
fn default_start_timeout() -> u64 {
    30_000
}
fn default_stop_timeout() -> u64 {
    10_000
}
fn default_drain() -> u64 {
    1_000
}

/// How every node (or the listed ones) runs a pool's backends as child processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// The program (a path, or a name looked up in `PATH`).
    pub command: String,
    /// Its arguments; `{port}` is replaced by the instance's port, `{instance}` by its index,
    /// `{node}` by the node id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment variables (the node's own are inherited), with the same substitutions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; the node's when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Instances per node (1 to 100); 1 when omitted.
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// Ports the instances may take, `FROM-TO` (inclusive): each instance takes the first free
    /// one, skipping ports in use or named by any backend.
    pub ports: String,
    /// The host other nodes reach the instances on; the host of the node's cluster address
    /// when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Only these nodes run instances; every node when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeId>,
    /// Delay before the first restart of a failed instance, doubled after each failure up to
    /// `max_backoff_ms` (10 to 60,000 ms); 500 when omitted.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Longest delay between restarts (10 to 600,000 ms, at least `backoff_ms`); 30,000.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
    /// Failures in a row (exits, or health failures, before `min_uptime_ms` of health) after
    /// which an instance is marked failed and alerted on, and no longer restarted until the
    /// spec changes or the pool is restarted (1 to 100); 5 when omitted.
    #[serde(default = "default_crash_limit")]
    pub crash_limit: u32,
    /// An instance healthy this long has its failure count reset (0 to 3,600,000 ms); 10,000.
    #[serde(default = "default_min_uptime")]
    pub min_uptime_ms: u64,
    /// How long a new instance has to pass its first health check (100 to 600,000 ms); 30,000.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_ms: u64,
    /// How long a stopped instance has between SIGTERM and SIGKILL (0 to 600,000 ms); 10,000.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_ms: u64,
    /// In a rolling restart, how long the old instance keeps its in-flight requests after
    /// traffic moved to its replacement, before it gets SIGTERM (0 to 600,000 ms); 1,000.
    #[serde(default = "default_drain")]
    pub drain_ms: u64,
}

impl Default for ProcessSpec {
    fn default() -> Self {
        ProcessSpec {
            command: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            dir: None,
            instances: default_instances(),
            ports: String::new(),
            host: None,
            nodes: Vec::new(),
            backoff_ms: default_backoff(),
            max_backoff_ms: default_max_backoff(),
            crash_limit: default_crash_limit(),
            min_uptime_ms: default_min_uptime(),
            start_timeout_ms: default_start_timeout(),
            stop_timeout_ms: default_stop_timeout(),
            drain_ms: default_drain(),
        }
    }
}

impl ProcessSpec {
    /// The port range, inclusive. Valid specs always parse.
    pub fn port_range(&self) -> Option<(u16, u16)> {
        let (a, b) = self.ports.split_once('-')?;
        let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
        (a > 0 && a <= b).then_some((a, b))
    }

    /// Whether node `node` runs instances of this spec.
    pub fn runs_on(&self, node: NodeId) -> bool {
        self.nodes.is_empty() || self.nodes.contains(&node)
    }
}

/// The backend id of instance `index` on node `node`.
pub fn managed_id(node: NodeId, index: u32) -> String {
    format!("n{node}-{index}")
}

/// The instance index if `id` is the id of one of node `node`'s managed instances.
pub fn managed_index(node: NodeId, id: &str) -> Option<u32> {
    id.strip_prefix(&format!("n{node}-"))?
        .parse()
        .ok()
        .filter(|i: &u32| i.to_string().len() == id.len() - format!("n{node}-").len())
}

/// Whether backend `b` of a pool is a managed instance (of its owning node).
pub fn is_managed(pool: &Pool, b: &crate::config::Backend) -> bool {
    pool.process.is_some() && b.node.is_some_and(|n| managed_index(n, &b.id).is_some())
}

/// A rolling restart of a pool: its managed instances are replaced one at a time, in the
/// order of `pending`, each by its owning node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollingRestart {
    /// Increases with every `pool restart`; instances report which epoch they were restarted for.
    pub epoch: u64,
    /// When it was asked for (milliseconds since the Unix epoch).
    pub started_ms: u64,
    /// Managed backends not yet restarted for this epoch, in restart order.
    pub pending: Vec<String>,
    /// Managed backends restarted for this epoch.
    #[serde(default)]
    pub done: Vec<String>,
}

pub(crate) fn validate_process(p: &ProcessSpec) -> Result<(), Invalid> {
    let f = |name: &str| format!("process.{name}");
    if p.command.trim().is_empty() || p.command.len() > 4096 || p.command.contains('\0') {
        return Err(Invalid::new(
            f("command"),
            "is empty or not a program name",
            "give the program to run, e.g. /usr/bin/myapp or docker",
        ));
    }
    for (i, a) in p.args.iter().enumerate() {
        if a.contains('\0') || a.len() > 4096 {
            return Err(Invalid::new(
                format!("process.args[{i}]"),
                "holds a NUL byte or is longer than 4096 bytes",
                "pass plain text arguments",
            ));
        }
    }
    if p.args.len() > 256 {
        return Err(Invalid::new(
            f("args"),
            format!("{} arguments", p.args.len()),
            "pass at most 256 arguments",
        ));
    }
    for (k, v) in &p.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(Invalid::new(
                format!("process.env.{k}"),
                "is not a valid environment variable",
                "use a name without '=' and values without NUL bytes",
            ));
        }
    }
    if let Some(d) = &p.dir
        && (d.is_empty() || d.contains('\0'))
    {
        return Err(Invalid::new(
            f("dir"),
            format!("'{d}' is not a directory path"),
            "give the working directory, or leave it out",
        ));
    }
    if !(1..=100).contains(&p.instances) {
        return Err(Invalid::new(
            f("instances"),
            format!("{} is out of range", p.instances),
            "use 1 to 100 instances per node",
        ));
    }
    match p.port_range() {
        None => {
            return Err(Invalid::new(
                f("ports"),
                format!("'{}' is not a port range", p.ports),
                "use FROM-TO, e.g. 20000-20099 (ports 1 to 65535)",
            ));
        }
        Some((a, b)) if u32::from(b - a) + 1 < p.instances => {
            return Err(Invalid::new(
                f("ports"),
                format!(
                    "{}-{} holds fewer ports than {} instances",
                    a, b, p.instances
                ),
                "give a range with at least one port per instance (more leaves room for restarts)",
            ));
        }
        Some(_) => {}
    }
    if let Some(h) = &p.host {
        crate::validate::validate_address(&f("host"), &format!("{h}:1"))?;
    }
    if p.nodes.contains(&0) {
        return Err(Invalid::new(
            f("nodes"),
            "0 is not a node id",
            "list the ids of the nodes that run instances, or leave it out for every node",
        ));
    }
    let ranges: [(&str, u64, u64, u64); 7] = [
        ("backoff_ms", p.backoff_ms, 10, 60_000),
        ("max_backoff_ms", p.max_backoff_ms, 10, 600_000),
        ("min_uptime_ms", p.min_uptime_ms, 0, 3_600_000),
        ("start_timeout_ms", p.start_timeout_ms, 100, 600_000),
        ("stop_timeout_ms", p.stop_timeout_ms, 0, 600_000),
        ("drain_ms", p.drain_ms, 0, 600_000),
        ("crash_limit", u64::from(p.crash_limit), 1, 100),
    ];
    for (name, v, lo, hi) in ranges {
        if !(lo..=hi).contains(&v) {
            return Err(Invalid::new(
                f(name),
                format!("{v} is out of range"),
                format!("use {lo} to {hi}, or leave it out for the default"),
            ));
        }
    }
    if p.max_backoff_ms < p.backoff_ms {
        return Err(Invalid::new(
            f("max_backoff_ms"),
            format!(
                "{} is below backoff_ms ({})",
                p.max_backoff_ms, p.backoff_ms
            ),
            "use a max_backoff_ms at least as large as backoff_ms",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_ids_round_trip_and_do_not_overlap() {
        assert_eq!(managed_id(3, 12), "n3-12");
        assert_eq!(managed_index(3, "n3-12"), Some(12));
        assert_eq!(managed_index(1, "n3-12"), None);
        assert_eq!(managed_index(1, "n1-x"), None);
        assert_eq!(managed_index(1, "n1-01"), None);
        assert_eq!(managed_index(1, "n1-+1"), None);
    }

    #[test]
    fn specs_are_validated_with_their_field() {
        let mut p: ProcessSpec =
            serde_json::from_str(r#"{"command":"app","ports":"20000-20009","instances":2}"#)
                .unwrap();
        validate_process(&p).unwrap();
        assert_eq!(p.port_range(), Some((20000, 20009)));
        p.ports = "20000-20000".into();
        assert_eq!(validate_process(&p).unwrap_err().field, "process.ports");
        p.ports = "x".into();
        assert_eq!(validate_process(&p).unwrap_err().field, "process.ports");
        p.ports = "20000-20001".into();
        p.max_backoff_ms = 100;
        assert_eq!(
            validate_process(&p).unwrap_err().field,
            "process.max_backoff_ms"
        );
        p.max_backoff_ms = 1000;
        p.command = " ".into();
        assert_eq!(validate_process(&p).unwrap_err().field, "process.command");
        assert!(
            serde_json::from_str::<ProcessSpec>(r#"{"command":"a","ports":"1-2","x":1}"#).is_err()
        );
    }
}
