//! Overload protection against a real `gateway` process: the memory guard sheds with a fast
//! 503 (and closes idle keep-alive connections) above its soft mark, accepts nothing at its
//! limit, and recovers by itself when memory falls, while the admin API keeps answering.
//!
//! Memory is raised for real inside the node with the hidden `--debug-ballast` (the admin
//! port's `POST /debug/ballast {"mb": N}` holds N MiB of touched memory).

use anyhow::{Context, Result, anyhow};
use gateway_tests::{
    ELECTION, Node, SwitchBackend, TestCluster, TestResult, ensure, note, wait_for,
};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHANGE: Duration = Duration::from_secs(30);

async fn memory(n: &Node) -> Result<Value> {
    let s = n.get("/status").await?.expect_json(200)?;
    Ok(s["memory"].clone())
}

async fn wait_pressure(n: &Node, want: &str) -> Result<Value> {
    wait_for(&format!("memory pressure {want}"), CHANGE, || async {
        let m = memory(n).await?;
        ensure!(m["pressure"] == want, "memory: {m}");
        Ok(m)
    })
    .await
}

async fn ballast(n: &Node, mb: u64) -> Result<()> {
    n.http()
        .post_json(n.admin_addr, "/debug/ballast", &json!({"mb": mb}))
        .await?
        .expect(200)?;
    Ok(())
}

/// One request on a fresh connection: the status line and the whole answer.
async fn request(n: &Node) -> Result<String> {
    let mut s = TcpStream::connect(n.http_addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .context("no answer within 30 s")??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_guard_sheds_refuses_and_recovers() -> TestResult {
    let mut c = TestCluster::new()?;
    c.init_with(1, &["--memory-limit", "700MiB", "--debug-ballast"])
        .await?;
    c.wait_leader(ELECTION).await?;
    let n = c.node(1);
    let a = SwitchBackend::start("a").await?;
    n.put(
        "/v1/pools/web",
        &json!({"backends": [{"id": "a", "address": a.address()}]}),
    )
    .await?
    .expect(200)?;
    n.put(
        "/v1/routes/app",
        &json!({"hosts": ["app.test"], "pool": "web"}),
    )
    .await?
    .expect(200)?;
    wait_for("the route to serve", CHANGE, || async {
        let r = request(n).await?;
        ensure!(r.starts_with("HTTP/1.1 200"), "{r}");
        Ok(())
    })
    .await?;
    let m = wait_pressure(n, "normal").await?;
    let rss = m["rss"].as_u64().ok_or_else(|| anyhow!("no rss in {m}"))?;
    ensure!(
        m["limit"] == 700u64 << 20 && m["soft"] == 560u64 << 20,
        "{m}"
    );
    // The marks below assume a resting node well under 80 MiB.
    ensure!(
        rss < 80 << 20,
        "the node rests at {rss} bytes, too much for this test's marks"
    );

    // A keep-alive client connection, idle when the pressure comes.
    let mut idle = TcpStream::connect(n.http_addr).await?;
    idle.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    let got = idle.read(&mut buf).await?;
    ensure!(
        buf[..got].starts_with(b"HTTP/1.1 200"),
        "keep-alive request failed"
    );

    // Above the soft mark (560 MiB): new connections get a fast 503, idle ones are closed.
    note!("holding 600 MiB");
    ballast(n, 600).await?;
    let m = wait_pressure(n, "shedding").await?;
    note!("shedding at {m}");
    let r = request(n).await?;
    ensure!(
        r.starts_with("HTTP/1.1 503") && r.contains("Retry-After: 1"),
        "{r}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf)).await;
    ensure!(
        matches!(closed, Ok(Ok(0))),
        "the idle connection stayed open: {closed:?}"
    );

    // At the limit: nothing is accepted; a request waits in the backlog ...
    note!("holding 760 MiB");
    ballast(n, 760).await?;
    wait_pressure(n, "refusing").await?;
    let waiting = tokio::spawn({
        let addr = n.http_addr;
        async move {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                .await?;
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await??;
            anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
        }
    });
    // ... the admin API still answers (it is never shed) ...
    n.get("/leader").await?.expect(200)?;
    // ... and when memory falls, the node recovers by itself and serves the waiting request.
    note!("freeing the ballast");
    ballast(n, 0).await?;
    wait_pressure(n, "normal").await?;
    let r = waiting
        .await?
        .map_err(|e| anyhow!("the request sent while the node was refusing: {e:#}"))?;
    ensure!(
        r.starts_with("HTTP/1.1 200"),
        "the request that waited got: {r}"
    );
    let r = request(n).await?;
    ensure!(r.starts_with("HTTP/1.1 200"), "after recovery: {r}");
    Ok(())
}

/// Bad limits are refused at start with one line naming the flag.
#[tokio::test]
async fn a_bad_memory_limit_is_one_error_line() -> TestResult {
    let c = TestCluster::new()?;
    for bad in ["lots", "1MiB", "150%"] {
        let spec = c.spec(1)?;
        let mut args = c.init_args(&spec);
        args.extend(["--memory-limit".to_string(), bad.to_string()]);
        let out = gateway_tests::run_gateway(&args, gateway_tests::EXIT).await?;
        let line = out.expect_error_naming(&["--memory-limit"])?;
        note!("--memory-limit {bad}: {line}");
    }
    Ok(())
}

// ---- Node-wide limits (replicated `limits`) ----

/// One request on a fresh connection to `path`, closed after the answer.
async fn request_path(n: &Node, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(n.http_addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .context("no answer within 30 s")??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Sends a keep-alive request on `s` and reads the answer's head (the demo backend's bodies
/// are short enough to come with it).
async fn keep_alive_request(s: &mut TcpStream, within: Duration) -> Result<String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, s.read(&mut buf))
        .await
        .context("no answer")??;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_limits_shed_requests_hold_connections_and_change_at_runtime() -> TestResult {
    let mut c = TestCluster::new()?;
    c.init(1).await?;
    c.wait_leader(ELECTION).await?;
    let n = c.node(1);
    let b = gateway_tests::DemoBackend::start("a").await?;
    n.put(
        "/v1/pools/web",
        &json!({"backends": [{"id": "a", "address": b.address()}]}),
    )
    .await?
    .expect(200)?;
    n.put(
        "/v1/routes/app",
        &json!({"hosts": ["app.test"], "pool": "web"}),
    )
    .await?
    .expect(200)?;
    wait_for("the route to serve", CHANGE, || async {
        let r = request(n).await?;
        ensure!(r.starts_with("HTTP/1.1 200"), "{r}");
        Ok(())
    })
    .await?;

    // Bad limits: a clear 400, nothing changed.
    let before = n.get("/v1/limits").await?.expect_json(200)?;
    for (body, says) in [
        (json!({"max_requests": 0}), "max_requests"),
        (json!({"max_connections": 20_000_000}), "max_connections"),
        (json!({"max_conns": 5}), "max_conns"),
    ] {
        let r = n.put("/v1/limits", &body).await?;
        ensure!(
            r.status == 400 && r.text().contains(says),
            "{body}: {} {}",
            r.status,
            r.text()
        );
    }
    ensure!(n.get("/v1/limits").await?.expect_json(200)? == before);

    // At most 2 requests at once: with two slow ones under way, a third gets a fast 503.
    n.put("/v1/limits", &json!({"max_requests": 2}))
        .await?
        .expect(200)?;
    let slow = || {
        let n_addr = n.http_addr;
        tokio::spawn(async move {
            let mut s = TcpStream::connect(n_addr).await?;
            s.write_all(
                b"GET /slow?ms=4000 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
            )
            .await?;
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await??;
            anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
        })
    };
    let busy = wait_for("a request over max_requests to get 503", CHANGE, || async {
        let held = [slow(), slow()];
        // Once the backend serves both (a request sent sooner could overtake one of them and
        // take its place), a third gets the 503.
        let under_way = wait_for(
            "the two slow requests to be under way",
            Duration::from_secs(3),
            || async {
                let m = n.get("/metrics").await?.text();
                ensure!(
                    m.lines()
                        .any(|l| l.starts_with("gateway_backend_in_flight_requests{")
                            && l.contains("backend=\"a\"")
                            && l.ends_with(" 2")),
                    "not yet"
                );
                Ok(())
            },
        )
        .await;
        let r = match under_way {
            Ok(()) => request_path(n, "/").await.and_then(|r| {
                ensure!(r.starts_with("HTTP/1.1 503"), "{r}");
                Ok(r)
            }),
            Err(e) => Err(e),
        };
        for h in held {
            let got = h.await??;
            ensure!(
                got.starts_with("HTTP/1.1 200") || got.starts_with("HTTP/1.1 503"),
                "{got}"
            );
        }
        r
    })
    .await?;
    ensure!(
        busy.to_ascii_lowercase().contains("retry-after: 1") && busy.contains("max_requests"),
        "{busy}"
    );
    // Recovery: with nothing under way, requests pass again.
    let r = request_path(n, "/").await?;
    ensure!(r.starts_with("HTTP/1.1 200"), "{r}");

    // A runtime change takes effect without a restart: with a higher limit, two slow requests
    // leave room.
    let r = gateway_tests::run_gateway(
        &[
            "limits",
            "set",
            "--max-requests",
            "50",
            "--server",
            &n.cluster_addr.to_string(),
        ],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(r.status.success(), "{} {}", r.stdout, r.stderr);
    let held = [slow(), slow()];
    wait_for("the raised limit to apply", CHANGE, || async {
        let r = request_path(n, "/").await?;
        ensure!(r.starts_with("HTTP/1.1 200"), "{r}");
        Ok(())
    })
    .await?;
    for h in held {
        let got = h.await??;
        ensure!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    let shown = n.get("/v1/limits").await?.expect_json(200)?;
    ensure!(shown["limits"]["max_requests"] == 50, "{shown}");

    // One connection at a time: a second one waits (in the backlog) until the first closes.
    n.put("/v1/limits", &json!({"max_connections": 1}))
        .await?
        .expect(200)?;
    let (first, mut second) = wait_for(
        "max_connections to hold a second connection",
        CHANGE,
        || async {
            let mut first = TcpStream::connect(n.http_addr).await?;
            let r = keep_alive_request(&mut first, Duration::from_secs(10)).await?;
            ensure!(r.starts_with("HTTP/1.1 200"), "{r}");
            let mut second = TcpStream::connect(n.http_addr).await?;
            second
                .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                .await?;
            let mut buf = [0u8; 64];
            let early = tokio::time::timeout(Duration::from_secs(1), second.read(&mut buf)).await;
            ensure!(
                early.is_err(),
                "the second connection was served at once: {early:?}"
            );
            Ok((first, second))
        },
    )
    .await?;
    note!("the second connection waits; closing the first");
    drop(first);
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), second.read_to_end(&mut out))
        .await
        .context("the waiting connection was never served")??;
    let out = String::from_utf8_lossy(&out);
    ensure!(out.starts_with("HTTP/1.1 200"), "{out}");

    // Limits removed: both served at once.
    n.put("/v1/limits", &json!({})).await?.expect(200)?;
    wait_for("the connection limit to go", CHANGE, || async {
        let mut first = TcpStream::connect(n.http_addr).await?;
        keep_alive_request(&mut first, Duration::from_secs(10)).await?;
        let mut second = TcpStream::connect(n.http_addr).await?;
        let r = keep_alive_request(&mut second, Duration::from_secs(2)).await?;
        ensure!(r.starts_with("HTTP/1.1 200"), "{r}");
        Ok(())
    })
    .await?;
    Ok(())
}
