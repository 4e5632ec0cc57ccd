//! Retries: the delay between them, the per-pool budget, waiting for a pool without backends,
//! and retrying a request that reached a backend only when it is idempotent and bodiless.

use crate::common::*;
use gateway_model::{Balance, Pool, Route};
use http::{Method, StatusCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

#[tokio::test]
async fn retry_delay_spaces_retries_on_the_same_backend() {
    let dead = dead_address().await;
    let s = state(
        vec![pool(
            "p",
            Balance::RoundRobin,
            vec![be("gone", &dead, None)],
        )],
        vec![
            Route {
                retries: Some(2),
                retry_delay_ms: Some(150),
                ..route("slowly", &[], "/", "p")
            },
            Route {
                retries: Some(2),
                ..route("fast", &[], "/fast", "p")
            },
        ],
    );
    let p = proxy(1, s, None).await;
    let cl = client();
    // With a delay, the only backend is tried again after each delay: 1 + 2 attempts, two
    // delays in between.
    let start = Instant::now();
    let r = get(&cl, &p.url("/x"), None).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.body.starts_with(&format!(
            "route slowly: backend gone ({dead}) failed: connect"
        )),
        "{}",
        r.body
    );
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    // Without a delay, a pool whose backends all failed once answers at once.
    let r = get(&cl, &p.url("/fast"), None).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.body.starts_with("route fast: backend gone"), "{}", r.body);
}

#[tokio::test]
async fn a_backend_that_comes_back_during_the_retries_serves_the_request() {
    let dead = dead_address().await;
    let s = state(
        vec![pool(
            "p",
            Balance::RoundRobin,
            vec![be("late", &dead, None)],
        )],
        vec![Route {
            retries: Some(10),
            retry_delay_ms: Some(100),
            ..route("app", &[], "/", "p")
        }],
    );
    let p = proxy(1, s, None).await;
    let url = p.url("/x");
    let pending = tokio::spawn(async move { get(&client(), &url, None).await });
    // The backend starts listening on the address the pool names.
    let listener = TcpListener::bind(&dead).await.unwrap();
    let _late = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let (parts, _) = req.into_parts();
                        Ok::<_, hyper::Error>(answer("late", &parts, &bytes::Bytes::new()))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let r = pending.await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "get from late\n")
    );
}

#[tokio::test]
async fn the_retry_budget_stops_retries_from_multiplying_load() {
    let live = backend("live").await;
    let dead = dead_address().await;
    let backends = vec![be("dead", &dead, None), be("live", &live.address, None)];
    let spent = Pool {
        retry_budget_percent: Some(0),
        retry_budget_min_per_second: Some(0),
        ..pool("spent", Balance::RoundRobin, backends.clone())
    };
    let s = state(
        vec![spent, pool("default", Balance::RoundRobin, backends)],
        vec![
            Route {
                retries: Some(1),
                ..route("nobudget", &[], "/", "spent")
            },
            Route {
                retries: Some(1),
                ..route("budget", &[], "/ok", "default")
            },
        ],
    );
    let p = proxy(1, s, None).await;
    let cl = client();
    // A zero budget: requests that land on the dead backend are not retried.
    let mut failed = 0;
    for _ in 0..6 {
        let r = get(&cl, &p.url("/x"), None).await;
        if r.status == StatusCode::BAD_GATEWAY {
            failed += 1;
            assert!(
                r.body
                    .contains("(not retried: the retry budget of pool spent is spent)"),
                "{}",
                r.body
            );
        } else {
            assert_eq!(r.status, StatusCode::OK);
        }
    }
    assert_eq!(failed, 3, "every other request starts on the dead backend");
    // The default budget (20% plus 10 per second) covers occasional failures.
    for _ in 0..6 {
        assert_eq!(get(&cl, &p.url("/ok"), None).await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_pool_without_backends_is_waited_for_then_503() {
    let s = state(
        vec![pool("empty", Balance::RoundRobin, vec![])],
        vec![
            Route {
                retries: Some(2),
                retry_delay_ms: Some(100),
                ..route("waits", &[], "/", "empty")
            },
            Route {
                retries: Some(3),
                retry_delay_ms: Some(20_000),
                ..route("long", &[], "/long", "empty")
            },
        ],
    );
    let p = proxy(1, s.clone(), None).await;
    let cl = client();
    let start = Instant::now();
    let r = get(&cl, &p.url("/x"), None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body, "route waits: pool empty has no backends\n");
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );

    // A request waiting on a 20 s delay is served as soon as a backend is registered.
    let a = backend("a").await;
    let url = p.url("/long");
    let start = Instant::now();
    let pending = tokio::spawn(async move { get(&client(), &url, None).await });
    let mut with_backend = s;
    std::sync::Arc::make_mut(with_backend.pools.get_mut("empty").unwrap()).backends =
        vec![be("a", &a.address, None)];
    p.set_state(with_backend);
    let r = pending.await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "get from a\n")
    );
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "woken by the change"
    );
}

/// A backend that reads a request head and closes without answering; counts connections.
async fn hang_up_backend() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                drop(s);
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn a_request_that_reached_a_backend_is_retried_only_if_idempotent_with_a_small_body() {
    let (addr, conns) = hang_up_backend().await;
    let live = backend("live").await;
    let s = state(
        vec![pool(
            "p",
            Balance::RoundRobin,
            vec![be("hangup", &addr, None), be("live", &live.address, None)],
        )],
        vec![Route {
            retries: Some(3),
            retry_delay_ms: Some(10),
            ..route("app", &[], "/", "p")
        }],
    );
    let p = proxy(1, s, None).await;
    let cl = client();
    let r = send(&cl, Method::POST, &p.url("/pay"), None, &[], "once").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert!(
        r.body.starts_with("route app: backend hangup"),
        "{}",
        r.body
    );
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    assert_eq!(live.hits(), 0, "the POST was not sent again elsewhere");
    // A GET whose connection fails before any answer is sent again, to the live backend.
    for _ in 0..4 {
        let r = get(&cl, &p.url("/read"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    assert!(
        conns.load(Ordering::SeqCst) >= 2,
        "a GET reached the hang-up backend too"
    );
    assert_eq!(live.hits(), 4);
    // So is a PUT whose small body went out with its head: the body goes with it.
    let before = conns.load(Ordering::SeqCst);
    for _ in 0..4 {
        let r = send(&cl, Method::PUT, &p.url("/put"), None, &[], "hello").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.headers["x-body-len"], "5");
    }
    assert!(
        conns.load(Ordering::SeqCst) > before,
        "a PUT reached the hang-up backend too"
    );
    assert_eq!(live.hits(), 8);
}
