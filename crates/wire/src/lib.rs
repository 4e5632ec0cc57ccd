//! Code generated from `proto/*.proto` (tonic and prost), and the conversions between those
//! messages and model types. Input from the wire is validated here once, before it becomes a
//! model type ([`convert`]).
//!
//! Depends on the model only; it must not depend on Raft, sled or the proxy.

pub mod convert;

/// Node-to-node protocol: Raft messages, membership, leader forwarding.
pub mod cluster {
    tonic::include_proto!("gateway.cluster.v1");
}

/// The admin API (`proto/admin.proto`): configuration, membership, status, watch.
pub mod admin {
    tonic::include_proto!("gateway.admin.v1");

    /// The encoded file descriptor set of `admin.proto`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("admin_descriptor");
}

use gateway_model::{NodeAddr, NodeId};

impl cluster::JoinRequest {
    /// The joining node's id and addresses.
    pub fn node(&self) -> (NodeId, NodeAddr) {
        (
            self.id,
            NodeAddr {
                cluster_addr: self.cluster_addr.clone(),
                admin_addr: self.admin_addr.clone(),
                http_addr: self.http_addr.clone(),
            },
        )
    }
}
