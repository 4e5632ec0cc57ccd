//! Command-line interface. Every node flag also reads a `GATEWAY_*` environment variable and a
//! key of the `--config` TOML file (flag > env > file > data dir > default).

use crate::{client, config, demo, run};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    version,
    about = "A clustered reverse proxy and load balancer whose nodes form their own Raft group",
    after_help = "Examples:\n  gateway serve --id 1 --data-dir data/1 --init\n  gateway join --id 2 --data-dir data/2 --peers 127.0.0.1:7101 --cluster-addr 127.0.0.1:7102 \\\n      --admin-addr 127.0.0.1:9102 --http-addr 127.0.0.1:8102 --cluster-secret-file data/1/cluster-secret\n  gateway serve --data-dir data/2            # restart a node: identity is kept in its data dir\n  gateway node remove 3 --server 127.0.0.1:9101"
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
    /// Cluster membership operations.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Take the node at --server out of the cluster; it then shuts down.
    Leave {
        /// Admin address of the node that leaves.
        #[arg(long, env = "GATEWAY_SERVER")]
        server: String,
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

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Remove node ID from the cluster; its id is never reused.
    Remove {
        /// The node id to remove.
        id: u64,
        /// Admin addresses of any members, comma separated; tried in turn.
        #[arg(
            long,
            env = "GATEWAY_SERVER",
            value_delimiter = ',',
            default_value = "127.0.0.1:9101"
        )]
        server: Vec<String>,
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
    /// REST admin API address [default: 127.0.0.1:9101].
    #[arg(long, env = "GATEWAY_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// HTTP data plane address [default: 127.0.0.1:8101].
    #[arg(long, env = "GATEWAY_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// File holding the shared cluster secret. On --init without it, one is generated into
    /// DATA_DIR/cluster-secret.
    #[arg(long, env = "GATEWAY_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// TOML file with any of these settings (keys as the flags, with underscores).
    #[arg(long, env = "GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Raft leader heartbeat in milliseconds [default: 50].
    #[arg(long, env = "GATEWAY_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Minimum Raft election timeout in milliseconds; the maximum is twice it [default: 150].
    #[arg(long, env = "GATEWAY_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Snapshot (and purge the log) every this many entries [default: 500].
    #[arg(long, env = "GATEWAY_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Runtime worker threads [default: all cores].
    #[arg(long, env = "GATEWAY_WORKERS")]
    pub workers: Option<usize>,
    /// Admin bearer tokens, one `read TOKEN` or `write TOKEN` per line. Kept in the data dir's
    /// settings for restarts. Without it the admin API is open, which is allowed only on a
    /// loopback --admin-addr.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// What to run, with the configuration resolved.
pub enum Action {
    Node(config::NodeConfig),
    RemoveNode { servers: Vec<String>, id: u64 },
    Leave { server: String },
    DemoBackend { listen: String, name: String },
}

impl Action {
    /// Runtime worker threads wanted (None: all cores).
    pub fn workers(&self) -> Option<usize> {
        match self {
            Action::Node(cfg) => cfg.workers,
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
            Action::Node(config::resolve(node, mode, Vec::new())?)
        }
        Command::Join {
            node,
            peers,
            learner,
        } => Action::Node(config::resolve(
            node,
            config::Mode::Join { learner },
            peers,
        )?),
        Command::Node {
            command: NodeCommand::Remove { id, server },
        } => Action::RemoveNode {
            servers: server,
            id,
        },
        Command::Leave { server } => Action::Leave { server },
        Command::DemoBackend { listen, name } => Action::DemoBackend { listen, name },
    })
}

pub async fn dispatch(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Node(cfg) => run::run(cfg).await,
        Action::RemoveNode { servers, id } => client::remove_node(&servers, id).await,
        Action::Leave { server } => client::leave(&server).await,
        Action::DemoBackend { listen, name } => demo::run(&listen, &name).await,
    }
}
