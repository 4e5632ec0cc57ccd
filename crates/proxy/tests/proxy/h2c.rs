//! `protocol = "h2c"` pools: HTTP/2 with prior knowledge to the backends, trailers both ways,
//! one multiplexed connection per backend (what gRPC needs).

use crate::common::*;
use bytes::Bytes;
use gateway_model::{Balance, Pool, Protocol};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::{TcpListener, TcpStream};

type Frames =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn frames(data: &str, trailers: &[(&'static str, &str)]) -> Frames {
    let mut t = HeaderMap::new();
    for (k, v) in trailers {
        t.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    let mut list = vec![Ok(Frame::data(Bytes::from(data.to_string())))];
    if !t.is_empty() {
        list.push(Ok(Frame::trailers(t)));
    }
    StreamBody::new(futures::stream::iter(list))
}

/// A gRPC-like HTTP/2-only backend: echoes the body, reports what it saw in headers, and ends
/// with trailers (`grpc-status`, and the request's `x-checksum` trailer echoed).
async fn h2_backend() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let svc = service_fn(|req: Request<Incoming>| async move {
                let (parts, body) = req.into_parts();
                let collected = body.collect().await?;
                let checksum = collected
                    .trailers()
                    .and_then(|t| t.get("x-checksum"))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_string();
                let body = collected.to_bytes();
                let text = format!("echo:{}", String::from_utf8_lossy(&body));
                let resp = Response::builder()
                    .header("content-type", "application/grpc")
                    .header("x-version", format!("{:?}", parts.version))
                    .header(
                        "x-authority",
                        parts
                            .uri
                            .authority()
                            .map_or("none".into(), |a| a.to_string()),
                    )
                    .header(
                        "x-te",
                        parts
                            .headers
                            .get("te")
                            .map_or("none", |v| v.to_str().unwrap_or("?")),
                    )
                    .body(frames(
                        &text,
                        &[
                            ("grpc-status", "0"),
                            ("grpc-message", "ok"),
                            ("x-checksum-seen", &checksum),
                        ],
                    ))
                    .unwrap();
                Ok::<_, hyper::Error>(resp)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn grpc_style_requests_pass_with_trailers_over_one_h2c_connection() {
    let (addr, conns) = h2_backend().await;
    let s = state(
        vec![Pool {
            protocol: Protocol::H2c,
            ..pool("grpc", Balance::RoundRobin, vec![be("g", &addr, None)])
        }],
        vec![route("grpc", &[], "/", "grpc")],
    );
    let p = proxy(1, s, None).await;

    // An HTTP/2 client (as gRPC clients are), with request trailers.
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake::<_, _, Frames>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let call = |mut tx: hyper::client::conn::http2::SendRequest<Frames>, i: usize| async move {
        let req = Request::post("http://grpc.test/pkg.Service/Method")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(frames(
                &format!("msg{i}"),
                &[("x-checksum", &format!("c{i}"))],
            ))
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.unwrap();
        let trailers = collected
            .trailers()
            .cloned()
            .expect("trailers reach the client");
        (parts.headers, collected.to_bytes(), trailers)
    };
    let (headers, body, trailers) = call(tx.clone(), 0).await;
    assert_eq!(body, "echo:msg0");
    assert_eq!(
        headers["x-version"], "HTTP/2.0",
        "the backend was spoken to in HTTP/2"
    );
    assert_eq!(headers["x-authority"], "grpc.test");
    assert_eq!(headers["x-te"], "trailers");
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    assert_eq!(
        trailers["x-checksum-seen"], "c0",
        "request trailers reach the backend"
    );

    // Many concurrent calls share the one upstream connection.
    let calls: Vec<_> = (1..=20)
        .map(|i| tokio::spawn(call(tx.clone(), i)))
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        let (_, body, trailers) = c.await.unwrap();
        assert_eq!(body, format!("echo:msg{}", i + 1));
        assert_eq!(trailers["x-checksum-seen"], format!("c{}", i + 1));
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);

    // An HTTP/1.1 client reaches the same backend (the gateway speaks h2 upstream).
    let r = send(
        &client(),
        http::Method::POST,
        &p.url("/x"),
        Some("web.test"),
        &[],
        "hi",
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "echo:hi"));
    assert_eq!(r.headers["x-authority"], "web.test");
    assert_eq!(r.headers["x-te"], "none");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}
