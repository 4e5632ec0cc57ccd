//! The data plane's counters in `/metrics` (the proxy knows nothing of Prometheus; the admin
//! plane serves whatever collectors the node hands it).

use gateway_admin::metrics::{Labels, counters, gauges, histograms};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

/// Reads [`gateway_proxy::Metrics`] at each scrape.
#[derive(Debug)]
pub struct DataPlane(pub gateway_proxy::Metrics);

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn g(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for DataPlane {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = self.0.snapshot();
        let mut requests: Vec<(Labels, u64)> = Vec::new();
        for r in &s.routes {
            for (backend, classes) in &r.requests {
                for (class, &n) in CLASSES.iter().zip(classes) {
                    // Series appear with their first request (and stay while the route does).
                    if n > 0 {
                        requests.push((
                            vec![
                                ("route", r.route.clone()),
                                ("pool", r.pool.clone()),
                                ("backend", backend.clone()),
                                ("code", class.to_string()),
                            ],
                            n,
                        ));
                    }
                }
            }
        }
        counters(
            &mut enc,
            "gateway_http_requests",
            "Answered requests by route, pool, backend (\"\": none reached, \"leader\": carried to the leader node) and status class.",
            requests,
        )?;
        histograms(
            &mut enc,
            "gateway_http_request_duration_seconds",
            "Time from a request's head to its response's head, by route.",
            s.routes.iter().map(|r| {
                (
                    vec![("route", r.route.clone())],
                    r.latency.sum_seconds,
                    r.latency.count,
                    r.latency.buckets.clone(),
                )
            }),
        )?;
        // Route caches (only routes with a `cache`).
        let cached = || {
            s.routes
                .iter()
                .filter_map(|r| Some((vec![("route", r.route.clone())], r.cache.as_ref()?)))
        };
        for (name, help, f) in [
            (
                "gateway_cache_hits",
                "Requests answered from a fresh stored response, by route.",
                (|c: &gateway_proxy::CacheSnapshot| c.hits_total) as fn(&_) -> u64,
            ),
            (
                "gateway_cache_misses",
                "Cacheable requests that went upstream themselves (leading a flight or alone), by route.",
                |c| c.misses_total,
            ),
            (
                "gateway_cache_stale",
                "Requests answered from a stale stored response while another refreshed it, by route.",
                |c| c.stale_total,
            ),
            (
                "gateway_cache_coalesced",
                "Requests answered with the response of an identical request's flight, by route.",
                |c| c.coalesced_total,
            ),
            ("gateway_cache_stores", "Responses stored, by route.", |c| {
                c.stores_total
            }),
            (
                "gateway_cache_evictions",
                "Stored responses dropped to make room, by route.",
                |c| c.evictions_total,
            ),
            (
                "gateway_cache_passes",
                "Responses found not shareable (private, no-store, Set-Cookie, Vary: *, too large), by route.",
                |c| c.passes_total,
            ),
        ] {
            counters(&mut enc, name, help, cached().map(|(l, c)| (l, f(c))))?;
        }
        gauges(
            &mut enc,
            "gateway_cache_bytes",
            "Bytes of responses stored now, by route.",
            cached().map(|(l, c)| (l, g(c.bytes))),
        )?;
        gauges(
            &mut enc,
            "gateway_cache_entries",
            "Responses stored now, by route.",
            cached().map(|(l, c)| (l, g(c.entries))),
        )?;
        counters(
            &mut enc,
            "gateway_http_no_route_requests",
            "Requests that matched no route (404).",
            [(Vec::new(), s.no_route_total)],
        )?;
        gauges(
            &mut enc,
            "gateway_http_connections",
            "Client connections open now.",
            [(Vec::new(), g(s.connections_open))],
        )?;
        gauges(
            &mut enc,
            "gateway_worker_connections",
            "Client connections each data plane worker (--workers) serves now.",
            s.worker_connections
                .iter()
                .enumerate()
                .map(|(i, &n)| (vec![("worker", i.to_string())], g(n))),
        )?;
        counters(
            &mut enc,
            "gateway_http_connections_accepted",
            "Client connections accepted.",
            [(Vec::new(), s.connections_total)],
        )?;
        gauges(
            &mut enc,
            "gateway_websockets",
            "Upgraded (WebSocket) connections open now.",
            [(Vec::new(), g(s.websockets_open))],
        )?;
        counters(
            &mut enc,
            "gateway_websockets_opened",
            "Upgraded (WebSocket) connections opened.",
            [(Vec::new(), s.websockets_total)],
        )?;
        let backend = |p: &gateway_proxy::PoolSnapshot, b: &gateway_proxy::BackendSnapshot| {
            vec![
                ("pool", p.pool.clone()),
                ("backend", b.backend.clone()),
                ("address", b.address.clone()),
            ]
        };
        let each = |f: &dyn Fn(&gateway_proxy::BackendSnapshot) -> u64| {
            s.pools
                .iter()
                .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
                .map(|(p, b)| (backend(p, b), f(b)))
                .collect::<Vec<_>>()
        };
        gauges(
            &mut enc,
            "gateway_backend_in_flight_requests",
            "Requests a backend is serving now.",
            each(&|b| b.in_flight).into_iter().map(|(l, v)| (l, g(v))),
        )?;
        counters(
            &mut enc,
            "gateway_backend_requests",
            "Requests sent to a backend (each attempt, retries included).",
            each(&|b| b.requests_total),
        )?;
        counters(
            &mut enc,
            "gateway_backend_failures",
            "Attempts on a backend that failed (not connected, broken, timed out).",
            each(&|b| b.failures_total),
        )?;
        counters(
            &mut enc,
            "gateway_pool_retries",
            "Retries of requests that never reached a backend, by pool.",
            s.pools
                .iter()
                .map(|p| (vec![("pool", p.pool.clone())], p.retries_total)),
        )?;
        Ok(())
    }
}
