//! The retry budget of a pool: retries may add at most a percentage on top of the requests
//! the pool received over a sliding window, plus a floor of retries per second, so that a
//! failing backend cannot make retries multiply the load (Finagle's and Linkerd's budgets).
//!
//! The window is ten one-second buckets of atomic counters. Counting a request touches one
//! bucket; only a retry sums the window. Buckets are reset lazily by whoever first sees a new
//! second, so concurrent requests at a second's boundary may be counted in either second: the
//! budget is approximate by design and never blocks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Seconds in the sliding window.
pub(crate) const WINDOW_SECS: u64 = 10;

/// Default share of retries on top of requests, in percent.
pub(crate) const DEFAULT_PERCENT: u32 = 20;
/// Default retries per second always allowed.
pub(crate) const DEFAULT_MIN_PER_SECOND: u32 = 10;

#[derive(Default)]
struct Bucket {
    /// The second (since `RetryBudget::start`) this bucket counts, plus one (0: never used).
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Request and retry counts of one pool over the last [`WINDOW_SECS`] seconds.
pub(crate) struct RetryBudget {
    start: Instant,
    buckets: [Bucket; WINDOW_SECS as usize],
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            start: Instant::now(),
            buckets: Default::default(),
        }
    }
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget").finish_non_exhaustive()
    }
}

/// The policy: `percent` of requests, plus `min_per_second` retries each second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BudgetPolicy {
    pub(crate) percent: u32,
    pub(crate) min_per_second: u32,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        BudgetPolicy {
            percent: DEFAULT_PERCENT,
            min_per_second: DEFAULT_MIN_PER_SECOND,
        }
    }
}

impl RetryBudget {
    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// The bucket of second `s`, reset if it still holds an older second.
    fn bucket(&self, s: u64) -> &Bucket {
        let b = &self.buckets[(s % WINDOW_SECS) as usize];
        let tag = s + 1;
        let seen = b.second.load(Relaxed);
        if seen != tag
            && b.second
                .compare_exchange(seen, tag, Relaxed, Relaxed)
                .is_ok()
        {
            b.requests.store(0, Relaxed);
            b.retries.store(0, Relaxed);
        }
        b
    }

    /// Counts one request (its first attempt).
    pub(crate) fn record_request(&self) {
        self.record_request_at(self.now());
    }

    fn record_request_at(&self, s: u64) {
        self.bucket(s).requests.fetch_add(1, Relaxed);
    }

    /// Takes one retry from the budget if there is room; `false` when it is spent.
    pub(crate) fn try_retry(&self, policy: BudgetPolicy) -> bool {
        self.try_retry_at(policy, self.now())
    }

    fn try_retry_at(&self, policy: BudgetPolicy, s: u64) -> bool {
        let oldest = (s + 1).saturating_sub(WINDOW_SECS);
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let tag = b.second.load(Relaxed);
            if tag > oldest && tag <= s + 1 {
                requests += b.requests.load(Relaxed);
                retries += b.retries.load(Relaxed);
            }
        }
        let allowed = requests * u64::from(policy.percent) / 100
            + u64::from(policy.min_per_second) * WINDOW_SECS;
        if retries >= allowed {
            return false;
        }
        self.bucket(s).retries.fetch_add(1, Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_a_share_of_requests_plus_a_floor() {
        let b = RetryBudget::default();
        let no_floor = BudgetPolicy {
            percent: 20,
            min_per_second: 0,
        };
        assert!(!b.try_retry_at(no_floor, 0), "nothing to retry on");
        for _ in 0..100 {
            b.record_request_at(0);
        }
        let granted = (0..100).filter(|_| b.try_retry_at(no_floor, 0)).count();
        assert_eq!(granted, 20, "20% of 100 requests");
        // The floor: 1 retry per second over the 10 s window, on top.
        let floor = BudgetPolicy {
            percent: 20,
            min_per_second: 1,
        };
        let granted = (0..100).filter(|_| b.try_retry_at(floor, 3)).count();
        assert_eq!(granted, 10);
        // Requests and retries older than the window no longer count: after 10 s the share
        // is earned again from new requests only.
        for _ in 0..10 {
            b.record_request_at(14);
        }
        let granted = (0..100).filter(|_| b.try_retry_at(no_floor, 14)).count();
        assert_eq!(granted, 2, "20% of the 10 requests still in the window");
        // A bucket reused for a later second starts from zero.
        assert!(!b.try_retry_at(no_floor, 25));
        let zero = BudgetPolicy {
            percent: 0,
            min_per_second: 0,
        };
        for _ in 0..1000 {
            b.record_request_at(30);
        }
        assert!(!b.try_retry_at(zero, 30), "a zero budget allows no retry");
        assert!(b.try_retry_at(BudgetPolicy::default(), 30));
    }
}
