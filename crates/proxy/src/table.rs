//! The immutable route table compiled from the replicated state, and request matching.
//!
//! # Matching
//!
//! 1. **Host** (from `:authority` or `Host`, port and a trailing dot removed, lower case):
//!    routes listing the exact host come first; then routes with a `*.suffix` wildcard that
//!    matches, longest suffix first (`*.example.com` matches `a.example.com` and
//!    `a.b.example.com`, never `example.com` itself); then routes without hosts, which match
//!    any host. If no route of a more specific tier matches the path and method, the next tier
//!    is tried, so a host-less catch-all route still serves paths the host's routes leave out.
//! 2. **Path prefix**, longest first, matched on a segment boundary: prefix `/api` matches
//!    `/api`, `/api/` and `/api/users` but not `/apis`; a prefix ending in `/` (`/api/`) matches
//!    paths starting with it (`/api/x`, `/api/`) but not `/api`; `/` matches every path. The
//!    path is compared as received (not percent-decoded or normalised).
//! 3. **Methods**: a route listing methods only matches those; an empty list matches all.
//! 4. **Headers**: a route listing header conditions only matches requests carrying every one
//!    (name in any case, exact value; one of several values of a repeated header suffices).
//!    Within a tier and prefix length, routes with more conditions are tried first, so
//!    `{"headers":[{"name":"x-canary","value":"1"}]}` beside an otherwise identical route
//!    takes the canary requests and leaves the rest.
//!
//! Remaining ties (same tier, prefix length and number of header conditions) go to the route
//! whose name sorts first.

use crate::balance::{BackendStats, CompiledPool, PoolShared};
use crate::codec::Headers;
use crate::hop::HopKey;
use crate::metrics::{Classes, RouteStats};
use crate::rules::{ErrorPages, HeaderOps};
use crate::upstream::Endpoints;
use gateway_model::{State, WritePolicy};
use http::{HeaderName, HeaderValue, Method};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Upstream timeout when a route does not set `timeout_ms`.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries on another backend when a route does not set `retries`.
pub(crate) const DEFAULT_RETRIES: u32 = 2;

/// A route as the request path sees it.
pub(crate) struct CompiledRoute {
    pub(crate) name: Box<str>,
    prefix: Box<str>,
    methods: Box<[Method]>,
    /// Index into [`RouteTable::pools`].
    pub(crate) pool: usize,
    pub(crate) writes: WritePolicy,
    pub(crate) timeout: Duration,
    pub(crate) retries: u32,
    /// Wait before a retry (and, when above 0, the wait for a pool without backends).
    pub(crate) retry_delay: Duration,
    header_matches: Box<[(HeaderName, HeaderValue)]>,
    pub(crate) request_ops: HeaderOps,
    pub(crate) response_ops: HeaderOps,
    /// Remove `prefix` from the path sent upstream.
    pub(crate) strip_prefix: bool,
    pub(crate) host_rewrite: Option<HeaderValue>,
    pub(crate) error_pages: ErrorPages,
    /// Counters kept across swaps by route name.
    pub(crate) stats: Arc<RouteStats>,
    /// Answers by status class per backend of the pool (same order as its backends).
    pub(crate) per_backend: Box<[Arc<Classes>]>,
    /// Plain-HTTP requests get this redirect to HTTPS instead of being proxied.
    pub(crate) https_redirect: Option<http::StatusCode>,
    /// `max_body_bytes`.
    pub(crate) max_body: Option<u64>,
    /// `max_concurrent`; 0: no limit.
    pub(crate) max_concurrent: usize,
    /// Counters and buckets of this route name, carried across swaps.
    pub(crate) shared: Arc<crate::limits::RouteShared>,
    /// Per-client-IP token buckets, when the route has a `rate_limit`.
    pub(crate) limiter: Option<Arc<crate::limits::RateLimiter>>,
    /// Dog-pile avoidance and stored responses, when the route has a `cache`.
    pub(crate) cache: Option<Arc<crate::cache::Cache>>,
}

impl CompiledRoute {
    fn matches(&self, path: &str, method: &Method, headers: Headers<'_>) -> bool {
        prefix_matches(&self.prefix, path)
            && (self.methods.is_empty() || self.methods.contains(method))
            && self
                .header_matches
                .iter()
                .all(|(name, value)| headers.has(name, value))
    }

    /// The route's path prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Whether `path` is under `prefix` on a path segment boundary.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len()
            || prefix.ends_with('/')
            || path.as_bytes()[prefix.len()] == b'/')
}

/// Everything a request needs to be routed, compiled once per state change.
pub(crate) struct RouteTable {
    routes: Box<[CompiledRoute]>,
    pub(crate) pools: Box<[CompiledPool]>,
    pool_index: HashMap<Box<str>, usize>,
    /// Route indices by exact host, in match order.
    exact: HashMap<Box<str>, Box<[u32]>>,
    /// Route indices by wildcard suffix (`*.example.com` → `example.com`), in match order.
    wildcard: HashMap<Box<str>, Box<[u32]>>,
    /// Routes without hosts, in match order.
    any: Box<[u32]>,
}

/// Whether two states route every request the same way: the same routes, and the same pools
/// behind them. Cheap when routes did not change (persistent maps share their structure, so the
/// check is a pointer comparison and one small pool comparison per route): a write that touches
/// only pools no route uses costs no recompilation.
pub(crate) fn same_routing(a: &State, b: &State) -> bool {
    if !a.routes.ptr_eq(&b.routes) && a.routes != b.routes {
        return false;
    }
    if !a.tcp_routes.ptr_eq(&b.tcp_routes) && a.tcp_routes != b.tcp_routes {
        return false;
    }
    // The agreed health decides which backends a pool uses.
    if !a.health.ptr_eq(&b.health) && a.health != b.health {
        return false;
    }
    // A TLS pool's client certificate is part of how it connects.
    if !a.certs.ptr_eq(&b.certs) {
        let cert_of = |s: &State, pool: &str| {
            let name = s.pools.get(pool)?.tls.as_ref()?.client_cert.as_ref()?;
            s.certs.get(name).map(|c| c.revision)
        };
        if b.routes
            .values()
            .any(|r| cert_of(a, &r.pool) != cert_of(b, &r.pool))
        {
            return false;
        }
    }
    b.routes
        .values()
        .all(|r| a.pools.get(&r.pool) == b.pools.get(&r.pool))
        && b.tcp_routes
            .values()
            .all(|r| a.pools.get(&r.pool) == b.pools.get(&r.pool))
}

impl RouteTable {
    /// Compiles `state` for node `node_id`, taking counters and connections from `reg` so they
    /// carry over from the previous table.
    pub(crate) fn compile(
        state: &State,
        node_id: u64,
        key: &HopKey,
        reg: &mut Registry,
    ) -> RouteTable {
        reg.generation += 1;
        // Only pools some route uses can serve a request: compile those alone.
        let mut pool_index: HashMap<Box<str>, usize> = HashMap::new();
        let mut pools = Vec::new();
        let mut routes = Vec::with_capacity(state.routes.len());
        let mut hosts_of = Vec::with_capacity(state.routes.len());
        for route in state.routes.values() {
            let pool = match pool_index.get(route.pool.as_str()) {
                Some(&i) => i,
                None => {
                    let Some(spec) = state.pools.get(&route.pool) else {
                        tracing::warn!(route = %route.name, pool = %route.pool, "route names a missing pool; skipped");
                        continue;
                    };
                    pool_index.insert(route.pool.as_str().into(), pools.len());
                    let verdicts = state.health.get(&spec.name);
                    let down = |id: &str| verdicts.and_then(|m| m.get(id)).is_some_and(|h| !h.up);
                    let tls = reg.upstream_tls(spec, state);
                    pools.push(CompiledPool::compile_with(
                        spec,
                        node_id,
                        key,
                        reg,
                        &down,
                        tls.as_ref(),
                    ));
                    pools.len() - 1
                }
            };
            let methods = route
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect();
            let stats = reg.route_stats(&route.name);
            let cache = reg
                .route(&route.name)
                .cache(route.cache.as_ref(), route.revision, &stats);
            routes.push(CompiledRoute {
                cache,
                name: route.name.as_str().into(),
                prefix: route.path_prefix.as_str().into(),
                methods,
                pool,
                writes: route.writes,
                timeout: route
                    .timeout_ms
                    .map_or(DEFAULT_TIMEOUT, Duration::from_millis),
                retries: route.retries.unwrap_or(DEFAULT_RETRIES).min(10),
                retry_delay: Duration::from_millis(route.retry_delay_ms.unwrap_or(0)),
                header_matches: route
                    .headers
                    .iter()
                    .filter_map(|m| {
                        Some((
                            HeaderName::from_bytes(m.name.as_bytes()).ok()?,
                            HeaderValue::from_str(&m.value).ok()?,
                        ))
                    })
                    .collect(),
                request_ops: HeaderOps::compile(&route.request_headers),
                response_ops: HeaderOps::compile(&route.response_headers),
                strip_prefix: route.strip_prefix,
                host_rewrite: route
                    .host_rewrite
                    .as_deref()
                    .and_then(|h| HeaderValue::from_str(h).ok()),
                error_pages: ErrorPages::compile(&route.error_pages),
                stats,
                per_backend: pools[pool]
                    .backends
                    .iter()
                    .map(|b| reg.route_backend(&route.name, &pools[pool].name, &b.id))
                    .collect(),
                https_redirect: route
                    .https_redirect
                    .and_then(|s| http::StatusCode::from_u16(s).ok()),
                max_body: route.max_body_bytes,
                max_concurrent: route.max_concurrent.map_or(0, |m| m as usize),
                limiter: reg
                    .route(&route.name)
                    .limiter(route.rate_limit.as_ref().map(|r| crate::limits::Rate {
                        per_second: f64::from(r.per_second),
                        burst: f64::from(r.burst.unwrap_or(r.per_second).max(1)),
                    })),
                shared: reg.route(&route.name),
            });
            hosts_of.push(&route.hosts);
        }
        // Match order within a tier: longest prefix first, then the most header conditions,
        // then name (routes are in name order and the sort is stable).
        let mut order: Vec<u32> = (0..routes.len() as u32).collect();
        order.sort_by_key(|&i| {
            let r = &routes[i as usize];
            (
                std::cmp::Reverse(r.prefix.len()),
                std::cmp::Reverse(r.header_matches.len()),
            )
        });
        let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut any = Vec::new();
        for &i in &order {
            let hosts = hosts_of[i as usize];
            if hosts.is_empty() {
                any.push(i);
            }
            for h in hosts {
                let h = h.trim_end_matches('.').to_ascii_lowercase();
                let (map, key) = match h.strip_prefix("*.") {
                    Some(suffix) => (&mut wildcard, suffix),
                    None => (&mut exact, h.as_str()),
                };
                let list = map.entry(key.into()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        // The pools of TCP routes too (module `tcp` picks their backends from this table).
        for tcp in state.tcp_routes.values() {
            if !pool_index.contains_key(tcp.pool.as_str())
                && let Some(spec) = state.pools.get(&tcp.pool)
            {
                pool_index.insert(tcp.pool.as_str().into(), pools.len());
                let verdicts = state.health.get(&spec.name);
                let down = |id: &str| verdicts.and_then(|m| m.get(id)).is_some_and(|h| !h.up);
                // TCP routes pass bytes through: the pool's `tls` is for HTTP routes.
                pools.push(CompiledPool::compile_with(
                    spec, node_id, key, reg, &down, None,
                ));
            }
        }
        reg.sweep();
        let freeze = |m: HashMap<Box<str>, Vec<u32>>| {
            m.into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect()
        };
        RouteTable {
            routes: routes.into_boxed_slice(),
            pools: pools.into_boxed_slice(),
            pool_index,
            exact: freeze(exact),
            wildcard: freeze(wildcard),
            any: any.into_boxed_slice(),
        }
    }

    fn first(
        &self,
        ids: &[u32],
        path: &str,
        method: &Method,
        headers: Headers<'_>,
    ) -> Option<&CompiledRoute> {
        ids.iter()
            .map(|&i| &self.routes[i as usize])
            .find(|r| r.matches(path, method, headers))
    }

    /// Every route, in name order.
    pub(crate) fn routes(&self) -> &[CompiledRoute] {
        &self.routes
    }

    /// The pool named `name`, if this table has it.
    pub(crate) fn pool_named(&self, name: &str) -> Option<&CompiledPool> {
        self.pool_index.get(name).map(|&i| &self.pools[i])
    }

    /// The route serving a request. `host` must already be lower case without port.
    pub(crate) fn find(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: Headers<'_>,
    ) -> Option<&CompiledRoute> {
        if let Some(ids) = self.exact.get(host)
            && let Some(r) = self.first(ids, path, method, headers)
        {
            return Some(r);
        }
        if !self.wildcard.is_empty() {
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(ids) = self.wildcard.get(rest)
                    && let Some(r) = self.first(ids, path, method, headers)
                {
                    return Some(r);
                }
            }
        }
        self.first(&self.any, path, method, headers)
    }
}

/// State that outlives route tables: per-pool and per-backend counters, and upstream
/// connection pools. Owned by the task that compiles tables; entries no longer named by the
/// latest table are dropped when it is compiled (tables still in use keep their own `Arc`s).
#[derive(Default)]
pub(crate) struct Registry {
    generation: u64,
    routes: HashMap<String, (Arc<crate::limits::RouteShared>, u64)>,
    pools: HashMap<String, (Arc<PoolShared>, u64)>,
    backends: HashMap<(String, String), (Arc<BackendStats>, u64)>,
    route_stats: HashMap<String, (Arc<RouteStats>, u64)>,
    route_backends: HashMap<(String, String, String), (Arc<Classes>, u64)>,
    pub(crate) endpoints: Endpoints,
    /// Compiled pool TLS options by fingerprint, kept while some table uses them (so TLS
    /// sessions resume across swaps).
    upstream_tls: HashMap<u64, (Arc<crate::backend_tls::UpstreamTls>, u64)>,
}

impl Registry {
    pub(crate) fn pool(&mut self, name: &str) -> Arc<PoolShared> {
        let generation = self.generation;
        let entry = self.pools.entry(name.to_string()).or_default();
        entry.1 = generation;
        entry.0.clone()
    }

    pub(crate) fn route(&mut self, name: &str) -> Arc<crate::limits::RouteShared> {
        let generation = self.generation;
        let entry = self.routes.entry(name.to_string()).or_default();
        entry.1 = generation;
        entry.0.clone()
    }

    pub(crate) fn backend(&mut self, pool: &str, id: &str) -> Arc<BackendStats> {
        let generation = self.generation;
        let entry = self
            .backends
            .entry((pool.to_string(), id.to_string()))
            .or_default();
        entry.1 = generation;
        entry.0.clone()
    }

    fn route_stats(&mut self, name: &str) -> Arc<RouteStats> {
        let generation = self.generation;
        let entry = self.route_stats.entry(name.to_string()).or_default();
        entry.1 = generation;
        entry.0.clone()
    }

    fn route_backend(&mut self, route: &str, pool: &str, backend: &str) -> Arc<Classes> {
        let generation = self.generation;
        let entry = self
            .route_backends
            .entry((route.to_string(), pool.to_string(), backend.to_string()))
            .or_default();
        entry.1 = generation;
        entry.0.clone()
    }

    /// The compiled TLS option of a pool, if it has one.
    pub(crate) fn upstream_tls(
        &mut self,
        pool: &gateway_model::Pool,
        state: &State,
    ) -> Option<Arc<crate::backend_tls::UpstreamTls>> {
        use crate::backend_tls::{UpstreamTls, fingerprint};
        let tls = pool.tls.as_ref()?;
        let client = tls.client_cert.as_ref().and_then(|n| state.certs.get(n));
        let id = fingerprint(tls, client);
        let generation = self.generation;
        let entry = self.upstream_tls.entry(id).or_insert_with(|| {
            let built = UpstreamTls::build(tls, client, id);
            (Arc::new(built), generation)
        });
        entry.1 = generation;
        Some(entry.0.clone())
    }

    fn sweep(&mut self) {
        let generation = self.generation;
        self.upstream_tls.retain(|_, e| e.1 == generation);
        self.routes.retain(|_, e| e.1 == generation);
        self.pools.retain(|_, e| e.1 == generation);
        self.backends.retain(|_, e| e.1 == generation);
        self.route_stats.retain(|_, e| e.1 == generation);
        self.route_backends.retain(|_, e| e.1 == generation);
        self.endpoints.purge();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_model::{Backend, Pool, Route};
    use http::HeaderMap;

    fn state(routes: &[(&str, &[&str], &str, &[&str])]) -> State {
        let mut s = State::default();
        s.pools.insert(
            "p".into(),
            Pool {
                name: "p".into(),
                backends: vec![Backend {
                    id: "a".into(),
                    address: "127.0.0.1:1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }
            .into(),
        );
        for (name, hosts, prefix, methods) in routes {
            s.routes.insert(
                name.to_string(),
                Route {
                    name: name.to_string(),
                    hosts: hosts.iter().map(|h| h.to_string()).collect(),
                    path_prefix: prefix.to_string(),
                    methods: methods.iter().map(|m| m.to_string()).collect(),
                    pool: "p".into(),
                    ..Default::default()
                },
            );
        }
        s
    }

    fn compile(s: &State) -> RouteTable {
        RouteTable::compile(s, 1, &HopKey::new(b"k"), &mut Registry::default())
    }

    #[test]
    fn prefix_on_segment_boundary() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/"));
        assert!(prefix_matches("/api", "/api/users"));
        assert!(!prefix_matches("/api", "/apis"));
        assert!(!prefix_matches("/api", "/ap"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
    }

    #[test]
    fn matching_precedence() {
        let s = state(&[
            ("any-root", &[], "/", &[]),
            ("any-api", &[], "/api", &[]),
            ("exact-root", &["example.com"], "/", &[]),
            ("exact-api-get", &["example.com"], "/api", &["GET", "HEAD"]),
            ("wild-root", &["*.example.com"], "/", &[]),
            ("wild-deep", &["*.eu.example.com"], "/", &[]),
            ("wild-static", &["*.example.com"], "/static", &[]),
            ("b-tie", &["tie.test"], "/x", &[]),
            ("a-tie", &["tie.test"], "/x", &[]),
            ("only-x", &["only.test"], "/x", &[]),
        ]);
        let t = compile(&s);
        let get = Method::GET;
        let cases: &[(&str, &str, &Method, Option<&str>)] = &[
            // exact beats wildcard and host-less
            ("example.com", "/", &get, Some("exact-root")),
            // longest prefix within the exact host
            ("example.com", "/api/v1", &get, Some("exact-api-get")),
            // method filter skips to the next-longest prefix of the same host
            ("example.com", "/api/v1", &Method::POST, Some("exact-root")),
            // segment boundary: /apix is not under /api
            ("example.com", "/apix", &get, Some("exact-root")),
            // wildcard
            ("www.example.com", "/", &get, Some("wild-root")),
            (
                "www.example.com",
                "/static/app.js",
                &get,
                Some("wild-static"),
            ),
            ("a.b.example.com", "/", &get, Some("wild-root")),
            // longer wildcard suffix beats shorter
            ("x.eu.example.com", "/", &get, Some("wild-deep")),
            ("x.eu.example.com", "/static", &get, Some("wild-deep")),
            // host-less routes match any other host, longest prefix first
            ("other.org", "/", &get, Some("any-root")),
            ("other.org", "/api/x", &get, Some("any-api")),
            // *.eu.example.com does not cover eu.example.com itself; *.example.com does
            ("eu.example.com", "/", &get, Some("wild-root")),
            // a tie goes to the name that sorts first
            ("tie.test", "/x/1", &get, Some("a-tie")),
            // a host whose routes miss the path falls through to host-less routes
            ("only.test", "/y", &get, Some("any-root")),
            ("only.test", "/x", &get, Some("only-x")),
        ];
        for (host, path, method, want) in cases {
            let got = t
                .find(host, path, method, Headers::Map(&HeaderMap::new()))
                .map(|r| &*r.name);
            assert_eq!(got, *want, "{method} {host}{path}");
        }
        // Without a catch-all, unmatched requests find nothing.
        let t = compile(&state(&[
            ("only-x", &["only.test"], "/x", &[]),
            ("w", &["*.test"], "/w", &[]),
        ]));
        let none = HeaderMap::new();
        assert!(
            t.find("only.test", "/y", &get, Headers::Map(&none))
                .is_none()
        );
        assert!(t.find("test", "/w", &get, Headers::Map(&none)).is_none());
        assert_eq!(
            t.find("only.test", "/w/1", &get, Headers::Map(&none))
                .map(|r| &*r.name),
            Some("w")
        );
    }

    #[test]
    fn header_conditions_take_precedence_within_a_prefix() {
        let mut s = state(&[
            ("a-plain", &["h.test"], "/api", &[]),
            ("canary", &["h.test"], "/api", &[]),
            ("canary-eu", &["h.test"], "/api", &[]),
            ("longer", &["h.test"], "/api/v2", &[]),
        ]);
        let cond = |n: &str, v: &str| gateway_model::HeaderMatch {
            name: n.into(),
            value: v.into(),
        };
        s.routes.get_mut("canary").unwrap().headers = vec![cond("X-Canary", "1")];
        s.routes.get_mut("canary-eu").unwrap().headers =
            vec![cond("x-canary", "1"), cond("x-region", "eu")];
        let t = compile(&s);
        let find = |path: &str, hs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in hs {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            t.find("h.test", path, &Method::GET, Headers::Map(&h))
                .map(|r| r.name.to_string())
        };
        assert_eq!(find("/api", &[]).as_deref(), Some("a-plain"));
        assert_eq!(
            find("/api", &[("x-canary", "1")]).as_deref(),
            Some("canary")
        );
        assert_eq!(
            find("/api", &[("X-CANARY", "1"), ("x-region", "eu")]).as_deref(),
            Some("canary-eu")
        );
        // Exact values only; one of several values of a header suffices.
        assert_eq!(
            find("/api", &[("x-canary", "10")]).as_deref(),
            Some("a-plain")
        );
        assert_eq!(
            find("/api", &[("x-canary", "0"), ("x-canary", "1")]).as_deref(),
            Some("canary")
        );
        // A longer prefix still beats header conditions.
        assert_eq!(
            find("/api/v2/x", &[("x-canary", "1")]).as_deref(),
            Some("longer")
        );
    }

    #[test]
    fn route_settings_and_missing_pools() {
        let mut s = state(&[("r", &[], "/", &[])]);
        s.routes.get_mut("r").unwrap().timeout_ms = Some(250);
        s.routes.get_mut("r").unwrap().retries = Some(0);
        s.routes.insert(
            "orphan".into(),
            Route {
                name: "orphan".into(),
                path_prefix: "/o".into(),
                pool: "gone".into(),
                ..Default::default()
            },
        );
        let t = compile(&s);
        let r = t
            .find("h", "/o", &Method::GET, Headers::Map(&HeaderMap::new()))
            .unwrap();
        assert_eq!(&*r.name, "r", "a route whose pool is missing is left out");
        assert_eq!(r.timeout, Duration::from_millis(250));
        assert_eq!(r.retries, 0);
        assert_eq!(&*t.pools[r.pool].name, "p");
        let t = compile(&state(&[("d", &[], "/", &[])]));
        let r = t
            .find("h", "/", &Method::GET, Headers::Map(&HeaderMap::new()))
            .unwrap();
        assert_eq!((r.timeout, r.retries), (DEFAULT_TIMEOUT, DEFAULT_RETRIES));
    }

    #[test]
    fn registry_drops_counters_of_removed_backends() {
        let mut reg = Registry::default();
        let key = HopKey::new(b"k");
        let s = state(&[("r", &[], "/", &[])]);
        let t1 = RouteTable::compile(&s, 1, &key, &mut reg);
        let a1 = t1.pools[0].backends[0].stats.clone();
        let t2 = RouteTable::compile(&s, 1, &key, &mut reg);
        assert!(Arc::ptr_eq(&a1, &t2.pools[0].backends[0].stats));
        // Route counters (and per-backend answers of the route) are kept across swaps too.
        assert!(Arc::ptr_eq(&t1.routes[0].stats, &t2.routes[0].stats));
        assert!(Arc::ptr_eq(
            &t1.routes[0].per_backend[0],
            &t2.routes[0].per_backend[0]
        ));
        let mut s2 = s.clone();
        std::sync::Arc::make_mut(s2.pools.get_mut("p").unwrap()).backends[0].id = "z".into();
        let _t3 = RouteTable::compile(&s2, 1, &key, &mut reg);
        assert_eq!(reg.backends.len(), 1);
        assert_eq!(
            reg.route_backends.len(),
            1,
            "counters of the removed backend dropped"
        );
        assert!(
            reg.backends
                .contains_key(&("p".to_string(), "z".to_string()))
        );
    }

    #[test]
    fn routing_is_the_same_unless_routes_or_their_pools_change() {
        let a = state(&[("r", &[], "/", &[])]);
        let mut b = a.clone();
        b.pools.insert(
            "unused".into(),
            Pool {
                name: "unused".into(),
                ..Default::default()
            }
            .into(),
        );
        b.revision += 1;
        assert!(
            same_routing(&a, &b),
            "a pool no route uses does not change routing"
        );
        let mut c = b.clone();
        std::sync::Arc::make_mut(c.pools.get_mut("p").unwrap()).backends[0].address =
            "127.0.0.1:2".into();
        assert!(!same_routing(&b, &c), "a used pool changed");
        let mut d = b.clone();
        d.routes.get_mut("r").unwrap().path_prefix = "/x".into();
        assert!(!same_routing(&b, &d), "a route changed");
        let mut e = b.clone();
        let mut verdicts = e.health.get("p").cloned().unwrap_or_default();
        verdicts.insert(
            "a".to_string(),
            gateway_model::BackendHealth {
                up: false,
                address: "127.0.0.1:1".into(),
                down_on: vec![1],
                since_ms: 1,
                transition: 1,
            },
        );
        e.health.insert("p".into(), verdicts);
        assert!(!same_routing(&b, &e), "a backend was marked down");
    }

    // ---- TLS to backends (issue 7) ----
    #[test]
    fn a_replaced_client_certificate_recompiles_and_gets_new_endpoints() {
        let mut a = state(&[("r", &[], "/", &[])]);
        let tls = gateway_model::BackendTls {
            client_cert: Some("gw".into()),
            ..Default::default()
        };
        std::sync::Arc::make_mut(a.pools.get_mut("p").unwrap()).tls = Some(tls);
        let k = rcgen::generate_simple_self_signed(vec!["gw.internal".to_string()]).unwrap();
        let cert = gateway_model::Cert {
            name: "gw".into(),
            cert_pem: k.cert.pem(),
            key_pem: k.signing_key.serialize_pem(),
            revision: 1,
            ..Default::default()
        };
        a.certs.insert("gw".into(), cert.clone());
        let mut b = a.clone();
        b.certs.insert("other".into(), cert.clone());
        assert!(same_routing(&a, &b), "a certificate no pool uses changed");
        let mut c = b.clone();
        let k2 = rcgen::generate_simple_self_signed(vec!["gw.internal".to_string()]).unwrap();
        c.certs.insert(
            "gw".into(),
            gateway_model::Cert {
                cert_pem: k2.cert.pem(),
                key_pem: k2.signing_key.serialize_pem(),
                revision: 2,
                ..cert
            },
        );
        assert!(
            !same_routing(&b, &c),
            "the pool's client certificate changed"
        );

        let mut reg = Registry::default();
        let key = HopKey::new(b"k");
        let before = RouteTable::compile(&b, 1, &key, &mut reg);
        let again = RouteTable::compile(&b, 1, &key, &mut reg);
        assert!(
            Arc::ptr_eq(
                &before.pools[0].backends[0].endpoint,
                &again.pools[0].backends[0].endpoint
            ),
            "the same TLS option keeps its endpoint (and its pooled connections)"
        );
        let after = RouteTable::compile(&c, 1, &key, &mut reg);
        assert!(
            !Arc::ptr_eq(
                &before.pools[0].backends[0].endpoint,
                &after.pools[0].backends[0].endpoint
            ),
            "a new client certificate gets a new endpoint: no connection made with the old one is reused"
        );
    }
}
