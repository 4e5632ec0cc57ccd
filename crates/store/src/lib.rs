//! Durable Raft storage for the gateway: the openraft type configuration, a sled-backed log
//! store (vote, log entries, committed id) and a state machine holding [`gateway_model::State`],
//! with snapshots.
//!
//! This is the only crate that names sled. It must not depend on the network, the proxy or the
//! admin plane.
//!
//! Two sled databases per data dir. The main one has three trees: `log` (entries keyed by
//! big-endian index), `raft` (vote, committed, last purged log id) and `node_meta`
//! ([`MetaStore`]). The second, in the subfolder `snapshots`, holds the current snapshot (tree
//! `snapshot`): a snapshot is megabytes written at once, and sled writes a large value while
//! holding its log buffer, so in the main database every log flush (and with it every Raft
//! append) waited for it, long enough for the leader's appends to time out (bench/README.md).
//! Every write openraft relies on is flushed to disk before it is acknowledged; sled's own
//! background flush (every 500 ms) is never relied upon.

mod error;
mod log_store;
mod meta;
mod state_machine;
mod types;
mod util;

pub use error::StoreError;
pub use log_store::{LogStore, REPLICATION_BATCH_BYTES};
pub use meta::MetaStore;
pub use state_machine::{SnapshotBuilder, StateMachine};
pub use types::*;

use std::path::Path;

/// Names of the sled trees.
const TREE_LOG: &str = "log";
const TREE_RAFT: &str = "raft";
const TREE_SNAPSHOT: &str = "snapshot";
const TREE_NODE_META: &str = "node_meta";
/// The snapshot database's folder inside the store's.
const SNAPSHOT_DIR: &str = "snapshots";

/// Everything a node keeps in its data dir.
pub struct Storage {
    /// The Raft log store (give to `Raft::new`).
    pub log: LogStore,
    /// The state machine (give to `Raft::new` after [`StateMachine::subscribe`]).
    pub sm: StateMachine,
    /// Node-local key/values.
    pub meta: MetaStore,
}

/// Opens the store in `dir`, creating the directory and the database if they do not exist.
///
/// The state machine is restored from the persisted snapshot, if any; openraft re-applies the
/// committed entries after it when the Raft node starts. Fails with [`StoreError::Locked`] when
/// another running process has the data dir open.
pub fn open(dir: &Path) -> Result<Storage, StoreError> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(64 * 1024 * 1024)
        .open()
        .map_err(|e| StoreError::from_open(dir.to_path_buf(), e))?;
    let tree = |name: &str| {
        db.open_tree(name)
            .map_err(|e| StoreError::sled(format!("open tree '{name}'"), e))
    };
    let log = LogStore::new(db.clone(), tree(TREE_LOG)?, tree(TREE_RAFT)?);
    log.finish_interrupted_purge()?;
    let snap_dir = dir.join(SNAPSHOT_DIR);
    let snap_db = sled::Config::new()
        .path(&snap_dir)
        .cache_capacity(4 * 1024 * 1024)
        .flush_every_ms(None)
        .open()
        .map_err(|e| StoreError::from_open(snap_dir, e))?;
    let snapshots = snap_db
        .open_tree(TREE_SNAPSHOT)
        .map_err(|e| StoreError::sled(format!("open tree '{TREE_SNAPSHOT}'"), e))?;
    // Data dirs written before the snapshots had a database of their own hold the snapshot in
    // the main one: move it (copied and flushed before the old copy goes).
    state_machine::move_snapshot(&db, &tree(TREE_SNAPSHOT)?, &snap_db, &snapshots)?;
    let sm = StateMachine::open(snap_db, snapshots)?;
    let meta = MetaStore::new(db.clone(), tree(TREE_NODE_META)?);
    Ok(Storage { log, sm, meta })
}
