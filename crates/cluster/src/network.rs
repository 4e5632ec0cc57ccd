//! Client side of the cluster port: cached gRPC channels, and openraft's network over them.

use crate::auth::ClientAuth;
use gateway_model::NodeAddr;
use gateway_store::{NodeId, TypeConfig};
use gateway_wire::cluster::RaftPayload;
use gateway_wire::cluster::cluster_client::ClusterClient;
use gateway_wire::cluster::raft_client::RaftClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Raft messages can carry a batch of entries or a snapshot chunk; allow well above both.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The shortest time an append or snapshot chunk is given to be answered.
const MIN_REPLICATION_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) type AuthedChannel = InterceptedService<Channel, ClientAuth>;

/// A cache of lazily connected channels by address. Each channel reconnects by itself after a
/// failure, so one per peer is enough. The lock is never held across an await.
pub(crate) struct Peers {
    auth: ClientAuth,
    /// Mutual TLS to peers, when the cluster runs with it.
    tls: Option<crate::tls::ClusterTls>,
    source_ip: Option<std::net::IpAddr>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    pub(crate) fn new(
        auth: ClientAuth,
        source_ip: Option<std::net::IpAddr>,
        tls: Option<crate::tls::ClusterTls>,
    ) -> Arc<Self> {
        Arc::new(Peers {
            auth,
            tls,
            source_ip,
            channels: Mutex::new(HashMap::new()),
        })
    }

    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))?;
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.client())?;
        }
        let ch = ep
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .local_address(self.source_ip)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    fn authed(&self, addr: &str) -> Result<AuthedChannel, tonic::Status> {
        let ch = self.channel(addr).map_err(|e| {
            tonic::Status::invalid_argument(format!("bad peer address {addr}: {e}"))
        })?;
        Ok(InterceptedService::new(ch, self.auth.clone()))
    }

    pub(crate) fn raft(&self, addr: &str) -> Result<RaftClient<AuthedChannel>, tonic::Status> {
        Ok(RaftClient::new(self.authed(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    pub(crate) fn cluster(
        &self,
        addr: &str,
    ) -> Result<ClusterClient<AuthedChannel>, tonic::Status> {
        Ok(ClusterClient::new(self.authed(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}

/// openraft's network factory: one [`Connection`] per target, over the Raft channel pool.
pub(crate) struct Network {
    pub(crate) peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Connection {
        Connection {
            target,
            addr: node.cluster_addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

pub(crate) struct Connection {
    target: NodeId,
    addr: String,
    peers: Arc<Peers>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

enum Kind {
    Append,
    Vote,
    Snapshot,
}

impl Connection {
    /// Sends one Raft message and decodes the peer's `Result`. Failing to reach the peer is
    /// `Unreachable` (openraft backs off); a timeout or a garbled reply is a `Network` error.
    async fn call<Req, Resp, E>(
        &self,
        kind: Kind,
        rpc: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let net = |m: String| RPCError::Network(NetworkError::new(&Msg(m)));
        let json = serde_json::to_vec(rpc).map_err(|e| net(format!("encode: {e}")))?;
        let mut client = self
            .peers
            .raft(&self.addr)
            .map_err(|s| RPCError::Unreachable(Unreachable::new(&Msg(s.message().to_string()))))?;
        let req = tonic::Request::new(RaftPayload { json });
        // openraft 0.9 gives appends the heartbeat interval (25 ms) to finish. A follower that
        // flushes to disk under load can take longer; timing out then only makes the leader send
        // the same entries again. Appends and snapshots get at least a second; votes keep
        // openraft's deadline so elections stay quick.
        let ttl = match kind {
            Kind::Vote => option.hard_ttl(),
            Kind::Append | Kind::Snapshot => option.hard_ttl().max(MIN_REPLICATION_TIMEOUT),
        };
        let fut = async {
            match kind {
                Kind::Append => client.append_entries(req).await,
                Kind::Vote => client.vote(req).await,
                Kind::Snapshot => client.install_snapshot(req).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(net(format!(
                    "no answer from node {} within {ttl:?}",
                    self.target
                )));
            }
            Ok(Err(status)) => {
                let m = format!(
                    "node {} at {}: {}",
                    self.target,
                    self.addr,
                    status.message()
                );
                return Err(RPCError::Unreachable(Unreachable::new(&Msg(m))));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.json).map_err(|e| net(format!("decode: {e}")))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.call(Kind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Kind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.call(Kind::Vote, &rpc, &option).await
    }
}
