//! Gathering queued writes into one batch before it is sent.
//!
//! The proposer (one log entry per batch) and the forwarder (one `WriteBatch` call per batch)
//! both take what is queued once a slot frees. Taking only what is queued at that instant
//! made small batches under load: with 16 clients, every node flushed its log about once per
//! two writes, and the flushes alone (sled's IO threads, mostly the virtual disk's write
//! requests) were a third of the three nodes' CPU (bench/README.md, "session 11"). The writes
//! that would have joined were already on their way: in sockets not yet polled, or in request
//! tasks ready to run.
//!
//! [`gather`] lets them arrive. Before a batch leaves, its task steps aside with tokio's
//! `yield_now`, which resumes it only after the worker has run every other ready task and
//! polled its sockets, and takes what arrived; [`GATHER_ROUNDS`] times. An idle node pays those
//! rounds once per write (microseconds: no timer, no sleep); a busy one sends fuller batches.

use tokio::sync::mpsc;

/// How many rounds [`gather`] waits (a round: every ready task runs, the sockets are polled).
/// Measured with `SYSTEMS=gateway bench/raft-writes.sh 10`, builds alternated, five runs each
/// (medians): 9151e6d (no gathering) gave 2,831 writes/s via the leader and 2,358 via a
/// follower; 6 rounds gave 3,987 and 3,438. Stopping early after a round that brought nothing
/// gave only 3,092 and 2,770: a quiet round does not mean that nothing is coming (the writes
/// may be on the other worker, or still being parsed). 12 rounds gave no more than 6 in two
/// runs. The variants were uncommitted builds, so only the first row has a commit to rebuild
/// (bench/README.md, "session 11").
pub(crate) const GATHER_ROUNDS: usize = 6;

/// Adds queued items to a batch through `take` (which returns `false` once the batch is full),
/// over [`GATHER_ROUNDS`] rounds of the runtime.
pub(crate) async fn gather<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    mut take: impl FnMut(T) -> bool,
) {
    for round in 0..=GATHER_ROUNDS {
        if round > 0 {
            tokio::task::yield_now().await;
        }
        while let Ok(item) = rx.try_recv() {
            if !take(item) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "current_thread")]
    async fn an_item_sent_by_a_ready_task_joins_the_batch() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(1).unwrap();
        // A task that becomes ready now: it runs while the gatherer steps aside.
        let sender = tokio::spawn(async move {
            tx.send(2).unwrap();
            tokio::task::yield_now().await;
            tx.send(3).unwrap();
        });
        let mut batch = Vec::new();
        gather(&mut rx, |i| {
            batch.push(i);
            true
        })
        .await;
        assert_eq!(batch, vec![1, 2, 3]);
        sender.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_queue_waits_the_set_rounds_and_no_more() {
        let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
        let polls = Arc::new(AtomicUsize::new(0));
        // Counts the rounds: this task is ready again after each one.
        let counter = {
            let polls = polls.clone();
            tokio::spawn(async move {
                loop {
                    polls.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
            })
        };
        tokio::task::yield_now().await;
        let before = polls.load(Ordering::SeqCst);
        let mut batch = Vec::new();
        gather(&mut rx, |i| {
            batch.push(i);
            true
        })
        .await;
        let rounds = polls.load(Ordering::SeqCst) - before;
        assert!(batch.is_empty());
        assert!(
            (GATHER_ROUNDS..=GATHER_ROUNDS + 1).contains(&rounds),
            "an idle gather waited {rounds} rounds"
        );
        counter.abort();
        drop(tx);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_queue_stops_after_the_last_round() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Sends one item every round, for ever.
        let sender = tokio::spawn(async move {
            for i in 0.. {
                if tx.send(i).is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        tokio::task::yield_now().await;
        let mut batch = Vec::new();
        gather(&mut rx, |i| {
            batch.push(i);
            true
        })
        .await;
        assert!(
            batch.len() <= GATHER_ROUNDS + 2 && batch.len() > GATHER_ROUNDS / 2,
            "took {} items",
            batch.len()
        );
        drop(rx);
        sender.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_batch_stops_at_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..10 {
            tx.send(i).unwrap();
        }
        let mut batch = Vec::new();
        gather(&mut rx, |i| {
            batch.push(i);
            batch.len() < 4
        })
        .await;
        assert_eq!(batch, vec![0, 1, 2, 3]);
        assert_eq!(rx.try_recv().unwrap(), 4);
    }
}
