//! HTTP hygiene at the edge, over raw TCP: request smuggling shapes, oversized heads, slow
//! heads, and forwarding headers from trusted and untrusted peers.

use crate::common::*;
use gateway_model::Balance;
use gateway_proxy::ProxyConfig;
use http::{Method, StatusCode};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn one_backend_proxy(config: ProxyConfig) -> (TestBackend, TestProxy) {
    let a = backend("a").await;
    let s = state(
        vec![pool(
            "p",
            Balance::RoundRobin,
            vec![be("a", &a.address, None)],
        )],
        vec![route("app", &[], "/", "p")],
    );
    let p = proxy_with(config, s, None).await;
    (a, p)
}

#[tokio::test]
async fn smuggling_shapes_get_400_and_never_reach_a_backend() {
    let (a, p) = one_backend_proxy(ProxyConfig::new(1, KEY)).await;
    let cases: &[(&str, &str)] = &[
        (
            "CL then TE",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE then CL",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        ),
        (
            "duplicate CL",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "conflicting CL",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "CL list",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
        ),
        (
            "TE not chunked last",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE gzip then chunked",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE twice",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE look-alike",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE on HTTP/1.0",
            "POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "space before colon",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "obs-fold",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "bad CL",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        ),
    ];
    for (what, input) in cases {
        let out = raw_exchange(p.addr, input.as_bytes()).await;
        assert_eq!(statuses(&out), [400], "{what}: {out}");
    }
    assert_eq!(a.hits(), 0);

    // A good request first on the connection is served; the smuggling attempt after it gets
    // 400 and the connection closes, so nothing after it is read as a request.
    let body = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    let input = format!(
        "GET / HTTP/1.1\r\nHost: h\r\n\r\n\
         POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let out = raw_exchange(p.addr, input.as_bytes()).await;
    assert_eq!(statuses(&out), [200, 400], "{out}");
    assert!(
        out.contains("both Content-Length and Transfer-Encoding"),
        "{out}"
    );
    assert_eq!(a.hits(), 1);

    // Well-formed chunked and fixed-length requests on one connection pass.
    let input = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n\
                 POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nworld\
                 GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let out = raw_exchange(p.addr, input.as_bytes()).await;
    assert_eq!(statuses(&out), [200, 200, 200], "{out}");
    assert_eq!(a.hits(), 4);
}

#[tokio::test]
async fn oversized_heads_get_431_and_slow_heads_are_cut_off() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        ..ProxyConfig::new(1, KEY)
    };
    let (a, p) = one_backend_proxy(config).await;
    let big = "x".repeat(70 * 1024);
    let out = raw_exchange(
        p.addr,
        format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&out), [431], "{}", &out[..out.len().min(200)]);
    // Large but within 64 KiB is fine.
    let fits = "y".repeat(40 * 1024);
    let out = raw_exchange(
        p.addr,
        format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {fits}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&out), [200]);
    assert_eq!(a.hits(), 1);

    // A client that never finishes its head is disconnected after the header read timeout.
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: 1")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection was not closed");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(a.hits(), 1);
}

fn header_lines(body: &str) -> HashMap<&str, &str> {
    body.lines().filter_map(|l| l.split_once(": ")).collect()
}

#[tokio::test]
async fn forwarding_headers_are_kept_only_from_trusted_proxies() {
    let cl = client();
    let claims: &[(&str, &str)] = &[
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "shop.example"),
        ("forwarded", "for=203.0.113.7;proto=https"),
    ];
    // Default: nobody is trusted.
    let (_a, p) = one_backend_proxy(ProxyConfig::new(1, KEY)).await;
    let r = send(
        &cl,
        Method::GET,
        &p.url("/headers"),
        Some("h.test"),
        claims,
        "",
    )
    .await;
    let seen = header_lines(&r.body);
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "h.test");
    assert_eq!(seen["forwarded"], "for=127.0.0.1;host=h.test;proto=http");

    // Behind a trusted load balancer (this test's loopback), its headers are kept.
    let config = ProxyConfig {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..ProxyConfig::new(1, KEY)
    };
    let (_b, p) = one_backend_proxy(config).await;
    let r = send(
        &cl,
        Method::GET,
        &p.url("/headers"),
        Some("h.test"),
        claims,
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = header_lines(&r.body);
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "shop.example");
    assert_eq!(
        seen["forwarded"],
        "for=203.0.113.7;proto=https, for=127.0.0.1;host=h.test;proto=http"
    );
}

#[tokio::test]
async fn ip_hash_behind_a_trusted_proxy_balances_on_the_real_client() {
    let mut backends = Vec::new();
    let mut list = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let b = backend(name).await;
        list.push(be(name, &b.address, None));
        backends.push(b);
    }
    let s = state(
        vec![pool("p", Balance::IpHash, list)],
        vec![route("app", &[], "/", "p")],
    );
    let trusting = proxy_with(
        ProxyConfig {
            trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
            ..ProxyConfig::new(1, KEY)
        },
        s.clone(),
        None,
    )
    .await;
    let plain = proxy(1, s, None).await;
    let cl = client();
    let mut served = std::collections::HashSet::new();
    for i in 0..40 {
        let xff = format!("198.51.100.{i}");
        let pick = |p: &TestProxy| {
            let (cl, url, xff) = (cl.clone(), p.url("/"), xff.clone());
            async move {
                send(
                    &cl,
                    Method::GET,
                    &url,
                    None,
                    &[("x-forwarded-for", &xff)],
                    "",
                )
                .await
                .headers["x-backend"]
                    .to_str()
                    .unwrap()
                    .to_string()
            }
        };
        let first = pick(&trusting).await;
        assert_eq!(pick(&trusting).await, first, "client {xff} is sticky");
        served.insert(first);
        // Untrusted: the header is ignored, every request is the same loopback client.
        assert_eq!(pick(&plain).await, pick(&plain).await);
    }
    assert!(
        served.len() >= 3,
        "real clients spread over backends: {served:?}"
    );
}
