//! The openraft type configuration shared by the store and the cluster crates.

use std::io::Cursor;

openraft::declare_raft_types!(
    /// Raft types of the gateway: proposals (one request or a group) and what applying them
    /// did, u64 node ids, nodes
    /// described by their three addresses, and snapshots as in-memory byte buffers.
    pub TypeConfig:
        D = gateway_model::Proposal,
        R = gateway_model::Applied,
        NodeId = u64,
        Node = gateway_model::NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, gateway_model::NodeAddr>;
pub type StoredMembership = openraft::StoredMembership<NodeId, gateway_model::NodeAddr>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, gateway_model::NodeAddr>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, gateway_model::NodeAddr>;
