//! REST routes of the admin port.

use crate::auth::{Denied, Role, Tokens};
use crate::error::{ApiError, REVISION};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gateway_cluster::{Cluster, Consistency};
use gateway_model::{
    AlertSink, Cert, Command, MAX_BATCH, Pool, Route, TcpListenerStatus, TcpRoute,
    validate_alert_sink, validate_name, validate_pool, validate_route, validate_tcp_route,
};
use prometheus_client::collector::Collector;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// A figure for `/status` that another layer keeps (the data plane's memory guard).
pub type StatusFn = std::sync::Arc<dyn Fn() -> Value + Send + Sync>;

/// What the admin server needs besides its listener.
pub struct AdminOptions {
    pub cluster: Cluster,
    /// This node's memory: RSS, limit, marks and whether the data plane sheds (`/status`).
    pub memory_status: Option<StatusFn>,
    /// Testing the memory guard only: `POST /debug/ballast {"mb": N}` holds N MiB.
    pub debug_ballast: bool,
    /// Told when this node has left the cluster through `POST /v1/leave` and should exit.
    pub left: mpsc::Sender<()>,
    /// Largest request body accepted.
    pub max_body: usize,
    /// Who may read and write; `Tokens::open()` lets everyone.
    pub tokens: Tokens,
    /// This node's managed backend processes as its supervisor sees them, shown by `/status`
    /// as `managed`.
    pub managed: Option<watch::Receiver<Value>>,
    /// More figures for `GET /metrics` beside the cluster's own (the node hands in the data
    /// plane's); an empty list serves the cluster's alone.
    pub metrics: Vec<Arc<dyn Collector>>,
    /// This node's TCP route listeners (listening, or why not), shown on `/status`.
    pub tcp_listeners: watch::Receiver<Vec<TcpListenerStatus>>,
    /// This node's own view of backend health (the backends its probes see down), shown in
    /// `/status` as `sees_down`.
    pub seen_down: Option<
        tokio::sync::watch::Receiver<
            std::sync::Arc<std::collections::BTreeSet<gateway_model::SeenDown>>,
        >,
    >,
    /// Serve HTTPS with this configuration instead of plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// What every handler reads, behind one `Arc`: axum clones the state for each request and
/// for each middleware layer.
#[derive(Clone)]
pub(crate) struct App(Arc<AppState>);

impl std::ops::Deref for App {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.0
    }
}

pub(crate) struct AppState {
    pub(crate) cluster: Cluster,
    memory_status: Option<StatusFn>,
    debug_ballast: bool,
    ballast: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    left: mpsc::Sender<()>,
    tokens: Tokens,
    managed: Option<watch::Receiver<Value>>,
    pub(crate) collectors: Arc<[Arc<dyn Collector>]>,
    /// Times the known leader changed since this node started.
    pub(crate) leader_changes: Arc<AtomicU64>,
    /// Times each backend was marked down, as seen applied since this node started.
    pub(crate) ejections: Arc<std::sync::Mutex<BTreeMap<(String, String), u64>>>,
    /// True once the server is shutting down: endless answers (event streams) end then, so
    /// that the graceful shutdown does not wait for them.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
    tcp_listeners: watch::Receiver<Vec<TcpListenerStatus>>,
    seen_down: Option<
        tokio::sync::watch::Receiver<
            std::sync::Arc<std::collections::BTreeSet<gateway_model::SeenDown>>,
        >,
    >,
}

type Result<T> = std::result::Result<T, ApiError>;

/// Serves the admin REST API on `listener` until `shutdown` resolves; in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    opts: AdminOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let app = App(Arc::new(AppState {
        stopping,
        cluster: opts.cluster,
        left: opts.left,
        tokens: opts.tokens,
        managed: opts.managed,
        collectors: opts.metrics.into(),
        leader_changes: Arc::new(AtomicU64::new(0)),
        ejections: Arc::default(),
        tcp_listeners: opts.tcp_listeners,
        seen_down: opts.seen_down,
        memory_status: opts.memory_status,
        debug_ballast: opts.debug_ballast,
        ballast: Default::default(),
    }));
    count_leader_changes(&app);
    count_ejections(&app);
    let router = Router::new()
        .route("/leader", get(leader))
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/config", get(config))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/pools", get(list_pools))
        .route("/v1/pools/{name}", get(get_pool).put(put_pool).delete(delete_pool))
        .route("/v1/pools/{name}/restart", get(get_restart).post(restart_pool))
        .route("/v1/limits", get(get_limits).put(put_limits))
        .route("/v1/routes", get(list_routes))
        .route("/v1/routes/{name}", get(get_route).put(put_route).delete(delete_route))
        .route("/v1/certs", get(list_certs))
        .route("/v1/certs/{name}", get(get_cert).put(put_cert).delete(delete_cert))
        .route("/v1/tcp-routes", get(list_tcp_routes))
        .route(
            "/v1/tcp-routes/{name}",
            get(get_tcp_route).put(put_tcp_route).delete(delete_tcp_route),
        )
        .route("/v1/health", get(health))
        .route("/debug/ballast", post(ballast))
        .route("/v1/events", get(events))
        .route("/v1/alerts", get(list_alerts))
        .route(
            "/v1/alerts/{name}",
            get(get_alert).put(put_alert).delete(delete_alert),
        )
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{id}", axum::routing::delete(remove_node))
        .route("/v1/leave", post(leave))
        .route("/v1/transaction", post(transaction))
        .route("/v1/cluster/transfer-leader", post(transfer_leader))
        .route("/metrics", get(metrics))
        .route("/v1/stream", get(crate::ui::stream))
        .route("/ui", get(crate::ui::page))
        .route("/ui/", get(crate::ui::page))
        .route("/ui/{asset}", get(crate::ui::asset))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see /v1/config, /v1/pools, /v1/routes, /v1/certs, /v1/tcp-routes, /v1/nodes, /status, /leader")
        })
        .layer(DefaultBodyLimit::max(opts.max_body))
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .layer(middleware::from_fn_with_state(app.clone(), stamp_revision))
        .with_state(app);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    match opts.tls {
        None => {
            // Replies are small and written whole: Nagle's algorithm could only delay them.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!("admin port: cannot set TCP_NODELAY: {e}");
                }
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(config) => {
            axum::serve(crate::https::TlsListener::new(listener, config)?, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Lets a request through if its token may do what it asks: GET/HEAD need a read token, anything
/// else a write token. `/leader`, `/healthz` and `/readyz` are open to all.
async fn authorize(
    AxState(app): AxState<App>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    // The dashboard's page and assets hold no data (it asks for a token, then reads the API
    // with it), so they are open like `/leader`.
    if matches!(path, "/leader" | "/healthz" | "/readyz" | "/ui")
        || path.starts_with("/ui/")
        || !app.tokens.enabled()
    {
        return next.run(req).await;
    }
    let need = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Role::Read
    } else {
        Role::Write
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match app.tokens.check(given, need) {
        Ok(()) => next.run(req).await,
        Err(e @ Denied::Unauthenticated) => {
            let mut r = ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()).into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        Err(e @ Denied::Forbidden) => {
            ApiError::new(StatusCode::FORBIDDEN, e.to_string()).into_response()
        }
    }
}

/// The request id the client chose (`X-Request-Id`), so that its retry of the same write,
/// through any node, applies once.
fn request_id(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(v) = headers.get("x-request-id") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(id) if crate::auth::valid_request_id(id) => Ok(Some(id.to_string())),
        _ => Err(ApiError::bad(
            "X-Request-Id",
            "X-Request-Id: send 1 to 128 letters, digits, '.', '_', ':' or '-', the same on every retry of a write",
        )),
    }
}

/// Every answer says which revision it reflects: the one the handler chose (a write's own, a
/// linearizable read's), else this node's applied revision at the time of the answer.
async fn stamp_revision(
    AxState(app): AxState<App>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let mut resp = next.run(req).await;
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status().is_client_error() && !json {
        // Errors raised by the framework itself (wrong method, body too large) get the same
        // JSON shape as ours, with what to do about them.
        let status = resp.status();
        let message = match status {
            StatusCode::METHOD_NOT_ALLOWED => format!(
                "{method} is not allowed on {path}; see GET /v1/openapi.json for the methods of each endpoint"
            ),
            StatusCode::PAYLOAD_TOO_LARGE => {
                "the request body is too large; send at most 1 MiB".to_string()
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "send the body as JSON".to_string(),
            _ => format!(
                "{method} {path}: {}",
                status.canonical_reason().unwrap_or("refused")
            ),
        };
        let allow = resp.headers().get(header::ALLOW).cloned();
        resp = ApiError::new(status, message).into_response();
        if let Some(a) = allow {
            resp.headers_mut().insert(header::ALLOW, a);
        }
    }
    if !resp.headers().contains_key(REVISION) {
        let rev = app.cluster.state().borrow().revision;
        resp.headers_mut().insert(REVISION, HeaderValue::from(rev));
    }
    resp
}

/// The revision a conditional request expects: `If-Match: "N"` (the object must be at
/// revision N) or `If-None-Match: *` (it must not exist yet).
fn expected(headers: &HeaderMap) -> Result<Option<u64>> {
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        return match v.to_str().map(str::trim) {
            Ok("*") => Ok(Some(0)),
            _ => Err(ApiError::bad(
                "If-None-Match",
                "If-None-Match: only '*' is understood (create only if absent)",
            )),
        };
    }
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim();
    let bare = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    match bare.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(ApiError::bad(
            "If-Match",
            format!("If-Match: '{text}' is not a revision; send the ETag you read, like \"12\""),
        )),
    }
}

fn with_etag(mut r: Response, revision: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{revision}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// Answers 200 with what `body` builds, built and encoded on a blocking thread: a list or the
/// whole configuration can be megabytes (encoding the same state into a snapshot takes a
/// thread of its own for that reason, state_machine.rs), and the control plane runs on one
/// thread by default (`--control-threads`), whose Raft heartbeats and other requests must
/// not wait for it.
async fn ok_aside(
    revision: u64,
    body: impl FnOnce() -> Value + Send + 'static,
) -> Result<Response> {
    fn failed(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer failed: {e}"),
        )
    }
    let encoded = tokio::task::spawn_blocking(move || serde_json::to_vec(&body()))
        .await
        .map_err(failed)?
        .map_err(failed)?;
    let mut r = (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        encoded,
    )
        .into_response();
    r.headers_mut()
        .insert(REVISION, HeaderValue::from(revision));
    Ok(r)
}

fn ok(revision: u64, body: Value) -> Response {
    let mut r = Json(body).into_response();
    r.headers_mut()
        .insert(REVISION, HeaderValue::from(revision));
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    consistency: Option<String>,
}

fn consistency(q: std::result::Result<Query<ReadParams>, QueryRejection>) -> Result<Consistency> {
    let Query(q) = q.map_err(|e| {
        ApiError::bad(
            "query",
            format!(
                "{}; the only parameter is consistency=linearizable|leader|stale",
                e.body_text()
            ),
        )
    })?;
    match q.consistency.as_deref() {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("leader") => Ok(Consistency::Leader),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(ApiError::bad(
            "consistency",
            format!("'{other}' is not a consistency; use linearizable (default), leader or stale"),
        )),
    }
}

/// Parses a JSON body, naming the field at fault when it does not fit.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T> {
    if body.is_empty() {
        return Err(ApiError::bad(
            "body",
            "the request body is empty; send the object as JSON",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" {
            "body".to_string()
        } else {
            path
        };
        ApiError::bad(
            &field,
            format!(
                "{field}: {}; send valid JSON matching the documented object",
                e.into_inner()
            ),
        )
    })
}

fn checked_name(name: &str) -> Result<()> {
    validate_name("name", name).map_err(ApiError::from)
}

/// The OpenAPI 3 description of this API, compiled into the binary.
async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        include_str!("openapi.json"),
    )
        .into_response()
}

async fn leader(AxState(app): AxState<App>) -> Result<Response> {
    match app.cluster.leader() {
        Some(l) => Ok(Json(l).into_response()),
        None => {
            let st = app.cluster.status().await;
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no leader known: node {} is {} in term {}",
                    st.id, st.role, st.term
                ),
            ))
        }
    }
}

/// Counts changes of the known leader (a new leader, or the same one in a new term).
fn count_leader_changes(app: &App) {
    let mut watch = app.cluster.leader_watch();
    let counter = app.leader_changes.clone();
    tokio::spawn(async move {
        let mut last = watch.borrow_and_update().as_ref().map(|l| (l.id, l.term));
        while watch.changed().await.is_ok() {
            let now = watch.borrow_and_update().as_ref().map(|l| (l.id, l.term));
            if now.is_some() && now != last {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            if now.is_some() {
                last = now;
            }
        }
    });
}

/// Counts every backend down-transition this node applies (each has its own event id).
fn count_ejections(app: &App) {
    let mut state = app.cluster.state();
    let counts = app.ejections.clone();
    tokio::spawn(async move {
        // The transition already in force when the node started is not counted again.
        let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut first = true;
        loop {
            {
                let st = state.borrow_and_update();
                let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
                for (pool, backends) in st.health.iter() {
                    for (backend, h) in backends.iter() {
                        let key = (pool.clone(), backend.clone());
                        if h.up || seen.get(&key) == Some(&h.transition) {
                            continue;
                        }
                        seen.insert(key.clone(), h.transition);
                        if !first {
                            *counts.entry(key).or_default() += 1;
                        }
                    }
                }
                first = false;
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    });
}

/// The `/metrics` text.
pub(crate) async fn metrics_text(app: &App) -> String {
    let figures = crate::metrics::ClusterFigures {
        status: app.cluster.status().await,
        leader_changes: app.leader_changes.load(Ordering::Relaxed),
        forwarded_writes: app.cluster.forwarded_writes(),
        forward_calls: app.cluster.forward_calls(),
        state: app.cluster.state().borrow().clone(),
        ejections: app
            .ejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    };
    crate::metrics::render(figures, &app.collectors)
}

async fn metrics(AxState(app): AxState<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        metrics_text(&app).await,
    )
        .into_response()
}

async fn status(AxState(app): AxState<App>) -> Response {
    let st = app.cluster.status().await;
    let mut body = json!(st);
    if let Some(obj) = body.as_object_mut() {
        let listeners = app.tcp_listeners.borrow().clone();
        obj.insert("tcp_listeners".into(), json!(listeners));
    }
    let state = app.cluster.state().borrow().clone();
    body["backends"] = backend_health(&state);
    body["lost_nodes"] = json!(state.lost);
    if let Some(v) = &app.seen_down {
        body["sees_down"] = json!(*v.borrow().clone());
    }
    if let Some(m) = &app.memory_status {
        body["memory"] = m();
    }
    if let Some(m) = &app.managed {
        body["managed"] = m.borrow().clone();
    }
    ok(st.revision, body)
}

/// Every backend with the health the cluster agreed on: `up`, `down`, or `unknown` when its
/// pool has no health check; whether it drains; the nodes that saw it down; the last
/// transition (event id and time).
pub(crate) fn backend_health(st: &gateway_model::State) -> Value {
    let mut out = Vec::new();
    for pool in st.pools.values() {
        let verdicts = st.health.get(&pool.name);
        for b in &pool.backends {
            let h = verdicts.and_then(|m| m.get(&b.id));
            let state = gateway_model::health_state(pool, h);
            out.push(json!({
                "pool": pool.name,
                "backend": b.id,
                "address": b.address,
                "node": b.node,
                "state": state,
                "draining": b.drain,
                "down_on": h.map(|h| h.down_on.clone()).unwrap_or_default(),
                "since_ms": h.map_or(0, |h| h.since_ms),
                "transition": h.map_or(0, |h| h.transition),
            }));
        }
    }
    Value::Array(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ballast {
    mb: usize,
}

/// Testing the memory guard only (hidden `--debug-ballast`): holds `mb` MiB of touched memory,
/// replacing what was held (0 frees it all).
async fn ballast(AxState(app): AxState<App>, body: Bytes) -> Result<Response> {
    if !app.debug_ballast {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such endpoint: /debug/ballast exists only on nodes started with --debug-ballast"
                .to_string(),
        ));
    }
    let b: Ballast = parse(&body)?;
    if b.mb > 16 << 10 {
        return Err(ApiError::bad(
            "mb",
            format!("mb: {} is more than 16384 MiB", b.mb),
        ));
    }
    let mut held = app.ballast.lock().unwrap_or_else(|e| e.into_inner());
    held.clear();
    held.shrink_to_fit();
    // One allocation: past glibc's 32 MiB mmap threshold it is mapped on its own, and given
    // back to the system when freed, so resident memory really falls again.
    if b.mb > 0 {
        held.push(vec![1u8; b.mb << 20]);
    }
    Ok(Json(json!({"held_mb": b.mb})).into_response())
}

async fn health(
    AxState(app): AxState<App>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    let st = app.cluster.read(consistency(q)?).await?;
    Ok(ok(
        st.revision,
        json!({"revision": st.revision, "backends": backend_health(&st), "lost_nodes": st.lost}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    consistency: Option<String>,
}

async fn events(
    AxState(app): AxState<App>,
    q: std::result::Result<Query<EventParams>, QueryRejection>,
) -> Result<Response> {
    let Query(q) = q.map_err(|e| {
        ApiError::bad(
            "after",
            format!("bad query: {e}; use ?after=EVENT_ID (and optionally &consistency=...)"),
        )
    })?;
    let level = match q.consistency.as_deref() {
        None | Some("linearizable") => Consistency::Linearizable,
        Some("leader") => Consistency::Leader,
        Some("stale") => Consistency::Stale,
        Some(other) => {
            return Err(ApiError::bad(
                "consistency",
                format!("consistency: '{other}' is not a level; use linearizable, leader or stale"),
            ));
        }
    };
    let st = app.cluster.read(level).await?;
    let events: Vec<_> = st.events_after(q.after).collect();
    Ok(ok(
        st.revision,
        json!({"revision": st.revision, "next_event": st.next_event.max(1), "events": events}),
    ))
}

/// An alert sink as read APIs show it: the SMTP password is never returned.
fn shown_sink(s: &AlertSink) -> AlertSink {
    let mut s = s.clone();
    if let Some(m) = &mut s.smtp {
        m.password = None;
    }
    s
}

async fn list_alerts(
    AxState(app): AxState<App>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    let st = app.cluster.read(consistency(q)?).await?;
    let sinks: Vec<AlertSink> = st.alerts.values().map(shown_sink).collect();
    Ok(ok(
        st.revision,
        json!({"revision": st.revision, "alerts": sinks, "delivered": st.delivered}),
    ))
}

async fn get_alert(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    checked_name(&name)?;
    let st = app.cluster.read(consistency(q)?).await?;
    match st.alerts.get(&name) {
        Some(s) => Ok(with_etag(
            ok(
                st.revision,
                json!({"revision": st.revision, "alert": shown_sink(s), "delivered": st.delivered.get(&name)}),
            ),
            s.revision,
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("alert sink '{name}' does not exist; list them with GET /v1/alerts"),
        )
        .at(st.revision)),
    }
}

async fn put_alert(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let expect = expected(&headers)?;
    let mut sink: AlertSink = parse(&body)?;
    named(&name, &mut sink.name)?;
    validate_alert_sink(&sink)?;
    let mut shown = shown_sink(&sink);
    let resp = propose(
        &app,
        request_id(&headers)?,
        Command::PutAlertSink { sink, expect },
        |rev| {
            shown.revision = rev;
            json!({"revision": rev, "alert": shown})
        },
    )
    .await?;
    let rev = revision_of(&resp);
    Ok(with_etag(resp, rev))
}

async fn delete_alert(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    delete(&app, name, &headers, |name, expect| {
        Command::DeleteAlertSink { name, expect }
    })
    .await
}

async fn readyz(AxState(app): AxState<App>) -> Result<&'static str> {
    app.cluster
        .ready()
        .await
        .map(|_| "ready\n")
        .map_err(|why| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")))
}

async fn config(
    AxState(app): AxState<App>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    let st = app.cluster.read(consistency(q)?).await?;
    ok_aside(st.revision, move || {
        json!({
            "revision": st.revision,
            "pools": st.pools.values().collect::<Vec<_>>(),
            "routes": st.routes.values().collect::<Vec<_>>(),
            // ---- TCP routes and certificates (issue 7); certificates without their keys ----
            "tcp_routes": st.tcp_routes.values().collect::<Vec<_>>(),
            "certs": st.certs.values().map(Cert::redacted).collect::<Vec<_>>(),
            "limits": &st.limits,
        })
    })
    .await
}

async fn list_pools(
    AxState(app): AxState<App>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    let st = app.cluster.read(consistency(q)?).await?;
    ok_aside(
        st.revision,
        move || json!({"revision": st.revision, "pools": st.pools.values().collect::<Vec<_>>()}),
    )
    .await
}

async fn list_routes(
    AxState(app): AxState<App>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    let st = app.cluster.read(consistency(q)?).await?;
    ok_aside(
        st.revision,
        move || json!({"revision": st.revision, "routes": st.routes.values().collect::<Vec<_>>()}),
    )
    .await
}

async fn get_pool(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    checked_name(&name)?;
    let st = app.cluster.read(consistency(q)?).await?;
    match st.pools.get(&name) {
        Some(p) => Ok(with_etag(
            ok(st.revision, json!({"revision": st.revision, "pool": p})),
            p.revision,
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("pool '{name}' does not exist; list them with GET /v1/pools"),
        )
        .at(st.revision)),
    }
}

/// Starts a rolling restart of a pool's managed backends; answers with its progress.
async fn restart_pool(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    checked_name(&name)?;
    let at_ms = crate::now_ms();
    let command = Command::RestartPool {
        pool: name.clone(),
        at_ms,
    };
    let resp = app
        .cluster
        .write_with_id(request_id(&headers)?.as_deref(), command)
        .await?;
    if let Err(e) = resp.outcome {
        return Err(ApiError::from(e).at(resp.revision));
    }
    let st = app.cluster.read(Consistency::Linearizable).await?;
    Ok(ok(
        resp.revision,
        json!({"pool": name, "restart": st.restarts.get(&name)}),
    ))
}

/// The progress of a pool's last rolling restart (`null` if it was never restarted).
async fn get_restart(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    checked_name(&name)?;
    let st = app.cluster.read(consistency(q)?).await?;
    if !st.pools.contains_key(&name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("pool '{name}' does not exist; list them with GET /v1/pools"),
        )
        .at(st.revision));
    }
    Ok(ok(
        st.revision,
        json!({"pool": name, "restart": st.restarts.get(&name)}),
    ))
}

async fn get_route(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    checked_name(&name)?;
    let st = app.cluster.read(consistency(q)?).await?;
    match st.routes.get(&name) {
        Some(r) => Ok(with_etag(
            ok(st.revision, json!({"revision": st.revision, "route": r})),
            r.revision,
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("route '{name}' does not exist; list them with GET /v1/routes"),
        )
        .at(st.revision)),
    }
}

async fn get_limits(
    AxState(app): AxState<App>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    let st = app.cluster.read(consistency(q)?).await?;
    Ok(with_etag(
        ok(
            st.revision,
            json!({"revision": st.revision, "limits": st.limits}),
        ),
        st.limits.revision,
    ))
}

async fn put_limits(
    AxState(app): AxState<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let expect = expected(&headers)?;
    let mut limits: gateway_model::Limits = parse(&body)?;
    limits.revision = 0;
    gateway_model::validate_limits(&limits)?;
    let mut shown = limits.clone();
    let resp = propose(
        &app,
        request_id(&headers)?,
        Command::SetLimits { limits, expect },
        |rev| {
            shown.revision = rev;
            json!({"revision": rev, "limits": shown})
        },
    )
    .await?;
    let rev = revision_of(&resp);
    Ok(with_etag(resp, rev))
}

/// Takes the name from the path; a name in the body must agree with it.
fn named(path_name: &str, body_name: &mut String) -> Result<()> {
    checked_name(path_name)?;
    if !body_name.is_empty() && body_name != path_name {
        return Err(ApiError::bad(
            "name",
            format!(
                "name: the body says '{body_name}' but the path says '{path_name}'; leave the name out of the body or make them agree"
            ),
        ));
    }
    *body_name = path_name.to_string();
    Ok(())
}

/// Deletes the named object with the delete `command` for the checked name and the revision
/// `If-Match` expects.
async fn delete(
    app: &App,
    name: String,
    headers: &HeaderMap,
    command: fn(String, Option<u64>) -> Command,
) -> Result<Response> {
    let expect = expected(headers)?;
    checked_name(&name)?;
    propose(
        app,
        request_id(headers)?,
        command(name, expect),
        |rev| json!({"revision": rev}),
    )
    .await
}

/// Proposes a command and turns its outcome into a response.
async fn propose(
    app: &App,
    request_id: Option<String>,
    command: Command,
    ok_body: impl FnOnce(u64) -> Value,
) -> Result<Response> {
    let resp = app
        .cluster
        .write_with_id(request_id.as_deref(), command)
        .await?;
    match resp.outcome {
        Ok(()) => Ok(ok(resp.revision, ok_body(resp.revision))),
        Err(e) => Err(ApiError::from(e).at(resp.revision)),
    }
}

async fn put_pool(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let expect = expected(&headers)?;
    let mut pool: Pool = parse(&body)?;
    named(&name, &mut pool.name)?;
    validate_pool(&pool)?;
    let mut shown = pool.clone();
    let resp = propose(
        &app,
        request_id(&headers)?,
        Command::PutPool { pool, expect },
        |rev| {
            shown.revision = rev;
            json!({"revision": rev, "pool": shown})
        },
    )
    .await?;
    let rev = revision_of(&resp);
    Ok(with_etag(resp, rev))
}

async fn put_route(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let expect = expected(&headers)?;
    let mut route: Route = parse(&body)?;
    named(&name, &mut route.name)?;
    validate_route(&route)?;
    let mut shown = route.clone();
    let resp = propose(
        &app,
        request_id(&headers)?,
        Command::PutRoute { route, expect },
        |rev| {
            shown.revision = rev;
            json!({"revision": rev, "route": shown})
        },
    )
    .await?;
    let rev = revision_of(&resp);
    Ok(with_etag(resp, rev))
}

/// The revision a successful write answered with (its `X-Gateway-Revision`).
fn revision_of(r: &Response) -> u64 {
    r.headers()
        .get(REVISION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn delete_pool(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    delete(&app, name, &headers, |name, expect| Command::DeletePool {
        name,
        expect,
    })
    .await
}

async fn delete_route(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    delete(&app, name, &headers, |name, expect| Command::DeleteRoute {
        name,
        expect,
    })
    .await
}

async fn list_certs(
    AxState(app): AxState<App>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    let st = app.cluster.read(consistency(q)?).await?;
    let certs: Vec<Cert> = st.certs.values().map(Cert::redacted).collect();
    Ok(ok(
        st.revision,
        json!({"revision": st.revision, "certs": certs}),
    ))
}

async fn get_cert(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    checked_name(&name)?;
    let st = app.cluster.read(consistency(q)?).await?;
    match st.certs.get(&name) {
        Some(c) => Ok(with_etag(
            ok(
                st.revision,
                json!({"revision": st.revision, "cert": c.redacted()}),
            ),
            c.revision,
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("cert '{name}' does not exist; list them with GET /v1/certs"),
        )
        .at(st.revision)),
    }
}

/// Creates or replaces a certificate: `{"cert_pem": "...", "key_pem": "...", "default": false}`.
async fn put_cert(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let expect = expected(&headers)?;
    let mut cert: Cert = parse(&body)?;
    named(&name, &mut cert.name)?;
    let mut shown = crate::certs::checked_cert(&cert)?;
    let resp = propose(
        &app,
        request_id(&headers)?,
        Command::PutCert { cert, expect },
        |rev| {
            shown.revision = rev;
            json!({"revision": rev, "cert": shown})
        },
    )
    .await?;
    let rev = revision_of(&resp);
    Ok(with_etag(resp, rev))
}

async fn delete_cert(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    delete(&app, name, &headers, |name, expect| Command::DeleteCert {
        name,
        expect,
    })
    .await
}

async fn list_tcp_routes(
    AxState(app): AxState<App>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    let st = app.cluster.read(consistency(q)?).await?;
    Ok(ok(
        st.revision,
        json!({"revision": st.revision, "tcp_routes": st.tcp_routes.values().collect::<Vec<_>>()}),
    ))
}

async fn get_tcp_route(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    checked_name(&name)?;
    let st = app.cluster.read(consistency(q)?).await?;
    match st.tcp_routes.get(&name) {
        Some(r) => Ok(with_etag(
            ok(
                st.revision,
                json!({"revision": st.revision, "tcp_route": r}),
            ),
            r.revision,
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("TCP route '{name}' does not exist; list them with GET /v1/tcp-routes"),
        )
        .at(st.revision)),
    }
}

async fn put_tcp_route(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let expect = expected(&headers)?;
    let mut route: TcpRoute = parse(&body)?;
    named(&name, &mut route.name)?;
    validate_tcp_route(&route)?;
    let mut shown = route.clone();
    let resp = propose(
        &app,
        request_id(&headers)?,
        Command::PutTcpRoute { route, expect },
        |rev| {
            shown.revision = rev;
            json!({"revision": rev, "tcp_route": shown})
        },
    )
    .await?;
    let rev = revision_of(&resp);
    Ok(with_etag(resp, rev))
}

async fn delete_tcp_route(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    delete(&app, name, &headers, |name, expect| {
        Command::DeleteTcpRoute { name, expect }
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TransferLeader {
    to: Option<u64>,
}

/// Hands leadership to node `to` (or the most up-to-date voter when absent).
async fn transfer_leader(AxState(app): AxState<App>, body: Bytes) -> Result<Response> {
    let req: TransferLeader = if body.is_empty() {
        TransferLeader::default()
    } else {
        parse(&body)?
    };
    let leader = app.cluster.transfer_leader(req.to).await?;
    let rev = app.cluster.state().borrow().revision;
    Ok(ok(rev, json!({"leader": leader})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transaction {
    commands: Vec<Command>,
}

/// Applies several changes as one command: all of them under one new revision, or none.
async fn transaction(
    AxState(app): AxState<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let tx: Transaction = parse(&body)?;
    if tx.commands.is_empty() || tx.commands.len() > MAX_BATCH {
        return Err(ApiError::bad(
            "commands",
            format!(
                "commands: {} given; send 1 to {MAX_BATCH}",
                tx.commands.len()
            ),
        ));
    }
    for (i, c) in tx.commands.iter().enumerate() {
        let checked = match c {
            Command::PutPool { pool, .. } => validate_pool(pool),
            Command::PutRoute { route, .. } => validate_route(route),
            Command::PutCert { cert, .. } => crate::certs::checked_cert(cert).map(|_| ()),
            Command::PutTcpRoute { route, .. } => validate_tcp_route(route),
            Command::DeletePool { name, .. }
            | Command::DeleteRoute { name, .. }
            | Command::DeleteCert { name, .. }
            | Command::DeleteTcpRoute { name, .. } => validate_name("name", name),
            Command::SetLimits { limits, .. } => gateway_model::validate_limits(limits),
            _ => {
                return Err(ApiError::bad(
                    &format!("commands[{i}].op"),
                    format!(
                        "commands[{i}].op: only put_pool, delete_pool, put_route, delete_route, put_cert, delete_cert, put_tcp_route, delete_tcp_route and set_limits go in a transaction"
                    ),
                ));
            }
        };
        checked.map_err(|mut v| {
            v.field = format!("commands[{i}].{}", v.field);
            ApiError::from(v)
        })?;
    }
    let n = tx.commands.len();
    propose(
        &app,
        request_id(&headers)?,
        Command::Batch {
            commands: tx.commands,
        },
        |rev| json!({"revision": rev, "applied": n}),
    )
    .await
}

async fn nodes(AxState(app): AxState<App>) -> Response {
    let st = app.cluster.status().await;
    ok(
        st.revision,
        json!({"revision": st.revision, "voters": st.voters, "learners": st.learners}),
    )
}

async fn remove_node(AxState(app): AxState<App>, Path(id): Path<String>) -> Result<Response> {
    let id: u64 = id.parse().ok().filter(|i| *i > 0).ok_or_else(|| {
        ApiError::bad(
            "id",
            format!("'{id}' is not a node id; use the numeric id shown by GET /v1/nodes"),
        )
    })?;
    app.cluster.remove_node(id).await?;
    let rev = app.cluster.state().borrow().revision;
    Ok(ok(rev, json!({"removed": id})))
}

async fn leave(AxState(app): AxState<App>) -> Result<Response> {
    let id = app.cluster.id();
    app.cluster.remove_node(id).await?;
    let _ = app.left.try_send(());
    let rev = app.cluster.state().borrow().revision;
    Ok(ok(
        rev,
        json!({"removed": id, "message": "this node left the cluster and is shutting down"}),
    ))
}
