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
