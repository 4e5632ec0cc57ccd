//! The client side of the data plane: one task per client connection, running the gateway's
//! own HTTP/1.1 loop, or handing the connection to hyper's HTTP/2 server when it opens with
//! the HTTP/2 preface (prior knowledge, h2c).
//!
//! Between requests a connection parks on readiness **holding no buffer and no request
//! future**: its read buffer is allocated when the next request's bytes arrive and dropped
//! once the answer is written and nothing more was received (pipelined requests keep it), and
//! the request's state ([`Conn`]) and future are allocated for the request's life only. So an
//! idle keep-alive connection costs its task (a 280-byte future) and the socket.
//!
//! Per request: the head is parsed with `httparse` (the framing checks of `codec` refuse
//! smuggling shapes with 400; a head over `max_header_bytes` gets 431); the body is streamed
//! by [`ClientBody`] from the same connection, answering `Expect: 100-continue` when it is
//! first read; the answer is written with `Content-Length`, chunked (HTTP/1.1, trailers
//! passed on) or close-delimited (HTTP/1.0) framing; no body after `HEAD`, `1xx`, `204`,
//! `304`. A `101` answer joins the client connection to the backend's. The connection stays
//! open unless the client asked to close (or is HTTP/1.0 without keep-alive), a body was
//! left unread beyond what is worth draining, or the server is shutting down.
//!
//! Timeouts: a new connection that sends nothing is closed after `header_read_timeout`; a
//! request head must then arrive completely within `header_read_timeout` of its first byte
//! (so a first request has at most twice that); an idle connection is closed after
//! `keep_alive_timeout`. Idle connections have no timer each: one shared tick (an eighth of the
//! shorter timeout, 10 ms to 1 s) wakes them all to compare their deadline with the clock, so
//! idle timeouts are enforced to within one tick, and each idle connection is polled once per
//! tick (8,000 idle connections: 8,000 wake-ups a second).

use crate::body::{BoxError, ProxyBody, RawHead, Source, materialize};
use crate::codec::{self, Decoded, Decoder, HeadError, RequestHead};
use crate::error::ProxyError;
use crate::headers::{ClientAddr, connection_has};
use crate::proxy::{Shared, handle};
use crate::stream::ClientStream;
use crate::upstream::Tunnel;
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The HTTP/2 connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// The first read buffer of a request.
const FIRST_BUF: usize = 4096;
/// A request body left unread is read and dropped up to this size to keep the connection;
/// beyond it the connection is closed.
const MAX_DRAIN: u64 = 64 * 1024;

/// Settings of every client connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnOpts {
    pub(crate) max_head: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) keep_alive: Duration,
}

/// A client connection's socket and read state, shared by the connection loop and the body
/// of its current request (locked only within a poll, never across an await).
struct ConnIo {
    stream: ClientStream,
    /// Bytes received and not yet used; no allocation while the connection is idle.
    buf: BytesMut,
    /// The body of the current request.
    decoder: Decoder,
    /// `100 Continue` is owed, this many bytes of it sent.
    continue_at: Option<usize>,
    /// The current request's body broke its framing (e.g. a bad chunk size).
    body_error: bool,
}

pub(crate) struct Conn {
    io: Mutex<ConnIo>,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, ConnIo> {
        self.io.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ConnIo {
    /// Reads more into the buffer (growing it up to twice its length); `Ok(0)` at the end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let spare = self.buf.capacity() - self.buf.len();
        if spare < 512 {
            self.buf.reserve(self.buf.len().max(FIRST_BUF));
        }
        let read = std::pin::pin!(self.stream.read_buf(&mut self.buf));
        read.poll(cx)
    }
}

/// An HTTP/1.1 client's request body, read from its connection as the backend takes it.
pub(crate) struct ClientBody {
    conn: Arc<Conn>,
}

impl ClientBody {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut guard = self.conn.lock();
        let io = &mut *guard;
        if let Some(mut at) = io.continue_at {
            while at < CONTINUE.len() {
                match Pin::new(&mut io.stream).poll_write(cx, &CONTINUE[at..]) {
                    Poll::Ready(Ok(n)) if n > 0 => at += n,
                    Poll::Ready(Ok(_)) => {
                        return Poll::Ready(Some(Err(
                            io::Error::from(io::ErrorKind::WriteZero).into()
                        )));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                    Poll::Pending => {
                        io.continue_at = Some(at);
                        return Poll::Pending;
                    }
                }
            }
            match Pin::new(&mut io.stream).poll_flush(cx) {
                Poll::Pending => {
                    io.continue_at = Some(at);
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Ok(())) => {}
            }
            io.continue_at = None;
        }
        loop {
            match io.decoder.decode(&mut io.buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => match ready!(io.poll_fill(cx)) {
                    Ok(0) => {
                        let e = io
                            .decoder
                            .on_eof()
                            .err()
                            .unwrap_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof));
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                },
                Err(e) => {
                    io.body_error = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    /// Whether the rest of a fixed-length body has arrived already (and no `100 Continue`
    /// is owed).
    pub(crate) fn is_buffered(&self) -> bool {
        let io = self.conn.lock();
        io.continue_at.is_none()
            && io
                .decoder
                .remaining()
                .is_some_and(|n| n <= io.buf.len() as u64)
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        let io = self.conn.lock();
        io.decoder.is_done() && !io.decoder.has_trailers()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.conn.lock().decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// What arrived on a connection waiting for a request. (Short-lived, inside the boxed
/// per-request future: boxing the head would only add an allocation per request.)
#[allow(clippy::large_enum_variant)]
enum Head {
    Request(RequestHead),
    /// The HTTP/2 preface.
    H2,
    /// Closed, broken, or too slow: close without an answer.
    Closed,
    /// Refused: answer with this status and close.
    Refused(StatusCode, &'static str),
}

/// What a connection does after a request.
enum Next {
    /// Wait for the next request.
    Again,
    /// Close now.
    Close,
    /// Close after an answer (see [`linger`]).
    Linger,
    H2,
    Tunnel(Box<Tunnel>),
}

/// Wakes idle connections: on every tick (so that each can check its idle deadline: one
/// shared timer instead of one per connection), and when the server shuts down.
#[derive(Default)]
pub(crate) struct Closing {
    flag: AtomicBool,
    /// Memory pressure: idle connections close (the server stays up).
    shed: AtomicBool,
    notify: Notify,
    /// Connections speaking HTTP ([`Tracked`] handles), and the signal that none is left.
    conns: AtomicUsize,
    gone: Notify,
}

impl Closing {
    /// Resolves once no [`Tracked`] handle is left.
    pub(crate) async fn all_gone(&self) {
        loop {
            let notified = self.gone.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.conns.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn close(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Closes idle keep-alive connections while `on` (memory pressure); others finish.
    pub(crate) fn shed(&self, on: bool) {
        self.shed.store(on, Ordering::SeqCst);
        if on {
            self.notify.notify_waiters();
        }
    }

    fn is_shedding(&self) -> bool {
        self.shed.load(Ordering::Relaxed)
    }

    /// Wakes every idle connection to look at its deadline.
    pub(crate) fn tick(&self) {
        self.notify.notify_waiters();
    }

    fn is_closing(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once [`Closing::close`] was called.
    async fn closed(&self) {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }
}

/// The shared state, counted as one connection the server waits for at shutdown.
pub(crate) struct Tracked(Arc<Shared>);

impl Tracked {
    /// Counts a connection in if fewer than `max` are open (0: no limit); None when full.
    pub(crate) fn within(shared: &Arc<Shared>, max: usize) -> Option<Self> {
        shared
            .closing
            .conns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()?;
        shared.metrics.connection_opened();
        Some(Tracked(shared.clone()))
    }
}

impl std::ops::Deref for Tracked {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.metrics.connection_closed();
        if self.0.closing.conns.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.closing.gone.notify_waiters();
        }
        if self.0.limits.max_connections() != 0 {
            self.0.limits.room.notify_waiters();
        }
    }
}

/// How often idle connections look at their deadlines: an eighth of the shorter timeout,
/// between 10 ms and 1 s.
pub(crate) fn tick_interval(opts: &ConnOpts) -> Duration {
    (opts.header_timeout.min(opts.keep_alive) / 8)
        .clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Serves one client connection until it closes, its idle timeout passes, or `closing`
/// is set (between requests). `shared` counts the connection for as long as HTTP is spoken on
/// it.
///
/// While idle this future holds the socket and little else: the shared per-request state
/// ([`Conn`]) and what a request needs (buffers, the request's own future, in [`exchange`]'s
/// future) are allocated for the request's life.
///
/// (A plain function returning an `async` block: the arguments of an `async fn` would be
/// stored in the future a second time.)
pub(crate) fn serve(
    shared: Tracked,
    mut stream: ClientStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    let client = ClientAddr::new(peer.ip()).over_tls(stream.is_tls());
    async move {
        let opts = &shared.conn;
        // Bytes of pipelined requests (boxed: rare, and this future is what an idle
        // connection costs).
        let mut pending: Option<Box<BytesMut>> = None;
        let mut first = true;
        loop {
            // When the request's head began to arrive: its read's deadline runs from here, and
            // so does the request's duration in the metrics.
            let arrived = if pending.is_none() {
                // Idle: wait for the next request's first bytes, holding no buffer.
                let wait = if first {
                    opts.header_timeout
                } else {
                    opts.keep_alive
                };
                let idle_until = Instant::now() + wait;
                loop {
                    // No timer of its own: the shared tick wakes it to look at the time.
                    let ticked = shared.closing.notify.notified();
                    let mut ticked = std::pin::pin!(ticked);
                    ticked.as_mut().enable();
                    // Under memory pressure, keep-alive connections close between requests
                    // (a new connection was let in by the listener, which decides on those).
                    if shared.closing.is_closing() || (!first && shared.closing.is_shedding()) {
                        return;
                    }
                    let readable = poll_fn(|cx| stream.poll_read_ready(cx));
                    tokio::select! {
                        ready = readable => {
                            if ready.is_err() {
                                return;
                            }
                            break;
                        }
                        // The clock is read on ticks only: not again for each request.
                        () = ticked => {
                            if Instant::now() >= idle_until {
                                return;
                            }
                        }
                    }
                }
                // From the first byte (nginx counts a first request's from the accept).
                Instant::now()
            } else {
                if shared.closing.is_closing() {
                    return;
                }
                Instant::now() // pipelined
            };
            let buf = pending.take().map_or_else(crate::spare::take, |b| *b);
            let conn = Arc::new(Conn {
                io: Mutex::new(ConnIo {
                    stream,
                    buf,
                    decoder: Decoder::done(),
                    continue_at: None,
                    body_error: false,
                }),
            });
            // Written straight into its allocation (`Box::pin(value)` copied the future, a few
            // KB, twice).
            let next = Box::write(
                Box::new_uninit(),
                exchange(&shared, &conn, &client, opts, arrived, first),
            );
            let next = Box::into_pin(next).await;
            first = false;
            match next {
                Next::Again => {
                    // Nothing else holds the request's state now (its body is done).
                    let Ok(conn) = Arc::try_unwrap(conn) else {
                        return;
                    };
                    let io = conn.io.into_inner().unwrap_or_else(|e| e.into_inner());
                    stream = io.stream;
                    if io.buf.is_empty() {
                        crate::spare::give(io.buf, FIRST_BUF);
                    } else {
                        pending = Some(Box::new(io.buf));
                    }
                }
                Next::Close => return,
                Next::Linger => return Box::pin(linger(conn)).await,
                Next::H2 => {
                    return Box::pin(serve_h2(shared, conn, client)).await;
                }
                Next::Tunnel(tunnel) => {
                    // Upgraded connections are not waited for at shutdown.
                    drop(shared);
                    return Box::pin(join(conn, tunnel)).await;
                }
            }
        }
    }
}

/// Reads a request head, serves the request and writes the answer.
// Not an `async fn`, whose arguments would take room twice in the future.
#[allow(clippy::manual_async_fn)]
fn exchange(
    shared: &Shared,
    conn: &Arc<Conn>,
    client: &ClientAddr,
    opts: &ConnOpts,
    arrived: Instant,
    first: bool,
) -> impl Future<Output = Next> {
    async move {
        let deadline = arrived + opts.header_timeout;
        let head =
            match tokio::time::timeout_at(deadline, read_head(conn, opts.max_head, first)).await {
                Ok(head) => head,
                Err(_) => Head::Closed, // slowloris
            };
        let head = match head {
            Head::Request(head) => head,
            Head::H2 => return Next::H2,
            Head::Closed => return Next::Close,
            Head::Refused(status, why) => {
                let resp = refusal(status, why);
                let _ = write_response(conn, resp, false, false, false).await;
                return Next::Linger;
            }
        };
        let RequestHead {
            method,
            uri,
            version,
            headers,
            raw,
            framing,
            connection,
        } = head;
        let v10 = version == Version::HTTP_10;
        let mut keep = if v10 {
            connection && connection_has(&headers, "keep-alive")
        } else {
            !(connection && connection_has(&headers, "close"))
        };
        let is_head = method == Method::HEAD;
        let body = {
            let mut io = conn.lock();
            io.decoder = Decoder::new(framing);
            if framing.is_some() {
                let expect = !v10
                    && headers
                        .get(EXPECT)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
                io.continue_at = expect.then_some(0);
                ProxyBody::Stream(Source::Client(ClientBody { conn: conn.clone() }))
            } else {
                io.continue_at = None;
                ProxyBody::Empty
            }
        };
        // Boxed once here: the request is handed from one `async fn` to the next on its way to
        // the backend, a pointer rather than a few hundred bytes each time.
        let mut req = Box::new(Request::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;

        let resp = handle(shared, client, req, raw, arrived).await;

        let body_error = std::mem::take(&mut conn.lock().body_error);
        let resp = if body_error {
            keep = false;
            ProxyError::BadRequest {
                why: "malformed chunked request body",
            }
            .into_response(None)
        } else {
            resp
        };
        // A body the answer did not read is drained afterwards, unless the client still waits
        // for `100 Continue` (it may or may not send the body: close instead).
        let unread = {
            let io = conn.lock();
            let unread = !io.decoder.is_done();
            if unread && io.continue_at.is_some() {
                keep = false;
            }
            unread
        };
        if connection_has(resp.headers(), "close") || shared.closing.is_closing() {
            keep = false;
        }
        match write_response(conn, resp, is_head, v10, keep).await {
            Err(e) => {
                tracing::debug!(error = %e, "writing a response failed");
                return Next::Close;
            }
            Ok(Written::Tunnel(tunnel)) => return Next::Tunnel(tunnel),
            Ok(Written::Done { keep: k }) => keep = k,
        }
        if !keep || (unread && !drain(conn, opts.header_timeout).await) {
            return Next::Linger;
        }
        Next::Again
    }
}

/// Reads until a complete request head (or the HTTP/2 preface, on a connection's first
/// bytes) is in the buffer.
async fn read_head(conn: &Conn, max_head: usize, first: bool) -> Head {
    poll_fn(|cx| {
        let mut guard = conn.lock();
        let io = &mut *guard;
        loop {
            if !io.buf.is_empty() {
                if first && PREFACE.starts_with(&io.buf[..io.buf.len().min(PREFACE.len())]) {
                    if io.buf.len() >= PREFACE.len() {
                        return Poll::Ready(Head::H2);
                    }
                } else {
                    // Empty lines before a request line are ignored (RFC 9112 §2.2).
                    let blank = io.buf.iter().take_while(|&&b| b == b'\r' || b == b'\n');
                    let blank = blank.count();
                    let _ = io.buf.split_to(blank);
                    match codec::parse_request(&mut io.buf, max_head) {
                        Ok(Some(head)) => return Poll::Ready(Head::Request(head)),
                        Err(HeadError::TooLarge) => {
                            return Poll::Ready(Head::Refused(
                                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "request head too large",
                            ));
                        }
                        Ok(None) if io.buf.len() > max_head => {
                            return Poll::Ready(Head::Refused(
                                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "request head too large",
                            ));
                        }
                        Ok(None) => {}
                        Err(HeadError::Bad(why)) => {
                            return Poll::Ready(Head::Refused(StatusCode::BAD_REQUEST, why));
                        }
                    }
                }
            }
            match ready!(io.poll_fill(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(Head::Closed),
                Ok(_) => {}
            }
        }
    })
    .await
}

fn refusal(status: StatusCode, why: &'static str) -> Response<ProxyBody> {
    if status == StatusCode::BAD_REQUEST {
        return ProxyError::BadRequest { why }.into_response(None);
    }
    tracing::warn!(status = status.as_u16(), "{why}");
    let mut resp = Response::new(ProxyBody::full(format!("{why}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

enum Written {
    Done {
        keep: bool,
    },
    /// A `101` was written: join the connection to this backend connection.
    Tunnel(Box<Tunnel>),
}

/// Writes `parts` whole.
async fn write_all(conn: &Conn, parts: &[&[u8]]) -> io::Result<()> {
    let mut storage = [IoSlice::new(&[]); 4];
    let n = parts.len().min(storage.len());
    for (slot, p) in storage.iter_mut().zip(parts) {
        *slot = IoSlice::new(p);
    }
    let mut slices = &mut storage[..n];
    poll_fn(|cx| {
        let mut io = conn.lock();
        while !slices.is_empty() {
            if slices[0].is_empty() {
                slices = &mut std::mem::take(&mut slices)[1..];
                continue;
            }
            match ready!(Pin::new(&mut io.stream).poll_write_vectored(cx, slices)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // A no-op on TCP; TLS may hold encrypted bytes the socket did not take yet.
        Pin::new(&mut io.stream).poll_flush(cx)
    })
    .await
}

/// Bodies up to this size that are ready with their head are copied after it and go out in
/// the same buffer.
const INLINE_BODY: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length,
    Chunked,
    Close,
}

/// Writes a response: its head (with one framing), then its body as it comes; the head goes
/// out with the first piece of body when that is ready at once.
// Not an `async fn`, whose arguments would take room twice in the future.
#[allow(clippy::manual_async_fn)]
fn write_response(
    conn: &Conn,
    resp: Response<ProxyBody>,
    is_head: bool,
    v10: bool,
    mut keep: bool,
) -> impl Future<Output = io::Result<Written>> {
    async move {
        let (parts, mut body) = resp.into_parts();
        let status = parts.status;
        let mut headers = parts.headers;
        // A backend's headers as it sent them (hop-by-hop ones left out), then the gateway's.
        let raw = body.take_raw();
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(status.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        head.extend_from_slice(b"\r\n");
        let upgrade =
            status == StatusCode::SWITCHING_PROTOCOLS && matches!(body, ProxyBody::Tunnel(_));
        let out = if upgrade {
            Out::None
        } else if is_head || status.is_informational() || status == StatusCode::NOT_MODIFIED {
            headers.remove(TRANSFER_ENCODING);
            Out::None
        } else if status == StatusCode::NO_CONTENT {
            headers.remove(TRANSFER_ENCODING);
            headers.remove(CONTENT_LENGTH);
            Out::None
        } else if raw.as_ref().is_some_and(|r| r.length) || headers.contains_key(CONTENT_LENGTH) {
            Out::Length
        } else if let Some(n) = body.size_hint().exact() {
            head.extend_from_slice(b"content-length: ");
            codec::write_u64(&mut head, n);
            head.extend_from_slice(b"\r\n");
            Out::Length
        } else if !v10 {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Out::Chunked
        } else {
            keep = false;
            Out::Close
        };
        if !upgrade {
            if !keep {
                if !headers.contains_key(CONNECTION) {
                    head.extend_from_slice(b"connection: close\r\n");
                }
            } else if v10 {
                head.extend_from_slice(b"connection: keep-alive\r\n");
            }
        }
        if let Some(raw) = &raw {
            raw.write(&mut head);
        }
        codec::write_headers(&mut head, &headers);
        head.extend_from_slice(b"\r\n");
        if upgrade {
            write_all(conn, &[&head]).await?;
            return match body {
                ProxyBody::Tunnel(t) => Ok(Written::Tunnel(t)),
                _ => Ok(Written::Done { keep: false }),
            };
        }
        if out == Out::None {
            drop(body);
            write_all(conn, &[&head]).await?;
            return Ok(Written::Done { keep });
        }
        let mut pending_head = Some(head);
        let mut trailers = None;
        loop {
            let frame = if pending_head.is_some() {
                match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        if let Some(h) = pending_head.take() {
                            write_all(conn, &[&h]).await?;
                        }
                        continue;
                    }
                }
            } else {
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            };
            let frame = match frame {
                None => break,
                Some(Err(e)) => return Err(io::Error::other(e)),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    let mut h = pending_head.take();
                    if out != Out::Chunked
                        && data.len() <= INLINE_BODY
                        && let Some(mut h) = h.take()
                    {
                        // A small body joins its head: one buffer is one `send`, where two
                        // take a `writev` that the kernel first copies the list of.
                        h.extend_from_slice(&data);
                        write_all(conn, &[&h]).await?;
                        continue;
                    }
                    let h = h.as_deref().unwrap_or(&[]);
                    if out == Out::Chunked {
                        let size = codec::chunk_head(data.len());
                        write_all(conn, &[h, &size, &data, b"\r\n"]).await?;
                    } else {
                        write_all(conn, &[h, &data]).await?;
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            }
        }
        let h = pending_head.take();
        let h = h.as_deref().unwrap_or(&[]);
        if out == Out::Chunked {
            write_all(conn, &[h, &codec::chunked_end(trailers.as_ref())]).await?;
        } else if !h.is_empty() {
            write_all(conn, &[h]).await?;
        }
        Ok(Written::Done { keep })
    }
}

/// Reads and drops what is left of a request body the answer did not need, if that is little
/// and the client was not left waiting for `100 Continue`; false: close the connection.
async fn drain(conn: &Arc<Conn>, within: Duration) -> bool {
    {
        let io = conn.lock();
        if io.continue_at.is_some() || io.decoder.remaining().is_some_and(|n| n > MAX_DRAIN) {
            return false;
        }
    }
    let mut body = ClientBody { conn: conn.clone() };
    let work = async {
        let mut drained = 0u64;
        loop {
            match poll_fn(|cx| body.poll_frame(cx)).await {
                None => return true,
                Some(Ok(frame)) => {
                    drained += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if drained > MAX_DRAIN {
                        return false;
                    }
                }
                Some(Err(_)) => return false,
            }
        }
    };
    tokio::time::timeout(within, work).await.unwrap_or(false)
}

/// Closes after an answer: stops writing, then reads and drops what the client still sends
/// for a moment, so that the answer is not lost to a reset.
async fn linger(conn: Arc<Conn>) {
    let closing = poll_fn(|cx| Pin::new(&mut conn.lock().stream).poll_shutdown(cx));
    if closing.await.is_err() {
        return;
    }
    let discard = async {
        let mut dropped = 0usize;
        loop {
            let n = poll_fn(|cx| {
                let mut io = conn.lock();
                io.buf.clear();
                io.poll_fill(cx)
            })
            .await;
            match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    dropped += n;
                    if dropped > 1 << 20 {
                        return;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), discard).await;
}

/// Copies bytes both ways between an upgraded client connection and its backend connection.
async fn join(conn: Arc<Conn>, tunnel: Box<Tunnel>) {
    let Ok(conn) = Arc::try_unwrap(conn) else {
        tracing::debug!("upgrade: the request body is still in use; closing");
        return;
    };
    let io = conn.io.into_inner().unwrap_or_else(|e| e.into_inner());
    let (mut client, early) = (io.stream, io.buf);
    let Tunnel {
        io: mut backend,
        leftover,
        in_flight,
        _open,
    } = *tunnel;
    let result = async {
        if !early.is_empty() {
            backend.write_all(&early).await?;
        }
        if !leftover.is_empty() {
            client.write_all(&leftover).await?;
        }
        tokio::io::copy_bidirectional(&mut client, &mut backend).await
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
    drop(in_flight);
}

/// A connection whose first bytes were already read.
struct Prefixed {
    prefix: BytesMut,
    io: ClientStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves an HTTP/2 (prior knowledge) connection with hyper until it ends; on shutdown it is
/// closed gracefully (streams under way finish).
async fn serve_h2(tracked: Tracked, conn: Arc<Conn>, client: ClientAddr) {
    let Ok(conn) = Arc::try_unwrap(conn) else {
        return;
    };
    let io = conn.io.into_inner().unwrap_or_else(|e| e.into_inner());
    let io = Prefixed {
        prefix: io.buf,
        io: io.stream,
    };
    serve_h2_io(tracked, io, client).await
}

/// Serves a TLS connection that chose `h2` by ALPN.
pub(crate) async fn serve_h2_tls(tracked: Tracked, stream: ClientStream, peer: SocketAddr) {
    let client = ClientAddr::new(peer.ip()).over_tls(stream.is_tls());
    let io = Prefixed {
        prefix: BytesMut::new(),
        io: stream,
    };
    serve_h2_io(tracked, io, client).await
}

async fn serve_h2_io(tracked: Tracked, io: Prefixed, client: ClientAddr) {
    let shared = tracked.0.clone();
    let client = Arc::new(client);
    let max_head = u32::try_from(shared.conn.max_head).unwrap_or(u32::MAX);
    let closing = shared.clone();
    let closing = &closing.closing;
    let service = service_fn(move |req: Request<Incoming>| {
        let (shared, client) = (shared.clone(), client.clone());
        async move {
            let mut resp = handle(
                &shared,
                &client,
                Box::new(req.map(ProxyBody::incoming)),
                None,
                Instant::now(),
            )
            .await;
            materialize(&mut resp); // hyper writes the map
            Ok::<_, Infallible>(resp)
        }
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(max_head)
        .serve_connection(TokioIo::new(io), service);
    let mut served = std::pin::pin!(served);
    tokio::select! {
        result = served.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "h2 client connection ended with an error");
            }
            return;
        }
        () = closing.closed() => {}
    }
    served.as_mut().graceful_shutdown();
    let _ = served.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hop::HopKey;
    use crate::proxy::Live;
    use crate::table::{Registry, RouteTable};
    use arc_swap::ArcSwap;
    use tokio::net::TcpListener;

    /// What an idle keep-alive connection holds in its task is the `serve` future: it must
    /// stay small (the request's own state is boxed per request).
    #[tokio::test]
    async fn the_connection_future_is_small() {
        let key = HopKey::new(b"k");
        let table = RouteTable::compile(&Default::default(), 1, &key, &mut Registry::default());
        let shared = Arc::new(Shared {
            node_id: 1,
            key,
            max_replay_body: 0,
            trusted: Box::new([]),
            live: ArcSwap::from_pointee(Live {
                table: Arc::new(table),
                leader: None,
            }),
            swapped: Notify::new(),
            conn: ConnOpts {
                max_head: 8192,
                header_timeout: Duration::from_secs(1),
                keep_alive: Duration::from_secs(1),
            },
            https_port: None,
            closing: Closing::default(),
            metrics: crate::metrics::Metrics::new(),
            access_log: None,
            health: None,
            limits: Default::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        // The per-request future is boxed once per request; the rare paths (leader
        // forwarding, replay, queueing, connecting, h2) are boxed apart, keeping it small.
        let client = ClientAddr::new(peer.ip());
        let req = Request::new(ProxyBody::Empty);
        let size = std::mem::size_of_val(&handle(
            &shared,
            &client,
            Box::new(req),
            None,
            Instant::now(),
        ));
        eprintln!("handle future: {size} bytes");
        assert!(size <= 8192, "the request future grew to {size} bytes");
        let tracked = Tracked::within(&shared, 0).expect("no limit");
        let fut = serve(tracked, ClientStream::Plain(stream), peer);
        let size = std::mem::size_of_val(&fut);
        eprintln!("serve future: {size} bytes");
        // 280 bytes in release builds (288 in debug): with tokio's task header and trailer that is
        // a 384-byte task, 128-aligned; a few bytes more would make it 512.
        let limit = if cfg!(debug_assertions) { 288 } else { 280 };
        assert!(size <= limit, "the connection future grew to {size} bytes");
    }
}
