//! Replicated commands: the only way the replicated state changes.

use crate::cert::Cert;
use crate::config::{Backend, NodeId, Pool, Route};
use crate::error::ApplyError;
use crate::health::{AlertSink, EventKind};
use crate::tcp::TcpRoute;
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
    /// Create or replace a TLS certificate (its names and validity are derived from the PEM).
    PutCert {
        cert: Cert,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<u64>,
    },
    /// Delete a TLS certificate.
    DeleteCert {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<u64>,
    },
    /// Create or replace a TCP route; its pool must exist and its listen address be free.
    PutTcpRoute {
        route: TcpRoute,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<u64>,
    },
    /// Delete a TCP route.
    DeleteTcpRoute {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<u64>,
    },
    /// Replace the node-wide limits (every node applies them to itself).
    SetLimits {
        limits: crate::limits::Limits,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<u64>,
    },
    /// Record that a node id has left the cluster, so it is never reused.
    RetireNode { id: NodeId },
    /// Several configuration changes applied as one: all of them, in order, under one new
    /// revision, or none of them.
    Batch { commands: Vec<Command> },
    /// Proposed by the leader: the cluster's verdict on a backend's health. Changes nothing
    /// (and takes no revision) when the backend is already in that state.
    SetHealth {
        pool: String,
        backend: String,
        up: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        down_on: Vec<NodeId>,
        at_ms: u64,
    },
    /// Proposed by the leader: records a cluster event for the alert sinks (node lost or back,
    /// leader change, managed backend failed). Events are not configuration: they take an event
    /// id, not a revision. A node already lost (or back) is not recorded twice.
    Record { event: EventKind, at_ms: u64 },
    /// Proposed by the leader: every event up to id `upto` was delivered to sink `sink`, so a
    /// later leader does not send them again.
    Delivered { sink: String, upto: u64 },
    /// Create or replace an alert sink.
    PutAlertSink {
        sink: AlertSink,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<u64>,
    },
    /// Delete an alert sink.
    DeleteAlertSink {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<u64>,
    },
    /// Proposed by a node's supervisor: the managed backends node `node` runs for pool `pool`
    /// now (ids `nN-I`, owned by `node`), replacing the ones it registered before, in one step
    /// that leaves the rest of the pool alone. Changes nothing when they are already so.
    SetManaged {
        pool: String,
        node: NodeId,
        backends: Vec<Backend>,
    },
    /// Starts a rolling restart of a pool's managed backends (`gateway pool restart`).
    RestartPool { pool: String, at_ms: u64 },
    /// Proposed by a node's supervisor: its managed backend `backend` was replaced for restart
    /// `epoch` of `pool`, so the next one may go.
    Restarted {
        pool: String,
        epoch: u64,
        backend: String,
    },
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

/// What one Raft log entry carries: one request, or several that the leader gathered while
/// earlier entries were being committed. Each request of a group is applied on its own, in
/// order, with its own request id, revision and outcome: a group is only a way to commit many
/// writes in one log entry, not a transaction (that is [`Command::Batch`]).
///
/// Untagged, so entries written as a bare [`Request`] (before groups existed) still decode.
// One per log entry, moved a few times; boxing the single request would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Proposal {
    One(Request),
    Group { requests: Vec<Request> },
}

/// What applying a [`Proposal`] did: one response per request, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Applied {
    One(Response),
    Group { responses: Vec<Response> },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log entries written before groups existed hold a bare request; they must still decode,
    /// and both shapes must round-trip.
    #[test]
    fn proposals_decode_in_both_shapes() {
        let req = Request {
            id: "r1".into(),
            command: Command::RetireNode { id: 7 },
        };
        let bare = serde_json::to_vec(&req).unwrap();
        let one: Proposal = serde_json::from_slice(&bare).unwrap();
        assert_eq!(one, Proposal::One(req.clone()));
        assert_eq!(serde_json::to_vec(&one).unwrap(), bare);
        let group = Proposal::Group {
            requests: vec![req.clone(), req],
        };
        let back: Proposal = serde_json::from_slice(&serde_json::to_vec(&group).unwrap()).unwrap();
        assert_eq!(back, group);
        let applied = Applied::Group {
            responses: vec![Response {
                revision: 3,
                outcome: Ok(()),
            }],
        };
        let back: Applied = serde_json::from_slice(&serde_json::to_vec(&applied).unwrap()).unwrap();
        assert_eq!(back, applied);
    }
}
