//! The request path: route, decide where the request is served (here or on the leader), pick a
//! backend, forward, retry, replay, tunnel upgrades.

use crate::balance::{CompiledPool, InFlight, PickCtx, Picked, Scope, Tried};
use crate::body::{ProxyBody, Recorder};
use crate::error::ProxyError;
use crate::headers::{
    REPLAY_HEADER, is_upgrade_request, last_forwarded_for, prepare_request, prepare_response,
    request_host,
};
use crate::hop::{COOKIE_NAME, HOP_HEADER, HopKey, unix_now};
use crate::table::{CompiledRoute, RouteTable};
use crate::upstream::{Endpoint, SendError};
use arc_swap::ArcSwap;
use bytes::Bytes;
use gateway_model::{Balance, WritePolicy};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What every connection of a node shares.
pub(crate) struct Shared {
    pub(crate) node_id: u64,
    pub(crate) key: HopKey,
    pub(crate) max_replay_body: usize,
    /// The current route table and leader; replaced whole on every change.
    pub(crate) live: ArcSwap<Live>,
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

/// Serves one request; every failure becomes a response naming the route and the cause.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(match proxy(&shared, peer, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    })
}

fn is_write(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The value of the `gw_sticky` cookie, if the request has one.
fn sticky_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
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
    fn of(req: &Request<Incoming>, max_body: usize) -> Option<Replay> {
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

async fn proxy(
    shared: &Shared,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let live = shared.live.load_full();
    let route = {
        let mut buf = [0u8; 256];
        let host = request_host(&req, &mut buf);
        match live.table.find(host, req.uri().path(), req.method()) {
            Some(route) => route,
            None => {
                return Err(ProxyError::NoRoute {
                    host: host.to_string(),
                    path: req.uri().path().to_string(),
                });
            }
        }
    };

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
                prepare_request(&mut req, peer.ip(), false, false);
                return forward_to_leader(shared, route, leader, req.map(ProxyBody::Incoming))
                    .await;
            }
            Some(_) => {} // this node leads: served below by its own backends
        }
    }

    let pool = &live.table.pools[route.pool];
    let scope = if relayed || (leader_route && write) || pool.prefer_local {
        Scope::Local
    } else {
        Scope::All
    };
    let client_ip: IpAddr = if relayed {
        last_forwarded_for(req.headers()).unwrap_or(peer.ip())
    } else {
        peer.ip()
    };
    let pinned = match pool.balance {
        Balance::Cookie => sticky_cookie(req.headers()).and_then(|v| pool.resolve_cookie(v)),
        _ => None,
    };
    let upgrade = is_upgrade_request(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    prepare_request(&mut req, peer.ip(), relayed, upgrade);

    // On a leader route, keep what is needed to replay the request if the backend asks.
    let replay = if leader_route && !relayed && !upgrade {
        Replay::of(&req, shared.max_replay_body)
    } else {
        None
    };
    let req = req.map(|b| match replay.as_ref().and_then(|r| r.body.clone()) {
        Some(rec) => ProxyBody::Recorded(b, rec),
        None => ProxyBody::Incoming(b),
    });

    let ctx = PickCtx { client_ip, pinned };
    let (mut resp, picked, in_flight) = dispatch(route, pool, scope, &ctx, req, upgrade).await?;

    if let Some(replay) = replay
        && resp
            .headers()
            .get(&REPLAY_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"leader"))
    {
        let body = match &replay.body {
            None => Some(Bytes::new()),
            Some(rec) => rec.take(),
        };
        if let Some(body) = body {
            let served_by_own = pool.backends[picked.idx].node == Some(shared.node_id);
            match &live.leader {
                None => {
                    return Err(ProxyError::NoLeader {
                        route: route.name.to_string(),
                        method: replay.head.method.to_string(),
                    });
                }
                Some(leader) if leader.id != shared.node_id => {
                    drop((resp, in_flight));
                    return forward_to_leader(
                        shared,
                        route,
                        leader,
                        replay.head.into_request(body),
                    )
                    .await;
                }
                Some(_) if !served_by_own && pool.has_local() => {
                    drop((resp, in_flight));
                    let req = replay.head.into_request(body);
                    let (resp, picked, in_flight) =
                        dispatch(route, pool, Scope::Local, &ctx, req, false).await?;
                    return Ok(finish(resp, pool, picked, in_flight));
                }
                Some(_) => {} // already answered by the leader's own backend: pass it on
            }
        } else {
            tracing::debug!(route = %route.name, "replay asked for, but the body was too large or incomplete");
        }
    }

    if let Some(client) = client_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let backend = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(client, backend, in_flight));
        prepare_response(resp.headers_mut(), true);
        return Ok(resp.map(|_| ProxyBody::Empty));
    }
    Ok(finish(resp, pool, picked, in_flight))
}

/// Picks a backend and sends the request, retrying on another backend while the request has
/// provably not been delivered (connection failures), up to the route's `retries`.
async fn dispatch(
    route: &CompiledRoute,
    pool: &CompiledPool,
    scope: Scope,
    ctx: &PickCtx,
    mut req: Request<ProxyBody>,
    upgrade: bool,
) -> Result<(Response<Incoming>, Picked, InFlight), ProxyError> {
    let mut tried = Tried::default();
    let mut last_error = None;
    loop {
        let Some(picked) = pool.pick(scope, ctx, &tried) else {
            return Err(last_error.unwrap_or_else(|| ProxyError::NoBackends {
                route: route.name.to_string(),
                pool: pool.name.to_string(),
            }));
        };
        tried.push(picked.idx);
        let backend = &pool.backends[picked.idx];
        let in_flight = InFlight::new(&backend.stats);
        let failed = |cause: String| ProxyError::Backend {
            route: route.name.to_string(),
            backend: backend.id.to_string(),
            address: backend.address.to_string(),
            cause,
        };
        match tokio::time::timeout(route.timeout, backend.endpoint.send(req, upgrade)).await {
            Ok(Ok(resp)) => return Ok((resp, picked, in_flight)),
            Ok(Err(SendError::Failed(cause))) => return Err(failed(cause)),
            Ok(Err(SendError::NotSent { req: back, cause })) => {
                let error = failed(cause);
                if tried.len() > route.retries as usize {
                    return Err(error);
                }
                tracing::debug!("{error}; trying another backend");
                last_error = Some(error);
                req = *back;
            }
            Err(_) => {
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

/// The client's response from a backend's.
fn finish(
    mut resp: Response<Incoming>,
    pool: &CompiledPool,
    picked: Picked,
    in_flight: InFlight,
) -> Response<ProxyBody> {
    prepare_response(resp.headers_mut(), false);
    if picked.set_cookie {
        resp.headers_mut()
            .append(SET_COOKIE, pool.backends[picked.idx].set_cookie.clone());
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
    mut req: Request<ProxyBody>,
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
    match tokio::time::timeout(route.timeout, leader.endpoint.send(req, false)).await {
        Ok(Ok(mut resp)) => {
            prepare_response(resp.headers_mut(), false);
            Ok(resp.map(|body| ProxyBody::Upstream {
                body,
                _in_flight: None,
            }))
        }
        Ok(Err(SendError::Failed(cause))) | Ok(Err(SendError::NotSent { cause, .. })) => {
            Err(failed(cause))
        }
        Err(_) => Err(ProxyError::LeaderTimeout {
            route: route.name.to_string(),
            leader: leader.id,
            address: leader.address.to_string(),
            after: route.timeout,
        }),
    }
}

/// Copies bytes both ways between an upgraded client connection and the backend's.
async fn tunnel(client: OnUpgrade, backend: OnUpgrade, in_flight: InFlight) {
    match tokio::join!(client, backend) {
        (Ok(client), Ok(backend)) => {
            let mut client = TokioIo::new(client);
            let mut backend = TokioIo::new(backend);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        (Err(e), _) | (_, Err(e)) => tracing::debug!(error = %e, "upgrade failed"),
    }
    drop(in_flight);
}
