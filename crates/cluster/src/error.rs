//! Errors of the cluster layer. The HTTP status and gRPC code of each are decided at the edge.

use gateway_model::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// This node is not the leader; the leader is named when known. Callers retry there.
    #[error("not the leader{}", .leader.as_ref().map(|(id, a)| format!("; node {id} at {a} is")).unwrap_or_default())]
    NotLeader { leader: Option<(NodeId, String)> },
    /// No leader could be reached in time (election under way, or no quorum).
    #[error("no leader available: {0}")]
    NoLeader(String),
    /// The request was refused for a reason the caller must fix (retired id, duplicate address…).
    #[error("{0}")]
    Refused(String),
    /// The node named is not a member.
    #[error("{0}")]
    NotFound(String),
    /// The caller does not hold the cluster secret, or belongs to another cluster.
    #[error("{0}")]
    Unauthenticated(String),
    /// No peer could be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The node is shutting down or Raft stopped.
    #[error("raft stopped: {0}")]
    Stopped(String),
    /// Local storage failed.
    #[error(transparent)]
    Store(#[from] gateway_store::StoreError),
    /// A peer sent something this node cannot decode.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClusterError {
    /// Whether trying again (possibly elsewhere) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::NotLeader { .. }
                | ClusterError::NoLeader(_)
                | ClusterError::Unreachable(_)
        )
    }
}

pub(crate) const LEADER_ID: &str = "x-leader-id";
pub(crate) const LEADER_ADDR: &str = "x-leader-addr";

impl From<ClusterError> for tonic::Status {
    fn from(e: ClusterError) -> Self {
        use tonic::{Code, Status};
        let msg = e.to_string();
        match e {
            ClusterError::NotLeader { leader } => {
                let mut s = Status::new(Code::FailedPrecondition, msg);
                if let Some((id, addr)) = leader
                    && let (Ok(i), Ok(a)) = (id.to_string().parse(), addr.parse())
                {
                    s.metadata_mut().insert(LEADER_ID, i);
                    s.metadata_mut().insert(LEADER_ADDR, a);
                }
                s
            }
            ClusterError::NoLeader(_) | ClusterError::Unreachable(_) => Status::unavailable(msg),
            ClusterError::Refused(_) => Status::new(Code::AlreadyExists, msg),
            ClusterError::NotFound(_) => Status::not_found(msg),
            ClusterError::Unauthenticated(_) => Status::unauthenticated(msg),
            ClusterError::Stopped(_) => Status::unavailable(msg),
            ClusterError::Store(_) | ClusterError::Protocol(_) => Status::internal(msg),
        }
    }
}

impl From<tonic::Status> for ClusterError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let msg = s.message().to_string();
        match s.code() {
            Code::FailedPrecondition => {
                let id = s
                    .metadata()
                    .get(LEADER_ID)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                let addr = s
                    .metadata()
                    .get(LEADER_ADDR)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                ClusterError::NotLeader {
                    leader: id.zip(addr),
                }
            }
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                ClusterError::Unreachable(msg)
            }
            Code::AlreadyExists | Code::InvalidArgument => ClusterError::Refused(msg),
            Code::NotFound => ClusterError::NotFound(msg),
            Code::Unauthenticated | Code::PermissionDenied => ClusterError::Unauthenticated(msg),
            _ => ClusterError::Protocol(format!("{:?}: {msg}", s.code())),
        }
    }
}

/// One write's failure inside a batch: the status the Write call would have answered, with
/// the leader its metadata names.
pub(crate) fn to_failure(status: &tonic::Status) -> gateway_wire::cluster::WriteFailure {
    let meta = |key| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    gateway_wire::cluster::WriteFailure {
        code: status.code() as i32,
        message: status.message().to_string(),
        leader_id: meta(LEADER_ID).parse().unwrap_or(0),
        leader_addr: meta(LEADER_ADDR).to_string(),
    }
}

/// The error a batch's failure stands for, as if the Write call had answered it.
pub(crate) fn from_failure(f: gateway_wire::cluster::WriteFailure) -> ClusterError {
    let mut status = tonic::Status::new(tonic::Code::from_i32(f.code), f.message);
    if f.leader_id != 0
        && let Ok(addr) = f.leader_addr.parse()
    {
        status.metadata_mut().insert(LEADER_ID, f.leader_id.into());
        status.metadata_mut().insert(LEADER_ADDR, addr);
    }
    ClusterError::from(status)
}
