//! The web dashboard (`/ui`, assets compiled into the binary) and the server-sent events it
//! lives on (`/v1/stream`).
//!
//! The page holds no data: it asks for a token (kept in the tab's session storage), then reads
//! the REST API with it as a bearer header, and follows `/v1/stream`: a `state` event with the
//! configuration and each backend's health (as `/v1/health` shows it) whenever this node
//! applies a new revision, and a `tick` event every second with this node's status and the
//! `/metrics` text (the page derives requests/s from it).

use crate::rest::App;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");

/// How often `/v1/stream` sends a `tick`.
const TICK: Duration = Duration::from_secs(1);

fn asset_response(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Nothing but its own assets and API; never framed (clickjacking).
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
                ),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn page() -> Response {
    asset_response("text/html; charset=utf-8", INDEX)
}

pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => asset_response("text/javascript; charset=utf-8", SCRIPT),
        "app.css" => asset_response("text/css; charset=utf-8", STYLE),
        "" | "index.html" => asset_response("text/html; charset=utf-8", INDEX),
        _ => crate::error::ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no dashboard asset '{name}'; the dashboard is at /ui"),
        )
        .into_response(),
    }
}

fn state_event(app: &App) -> Event {
    let st = app.cluster.state().borrow().clone();
    let body = json!({
        "revision": st.revision,
        "pools": st.pools.values().collect::<Vec<_>>(),
        "routes": st.routes.values().collect::<Vec<_>>(),
        "backends": crate::rest::backend_health(&st),
    });
    Event::default().event("state").data(body.to_string())
}

async fn tick_event(app: &App) -> Event {
    let status = app.cluster.status().await;
    let metrics = crate::rest::metrics_text(app).await;
    let body = json!({"status": status, "metrics": metrics});
    Event::default().event("tick").data(body.to_string())
}

/// `GET /v1/stream`: server-sent events until the client goes away or the node stops.
pub(crate) async fn stream(AxState(app): AxState<App>) -> impl IntoResponse {
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(8);
    tokio::spawn(async move {
        let mut stopping = app.stopping.clone();
        let mut state = app.cluster.state();
        state.borrow_and_update();
        if tx.send(Ok(state_event(&app))).await.is_err() {
            return;
        }
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let event = tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    state.borrow_and_update();
                    state_event(&app)
                }
                _ = every.tick() => tick_event(&app).await,
                () = tx.closed() => return,
                () = async { let _ = stopping.wait_for(|s| *s).await; } => return,
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}
