//! The system under test: real `gateway` processes on loopback, each with its own data dir,
//! each behind its relay (see [`crate::net`]).

use crate::history::{Op, Process, Recorder, Type};
use crate::http;
use crate::net::{Net, node_ip, relay_ip};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// Where a node lives.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: u64,
    /// The cluster port it binds (`--cluster-addr`).
    pub cluster: SocketAddr,
    /// Its relay, which peers dial (`--cluster-advertise-addr`).
    pub relay: SocketAddr,
    pub admin: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// A node's state as the harness knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// `gateway join` started; not yet confirmed a voter.
    Joining,
    Running,
    /// SIGSTOPped.
    Paused,
    /// Killed (or crashed); its data dir is kept for a restart.
    Down,
    /// Taken out of the cluster; its id is never used again.
    Removed,
}

struct NodeProc {
    spec: NodeSpec,
    child: Option<Child>,
    life: Life,
}

/// Settings of the nodes.
#[derive(Clone, Debug)]
pub struct DbOptions {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub debug_stale_reads: bool,
    /// `RUST_LOG` for the nodes.
    pub log_filter: String,
    /// Per admin request.
    pub request_timeout: Duration,
}

/// The cluster. All methods take `&self`; no lock is held across an `.await`.
pub struct Db {
    pub opts: DbOptions,
    pub net: Net,
    rec: Arc<Recorder>,
    secret: PathBuf,
    nodes: Mutex<BTreeMap<u64, NodeProc>>,
    next_id: AtomicU64,
    /// Nodes the nemesis tried to remove (whether or not it saw the removal complete).
    removal_attempts: Mutex<BTreeSet<u64>>,
}

/// `setpriv --pdeathsig KILL` when this machine has it: nodes die with the harness.
fn pdeathsig() -> Option<&'static Path> {
    static W: OnceLock<Option<PathBuf>> = OnceLock::new();
    W.get_or_init(|| {
        ["/usr/bin/setpriv", "/bin/setpriv"]
            .iter()
            .map(PathBuf::from)
            .find(|p| {
                Command::new(p)
                    .args(["--pdeathsig", "KILL", "--", "true"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
    })
    .as_deref()
}

/// A port free on both addresses (bound and dropped at once).
fn free_port(a: IpAddr, b: Option<IpAddr>) -> Result<u16> {
    for _ in 0..200 {
        let l = TcpListener::bind((a, 0))?;
        let port = l.local_addr()?.port();
        match b {
            None => return Ok(port),
            Some(b) => {
                if TcpListener::bind((b, port)).is_ok() {
                    return Ok(port);
                }
            }
        }
    }
    bail!("no free port on {a}")
}

fn kill_signal(pid: u32, sig: &str) -> Result<()> {
    let st = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !st.success() {
        bail!("kill -{sig} {pid} failed: {st}");
    }
    Ok(())
}

impl Db {
    pub fn new(opts: DbOptions, net: Net, rec: Arc<Recorder>) -> Result<Db> {
        if !opts.bin.is_file() {
            bail!(
                "the gateway binary was not found at {}: build it with `cargo build -p gateway`, or pass --bin PATH",
                opts.bin.display()
            );
        }
        std::fs::create_dir_all(&opts.dir)?;
        // Pin the binary for the whole run: a rebuild of target/debug/gateway meanwhile must
        // not give restarted nodes another version. A hard link keeps the old file alive.
        let mut opts = opts;
        let pinned = opts.dir.join("gateway");
        let _ = std::fs::remove_file(&pinned);
        if std::fs::hard_link(&opts.bin, &pinned).is_ok()
            || std::fs::copy(&opts.bin, &pinned).is_ok()
        {
            opts.bin = pinned;
        }
        let secret = opts.dir.join("cluster-secret");
        {
            use std::os::unix::fs::PermissionsExt;
            let bytes: [u8; 32] = rand::random();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::write(&secret, format!("{hex}\n"))?;
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(Db {
            opts,
            net,
            rec,
            secret,
            nodes: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            removal_attempts: Mutex::new(BTreeSet::new()),
        })
    }

    /// A fresh id, never used before in this cluster.
    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    /// The id [`Db::new_id`] would hand out next.
    pub fn peek_id(&self) -> u64 {
        self.next_id.load(Ordering::SeqCst)
    }

    fn spec(&self, id: u64) -> Result<NodeSpec> {
        let ip = IpAddr::V4(node_ip(id));
        let rip = IpAddr::V4(relay_ip(id));
        let port = free_port(ip, Some(rip))?;
        let base = self.opts.dir.join(format!("n{id}"));
        std::fs::create_dir_all(base.join("data"))?;
        Ok(NodeSpec {
            id,
            cluster: SocketAddr::new(ip, port),
            relay: SocketAddr::new(rip, port),
            admin: SocketAddr::new(ip, free_port(ip, None)?),
            http: SocketAddr::new(ip, free_port(ip, None)?),
            data_dir: base.join("data"),
            log: self.opts.dir.join(format!("n{id}.log")),
        })
    }

    fn spawn(&self, spec: &NodeSpec, args: Vec<String>) -> Result<Child> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        writeln!(
            log,
            "===== jepsen {:.3}s: gateway {} =====",
            self.rec.now() as f64 / 1e9,
            args.join(" ")
        )?;
        let mut cmd = match pdeathsig() {
            Some(w) => {
                let mut c = Command::new(w);
                c.args(["--pdeathsig", "KILL", "--"]).arg(&self.opts.bin);
                c
            }
            None => Command::new(&self.opts.bin),
        };
        cmd.args(&args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GATEWAY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", &self.opts.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        cmd.spawn().context("spawning gateway")
    }

    fn common_args(&self, spec: &NodeSpec) -> Vec<String> {
        let mut a = vec![
            "--id".into(),
            spec.id.to_string(),
            "--data-dir".into(),
            spec.data_dir.display().to_string(),
            "--cluster-addr".into(),
            spec.cluster.to_string(),
            "--cluster-advertise-addr".into(),
            spec.relay.to_string(),
            "--admin-addr".into(),
            spec.admin.to_string(),
            "--http-addr".into(),
            spec.http.to_string(),
            "--cluster-secret-file".into(),
            self.secret.display().to_string(),
        ];
        if self.opts.debug_stale_reads {
            a.push("--debug-stale-reads".into());
        }
        a
    }

    async fn launch(&self, id: u64, args: Vec<String>, life: Life) -> Result<NodeSpec> {
        let spec = self.spec(id)?;
        self.net
            .start_relay(id, spec.relay, spec.cluster)
            .await
            .with_context(|| format!("starting node {id}'s relay on {}", spec.relay))?;
        let mut full = args;
        full.extend(self.common_args(&spec));
        let child = self.spawn(&spec, full)?;
        self.nodes.lock().unwrap().insert(
            id,
            NodeProc {
                spec: spec.clone(),
                child: Some(child),
                life,
            },
        );
        Ok(spec)
    }

    /// Starts the first node with `serve --init` and waits until it leads.
    pub async fn init(&self, within: Duration) -> Result<u64> {
        let id = self.new_id();
        self.launch(id, vec!["serve".into(), "--init".into()], Life::Running)
            .await?;
        let deadline = Instant::now() + within;
        loop {
            self.ensure_alive(id)?;
            if let Ok(v) = self.get_json(id, "/leader").await
                && v["id"].as_u64() == Some(id)
            {
                return Ok(id);
            }
            if Instant::now() > deadline {
                bail!("node {id} did not become leader within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts `gateway join` for a new node through the current members' relays.
    pub async fn spawn_join(&self, id: u64) -> Result<()> {
        let peers: Vec<String> = {
            let nodes = self.nodes.lock().unwrap();
            nodes
                .values()
                .filter(|n| matches!(n.life, Life::Running | Life::Paused | Life::Down))
                .map(|n| n.spec.relay.to_string())
                .collect()
        };
        if peers.is_empty() {
            bail!("no member to join through");
        }
        self.launch(
            id,
            vec!["join".into(), "--peers".into(), peers.join(",")],
            Life::Joining,
        )
        .await?;
        Ok(())
    }

    /// Waits until some member's leader lists `id` as a voter; then it counts as a member.
    pub async fn wait_voter(&self, id: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(why) = self.exited(id) {
                bail!("node {id} exited: {why}");
            }
            if !self.has_process(id) {
                bail!("node {id} has no process (its join gave up)");
            }
            if let Ok(v) = self.voters().await
                && v.contains(&id)
            {
                if let Some(n) = self.nodes.lock().unwrap().get_mut(&id)
                    && n.life == Life::Joining
                {
                    n.life = Life::Running;
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {id} was not a voter within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The voters as the leader reports them (asked through any live member).
    pub async fn voters(&self) -> Result<BTreeSet<u64>> {
        let leader = self.leader().await?;
        let s = self.get_json(leader, "/status").await?;
        if s["role"] != "leader" {
            bail!("node {leader} is named leader but is {}", s["role"]);
        }
        Ok(ids(&s["voters"]))
    }

    /// The leader some live node names (the first that answers).
    pub async fn leader(&self) -> Result<u64> {
        let mut errs = Vec::new();
        for id in self.live() {
            match self.get_json(id, "/leader").await {
                Ok(v) => {
                    if let Some(l) = v["id"].as_u64() {
                        return Ok(l);
                    }
                }
                Err(e) => errs.push(format!("node {id}: {e:#}")),
            }
        }
        Err(anyhow!("no live node knows a leader: {}", errs.join("; ")))
    }

    /// GET on a node's admin port, expecting 200 and JSON.
    pub async fn get_json(&self, id: u64, path: &str) -> Result<Value> {
        let addr = self.spec_of(id)?.admin;
        let r = http::request(addr, "GET", path, &[], None, self.opts.request_timeout)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        if r.status != 200 {
            bail!("GET {path} on node {id}: {} {}", r.status, r.text().trim());
        }
        r.json()
            .ok_or_else(|| anyhow!("GET {path} on node {id}: not JSON"))
    }

    pub fn spec_of(&self, id: u64) -> Result<NodeSpec> {
        self.nodes
            .lock()
            .unwrap()
            .get(&id)
            .map(|n| n.spec.clone())
            .ok_or_else(|| anyhow!("no node {id}"))
    }

    pub fn life(&self, id: u64) -> Option<Life> {
        self.nodes.lock().unwrap().get(&id).map(|n| n.life)
    }

    fn ids_where(&self, f: impl Fn(Life) -> bool) -> Vec<u64> {
        self.nodes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| f(n.life))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Members as the harness knows them (running, paused or down; not removed or joining).
    pub fn members(&self) -> Vec<u64> {
        self.ids_where(|l| matches!(l, Life::Running | Life::Paused | Life::Down))
    }

    /// Nodes whose process runs and is not stopped.
    pub fn live(&self) -> Vec<u64> {
        self.ids_where(|l| matches!(l, Life::Running | Life::Joining))
    }

    /// Nodes clients may send requests to: every node not removed (down ones refuse).
    pub fn targets(&self) -> Vec<u64> {
        self.ids_where(|l| l != Life::Removed)
    }

    /// Nodes in the Joining state.
    pub fn joining(&self) -> Vec<u64> {
        self.ids_where(|l| l == Life::Joining)
    }

    /// SIGKILL and reap.
    pub fn kill(&self, id: u64) -> Result<()> {
        let mut nodes = self.nodes.lock().unwrap();
        let n = nodes.get_mut(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if n.life != Life::Removed {
            n.life = Life::Down;
        }
        Ok(())
    }

    pub fn pause(&self, id: u64) -> Result<()> {
        let mut nodes = self.nodes.lock().unwrap();
        let n = nodes.get_mut(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        if n.life != Life::Running {
            bail!("node {id} is {:?}", n.life);
        }
        let pid = n
            .child
            .as_ref()
            .map(|c| c.id())
            .ok_or_else(|| anyhow!("no process"))?;
        kill_signal(pid, "STOP")?;
        n.life = Life::Paused;
        Ok(())
    }

    pub fn resume(&self, id: u64) -> Result<()> {
        let mut nodes = self.nodes.lock().unwrap();
        let n = nodes.get_mut(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        if n.life != Life::Paused {
            return Ok(());
        }
        let pid = n
            .child
            .as_ref()
            .map(|c| c.id())
            .ok_or_else(|| anyhow!("no process"))?;
        kill_signal(pid, "CONT")?;
        n.life = Life::Running;
        Ok(())
    }

    /// Starts a down node again with only `serve --data-dir DIR`.
    pub fn restart(&self, id: u64) -> Result<()> {
        let spec = {
            let nodes = self.nodes.lock().unwrap();
            let n = nodes.get(&id).ok_or_else(|| anyhow!("no node {id}"))?;
            if n.life != Life::Down {
                return Ok(());
            }
            n.spec.clone()
        };
        let mut args = vec![
            "serve".into(),
            "--data-dir".into(),
            spec.data_dir.display().to_string(),
        ];
        if self.opts.debug_stale_reads {
            args.push("--debug-stale-reads".into());
        }
        let child = self.spawn(&spec, args)?;
        let mut nodes = self.nodes.lock().unwrap();
        if let Some(n) = nodes.get_mut(&id) {
            n.child = Some(child);
            n.life = Life::Running;
        }
        Ok(())
    }

    /// Takes a node out for good (after the cluster removed it): kill, close its relay.
    pub fn retire(&self, id: u64) {
        let _ = self.kill(id);
        self.net.stop_relay(id);
        if let Some(n) = self.nodes.lock().unwrap().get_mut(&id) {
            n.life = Life::Removed;
        }
    }

    /// `DELETE /v1/nodes/{id}` through each live member in turn (the victim last) until one
    /// answers; returns that answer. A 503 or a timeout moves on to the next member.
    pub async fn remove_node(&self, id: u64, per_node: Duration) -> Result<String> {
        self.removal_attempts.lock().unwrap().insert(id);
        let mut order: Vec<u64> = self.live().into_iter().filter(|&n| n != id).collect();
        order.push(id);
        let mut errs = Vec::new();
        for n in order {
            let Ok(spec) = self.spec_of(n) else { continue };
            match http::request(
                spec.admin,
                "DELETE",
                &format!("/v1/nodes/{id}"),
                &[],
                None,
                per_node,
            )
            .await
            {
                Ok(r) if r.status == 200 => return Ok(format!("node {n}: {}", r.text().trim())),
                Ok(r) if r.status != 503 => {
                    bail!(
                        "node {n} refused to remove node {id}: {} {}",
                        r.status,
                        r.text().trim()
                    )
                }
                Ok(r) => errs.push(format!("node {n}: {} {}", r.status, r.text().trim())),
                Err(e) => errs.push(format!("node {n}: {e}")),
            }
        }
        bail!("no member removed node {id}: {}", errs.join("; "))
    }

    /// Nodes the nemesis tried to remove.
    pub fn removal_attempts(&self) -> BTreeSet<u64> {
        self.removal_attempts.lock().unwrap().clone()
    }

    /// Fails if the node's process is gone.
    fn ensure_alive(&self, id: u64) -> Result<()> {
        if let Some(why) = self.exited(id) {
            bail!("node {id} exited: {why}");
        }
        Ok(())
    }

    /// The exit status and end of the log, if the node's process has exited.
    fn exited(&self, id: u64) -> Option<String> {
        let mut nodes = self.nodes.lock().unwrap();
        let n = nodes.get_mut(&id)?;
        let st = n.child.as_mut()?.try_wait().ok()??;
        Some(format!("{st}; end of its log:\n{}", tail(&n.spec.log, 20)))
    }

    /// Records (as a harness `crash` op) every member that exited without being killed, and
    /// marks it down. A node that exits while joining is a failed join (`gateway join` gives
    /// up when it cannot reach the cluster), recorded as `join-exit`; it stays joining, without
    /// a process, for the final settlement. Returns how many crashes.
    pub fn check_crashes(&self) -> usize {
        let mut found = Vec::new();
        {
            let mut nodes = self.nodes.lock().unwrap();
            for (id, n) in nodes.iter_mut() {
                if !matches!(n.life, Life::Running | Life::Paused | Life::Joining) {
                    continue;
                }
                let Some(c) = n.child.as_mut() else { continue };
                if let Ok(Some(st)) = c.try_wait() {
                    found.push((*id, st.to_string(), n.spec.log.clone(), n.life));
                    n.child = None;
                    if n.life != Life::Joining {
                        n.life = Life::Down;
                    }
                }
            }
        }
        let mut crashes = 0;
        for (id, st, log, life) in &found {
            let f = if *life == Life::Joining {
                "join-exit"
            } else {
                crashes += 1;
                "crash"
            };
            let mut op = Op::invoke(
                Process::harness(),
                f,
                None,
                json!({"status": st, "while": format!("{life:?}"), "log_tail": tail(log, 30)}),
            )
            .at(*id);
            op.kind = Type::Info;
            self.rec.record(op);
        }
        crashes
    }

    /// Whether the node has a process (running or stopped).
    pub fn has_process(&self, id: u64) -> bool {
        let mut nodes = self.nodes.lock().unwrap();
        nodes
            .get_mut(&id)
            .and_then(|n| n.child.as_mut())
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills every process and stops every relay.
    pub fn teardown(&self) {
        let ids: Vec<u64> = self.nodes.lock().unwrap().keys().copied().collect();
        for id in ids {
            let _ = self.kill(id);
        }
        self.net.stop_all();
    }

    /// The data dirs (to delete after a passing run).
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        self.nodes
            .lock()
            .unwrap()
            .values()
            .map(|n| {
                n.spec
                    .data_dir
                    .parent()
                    .unwrap_or(&n.spec.data_dir)
                    .to_path_buf()
            })
            .collect()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Ids in a `voters`/`learners` list of `/status`.
pub fn ids(list: &Value) -> BTreeSet<u64> {
    list.as_array()
        .map(|a| a.iter().filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
