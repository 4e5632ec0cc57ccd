//! Dog-pile avoidance and the small response cache of routes with a `cache` (per node).
//!
//! Only routes with a `cache` come here (one branch in the request path; routes without one
//! take no lock and allocate nothing more). A request is *eligible* when it is a GET or HEAD
//! without a body, not an upgrade, not relayed by another node, without `Range` or
//! conditional headers (`If-None-Match`, `If-Modified-Since`, ...), and without
//! `Authorization` unless the route sets `share_authorized`. Others go upstream as usual.
//!
//! Eligible requests are keyed by method, host, path and query:
//!
//! * a **fresh stored** response whose `Vary` headers match is answered at once (`HIT`);
//! * a **stale stored** one (within `stale_while_revalidate_ms` past its freshness) is
//!   answered while one request (the first to find it stale) fetches a new one (`STALE`);
//! * otherwise the first request leads a **flight** upstream and identical requests arriving
//!   meanwhile wait for it (with `coalesce`). When its response is *shareable* — not
//!   `Cache-Control: private` or `no-store`, no `Set-Cookie` (unless `share_set_cookie`), no
//!   `Vary: *`, not a 206, and a body within `max_entry_bytes` — every waiter whose values
//!   of the headers named by `Vary` equal the leader's gets a copy (`COALESCED`); the others
//!   send their own request. 4xx and 5xx answers are shared with the waiters of that flight
//!   only and never stored. When the flight fails (no backend, timeout, the leader's client
//!   went away), each waiter sends its own request.
//! * A response that is not shareable marks its key *pass* for 10 s (as Varnish's
//!   hit-for-pass): requests for it go upstream at once instead of waiting in line.
//!
//! Shareable 200, 203, 204, 300, 301 and 308 responses are **stored** (when `max_bytes` > 0)
//! for their `s-maxage`, else `max-age`, else `Expires` − `Date`, less their `Age`; responses
//! with `no-cache` or no freshness are not stored. The store is bounded by `max_bytes`
//! (least recently used entries go first); one variant per key is kept (the latest). A
//! failed refresh of a stale entry answers with the stale entry.
//!
//! Every answer of an eligible request carries `X-Cache: HIT | MISS | STALE | COALESCED`
//! (`MISS`: it went upstream itself), stored answers an `Age`.

use crate::body::{BoxError, Prefixed, ProxyBody, materialize};
use crate::headers::{ClientAddr, is_upgrade_request, request_host};
use crate::hop::HOP_HEADER;
use crate::metrics::RouteStats;
use crate::proxy::{Live, Shared, proxy};
use crate::table::CompiledRoute;
use bytes::{Bytes, BytesMut};
use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, DATE, EXPIRES, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_RANGE, IF_UNMODIFIED_SINCE, RANGE, SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// The header that says how the cache answered.
pub(crate) static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// How long a key whose response was not shareable skips waiting for flights.
const PASS_FOR: Duration = Duration::from_secs(10);
/// Most pass marks kept per route.
const MAX_PASS_MARKS: usize = 10_000;

/// A response kept to share (with a flight's waiters) or to serve from the store.
pub(crate) struct Stored {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The headers the response varies on, with the values the request that fetched it had.
    vary: Box<[(HeaderName, Box<[HeaderValue]>)]>,
    /// When it was received.
    at: Instant,
    /// Its `Age` when received, in seconds.
    age: u64,
    /// How long after `at` it stays fresh (zero: never served from the store).
    fresh: Duration,
    /// Roughly what it takes in memory.
    size: u64,
}

impl Stored {
    fn matches(&self, headers: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, values)| headers.get_all(name).iter().eq(values.iter()))
    }

    fn respond(&self, tag: &'static str, now: Instant) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::full(self.body.clone()));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        if tag != "MISS" && tag != "COALESCED" {
            let age = self
                .age
                .saturating_add(now.saturating_duration_since(self.at).as_secs());
            resp.headers_mut().insert(AGE, HeaderValue::from(age));
        }
        resp.headers_mut()
            .insert(X_CACHE.clone(), HeaderValue::from_static(tag));
        resp
    }
}

/// How a flight ended, for its waiters.
#[derive(Clone)]
enum Outcome {
    Shared(Arc<Stored>),
    /// Each waiter goes upstream on its own.
    Alone,
}

type Flight = watch::Receiver<Option<Outcome>>;

struct Inner {
    /// Flights under way by key, with the id of the request leading each.
    flights: HashMap<Box<str>, (u64, Flight)>,
    next_flight: u64,
    store: lru::LruCache<Box<str>, Arc<Stored>>,
    bytes: u64,
    /// Keys whose last response was not shareable, until when.
    pass: HashMap<Box<str>, Instant>,
}

/// One route's cache on this node.
pub(crate) struct Cache {
    coalesce: bool,
    max_bytes: u64,
    max_entry: usize,
    stale: Duration,
    share_authorized: bool,
    share_set_cookie: bool,
    stats: Arc<RouteStats>,
    inner: Mutex<Inner>,
}

/// What a request does, decided under the lock.
enum Begin {
    Hit(Arc<Stored>),
    Stale(Arc<Stored>),
    /// Go upstream alone (a pass mark, or coalescing off with a flight under way).
    Direct,
    Wait(Flight),
    /// Lead a flight (refreshing this stale entry, if any).
    Lead(u64, watch::Sender<Option<Outcome>>, Option<Arc<Stored>>),
}

/// What the cache thinks of a response.
struct Judgement {
    share: bool,
    /// Not shareable for a reason that will hold for the next requests too.
    pass: bool,
    /// Storable for this long.
    fresh: Option<Duration>,
    age: u64,
}

impl Cache {
    pub(crate) fn new(spec: &gateway_model::RouteCache, stats: Arc<RouteStats>) -> Self {
        let max_entry = spec
            .max_entry_bytes
            .unwrap_or(gateway_model::DEFAULT_CACHE_ENTRY_BYTES);
        let max_entry = if spec.max_bytes > 0 {
            max_entry.min(spec.max_bytes)
        } else {
            max_entry
        };
        Cache {
            coalesce: spec.coalesce,
            max_bytes: spec.max_bytes,
            max_entry: usize::try_from(max_entry).unwrap_or(usize::MAX),
            stale: Duration::from_millis(spec.stale_while_revalidate_ms),
            share_authorized: spec.share_authorized,
            share_set_cookie: spec.share_set_cookie,
            stats,
            inner: Mutex::new(Inner {
                flights: HashMap::new(),
                next_flight: 0,
                store: lru::LruCache::unbounded(),
                bytes: 0,
                pass: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes and entries stored now.
    pub(crate) fn usage(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.bytes, inner.store.len() as u64)
    }

    fn eligible(&self, req: &Request<ProxyBody>) -> bool {
        let h = req.headers();
        matches!(*req.method(), Method::GET | Method::HEAD)
            && req.body().is_end_stream()
            && !is_upgrade_request(req)
            && !h.contains_key(&HOP_HEADER)
            && !h.contains_key(RANGE)
            && !h.contains_key(IF_NONE_MATCH)
            && !h.contains_key(IF_MODIFIED_SINCE)
            && !h.contains_key(IF_MATCH)
            && !h.contains_key(IF_UNMODIFIED_SINCE)
            && !h.contains_key(IF_RANGE)
            && (self.share_authorized || !h.contains_key(AUTHORIZATION))
    }

    fn begin(&self, key: &str, headers: &HeaderMap, now: Instant) -> Begin {
        let mut inner = self.lock();
        let mut stale = None;
        if let Some(s) = inner.store.get(key).cloned()
            && s.matches(headers)
        {
            let age = now.saturating_duration_since(s.at);
            if age < s.fresh {
                return Begin::Hit(s);
            }
            if age < s.fresh.saturating_add(self.stale) {
                stale = Some(s);
            } else if let Some(old) = inner.store.pop(key) {
                inner.bytes -= old.size;
            }
        }
        if let Some((_, flight)) = inner.flights.get(key) {
            return match stale {
                Some(s) => Begin::Stale(s),
                None if self.coalesce && inner.pass.get(key).is_none_or(|&t| t <= now) => {
                    Begin::Wait(flight.clone())
                }
                None => Begin::Direct,
            };
        }
        if stale.is_none() && inner.pass.get(key).is_some_and(|&t| t > now) {
            return Begin::Direct;
        }
        let (tx, rx) = watch::channel(None);
        inner.next_flight += 1;
        let id = inner.next_flight;
        inner.flights.insert(key.into(), (id, rx));
        Begin::Lead(id, tx, stale)
    }

    /// Ends flight `id` of `key` (its waiters have been told, or see the sender gone).
    fn land(&self, key: &str, id: u64) {
        let mut inner = self.lock();
        if inner.flights.get(key).is_some_and(|(i, _)| *i == id) {
            inner.flights.remove(key);
        }
    }

    fn mark_pass(&self, key: &str, now: Instant) {
        self.stats.cache.passes.fetch_add(1, Relaxed);
        let mut inner = self.lock();
        if inner.pass.len() >= MAX_PASS_MARKS {
            inner.pass.retain(|_, t| *t > now);
            if inner.pass.len() >= MAX_PASS_MARKS {
                inner.pass.clear();
            }
        }
        inner.pass.insert(key.into(), now + PASS_FOR);
    }

    fn store(&self, key: &str, s: Arc<Stored>) {
        if self.max_bytes == 0 || s.size > self.max_bytes {
            return;
        }
        self.stats.cache.stores.fetch_add(1, Relaxed);
        let mut inner = self.lock();
        inner.pass.remove(key);
        inner.bytes += s.size;
        if let Some(old) = inner.store.put(key.into(), s) {
            inner.bytes -= old.size;
        }
        while inner.bytes > self.max_bytes {
            let Some((_, old)) = inner.store.pop_lru() else {
                break;
            };
            inner.bytes -= old.size;
            self.stats.cache.evictions.fetch_add(1, Relaxed);
        }
    }

    fn judge(&self, status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Judgement {
        let cc = CacheControl::of(headers);
        let vary_all = headers
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim() == "*");
        let age = headers
            .get(AGE)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let pass = cc.private
            || cc.no_store
            || vary_all
            || (!self.share_set_cookie && headers.contains_key(SET_COOKIE));
        let share = !pass && status != StatusCode::PARTIAL_CONTENT;
        let storable = share
            && self.max_bytes > 0
            && !cc.no_cache
            && matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308);
        let fresh = if storable {
            let lifetime = cc
                .s_maxage
                .or(cc.max_age)
                .map(Duration::from_secs)
                .or_else(|| {
                    let expires =
                        httpdate::parse_http_date(headers.get(EXPIRES)?.to_str().ok()?).ok()?;
                    let date = headers
                        .get(DATE)
                        .and_then(|d| httpdate::parse_http_date(d.to_str().ok()?).ok())
                        .unwrap_or(now);
                    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
                });
            lifetime
                .map(|l| l.saturating_sub(Duration::from_secs(age)))
                .filter(|l| !l.is_zero())
        } else {
            None
        };
        Judgement {
            share,
            pass,
            fresh,
            age,
        }
    }
}

/// The `Cache-Control` directives the cache heeds.
#[derive(Default)]
struct CacheControl {
    private: bool,
    no_store: bool,
    no_cache: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
}

impl CacheControl {
    fn of(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        for v in headers.get_all(CACHE_CONTROL) {
            let Ok(v) = v.to_str() else {
                // Unreadable: take the careful view.
                cc.no_store = true;
                continue;
            };
            for d in v.split(',') {
                let (name, value) = match d.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (d.trim(), None),
                };
                let secs = || value.and_then(|v| v.parse::<u64>().ok());
                if name.eq_ignore_ascii_case("private") {
                    cc.private = true;
                } else if name.eq_ignore_ascii_case("no-store") {
                    cc.no_store = true;
                } else if name.eq_ignore_ascii_case("no-cache") {
                    cc.no_cache = true;
                } else if name.eq_ignore_ascii_case("max-age") {
                    // A bad value makes the response stale (RFC 9111 4.2.1).
                    cc.max_age = Some(secs().unwrap_or(0));
                } else if name.eq_ignore_ascii_case("s-maxage") {
                    cc.s_maxage = Some(secs().unwrap_or(0));
                }
            }
        }
        cc
    }
}

/// The cache key: method, host, path and query.
fn key_of(req: &Request<ProxyBody>) -> Box<str> {
    let mut buf = [0u8; 256];
    let host = request_host(req, &mut buf);
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut k = String::with_capacity(req.method().as_str().len() + host.len() + pq.len() + 2);
    k.push_str(req.method().as_str());
    k.push(' ');
    k.push_str(host);
    k.push(' ');
    k.push_str(pq);
    k.into_boxed_str()
}

/// The values of the headers a response names in `Vary`, as the request had them.
fn vary_of(resp: &HeaderMap, req: &HeaderMap) -> Box<[(HeaderName, Box<[HeaderValue]>)]> {
    resp.get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .map(|name| {
            let values = req.get_all(&name).iter().cloned().collect();
            (name, values)
        })
        .collect()
}

/// A body read whole (within `max` bytes), or what was read of it and the rest.
enum Buffered {
    Whole(Bytes),
    Partial(ProxyBody),
}

async fn buffer(mut body: ProxyBody, max: usize) -> Buffered {
    if body.size_hint().lower() > max as u64 {
        return Buffered::Partial(body);
    }
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut len = 0usize;
    let partial = |frames, rest, error: Option<BoxError>| {
        Buffered::Partial(ProxyBody::Prefixed(Box::new(Prefixed {
            frames,
            rest,
            error,
        })))
    };
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return partial(frames, ProxyBody::Empty, Some(e)),
            Some(Ok(f)) => {
                let data = f.data_ref().map(Bytes::len);
                frames.push_back(f);
                match data {
                    // Trailers: passed on, not shared.
                    None => return partial(frames, body, None),
                    Some(n) => {
                        len += n;
                        if len > max {
                            return partial(frames, body, None);
                        }
                    }
                }
            }
        }
    }
    Buffered::Whole(if frames.len() == 1 {
        frames
            .into_iter()
            .next()
            .and_then(|f| f.into_data().ok())
            .unwrap_or_default()
    } else {
        let mut all = BytesMut::with_capacity(len);
        for f in frames {
            if let Some(d) = f.data_ref() {
                all.extend_from_slice(d);
            }
        }
        all.freeze()
    })
}

fn tagged(mut resp: Response<ProxyBody>, tag: &'static str) -> Response<ProxyBody> {
    resp.headers_mut()
        .insert(X_CACHE.clone(), HeaderValue::from_static(tag));
    resp
}

/// Serves a request of a route with a cache (see the module's documentation).
pub(crate) async fn serve(
    shared: &Shared,
    live: &Arc<Live>,
    route: &CompiledRoute,
    cache: &Cache,
    client: &ClientAddr,
    req: Box<Request<ProxyBody>>,
    served: &AtomicU32,
) -> Response<ProxyBody> {
    let direct = |req| async move {
        match proxy(shared, live, route, client, req, None, served).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(Some(route)),
        }
    };
    if !cache.eligible(&req) {
        return direct(req).await;
    }
    let counters = &cache.stats.cache;
    let count = |c: &AtomicU64| {
        c.fetch_add(1, Relaxed);
    };
    let key = key_of(&req);
    let now = Instant::now();
    match cache.begin(&key, req.headers(), now) {
        Begin::Hit(s) => {
            count(&counters.hits);
            s.respond("HIT", now)
        }
        Begin::Stale(s) => {
            count(&counters.stale);
            s.respond("STALE", now)
        }
        Begin::Direct => {
            count(&counters.misses);
            tagged(direct(req).await, "MISS")
        }
        Begin::Wait(mut flight) => {
            let outcome = match flight.wait_for(Option::is_some).await {
                Ok(o) => o.clone(),
                Err(_) => None,
            };
            match outcome {
                Some(Outcome::Shared(s)) if s.matches(req.headers()) => {
                    count(&counters.coalesced);
                    s.respond("COALESCED", Instant::now())
                }
                _ => {
                    count(&counters.misses);
                    tagged(direct(req).await, "MISS")
                }
            }
        }
        Begin::Lead(id, tx, stale) => {
            // Lands the flight however this ends (the leader's client may go away).
            struct Landing<'a>(&'a Cache, &'a str, u64);
            impl Drop for Landing<'_> {
                fn drop(&mut self) {
                    self.0.land(self.1, self.2);
                }
            }
            let _landing = Landing(cache, &key, id);
            count(&counters.misses);
            let req_headers = req.headers().clone();
            let mut resp = match proxy(shared, live, route, client, req, None, served).await {
                Ok(resp) => resp,
                Err(e) => {
                    tx.send_replace(Some(Outcome::Alone));
                    if let Some(s) = stale {
                        count(&counters.stale);
                        return s.respond("STALE", Instant::now());
                    }
                    return tagged(e.into_response(Some(route)), "MISS");
                }
            };
            materialize(&mut resp);
            let j = cache.judge(resp.status(), resp.headers(), SystemTime::now());
            if !j.share {
                if j.pass {
                    cache.mark_pass(&key, Instant::now());
                }
                tx.send_replace(Some(Outcome::Alone));
                return tagged(resp, "MISS");
            }
            let (parts, body) = resp.into_parts();
            let body = match buffer(body, cache.max_entry).await {
                Buffered::Whole(b) => b,
                Buffered::Partial(body) => {
                    cache.mark_pass(&key, Instant::now());
                    tx.send_replace(Some(Outcome::Alone));
                    return tagged(Response::from_parts(parts, body), "MISS");
                }
            };
            let vary = vary_of(&parts.headers, &req_headers);
            let size = body.len() as u64
                + key.len() as u64
                + parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().len() + v.len() + 32) as u64)
                    .sum::<u64>()
                + 128;
            let at = Instant::now();
            let stored = Arc::new(Stored {
                status: parts.status,
                headers: parts.headers,
                body,
                vary,
                at,
                age: j.age,
                fresh: j.fresh.unwrap_or(Duration::ZERO),
                size,
            });
            if j.fresh.is_some() {
                cache.store(&key, stored.clone());
            }
            tx.send_replace(Some(Outcome::Shared(stored.clone())));
            stored.respond("MISS", at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_bytes: u64) -> Cache {
        Cache::new(
            &gateway_model::RouteCache {
                max_bytes,
                ..Default::default()
            },
            Arc::default(),
        )
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn judges_cache_control() {
        let c = cache(1 << 20);
        let now = SystemTime::now();
        let j = c.judge(
            StatusCode::OK,
            &headers(&[("cache-control", "public, max-age=60")]),
            now,
        );
        assert!(j.share && !j.pass);
        assert_eq!(j.fresh, Some(Duration::from_secs(60)));
        let j = c.judge(
            StatusCode::OK,
            &headers(&[("cache-control", "max-age=60, s-maxage=5"), ("age", "2")]),
            now,
        );
        assert_eq!(j.fresh, Some(Duration::from_secs(3)));
        for private in ["private", "no-store", "Private, max-age=9"] {
            let j = c.judge(StatusCode::OK, &headers(&[("cache-control", private)]), now);
            assert!(!j.share && j.pass, "{private}");
        }
        let j = c.judge(
            StatusCode::OK,
            &headers(&[("cache-control", "no-cache, max-age=9")]),
            now,
        );
        assert!(j.share && j.fresh.is_none());
        let j = c.judge(
            StatusCode::OK,
            &headers(&[("set-cookie", "a=b"), ("cache-control", "max-age=9")]),
            now,
        );
        assert!(!j.share && j.pass);
        let j = c.judge(StatusCode::OK, &headers(&[("vary", "accept, *")]), now);
        assert!(!j.share && j.pass);
        let j = c.judge(
            StatusCode::NOT_FOUND,
            &headers(&[("cache-control", "max-age=9")]),
            now,
        );
        assert!(
            j.share && j.fresh.is_none(),
            "errors are shared, never stored"
        );
        let j = c.judge(
            StatusCode::OK,
            &headers(&[
                ("date", "Mon, 30 Nov 2026 06:00:00 GMT"),
                ("expires", "Mon, 30 Nov 2026 06:01:00 GMT"),
            ]),
            now,
        );
        assert_eq!(j.fresh, Some(Duration::from_secs(60)));
        assert!(
            cache(0)
                .judge(
                    StatusCode::OK,
                    &headers(&[("cache-control", "max-age=9")]),
                    now
                )
                .fresh
                .is_none()
        );
    }

    #[test]
    fn huge_freshness_and_age_do_not_overflow() {
        let c = Cache::new(
            &gateway_model::RouteCache {
                max_bytes: 1 << 20,
                stale_while_revalidate_ms: 60_000,
                ..Default::default()
            },
            Arc::default(),
        );
        let j = c.judge(
            StatusCode::OK,
            &headers(&[
                ("cache-control", "max-age=18446744073709551615"),
                ("age", "18446744073709551615"),
            ]),
            SystemTime::now(),
        );
        assert!(j.fresh.is_none(), "as old as it may live: stale at once");
        c.store(
            "k",
            Arc::new(Stored {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::new(),
                vary: Box::new([]),
                at: Instant::now(),
                age: u64::MAX,
                fresh: Duration::from_secs(u64::MAX),
                size: 10,
            }),
        );
        let Begin::Hit(s) = c.begin("k", &HeaderMap::new(), Instant::now()) else {
            panic!("not a hit");
        };
        assert_eq!(
            s.respond("HIT", Instant::now()).headers()[AGE],
            u64::MAX.to_string()
        );
    }

    #[test]
    fn the_store_evicts_least_recently_used_within_its_bytes() {
        let c = cache(1000);
        let entry = |n: usize| {
            Arc::new(Stored {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::from(vec![b'x'; n]),
                vary: Box::new([]),
                at: Instant::now(),
                age: 0,
                fresh: Duration::from_secs(60),
                size: n as u64,
            })
        };
        c.store("a", entry(400));
        c.store("b", entry(400));
        assert_eq!(c.usage(), (800, 2));
        // "a" is used, so "b" goes first.
        assert!(matches!(
            c.begin("a", &HeaderMap::new(), Instant::now()),
            Begin::Hit(_)
        ));
        c.store("c", entry(400));
        assert_eq!(c.usage(), (800, 2));
        assert!(matches!(
            c.begin("a", &HeaderMap::new(), Instant::now()),
            Begin::Hit(_)
        ));
        assert!(matches!(
            c.begin("b", &HeaderMap::new(), Instant::now()),
            Begin::Lead(..)
        ));
        assert_eq!(c.stats.cache.evictions.load(Relaxed), 1);
    }
}
