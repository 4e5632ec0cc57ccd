//! Connections to backends and to the leader node: one [`Endpoint`] per address and protocol,
//! holding its idle HTTP/1.1 keep-alive connections, or its one multiplexed HTTP/2 (h2c,
//! prior knowledge) connection. Endpoints are shared by every route table that names the same
//! address, so a config swap keeps the warm connections.
//!
//! A request is first tried on an idle connection; if that connection turns out to be closed
//! before the request was written, hyper hands the request back and it goes on a fresh
//! connection. A request that could not be delivered at all (connect refused or timed out) is
//! handed back to the caller inside [`SendError::NotSent`], so it can be retried elsewhere
//! without having been buffered.

use crate::body::ProxyBody;
use gateway_model::Protocol;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// How long establishing a connection to a backend may take before it counts as failed.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle pooled connection older than this is closed instead of reused. Kept below the
/// idle timeouts servers commonly use (Node.js 5 s, a gateway node's own
/// `header_read_timeout` of 10 s), so that a request is rarely written on a connection the
/// server is closing at that moment (such a request fails and cannot be retried).
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Most idle connections kept per endpoint.
const MAX_IDLE: usize = 256;

/// Where an endpoint is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `host:port`, resolved on each connect.
    Tcp(String),
    /// A unix socket path.
    Unix(PathBuf),
}

impl Target {
    /// Parses a backend address: `host:port` or `unix:/path`.
    pub(crate) fn parse(address: &str) -> Target {
        match address.strip_prefix("unix:") {
            Some(path) => Target::Unix(PathBuf::from(path)),
            None => Target::Tcp(address.to_string()),
        }
    }
}

/// Why a request got no response.
pub(crate) enum SendError {
    /// The request never left: it is handed back so it may be sent elsewhere.
    NotSent {
        req: Box<Request<ProxyBody>>,
        cause: String,
    },
    /// The request was (maybe partly) sent and then the exchange failed.
    Failed(String),
}

struct Idle {
    tx: SendRequest<ProxyBody>,
    since: Instant,
}

/// One upstream address and its idle connections.
pub(crate) struct Endpoint {
    target: Target,
    protocol: Protocol,
    idle: Mutex<Vec<Idle>>,
    /// The shared HTTP/2 connection of an `h2c` endpoint.
    h2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

impl Endpoint {
    pub(crate) fn new(target: Target, protocol: Protocol) -> Self {
        Endpoint {
            target,
            protocol,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pooled connection ready for a new request, if any. Connections still busy with a
    /// response body stay in the list; closed or stale ones are dropped.
    fn checkout(&self) -> Option<SendRequest<ProxyBody>> {
        let now = Instant::now();
        let mut idle = self.idle();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let c = &idle[i];
            if c.tx.is_closed() || now.duration_since(c.since) > IDLE_TIMEOUT {
                idle.swap_remove(i);
            } else if c.tx.is_ready() {
                return Some(idle.swap_remove(i).tx);
            }
        }
        None
    }

    fn checkin(&self, tx: SendRequest<ProxyBody>) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    async fn connect_io(&self) -> io::Result<Stream> {
        Ok(match &self.target {
            Target::Tcp(addr) => {
                let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str()))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Target::Unix(path) => Stream::Unix(
                tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??,
            ),
        })
    }

    async fn connect(&self) -> io::Result<SendRequest<ProxyBody>> {
        let io = self.connect_io().await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    async fn connect_h2(&self) -> io::Result<http2::SendRequest<ProxyBody>> {
        let io = self.connect_io().await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2 connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// The shared HTTP/2 connection, if it is still open.
    fn h2_conn(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let mut h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        match &*h2 {
            Some(tx) if !tx.is_closed() => Some(tx.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    /// The target as an authority, for requests that have no `Host`.
    fn authority(&self) -> Option<Authority> {
        match &self.target {
            Target::Tcp(addr) => addr.parse().ok(),
            Target::Unix(_) => Some(Authority::from_static("localhost")),
        }
    }

    /// Rewrites an (HTTP/1.1-shaped) upstream request for HTTP/2: absolute URI carrying the
    /// `Host` as `:authority`, version 2.
    fn to_h2(&self, req: &mut Request<ProxyBody>) {
        let authority = req
            .headers_mut()
            .remove(HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .or_else(|| self.authority());
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = authority;
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = Version::HTTP_2;
    }

    /// Sends over the endpoint's HTTP/2 connection, opening it when there is none (or when
    /// the pooled one turns out to be closed before the request went out).
    async fn send_h2(&self, mut req: Request<ProxyBody>) -> Result<Response<Incoming>, SendError> {
        self.to_h2(&mut req);
        let mut pooled = self.h2_conn();
        loop {
            let reused = pooled.is_some();
            let mut tx = match pooled.take() {
                Some(tx) => tx,
                None => match self.connect_h2().await {
                    Ok(tx) => {
                        *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx.clone());
                        tx
                    }
                    Err(e) => {
                        return Err(SendError::NotSent {
                            req: Box::new(req),
                            cause: format!("connect: {e}"),
                        });
                    }
                },
            };
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back, // stale connection: open a new one
                    Some(back) => {
                        return Err(SendError::NotSent {
                            req: Box::new(back),
                            cause: format!(
                                "connection closed before the request was sent: {}",
                                e.error()
                            ),
                        });
                    }
                    None => return Err(SendError::Failed(e.into_error().to_string())),
                },
            }
        }
    }

    /// Sends `req` and waits for the response head. With `dedicated`, a fresh HTTP/1.1
    /// connection is used and not pooled afterwards (for upgrades, also on `h2c` endpoints).
    pub(crate) async fn send(
        &self,
        mut req: Request<ProxyBody>,
        dedicated: bool,
    ) -> Result<Response<Incoming>, SendError> {
        if self.protocol == Protocol::H2c && !dedicated {
            return self.send_h2(req).await;
        }
        if !dedicated {
            while let Some(mut tx) = self.checkout() {
                match tx.try_send_request(req).await {
                    Ok(resp) => {
                        self.checkin(tx);
                        return Ok(resp);
                    }
                    Err(mut e) => match e.take_message() {
                        // The pooled connection was closed before the request was written.
                        Some(back) => req = back,
                        None => return Err(SendError::Failed(e.into_error().to_string())),
                    },
                }
            }
        }
        let mut tx = match self.connect().await {
            Ok(tx) => tx,
            Err(e) => {
                return Err(SendError::NotSent {
                    req: Box::new(req),
                    cause: format!("connect: {e}"),
                });
            }
        };
        match tx.try_send_request(req).await {
            Ok(resp) => {
                if !dedicated {
                    self.checkin(tx);
                }
                Ok(resp)
            }
            Err(mut e) => match e.take_message() {
                Some(back) => Err(SendError::NotSent {
                    req: Box::new(back),
                    cause: format!(
                        "connection closed before the request was sent: {}",
                        e.error()
                    ),
                }),
                None => Err(SendError::Failed(e.into_error().to_string())),
            },
        }
    }
}

/// Endpoints by address and protocol, so that route tables compiled at different times share
/// them.
#[derive(Default)]
pub(crate) struct Endpoints {
    by_addr: HashMap<(String, Protocol), Weak<Endpoint>>,
}

impl Endpoints {
    pub(crate) fn get(&mut self, address: &str, protocol: Protocol) -> Arc<Endpoint> {
        let key = (address.to_string(), protocol);
        if let Some(e) = self.by_addr.get(&key).and_then(Weak::upgrade) {
            return e;
        }
        let e = Arc::new(Endpoint::new(Target::parse(address), protocol));
        self.by_addr.insert(key, Arc::downgrade(&e));
        e
    }

    /// Forgets endpoints no route table uses any more.
    pub(crate) fn purge(&mut self) {
        self.by_addr.retain(|_, w| w.strong_count() > 0);
    }
}

/// A TCP or unix socket connection.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }
}
