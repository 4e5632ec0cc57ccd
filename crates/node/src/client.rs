//! `gateway leave` and `gateway top`, the client commands that talk to a node's admin REST
//! API: the node that leaves must be told on its own admin port, and then exits; `top` reads
//! one node's figures. Every other client command uses the admin gRPC API (`crate::ctl`).
//! With `--admin-ca` they speak HTTPS to an admin port served with `--admin-tls-cert`.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

// ---- admin HTTPS (issue 7) ----
/// An admin REST address, and the TLS to speak to it when it serves HTTPS.
pub struct AdminAddr {
    addr: String,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

impl AdminAddr {
    /// `addr` (`host:port`), over HTTPS trusting the CA certificates in `ca` when given; the
    /// node's certificate must name `host` (a DNS name, or an IP address as an IP name).
    pub fn new(addr: String, ca: Option<&Path>) -> anyhow::Result<AdminAddr> {
        let Some(ca) = ca else {
            return Ok(AdminAddr { addr, tls: None });
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("--admin-ca {}: {e}", ca.display()))?;
        if certs.is_empty() {
            bail!("--admin-ca {}: no PEM certificate in it", ca.display());
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| anyhow::anyhow!("--admin-ca {}: {e}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| anyhow::anyhow!("'{addr}' has no host name to verify; use HOST:PORT"))?;
        Ok(AdminAddr {
            addr,
            tls: Some((Arc::new(config), name)),
        })
    }
}

/// Sends `req` over HTTPS to `server`.
async fn call_tls(
    server: &AdminAddr,
    config: &Arc<rustls::ClientConfig>,
    name: &ServerName<'static>,
    req: http::Request<Empty<Bytes>>,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    let tcp = tokio::net::TcpStream::connect(&server.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {server}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| anyhow::anyhow!("TLS with {server} failed: {e}"))?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(tx.send_request(req).await?)
}
// ---- end admin HTTPS ----

/// Sends a body-less request; returns the status and the JSON (or text) answer.
pub(crate) async fn call(
    method: &str,
    server: &AdminAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut req = http::Request::builder().method(method);
    req = match &server.tls {
        None => req.uri(format!("http://{}{path}", server.addr)),
        Some(_) => req.uri(path).header(http::header::HOST, &server.addr),
    };
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Empty::new()).context("bad --server address")?;
    let send = async {
        match &server.tls {
            None => {
                let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
                client
                    .request(req)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot reach {server}: {e} (if its admin port serves HTTPS, pass --admin-ca)"
                        )
                    })
            }
            Some((config, name)) => call_tls(server, config, name, req).await,
        }
    };
    let resp = tokio::time::timeout(Duration::from_secs(30), send)
        .await
        .map_err(|_| anyhow::anyhow!("{server} did not answer within 30s"))??;
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

pub async fn leave(server: &AdminAddr, token: Option<&str>) -> anyhow::Result<()> {
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
