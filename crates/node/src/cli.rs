//! Command-line interface. Every node flag also reads a `GATEWAY_*` environment variable and a
//! key of the `--config` TOML file (flag > env > file > data dir > default).

use crate::ctl::{
    AlertCmd, BackendCmd, CertCmd, ClientArgs, ClusterCmd, ConfigCmd, Ctl, LimitsCmd, NodeCmd,
    PoolCmd, RouteCmd, TcpRouteCmd,
};
use crate::{client, config, ctl, demo, run, top};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    version,
    about = "A clustered reverse proxy and load balancer whose nodes form their own Raft group",
    after_help = "Examples:\n  gateway serve --id 1 --data-dir data/1 --init\n  gateway join --id 2 --data-dir data/2 --peers 127.0.0.1:7101 --cluster-addr 127.0.0.1:7102 \\\n      --admin-addr 127.0.0.1:9102 --http-addr 127.0.0.1:8102 --cluster-secret-file data/1/cluster-secret\n  gateway serve --data-dir data/2            # restart a node: identity is kept in its data dir\n  gateway pool add web --backend a=127.0.0.1:8201 --backend b=127.0.0.1:8202\n  gateway route add app --pool web --host example.com\n  gateway route list --server 127.0.0.1:7102 --output json\n  gateway config export > cluster.toml && gateway config apply -f cluster.toml\n  gateway watch --from 1\n  gateway node remove 3 --server 127.0.0.1:7101,127.0.0.1:7102\n\nClient commands (route, pool, backend, cluster, node, config, watch) talk to the admin gRPC API\non any node's cluster port (--server, default 127.0.0.1:7101; env GATEWAY_SERVER), with\n--token / --token-file (env GATEWAY_TOKEN) when the nodes run with --admin-token-file."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node: create a cluster (--init) or come back with the state in --data-dir.
    Serve {
        #[command(flatten)]
        node: NodeArgs,
        /// Create a new one-node cluster if the data dir holds none.
        #[arg(long, env = "GATEWAY_INIT")]
        init: bool,
    },
    /// Run a new node and add it to a cluster through any reachable member.
    Join {
        #[command(flatten)]
        node: NodeArgs,
        /// Cluster addresses of members to join through, comma separated.
        #[arg(long, env = "GATEWAY_PEERS", value_delimiter = ',')]
        peers: Vec<String>,
        /// Join as a non-voting member (follows the config, proxies, answers /leader).
        #[arg(long, env = "GATEWAY_LEARNER")]
        learner: bool,
    },
    /// Routes: match requests by host, path and method, and send them to a pool.
    Route {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: RouteCmd,
    },
    /// Node-wide limits (requests and client connections per node), replicated to every node.
    Limits {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: LimitsCmd,
    },
    /// Pools: named sets of backends and how to balance over them.
    Pool {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: PoolCmd,
    },
    /// TLS certificates served by every node's HTTPS listener, chosen by SNI.
    Cert {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: CertCmd,
    },
    // ---- TCP routes (issue 7) ----
    /// TCP routes: a listen address on every node (or those listed) proxying raw TCP to a
    /// pool.
    #[command(name = "tcp-route")]
    TcpRoute {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TcpRouteCmd,
    },
    // ---- end TCP routes ----
    /// Add, remove, drain one backend of a pool; list backends' health.
    Backend {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: BackendCmd,
    },
    /// Alert sinks: where the leader sends backend, node and leader events (webhook, e-mail).
    Alert {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: AlertCmd,
    },
    /// The cluster: status, members, leader.
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Cluster membership operations.
    Node {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: NodeCmd,
    },
    /// The whole configuration as a file: export it, apply it.
    Config {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Print every configuration change as it is committed, in order (until interrupted).
    #[command(
        after_help = "Examples:\n  gateway watch                       # changes from now on\n  gateway watch --from 1 --output json  # every change the history keeps (the last 1000 revisions), one JSON line each\n\nIf the node it watches goes away, it resumes on the next --server after the last revision it printed."
    )]
    Watch {
        #[command(flatten)]
        client: ClientArgs,
        /// First revision to print (default: changes from now on).
        #[arg(long, value_name = "REV")]
        from: Option<u64>,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  gateway completions bash > /etc/bash_completion.d/gateway\n  gateway completions zsh > ~/.zfunc/_gateway\n  gateway completions fish > ~/.config/fish/completions/gateway.fish"
    )]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Take the node at --server out of the cluster; it then shuts down.
    Leave {
        /// Admin address (REST, e.g. 127.0.0.1:9102) of the node that leaves. Not read from
        /// GATEWAY_SERVER, which names cluster addresses for the client commands.
        #[arg(long)]
        server: String,
        /// Admin bearer token (a write token) when the node runs with --admin-token-file.
        #[arg(long, env = "GATEWAY_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// File holding the token (its first line, or the token of a `write TOKEN` line).
        #[arg(long, env = "GATEWAY_TOKEN_FILE")]
        token_file: Option<std::path::PathBuf>,
        /// Speak HTTPS to an admin port served with --admin-tls-cert, trusting the CA
        /// certificates (PEM) in this file; the certificate must name the --server host.
        #[arg(long, env = "GATEWAY_ADMIN_CA", value_name = "FILE")]
        admin_ca: Option<std::path::PathBuf>,
    },
    /// A live terminal view of a node: cluster, routes, pools, backend health, requests/s.
    #[command(
        after_help = "Examples:\n  gateway top                                  # the node at 127.0.0.1:9101\n  gateway top --admin 127.0.0.1:9102 --token-file tokens\n  gateway top --once                           # one frame (rates over one interval), then exit"
    )]
    Top {
        /// Admin address (REST) of the node to watch.
        #[arg(long, env = "GATEWAY_ADMIN", default_value = "127.0.0.1:9101")]
        admin: String,
        /// Admin bearer token (a read token is enough) when the node runs with --admin-token-file.
        #[arg(long, env = "GATEWAY_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// File holding the token (its first line, or the token of a `write TOKEN` line).
        #[arg(long, env = "GATEWAY_TOKEN_FILE")]
        token_file: Option<std::path::PathBuf>,
        /// Time between readings, in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
        interval_ms: u64,
        /// Print one frame and exit (for scripts; no terminal control codes).
        #[arg(long)]
        once: bool,
        /// Speak HTTPS to an admin port served with --admin-tls-cert, trusting the CA
        /// certificates (PEM) in this file; the certificate must name the --admin host.
        #[arg(long, env = "GATEWAY_ADMIN_CA", value_name = "FILE")]
        admin_ca: Option<std::path::PathBuf>,
    },
    /// Make a throwaway cluster CA and certificates for cluster mutual TLS (--tls-ca,
    /// --tls-cert, --tls-key): ca.pem, node-N.pem, client.pem and their keys.
    #[command(
        after_help = "Example:\n  gateway tls-gen --dir tls --nodes 3\n  gateway serve --id 1 --data-dir data/1 --init --tls-ca tls/ca.pem --tls-cert tls/node-1.pem --tls-key tls/node-1-key.pem\n  gateway cluster status --tls-ca tls/ca.pem --tls-cert tls/client.pem --tls-key tls/client-key.pem"
    )]
    TlsGen {
        /// Folder to write into (created if missing; an existing ca.pem is never overwritten).
        #[arg(long)]
        dir: PathBuf,
        /// How many node certificates.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
    },
    /// A small HTTP backend for demos and tests: answers "<method> from NAME".
    DemoBackend {
        /// Address to listen on (host:port).
        #[arg(long)]
        listen: String,
        /// Name put in every answer.
        #[arg(long)]
        name: String,
    },
}

/// Flags of a running node. All optional here: defaults are applied after merging the sources.
#[derive(Args, Debug, Default, Clone)]
pub struct NodeArgs {
    /// This node's id (1 or more; never reuse a removed one). Kept in the data dir.
    #[arg(long, env = "GATEWAY_ID")]
    pub id: Option<u64>,
    /// Where the node keeps its log, vote, state and identity.
    #[arg(long, env = "GATEWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Raft and cluster gRPC address [default: 127.0.0.1:7101].
    #[arg(long, env = "GATEWAY_CLUSTER_ADDR")]
    pub cluster_addr: Option<String>,
    /// On SIGTERM, how long in-flight requests may take to finish, in milliseconds [default: 10000].
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// How long an idle HTTP/1.1 keep-alive client connection is kept open, in milliseconds
    /// [default: 75000].
    #[arg(long, env = "GATEWAY_KEEP_ALIVE_TIMEOUT_MS")]
    pub keep_alive_timeout_ms: Option<u64>,
    /// Resident memory the node may use, in bytes, with a unit (512MiB, 2GiB) or as a share
    /// of the machine's memory (50%). Above 80% of it the data plane closes idle connections
    /// and answers new ones 503; at it, it accepts none. Raft and the admin API are never shed
    /// [default: no limit].
    #[arg(long, env = "GATEWAY_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
    /// Testing the memory guard only: `POST /debug/ballast {"mb": N}` on the admin port holds N
    /// MiB of memory (0 frees it).
    #[arg(long, hide = true, env = "GATEWAY_DEBUG_BALLAST")]
    pub debug_ballast: bool,
    /// Testing the fault checkers only: serve linearizable reads from local state (unsafe).
    #[arg(long, hide = true, env = "GATEWAY_DEBUG_STALE_READS")]
    pub debug_stale_reads: bool,
    /// Address peers dial to reach this node's cluster port, when it differs from
    /// --cluster-addr (NAT, containers, a relay) [default: --cluster-addr].
    #[arg(long, env = "GATEWAY_CLUSTER_ADVERTISE_ADDR")]
    pub cluster_advertise_addr: Option<String>,
    /// REST admin API address [default: 127.0.0.1:9101].
    #[arg(long, env = "GATEWAY_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// HTTP data plane address [default: 127.0.0.1:8101].
    #[arg(long, env = "GATEWAY_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// HTTPS data plane address (TLS with the certificates of `gateway cert add` / PUT
    /// /v1/certs, chosen by SNI) [default: none, no HTTPS]. Remembered in the data dir.
    #[arg(long, env = "GATEWAY_HTTPS_ADDR")]
    pub https_addr: Option<String>,
    /// Cluster CA certificate (PEM): with --tls-cert and --tls-key, Raft and admin gRPC on
    /// the cluster port use mutual TLS, and only certificates of this CA are accepted.
    /// Remembered in the data dir.
    #[arg(long, env = "GATEWAY_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM, signed by --tls-ca, with DNS name gateway.cluster).
    #[arg(long, env = "GATEWAY_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "GATEWAY_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    // ---- admin HTTPS (issue 7) ----
    /// Serve the admin REST API (and the dashboard) over HTTPS with this certificate chain
    /// (PEM, leaf first); with --admin-tls-key. Plain HTTP when omitted. Remembered in the
    /// data dir.
    #[arg(long, env = "GATEWAY_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --admin-tls-cert.
    #[arg(long, env = "GATEWAY_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
    // ---- end admin HTTPS ----
    /// File holding the shared cluster secret. On --init without it, one is generated into
    /// DATA_DIR/cluster-secret.
    #[arg(long, env = "GATEWAY_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// TOML file with any of these settings (keys as the flags, with underscores).
    #[arg(long, env = "GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Raft leader heartbeat in milliseconds, also openraft's timeout for one AppendEntries
    /// [default: 25].
    #[arg(long, env = "GATEWAY_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Raft election timing unit T in milliseconds: a leader lease of 2T, and the first
    /// surviving voter campaigns after 2.5T of silence [default: 100].
    #[arg(long, env = "GATEWAY_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Snapshot (and purge the log) every this many entries [default: 100000].
    #[arg(long, env = "GATEWAY_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Data plane threads: HTTP workers, each with its own event loop, and as many threads
    /// for TCP routes [default: all cores].
    #[arg(long, env = "GATEWAY_WORKERS")]
    pub workers: Option<usize>,
    /// Threads of the control plane's runtime: Raft, cluster RPC, admin API, health checks
    /// [default: 1].
    #[arg(long, env = "GATEWAY_CONTROL_THREADS")]
    pub control_threads: Option<usize>,
    /// Admin bearer tokens, one `read TOKEN` or `write TOKEN` per line. Kept in the data dir's
    /// settings for restarts. Without it the admin API is open, which is allowed only on a
    /// loopback --admin-addr.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Networks (CIDR, comma separated) of proxies in front of the data plane whose
    /// X-Forwarded-* and Forwarded headers are kept; from anyone else they are replaced
    /// [default: none].
    #[arg(long, env = "GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// One line per proxied request on stdout: `json` or `common` (the common log format
    /// with route, backend, duration and forwarded fields) [default: off].
    #[arg(long, env = "GATEWAY_ACCESS_LOG", value_parser = ["json", "common", "off"])]
    pub access_log: Option<String>,
    /// Format of the node's own log lines on stderr: `text` or `json` [default: text].
    /// Filter them with RUST_LOG (e.g. RUST_LOG=info,gateway_proxy=debug).
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

/// What to run, with the configuration resolved.
pub enum Action {
    Node(Box<config::NodeConfig>),
    /// A client command (boxed: the flags of a client command are large beside the others).
    Ctl(Box<(ClientArgs, Ctl)>),
    Completions(clap_complete::Shell),
    Leave {
        server: client::AdminAddr,
        token: Option<String>,
    },
    DemoBackend {
        listen: String,
        name: String,
    },
    Top {
        admin: client::AdminAddr,
        token: Option<String>,
        interval: std::time::Duration,
        once: bool,
    },
    TlsGen {
        dir: PathBuf,
        nodes: u64,
    },
}

impl Action {
    /// Threads of the process's main runtime (None: all cores). A node's data plane has
    /// threads of its own (`--workers`); this runtime is its control plane's.
    pub fn runtime_threads(&self) -> Option<usize> {
        match self {
            Action::Node(cfg) => Some(cfg.control_threads),
            // A client command makes a few calls: one worker is plenty.
            Action::Ctl(_)
            | Action::Completions(_)
            | Action::Top { .. }
            | Action::TlsGen { .. } => Some(1),
            _ => None,
        }
    }
}

/// Resolves the command line (and the config file it names) into an [`Action`].
pub fn prepare(cli: Cli) -> anyhow::Result<Action> {
    Ok(match cli.command {
        Command::Serve { node, init } => {
            let mode = if init {
                config::Mode::Init
            } else {
                config::Mode::Resume
            };
            Action::Node(Box::new(config::resolve(node, mode, Vec::new())?))
        }
        Command::Join {
            node,
            peers,
            learner,
        } => Action::Node(Box::new(config::resolve(
            node,
            config::Mode::Join { learner },
            peers,
        )?)),
        Command::Route { client, command } => Action::Ctl(Box::new((client, Ctl::Route(command)))),
        Command::Pool { client, command } => Action::Ctl(Box::new((client, Ctl::Pool(command)))),
        Command::Limits { client, command } => {
            Action::Ctl(Box::new((client, Ctl::Limits(command))))
        }
        Command::Cert { client, command } => Action::Ctl(Box::new((client, Ctl::Cert(command)))),
        Command::TcpRoute { client, command } => {
            Action::Ctl(Box::new((client, Ctl::TcpRoute(command))))
        }
        Command::Alert { client, command } => Action::Ctl(Box::new((client, Ctl::Alert(command)))),
        Command::Backend { client, command } => {
            Action::Ctl(Box::new((client, Ctl::Backend(command))))
        }
        Command::Cluster { client, command } => {
            Action::Ctl(Box::new((client, Ctl::Cluster(command))))
        }
        Command::Node { client, command } => Action::Ctl(Box::new((client, Ctl::Node(command)))),
        Command::Config { client, command } => {
            Action::Ctl(Box::new((client, Ctl::Config(command))))
        }
        Command::Watch { client, from } => Action::Ctl(Box::new((client, Ctl::Watch { from }))),
        Command::Completions { shell } => Action::Completions(shell),
        Command::Leave {
            server,
            token,
            token_file,
            admin_ca,
        } => Action::Leave {
            server: client::AdminAddr::new(server, admin_ca.as_deref())?,
            token: client::token(token, token_file.as_deref())?,
        },
        Command::DemoBackend { listen, name } => Action::DemoBackend { listen, name },
        Command::Top {
            admin,
            token,
            token_file,
            interval_ms,
            once,
            admin_ca,
        } => Action::Top {
            admin: client::AdminAddr::new(admin, admin_ca.as_deref())?,
            token: client::token(token, token_file.as_deref())?,
            interval: std::time::Duration::from_millis(interval_ms),
            once,
        },
        Command::TlsGen { dir, nodes } => Action::TlsGen { dir, nodes },
    })
}

pub async fn dispatch(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Node(cfg) => run::run(*cfg).await,
        Action::Ctl(c) => {
            let (client, command) = *c;
            ctl::run(client, command).await
        }
        Action::Completions(shell) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "gateway", &mut script);
            ctl::emit_raw(&String::from_utf8_lossy(&script));
            Ok(())
        }
        Action::Leave { server, token } => client::leave(&server, token.as_deref()).await,
        Action::DemoBackend { listen, name } => demo::run(&listen, &name).await,
        Action::Top {
            admin,
            token,
            interval,
            once,
        } => top::run(&admin, token.as_deref(), interval, once).await,
        Action::TlsGen { dir, nodes } => crate::tlsgen::generate(&dir, nodes),
    }
}
