//! A guard against request smuggling on HTTP/1 client connections.
//!
//! hyper already refuses most ambiguous framing with 400 (conflicting `Content-Length`
//! values, a `Transfer-Encoding` whose last coding is not `chunked`, `Transfer-Encoding` on
//! HTTP/1.0, malformed header lines), but it accepts two shapes that a front proxy should
//! refuse (RFC 9112 §6.3 calls them likely smuggling attempts): a request with both
//! `Content-Length` and `Transfer-Encoding` (hyper drops the length and reads chunks), and a
//! request with the same `Content-Length` twice (hyper keeps one). Neither is visible in the
//! parsed request, so [`Guarded`] watches the bytes hyper reads: it follows the framing of each
//! request (head, then a fixed-length or chunked body) and records which request heads had
//! those shapes; the service then answers that request 400 and closes the connection.
//!
//! The scan copies only request heads and skips bodies by counting; it stops for good (and
//! leaves the connection to hyper's own checks) on HTTP/2, on upgrades and `CONNECT`, and on
//! anything it cannot follow, so it can never be out of step with hyper and blame the wrong
//! request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest chunk-size or trailer line followed before giving up.
const MAX_LINE: usize = 8 * 1024;

/// What the scan found about the requests of one connection, shared with the service.
#[derive(Default, Debug)]
pub(crate) struct ConnGuard {
    /// 1 + the index of the first request head with ambiguous framing (0: none).
    bad: AtomicU64,
    reason: AtomicU8,
    /// Requests handed to the service so far.
    served: AtomicU64,
}

const REASONS: [&str; 3] = [
    "both Content-Length and Transfer-Encoding",
    "more than one Content-Length header",
    "more than one Transfer-Encoding header",
];

impl ConnGuard {
    /// Called once per request, in order: why this request's framing is refused, if it is.
    /// (On HTTP/2 connections nothing is ever recorded, so the count does not matter.)
    pub(crate) fn check_next(&self) -> Option<&'static str> {
        let index = self.served.fetch_add(1, Ordering::Relaxed);
        let bad = self.bad.load(Ordering::Acquire);
        (bad == index + 1).then(|| REASONS[usize::from(self.reason.load(Ordering::Relaxed))])
    }

    fn flag(&self, index: u64, reason: u8) {
        self.reason.store(reason, Ordering::Relaxed);
        let _ = self
            .bad
            .compare_exchange(0, index + 1, Ordering::Release, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    ChunkLine,
    ChunkData(u64),
    ChunkEnd,
    Trailer,
    Off,
}

/// Follows the framing of the requests of one connection.
pub(crate) struct Scanner {
    state: State,
    head: Vec<u8>,
    line: Vec<u8>,
    heads: u64,
    max_head: usize,
    guard: Arc<ConnGuard>,
}

/// Where a head ends in `buf` (the index after `\n\r\n` or `\n\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(pos) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + pos;
        match (buf.get(at + 1), buf.get(at + 2)) {
            (Some(b'\n'), _) => return Some(at + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(at + 3),
            _ => i = at + 1,
        }
    }
    None
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

impl Scanner {
    pub(crate) fn new(max_head: usize, guard: Arc<ConnGuard>) -> Self {
        Scanner {
            state: State::Head,
            head: Vec::new(),
            line: Vec::new(),
            heads: 0,
            max_head,
            guard,
        }
    }

    pub(crate) fn is_off(&self) -> bool {
        self.state == State::Off
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.head = Vec::new();
        self.line = Vec::new();
    }

    /// Takes a line (up to and including `\n`) from `data` into `self.line`; true when the
    /// line is complete.
    fn take_line(&mut self, data: &mut &[u8]) -> bool {
        match data.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                self.line.extend_from_slice(&data[..nl]);
                *data = &data[nl + 1..];
                if self.line.last() == Some(&b'\r') {
                    self.line.pop();
                }
                true
            }
            None => {
                self.line.extend_from_slice(data);
                *data = &[];
                false
            }
        }
    }

    /// Follows `data`, the next bytes the client sent.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Head => {
                    if self.head.is_empty() {
                        // Empty lines before a request line are ignored, as hyper does.
                        let blank = data.iter().take_while(|&&b| b == b'\r' || b == b'\n');
                        data = &data[blank.count()..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    let before = self.head.len();
                    let from = before.saturating_sub(2);
                    self.head.extend_from_slice(data);
                    match head_end(&self.head[from..]) {
                        Some(end) => {
                            let end = from + end;
                            data = &data[end - before..];
                            self.head.truncate(end);
                            self.on_head();
                            if self.state != State::Off {
                                self.head.clear();
                            }
                        }
                        None => {
                            if self.head.len() > self.max_head {
                                self.off(); // hyper answers 431
                            }
                            return;
                        }
                    }
                }
                State::Fixed(n) => {
                    let k = (data.len() as u64).min(n);
                    data = &data[k as usize..];
                    self.state = if n == k {
                        State::Head
                    } else {
                        State::Fixed(n - k)
                    };
                }
                State::ChunkLine => {
                    if !self.take_line(&mut data) {
                        if self.line.len() > MAX_LINE {
                            self.off();
                        }
                        continue;
                    }
                    let end = self
                        .line
                        .iter()
                        .position(|&b| matches!(b, b';' | b' ' | b'\t'))
                        .unwrap_or(self.line.len());
                    let size = std::str::from_utf8(&self.line[..end])
                        .ok()
                        .filter(|s| !s.is_empty())
                        .and_then(|s| u64::from_str_radix(s, 16).ok());
                    self.line.clear();
                    self.state = match size {
                        Some(0) => State::Trailer,
                        Some(n) => State::ChunkData(n),
                        None => State::Off,
                    };
                }
                State::ChunkData(n) => {
                    let k = (data.len() as u64).min(n);
                    data = &data[k as usize..];
                    self.state = if n == k {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(n - k)
                    };
                }
                State::ChunkEnd => {
                    if self.take_line(&mut data) {
                        let empty = self.line.is_empty();
                        self.line.clear();
                        self.state = if empty { State::ChunkLine } else { State::Off };
                    } else if self.line.len() > 2 {
                        self.off();
                    }
                }
                State::Trailer => {
                    if self.take_line(&mut data) {
                        if self.line.is_empty() {
                            self.state = State::Head;
                        }
                        self.line.clear();
                    } else if self.line.len() > MAX_LINE {
                        self.off();
                    }
                }
            }
        }
    }

    /// Decides what follows a complete head in `self.head`, flagging ambiguous framing.
    fn on_head(&mut self) {
        let index = self.heads;
        self.heads += 1;
        let mut lines = self
            .head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let request_line = lines.next().unwrap_or_default();
        let method = request_line
            .split(|&b| b == b' ')
            .next()
            .unwrap_or_default();
        if method == b"PRI" || method == b"CONNECT" {
            return self.off(); // HTTP/2 preface, or a tunnel
        }
        let (mut cl, mut te, mut chunked, mut upgrade) = (0u32, 0u32, false, false);
        let mut length = None;
        for line in lines {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            if name.eq_ignore_ascii_case(b"content-length") {
                cl += 1;
                length = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                te += 1;
                let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = trim(last).eq_ignore_ascii_case(b"chunked");
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            }
        }
        let reason = if cl > 0 && te > 0 {
            Some(0)
        } else if cl > 1 {
            Some(1)
        } else if te > 1 {
            Some(2)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.guard.flag(index, reason);
            return self.off(); // the answer closes the connection
        }
        self.state = if upgrade {
            State::Off // the connection may stop being HTTP after this request
        } else if te > 0 {
            if chunked {
                State::ChunkLine
            } else {
                State::Off // hyper refuses it
            }
        } else if cl > 0 {
            match length {
                Some(0) => State::Head,
                Some(n) => State::Fixed(n),
                None => State::Off, // hyper refuses it
            }
        } else {
            State::Head
        };
        if self.state == State::Off {
            self.off();
        }
    }
}

/// A client connection whose incoming bytes are followed by a [`Scanner`].
pub(crate) struct Guarded<IO> {
    io: IO,
    scanner: Option<Scanner>,
}

impl<IO> Guarded<IO> {
    pub(crate) fn new(io: IO, scanner: Scanner) -> Self {
        Guarded {
            io,
            scanner: Some(scanner),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if let Some(scanner) = &mut this.scanner {
            scanner.feed(&buf.filled()[before..]);
            if scanner.is_off() {
                this.scanner = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
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
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split at every position into a fresh scanner; returns the flagged
    /// request index and reason (the same for every split) and whether the scan is still on.
    fn scan(input: &str) -> (Option<(u64, &'static str)>, bool) {
        let mut result = None;
        for split in 0..=input.len() {
            for step in [1usize, 3, 1 << 20] {
                let guard = Arc::new(ConnGuard::default());
                let mut s = Scanner::new(64 * 1024, guard.clone());
                let (a, b) = input.as_bytes().split_at(split);
                for part in [a, b] {
                    for chunk in part.chunks(step) {
                        s.feed(chunk);
                    }
                }
                let bad = guard.bad.load(Ordering::Relaxed);
                let got = (bad > 0).then(|| {
                    (
                        bad - 1,
                        REASONS[usize::from(guard.reason.load(Ordering::Relaxed))],
                    )
                });
                let r = (got, !s.is_off());
                match &result {
                    None => result = Some(r),
                    Some(prev) => assert_eq!(*prev, r, "split at {split}, step {step}"),
                }
            }
        }
        result.unwrap()
    }

    #[test]
    fn follows_bodies_and_flags_only_ambiguous_heads() {
        // Keep-alive requests with fixed and chunked bodies whose bytes look like heads.
        let body = "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let clean = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n\
             POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}\
             POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x};ext=1\r\n{body}\r\n0\r\nx-trailer: {body_line}\r\n\r\n\
             \r\nGET /c HTTP/1.1\nHost: a\n\n",
            body.len(),
            body.len(),
            body_line = "1",
        );
        assert_eq!(scan(&clean), (None, true));
        let smuggle =
            |extra: &str| format!("{clean}POST /d HTTP/1.1\r\nHost: a\r\n{extra}\r\n0\r\n\r\n");
        assert_eq!(
            scan(&smuggle(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"
            )),
            (Some((4, REASONS[0])), false)
        );
        assert_eq!(
            scan(&smuggle(
                "transfer-encoding: chunked\r\ncontent-length: 5\r\n"
            )),
            (Some((4, REASONS[0])), false)
        );
        assert_eq!(
            scan(&smuggle("Content-Length: 3\r\nContent-Length: 3\r\n")),
            (Some((4, REASONS[1])), false)
        );
        assert_eq!(
            scan(&smuggle(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
            )),
            (Some((4, REASONS[2])), false)
        );
        // The scan stops (and flags nothing) where hyper takes over on its own.
        assert_eq!(scan("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), (None, false));
        assert_eq!(
            scan("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nxx"),
            (None, false)
        );
        assert_eq!(
            scan("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            (None, false)
        );
        assert_eq!(
            scan("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"),
            (None, false)
        );
    }

    #[test]
    fn the_service_sees_the_flag_on_the_right_request() {
        let guard = Arc::new(ConnGuard::default());
        guard.flag(2, 1);
        assert_eq!(guard.check_next(), None);
        assert_eq!(guard.check_next(), None);
        assert_eq!(guard.check_next(), Some(REASONS[1]));
        assert_eq!(guard.check_next(), None);
    }
}
