//! `gateway demo-backend`: a small HTTP server to put behind the gateway in demos and tests.
//!
//! * any path: `<method> from NAME` (e.g. `get from web1`), with `x-backend: NAME`;
//! * `/ws`: a WebSocket echo (the `101` answer carries `x-backend: NAME`);
//! * `/slow?ms=N`: the same answer after N milliseconds (at most 60 000); with `&max_age=S`
//!   also `Cache-Control: max-age=S` (for caches in front of it);
//! * `/count`: how many requests it has answered (`/count` itself not counted), for
//!   benchmarks that count what reaches the backend;
//! * `/status/N`: answers status N (100 to 599, else 400) with `status N from NAME`;
//! * `/headers`: the request headers it received, one `name: value` a line, sorted.
//!
//! On SIGTERM it stops accepting connections and exits once the requests under way are
//! answered (at most 30 s), as a managed backend should.

use anyhow::Context;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

pub async fn run(listen: &str, name: &str) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (--listen)"))?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let name: Arc<str> = name.into();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => r?.0,
            _ = term.recv() => break,
        };
        while conns.try_join_next().is_some() {}
        let name = name.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| answer(name.clone(), req));
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stopping(&mut stop) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    // SIGTERM: take no new connections; requests under way are answered (idle keep-alive
    // connections close at once), for at most 30 s.
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

async fn stopping(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn text(name: &str, status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .header("x-backend", name)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Requests answered, `/count` excluded.
static ANSWERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn answer(
    name: Arc<str>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().as_str().to_ascii_lowercase();
    let path = req.uri().path().to_string();
    if path == "/count" {
        let n = ANSWERED.load(std::sync::atomic::Ordering::Relaxed);
        return Ok(text(&name, StatusCode::OK, format!("{n}\n")));
    }
    ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if path == "/ws" {
        return Ok(websocket(name, &mut req));
    }
    if path == "/headers" {
        let mut lines: Vec<String> = req
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        lines.sort();
        return Ok(text(&name, StatusCode::OK, lines.concat()));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .filter(|s| !s.is_informational());
        return Ok(match status {
            Some(s) => text(&name, s, format!("status {} from {name}\n", s.as_u16())),
            None => text(
                &name,
                StatusCode::BAD_REQUEST,
                format!("'{code}' is not a status; use /status/100..599\n"),
            ),
        });
    }
    if path == "/slow" {
        let ms = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("ms="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1000)
            .min(60_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let max_age = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("max_age="))
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(age) = max_age {
            let mut resp = text(&name, StatusCode::OK, format!("{method} from {name}\n"));
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_str(&format!("max-age={age}"))
                    .expect("a number is a valid header value"),
            );
            return Ok(resp);
        }
    }
    Ok(text(
        &name,
        StatusCode::OK,
        format!("{method} from {name}\n"),
    ))
}

/// Accepts a WebSocket upgrade and echoes every text and binary message.
fn websocket(name: Arc<str>, req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return text(
            &name,
            StatusCode::BAD_REQUEST,
            "/ws expects a WebSocket upgrade\n".into(),
        );
    };
    if !upgrade {
        return text(
            &name,
            StatusCode::BAD_REQUEST,
            "/ws expects Upgrade: websocket\n".into(),
        );
    }
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    return;
                }
            } else if msg.is_close() {
                let _ = ws.close(None).await;
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .header("x-backend", name.as_ref())
        .body(Full::new(Bytes::new()))
        .expect("static response parts are valid")
}
