//! The data plane, against real `gateway` processes and real `gateway demo-backend`
//! processes on loopback: write-to-leader from every node with local reads, cookie and
//! client-IP stickiness across nodes, WebSockets (and a backend removed while one is open),
//! retries, 502 and 504 answers, a route changed ten times a second under load, and the edge's
//! refusal of smuggling shapes and oversized heads.
//!
//! Each test starts its own 3-node cluster and backends on free ports; they wait on
//! conditions (applied revisions, listening sockets), never on fixed sleeps. Build the binary
//! first: `cargo build -p gateway` (scripts/test.sh does).

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use gateway_tests::DemoBackend as Demo;
use gateway_tests::{
    ELECTION, Node, Resp, TestCluster, TestResult, ensure, free_addr, note, wait_for,
};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long a committed change may take to reach every node.
const CONVERGE: Duration = Duration::from_secs(30);

/// A client for the data plane (keep-alive connections pooled).
fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One request to a node's data plane.
async fn call(
    cl: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Resp> {
    let url = format!("http://{addr}{path}");
    let mut req = Request::builder()
        .method(method.clone())
        .uri(&url)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, HeaderValue::from_str(v)?);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string())))?;
    let send = async {
        let resp = cl.request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok((parts, body))
    };
    let (parts, body) = tokio::time::timeout(Duration::from_secs(30), send)
        .await
        .map_err(|_| anyhow!("{method} {url} (host {host}): no response within 30 s"))?
        .with_context(|| format!("{method} {url} (host {host})"))?;
    Ok(Resp {
        method,
        url,
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A GET sent from source address `src` (any 127.x.y.z works on loopback), on a connection
/// of its own, so the gateway sees that client IP.
async fn get_from(src: IpAddr, addr: SocketAddr, host: &str, path: &str) -> Result<Resp> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    let stream = sock.connect(addr).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), tx.send_request(req))
        .await
        .map_err(|_| anyhow!("GET {path} from {src}: no response"))??;
    let (parts, body) = resp.into_parts();
    Ok(Resp {
        method: Method::GET,
        url: format!("http://{addr}{path}"),
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// PUTs a pool or route through `node` and returns the revision it was committed at.
async fn put(node: &Node, path: &str, body: &Value) -> Result<u64> {
    let resp = node.put(path, body).await?;
    let v = resp
        .expect_json(200)
        .with_context(|| format!("PUT {path} through node {}", node.id))?;
    v["revision"]
        .as_u64()
        .ok_or_else(|| anyhow!("{resp}: no revision"))
}

/// Waits until every node of the cluster has applied revision `rev`.
async fn converge(c: &TestCluster, rev: u64) -> Result<()> {
    wait_for(
        &format!("every node at revision {rev}"),
        CONVERGE,
        || async {
            for n in c.nodes() {
                let s = n.status().await?;
                ensure!(
                    s.revision >= rev,
                    "node {} is at revision {}",
                    n.id,
                    s.revision
                );
            }
            Ok(())
        },
    )
    .await
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.header(name).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_to_the_leader_reads_stay_local_and_stickiness_holds_across_nodes() -> TestResult
{
    let c = TestCluster::start(3).await?;
    let leader = c.wait_leader(ELECTION).await?;
    let mut local = BTreeMap::new();
    for id in c.ids() {
        local.insert(id, Demo::start(&format!("node{id}-app")).await?);
    }
    let shared = [
        Demo::start("s1").await?,
        Demo::start("s2").await?,
        Demo::start("s3").await?,
    ];
    let n1 = c.node(1);
    let backends: Vec<Value> = local
        .iter()
        .map(|(id, d)| json!({"id": d.name, "address": d.address(), "node": id}))
        .collect();
    put(
        n1,
        "/v1/pools/app",
        &json!({"prefer_local": true, "backends": backends}),
    )
    .await?;
    let three: Vec<Value> = shared
        .iter()
        .map(|d| json!({"id": d.name, "address": d.address()}))
        .collect();
    put(
        n1,
        "/v1/pools/sticky",
        &json!({"balance": "cookie", "backends": three}),
    )
    .await?;
    put(
        n1,
        "/v1/pools/affinity",
        &json!({"balance": "ip_hash", "backends": three}),
    )
    .await?;
    put(
        n1,
        "/v1/routes/app",
        &json!({"hosts": ["app.test"], "pool": "app", "writes": "leader"}),
    )
    .await?;
    put(
        n1,
        "/v1/routes/sticky",
        &json!({"hosts": ["cookie.test"], "pool": "sticky"}),
    )
    .await?;
    let rev = put(
        n1,
        "/v1/routes/affinity",
        &json!({"hosts": ["ip.test"], "pool": "affinity"}),
    )
    .await?;
    converge(&c, rev).await?;

    // Writes through every node answer from the leader's backend; reads from the node's own.
    let cl = client();
    let leader_backend = &local[&leader.id].name;
    for n in c.nodes() {
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let r = call(
                &cl,
                method.clone(),
                n.http_addr,
                "app.test",
                "/items",
                &[],
                "x",
            )
            .await?;
            let want = format!("{} from {leader_backend}\n", method.as_str().to_lowercase());
            ensure!(
                r.status == StatusCode::OK && r.text() == want,
                "{method} via node {}: {r}",
                n.id
            );
        }
        let r = call(&cl, Method::GET, n.http_addr, "app.test", "/items", &[], "").await?;
        ensure!(
            r.text() == format!("get from {}\n", local[&n.id].name),
            "GET via node {}: {r}",
            n.id
        );
    }
    note!("write-to-leader and local reads hold on every node");

    // A sticky cookie from one node pins the client on every node.
    let first = call(&cl, Method::GET, n1.http_addr, "cookie.test", "/", &[], "").await?;
    let set = first
        .header("set-cookie")
        .ok_or_else(|| anyhow!("{first}: no Set-Cookie"))?;
    let cookie = set.split(';').next().unwrap_or_default().to_string();
    let pinned = header(&first, "x-backend").to_string();
    for n in c.nodes() {
        for _ in 0..5 {
            let r = call(
                &cl,
                Method::GET,
                n.http_addr,
                "cookie.test",
                "/",
                &[("cookie", &cookie)],
                "",
            )
            .await?;
            ensure!(
                header(&r, "x-backend") == pinned && r.header("set-cookie").is_none(),
                "node {} with {cookie}: {r} (pinned to {pinned})",
                n.id
            );
        }
    }
    note!("cookie {cookie} pins to {pinned} on every node");

    // Client-IP affinity: every node sends a client to the same backend.
    let mut spread = BTreeSet::new();
    for i in 2..30u8 {
        let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, i));
        let mut seen = BTreeSet::new();
        for n in c.nodes() {
            for _ in 0..2 {
                let r = get_from(src, n.http_addr, "ip.test", "/").await?;
                ensure!(r.status == StatusCode::OK, "{r}");
                seen.insert(header(&r, "x-backend").to_string());
            }
        }
        ensure!(seen.len() == 1, "client {src} was served by {seen:?}");
        spread.extend(seen);
    }
    ensure!(spread.len() >= 2, "28 clients all hashed to {spread:?}");
    note!("ip_hash is sticky across nodes, clients spread over {spread:?}");
    Ok(())
}

/// A minimal WebSocket client (RFC 6455): handshake, masked text frames out, frames in.
struct Ws {
    stream: TcpStream,
    backend: String,
}

impl Ws {
    async fn connect(addr: SocketAddr, host: &str) -> Result<Ws> {
        let mut stream = TcpStream::connect(addr).await?;
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte))
                .await
                .map_err(|_| anyhow!("no handshake answer"))??;
            if n == 0 {
                bail!(
                    "closed during the handshake: {}",
                    String::from_utf8_lossy(&head)
                );
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        ensure!(
            head.starts_with("http/1.1 101"),
            "handshake refused: {head}"
        );
        // The accept key of the RFC's example nonce.
        ensure!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "bad accept key: {head}"
        );
        let backend = head
            .lines()
            .find_map(|l| l.strip_prefix("x-backend: "))
            .unwrap_or_default()
            .trim()
            .to_string();
        Ok(Ws { stream, backend })
    }

    async fn send_text(&mut self, text: &str) -> Result<()> {
        let payload = text.as_bytes();
        let mask: [u8; 4] = rand::random();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    async fn recv_text(&mut self) -> Result<String> {
        let read = async {
            let mut h = [0u8; 2];
            self.stream.read_exact(&mut h).await?;
            ensure!(
                h[0] & 0x0f == 1,
                "expected a text frame, got opcode {}",
                h[0] & 0x0f
            );
            let len = match h[1] & 0x7f {
                126 => u64::from(self.stream.read_u16().await?),
                127 => self.stream.read_u64().await?,
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).await?;
            anyhow::Ok(String::from_utf8(payload)?)
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .map_err(|_| anyhow!("no echo within 30 s"))?
    }

    async fn echo(&mut self, text: &str) -> Result<()> {
        self.send_text(text).await?;
        let back = self.recv_text().await?;
        ensure!(back == text, "sent {text:?}, got {back:?}");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_echo_and_stay_open_while_backends_are_removed() -> TestResult {
    let c = TestCluster::start(3).await?;
    c.wait_leader(ELECTION).await?;
    let w1 = Demo::start("w1").await?;
    let w2 = Demo::start("w2").await?;
    let by_name = |n: &str| if n == "w1" { &w1 } else { &w2 };
    let n2 = c.node(2);
    let both = json!({"backends": [
        {"id": "w1", "address": w1.address()},
        {"id": "w2", "address": w2.address()},
    ]});
    put(n2, "/v1/pools/ws", &both).await?;
    let rev = put(
        n2,
        "/v1/routes/ws",
        &json!({"hosts": ["ws.test"], "path_prefix": "/ws", "pool": "ws"}),
    )
    .await?;
    converge(&c, rev).await?;

    let mut ws = Ws::connect(c.node(1).http_addr, "ws.test").await?;
    ensure!(
        ws.backend == "w1" || ws.backend == "w2",
        "unknown backend {:?}",
        ws.backend
    );
    for i in 0..5 {
        ws.echo(&format!("hello {i}")).await?;
    }
    ws.echo(&"x".repeat(70_000)).await?;
    note!("WebSocket through node 1 echoes, served by {}", ws.backend);

    // Remove the other backend: the open WebSocket keeps working, new ones go to the rest.
    let kept = ws.backend.clone();
    let only = json!({"backends": [{"id": kept, "address": by_name(&kept).address()}]});
    let rev = put(c.node(3), "/v1/pools/ws", &only).await?;
    converge(&c, rev).await?;
    ws.echo("still here").await?;
    for n in c.nodes() {
        let mut other = Ws::connect(n.http_addr, "ws.test").await?;
        ensure!(
            other.backend == kept,
            "node {} sent a new WebSocket to {}",
            n.id,
            other.backend
        );
        other.echo("new").await?;
    }
    // Even removing the open socket's own backend does not cut the established tunnel.
    let gone = if kept == "w1" { "w2" } else { "w1" };
    let swapped = json!({"backends": [{"id": gone, "address": by_name(gone).address()}]});
    let rev = put(n2, "/v1/pools/ws", &swapped).await?;
    converge(&c, rev).await?;
    ws.echo("after my backend left the pool").await?;
    Ok(())
}

/// Writes `bytes` to `addr` on a fresh connection and reads until it is closed.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    ensure!(read.is_ok(), "the gateway neither answered nor closed");
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_timeouts_and_malformed_requests_get_clear_answers() -> TestResult {
    let c = TestCluster::start(3).await?;
    c.wait_leader(ELECTION).await?;
    let live = Demo::start("live").await?;
    let (dead1, dead2) = (free_addr()?, free_addr()?);
    let n1 = c.node(1);
    put(
        n1,
        "/v1/pools/dead",
        &json!({"backends": [
            {"id": "d1", "address": dead1.to_string()},
            {"id": "d2", "address": dead2.to_string()},
        ]}),
    )
    .await?;
    put(
        n1,
        "/v1/pools/mixed",
        &json!({"backends": [
            {"id": "d1", "address": dead1.to_string()},
            {"id": "live", "address": live.address()},
        ]}),
    )
    .await?;
    put(
        n1,
        "/v1/pools/live",
        &json!({"backends": [{"id": "live", "address": live.address()}]}),
    )
    .await?;
    put(
        n1,
        "/v1/routes/dead",
        &json!({"hosts": ["dead.test"], "pool": "dead", "retries": 3, "retry_delay_ms": 20}),
    )
    .await?;
    put(
        n1,
        "/v1/routes/mixed",
        &json!({"hosts": ["mixed.test"], "pool": "mixed", "retries": 1}),
    )
    .await?;
    let rev = put(
        n1,
        "/v1/routes/slow",
        &json!({"hosts": ["slow.test"], "pool": "live", "timeout_ms": 300}),
    )
    .await?;
    converge(&c, rev).await?;
    let cl = client();
    for n in c.nodes() {
        // Connection failures are retried on the other backend...
        for _ in 0..4 {
            let r = call(&cl, Method::POST, n.http_addr, "mixed.test", "/", &[], "x").await?;
            ensure!(r.text() == "post from live\n", "node {}: {r}", n.id);
        }
        // ...and when every backend is down the 502 names the route, the backend and cause.
        let r = call(&cl, Method::GET, n.http_addr, "dead.test", "/", &[], "").await?;
        ensure!(r.status == StatusCode::BAD_GATEWAY, "{r}");
        let text = r.text();
        ensure!(
            text.starts_with("route dead: backend d") && text.contains("failed: connect"),
            "{r}"
        );
        // A backend slower than the route's timeout gives 504 naming it.
        let r = call(
            &cl,
            Method::GET,
            n.http_addr,
            "slow.test",
            "/slow?ms=5000",
            &[],
            "",
        )
        .await?;
        ensure!(r.status == StatusCode::GATEWAY_TIMEOUT, "{r}");
        ensure!(
            r.text()
                == format!(
                    "route slow: backend live ({}) timed out after 300ms\n",
                    live.addr
                ),
            "{r}"
        );
        let r = call(
            &cl,
            Method::GET,
            n.http_addr,
            "slow.test",
            "/slow?ms=10",
            &[],
            "",
        )
        .await?;
        ensure!(r.text() == "get from live\n", "{r}");
    }
    note!("retries, 502 and 504 as expected on every node");

    // Request smuggling shapes and oversized heads are refused at the edge.
    let addr = c.node(2).http_addr;
    for (what, input) in [
        (
            "Content-Length with Transfer-Encoding",
            "POST / HTTP/1.1\r\nHost: live.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "two Content-Length",
            "POST / HTTP/1.1\r\nHost: live.test\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        ),
        (
            "conflicting Content-Length",
            "POST / HTTP/1.1\r\nHost: live.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
        ),
        (
            "Transfer-Encoding not chunked",
            "POST / HTTP/1.1\r\nHost: live.test\r\nTransfer-Encoding: identity\r\n\r\n",
        ),
    ] {
        let out = raw(addr, input.as_bytes()).await?;
        ensure!(out.starts_with("HTTP/1.1 400"), "{what}: {out}");
    }
    let big = "v".repeat(80 * 1024);
    let out = raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await?;
    ensure!(
        out.starts_with("HTTP/1.1 431"),
        "oversized head: {}",
        &out[..out.len().min(200)]
    );
    note!("smuggling shapes get 400, an 80 KiB head 431");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_changed_ten_times_a_second_under_load_fails_no_request() -> TestResult {
    // Three data plane workers per node (each a thread with its own event loop), so that the
    // load below is spread over workers that share the route table.
    let c = TestCluster::start_with(3, Box::new(|_| vec!["--workers".into(), "3".into()])).await?;
    c.wait_leader(ELECTION).await?;
    for n in c.nodes() {
        let pid = n.pid().context("node not running")?;
        let mut workers = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let comm = std::fs::read_to_string(task?.path().join("comm")).unwrap_or_default();
            if comm.starts_with("gateway-http-") {
                workers.push(comm.trim().to_string());
            }
        }
        workers.sort();
        ensure!(
            workers == ["gateway-http-0", "gateway-http-1", "gateway-http-2"],
            "node {}: data plane threads {workers:?}",
            n.id
        );
    }
    let (a, b) = (Demo::start("flip-a").await?, Demo::start("flip-b").await?);
    let n1 = c.node(1);
    put(
        n1,
        "/v1/pools/pa",
        &json!({"backends": [{"id": "a", "address": a.address()}]}),
    )
    .await?;
    put(
        n1,
        "/v1/pools/pb",
        &json!({"backends": [{"id": "b", "address": b.address()}]}),
    )
    .await?;
    let rev = put(
        n1,
        "/v1/routes/flip",
        &json!({"hosts": ["flip.test"], "pool": "pa"}),
    )
    .await?;
    converge(&c, rev).await?;

    let addrs: Vec<SocketAddr> = c.nodes().iter().map(|n| n.http_addr).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (addrs, stop, done) = (addrs.clone(), stop.clone(), done.clone());
        load.push(tokio::spawn(async move {
            let cl = client();
            let mut failures = Vec::new();
            let mut served = BTreeSet::new();
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) {
                let addr = addrs[i % addrs.len()];
                i += 1;
                let method = if i % 2 == 0 {
                    Method::GET
                } else {
                    Method::POST
                };
                match call(&cl, method.clone(), addr, "flip.test", "/", &[], "payload").await {
                    Ok(r) => {
                        let who = header(&r, "x-backend").to_string();
                        let want = format!("{} from {who}\n", method.as_str().to_lowercase());
                        if r.status != StatusCode::OK || r.text() != want {
                            failures.push(format!("{r}"));
                        }
                        served.insert(who);
                    }
                    Err(e) => failures.push(format!("{e:#}")),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (failures, served)
        }));
    }
    // Flip the route between the pools ten times a second for three seconds, through every
    // node in turn (followers forward to the leader).
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last = rev;
    for i in 0..30 {
        tick.tick().await;
        let pool = if i % 2 == 0 { "pb" } else { "pa" };
        let node = &c.nodes()[i % 3];
        last = put(
            node,
            "/v1/routes/flip",
            &json!({"hosts": ["flip.test"], "pool": pool}),
        )
        .await?;
    }
    converge(&c, last).await?;
    let settled = done.load(Ordering::Relaxed);
    wait_for("more requests after the last change", CONVERGE, || async {
        ensure!(done.load(Ordering::Relaxed) >= settled + 20, "load stalled");
        Ok(())
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    let mut served = BTreeSet::new();
    for l in load {
        let (f, s) = l.await?;
        failures.extend(f);
        served.extend(s);
    }
    let total = done.load(Ordering::Relaxed);
    note!("{total} requests during 30 route changes, served by {served:?}");
    ensure!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    ensure!(
        served.contains("flip-a") && served.contains("flip-b"),
        "served by {served:?}"
    );
    // The last change (i = 29: pa) is in force everywhere.
    for n in c.nodes() {
        let r = call(
            &client(),
            Method::GET,
            n.http_addr,
            "flip.test",
            "/",
            &[],
            "",
        )
        .await?;
        ensure!(r.text() == "get from flip-a\n", "node {}: {r}", n.id);
    }
    Ok(())
}

/// `gateway backend drain`: the drained backend gets no new request on any node while the one
/// it is serving finishes; `--undo` brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_finishes_its_request_and_gets_no_new_one() -> TestResult {
    let c = TestCluster::start(3).await?;
    let leader = c.wait_leader(ELECTION).await?;
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel(1);
    let (release, release_rx) = tokio::sync::watch::channel(false);
    let hold = gateway_tests::holding_backend(arrived_tx, release_rx).await?;
    let other = Demo::start("other").await?;
    let node = c.node(leader.id);
    put(
        node,
        "/v1/pools/d",
        &json!({"backends": [{"id": "held", "address": hold.to_string()}]}),
    )
    .await?;
    let rev = put(
        node,
        "/v1/routes/d",
        &json!({"hosts": ["drain.test"], "pool": "d", "timeout_ms": 30000}),
    )
    .await?;
    converge(&c, rev).await?;
    // A request is under way on the backend about to be drained.
    let http = c.node(leader.id).http_addr;
    let in_flight = tokio::spawn(async move {
        call(&client(), Method::GET, http, "drain.test", "/hold", &[], "").await
    });
    tokio::time::timeout(Duration::from_secs(30), arrived.recv())
        .await
        .map_err(|_| anyhow!("the held request never reached its backend"))?;
    let pool = json!({"backends": [
        {"id": "held", "address": hold.to_string()},
        {"id": "other", "address": other.address()},
    ]});
    put(node, "/v1/pools/d", &pool).await?;
    let server = c.node(leader.id).cluster_addr.to_string();
    let out = gateway_tests::run_gateway(
        &["backend", "drain", "d", "held", "--server", &server],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(out.status.success(), "backend drain: {out:?}");
    let rev = node.status().await?.revision;
    converge(&c, rev).await?;
    for n in c.nodes() {
        for i in 0..6 {
            let r = call(
                &client(),
                Method::GET,
                n.http_addr,
                "drain.test",
                "/",
                &[],
                "",
            )
            .await?;
            ensure!(
                r.status == 200 && String::from_utf8_lossy(&r.body).contains("from other"),
                "request {i} through node {} went to {r}",
                n.id
            );
        }
    }
    release.send_replace(true);
    let r = in_flight.await??;
    ensure!(
        r.status == 200 && r.body.as_ref() == b"slowpoke\n",
        "the in-flight request got {r}"
    );
    let out = gateway_tests::run_gateway(
        &[
            "backend", "drain", "d", "held", "--undo", "--server", &server,
        ],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(out.status.success(), "backend drain --undo: {out:?}");
    let rev = node.status().await?.revision;
    converge(&c, rev).await?;
    wait_for(
        "the undrained backend to serve again",
        Duration::from_secs(30),
        || async {
            let r = call(&client(), Method::GET, http, "drain.test", "/", &[], "").await?;
            ensure!(
                String::from_utf8_lossy(&r.body).contains("slowpoke"),
                "answered by {r}"
            );
            Ok(())
        },
    )
    .await?;
    Ok(())
}
