//! The replicated configuration objects.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A Raft node id. Ids are chosen by the operator and never reused once removed.
pub type NodeId = u64;

/// The addresses a node is reached on; the node type carried in Raft membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Raft and cluster gRPC (`host:port`).
    pub cluster_addr: String,
    /// REST admin API (`host:port`).
    pub admin_addr: String,
    /// HTTP data plane (`host:port`).
    pub http_addr: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cluster={} admin={} http={}",
            self.cluster_addr, self.admin_addr, self.http_addr
        )
    }
}

/// How a pool chooses a backend for a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each backend in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx's algorithm) over `weight`.
    WeightedRoundRobin,
    /// The backend with the fewest requests in flight.
    LeastConnections,
    /// Two backends at random, the less loaded of them.
    RandomTwoChoices,
    /// Client-IP affinity by consistent hashing: the same client reaches the same backend on
    /// every node.
    IpHash,
    /// A signed cookie pins the client to a backend on every node.
    Cookie,
}

fn default_weight() -> u32 {
    1
}

fn is_default_weight(w: &u32) -> bool {
    *w == 1
}

/// One upstream server of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Unique within the pool; stable across config changes (stickiness and counters key on it).
    pub id: String,
    /// `host:port` or `unix:/absolute/path`.
    pub address: String,
    /// Relative share for weighted balancing, 1 to 1000.
    #[serde(default = "default_weight", skip_serializing_if = "is_default_weight")]
    pub weight: u32,
    /// The node that owns (runs) this backend, if any: write-to-leader routes send writes to the
    /// backends owned by the leader, and `prefer_local` pools favour the receiving node's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
}

/// A named set of backends and the policy that balances over them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Unique pool name (letters, digits, `.`, `_`, `-`; at most 64).
    #[serde(default)]
    pub name: String,
    /// Balancing policy; `round_robin` when omitted.
    #[serde(default)]
    pub balance: Balance,
    /// The backends; may be empty (requests then get 503).
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Serve requests from the backends owned by the receiving node (`Backend::node`) when it
    /// owns any, balancing over all backends otherwise. `false` when omitted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub prefer_local: bool,
    /// The configuration revision that last changed this pool; set by the cluster, ignored on input.
    #[serde(default)]
    pub revision: u64,
}

/// Which node serves mutating requests on a route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WritePolicy {
    /// Every node serves every request from its own choice of backend.
    #[default]
    Any,
    /// POST/PUT/PATCH/DELETE are carried to the Raft leader and served by its backends.
    Leader,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_prefix() -> String {
    "/".to_string()
}

/// Matches requests by host, path prefix and method, and sends them to a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique route name (letters, digits, `.`, `_`, `-`; at most 64).
    #[serde(default)]
    pub name: String,
    /// Host patterns: `example.com` or `*.example.com`; empty means any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path prefix, starting with `/`; the longest matching prefix wins.
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Methods matched (upper case); empty means any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The pool that serves this route; must exist.
    #[serde(default)]
    pub pool: String,
    /// `any` (default) or `leader`.
    #[serde(default)]
    pub writes: WritePolicy,
    /// How long the gateway waits for a backend's response head, in milliseconds (1 to
    /// 3,600,000); 30,000 when omitted. Past it the client gets 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// How many other backends a request is retried on when connecting to a backend fails
    /// (0 to 10); 2 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// The configuration revision that last changed this route; set by the cluster, ignored on input.
    #[serde(default)]
    pub revision: u64,
}
