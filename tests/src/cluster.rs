//! A cluster of real `gateway` processes on loopback, started in one line.

use crate::http::Http;
use crate::node::Node;
use crate::wait::wait_for;
use crate::{CATCH_UP, ELECTION, note, test_failed};
use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use tempfile::TempDir;

/// GET /leader.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct LeaderInfo {
    pub id: u64,
    pub term: u64,
    pub cluster_addr: String,
    pub admin_addr: String,
    pub http_addr: String,
}

/// A voter or learner in GET /status and GET /v1/nodes.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub cluster_addr: String,
    pub admin_addr: String,
    pub http_addr: String,
    #[serde(default)]
    pub matched_index: Option<u64>,
    #[serde(default)]
    pub lag: Option<u64>,
}

/// GET /status.
#[derive(Clone, Debug, Deserialize)]
pub struct Status {
    pub id: u64,
    pub cluster_id: String,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub revision: u64,
    pub voters: Vec<Member>,
    pub learners: Vec<Member>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
}

impl Status {
    pub fn voter_ids(&self) -> BTreeSet<u64> {
        self.voters.iter().map(|m| m.id).collect()
    }

    pub fn learner_ids(&self) -> BTreeSet<u64> {
        self.learners.iter().map(|m| m.id).collect()
    }

    /// Every member, voters and learners.
    pub fn member_ids(&self) -> BTreeSet<u64> {
        self.voter_ids()
            .union(&self.learner_ids())
            .copied()
            .collect()
    }
}

/// GET /v1/config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Config {
    pub revision: u64,
    pub pools: Vec<Value>,
    pub routes: Vec<Value>,
}

impl Config {
    fn named<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
        list.iter().find(|v| v["name"] == name)
    }

    pub fn pool(&self, name: &str) -> Option<&Value> {
        Self::named(&self.pools, name)
    }

    pub fn route(&self, name: &str) -> Option<&Value> {
        Self::named(&self.routes, name)
    }
}

/// Where a node lives: its id, free loopback addresses, data dir and log file.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: u64,
    pub cluster_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The HTTPS data plane (`--https-addr`); every test node listens on it.
    pub https_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
}

impl NodeSpec {
    /// The four address flags.
    pub fn addr_args(&self) -> Vec<String> {
        vec![
            "--cluster-addr".into(),
            self.cluster_addr.to_string(),
            "--admin-addr".into(),
            self.admin_addr.to_string(),
            "--http-addr".into(),
            self.http_addr.to_string(),
            "--https-addr".into(),
            self.https_addr.to_string(),
        ]
    }
}

/// A free port for a node to bind later. It is taken below the kernel's ephemeral range
/// (`ip_local_port_range`), where the kernel never picks the local port of an outgoing
/// connection or of a port-0 bind, so a port found free here stays free until the node binds
/// it; one from the ephemeral range could be taken meanwhile by any connection on the machine
/// (a node once failed to start with "Address already in use" that way). Ports handed out in
/// this process are never handed out twice, so tests running in parallel do not collide.
pub fn free_port() -> Result<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    static EPHEMERAL: OnceLock<u32> = OnceLock::new();
    const LOW: u32 = 10_000;
    let ephemeral = *EPHEMERAL.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
            .map_or(32_768, u32::from)
    });
    if ephemeral > LOW + 1000 {
        let span = ephemeral - LOW;
        // Test binaries run one after another, but start each at its own place.
        let start = std::process::id() % span;
        let mut given = GIVEN.lock().unwrap();
        for i in 0..span {
            // Below `ephemeral`, itself a u16: the conversion does not fail.
            let Ok(port) = u16::try_from(LOW + (start + i) % span) else {
                continue;
            };
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return Ok(port);
            }
        }
    }
    // No room below the ephemeral range: a port the kernel picks, as before.
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if GIVEN.lock().unwrap().insert(port) {
            return Ok(port);
        }
    }
    bail!("no free port found")
}

/// A free `127.0.0.1` address.
pub fn free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// A cluster of `gateway` processes. Dropping it kills every process; if the test failed it
/// first prints every node's log and keeps the temporary directory.
pub struct TestCluster {
    nodes: Vec<Node>,
    learners: BTreeSet<u64>,
    /// The secret shared by the cluster's nodes (`--cluster-secret-file`).
    pub secret_file: PathBuf,
    root: Option<TempDir>,
    root_path: PathBuf,
    http: Http,
    seq: AtomicU64,
    /// Extra arguments for node `id`'s `serve --init` and `join` (e.g. its TLS files).
    node_args: Option<NodeArgsFn>,
}

/// Extra arguments per node id.
pub type NodeArgsFn = Box<dyn Fn(u64) -> Vec<String> + Send + Sync>;

impl TestCluster {
    /// A temporary directory with a secret file, and no node yet.
    pub fn new() -> Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("gateway-test-")
            .tempdir()
            .context("creating a temporary directory")?;
        let root_path = root.path().to_path_buf();
        let cluster = TestCluster {
            nodes: Vec::new(),
            learners: BTreeSet::new(),
            secret_file: root_path.join("cluster-secret"),
            root: Some(root),
            root_path,
            http: Http::default(),
            seq: AtomicU64::new(0),
            node_args: None,
        };
        cluster.write_secret(&cluster.secret_file)?;
        crate::cli::gateway_bin()?;
        Ok(cluster)
    }

    /// Starts `n` voters: node 1 with `serve --init`, once it leads the others with `join`,
    /// one at a time; then waits until every node is ready and sees all of them as voters.
    pub async fn start(n: u64) -> Result<Self> {
        ensure!(n >= 1, "a cluster needs at least one node");
        let mut c = TestCluster::new()?;
        c.init(1).await?;
        for id in 2..=n {
            c.join(id).await?;
        }
        c.wait_ready().await?;
        note!("cluster of {n} ready in {}", c.root_path.display());
        Ok(c)
    }

    /// Like [`TestCluster::start`], every node started with the extra arguments `args(id)`.
    pub async fn start_with(n: u64, args: NodeArgsFn) -> Result<Self> {
        ensure!(n >= 1, "a cluster needs at least one node");
        let mut c = TestCluster::new()?;
        c.node_args = Some(args);
        c.init(1).await?;
        for id in 2..=n {
            c.join(id).await?;
        }
        c.wait_ready().await?;
        note!("cluster of {n} ready in {}", c.root_path.display());
        Ok(c)
    }

    /// The temporary directory holding data dirs, logs and the secret.
    pub fn dir(&self) -> &Path {
        &self.root_path
    }

    /// Writes a new random secret file.
    pub fn write_secret(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let secret: [u8; 32] = rand::random();
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(path, format!("{hex}\n"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    }

    /// A new node's place: free addresses, an empty data dir, a log file.
    pub fn spec(&self, id: u64) -> Result<NodeSpec> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let base = self.root_path.join(format!("node{id}-{seq}"));
        let data_dir = base.join("data");
        std::fs::create_dir_all(&data_dir)?;
        Ok(NodeSpec {
            id,
            cluster_addr: free_addr()?,
            admin_addr: free_addr()?,
            http_addr: free_addr()?,
            https_addr: free_addr()?,
            data_dir,
            log_path: base.join("gateway.log"),
        })
    }

    /// The arguments of `serve --init` for `spec`.
    pub fn init_args(&self, spec: &NodeSpec) -> Vec<String> {
        let mut args = vec![
            "serve".into(),
            "--id".into(),
            spec.id.to_string(),
            "--data-dir".into(),
            spec.data_dir.display().to_string(),
        ];
        args.extend(spec.addr_args());
        args.extend([
            "--init".into(),
            "--cluster-secret-file".into(),
            self.secret_file.display().to_string(),
        ]);
        if let Some(extra) = &self.node_args {
            args.extend(extra(spec.id));
        }
        args
    }

    /// The arguments of `join` for `spec`, through every running node, with `secret`.
    pub fn join_args(&self, spec: &NodeSpec, learner: bool, secret: &Path) -> Vec<String> {
        let mut args = vec![
            "join".into(),
            "--id".into(),
            spec.id.to_string(),
            "--peers".into(),
            self.peers(),
            "--data-dir".into(),
            spec.data_dir.display().to_string(),
        ];
        args.extend(spec.addr_args());
        args.extend(["--cluster-secret-file".into(), secret.display().to_string()]);
        if learner {
            args.push("--learner".into());
        }
        if let Some(extra) = &self.node_args {
            args.extend(extra(spec.id));
        }
        args
    }

    /// Starts node `id` with `serve --init` and waits until it leads.
    pub async fn init(&mut self, id: u64) -> Result<&Node> {
        self.init_with(id, &[]).await
    }

    /// Like [`TestCluster::init`], with extra flags for the node.
    pub async fn init_with(&mut self, id: u64, extra: &[&str]) -> Result<&Node> {
        let spec = self.spec(id)?;
        let mut args = self.init_args(&spec);
        args.extend(extra.iter().map(|a| a.to_string()));
        let node = Node::spawn(&spec, args, self.http.clone())?;
        self.add(node)?;
        let node = self.node(id);
        wait_for(
            &format!("node {id} (serve --init) to lead"),
            ELECTION,
            || async {
                node.ensure_running()?;
                let l = node.leader().await?;
                ensure!(l.id == id, "/leader names node {}", l.id);
                Ok(())
            },
        )
        .await?;
        Ok(self.node(id))
    }

    /// Starts `gateway join` for a new node `id` without waiting for anything.
    pub fn spawn_join(&mut self, id: u64, learner: bool) -> Result<&Node> {
        let spec = self.spec(id)?;
        let args = self.join_args(&spec, learner, &self.secret_file);
        let node = Node::spawn(&spec, args, self.http.clone())?;
        if learner {
            self.learners.insert(id);
        }
        self.add(node)?;
        Ok(self.node(id))
    }

    /// Joins node `id` as a voter and waits until the leader lists it among the voters.
    pub async fn join(&mut self, id: u64) -> Result<&Node> {
        self.spawn_join(id, false)?;
        self.wait_member(id, false).await?;
        Ok(self.node(id))
    }

    /// Joins node `id` as a learner (`join --learner`) and waits until the leader lists it.
    pub async fn join_learner(&mut self, id: u64) -> Result<&Node> {
        self.spawn_join(id, true)?;
        self.wait_member(id, true).await?;
        Ok(self.node(id))
    }

    fn add(&mut self, node: Node) -> Result<()> {
        ensure!(
            self.get(node.id).is_none(),
            "node {} is already in this cluster handle",
            node.id
        );
        self.nodes.push(node);
        Ok(())
    }

    /// Waits until the leader's /status lists `id` as a voter (or as a learner).
    pub async fn wait_member(&self, id: u64, learner: bool) -> Result<Status> {
        let what = if learner { "learner" } else { "voter" };
        wait_for(
            &format!("node {id} to be a {what} on the leader"),
            CATCH_UP,
            || async {
                self.node(id).ensure_running()?;
                let s = self.leader_status().await?;
                let ok = if learner {
                    s.learner_ids().contains(&id)
                } else {
                    s.voter_ids().contains(&id)
                };
                ensure!(
                    ok,
                    "leader {} has voters {:?}, learners {:?}",
                    s.id,
                    s.voter_ids(),
                    s.learner_ids()
                );
                Ok(s)
            },
        )
        .await
    }

    /// The node with this id; panics if the handle has none.
    pub fn node(&self, id: u64) -> &Node {
        self.get(id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// The node with this id, if the handle has one.
    pub fn get(&self, id: u64) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Every node of the handle, in the order they were started.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The ids of every node of the handle.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The nodes whose process runs and is not stopped.
    pub fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.is_live())
    }

    /// Takes a node out of the handle (after it was removed from the cluster); the caller owns
    /// its process now (dropping it kills it).
    pub fn forget(&mut self, id: u64) -> Result<Node> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        self.learners.remove(&id);
        Ok(self.nodes.remove(i))
    }

    /// The cluster addresses of the running nodes, comma separated (for `--peers`).
    pub fn peers(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.cluster_addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn http(&self) -> &Http {
        &self.http
    }

    /// The leader as the first live node that knows one answers GET /leader.
    pub async fn leader(&self) -> Result<LeaderInfo> {
        let mut errors = Vec::new();
        for n in self.live() {
            match n.leader().await {
                Ok(l) => return Ok(l),
                Err(e) => errors.push(format!("node {}: {e:#}", n.id)),
            }
        }
        bail!("no live node knows a leader: {}", errors.join("; "))
    }

    /// The /status of the node that says it leads.
    pub async fn leader_status(&self) -> Result<Status> {
        let l = self.leader().await?;
        let node = self
            .get(l.id)
            .ok_or_else(|| anyhow!("leader {} is not in this handle", l.id))?;
        let s = node.status().await?;
        ensure!(
            s.role == "leader",
            "node {} is named leader but its role is {}",
            l.id,
            s.role
        );
        Ok(s)
    }

    /// Waits until every live node names the same live leader in the same term, and returns it.
    pub async fn wait_leader(&self, timeout: std::time::Duration) -> Result<LeaderInfo> {
        let l = wait_for(
            "all live nodes to agree on a live leader",
            timeout,
            || async {
                self.check_crashes()?;
                let mut seen = Vec::new();
                for n in self.live() {
                    let l = n.leader().await.with_context(|| format!("node {}", n.id))?;
                    seen.push((n.id, l));
                }
                let (_, first) = seen.first().ok_or_else(|| anyhow!("no live node"))?;
                ensure!(
                    seen.iter()
                        .all(|(_, l)| l.id == first.id && l.term == first.term),
                    "nodes disagree: {:?}",
                    seen.iter()
                        .map(|(n, l)| format!("node {n}: leader {} term {}", l.id, l.term))
                        .collect::<Vec<_>>()
                );
                let leader = self
                    .get(first.id)
                    .ok_or_else(|| anyhow!("leader {} is not in this handle", first.id))?;
                ensure!(
                    leader.is_live(),
                    "the named leader {} is not live",
                    first.id
                );
                Ok(first.clone())
            },
        )
        .await?;
        note!("leader is node {} (term {})", l.id, l.term);
        Ok(l)
    }

    /// Waits until every live node answers /readyz 200 and its /status lists exactly the
    /// handle's voters and learners and the same leader.
    pub async fn wait_ready(&self) -> Result<()> {
        let voters: BTreeSet<u64> = self
            .ids()
            .into_iter()
            .filter(|id| !self.learners.contains(id))
            .collect();
        let learners = self.learners.clone();
        wait_for(
            &format!("every live node ready, with voters {voters:?} and learners {learners:?}"),
            CATCH_UP,
            || async {
                self.check_crashes()?;
                let mut leaders = BTreeSet::new();
                for n in self.live() {
                    n.get("/readyz")
                        .await?
                        .expect(200)
                        .with_context(|| format!("node {}", n.id))?;
                    let s = n.status().await?;
                    ensure!(
                        s.voter_ids() == voters && s.learner_ids() == learners,
                        "node {} has voters {:?}, learners {:?}",
                        n.id,
                        s.voter_ids(),
                        s.learner_ids()
                    );
                    leaders.insert(s.leader);
                }
                ensure!(
                    leaders.len() == 1 && !leaders.contains(&None),
                    "nodes name leaders {leaders:?}"
                );
                Ok(())
            },
        )
        .await
    }

    /// Fails if a node's process exited without the harness killing or stopping it.
    pub fn check_crashes(&self) -> Result<()> {
        for n in &self.nodes {
            if let Some(why) = n.crashed() {
                bail!("{why}");
            }
        }
        Ok(())
    }

    /// A live node other than `not`.
    pub fn other_than(&self, not: &[u64]) -> Result<&Node> {
        self.live()
            .find(|n| !not.contains(&n.id))
            .ok_or_else(|| anyhow!("no live node other than {not:?}"))
    }

    /// A live node that is not the current leader (a follower or learner).
    pub async fn follower(&self) -> Result<&Node> {
        let l = self.leader().await?;
        self.other_than(&[l.id])
    }

    /// Prints the end of every node's log.
    pub fn print_logs(&self) {
        for n in &self.nodes {
            n.print_log(300);
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            let _ = n.kill();
        }
        if test_failed() {
            self.print_logs();
            if let Some(root) = self.root.take() {
                let kept = root.keep();
                eprintln!(
                    "the test failed: its data dirs and logs are kept in {}",
                    kept.display()
                );
            }
        }
    }
}
