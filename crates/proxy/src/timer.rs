//! The deadline of a request's wait for its backend, on timers each worker reuses.
//!
//! `tokio::time::timeout` files a new timer in the runtime's wheel for each request and takes
//! it out again when the answer comes, two trips through the wheel's lock: 1.5 % of the data
//! plane's CPU time per proxied request (bench/README.md, session 21). A timer that stays
//! filed can instead be moved to a later deadline with one atomic operation: the wheel finds
//! the new deadline when it reaches the old one, and files it again then (once per timeout at
//! most). So each data plane worker keeps the timers of its finished requests, and a new
//! request takes one and moves it forward.
//!
//! A kept timer that reaches its deadline while unused wakes the task that used it last, which
//! then finds nothing to do (until then it holds that task's memory: at most `KEEP` tasks).
//! Threads that are not data plane workers (tests' runtimes, for one) keep nothing, since a
//! timer belongs to the runtime it was made on.

use crate::stash::{KeepGuard, Stash};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// How many idle timers a worker keeps: about the requests it has in flight at once.
const KEEP: usize = 256;

thread_local! {
    /// This worker's idle timers.
    static IDLE: Stash<Pin<Box<Sleep>>> = const { Stash::new() };
}

/// Keeps timers on this thread until the guard drops (a data plane worker, for its runtime's
/// life).
pub(crate) fn keep_on_this_thread() -> KeepGuard<Pin<Box<Sleep>>> {
    crate::stash::keep_on_this_thread(&IDLE)
}

/// The wait for `fut` ran out after `after`.
#[derive(Debug)]
pub(crate) struct Elapsed;

/// `fut`'s output, or `Elapsed` once `after` has passed: `tokio::time::timeout` on a reused
/// timer.
pub(crate) fn within<F: Future>(after: Duration, fut: F) -> Within<F> {
    Within {
        fut,
        sleep: Some(take(Instant::now() + after)),
    }
}

pin_project_lite::pin_project! {
    /// A plain struct rather than an `async fn`, which would hold the wrapped future twice.
    pub(crate) struct Within<F> {
        #[pin]
        fut: F,
        // Given back when the wait ends; dropped with the wait if it is dropped half-way.
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = match this.fut.poll(cx) {
            Poll::Ready(out) => Ok(out),
            Poll::Pending => match this.sleep {
                Some(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    Err(Elapsed)
                }
                // Polled again after it ended: the wrapped future decides alone.
                None => return Poll::Pending,
            },
        };
        if let Some(sleep) = this.sleep.take() {
            give_back(sleep);
        }
        Poll::Ready(out)
    }
}

/// One of this worker's idle timers set to `deadline`, or a new one.
fn take(deadline: Instant) -> Pin<Box<Sleep>> {
    match IDLE.with(Stash::pop) {
        Some(mut sleep) => {
            // Later than the deadline it holds (the usual case): one atomic operation.
            sleep.as_mut().reset(deadline);
            sleep
        }
        None => Box::pin(tokio::time::sleep_until(deadline)),
    }
}

fn give_back(sleep: Pin<Box<Sleep>>) {
    IDLE.with(|idle| idle.push(sleep, KEEP));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;

    fn kept() -> usize {
        IDLE.with(Stash::len)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reused_timer_fires_at_its_new_deadline_earlier_or_later() {
        let _keep = keep_on_this_thread();
        // A long timeout that was not needed leaves its timer for the next request.
        assert_eq!(
            within(Duration::from_secs(30), async { 1 }).await.unwrap(),
            1
        );
        assert_eq!(kept(), 1);

        // Earlier than the kept one's deadline: it is filed again, and fires on time.
        let t = StdInstant::now();
        let out = within(Duration::from_millis(40), std::future::pending::<()>()).await;
        assert!(out.is_err());
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(40) && waited < Duration::from_secs(10),
            "fired after {waited:?}"
        );
        assert_eq!(kept(), 1, "the fired timer is kept too");

        // Later deadlines move it forward: not before the new one.
        within(Duration::from_millis(10), async {}).await.unwrap();
        let t = StdInstant::now();
        let out = within(Duration::from_millis(80), std::future::pending::<()>()).await;
        assert!(out.is_err());
        assert!(
            t.elapsed() >= Duration::from_millis(80),
            "{:?}",
            t.elapsed()
        );

        // An answer that comes before the deadline wins.
        let out = within(Duration::from_secs(5), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            7
        })
        .await;
        assert_eq!(out.unwrap(), 7);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn workers_keep_a_bounded_number_and_other_threads_none() {
        // Not a data plane worker: nothing is kept.
        within(Duration::from_secs(1), async {}).await.unwrap();
        assert_eq!(kept(), 0);

        let keep = keep_on_this_thread();
        // Many requests in flight at once each take a timer; all come back, up to the bound.
        let waits: Vec<_> = (0..KEEP + 10)
            .map(|_| within(Duration::from_secs(30), tokio::task::yield_now()))
            .collect();
        for out in futures::future::join_all(waits).await {
            out.unwrap();
        }
        assert_eq!(kept(), KEEP);
        drop(keep);
        assert_eq!(kept(), 0);
    }
}
