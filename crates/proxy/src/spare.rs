//! Read buffers of finished requests, kept by each data plane worker for its next ones.
//!
//! A keep-alive connection holds no buffer between requests (that is what keeps an idle
//! connection near 1 KB), so each request used to read into a new 4 KB buffer, and the head
//! split off it turned the buffer into a shared one, a second allocation: two allocations and
//! two frees per request, each on a block no cache had seen lately. A worker now keeps the
//! buffers of its finished requests, once nothing else refers to them, and its next requests
//! read into those, warm in its cache. It keeps at most `KEEP` (what it has in flight at once,
//! under the benchmark's load), so memory does not grow with the idle connections.
//!
//! Threads that are not data plane workers keep nothing (`crate::stash`, as for `timer`).

use crate::stash::{KeepGuard, Stash};
use bytes::BytesMut;

/// How many spare buffers a worker keeps.
const KEEP: usize = 64;
/// A buffer grown larger than this (a long head, pipelined requests) is not kept.
const MAX_KEPT: usize = 16 * 1024;

thread_local! {
    /// This worker's spare buffers.
    static SPARE: Stash<BytesMut> = const { Stash::new() };
}

/// Keeps spare buffers on this thread until the guard drops (a data plane worker, for its
/// runtime's life).
pub(crate) fn keep_on_this_thread() -> KeepGuard<BytesMut> {
    crate::stash::keep_on_this_thread(&SPARE)
}

/// An empty buffer to read a request into: a kept one, or a new one (not yet allocated).
pub(crate) fn take() -> BytesMut {
    SPARE.with(Stash::pop).unwrap_or_default()
}

/// Gives back an empty buffer of a finished request: kept when nothing else refers to its
/// memory any more (the head split off it is gone) and this worker keeps fewer than `KEEP`.
pub(crate) fn give(mut buf: BytesMut, first: usize) {
    if !buf.is_empty() || !buf.try_reclaim(first) || buf.capacity() > MAX_KEPT {
        return;
    }
    SPARE.with(|spare| spare.push(buf, KEEP));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_keeps_buffers_nothing_else_refers_to() {
        // Not a worker: nothing is kept.
        give(BytesMut::with_capacity(4096), 4096);
        assert_eq!(take().capacity(), 0);

        let _keep = keep_on_this_thread();
        let mut buf = BytesMut::with_capacity(4096);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split_to(buf.len()).freeze();
        // The head still refers to the memory: not kept.
        give(buf, 4096);
        assert_eq!(take().capacity(), 0);

        let mut buf = BytesMut::with_capacity(4096);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head2 = buf.split_to(buf.len()).freeze();
        drop(head2);
        // Reclaimed whole once the head is gone, and handed out again.
        give(buf, 4096);
        let again = take();
        assert!(again.is_empty());
        assert!(again.capacity() >= 4096);
        drop((again, head));

        // A buffer with bytes in it, or grown past the limit, is not kept.
        let mut full = BytesMut::with_capacity(4096);
        full.extend_from_slice(b"x");
        give(full, 4096);
        give(BytesMut::with_capacity(MAX_KEPT + 1), 4096);
        assert_eq!(take().capacity(), 0);

        // At most KEEP.
        for _ in 0..KEEP + 10 {
            give(BytesMut::with_capacity(4096), 4096);
        }
        let mut kept = 0;
        while take().capacity() > 0 {
            kept += 1;
        }
        assert_eq!(kept, KEEP);
    }
}
