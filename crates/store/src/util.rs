//! Helpers shared by the log store and the state machine: durable flushes, key encoding and
//! error conversion into openraft's [`StorageError`](crate::StorageError).

use crate::{NodeId, StorageError};
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

/// Writes every dirty sled buffer to disk and fsyncs it.
///
/// sled's own background flush runs only every 500 ms, so anything openraft is told is durable
/// must pass through here first. `Db::flush` blocks, so it runs on tokio's blocking pool.
pub(crate) async fn flush(db: &sled::Db) -> Result<(), AnyError> {
    let db = db.clone();
    match tokio::task::spawn_blocking(move || db.flush()).await {
        Ok(Ok(_bytes)) => Ok(()),
        Ok(Err(e)) => Err(AnyError::new(&e).add_context(|| "sled flush")),
        Err(join) => Err(AnyError::new(&join).add_context(|| "sled flush task")),
    }
}

/// Log entry key: the index as big-endian u64 so that sled's byte order is index order.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index encoded in a log entry key.
pub(crate) fn key_index(key: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| format!("log key of {} bytes, expected 8", key.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// A storage error about `subject`, with `context` saying what was being done.
pub(crate) fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    context: impl std::fmt::Display,
    source: AnyError,
) -> StorageError {
    StorageIOError::new(subject, verb, source.add_context(|| context)).into()
}

/// A storage error from a sled error.
pub(crate) fn sled_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    context: impl std::fmt::Display,
    e: sled::Error,
) -> StorageError {
    io_err(subject, verb, context, AnyError::new(&e))
}

/// A storage error for data that could not be decoded.
pub(crate) fn decode_err(
    subject: ErrorSubject<NodeId>,
    context: impl std::fmt::Display,
    reason: impl std::fmt::Display,
) -> StorageError {
    io_err(
        subject,
        ErrorVerb::Read,
        context,
        AnyError::error(format!("corrupt data: {reason}")),
    )
}
