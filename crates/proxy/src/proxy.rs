//! The request path: check framing, route, decide where the request is served (here or on the
//! leader), wait for backends, pick one within its connection limit, forward, retry within the
//! pool's budget, replay, tunnel upgrades.

use crate::balance::{CompiledPool, InFlight, PickCtx, Picked, Scope, Tried};
use crate::body::{ProxyBody, Recorder, Source, materialize};
use crate::cidr::{Cidr, any_contains};
use crate::codec::{Headers, RawRequest};
use crate::error::ProxyError;
use crate::headers::{
    ClientAddr, REPLAY_HEADER, client_ip, is_upgrade_request, prepare_request, prepare_response,
    relayed_client_ip, request_host, routing_host,
};
use crate::hop::{COOKIE_NAME, HOP_HEADER, HopKey, unix_now};
use crate::limits::RouteGuard;
use crate::rules::strip_prefix;
use crate::table::{CompiledRoute, RouteTable};
use crate::upstream::{Endpoint, SendError, Tunnel, Verbatim};
use arc_swap::ArcSwap;
use bytes::Bytes;
use gateway_model::{Balance, WritePolicy};
use http::header::{COOKIE, HOST, SET_COOKIE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper::body::Body;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering, Ordering::Relaxed};
use tokio::sync::Notify;
use tokio::time::Instant;

/// What every connection of a node shares.
pub(crate) struct Shared {
    pub(crate) node_id: u64,
    pub(crate) key: HopKey,
    pub(crate) max_replay_body: usize,
    /// Peers whose forwarding headers are kept.
    pub(crate) trusted: Box<[Cidr]>,
    /// The current route table and leader; replaced whole on every change.
    pub(crate) live: ArcSwap<Live>,
    /// Woken after every swap of `live`.
    pub(crate) swapped: Notify,
    /// Settings of client connections.
    pub(crate) conn: crate::conn::ConnOpts,
    /// The port HTTPS redirects name (`None`: the default, 443).
    pub(crate) https_port: Option<u16>,
    /// Wakes idle client connections (deadline ticks, shutdown).
    pub(crate) closing: crate::conn::Closing,
    /// Counters the admin plane reads.
    pub(crate) metrics: crate::metrics::Metrics,
    /// Access log format; `None`: off.
    pub(crate) access_log: Option<crate::access::AccessLog>,
    /// This node's health monitor, told of passive ejections.
    pub(crate) health: Option<Arc<crate::health::Monitor>>,
    /// The cluster's node-wide limits (requests and connections).
    pub(crate) limits: crate::limits::NodeLimits,
}

impl Shared {
    /// Whether `peer` is one of the trusted proxies, whose forwarding headers are kept.
    fn trusts(&self, peer: IpAddr) -> bool {
        !self.trusted.is_empty() && any_contains(&self.trusted, peer)
    }

    /// Backend `idx` of `pool` was just ejected here: count it as a failed probe too.
    fn ejected(&self, pool: &CompiledPool, idx: usize, why: &str) {
        let b = &pool.backends[idx];
        tracing::warn!(pool = %pool.name, backend = %b.id, address = %b.address, cooldown_ms = pool.eject.map_or(0, |e| e.cooldown_ms), "backend ejected on this node: {why}");
        if let Some(m) = &self.health {
            m.passive_failure(&pool.name, &b.id);
        }
    }
}

impl Shared {
    /// Lets go of the backend connections that idled past their pool's keep-alive time or
    /// that their backend closed.
    pub(crate) fn sweep_idle_backends(&self) {
        let live = self.live.load();
        let now = std::time::Instant::now();
        for pool in live.table.pools.iter() {
            for backend in pool.backends.iter() {
                backend.endpoint.sweep(now);
            }
        }
        if let Some(leader) = &live.leader {
            leader.endpoint.sweep(now);
        }
    }

    /// Replaces the live table and leader, waking requests that wait for a change.
    pub(crate) fn swap(&self, live: Live) {
        self.metrics.set_table(live.table.clone());
        self.live.store(Arc::new(live));
        self.swapped.notify_waiters();
    }
}

/// One consistent view for a request: the route table and the leader.
pub(crate) struct Live {
    pub(crate) table: Arc<RouteTable>,
    pub(crate) leader: Option<LeaderTarget>,
}

/// The leader node's data plane.
pub(crate) struct LeaderTarget {
    pub(crate) id: u64,
    pub(crate) address: Box<str>,
    pub(crate) endpoint: Arc<Endpoint>,
}

/// Serves one request; every failure becomes a response naming the route and the cause (or
/// the route's custom error page). HTTP/1 framing was checked when the head was parsed.
/// `start` is when the request began to arrive: its duration is counted from there. `raw`:
/// the request's headers as the client sent them (its map is empty then), passed on as they
/// came when the route allows ([`passes_raw`]).
// Not an `async fn`, whose arguments would take room twice in the future.
#[allow(clippy::manual_async_fn)]
pub(crate) fn handle(
    shared: &Shared,
    client: &ClientAddr,
    mut req: Box<Request<ProxyBody>>,
    mut raw: Option<RawRequest>,
    start: Instant,
) -> impl Future<Output = Response<ProxyBody>> {
    async move {
        let _slot = match shared.limits.enter() {
            Ok(slot) => slot,
            Err(limit) => return ProxyError::NodeBusy { limit }.into_response(None),
        };
        let live = shared.live.load_full();
        // Only with an access log: what its line needs of the request (taken before the
        // request is handed on).
        let mut logged = None;
        let route = {
            let mut buf = [0u8; 256];
            let (host, headers) = match &raw {
                Some(raw) => (routing_host(raw.host(), &mut buf), Headers::Raw(raw)),
                None => (request_host(&req, &mut buf), Headers::Map(req.headers())),
            };
            if shared.access_log.is_some() {
                logged = Some(Logged {
                    method: req.method().clone(),
                    uri: req.uri().clone(),
                    version: req.version(),
                    host: host.into(),
                });
            }
            match live
                .table
                .find(host, req.uri().path(), req.method(), headers)
            {
                Some(route) => route,
                None => {
                    let e = ProxyError::NoRoute {
                        host: host.to_string(),
                        path: req.uri().path().to_string(),
                    };
                    shared.metrics.no_route();
                    let resp = e.into_response(None);
                    if let Some(l) = &logged {
                        log_access(shared, client, l, None, None, &resp, start);
                    }
                    return resp;
                }
            }
        };
        if let Some(r) = raw.take_if(|_| !passes_raw(shared, client, route)) {
            *req.headers_mut() = r.into_map();
        }
        if let Some(status) = route.https_redirect
            && !client.tls
        {
            return crate::tls::redirect_to_https(&req, status, shared.https_port);
        }
        let served = AtomicU32::new(SERVED_NOBODY);
        let mut resp = match &route.cache {
            None => match proxy(shared, &live, route, client, req, raw.as_ref(), &served).await {
                Ok(resp) => resp,
                Err(e) => e.into_response(Some(route)),
            },
            // Routes with a cache (on the heap, keeping other requests' futures small).
            Some(cache) => {
                Box::pin(crate::cache::serve(
                    shared, &live, route, cache, client, req, &served,
                ))
                .await
            }
        };
        let served = served.load(Relaxed);
        let status = resp.status().as_u16();
        route.stats.latency.observe(start.elapsed());
        match served {
            SERVED_NOBODY => route.stats.unserved.record(status),
            SERVED_LEADER => route.stats.to_leader.record(status),
            i => match route.per_backend.get(i as usize) {
                Some(c) => c.record(status),
                None => route.stats.unserved.record(status),
            },
        }
        if let Some(l) = &logged {
            materialize(&mut resp); // for its Content-Length
            let pool = &live.table.pools[route.pool];
            let backend = match served {
                SERVED_LEADER => Some("leader"),
                i => pool.backends.get(i as usize).map(|b| &*b.id),
            };
            log_access(shared, client, l, Some(route), backend, &resp, start);
        }
        resp
    }
}

/// Whether a request whose headers are still raw can be served so: nothing on its way reads
/// or changes them but routing and balancing, which read them raw, and the write to an HTTP/1.1
/// backend, which passes them on as they came, followed by the forwarding headers.
fn passes_raw(shared: &Shared, client: &ClientAddr, route: &CompiledRoute) -> bool {
    route.cache.is_none()
        && route.https_redirect.is_none()
        && route.writes != WritePolicy::Leader
        && route.host_rewrite.is_none()
        && route.request_ops.is_empty()
        // A trusted proxy's forwarding headers are read and extended.
        && !shared.trusts(client.ip)
}

/// `served` when no backend was reached.
const SERVED_NOBODY: u32 = u32::MAX;
/// `served` when the request was carried to the leader node.
const SERVED_LEADER: u32 = u32::MAX - 1;

/// What the access log needs of a request.
struct Logged {
    method: Method,
    uri: Uri,
    version: http::Version,
    host: Box<str>,
}

fn log_access(
    shared: &Shared,
    client: &ClientAddr,
    l: &Logged,
    route: Option<&CompiledRoute>,
    backend: Option<&str>,
    resp: &Response<ProxyBody>,
    start: Instant,
) {
    let Some(format) = shared.access_log else {
        return;
    };
    let bytes = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .or_else(|| resp.body().size_hint().exact());
    format.emit(&crate::access::Entry {
        client: client.ip,
        method: &l.method,
        host: &l.host,
        uri: &l.uri,
        version: l.version,
        route: route.map(|r| &*r.name),
        backend,
        status: resp.status(),
        bytes,
        duration: start.elapsed(),
        forwarded: backend == Some("leader"),
    });
}

fn is_write(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The value of the `gw_sticky` cookie, if the request has one.
fn sticky_cookie(headers: Headers<'_>) -> Option<&str> {
    headers.find_map(&COOKIE, |v| {
        std::str::from_utf8(v)
            .ok()?
            .split(';')
            .find_map(|c| c.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
    })
}

/// Applies a route's rewrites to a prepared upstream request: prefix stripping, `Host`
/// rewrite, header rules.
fn apply_route<B>(route: &CompiledRoute, req: &mut Request<B>) {
    if route.strip_prefix {
        *req.uri_mut() = strip_prefix(req.uri(), route.prefix());
    }
    if let Some(host) = &route.host_rewrite {
        req.headers_mut().insert(HOST, host.clone());
    }
    if !route.request_ops.is_empty() {
        route.request_ops.apply(req.headers_mut());
    }
}

/// Waits, while a route's pool has no backend at all, for one to be registered: re-reads the
/// table after each `retry_delay` (and on every configuration change), up to `retries`
/// delays. Returns the first table whose pool `name` has backends.
async fn wait_for_backends(
    shared: &Shared,
    name: &str,
    route: &CompiledRoute,
) -> Option<Arc<Live>> {
    let mut waited = 0;
    let mut next = Instant::now() + route.retry_delay;
    loop {
        let swapped = shared.swapped.notified();
        tokio::pin!(swapped);
        swapped.as_mut().enable();
        let now = shared.live.load_full();
        if now
            .table
            .pool_named(name)
            .is_some_and(|p| !p.backends.is_empty())
        {
            return Some(now);
        }
        if waited >= route.retries {
            return None;
        }
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                waited += 1;
                next += route.retry_delay;
            }
            () = &mut swapped => {}
        }
    }
}

/// The parts of a request kept to replay it.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Head {
    fn of<B>(req: &Request<B>) -> Self {
        Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }

    fn into_request(self, body: Bytes) -> Request<ProxyBody> {
        let mut req = Request::new(ProxyBody::full(body));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.headers_mut() = self.headers;
        req
    }
}

/// A request that may be replayed on the leader: its head, and its body as it streams by
/// (`None` when it has no body).
struct Replay {
    head: Head,
    body: Option<Arc<Recorder>>,
}

impl Replay {
    /// `None` when the body is known to be larger than `max_body` bytes.
    fn of(req: &Request<ProxyBody>, max_body: usize) -> Option<Replay> {
        let body = req.body();
        let recorder = if body.is_end_stream() {
            None
        } else if body.size_hint().lower() > max_body as u64 {
            return None;
        } else {
            Some(Recorder::new(max_body))
        };
        Some(Replay {
            head: Head::of(req),
            body: recorder,
        })
    }
}

// Not an `async fn`, whose arguments would take room twice in the future.
#[allow(clippy::manual_async_fn)]
pub(crate) fn proxy(
    shared: &Shared,
    live: &Arc<Live>,
    route: &CompiledRoute,
    client: &ClientAddr,
    mut req: Box<Request<ProxyBody>>,
    raw: Option<&RawRequest>,
    served: &AtomicU32,
) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> {
    async move {
        // A request relayed by another node carries a marker; a bad one is refused, not ignored,
        // so that a forged marker can neither bypass the leader rule nor pass silently.
        let relayed = match req.headers().get(&HOP_HEADER) {
            None => false,
            Some(marker) => {
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                shared
                    .key
                    .verify_hop(marker, req.method(), pq, unix_now())
                    .map_err(|why| ProxyError::BadHop {
                        route: route.name.to_string(),
                        why,
                    })?;
                true
            }
        };
        let peer = client.ip;
        let trusted_peer = shared.trusts(peer);

        // Limits, on the node that received the request (a relayed one was counted there).
        let mut slot = None;
        let mut over = None;
        if !relayed {
            if let Some(limiter) = &route.limiter {
                let ip = client_ip(req.headers(), peer, &shared.trusted);
                limiter
                    .take(ip, std::time::Instant::now())
                    .map_err(|retry_after| ProxyError::RateLimited {
                        route: route.name.to_string(),
                        client: ip,
                        retry_after,
                    })?;
            }
            if route.max_concurrent != 0 {
                slot = Some(
                    RouteGuard::enter(&route.shared, route.max_concurrent).ok_or_else(|| {
                        ProxyError::RouteBusy {
                            route: route.name.to_string(),
                            limit: route.max_concurrent,
                        }
                    })?,
                );
            }
            if let Some(max) = route.max_body {
                let too_large = || ProxyError::TooLarge {
                    route: route.name.to_string(),
                    limit: max,
                };
                match req.headers().get(http::header::CONTENT_LENGTH) {
                    Some(v) => {
                        if v.to_str()
                            .ok()
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(u64::MAX)
                            > max
                        {
                            return Err(too_large());
                        }
                    }
                    None => {
                        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
                        let body = std::mem::replace(req.body_mut(), ProxyBody::Empty);
                        *req.body_mut() = body.limited(max, flag.clone());
                        over = Some(flag);
                    }
                }
            }
        }

        let leader_route = route.writes == WritePolicy::Leader;
        let write = is_write(req.method());
        if leader_route && write && !relayed {
            match &live.leader {
                None => {
                    return Err(ProxyError::NoLeader {
                        route: route.name.to_string(),
                        method: req.method().to_string(),
                    });
                }
                Some(leader) if leader.id != shared.node_id => {
                    // The leader applies the route's own rewrites when it serves the request.
                    prepare_request(&mut req, client, trusted_peer, false, false);
                    served.store(SERVED_LEADER, Relaxed);
                    return Box::pin(forward_to_leader(shared, route, leader, req)).await;
                }
                Some(_) => {} // this node leads: served below by its own backends
            }
        }

        // A pool with no backend at all may get one soon (a deploy, a restart): wait for it.
        let home = &live.table.pools[route.pool];
        let fresh = if home.backends.is_empty() && route.retries > 0 && !route.retry_delay.is_zero()
        {
            Box::pin(wait_for_backends(shared, &home.name, route)).await
        } else {
            None
        };
        let pool = fresh
            .as_ref()
            .and_then(|l| l.table.pool_named(&home.name))
            .unwrap_or(home);

        let scope = if relayed || (leader_route && write) || pool.prefer_local {
            Scope::Local
        } else {
            Scope::All
        };
        let client_ip: IpAddr = if relayed {
            relayed_client_ip(req.headers(), peer, &shared.trusted)
        } else {
            client_ip(req.headers(), peer, &shared.trusted)
        };
        let pinned = match pool.balance {
            Balance::Cookie => {
                let headers = raw.map_or(Headers::Map(req.headers()), Headers::Raw);
                sticky_cookie(headers).and_then(|v| pool.resolve_cookie(v))
            }
            _ => None,
        };
        let upgrade = is_upgrade_request(&req);
        // A raw head has none of the headers `prepare_request` removes or replaces; the
        // forwarding headers are written after it (`Verbatim`).
        let verbatim = match raw {
            Some(headers) => Some(Verbatim { headers, client }),
            None => {
                prepare_request(&mut req, client, trusted_peer, relayed, upgrade);
                None
            }
        };

        // On a leader route, keep what is needed to replay the request if the backend asks
        // (before the route's rewrites, which the leader applies itself).
        let replay = if leader_route && !relayed && !upgrade {
            Replay::of(&req, shared.max_replay_body)
        } else {
            None
        };
        apply_route(route, &mut req);
        if let Some(rec) = replay.as_ref().and_then(|r| r.body.clone()) {
            let body = std::mem::replace(req.body_mut(), ProxyBody::Empty);
            *req.body_mut() = body.recorded(rec);
        }

        let ctx = PickCtx { client_ip, pinned };
        let sent = dispatch(
            shared, route, pool, scope, &ctx, req, upgrade, verbatim, served,
        )
        .await;
        let (mut resp, picked, in_flight) = match sent {
            Err(_) if over.as_ref().is_some_and(|o| o.load(Ordering::Acquire)) => {
                return Err(ProxyError::TooLarge {
                    route: route.name.to_string(),
                    limit: route.max_body.unwrap_or(0),
                });
            }
            other => other?,
        };
        let in_flight = in_flight.hold(slot);

        if replay.is_some() {
            materialize(&mut resp);
        }
        if let Some(replay) = replay
            && resp
                .headers()
                .get(&REPLAY_HEADER)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"leader"))
        {
            match replay_action(shared, live, route, pool, replay, &picked)? {
                ReplayAction::Keep => {}
                ReplayAction::ToLeader(leader, req) => {
                    drop((resp, in_flight));
                    served.store(SERVED_LEADER, Relaxed);
                    return Box::pin(forward_to_leader(shared, route, leader, req)).await;
                }
                ReplayAction::Local(mut req) => {
                    drop((resp, in_flight));
                    apply_route(route, &mut req);
                    return Box::pin(async {
                        let (resp, picked, in_flight) = dispatch(
                            shared,
                            route,
                            pool,
                            Scope::Local,
                            &ctx,
                            req,
                            false,
                            None,
                            served,
                        )
                        .await?;
                        Ok(finish(resp, route, pool, picked, in_flight))
                    })
                    .await;
                }
            }
        }

        if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let (mut parts, body) = resp.into_parts();
            let tunnel = match body {
                Source::Backend(body) => body.into_tunnel(),
                _ => None,
            };
            let Some((io, leftover)) = tunnel else {
                let backend = &pool.backends[picked.idx];
                return Err(ProxyError::Backend {
                    route: route.name.to_string(),
                    backend: backend.id.to_string(),
                    address: backend.address.to_string(),
                    cause: "101 without an upgradable connection".into(),
                });
            };
            prepare_response(&mut parts.headers, true);
            route.response_ops.apply(&mut parts.headers);
            let tunnel = Tunnel {
                io,
                leftover,
                in_flight: Some(in_flight),
                _open: Some(shared.metrics.tunnel()),
            };
            return Ok(Response::from_parts(
                parts,
                ProxyBody::Tunnel(Box::new(tunnel)),
            ));
        }
        Ok(finish(resp, route, pool, picked, in_flight))
    }
}

/// What to do when a backend asks for a replay on the leader.
enum ReplayAction<'a> {
    /// Pass the answer on (already the leader's own backend, or the body was not kept).
    Keep,
    ToLeader(&'a LeaderTarget, Box<Request<ProxyBody>>),
    /// This node leads: serve it again from its own backends.
    Local(Box<Request<ProxyBody>>),
}

fn replay_action<'a>(
    shared: &Shared,
    live: &'a Live,
    route: &CompiledRoute,
    pool: &CompiledPool,
    replay: Replay,
    picked: &Picked,
) -> Result<ReplayAction<'a>, ProxyError> {
    let body = match &replay.body {
        None => Some(Bytes::new()),
        Some(rec) => rec.take(),
    };
    let Some(body) = body else {
        tracing::debug!(route = %route.name, "replay asked for, but the body was too large or incomplete");
        return Ok(ReplayAction::Keep);
    };
    let served_by_own = pool.backends[picked.idx].node == Some(shared.node_id);
    match &live.leader {
        None => Err(ProxyError::NoLeader {
            route: route.name.to_string(),
            method: replay.head.method.to_string(),
        }),
        Some(leader) if leader.id != shared.node_id => Ok(ReplayAction::ToLeader(
            leader,
            Box::new(replay.head.into_request(body)),
        )),
        Some(_) if !served_by_own && pool.has_local() => Ok(ReplayAction::Local(Box::new(
            replay.head.into_request(body),
        ))),
        Some(_) => Ok(ReplayAction::Keep),
    }
}

/// Picks a backend with a free slot: the balancer's choice, or when that one is at its
/// `max_connections` another one with room (unless the pool is sticky); when every candidate
/// is full, waits for a slot up to the pool's `queue_timeout`. `None` when every backend of
/// the scope is in `tried`.
async fn acquire(
    route: &CompiledRoute,
    pool: &CompiledPool,
    scope: Scope,
    ctx: &PickCtx,
    tried: &Tried,
) -> Result<Option<(Picked, InFlight)>, ProxyError> {
    let Some(first) = pool.pick_live(scope, ctx, tried) else {
        return Ok(None);
    };
    if let Some(slot) = pool.try_enter(first.idx) {
        return Ok(Some((first, slot)));
    }
    // The waiting (rare) lives on the heap, keeping every request's future small.
    Box::pin(queue_for_slot(route, pool, scope, ctx, tried, first)).await
}

/// Waits for a slot (see [`acquire`]).
async fn queue_for_slot(
    route: &CompiledRoute,
    pool: &CompiledPool,
    scope: Scope,
    ctx: &PickCtx,
    tried: &Tried,
    first: Picked,
) -> Result<Option<(Picked, InFlight)>, ProxyError> {
    let start = Instant::now();
    let deadline = start + pool.queue_timeout;
    let sticky = pool.is_sticky(ctx);
    let _queued = pool.queue();
    loop {
        // Registered before looking, so a slot freed after the look wakes this waiter.
        let freed = pool.slot_freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if let Some(slot) = pool.try_enter(first.idx) {
            return Ok(Some((first, slot)));
        }
        if !sticky {
            let mut full = tried.clone();
            full.push(first.idx);
            while let Some(other) = pool.pick(scope, ctx, &full) {
                if let Some(slot) = pool.try_enter(other.idx) {
                    return Ok(Some((other, slot)));
                }
                full.push(other.idx);
            }
        }
        tokio::select! {
            () = &mut freed => {}
            () = tokio::time::sleep_until(deadline) => {
                return Err(ProxyError::Saturated {
                    route: route.name.to_string(),
                    pool: pool.name.to_string(),
                    waited: start.elapsed(),
                });
            }
        }
    }
}

/// Picks a backend and sends the request, retrying while the request has provably not been
/// delivered (connection failures): on another backend, or after `retry_delay` on the same
/// ones again, up to the route's `retries` and within the pool's retry budget.
// Not an `async fn`, whose arguments would take room twice in the future.
// `served` tells the caller (metrics, access log) which backend answered, without growing
// the answer's type on every path.
#[allow(clippy::manual_async_fn, clippy::too_many_arguments)]
fn dispatch(
    shared: &Shared,
    route: &CompiledRoute,
    pool: &CompiledPool,
    scope: Scope,
    ctx: &PickCtx,
    mut req: Box<Request<ProxyBody>>,
    upgrade: bool,
    verbatim: Option<Verbatim<'_>>,
    served: &AtomicU32,
) -> impl Future<Output = Result<(Response<Source>, Picked, InFlight), ProxyError>> {
    async move {
        pool.record_request();
        let mut tried = Tried::default();
        let mut retries_left = route.retries;
        let mut last_error = None;
        loop {
            let Some((picked, in_flight)) = acquire(route, pool, scope, ctx, &tried).await? else {
                match last_error {
                    // Every backend failed to connect once: with a delay, try them again.
                    Some(_) if !route.retry_delay.is_zero() && tried.len() > 0 => {
                        tried = Tried::default();
                        continue;
                    }
                    Some(e) => return Err(e),
                    None => {
                        return Err(ProxyError::NoBackends {
                            route: route.name.to_string(),
                            pool: pool.name.to_string(),
                        });
                    }
                }
            };
            tried.push(picked.idx);
            let backend = &pool.backends[picked.idx];
            served.store(picked.idx as u32, Relaxed);
            backend.stats.requests.fetch_add(1, Relaxed);
            let failed = |cause: String| ProxyError::Backend {
                route: route.name.to_string(),
                backend: backend.id.to_string(),
                address: backend.address.to_string(),
                cause,
            };
            match crate::timer::within(route.timeout, backend.endpoint.send(req, upgrade, verbatim))
                .await
            {
                Ok(Ok(resp)) => {
                    if pool.answered(picked.idx, resp.status().as_u16()) {
                        shared.ejected(pool, picked.idx, "a run of 5xx responses");
                    }
                    return Ok((resp, picked, in_flight));
                }
                Ok(Err(SendError::Failed(cause))) => {
                    backend.stats.failures.fetch_add(1, Relaxed);
                    if pool.connect_failed(picked.idx) {
                        shared.ejected(pool, picked.idx, &cause);
                    }
                    return Err(failed(cause));
                }
                Ok(Err(
                    SendError::NotSent { req: back, cause }
                    | SendError::Resend { req: back, cause },
                )) => {
                    drop(in_flight);
                    backend.stats.failures.fetch_add(1, Relaxed);
                    if pool.connect_failed(picked.idx) {
                        shared.ejected(pool, picked.idx, &cause);
                    }
                    if retries_left == 0 {
                        return Err(failed(cause));
                    }
                    if !pool.try_retry() {
                        return Err(failed(format!(
                            "{cause} (not retried: the retry budget of pool {} is spent)",
                            pool.name
                        )));
                    }
                    retries_left -= 1;
                    let error = failed(cause);
                    tracing::debug!("{error}; retrying");
                    last_error = Some(error);
                    req = back;
                    if !route.retry_delay.is_zero() {
                        Box::pin(tokio::time::sleep(route.retry_delay)).await;
                    }
                }
                Err(_) => {
                    backend.stats.failures.fetch_add(1, Relaxed);
                    return Err(ProxyError::BackendTimeout {
                        route: route.name.to_string(),
                        backend: backend.id.to_string(),
                        address: backend.address.to_string(),
                        after: route.timeout,
                    });
                }
            }
        }
    }
}

/// The client's response from a backend's.
fn finish(
    mut resp: Response<Source>,
    route: &CompiledRoute,
    pool: &CompiledPool,
    picked: Picked,
    in_flight: InFlight,
) -> Response<ProxyBody> {
    prepare_response(resp.headers_mut(), false);
    if picked.set_cookie {
        resp.headers_mut()
            .append(SET_COOKIE, pool.backends[picked.idx].set_cookie.clone());
    }
    if !route.response_ops.is_empty() {
        materialize(&mut resp);
        route.response_ops.apply(resp.headers_mut());
    }
    resp.map(|body| ProxyBody::Upstream {
        body,
        _in_flight: Some(in_flight),
    })
}

/// Sends a prepared request to the leader node, marked so that it is served there and never
/// forwarded again.
async fn forward_to_leader(
    shared: &Shared,
    route: &CompiledRoute,
    leader: &LeaderTarget,
    mut req: Box<Request<ProxyBody>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let marker = shared
        .key
        .sign_hop(shared.node_id, unix_now(), req.method(), pq);
    req.headers_mut().insert(&HOP_HEADER, marker);
    let failed = |cause: String| ProxyError::Leader {
        route: route.name.to_string(),
        leader: leader.id,
        address: leader.address.to_string(),
        cause,
    };
    match crate::timer::within(route.timeout, leader.endpoint.send(req, false, None)).await {
        Ok(Ok(mut resp)) => {
            prepare_response(resp.headers_mut(), false);
            Ok(resp.map(|body| ProxyBody::Upstream {
                body,
                _in_flight: None,
            }))
        }
        Ok(Err(SendError::Failed(cause)))
        | Ok(Err(SendError::NotSent { cause, .. }))
        | Ok(Err(SendError::Resend { cause, .. })) => Err(failed(cause)),
        Err(_) => Err(ProxyError::LeaderTimeout {
            route: route.name.to_string(),
            leader: leader.id,
            address: leader.address.to_string(),
            after: route.timeout,
        }),
    }
}
