//! Write-to-leader between two `serve()` instances acting as node 1 and node 2.

use crate::common::*;
use gateway_model::{Balance, Pool, State};
use gateway_proxy::{Leader, ProxyConfig};
use hmac::{Hmac, Mac};
use http::{Method, Response, StatusCode};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Backends answer like the demo backend, except that b2 asks for a replay on the leader for
/// any path containing `/replay`.
fn replaying_handler() -> Handler {
    Arc::new(|name, parts, body| {
        Box::pin(async move {
            if name == "b2" && parts.uri.path().contains("/replay") {
                return Response::builder()
                    .status(StatusCode::CONFLICT)
                    .header("gateway-replay", "leader")
                    .header("x-backend", "b2")
                    .body(http_body_util::Full::new(bytes::Bytes::from(
                        "replay from b2\n",
                    )))
                    .unwrap();
            }
            answer(&name, &parts, &body)
        })
    })
}

struct TwoNodes {
    b1: TestBackend,
    b2: TestBackend,
    n1: TestProxy,
    n2: TestProxy,
    state: State,
}

/// Node 1 leads; each node owns one backend of pool `app` (prefer_local, so reads stay on the
/// receiving node's own backend). Pool `shared` balances over both without preference.
async fn two_nodes() -> TwoNodes {
    let b1 = backend_with("b1", replaying_handler()).await;
    let b2 = backend_with("b2", replaying_handler()).await;
    let app = Pool {
        prefer_local: true,
        ..pool(
            "app",
            Balance::RoundRobin,
            vec![
                be("b1", &b1.address, Some(1)),
                be("b2", &b2.address, Some(2)),
            ],
        )
    };
    let shared = pool(
        "shared",
        Balance::RoundRobin,
        vec![
            be("b2", &b2.address, Some(2)),
            be("b1", &b1.address, Some(1)),
        ],
    );
    let state = state(
        vec![app, shared],
        vec![
            leader_route("app", "/", "app"),
            leader_route("shared", "/shared", "shared"),
        ],
    );
    let n1 = proxy(1, state.clone(), None).await;
    n1.leader.send_replace(Some(n1.as_leader(1)));
    let n2 = proxy(2, state.clone(), Some(n1.as_leader(1))).await;
    let cl = client();
    eventually("node 1 knows it leads", || {
        let (cl, url) = (cl.clone(), n1.url("/"));
        async move { send(&cl, Method::POST, &url, None, &[], "").await.status == StatusCode::OK }
    })
    .await;
    TwoNodes {
        b1,
        b2,
        n1,
        n2,
        state,
    }
}

fn marker(key: &[u8], node: u64, ts: u64, method: &str, path_and_query: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{node}.{ts}\n{method} {path_and_query}").as_bytes());
    format!("{node}.{ts}.{}", hex::encode(mac.finalize().into_bytes()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn writes_via_a_follower_reach_the_leaders_backend_and_reads_stay_local() {
    let t = two_nodes().await;
    let cl = client();
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let r = send(
            &cl,
            method.clone(),
            &t.n2.url("/items?x=1"),
            Some("app.test"),
            &[],
            "hello",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{method}: {}", r.body);
        assert_eq!(
            r.body,
            format!("{} from b1\n", method.as_str().to_lowercase())
        );
        assert_eq!(r.headers["x-body-len"], "5");
    }
    let b2_before = t.b2.hits();
    for _ in 0..3 {
        let r = get(&cl, &t.n2.url("/items"), None).await;
        assert_eq!(r.body, "get from b2\n", "reads on node 2 stay on node 2");
        let r = send(&cl, Method::HEAD, &t.n2.url("/items"), None, &[], "").await;
        assert_eq!(r.headers["x-backend"], "b2");
        let r = get(&cl, &t.n1.url("/items"), None).await;
        assert_eq!(r.body, "get from b1\n");
    }
    assert_eq!(t.b2.hits(), b2_before + 6);
    // What the leader's backend sees of a forwarded write: the client once in X-Forwarded-For,
    // the original host, and no hop marker.
    let r = send(
        &cl,
        Method::POST,
        &t.n2.url("/headers"),
        Some("app.test"),
        &[],
        "",
    )
    .await;
    let seen: HashMap<&str, &str> = r.body.lines().filter_map(|l| l.split_once(": ")).collect();
    assert_eq!(r.headers["x-backend"], "b1");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], "app.test");
    assert_eq!(seen["host"], "app.test");
    assert!(!seen.contains_key("gateway-hop"), "{seen:?}");
    // Writes arriving at the leader itself are served by its own backend.
    let r = send(&cl, Method::POST, &t.n1.url("/x"), None, &[], "").await;
    assert_eq!(r.body, "post from b1\n");
}

#[tokio::test]
async fn forged_hop_markers_do_not_bypass_the_leader() {
    let t = two_nodes().await;
    let cl = client();
    let (b1_before, b2_before) = (t.b1.hits(), t.b2.hits());
    let zeros = format!("2.{}.{}", now(), "0".repeat(64));
    let wrong_key = marker(b"not the key", 2, now(), "POST", "/x");
    let wrong_path = marker(KEY, 2, now(), "POST", "/other");
    let stale = marker(KEY, 2, now() - 600, "POST", "/x");
    for (node, forged) in [
        (&t.n2, zeros.as_str()),
        (&t.n2, "garbage"),
        (&t.n1, zeros.as_str()),
        (&t.n1, wrong_key.as_str()),
        (&t.n1, wrong_path.as_str()),
        (&t.n1, stale.as_str()),
    ] {
        let r = send(
            &cl,
            Method::POST,
            &node.url("/x"),
            None,
            &[("gateway-hop", forged)],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{forged}: {}", r.body);
        assert!(
            r.body.starts_with("route app: rejected gateway-hop marker"),
            "{}",
            r.body
        );
    }
    assert_eq!(
        (t.b1.hits(), t.b2.hits()),
        (b1_before, b2_before),
        "no forged request reached a backend"
    );
    // A genuine marker is honoured: the request is served where it arrives (never forwarded
    // again), by that node's own backend.
    let genuine = marker(KEY, 1, now(), "POST", "/x");
    let r = send(
        &cl,
        Method::POST,
        &t.n2.url("/x"),
        None,
        &[("gateway-hop", &genuine)],
        "",
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "post from b2\n")
    );
}

#[tokio::test]
async fn no_leader_known_gives_503_with_retry_after_and_reads_still_work() {
    let t = two_nodes().await;
    t.n2.leader.send_replace(None);
    let cl = client();
    eventually("node 2 forgets the leader", || {
        let (cl, url) = (cl.clone(), t.n2.url("/x"));
        async move {
            send(&cl, Method::POST, &url, None, &[], "").await.status
                == StatusCode::SERVICE_UNAVAILABLE
        }
    })
    .await;
    let r = send(&cl, Method::DELETE, &t.n2.url("/x"), None, &[], "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(
        r.body,
        "route app: no leader known to serve DELETE requests; retry shortly\n"
    );
    assert_eq!(get(&cl, &t.n2.url("/x"), None).await.body, "get from b2\n");
    // Node 2 becomes leader: it serves writes from its own backend, and node 1 forwards to it.
    t.n2.leader.send_replace(Some(t.n2.as_leader(2)));
    t.n1.leader.send_replace(Some(t.n2.as_leader(2)));
    for node in [&t.n1, &t.n2] {
        eventually("writes move to node 2", || {
            let (cl, url) = (cl.clone(), node.url("/x"));
            async move { send(&cl, Method::POST, &url, None, &[], "").await.body == "post from b2\n" }
        })
        .await;
    }
    assert_eq!(get(&cl, &t.n1.url("/x"), None).await.body, "get from b1\n");
}

#[tokio::test]
async fn unreachable_leader_gives_502_naming_it() {
    let t = two_nodes().await;
    let dead = dead_address().await;
    t.n2.leader.send_replace(Some(Leader {
        id: 7,
        http_addr: dead.clone(),
    }));
    let cl = client();
    eventually("node 2 follows node 7", || {
        let (cl, url) = (cl.clone(), t.n2.url("/x"));
        async move {
            send(&cl, Method::POST, &url, None, &[], "").await.status == StatusCode::BAD_GATEWAY
        }
    })
    .await;
    let r = send(&cl, Method::POST, &t.n2.url("/x"), None, &[], "").await;
    assert!(
        r.body.starts_with(&format!(
            "route app: leader node 7 ({dead}) failed: connect"
        )),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn backend_can_have_a_request_replayed_on_the_leader() {
    let t = two_nodes().await;
    let cl = client();
    // b2 (node 2's own) asks for a replay; node 2 replays on the leader, whose b1 answers.
    let r = get(&cl, &t.n2.url("/replay"), None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "get from b1\n")
    );
    // The body goes along (a method that is not a write is served locally first).
    let report = Method::from_bytes(b"REPORT").unwrap();
    let r = send(&cl, report.clone(), &t.n2.url("/replay"), None, &[], "abc").await;
    assert_eq!(r.body, "report from b1\n");
    assert_eq!(r.headers["x-body-len"], "3");
    // On the leader, a replay asked by another node's backend is served by the leader's own.
    for _ in 0..2 {
        let r = get(&cl, &t.n1.url("/shared/replay"), None).await;
        assert_eq!(r.body, "get from b1\n");
    }
    // A body over max_replay_body is not kept: the backend's answer is passed on.
    let small = proxy_with(
        ProxyConfig {
            max_replay_body: 2,
            ..ProxyConfig::new(2, KEY)
        },
        t.state.clone(),
        Some(t.n1.as_leader(1)),
    )
    .await;
    let r = send(&cl, report, &small.url("/replay"), None, &[], "abc").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body, "replay from b2\n");
}
