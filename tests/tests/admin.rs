//! Admin plane against real `gateway` processes: the token matrix, a fuzz of the REST API that
//! must never produce a 5xx nor change anything it refused, leader transfer, and a graceful
//! SIGTERM (in-flight requests finish, new ones are refused, leadership moves, exit 0).

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use gateway_tests::{ELECTION, EXIT, Node, TestCluster, TestResult, ensure, note, wait_for};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const READ: &str = "read-token-0123456789abcdef";
const WRITE: &str = "write-token-0123456789abcdef";

/// One request with optional bearer token and raw body; answers status and body.
async fn call(
    method: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<(u16, String)> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    call_with(method, addr, path, &headers, body).await
}

/// One request with extra headers; answers status and body.
async fn call_with(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<(u16, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| anyhow!("{method} {path}: no answer within 30s"))??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A one-node cluster whose admin API wants tokens.
async fn secured_node(c: &TestCluster) -> Result<Node> {
    let spec = c.spec(1)?;
    let tokens = c.dir().join("tokens");
    std::fs::write(&tokens, format!("read {READ}\nwrite {WRITE}\n"))?;
    let mut args = c.init_args(&spec);
    args.extend(["--admin-token-file".into(), tokens.display().to_string()]);
    let node = Node::spawn(&spec, args, c.http().clone())?;
    wait_for("the secured node to lead", ELECTION, || async {
        node.ensure_running()?;
        let l = node.leader().await?;
        ensure!(l.id == 1, "/leader names {}", l.id);
        Ok(())
    })
    .await?;
    Ok(node)
}

async fn revision(node: &Node, token: Option<&str>) -> Result<u64> {
    let (status, body) = call("GET", node.admin_addr, "/v1/config", token, None).await?;
    ensure!(status == 200, "GET /v1/config: {status} {body}");
    let v: Value = serde_json::from_str(&body)?;
    v["revision"].as_u64().context("revision")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_matrix_on_rest() -> TestResult {
    let c = TestCluster::new()?;
    let node = secured_node(&c).await?;
    let a = node.admin_addr;
    for open in ["/leader", "/healthz", "/readyz"] {
        // Waited for: `/readyz` answers 503 for a moment while a write is applied.
        wait_for(
            &format!("{open} to answer without a token"),
            ELECTION,
            || async {
                let (s, b) = call("GET", a, open, None, None).await?;
                ensure!(s == 200, "{open} without a token: {s} {b}");
                Ok(())
            },
        )
        .await?;
    }
    let pool = || Some(br#"{"backends":[]}"#.to_vec());
    // (token, read status, write status)
    let cases: [(Option<&str>, u16, u16); 4] = [
        (None, 401, 401),
        (Some("not-a-token-at-all-xxxxxxxx"), 401, 401),
        (Some(READ), 200, 403),
        (Some(WRITE), 200, 200),
    ];
    for (i, (token, read_want, write_want)) in cases.iter().enumerate() {
        let before = revision(&node, Some(READ)).await?;
        let (s, b) = call("GET", a, "/v1/config", *token, None).await?;
        ensure!(
            s == *read_want,
            "case {i}: read got {s} {b}, want {read_want}"
        );
        let (s, b) = call("PUT", a, &format!("/v1/pools/p{i}"), *token, pool()).await?;
        ensure!(
            s == *write_want,
            "case {i}: write got {s} {b}, want {write_want}"
        );
        if s != 200 {
            let v: Value = serde_json::from_str(&b)?;
            ensure!(
                v["error"].as_str().is_some_and(|e| e.contains("token")),
                "case {i}: {b}"
            );
            ensure!(
                revision(&node, Some(READ)).await? == before,
                "case {i}: a refused write changed the config"
            );
        }
    }
    // A read token cannot remove nodes, transfer leadership or make the node leave either.
    for (m, p) in [
        ("DELETE", "/v1/nodes/2"),
        ("POST", "/v1/cluster/transfer-leader"),
        ("POST", "/v1/leave"),
    ] {
        let (s, b) = call(m, a, p, Some(READ), None).await?;
        ensure!(s == 403, "{m} {p} with a read token: {s} {b}");
    }
    Ok(())
}

/// Random requests, mostly near-valid ones, against every endpoint: never a 5xx, the node never
/// dies, and the revision moves only with accepted writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_never_fail_the_server_nor_change_what_they_refuse() -> TestResult {
    let c = TestCluster::new()?;
    let node = secured_node(&c).await?;
    let a = node.admin_addr;
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    note!("fuzz seed {seed} (rerun with FUZZ_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    // A pool and route to aim deletes and conditional writes at.
    let (s, b) = call(
        "PUT",
        a,
        "/v1/pools/base",
        Some(WRITE),
        Some(br#"{"backends":[{"id":"a","address":"127.0.0.1:9"}]}"#.to_vec()),
    )
    .await?;
    ensure!(s == 200, "{s} {b}");
    let mut accepted_writes = 0u64;
    let start_rev = revision(&node, Some(READ)).await?;
    for i in 0..400 {
        let (method, path, body) = random_request(&mut rng);
        let (s, b) = call(method, a, &path, Some(WRITE), body.clone())
            .await
            .with_context(|| format!("request {i}: {method} {path}"))?;
        ensure!(
            s < 500,
            "request {i} (seed {seed}): {method} {path} body {:?} gave {s} {b}",
            body.map(|b| String::from_utf8_lossy(&b).into_owned())
        );
        if s >= 400 {
            let v: Value = serde_json::from_str(&b)
                .map_err(|e| anyhow!("request {i}: error body is not JSON ({e}): {b}"))?;
            ensure!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "request {i}: no error message: {b}"
            );
        }
        if s == 200 && method != "GET" {
            accepted_writes += 1;
        }
        node.ensure_running()?;
    }
    let end_rev = revision(&node, Some(READ)).await?;
    ensure!(
        end_rev - start_rev == accepted_writes,
        "revision moved by {} but {accepted_writes} writes were accepted (seed {seed})",
        end_rev - start_rev
    );
    Ok(())
}

fn random_request(rng: &mut StdRng) -> (&'static str, String, Option<Vec<u8>>) {
    let names = [
        "base",
        "p",
        "web-1",
        "",
        "a b",
        "..",
        "x/y",
        "ünï",
        &"n".repeat(70),
        "%2e%2e",
        "r",
    ];
    let name = names[rng.random_range(0..names.len())].to_string();
    let kind = if rng.random_bool(0.5) {
        "pools"
    } else {
        "routes"
    };
    let path = match rng.random_range(0..10) {
        0 => {
            "/v1/config?consistency=".to_string()
                + (["stale", "leader", "bogus", ""][rng.random_range(0..4)])
        }
        1 => format!(
            "/v1/{kind}?{}",
            (["x=1", "consistency=stale", "consistency"][rng.random_range(0..3)])
        ),
        2 => format!(
            "/v1/nodes/{}",
            (["0", "-1", "abc", "99", "18446744073709551616"][rng.random_range(0..5)])
        ),
        3 => "/v1/transaction".to_string(),
        _ => format!(
            "/v1/{kind}/{}",
            name.replace(' ', "%20").replace('/', "%2F")
        ),
    };
    let method = if path.starts_with("/v1/transaction") {
        "POST"
    } else if path.starts_with("/v1/nodes") {
        "DELETE"
    } else {
        ["GET", "PUT", "PUT", "PUT", "DELETE", "POST", "PATCH"][rng.random_range(0..7)]
    };
    let body = match method {
        "GET" | "DELETE" => None,
        _ => Some(random_body(rng, kind, path.starts_with("/v1/transaction"))),
    };
    (method, path, body)
}

fn random_body(rng: &mut StdRng, kind: &str, transaction: bool) -> Vec<u8> {
    let address = [
        "127.0.0.1:8080",
        "nohost",
        "unix:/tmp/s",
        "unix:rel",
        "[::1]:1",
        "h:0",
        "h:99999",
        "",
    ];
    let backend = |rng: &mut StdRng| {
        let mut b = json!({"id": (["a", "b", "", "a b"][rng.random_range(0..4)]), "address": (address[rng.random_range(0..address.len())])});
        if rng.random_bool(0.3) {
            b["weight"] = json!(([0, 1, 5, 1001, -1][rng.random_range(0..5)]));
        }
        if rng.random_bool(0.2) {
            b["node"] = [json!(0), json!(1), json!("x")][rng.random_range(0..3)].clone();
        }
        b
    };
    let object = |rng: &mut StdRng, kind: &str| -> Value {
        if kind == "pools" {
            let n = rng.random_range(0..4);
            json!({"balance": (["round_robin", "cookie", "bogus", "ip_hash"][rng.random_range(0..4)]),
                   "backends": (0..n).map(|_| backend(rng)).collect::<Vec<_>>()})
        } else {
            json!({"pool": (["base", "missing", "", "a b"][rng.random_range(0..4)]),
                   "hosts": ([["example.com"], ["*.x.org"], [""], ["UP.com"]][rng.random_range(0..4)]),
                   "path_prefix": (["/", "/api", "nope", "/a?b"][rng.random_range(0..4)]),
                   "methods": ([vec![], vec!["GET"], vec!["get"]][rng.random_range(0..3)]),
                   "writes": (["any", "leader", "all"][rng.random_range(0..3)])})
        }
    };
    let mut v = if transaction {
        let n = rng.random_range(0..4);
        let cmds: Vec<Value> = (0..n)
            .map(|i| match rng.random_range(0..5) {
                0 => json!({"op": "put_pool", "pool": {"name": format!("t{i}"), "backends": []}}),
                1 => {
                    json!({"op": "put_route", "route": {"name": format!("tr{i}"), "pool": "base"}})
                }
                2 => json!({"op": "delete_pool", "name": "base"}),
                3 => json!({"op": "retire_node", "id": 3}),
                _ => json!({"op": "nope"}),
            })
            .collect();
        json!({"commands": cmds})
    } else {
        object(rng, kind)
    };
    match rng.random_range(0..10) {
        0 => return b"{".to_vec(),
        1 => return b"not json".to_vec(),
        2 => return vec![0xff, 0xfe, 0x00],
        3 => v["unknown_field"] = json!(1),
        4 => v = json!([1, 2, 3]),
        5 => {
            return format!("{{\"name\":\"{}\"}}", "z".repeat(rng.random_range(0..5000)))
                .into_bytes();
        }
        _ => {}
    }
    serde_json::to_vec(&v).expect("json")
}

async fn leader_id(c: &TestCluster) -> Result<u64> {
    Ok(c.leader().await?.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_on_request() -> TestResult {
    let c = TestCluster::start(3).await?;
    for _ in 0..3 {
        let from = leader_id(&c).await?;
        let to = c
            .ids()
            .into_iter()
            .find(|i| *i != from)
            .context("another node")?;
        let via = c.node(to).admin_addr;
        let t0 = Instant::now();
        let (s, b) = call(
            "POST",
            via,
            "/v1/cluster/transfer-leader",
            None,
            Some(format!("{{\"to\":{to}}}").into_bytes()),
        )
        .await?;
        ensure!(s == 200, "transfer to {to}: {s} {b}");
        note!("transfer {from} -> {to} took {:?}", t0.elapsed());
        wait_for("every node to name the new leader", ELECTION, || async {
            for n in c.live() {
                let l = n.leader().await?;
                ensure!(l.id == to, "node {} names {}", n.id, l.id);
            }
            Ok(())
        })
        .await?;
    }
    // The same through the CLI (gRPC), sent to a follower.
    let from = leader_id(&c).await?;
    let to = c
        .ids()
        .into_iter()
        .find(|i| *i != from)
        .context("another node")?;
    let server = c.node(to).cluster_addr.to_string();
    let out = gateway_tests::run_gateway(
        &[
            "cluster",
            "transfer-leader",
            "--to",
            &to.to_string(),
            "--server",
            &server,
        ],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(
        out.status.success(),
        "gateway cluster transfer-leader: {out:?}"
    );
    ensure!(
        out.stdout.contains(&format!("node {to} now leads")),
        "{out:?}"
    );
    wait_for("every node to name the CLI's choice", ELECTION, || async {
        for n in c.live() {
            let l = n.leader().await?;
            ensure!(l.id == to, "node {} names {}", n.id, l.id);
        }
        Ok(())
    })
    .await?;
    let (s, b) = call(
        "POST",
        c.node(1).admin_addr,
        "/v1/cluster/transfer-leader",
        None,
        Some(br#"{"to":42}"#.to_vec()),
    )
    .await?;
    ensure!(
        s == 409 && b.contains("not a voter"),
        "transfer to a stranger: {s} {b}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_refuses_new_and_hands_over() -> TestResult {
    let c = TestCluster::start(3).await?;
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel(1);
    let (release, release_rx) = tokio::sync::watch::channel(false);
    let backend_addr = gateway_tests::holding_backend(arrived_tx, release_rx).await?;
    let leader = c.node(leader_id(&c).await?);
    let pool = json!({"backends": [{"id": "s", "address": backend_addr.to_string()}]});
    leader.put("/v1/pools/slow", &pool).await?.expect(200)?;
    leader
        .put(
            "/v1/routes/slow",
            &json!({"pool": "slow", "path_prefix": "/", "timeout_ms": 20000}),
        )
        .await?
        .expect(200)?;
    let http = leader.http_addr;
    wait_for("the route to serve on the leader", ELECTION, || async {
        let (s, b) = call("GET", http, "/", None, None).await?;
        ensure!(s == 200, "{s} {b}");
        Ok(())
    })
    .await?;
    // A request is in flight (the backend holds it) when the leader is told to stop.
    let in_flight = tokio::spawn(async move { call("GET", http, "/hold", None, None).await });
    tokio::time::timeout(Duration::from_secs(30), arrived.recv())
        .await
        .map_err(|_| anyhow!("the held request never reached the backend"))?;
    let old = leader.id;
    let pid = leader.pid().context("leader pid")?;
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM failed");
    wait_for(
        "new connections to the stopping node to be refused",
        Duration::from_secs(10),
        || async {
            match tokio::net::TcpStream::connect(http).await {
                Err(_) => Ok(()),
                Ok(_) => Err(anyhow!("still accepting")),
            }
        },
    )
    .await?;
    release.send_replace(true);
    let (s, b) = in_flight.await??;
    ensure!(
        s == 200 && b.contains("slowpoke"),
        "the in-flight request got {s} {b}"
    );
    let exit = leader.wait_exit(EXIT).await?;
    ensure!(exit.success(), "the node exited with {exit}");
    let others: Vec<&Node> = c.nodes().iter().filter(|n| n.id != old).collect();
    wait_for("a survivor to lead", ELECTION, || async {
        let l = others[0].leader().await?;
        ensure!(l.id != old, "still names {old}");
        Ok(())
    })
    .await?;
    let log = leader.log();
    ensure!(
        log.contains("handed leadership over"),
        "the leader did not hand over; log:\n{log}"
    );
    Ok(())
}

/// A client that retries a write with the same X-Request-Id (say, after a timeout, through
/// another node) has it applied once, even when the state changed in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_with_the_same_request_id_applies_once() -> TestResult {
    let c = TestCluster::start(3).await?;
    let leader = leader_id(&c).await?;
    let follower = c
        .ids()
        .into_iter()
        .find(|i| *i != leader)
        .context("a follower")?;
    let body = br#"{"backends":[{"id":"a","address":"127.0.0.1:9"}]}"#.to_vec();
    let id = [("x-request-id", "retry-test-1")];
    let (s, first) = call_with(
        "PUT",
        c.node(follower).admin_addr,
        "/v1/pools/once",
        &id,
        Some(body.clone()),
    )
    .await?;
    ensure!(s == 200, "first write: {s} {first}");
    let (s, b) = call_with(
        "DELETE",
        c.node(leader).admin_addr,
        "/v1/pools/once",
        &[],
        None,
    )
    .await?;
    ensure!(s == 200, "delete: {s} {b}");
    let before = revision_of(c.node(leader)).await?;
    // The "retry" arrives through the other node, after the delete.
    let (s, again) = call_with(
        "PUT",
        c.node(leader).admin_addr,
        "/v1/pools/once",
        &id,
        Some(body),
    )
    .await?;
    ensure!(s == 200, "retry: {s} {again}");
    let (a, b): (Value, Value) = (serde_json::from_str(&first)?, serde_json::from_str(&again)?);
    ensure!(
        a["revision"] == b["revision"],
        "the retry answered {again}, the first write {first}"
    );
    ensure!(
        revision_of(c.node(leader)).await? == before,
        "the retry changed the config"
    );
    let (s, _) = call_with(
        "GET",
        c.node(leader).admin_addr,
        "/v1/pools/once",
        &[],
        None,
    )
    .await?;
    ensure!(s == 404, "the retry recreated the deleted pool");
    // Every object read carries its revision as ETag, routes and pools alike.
    let a = c.node(leader).admin_addr;
    let (s, b) = call_with("PUT", a, "/v1/pools/base", &[], Some(b"{}".to_vec())).await?;
    ensure!(s == 200, "{s} {b}");
    let (s, b) = call_with(
        "PUT",
        a,
        "/v1/routes/tagged",
        &[],
        Some(br#"{"pool":"base"}"#.to_vec()),
    )
    .await?;
    ensure!(s == 200, "{s} {b}");
    let rev = serde_json::from_str::<Value>(&b)?["route"]["revision"]
        .as_u64()
        .context("route revision")?;
    for path in ["/v1/routes/tagged", "/v1/pools/base"] {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let uri = format!("http://{}{path}", c.node(follower).admin_addr).parse()?;
        let resp = client.get(uri).await?;
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        ensure!(
            etag.starts_with('"') && etag.len() > 2,
            "GET {path}: ETag {etag:?}"
        );
        if path.contains("routes") {
            ensure!(
                etag == format!("\"{rev}\""),
                "GET {path}: ETag {etag}, revision {rev}"
            );
        }
    }
    let (s, b) = call_with(
        "PUT",
        c.node(leader).admin_addr,
        "/v1/pools/x",
        &[("x-request-id", "bad id!")],
        Some(b"{}".to_vec()),
    )
    .await?;
    ensure!(
        s == 400 && b.contains("X-Request-Id"),
        "a malformed id: {s} {b}"
    );
    Ok(())
}

async fn revision_of(node: &Node) -> Result<u64> {
    let (s, b) = call("GET", node.admin_addr, "/v1/config", None, None).await?;
    ensure!(s == 200, "{s} {b}");
    let v: Value = serde_json::from_str(&b)?;
    v["revision"].as_u64().context("revision")
}
