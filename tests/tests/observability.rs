//! Observability against real `gateway` processes: `/metrics` parses as Prometheus text
//! format and its counters move with traffic, the Raft figures of a 3-node cluster (roles,
//! replication lag per follower, forwarded writes), the JSON access log, and `gateway top`.
//!
//! Build the binary first: `cargo build -p gateway` (scripts/test.sh does).

use anyhow::{Context, Result, anyhow};
use gateway_tests::{
    CATCH_UP, DemoBackend, ELECTION, Node, TestCluster, TestResult, ensure, note, wait_for,
};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// Checks every line against the text format (0.0.4) strictly, then parses it.
fn parse_strict(text: &str) -> Result<Scrape> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for (i, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            ensure!(name_ok(name), "bad metric name in HELP, {}", at());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            ensure!(name_ok(name), "bad metric name in TYPE, {}", at());
            ensure!(
                matches!(
                    kind,
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ),
                "bad type, {}",
                at()
            );
            ensure!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE given twice, {}",
                at()
            );
            continue;
        }
        ensure!(!line.starts_with('#'), "unknown comment, {}", at());
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow!("no value, {}", at()))?;
        ensure!(
            value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN"),
            "bad value, {}",
            at()
        );
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .ok_or_else(|| anyhow!("unclosed labels, {}", at()))?;
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .ok_or_else(|| anyhow!("bad label, {}", at()))?;
                    ensure!(name_ok(k), "bad label name, {}", at());
                    ensure!(
                        !v.trim_end_matches('"').contains('\n'),
                        "bad label value, {}",
                        at()
                    );
                }
                name
            }
            None => series,
        };
        ensure!(name_ok(name), "bad metric name, {}", at());
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| typed.get(*b).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        ensure!(
            typed.contains_key(family),
            "sample before its TYPE, {}",
            at()
        );
    }
    Ok(Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?)
}

async fn scrape(node: &Node) -> Result<Scrape> {
    let resp = node.get("/metrics").await?;
    resp.expect(200)?;
    let ct = resp.header("content-type").unwrap_or("");
    ensure!(
        ct.starts_with("text/plain; version=0.0.4"),
        "content type {ct}"
    );
    parse_strict(&resp.text()).context("parsing /metrics")
}

fn value(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(h) => h.iter().map(|c| c.count).fold(0.0, f64::max),
        Value::Summary(_) => f64::NAN,
    }
}

/// The value of the sample `metric` whose labels include `labels` (0 when there is none).
fn get(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(value)
        .sum()
}

/// A one-node cluster with the JSON access log and JSON log lines.
async fn logging_node(c: &TestCluster) -> Result<Node> {
    let spec = c.spec(1)?;
    let mut args = c.init_args(&spec);
    args.extend([
        "--access-log".into(),
        "json".into(),
        "--log-format".into(),
        "json".into(),
    ]);
    let node = Node::spawn(&spec, args, c.http().clone())?;
    wait_for("the node to lead", ELECTION, || async {
        node.ensure_running()?;
        ensure!(node.leader().await?.id == 1, "not leading yet");
        Ok(())
    })
    .await?;
    Ok(node)
}

#[tokio::test]
async fn metrics_parse_and_counters_move_with_traffic() -> TestResult {
    let c = TestCluster::new()?;
    let node = logging_node(&c).await?;
    let a = DemoBackend::start("a").await?;
    let dead = gateway_tests::free_addr()?;
    node.put(
        "/v1/pools/web",
        &json!({"backends": [{"id": "a", "address": a.addr.to_string()}]}),
    )
    .await?
    .expect(200)?;
    node.put(
        "/v1/pools/gone",
        &json!({"backends": [{"id": "dead", "address": dead.to_string()}]}),
    )
    .await?
    .expect(200)?;
    node.put(
        "/v1/routes/app",
        &json!({"pool": "web", "path_prefix": "/app"}),
    )
    .await?
    .expect(200)?;
    node.put(
        "/v1/routes/broken",
        &json!({"pool": "gone", "path_prefix": "/broken", "retries": 0}),
    )
    .await?
    .expect(200)?;
    let http = node.http().clone();
    wait_for("route app to serve", CATCH_UP, || async {
        let r = http.get(node.http_addr, "/app/ready").await?;
        ensure!(r.status == 200, "{} {}", r.status, r.text());
        Ok(())
    })
    .await?;

    let before = scrape(&node).await?;
    let app_2xx = [
        ("route", "app"),
        ("pool", "web"),
        ("backend", "a"),
        ("code", "2xx"),
    ];
    let n = 25;
    for i in 0..n {
        let r = http.get(node.http_addr, &format!("/app/{i}")).await?;
        ensure!(r.status == 200, "request {i}: {}", r.status);
    }
    let r = http.get(node.http_addr, "/broken").await?;
    ensure!(r.status == 502, "a dead backend answers {}", r.status);
    let r = http.get(node.http_addr, "/nowhere").await?;
    ensure!(r.status == 404, "no route answers {}", r.status);

    // Counted before each answer was sent, so they are there at once.
    let after = scrape(&node).await?;
    let moved = |m: &str, l: &[(&str, &str)]| get(&after, m, l) - get(&before, m, l);
    ensure!(
        moved("gateway_http_requests_total", &app_2xx) == n as f64,
        "route app's 2xx moved by {}, not {n}",
        moved("gateway_http_requests_total", &app_2xx)
    );
    ensure!(
        moved(
            "gateway_http_requests_total",
            &[("route", "broken"), ("backend", "dead"), ("code", "5xx")]
        ) == 1.0,
        "the 502 of the dead backend is counted under it"
    );
    ensure!(moved("gateway_http_no_route_requests_total", &[]) == 1.0);
    ensure!(
        moved(
            "gateway_backend_requests_total",
            &[("pool", "web"), ("backend", "a")]
        ) == n as f64
    );
    ensure!(
        moved(
            "gateway_backend_failures_total",
            &[("pool", "gone"), ("backend", "dead")]
        ) == 1.0
    );
    // The latency histogram of route app counted every request.
    let hist = after
        .samples
        .iter()
        .find(|s| {
            s.metric == "gateway_http_request_duration_seconds"
                && s.labels.get("route") == Some("app")
        })
        .ok_or_else(|| anyhow!("no latency histogram for route app"))?;
    let Value::Histogram(buckets) = &hist.value else {
        return Err(anyhow!("gateway_http_request_duration_seconds is not a histogram").into());
    };
    let inf = buckets
        .iter()
        .find(|b| b.less_than.is_infinite())
        .ok_or_else(|| anyhow!("no +Inf bucket"))?;
    ensure!(inf.count >= n as f64 + 1.0, "+Inf bucket {}", inf.count);
    ensure!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "buckets are cumulative"
    );
    ensure!(get(&after, "gateway_http_connections_accepted_total", &[]) >= 1.0);
    // One gauge per data plane worker; together they hold the open client connections.
    let workers = after
        .samples
        .iter()
        .filter(|s| s.metric == "gateway_worker_connections" && s.labels.get("worker").is_some())
        .count();
    ensure!(workers >= 1, "no gateway_worker_connections");
    ensure!(
        get(&after, "gateway_worker_connections", &[])
            == get(&after, "gateway_http_connections", &[])
    );
    ensure!(get(&after, "gateway_raft_state", &[("state", "leader")]) == 1.0);
    ensure!(get(&after, "gateway_raft_term", &[]) >= 1.0);
    ensure!(
        get(&after, "gateway_raft_applied_index", &[]) >= 4.0,
        "four writes were applied"
    );
    ensure!(get(&after, "gateway_config_revision", &[]) == 4.0);

    // Counters survive a configuration change (a route table swap).
    node.put(
        "/v1/pools/other",
        &json!({"backends": [{"id": "x", "address": a.addr.to_string()}]}),
    )
    .await?
    .expect(200)?;
    node.put(
        "/v1/routes/other",
        &json!({"pool": "other", "path_prefix": "/other"}),
    )
    .await?
    .expect(200)?;
    let swapped = scrape(&node).await?;
    ensure!(
        get(&swapped, "gateway_http_requests_total", &app_2xx) >= n as f64,
        "route app's count was kept across the swap"
    );

    // The access log: one JSON object per request on stdout (the node's log file here).
    let line = wait_for("an access log line for /app/3", CATCH_UP, || async {
        node.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["path"] == "/app/3")
            .ok_or_else(|| anyhow!("not logged yet"))
    })
    .await?;
    ensure!(line["route"] == "app", "{line}");
    ensure!(line["backend"] == "a", "{line}");
    ensure!(line["status"] == 200, "{line}");
    ensure!(line["bytes"].as_u64().is_some(), "{line}");
    ensure!(line["duration_ms"].as_f64().is_some(), "{line}");
    ensure!(line["forwarded"] == false, "{line}");
    note!("access log line: {line}");
    // --log-format json: the node's own lines are JSON objects too.
    let running = node
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "node running")
        .ok_or_else(|| anyhow!("no JSON 'node running' line in the log"))?;
    ensure!(running["level"] == "INFO", "{running}");

    // `gateway top --once`: one frame with the same figures, rates over one interval.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (stop, http, addr) = (stop.clone(), http.clone(), node.http_addr);
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http.get(addr, "/app/top").await;
            }
        }
    });
    let admin = node.admin_addr.to_string();
    let out = gateway_tests::run_gateway(
        &["top", "--once", "--admin", &admin, "--interval-ms", "1000"],
        gateway_tests::REQUEST,
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = traffic.await;
    let out = out?;
    ensure!(out.status.success(), "{out:?}");
    note!("gateway top --once:\n{}", out.stdout);
    ensure!(out.stdout.contains("node 1 (leader)"), "{}", out.stdout);
    let row = |prefix: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .ok_or_else(|| anyhow!("no row {prefix} in:\n{}", out.stdout))
    };
    let app = row("app ")?;
    // ROUTE HOSTS PATH POOL REQ/S ...
    let rps: f64 = app[4].parse()?;
    ensure!(
        rps > 0.0,
        "route app at {rps} req/s while traffic runs: {app:?}"
    );
    let a_row = row("web/a ")?;
    ensure!(a_row[1] == a.addr.to_string(), "{a_row:?}");
    Ok(())
}

#[tokio::test]
async fn raft_figures_of_a_three_node_cluster() -> TestResult {
    let c = TestCluster::start(3).await?;
    let leader = c.wait_leader(ELECTION).await?;
    let leader_node = c.node(leader.id);
    let follower = c.follower().await?;
    let before = get(
        &scrape(follower).await?,
        "gateway_forwarded_writes_total",
        &[],
    );
    follower
        .put(
            "/v1/pools/p",
            &json!({"backends": [{"id": "a", "address": "127.0.0.1:9"}]}),
        )
        .await?
        .expect(200)?;
    let after = scrape(follower).await?;
    ensure!(
        get(&after, "gateway_forwarded_writes_total", &[]) >= before + 1.0,
        "a write sent to follower {} is counted as forwarded",
        follower.id
    );
    ensure!(get(&after, "gateway_raft_state", &[("state", "follower")]) == 1.0);
    ensure!(get(&after, "gateway_raft_leader_id", &[]) == leader.id as f64);
    let followers: BTreeSet<String> = c
        .ids()
        .into_iter()
        .filter(|&id| id != leader.id)
        .map(|id| id.to_string())
        .collect();
    // The leader reports the lag of every follower; they catch up with the write.
    wait_for(
        "the leader to see both followers caught up",
        CATCH_UP,
        || async {
            let s = scrape(leader_node).await?;
            let lagging: BTreeMap<String, f64> = s
                .samples
                .iter()
                .filter(|x| x.metric == "gateway_raft_replication_lag_entries")
                .map(|x| (x.labels.get("follower").unwrap_or("").to_string(), value(x)))
                .collect();
            ensure!(
                lagging.keys().cloned().collect::<BTreeSet<_>>() == followers,
                "lag reported for {:?}",
                lagging.keys()
            );
            ensure!(lagging.values().all(|&l| l == 0.0), "lag {lagging:?}");
            ensure!(
                get(&s, "gateway_raft_commit_index", &[])
                    >= get(&s, "gateway_raft_applied_index", &[])
            );
            ensure!(get(&s, "gateway_cluster_members", &[("kind", "voter")]) == 3.0);
            Ok(())
        },
    )
    .await?;
    Ok(())
}

/// Writes sent to a follower while others are on their way travel to the leader together:
/// fewer calls than writes, yet each write gets its own answer and revision, and every node
/// ends up holding all of them.
#[tokio::test]
async fn concurrent_writes_through_a_follower_share_calls_to_the_leader() -> TestResult {
    const N: usize = 200;
    let c = TestCluster::start(3).await?;
    c.wait_leader(ELECTION).await?;
    let follower = c.follower().await?;
    let before = scrape(follower).await?;
    let puts = (0..N).map(|i| async move {
        let body =
            json!({"backends": [{"id": "a", "address": format!("127.0.0.1:{}", 10_000 + i)}]});
        follower.put(&format!("/v1/pools/p{i}"), &body).await
    });
    let mut revisions = BTreeSet::new();
    for (i, answer) in futures::future::join_all(puts)
        .await
        .into_iter()
        .enumerate()
    {
        let body = answer?.expect_json(200)?;
        ensure!(
            body["pool"]["name"] == format!("p{i}"),
            "write {i} answered {body}"
        );
        revisions.insert(body["revision"].as_u64().context("a revision")?);
    }
    ensure!(
        revisions.len() == N,
        "{N} writes got {} distinct revisions",
        revisions.len()
    );
    let after = scrape(follower).await?;
    let delta = |m: &str| get(&after, m, &[]) - get(&before, m, &[]);
    let (writes, calls) = (
        delta("gateway_forwarded_writes_total"),
        delta("gateway_forward_calls_total"),
    );
    ensure!(writes >= N as f64, "{writes} writes counted as forwarded");
    ensure!(
        calls >= 1.0 && calls < writes,
        "{writes} concurrent writes took {calls} calls to the leader"
    );
    note!("{writes} forwarded writes in {calls} calls");
    for node in c.nodes() {
        wait_for("every node to hold every pool", CATCH_UP, || async {
            let pools = node
                .get("/v1/pools?consistency=stale")
                .await?
                .expect_json(200)?;
            let n = pools["pools"].as_array().map_or(0, Vec::len);
            ensure!(n == N, "node {} holds {n} pools: {pools}", node.id);
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// Reads server-sent events from `/v1/stream` until `want` matches one (`event`, `data`).
async fn next_event(
    body: &mut hyper::body::Incoming,
    buf: &mut String,
    want: impl Fn(&str, &serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    use http_body_util::BodyExt;
    loop {
        while let Some(cut) = buf.find("\n\n") {
            let frame: String = buf.drain(..cut + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if let Ok(v) = serde_json::from_str(&data)
                && want(event, &v)
            {
                return Ok(v);
            }
        }
        let frame = body
            .frame()
            .await
            .ok_or_else(|| anyhow!("the event stream ended"))??;
        if let Ok(bytes) = frame.into_data() {
            buf.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
}

#[tokio::test]
async fn event_stream_follows_changes_and_ends_on_shutdown() -> TestResult {
    let c = TestCluster::new()?;
    let spec = c.spec(1)?;
    let mut args = c.init_args(&spec);
    // A long grace: a stream that held the shutdown up would show.
    args.extend(["--shutdown-grace-ms".into(), "120000".into()]);
    let node = Node::spawn(&spec, args, c.http().clone())?;
    wait_for("the node to lead", ELECTION, || async {
        node.ensure_running()?;
        ensure!(node.leader().await?.id == 1, "not leading yet");
        Ok(())
    })
    .await?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::get(format!("http://{}/v1/stream", node.admin_addr))
        .body(http_body_util::Empty::new())?;
    let resp = client.request(req).await?;
    ensure!(resp.status() == 200, "{}", resp.status());
    ensure!(
        resp.headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")),
        "{:?}",
        resp.headers()
    );
    let mut body = resp.into_body();
    let mut buf = String::new();
    let first = tokio::time::timeout(
        CATCH_UP,
        next_event(&mut body, &mut buf, |e, _| e == "state"),
    )
    .await??;
    let rev = first["revision"].as_u64().unwrap_or(0);
    node.put(
        "/v1/pools/p",
        &json!({"backends": [{"id": "a", "address": "127.0.0.1:9"}]}),
    )
    .await?
    .expect(200)?;
    let next = tokio::time::timeout(
        CATCH_UP,
        next_event(&mut body, &mut buf, |e, v| {
            e == "state" && v["revision"].as_u64() > Some(rev)
        }),
    )
    .await??;
    ensure!(next["pools"][0]["name"] == "p", "{next}");
    let tick = tokio::time::timeout(
        CATCH_UP,
        next_event(&mut body, &mut buf, |e, _| e == "tick"),
    )
    .await??;
    ensure!(tick["status"]["role"] == "leader", "{tick}");
    ensure!(
        tick["metrics"]
            .as_str()
            .is_some_and(|m| m.contains("gateway_raft_term")),
        "a tick carries the metrics text"
    );
    // SIGTERM with the stream still open: the node ends it and exits (well before its grace).
    node.stop(gateway_tests::EXIT).await?;
    Ok(())
}
