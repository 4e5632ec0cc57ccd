//! Routing, balancing, errors, retries, header hygiene, keep-alive, unix sockets, h2c,
//! config swaps and shutdown, through real sockets.

use crate::common::*;
use bytes::Bytes;
use gateway_model::{Balance, Route};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::net::TcpStream;

#[tokio::test]
async fn routes_by_host_path_and_method_to_the_right_pool() {
    let (a, b, c, d) = (
        backend("a").await,
        backend("b").await,
        backend("c").await,
        backend("d").await,
    );
    let s = state(
        vec![
            pool("pa", Balance::RoundRobin, vec![be("a", &a.address, None)]),
            pool("pb", Balance::RoundRobin, vec![be("b", &b.address, None)]),
            pool("pc", Balance::RoundRobin, vec![be("c", &c.address, None)]),
            pool("pd", Balance::RoundRobin, vec![be("d", &d.address, None)]),
        ],
        vec![
            route("default", &[], "/", "pa"),
            route("api", &["api.test"], "/", "pb"),
            route("static", &["*.example.test"], "/static", "pc"),
            Route {
                methods: vec!["POST".into()],
                ..route("uploads", &["api.test"], "/upload", "pd")
            },
        ],
    );
    let p = proxy(1, s, None).await;
    let cl = client();
    let cases: &[(Method, &str, &str, &str)] = &[
        (Method::GET, "other.test", "/", "get from a\n"),
        (Method::GET, "API.test:8080", "/users", "get from b\n"),
        (
            Method::GET,
            "cdn.example.test",
            "/static/x.js",
            "get from c\n",
        ),
        (Method::GET, "cdn.example.test", "/staticx", "get from a\n"),
        (Method::POST, "api.test", "/upload/1", "post from d\n"),
        (Method::GET, "api.test", "/upload/1", "get from b\n"),
    ];
    for (method, host, path, want) in cases {
        let r = send(&cl, method.clone(), &p.url(path), Some(host), &[], "").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, *want),
            "{method} {host}{path}"
        );
    }
}

#[tokio::test]
async fn unmatched_request_gets_404_naming_host_and_path() {
    let a = backend("a").await;
    let s = state(
        vec![pool(
            "pa",
            Balance::RoundRobin,
            vec![be("a", &a.address, None)],
        )],
        vec![route("only", &["only.test"], "/app", "pa")],
    );
    let p = proxy(1, s, None).await;
    let r = get(&client(), &p.url("/elsewhere"), Some("Other.Test")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body, "no route for other.test /elsewhere\n");
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn dead_backend_gives_502_naming_route_backend_and_cause() {
    let dead = dead_address().await;
    let s = state(
        vec![
            pool("p", Balance::RoundRobin, vec![be("gone", &dead, None)]),
            pool("empty", Balance::RoundRobin, vec![]),
        ],
        vec![
            route("app", &[], "/", "p"),
            route("void", &[], "/void", "empty"),
        ],
    );
    let p = proxy(1, s, None).await;
    let r = get(&client(), &p.url("/x"), None).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.body
            .starts_with(&format!("route app: backend gone ({dead}) failed: connect")),
        "{}",
        r.body
    );
    let r = get(&client(), &p.url("/void"), None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body, "route void: pool empty has no backends\n");
}

#[tokio::test]
async fn connection_failures_are_retried_on_another_backend() {
    let live = backend("live").await;
    let dead = dead_address().await;
    let backends = vec![be("dead", &dead, None), be("live", &live.address, None)];
    let s = state(
        vec![pool("p", Balance::RoundRobin, backends)],
        vec![
            route("app", &[], "/", "p"),
            Route {
                retries: Some(0),
                ..route("once", &[], "/once", "p")
            },
        ],
    );
    let p = proxy(1, s, None).await;
    let cl = client();
    for method in [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::POST,
        Method::GET,
    ] {
        let r = send(&cl, method.clone(), &p.url("/x"), None, &[], "body").await;
        assert_eq!(r.status, StatusCode::OK, "{method}: {}", r.body);
        assert_eq!(r.headers["x-backend"], "live");
    }
    // Without retries, the requests that land on the dead backend fail.
    let mut statuses = HashMap::new();
    for _ in 0..4 {
        *statuses
            .entry(get(&cl, &p.url("/once"), None).await.status)
            .or_insert(0) += 1;
    }
    assert_eq!(statuses[&StatusCode::OK], 2);
    assert_eq!(statuses[&StatusCode::BAD_GATEWAY], 2);
}

#[tokio::test]
async fn silent_backend_gives_504_after_the_route_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let s = state(
        vec![pool(
            "p",
            Balance::RoundRobin,
            vec![be("mute", &addr, None)],
        )],
        vec![Route {
            timeout_ms: Some(200),
            ..route("slow", &[], "/", "p")
        }],
    );
    let p = proxy(1, s, None).await;
    let r = get(&client(), &p.url("/"), None).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        r.body,
        format!("route slow: backend mute ({addr}) timed out after 200ms\n")
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let handler: Handler = Arc::new(|name, parts, body| {
        Box::pin(async move {
            let mut r = answer(&name, &parts, &body);
            r.headers_mut()
                .insert("connection", "x-resp-private".parse().unwrap());
            r.headers_mut()
                .insert("x-resp-private", "1".parse().unwrap());
            r.headers_mut()
                .insert("proxy-authenticate", "Basic".parse().unwrap());
            r
        })
    });
    let a = backend_with("a", handler).await;
    let s = state(
        vec![pool(
            "p",
            Balance::RoundRobin,
            vec![be("a", &a.address, None)],
        )],
        vec![route("app", &[], "/", "p")],
    );
    let p = proxy(1, s, None).await;
    let r = send(
        &client(),
        Method::GET,
        &p.url("/headers"),
        Some("site.test"),
        &[
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("proxy-authorization", "Basic abc"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https-spoofed"),
            ("te", "trailers"),
            ("gateway-replay", "leader"),
            ("x-kept", "yes"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen: HashMap<&str, &str> = r.body.lines().filter_map(|l| l.split_once(": ")).collect();
    for gone in ["x-private", "proxy-authorization", "gateway-hop"] {
        assert!(
            !seen.contains_key(gone),
            "{gone} reached the backend: {seen:?}"
        );
    }
    assert_eq!(seen["x-kept"], "yes");
    assert_eq!(seen["host"], "site.test");
    // The client is no trusted proxy: what it claimed is replaced.
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "site.test");
    assert_eq!(seen["forwarded"], "for=127.0.0.1;host=site.test;proto=http");
    // Trailers are forwarded, so the client's wish for them is passed on.
    assert_eq!(seen["te"], "trailers");
    assert!(r.headers.get("x-resp-private").is_none());
    assert!(r.headers.get("proxy-authenticate").is_none());
    assert_eq!(r.headers["x-backend"], "a");
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let a = backend("a").await;
    let s = state(
        vec![pool(
            "p",
            Balance::RoundRobin,
            vec![be("a", &a.address, None)],
        )],
        vec![route("app", &[], "/", "p")],
    );
    let p = proxy(1, s, None).await;
    let cl = client();
    for i in 0..30 {
        let r = send(
            &cl,
            Method::POST,
            &p.url("/"),
            None,
            &[],
            &"x".repeat(i * 100),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-body-len"], (i * 100).to_string().as_str());
    }
    assert_eq!(a.hits(), 30);
    let conns = a.connections.load(Ordering::SeqCst);
    assert!(
        conns <= 2,
        "30 sequential requests used {conns} upstream connections"
    );
}

#[tokio::test]
async fn unix_socket_backends_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let u = unix_backend("sock", &dir.path().join("app.sock")).await;
    let s = state(
        vec![pool(
            "p",
            Balance::RoundRobin,
            vec![be("u", &u.address, None)],
        )],
        vec![route("app", &[], "/", "p")],
    );
    let p = proxy(1, s, None).await;
    let cl = client();
    for _ in 0..3 {
        let r = get(&cl, &p.url("/x"), None).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "get from sock\n")
        );
    }
    assert_eq!(u.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_routed_by_authority() {
    let a = backend("a").await;
    let b = backend("b").await;
    let s = state(
        vec![
            pool("pa", Balance::RoundRobin, vec![be("a", &a.address, None)]),
            pool("pb", Balance::RoundRobin, vec![be("b", &b.address, None)]),
        ],
        vec![
            route("default", &[], "/", "pa"),
            route("h2", &["h2.test"], "/", "pb"),
        ],
    );
    let p = proxy(1, s, None).await;
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (uri, want) in [
        ("http://h2.test/x", "get from b\n"),
        ("http://other.test/x", "get from a\n"),
    ] {
        let req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, want);
    }
    let req = Request::post("http://h2.test/x")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let body = tx
        .send_request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "post from b\n");
}

#[tokio::test]
async fn sticky_cookie_pins_clients_and_tampering_is_repinned() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let backends = vec![
        be("a", &a.address, None),
        be("b", &b.address, None),
        be("c", &c.address, None),
    ];
    let s = state(
        vec![pool("p", Balance::Cookie, backends)],
        vec![route("app", &[], "/", "p")],
    );
    let p = proxy(1, s.clone(), None).await;
    let cl = client();
    let first = get(&cl, &p.url("/"), None).await;
    let set = first.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.starts_with("gw_sticky=") && set.contains("Path=/") && set.contains("HttpOnly"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let pinned = first.headers["x-backend"].to_str().unwrap().to_string();
    for _ in 0..6 {
        let r = send(
            &cl,
            Method::GET,
            &p.url("/"),
            None,
            &[("cookie", &format!("theme=dark; {cookie}"))],
            "",
        )
        .await;
        assert_eq!(r.headers["x-backend"], pinned.as_str());
        assert!(r.headers.get("set-cookie").is_none());
    }
    // Another node with the same key honours the cookie.
    let p2 = proxy(2, s, None).await;
    let r = send(
        &cl,
        Method::GET,
        &p2.url("/"),
        None,
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.headers["x-backend"], pinned.as_str());
    // A cookie naming another backend with this backend's signature is not honoured.
    let other = if pinned == "a" { "b" } else { "a" };
    let forged = cookie.replacen(&format!("={pinned}."), &format!("={other}."), 1);
    let r = send(
        &cl,
        Method::GET,
        &p.url("/"),
        None,
        &[("cookie", &forged)],
        "",
    )
    .await;
    assert!(
        r.headers.get("set-cookie").is_some(),
        "a forged cookie gets replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_swaps_under_load_fail_no_request() {
    let (x, y, z) = (backend("x").await, backend("y").await, backend("z").await);
    let with = |pool_for_app: &str, extra_route: bool| {
        let mut routes = vec![route("app", &[], "/", pool_for_app)];
        if extra_route {
            routes.push(route("extra", &["extra.test"], "/", "py"));
        }
        state(
            vec![
                pool("px", Balance::RoundRobin, vec![be("x", &x.address, None)]),
                pool(
                    "py",
                    Balance::LeastConnections,
                    vec![be("y", &y.address, None), be("z", &z.address, None)],
                ),
            ],
            routes,
        )
    };
    let p = Arc::new(proxy(1, with("px", false), None).await);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (p, stop, done, failed) = (p.clone(), stop.clone(), done.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let cl = client();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = send(&cl, Method::POST, &p.url("/load"), None, &[], "payload").await;
                let from_pool =
                    ["post from x\n", "post from y\n", "post from z\n"].contains(&r.body.as_str());
                if r.status != StatusCode::OK || !from_pool {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                seen.push(r.headers["x-backend"].to_str().unwrap_or("?").to_string());
                done.fetch_add(1, Ordering::SeqCst);
            }
            seen
        }));
    }
    for i in 0..40 {
        let before = done.load(Ordering::SeqCst);
        eventually("requests flow", || {
            let done = done.clone();
            async move { done.load(Ordering::SeqCst) >= before + 10 }
        })
        .await;
        p.set_state(with(if i % 2 == 0 { "py" } else { "px" }, i % 3 == 0));
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for c in clients {
        for b in c.await.unwrap() {
            *seen.entry(b).or_default() += 1;
        }
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests during swaps; served by {seen:?}"
    );
    for b in ["x", "y", "z"] {
        assert!(seen.contains_key(b), "{b} never served: {seen:?}");
    }
    // The last swap (i = 39: px) is what serves now.
    let cl = client();
    eventually("last config in force", || {
        let (cl, url) = (cl.clone(), p.url("/"));
        async move { get(&cl, &url, None).await.body == "get from x\n" }
    })
    .await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let release = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(tokio::sync::Notify::new());
    let (r2, e2) = (release.clone(), entered.clone());
    let handler: Handler = Arc::new(move |name, parts, body| {
        let (release, entered) = (r2.clone(), e2.clone());
        Box::pin(async move {
            entered.notify_one();
            release.notified().await;
            answer(&name, &parts, &body)
        })
    });
    let slow = backend_with("slow", handler).await;
    let s = state(
        vec![pool(
            "p",
            Balance::RoundRobin,
            vec![be("slow", &slow.address, None)],
        )],
        vec![route("app", &[], "/", "p")],
    );
    let p = proxy(1, s, None).await;
    let addr = p.addr;
    let url = p.url("/");
    let in_flight = tokio::spawn(async move { get(&client(), &url, None).await });
    entered.notified().await;
    let stopped = tokio::spawn(p.shutdown());
    // Once the listener is closed, new connections are refused.
    eventually("listener closed", || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        !stopped.is_finished(),
        "serve waits for the request in flight"
    );
    release.notify_one();
    let r = in_flight.await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "get from slow\n")
    );
    stopped.await.unwrap().unwrap();
}

#[tokio::test]
async fn weighted_pool_serves_in_ratio() {
    let (a, b) = (backend("a").await, backend("b").await);
    let mut heavy = be("a", &a.address, None);
    heavy.weight = 3;
    let s = state(
        vec![pool(
            "p",
            Balance::WeightedRoundRobin,
            vec![heavy, be("b", &b.address, None)],
        )],
        vec![route("app", &[], "/", "p")],
    );
    let p = proxy(1, s, None).await;
    let cl = client();
    for _ in 0..40 {
        assert_eq!(get(&cl, &p.url("/"), None).await.status, StatusCode::OK);
    }
    assert_eq!((a.hits(), b.hits()), (30, 10));
    // Bodies of any size stream through both ways.
    let big = "y".repeat(3 << 20);
    let r = send(&cl, Method::PUT, &p.url("/"), None, &[], &big).await;
    assert_eq!(r.headers["x-body-len"], (3usize << 20).to_string().as_str());
}
