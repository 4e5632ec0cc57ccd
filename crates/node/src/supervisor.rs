//! The supervisor: runs the managed backends of every pool whose `process` spec names this
//! node, registers the healthy ones as backends this node owns, restarts those that exit or
//! that the cluster marks down (with backoff; a crash loop marks the instance failed and
//! records one `backend_failed` event), replaces them one at a time in a rolling restart, and
//! stops them all on shutdown.
//!
//! Registration goes through [`Command::SetManaged`]: one task (the registrar) keeps the
//! node's managed backends in the replicated state equal to the set of healthy instances, so
//! user edits of the rest of a pool are never overwritten.
//!
//! Each instance's stdout and stderr go to `DATA_DIR/managed/POOL/ID.log`. Children are
//! started under `setpriv --pdeathsig KILL` when it exists, so they die with the node even
//! when it is killed with SIGKILL.

use bytes::Bytes;
use gateway_cluster::Cluster;
use gateway_model::{
    Backend, CheckKind, Command, EventKind, HealthCheck, NodeId, ProcessSpec, State, StatusRanges,
    managed_id, managed_index,
};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the supervisor needs to know about its node.
pub struct Options {
    pub node: NodeId,
    /// Logs go under `DATA_DIR/managed`.
    pub data_dir: PathBuf,
    /// The host other nodes reach this node's instances on, unless a spec names one.
    pub host: String,
}

/// The managed backends this node wants registered: pool → instance index → backend.
type Registry = BTreeMap<String, BTreeMap<u32, Backend>>;

/// One instance as `/status` shows it.
#[derive(Clone, Debug, Serialize)]
struct InstanceStatus {
    pool: String,
    backend: String,
    /// `starting`, `running`, `backoff`, `failed` or `stopped`.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    /// Times it was started.
    starts: u32,
    /// Failures in a row (reset after `min_uptime_ms` of health).
    failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_failure: Option<String>,
    log: String,
}

struct Shared {
    node: NodeId,
    data_dir: PathBuf,
    host: String,
    cluster: Cluster,
    registry: watch::Sender<Registry>,
    statuses: Mutex<BTreeMap<(String, u32), InstanceStatus>>,
    status_tx: watch::Sender<Value>,
    /// Ports this supervisor handed out and not yet released.
    claimed: Mutex<HashSet<u16>>,
    /// `setpriv`, when installed.
    setpriv: Option<PathBuf>,
}

/// The running supervisor.
pub struct Supervisor {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    status: watch::Receiver<Value>,
}

impl Supervisor {
    /// Starts supervising the pools of `cluster`'s state.
    pub fn start(cluster: Cluster, opts: Options) -> Supervisor {
        let (status_tx, status) = watch::channel(Value::Array(Vec::new()));
        let sh = Arc::new(Shared {
            node: opts.node,
            data_dir: opts.data_dir,
            host: opts.host,
            cluster,
            registry: watch::channel(Registry::new()).0,
            statuses: Mutex::new(BTreeMap::new()),
            status_tx,
            claimed: Mutex::new(HashSet::new()),
            setpriv: find_in_path("setpriv"),
        });
        if sh.setpriv.is_none() {
            tracing::warn!(
                "setpriv not found: managed backends will outlive this node if it is killed with SIGKILL"
            );
        }
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(sh, stop_rx));
        Supervisor { stop, task, status }
    }

    /// This node's instances, for `/status`.
    pub fn status(&self) -> watch::Receiver<Value> {
        self.status.clone()
    }

    /// Unregisters every instance, then stops them (SIGTERM, SIGKILL after each spec's
    /// `stop_timeout_ms`).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

use gateway_cluster::unix_ms as now_ms;

/// The names of the pools with a process spec, kept up to date from the pools that changed
/// between two versions: every write publishes a version and a cluster may hold thousands of
/// pools, so looking at all of them each time would make every write cost O(pools).
#[derive(Default)]
struct ManagedPools {
    names: BTreeSet<String>,
    seen: Option<Arc<State>>,
}

impl ManagedPools {
    fn update(&mut self, st: &Arc<State>) -> &BTreeSet<String> {
        let changed: Vec<String> = match &self.seen {
            None => st.pools.keys().cloned().collect(),
            Some(before) => st.pools_changed_since(before).cloned().collect(),
        };
        for name in changed {
            if st.pools.get(&name).is_some_and(|p| p.process.is_some()) {
                self.names.insert(name);
            } else {
                self.names.remove(&name);
            }
        }
        self.seen = Some(st.clone());
        &self.names
    }
}

struct InstanceTask {
    stop: watch::Sender<bool>,
    join: JoinHandle<()>,
}

/// The main loop: starts and stops instance tasks as pools and specs change.
async fn supervise(sh: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let (reg_stop_tx, reg_stop) = watch::channel(false);
    let registrar = tokio::spawn(registrar(sh.clone(), reg_stop));
    let mut state_rx = sh.cluster.state();
    let mut running: HashMap<String, (ProcessSpec, Vec<InstanceTask>)> = HashMap::new();
    let mut managed = ManagedPools::default();
    loop {
        let st = state_rx.borrow_and_update().clone();
        let wanted: HashMap<&String, &ProcessSpec> = managed
            .update(&st)
            .iter()
            .filter_map(|name| Some((name, st.pools.get(name)?.process.as_ref()?)))
            .filter(|(_, spec)| spec.runs_on(sh.node))
            .collect();
        let gone: Vec<String> = running
            .iter()
            .filter(|(name, (spec, _))| wanted.get(name) != Some(&spec))
            .map(|(name, _)| name.clone())
            .collect();
        let mut stopping = Vec::new();
        for name in gone {
            if let Some((_, tasks)) = running.remove(&name) {
                tracing::info!(pool = %name, "process spec changed or removed: stopping its instances");
                stopping.extend(tasks);
            }
        }
        stop_tasks(stopping).await;
        for (name, spec) in wanted {
            if running.contains_key(name) {
                continue;
            }
            tracing::info!(pool = %name, instances = spec.instances, "starting managed backends");
            let tasks = (0..spec.instances)
                .map(|index| {
                    let (tx, rx) = watch::channel(false);
                    let join =
                        tokio::spawn(instance(sh.clone(), name.clone(), index, spec.clone(), rx));
                    InstanceTask { stop: tx, join }
                })
                .collect();
            running.insert(name.clone(), (spec.clone(), tasks));
        }
        tokio::select! {
            r = state_rx.changed() => if r.is_err() { break },
            _ = stopped(&mut stop) => break,
        }
    }
    // Traffic first: unregister everything and wait (briefly) for the cluster to apply it.
    sh.registry.send_replace(Registry::new());
    let mut state_rx = sh.cluster.state();
    let node = sh.node;
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        state_rx.wait_for(|st| {
            !st.pools.values().any(|p| {
                p.process.is_some()
                    && p.backends
                        .iter()
                        .any(|b| b.node == Some(node) && managed_index(node, &b.id).is_some())
            })
        }),
    )
    .await;
    let _ = reg_stop_tx.send(true);
    stop_tasks(running.into_values().flat_map(|(_, t)| t).collect()).await;
    let _ = registrar.await;
}

async fn stop_tasks(tasks: Vec<InstanceTask>) {
    for t in &tasks {
        let _ = t.stop.send(true);
    }
    for t in tasks {
        let _ = t.join.await;
    }
}

/// Keeps this node's managed backends in the replicated state equal to the registry.
async fn registrar(sh: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut state_rx = sh.cluster.state();
    let mut reg_rx = sh.registry.subscribe();
    let node = sh.node;
    // The operator's settings of each managed backend, by pool and id.
    let mut operator: HashMap<(String, String), (u32, Option<u32>, bool)> = HashMap::new();
    let mut managed = ManagedPools::default();
    loop {
        let st = state_rx.borrow_and_update().clone();
        let reg = reg_rx.borrow_and_update().clone();
        operator.retain(|(pool, _), _| st.pools.get(pool).is_some_and(|p| p.process.is_some()));
        let mut failed = false;
        for name in managed.update(&st).iter() {
            let Some(pool) = st.pools.get(name) else {
                continue;
            };
            let mut have: Vec<Backend> = pool
                .backends
                .iter()
                .filter(|b| b.node == Some(node) && managed_index(node, &b.id).is_some())
                .cloned()
                .collect();
            have.sort_by_key(|b| managed_index(node, &b.id));
            // Weight, connection limit and draining are the operator's (e.g. `gateway backend
            // drain`): kept as last set, also while an instance is away between two runs; id,
            // address and node are the supervisor's.
            for h in &have {
                operator.insert(
                    (name.clone(), h.id.clone()),
                    (h.weight, h.max_connections, h.drain),
                );
            }
            let want: Vec<Backend> = reg
                .get(name)
                .map(|m| {
                    m.values()
                        .map(|b| match operator.get(&(name.clone(), b.id.clone())) {
                            Some(&(weight, max_connections, drain)) => Backend {
                                weight,
                                max_connections,
                                drain,
                                ..b.clone()
                            },
                            None => b.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            if have == want {
                continue;
            }
            let cmd = Command::SetManaged {
                pool: name.clone(),
                node,
                backends: want,
            };
            match sh.cluster.write(cmd).await {
                Ok(r) => {
                    if let Err(e) = r.outcome {
                        tracing::warn!(pool = %name, "registering managed backends was refused: {e}");
                        failed = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(pool = %name, "cannot register managed backends yet: {e}");
                    failed = true;
                }
            }
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                _ = stopped(&mut stop) => return,
            }
        }
        tokio::select! {
            r = state_rx.changed() => if r.is_err() { return },
            r = reg_rx.changed() => if r.is_err() { return },
            _ = stopped(&mut stop) => return,
        }
    }
}

/// A started instance.
struct Running {
    child: Child,
    port: u16,
    address: String,
    started: Instant,
    /// When it started, in milliseconds since the Unix epoch (to compare with a restart's).
    started_ms: u64,
}

/// Why an instance stopped running.
enum Outcome {
    Exited(String),
    MarkedDown,
    Turn(u64),
    Stop,
}

/// How a start attempt went (one per start, moved once: boxing would buy nothing).
#[allow(clippy::large_enum_variant)]
enum Started {
    Healthy(Running),
    Failed(String),
    Stop,
}

impl Shared {
    fn set_status(&self, pool: &str, index: u32, f: impl FnOnce(&mut InstanceStatus)) {
        let mut all = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        let s = all
            .entry((pool.to_string(), index))
            .or_insert_with(|| InstanceStatus {
                pool: pool.to_string(),
                backend: managed_id(self.node, index),
                state: "starting",
                pid: None,
                address: None,
                starts: 0,
                failures: 0,
                last_failure: None,
                log: self.log_path(pool, index).display().to_string(),
            });
        f(s);
        let v = serde_json::to_value(all.values().collect::<Vec<_>>()).unwrap_or(Value::Null);
        drop(all);
        self.status_tx.send_replace(v);
    }

    fn forget_status(&self, pool: &str, index: u32) {
        let mut all = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        all.remove(&(pool.to_string(), index));
        let v = serde_json::to_value(all.values().collect::<Vec<_>>()).unwrap_or(Value::Null);
        drop(all);
        self.status_tx.send_replace(v);
    }

    fn log_path(&self, pool: &str, index: u32) -> PathBuf {
        self.data_dir
            .join("managed")
            .join(pool)
            .join(format!("{}.log", managed_id(self.node, index)))
    }

    fn register(&self, pool: &str, index: u32, address: &str) {
        let b = Backend {
            id: managed_id(self.node, index),
            address: address.to_string(),
            node: Some(self.node),
            ..Backend::default()
        };
        self.registry.send_modify(|r| {
            r.entry(pool.to_string()).or_default().insert(index, b);
        });
    }

    fn unregister(&self, pool: &str, index: u32) {
        self.registry.send_if_modified(|r| {
            let Some(m) = r.get_mut(pool) else {
                return false;
            };
            let removed = m.remove(&index).is_some();
            if m.is_empty() {
                r.remove(pool);
            }
            removed
        });
    }

    /// The first free port of the range for this instance: not named by any backend, not
    /// handed out here, not `avoid`, and bindable now. Instances start looking at different
    /// offsets so that nodes sharing a host rarely try the same port.
    fn pick_port(
        &self,
        st: &State,
        spec: &ProcessSpec,
        index: u32,
        avoid: Option<u16>,
    ) -> Option<u16> {
        let (lo, hi) = spec.port_range()?;
        let len = u64::from(hi - lo) + 1;
        let used: HashSet<u16> = st
            .pools
            .values()
            .flat_map(|p| p.backends.iter())
            .filter_map(|b| b.address.rsplit_once(':')?.1.parse().ok())
            .collect();
        let start =
            (self.node.saturating_sub(1) * u64::from(spec.instances) + u64::from(index)) % len;
        let mut claimed = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        for k in 0..len {
            let port = lo + ((start + k) % len) as u16;
            if used.contains(&port) || claimed.contains(&port) || avoid == Some(port) {
                continue;
            }
            let free = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
            if free {
                claimed.insert(port);
                return Some(port);
            }
        }
        None
    }

    fn release(&self, port: u16) {
        self.claimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&port);
    }

    /// Starts the process of instance `index` on `port`, its output appended to its log.
    fn spawn(
        &self,
        pool: &str,
        index: u32,
        spec: &ProcessSpec,
        port: u16,
    ) -> std::io::Result<Child> {
        use std::io::Write;
        let log = self.log_path(pool, index);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let subst = |s: &str| {
            s.replace("{port}", &port.to_string())
                .replace("{instance}", &index.to_string())
                .replace("{node}", &self.node.to_string())
        };
        let args: Vec<String> = spec.args.iter().map(|a| subst(a)).collect();
        writeln!(
            out,
            "--- gateway: starting {} {} (port {port}) at {} ms",
            spec.command,
            args.join(" "),
            now_ms()
        )?;
        let mut cmd = match &self.setpriv {
            Some(setpriv) => {
                let mut c = tokio::process::Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--", &spec.command]);
                c
            }
            None => tokio::process::Command::new(&spec.command),
        };
        cmd.args(&args)
            .envs(spec.env.iter().map(|(k, v)| (k, subst(v))))
            .env("PORT", port.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        if let Some(dir) = &spec.dir {
            cmd.current_dir(dir);
        }
        cmd.spawn()
    }

    /// Records one `backend_failed` event for this crash loop (the request id is the same on
    /// every retry and on every node restart for the same spec and restart epoch).
    fn report_failed(self: &Arc<Self>, pool: &str, index: u32, reason: String) {
        let st = self.cluster.state().borrow().clone();
        let rev = st.pools.get(pool).map_or(0, |p| p.revision);
        let epoch = st.restarts.get(pool).map_or(0, |r| r.epoch);
        let backend = managed_id(self.node, index);
        let id = format!("sup-failed:{pool}:{backend}:{rev}:{epoch}");
        let cmd = Command::Record {
            event: EventKind::BackendFailed {
                pool: pool.to_string(),
                backend,
                node: self.node,
                reason,
            },
            at_ms: now_ms(),
        };
        let sh = self.clone();
        tokio::spawn(async move {
            for attempt in 0..30u32 {
                match sh.cluster.write_with_id(Some(&id), cmd.clone()).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(attempt, "cannot record the failure yet: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }

    /// Starts an instance and waits until it passes its health checks.
    async fn start(
        &self,
        pool: &str,
        index: u32,
        spec: &ProcessSpec,
        avoid: Option<u16>,
        stop: &mut watch::Receiver<bool>,
    ) -> Started {
        let st = self.cluster.state().borrow().clone();
        let check = st.pools.get(pool).and_then(|p| p.health_check.clone());
        let Some(port) = self.pick_port(&st, spec, index, avoid) else {
            return Started::Failed(format!("no free port in {}", spec.ports));
        };
        let host = spec.host.clone().unwrap_or_else(|| self.host.clone());
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut child = match self.spawn(pool, index, spec, port) {
            Ok(c) => c,
            Err(e) => {
                self.release(port);
                return Started::Failed(format!("cannot start {}: {e}", spec.command));
            }
        };
        self.set_status(pool, index, |s| {
            s.state = "starting";
            s.pid = child.id();
            s.address = Some(address.clone());
            s.starts += 1;
        });
        let deadline = tokio::time::sleep(Duration::from_millis(spec.start_timeout_ms));
        tokio::pin!(deadline);
        let rise = check.as_ref().map_or(1, |c| c.rise.max(1));
        let pause = check
            .as_ref()
            .map_or(100, |c| c.interval_ms.min(250))
            .max(50);
        let mut ok = 0;
        let failure = loop {
            tokio::select! {
                status = child.wait() => {
                    break describe_exit(status);
                }
                _ = &mut deadline => {
                    break format!("not healthy within {} ms", spec.start_timeout_ms);
                }
                _ = stopped(stop) => {
                    stop_child(&mut child, spec.stop_timeout_ms).await;
                    self.release(port);
                    return Started::Stop;
                }
                r = probe(&address, check.as_ref()) => {
                    if r.is_ok() {
                        ok += 1;
                        if ok >= rise {
                            return Started::Healthy(Running {
                                child,
                                port,
                                address,
                                started: Instant::now(),
                                started_ms: now_ms(),
                            });
                        }
                    } else {
                        ok = 0;
                    }
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        };
        stop_child(&mut child, spec.stop_timeout_ms).await;
        self.release(port);
        Started::Failed(failure)
    }
}

fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "exited".to_string(),
        },
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// Resolves once `rx` says stop (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// SIGTERM, then SIGKILL after `grace_ms`.
async fn stop_child(child: &mut Child, grace_ms: u64) {
    use rustix::process::{Pid, Signal, kill_process};
    if let Some(pid) = child.id().and_then(|p| Pid::from_raw(p as i32)) {
        let _ = kill_process(pid, Signal::TERM);
    }
    if tokio::time::timeout(Duration::from_millis(grace_ms), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

fn backoff(spec: &ProcessSpec, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    Duration::from_millis(
        spec.backoff_ms
            .saturating_mul(1 << shift)
            .min(spec.max_backoff_ms),
    )
}

/// One instance, for as long as its spec stays the same.
async fn instance(
    sh: Arc<Shared>,
    pool: String,
    index: u32,
    spec: ProcessSpec,
    mut stop: watch::Receiver<bool>,
) {
    let id = managed_id(sh.node, index);
    let mut state_rx = sh.cluster.state();
    let mut epoch = state_rx.borrow().restarts.get(&pool).map_or(0, |r| r.epoch);
    let mut failures = 0u32;
    // The last rolling restart this instance took its turn in.
    let mut done_epoch = 0u64;
    let mut avoid: Option<u16> = None;
    let mut current: Option<Running> = None;
    loop {
        let mut run = match current.take() {
            Some(r) => r,
            None => {
                if failures >= spec.crash_limit {
                    let reason = sh
                        .statuses
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&(pool.clone(), index))
                        .and_then(|s| s.last_failure.clone())
                        .unwrap_or_default();
                    let reason = format!("{failures} failures in a row, the last: {reason}");
                    tracing::error!(pool = %pool, backend = %id, "{reason}; giving up until the spec changes or the pool is restarted");
                    sh.set_status(&pool, index, |s| {
                        s.state = "failed";
                        s.pid = None;
                    });
                    sh.report_failed(&pool, index, reason);
                    // Wait for a rolling restart (a new epoch) to try again.
                    tokio::select! {
                        r = state_rx.wait_for(|st| st.restarts.get(&pool).is_some_and(|r| r.epoch > epoch)) => {
                            if let Ok(st) = r {
                                epoch = st.restarts.get(&pool).map_or(0, |r| r.epoch);
                            }
                        }
                        _ = stopped(&mut stop) => break,
                    }
                    failures = 0;
                    continue;
                }
                if failures > 0 {
                    sh.set_status(&pool, index, |s| {
                        s.state = "backoff";
                        s.pid = None;
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(&spec, failures)) => {}
                        _ = stopped(&mut stop) => break,
                    }
                }
                match sh.start(&pool, index, &spec, avoid, &mut stop).await {
                    Started::Healthy(r) => r,
                    Started::Failed(why) => {
                        tracing::warn!(pool = %pool, backend = %id, "instance failed to start: {why}");
                        failures += 1;
                        sh.set_status(&pool, index, |s| {
                            s.failures = failures;
                            s.last_failure = Some(why);
                        });
                        continue;
                    }
                    Started::Stop => break,
                }
            }
        };
        sh.register(&pool, index, &run.address);
        sh.set_status(&pool, index, |s| {
            s.state = "running";
            s.pid = run.child.id();
            s.address = Some(run.address.clone());
        });
        tracing::info!(pool = %pool, backend = %id, address = %run.address, "instance is healthy and registered");
        // A verdict recorded before this registration is about an earlier process.
        let seen_transition = state_rx
            .borrow()
            .health
            .get(&pool)
            .and_then(|m| m.get(&id))
            .map(|h| h.transition);
        let uptime = tokio::time::sleep_until(
            (run.started + Duration::from_millis(spec.min_uptime_ms)).into(),
        );
        tokio::pin!(uptime);
        let mut uptime_done = false;
        let outcome = loop {
            tokio::select! {
                status = run.child.wait() => break Outcome::Exited(describe_exit(status)),
                _ = &mut uptime, if !uptime_done => {
                    uptime_done = true;
                    failures = 0;
                    sh.set_status(&pool, index, |s| s.failures = 0);
                }
                _ = stopped(&mut stop) => break Outcome::Stop,
                r = state_rx.changed() => {
                    if r.is_err() {
                        break Outcome::Stop;
                    }
                    let st = state_rx.borrow_and_update().clone();
                    if let Some(h) = st.health.get(&pool).and_then(|m| m.get(&id))
                        && !h.up
                        && h.address == run.address
                        && Some(h.transition) != seen_transition
                    {
                        break Outcome::MarkedDown;
                    }
                    if let Some((e, b)) = st.restart_turn(&pool)
                        && e > done_epoch
                        && b.id == id
                        && b.address == run.address
                    {
                        break Outcome::Turn(e);
                    }
                }
            }
        };
        match outcome {
            Outcome::Stop => {
                sh.unregister(&pool, index);
                stop_child(&mut run.child, spec.stop_timeout_ms).await;
                sh.release(run.port);
                break;
            }
            Outcome::Exited(why) => {
                tracing::warn!(pool = %pool, backend = %id, "instance {why}; restarting");
                sh.unregister(&pool, index);
                sh.release(run.port);
                failures += 1;
                avoid = Some(run.port);
                sh.set_status(&pool, index, |s| {
                    s.failures = failures;
                    s.last_failure = Some(why);
                });
            }
            Outcome::MarkedDown => {
                let why = "marked down by the cluster's health checks".to_string();
                tracing::warn!(pool = %pool, backend = %id, "instance {why}; restarting");
                sh.unregister(&pool, index);
                stop_child(&mut run.child, spec.stop_timeout_ms).await;
                sh.release(run.port);
                failures += 1;
                avoid = Some(run.port);
                sh.set_status(&pool, index, |s| {
                    s.failures = failures;
                    s.last_failure = Some(why);
                });
            }
            Outcome::Turn(e) => {
                done_epoch = e;
                let began = state_rx
                    .borrow()
                    .restarts
                    .get(&pool)
                    .map_or(0, |r| r.started_ms);
                current = Some(if run.started_ms > began {
                    // Started after the restart was asked for (e.g. its node restarted): it
                    // is already new.
                    report_restarted(&sh, &pool, &id, e).await;
                    run
                } else {
                    rolling_replace(&sh, &pool, index, &spec, run, e, &mut stop).await
                });
                if *stop.borrow() {
                    if let Some(mut r) = current.take() {
                        sh.unregister(&pool, index);
                        stop_child(&mut r.child, spec.stop_timeout_ms).await;
                        sh.release(r.port);
                    }
                    break;
                }
            }
        }
    }
    sh.unregister(&pool, index);
    sh.forget_status(&pool, index);
}

/// Replaces a running instance for restart `epoch`: starts its successor on another port,
/// waits for it to pass its health checks, moves the backend's address to it (every node
/// swaps it in at once), lets the old one finish its requests for `drain_ms`, stops it, and
/// reports the instance done so the next one may go. If the successor does not come up, the
/// old instance keeps serving; after `crash_limit` tries the instance is reported failed and
/// skipped, so the restart goes on.
async fn rolling_replace(
    sh: &Arc<Shared>,
    pool: &str,
    index: u32,
    spec: &ProcessSpec,
    mut old: Running,
    epoch: u64,
    stop: &mut watch::Receiver<bool>,
) -> Running {
    let id = managed_id(sh.node, index);
    tracing::info!(pool = %pool, backend = %id, epoch, "rolling restart: replacing instance");
    let mut tries = 0;
    let new = loop {
        match sh.start(pool, index, spec, Some(old.port), stop).await {
            Started::Healthy(r) => break Some(r),
            Started::Stop => return old,
            Started::Failed(why) => {
                tries += 1;
                tracing::warn!(pool = %pool, backend = %id, "rolling restart: the new instance failed: {why}");
                if tries >= spec.crash_limit {
                    sh.report_failed(pool, index, format!("rolling restart: {tries} failed starts, the last: {why}; the old instance keeps serving"));
                    break None;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff(spec, tries)) => {}
                    _ = stopped(stop) => return old,
                }
            }
        }
    };
    let kept = match new {
        Some(new) => {
            sh.register(pool, index, &new.address);
            // Wait until this node routes to the new address (the others apply the same entry
            // at about the same time), then give the old one's requests time to finish.
            let mut state_rx = sh.cluster.state();
            let addr = new.address.clone();
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                state_rx.wait_for(|st| {
                    st.pools
                        .get(pool)
                        .is_some_and(|p| p.backends.iter().any(|b| b.id == id && b.address == addr))
                }),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(spec.drain_ms)).await;
            stop_child(&mut old.child, spec.stop_timeout_ms).await;
            sh.release(old.port);
            new
        }
        None => old,
    };
    report_restarted(sh, pool, &id, epoch).await;
    tracing::info!(pool = %pool, backend = %id, epoch, "rolling restart: instance replaced");
    kept
}

/// Tells the cluster that instance `id` took its turn in restart `epoch`, so the next goes.
async fn report_restarted(sh: &Shared, pool: &str, id: &str, epoch: u64) {
    let cmd = Command::Restarted {
        pool: pool.to_string(),
        epoch,
        backend: id.to_string(),
    };
    let req = format!("sup-restarted:{pool}:{id}:{epoch}");
    for _ in 0..30 {
        match sh.cluster.write_with_id(Some(&req), cmd.clone()).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!("cannot report the restart of {pool}/{id} yet: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One health probe of `addr`: the pool's check if it has one, else a TCP connect.
async fn probe(addr: &str, check: Option<&HealthCheck>) -> Result<(), String> {
    let timeout = Duration::from_millis(check.map_or(1_000, |c| c.timeout_ms));
    tokio::time::timeout(timeout, probe_once(addr, check))
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

async fn probe_once(addr: &str, check: Option<&HealthCheck>) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(c) = check.filter(|c| c.kind == CheckKind::Http) else {
        return Ok(());
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(c.path.as_str())
        .header(http::header::HOST, c.host.as_deref().unwrap_or(addr))
        .header(http::header::USER_AGENT, "gateway-supervisor")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let ranges = StatusRanges::parse(&c.status).map_err(|e| e.to_string())?;
    if !ranges.contains(status) {
        return Err(format!("status {status}"));
    }
    if let Some(want) = &c.body {
        let body = Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if !String::from_utf8_lossy(&body).contains(want.as_str()) {
            return Err(format!("the body does not contain '{want}'"));
        }
    }
    Ok(())
}

/// The host of a `host:port` address (without brackets for IPv6); loopback for a wildcard.
pub fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        _ => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let spec = ProcessSpec {
            backoff_ms: 100,
            max_backoff_ms: 1000,
            ..ProcessSpec::default()
        };
        let ms: Vec<u128> = (1..=6).map(|f| backoff(&spec, f).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(&spec, 200).as_millis(), 1000);
    }

    #[test]
    fn instances_are_reached_on_the_node_host() {
        assert_eq!(host_of("10.0.0.5:7101"), "10.0.0.5");
        assert_eq!(host_of("[::1]:7101"), "::1");
        assert_eq!(host_of("0.0.0.0:7101"), "127.0.0.1");
        assert_eq!(host_of("gw1.internal:7101"), "gw1.internal");
    }

    #[tokio::test]
    async fn probes_check_status_and_body() {
        use hyper::server::conn::http1;
        use hyper::service::service_fn;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let status = if req.uri().path() == "/ok" { 200 } else { 503 };
                    let mut r =
                        http::Response::new(http_body_util::Full::new(Bytes::from("all good")));
                    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, std::convert::Infallible>(r)
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(s), svc));
            }
        });
        let check = |path: &str, body: Option<&str>| HealthCheck {
            path: path.into(),
            body: body.map(String::from),
            ..HealthCheck::default()
        };
        probe(&addr, None).await.unwrap();
        probe(&addr, Some(&check("/ok", Some("good"))))
            .await
            .unwrap();
        let e = probe(&addr, Some(&check("/bad", None))).await.unwrap_err();
        assert!(e.contains("503"), "{e}");
        let e = probe(&addr, Some(&check("/ok", Some("bad"))))
            .await
            .unwrap_err();
        assert!(e.contains("does not contain"), "{e}");
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap().to_string();
        drop(closed);
        assert!(probe(&gone, None).await.unwrap_err().contains("connect"));
    }
}
