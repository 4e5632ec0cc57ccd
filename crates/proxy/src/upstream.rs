//! Connections to backends and to the leader node: one [`Endpoint`] per address and protocol,
//! holding its idle HTTP/1.1 keep-alive connections, or its one multiplexed HTTP/2 (h2c,
//! prior knowledge) connection. Endpoints are shared by every route table that names the same
//! address, so a config swap keeps the warm connections.
//!
//! HTTP/1.1 exchanges are driven by the gateway's own code inside the request's task (no
//! connection task, no channel): the head is written, the request body streamed while the
//! response head is awaited, and the response body read by [`BackendBody`], which puts the
//! connection back in the pool when the body is complete. HTTP/2 (`h2c`) goes through hyper.
//!
//! A request is first tried on an idle connection; if that connection turns out to be closed
//! before the request was written (its end seen by a non-blocking look, or the head cannot be
//! written), the next one is tried, then a fresh connection. A request that could not be
//! delivered at all (connect refused or timed out) is handed back to the caller inside
//! [`SendError::NotSent`], so it can be retried elsewhere without having been buffered. A
//! request whose head was written is never handed back.

use crate::backend_tls::{Alpn, UpstreamTls};
use crate::balance::InFlight;
use crate::body::{BoxError, ProxyBody, Source};
use crate::codec::{self, Decoded, Decoder, Framing, RawHeaders, RawRequest};
use crate::headers::{ClientAddr, prepare_request, write_forwarding};
use bytes::{Bytes, BytesMut};
use gateway_model::Protocol;
use http::header::{CONTENT_LENGTH, HOST};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// How long establishing a connection to a backend may take before it counts as failed.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled connection is kept for reuse when the pool does not say
/// (`keep_alive_timeout_ms`): nginx's upstream `keepalive_timeout`.
pub(crate) const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(60);
/// How long an idle connection to the leader node is kept: the hop carries writes, which
/// cannot be sent again, so this stays below any client keep-alive time a node is likely to
/// be given (`--keep-alive-timeout-ms`, 75 s by default).
pub(crate) const LEADER_KEEP_ALIVE: Duration = Duration::from_secs(4);
/// Most idle connections kept per endpoint.
const MAX_IDLE: usize = 256;
/// Largest request body written together with its head when it is all there.
const INLINE_BODY: u64 = 16 * 1024;
/// Largest response head accepted from a backend.
const MAX_RESPONSE_HEAD: usize = 256 * 1024;

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
    /// The request was sent and the connection failed before any answer, but the request is
    /// idempotent and had no body: it is handed back, and may be sent again elsewhere.
    Resend {
        req: Box<Request<ProxyBody>>,
        cause: String,
    },
}

/// An HTTP/1.1 connection to a backend and the bytes read from it but not yet used.
pub(crate) struct H1Conn {
    io: Stream,
    buf: BytesMut,
}

impl H1Conn {
    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
        }
        let read = std::pin::pin!(self.io.read_buf(&mut self.buf));
        read.poll(cx)
    }

    /// Whether an idle connection was closed by the backend (or sent something unasked),
    /// found without blocking and usually without a system call.
    fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut rb = ReadBuf::new(&mut byte);
        !matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }
}

/// An upgraded backend connection (after `101 Switching Protocols`).
pub(crate) struct Tunnel {
    pub(crate) io: Stream,
    /// Bytes the backend sent after its `101` head.
    pub(crate) leftover: BytesMut,
    pub(crate) in_flight: Option<InFlight>,
    /// Counts the tunnel as an open WebSocket while it lives.
    pub(crate) _open: Option<crate::metrics::TunnelGuard>,
}

/// A backend's HTTP/1.1 response body; returns the connection to its pool when complete.
pub(crate) struct BackendBody {
    conn: Option<H1Conn>,
    decoder: Decoder,
    /// Whether the connection may serve another request once this body is read.
    reuse: bool,
    /// The answer was `101`: the connection is handed over whole.
    upgraded: bool,
    endpoint: Arc<Endpoint>,
    /// The response's headers, while they are kept as the backend sent them.
    raw: Option<RawHeaders>,
}

impl BackendBody {
    pub(crate) fn take_raw(&mut self) -> Option<RawHeaders> {
        self.raw.take()
    }

    fn release(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reuse
            && conn.buf.is_empty()
        {
            self.endpoint.checkin(conn);
        }
    }

    /// The connection of a `101` answer.
    pub(crate) fn into_tunnel(mut self) -> Option<(Stream, BytesMut)> {
        if !self.upgraded {
            return None;
        }
        self.conn.take().map(|c| (c.io, c.buf))
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.upgraded {
            return Poll::Ready(None);
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(self.decoder.take_trailers().map(|t| Ok(Frame::trailers(t))));
            };
            match self.decoder.decode(&mut conn.buf) {
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(Decoded::Data(data)) => {
                    if self.decoder.is_done() {
                        self.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(t)) => {
                    self.release();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Decoded::End) => {
                    self.release();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => match ready!(conn.poll_fill(cx)) {
                    Ok(0) => {
                        self.conn = None;
                        return match self.decoder.on_eof() {
                            Ok(_) => Poll::Ready(None),
                            Err(e) => Poll::Ready(Some(Err(e.into()))),
                        };
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.upgraded || (self.decoder.is_done() && !self.decoder.has_trailers())
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) if !self.upgraded => SizeHint::with_exact(n),
            Some(_) => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}

/// A request's headers still as the client sent them (its map is empty), to be written to an
/// HTTP/1.1 backend as they came, followed by the forwarding headers for `client`; turned into
/// the map `prepare_request` would have made for anything else.
#[derive(Clone, Copy)]
pub(crate) struct Verbatim<'a> {
    pub(crate) headers: &'a RawRequest,
    pub(crate) client: &'a ClientAddr,
}

/// The request head as written to a backend, with the framing of its body.
fn encode_request(
    req: &Request<ProxyBody>,
    verbatim: Option<Verbatim<'_>>,
) -> (Vec<u8>, Option<Framing>) {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    codec::write_headers(&mut out, req.headers());
    if let Some(v) = verbatim {
        v.headers.write(&mut out);
        write_forwarding(&mut out, v.client, v.headers.host());
    }
    let body = req.body();
    let framing = if req.headers().contains_key(CONTENT_LENGTH) {
        match req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
        {
            Some(0) | None => None,
            Some(n) => Some(Framing::Length(n)),
        }
    } else if let Some(n) = body.size_hint().exact() {
        let m = req.method();
        if n > 0 || !(m == Method::GET || m == Method::HEAD || m == Method::OPTIONS) {
            out.extend_from_slice(b"content-length: ");
            codec::write_u64(&mut out, n);
            out.extend_from_slice(b"\r\n");
        }
        (n > 0).then_some(Framing::Length(n))
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Some(Framing::Chunked)
    };
    out.extend_from_slice(b"\r\n");
    (out, framing)
}

/// Streams a request body to the backend.
struct Pump {
    body: Option<ProxyBody>,
    chunked: bool,
    out: std::collections::VecDeque<Bytes>,
    write_failed: bool,
}

impl Pump {
    fn sent(&self) -> bool {
        self.body.is_none() && self.out.is_empty() && !self.write_failed
    }

    fn push_frame(&mut self, frame: Frame<Bytes>) {
        match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    return;
                }
                if self.chunked {
                    self.out.push_back(codec::chunk_head(data.len()));
                    self.out.push_back(data);
                    self.out.push_back(Bytes::from_static(b"\r\n"));
                } else {
                    self.out.push_back(data);
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers()
                    && self.chunked
                {
                    self.out.push_back(codec::chunked_end(Some(&trailers)));
                    self.chunked = false; // ended
                    self.body = None;
                }
            }
        }
    }

    /// Writes what it can; `Err` when the request body itself failed.
    fn poll_write(&mut self, io: &mut Stream, cx: &mut Context<'_>) -> Result<(), BoxError> {
        while !self.write_failed {
            if !self.out.is_empty() {
                let mut slices = [IoSlice::new(&[]); 8];
                let n = slices.len().min(self.out.len());
                for (slot, b) in slices.iter_mut().zip(self.out.iter()) {
                    *slot = IoSlice::new(b);
                }
                match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => self.write_failed = true,
                    Poll::Ready(Ok(mut written)) => {
                        while written > 0 {
                            let Some(front) = self.out.front_mut() else {
                                break;
                            };
                            if written >= front.len() {
                                written -= front.len();
                                self.out.pop_front();
                            } else {
                                let _ = front.split_to(written);
                                written = 0;
                            }
                        }
                    }
                    Poll::Pending => return Ok(()),
                }
            } else if let Some(body) = self.body.as_mut() {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => self.push_frame(frame),
                    Poll::Ready(Some(Err(e))) => return Err(e),
                    Poll::Ready(None) => {
                        if self.chunked {
                            self.out.push_back(codec::chunked_end(None));
                        }
                        self.body = None;
                    }
                    Poll::Pending => return Ok(()),
                }
            } else {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The most data plane workers any server of this process started (sizes the idle lists).
static WORKERS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's data plane worker (1-based), 0 on other threads.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes room in the idle lists of endpoints created from now on for `n` workers.
pub(crate) fn expect_workers(n: usize) {
    WORKERS.fetch_max(n, Ordering::Relaxed);
}

/// Marks this thread as data plane worker `index` (1-based).
pub(crate) fn set_worker(index: usize) {
    WORKER.set(index);
}

/// One upstream address and its idle connections.
pub(crate) struct Endpoint {
    target: Target,
    protocol: Protocol,
    /// TLS towards the backend (the pool's `tls`); plain when `None`.
    tls: Option<Arc<UpstreamTls>>,
    /// How long an idle connection is kept for reuse; zero keeps none.
    keep_alive: Duration,
    /// Idle connections, one list per data plane worker (see [`set_worker`]): a worker
    /// reuses the connections it opened, whose readiness its own runtime watches. The most
    /// recently used is at the back and is taken first; the oldest is at the front.
    idle: Box<[Mutex<VecDeque<Idle>>]>,
    /// The shared HTTP/2 connection of an `h2c` endpoint.
    h2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

struct Idle {
    conn: H1Conn,
    since: Instant,
}

impl Endpoint {
    pub(crate) fn new(
        target: Target,
        protocol: Protocol,
        tls: Option<Arc<UpstreamTls>>,
        keep_alive: Duration,
    ) -> Self {
        Endpoint {
            target,
            protocol,
            tls,
            keep_alive,
            idle: (0..WORKERS.load(Ordering::Relaxed).max(1) + 1)
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
            h2: Mutex::new(None),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        let list = &self.idle[WORKER.get() % self.idle.len()];
        list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pooled connection ready for a new request, if any; stale ones are dropped.
    fn checkout(&self) -> Option<H1Conn> {
        let now = Instant::now();
        loop {
            let idle = self.idle().pop_back()?;
            if now.duration_since(idle.since) > self.keep_alive {
                // The rest are older still.
                self.idle().clear();
                return None;
            }
            let mut conn = idle.conn;
            if !conn.is_closed() {
                return Some(conn);
            }
        }
    }

    fn checkin(&self, conn: H1Conn) {
        if self.keep_alive.is_zero() {
            return;
        }
        // Stale ones further down are let go by `sweep`, on the data plane's tick.
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes the idle connections, on every worker's list, that have outstayed the
    /// keep-alive time or that the backend closed: the data plane's tick runs this about once
    /// a second, so that idle connections do not wait for the next request to be let go.
    pub(crate) fn sweep(&self, now: Instant) {
        for list in self.idle.iter() {
            let mut idle = list.lock().unwrap_or_else(|e| e.into_inner());
            let mut gone = Vec::new();
            let mut at = 0;
            while at < idle.len() {
                let i = &mut idle[at];
                if now.saturating_duration_since(i.since) > self.keep_alive || i.conn.is_closed() {
                    gone.extend(idle.remove(at));
                } else {
                    at += 1;
                }
            }
            drop(idle);
            drop(gone); // closed outside the lock
        }
    }

    async fn connect_io(&self, alpn: Alpn) -> io::Result<Stream> {
        let plain = self.connect_plain().await?;
        match &self.tls {
            None => Ok(plain),
            Some(tls) => {
                let address = match &self.target {
                    Target::Tcp(a) => a.as_str(),
                    Target::Unix(_) => "unix:",
                };
                let s = tokio::time::timeout(CONNECT_TIMEOUT, tls.handshake(plain, address, alpn))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
                Ok(Stream::Tls(Box::new(s)))
            }
        }
    }

    async fn connect_plain(&self) -> io::Result<Stream> {
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

    async fn connect_h2(&self) -> io::Result<http2::SendRequest<ProxyBody>> {
        let io = self.connect_io(Alpn::H2).await?;
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
        parts.scheme = Some(if self.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
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
    async fn send_h2(&self, mut req: Request<ProxyBody>) -> Result<Response<Source>, SendError> {
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
                Ok(resp) => return Ok(resp.map(|b| Source::H2(Box::new(b)))),
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
    // Not an `async fn`, whose arguments would take room twice in the future.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn send(
        self: &Arc<Self>,
        mut req: Box<Request<ProxyBody>>,
        dedicated: bool,
        verbatim: Option<Verbatim<'_>>,
    ) -> impl Future<Output = Result<Response<Source>, SendError>> {
        async move {
            if matches!(self.protocol, Protocol::H2c | Protocol::H2) && !dedicated {
                if let Some(v) = verbatim {
                    *req.headers_mut() = v.headers.clone().into_map();
                    prepare_request(&mut req, v.client, false, false, false);
                }
                return Box::pin(self.send_h2(*req)).await;
            }
            let (mut head, mut framing) = encode_request(&req, verbatim);
            // A small body that is already here goes out in the same write as the head, as a
            // client would send it: a backend that answers before reading the body may otherwise
            // read the head alone, answer, find no body to drain and close the connection just
            // as the next request is written on it.
            let mut inline = None;
            if let Some(Framing::Length(n)) = framing
                && n <= INLINE_BODY
                && req.body().is_buffered()
            {
                let frame = poll_fn(|cx| Pin::new(req.body_mut()).poll_frame(cx)).await;
                match frame.map(|f| f.map(Frame::into_data)) {
                    Some(Ok(Ok(data))) if data.len() as u64 == n => {
                        head.extend_from_slice(&data);
                        framing = None;
                        inline = Some(data);
                        *req.body_mut() = ProxyBody::Empty;
                    }
                    _ => return Err(SendError::Failed("the request body ended early".into())),
                }
            }
            // A request handed back gets its body back.
            let back = |mut req: Box<Request<ProxyBody>>| {
                if let Some(data) = &inline {
                    *req.body_mut() = ProxyBody::full(data.clone());
                }
                req
            };
            if !dedicated {
                // Written at once. A step aside first (tokio's yield), so that the requests of
                // one pass reach the backends together, was measured both ways: it gave the
                // lower rate and the higher p99 (bench/README.md, session 23).
                while let Some(mut conn) = self.checkout() {
                    // A connection the backend closed meanwhile fails here, before anything of
                    // the request could be taken as sent: the next one is tried.
                    if conn.io.write_all(&head).await.is_err() {
                        continue;
                    }
                    match self.exchange(conn, req, framing, dedicated).await {
                        // The backend closed this reused connection as the request reached it
                        // (its idle timeout ran out at that moment), before any answer. An
                        // idempotent request goes out once more, on a new connection, as
                        // browsers and Go's client do; the backend did not fail.
                        Err(SendError::Resend { req: again, cause }) => {
                            tracing::debug!(%cause, "a reused backend connection closed; sending again");
                            req = again;
                            break;
                        }
                        other => return other,
                    }
                }
            }
            // Boxed: with pooled connections, connecting is the rare path.
            let mut conn = match Box::pin(self.connect_io(Alpn::Http1)).await {
                Ok(io) => H1Conn {
                    io,
                    buf: BytesMut::new(),
                },
                Err(e) => {
                    return Err(SendError::NotSent {
                        req: back(req),
                        cause: format!("connect: {e}"),
                    });
                }
            };
            if let Err(e) = conn.io.write_all(&head).await {
                return Err(SendError::NotSent {
                    req: back(req),
                    cause: format!("connection closed before the request was sent: {e}"),
                });
            }
            match self.exchange(conn, req, framing, dedicated).await {
                // Sent again elsewhere by the caller: with the body that went in the head.
                Err(SendError::Resend { req, cause }) => Err(SendError::Resend {
                    req: back(req),
                    cause,
                }),
                other => other,
            }
        }
    }

    /// Streams the body of a request whose head is written and reads the response head.
    // Not an `async fn`, whose arguments would take room twice in the future.
    #[allow(clippy::manual_async_fn)]
    fn exchange(
        self: &Arc<Self>,
        mut conn: H1Conn,
        mut req: Box<Request<ProxyBody>>,
        framing: Option<Framing>,
        dedicated: bool,
    ) -> impl Future<Output = Result<Response<Source>, SendError>> {
        async move {
            let head_request = req.method() == Method::HEAD;
            let method = if head_request {
                Method::HEAD
            } else {
                Method::GET
            };
            // An idempotent request without a body may be sent again if the connection fails
            // before any answer (RFC 9110 §9.2.2): keep its head until the answer starts.
            let idempotent = matches!(
                *req.method(),
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            );
            let body = std::mem::replace(req.body_mut(), ProxyBody::Empty);
            let mut again = (idempotent && framing.is_none()).then_some(req);
            let mut pump = Pump {
                body: framing.is_some().then_some(body),
                chunked: framing == Some(Framing::Chunked),
                out: Default::default(),
                write_failed: false,
            };
            let head = poll_fn(|cx| {
                loop {
                    if let Err(e) = pump.poll_write(&mut conn.io, cx) {
                        return Poll::Ready(Err(format!("the request body failed: {e}")));
                    }
                    // Nothing to parse before the first bytes (the wake-up that brings them
                    // parses here once they are read).
                    let parsed = if conn.buf.is_empty() {
                        Ok(None)
                    } else {
                        codec::parse_response(&mut conn.buf, &method)
                    };
                    match parsed {
                        Err(e) => return Poll::Ready(Err(e.to_string())),
                        Ok(Some(head)) => {
                            if head.status.is_informational()
                                && head.status != StatusCode::SWITCHING_PROTOCOLS
                            {
                                continue; // 100 Continue and the like: the answer follows
                            }
                            return Poll::Ready(Ok(head));
                        }
                        Ok(None) if conn.buf.len() > MAX_RESPONSE_HEAD => {
                            return Poll::Ready(Err("response head too large".into()));
                        }
                        Ok(None) => {}
                    }
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            return Poll::Ready(Err(
                                "connection closed before a response head arrived".into(),
                            ));
                        }
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Err(e.to_string())),
                    }
                }
            })
            .await
            .map_err(|cause| match again.take() {
                Some(req) => SendError::Resend { req, cause },
                None => SendError::Failed(cause),
            })?;
            drop(again);
            let sent = pump.sent();
            drop(pump);

            let upgraded = head.status == StatusCode::SWITCHING_PROTOCOLS;
            // None for a `101` (an informational status has no body).
            let framing = head.framing;
            let reuse = !dedicated
                && !upgraded
                && sent
                && head.version == Version::HTTP_11
                && framing != Some(Framing::Eof)
                && !head.close;
            let mut body = BackendBody {
                conn: Some(conn),
                decoder: Decoder::new(framing),
                reuse,
                upgraded,
                endpoint: self.clone(),
                raw: head.raw,
            };
            if framing.is_none() && !upgraded {
                body.release();
            }
            let headers = head.headers;
            let mut resp = Response::new(Source::Backend(Box::new(body)));
            *resp.status_mut() = head.status;
            *resp.headers_mut() = headers;
            Ok(resp)
        }
    }
}

/// Endpoints by address and protocol, so that route tables compiled at different times share
/// them.
#[derive(Default)]
pub(crate) struct Endpoints {
    /// Keyed by address, protocol, TLS option (0: plain) and keep-alive time.
    by_addr: HashMap<(String, Protocol, u64, Duration), Weak<Endpoint>>,
}

impl Endpoints {
    /// The endpoint of an address spoken to with `tls` (plain when `None`), whose idle
    /// connections are kept `keep_alive`.
    pub(crate) fn get_with(
        &mut self,
        address: &str,
        protocol: Protocol,
        tls: Option<&Arc<UpstreamTls>>,
        keep_alive: Duration,
    ) -> Arc<Endpoint> {
        let key = (
            address.to_string(),
            protocol,
            tls.map_or(0, |t| t.id),
            keep_alive,
        );
        if let Some(e) = self.by_addr.get(&key).and_then(Weak::upgrade) {
            return e;
        }
        let e = Arc::new(Endpoint::new(
            Target::parse(address),
            protocol,
            tls.cloned(),
            keep_alive,
        ));
        self.by_addr.insert(key, Arc::downgrade(&e));
        e
    }

    /// Forgets endpoints no route table uses any more.
    pub(crate) fn purge(&mut self) {
        self.by_addr.retain(|_, w| w.strong_count() > 0);
    }
}

/// A TCP or unix socket connection, or TLS over one.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<Stream>>),
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
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Stream::Tcp(s) => crate::rawio::poll_write(s, cx, buf),
            Stream::Unix(s) => crate::rawio::poll_write(s, cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => crate::rawio::poll_write_vectored(s, cx, bufs),
            Stream::Unix(s) => crate::rawio::poll_write_vectored(s, cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(_) => true,
            Stream::Unix(_) => true,
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header lines of a written request head, lowercased names, grouped by name in a
    /// stable order (the order of one name's values is what HTTP keeps).
    fn lines(head: &[u8]) -> (String, Vec<(String, String)>) {
        let text = String::from_utf8(head.to_vec()).unwrap();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        assert!(rest.is_empty(), "{text}");
        let mut lines = head.split("\r\n");
        let start = lines.next().unwrap().to_string();
        let mut fields: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        (start, fields)
    }

    /// A head kept raw reaches an HTTP/1.1 backend with the request line and the headers (the
    /// forwarding ones included) that the map path gives it.
    #[test]
    fn a_raw_head_goes_out_as_the_map_path_writes_it() {
        let heads = [
            "GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "GET /a?x=1 HTTP/1.1\r\nhost: Example.com:8080\r\nAccept: */*\r\n\
             X-Forwarded-Port: 1\r\nAccept: text/html\r\n\r\n",
            "HEAD / HTTP/1.0\r\nUser-Agent: t\r\nHost: [::1]:80\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\"b\\c\r\nCookie: x=1\r\n\r\n",
            "DELETE /x HTTP/1.1\r\nHost:\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:    spaced   \r\nX-A:b\r\n\r\n",
        ];
        let clients = [
            ClientAddr::new("10.0.0.9".parse().unwrap()),
            ClientAddr::new("::1".parse().unwrap()).over_tls(true),
            ClientAddr::new("::ffff:10.1.2.3".parse().unwrap()),
        ];
        for head in heads {
            for client in &clients {
                let parsed = codec::parse_request(&mut BytesMut::from(head), 4096)
                    .unwrap()
                    .unwrap();
                let raw = parsed.raw.expect(head);
                let request = || {
                    let mut req = Request::new(ProxyBody::Empty);
                    *req.method_mut() = parsed.method.clone();
                    *req.uri_mut() = parsed.uri.clone();
                    *req.version_mut() = parsed.version;
                    req
                };
                let via_raw = request();
                let verbatim = Verbatim {
                    headers: &raw,
                    client,
                };
                let (raw_head, raw_framing) = encode_request(&via_raw, Some(verbatim));
                let mut via_map = request();
                *via_map.headers_mut() = raw.clone().into_map();
                prepare_request(&mut via_map, client, false, false, false);
                let (map_head, map_framing) = encode_request(&via_map, None);
                assert_eq!(raw_framing, map_framing);
                assert_eq!(
                    lines(&raw_head),
                    lines(&map_head),
                    "{head:?} from {client:?}"
                );
            }
        }
    }
}
