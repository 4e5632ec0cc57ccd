//! Per-backend `max_connections`: spill-over to backends with room, the queue, and 503 with
//! Retry-After when the queue timeout passes.

use crate::common::*;
use gateway_model::{Backend, Balance, Pool};
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
