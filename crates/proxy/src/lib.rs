//! The HTTP data plane of the gateway: accepts HTTP/1.1 (keep-alive, upgrades) and HTTP/2
//! (h2c, prior knowledge) connections, matches each request against an immutable
//! `RouteTable` compiled from the replicated [`gateway_model::State`], picks
//! a backend with the pool's balancer and forwards the request over pooled keep-alive
//! connections (TCP or `unix:` sockets). Mutating requests on `writes = "leader"` routes are
//! carried to the current leader node with an authenticated hop marker.
//!
//! This crate knows nothing of Raft, sled, gRPC or the admin plane: it is handed a
//! `tokio::sync::watch` of the state and one of the current leader, and must not depend on
//! `openraft`, `gateway-store`, `gateway-cluster` or `gateway-admin`.
//!
//! The request path does one `ArcSwap` load per request and never awaits a lock, Raft or disk;
//! the only locks it takes (connection pool idle lists, the smooth-weighted-round-robin state)
//! are short synchronous critical sections that are never held across an `.await`.
//!
//! # Behaviour in brief
//!
//! * **Routing** (module `table`): host first (exact, then `*.suffix` wildcards longest suffix
//!   first, then routes without hosts), then the longest `path_prefix` matched on a path segment
//!   boundary, then the route's method filter; ties go to the route whose name sorts first. A
//!   more specific host tier that has no route matching the path and method falls through to
//!   the next tier. Nothing matches: `404 no route for HOST PATH`.
//! * **Balancing** (module `balance`): round robin, smooth weighted round robin, least connections,
//!   random two choices, `ip_hash` (weighted rendezvous hashing of the client IP), `cookie`
//!   (signed `gw_sticky` cookie understood by every node).
//! * **Write-to-leader**: POST/PUT/PATCH/DELETE on a `writes = "leader"` route at a node that is
//!   not the leader go to the leader's `http_addr` with `gateway-hop: NODE.TS.HMAC`; the leader
//!   serves writes (and any hop-marked request) from backends it owns (`Backend::node`),
//!   falling back to every backend of the pool when it owns none. A request with an invalid
//!   marker is refused with 403; a marked request is never forwarded again.
//! * **Replay**: on a `writes = "leader"` route, a backend answer carrying `gateway-replay: leader`
//!   makes the gateway replay the request on the leader's own backends, if the request body was
//!   received completely and is at most [`ProxyConfig::max_replay_body`] bytes.
//! * **Errors** name the route and cause: 502 (backend failed), 503 (no backends, no leader),
//!   504 (no response head within the route's timeout, 30 s by default).
//! * **Retries**: a request that provably never reached a backend (connect refused or timed out,
//!   pooled connection closed before the request was written) is retried on another backend, up
//!   to the route's `retries` (2 by default). The request is handed back by the connection
//!   layer untouched, so this needs no buffering and is safe for every method; a request that
//!   failed after it was written is not retried.
//!
//! # Model fields this crate reads beyond the basics
//!
//! * `Route::timeout_ms` (default 30 000): time allowed for a backend's response head → 504.
//! * `Route::retries` (default 2): other backends tried after a connection failure.
//! * `Pool::prefer_local` (default false): serve from the receiving node's own backends
//!   (`Backend::node`) when it has any — "reads go to the local instance".
//!
//! # Costs and limits
//!
//! * On `writes = "leader"` routes, requests served locally keep a copy of their head (and of
//!   their body up to `max_replay_body`) in case the backend asks for a replay.
//! * Upstream connections are HTTP/1.1 (TCP or unix socket); HTTP/2 clients are served and
//!   their requests forwarded over HTTP/1.1. WebSockets over HTTP/2 (extended CONNECT) are not
//!   supported; HTTP/1.1 upgrades are.
//! * The hop marker binds node, time, method and path but not the body: nodes should talk over
//!   a private network (or, later, TLS).
//! * `X-Forwarded-Proto` is `http`: this listener is plain HTTP.

mod balance;
mod body;
mod error;
mod headers;
mod hop;
mod proxy;
mod server;
mod table;
mod upstream;

pub use server::serve;

/// Default for [`ProxyConfig::max_replay_body`]: 1 MiB.
pub const DEFAULT_MAX_REPLAY_BODY: usize = 1 << 20;

/// What the data plane needs to know about the node it runs on.
#[derive(Clone)]
pub struct ProxyConfig {
    /// This node's id: backends whose `node` equals it are this node's own.
    pub node_id: u64,
    /// Key for authenticating the write-to-leader hop marker (derived from the cluster secret).
    /// It also signs the `gw_sticky` cookie, so every node of the cluster honours it.
    pub hop_key: Vec<u8>,
    /// Largest request body buffered for a replay on the leader (default 1 MiB).
    pub max_replay_body: usize,
}

impl ProxyConfig {
    /// A config with the default [`max_replay_body`](Self::max_replay_body).
    pub fn new(node_id: u64, hop_key: impl Into<Vec<u8>>) -> Self {
        ProxyConfig {
            node_id,
            hop_key: hop_key.into(),
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
        }
    }
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("node_id", &self.node_id)
            .field("hop_key", &"<redacted>")
            .field("max_replay_body", &self.max_replay_body)
            .finish()
    }
}

/// The current Raft leader as the data plane sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub id: u64,
    /// The leader's HTTP data plane address (`host:port`).
    pub http_addr: String,
}
