//! The few client commands that talk to a node's admin REST API.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Sends a body-less request; returns the status and the JSON (or text) answer.
async fn call(method: &str, server: &str, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{server}{path}"))
        .body(Empty::new())
        .context("bad --server address")?;
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

pub async fn remove_node(servers: &[String], id: u64) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for server in servers {
        match call("DELETE", server, &format!("/v1/nodes/{id}")).await {
            Ok((200, _)) => {
                println!("node {id} removed; its id will not be accepted again");
                return Ok(());
            }
            Ok((503, v)) => errors.push(format!("{server}: {}", message(&v))),
            Ok((_, v)) => bail!("{}", message(&v)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    bail!("could not remove node {id}: {}", errors.join("; "))
}

pub async fn leave(server: &str) -> anyhow::Result<()> {
    match call("POST", server, "/v1/leave").await? {
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
