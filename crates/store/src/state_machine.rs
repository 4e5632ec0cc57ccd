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

/// Moves the current snapshot from `old` (a tree of `old_db`) to `new` (a tree of `new_db`)
/// unless `new` has one already; a crash in between leaves a copy in both, and the next open
/// finishes the move.
pub(crate) fn move_snapshot(
    old_db: &sled::Db,
    old: &sled::Tree,
    new_db: &sled::Db,
    new: &sled::Tree,
) -> Result<(), StoreError> {
    let Some(stored) = old
        .get(KEY_CURRENT)
        .map_err(|e| StoreError::sled("read the snapshot to move", e))?
    else {
        return Ok(());
    };
    if !new
        .contains_key(KEY_CURRENT)
        .map_err(|e| StoreError::sled("read snapshot", e))?
    {
        new.insert(KEY_CURRENT, stored)
            .map_err(|e| StoreError::sled("move the snapshot", e))?;
        new_db
            .flush()
            .map_err(|e| StoreError::sled("flush the moved snapshot", e))?;
    }
    old.remove(KEY_CURRENT)
        .map_err(|e| StoreError::sled("remove the moved snapshot", e))?;
    old_db.flush().map_err(|e| StoreError::sled("flush", e))?;
    Ok(())
}

/// The state machine. Owned by openraft once handed to `Raft::new`; call
/// [`StateMachine::subscribe`] before that to follow the state.
pub struct StateMachine {
    /// The snapshots' database (not the log's).
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
        let (tx, _) = watch::channel(Arc::new(state.for_readers()));
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

    /// Publishes the current state without its deduplication window ([`State::for_readers`]),
    /// so `self.state` stays the only holder of its `Arc` and the next batch changes it in place.
    fn publish(&self) {
        self.tx.send_replace(Arc::new(self.state.for_readers()));
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

/// Decodes and checks a received snapshot, then stores it as the current one (not flushed yet).
#[expect(
    clippy::result_large_err,
    reason = "openraft's StorageError is the error type of every storage call"
)]
fn store_received(
    meta: &SnapshotMeta,
    data: &[u8],
    snapshots: &sled::Tree,
) -> Result<SnapshotPayload, StorageError> {
    let subject = snapshot_subject(meta);
    let payload = SnapshotPayload::decode(data)
        .map_err(|e| decode_err(subject.clone(), "decode received snapshot", e))?;
    check_payload(meta, &payload)
        .map_err(|e| decode_err(subject.clone(), "check received snapshot", e))?;
    // Persist first: the snapshot replaces the previous one in a single key write.
    let stored = encode_stored(meta, data)?;
    snapshots
        .insert(KEY_CURRENT, stored)
        .map_err(|e| sled_err(subject, ErrorVerb::Write, "save received snapshot", e))?;
    Ok(payload)
}

/// [`encode_snapshot`] with openraft's error.
#[expect(
    clippy::result_large_err,
    reason = "openraft's StorageError is what the storage traits return"
)]
fn encode_stored(meta: &SnapshotMeta, data: &[u8]) -> Result<Vec<u8>, StorageError> {
    encode_snapshot(meta, data).map_err(|e| {
        io_err(
            snapshot_subject(meta),
            ErrorVerb::Write,
            "encode snapshot meta",
            AnyError::new(&e),
        )
    })
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
        // Encoding a large state takes a while (~100k pools: tenths of a second of a core)
        // and so does storing it: on a thread of its own at a lower priority, so the async
        // workers go on serving requests and Raft meanwhile, and win the CPU when it is short.
        let (db, snapshots, state) = (self.db.clone(), self.snapshots.clone(), self.state.clone());
        let (last_applied, membership) = (self.last_applied, self.membership.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started_at = std::time::Instant::now();
        let started = std::thread::Builder::new()
            .name("raft-snapshot".into())
            .spawn(move || {
                lower_this_threads_priority();
                let _ = tx.send(store_snapshot(
                    &db,
                    &snapshots,
                    &state,
                    last_applied,
                    membership,
                ));
            });
        let gone = |what: &str| {
            io_err(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
                "build snapshot",
                AnyError::error(what),
            )
        };
        if let Err(e) = started {
            return Err(gone(&format!("cannot start its thread: {e}")));
        }
        let (meta, data, replaced) = rx.await.map_err(|_| gone("its thread ended early"))??;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = data.len(),
            took_ms = started_at.elapsed().as_millis() as u64,
            "built a snapshot"
        );
        if !replaced {
            tracing::info!(snapshot = %meta.snapshot_id, "built snapshot is older than the current one; not kept");
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Makes the calling thread yield the CPU to the node's other threads when both want it
/// (`nice` 10 for this thread alone; Linux keeps a nice value per thread). Best effort.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10) {
        tracing::debug!("cannot lower the snapshot thread's priority: {e}");
    }
}

#[expect(
    clippy::result_large_err,
    reason = "openraft's StorageError is what build_snapshot returns"
)]
/// Encodes a snapshot of `state` and stores it as the current one, flushed, unless a newer one
/// is there already; answers its meta, its bytes and whether it was stored.
fn store_snapshot(
    db: &sled::Db,
    snapshots: &sled::Tree,
    state: &State,
    last_applied: Option<LogId>,
    membership: StoredMembership,
) -> Result<(SnapshotMeta, Vec<u8>, bool), StorageError> {
    let data = serde_json::to_vec(&SnapshotPayloadRef {
        last_applied: &last_applied,
        membership: &membership,
        state,
    })
    .map_err(|e| {
        io_err(
            ErrorSubject::Snapshot(None),
            ErrorVerb::Write,
            "encode snapshot",
            AnyError::new(&e),
        )
    })?;
    let unique = db.generate_id().map_err(|e| {
        sled_err(
            ErrorSubject::Snapshot(None),
            ErrorVerb::Write,
            "generate snapshot id",
            e,
        )
    })?;
    let snapshot_id = match &last_applied {
        Some(id) => format!("{}-{}-{unique}", id.leader_id.term, id.index),
        None => format!("0-none-{unique}"),
    };
    let meta = SnapshotMeta {
        last_log_id: last_applied,
        last_membership: membership,
        snapshot_id,
    };
    let subject = snapshot_subject(&meta);
    let stored = encode_stored(&meta, &data)?;

    // Keep the newest snapshot: one installed from the leader while this was building may
    // already be current, and must not be replaced by this older one.
    let new_id = meta.last_log_id;
    let replaced = snapshots
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
        db.flush()
            .map_err(|e| sled_err(subject, ErrorVerb::Write, "flush snapshot", e))?;
    }
    Ok((meta, data, replaced))
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
            // In place: subscribers hold their own versions (`publish`). Only while a snapshot
            // is being built does this copy the state once (the builder holds the `Arc`).
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
            // Readers are told of the applied entries, and keep the version they have.
            self.tx.send_modify(|_| {});
            return Ok(replies);
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
        // Decoding, checking and storing a large snapshot takes a while, and the control plane
        // may have one thread (`--control-threads`): on a blocking thread, this node keeps
        // answering heartbeats meanwhile instead of looking dead to the leader.
        let (owned_meta, snapshots) = (meta.clone(), self.snapshots.clone());
        #[expect(
            clippy::result_large_err,
            reason = "the blocking task returns openraft's StorageError, as store_received does"
        )]
        let payload =
            tokio::task::spawn_blocking(move || store_received(&owned_meta, &data, &snapshots))
                .await
                .map_err(|e| {
                    io_err(
                        subject.clone(),
                        ErrorVerb::Write,
                        "install received snapshot",
                        AnyError::new(&e),
                    )
                })??;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> (sled::Db, sled::Tree) {
        let db = sled::Config::new().temporary(true).open().expect("open");
        let tree = db.open_tree("snapshot").expect("tree");
        (db, tree)
    }

    #[test]
    fn a_snapshot_in_the_main_database_moves_to_its_own_once() {
        let (old_db, old) = temp_db();
        let (new_db, new) = temp_db();
        // Nothing to move.
        move_snapshot(&old_db, &old, &new_db, &new).unwrap();
        assert!(new.is_empty());
        // Moved, then gone from the old place; moving again changes nothing.
        old.insert(KEY_CURRENT, b"first".as_slice()).unwrap();
        move_snapshot(&old_db, &old, &new_db, &new).unwrap();
        assert_eq!(new.get(KEY_CURRENT).unwrap().unwrap(), b"first".as_slice());
        assert!(old.is_empty());
        move_snapshot(&old_db, &old, &new_db, &new).unwrap();
        assert_eq!(new.get(KEY_CURRENT).unwrap().unwrap(), b"first".as_slice());
        // A move cut short (a copy in both): the new place keeps its own.
        old.insert(KEY_CURRENT, b"first".as_slice()).unwrap();
        new.insert(KEY_CURRENT, b"second".as_slice()).unwrap();
        move_snapshot(&old_db, &old, &new_db, &new).unwrap();
        assert_eq!(new.get(KEY_CURRENT).unwrap().unwrap(), b"second".as_slice());
        assert!(old.is_empty());
    }
}
