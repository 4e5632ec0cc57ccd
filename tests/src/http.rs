//! A small JSON-over-HTTP/1.1 client for the admin API.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// An HTTP client with a timeout on every request. Connections are not pooled: nodes are
/// killed, stopped and restarted under the tests' feet, and a fresh connection per request
/// keeps one test step from failing on a socket left over from an earlier one.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// A response: status, headers and the whole body.
#[derive(Clone)]
pub struct Resp {
    pub method: Method,
    pub url: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Default for Http {
    fn default() -> Self {
        Http::new(crate::REQUEST)
    }
}

impl Http {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Http { client, timeout }
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Http {
            client: self.client.clone(),
            timeout,
        }
    }

    /// Sends one request; `body` is sent as `application/json` when given.
    pub async fn request(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Resp> {
        let url = format!("http://{addr}{path}");
        let mut req = Request::builder().method(method.clone()).uri(&url);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let send = async {
            let resp = self.client.request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok((parts, body))
        };
        let (parts, body) = tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| anyhow!("{method} {url}: no response within {:?}", self.timeout))?
            .with_context(|| format!("{method} {url}"))?;
        Ok(Resp {
            method,
            url,
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Resp> {
        self.request(Method::GET, addr, path, None).await
    }

    pub async fn delete(&self, addr: SocketAddr, path: &str) -> Result<Resp> {
        self.request(Method::DELETE, addr, path, None).await
    }

    pub async fn put_json(&self, addr: SocketAddr, path: &str, body: &Value) -> Result<Resp> {
        self.request(
            Method::PUT,
            addr,
            path,
            Some(Bytes::from(serde_json::to_vec(body)?)),
        )
        .await
    }

    /// PUT with a body sent as is (for malformed JSON).
    pub async fn put_raw(&self, addr: SocketAddr, path: &str, body: &str) -> Result<Resp> {
        self.request(Method::PUT, addr, path, Some(Bytes::from(body.to_string())))
            .await
    }

    pub async fn post_json(&self, addr: SocketAddr, path: &str, body: &Value) -> Result<Resp> {
        self.request(
            Method::POST,
            addr,
            path,
            Some(Bytes::from(serde_json::to_vec(body)?)),
        )
        .await
    }
}

impl Resp {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("{self}: body is not JSON"))
    }

    /// The body deserialised into `T`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "{self}: body does not have the expected shape ({})",
                std::any::type_name::<T>()
            )
        })
    }

    /// Fails unless the status is `want`, naming the request, status and body.
    pub fn expect(&self, want: u16) -> Result<&Self> {
        if self.status.as_u16() != want {
            bail!("expected {want}, got {self}");
        }
        Ok(self)
    }

    /// Like [`Resp::expect`], then the body as JSON.
    pub fn expect_json(&self, want: u16) -> Result<Value> {
        self.expect(want)?.json()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `X-Gateway-Revision` header, which every admin response carries.
    pub fn revision_header(&self) -> Result<u64> {
        let v = self
            .header("x-gateway-revision")
            .ok_or_else(|| anyhow!("{self}: no X-Gateway-Revision header"))?;
        v.trim()
            .parse()
            .with_context(|| format!("{self}: X-Gateway-Revision '{v}' is not a number"))
    }
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text();
        let text = if text.len() > 2000 {
            format!("{}...", &text[..text.floor_char_boundary(2000)])
        } else {
            text
        };
        write!(
            f,
            "{} {} -> {} {}",
            self.method,
            self.url,
            self.status.as_u16(),
            text.trim_end()
        )
    }
}

impl fmt::Debug for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
