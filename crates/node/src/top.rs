//! `gateway top`: a live terminal view of one node's figures (cluster, routes, pools and
//! backends with health and requests/s), read from its admin REST API (`/status`,
//! `/v1/config`, `/v1/health`, `/metrics`) every interval. Rates are the counters' change
//! between two readings.

use crate::client::{AdminAddr, call};
use anyhow::bail;
use prometheus_parse::{Scrape, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// One reading of the node.
struct Reading {
    at: Instant,
    status: serde_json::Value,
    config: serde_json::Value,
    /// `pool/backend` -> health state.
    health: BTreeMap<String, String>,
    metrics: Scrape,
}

async fn get(
    server: &AdminAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    match call("GET", server, path, token).await? {
        (200, v) => Ok(v),
        (401, _) | (403, _) => {
            bail!("{server} refused the token: pass a read token with --token or --token-file")
        }
        (s, v) => bail!("GET {path} on {server}: {s} {v}"),
    }
}

async fn read(server: &AdminAddr, token: Option<&str>) -> anyhow::Result<Reading> {
    let status = get(server, "/status", token).await?;
    let config = get(server, "/v1/config?consistency=stale", token).await?;
    let health = match call("GET", server, "/v1/health?consistency=stale", token).await? {
        (200, v) => v["backends"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|b| {
                        (
                            format!(
                                "{}/{}",
                                b["pool"].as_str().unwrap_or(""),
                                b["backend"].as_str().unwrap_or("")
                            ),
                            b["state"].as_str().unwrap_or("unknown").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => BTreeMap::new(),
    };
    let text = match get(server, "/metrics", token).await? {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    let metrics = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?;
    Ok(Reading {
        at: Instant::now(),
        status,
        config,
        health,
        metrics,
    })
}

/// Sum of the samples of `metric` whose labels include `labels`.
fn sum(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            _ => 0.0,
        })
        .sum()
}

/// `(count, sum)` of a route's latency histogram.
fn latency(s: &Scrape, route: &str) -> (f64, f64) {
    let count = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "gateway_http_request_duration_seconds"
                && x.labels.get("route") == Some(route)
        })
        .and_then(|x| match &x.value {
            Value::Histogram(h) => h.iter().map(|b| b.count).reduce(f64::max),
            _ => None,
        })
        .unwrap_or(0.0);
    let total = sum(
        s,
        "gateway_http_request_duration_seconds_sum",
        &[("route", route)],
    );
    (count, total)
}

fn frame(server: &AdminAddr, prev: &Reading, now: &Reading) -> String {
    let dt = now.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let rate = |metric: &str, labels: &[(&str, &str)]| {
        ((sum(&now.metrics, metric, labels) - sum(&prev.metrics, metric, labels)) / dt).max(0.0)
    };
    let st = &now.status;
    let num = |v: &serde_json::Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "gateway top — {server} · node {} ({}) · leader {} · term {} · commit {} · applied {} · revision {}",
        num(&st["id"]),
        st["role"].as_str().unwrap_or("?"),
        num(&st["leader"]),
        num(&st["term"]),
        num(&st["committed_index"]),
        num(&st["applied_index"]),
        num(&st["revision"]),
    );
    let _ = writeln!(
        out,
        "connections {} · websockets {} · requests {:.1}/s · no route {:.1}/s · leader changes {}",
        sum(&now.metrics, "gateway_http_connections", &[]),
        sum(&now.metrics, "gateway_websockets", &[]),
        rate("gateway_http_requests_total", &[]),
        rate("gateway_http_no_route_requests_total", &[]),
        sum(&now.metrics, "gateway_raft_leader_changes_total", &[]),
    );
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<6} {:<9} {:<22} {:>9} {:>6}",
        "NODE", "ROLE", "ADMIN", "MATCHED", "LAG"
    );
    let leader = st["leader"].as_u64();
    for (kind, list) in [("voter", &st["voters"]), ("learner", &st["learners"])] {
        for m in list.as_array().into_iter().flatten() {
            let role = if m["id"].as_u64() == leader {
                "leader"
            } else {
                kind
            };
            let _ = writeln!(
                out,
                "{:<6} {:<9} {:<22} {:>9} {:>6}",
                num(&m["id"]),
                role,
                m["admin_addr"].as_str().unwrap_or(""),
                num(&m["matched_index"]),
                num(&m["lag"]),
            );
        }
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<16} {:<24} {:<10} {:<12} {:>8} {:>7} {:>7} {:>8}",
        "ROUTE", "HOSTS", "PATH", "POOL", "REQ/S", "4XX/S", "5XX/S", "AVG MS"
    );
    for r in now.config["routes"].as_array().into_iter().flatten() {
        let name = r["name"].as_str().unwrap_or("");
        let hosts = r["hosts"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "*".into());
        let (c1, s1) = latency(&now.metrics, name);
        let (c0, s0) = latency(&prev.metrics, name);
        let avg = if c1 > c0 {
            format!("{:.1}", (s1 - s0) / (c1 - c0) * 1000.0)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<10} {:<12} {:>8.1} {:>7.1} {:>7.1} {:>8}",
            name,
            hosts,
            r["path_prefix"].as_str().unwrap_or("/"),
            r["pool"].as_str().unwrap_or(""),
            rate("gateway_http_requests_total", &[("route", name)]),
            rate(
                "gateway_http_requests_total",
                &[("route", name), ("code", "4xx")]
            ),
            rate(
                "gateway_http_requests_total",
                &[("route", name), ("code", "5xx")]
            ),
            avg,
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<24} {:<22} {:<8} {:>9} {:>8} {:>7} {:>9}",
        "POOL/BACKEND", "ADDRESS", "HEALTH", "IN-FLIGHT", "REQ/S", "FAIL/S", "RETRIES/S"
    );
    for p in now.config["pools"].as_array().into_iter().flatten() {
        let pool = p["name"].as_str().unwrap_or("");
        for b in p["backends"].as_array().into_iter().flatten() {
            let id = b["id"].as_str().unwrap_or("");
            let key = format!("{pool}/{id}");
            let mut health = now
                .health
                .get(&key)
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            if b["drain"].as_bool() == Some(true) {
                health.push_str(" (draining)");
            }
            let labels = [("pool", pool), ("backend", id)];
            let _ = writeln!(
                out,
                "{:<24} {:<22} {:<8} {:>9} {:>8.1} {:>7.1} {:>9.1}",
                key,
                b["address"].as_str().unwrap_or(""),
                health,
                sum(&now.metrics, "gateway_backend_in_flight_requests", &labels),
                rate("gateway_backend_requests_total", &labels),
                rate("gateway_backend_failures_total", &labels),
                rate("gateway_pool_retries_total", &[("pool", pool)]),
            );
        }
    }
    out
}

/// Runs the view until interrupted; with `once`, prints one frame (rates over one interval)
/// without terminal control codes and returns.
pub async fn run(
    server: &AdminAddr,
    token: Option<&str>,
    interval: Duration,
    once: bool,
) -> anyhow::Result<()> {
    let mut prev = read(server, token).await?;
    loop {
        tokio::time::sleep(interval).await;
        let now = match read(server, token).await {
            Ok(r) => r,
            Err(e) if !once => {
                println!("\x1b[H\x1b[2J{server}: {e:#} (retrying)");
                continue;
            }
            Err(e) => return Err(e),
        };
        let text = frame(server, &prev, &now);
        if once {
            print!("{text}");
            return Ok(());
        }
        // Home, clear, then the frame.
        print!("\x1b[H\x1b[2J{text}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        prev = now;
    }
}
