//! Replicated commands: the only way the replicated state changes.

use crate::config::{NodeId, Pool, Route};
use crate::error::ApplyError;
use serde::{Deserialize, Serialize};

/// A change to the replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Create or replace a pool.
    PutPool { pool: Pool },
    /// Delete a pool that no route uses.
    DeletePool { name: String },
    /// Create or replace a route; its pool must exist.
    PutRoute { route: Route },
    /// Delete a route.
    DeleteRoute { name: String },
    /// Record that a node id has left the cluster, so it is never reused.
    RetireNode { id: NodeId },
}

/// A command as proposed to Raft: with the client's request id, which the state machine
/// remembers so that a retried write (after a timeout or a leader change) applies once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Unique per logical write, chosen before the first attempt and kept across retries.
    pub id: String,
    pub command: Command,
}

/// What applying a [`Request`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The configuration revision after this command (unchanged if it was refused).
    pub revision: u64,
    /// `Ok` if applied, or why it was refused.
    pub outcome: Result<(), ApplyError>,
}
