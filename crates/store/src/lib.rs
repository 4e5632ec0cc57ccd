//! Durable Raft storage for the gateway: the openraft type configuration, a sled-backed log
//! store (vote, log entries, committed id) and a state machine holding [`gateway_model::State`],
//! with snapshots.
//!
//! This is the only crate that names sled. It must not depend on the network, the proxy or the
//! admin plane.
//!
//! One sled database per data dir, with four trees: `log` (entries keyed by big-endian index),
//! `raft` (vote, committed, last purged log id), `snapshot` (the current snapshot) and
//! `node_meta` ([`MetaStore`]). Every write openraft relies on is flushed to disk before it is
//! acknowledged; sled's own background flush (every 500 ms) is never relied upon.

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
    let sm = StateMachine::open(db.clone(), tree(TREE_SNAPSHOT)?)?;
    let meta = MetaStore::new(db.clone(), tree(TREE_NODE_META)?);
    Ok(Storage { log, sm, meta })
}
