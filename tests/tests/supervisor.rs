//! Managed backends, against a real 3-node cluster whose nodes run `gateway demo-backend`
//! processes from a pool's process spec: every node runs and registers its instances and
//! requests are served by them; an instance killed with `kill -9` is restarted and serves
//! again; one that stops answering is marked down by the cluster and replaced; a spec that
//! exits at once is marked failed, recorded and alerted (webhook) exactly once; a rolling
//! restart (`gateway pool restart --wait`) under steady load fails no request; and a node
//! killed with SIGKILL takes its instances with it, and runs them again when it restarts.
//!
//! Tests wait on conditions (registrations, `/status`, events), never on fixed sleeps. Build
//! the binary first: `cargo build -p gateway` (scripts/test.sh does).

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use gateway_tests::{
    ELECTION, Node, TestCluster, TestResult, ensure, gateway_bin, note, run_gateway, wait_for,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How long instances may take to start and register on a loaded 2-core machine.
const START: Duration = Duration::from_secs(90);

/// A port range of 40 for this test process and `slot`, outside the ephemeral range, so
/// parallel tests (and other suites) rarely look at the same ports; the supervisor skips
/// busy ones anyway.
fn ports(slot: u16) -> String {
    let base = 20_000 + (std::process::id() % 90) as u16 * 130 + slot * 40;
    format!("{base}-{}", base + 39)
}

/// A pool whose instances are `gateway demo-backend` processes named `POOL-NODE-INSTANCE`.
fn demo_pool(name: &str, slot: u16, extra: Value) -> Result<Value> {
    let bin = gateway_bin()?;
    let mut process = json!({
        "command": bin.to_string_lossy(),
        "args": ["demo-backend", "--listen", "127.0.0.1:{port}", "--name", format!("{name}-{{node}}-{{instance}}")],
        "ports": ports(slot),
        "backoff_ms": 100,
        "max_backoff_ms": 1000,
        "stop_timeout_ms": 2000,
        "drain_ms": 500,
    });
    if let (Some(p), Some(e)) = (process.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    Ok(json!({
        "process": process,
        "health_check": {"path": "/", "interval_ms": 200, "timeout_ms": 150, "rise": 1, "fall": 2},
    }))
}

async fn start_cluster() -> Result<TestCluster> {
    let c = TestCluster::start(3).await?;
    c.wait_leader(ELECTION).await?;
    Ok(c)
}

/// This node's managed instances, from its `/status`.
async fn managed(node: &Node) -> Result<Vec<Value>> {
    let st = node.get("/status").await?.expect_json(200)?;
    Ok(st["managed"].as_array().cloned().unwrap_or_default())
}

/// The instance of `pool` with backend id `id` on `node`, once it is running.
async fn running(node: &Node, pool: &str, id: &str) -> Result<Value> {
    let all = managed(node).await?;
    let m = all
        .iter()
        .find(|m| m["pool"] == pool && m["backend"] == id)
        .ok_or_else(|| anyhow!("node {} shows no instance {pool}/{id}: {all:?}", node.id))?;
    ensure!(m["state"] == "running", "{pool}/{id} is {}", m["state"]);
    Ok(m.clone())
}

/// The backends of a pool, as `node` sees them now.
async fn backends(node: &Node, pool: &str) -> Result<Vec<Value>> {
    let p = node
        .get(&format!("/v1/pools/{pool}?consistency=stale"))
        .await?
        .expect_json(200)?;
    Ok(p["pool"]["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Waits until every node sees all three nodes' instances of `pool` registered.
async fn wait_registered(c: &TestCluster, pool: &str, ids: &[&str]) -> Result<()> {
    for node in c.nodes() {
        wait_for(
            &format!("node {} to see {ids:?} registered in {pool}", node.id),
            START,
            || async {
                let b = backends(node, pool).await?;
                let have: BTreeSet<&str> = b.iter().filter_map(|b| b["id"].as_str()).collect();
                ensure!(
                    ids.iter().all(|id| have.contains(id)),
                    "registered: {have:?}"
                );
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

/// The `x-backend` names that answer GETs through `node`'s data plane.
async fn serving(node: &Node, tries: usize) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for _ in 0..tries {
        let r = node.http().get(node.http_addr, "/").await?;
        if r.status == 200
            && let Some(n) = r.header("x-backend")
        {
            names.insert(n.to_string());
        }
    }
    Ok(names)
}

async fn events(node: &Node) -> Result<Vec<Value>> {
    let e = node.get("/v1/events").await?.expect_json(200)?;
    Ok(e["events"].as_array().cloned().unwrap_or_default())
}

/// A webhook receiver on a free port: the JSON bodies of the POSTs it got.
async fn webhook() -> Result<(String, Arc<std::sync::Mutex<Vec<Value>>>)> {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let store = store.clone();
                async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        store.lock().unwrap().push(v);
                    }
                    Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::new())))
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });
    Ok((url, got))
}

fn pid_alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_backends_serve_and_a_killed_one_is_restarted() -> TestResult {
    let c = start_cluster().await?;
    let n1 = c.node(1);
    n1.put("/v1/pools/app", &demo_pool("app", 0, json!({}))?)
        .await?
        .expect(200)?;
    n1.put("/v1/routes/app", &json!({"pool": "app"}))
        .await?
        .expect(200)?;
    wait_registered(&c, "app", &["n1-0", "n2-0", "n3-0"]).await?;
    note!("every node registered its instance");
    // Each node's data plane reaches all three nodes' instances.
    for node in c.nodes() {
        wait_for(
            &format!("node {} to be served by every instance", node.id),
            START,
            || async {
                let names = serving(node, 9).await?;
                ensure!(names.len() == 3, "served by {names:?}");
                Ok(())
            },
        )
        .await?;
    }
    // The instance's output goes to its log under the data dir.
    let before = running(n1, "app", "n1-0").await?;
    let log = n1.data_dir.join("managed/app/n1-0.log");
    let text = std::fs::read_to_string(&log).with_context(|| format!("{}", log.display()))?;
    ensure!(text.contains("demo-backend"), "log: {text}");

    // kill -9 the instance: it is restarted (with a new pid), registered and serves again.
    let pid = before["pid"].as_u64().context("pid")?;
    note!("kill -9 of app/n1-0 (pid {pid})");
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    ensure!(st.success(), "kill -9 {pid} failed");
    let after = wait_for("app/n1-0 to run again with a new pid", START, || async {
        let m = running(n1, "app", "n1-0").await?;
        ensure!(m["pid"].as_u64() != Some(pid), "still pid {pid}");
        ensure!(m["starts"].as_u64() >= Some(2), "starts: {}", m["starts"]);
        Ok(m)
    })
    .await?;
    ensure!(
        after["last_failure"]
            .as_str()
            .is_some_and(|f| f.contains("signal 9")),
        "last failure: {}",
        after["last_failure"]
    );
    let address = after["address"].as_str().context("address")?.to_string();
    wait_for(
        "the restarted app/n1-0 registered everywhere",
        START,
        || async {
            for node in c.nodes() {
                let b = backends(node, "app").await?;
                ensure!(
                    b.iter()
                        .any(|b| b["id"] == "n1-0" && b["address"] == address.as_str()),
                    "node {} sees {b:?}",
                    node.id
                );
            }
            Ok(())
        },
    )
    .await?;
    wait_for("app-1-0 to serve again through node 2", START, || async {
        let names = serving(c.node(2), 9).await?;
        ensure!(names.contains("app-1-0"), "served by {names:?}");
        Ok(())
    })
    .await?;

    // Draining a managed backend is the operator's choice: it survives the instance's restart.
    let servers: Vec<String> = c
        .nodes()
        .iter()
        .map(|n| n.cluster_addr.to_string())
        .collect();
    let out = run_gateway(
        &[
            "backend",
            "drain",
            "app",
            "n1-0",
            "--server",
            &servers.join(","),
        ],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(out.status.success(), "backend drain: {}", out.dump());
    let pid = running(n1, "app", "n1-0").await?["pid"]
        .as_u64()
        .context("pid")?;
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    wait_for(
        "n1-0 to come back on a new address, still draining",
        START,
        || async {
            let m = running(n1, "app", "n1-0").await?;
            ensure!(m["pid"].as_u64() != Some(pid), "still pid {pid}");
            let b = backends(c.node(2), "app").await?;
            let n1_0 = b
                .iter()
                .find(|b| b["id"] == "n1-0")
                .context("n1-0 missing")?;
            ensure!(
                n1_0["address"] == m["address"],
                "n1-0 is at {}",
                n1_0["address"]
            );
            ensure!(n1_0["drain"] == true, "n1-0: {n1_0}");
            Ok(())
        },
    )
    .await?;
    let names = serving(c.node(2), 12).await?;
    ensure!(
        !names.contains("app-1-0"),
        "a draining backend got requests: {names:?}"
    );
    let out = run_gateway(
        &[
            "backend",
            "drain",
            "app",
            "n1-0",
            "--undo",
            "--server",
            &servers.join(","),
        ],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(out.status.success(), "backend drain --undo: {}", out.dump());

    // An instance that stops answering (SIGSTOP) fails its health checks on every node; once
    // the cluster marks it down, its node replaces it.
    let hung = running(c.node(2), "app", "n2-0").await?["pid"]
        .as_u64()
        .context("pid")?;
    note!("SIGSTOP of app/n2-0 (pid {hung})");
    let st = std::process::Command::new("kill")
        .args(["-STOP", &hung.to_string()])
        .status()?;
    ensure!(st.success(), "kill -STOP {hung} failed");
    let replaced = wait_for(
        "app/n2-0 to be replaced after it was marked down",
        START,
        || async {
            let m = running(c.node(2), "app", "n2-0").await?;
            ensure!(m["pid"].as_u64() != Some(hung), "still pid {hung}");
            Ok(m)
        },
    )
    .await?;
    ensure!(
        replaced["last_failure"]
            .as_str()
            .is_some_and(|f| f.contains("marked down")),
        "last failure: {}",
        replaced["last_failure"]
    );
    ensure!(
        !pid_alive(hung),
        "the hung instance (pid {hung}) was not stopped"
    );
    wait_for("app-2-0 to serve again through node 1", START, || async {
        let names = serving(n1, 9).await?;
        ensure!(names.contains("app-2-0"), "served by {names:?}");
        Ok(())
    })
    .await?;

    // A node killed with SIGKILL takes its instances with it (no orphans).
    let n3_pid = running(c.node(3), "app", "n3-0").await?["pid"]
        .as_u64()
        .context("pid")?;
    c.node(3).kill()?;
    wait_for("node 3's instance to die with it", START, || async {
        ensure!(!pid_alive(n3_pid), "pid {n3_pid} is still alive");
        Ok(())
    })
    .await?;
    // Restarted, the node starts a new instance and registers it in place of the old one.
    let old_address = backends(n1, "app")
        .await?
        .into_iter()
        .find(|b| b["id"] == "n3-0")
        .context("n3-0 is still registered")?["address"]
        .clone();
    c.node(3).restart()?;
    let m = wait_for("node 3 to run its instance again", START, || async {
        running(c.node(3), "app", "n3-0").await
    })
    .await?;
    wait_for("node 1 to see n3-0 registered anew", START, || async {
        let b = backends(n1, "app").await?;
        let n3 = b
            .iter()
            .find(|b| b["id"] == "n3-0")
            .context("n3-0 missing")?;
        ensure!(
            n3["address"] == m["address"],
            "n3-0 is at {} (was {old_address})",
            n3["address"]
        );
        Ok(())
    })
    .await?;
    wait_for("app-3-0 to serve again through node 1", START, || async {
        let names = serving(n1, 9).await?;
        ensure!(names.contains("app-3-0"), "served by {names:?}");
        Ok(())
    })
    .await?;
    c.check_crashes()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_backend_is_marked_failed_and_alerted_once() -> TestResult {
    let c = start_cluster().await?;
    let n1 = c.node(1);
    let (url, hooks) = webhook().await?;
    n1.put(
        "/v1/alerts/ops",
        &json!({"webhook": url, "events": ["backend_failed"]}),
    )
    .await?
    .expect(200)?;
    // Only node 2 runs it, so one failed instance is one event.
    let pool = json!({"process": {
        "command": "sh", "args": ["-c", "echo starting on {port}; exit 3"],
        "ports": ports(1), "nodes": [2],
        "crash_limit": 3, "backoff_ms": 50, "max_backoff_ms": 200,
    }});
    n1.put("/v1/pools/crash", &pool).await?.expect(200)?;
    let failed = wait_for(
        "crash/n2-0 to be marked failed on node 2",
        START,
        || async {
            let all = managed(c.node(2)).await?;
            let m = all
                .iter()
                .find(|m| m["pool"] == "crash")
                .ok_or_else(|| anyhow!("no instance yet: {all:?}"))?;
            ensure!(m["state"] == "failed", "state {}", m["state"]);
            Ok(m.clone())
        },
    )
    .await?;
    ensure!(failed["starts"] == 3, "starts: {}", failed["starts"]);
    ensure!(
        managed(n1).await?.iter().all(|m| m["pool"] != "crash"),
        "node 1 runs an instance of a pool limited to node 2"
    );
    // The failure is a cluster event, recorded once, seen from every node.
    let ev = wait_for("one backend_failed event on node 3", START, || async {
        let all = events(c.node(3)).await?;
        let failed: Vec<&Value> = all
            .iter()
            .filter(|e| e["type"] == "backend_failed")
            .collect();
        ensure!(!failed.is_empty(), "events: {all:?}");
        Ok(failed.into_iter().cloned().collect::<Vec<_>>())
    })
    .await?;
    ensure!(ev.len() == 1, "events: {ev:?}");
    ensure!(
        ev[0]["pool"] == "crash" && ev[0]["backend"] == "n2-0" && ev[0]["node"] == 2,
        "event: {}",
        ev[0]
    );
    ensure!(
        ev[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("exited with status 3")),
        "reason: {}",
        ev[0]["reason"]
    );
    // The leader alone alerts, once.
    let first_id = ev[0]["id"].clone();
    wait_for("the webhook to get the failure", START, || async {
        let got = hooks.lock().unwrap().clone();
        ensure!(!got.is_empty(), "nothing yet");
        Ok(())
    })
    .await?;
    // Nothing was registered for it; its output is in its log.
    ensure!(backends(n1, "crash").await?.is_empty(), "registered");
    let log = std::fs::read_to_string(c.node(2).data_dir.join("managed/crash/n2-0.log"))?;
    let runs = log.lines().filter(|l| l.starts_with("starting on")).count();
    ensure!(runs == 3, "log: {log}");
    // A rolling restart tries a failed instance again: one more failure, one more event.
    n1.http()
        .post_json(n1.admin_addr, "/v1/pools/crash/restart", &json!({}))
        .await?
        .expect(200)?;
    wait_for(
        "a second backend_failed event after the restart",
        START,
        || async {
            let n = events(n1)
                .await?
                .iter()
                .filter(|e| e["type"] == "backend_failed")
                .count();
            ensure!(n == 2, "{n} events");
            Ok(())
        },
    )
    .await?;
    let alerts = wait_for("the webhook to get the second failure", START, || async {
        let got = hooks.lock().unwrap().clone();
        ensure!(got.len() >= 2, "{} alerts", got.len());
        Ok(got)
    })
    .await?;
    ensure!(alerts.len() == 2, "alerts: {alerts:?}");
    ensure!(
        alerts[0]["id"] == first_id
            && alerts[1]["id"] != first_id
            && alerts.iter().all(|a| a["type"] == "backend_failed"
                && a["pool"] == "crash"
                && a["backend"] == "n2-0"),
        "alerts: {alerts:?}"
    );
    // A pool without a process spec cannot be restarted, and says why.
    n1.put("/v1/pools/plain", &json!({"backends": []}))
        .await?
        .expect(200)?;
    let r = n1
        .http()
        .post_json(n1.admin_addr, "/v1/pools/plain/restart", &json!({}))
        .await?;
    ensure!(
        r.status == 409 && r.text().contains("process"),
        "{}: {}",
        r.status,
        r.text()
    );
    let r = n1
        .put(
            "/v1/pools/bad",
            &json!({"process": {"command": "x", "ports": "9-2"}}),
        )
        .await?;
    ensure!(
        r.status == 400 && r.json()?["field"] == "process.ports",
        "{}: {}",
        r.status,
        r.text()
    );
    c.check_crashes()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_under_load_fails_no_request() -> TestResult {
    let c = start_cluster().await?;
    let n1 = c.node(1);
    n1.put("/v1/pools/roll", &demo_pool("roll", 2, json!({}))?)
        .await?
        .expect(200)?;
    n1.put("/v1/routes/roll", &json!({"pool": "roll"}))
        .await?
        .expect(200)?;
    wait_registered(&c, "roll", &["n1-0", "n2-0", "n3-0"]).await?;
    for node in c.nodes() {
        wait_for(
            &format!("node {} to be served by every instance", node.id),
            START,
            || async {
                let names = serving(node, 9).await?;
                ensure!(names.len() == 3, "served by {names:?}");
                Ok(())
            },
        )
        .await?;
    }
    let mut pids = Vec::new();
    for node in c.nodes() {
        let m = running(node, "roll", &format!("n{}-0", node.id)).await?;
        pids.push(m["pid"].as_u64().context("pid")?);
    }

    // Steady load: one client loop per node's data plane.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut loops = Vec::new();
    // Through every node, quick requests and ones that take 200 ms (in flight while their
    // instance is replaced).
    for (node, path) in c
        .nodes()
        .iter()
        .flat_map(|n| [(n, "/"), (n, "/slow?ms=200")])
    {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), node.http_addr);
        loops.push(tokio::spawn(async move {
            let cl: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(format!("http://{addr}{path}"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let r = tokio::time::timeout(Duration::from_secs(30), async {
                    let resp = cl.request(req).await?;
                    let status = resp.status();
                    resp.into_body().collect().await?;
                    anyhow::Ok(status)
                })
                .await;
                match r {
                    Ok(Ok(s)) if s == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(s)) => failed.lock().unwrap().push(format!("{addr}: {s}")),
                    Ok(Err(e)) => failed.lock().unwrap().push(format!("{addr}: {e:#}")),
                    Err(_) => failed.lock().unwrap().push(format!("{addr}: timed out")),
                }
            }
        }));
    }
    wait_for("the load to flow", START, || async {
        ensure!(
            ok.load(Ordering::Relaxed) > 30,
            "{} ok",
            ok.load(Ordering::Relaxed)
        );
        Ok(())
    })
    .await?;
    note!("rolling restart under load");
    let servers = c
        .nodes()
        .iter()
        .map(|n| n.cluster_addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = run_gateway(
        &[
            "pool",
            "restart",
            "roll",
            "--wait",
            "--wait-secs",
            "240",
            "--server",
            &servers,
        ],
        Duration::from_secs(300),
    )
    .await?;
    ensure!(out.status.success(), "pool restart failed: {}", out.dump());
    ensure!(
        out.stdout.contains("pool roll restarted (3 instance(s))"),
        "{}",
        out.dump()
    );
    let before = ok.load(Ordering::Relaxed);
    // Some more requests after the last replacement, then stop the load.
    wait_for("requests after the restart", START, || async {
        ensure!(ok.load(Ordering::Relaxed) > before + 30, "waiting");
        Ok(())
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await?;
    }
    let failed = failed.lock().unwrap().clone();
    note!(
        "{} requests ok, {} failed during the rolling restart",
        ok.load(Ordering::Relaxed),
        failed.len()
    );
    ensure!(failed.is_empty(), "failed requests: {failed:?}");
    // Every instance is a new process, registered and serving.
    for (node, old) in c.nodes().iter().zip(pids) {
        let m = running(node, "roll", &format!("n{}-0", node.id)).await?;
        ensure!(
            m["pid"].as_u64() != Some(old),
            "node {} kept pid {old}",
            node.id
        );
        ensure!(!pid_alive(old), "the old instance (pid {old}) still runs");
    }
    let names = serving(c.node(2), 9).await?;
    ensure!(names.len() == 3, "served by {names:?}");
    c.check_crashes()?;
    Ok(())
}
