//! Per-backend `max_connections`: spill-over to backends with room, the queue, and 503 with
//! Retry-After when the queue timeout passes. Per-route limits: per-client-IP rate limiting
//! (429 with Retry-After), `max_concurrent` (503), `max_body_bytes` (413), changed at runtime.

use crate::common::*;
use gateway_model::{Backend, Balance, Pool, RateLimit, Route};
use http::StatusCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;

/// A handler that holds `/slow` requests until the test adds a permit; counts entries.
fn gated(gate: Arc<Semaphore>, entered: Arc<AtomicUsize>) -> Handler {
    Arc::new(move |name, parts, body| {
        let (gate, entered) = (gate.clone(), entered.clone());
        Box::pin(async move {
            entered.fetch_add(1, Ordering::SeqCst);
            if parts.uri.path() == "/slow" {
                gate.acquire().await.unwrap().forget();
            }
            answer(&name, &parts, &body)
        })
    })
}

fn limited(id: &str, address: &str, max: u32) -> Backend {
    Backend {
        max_connections: Some(max),
        ..be(id, address, None)
    }
}

async fn wait_entered(entered: &Arc<AtomicUsize>, n: usize) {
    eventually("the backend has the request", || {
        let e = entered.clone();
        async move { e.load(Ordering::SeqCst) >= n }
    })
    .await;
}

#[tokio::test]
async fn a_full_backend_queues_requests_then_answers_503_with_retry_after() {
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let a = backend_with("a", gated(gate.clone(), entered.clone())).await;
    let s = state(
        vec![
            Pool {
                queue_timeout_ms: Some(200),
                ..pool(
                    "short",
                    Balance::RoundRobin,
                    vec![limited("a", &a.address, 1)],
                )
            },
            Pool {
                queue_timeout_ms: Some(30_000),
                ..pool(
                    "long",
                    Balance::RoundRobin,
                    vec![limited("a", &a.address, 1)],
                )
            },
        ],
        vec![
            route("short", &["short.test"], "/", "short"),
            route("long", &["long.test"], "/", "long"),
        ],
    );
    let p = proxy(1, s, None).await;
    let cl = client();
    // One request holds the only slot.
    let (c, url) = (cl.clone(), p.url("/slow"));
    let first = tokio::spawn(async move { get(&c, &url, Some("short.test")).await });
    wait_entered(&entered, 1).await;
    // The next one waits 200 ms for the slot, then gets 503 without reaching the backend.
    let r = get(&cl, &p.url("/fast"), Some("short.test")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(
        r.body.starts_with(
            "route short: every backend of pool short is at its max_connections; waited "
        ),
        "{}",
        r.body
    );
    assert_eq!(entered.load(Ordering::SeqCst), 1);
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().status, StatusCode::OK);

    // A queued request gets the slot when it frees.
    let (c, url) = (cl.clone(), p.url("/slow"));
    let holder = tokio::spawn(async move { get(&c, &url, Some("long.test")).await });
    wait_entered(&entered, 2).await;
    let (c, url) = (cl.clone(), p.url("/fast"));
    let queued = tokio::spawn(async move { get(&c, &url, Some("long.test")).await });
    gate.add_permits(1);
    assert_eq!(holder.await.unwrap().status, StatusCode::OK);
    let r = queued.await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "get from a\n")
    );
    assert_eq!(entered.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn requests_spill_over_to_backends_with_room_unless_the_pool_is_sticky() {
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let a = backend_with("a", gated(gate.clone(), entered.clone())).await;
    let b = backend_with("b", gated(gate.clone(), entered.clone())).await;
    let backends = vec![limited("a", &a.address, 1), limited("b", &b.address, 1)];
    let s = state(
        vec![
            pool("rr", Balance::RoundRobin, backends.clone()),
            Pool {
                queue_timeout_ms: Some(0),
                ..pool("sticky", Balance::IpHash, backends)
            },
        ],
        vec![
            route("rr", &["rr.test"], "/", "rr"),
            route("sticky", &["sticky.test"], "/", "sticky"),
        ],
    );
    let p = proxy(1, s, None).await;
    let cl = client();
    // Round robin: a is held; then b answers; then it is a's turn, but a is full: b serves.
    let (c, url) = (cl.clone(), p.url("/slow"));
    let held = tokio::spawn(async move { get(&c, &url, Some("rr.test")).await });
    wait_entered(&entered, 1).await;
    for _ in 0..4 {
        let r = get(&cl, &p.url("/fast"), Some("rr.test")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-backend"], "b", "a is full");
    }
    gate.add_permits(1);
    assert_eq!(held.await.unwrap().headers["x-backend"], "a");

    // ip_hash pins this client to one backend; when it is full the request is not moved.
    let (c, url) = (cl.clone(), p.url("/slow"));
    let held = tokio::spawn(async move { get(&c, &url, Some("sticky.test")).await });
    wait_entered(&entered, 6).await;
    let r = get(&cl, &p.url("/fast"), Some("sticky.test")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(entered.load(Ordering::SeqCst), 6);
    gate.add_permits(1);
    let pinned = held.await.unwrap().headers["x-backend"].clone();
    let r = get(&cl, &p.url("/fast"), Some("sticky.test")).await;
    assert_eq!(r.headers["x-backend"], pinned);
}

#[tokio::test]
async fn route_limits_answer_429_503_and_413_and_change_at_runtime() {
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let a = backend_with("a", gated(gate.clone(), entered.clone())).await;
    let pools = || {
        vec![pool(
            "p",
            Balance::RoundRobin,
            vec![be("a", &a.address, None)],
        )]
    };
    let limited_route = |per_second: u32, burst: u32| Route {
        rate_limit: Some(RateLimit {
            per_second,
            burst: Some(burst),
        }),
        max_concurrent: Some(1),
        max_body_bytes: Some(10),
        ..route("r", &["r.test"], "/", "p")
    };
    let p = proxy(1, state(pools(), vec![limited_route(1, 3)]), None).await;
    let cl = client();

    // A burst of 3, then 429 with Retry-After (1 per second: the next token in about 1 s).
    for i in 0..3 {
        let r = get(&cl, &p.url("/x"), Some("r.test")).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.body);
    }
    let r = get(&cl, &p.url("/x"), Some("r.test")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(
        r.body
            .starts_with("route r: too many requests from 127.0.0.1"),
        "{}",
        r.body
    );

    // Raised at runtime: the same client gets through at once (a new rate starts new buckets).
    p.set_state(state(pools(), vec![limited_route(100_000, 100_000)]));
    eventually("the new rate applies", || {
        let cl = cl.clone();
        let url = p.url("/x");
        async move { get(&cl, &url, Some("r.test")).await.status == StatusCode::OK }
    })
    .await;

    // One request at a time: a second one while the first is held gets 503.
    let (c, url) = (cl.clone(), p.url("/slow"));
    let held = tokio::spawn(async move { get(&c, &url, Some("r.test")).await });
    let before = entered.load(Ordering::SeqCst);
    eventually("the held request reaches the backend", || {
        let e = entered.clone();
        async move { e.load(Ordering::SeqCst) > before }
    })
    .await;
    let r = get(&cl, &p.url("/x"), Some("r.test")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.body.contains("max_concurrent"), "{}", r.body);
    gate.add_permits(1);
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    // The slot is free again once the first response is done.
    assert_eq!(
        get(&cl, &p.url("/x"), Some("r.test")).await.status,
        StatusCode::OK
    );

    // Bodies: over 10 bytes by Content-Length is refused before the backend sees it ...
    let seen = entered.load(Ordering::SeqCst);
    let r = send(
        &cl,
        http::Method::POST,
        &p.url("/up"),
        Some("r.test"),
        &[],
        "eleven byte",
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert!(r.body.contains("max_body_bytes"), "{}", r.body);
    assert_eq!(entered.load(Ordering::SeqCst), seen);
    // ... and a chunked one is cut where it passes the limit.
    let raw = raw_exchange(
        p.addr,
        b"POST /up HTTP/1.1\r\nHost: r.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    let r = send(
        &cl,
        http::Method::POST,
        &p.url("/up"),
        Some("r.test"),
        &[],
        "ten bytes!",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Lifted at runtime.
    p.set_state(state(pools(), vec![route("r", &["r.test"], "/", "p")]));
    eventually("the limits are gone", || {
        let cl = cl.clone();
        let url = p.url("/up");
        async move {
            send(
                &cl,
                http::Method::POST,
                &url,
                Some("r.test"),
                &[],
                "well over ten bytes",
            )
            .await
            .status
                == StatusCode::OK
        }
    })
    .await;
}
