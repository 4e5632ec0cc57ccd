//! Data-plane counters, and the read side the admin plane scrapes.
//!
//! Counters live where the request path already is: per route (status classes per backend of
//! the route's pool, a latency histogram, requests forwarded to the leader) in [`RouteStats`],
//! per backend in `BackendStats`, per pool in `PoolShared`. All of them are kept in the
//! `Registry` by name, so they survive route-table swaps like the least-connections counts do.
//! The request path only does relaxed atomic adds on them: no lock and no allocation.
//!
//! [`Metrics`] is the handle the node gives the admin plane: [`Metrics::snapshot`] reads the
//! counters of the live table (routes, pools and backends it no longer has are left out).

use crate::table::RouteTable;
use arc_swap::ArcSwapOption;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the request latency histogram's buckets (the last one, `+Inf`,
/// is implied).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Requests by status class (1xx .. 5xx).
#[derive(Default, Debug)]
pub(crate) struct Classes([AtomicU64; 5]);

impl Classes {
    pub(crate) fn record(&self, status: u16) {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[i].fetch_add(1, Relaxed);
    }

    fn read(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.0[i].load(Relaxed))
    }
}

/// A latency histogram with fixed buckets.
#[derive(Default, Debug)]
pub(crate) struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    fn read(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
        for (i, &le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            buckets.push((le, cumulative));
        }
        let count = cumulative + self.buckets[LATENCY_BUCKETS.len()].load(Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// Counters of one route, kept across table swaps by route name.
#[derive(Default, Debug)]
pub(crate) struct RouteStats {
    /// Time from the request head to the response head.
    pub(crate) latency: Histogram,
    /// Answers to requests that no backend served (no backends, a refused hop marker, ...).
    pub(crate) unserved: Classes,
    /// Answers to writes carried to the leader node.
    pub(crate) to_leader: Classes,
    /// What the route's `cache` did (all zero without one).
    pub(crate) cache: CacheCounters,
}

/// Counters of a route's cache (module `cache`).
#[derive(Default, Debug)]
pub(crate) struct CacheCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) passes: AtomicU64,
}

/// Node-wide counters that belong to no route.
#[derive(Default, Debug)]
struct Global {
    /// HTTP connections open now and accepted in all.
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    /// Upgraded (WebSocket) tunnels open now and opened in all.
    websockets_open: AtomicI64,
    websockets_total: AtomicU64,
    /// Requests no route matched (404).
    no_route: AtomicU64,
}

#[derive(Default)]
struct Inner {
    global: Global,
    table: ArcSwapOption<RouteTable>,
    /// Client connections each data plane worker serves now.
    workers: std::sync::Mutex<Option<Arc<[AtomicUsize]>>>,
}

/// The data plane's counters, readable from anywhere (cheap to clone).
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Counts an open WebSocket (upgraded) tunnel until dropped.
pub(crate) struct TunnelGuard(Metrics);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.inner.global.websockets_open.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    /// A fresh set of counters.
    pub fn new() -> Self {
        Metrics::default()
    }

    pub(crate) fn connection_opened(&self) {
        let g = &self.inner.global;
        g.connections_open.fetch_add(1, Relaxed);
        g.connections_total.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.inner.global.connections_open.fetch_sub(1, Relaxed);
    }

    pub(crate) fn tunnel(&self) -> TunnelGuard {
        let g = &self.inner.global;
        g.websockets_open.fetch_add(1, Relaxed);
        g.websockets_total.fetch_add(1, Relaxed);
        TunnelGuard(self.clone())
    }

    pub(crate) fn no_route(&self) {
        self.inner.global.no_route.fetch_add(1, Relaxed);
    }

    /// The per-worker connection counts of the data plane (set when it starts).
    pub(crate) fn set_workers(&self, load: Arc<[AtomicUsize]>) {
        *self.inner.workers.lock().unwrap_or_else(|e| e.into_inner()) = Some(load);
    }

    /// Called on every table swap (not on the request path).
    pub(crate) fn set_table(&self, table: Arc<RouteTable>) {
        self.inner.table.store(Some(table));
    }

    /// The counters as they are now.
    pub fn snapshot(&self) -> Snapshot {
        let g = &self.inner.global;
        let mut snap = Snapshot {
            connections_open: g.connections_open.load(Relaxed).max(0) as u64,
            connections_total: g.connections_total.load(Relaxed),
            websockets_open: g.websockets_open.load(Relaxed).max(0) as u64,
            websockets_total: g.websockets_total.load(Relaxed),
            no_route_total: g.no_route.load(Relaxed),
            worker_connections: self
                .inner
                .workers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|w| w.iter().map(|n| n.load(Relaxed) as u64).collect())
                .unwrap_or_default(),
            routes: Vec::new(),
            pools: Vec::new(),
        };
        let Some(table) = self.inner.table.load_full() else {
            return snap;
        };
        for route in table.routes() {
            let pool = &table.pools[route.pool];
            let mut requests = Vec::new();
            for (i, b) in pool.backends.iter().enumerate() {
                if let Some(c) = route.per_backend.get(i) {
                    requests.push((b.id.to_string(), c.read()));
                }
            }
            requests.push((String::new(), route.stats.unserved.read()));
            requests.push(("leader".to_string(), route.stats.to_leader.read()));
            let cache = route.cache.as_ref().map(|cache| {
                let c = &route.stats.cache;
                let (bytes, entries) = cache.usage();
                CacheSnapshot {
                    hits_total: c.hits.load(Relaxed),
                    misses_total: c.misses.load(Relaxed),
                    stale_total: c.stale.load(Relaxed),
                    coalesced_total: c.coalesced.load(Relaxed),
                    stores_total: c.stores.load(Relaxed),
                    evictions_total: c.evictions.load(Relaxed),
                    passes_total: c.passes.load(Relaxed),
                    bytes,
                    entries,
                }
            });
            snap.routes.push(RouteSnapshot {
                route: route.name.to_string(),
                pool: pool.name.to_string(),
                requests,
                latency: route.stats.latency.read(),
                cache,
            });
        }
        for pool in table.pools.iter() {
            snap.pools.push(PoolSnapshot {
                pool: pool.name.to_string(),
                retries_total: pool.shared.retries.load(Relaxed),
                backends: pool
                    .backends
                    .iter()
                    .map(|b| (&b.id, &b.address, &b.stats))
                    .chain(pool.resting.iter().map(|b| (&b.id, &b.address, &b.stats)))
                    .map(|(id, address, stats)| BackendSnapshot {
                        backend: id.to_string(),
                        address: address.to_string(),
                        in_flight: stats.in_flight.load(Relaxed) as u64,
                        requests_total: stats.requests.load(Relaxed),
                        failures_total: stats.failures.load(Relaxed),
                    })
                    .collect(),
            });
        }
        snap
    }
}

/// Counts of one histogram.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)`, without `+Inf` (which is `count`).
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

/// A route's counters.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteSnapshot {
    pub route: String,
    pub pool: String,
    /// Answers by the backend that served them (`""`: none did; `"leader"`: carried to the
    /// leader node) and status class (`[1xx, 2xx, 3xx, 4xx, 5xx]`).
    pub requests: Vec<(String, [u64; 5])>,
    /// Time from request head to response head.
    pub latency: HistogramSnapshot,
    /// The route's cache, when it has one.
    pub cache: Option<CacheSnapshot>,
}

/// What a route's cache did on this node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheSnapshot {
    /// Answered from a fresh stored response.
    pub hits_total: u64,
    /// Went upstream (led a flight, or went alone).
    pub misses_total: u64,
    /// Answered from a stale stored response while another request refreshed it.
    pub stale_total: u64,
    /// Answered with the response of another request's flight.
    pub coalesced_total: u64,
    /// Responses stored.
    pub stores_total: u64,
    /// Stored responses dropped to make room.
    pub evictions_total: u64,
    /// Responses found not shareable (private, no-store, Set-Cookie, Vary: *, too large).
    pub passes_total: u64,
    /// Bytes and entries stored now.
    pub bytes: u64,
    pub entries: u64,
}

/// A backend's counters (across the routes using its pool).
#[derive(Clone, Debug, PartialEq)]
pub struct BackendSnapshot {
    pub backend: String,
    pub address: String,
    /// Requests being served now.
    pub in_flight: u64,
    /// Requests sent to it.
    pub requests_total: u64,
    /// Attempts that failed (connect errors, broken connections, timeouts).
    pub failures_total: u64,
}

/// A pool's counters.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSnapshot {
    pub pool: String,
    /// Retries on another backend (or the same after `retry_delay_ms`).
    pub retries_total: u64,
    pub backends: Vec<BackendSnapshot>,
}

/// Everything the data plane counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub connections_open: u64,
    pub connections_total: u64,
    pub websockets_open: u64,
    pub websockets_total: u64,
    /// Requests that matched no route.
    pub no_route_total: u64,
    /// Client connections each data plane worker serves now (`--workers` of them).
    pub worker_connections: Vec<u64>,
    pub routes: Vec<RouteSnapshot>,
    pub pools: Vec<PoolSnapshot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(20));
        let s = h.read();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.001, 1));
        assert_eq!(s.buckets.last().unwrap(), &(10.0, 2));
        assert!((s.sum_seconds - 20.0305).abs() < 1e-6);
    }

    #[test]
    fn classes_clamp_odd_statuses() {
        let c = Classes::default();
        c.record(200);
        c.record(503);
        c.record(99);
        c.record(999);
        assert_eq!(c.read(), [1, 1, 0, 0, 2]);
    }
}
