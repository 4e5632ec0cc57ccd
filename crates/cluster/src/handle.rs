//! The [`Cluster`] handle: bootstrap, leader-forwarded operations, reads, membership, status.

use crate::auth::{ClientAuth, Secret, ServerAuth};
use crate::elector::{self, Contact, Timing};
use crate::error::ClusterError;
use crate::forward::Forwarder;
use crate::gather::gather;
use crate::network::{MAX_MESSAGE, Network, Peers};
use crate::service::{ClusterService, RaftService};
use gateway_model::{Applied, Command, NodeAddr, NodeId, Proposal, Request, Response, State};
use gateway_store::{LogStore, MetaStore, Raft, Storage};
use gateway_wire::cluster::cluster_server::ClusterServer;
use gateway_wire::cluster::raft_server::RaftServer;
use gateway_wire::cluster::{
    CampaignRequest, HelloRequest, HoldElectionsRequest, JoinRequest, PreVoteReply, PreVoteRequest,
    ReadIndexRequest, RemoveNodeRequest, ReportHealthRequest, TransferLeaderRequest,
};
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tonic::service::interceptor::InterceptedService;

const META_CLUSTER_ID: &str = "cluster_id";
/// Marks a call that one node forwarded to the node it believes leads: the receiver serves it
/// itself or refuses, never forwards again, so forwarding cannot loop.
pub(crate) const FORWARDED: &str = "x-gateway-forwarded";

/// Tunables of one node's Raft participation.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub id: NodeId,
    pub addr: NodeAddr,
    pub secret: Secret,
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Minimum election timeout; the maximum is twice this.
    pub election_timeout: Duration,
    /// Build a snapshot (and purge the log behind it) every this many log entries.
    pub snapshot_every: u64,
    /// Source address of connections to peers (the address this node listens on), if specific.
    pub source_ip: Option<std::net::IpAddr>,
    /// FOR TESTING THE CHECKERS ONLY: answer every read from local state, without asking the
    /// leader, which breaks linearizability on followers. A fault-injection run with it must fail.
    pub debug_stale_reads: bool,
    /// Mutual TLS on the cluster port (server and peer clients); plaintext when `None`.
    pub tls: Option<crate::tls::ClusterTls>,
}

/// How a node enters the cluster on start.
#[derive(Clone, Debug)]
pub enum Bootstrap {
    /// Create a new one-node cluster (does nothing if this data dir already holds one).
    Init,
    /// Join through any of these members' cluster addresses (resumes if already a member).
    Join { peers: Vec<String>, learner: bool },
    /// Come back with the log, vote and state in the data dir.
    Resume,
}

/// Read consistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// The leader confirms its leadership with a quorum; this node waits until it has applied
    /// everything committed before the read. Sees every write acknowledged before it started.
    Linearizable,
    /// The leader's commit index without a quorum round: this node waits until it has applied
    /// what the leader has committed. Cheaper than linearizable; only a leader deposed without
    /// knowing it yet (a partition, for at most an election timeout) can make it stale.
    Leader,
    /// This node's state as it is: may lag the leader by what is in flight.
    Stale,
}

/// The current leader as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaderInfo {
    pub id: NodeId,
    pub term: u64,
    pub cluster_addr: String,
    pub admin_addr: String,
    pub http_addr: String,
}

/// One member in [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    pub id: NodeId,
    pub cluster_addr: String,
    pub admin_addr: String,
    pub http_addr: String,
    /// Highest log index known replicated to it (leader only).
    pub matched_index: Option<u64>,
    /// Entries it is behind the leader's last log index (leader only).
    pub lag: Option<u64>,
}

/// This node's view of the cluster.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub id: NodeId,
    pub cluster_id: String,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub revision: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub voters: Vec<Member>,
    pub learners: Vec<Member>,
}

/// A node's membership in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
    leader: watch::Receiver<Option<LeaderInfo>>,
}

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) addr: NodeAddr,
    pub(crate) raft: Raft,
    pub(crate) cluster_id: Arc<OnceLock<String>>,
    pub(crate) state: watch::Receiver<Arc<State>>,
    meta: MetaStore,
    forward: Arc<Peers>,
    membership_lock: tokio::sync::Mutex<()>,
    pub(crate) nonce: u64,
    pub(crate) counter: AtomicU64,
    stop: watch::Sender<bool>,
    debug_stale_reads: bool,
    /// Set while this leader hands over: new writes wait for the next leader.
    pub(crate) transferring: std::sync::atomic::AtomicBool,
    /// Writes this leader took and has not answered yet; a handover waits for them to end.
    in_flight: InFlight,
    /// Nodes' health reports, held while this node leads ([`crate::overseer`]).
    pub(crate) reports: std::sync::Mutex<crate::overseer::Reports>,
    /// Last contact with a leader and any election hold, for the elector.
    pub(crate) contact: Contact,
    election_timeout_max: Duration,
    /// A handle on this node's log (openraft owns another), to tell its last entry in pre-votes.
    log: LogStore,
    /// Writes to propose while this node leads ([`spawn_proposer`]).
    proposals: mpsc::UnboundedSender<Pending>,
    /// Writes this node carried to the leader, in all (for metrics).
    forwarded_writes: AtomicU64,
    /// Carries writes to the leader, gathered into batches.
    forwarder: Forwarder,
}

// One per forwarded call, never on the request path; boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Op {
    Write(Request),
    Join {
        id: NodeId,
        addr: NodeAddr,
        learner: bool,
    },
    Remove(NodeId),
    ReadIndex {
        quorum: bool,
    },
    Transfer {
        to: Option<NodeId>,
    },
    Report(crate::overseer::Report),
}

pub(crate) enum Out {
    Write(Response),
    Join(NodeId),
    Removed,
    ReadIndex(u64),
    Transferred(NodeId),
    Reported,
}

impl Cluster {
    /// Starts Raft on `storage`, serves the cluster port on `listener`, and enters the cluster
    /// as `bootstrap` says. Returns once this node is a member (after a join: caught up).
    /// `extra` gRPC services (the admin API) are served on the same port, outside the cluster
    /// secret check: they authenticate their own callers.
    pub async fn start(
        opts: ClusterOptions,
        storage: Storage,
        listener: TcpListener,
        bootstrap: Bootstrap,
        extra: tonic::service::Routes,
    ) -> Result<Cluster, ClusterError> {
        let cluster_id = Arc::new(OnceLock::new());
        if let Some(id) = storage.meta.get(META_CLUSTER_ID)? {
            let _ = cluster_id.set(id);
        }
        let client_auth = ClientAuth::new(&opts.secret, cluster_id.clone());
        // Election timing. Measured on this kind of machine (2 cores, loopback, sled on the local
        // disk, `bench/fsync.py`): fsync of a small write took 0.16 ms at the median and 0.85 ms at
        // worst on a quiet machine, and 3.6 ms median, 20 ms p99, 51 ms worst while builds loaded it
        // (200 samples each), so one replication round, which waits for the follower's flush,
        // stays well under 60 ms. Voters refuse votes for the leader lease (the maximum election
        // timeout, 200 ms by default) after their last heartbeat; our elector (elector.rs) lets
        // the first-ranked survivor campaign after 250 ms of silence and the next 100 ms later,
        // far beyond the worst stall seen, and only after a pre-vote, so spurious elections stay
        // rare. The heartbeat (25 ms by default) is also openraft 0.9's timeout for one
        // AppendEntries, and an append that timed out is resent only at the next heartbeat or
        // write: with 50 ms, the write benchmark's p99 sat at ~50 ms and 25 ms gave 1.3x the
        // writes/s (bench/README.md). openraft's own timer (one fixed random timeout per process, checked on a tick of
        // 1.5 heartbeats) let both survivors campaign on the same tick and split the vote in
        // about half the kills measured (0.7-1.8 s instead of 0.4 s, bench/README.md). Both
        // timings are flags.
        let config = openraft::Config {
            cluster_name: "gateway".into(),
            heartbeat_interval: opts.heartbeat.as_millis() as u64,
            election_timeout_min: opts.election_timeout.as_millis() as u64,
            election_timeout_max: opts.election_timeout.as_millis() as u64 * 2,
            // Chunks are JSON-encoded byte arrays (about 4x), well under the message limit.
            // Elections are started by our own elector (elector.rs), not openraft's timer.
            enable_elect: false,
            snapshot_max_chunk_size: 512 * 1024,
            install_snapshot_timeout: 5_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_every),
            max_in_snapshot_log_to_keep: opts.snapshot_every,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Refused(format!("invalid raft timing: {e}")))?;
        let state = storage.sm.subscribe();
        let network = Network {
            peers: Peers::new(client_auth.clone(), opts.source_ip, opts.tls.clone()),
        };
        let log = storage.log.clone();
        let raft = Raft::new(opts.id, Arc::new(config), network, storage.log, storage.sm)
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))?;
        let (stop, stop_rx) = watch::channel(false);
        let proposals = spawn_proposer(raft.clone());
        let forward = Peers::new(client_auth, opts.source_ip, opts.tls.clone());
        let inner = Arc::new(Inner {
            id: opts.id,
            addr: opts.addr.clone(),
            raft,
            cluster_id: cluster_id.clone(),
            state,
            meta: storage.meta,
            forward: forward.clone(),
            forwarder: Forwarder::new(forward),
            membership_lock: tokio::sync::Mutex::new(()),
            nonce: rand::random(),
            counter: AtomicU64::new(0),
            debug_stale_reads: opts.debug_stale_reads,
            transferring: std::sync::atomic::AtomicBool::new(false),
            in_flight: InFlight::default(),
            reports: std::sync::Mutex::new(Default::default()),
            contact: Contact::new(),
            election_timeout_max: opts.election_timeout * 2,
            log,
            proposals,
            stop,
            forwarded_writes: AtomicU64::new(0),
        });
        spawn_server(
            inner.clone(),
            listener,
            ServerAuth::new(&opts.secret, cluster_id),
            extra,
            stop_rx,
            opts.tls.clone(),
        );
        elector::spawn(
            inner.clone(),
            Timing::from_election_timeout(opts.election_timeout),
            inner.stop.subscribe(),
        );
        tokio::spawn(crate::overseer::run(inner.clone(), inner.stop.subscribe()));
        let leader = spawn_leader_watch(&inner.raft);
        let cluster = Cluster { inner, leader };
        match bootstrap {
            Bootstrap::Init => cluster.init().await?,
            Bootstrap::Join { peers, learner } => cluster.join(&peers, learner).await?,
            Bootstrap::Resume => {
                if cluster.inner.cluster_id.get().is_none() {
                    cluster.shutdown().await;
                    return Err(ClusterError::Refused(
                        "this data dir holds no cluster yet: start the first node with --init, or add this one with `gateway join --peers ...`".into(),
                    ));
                }
            }
        }
        Ok(cluster)
    }

    async fn init(&self) -> Result<(), ClusterError> {
        let raft = &self.inner.raft;
        if raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))?
        {
            tracing::info!("data dir already holds a cluster; --init ignored, resuming");
            return Ok(());
        }
        if self.inner.cluster_id.get().is_some() {
            return Err(ClusterError::Refused(
                "this data dir already belongs to a cluster (it joined one): start it without --init".into(),
            ));
        }
        let id = format!("{:016x}", rand::random::<u64>());
        self.inner.meta.set(META_CLUSTER_ID, &id)?;
        let _ = self.inner.cluster_id.set(id.clone());
        let members = BTreeMap::from([(self.inner.id, self.inner.addr.clone())]);
        raft.initialize(members)
            .await
            .map_err(|e| ClusterError::Refused(format!("cannot initialise: {e}")))?;
        tracing::info!(cluster_id = %id, "initialised a new cluster");
        Ok(())
    }

    async fn join(&self, peers: &[String], learner: bool) -> Result<(), ClusterError> {
        if peers.is_empty() {
            return Err(ClusterError::Refused(
                "no peers given: pass --peers with the cluster address of at least one member"
                    .into(),
            ));
        }
        let inner = &self.inner;
        if let Some(ours) = inner.cluster_id.get() {
            // Already a member of some cluster: make sure it is this one, then resume.
            for peer in peers {
                let Ok(mut c) = inner.forward.cluster(peer) else {
                    continue;
                };
                match tokio::time::timeout(Duration::from_secs(3), c.hello(HelloRequest {})).await {
                    Ok(Ok(r)) if &r.get_ref().cluster_id == ours => {
                        tracing::info!("already a member of cluster {ours}; resuming");
                        return Ok(());
                    }
                    Ok(Ok(r)) => {
                        return Err(ClusterError::Refused(format!(
                            "this data dir belongs to cluster {ours}, but peer {peer} is in cluster {}: use a fresh --data-dir to join it",
                            r.get_ref().cluster_id
                        )));
                    }
                    Ok(Err(s)) if matches!(s.code(), tonic::Code::PermissionDenied) => {
                        return Err(ClusterError::Refused(format!(
                            "this data dir belongs to cluster {ours}, but peer {peer} is in another cluster: use a fresh --data-dir to join it"
                        )));
                    }
                    _ => continue,
                }
            }
            tracing::warn!("no peer answered; resuming as a member of cluster {ours}");
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut failures = BTreeMap::new();
        let mut next: Vec<String> = peers.to_vec();
        loop {
            for peer in std::mem::take(&mut next) {
                let req = JoinRequest {
                    id: inner.id,
                    cluster_addr: inner.addr.cluster_addr.clone(),
                    admin_addr: inner.addr.admin_addr.clone(),
                    http_addr: inner.addr.http_addr.clone(),
                    learner,
                };
                let mut client = match inner.forward.cluster(&peer) {
                    Ok(c) => c,
                    Err(s) => return Err(ClusterError::Refused(s.message().to_string())),
                };
                let res = tokio::time::timeout(Duration::from_secs(120), client.join(req)).await;
                match res {
                    Ok(Ok(reply)) => {
                        let id = reply.into_inner().cluster_id;
                        inner.meta.set(META_CLUSTER_ID, &id)?;
                        let _ = inner.cluster_id.set(id.clone());
                        tracing::info!(cluster_id = %id, via = %peer, learner, "joined the cluster");
                        return Ok(());
                    }
                    Ok(Err(status)) => match ClusterError::from(status) {
                        e @ (ClusterError::Unauthenticated(_)
                        | ClusterError::Refused(_)
                        | ClusterError::NotFound(_)) => {
                            return Err(ClusterError::Refused(format!(
                                "peer {peer} refused the join: {e}"
                            )));
                        }
                        ClusterError::NotLeader {
                            leader: Some((_, addr)),
                        } if !next.contains(&addr) => {
                            next.push(addr);
                        }
                        e => {
                            failures.insert(peer.clone(), e.to_string());
                        }
                    },
                    Err(_) => {
                        failures.insert(peer.clone(), "no answer within 120s".into());
                    }
                }
            }
            if Instant::now() >= deadline {
                let why: Vec<String> = failures.iter().map(|(p, e)| format!("{p}: {e}")).collect();
                return Err(ClusterError::Unreachable(format!(
                    "could not join through any peer within 20s ({}); check --peers and that those nodes run",
                    why.join("; ")
                )));
            }
            if next.is_empty() {
                tokio::time::sleep(Duration::from_millis(250)).await;
                next = peers.to_vec();
            }
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The cluster id (known once initialised or joined).
    pub fn cluster_id(&self) -> String {
        self.inner.cluster_id.get().cloned().unwrap_or_default()
    }

    /// Sends this node's view of backend health (the backends it sees down) to the leader,
    /// which judges health from every node's view; it is also this node's liveness signal.
    pub async fn report_health(
        &self,
        down: BTreeSet<gateway_model::SeenDown>,
    ) -> Result<(), ClusterError> {
        let op = Op::Report(crate::overseer::Report {
            node: self.inner.id,
            down,
        });
        self.inner
            .leader_call(op, Duration::from_secs(2), false)
            .await
            .map(|_| ())
    }

    /// The replicated state, updated after every applied change.
    pub fn state(&self) -> watch::Receiver<Arc<State>> {
        self.inner.state.clone()
    }

    /// The leader as this node knows it, updated on every change.
    pub fn leader_watch(&self) -> watch::Receiver<Option<LeaderInfo>> {
        self.leader.clone()
    }

    /// The current leader, if known.
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.leader.borrow().clone()
    }

    /// Proposes a command through the leader (wherever it is) and waits until it is committed
    /// and applied there. Retries on another leader with the same request id are applied once.
    pub async fn write(&self, command: Command) -> Result<Response, ClusterError> {
        self.write_with_id(None, command).await
    }

    /// Like [`Cluster::write`], with the request id a client chose (and keeps when it retries
    /// through another node), so a retried write still applies once. Client ids live in their
    /// own namespace: they cannot collide with the ids nodes choose.
    pub async fn write_with_id(
        &self,
        client_id: Option<&str>,
        command: Command,
    ) -> Result<Response, ClusterError> {
        let id = match client_id {
            Some(c) => format!("client:{c}"),
            None => {
                let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
                format!("{:x}-{:x}-{n}", self.inner.id, self.inner.nonce)
            }
        };
        let req = Request { id, command };
        match self
            .inner
            .leader_call(Op::Write(req), Duration::from_secs(10), false)
            .await?
        {
            Out::Write(r) => Ok(r),
            _ => Err(ClusterError::Protocol("unexpected reply to a write".into())),
        }
    }

    /// The replicated state, read at the given consistency.
    pub async fn read(&self, consistency: Consistency) -> Result<Arc<State>, ClusterError> {
        if consistency != Consistency::Stale && !self.inner.debug_stale_reads {
            let op = Op::ReadIndex {
                quorum: consistency == Consistency::Linearizable,
            };
            let index = match self
                .inner
                .leader_call(op, Duration::from_secs(5), false)
                .await?
            {
                Out::ReadIndex(i) => i,
                _ => {
                    return Err(ClusterError::Protocol(
                        "unexpected reply to a read index".into(),
                    ));
                }
            };
            self.inner
                .raft
                .wait(Some(Duration::from_secs(5)))
                .applied_index_at_least(Some(index), "linearizable read")
                .await
                .map_err(|e| {
                    ClusterError::NoLeader(format!(
                        "this node did not catch up with the leader: {e}"
                    ))
                })?;
        }
        Ok(self.inner.state.borrow().clone())
    }

    /// Takes a node out of the cluster (voter or learner) and retires its id for good.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ClusterError> {
        self.inner
            .leader_call(Op::Remove(id), Duration::from_secs(20), false)
            .await?;
        Ok(())
    }

    /// Hands leadership to voter `to`, or to the most up-to-date other voter. Returns the new
    /// leader's id. Writes arriving meanwhile wait for the new leader.
    pub async fn transfer_leader(&self, to: Option<NodeId>) -> Result<NodeId, ClusterError> {
        match self
            .inner
            .leader_call(Op::Transfer { to }, Duration::from_secs(10), false)
            .await?
        {
            Out::Transferred(id) => Ok(id),
            _ => Err(ClusterError::Protocol(
                "unexpected reply to a leader transfer".into(),
            )),
        }
    }

    /// Whether this node is the leader now.
    /// Writes this node has carried to the leader since it started (attempts, retries
    /// through elections included).
    pub fn forwarded_writes(&self) -> u64 {
        self.inner.forwarded_writes.load(Ordering::Relaxed)
    }

    /// Calls this node made to carry writes to the leader: concurrent writes share one.
    pub fn forward_calls(&self) -> u64 {
        self.inner.forwarder.calls()
    }

    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Whether a leader is known and this node has applied everything it knows committed.
    pub async fn ready(&self) -> Result<(), String> {
        let st = self.status().await;
        if st.leader.is_none() {
            return Err("no leader known".into());
        }
        if st.applied_index < st.committed_index {
            return Err(format!(
                "applied index {:?} is behind committed index {:?}",
                st.applied_index, st.committed_index
            ));
        }
        if !st.voters.iter().chain(&st.learners).any(|m| m.id == st.id) {
            return Err("this node is not a member of the cluster".into());
        }
        Ok(())
    }

    /// This node's view of the cluster.
    pub async fn status(&self) -> Status {
        let raft = &self.inner.raft;
        let m = raft.metrics().borrow().clone();
        let committed = raft
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await
            .ok()
            .flatten();
        let membership = m.membership_config.membership();
        let last = m.last_log_index.unwrap_or(0);
        let member = |id: NodeId| {
            let node = membership.get_node(&id).cloned().unwrap_or_default();
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).map(|l| l.map(|l| l.index)))
                .map(|x| x.unwrap_or(0));
            Member {
                id,
                cluster_addr: node.cluster_addr,
                admin_addr: node.admin_addr,
                http_addr: node.http_addr,
                matched_index: matched,
                lag: matched.map(|x| last.saturating_sub(x)),
            }
        };
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        Status {
            id: self.inner.id,
            cluster_id: self.cluster_id(),
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            committed_index: committed,
            applied_index: m.last_applied.map(|l| l.index),
            revision: self.inner.state.borrow().revision,
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters: voters.iter().map(|&id| member(id)).collect(),
            learners: membership
                .learner_ids()
                .filter(|id| !voters.contains(id))
                .map(member)
                .collect(),
        }
    }

    /// Stops serving the cluster port and stops Raft.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let _ = self.inner.raft.shutdown().await;
    }
}

fn spawn_server(
    inner: Arc<Inner>,
    listener: TcpListener,
    auth: ServerAuth,
    extra: tonic::service::Routes,
    mut stop: watch::Receiver<bool>,
    tls: Option<crate::tls::ClusterTls>,
) {
    let raft_svc = RaftServer::new(RaftService(inner.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let cluster_svc = ClusterServer::new(ClusterService(inner))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    // The builder's `tcp_nodelay` only reaches connections it accepts itself, not these: set it
    // here. Without it, a reply written in two pieces waited for the peer's delayed ACK (40 ms)
    // whenever an earlier piece was still unacknowledged.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            if let Ok(c) = &conn
                && let Err(e) = c.set_nodelay(true)
            {
                tracing::debug!("cluster port: cannot set TCP_NODELAY: {e}");
            }
            conn
        },
    );
    tokio::spawn(async move {
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            builder = match builder.tls_config(tls.server()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("cluster port: TLS configuration refused: {e}");
                    return;
                }
            };
        }
        let res = builder
            .add_routes(extra)
            .add_service(InterceptedService::new(raft_svc, auth.clone()))
            .add_service(InterceptedService::new(cluster_svc, auth))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!("cluster port stopped: {e}");
        }
    });
}

fn spawn_leader_watch(raft: &Raft) -> watch::Receiver<Option<LeaderInfo>> {
    let mut metrics = raft.metrics();
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let info = {
                let m = metrics.borrow_and_update();
                m.current_leader.and_then(|id| {
                    m.membership_config
                        .membership()
                        .get_node(&id)
                        .map(|n| LeaderInfo {
                            id,
                            term: m.current_term,
                            cluster_addr: n.cluster_addr.clone(),
                            admin_addr: n.admin_addr.clone(),
                            http_addr: n.http_addr.clone(),
                        })
                })
            };
            tx.send_if_modified(|cur| {
                if *cur != info {
                    *cur = info;
                    true
                } else {
                    false
                }
            });
            if metrics.changed().await.is_err() {
                tx.send_replace(None);
                return;
            }
        }
    });
    rx
}

/// Awaits a forwarded call for at most `limit`; running out is UNAVAILABLE (unreachable).
pub(crate) async fn timed<T>(
    addr: &str,
    limit: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::unavailable(format!(
            "leader at {addr} did not answer within {limit:?}"
        ))),
    }
}

/// A call marked as forwarded (see [`FORWARDED`]): the receiver serves it or refuses it.
pub(crate) fn forwarded<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    r
}

/// A write waiting to be proposed, and where its response goes.
type Pending = (Request, oneshot::Sender<Result<Response, ClusterError>>);

/// A count of writes in progress, and a way to wait until there are none.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl InFlight {
    /// Counts one write until the returned guard is dropped.
    fn enter(&self) -> InFlightGuard<'_> {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self)
    }

    /// Returns once no write is in progress.
    async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// How many log entries of client writes may be in flight (proposed, not yet applied) at once.
/// While they are, newer writes wait and are then proposed together as one entry: an idle
/// cluster proposes each write at once, a busy one commits many per entry (one log append,
/// one flush, one replication message and one apply call for the lot), which is what raises
/// the write rate under load (bench/README.md, "Raft writes").
const PROPOSALS_IN_FLIGHT: usize = 2;
/// The most requests one entry carries (its size stays far under the gRPC message limit:
/// requests are bounded by the admin API's body limit).
const MAX_GROUP: usize = 256;

/// Proposes the writes sent on the returned channel: each alone when nothing else waits, else
/// gathered into groups (see [`PROPOSALS_IN_FLIGHT`] and [`gather`]). Every write gets its own
/// response, or the error of its entry's proposal (not the leader any more, say: the caller
/// then retries on the new leader with the same request id, which the state machine applies
/// once).
fn spawn_proposer(raft: Raft) -> mpsc::UnboundedSender<Pending> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
    let slots = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut group = vec![first];
            gather(&mut rx, |p| {
                group.push(p);
                group.len() < MAX_GROUP
            })
            .await;
            let raft = raft.clone();
            tokio::spawn(async move {
                propose(&raft, group).await;
                drop(slot);
            });
        }
    });
    tx
}

async fn propose(raft: &Raft, group: Vec<Pending>) {
    let (requests, replies): (Vec<Request>, Vec<_>) = group.into_iter().unzip();
    let proposal = if requests.len() == 1 {
        Proposal::One(requests.into_iter().next().expect("one request"))
    } else {
        Proposal::Group { requests }
    };
    match raft.client_write(proposal).await {
        Ok(r) => {
            let responses = match r.data {
                Applied::One(resp) => vec![resp],
                Applied::Group { responses } => responses,
            };
            if responses.len() != replies.len() {
                tracing::error!(
                    requests = replies.len(),
                    responses = responses.len(),
                    "an entry was answered with the wrong number of responses"
                );
            }
            let mut responses = responses.into_iter();
            for reply in replies {
                let _ = reply.send(responses.next().ok_or_else(|| {
                    ClusterError::Protocol("the state machine gave no response".into())
                }));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(write_err(e.clone())));
            }
        }
    }
}

fn not_leader(leader_id: Option<NodeId>, node: Option<NodeAddr>) -> ClusterError {
    ClusterError::NotLeader {
        leader: leader_id.zip(node.map(|n| n.cluster_addr)),
    }
}

fn write_err(e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            not_leader(f.leader_id, f.leader_node)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            ClusterError::Refused(c.to_string())
        }
        RaftError::Fatal(f) => ClusterError::Stopped(f.to_string()),
    }
}

impl Inner {
    fn leader_target(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.cluster_addr.clone()))
    }

    /// Runs `op` on the leader: here if this node leads, else forwarded once to the node this
    /// node believes leads. Retries through elections until `budget` runs out. A call that
    /// arrived `forwarded` is served here or refused, never forwarded again.
    pub(crate) async fn leader_call(
        &self,
        op: Op,
        budget: Duration,
        forwarded: bool,
    ) -> Result<Out, ClusterError> {
        let deadline = Instant::now() + budget;
        let mut hint: Option<(NodeId, String)> = None;
        let mut last;
        loop {
            let target = if forwarded {
                Some((self.id, String::new()))
            } else {
                hint.take().or_else(|| self.leader_target())
            };
            let res = match target {
                None => Err(ClusterError::NoLeader("no leader elected yet".into())),
                Some((id, _)) if id == self.id => self.local(&op).await,
                Some((_, addr)) => {
                    if matches!(op, Op::Write(_)) {
                        self.forwarded_writes.fetch_add(1, Ordering::Relaxed);
                    }
                    self.remote(&addr, &op).await
                }
            };
            match res {
                Ok(out) => return Ok(out),
                Err(e) if forwarded => return Err(e),
                Err(ClusterError::NotLeader { leader }) => {
                    last = ClusterError::NotLeader {
                        leader: leader.clone(),
                    };
                    hint = leader;
                }
                Err(e) if e.is_retryable() => last = e,
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(match last {
                    ClusterError::NotLeader { .. } => {
                        ClusterError::NoLeader("leadership kept moving".into())
                    }
                    e => e,
                });
            }
            if hint.is_none() {
                let mut m = self.raft.metrics();
                let _ = tokio::time::timeout(Duration::from_millis(50), m.changed()).await;
            }
        }
    }

    async fn local(&self, op: &Op) -> Result<Out, ClusterError> {
        match op {
            Op::Write(req) => self.write_as_leader(req.clone()).await.map(Out::Write),
            Op::Join { id, addr, learner } => self
                .join_as_leader(*id, addr.clone(), *learner)
                .await
                .map(Out::Join),
            Op::Remove(id) => self.remove_as_leader(*id).await.map(|_| Out::Removed),
            Op::ReadIndex { quorum } => {
                self.read_index_as_leader(*quorum).await.map(Out::ReadIndex)
            }
            Op::Transfer { to } => self.transfer_as_leader(*to).await.map(Out::Transferred),
            Op::Report(r) => {
                self.ensure_leader()?;
                self.reports
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .put(r.node, r.down.clone());
                Ok(Out::Reported)
            }
        }
    }

    async fn remote(&self, addr: &str, op: &Op) -> Result<Out, ClusterError> {
        // A client for each call but writes, which the forwarder carries on its own.
        let client = || self.forward.cluster(addr);
        let t = Duration::from_secs;
        Ok(match op {
            Op::Write(req) => Out::Write(self.forwarder.write(addr, req).await?),
            Op::Join {
                id,
                addr: a,
                learner,
            } => {
                let req = JoinRequest {
                    id: *id,
                    cluster_addr: a.cluster_addr.clone(),
                    admin_addr: a.admin_addr.clone(),
                    http_addr: a.http_addr.clone(),
                    learner: *learner,
                };
                Out::Join(
                    timed(addr, t(120), client()?.join(forwarded(req)))
                        .await?
                        .leader_id,
                )
            }
            Op::Remove(id) => {
                timed(
                    addr,
                    t(20),
                    client()?.remove_node(forwarded(RemoveNodeRequest { id: *id })),
                )
                .await?;
                Out::Removed
            }
            Op::ReadIndex { quorum } => {
                let req = ReadIndexRequest {
                    skip_quorum: !quorum,
                };
                Out::ReadIndex(
                    timed(addr, t(2), client()?.read_index(forwarded(req)))
                        .await?
                        .index,
                )
            }
            Op::Transfer { to } => {
                let req = TransferLeaderRequest {
                    to: to.unwrap_or(0),
                };
                Out::Transferred(
                    timed(addr, t(10), client()?.transfer_leader(forwarded(req)))
                        .await?
                        .leader_id,
                )
            }
            Op::Report(r) => {
                let report_json =
                    serde_json::to_vec(r).map_err(|e| ClusterError::Protocol(e.to_string()))?;
                timed(
                    addr,
                    t(2),
                    client()?.report_health(forwarded(ReportHealthRequest { report_json })),
                )
                .await?;
                Out::Reported
            }
        })
    }

    async fn write_as_leader(&self, req: Request) -> Result<Response, ClusterError> {
        // Counted before the flag is read (both SeqCst): a handover that sets the flag and then
        // finds no write in flight knows that none will be proposed after it.
        let _counted = self.in_flight.enter();
        if self.transferring.load(Ordering::SeqCst) {
            return Err(ClusterError::NoLeader(
                "leadership is being handed over".into(),
            ));
        }
        let stopped = || ClusterError::Stopped("the proposer has stopped".into());
        let (tx, rx) = oneshot::channel();
        self.proposals.send((req, tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    async fn read_index_as_leader(&self, quorum: bool) -> Result<u64, ClusterError> {
        if !quorum {
            self.ensure_leader()?;
            let committed = self
                .raft
                .with_raft_state(|st| st.committed.map(|l| l.index))
                .await;
            return committed
                .map(|c| c.unwrap_or(0))
                .map_err(|e| ClusterError::Stopped(e.to_string()));
        }
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(not_leader(f.leader_id, f.leader_node))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => Err(
                ClusterError::NoLeader(format!("the leader cannot reach a quorum: {q}")),
            ),
            Err(RaftError::Fatal(f)) => Err(ClusterError::Stopped(f.to_string())),
        }
    }

    fn ensure_leader(&self) -> Result<(), ClusterError> {
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.state == ServerState::Leader {
            return Ok(());
        }
        let node = m
            .current_leader
            .and_then(|id| m.membership_config.membership().get_node(&id).cloned());
        Err(not_leader(m.current_leader, node))
    }

    /// Changes membership, waiting out a change still in progress (one change at a time).
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, NodeAddr>,
    ) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.raft.change_membership(change.clone(), false).await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(write_err(e)),
            }
        }
    }

    async fn join_as_leader(
        &self,
        id: NodeId,
        addr: NodeAddr,
        learner: bool,
    ) -> Result<NodeId, ClusterError> {
        let _guard = self.membership_lock.lock().await;
        self.ensure_leader()?;
        if id == 0 {
            return Err(ClusterError::Refused(
                "node id 0 is not allowed: use --id 1 or more".into(),
            ));
        }
        if self.state.borrow().retired.contains(&id) {
            return Err(ClusterError::Refused(format!(
                "node id {id} was removed from this cluster and can never be used again: join with a new --id"
            )));
        }
        let membership = self.membership();
        for (other, node) in membership.nodes() {
            if *other != id && node.cluster_addr == addr.cluster_addr {
                return Err(ClusterError::Refused(format!(
                    "cluster address {} is already used by node {other}: give the new node its own --cluster-addr",
                    addr.cluster_addr
                )));
            }
        }
        let is_voter = membership.voter_ids().any(|v| v == id);
        match membership.get_node(&id) {
            Some(existing) if existing.cluster_addr != addr.cluster_addr => {
                return Err(ClusterError::Refused(format!(
                    "node id {id} is already a member at {}: use another --id",
                    existing.cluster_addr
                )));
            }
            Some(_) if is_voter || learner => return Ok(self.id), // a retried join: already done
            _ => {}
        }
        tracing::info!(id, %addr, learner, "adding node");
        let add = self.raft.add_learner(id, addr.clone(), true);
        match tokio::time::timeout(Duration::from_secs(100), add).await {
            Ok(r) => {
                r.map_err(write_err)?;
            }
            Err(_) => {
                return Err(ClusterError::Unreachable(format!(
                    "node {id} at {} did not catch up within 100s",
                    addr.cluster_addr
                )));
            }
        }
        if !learner {
            self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                .await?;
        }
        tracing::info!(id, learner, "node joined");
        Ok(self.id)
    }

    async fn transfer_as_leader(&self, to: Option<NodeId>) -> Result<NodeId, ClusterError> {
        let _guard = self.membership_lock.lock().await;
        self.ensure_leader()?;
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let others: Vec<NodeId> = membership.voter_ids().filter(|v| *v != self.id).collect();
        let matched = |id: NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|l| l.index)
                .unwrap_or(0)
        };
        let target = match to {
            Some(t) if t == self.id => return Ok(self.id),
            Some(t) if !others.contains(&t) => {
                return Err(ClusterError::Refused(format!(
                    "node {t} is not a voter of this cluster; hand leadership to one of {others:?}"
                )));
            }
            Some(t) => t,
            None => *others
                .iter()
                .max_by_key(|v| (matched(**v), std::cmp::Reverse(**v)))
                .ok_or_else(|| {
                    ClusterError::Refused(
                        "this node is the only voter: there is nobody to hand leadership to".into(),
                    )
                })?,
        };
        let addr = membership
            .get_node(&target)
            .map(|n| n.cluster_addr.clone())
            .ok_or_else(|| ClusterError::NotFound(format!("node {target} has no address")))?;
        // Stop taking writes, so nothing new keeps the voters' leader lease alive.
        self.transferring.store(true, Ordering::SeqCst);
        let result = self.hand_over(target, &addr, &others).await;
        self.raft.runtime_config().heartbeat(true);
        self.transferring.store(false, Ordering::Release);
        result
    }

    /// The handover proper: the target catches up, the other voters hold their elections, this
    /// leader stops its heartbeats so the voters' leader lease runs out, and the target
    /// campaigns until elected. (openraft 0.9 has no transfer of its own, and a voter refuses
    /// votes while the lease of the leader it last heard from is running.)
    async fn hand_over(
        &self,
        target: NodeId,
        addr: &str,
        others: &[NodeId],
    ) -> Result<NodeId, ClusterError> {
        // The log end the target must reach, and a target missing any entry of it loses every
        // vote and only raises the term. Writes taken before the transfer began (a client's,
        // or the event a new leader records) may not be in the log yet: they end first, else
        // one appended after the target caught up would beat its campaign.
        if tokio::time::timeout(Duration::from_secs(3), self.in_flight.drained())
            .await
            .is_err()
        {
            return Err(ClusterError::Refused(
                "writes in progress did not finish within 3s; leadership stays here".into(),
            ));
        }
        // The metrics' `last_log_index` can lag the blank entry a new leader appends. Once a
        // linearizable read passes, that entry is applied, so the store holds it.
        if let Err(e) = self.raft.ensure_linearizable().await {
            return Err(ClusterError::Refused(format!(
                "this node cannot confirm its leadership ({e}); leadership stays here"
            )));
        }
        let (_, last) = self.last_log().await?;
        let caught_up = self
            .raft
            .wait(Some(Duration::from_secs(3)))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&target).cloned().flatten())
                        .map(|l| l.index >= last)
                        .unwrap_or(false)
                },
                "transfer target caught up",
            )
            .await;
        if caught_up.is_err() {
            return Err(ClusterError::Refused(format!(
                "node {target} did not catch up with the leader's log within 3s; leadership stays here"
            )));
        }
        let hold = self.election_timeout_max * 8;
        let membership = self.membership();
        for v in others.iter().filter(|v| **v != target) {
            if let Some(node) = membership.get_node(v)
                && let Ok(mut c) = self.forward.cluster(&node.cluster_addr)
            {
                let req = HoldElectionsRequest {
                    millis: hold.as_millis() as u64,
                };
                let _ =
                    tokio::time::timeout(Duration::from_millis(500), c.hold_elections(req)).await;
            }
        }
        self.raft.runtime_config().heartbeat(false);
        let mut client = self.forward.cluster(addr)?;
        let req = CampaignRequest {
            millis: hold.as_millis() as u64,
        };
        let elected = timed(addr, hold + Duration::from_secs(1), client.campaign(req))
            .await
            .map(|r| r.elected)
            .unwrap_or(false);
        if !elected {
            return Err(ClusterError::Refused(format!(
                "node {target} did not win the election within {hold:?}; leadership stays with node {}",
                self.id
            )));
        }
        tracing::info!(to = target, "leadership handed over");
        Ok(target)
    }

    /// Stops starting elections for `millis` (lifted by itself afterwards).
    pub(crate) fn hold_elections(&self, millis: u64) {
        self.contact.hold(Duration::from_millis(millis));
    }

    /// The membership (voters, learners and their addresses) this node knows.
    fn membership(&self) -> gateway_store::Membership {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }

    /// This node's last log entry as (term, index); (0, 0) for an empty log.
    async fn last_log(&self) -> Result<(u64, u64), ClusterError> {
        let state = self
            .log
            .clone()
            .get_log_state()
            .await
            .map_err(|e| ClusterError::Stopped(format!("cannot read the log: {e}")))?;
        Ok(state
            .last_log_id
            .map(|l| (l.leader_id.term, l.index))
            .unwrap_or((0, 0)))
    }

    /// Answers a pre-vote (see `PreVote` in raft.proto): granted only when this node has not
    /// heard from a leader for the lease the real vote enforces, and the candidate's log is at
    /// least as up to date as ours. Changes nothing here.
    pub(crate) async fn pre_vote(&self, req: &PreVoteRequest) -> PreVoteReply {
        let refuse = |reason: String| PreVoteReply {
            granted: false,
            reason,
        };
        if self.raft.metrics().borrow().state == ServerState::Leader {
            return refuse(format!("node {} leads", self.id));
        }
        let silence = self.contact.silence(Instant::now());
        if silence < self.election_timeout_max {
            return refuse(format!(
                "node {} heard from a leader {}ms ago",
                self.id,
                silence.as_millis()
            ));
        }
        match self.last_log().await {
            Ok(mine) if (req.last_log_term, req.last_log_index) >= mine => PreVoteReply {
                granted: true,
                reason: String::new(),
            },
            Ok((term, index)) => refuse(format!(
                "node {}'s log is ahead (term {term}, index {index})",
                self.id
            )),
            Err(e) => refuse(e.to_string()),
        }
    }

    /// Asks the other voters for a pre-vote; true when a majority of `voters` (this node
    /// included) would vote for it now.
    pub(crate) async fn pre_vote_round(&self, voters: &[NodeId], wait: Duration) -> bool {
        let Ok((last_log_term, last_log_index)) = self.last_log().await else {
            return false;
        };
        let membership = self.membership();
        let req = PreVoteRequest {
            candidate: self.id,
            last_log_term,
            last_log_index,
        };
        let asks = voters.iter().filter(|v| **v != self.id).filter_map(|v| {
            let node = membership.get_node(v)?;
            let mut client = self.forward.cluster(&node.cluster_addr).ok()?;
            let v = *v;
            Some(async move {
                match tokio::time::timeout(wait, client.pre_vote(req)).await {
                    Ok(Ok(r)) => {
                        let r = r.into_inner();
                        if !r.granted {
                            tracing::debug!(voter = v, reason = %r.reason, "pre-vote refused");
                        }
                        r.granted
                    }
                    _ => false,
                }
            })
        });
        let granted = 1 + futures::future::join_all(asks)
            .await
            .into_iter()
            .filter(|g| *g)
            .count();
        granted * 2 > voters.len()
    }

    /// Campaigns until this node leads or `millis` pass.
    pub(crate) async fn campaign(&self, millis: u64) -> bool {
        let deadline = Instant::now() + Duration::from_millis(millis);
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow().state == ServerState::Leader {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if self.raft.trigger().elect().await.is_err() {
                return false;
            }
            // Give this election time to finish (votes come back within a few ms on a LAN): a
            // new trigger would start a newer term and discard the votes of this one. Early
            // attempts are refused while the voters' leader lease runs; then one wins.
            let _ = tokio::time::timeout(
                Duration::from_millis(100),
                metrics.wait_for(|m| m.state == ServerState::Leader),
            )
            .await;
        }
    }

    async fn remove_as_leader(&self, id: NodeId) -> Result<(), ClusterError> {
        let _guard = self.membership_lock.lock().await;
        self.ensure_leader()?;
        let membership = self.membership();
        let is_voter = membership.voter_ids().any(|v| v == id);
        let is_member = membership.get_node(&id).is_some();
        if !is_member {
            if self.state.borrow().retired.contains(&id) {
                return Ok(()); // already removed
            }
            return Err(ClusterError::NotFound(format!(
                "node {id} is not a member of this cluster; see the members with GET /v1/nodes"
            )));
        }
        if is_voter && membership.voter_ids().count() == 1 {
            return Err(ClusterError::Refused(format!(
                "node {id} is the last voter; a cluster cannot remove its last voter"
            )));
        }
        // Retire the id first: a half-finished removal can then be retried, never reused.
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let retire = Request {
            id: format!("{:x}-{:x}-{n}", self.id, self.nonce),
            command: Command::RetireNode { id },
        };
        self.write_as_leader(retire).await?;
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.change_membership(change).await?;
        tracing::info!(id, "node removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::InFlight;
    use std::sync::Arc;

    #[tokio::test(flavor = "current_thread")]
    async fn drained_waits_for_every_counted_write() {
        let w = Arc::new(InFlight::default());
        w.drained().await; // nothing in flight: at once

        let (first, second) = (w.enter(), w.enter());
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.drained().await }
        });
        tokio::task::yield_now().await;
        drop(first);
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "returned with a write still in flight"
        );
        drop(second);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter ends once the last write ends")
            .expect("the waiter did not panic");
    }
}
