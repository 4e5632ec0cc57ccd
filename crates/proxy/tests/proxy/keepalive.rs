//! Keep-alive connections to backends: how long an idle one is kept (the pool's
//! `keep_alive_timeout_ms`), and what happens when a backend closes a reused one just as a
//! request reaches it.

use crate::common::*;
use gateway_model::{Balance, Pool};
use http::{Method, StatusCode};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a raw backend saw: per request, the connection's number (from 1, in accept order),
/// the request line and the body; and [`CLOSED`] when the gateway closed a connection.
type Seen = Arc<Mutex<Vec<(usize, String, String)>>>;

const CLOSED: &str = "closed by the gateway";

/// A raw HTTP/1.1 backend that answers `200` with the request line as body and keeps the
/// connection. With `close_second`, it reads the second request of every connection and
/// closes it without an answer: what a backend whose idle timeout runs out as the request
/// arrives looks like from the gateway.
async fn counting_backend(close_second: bool) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut conns = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            conns += 1;
            let conn = conns;
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for n in 1.. {
                    let end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                let closed = (conn, CLOSED.to_string(), String::new());
                                log.lock().unwrap().push(closed);
                                return;
                            }
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    while buf.len() < length {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[..length]).into_owned();
                    buf.drain(..length);
                    let line = head.lines().next().unwrap_or_default().to_string();
                    log.lock().unwrap().push((conn, line.clone(), body));
                    if close_second && n == 2 {
                        return; // closed without an answer
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{line}",
                        line.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn pool_with(address: &str, keep_alive_timeout_ms: Option<u64>) -> Pool {
    Pool {
        keep_alive_timeout_ms,
        ..pool("p", Balance::RoundRobin, vec![be("a", address, None)])
    }
}

async fn proxy_to(pool: Pool) -> TestProxy {
    proxy(
        1,
        state(vec![pool], vec![route("app", &[], "/", "p")]),
        None,
    )
    .await
}

/// The connections the backend's requests came on, in order.
fn conns(seen: &Seen) -> Vec<usize> {
    let seen = seen.lock().unwrap();
    seen.iter().filter(|s| s.1 != CLOSED).map(|s| s.0).collect()
}

#[tokio::test]
async fn idempotent_requests_on_a_connection_the_backend_just_closed_go_out_again() {
    let (addr, seen) = counting_backend(true).await;
    let p = proxy_to(pool_with(&addr, None)).await;
    let c = client();

    let r = get(&c, &p.url("/one"), None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "GET /one HTTP/1.1")
    );
    // On the same connection, which the backend closes as the request arrives: the gateway
    // sends it again on a new connection, and the client sees only the answer. The pool is the
    // route's only one, so this is not the route's retry on another backend.
    let r = get(&c, &p.url("/two"), None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "GET /two HTTP/1.1")
    );
    assert_eq!(conns(&seen), [1, 1, 2]);

    // A PUT with a body that went out with its head: sent again whole.
    let r = send(&c, Method::PUT, &p.url("/put"), None, &[], "hello").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "PUT /put HTTP/1.1")
    );
    {
        let seen = seen.lock().unwrap();
        let puts: Vec<_> = seen.iter().filter(|s| s.1.starts_with("PUT")).collect();
        assert_eq!(puts.len(), 2, "{seen:?}");
        assert!(puts.iter().all(|s| s.2 == "hello"), "{seen:?}");
        assert_eq!((puts[0].0, puts[1].0), (2, 3));
    }

    // A POST the backend may have acted on is never sent twice: 502, naming the cause.
    let r = send(&c, Method::POST, &p.url("/post"), None, &[], "once").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert!(
        r.body.contains("closed before a response head"),
        "{}",
        r.body
    );
    let posts = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.1.starts_with("POST"))
        .count();
    assert_eq!(posts, 1);
    // The backend did not fail: the next request is served as usual.
    let r = get(&c, &p.url("/three"), None).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn idle_backend_connections_are_kept_for_the_pools_keep_alive_time() {
    // 300 ms: reused at once, not after 500 ms idle.
    let (addr, seen) = counting_backend(false).await;
    let p = proxy_to(pool_with(&addr, Some(300))).await;
    let c = client();
    for path in ["/a", "/b"] {
        assert_eq!(get(&c, &p.url(path), None).await.status, StatusCode::OK);
    }
    assert_eq!(conns(&seen), [1, 1]);
    tokio::time::sleep(Duration::from_millis(500)).await; // idle past the keep-alive time
    assert_eq!(get(&c, &p.url("/c"), None).await.status, StatusCode::OK);
    assert_eq!(conns(&seen), [1, 1, 2]);

    // With no request after it, the idle connection is closed by the gateway once its
    // keep-alive time has passed (within the data plane's tick of about a second).
    let since = std::time::Instant::now();
    eventually("the gateway closes the idle backend connection", || {
        let seen = seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .iter()
                .any(|s| s.0 == 2 && s.1 == CLOSED)
        }
    })
    .await;
    assert!(
        since.elapsed() >= Duration::from_millis(250),
        "{:?}",
        since.elapsed()
    );
    assert_eq!(conns(&seen), [1, 1, 2]);

    // 0: a new connection for every request.
    let (addr, seen) = counting_backend(false).await;
    let p = proxy_to(pool_with(&addr, Some(0))).await;
    for path in ["/a", "/b", "/c"] {
        assert_eq!(get(&c, &p.url(path), None).await.status, StatusCode::OK);
    }
    assert_eq!(conns(&seen), [1, 2, 3]);

    // Left out: 60 s, so a connection idle for longer than the 4 s the gateway used to keep
    // one is still reused.
    let (addr, seen) = counting_backend(false).await;
    let p = proxy_to(pool_with(&addr, None)).await;
    assert_eq!(get(&c, &p.url("/a"), None).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert_eq!(get(&c, &p.url("/b"), None).await.status, StatusCode::OK);
    assert_eq!(conns(&seen), [1, 1]);
}
