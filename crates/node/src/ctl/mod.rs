//! The client commands of the `gateway` binary (`route`, `pool`, `backend`, `cluster`,
//! `node`, `config`, `watch`): they talk to the admin gRPC API on any node's cluster port.
//!
//! Every command tries the `--server` addresses in turn (skipping nodes that are down, or
//! have no leader right now) until its `--timeout`; prints a table, or JSON with
//! `--output json`; and fails with one line that says what to do.

mod cluster;
mod config;
mod conn;
mod limits;
mod objects;
mod output;
mod watch;

use clap::{Args, Subcommand, ValueEnum};
use conn::Conn;
use gateway_model::{Balance, Protocol, WritePolicy};
pub use output::{Output, emit_raw};
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach the cluster, and how to print. Given to every client command.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Cluster address (host:port) of any node, or several comma separated, tried in turn.
    #[arg(
        long,
        global = true,
        env = "GATEWAY_SERVER",
        value_delimiter = ',',
        default_value = "127.0.0.1:7101",
        value_name = "ADDR[,ADDR..]"
    )]
    pub server: Vec<String>,
    /// Admin token, when the nodes run with --admin-token-file.
    #[arg(long, global = true, env = "GATEWAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the admin token (its first line; a `write TOKEN` line works too).
    #[arg(long, global = true, env = "GATEWAY_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Output format: a table for people, JSON for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Seconds a command keeps trying (other servers, a new leader) before it gives up
    /// [default: 30, but 5 when no server can be connected to at all].
    #[arg(long, global = true, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Cluster CA (PEM), when the nodes run with cluster mutual TLS; with --tls-cert and
    /// --tls-key (a certificate of that CA, e.g. from `gateway tls-gen`).
    #[arg(long, global = true, env = "GATEWAY_TLS_CA", value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) signed by the cluster CA.
    #[arg(long, global = true, env = "GATEWAY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, global = true, env = "GATEWAY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl ClientArgs {
    fn connect(&self) -> anyhow::Result<Conn> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(conn::read_token_file(f)?),
            (None, None) => None,
        };
        let timeout = Duration::from_secs(self.timeout.unwrap_or(30).max(1));
        // Told how long to wait, a command waits that long even for servers that are down (a
        // script waiting for a cluster to come up); by default it says so after a few seconds.
        let unreachable = match self.timeout {
            Some(_) => timeout,
            None => conn::UNREACHABLE,
        };
        let tls = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => {
                let read = |p: &PathBuf, flag: &str| {
                    std::fs::read(p)
                        .map_err(|e| anyhow::anyhow!("cannot read {flag} {}: {e}", p.display()))
                };
                Some(gateway_cluster::ClusterTls {
                    ca_pem: read(ca, "--tls-ca")?,
                    cert_pem: read(cert, "--tls-cert")?,
                    key_pem: read(key, "--tls-key")?,
                })
            }
            (None, None, None) => None,
            _ => anyhow::bail!(
                "--tls-ca, --tls-cert and --tls-key go together: give all three to talk to a cluster that runs with mutual TLS"
            ),
        };
        Conn::new(&self.server, token, timeout, unreachable, tls.as_ref())
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// Sees every change acknowledged before the command started.
    #[default]
    Linearizable,
    /// The leader's commit index, without a quorum round.
    Leader,
    /// The answering node's state as it is (may lag).
    Stale,
}

impl ConsistencyArg {
    fn wire(self) -> i32 {
        use gateway_wire::admin::Consistency as C;
        (match self {
            ConsistencyArg::Linearizable => C::Linearizable,
            ConsistencyArg::Leader => C::Leader,
            ConsistencyArg::Stale => C::Stale,
        }) as i32
    }
}

/// Compare-and-set on a write.
#[derive(Args, Debug, Clone, Default)]
pub struct IfRevision {
    /// Change only if the object is still at revision REV (as `get` showed it); 0: only if it
    /// does not exist yet.
    #[arg(long, value_name = "REV")]
    pub if_revision: Option<u64>,
}

/// How `add` treats an object that exists.
#[derive(Args, Debug, Clone, Default)]
pub struct AddMode {
    /// Overwrite the object if it exists (without, `add` only creates).
    #[arg(long, conflicts_with = "if_revision")]
    pub replace: bool,
    #[command(flatten)]
    pub cond: IfRevision,
}

fn serde_value<T: DeserializeOwned>(what: &str, names: &str, s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("'{s}' is not a {what}; use one of {names}"))
}

fn parse_balance(s: &str) -> Result<Balance, String> {
    serde_value(
        "balance",
        "round_robin, weighted_round_robin, least_connections, random_two_choices, ip_hash, cookie",
        s,
    )
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    serde_value("protocol", "http1, h2c, h2", s)
}

fn parse_writes(s: &str) -> Result<WritePolicy, String> {
    serde_value("write policy", "any, leader", s)
}

#[derive(Args, Debug, Clone)]
pub struct RouteAdd {
    /// Route name (letters, digits, '.', '_', '-').
    pub name: String,
    /// The pool that serves it (must exist).
    #[arg(long)]
    pub pool: String,
    /// Host pattern (example.com or *.example.com); repeat or comma separate. None: any host.
    #[arg(long = "host", value_name = "HOST", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Path prefix; the longest matching prefix wins.
    #[arg(long = "path", default_value = "/", value_name = "PREFIX")]
    pub path: String,
    /// HTTP method; repeat or comma separate. None: any method.
    #[arg(long = "method", value_name = "METHOD", value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Who serves POST/PUT/PATCH/DELETE: any node, or the backends of the Raft leader.
    #[arg(long, default_value = "any", value_parser = parse_writes, value_name = "any|leader")]
    pub writes: WritePolicy,
    /// How long to wait for a backend's response head, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Retries on other backends when connecting fails (0 to 10).
    #[arg(long)]
    pub retries: Option<u32>,
    /// Wait before each retry, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub retry_delay_ms: Option<u64>,
    /// Remove the prefix from the path sent to the backend.
    #[arg(long)]
    pub strip_prefix: bool,
    /// Send this Host header to the backend.
    #[arg(long, value_name = "HOST")]
    pub host_rewrite: Option<String>,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub mode: AddMode,
}

/// `gateway route add` flags of the route's `cache` (any of them turns it on).
#[derive(Args, Debug, Clone, Default)]
pub struct CacheArgs {
    /// Coalesce identical concurrent GET/HEAD requests into one upstream request (per node).
    #[arg(long)]
    pub coalesce: bool,
    /// Also store cacheable responses, up to this many bytes on each node (implies --coalesce
    /// unless --no-coalesce).
    #[arg(long, value_name = "BYTES")]
    pub cache_max_bytes: Option<u64>,
    /// Largest body shared or stored [default: 1 MiB].
    #[arg(long, value_name = "BYTES")]
    pub cache_max_entry_bytes: Option<u64>,
    /// Serve a stored response this long past its freshness while one request refreshes it.
    #[arg(long, value_name = "MS")]
    pub cache_stale_ms: Option<u64>,
    /// Store responses without coalescing misses.
    #[arg(long)]
    pub no_coalesce: bool,
    /// Also share answers to requests carrying Authorization.
    #[arg(long)]
    pub cache_share_authorized: bool,
    /// Also share responses carrying Set-Cookie.
    #[arg(long)]
    pub cache_share_set_cookie: bool,
}

impl CacheArgs {
    /// The route's `cache`, if any flag asks for one.
    pub fn spec(&self) -> Option<gateway_model::RouteCache> {
        let any = self.coalesce
            || self.cache_max_bytes.is_some()
            || self.cache_max_entry_bytes.is_some()
            || self.cache_stale_ms.is_some()
            || self.no_coalesce
            || self.cache_share_authorized
            || self.cache_share_set_cookie;
        any.then(|| gateway_model::RouteCache {
            coalesce: !self.no_coalesce,
            max_bytes: self.cache_max_bytes.unwrap_or(0),
            max_entry_bytes: self.cache_max_entry_bytes,
            stale_while_revalidate_ms: self.cache_stale_ms.unwrap_or(0),
            share_authorized: self.cache_share_authorized,
            share_set_cookie: self.cache_share_set_cookie,
        })
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum RouteCmd {
    /// Create a route; with --replace or --if-revision, replace it.
    #[command(
        after_help = "Examples:\n  gateway route add app --pool web --host example.com,www.example.com\n  gateway route add api --pool api --path /api --method GET,POST --writes leader\n  gateway route add news --pool web --path /news --coalesce --cache-max-bytes 67108864\n  gateway route add app --pool web2 --if-revision 12     # only if nobody changed it since"
    )]
    Add(Box<RouteAdd>),
    /// Show one route.
    #[command(after_help = "Example:\n  gateway route get app --output json")]
    Get {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        consistency: ConsistencyArg,
    },
    /// List the routes.
    #[command(
        visible_alias = "ls",
        after_help = "Example:\n  gateway route list --server 127.0.0.1:7102"
    )]
    List {
        #[arg(long, value_enum, default_value_t)]
        consistency: ConsistencyArg,
    },
    /// Delete a route.
    #[command(
        visible_alias = "remove",
        after_help = "Example:\n  gateway route rm app"
    )]
    Rm {
        name: String,
        #[command(flatten)]
        cond: IfRevision,
    },
}

#[derive(Args, Debug, Clone)]
pub struct PoolAdd {
    /// Pool name (letters, digits, '.', '_', '-').
    pub name: String,
    /// Balancing: round_robin, weighted_round_robin, least_connections, random_two_choices,
    /// ip_hash or cookie.
    #[arg(long, default_value = "round_robin", value_parser = parse_balance)]
    pub balance: Balance,
    /// A backend: ID=ADDRESS[,weight=N][,node=N][,max_connections=N]; repeat for more.
    #[arg(long = "backend", value_name = "ID=ADDRESS[,weight=N][,node=N]")]
    pub backends: Vec<String>,
    /// Prefer the backends owned by the receiving node.
    #[arg(long)]
    pub prefer_local: bool,
    /// http1, h2c (HTTP/2 without TLS, for gRPC backends) or h2 (HTTP/2 over TLS; needs
    /// --backend-tls or one of the --backend-* TLS options).
    #[arg(long, default_value = "http1", value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// How long a request may wait for a backend below its max_connections, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub queue_timeout_ms: Option<u64>,
    /// How long an idle connection to a backend is kept for reuse, in milliseconds (0: a new
    /// connection per request; default 60000). Keep it below the backends' own idle timeout.
    #[arg(long, value_name = "MS")]
    pub keep_alive_timeout_ms: Option<u64>,
    // ---- TLS to backends (issue 7) ----
    // Named --backend-* because --tls-ca/--tls-cert/--tls-key are the client's own cluster
    // mTLS options.
    /// Speak TLS to the backends, trusting the bundled public CAs (implied by the other
    /// --backend-* TLS options).
    #[arg(long)]
    pub backend_tls: bool,
    /// Speak TLS to the backends, trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    pub backend_ca: Option<std::path::PathBuf>,
    /// The server name sent (SNI) and verified, instead of the backend's host.
    #[arg(long, value_name = "NAME")]
    pub backend_sni: Option<String>,
    /// Present this uploaded certificate (`gateway cert add NAME ...`) to backends that ask
    /// for a client certificate.
    #[arg(long, value_name = "CERT")]
    pub backend_client_cert: Option<String>,
    // ---- end TLS to backends ----
    #[command(flatten)]
    pub mode: AddMode,
}

#[derive(Subcommand, Debug, Clone)]
pub enum PoolCmd {
    /// Create a pool; with --replace or --if-revision, replace it.
    #[command(
        after_help = "Examples:\n  gateway pool add web --backend a=127.0.0.1:8201 --backend b=127.0.0.1:8202\n  gateway pool add api --balance least_connections --backend a=10.0.0.5:80,weight=3,node=1\n  gateway pool add secure --backend a=10.0.0.7:443 --backend-ca ca.pem --backend-sni api.internal --backend-client-cert gw-client"
    )]
    Add(PoolAdd),
    /// Show one pool and its backends.
    #[command(after_help = "Example:\n  gateway pool get web")]
    Get {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        consistency: ConsistencyArg,
    },
    /// List the pools.
    #[command(
        visible_alias = "ls",
        after_help = "Example:\n  gateway pool list --output json"
    )]
    List {
        #[arg(long, value_enum, default_value_t)]
        consistency: ConsistencyArg,
    },
    /// Delete a pool that no route uses.
    #[command(
        visible_alias = "remove",
        after_help = "Example:\n  gateway pool rm web"
    )]
    Rm {
        name: String,
        #[command(flatten)]
        cond: IfRevision,
    },
    /// Rolling restart of a pool's managed backends, across the cluster: one instance at a
    /// time, each replaced by a new process that must pass the pool's health checks before
    /// traffic moves to it, so requests keep being served throughout.
    #[command(
        after_help = "Examples:\n  gateway pool restart app\n  gateway pool restart app --wait --wait-secs 600"
    )]
    Restart {
        name: String,
        /// Wait until every instance was replaced, printing each as it is.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this many seconds (the restart goes on).
        #[arg(long, default_value_t = 300)]
        wait_secs: u64,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum CertCmd {
    /// Upload a TLS certificate (chain and key, PEM) that every node's HTTPS listener serves
    /// for the names in it; with --replace or --if-revision, replace it (open connections keep
    /// the old one, new handshakes get the new one).
    #[command(
        after_help = "Examples:\n  gateway cert add example --cert fullchain.pem --key key.pem\n  gateway cert add example --cert new-fullchain.pem --key new-key.pem --replace\n  gateway cert add fallback --cert fallback.pem --key fallback-key.pem --default\n\nRefused when the files are not PEM, the key does not belong to the first certificate,\nor the certificate has expired or is not valid yet."
    )]
    Add {
        name: String,
        /// PEM file with the certificate first, then its intermediates (fullchain.pem).
        #[arg(long = "cert", value_name = "FILE")]
        cert: std::path::PathBuf,
        /// PEM file with the certificate's private key.
        #[arg(long = "key", value_name = "FILE")]
        key: std::path::PathBuf,
        /// Serve it to clients whose SNI names no certificate (or who send none).
        #[arg(long)]
        default: bool,
        #[command(flatten)]
        mode: AddMode,
    },
    /// Show one certificate: names, validity, chain (never the key).
    #[command(after_help = "Example:\n  gateway cert get example --output json")]
    Get {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        consistency: ConsistencyArg,
    },
    /// List the certificates with their names and expiry.
    #[command(visible_alias = "ls", after_help = "Example:\n  gateway cert list")]
    List {
        #[arg(long, value_enum, default_value_t)]
        consistency: ConsistencyArg,
    },
    /// Delete a certificate; new handshakes for its names no longer get it.
    #[command(
        visible_alias = "remove",
        after_help = "Example:\n  gateway cert rm example"
    )]
    Rm {
        name: String,
        #[command(flatten)]
        cond: IfRevision,
    },
}

// ---- TCP routes (issue 7) ----
fn parse_proxy_protocol(s: &str) -> Result<gateway_model::ProxyProtocol, String> {
    serde_value("PROXY protocol version", "v1, v2", s)
}

#[derive(Subcommand, Debug, Clone)]
pub enum TcpRouteCmd {
    /// Create a TCP route; with --replace or --if-revision, replace it. Every node (or those
    /// of --nodes) listens on --listen and proxies each connection to a backend of --pool.
    #[command(
        after_help = "Examples:\n  gateway tcp-route add redis --listen 127.0.0.1:6380 --pool redis\n  gateway tcp-route add pg --listen 0.0.0.0:5433 --pool pg --nodes 1,2 --proxy-protocol v2 --max-connections 500"
    )]
    Add {
        /// Route name (letters, digits, '.', '_', '-').
        name: String,
        /// ip:port every node (or every node of --nodes) listens on.
        #[arg(long)]
        listen: String,
        /// The pool whose backends take the connections; must exist.
        #[arg(long)]
        pool: String,
        /// Only these nodes listen (comma-separated ids); every node when omitted.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<u64>,
        /// Close a connection idle this long, in milliseconds [default: 600000].
        #[arg(long, value_name = "MS")]
        idle_timeout_ms: Option<u64>,
        /// Give up connecting to one backend after this long, in milliseconds [default: 5000].
        #[arg(long, value_name = "MS")]
        connect_timeout_ms: Option<u64>,
        /// Most client connections open at once on each node; unlimited when omitted.
        #[arg(long)]
        max_connections: Option<u32>,
        /// Send a PROXY protocol header (v1 or v2) to the backend.
        #[arg(long, value_parser = parse_proxy_protocol)]
        proxy_protocol: Option<gateway_model::ProxyProtocol>,
        #[command(flatten)]
        mode: AddMode,
    },
    /// Show one TCP route.
    #[command(after_help = "Example:\n  gateway tcp-route get redis --output json")]
    Get {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        consistency: ConsistencyArg,
    },
    /// List the TCP routes.
    #[command(
        visible_alias = "ls",
        after_help = "Example:\n  gateway tcp-route list"
    )]
    List {
        #[arg(long, value_enum, default_value_t)]
        consistency: ConsistencyArg,
    },
    /// Delete a TCP route; every node stops listening on its address (open connections
    /// finish).
    #[command(
        visible_alias = "remove",
        after_help = "Example:\n  gateway tcp-route rm redis"
    )]
    Rm {
        name: String,
        #[command(flatten)]
        cond: IfRevision,
    },
}
// ---- end TCP routes ----

#[derive(Subcommand, Debug, Clone)]
pub enum BackendCmd {
    /// Add a backend to a pool (read, change, write back with compare-and-set; retried when
    /// someone else changed the pool meanwhile).
    #[command(
        after_help = "Examples:\n  gateway backend add web c 127.0.0.1:8203\n  gateway backend add web c 127.0.0.1:8213 --weight 5 --replace"
    )]
    Add {
        /// The pool.
        pool: String,
        /// Backend id, unique within the pool.
        id: String,
        /// host:port or unix:/absolute/path.
        address: String,
        /// Relative share for weighted balancing (1 to 1000).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// The node that owns (runs) this backend.
        #[arg(long)]
        node: Option<u64>,
        /// Most requests at once to this backend.
        #[arg(long)]
        max_connections: Option<u32>,
        #[command(flatten)]
        mode: AddMode,
    },
    /// Drain a backend: it takes no new requests, those under way finish (--undo takes it back).
    #[command(
        after_help = "Examples:\n  gateway backend drain web a\n  gateway backend drain web a --undo"
    )]
    Drain {
        pool: String,
        id: String,
        /// Put the backend back into service.
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        cond: IfRevision,
    },
    /// Every backend with the health the cluster agreed on: up, down (and the nodes that saw
    /// it down), or unknown when its pool has no health check; draining; the last transition.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  gateway backend list\n  gateway backend list web --output json"
    )]
    List {
        /// Only this pool's backends.
        pool: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        consistency: ConsistencyArg,
    },
    /// Remove a backend from a pool.
    #[command(
        visible_alias = "remove",
        after_help = "Example:\n  gateway backend rm web c"
    )]
    Rm {
        pool: String,
        id: String,
        #[command(flatten)]
        cond: IfRevision,
    },
}

#[derive(Args, Debug, Clone)]
pub struct AlertAdd {
    pub name: String,
    /// http://host:port/path that gets one JSON POST per event.
    #[arg(long)]
    pub webhook: Option<String>,
    /// A header sent with each webhook POST, NAME=VALUE (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// SMTP server host:port.
    #[arg(long)]
    pub smtp_server: Option<String>,
    #[arg(long)]
    pub smtp_from: Option<String>,
    /// A recipient (repeatable).
    #[arg(long)]
    pub smtp_to: Vec<String>,
    /// none, starttls or tls.
    #[arg(long)]
    pub smtp_security: Option<String>,
    #[arg(long)]
    pub smtp_user: Option<String>,
    /// A file holding the SMTP password (never given on the command line).
    #[arg(long)]
    pub smtp_password_file: Option<PathBuf>,
    /// Only these event types (repeatable): backend_down, backend_up, node_lost, node_back,
    /// leader_change, backend_failed.
    #[arg(long = "event")]
    pub events: Vec<String>,
    #[command(flatten)]
    pub mode: AddMode,
}

#[derive(Subcommand, Debug, Clone)]
pub enum AlertCmd {
    /// Create an alert sink (a webhook, e-mail over SMTP, or both); with --replace or
    /// --if-revision, replace it.
    #[command(
        after_help = "Examples:\n  gateway alert add ops --webhook http://127.0.0.1:9000/hook\n  gateway alert add mail --smtp-server mail.example.com:587 --smtp-security starttls \\\n      --smtp-from gw@example.com --smtp-to ops@example.com --smtp-user gw --smtp-password-file pw.txt \\\n      --event backend_down --event node_lost"
    )]
    Add(Box<AlertAdd>),
    /// List the alert sinks and how far each has been sent the events.
    #[command(visible_alias = "ls", after_help = "Example:\n  gateway alert list")]
    List {
        #[arg(long, value_enum, default_value_t)]
        consistency: ConsistencyArg,
    },
    /// Delete an alert sink.
    #[command(
        visible_alias = "remove",
        after_help = "Example:\n  gateway alert rm ops"
    )]
    Rm {
        name: String,
        #[command(flatten)]
        cond: IfRevision,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum ClusterCmd {
    /// The answering node's view: role, term, log indexes, members.
    #[command(after_help = "Example:\n  gateway cluster status --server 127.0.0.1:7102")]
    Status,
    /// Voters and learners.
    #[command(after_help = "Example:\n  gateway cluster members")]
    Members,
    /// The current leader.
    #[command(after_help = "Example:\n  gateway cluster leader --output json")]
    Leader,
    /// Hand leadership to another voter (the most up-to-date one unless --to says which).
    #[command(
        after_help = "Examples:\n  gateway cluster transfer-leader\n  gateway cluster transfer-leader --to 3"
    )]
    TransferLeader {
        /// The voter to lead next.
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum NodeCmd {
    /// Remove node ID (voter or learner) from the cluster; its id is never accepted again.
    #[command(
        after_help = "Example:\n  gateway node remove 3 --server 127.0.0.1:7101,127.0.0.1:7102"
    )]
    Remove {
        /// The node id to remove.
        id: u64,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum ConfigCmd {
    /// Print every pool, route and TCP route, and the names of the certificates, as a TOML
    /// file (JSON with --output json); certificates themselves are not exported.
    #[command(after_help = "Example:\n  gateway config export > cluster.toml")]
    Export {
        #[arg(long, value_enum, default_value_t)]
        consistency: ConsistencyArg,
    },
    /// Make the cluster's configuration the file's: show the difference, then apply it as one
    /// transaction that fails whole if anything changed since it was read.
    #[command(
        after_help = "Examples:\n  gateway config apply -f cluster.toml\n  gateway config apply -f cluster.toml --dry-run     # only show the difference"
    )]
    Apply {
        /// The file (TOML, or JSON when named *.json), as `config export` writes it.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
        /// Show the difference without applying it.
        #[arg(long)]
        dry_run: bool,
        /// Keep pools, routes and TCP routes the file does not list (without it they are
        /// deleted). Certificates are never changed by apply.
        #[arg(long)]
        keep_others: bool,
    },
}

/// A client command.
#[derive(Debug, Clone)]
pub enum Ctl {
    Route(RouteCmd),
    Pool(PoolCmd),
    Cert(CertCmd),
    TcpRoute(TcpRouteCmd),
    Backend(BackendCmd),
    Alert(AlertCmd),
    Cluster(ClusterCmd),
    Node(NodeCmd),
    Config(ConfigCmd),
    Watch { from: Option<u64> },
    Limits(LimitsCmd),
}

/// `gateway limits`.
#[derive(Subcommand, Debug, Clone)]
pub enum LimitsCmd {
    /// Show the node-wide limits.
    #[command(after_help = "Example:\n  gateway limits show --output json")]
    Show {
        #[arg(long, value_enum, default_value_t)]
        consistency: ConsistencyArg,
    },
    /// Replace the node-wide limits (a limit left out is removed).
    #[command(
        after_help = "Examples:\n  gateway limits set --max-requests 10000 --max-connections 20000\n  gateway limits set                      # no limits"
    )]
    Set {
        /// Most requests each node serves at once; beyond it 503 with Retry-After.
        #[arg(long, value_name = "N")]
        max_requests: Option<u32>,
        /// Most client connections each node holds open; beyond it new ones wait in the
        /// kernel's backlog.
        #[arg(long, value_name = "N")]
        max_connections: Option<u32>,
        #[command(flatten)]
        cond: IfRevision,
    },
}

/// Runs a client command.
pub async fn run(args: ClientArgs, cmd: Ctl) -> anyhow::Result<()> {
    let mut conn = args.connect()?;
    let out = args.output;
    match cmd {
        Ctl::Route(c) => objects::route(&mut conn, out, c).await,
        Ctl::Pool(c) => objects::pool(&mut conn, out, c).await,
        Ctl::Cert(c) => objects::cert(&mut conn, out, c).await,
        Ctl::TcpRoute(c) => objects::tcp_route(&mut conn, out, c).await,
        Ctl::Backend(c) => objects::backend(&mut conn, out, c).await,
        Ctl::Alert(c) => objects::alert(&mut conn, out, c).await,
        Ctl::Cluster(c) => cluster::cluster(&mut conn, out, c).await,
        Ctl::Node(NodeCmd::Remove { id }) => cluster::remove_node(&mut conn, out, id).await,
        Ctl::Config(ConfigCmd::Export { consistency }) => {
            config::export(&mut conn, out, consistency).await
        }
        Ctl::Config(ConfigCmd::Apply {
            file,
            dry_run,
            keep_others,
        }) => config::apply(&mut conn, out, &file, dry_run, !keep_others).await,
        Ctl::Watch { from } => watch::watch(&mut conn, out, from).await,
        Ctl::Limits(c) => limits::limits(&mut conn, out, c).await,
    }
}
