//! The replicated configuration objects.

pub use crate::health::{Ejection, HealthCheck};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// Most requests this backend serves at once through this pool (1 to 100,000); unlimited
    /// when omitted. Requests beyond it wait up to the pool's `queue_timeout_ms` for a free
    /// slot (on another backend, unless the pool is sticky), then get 503 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Draining: no new requests (sticky clients are re-pinned elsewhere); requests and
    /// WebSockets already under way finish.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            id: String::new(),
            address: String::new(),
            weight: default_weight(),
            node: None,
            max_connections: None,
            drain: false,
        }
    }
}

/// How the gateway talks to a pool's backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over cleartext (for gRPC services); requests are
    /// multiplexed over one connection per backend and trailers pass both ways.
    H2c,
    /// HTTP/2 over TLS, agreed by ALPN (`h2`); needs the pool's `tls`.
    H2,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
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
    /// `http1` (default), `h2c` (HTTP/2 prior knowledge, e.g. for gRPC backends) or `h2`
    /// (HTTP/2 over TLS; needs `tls`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
    // ---- TLS to backends (issue 7) ----
    /// Speak TLS to the backends (HTTP routes and health checks); plain TCP when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::backend_tls::BackendTls>,
    // ---- end TLS to backends ----
    /// How long a request may wait for a backend below its `max_connections`, in milliseconds
    /// (0 to 60,000; 0 answers 503 at once); 1,000 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u64>,
    /// How long an idle HTTP/1.1 keep-alive connection to a backend is kept for the next
    /// request, in milliseconds (0 to 3,600,000; 0 closes each connection after its response);
    /// 60,000 when omitted, as nginx's upstream `keepalive_timeout`. (An `h2c` or `h2` pool
    /// keeps its one connection per backend open.) Keep it below the backends' own
    /// idle timeout (Node.js: 5 s) so that a request is seldom written on a connection the
    /// backend is closing at that moment: an idempotent request is then sent again on a new
    /// connection, but a POST or PATCH the backend may have received cannot be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_timeout_ms: Option<u64>,
    /// Retry budget: retries may add at most this percentage on top of the pool's requests
    /// over a sliding 10-second window (0 to 1,000); 20 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget_percent: Option<u32>,
    /// Retry budget floor: this many retries per second are always allowed (0 to 10,000);
    /// 10 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget_min_per_second: Option<u32>,
    /// Active health checks, run by every node; the cluster marks a backend down when the
    /// check's `policy` is met. No active checks when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive ejection from real traffic (connection failures, 5xx in a row); off when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eject: Option<Ejection>,
    /// Managed backends: every node (or those listed) runs this many instances of a process
    /// and registers them as backends `nN-I` it owns. None when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<crate::process::ProcessSpec>,
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
    /// Wait before each retry, in milliseconds (0 to 60,000); 0 when omitted. When it is above
    /// 0, a request whose pool has no backend at all waits this long (or until the
    /// configuration changes) and looks again, up to `retries` times, before the 503; and a
    /// request that failed to connect to every backend tries them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_ms: Option<u64>,
    /// Header conditions: every one must hold (exact value, case-insensitive name). Among
    /// routes of the same host tier and prefix length, routes with more conditions go first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Changes to the request before it is sent to the backend.
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub request_headers: HeaderRules,
    /// Changes to the response before it is sent to the client (also on the gateway's own
    /// 502/503/504 answers of this route).
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub response_headers: HeaderRules,
    /// Remove `path_prefix` from the path sent to the backend (`/api/users` → `/users`,
    /// `/api` → `/`). `false` when omitted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub strip_prefix: bool,
    /// Send this `Host` to the backend (`host` or `host:port`) instead of the client's;
    /// `X-Forwarded-Host` keeps the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    /// Custom bodies for the gateway's own errors on this route, keyed by `"502"`, `"503"`
    /// or `"504"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub error_pages: BTreeMap<String, ErrorPage>,
    /// Answer requests that arrived over plain HTTP with this redirect status (301, 302, 307
    /// or 308) to the same URL over HTTPS, instead of proxying them. Requests over HTTPS are
    /// served as usual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<u16>,
    /// Largest request body accepted, in bytes (1 to 2^40); larger ones get 413. Unlimited
    /// when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Most requests of this route one node serves at once (1 to 1,000,000); beyond it, 503
    /// with `Retry-After`. Unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Per-client-IP rate limit (token bucket), counted on each node; beyond it, 429 with
    /// `Retry-After`. None when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Dog-pile avoidance and response caching for GET/HEAD, on each node. Off when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<RouteCache>,
    /// The configuration revision that last changed this route; set by the cluster, ignored on input.
    #[serde(default)]
    pub revision: u64,
}

/// A token bucket per client IP: `per_second` requests a second on average, up to `burst` at
/// once (`per_second` when omitted). The client IP is the TCP peer's, or behind
/// `--trusted-proxies` the last untrusted `X-Forwarded-For` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// A header condition of a route: the request must carry header `name` (any case) with
/// exactly `value`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

/// Header changes, applied in this order: `remove`, then `set` (replaces every value), then
/// `add` (appends a value).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

fn default_error_content_type() -> String {
    "text/html; charset=utf-8".to_string()
}

/// A custom answer for one of the gateway's own errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorPage {
    /// The status sent instead of the error's own (200 to 599); the error's when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `text/html; charset=utf-8` when omitted.
    #[serde(default = "default_error_content_type")]
    pub content_type: String,
    #[serde(default)]
    pub body: String,
}

impl Default for ErrorPage {
    fn default() -> Self {
        ErrorPage {
            status: None,
            content_type: default_error_content_type(),
            body: String::new(),
        }
    }
}

// ---- Route cache (dog-pile avoidance and response cache) ----

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Default for [`RouteCache::max_entry_bytes`]: 1 MiB.
pub const DEFAULT_CACHE_ENTRY_BYTES: u64 = 1 << 20;

/// Dog-pile avoidance and an optional response cache for a route's GET and HEAD requests,
/// kept separately on each node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCache {
    /// Identical GET/HEAD requests in flight at once go upstream once and share the answer.
    /// `true` when omitted.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub coalesce: bool,
    /// Bytes of responses this node may store for the route (0 to 2^36); 0 (no storing,
    /// coalescing only) when omitted.
    #[serde(default, skip_serializing_if = "is_default")]
    pub max_bytes: u64,
    /// Largest body shared or stored (1 to 2^30, at most `max_bytes` when that is set);
    /// 1 MiB when omitted. Larger bodies stream to their own client only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entry_bytes: Option<u64>,
    /// How long past its freshness a stored response may still be served while one request
    /// fetches a new one, in milliseconds (0 to 86,400,000); 0 when omitted.
    #[serde(default, skip_serializing_if = "is_default")]
    pub stale_while_revalidate_ms: u64,
    /// Also coalesce and cache requests carrying `Authorization`. `false` when omitted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub share_authorized: bool,
    /// Also share and store responses carrying `Set-Cookie`. `false` when omitted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub share_set_cookie: bool,
}

impl Default for RouteCache {
    fn default() -> Self {
        RouteCache {
            coalesce: true,
            max_bytes: 0,
            max_entry_bytes: None,
            stale_while_revalidate_ms: 0,
            share_authorized: false,
            share_set_cookie: false,
        }
    }
}
