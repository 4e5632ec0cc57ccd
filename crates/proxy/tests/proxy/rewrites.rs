//! Per-route rewrites: header rules both ways, prefix stripping, host rewrite, header
//! conditions in matching, custom error pages.

use crate::common::*;
use gateway_model::{Balance, ErrorPage, HeaderMatch, HeaderRules, Route};
use http::{Method, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;

fn rules(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderRules {
    HeaderRules {
        set: set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        add: add
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        remove: remove.iter().map(|r| r.to_string()).collect(),
    }
}

#[tokio::test]
async fn header_rules_prefix_stripping_and_host_rewrite() {
    let handler: Handler = {
        let echo = echo_handler();
        Arc::new(move |name, parts, body| {
            let echo = echo.clone();
            Box::pin(async move {
                let mut r = echo(name, parts, body).await;
                r.headers_mut()
                    .insert("server", "backend/1.0".parse().unwrap());
                r.headers_mut()
                    .insert("x-powered-by", "php".parse().unwrap());
                r
            })
        })
    };
    let a = backend_with("a", handler).await;
    let s = state(
        vec![pool(
            "p",
            Balance::RoundRobin,
            vec![be("a", &a.address, None)],
        )],
        vec![
            Route {
                strip_prefix: true,
                host_rewrite: Some("internal.svc:8080".into()),
                request_headers: rules(&[("x-env", "prod")], &[("x-tag", "gateway")], &["x-debug"]),
                response_headers: rules(
                    &[("server", "gateway")],
                    &[("cache-control", "no-store")],
                    &["x-powered-by"],
                ),
                ..route("api", &[], "/api", "p")
            },
            route("plain", &[], "/", "p"),
        ],
    );
    let p = proxy(1, s, None).await;
    let cl = client();
    let r = send(
        &cl,
        Method::GET,
        &p.url("/api/headers?q=1"),
        Some("public.test"),
        &[("x-env", "dev"), ("x-tag", "client"), ("x-debug", "1")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["x-uri"], "/headers?q=1",
        "prefix stripped, query kept"
    );
    assert_eq!(r.headers["x-host"], "internal.svc:8080");
    let seen: HashMap<&str, Vec<&str>> =
        r.body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .fold(HashMap::new(), |mut m, (k, v)| {
                m.entry(k).or_default().push(v);
                m
            });
    assert_eq!(seen["x-env"], ["prod"], "set replaces");
    assert_eq!(seen["x-tag"], ["client", "gateway"], "add appends");
    assert!(!seen.contains_key("x-debug"), "removed");
    assert_eq!(
        seen["x-forwarded-host"],
        ["public.test"],
        "the client's host"
    );
    assert_eq!(r.headers["server"], "gateway");
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(r.headers.get("x-powered-by").is_none());
    // The bare prefix becomes "/"; other routes are untouched.
    let r = get(&cl, &p.url("/api"), None).await;
    assert_eq!(r.headers["x-uri"], "/");
    let r = get(&cl, &p.url("/apix/y"), Some("h.test")).await;
    assert_eq!(r.headers["x-uri"], "/apix/y");
    assert_eq!(r.headers["x-host"], "h.test");
    assert_eq!(r.headers["server"], "backend/1.0");
}

#[tokio::test]
async fn header_conditions_route_canary_traffic() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let s = state(
        vec![
            pool(
                "stable",
                Balance::RoundRobin,
                vec![be("s", &stable.address, None)],
            ),
            pool(
                "canary",
                Balance::RoundRobin,
                vec![be("c", &canary.address, None)],
            ),
        ],
        vec![
            route("app", &["app.test"], "/", "stable"),
            Route {
                headers: vec![HeaderMatch {
                    name: "X-Canary".into(),
                    value: "always".into(),
                }],
                ..route("app-canary", &["app.test"], "/", "canary")
            },
        ],
    );
    let p = proxy(1, s, None).await;
    let cl = client();
    let via = |hs: &'static [(&'static str, &'static str)]| {
        let (cl, url) = (cl.clone(), p.url("/x"));
        async move {
            send(&cl, Method::GET, &url, Some("app.test"), hs, "")
                .await
                .body
        }
    };
    assert_eq!(via(&[]).await, "get from stable\n");
    assert_eq!(via(&[("x-canary", "always")]).await, "get from canary\n");
    assert_eq!(via(&[("X-CANARY", "always")]).await, "get from canary\n");
    assert_eq!(via(&[("x-canary", "Always")]).await, "get from stable\n");
}

#[tokio::test]
async fn custom_error_pages_replace_the_gateways_answers() {
    let dead = dead_address().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute = listener.local_addr().unwrap().to_string();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let page = |status: Option<u16>, ct: &str, body: &str| ErrorPage {
        status,
        content_type: ct.into(),
        body: body.into(),
    };
    let pages = [
        (
            "502".to_string(),
            page(None, "text/html; charset=utf-8", "<h1>down</h1>"),
        ),
        (
            "503".to_string(),
            page(Some(200), "application/json", "{\"busy\":true}"),
        ),
        ("504".to_string(), page(None, "text/plain", "too slow")),
    ];
    let with_pages = |r: Route| Route {
        error_pages: pages.clone().into(),
        response_headers: rules(&[("x-site", "shop")], &[], &[]),
        retries: Some(0),
        timeout_ms: Some(200),
        ..r
    };
    let s = state(
        vec![
            pool("dead", Balance::RoundRobin, vec![be("d", &dead, None)]),
            pool("empty", Balance::RoundRobin, vec![]),
            pool("mute", Balance::RoundRobin, vec![be("m", &mute, None)]),
        ],
        vec![
            with_pages(route("dead", &[], "/dead", "dead")),
            with_pages(route("empty", &[], "/empty", "empty")),
            with_pages(route("mute", &[], "/mute", "mute")),
            route("plain", &[], "/plain", "dead"),
        ],
    );
    let p = proxy(1, s, None).await;
    let cl = client();
    let r = get(&cl, &p.url("/dead"), None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::BAD_GATEWAY, "<h1>down</h1>")
    );
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        r.headers["x-site"], "shop",
        "response rules apply to error pages"
    );
    let r = get(&cl, &p.url("/empty"), None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "{\"busy\":true}")
    );
    assert_eq!(r.headers["content-type"], "application/json");
    let r = get(&cl, &p.url("/mute"), None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "too slow")
    );
    // Routes without pages keep the plain message naming route and cause.
    let r = get(&cl, &p.url("/plain"), None).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.body.starts_with("route plain: backend d"), "{}", r.body);
}
