//! `gateway leave`, the one client command that talks to a node's admin REST API: the node
//! that leaves must be told on its own admin port, and then exits. Every other client
//! command uses the admin gRPC API (`crate::ctl`).

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Sends a body-less request; returns the status and the JSON (or text) answer.
pub(crate) async fn call(
    method: &str,
    server: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{server}{path}"));
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Empty::new()).context("bad --server address")?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("{server} did not answer within 30s"))?
        .map_err(|e| anyhow::anyhow!("cannot reach {server}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    let value = serde_json::from_slice(&body).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&body).trim().to_string())
    });
    Ok((status, value))
}

fn message(v: &serde_json::Value) -> String {
    v.get("error")
        .and_then(|e| e.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// The token from `--token`, or from `--token-file` (a bare token, or the token of its first
/// `write TOKEN` line, so the node's own token file works too).
pub fn token(
    token: Option<String>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<String>> {
    if token.is_some() {
        return Ok(token);
    }
    let Some(path) = file else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --token-file {}", path.display()))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let found = lines
        .iter()
        .find_map(|l| l.strip_prefix("write "))
        .or_else(|| lines.first().copied().filter(|l| !l.contains(' ')));
    match found {
        Some(t) => Ok(Some(t.trim().to_string())),
        None => bail!(
            "--token-file {} holds no token: put the token on its first line",
            path.display()
        ),
    }
}

pub async fn leave(server: &str, token: Option<&str>) -> anyhow::Result<()> {
    match call("POST", server, "/v1/leave", token).await? {
        (200, v) => {
            println!(
                "node {} left the cluster and is shutting down",
                v.get("removed").cloned().unwrap_or_default()
            );
            Ok(())
        }
        (_, v) => bail!("{}", message(&v)),
    }
}
