//! The Raft log and the Raft metadata (vote, committed id, last purged id) in sled.
//!
//! Every write completes a sled flush before openraft is told it is done: `save_vote` and
//! `truncate` return after the flush, `purge` after the purged id is flushed (the entries go
//! in the background, see there), and `append` calls its [`LogFlushed`] callback only after
//! the flush. `save_committed` alone is not flushed (see there).
#![allow(
    clippy::result_large_err,
    reason = "openraft's StorageError is the error type its storage traits require"
)]

use crate::util::{decode_err, flush, index_key, io_err, key_index, sled_err};
use crate::{Entry, LogId, NodeId, StorageError, StoreError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

/// Keys of the raft metadata tree.
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// `limited_get_log_entries` stops adding entries once their encoded size reaches this many
/// bytes (it always returns at least one). openraft 0.9 gives one AppendEntries the heartbeat
/// interval (25 ms) and then sends the same entries again, so a batch must be received,
/// decoded and flushed well within it, or a follower catching up never does: with 1 MiB, a
/// node joining after the log was purged, on one control thread of a debug build, decoded
/// each batch for longer than that, again and again (the cluster test
/// `node_joining_after_log_purge_gets_a_snapshot`). Under a live write load a round carries
/// what arrived since the last one: with 16 clients, about 16 writes of a few hundred bytes.
pub const REPLICATION_BATCH_BYTES: usize = 128 * 1024;

/// The Raft log store: log entries keyed by index, plus vote, committed and last purged log
/// ids. Cheap to clone; clones share the same sled trees, and a clone is also the log reader
/// used by replication tasks.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    /// Log entries: key = index as big-endian u64, value = serde_json of [`Entry`].
    logs: sled::Tree,
    /// Raft metadata: vote, committed, last_purged (serde_json).
    raft: sled::Tree,
    /// Appends waiting for their flush (group commit, see [`group_commit`]).
    flusher: std::sync::mpsc::Sender<(sled::Db, LogFlushed<TypeConfig>)>,
    /// The newest entries, decoded (see [`Recent`]).
    recent: Arc<Mutex<Recent>>,
    /// The lowest index not purged: reads never go below it, while the purged entries are
    /// still being deleted in the background (see `purge`).
    first_kept: Arc<std::sync::atomic::AtomicU64>,
}

/// How many of the newest entries [`Recent`] keeps, and up to how many encoded bytes.
const RECENT_ENTRIES: usize = 4096;
const RECENT_BYTES: usize = 16 << 20;

/// The newest log entries as appended, with their encoded sizes: a contiguous run of indexes
/// ending at the last entry of the log (every append goes through it). Replication reads each
/// entry back once per follower right after it was appended; from here that is a clone instead
/// of a sled read and a JSON decode, which were a tenth of a leader's CPU under write load.
#[derive(Default)]
struct Recent {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn push(&mut self, entry: Entry, size: usize) {
        let follows = self
            .entries
            .back()
            .is_none_or(|(last, _)| last.log_id.index + 1 == entry.log_id.index);
        if !follows {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        while self.entries.len() > RECENT_ENTRIES || self.bytes > RECENT_BYTES {
            match self.entries.pop_front() {
                Some((_, n)) => self.bytes -= n,
                None => break,
            }
        }
    }

    /// Drops entries at and above `index` (truncate).
    fn truncate(&mut self, index: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(e, _)| e.log_id.index >= index)
        {
            let (_, n) = self.entries.pop_back().expect("checked");
            self.bytes -= n;
        }
    }

    /// Drops entries at and below `index` (purge).
    fn purge(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(e, _)| e.log_id.index <= index)
        {
            let (_, n) = self.entries.pop_front().expect("checked");
            self.bytes -= n;
        }
    }

    /// The entries of `[start, end)` (`end == None`: to the last), if all are here.
    fn get(&self, start: u64, end: Option<u64>, budget: Option<usize>) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        if start < first {
            return None;
        }
        let last = first + self.entries.len() as u64 - 1;
        if end.is_some_and(|e| e - 1 > last) {
            return None;
        }
        let end = end.map_or(last + 1, |e| e.min(last + 1));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (entry, size) in self
            .entries
            .range((start - first) as usize..(end.max(start) - first) as usize)
        {
            if let Some(budget) = budget
                && !out.is_empty()
                && bytes + size > budget
            {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        Some(out)
    }
}

/// Group commit: appends hand their durability callback to this thread and return at once, so
/// openraft keeps accepting and replicating while the disk works. The thread takes every
/// callback waiting, makes one flush that covers all their entries, and only then tells
/// openraft, in order, that they are durable. It holds a database handle only while it has
/// work, so dropping the store closes the database as before.
fn group_commit(rx: std::sync::mpsc::Receiver<(sled::Db, LogFlushed<TypeConfig>)>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let result = waiting[0].0.flush().map(|_| ());
        for (db, callback) in waiting {
            drop(db);
            callback.log_io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(format!("flush appended log entries: {e}"))),
            );
        }
    }
}

/// A batch that deletes the entries of `logs` with indexes in `range`.
fn delete_batch(
    logs: &sled::Tree,
    range: impl RangeBounds<u64>,
) -> Result<sled::Batch, sled::Error> {
    let mut batch = sled::Batch::default();
    let Some((start, end)) = key_range(range) else {
        return Ok(batch);
    };
    let iter = match end {
        Some(end) => logs.range(index_key(start)..index_key(end)),
        None => logs.range(index_key(start)..),
    };
    for kv in iter.keys() {
        batch.remove(kv?);
    }
    Ok(batch)
}

impl LogStore {
    pub(crate) fn new(db: sled::Db, logs: sled::Tree, raft: sled::Tree) -> Self {
        let (flusher, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || group_commit(rx))
            .expect("the OS can start a thread");
        LogStore {
            db,
            logs,
            raft,
            flusher,
            recent: Arc::default(),
            first_kept: Arc::default(),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes entries at or below the last purged index that a crash between recording the
    /// purge and deleting the entries may have left behind.
    pub(crate) fn finish_interrupted_purge(&self) -> Result<(), StoreError> {
        let Some(purged) = self.read_meta_sync::<LogId>(KEY_LAST_PURGED)? else {
            return Ok(());
        };
        self.first_kept
            .store(purged.index + 1, std::sync::atomic::Ordering::Release);
        let batch = delete_batch(&self.logs, ..=purged.index)
            .map_err(|e| StoreError::sled("scan log entries", e))?;
        self.logs
            .apply_batch(batch)
            .map_err(|e| StoreError::sled("delete purged log entries", e))?;
        self.db.flush().map_err(|e| StoreError::sled("flush", e))?;
        Ok(())
    }

    fn read_meta_sync<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self
            .raft
            .get(key)
            .map_err(|e| StoreError::sled(format!("read raft meta '{key}'"), e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::corrupt(format!("raft meta '{key}'"), e))
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let bytes = self.raft.get(key).map_err(|e| {
            sled_err(
                subject.clone(),
                ErrorVerb::Read,
                format_args!("read raft meta '{key}'"),
                e,
            )
        })?;
        match bytes {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| decode_err(subject, format_args!("decode raft meta '{key}'"), e)),
        }
    }

    /// Writes (or with `None` removes) a raft metadata key and flushes before returning.
    async fn write_meta<T: Serialize>(
        &self,
        key: &str,
        value: Option<&T>,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let res = match value {
            Some(v) => {
                let bytes = serde_json::to_vec(v).map_err(|e| {
                    io_err(
                        subject.clone(),
                        ErrorVerb::Write,
                        format_args!("encode raft meta '{key}'"),
                        openraft::AnyError::new(&e),
                    )
                })?;
                self.raft.insert(key, bytes)
            }
            None => self.raft.remove(key),
        };
        res.map_err(|e| {
            sled_err(
                subject.clone(),
                ErrorVerb::Write,
                format_args!("write raft meta '{key}'"),
                e,
            )
        })?;
        flush(&self.db).await.map_err(|e| {
            io_err(
                subject,
                ErrorVerb::Write,
                format_args!("flush raft meta '{key}'"),
                e,
            )
        })
    }

    /// Decodes one stored entry and checks that it sits under its own index.
    fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, StorageError> {
        let index =
            key_index(key).map_err(|e| decode_err(ErrorSubject::Logs, "decode log key", e))?;
        let entry: Entry = serde_json::from_slice(value)
            .map_err(|e| decode_err(ErrorSubject::LogIndex(index), "decode log entry", e))?;
        if entry.log_id.index != index {
            return Err(decode_err(
                ErrorSubject::LogIndex(index),
                "decode log entry",
                format!("entry {} stored under index {index}", entry.log_id),
            ));
        }
        Ok(entry)
    }

    /// Reads entries in `range`, stopping once `budget` encoded bytes have been read (always
    /// returning the first entry found).
    fn read_entries(
        &self,
        range: impl RangeBounds<u64>,
        budget: Option<usize>,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some((start, end)) = key_range(range) else {
            return Ok(Vec::new());
        };
        let start = start.max(self.first_kept.load(std::sync::atomic::Ordering::Acquire));
        if end.is_some_and(|end| start >= end) {
            return Ok(Vec::new());
        }
        if let Some(entries) = self.recent().get(start, end, budget) {
            return Ok(entries);
        }
        let iter = match end {
            Some(end) => self.logs.range(index_key(start)..index_key(end)),
            None => self.logs.range(index_key(start)..),
        };
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for kv in iter {
            let (k, v) = kv.map_err(|e| {
                sled_err(ErrorSubject::Logs, ErrorVerb::Read, "read log entries", e)
            })?;
            if let Some(budget) = budget
                && !entries.is_empty()
                && bytes + v.len() > budget
            {
                break;
            }
            bytes += v.len();
            entries.push(Self::decode_entry(&k, &v)?);
        }
        Ok(entries)
    }
}

/// `range` as `[start, end)` with `end == None` meaning unbounded; `None` when empty.
fn key_range(range: impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if end <= start => None,
        _ => Some((start, end)),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(range, None)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(start..end, Some(REPLICATION_BATCH_BYTES))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> =
            self.read_meta(KEY_LAST_PURGED, ErrorSubject::Logs)?;
        let last = self.logs.last().map_err(|e| {
            sled_err(
                ErrorSubject::Logs,
                ErrorVerb::Read,
                "read last log entry",
                e,
            )
        })?;
        let last_entry_id = match last {
            Some((k, v)) => Some(Self::decode_entry(&k, &v)?.log_id),
            None => None,
        };
        // Entries at or below the purged id are gone, so the purged id bounds the last id.
        let last_log_id = std::cmp::max(last_entry_id, last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, Some(vote), ErrorSubject::Vote)
            .await
    }

    /// The vote as saved, except that it is never returned as committed: a node that led before
    /// it stopped campaigns again rather than resuming as leader (see `save_committed`).
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self
            .read_meta::<Vote>(KEY_VOTE, ErrorSubject::Vote)?
            .map(|v| Vote {
                committed: false,
                ..v
            }))
    }

    /// Recorded, not flushed: openraft calls this on every advance of the commit index, inside
    /// its core loop, and a flush there stalled the core for every batch of writes. The id
    /// becomes durable with the next flush of appended entries (or sled's own, every 500 ms),
    /// so after a crash it may lag. That is safe because nothing trusts it beyond applying
    /// entries on start-up, which are committed whatever the id says: a restarted node learns
    /// the rest from the leader. The one thing that did trust it was openraft resuming a
    /// restarted leader from its own committed vote, without an election, and answering read
    /// indexes from this id; a whole-cluster kill -9 then served a linearizable read one write
    /// behind (cluster test `whole_cluster_killed_and_restarted_keeps_its_state`). `read_vote`
    /// therefore hands the vote back uncommitted, so such a node wins a new election first, and
    /// its new term's first entry commits everything acknowledged before.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        match committed {
            Some(id) => serde_json::to_vec(&id)
                .map_err(|e| {
                    io_err(
                        ErrorSubject::Store,
                        ErrorVerb::Write,
                        "encode the committed log id",
                        openraft::AnyError::new(&e),
                    )
                })
                .and_then(|bytes| {
                    self.raft
                        .insert(KEY_COMMITTED, bytes)
                        .map(|_| ())
                        .map_err(|e| {
                            sled_err(
                                ErrorSubject::Store,
                                ErrorVerb::Write,
                                "write the committed log id",
                                e,
                            )
                        })
                }),
            None => self.raft.remove(KEY_COMMITTED).map(|_| ()).map_err(|e| {
                sled_err(
                    ErrorSubject::Store,
                    ErrorVerb::Write,
                    "remove the committed log id",
                    e,
                )
            }),
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(KEY_COMMITTED, ErrorSubject::Store)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut last = None;
        let mut appended = Vec::new();
        for entry in entries {
            let value = serde_json::to_vec(&entry).map_err(|e| {
                io_err(
                    ErrorSubject::Log(entry.log_id),
                    ErrorVerb::Write,
                    "encode log entry",
                    openraft::AnyError::new(&e),
                )
            })?;
            let size = value.len();
            batch.insert(&index_key(entry.log_id.index), value);
            last = Some(entry.log_id);
            appended.push((entry, size));
        }
        let subject = || last.map_or(ErrorSubject::Logs, ErrorSubject::Log);
        if let Err(e) = self.logs.apply_batch(batch) {
            let err = sled_err(subject(), ErrorVerb::Write, "append log entries", e);
            callback.log_io_completed(Err(std::io::Error::other(err.to_string())));
            return Err(err);
        }
        {
            let mut recent = self.recent();
            for (entry, size) in appended {
                recent.push(entry, size);
            }
        }
        // Durable later, in a group flush; openraft waits for the callback, not for this call.
        if let Err(std::sync::mpsc::SendError((_, callback))) =
            self.flusher.send((self.db.clone(), callback))
        {
            // The flush thread is gone (it never exits while a store lives): flush here.
            return match flush(&self.db).await {
                Ok(()) => {
                    callback.log_io_completed(Ok(()));
                    Ok(())
                }
                Err(e) => {
                    let err = io_err(subject(), ErrorVerb::Write, "flush appended log entries", e);
                    callback.log_io_completed(Err(std::io::Error::other(err.to_string())));
                    Err(err)
                }
            };
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent().truncate(log_id.index);
        let subject = ErrorSubject::Log(log_id);
        let batch = delete_batch(&self.logs, log_id.index..).map_err(|e| {
            sled_err(
                subject.clone(),
                ErrorVerb::Delete,
                "scan log entries to truncate",
                e,
            )
        })?;
        self.logs
            .apply_batch(batch)
            .map_err(|e| sled_err(subject.clone(), ErrorVerb::Delete, "truncate log", e))?;
        flush(&self.db)
            .await
            .map_err(|e| io_err(subject, ErrorVerb::Delete, "flush truncated log", e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let started_at = std::time::Instant::now();
        let subject = ErrorSubject::Log(log_id);
        // Record the purge durably first: a crash after this point leaves at most some entries
        // below the purged id, which `open` deletes; never a purged id that is too low.
        self.recent().purge(log_id.index);
        let current: Option<LogId> = self.read_meta(KEY_LAST_PURGED, ErrorSubject::Logs)?;
        if current < Some(log_id) {
            self.write_meta(KEY_LAST_PURGED, Some(&log_id), subject)
                .await?;
        }
        self.first_kept
            .fetch_max(log_id.index + 1, std::sync::atomic::Ordering::AcqRel);
        // The entries themselves (thousands: one per entry since the last snapshot) are
        // deleted in the background: openraft's core waits for this call, and deleting them
        // here took 75-160 ms with a large log, long enough for the leader's appends to this
        // node to time out. Reads already skip them (`first_kept`); a crash before they are
        // gone leaves them to `finish_interrupted_purge` at the next open.
        let logs = self.logs.clone();
        let upto = log_id.index;
        let spawned = std::thread::Builder::new()
            .name("raft-log-purge".into())
            .spawn(move || {
                let deleted = delete_batch(&logs, ..=upto).and_then(|b| logs.apply_batch(b));
                if let Err(e) = deleted {
                    tracing::warn!(
                        upto,
                        "deleting purged log entries failed (the next start retries): {e}"
                    );
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(
                upto,
                "cannot start the thread that deletes purged log entries (the next start does it): {e}"
            );
        }
        tracing::info!(
            upto = log_id.index,
            took_ms = started_at.elapsed().as_millis() as u64,
            "purged the log"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn recent_entries_stay_contiguous_and_answer_only_what_they_hold() {
        let mut r = Recent::default();
        for i in 5..=9 {
            r.push(blank(i), 10);
        }
        assert_eq!(indexes(r.get(6, Some(8), None)), Some(vec![6, 7]));
        assert_eq!(indexes(r.get(7, None, None)), Some(vec![7, 8, 9]));
        assert_eq!(indexes(r.get(4, Some(6), None)), None, "4 is not held");
        assert_eq!(
            indexes(r.get(8, Some(12), None)),
            None,
            "10 and 11 are not held"
        );
        assert_eq!(
            indexes(r.get(5, None, Some(25))),
            Some(vec![5, 6]),
            "the byte budget"
        );
        assert_eq!(
            indexes(r.get(5, None, Some(1))),
            Some(vec![5]),
            "always one entry"
        );
        r.truncate(8);
        assert_eq!(indexes(r.get(5, None, None)), Some(vec![5, 6, 7]));
        r.purge(5);
        assert_eq!(indexes(r.get(6, None, None)), Some(vec![6, 7]));
        r.push(blank(20), 10);
        assert_eq!(indexes(r.get(6, None, None)), None, "a gap starts over");
        assert_eq!(indexes(r.get(20, None, None)), Some(vec![20]));
        for i in 21..21 + RECENT_ENTRIES as u64 {
            r.push(blank(i), 1);
        }
        assert_eq!(r.entries.len(), RECENT_ENTRIES);
        assert_eq!(r.first_index(), Some(21));
    }
}
