//! The gateway's Raft cluster: openraft over tonic gRPC with sled storage.
//!
//! [`Cluster`] is the handle the rest of the node uses: it initialises or joins a cluster,
//! proposes writes (forwarding them to the leader when this node is not it), serves
//! linearizable or stale reads, changes membership, reports status and publishes the replicated
//! state on a watch. Raft RPCs travel on one pool of gRPC channels, leader forwarding on
//! another, so a burst of forwarded writes never queues behind heartbeats.
//!
//! Depends on the model, the wire types and the store; it must not depend on the proxy or the
//! admin plane.

mod auth;
mod elector;
mod error;
mod forward;
mod gather;
mod handle;
mod network;
pub mod overseer;
mod service;
mod tls;

pub use auth::Secret;
pub use error::ClusterError;
pub use handle::{Bootstrap, Cluster, ClusterOptions, Consistency, LeaderInfo, Member, Status};
pub use overseer::unix_ms;
pub use tls::{CLUSTER_SERVER_NAME, ClusterTls};
