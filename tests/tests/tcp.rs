//! TCP routes on real `gateway` processes: a real Redis server (Debian's `redis-server`,
//! driven with `redis-cli`, both in `.ci/packages`) behind TCP routes on every node, with a
//! backend killed mid-run; listeners added and removed at runtime; an address that cannot be
//! bound reported on `/status`; the PROXY protocol header a backend receives.
//!
//! Every node of the test cluster runs on 127.0.0.1, so each node gets its own TCP route
//! (`nodes: [id]`) on its own port, as a real deployment would give every node the same port
//! on its own address. Build the binary first: `cargo build -p gateway`.

use anyhow::{Context, Result, bail};
use gateway_tests::{TestCluster, TestResult, ensure, free_addr, note, wait_for};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How long a server process may take to start listening.
const START: Duration = Duration::from_secs(30);
/// How long a committed change may take to reach every node.
const CONVERGE: Duration = Duration::from_secs(30);

/// A `redis-server` on a free loopback port, without persistence; killed when dropped.
struct Redis {
    addr: SocketAddr,
    child: Option<tokio::process::Child>,
}

impl Redis {
    async fn start() -> Result<Redis> {
        let addr = free_addr()?;
        let child = tokio::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context(
                "running redis-server (Debian package redis-server, listed in .ci/packages)",
            )?;
        let r = Redis {
            addr,
            child: Some(child),
        };
        wait_for(&format!("redis-server on {addr}"), START, || async {
            let out = cli(addr, &["PING"]).await?;
            ensure!(out == "PONG", "PING answered {out:?}");
            Ok(())
        })
        .await?;
        Ok(r)
    }

    async fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }
}

/// `redis-cli -h 127.0.0.1 -p PORT ARGS`: its output, trimmed (empty for a missing key); an
/// error if it failed.
async fn cli(addr: SocketAddr, args: &[&str]) -> Result<String> {
    let run = tokio::process::Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .context("redis-cli took over 20 s")?
        .context("running redis-cli (Debian package redis-tools, listed in .ci/packages)")?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || text.starts_with("Could not connect") || text.starts_with("Error") {
        bail!(
            "redis-cli -p {} {}: {text} {}",
            addr.port(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(text)
}

/// Waits until every node has applied `revision`.
async fn converge(c: &TestCluster, revision: u64) -> Result<()> {
    for node in c.nodes() {
        wait_for(
            &format!("node {} to apply revision {revision}", node.id),
            CONVERGE,
            || async {
                let st = node.status().await?;
                ensure!(st.revision >= revision, "at revision {}", st.revision);
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

/// PUT through node 1; the revision it answered with.
async fn put(c: &TestCluster, path: &str, body: Value) -> Result<u64> {
    let resp = c.node(1).put(path, &body).await?;
    resp.expect(200)?;
    resp.revision_header()
}

/// This node's TCP listeners as `/status` shows them.
async fn listeners(c: &TestCluster, id: u64) -> Result<Vec<Value>> {
    let st = c.node(id).get("/status").await?.expect_json(200)?;
    Ok(st["tcp_listeners"].as_array().cloned().unwrap_or_default())
}

/// Redis through a TCP route on each of 3 nodes: keys set through one node are read through
/// every other (client-IP affinity picks the same backend everywhere); when that backend is
/// killed, new connections through every node fail over to the other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_through_every_node_and_failover() -> TestResult {
    let c = TestCluster::start(3).await?;
    let mut redis = [Redis::start().await?, Redis::start().await?];
    put(
        &c,
        "/v1/pools/redis",
        json!({"balance": "ip_hash", "backends": [
            {"id": "r1", "address": redis[0].addr.to_string()},
            {"id": "r2", "address": redis[1].addr.to_string()}]}),
    )
    .await?;
    let mut fronts = Vec::new();
    let mut rev = 0;
    for id in c.ids() {
        let listen = free_addr()?;
        rev = put(
            &c,
            &format!("/v1/tcp-routes/redis-{id}"),
            json!({"listen": listen.to_string(), "pool": "redis", "nodes": [id],
                   "idle_timeout_ms": 60000, "max_connections": 100}),
        )
        .await?;
        fronts.push((id, listen));
    }
    converge(&c, rev).await?;
    for &(id, front) in &fronts {
        wait_for(
            &format!("node {id} to listen on {front}"),
            CONVERGE,
            || async {
                TcpStream::connect(front).await?;
                Ok(())
            },
        )
        .await?;
        let status = listeners(&c, id).await?;
        ensure!(
            status.len() == 1 && status[0]["listening"] == json!(true),
            "node {id} /status tcp_listeners: {status:?}"
        );
    }

    for &(id, front) in &fronts {
        let set = cli(front, &["SET", &format!("k{id}"), &format!("v{id}")]).await?;
        ensure!(set == "OK", "SET through node {id}: {set}");
    }
    for &(id, front) in &fronts {
        for &(other, _) in &fronts {
            let got = cli(front, &["GET", &format!("k{other}")]).await?;
            ensure!(
                got == format!("v{other}"),
                "GET k{other} through node {id}: {got}"
            );
        }
    }
    // Which server holds them: the one to kill.
    let holder = if cli(redis[0].addr, &["GET", "k1"]).await? == "v1" {
        0
    } else {
        1
    };
    let other = 1 - holder;
    note!("the keys are on redis {}; killing it", redis[holder].addr);
    redis[holder].kill().await?;
    for round in 0..3 {
        for &(id, front) in &fronts {
            let key = format!("after{round}-{id}");
            let set = cli(front, &["SET", &key, "x"]).await?;
            ensure!(set == "OK", "SET through node {id} after the kill: {set}");
            let got = cli(front, &["GET", &key]).await?;
            ensure!(got == "x", "GET through node {id} after the kill: {got}");
        }
    }
    let direct = cli(redis[other].addr, &["GET", "after0-1"]).await?;
    ensure!(
        direct == "x",
        "the surviving server took the writes: {direct}"
    );

    // Removing a route closes its listener; adding it back opens it again.
    let (id, front) = fronts[0];
    let resp = c
        .node(2)
        .delete(&format!("/v1/tcp-routes/redis-{id}"))
        .await?;
    resp.expect(200)?;
    converge(&c, resp.revision_header()?).await?;
    wait_for(&format!("{front} to stop listening"), CONVERGE, || async {
        ensure!(TcpStream::connect(front).await.is_err(), "still accepting");
        Ok(())
    })
    .await?;
    ensure!(
        listeners(&c, id).await?.is_empty(),
        "node {id} still lists the route"
    );
    let rev = put(
        &c,
        &format!("/v1/tcp-routes/redis-{id}"),
        json!({"listen": front.to_string(), "pool": "redis", "nodes": [id]}),
    )
    .await?;
    converge(&c, rev).await?;
    wait_for(&format!("{front} to serve again"), CONVERGE, || async {
        ensure!(cli(front, &["PING"]).await? == "PONG", "no PONG");
        Ok(())
    })
    .await?;
    Ok(())
}

/// A listen address taken by another process is reported on each node's `/status` (and
/// retried: once it is free the node listens); a route whose pool does not exist, or a second
/// route on the same address, is refused; the backend receives a PROXY protocol v1 header
/// naming the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_failures_on_status_and_proxy_protocol() -> TestResult {
    let c = TestCluster::start(3).await?;
    let backend = TcpListener::bind("127.0.0.1:0").await?;
    let baddr = backend.local_addr()?;
    put(
        &c,
        "/v1/pools/raw",
        json!({"backends": [{"id": "b", "address": baddr.to_string()}]}),
    )
    .await?;

    let taken = TcpListener::bind("127.0.0.1:0").await?;
    let taken_addr = taken.local_addr()?;
    let rev = put(
        &c,
        "/v1/tcp-routes/blocked",
        json!({"listen": taken_addr.to_string(), "pool": "raw"}),
    )
    .await?;
    converge(&c, rev).await?;
    for id in c.ids() {
        wait_for(
            &format!("node {id} to report {taken_addr} on /status"),
            CONVERGE,
            || async {
                let l = listeners(&c, id).await?;
                ensure!(
                    l.len() == 1
                        && l[0]["route"] == json!("blocked")
                        && l[0]["listening"] == json!(false)
                        && l[0]["error"]
                            .as_str()
                            .is_some_and(|e| e.contains("cannot listen")),
                    "tcp_listeners: {l:?}"
                );
                Ok(())
            },
        )
        .await?;
    }
    note!(
        "every node reports the taken address: {:?}",
        listeners(&c, 1).await?
    );
    // Freed: exactly one node (they share 127.0.0.1) binds it on its next try.
    drop(taken);
    wait_for("one node to take the freed address", CONVERGE, || async {
        let mut listening = 0;
        for id in c.ids() {
            listening += listeners(&c, id)
                .await?
                .iter()
                .filter(|l| l["listening"] == json!(true))
                .count();
        }
        ensure!(listening == 1, "{listening} nodes listen");
        Ok(())
    })
    .await?;

    for (what, path, body, says) in [
        (
            "a missing pool",
            "/v1/tcp-routes/x",
            json!({"listen": "127.0.0.1:1", "pool": "nope"}),
            "pool 'nope' does not exist",
        ),
        (
            "an address in use by another route",
            "/v1/tcp-routes/y",
            json!({"listen": taken_addr.to_string(), "pool": "raw"}),
            "already listens",
        ),
        (
            "a host name",
            "/v1/tcp-routes/z",
            json!({"listen": "localhost:6380", "pool": "raw"}),
            "listen",
        ),
    ] {
        let resp = c.node(2).put(path, &body).await?;
        ensure!(
            (400..500).contains(&resp.status.as_u16()) && resp.text().contains(says),
            "{what}: {} {}",
            resp.status,
            resp.text()
        );
    }

    // PROXY protocol v1 through node 3.
    let front = free_addr()?;
    let rev = put(
        &c,
        "/v1/tcp-routes/pp",
        json!({"listen": front.to_string(), "pool": "raw", "nodes": [3], "proxy_protocol": "v1"}),
    )
    .await?;
    converge(&c, rev).await?;
    let mut client = wait_for(&format!("{front} to listen"), CONVERGE, || async {
        Ok(TcpStream::connect(front).await?)
    })
    .await?;
    client.write_all(b"hello\n").await?;
    let (conn, _) = tokio::time::timeout(Duration::from_secs(20), backend.accept()).await??;
    let mut lines = BufReader::new(conn).lines();
    let header = lines.next_line().await?.unwrap_or_default();
    let want = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}",
        client.local_addr()?.port(),
        front.port()
    );
    ensure!(
        header.trim_end() == want,
        "header {header:?}, want {want:?}"
    );
    let first = lines.next_line().await?.unwrap_or_default();
    ensure!(first == "hello", "then the client's bytes: {first:?}");
    Ok(())
}

// ---- TCP routes in the CLI and config files (issue 7) ----

/// `gateway ARGS --server SERVER`, which must succeed; its stdout.
async fn gw_ok(server: &str, args: &[&str]) -> Result<String> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--server", server]);
    let out = gateway_tests::run_gateway(&all, Duration::from_secs(90)).await?;
    ensure!(
        out.status.success(),
        "`gateway {}` failed:\n{}",
        all.join(" "),
        out.dump()
    );
    Ok(out.stdout)
}

/// An echo server: every connection gets back what it sends.
async fn echo_backend() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// Whether a line sent to `addr` comes back.
async fn echoes(addr: SocketAddr) -> Result<()> {
    let s = TcpStream::connect(addr).await?;
    let (r, mut w) = s.into_split();
    w.write_all(b"ping\n").await?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(r).read_line(&mut line),
    )
    .await
    .context("no echo within 10 s")??;
    ensure!(line == "ping\n", "echoed {line:?}");
    Ok(())
}

/// TCP routes are managed with `gateway tcp-route add|list|get|rm` over the admin gRPC API,
/// and travel in `gateway config export` / `config apply` files; export names the
/// certificates (never their keys) and apply checks they exist without changing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_routes_through_the_cli_and_config_files() -> TestResult {
    let c = TestCluster::start(1).await?;
    let server = c.node(1).cluster_addr.to_string();
    let s = server.as_str();
    let backend = echo_backend().await?;
    put(
        &c,
        "/v1/pools/raw",
        json!({"backends": [{"id": "e", "address": backend.to_string()}]}),
    )
    .await?;
    let listen = free_addr()?;
    let listen_s = listen.to_string();
    let out = gw_ok(
        s,
        &[
            "tcp-route",
            "add",
            "echo",
            "--listen",
            &listen_s,
            "--pool",
            "raw",
            "--max-connections",
            "50",
        ],
    )
    .await?;
    ensure!(out.contains("tcp-route echo created"), "{out}");
    wait_for("the CLI's TCP route to echo", CONVERGE, || echoes(listen)).await?;

    let list = gw_ok(s, &["tcp-route", "list"]).await?;
    ensure!(
        list.contains("echo") && list.contains(&listen_s) && list.contains("raw"),
        "tcp-route list: {list}"
    );
    let got: Value =
        serde_json::from_str(&gw_ok(s, &["tcp-route", "get", "echo", "--output", "json"]).await?)?;
    ensure!(
        got["tcp_route"]["max_connections"] == json!(50),
        "tcp-route get: {got}"
    );
    // Adding it again without --replace is refused, saying how to overwrite.
    let mut again = vec![
        "tcp-route",
        "add",
        "echo",
        "--listen",
        &listen_s,
        "--pool",
        "raw",
    ];
    again.extend(["--server", s]);
    let out = gateway_tests::run_gateway(&again, Duration::from_secs(90)).await?;
    ensure!(
        !out.status.success() && out.stderr.contains("--replace"),
        "a second add: {}",
        out.dump()
    );
    // Bad input: a clear error naming the field.
    let mut bad = vec![
        "tcp-route",
        "add",
        "bad",
        "--listen",
        "nowhere",
        "--pool",
        "raw",
    ];
    bad.extend(["--server", s]);
    let out = gateway_tests::run_gateway(&bad, Duration::from_secs(90)).await?;
    ensure!(
        !out.status.success() && out.stderr.contains("listen"),
        "a bad listen address: {}",
        out.dump()
    );

    // A certificate: export names it, never its key.
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["tcp.test".to_string()])?.self_signed(&key)?;
    put(
        &c,
        "/v1/certs/site",
        json!({"cert_pem": cert.pem(), "key_pem": key.serialize_pem()}),
    )
    .await?;
    let config = c.node(1).get("/v1/config").await?.expect_json(200)?;
    ensure!(
        config["tcp_routes"][0]["name"] == json!("echo")
            && config["certs"][0]["name"] == json!("site")
            && !config.to_string().contains("PRIVATE KEY"),
        "GET /v1/config shows TCP routes and certificates without keys: {config}"
    );
    let exported = gw_ok(s, &["config", "export"]).await?;
    ensure!(
        exported.contains("[[tcp_routes]]")
            && exported.contains(&listen_s)
            && exported.contains("certs = [\"site\"]")
            && !exported.contains("PRIVATE KEY"),
        "export: {exported}"
    );
    let file = c.dir().join("cluster.toml");
    std::fs::write(&file, &exported)?;
    let f = file.to_str().context("utf-8 path")?;
    let out = gw_ok(s, &["config", "apply", "-f", f]).await?;
    ensure!(out.contains("nothing to change"), "re-apply: {out}");

    // Without the TCP route in the file, apply deletes it and the node stops listening.
    let start = exported
        .find("[[tcp_routes]]")
        .context("tcp_routes in export")?;
    std::fs::write(&file, format!("{}\n", &exported[..start]))?;
    let out = gw_ok(s, &["config", "apply", "-f", f]).await?;
    ensure!(out.contains("- tcp-route echo"), "apply without it: {out}");
    wait_for("the listener to close", CONVERGE, || async {
        ensure!(TcpStream::connect(listen).await.is_err(), "still accepting");
        Ok(())
    })
    .await?;
    let certs: Value = c.node(1).get("/v1/certs").await?.expect_json(200)?;
    ensure!(
        certs.to_string().contains("\"site\""),
        "apply left the certificate alone: {certs}"
    );
    // Applying the export again brings it back.
    std::fs::write(&file, &exported)?;
    let out = gw_ok(s, &["config", "apply", "-f", f]).await?;
    ensure!(out.contains("+ tcp-route echo"), "apply with it: {out}");
    wait_for("the TCP route to echo again", CONVERGE, || echoes(listen)).await?;

    // A file naming a certificate that does not exist is refused, changing nothing.
    std::fs::write(
        &file,
        exported.replace("certs = [\"site\"]", "certs = [\"site\", \"nope\"]"),
    )?;
    let mut args = vec!["config", "apply", "-f", f];
    args.extend(["--server", s]);
    let out = gateway_tests::run_gateway(&args, Duration::from_secs(90)).await?;
    ensure!(
        !out.status.success() && out.stderr.contains("certificate 'nope'"),
        "a missing certificate: {}",
        out.dump()
    );

    let out = gw_ok(s, &["tcp-route", "rm", "echo"]).await?;
    ensure!(out.contains("tcp-route echo removed"), "{out}");
    let list = gw_ok(s, &["tcp-route", "list"]).await?;
    ensure!(list.contains("no TCP routes"), "{list}");
    Ok(())
}
