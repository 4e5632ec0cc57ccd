//! Code generated from `proto/*.proto` (tonic and prost), and the small conversions between
//! those messages and model types. Input from the wire is validated here once, before it
//! becomes a model type.
//!
//! Depends on the model only; it must not depend on Raft, sled or the proxy.

/// Node-to-node protocol: Raft messages, membership, leader forwarding.
pub mod cluster {
    tonic::include_proto!("gateway.cluster.v1");
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
