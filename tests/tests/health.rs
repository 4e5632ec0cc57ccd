//! Backend health agreed by the cluster, against real `gateway` processes: a backend killed
//! under load is marked down on every node and traffic avoids it without errors, then returns;
//! one node alone losing a backend does not mark it down under `majority` (and does under
//! `any`); passive ejection keeps a dead backend out of a node's choices; alerts reach a webhook
//! and an SMTP server exactly once per event, across a leader kill.
//!
//! Backends are [`SwitchBackend`]s in the test process (real sockets; stopping one closes its
//! listener and connections). Every wait is on a condition.

use anyhow::{Context, Result, anyhow};
use gateway_tests::{
    ELECTION, Node, SwitchBackend, TestCluster, TestResult, ensure, note, run_gateway, wait_for,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// How long a verdict may take to be committed and reach every node on a loaded machine.
const VERDICT: Duration = Duration::from_secs(30);

/// The agreed state of `pool/backend` as node `n` has applied it.
async fn agreed(n: &Node, pool: &str, backend: &str) -> Result<String> {
    let v = n
        .get("/v1/health?consistency=stale")
        .await?
        .expect_json(200)?;
    v["backends"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|b| b["pool"] == pool && b["backend"] == backend)
        })
        .and_then(|b| b["state"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow!("no {pool}/{backend} in {v}"))
}

/// Waits until every live node agrees that `pool/backend` is `state`.
async fn wait_agreed(c: &TestCluster, pool: &str, backend: &str, state: &str) -> Result<()> {
    wait_for(
        &format!("every node to see {pool}/{backend} {state}"),
        VERDICT,
        || async {
            for n in c.live() {
                let s = agreed(n, pool, backend).await?;
                ensure!(s == state, "node {} sees {s}", n.id);
            }
            Ok(())
        },
    )
    .await
}

async fn put(n: &Node, path: &str, body: Value) -> Result<()> {
    n.put(path, &body).await?.expect(200)?;
    Ok(())
}

/// A GET through node `n`'s data plane on a fresh connection: (status, x-backend).
async fn get(n: &Node, host: &str) -> Result<(u16, String)> {
    get_at(n.http_addr, host).await
}

async fn get_at(addr: std::net::SocketAddr, host: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .context("no answer within 30 s")??;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {text:?}"))?;
    let backend = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-backend:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((status, backend))
}

fn check(interval_ms: u64, policy: &str) -> Value {
    json!({"type": "http", "path": "/healthz", "interval_ms": interval_ms,
           "timeout_ms": interval_ms.min(500), "rise": 2, "fall": 2, "policy": policy})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_backend_is_marked_down_everywhere_and_load_sees_no_errors() -> TestResult {
    let c = TestCluster::start(3).await?;
    c.wait_leader(ELECTION).await?;
    let (a, b) = (
        SwitchBackend::start("a").await?,
        SwitchBackend::start("b").await?,
    );
    let n1 = c.node(1);
    put(
        n1,
        "/v1/pools/web",
        json!({"backends": [
        {"id": "a", "address": a.address()}, {"id": "b", "address": b.address()}],
        "health_check": check(300, "majority"),
        // Passive ejection covers the moments between the kill and the cluster's verdict:
        // each node stops choosing a at its first refused connection (that request is
        // retried on b), instead of spending the pool's retry budget on it.
        "eject": {}}),
    )
    .await?;
    put(
        n1,
        "/v1/routes/app",
        json!({"hosts": ["app.test"], "pool": "web"}),
    )
    .await?;
    wait_agreed(&c, "web", "a", "up").await?;

    for n in c.live() {
        wait_for(
            &format!("node {} to serve the route", n.id),
            VERDICT,
            || async {
                let (status, _) = get(n, "app.test").await?;
                ensure!(status == 200, "status {status}");
                Ok(())
            },
        )
        .await?;
    }
    // Steady load through every node, counting failures.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for n in c.live() {
        let (addr, stop, ok, failed) = (n.http_addr, stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get_at(addr, "app.test").await {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                            note!("request through {addr} failed: {other:?}");
                        }
                    }
                }
            }
        }));
    }
    wait_for("some load to pass", VERDICT, || async {
        ensure!(ok.load(Ordering::Relaxed) > 30);
        Ok(())
    })
    .await?;

    note!("killing backend a");
    let killed = std::time::Instant::now();
    a.stop();
    wait_agreed(&c, "web", "a", "down").await?;
    note!("a marked down on every node after {:?}", killed.elapsed());
    let h = c.node(2).get("/v1/health").await?.expect_json(200)?;
    let entry = h["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["backend"] == "a")
        .cloned();
    let entry = entry.ok_or_else(|| anyhow!("no a in {h}"))?;
    ensure!(
        entry["down_on"].as_array().is_some_and(|d| d.len() >= 2),
        "down_on: {entry}"
    );
    ensure!(
        entry["since_ms"].as_u64().is_some_and(|t| t > 0),
        "since_ms: {entry}"
    );
    let served_by_b = b.served.load(Ordering::Relaxed);
    wait_for("more load to pass while a is down", VERDICT, || async {
        ensure!(b.served.load(Ordering::Relaxed) > served_by_b + 30);
        Ok(())
    })
    .await?;

    note!("bringing a back");
    let before = a.served.load(Ordering::Relaxed);
    a.resume().await?;
    wait_agreed(&c, "web", "a", "up").await?;
    wait_for("traffic to reach a again", VERDICT, || async {
        ensure!(a.served.load(Ordering::Relaxed) > before + 10);
        Ok(())
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await?;
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    note!("{ok} requests answered 200, {failed} failed");
    ensure!(
        failed == 0,
        "{failed} of {} idempotent requests failed",
        ok + failed
    );
    // The transitions are in the event log, once each.
    let ev = n1.get("/v1/events").await?.expect_json(200)?;
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["backend"] == "a")
        .filter_map(|e| e["type"].as_str())
        .collect();
    ensure!(kinds == ["backend_down", "backend_up"], "events: {ev}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_losing_a_backend_does_not_mark_it_down_under_majority() -> TestResult {
    let c = TestCluster::start(3).await?;
    c.wait_leader(ELECTION).await?;
    let a = SwitchBackend::start("a").await?;
    let b = SwitchBackend::start("b").await?;
    let n1 = c.node(1);
    let pool = |policy: &str| {
        json!({"backends": [{"id": "a", "address": a.address()}, {"id": "b", "address": b.address()}],
               "health_check": check(200, policy)})
    };
    put(n1, "/v1/pools/web", pool("majority")).await?;
    put(
        n1,
        "/v1/routes/app",
        json!({"hosts": ["app.test"], "pool": "web"}),
    )
    .await?;
    wait_agreed(&c, "web", "a", "up").await?;

    // Node 3 alone loses a (its probes get 503; traffic still flows).
    a.refuse_node(3, true);
    let n3 = c.node(3);
    let sees = |want: &'static [&'static str]| async move {
        let s = n3.get("/status").await?.expect_json(200)?;
        let seen: BTreeSet<String> = s["sees_down"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["backend"].as_str().map(str::to_string))
            .collect();
        ensure!(
            want.iter().all(|w| seen.contains(*w)),
            "node 3 sees down: {seen:?}"
        );
        Ok(())
    };
    wait_for("node 3 to see a down itself", VERDICT, || sees(&["a"])).await?;
    // Then nodes 2 and 3 (a majority) lose b. Every report node 3 sends from now on holds a
    // as well as b, so when the leader marks b down it has judged a on the same reports.
    b.refuse_node(2, true);
    b.refuse_node(3, true);
    wait_for("node 3 to see a and b down", VERDICT, || sees(&["a", "b"])).await?;
    wait_agreed(&c, "web", "b", "down").await?;
    for n in c.live() {
        let s = agreed(n, "web", "a").await?;
        ensure!(
            s == "up",
            "node {} sees a {s}, though only node 3 lost it",
            n.id
        );
    }
    // Routing follows the verdict on every node (b still answers; it is left out).
    for n in c.live() {
        for _ in 0..6 {
            let (status, by) = get(n, "app.test").await?;
            ensure!(
                status == 200 && by == "a",
                "node {}: {status} from {by:?}",
                n.id
            );
        }
    }

    // Under `any`, node 3's view alone is enough.
    put(n1, "/v1/pools/web", pool("any")).await?;
    wait_agreed(&c, "web", "a", "down").await?;
    let h = n1.get("/v1/health").await?.expect_json(200)?;
    let a_entry = h["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["backend"] == "a");
    ensure!(a_entry.is_some_and(|e| e["down_on"] == json!([3])), "{h}");
    // The event that marked a down; a stays down on it (the nodes' probes go on across the
    // policy change instead of starting again from up).
    let a_transition = a_entry.map(|e| e["transition"].clone());
    // Every backend of the pool is down: it fails open, and requests are still served.
    wait_agreed(&c, "web", "b", "down").await?;
    let (status, _) = get(c.node(2), "app.test").await?;
    ensure!(status == 200, "fail-open: {status}");
    // The CLI shows the same verdicts.
    let server = c.node(3).cluster_addr.to_string();
    let args = [
        "backend", "list", "web", "--output", "json", "--server", &server,
    ];
    let out = run_gateway(&args, Duration::from_secs(90)).await?;
    let listed: Value = serde_json::from_str(&out.stdout).context("backend list --output json")?;
    let first = &listed["backends"][0];
    ensure!(
        first["backend"] == "a"
            && first["state"] == "down"
            && first["down_on"] == json!([3])
            && a_transition.as_ref() == Some(&first["transition"]),
        "{listed} (a went down as event {a_transition:?})"
    );
    a.refuse_node(3, false);
    wait_agreed(&c, "web", "a", "up").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passive_ejection_keeps_a_dead_backend_out_at_once() -> TestResult {
    let c = TestCluster::start(1).await?;
    c.wait_leader(ELECTION).await?;
    let a = SwitchBackend::start("a").await?;
    let dead = SwitchBackend::start("dead").await?;
    dead.stop();
    let n = c.node(1);
    let pool = |eject: Option<Value>| {
        let mut p = json!({"backends": [{"id": "a", "address": a.address()},
                                        {"id": "dead", "address": dead.address()}]});
        if let Some(e) = eject {
            p["eject"] = e;
        }
        p
    };
    // No retries, so every request sent to the dead backend fails.
    put(
        n,
        "/v1/routes/app",
        json!({"hosts": ["app.test"], "pool": "web", "retries": 0}),
    )
    .await
    .or(Ok::<(), anyhow::Error>(()))?;
    put(n, "/v1/pools/web", pool(None)).await?;
    put(
        n,
        "/v1/routes/app",
        json!({"hosts": ["app.test"], "pool": "web", "retries": 0}),
    )
    .await?;
    let mut failures_without = 0;
    for _ in 0..20 {
        if get(n, "app.test").await?.0 != 200 {
            failures_without += 1;
        }
    }
    ensure!(
        failures_without >= 5,
        "without ejection only {failures_without} of 20 failed"
    );
    put(
        n,
        "/v1/pools/web",
        pool(Some(json!({"cooldown_ms": 60000}))),
    )
    .await?;
    let mut failures_with = 0;
    for _ in 0..20 {
        if get(n, "app.test").await?.0 != 200 {
            failures_with += 1;
        }
    }
    note!("failures: {failures_without} of 20 without ejection, {failures_with} with");
    ensure!(
        failures_with <= 1,
        "with ejection {failures_with} of 20 failed"
    );
    Ok(())
}

/// A webhook receiver: records the JSON body of every POST.
async fn webhook_receiver() -> Result<(String, Arc<std::sync::Mutex<Vec<Value>>>)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", l.local_addr()?);
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = got.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if let Ok(v) = serde_json::from_slice(&body) {
                        store.lock().unwrap().push(v);
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if r.get_mut().write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((url, got))
}

/// A minimal SMTP server: records each message's data.
async fn smtp_sink() -> Result<(String, Arc<std::sync::Mutex<Vec<String>>>)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = got.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                async fn say(w: &mut tokio::net::TcpStream, m: &str) -> std::io::Result<()> {
                    w.write_all(m.as_bytes()).await
                }
                if say(r.get_mut(), "220 test ESMTP\r\n").await.is_err() {
                    return;
                }
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.to_ascii_uppercase();
                    let reply = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                        "250 test\r\n"
                    } else if cmd.starts_with("DATA") {
                        if say(r.get_mut(), "354 go on\r\n").await.is_err() {
                            return;
                        }
                        let mut data = String::new();
                        loop {
                            let mut l = String::new();
                            if r.read_line(&mut l).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if l == ".\r\n" {
                                break;
                            }
                            data.push_str(&l);
                        }
                        store.lock().unwrap().push(data);
                        "250 queued\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = say(r.get_mut(), "221 bye\r\n").await;
                        return;
                    } else {
                        "250 ok\r\n"
                    };
                    if say(r.get_mut(), reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, got))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_reach_webhook_and_smtp_once_per_event_across_a_leader_kill() -> TestResult {
    let c = TestCluster::start(3).await?;
    c.wait_leader(ELECTION).await?;
    let (url, hooks) = webhook_receiver().await?;
    let (smtp, mails) = smtp_sink().await?;
    let a = SwitchBackend::start("a").await?;
    let n1 = c.node(1);
    // The sink is made with the CLI, through another node.
    let server = c.node(2).cluster_addr.to_string();
    let args = [
        "alert",
        "add",
        "ops",
        "--webhook",
        &url,
        "--smtp-server",
        &smtp,
        "--smtp-from",
        "gateway@example.com",
        "--smtp-to",
        "ops@example.com",
        "--server",
        &server,
    ];
    let out = run_gateway(&args, Duration::from_secs(90)).await?;
    ensure!(
        out.status.success() && out.stdout.contains("alert sink ops created"),
        "{out:?}"
    );
    let args = ["alert", "list", "--output", "json", "--server", &server];
    let out = run_gateway(&args, Duration::from_secs(90)).await?;
    let listed: Value = serde_json::from_str(&out.stdout).context("alert list --output json")?;
    ensure!(listed["alerts"][0]["webhook"] == url.as_str(), "{listed}");
    put(
        n1,
        "/v1/pools/web",
        json!({"backends": [{"id": "a", "address": a.address()}],
        "health_check": check(200, "majority")}),
    )
    .await?;
    wait_agreed(&c, "web", "a", "up").await?;

    a.stop();
    wait_agreed(&c, "web", "a", "down").await?;
    a.resume().await?;
    wait_agreed(&c, "web", "a", "up").await?;

    // Every event so far is delivered before the kill (a leader killed between a send and
    // the commit of its cursor would have the next leader send that one event again, with
    // the same event id; see alerts.rs).
    let all_delivered = || async {
        let n = c.live().next().ok_or_else(|| anyhow!("no live node"))?;
        let ev = n.get("/v1/events").await?.expect_json(200)?;
        let last = ev["next_event"].as_u64().unwrap_or(1) - 1;
        let al = n.get("/v1/alerts").await?.expect_json(200)?;
        let done = al["delivered"]["ops"].as_u64().unwrap_or(0);
        ensure!(done == last, "delivered up to {done} of {last}");
        Ok(ev["events"].as_array().cloned().unwrap_or_default())
    };
    wait_for("the events so far to be delivered", VERDICT, all_delivered).await?;
    let old = c.leader().await?.id;
    note!("killing leader {old}");
    c.node(old).kill()?;
    let new = wait_for("a new leader", ELECTION, || async {
        let l = c.other_than(&[old])?.leader().await?;
        ensure!(l.id != old);
        Ok(l)
    })
    .await?;
    let survivor = c.node(new.id);
    wait_for("the old leader to be recorded lost", VERDICT, || async {
        let ev = survivor.get("/v1/events").await?.expect_json(200)?;
        ensure!(
            ev["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "node_lost" && e["node"] == old)
        );
        Ok(())
    })
    .await?;
    c.node(old).restart()?;
    wait_for("the old leader to be recorded back", VERDICT, || async {
        let ev = survivor.get("/v1/events").await?.expect_json(200)?;
        ensure!(
            ev["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "node_back" && e["node"] == old)
        );
        Ok(())
    })
    .await?;

    // Every event is delivered: the cursor reaches the last one.
    let events = wait_for("every event to be delivered", VERDICT, all_delivered).await?;
    let wanted: BTreeSet<u64> = events
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .filter(|id| *id > 0)
        .collect();
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    note!("events: {types:?}");
    for t in [
        "backend_down",
        "backend_up",
        "leader_change",
        "node_lost",
        "node_back",
    ] {
        ensure!(types.contains(&t), "no {t} event in {types:?}");
    }
    // The sink was created after the first leader's election event: it hears of what came
    // after it, each exactly once, by webhook and by e-mail.
    let hooks = hooks.lock().unwrap().clone();
    let mut per_id: BTreeMap<u64, usize> = BTreeMap::new();
    for h in &hooks {
        *per_id.entry(h["id"].as_u64().unwrap_or(0)).or_default() += 1;
    }
    let first_hooked = per_id.keys().next().copied().unwrap_or(0);
    ensure!(
        per_id.values().all(|n| *n == 1),
        "webhook duplicates: {per_id:?}"
    );
    let expected: BTreeSet<u64> = wanted
        .iter()
        .copied()
        .filter(|i| *i >= first_hooked)
        .collect();
    ensure!(
        per_id.keys().copied().collect::<BTreeSet<_>>() == expected,
        "webhook got {:?}, events after the sink were {expected:?}",
        per_id.keys().collect::<Vec<_>>()
    );
    let mails = mails.lock().unwrap().clone();
    let mut mail_ids: BTreeMap<String, usize> = BTreeMap::new();
    for m in &mails {
        let id = m
            .lines()
            .find_map(|l| {
                l.strip_prefix("Message-ID: ")
                    .or_else(|| l.strip_prefix("Message-Id: "))
            })
            .unwrap_or("")
            .to_string();
        *mail_ids.entry(id).or_default() += 1;
    }
    ensure!(
        mail_ids.values().all(|n| *n == 1),
        "duplicate e-mails: {mail_ids:?}"
    );
    ensure!(
        mails.len() == per_id.len(),
        "{} e-mails for {} webhook events",
        mails.len(),
        per_id.len()
    );
    Ok(())
}
