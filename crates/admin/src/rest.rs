//! REST routes of the admin port.

use crate::error::{ApiError, REVISION};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxState};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gateway_cluster::{Cluster, Consistency};
use gateway_model::{Command, Pool, Route, validate_name, validate_pool, validate_route};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What the admin server needs besides its listener.
pub struct AdminOptions {
    pub cluster: Cluster,
    /// Told when this node has left the cluster through `POST /v1/leave` and should exit.
    pub left: mpsc::Sender<()>,
    /// Largest request body accepted.
    pub max_body: usize,
}

#[derive(Clone)]
struct App {
    cluster: Cluster,
    left: mpsc::Sender<()>,
}

type Result<T> = std::result::Result<T, ApiError>;

/// Serves the admin REST API on `listener` until `shutdown` resolves; in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    opts: AdminOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = App {
        cluster: opts.cluster,
        left: opts.left,
    };
    let router = Router::new()
        .route("/leader", get(leader))
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/config", get(config))
        .route("/v1/pools", get(list_pools))
        .route("/v1/pools/{name}", get(get_pool).put(put_pool).delete(delete_pool))
        .route("/v1/routes", get(list_routes))
        .route("/v1/routes/{name}", get(get_route).put(put_route).delete(delete_route))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{id}", axum::routing::delete(remove_node))
        .route("/v1/leave", post(leave))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see /v1/config, /v1/pools, /v1/routes, /v1/nodes, /status, /leader")
        })
        .layer(DefaultBodyLimit::max(opts.max_body))
        .with_state(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
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
                "{}; the only parameter is consistency=linearizable|stale",
                e.body_text()
            ),
        )
    })?;
    match q.consistency.as_deref() {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(ApiError::bad(
            "consistency",
            format!("'{other}' is not a consistency; use linearizable (default) or stale"),
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
        let field = if path == "." {
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

async fn status(AxState(app): AxState<App>) -> Response {
    let st = app.cluster.status().await;
    ok(st.revision, json!(st))
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
    Ok(ok(
        st.revision,
        json!({"revision": st.revision, "pools": st.pools.values().collect::<Vec<_>>(), "routes": st.routes.values().collect::<Vec<_>>()}),
    ))
}

async fn list_pools(
    AxState(app): AxState<App>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    let st = app.cluster.read(consistency(q)?).await?;
    Ok(ok(
        st.revision,
        json!({"revision": st.revision, "pools": st.pools.values().collect::<Vec<_>>()}),
    ))
}

async fn list_routes(
    AxState(app): AxState<App>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    let st = app.cluster.read(consistency(q)?).await?;
    Ok(ok(
        st.revision,
        json!({"revision": st.revision, "routes": st.routes.values().collect::<Vec<_>>()}),
    ))
}

async fn get_pool(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    checked_name(&name)?;
    let st = app.cluster.read(consistency(q)?).await?;
    match st.pools.get(&name) {
        Some(p) => Ok(ok(st.revision, json!({"revision": st.revision, "pool": p}))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("pool '{name}' does not exist; list them with GET /v1/pools"),
        )
        .at(st.revision)),
    }
}

async fn get_route(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    q: std::result::Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response> {
    checked_name(&name)?;
    let st = app.cluster.read(consistency(q)?).await?;
    match st.routes.get(&name) {
        Some(r) => Ok(ok(
            st.revision,
            json!({"revision": st.revision, "route": r}),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("route '{name}' does not exist; list them with GET /v1/routes"),
        )
        .at(st.revision)),
    }
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

/// Proposes a command and turns its outcome into a response.
async fn propose(
    app: &App,
    command: Command,
    ok_body: impl FnOnce(u64) -> Value,
) -> Result<Response> {
    let resp = app.cluster.write(command).await?;
    match resp.outcome {
        Ok(()) => Ok(ok(resp.revision, ok_body(resp.revision))),
        Err(e) => Err(ApiError::from(e).at(resp.revision)),
    }
}

async fn put_pool(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let mut pool: Pool = parse(&body)?;
    named(&name, &mut pool.name)?;
    validate_pool(&pool)?;
    let mut shown = pool.clone();
    propose(&app, Command::PutPool { pool }, |rev| {
        shown.revision = rev;
        json!({"revision": rev, "pool": shown})
    })
    .await
}

async fn put_route(
    AxState(app): AxState<App>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let mut route: Route = parse(&body)?;
    named(&name, &mut route.name)?;
    validate_route(&route)?;
    let mut shown = route.clone();
    propose(&app, Command::PutRoute { route }, |rev| {
        shown.revision = rev;
        json!({"revision": rev, "route": shown})
    })
    .await
}

async fn delete_pool(AxState(app): AxState<App>, Path(name): Path<String>) -> Result<Response> {
    checked_name(&name)?;
    propose(
        &app,
        Command::DeletePool { name },
        |rev| json!({"revision": rev}),
    )
    .await
}

async fn delete_route(AxState(app): AxState<App>, Path(name): Path<String>) -> Result<Response> {
    checked_name(&name)?;
    propose(
        &app,
        Command::DeleteRoute { name },
        |rev| json!({"revision": rev}),
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

async fn leave(AxState(app): AxState<App>, q: Query<HashMap<String, String>>) -> Result<Response> {
    let _ = q;
    let id = app.cluster.id();
    app.cluster.remove_node(id).await?;
    let _ = app.left.try_send(());
    let rev = app.cluster.state().borrow().revision;
    Ok(ok(
        rev,
        json!({"removed": id, "message": "this node left the cluster and is shutting down"}),
    ))
}
