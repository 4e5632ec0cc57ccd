//! openraft's own storage test suite against [`LogStore`] and [`StateMachine`], each run on a
//! fresh sled database in its own temporary directory.

use gateway_store::{LogStore, StateMachine, StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let storage = gateway_store::open(dir.path()).expect("open store");
        Ok((dir, storage.log, storage.sm))
    }
}

#[test]
fn openraft_storage_suite() -> anyhow::Result<()> {
    // The suite runs every case on its own tokio runtime, so this test is not async.
    Suite::test_all(SledBuilder)?;
    Ok(())
}
