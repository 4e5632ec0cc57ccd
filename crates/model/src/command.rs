//! Replicated commands: the only way the replicated state changes.

use crate::config::{NodeId, Pool, Route};
use crate::error::ApplyError;
use serde::{Deserialize, Serialize};

/// A change to the replicated state.
///
/// `expect` makes a change conditional (compare-and-set): `Some(0)` means the object must not
/// exist yet, `Some(n)` that it must exist at revision `n`; otherwise the command is refused as
/// stale and changes nothing.
// Commands are built once per write and moved a few times; boxing routes would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Create or replace a pool.
    PutPool {
        pool: Pool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<u64>,
    },
    /// Delete a pool that no route uses.
    DeletePool {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<u64>,
    },
    /// Create or replace a route; its pool must exist.
    PutRoute {
        route: Route,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<u64>,
    },
    /// Delete a route.
    DeleteRoute {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<u64>,
    },
    /// Record that a node id has left the cluster, so it is never reused.
    RetireNode { id: NodeId },
    /// Several configuration changes applied as one: all of them, in order, under one new
    /// revision, or none of them.
    Batch { commands: Vec<Command> },
}

/// The most commands one batch may carry.
pub const MAX_BATCH: usize = 10_000;

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
