//! Server side of the cluster port: the Raft service and the cluster (membership, forwarding)
//! service, both behind the secret check.

use crate::error::{ClusterError, to_failure};
use crate::handle::{FORWARDED, Inner, Op, Out};
use gateway_store::TypeConfig;
use gateway_wire::cluster::{
    CampaignReply, CampaignRequest, HelloReply, HelloRequest, HoldElectionsReply,
    HoldElectionsRequest, JoinReply, JoinRequest, PreVoteReply, PreVoteRequest, RaftPayload,
    ReadIndexReply, ReadIndexRequest, RemoveNodeReply, RemoveNodeRequest, ReportHealthReply,
    ReportHealthRequest, TransferLeaderReply, TransferLeaderRequest, WriteBatchReply,
    WriteBatchRequest, WriteOutcome, WriteReply, WriteRequest, cluster_server, raft_server,
    write_outcome,
};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes)
        .map_err(|e| Status::invalid_argument(format!("undecodable message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(v)
        .map(|json| Response::new(RaftPayload { json }))
        .map_err(|e| Status::internal(format!("cannot encode reply: {e}")))
}

pub(crate) struct RaftService(pub(crate) Arc<Inner>);

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.into_inner().json)?;
        let res = self.0.raft.append_entries(rpc).await;
        if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            // A leader this node accepts is alive: the elector's silence starts again.
            self.0.contact.touch();
        }
        encode(&res)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<u64> = decode(&req.into_inner().json)?;
        encode(&self.0.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&req.into_inner().json)?;
        let res = self.0.raft.install_snapshot(rpc).await;
        if res.is_ok() {
            self.0.contact.touch();
        }
        encode(&res)
    }
}

pub(crate) struct ClusterService(pub(crate) Arc<Inner>);

impl ClusterService {
    /// Proposes one JSON `Request` on the leader (served here, or refused if this node does not
    /// lead and the call was `forwarded`) and answers the JSON `Response`: the body of `Write`,
    /// and of each write of `WriteBatch`.
    async fn write_json(&self, json: &[u8], forwarded: bool) -> Result<Vec<u8>, Status> {
        let request = decode(json)?;
        match self
            .0
            .leader_call(Op::Write(request), Duration::from_secs(10), forwarded)
            .await?
        {
            Out::Write(resp) => {
                serde_json::to_vec(&resp).map_err(|e| Status::internal(e.to_string()))
            }
            _ => Err(unexpected()),
        }
    }
}

#[tonic::async_trait]
impl cluster_server::Cluster for ClusterService {
    async fn hello(&self, _req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            cluster_id: self.0.cluster_id.get().cloned().unwrap_or_default(),
            node_id: self.0.id,
        }))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let fwd = forwarded(&req);
        let (id, addr) = req.get_ref().node();
        let op = Op::Join {
            id,
            addr,
            learner: req.get_ref().learner,
        };
        match self
            .0
            .leader_call(op, Duration::from_secs(120), fwd)
            .await?
        {
            Out::Join(leader_id) => Ok(Response::new(JoinReply {
                cluster_id: self.0.cluster_id.get().cloned().unwrap_or_default(),
                leader_id,
            })),
            _ => Err(unexpected()),
        }
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeReply>, Status> {
        let fwd = forwarded(&req);
        match self
            .0
            .leader_call(Op::Remove(req.get_ref().id), Duration::from_secs(20), fwd)
            .await?
        {
            Out::Removed => Ok(Response::new(RemoveNodeReply {})),
            _ => Err(unexpected()),
        }
    }

    async fn write(&self, req: Request<WriteRequest>) -> Result<Response<WriteReply>, Status> {
        let fwd = forwarded(&req);
        let response_json = self.write_json(&req.into_inner().request_json, fwd).await?;
        Ok(Response::new(WriteReply { response_json }))
    }

    async fn write_batch(
        &self,
        req: Request<WriteBatchRequest>,
    ) -> Result<Response<WriteBatchReply>, Status> {
        let fwd = forwarded(&req);
        // Each write goes its own way, concurrently: the proposer gathers them into entries.
        let writes = req
            .into_inner()
            .requests_json
            .into_iter()
            .map(|json| async move {
                let outcome = match self.write_json(&json, fwd).await {
                    Ok(response_json) => write_outcome::Outcome::ResponseJson(response_json),
                    Err(s) => write_outcome::Outcome::Failure(to_failure(&s)),
                };
                WriteOutcome {
                    outcome: Some(outcome),
                }
            });
        Ok(Response::new(WriteBatchReply {
            outcomes: futures::future::join_all(writes).await,
        }))
    }

    async fn read_index(
        &self,
        req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        let op = Op::ReadIndex {
            quorum: !req.get_ref().skip_quorum,
        };
        match self
            .0
            .leader_call(op, Duration::from_secs(5), forwarded(&req))
            .await?
        {
            Out::ReadIndex(index) => Ok(Response::new(ReadIndexReply { index })),
            _ => Err(unexpected()),
        }
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderReply>, Status> {
        let fwd = forwarded(&req);
        let to = Some(req.get_ref().to).filter(|t| *t != 0);
        match self
            .0
            .leader_call(Op::Transfer { to }, Duration::from_secs(10), fwd)
            .await?
        {
            Out::Transferred(leader_id) => Ok(Response::new(TransferLeaderReply { leader_id })),
            _ => Err(unexpected()),
        }
    }

    async fn report_health(
        &self,
        req: Request<ReportHealthRequest>,
    ) -> Result<Response<ReportHealthReply>, Status> {
        let fwd = forwarded(&req);
        let report = decode(&req.into_inner().report_json)?;
        match self
            .0
            .leader_call(Op::Report(report), Duration::from_secs(2), fwd)
            .await?
        {
            Out::Reported => Ok(Response::new(ReportHealthReply {})),
            _ => Err(unexpected()),
        }
    }

    async fn hold_elections(
        &self,
        req: Request<HoldElectionsRequest>,
    ) -> Result<Response<HoldElectionsReply>, Status> {
        let millis = req.get_ref().millis.min(10_000);
        self.0.hold_elections(millis);
        Ok(Response::new(HoldElectionsReply {}))
    }

    async fn pre_vote(
        &self,
        req: Request<PreVoteRequest>,
    ) -> Result<Response<PreVoteReply>, Status> {
        Ok(Response::new(self.0.pre_vote(req.get_ref()).await))
    }

    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignReply>, Status> {
        let millis = req.get_ref().millis.min(10_000);
        Ok(Response::new(CampaignReply {
            elected: self.0.campaign(millis).await,
        }))
    }
}

fn forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED)
}

fn unexpected() -> Status {
    ClusterError::Protocol("the leader gave a reply of the wrong kind".into()).into()
}
