//! The state machine: the replicated [`State`] in memory, its last applied log id and
//! membership, and the current snapshot persisted in sled.
//!
//! The state itself is not written to disk on every apply. Durability comes from the log (every
//! committed entry is in it, and the committed id is saved) and from snapshots (persisted and
//! flushed before they are reported): on open the state is restored from the snapshot and
//! openraft re-applies the committed entries after it.

use crate::util::{decode_err, flush, io_err, sled_err};
use crate::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoreError, StoredMembership, TypeConfig,
};
use gateway_model::{Applied, Proposal, Response, State};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::Arc;
use tokio::sync::watch;

/// Key of the current snapshot in the snapshot tree.
const KEY_CURRENT: &str = "current";

/// What a snapshot's bytes hold (serde_json).
#[derive(Serialize)]
struct SnapshotPayloadRef<'a> {
    last_applied: &'a Option<LogId>,
    membership: &'a StoredMembership,
    state: &'a State,
}

#[derive(Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: State,
}

impl SnapshotPayload {
    /// Decodes snapshot bytes and rebuilds the state's indexes.
    fn decode(data: &[u8]) -> Result<Self, serde_json::Error> {
        let mut p: SnapshotPayload = serde_json::from_slice(data)?;
        p.state.reindex();
        Ok(p)
    }
}

/// The state machine. Owned by openraft once handed to `Raft::new`; call
/// [`StateMachine::subscribe`] before that to follow the state.
pub struct StateMachine {
    db: sled::Db,
    /// Holds the current snapshot under [`KEY_CURRENT`].
    snapshots: sled::Tree,
    state: Arc<State>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    tx: watch::Sender<Arc<State>>,
}

impl StateMachine {
    /// Creates the state machine, restored from the persisted snapshot if there is one.
    pub(crate) fn open(db: sled::Db, snapshots: sled::Tree) -> Result<Self, StoreError> {
        let stored = read_snapshot(&snapshots).map_err(|e| match e {
            ReadError::Sled(e) => StoreError::sled("read snapshot", e),
            ReadError::Corrupt(reason) => StoreError::corrupt("snapshot", reason),
        })?;
        let (state, last_applied, membership) = match stored {
            None => (State::default(), None, StoredMembership::default()),
            Some((meta, data)) => {
                let p = SnapshotPayload::decode(&data)
                    .map_err(|e| StoreError::corrupt("snapshot data", e))?;
                check_payload(&meta, &p).map_err(|e| StoreError::corrupt("snapshot", e))?;
                (p.state, p.last_applied, p.membership)
            }
        };
        let state = Arc::new(state);
        let (tx, _) = watch::channel(state.clone());
        Ok(StateMachine {
            db,
            snapshots,
            state,
            last_applied,
            membership,
            tx,
        })
    }

    /// The current replicated state, published after every applied batch and every installed
    /// snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.tx.subscribe()
    }

    fn publish(&self) {
        self.tx.send_replace(self.state.clone());
    }
}

/// Why the stored snapshot could not be read.
enum ReadError {
    Sled(sled::Error),
    Corrupt(String),
}

/// Stored snapshot layout: `[u32 BE length of meta][meta as serde_json][data]`, under one key,
/// so that meta and data are replaced together atomically.
fn encode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let meta = serde_json::to_vec(meta)?;
    let mut out = Vec::with_capacity(4 + meta.len() + data.len());
    let len = u32::try_from(meta.len()).map_err(serde::ser::Error::custom)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(data);
    Ok(out)
}

fn decode_snapshot(bytes: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), String> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| format!("stored snapshot of {} bytes has no header", bytes.len()))?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(format!(
            "stored snapshot meta of {len} bytes but only {} bytes follow",
            rest.len()
        ));
    }
    let (meta, data) = rest.split_at(len);
    let meta: SnapshotMeta =
        serde_json::from_slice(meta).map_err(|e| format!("snapshot meta: {e}"))?;
    Ok((meta, data.to_vec()))
}

fn read_snapshot(tree: &sled::Tree) -> Result<Option<(SnapshotMeta, Vec<u8>)>, ReadError> {
    match tree.get(KEY_CURRENT).map_err(ReadError::Sled)? {
        None => Ok(None),
        Some(bytes) => decode_snapshot(&bytes)
            .map(Some)
            .map_err(ReadError::Corrupt),
    }
}

/// Checks that a snapshot's payload agrees with its meta.
fn check_payload(meta: &SnapshotMeta, p: &SnapshotPayload) -> Result<(), String> {
    if meta.last_log_id != p.last_applied || meta.last_membership != p.membership {
        return Err(format!(
            "snapshot {} says it covers up to {:?} with membership {:?}, but its data covers up to {:?} with membership {:?}",
            meta.snapshot_id, meta.last_log_id, meta.last_membership, p.last_applied, p.membership
        ));
    }
    Ok(())
}

fn snapshot_subject(meta: &SnapshotMeta) -> ErrorSubject<crate::NodeId> {
    ErrorSubject::Snapshot(Some(meta.signature()))
}

/// Builds snapshots from a consistent view of the state machine taken when it was created, so
/// it can run while the state machine goes on applying entries.
pub struct SnapshotBuilder {
    db: sled::Db,
    snapshots: sled::Tree,
    state: Arc<State>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let data = serde_json::to_vec(&SnapshotPayloadRef {
            last_applied: &self.last_applied,
            membership: &self.membership,
            state: &self.state,
        })
        .map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
                "encode snapshot",
                AnyError::new(&e),
            )
        })?;
        let unique = self.db.generate_id().map_err(|e| {
            sled_err(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
                "generate snapshot id",
                e,
            )
        })?;
        let snapshot_id = match &self.last_applied {
            Some(id) => format!(
                "{}-{}-{}-{unique}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => format!("0-0-none-{unique}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let subject = snapshot_subject(&meta);
        let stored = encode_snapshot(&meta, &data).map_err(|e| {
            io_err(
                subject.clone(),
                ErrorVerb::Write,
                "encode snapshot meta",
                AnyError::new(&e),
            )
        })?;

        // Keep the newest snapshot: one installed from the leader while this was building may
        // already be current, and must not be replaced by this older one.
        let new_id = meta.last_log_id;
        let replaced = self
            .snapshots
            .transaction(|tx| {
                let newer_exists = match tx.get(KEY_CURRENT)? {
                    Some(cur) => match decode_snapshot(&cur) {
                        Ok((cur_meta, _)) => cur_meta.last_log_id > new_id,
                        Err(_) => false, // replace an unreadable snapshot
                    },
                    None => false,
                };
                if newer_exists {
                    return Ok(false);
                }
                tx.insert(KEY_CURRENT, stored.as_slice())?;
                Ok(true)
            })
            .map_err(|e: sled::transaction::TransactionError<()>| {
                let e = match e {
                    sled::transaction::TransactionError::Storage(e) => AnyError::new(&e),
                    sled::transaction::TransactionError::Abort(()) => {
                        AnyError::error("transaction aborted")
                    }
                };
                io_err(subject.clone(), ErrorVerb::Write, "save snapshot", e)
            })?;
        if replaced {
            flush(&self.db)
                .await
                .map_err(|e| io_err(subject, ErrorVerb::Write, "flush snapshot", e))?;
        } else {
            tracing::info!(snapshot = %meta.snapshot_id, "built snapshot is older than the current one; not kept");
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Records an entry's log id as applied and its membership, if it carries one; returns its
/// proposal, if it carries one.
fn record(
    last_applied: &mut Option<LogId>,
    membership: &mut StoredMembership,
    entry: Entry,
) -> Option<Proposal> {
    *last_applied = Some(entry.log_id);
    match entry.payload {
        EntryPayload::Normal(req) => Some(req),
        EntryPayload::Blank => None,
        EntryPayload::Membership(m) => {
            *membership = StoredMembership::new(Some(entry.log_id), m);
            None
        }
    }
}

/// The response to an entry that carries no request (blank or membership).
fn no_op(state: &State) -> Applied {
    Applied::One(Response {
        revision: state.revision,
        outcome: Ok(()),
    })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut replies = Vec::with_capacity(entries.len());
        if entries
            .iter()
            .any(|e| matches!(e.payload, EntryPayload::Normal(_)))
        {
            // Copy-on-write once per batch: subscribers keep the previous version, immutable.
            let state = Arc::make_mut(&mut self.state);
            for entry in entries {
                let reply = match record(&mut self.last_applied, &mut self.membership, entry) {
                    Some(p) => state.apply_proposal(&p),
                    None => no_op(state),
                };
                replies.push(reply);
            }
        } else {
            // Only blank and membership entries: the state does not change.
            for entry in entries {
                let _no_request = record(&mut self.last_applied, &mut self.membership, entry);
                replies.push(no_op(&self.state));
            }
        }
        self.publish();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
            state: self.state.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let subject = snapshot_subject(meta);
        let data = snapshot.into_inner();
        let payload = SnapshotPayload::decode(&data)
            .map_err(|e| decode_err(subject.clone(), "decode received snapshot", e))?;
        check_payload(meta, &payload)
            .map_err(|e| decode_err(subject.clone(), "check received snapshot", e))?;

        // Persist first: the snapshot replaces the previous one in a single key write.
        let stored = encode_snapshot(meta, &data).map_err(|e| {
            io_err(
                subject.clone(),
                ErrorVerb::Write,
                "encode snapshot meta",
                AnyError::new(&e),
            )
        })?;
        self.snapshots.insert(KEY_CURRENT, stored).map_err(|e| {
            sled_err(
                subject.clone(),
                ErrorVerb::Write,
                "save received snapshot",
                e,
            )
        })?;
        flush(&self.db)
            .await
            .map_err(|e| io_err(subject, ErrorVerb::Write, "flush received snapshot", e))?;

        // Then replace the in-memory state wholesale; readers see the old or the new version,
        // never a mix.
        self.state = Arc::new(payload.state);
        self.last_applied = payload.last_applied;
        self.membership = payload.membership;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        match read_snapshot(&self.snapshots) {
            Ok(None) => Ok(None),
            Ok(Some((meta, data))) => Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })),
            Err(ReadError::Sled(e)) => Err(sled_err(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Read,
                "read snapshot",
                e,
            )),
            Err(ReadError::Corrupt(reason)) => Err(decode_err(
                ErrorSubject::Snapshot(None),
                "read snapshot",
                reason,
            )),
        }
    }
}
