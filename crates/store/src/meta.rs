//! Node-local key/values that are not replicated: node id, cluster id, addresses, secret.

use crate::StoreError;

/// Node-local settings kept in the data dir. Cheap to clone.
#[derive(Clone)]
pub struct MetaStore {
    db: sled::Db,
    tree: sled::Tree,
}

impl MetaStore {
    pub(crate) fn new(db: sled::Db, tree: sled::Tree) -> Self {
        MetaStore { db, tree }
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let Some(bytes) = self
            .tree
            .get(key)
            .map_err(|e| StoreError::sled(format!("read node meta '{key}'"), e))?
        else {
            return Ok(None);
        };
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|e| StoreError::corrupt(format!("node meta '{key}'"), e))
    }

    /// Stores `value` under `key`; it is on disk (flushed) when this returns. Blocks the
    /// calling thread for the flush, so call it at startup or from a blocking context.
    pub fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.tree
            .insert(key, value.as_bytes())
            .map_err(|e| StoreError::sled(format!("write node meta '{key}'"), e))?;
        self.db
            .flush()
            .map_err(|e| StoreError::sled(format!("flush node meta '{key}'"), e))?;
        Ok(())
    }
}
