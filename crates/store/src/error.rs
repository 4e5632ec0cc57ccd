//! Errors of the store: what failed, on which data dir or key, and why.

use std::path::PathBuf;

/// An error opening or using the store outside openraft's storage traits (which report
/// [`openraft::StorageError`] instead).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another running process holds the lock on the sled database in this data dir.
    #[error("data dir {} is in use by another gateway process", dir.display())]
    Locked { dir: PathBuf },

    /// The database in the data dir could not be opened.
    #[error("cannot open the store in data dir {}: {source}", dir.display())]
    Open {
        dir: PathBuf,
        #[source]
        source: sled::Error,
    },

    /// A read, write or flush of the database failed.
    #[error("store {op} failed: {source}")]
    Sled {
        /// What was being done, e.g. `set node meta key 'node_id'`.
        op: String,
        #[source]
        source: sled::Error,
    },

    /// Data read back from the store could not be decoded.
    #[error("corrupt {what} in the store: {reason}")]
    Corrupt { what: String, reason: String },
}

impl StoreError {
    /// True when the data dir is locked by another running process.
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Locked { .. })
    }

    pub(crate) fn sled(op: impl Into<String>, source: sled::Error) -> Self {
        StoreError::Sled {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl ToString) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// Classifies an error of `sled::Config::open`: sled reports a held file lock as an
    /// `io::Error` of kind `Other` whose message starts with "could not acquire lock on".
    pub(crate) fn from_open(dir: PathBuf, source: sled::Error) -> Self {
        if let sled::Error::Io(io) = &source
            && io.to_string().contains("could not acquire lock")
        {
            return StoreError::Locked { dir };
        }
        StoreError::Open { dir, source }
    }
}
