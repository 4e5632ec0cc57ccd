//! Node configuration: plain data with documented defaults. Flags and `GATEWAY_*` variables
//! (handled by clap) and the TOML file map onto the same fields; identity and addresses a node
//! was started with are kept in its data dir, so a restart needs only `--data-dir`.

use crate::cli::NodeArgs;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_CLUSTER_ADDR: &str = "127.0.0.1:7101";
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9101";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8101";
/// Log entries between two snapshots. A snapshot writes the whole state, so it is taken rarely:
/// etcd takes one every 100,000 entries, and so do we. With one every 500, a cluster holding
/// thousands of pools spent a twentieth of its CPU under write load serialising them. With one
/// every 10,000, 45 s write runs through a follower had a p99 of 78-122 ms against 14-30 ms
/// at 100,000 (bench/README.md, session 10). Every node snapshots at the same index, and the
/// leader's appends timed out just after (session 9's logs). Entries carry up to 256 writes.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 100_000;
/// Threads of the control plane's runtime (Raft, cluster RPC, the admin API, health checks).
/// The data plane has its own threads (`--workers`), so this work is light and mostly
/// waiting: one thread does it without handing tasks between threads. With one per core, a
/// write woke threads on both cores at each step (the flush thread's callback, the Raft core,
/// the gRPC and REST tasks); on 2 cores holding a 3-node cluster, one thread was ahead in
/// each of four alternated pairs of runs, by 1.2x to 1.9x the committed writes/s
/// (bench/README.md, session 12).
pub const DEFAULT_CONTROL_THREADS: usize = 1;

/// How the node enters the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Init,
    Resume,
    Join { learner: bool },
}

/// The `--config` TOML file: every key optional, named as the flags with underscores.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    cluster_addr: Option<String>,
    cluster_advertise_addr: Option<String>,
    admin_addr: Option<String>,
    http_addr: Option<String>,
    https_addr: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    admin_tls_cert: Option<PathBuf>,
    admin_tls_key: Option<PathBuf>,
    cluster_secret_file: Option<PathBuf>,
    peers: Option<Vec<String>>,
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
    snapshot_every: Option<u64>,
    workers: Option<usize>,
    control_threads: Option<usize>,
    admin_token_file: Option<PathBuf>,
    trusted_proxies: Option<Vec<String>>,
    shutdown_grace_ms: Option<u64>,
    keep_alive_timeout_ms: Option<u64>,
    memory_limit: Option<String>,
    access_log: Option<String>,
    log_format: Option<String>,
}

/// A node's settings after merging flags, environment and file. Identity fields stay optional
/// here: the data dir may supply them.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub mode: Mode,
    pub id: Option<u64>,
    pub data_dir: PathBuf,
    pub cluster_addr: Option<String>,
    pub cluster_advertise_addr: Option<String>,
    pub debug_stale_reads: bool,
    pub admin_addr: Option<String>,
    pub http_addr: Option<String>,
    /// HTTPS data plane address, if any.
    pub https_addr: Option<String>,
    /// Cluster mutual TLS files: CA, certificate, key (all three or none).
    pub tls: Option<[PathBuf; 3]>,
    /// Admin REST over HTTPS: certificate chain and key files (both or none).
    pub admin_tls: Option<[PathBuf; 2]>,
    pub secret_file: Option<PathBuf>,
    pub peers: Vec<String>,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub snapshot_every: u64,
    pub workers: Option<usize>,
    /// Threads of the control plane's runtime (see [`DEFAULT_CONTROL_THREADS`]).
    pub control_threads: usize,
    pub admin_token_file: Option<PathBuf>,
    /// Proxies whose forwarding headers the data plane keeps.
    pub trusted_proxies: Vec<gateway_proxy::Cidr>,
    pub shutdown_grace: Duration,
    /// Idle time after which the data plane closes a keep-alive client connection.
    pub keep_alive_timeout: Duration,
    /// Resident memory limit in bytes (`--memory-limit`).
    pub memory_limit: Option<u64>,
    pub debug_ballast: bool,
    /// The access log's format; `None`: off.
    pub access_log: Option<gateway_proxy::AccessLog>,
    /// Log lines as JSON objects rather than text.
    pub log_json: bool,
}

pub fn resolve(args: NodeArgs, mode: Mode, peers: Vec<String>) -> anyhow::Result<NodeConfig> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --config {}", path.display()))?;
            toml::from_str::<FileConfig>(&text).map_err(|e| {
                anyhow::anyhow!(
                    "--config {}: {}",
                    path.display(),
                    e.to_string().replace('\n', " ")
                )
            })?
        }
        None => FileConfig::default(),
    };
    let Some(data_dir) = args.data_dir.or(file.data_dir) else {
        bail!(
            "--data-dir is required: name the folder where this node keeps its state (e.g. --data-dir data/1)"
        );
    };
    let peers = if peers.is_empty() {
        file.peers.unwrap_or_default()
    } else {
        peers
    };
    let peers: Vec<String> = peers
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if matches!(mode, Mode::Join { .. }) && peers.is_empty() {
        bail!(
            "--peers is required to join: give the cluster address of at least one member (e.g. --peers 127.0.0.1:7101)"
        );
    }
    let heartbeat_ms = args.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(25);
    let election_ms = args
        .election_timeout_ms
        .or(file.election_timeout_ms)
        .unwrap_or(100);
    if heartbeat_ms == 0 || election_ms <= heartbeat_ms {
        bail!(
            "--election-timeout-ms ({election_ms}) must be larger than --heartbeat-ms ({heartbeat_ms}), and both above 0"
        );
    }
    let snapshot_every = args
        .snapshot_every
        .or(file.snapshot_every)
        .unwrap_or(DEFAULT_SNAPSHOT_EVERY);
    if snapshot_every == 0 {
        bail!("--snapshot-every must be at least 1");
    }
    let workers = args.workers.or(file.workers);
    if workers == Some(0) {
        bail!("--workers must be at least 1");
    }
    let control_threads = args
        .control_threads
        .or(file.control_threads)
        .unwrap_or(DEFAULT_CONTROL_THREADS);
    if control_threads == 0 {
        bail!("--control-threads must be at least 1");
    }
    let keep_alive_ms = args
        .keep_alive_timeout_ms
        .or(file.keep_alive_timeout_ms)
        .unwrap_or(75_000);
    if keep_alive_ms == 0 {
        bail!(
            "--keep-alive-timeout-ms must be at least 1: it is how long an idle keep-alive client connection stays open (default 75000)"
        );
    }
    let memory_limit = match args.memory_limit.or(file.memory_limit) {
        Some(s) => Some(
            gateway_proxy::memory::parse_limit(&s)
                .map_err(|e| anyhow::anyhow!("--memory-limit: {e}"))?,
        ),
        None => None,
    };
    let id = args.id.or(file.id);
    if id == Some(0) {
        bail!("--id must be 1 or more");
    }
    let trusted_proxies = if args.trusted_proxies.is_empty() {
        file.trusted_proxies.unwrap_or_default()
    } else {
        args.trusted_proxies
    };
    let trusted_proxies = trusted_proxies
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e| anyhow::anyhow!("--trusted-proxies: {e}"))
        })
        .collect::<anyhow::Result<Vec<gateway_proxy::Cidr>>>()?;
    let access_log = match args.access_log.or(file.access_log).as_deref() {
        None | Some("off") => None,
        Some("json") => Some(gateway_proxy::AccessLog::Json),
        Some("common") => Some(gateway_proxy::AccessLog::Common),
        Some(other) => bail!("access_log: '{other}' is not a format; use json, common or off"),
    };
    let log_json = match args.log_format.or(file.log_format).as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => bail!("log_format: '{other}' is not a format; use text or json"),
    };
    let tls = match (
        args.tls_ca.or(file.tls_ca),
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(ca), Some(cert), Some(key)) => Some([ca, cert, key]),
        (None, None, None) => None,
        _ => bail!(
            "--tls-ca, --tls-cert and --tls-key go together: give all three (cluster mutual TLS) or none"
        ),
    };
    let admin_tls = match (
        args.admin_tls_cert.or(file.admin_tls_cert),
        args.admin_tls_key.or(file.admin_tls_key),
    ) {
        (Some(cert), Some(key)) => Some([cert, key]),
        (None, None) => None,
        _ => bail!(
            "--admin-tls-cert and --admin-tls-key go together: give both (admin API over HTTPS) or neither"
        ),
    };
    Ok(NodeConfig {
        mode,
        tls,
        admin_tls,
        id,
        data_dir,
        cluster_addr: args.cluster_addr.or(file.cluster_addr),
        cluster_advertise_addr: args.cluster_advertise_addr.or(file.cluster_advertise_addr),
        debug_stale_reads: args.debug_stale_reads,
        admin_addr: args.admin_addr.or(file.admin_addr),
        http_addr: args.http_addr.or(file.http_addr),
        https_addr: args.https_addr.or(file.https_addr),
        secret_file: args.cluster_secret_file.or(file.cluster_secret_file),
        peers,
        heartbeat: Duration::from_millis(heartbeat_ms),
        election_timeout: Duration::from_millis(election_ms),
        snapshot_every,
        workers,
        control_threads,
        admin_token_file: args.admin_token_file.or(file.admin_token_file),
        trusted_proxies,
        shutdown_grace: Duration::from_millis(
            args.shutdown_grace_ms
                .or(file.shutdown_grace_ms)
                .unwrap_or(10_000),
        ),
        keep_alive_timeout: Duration::from_millis(keep_alive_ms),
        memory_limit,
        debug_ballast: args.debug_ballast,
        access_log,
        log_json,
    })
}
