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
//! * **Errors** name the route and cause: 400 (ambiguous framing), 502 (backend failed), 503
//!   (no backends, no leader, every backend at its `max_connections`), 504 (no response head
//!   within the route's timeout, 30 s by default). A route's `error_pages` replace the body
//!   (and optionally the status) of its 502/503/504 answers.
//! * **Retries**: a request that provably never reached a backend (connect refused or timed out,
//!   pooled connection closed before the request was written) is retried, after the route's
//!   `retry_delay_ms` (0 by default), on another backend — or, with a delay, on the same ones
//!   again — up to the route's `retries` (2 by default). The request is handed back by the
//!   connection layer untouched, so this needs no buffering and is safe for every method. A
//!   request that failed after it was written is retried only when it is idempotent, had no
//!   body and no answer had begun (its head is kept until the answer starts); others never
//!   are. Retries draw on a per-pool
//!   **budget**: at most `retry_budget_percent` (20) % of the pool's requests over the last
//!   10 s, plus `retry_budget_min_per_second` (10) per second, so retries cannot multiply the
//!   load on a failing pool. When a pool has **no backend at all** and the route has a
//!   `retry_delay_ms`, the request waits for one to be registered (re-reading the table after
//!   each delay, and at once on every config change) up to `retries` delays before the 503.
//! * **Connection limits**: a backend's `max_connections` caps the requests it serves at once;
//!   a request finding it full goes to another backend with room (not on sticky pools), or
//!   waits up to the pool's `queue_timeout_ms` (1 s) for a slot, then gets 503 with
//!   `Retry-After: 1`.
//! * **Node limits** (the replicated `limits`, module `limits`): above `max_requests` requests
//!   under way (head to response head) a request gets a fast 503 with `Retry-After: 1` before
//!   routing; at `max_connections` open client connections (HTTP and HTTPS together) the node
//!   stops accepting until one closes, so new ones wait in the kernel's backlog. Without
//!   limits this costs one relaxed atomic load per request.
//! * **Dog-pile avoidance and response cache** (a route's `cache`, module `cache`): identical
//!   GET/HEAD requests in flight at once share one upstream request; shareable answers may be
//!   stored per `Cache-Control` and served stale while one request refreshes them; answers
//!   carry `X-Cache`. Routes without a cache take one branch more and nothing else.
//! * **Protocols**: pools speak HTTP/1.1 to their backends, or with `protocol = "h2c"` HTTP/2
//!   with prior knowledge over one multiplexed connection per backend, so gRPC services can be
//!   proxied: `te: trailers` is passed on, and trailers flow both ways.
//! * **TLS to backends** (module `backend_tls`): a pool's `tls` option makes its endpoints
//!   connect over rustls (CA bundle or public roots, SNI override, client certificate by name,
//!   ALPN `h2` for `protocol = "h2"`); its health probes use TLS too. Plain endpoints are
//!   untouched by it.
//! * **Rewrites** per route: `strip_prefix`, `host_rewrite`, `request_headers` and
//!   `response_headers` rules (`remove`, then `set`, then `add`), header conditions in
//!   matching (module `table`).
//! * **Hygiene**: forwarding headers (`X-Forwarded-*`, `Forwarded`) from clients other than
//!   [`ProxyConfig::trusted_proxies`] are replaced, not trusted (module `headers`); request
//!   heads are limited to [`ProxyConfig::max_header_bytes`] (431 beyond) and must arrive within
//!   [`ProxyConfig::header_read_timeout`] of their first byte; idle keep-alive connections are
//!   closed after [`ProxyConfig::keep_alive_timeout`]; HTTP/1 requests with ambiguous framing
//!   (both `Content-Length` and `Transfer-Encoding`, either one twice, a `Content-Length` that
//!   is not a plain number, a coding other than `chunked`, a bad chunk size) get 400 and the
//!   connection is closed (module `codec`).
//! * **HTTP/1.1** is spoken by the gateway's own code on both sides (modules `conn`, `codec`,
//!   `upstream`): an idle client connection holds no buffer and no request future, and a
//!   backend exchange runs inside the request's task. HTTP/2 (client prior knowledge, `h2c`
//!   pools) goes through hyper.
//!
//! * **Metrics** (module `metrics`): answers by route, backend and status class, a latency
//!   histogram per route, attempts and failures per backend, retries per pool, open connections
//!   and WebSockets; relaxed atomic adds on counters kept across table swaps, read through the
//!   [`Metrics`] handle ([`ProxyConfig::metrics`]). The node renders them; this crate knows
//!   nothing of Prometheus.
//! * **Access log** (module `access`, off by default): one line per request, JSON or the
//!   common log format, as a `tracing` event with target [`ACCESS_TARGET`].
//!
//! # Model fields this crate reads beyond the basics
//!
//! * `Route`: `timeout_ms` (30 000), `retries` (2), `retry_delay_ms` (0), `headers`,
//!   `request_headers`, `response_headers`, `strip_prefix`, `host_rewrite`, `error_pages`.
//! * `Pool`: `prefer_local` (false: serve from the receiving node's own backends when it has
//!   any — "reads go to the local instance"), `protocol` (`http1`), `queue_timeout_ms` (1000),
//!   `keep_alive_timeout_ms` (60 000), `retry_budget_percent` (20),
//!   `retry_budget_min_per_second` (10).
//! * `Backend::max_connections` (unlimited).
//!
//! # Costs and limits
//!
//! * The request path does one `ArcSwap` load per request; only a request waiting for a pool
//!   without backends loads the table again.
//! * On `writes = "leader"` routes, requests served locally keep a copy of their head (and of
//!   their body up to `max_replay_body`) in case the backend asks for a replay.
//! * An idle HTTP/1.1 client connection costs its task (a 280-byte future) and the socket;
//!   buffers (4 KiB first, grown up to `max_header_bytes` for heads) and the request's state
//!   are taken when a request arrives and dropped when it is answered. Idle timeouts use one
//!   shared tick (at most 1 s) that wakes every idle connection to check its deadline.
//! * HTTP/2 clients are served; their requests go upstream over HTTP/1.1 or h2c as the pool
//!   says. WebSockets over HTTP/2 (extended CONNECT) are not supported; HTTP/1.1 upgrades are,
//!   and go over a dedicated HTTP/1.1 connection even in `h2c` pools.
//! * `max_connections` counts requests per pool entry: two pools naming the same address
//!   count separately.
//! * The hop marker binds node, time, method and path but not the body: nodes should talk over
//!   a private network (or, later, TLS).
//! * `X-Forwarded-Proto` is `http` on the plain listener and `https` on the HTTPS one.
//!
//! # HTTPS
//!
//! [`serve_all`] also serves an HTTPS listener (module `tls`): rustls with the replicated
//! certificates, chosen by SNI (exact names, one-label `*.` wildcards, then the default
//! certificate) from a table swapped whole when certificates change; ALPN `h2` goes to the
//! HTTP/2 server, anything else to the same HTTP/1.1 loop as plain connections (module
//! `stream` makes it run over TCP or TLS). A route's `https_redirect` answers plain-HTTP
//! requests with a redirect to HTTPS.

mod access;
mod backend_tls;
mod balance;
mod body;
mod budget;
mod cache;
mod cidr;
mod codec;
mod conn;
mod error;
mod headers;
pub mod health;
mod hop;
mod limits;
pub mod memory;
mod metrics;
mod proxy;
mod rawio;
mod rules;
mod server;
mod spare;
mod stash;
mod stream;
mod table;
mod tcp;
mod timer;
mod tls;
mod upstream;

pub use access::{ACCESS_TARGET, AccessLog};
pub use cidr::{Cidr, CidrError};
pub use health::Monitor;
pub use metrics::{
    BackendSnapshot, CacheSnapshot, HistogramSnapshot, LATENCY_BUCKETS, Metrics, PoolSnapshot,
    RouteSnapshot, Snapshot,
};
pub use server::{Listeners, serve, serve_all};
use std::time::Duration;

/// Default for [`ProxyConfig::max_replay_body`]: 1 MiB.
pub const DEFAULT_MAX_REPLAY_BODY: usize = 1 << 20;
/// Default for [`ProxyConfig::max_header_bytes`]: 64 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
/// Default for [`ProxyConfig::header_read_timeout`]: 10 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`ProxyConfig::keep_alive_timeout`]: 75 s (nginx's `keepalive_timeout`).
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(75);

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
    /// Clients whose `X-Forwarded-*` and `Forwarded` headers are kept (and extended) rather
    /// than replaced; behind them the balancing client IP is the last untrusted
    /// `X-Forwarded-For` entry. Default: none.
    pub trusted_proxies: Vec<Cidr>,
    /// Largest request head (request line and headers) accepted; larger ones get 431.
    /// Default 64 KiB (at least 8 KiB is used).
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head, from its first byte, before the
    /// connection is closed; also how long a new connection may stay silent. Default 10 s.
    pub header_read_timeout: Duration,
    /// How long an HTTP/1.1 keep-alive connection may sit idle between requests before it is
    /// closed. Default 75 s.
    pub keep_alive_timeout: Duration,
    /// Where the data plane counts requests, connections and retries; the admin plane reads
    /// the same handle. Default: a fresh one.
    pub metrics: Metrics,
    /// One log line per request (target `access`), in this format; default off.
    pub access_log: Option<AccessLog>,
    /// The port that routes' `https_redirect` send clients to; `None` for 443 (no port in
    /// the `Location`). The node sets it from its `--https-addr`.
    pub https_port: Option<u16>,
    /// This node's health monitor: failures met in real traffic on pools with `eject` count
    /// as failed probes there. None: passive failures only eject locally.
    pub health: Option<std::sync::Arc<Monitor>>,
    /// The memory guard (`--memory-limit`): above its soft mark idle connections are closed
    /// and new ones answered 503, above its limit none are accepted. None: no limit.
    pub memory: Option<std::sync::Arc<memory::MemoryGuard>>,
    /// Data plane threads, each with its own single-threaded runtime serving the connections
    /// it is given; the first also accepts and gives each new connection to the worker
    /// serving the fewest (`--workers`). Default: one per core.
    pub workers: usize,
}

impl ProxyConfig {
    /// A config with the defaults for everything but the node and the key.
    pub fn new(node_id: u64, hop_key: impl Into<Vec<u8>>) -> Self {
        ProxyConfig {
            node_id,
            hop_key: hop_key.into(),
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
            trusted_proxies: Vec::new(),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            keep_alive_timeout: DEFAULT_KEEP_ALIVE_TIMEOUT,
            metrics: Metrics::new(),
            access_log: None,
            https_port: None,
            health: None,
            memory: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("node_id", &self.node_id)
            .field("hop_key", &"<redacted>")
            .field("max_replay_body", &self.max_replay_body)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("keep_alive_timeout", &self.keep_alive_timeout)
            .field("access_log", &self.access_log)
            .field("https_port", &self.https_port)
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
