//! Per-route limits: per-client-IP rate limiting (token buckets) and the most requests of a
//! route served at once. Both are counted on each node (a client spread over three nodes gets
//! three buckets), and both survive route-table swaps: they live in [`RouteShared`], which
//! the registry hands to every table compiled for the same route name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shards of the bucket map, so concurrent clients rarely wait on one lock.
const SHARDS: usize = 16;
/// Buckets idle this long past full are forgotten.
const IDLE: Duration = Duration::from_secs(60);

/// A route's rate: `per_second` tokens a second, at most `burst` saved up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rate {
    pub(crate) per_second: f64,
    pub(crate) burst: f64,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per client IP.
pub(crate) struct RateLimiter {
    rate: Rate,
    shards: Box<[Mutex<HashMap<IpAddr, Bucket>>]>,
    /// Takes since the last sweep of idle buckets.
    takes: AtomicUsize,
}

impl RateLimiter {
    pub(crate) fn new(rate: Rate) -> Self {
        RateLimiter {
            rate,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            takes: AtomicUsize::new(0),
        }
    }

    pub(crate) fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes a token for `ip`: `Ok` when the request may go, else how long until a token.
    pub(crate) fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let ip = ip.to_canonical();
        let shard = &self.shards[shard_of(ip)];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let Rate { per_second, burst } = self.rate;
        let b = map.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_second).min(burst);
        b.at = now;
        let result = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / per_second))
        };
        // Now and then, forget clients that have been quiet (their bucket is full again).
        if self.takes.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            let full_after = Duration::from_secs_f64(burst / per_second) + IDLE;
            map.retain(|_, b| now.saturating_duration_since(b.at) < full_after);
        }
        result
    }
}

fn shard_of(ip: IpAddr) -> usize {
    let h = match ip {
        IpAddr::V4(a) => u32::from(a) as u64,
        IpAddr::V6(a) => {
            let v = u128::from(a);
            (v as u64) ^ ((v >> 64) as u64)
        }
    };
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

/// A route's cache, with the route revision and settings it was made for.
type CacheSlot = Mutex<Option<(u64, gateway_model::RouteCache, Arc<crate::cache::Cache>)>>;

/// What one route keeps across table swaps.
#[derive(Default)]
pub(crate) struct RouteShared {
    /// Requests of the route in flight on this node.
    pub(crate) active: AtomicUsize,
    /// The route's limiter, kept while its rate stays the same.
    pub(crate) limiter: Mutex<Option<Arc<RateLimiter>>>,
    /// The route's cache and the route revision it was made for: any change of the route
    /// starts an empty one.
    pub(crate) cache: CacheSlot,
}

impl RouteShared {
    /// The limiter for `rate` (the same buckets as before if the rate did not change).
    pub(crate) fn limiter(&self, rate: Option<Rate>) -> Option<Arc<RateLimiter>> {
        let mut cur = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        match rate {
            None => {
                *cur = None;
                None
            }
            Some(r) => {
                if cur.as_ref().is_none_or(|l| l.rate() != r) {
                    *cur = Some(Arc::new(RateLimiter::new(r)));
                }
                cur.clone()
            }
        }
    }
}

impl RouteShared {
    /// The cache for the route at `revision` with `spec` (the same one, entries and all, while
    /// the route does not change).
    pub(crate) fn cache(
        &self,
        spec: Option<&gateway_model::RouteCache>,
        revision: u64,
        stats: &Arc<crate::metrics::RouteStats>,
    ) -> Option<Arc<crate::cache::Cache>> {
        let mut cur = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let Some(spec) = spec else {
            *cur = None;
            return None;
        };
        if cur
            .as_ref()
            .is_none_or(|(rev, was, _)| *rev != revision || was != spec)
        {
            *cur = Some((
                revision,
                spec.clone(),
                Arc::new(crate::cache::Cache::new(spec, stats.clone())),
            ));
        }
        cur.as_ref().map(|(_, _, c)| c.clone())
    }
}

/// The cluster's node-wide limits as this node applies them (0: none), set on every state
/// change, with the counts they bound.
#[derive(Default)]
pub(crate) struct NodeLimits {
    max_requests: AtomicUsize,
    max_connections: AtomicUsize,
    /// Requests between head and response head now (counted only while a limit is set).
    requests: AtomicUsize,
    /// Woken when the limits change, and when a connection closes while a connection limit
    /// is set (the accept loop waits on it at the limit).
    pub(crate) room: tokio::sync::Notify,
}

impl NodeLimits {
    pub(crate) fn set(&self, l: &gateway_model::Limits) {
        let n = |v: Option<u32>| v.map_or(0, |v| v as usize);
        self.max_requests
            .store(n(l.max_requests), Ordering::Relaxed);
        self.max_connections
            .store(n(l.max_connections), Ordering::Relaxed);
        self.room.notify_waiters();
    }

    /// The connection limit (0: none).
    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Counts a request until the slot drops; `Err(limit)` when the node is full. Without a
    /// limit, one relaxed load and nothing counted.
    pub(crate) fn enter(&self) -> Result<Option<NodeSlot<'_>>, usize> {
        let max = self.max_requests.load(Ordering::Relaxed);
        if max == 0 {
            return Ok(None);
        }
        if self.requests.fetch_add(1, Ordering::AcqRel) >= max {
            self.requests.fetch_sub(1, Ordering::AcqRel);
            return Err(max);
        }
        Ok(Some(NodeSlot(self)))
    }
}

/// A request counted against the node's `max_requests`.
pub(crate) struct NodeSlot<'a>(&'a NodeLimits);

impl Drop for NodeSlot<'_> {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a request against its route's `max_concurrent` until dropped.
pub(crate) struct RouteGuard(Arc<RouteShared>);

impl RouteGuard {
    /// Enters the route if it has room (`max == 0`: no limit).
    pub(crate) fn enter(shared: &Arc<RouteShared>, max: usize) -> Option<RouteGuard> {
        let prev = shared.active.fetch_add(1, Ordering::AcqRel);
        if max != 0 && prev >= max {
            shared.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(RouteGuard(shared.clone()))
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for RouteGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteGuard")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = RateLimiter::new(Rate {
            per_second: 10.0,
            burst: 3.0,
        });
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let t0 = Instant::now();
        for _ in 0..3 {
            l.take(ip, t0).unwrap();
        }
        let wait = l.take(ip, t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Another client has its own bucket.
        l.take(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), t0).unwrap();
        // 100 ms later one more token is there, not two.
        let t1 = t0 + Duration::from_millis(100);
        l.take(ip, t1).unwrap();
        assert!(l.take(ip, t1).is_err());
    }

    #[test]
    fn the_route_guard_counts_up_to_its_limit() {
        let s = Arc::new(RouteShared::default());
        let a = RouteGuard::enter(&s, 2).unwrap();
        let _b = RouteGuard::enter(&s, 2).unwrap();
        assert!(RouteGuard::enter(&s, 2).is_none());
        drop(a);
        assert!(RouteGuard::enter(&s, 2).is_some());
        assert!(RouteGuard::enter(&s, 0).is_some());
    }
}
