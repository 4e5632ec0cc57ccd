//! Starting and stopping a node: data dir and identity, listeners, cluster, admin, data plane.

use crate::config::{
    DEFAULT_ADMIN_ADDR, DEFAULT_CLUSTER_ADDR, DEFAULT_HTTP_ADDR, Mode, NodeConfig,
};
use anyhow::{Context, bail};
use gateway_cluster::{Bootstrap, Cluster, ClusterOptions, Secret};
use gateway_model::NodeAddr;
use gateway_store::MetaStore;
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    b.enable_all().build()
}

/// Node logs go to stderr (text or JSON lines), filtered by `RUST_LOG`; access log lines
/// (target `access`, emitted only with `--access-log`) go to stdout as they are, whatever the
/// level `RUST_LOG` sets, unless it names `access` itself (`RUST_LOG=info,access=off`).
fn init_logging(json: bool) {
    use tracing_subscriber::filter::{EnvFilter, FilterFn};
    use tracing_subscriber::prelude::*;
    let filter = || {
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
            EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn")
        })
    };
    let not_access = FilterFn::new(|m| m.target() != gateway_proxy::ACCESS_TARGET);
    let only_access = FilterFn::new(|m| m.target() == gateway_proxy::ACCESS_TARGET);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(!json && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let logs = if json {
        logs.json()
            .with_filter(not_access)
            .with_filter(filter())
            .boxed()
    } else {
        logs.with_filter(not_access).with_filter(filter()).boxed()
    };
    let access_filter = match std::env::var("RUST_LOG") {
        Ok(v) if v.contains(gateway_proxy::ACCESS_TARGET) => filter(),
        _ => EnvFilter::new("access=info"),
    };
    let access = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .without_time()
        .with_level(false)
        .with_target(false)
        .with_filter(only_access)
        .with_filter(access_filter);
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(access)
        .try_init();
}

/// Picks a value: the flag (or env/file) first, then what the data dir remembers, then the
/// default; a flag that contradicts the data dir's identity is an error.
fn remembered(
    meta: &MetaStore,
    key: &str,
    given: Option<String>,
    default: &str,
) -> anyhow::Result<String> {
    Ok(match (given, meta.get(key)?) {
        (Some(v), _) => v,
        (None, Some(v)) => v,
        (None, None) => default.to_string(),
    })
}

/// Reads and checks the cluster TLS files: PEM, the key matching the certificate, the
/// certificate naming `gateway.cluster`.
// ---- admin HTTPS (issue 7) ----
/// The admin API's TLS server configuration from a PEM chain and key.
fn load_admin_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("--admin-tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        bail!(
            "--admin-tls-cert {}: no PEM certificate in it; pass the chain, leaf first",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("--admin-tls-key {}: {e}", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("--admin-tls-cert/--admin-tls-key: {e}"))?;
    // The admin server speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}
// ---- end admin HTTPS ----

fn load_cluster_tls(
    files: &[std::path::PathBuf; 3],
) -> anyhow::Result<gateway_cluster::ClusterTls> {
    let [ca, cert, key] = files;
    let read = |p: &std::path::PathBuf, flag: &str| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {flag} {}", p.display()))
    };
    let (ca_pem, cert_pem, key_pem) = (
        read(ca, "--tls-ca")?,
        read(cert, "--tls-cert")?,
        read(key, "--tls-key")?,
    );
    let info = gateway_model::inspect_cert(&cert_pem, &key_pem)
        .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?;
    if !info
        .names
        .iter()
        .any(|n| n == gateway_cluster::CLUSTER_SERVER_NAME)
    {
        bail!(
            "--tls-cert {} names {}, not {}: peers check that name; make node certificates with `gateway tls-gen`",
            cert.display(),
            info.names.join(","),
            gateway_cluster::CLUSTER_SERVER_NAME
        );
    }
    gateway_model::inspect_cert(&ca_pem, "")
        .err()
        .filter(|e| e.field == "cert_pem")
        .map_or(Ok(()), |e| {
            Err(anyhow::anyhow!("--tls-ca {}: {e}", ca.display()))
        })?;
    Ok(gateway_cluster::ClusterTls {
        ca_pem: ca_pem.into_bytes(),
        cert_pem: cert_pem.into_bytes(),
        key_pem: key_pem.into_bytes(),
    })
}

async fn bind(addr: &str, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({flag}): {e}; pick a free address"))
}

fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read --cluster-secret-file {}", path.display()))?;
    if bytes.trim_ascii().len() < 16 {
        bail!(
            "--cluster-secret-file {} holds fewer than 16 characters; put a long random secret in it (e.g. head -c 32 /dev/urandom | base64 > {})",
            path.display(),
            path.display()
        );
    }
    Ok(bytes)
}

fn write_new_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{secret}")?;
    f.sync_all()?;
    Ok(secret.into_bytes())
}

pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    init_logging(cfg.log_json);
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let storage =
        gateway_store::open(&cfg.data_dir.join("store")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let meta = storage.meta.clone();

    // Identity: the id is fixed by the data dir once chosen.
    let stored_id: Option<u64> = meta.get("node_id")?.and_then(|s| s.parse().ok());
    let id = match (cfg.id, stored_id) {
        (Some(a), Some(b)) if a != b => bail!(
            "data dir {} belongs to node {b}, not --id {a}: use --id {b} or another data dir",
            cfg.data_dir.display()
        ),
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => bail!(
            "--id is required for a new node: choose a number not used before in this cluster (e.g. --id 1)"
        ),
    };
    // The cluster port is bound on one address and advertised (dialled by peers) on another
    // when --cluster-advertise-addr says so (NAT, containers, a relay in front of the node).
    let cluster_bind = match (
        &cfg.cluster_addr,
        meta.get("cluster_bind")?,
        meta.get("cluster_addr")?,
    ) {
        (Some(flag), _, _) => flag.clone(),
        (None, Some(bind), _) => bind,
        (None, None, Some(adv)) => adv,
        (None, None, None) => DEFAULT_CLUSTER_ADDR.to_string(),
    };
    let advertised = cfg
        .cluster_advertise_addr
        .clone()
        .or_else(|| cfg.cluster_addr.clone())
        .or(meta.get("cluster_addr")?)
        .unwrap_or_else(|| cluster_bind.clone());
    let addr = NodeAddr {
        cluster_addr: advertised,
        admin_addr: remembered(
            &meta,
            "admin_addr",
            cfg.admin_addr.clone(),
            DEFAULT_ADMIN_ADDR,
        )?,
        http_addr: remembered(&meta, "http_addr", cfg.http_addr.clone(), DEFAULT_HTTP_ADDR)?,
    };

    // The cluster secret: the file given, else the copy in the data dir, else (on --init) a new one.
    let secret = match (&cfg.secret_file, meta.get("cluster_secret")?) {
        (Some(path), stored) => {
            let s = read_secret(path)?;
            if stored
                .as_deref()
                .is_some_and(|old| old.as_bytes() != s.trim_ascii())
                && stored_id.is_some()
            {
                tracing::warn!(
                    "--cluster-secret-file differs from the secret this node used before; using the file"
                );
            }
            s
        }
        (None, Some(stored)) => stored.into_bytes(),
        (None, None) if cfg.mode == Mode::Init => {
            let path = cfg.data_dir.join("cluster-secret");
            // A previous start may have written it before failing (e.g. on a busy port).
            let s = if path.exists() {
                read_secret(&path)?
            } else {
                write_new_secret(&path)?
            };
            tracing::info!(
                "generated a cluster secret in {}; pass --cluster-secret-file {} to nodes that join",
                path.display(),
                path.display()
            );
            s
        }
        (None, None) => bail!(
            "--cluster-secret-file is required: give the secret file of the cluster (the first node writes DATA_DIR/cluster-secret)"
        ),
    };

    // Cluster mutual TLS: the files given (remembered for restarts), else the ones used before.
    let tls_files: Option<[std::path::PathBuf; 3]> = match &cfg.tls {
        Some(files) => Some(
            files
                .clone()
                .map(|p| std::fs::canonicalize(&p).unwrap_or(p)),
        ),
        None => match (
            meta.get("tls_ca")?,
            meta.get("tls_cert")?,
            meta.get("tls_key")?,
        ) {
            (Some(a), Some(b), Some(c)) => Some([a.into(), b.into(), c.into()]),
            _ => None,
        },
    };
    let tls = match &tls_files {
        Some(files) => Some(load_cluster_tls(files)?),
        None => None,
    };

    // Admin tokens: the file given (remembered for restarts), else the one used before.
    let token_file = match &cfg.admin_token_file {
        Some(p) => Some(p.clone()),
        None => meta.get("admin_token_file")?.map(std::path::PathBuf::from),
    };
    let tokens = match &token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --admin-token-file {}", path.display()))?;
            gateway_admin::Tokens::parse(&text)
                .map_err(|e| anyhow::anyhow!("--admin-token-file {}: {e}", path.display()))?
        }
        None => {
            let loopback = addr
                .admin_addr
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip().is_loopback())
                .unwrap_or(false);
            if !loopback {
                bail!(
                    "--admin-addr {} is not a loopback address and no --admin-token-file was given: the admin API would be open to the network; give a token file (lines 'write TOKEN' / 'read TOKEN')",
                    addr.admin_addr
                );
            }
            gateway_admin::Tokens::open()
        }
    };

    // Admin HTTPS: the files given (remembered for restarts), else the ones used before.
    let admin_tls_files: Option<[std::path::PathBuf; 2]> = match &cfg.admin_tls {
        Some(files) => Some(
            files
                .clone()
                .map(|p| std::fs::canonicalize(&p).unwrap_or(p)),
        ),
        None => match (meta.get("admin_tls_cert")?, meta.get("admin_tls_key")?) {
            (Some(a), Some(b)) => Some([a.into(), b.into()]),
            _ => None,
        },
    };
    let admin_tls = match &admin_tls_files {
        Some([cert, key]) => Some(load_admin_tls(cert, key)?),
        None => None,
    };
    // Listeners first: a busy port is reported before anything joins or changes.
    let cluster_listener = bind(&cluster_bind, "--cluster-addr").await?;
    // Dial peers from the address this node listens on, so a peer (or a relay) sees which node
    // a connection comes from even when every node shares one host.
    let source_ip = cluster_listener
        .local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    let admin_listener = bind(&addr.admin_addr, "--admin-addr").await?;
    let http_listener = bind(&addr.http_addr, "--http-addr").await?;
    // The HTTPS address given (remembered for restarts), else the one used before.
    let https_addr = match &cfg.https_addr {
        Some(a) => Some(a.clone()),
        None => meta.get("https_addr")?,
    };
    let https_listener = match &https_addr {
        Some(a) => Some(bind(a, "--https-addr").await?),
        None => None,
    };
    let https_port = https_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());

    let bootstrap = match &cfg.mode {
        Mode::Init => Bootstrap::Init,
        Mode::Resume => Bootstrap::Resume,
        Mode::Join { learner } => Bootstrap::Join {
            peers: cfg.peers.clone(),
            learner: *learner,
        },
    };
    let secret_obj = Secret::new(&secret);
    let opts = ClusterOptions {
        id,
        addr: addr.clone(),
        secret: secret_obj.clone(),
        heartbeat: cfg.heartbeat,
        election_timeout: cfg.election_timeout,
        snapshot_every: cfg.snapshot_every,
        source_ip,
        debug_stale_reads: cfg.debug_stale_reads,
        tls,
    };
    // The admin gRPC API shares the cluster port; it answers "node is starting" until the
    // handle exists (Cluster::start returns once this node is a member).
    let admin_grpc = std::sync::Arc::new(std::sync::OnceLock::new());
    let cluster = Cluster::start(
        opts,
        storage,
        cluster_listener,
        bootstrap,
        gateway_admin::grpc_routes(admin_grpc.clone(), tokens.clone()),
    )
    .await?;
    let _ = admin_grpc.set(cluster.clone());
    // Remember the identity only once the node is in a cluster, so a failed join leaves the
    // data dir reusable.
    for (k, v) in [
        ("node_id", id.to_string()),
        ("cluster_addr", addr.cluster_addr.clone()),
        ("cluster_bind", cluster_bind.clone()),
        ("admin_addr", addr.admin_addr.clone()),
        ("http_addr", addr.http_addr.clone()),
        (
            "cluster_secret",
            String::from_utf8_lossy(secret.trim_ascii()).into_owned(),
        ),
    ] {
        meta.set(k, &v)?;
    }
    if let Some(a) = &https_addr {
        meta.set("https_addr", a)?;
    }
    if let Some(files) = &admin_tls_files {
        for (k, p) in ["admin_tls_cert", "admin_tls_key"].iter().zip(files) {
            meta.set(k, &p.to_string_lossy())?;
        }
    }
    if let Some(files) = &tls_files {
        for (k, p) in ["tls_ca", "tls_cert", "tls_key"].iter().zip(files) {
            meta.set(k, &p.to_string_lossy())?;
        }
    }
    if let Some(path) = &token_file {
        let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        meta.set("admin_token_file", &abs.to_string_lossy())?;
    }
    if cfg.debug_stale_reads {
        tracing::warn!(
            "--debug-stale-reads: reads are NOT linearizable on this node (for testing checkers only)"
        );
    }
    tracing::info!(id, cluster_id = %cluster.cluster_id(), cluster = %addr.cluster_addr, admin = %addr.admin_addr, http = %addr.http_addr, "node running");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let supervisor = crate::supervisor::Supervisor::start(
        cluster.clone(),
        crate::supervisor::Options {
            node: id,
            data_dir: cfg.data_dir.clone(),
            host: crate::supervisor::host_of(&addr.cluster_addr),
        },
    );
    // Every node probes the backends of pools with health checks and sends its view to the
    // leader, which commits the cluster's verdict (crates/cluster/src/overseer.rs).
    let monitor = gateway_proxy::Monitor::new(id);
    // The memory guard watches resident memory for the data plane (--memory-limit).
    let memory = cfg
        .memory_limit
        .map(gateway_proxy::memory::MemoryGuard::new);
    if let Some(g) = &memory {
        tokio::spawn(g.clone().run());
        tracing::info!(limit = g.limit, soft = g.soft, "memory guard on");
    }
    let memory_status: Option<gateway_admin::StatusFn> = memory.clone().map(|g| {
        let f: gateway_admin::StatusFn = std::sync::Arc::new(move || {
            serde_json::json!({
                "rss": g.rss(),
                "soft": g.soft,
                "limit": g.limit,
                "pressure": g.pressure().borrow().as_str(),
            })
        });
        f
    });
    let (left_tx, mut left_rx) = mpsc::channel(1);
    let proxy_metrics = gateway_proxy::Metrics::new();
    // The data plane reports its TCP route listeners here; /status shows them.
    let (tcp_status_tx, tcp_status_rx) = watch::channel(Vec::new());
    let admin = tokio::spawn(gateway_admin::serve(
        admin_listener,
        gateway_admin::AdminOptions {
            cluster: cluster.clone(),
            left: left_tx,
            max_body: 1 << 20,
            tokens,
            managed: Some(supervisor.status()),
            metrics: vec![std::sync::Arc::new(crate::metrics::DataPlane(
                proxy_metrics.clone(),
            ))],
            tcp_listeners: tcp_status_rx,
            seen_down: Some(monitor.view()),
            memory_status,
            debug_ballast: cfg.debug_ballast,
            tls: admin_tls,
        },
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(monitor.clone().run(cluster.state()));
    tokio::spawn(report_health(
        cluster.clone(),
        monitor.view(),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::alerts::run(cluster.clone(), stop_rx.clone()));
    let proxy_defaults = gateway_proxy::ProxyConfig::new(id, secret_obj.hop_key());
    let workers = cfg.workers.unwrap_or(proxy_defaults.workers);
    // The data plane's own tasks (TCP routes, the route table's watcher, its timers) get
    // `workers` threads of their own; the HTTP workers run their own event loops besides.
    // Nothing of it shares the control plane's thread (`--control-threads`).
    let data_plane = DataPlaneRuntime::new(workers)?;
    let proxy = data_plane.spawn(gateway_proxy::serve_all(
        gateway_proxy::Listeners {
            http: http_listener,
            https: https_listener,
            tcp_status: Some(tcp_status_tx),
        },
        cluster.state(),
        leader_http(&cluster),
        gateway_proxy::ProxyConfig {
            trusted_proxies: cfg.trusted_proxies.clone(),
            keep_alive_timeout: cfg.keep_alive_timeout,
            metrics: proxy_metrics,
            access_log: cfg.access_log,
            https_port,
            health: Some(monitor.clone()),
            memory: memory.clone(),
            workers,
            ..proxy_defaults
        },
        stopped(stop_rx.clone()),
    ));

    let why = tokio::select! {
        _ = shutdown_signal() => "signal",
        _ = left_rx.recv() => "left the cluster",
    };
    tracing::info!("shutting down ({why})");
    // Stop taking new connections; in-flight requests go on meanwhile.
    let _ = stop_tx.send(true);
    // A leader hands over first, so the cluster does not wait an election timeout for the next.
    if cluster.is_leader() {
        match tokio::time::timeout(Duration::from_secs(5), cluster.transfer_leader(None)).await {
            Ok(Ok(to)) => tracing::info!(to, "handed leadership over"),
            Ok(Err(e)) => tracing::warn!("could not hand leadership over: {e}"),
            Err(_) => tracing::warn!("could not hand leadership over within 5s"),
        }
    }
    // In-flight requests get a bounded time to finish.
    let drained = tokio::time::timeout(cfg.shutdown_grace, async {
        let _ = admin.await;
        let _ = proxy.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "requests still in flight after {:?}; closing them",
            cfg.shutdown_grace
        );
    }
    // Managed backends: unregistered (traffic moves to other nodes' instances), then stopped.
    supervisor.shutdown().await;
    cluster.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The runtime of the data plane's tasks. Dropping a runtime waits for its threads, which an
/// async context must not do; this one is let go without waiting (its tasks end with the
/// process).
struct DataPlaneRuntime(Option<tokio::runtime::Runtime>);

impl DataPlaneRuntime {
    fn new(threads: usize) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("gateway-data")
            .enable_all()
            .build()
            .context("cannot start the data plane's runtime")?;
        Ok(Self(Some(rt)))
    }

    fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("present until dropped").spawn(task)
    }
}

impl Drop for DataPlaneRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Sends this node's view of backend health to the leader once a second, and at once when it
/// changes, until the node stops.
async fn report_health(
    cluster: Cluster,
    mut view: watch::Receiver<gateway_proxy::health::View>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let down = (**view.borrow_and_update()).clone();
        if let Err(e) = cluster.report_health(down).await {
            tracing::debug!("health report not delivered: {e}");
        }
        tokio::select! {
            _ = view.changed() => {}
            _ = tokio::time::sleep(gateway_cluster::overseer::REPORT_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The leader's data plane address, as the proxy wants it.
fn leader_http(cluster: &Cluster) -> watch::Receiver<Option<gateway_proxy::Leader>> {
    let mut src = cluster.leader_watch();
    let map = |l: &Option<gateway_cluster::LeaderInfo>| {
        l.as_ref().map(|l| gateway_proxy::Leader {
            id: l.id,
            http_addr: l.http_addr.clone(),
        })
    };
    let (tx, rx) = watch::channel(map(&src.borrow_and_update()));
    tokio::spawn(async move {
        while src.changed().await.is_ok() {
            let next = map(&src.borrow_and_update());
            tx.send_if_modified(|cur| {
                let changed = *cur != next;
                if changed {
                    *cur = next;
                }
                changed
            });
        }
    });
    rx
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
