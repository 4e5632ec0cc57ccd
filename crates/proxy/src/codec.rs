//! HTTP/1.1 wire format, shared by the client side (`conn`) and the backend side
//! (`upstream`): heads parsed with `httparse` into `http` types without copying header values
//! (a backend's response headers stay in its bytes, [`RawHeaders`], until something needs
//! them as a map, and so do the common client request's, [`RawRequest`]), heads written into
//! one buffer, and the body [`Decoder`] (fixed length, chunked with trailers, or until the
//! connection closes) and chunked encoding.
//!
//! Framing is strict where a proxy must be (RFC 9112 §6.3, request smuggling): a request with
//! both `Content-Length` and `Transfer-Encoding`, either one twice, a `Content-Length` that is
//! not a plain decimal, a `Transfer-Encoding` other than `chunked`, `Transfer-Encoding` on
//! HTTP/1.0, or a malformed chunk size is refused.

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use std::io;
use std::mem::MaybeUninit;

/// Most header fields in a head (hyper's default too).
pub(crate) const MAX_HEADERS: usize = 128;
/// Longest chunk-size line or trailer section followed.
const MAX_LINE: usize = 8 * 1024;
const MAX_TRAILERS: usize = 64 * 1024;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Eof,
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Malformed, or ambiguous framing: 400 with this reason.
    Bad(&'static str),
    /// Longer than the limit: 431.
    TooLarge,
}

/// A parsed request head.
pub(crate) struct RequestHead {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    /// The headers, unless they are kept as received in `raw` (then empty).
    pub(crate) headers: HeaderMap,
    /// The headers as the client wrote them, when the head is the common kind that the proxy
    /// can pass on as it came ([`RawRequest`]).
    pub(crate) raw: Option<RawRequest>,
    /// `None`: no body.
    pub(crate) framing: Option<Framing>,
    /// It has a `Connection` header.
    pub(crate) connection: bool,
}

/// The headers of a client's request kept in the bytes it sent, to be written to the backend
/// as they came, followed by the forwarding headers, without building a header map. Kept for
/// the common head only: an origin-form target, one `Host`, no body, and no header the proxy
/// must remove, replace or read for framing (hop-by-hop, `Expect`, the forwarding headers, the
/// gateway's hop marker). Anything else, and any route or feature that reads or changes the
/// request's headers, turns it into a map first ([`RawRequest::into_map`]).
#[derive(Clone)]
pub(crate) struct RawRequest {
    headers: RawHeaders,
    /// Which of the headers is `Host`.
    host: usize,
}

impl RawRequest {
    /// The `Host` header's value.
    pub(crate) fn host(&self) -> &[u8] {
        let (_, _, at, n) = self.headers.spans[self.host];
        &self.headers.head[at..at + n]
    }

    /// The values of every header called `name` (lowercase), in order.
    pub(crate) fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        let h = &self.headers.head[..];
        self.headers
            .spans
            .iter()
            .filter(move |&&(name_at, name_len, _, _)| {
                h[name_at..name_at + name_len].eq_ignore_ascii_case(name.as_bytes())
            })
            .map(move |&(_, _, at, n)| &h[at..at + n])
    }

    /// Appends `name: value\r\n` for every header (see [`RawHeaders::write`]).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        self.headers.write(out);
    }

    /// The headers as a map, with room for the few the proxy adds.
    pub(crate) fn into_map(self) -> HeaderMap {
        self.headers.into_map(4)
    }
}

/// A request's headers, in a map or still raw, for the lookups of routing and balancing.
#[derive(Clone, Copy)]
pub(crate) enum Headers<'a> {
    Map(&'a HeaderMap),
    Raw(&'a RawRequest),
}

impl<'a> Headers<'a> {
    /// Whether a header `name` has exactly `value`.
    pub(crate) fn has(self, name: &HeaderName, value: &HeaderValue) -> bool {
        match self {
            Headers::Map(m) => m.get_all(name).iter().any(|v| v == value),
            Headers::Raw(r) => r.values(name.as_str()).any(|v| v == value.as_bytes()),
        }
    }

    /// The first value of a header `name` (lowercase) for which `f` gives an answer.
    pub(crate) fn find_map<T>(
        self,
        name: &'a HeaderName,
        f: impl FnMut(&'a [u8]) -> Option<T>,
    ) -> Option<T> {
        match self {
            Headers::Map(m) => m
                .get_all(name)
                .iter()
                .map(HeaderValue::as_bytes)
                .find_map(f),
            Headers::Raw(r) => r.values(name.as_str()).find_map(f),
        }
    }
}

/// How a request header bears on keeping the head raw ([`RawRequest`]).
enum RequestKind {
    Plain,
    Host,
    /// Hop-by-hop, framing, `Expect`, forwarding or the hop marker: the head goes into a map.
    Special,
}

fn request_kind(name: &[u8]) -> RequestKind {
    // Hop-by-hop and framing headers: as for a response (`treat`).
    if !matches!(treat(name), Treat::Keep) {
        return RequestKind::Special;
    }
    // `Expect`, the forwarding headers and the hop marker (`crate::hop::HOP_HEADER`), by
    // length first: this runs for every header of every request.
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        4 if is(b"host") => RequestKind::Host,
        6 if is(b"expect") => RequestKind::Special,
        9 if is(b"forwarded") => RequestKind::Special,
        11 if is(b"gateway-hop") => RequestKind::Special,
        15 if is(b"x-forwarded-for") => RequestKind::Special,
        16 if is(b"x-forwarded-host") => RequestKind::Special,
        17 if is(b"x-forwarded-proto") => RequestKind::Special,
        _ => RequestKind::Plain,
    }
}

/// Which header of a head is its one `Host`, when nothing in it keeps the head from staying
/// raw.
fn raw_host(headers: &[httparse::Header<'_>]) -> Option<usize> {
    let mut host = None;
    for (i, h) in headers.iter().enumerate() {
        match request_kind(h.name.as_bytes()) {
            RequestKind::Plain => {}
            RequestKind::Host if host.is_none() => host = Some(i),
            _ => return None,
        }
    }
    host
}

/// Where one header lies in the head's buffer: name offset and length, value offset and length.
type Span = (usize, usize, usize, usize);

/// The offsets of parsed `headers` in the buffer starting at address `base`, so that the map
/// built later can share the frozen head instead of copying names and values.
fn spans(headers: &[httparse::Header<'_>], base: usize) -> Vec<Span> {
    headers.iter().map(|h| span(h, base)).collect()
}

fn span(h: &httparse::Header<'_>, base: usize) -> Span {
    (
        h.name.as_ptr() as usize - base,
        h.name.len(),
        h.value.as_ptr() as usize - base,
        h.value.len(),
    )
}

/// Which part of a header was invalid.
enum BadPart {
    Name,
    Value,
}

/// The header map over the frozen `head`, with room for `spare` headers the proxy adds.
fn header_map(head: &Bytes, spans: &[Span], spare: usize) -> Result<HeaderMap, BadPart> {
    header_map_noting(head, spans, spare).map(|(headers, _)| headers)
}

/// Which of the headers a request's framing and keep-alive depend on a head has (so that a
/// head without them costs no lookup).
#[derive(Clone, Copy, Default)]
struct Present {
    transfer_encoding: bool,
    content_length: bool,
    connection: bool,
}

/// [`header_map`], noting which of the [`Present`] headers it saw.
fn header_map_noting(
    head: &Bytes,
    spans: &[Span],
    spare: usize,
) -> Result<(HeaderMap, Present), BadPart> {
    let mut headers = HeaderMap::with_capacity(spans.len() + spare);
    let mut present = Present::default();
    for &(name_at, name_len, at, n) in spans {
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
            .map_err(|_| BadPart::Name)?;
        if name == TRANSFER_ENCODING {
            present.transfer_encoding = true;
        } else if name == CONTENT_LENGTH {
            present.content_length = true;
        } else if name == CONNECTION {
            present.connection = true;
        }
        let value =
            HeaderValue::from_maybe_shared(head.slice(at..at + n)).map_err(|_| BadPart::Value)?;
        headers.append(name, value);
    }
    Ok((headers, present))
}

fn bad(why: &'static str) -> HeadError {
    HeadError::Bad(why)
}

/// Parses a complete request head at the start of `buf`, of at most `max` bytes. `Ok(None)`:
/// incomplete. On success the head's bytes are split off `buf` (header values share them).
pub(crate) fn parse_request(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<RequestHead>, HeadError> {
    // Uninitialised slots: zeroing 128 of them for every head costs more than parsing.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) if n > max => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(bad("malformed request head")),
    };
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(bad("unsupported HTTP version")),
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| bad("invalid method"))?;
    // Offsets into buf, so that the values can share the frozen head (no allocation).
    let base = buf.as_ptr() as usize;
    let path = req.path.unwrap_or("");
    let path_at = path.as_ptr() as usize - base;
    let path_len = path.len();
    // They only live until the map is built: on the stack when there are few.
    let mut few = [(0, 0, 0, 0); 16];
    let many;
    let spans: &[Span] = if req.headers.len() <= few.len() {
        for (slot, h) in few.iter_mut().zip(req.headers.iter()) {
            *slot = span(h, base);
        }
        &few[..req.headers.len()]
    } else {
        many = spans(req.headers, base);
        &many
    };
    let raw_host = raw_host(req.headers);
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_at..path_at + path_len))
        .map_err(|_| bad("invalid request target"))?;
    if let Some(host) = raw_host
        && uri.scheme().is_none()
        && uri.authority().is_none()
    {
        // httparse admits the same name and value bytes as `http`'s types (tchar names; tab,
        // visible and obs-text values), so the map built from these later cannot fail.
        return Ok(Some(RequestHead {
            method,
            uri,
            version,
            headers: HeaderMap::new(),
            raw: Some(RawRequest {
                headers: RawHeaders {
                    head,
                    spans: spans.to_vec(),
                    length: false,
                },
                host,
            }),
            framing: None,
            connection: false,
        }));
    }
    let (headers, present) = header_map_noting(&head, spans, 4).map_err(|part| match part {
        BadPart::Name => bad("invalid header name"),
        BadPart::Value => bad("invalid header value"),
    })?;
    let framing = if present.transfer_encoding || present.content_length {
        request_framing(&headers, version)?
    } else {
        None
    };
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
        raw: None,
        framing,
        connection: present.connection,
    }))
}

fn parse_length(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// The body framing of a request, refusing every ambiguous shape.
fn request_framing(h: &HeaderMap, version: Version) -> Result<Option<Framing>, HeadError> {
    let mut te = h.get_all(TRANSFER_ENCODING).iter();
    if let Some(v) = te.next() {
        if h.contains_key(CONTENT_LENGTH) {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        if te.next().is_some() {
            return Err(bad("more than one Transfer-Encoding header"));
        }
        if version == Version::HTTP_10 {
            return Err(bad("Transfer-Encoding on HTTP/1.0"));
        }
        if !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(bad("Transfer-Encoding other than chunked"));
        }
        return Ok(Some(Framing::Chunked));
    }
    let mut cl = h.get_all(CONTENT_LENGTH).iter();
    match cl.next() {
        None => Ok(None),
        Some(v) => {
            if cl.next().is_some() {
                return Err(bad("more than one Content-Length header"));
            }
            match parse_length(v.as_bytes()) {
                Some(0) => Ok(None),
                Some(n) => Ok(Some(Framing::Length(n))),
                None => Err(bad("invalid Content-Length")),
            }
        }
    }
}

/// A parsed response head.
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// The headers, unless they are kept as received in `raw`.
    pub(crate) headers: HeaderMap,
    /// The end-to-end headers, as the backend wrote them (see [`RawHeaders`]).
    pub(crate) raw: Option<RawHeaders>,
    /// `None`: no body.
    pub(crate) framing: Option<Framing>,
    /// The backend said `Connection: close`.
    pub(crate) close: bool,
}

/// The headers of a backend's response kept in the bytes it sent, to be written to the client
/// without building a header map: hop-by-hop headers are already left out (and a
/// `Content-Length` the framing overrides). Turned into a map ([`RawHeaders::into_map`]) only
/// where something reads or changes them.
#[derive(Clone)]
pub(crate) struct RawHeaders {
    head: Bytes,
    spans: Vec<Span>,
    /// A `Content-Length` is among them.
    pub(crate) length: bool,
}

impl RawHeaders {
    /// Appends `name: value\r\n` for every header; lines already in that form go out in runs,
    /// copied as they came.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let h = &self.head[..];
        let mut run = 0..0;
        for &(name_at, name_len, at, n) in &self.spans {
            let end = at + n;
            let colon = name_at + name_len;
            let plain = at == colon + 2
                && h[colon] == b':'
                && h[colon + 1] == b' '
                && h.get(end) == Some(&b'\r')
                && h.get(end + 1) == Some(&b'\n');
            if plain && run.end == name_at && !run.is_empty() {
                run.end = end + 2;
                continue;
            }
            out.extend_from_slice(&h[run.clone()]);
            if plain {
                run = name_at..end + 2;
            } else {
                run = 0..0;
                out.extend_from_slice(&h[name_at..name_at + name_len]);
                out.extend_from_slice(b": ");
                out.extend_from_slice(&h[at..end]);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(&h[run]);
    }

    /// The headers as a map (sharing the head's bytes), with room for `spare` more.
    pub(crate) fn into_map(self, spare: usize) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.spans.len() + spare);
        for &(name_at, name_len, at, n) in &self.spans {
            // Both were checked when the head was parsed.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&self.head[name_at..name_at + name_len]),
                HeaderValue::from_maybe_shared(self.head.slice(at..at + n)),
            ) {
                headers.append(name, value);
            }
        }
        headers
    }
}

/// How a response header is treated when the head is kept raw.
enum Treat {
    /// Passed on.
    Keep,
    ContentLength,
    /// Hop-by-hop: left out.
    Hop,
    TransferEncoding,
    Connection,
}

// Inlined: it runs for every header of every head, requests' and responses'.
#[inline(always)]
fn treat(name: &[u8]) -> Treat {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is(b"te") => Treat::Hop,
        7 if is(b"upgrade") => Treat::Hop,
        10 if is(b"connection") => Treat::Connection,
        10 if is(b"keep-alive") => Treat::Hop,
        14 if is(b"content-length") => Treat::ContentLength,
        17 if is(b"transfer-encoding") => Treat::TransferEncoding,
        n if n >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-") => Treat::Hop,
        _ => Treat::Keep,
    }
}

/// Parses a complete response head, to a request with `method`, at the start of `buf` (split
/// off on success).
///
/// The headers are kept raw, filtered as [`crate::headers::prepare_response`] would, unless
/// the answer is a `101` (its `Upgrade` header stays) or a `Connection` header names other
/// headers to drop (rare): then they are parsed into a map as they came.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
) -> io::Result<Option<ResponseHead>> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(format!("malformed response head: {e}"))),
    };
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0))
        .map_err(|_| invalid("invalid response status"))?;
    let mut spans = spans(resp.headers, buf.as_ptr() as usize);
    let head = buf.split_to(len).freeze();
    let mut raw = status != StatusCode::SWITCHING_PROTOCOLS;
    let mut close = false;
    let mut te = None;
    let mut length = false;
    if raw {
        // Which headers to leave out (at most MAX_HEADERS = 128).
        let mut hop = 0u128;
        for (i, &(name_at, name_len, at, n)) in spans.iter().enumerate() {
            // httparse refused what `HeaderValue` would (control characters, folded lines).
            let value = &head[at..at + n];
            match treat(&head[name_at..name_at + name_len]) {
                Treat::Keep => continue,
                Treat::ContentLength => {
                    length = true;
                    continue;
                }
                Treat::Hop => {}
                Treat::TransferEncoding => te = Some(value),
                Treat::Connection => {
                    for token in value.split(|&b| b == b',') {
                        let token = token.trim_ascii();
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if !(token.is_empty()
                            || token.eq_ignore_ascii_case(b"keep-alive")
                            || token.eq_ignore_ascii_case(b"upgrade"))
                        {
                            raw = false; // names a header to drop
                        }
                    }
                }
            }
            hop |= 1 << i;
        }
        if raw && hop != 0 {
            let mut i = 0;
            spans.retain(|_| {
                i += 1;
                hop & (1 << (i - 1)) == 0
            });
        }
    }
    if !raw {
        let mut headers = header_map(&head, &spans, 2).map_err(|part| match part {
            BadPart::Name => invalid("invalid response header name"),
            BadPart::Value => invalid("invalid response header value"),
        })?;
        let te = headers.get_all(TRANSFER_ENCODING).iter().next_back();
        let lengths = headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .map(HeaderValue::as_bytes);
        let framing = response_framing(method, status, te.map(HeaderValue::as_bytes), lengths)?;
        if framing == Some(Framing::Chunked) || framing == Some(Framing::Eof) {
            // With Transfer-Encoding a Content-Length means nothing (RFC 9112 §6.3): it must
            // not reach the client, whose framing is chosen afresh.
            headers.remove(CONTENT_LENGTH);
        }
        return Ok(Some(ResponseHead {
            status,
            version,
            close: crate::headers::connection_has(&headers, "close"),
            headers,
            raw: None,
            framing,
        }));
    }
    let is_length = |&(name_at, name_len, ..): &Span| {
        name_len == 14 && head[name_at..name_at + name_len].eq_ignore_ascii_case(b"content-length")
    };
    let lengths = spans
        .iter()
        .filter(|s| length && is_length(s))
        .map(|&(_, _, at, n)| &head[at..at + n]);
    let framing = response_framing(method, status, te, lengths)?;
    if length
        && (matches!(framing, Some(Framing::Chunked | Framing::Eof))
            || status == StatusCode::NO_CONTENT)
    {
        // Chosen afresh for the client: with Transfer-Encoding a Content-Length means nothing
        // (RFC 9112 §6.3), and a 204 has none.
        spans.retain(|s| !is_length(s));
        length = false;
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers: HeaderMap::new(),
        raw: Some(RawHeaders {
            head,
            spans,
            length,
        }),
        framing,
        close,
    }))
}

/// The body framing of a response to a request with `method`, from its last
/// `Transfer-Encoding` and its `Content-Length` values; `None`: no body.
fn response_framing<'a>(
    method: &Method,
    status: StatusCode,
    te: Option<&[u8]>,
    lengths: impl Iterator<Item = &'a [u8]>,
) -> io::Result<Option<Framing>> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(None);
    }
    if let Some(te) = te {
        let last = te.rsplit(|&b| b == b',').next().unwrap_or_default();
        return Ok(Some(
            if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                Framing::Chunked
            } else {
                Framing::Eof
            },
        ));
    }
    let mut length = None;
    for v in lengths {
        // A list of equal values ("5, 5") is tolerated from a backend, as hyper does.
        for part in v.split(|&b| b == b',') {
            let n = parse_length(part.trim_ascii())
                .ok_or_else(|| invalid("invalid Content-Length from the backend"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("conflicting Content-Length from the backend"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => None,
        Some(n) => Some(Framing::Length(n)),
        None => Some(Framing::Eof),
    })
}

pub(crate) fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Appends `name: value\r\n` for every header.
pub(crate) fn write_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends a decimal number.
pub(crate) fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The line that starts a chunk of `len` bytes.
pub(crate) fn chunk_head(len: usize) -> Bytes {
    Bytes::from(format!("{len:x}\r\n"))
}

/// The end of a chunked body, with trailers if any.
pub(crate) fn chunked_end(trailers: Option<&HeaderMap>) -> Bytes {
    match trailers {
        None => Bytes::from_static(b"0\r\n\r\n"),
        Some(t) => {
            let mut out = b"0\r\n".to_vec();
            write_headers(&mut out, t);
            out.extend_from_slice(b"\r\n");
            Bytes::from(out)
        }
    }
}

/// What the decoder took out of the buffer.
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes must be read first.
    More,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// Decodes a body from a connection's read buffer.
#[derive(Debug)]
pub(crate) struct Decoder {
    kind: Kind,
    /// Boxed: rare, and this state is part of every idle connection.
    trailers: Option<Box<HeaderMap>>,
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Length(u64),
    Chunked(Chunk),
    Eof,
    Done,
}

impl Decoder {
    pub(crate) fn new(framing: Option<Framing>) -> Self {
        let kind = match framing {
            None | Some(Framing::Length(0)) => Kind::Done,
            Some(Framing::Length(n)) => Kind::Length(n),
            Some(Framing::Chunked) => Kind::Chunked(Chunk::Size),
            Some(Framing::Eof) => Kind::Eof,
        };
        Decoder {
            kind,
            trailers: None,
            trailer_bytes: 0,
        }
    }

    pub(crate) fn done() -> Self {
        Decoder::new(None)
    }

    pub(crate) fn is_done(&self) -> bool {
        self.kind == Kind::Done
    }

    /// Bytes left of a fixed-length body (`None` when not fixed-length).
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.kind {
            Kind::Length(n) => Some(n),
            Kind::Done => Some(0),
            _ => None,
        }
    }

    /// Trailers decoded and not yet taken.
    pub(crate) fn has_trailers(&self) -> bool {
        self.trailers.is_some()
    }

    pub(crate) fn take_trailers(&mut self) -> Option<HeaderMap> {
        self.trailers.take().map(|t| *t)
    }

    /// The connection's read side reached its end.
    pub(crate) fn on_eof(&mut self) -> io::Result<Decoded> {
        if self.kind == Kind::Eof {
            self.kind = Kind::Done;
            Ok(Decoded::End)
        } else if self.kind == Kind::Done {
            Ok(Decoded::End)
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the body was complete",
            ))
        }
    }

    /// Takes the next piece of the body out of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Decoded> {
        loop {
            match self.kind {
                Kind::Done => {
                    return Ok(match self.trailers.take() {
                        Some(t) => Decoded::Trailers(*t),
                        None => Decoded::End,
                    });
                }
                Kind::Eof => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                Kind::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let k = (buf.len() as u64).min(n);
                    let data = buf.split_to(k as usize).freeze();
                    self.kind = if k == n {
                        Kind::Done
                    } else {
                        Kind::Length(n - k)
                    };
                    return Ok(Decoded::Data(data));
                }
                Kind::Chunked(Chunk::Size) => {
                    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_LINE {
                            return Err(invalid("chunk size line too long"));
                        }
                        return Ok(Decoded::More);
                    };
                    let line = buf.split_to(nl + 1);
                    let line = line[..nl].strip_suffix(b"\r").unwrap_or(&line[..nl]);
                    let end = line
                        .iter()
                        .position(|&b| matches!(b, b';' | b' ' | b'\t'))
                        .unwrap_or(line.len());
                    let (digits, rest) = line.split_at(end);
                    let rest = rest.trim_ascii_start();
                    if digits.is_empty()
                        || digits.len() > 15
                        || !digits.iter().all(u8::is_ascii_hexdigit)
                        || !(rest.is_empty() || rest[0] == b';')
                    {
                        return Err(invalid("invalid chunk size"));
                    }
                    let size = digits.iter().fold(0u64, |n, &d| {
                        n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0))
                    });
                    self.kind = if size == 0 {
                        Kind::Chunked(Chunk::Trailers)
                    } else {
                        Kind::Chunked(Chunk::Data(size))
                    };
                }
                Kind::Chunked(Chunk::Data(n)) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let k = (buf.len() as u64).min(n);
                    let data = buf.split_to(k as usize).freeze();
                    self.kind = if k == n {
                        Kind::Chunked(Chunk::DataEnd)
                    } else {
                        Kind::Chunked(Chunk::Data(n - k))
                    };
                    return Ok(Decoded::Data(data));
                }
                Kind::Chunked(Chunk::DataEnd) => {
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                    } else if buf.starts_with(b"\n") {
                        let _ = buf.split_to(1);
                    } else if buf.is_empty() || buf[..] == b"\r"[..] {
                        return Ok(Decoded::More);
                    } else {
                        return Err(invalid("chunk data longer than its size"));
                    }
                    self.kind = Kind::Chunked(Chunk::Size);
                }
                Kind::Chunked(Chunk::Trailers) => {
                    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_LINE {
                            return Err(invalid("trailer line too long"));
                        }
                        return Ok(Decoded::More);
                    };
                    let line = buf.split_to(nl + 1).freeze();
                    let text = line[..nl].strip_suffix(b"\r").unwrap_or(&line[..nl]);
                    if text.is_empty() {
                        self.kind = Kind::Done;
                        continue;
                    }
                    self.trailer_bytes += line.len();
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(invalid("trailers too large"));
                    }
                    let colon = text
                        .iter()
                        .position(|&b| b == b':')
                        .ok_or_else(|| invalid("malformed trailer"))?;
                    let name = HeaderName::from_bytes(&text[..colon])
                        .map_err(|_| invalid("invalid trailer name"))?;
                    let value = HeaderValue::from_bytes(text[colon + 1..].trim_ascii())
                        .map_err(|_| invalid("invalid trailer value"))?;
                    self.trailers
                        .get_or_insert_with(Default::default)
                        .append(name, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(
        framing: Framing,
        input: &[u8],
        step: usize,
    ) -> io::Result<(Vec<u8>, Option<HeaderMap>, usize)> {
        let mut d = Decoder::new(Some(framing));
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((out, trailers, buf.len())),
                Decoded::More => {
                    if fed == input.len() {
                        d.on_eof()?;
                        return Ok((out, trailers, 0));
                    }
                    let n = step.min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers_decode_at_any_split() {
        let input = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\nGET";
        for step in [1, 2, 3, 7, 100] {
            let (body, trailers, _) = decode_all(Framing::Chunked, input, step).unwrap();
            assert_eq!(body, b"hello world", "step {step}");
            assert_eq!(trailers.unwrap()["x-sum"], "42");
        }
        let (_, _, left) = decode_all(Framing::Chunked, input, 100).unwrap();
        assert_eq!(left, 3, "the next request's bytes stay in the buffer");
    }

    #[test]
    fn bad_chunks_and_short_bodies_are_errors() {
        for bad in [
            &b"x\r\nhello\r\n0\r\n\r\n"[..],
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello!!\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(Framing::Chunked, bad, 100).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(decode_all(Framing::Length(10), b"short", 100).is_err());
        let (body, _, _) = decode_all(Framing::Eof, b"until close", 4).unwrap();
        assert_eq!(body, b"until close");
    }

    #[test]
    fn the_common_request_head_stays_raw() {
        let parse = |s: &str| {
            parse_request(&mut BytesMut::from(s), 4096)
                .unwrap()
                .unwrap()
        };
        let head = parse(
            "GET /a?b HTTP/1.1\r\nHost: Example.COM:8080\r\nAccept: */*\r\nCookie: a=1\r\n\
             cookie:gw_sticky=x \r\n\r\n",
        );
        assert!(head.headers.is_empty());
        assert_eq!(head.framing, None);
        let raw = head.raw.expect("kept raw");
        assert_eq!(raw.host(), b"Example.COM:8080");
        let cookies: Vec<&[u8]> = raw.values("cookie").collect();
        assert_eq!(cookies, [&b"a=1"[..], b"gw_sticky=x"]);
        let mut out = Vec::new();
        raw.write(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Host: Example.COM:8080\r\nAccept: */*\r\nCookie: a=1\r\ncookie: gw_sticky=x\r\n"
        );
        let map = raw.clone().into_map();
        assert_eq!(map.len(), 4);
        assert_eq!(map["host"], "Example.COM:8080");
        assert_eq!(map.get_all("cookie").iter().count(), 2);
        let accept = HeaderName::from_static("accept");
        for headers in [Headers::Raw(&raw), Headers::Map(&map)] {
            assert!(headers.has(&accept, &HeaderValue::from_static("*/*")));
            assert!(!headers.has(&accept, &HeaderValue::from_static("*/")));
            let name = http::header::COOKIE;
            let second = headers.find_map(&name, |v| v.strip_prefix(b"gw_sticky="));
            assert_eq!(second, Some(&b"x"[..]));
        }

        // What the proxy removes, replaces or reads for framing puts the head in a map.
        assert_eq!(crate::hop::HOP_HEADER.as_str(), "gateway-hop");
        for extra in [
            "TE: trailers",
            "Connection: close",
            "Keep-Alive: 5",
            "Upgrade: websocket",
            "Transfer-Encoding: chunked",
            "Content-Length: 3",
            "Expect: 100-continue",
            "X-Forwarded-For: 1.2.3.4",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: h",
            "Forwarded: for=1.2.3.4",
            "Gateway-Hop: x",
            "Proxy-Authorization: y",
            "proxy-connection: close",
            "Host: second",
        ] {
            let head = parse(&format!("GET / HTTP/1.1\r\nHost: a\r\n{extra}\r\n\r\n"));
            assert!(head.raw.is_none(), "{extra}");
            assert_eq!(head.headers.len(), 2, "{extra}");
        }
        assert!(parse("GET / HTTP/1.0\r\nAccept: */*\r\n\r\n").raw.is_none());
        assert!(
            parse("GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n")
                .raw
                .is_none()
        );
        // Near misses stay raw.
        for extra in [
            "Proxy: x",
            "X-Forwarded-Port: 80",
            "Tee: 1",
            "Hosts: b",
            "Connections: 2",
        ] {
            let head = parse(&format!("GET / HTTP/1.1\r\nHost: a\r\n{extra}\r\n\r\n"));
            assert!(head.raw.is_some(), "{extra}");
        }
    }

    #[test]
    fn request_framing_refuses_ambiguous_shapes() {
        let parse =
            |s: &str| parse_request(&mut BytesMut::from(s), 1024).map(|h| h.map(|h| h.framing));
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"),
            Ok(Some(Some(Framing::Length(5))))
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Some(Some(Framing::Chunked)))
        );
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        for (input, why) in [
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                "more than one Content-Length header",
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                "Transfer-Encoding other than chunked",
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding on HTTP/1.0",
            ),
        ] {
            assert_eq!(parse(input).err(), Some(HeadError::Bad(why)), "{input}");
        }
    }

    fn response(input: &str, method: &Method) -> io::Result<ResponseHead> {
        let mut buf = BytesMut::from(input);
        let head = parse_response(&mut buf, method)?.expect("a complete head");
        assert!(buf.is_empty(), "the head is split off");
        Ok(head)
    }

    fn written(raw: &RawHeaders) -> String {
        let mut out = Vec::new();
        raw.write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn raw_response_heads_leave_out_hop_by_hop_headers_and_keep_the_rest_as_sent() {
        let head = response(
            "HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Content-Length: 3\r\nX-Two: a\r\nX-Two: b\r\nProxy-Authenticate: Basic\r\n\
             Upgrade: h2c\r\nTE: trailers\r\nETag: \"e\"\r\n\r\n",
            &Method::GET,
        )
        .unwrap();
        assert_eq!(head.framing, Some(Framing::Length(3)));
        assert!(!head.close);
        assert!(head.headers.is_empty());
        let raw = head.raw.expect("kept raw");
        assert!(raw.length);
        assert_eq!(
            written(&raw),
            "Server: x\r\nContent-Length: 3\r\nX-Two: a\r\nX-Two: b\r\nETag: \"e\"\r\n"
        );
        let map = raw.into_map(2);
        assert_eq!(map.len(), 5);
        let two: Vec<_> = map.get_all("x-two").iter().collect();
        assert_eq!(two, ["a", "b"]);
    }

    #[test]
    fn raw_lines_not_in_plain_form_are_written_in_it() {
        // A space before the colon, no space after it, trailing spaces, bare LF line ends,
        // empty values.
        let head = response(
            "HTTP/1.1 200 OK\nA : 1\nB:2\r\nC: 3  \r\nD: 4\r\nE:\r\nF: \r\nContent-Length: 0\r\n\r\n",
            &Method::GET,
        )
        .unwrap();
        assert_eq!(head.framing, None);
        let raw = head.raw.unwrap();
        assert_eq!(
            written(&raw),
            "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: \r\nF: \r\nContent-Length: 0\r\n"
        );
        let map = raw.into_map(2);
        assert_eq!(map["e"], "");
        assert_eq!(map["f"], "");
    }

    #[test]
    fn the_framing_of_a_raw_head_drops_the_length_it_overrides() {
        let chunked = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = response(chunked, &Method::GET).unwrap();
        assert_eq!(head.framing, Some(Framing::Chunked));
        let raw = head.raw.unwrap();
        assert!(!raw.length);
        assert_eq!(written(&raw), "");

        let no_content = "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX: y\r\n\r\n";
        let head = response(no_content, &Method::GET).unwrap();
        assert_eq!(head.framing, None);
        assert_eq!(written(&head.raw.unwrap()), "X: y\r\n");

        // A HEAD answer keeps its length (that of the body a GET would get).
        let to_head = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n";
        let head = response(to_head, &Method::HEAD).unwrap();
        assert_eq!(head.framing, None);
        assert!(head.raw.unwrap().length);

        let until_close = "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n";
        let head = response(until_close, &Method::GET).unwrap();
        assert_eq!(head.framing, Some(Framing::Eof));
        assert!(head.close);

        for (input, why) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
                "conflicting",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
                "malformed response head",
            ),
            (
                "HTTP/1.1 200 OK\r\nX: a\x01b\r\n\r\n",
                "malformed response head",
            ),
            (
                "HTTP/1.1 200 OK\r\nX: a\x7fb\r\n\r\n",
                "malformed response head",
            ),
            (
                "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
                "malformed response head",
            ),
        ] {
            let e = response(input, &Method::GET).err().expect(input);
            assert!(e.to_string().contains(why), "{input}: {e}");
        }
    }

    #[test]
    fn heads_that_cannot_stay_raw_are_parsed_into_a_map() {
        // A `Connection` header naming another header: the map, as received (the proxy strips).
        let head = response(
            "HTTP/1.1 200 OK\r\nConnection: x-private, close\r\nX-Private: 1\r\nContent-Length: 0\r\n\r\n",
            &Method::GET,
        )
        .unwrap();
        assert!(head.raw.is_none());
        assert!(head.close);
        assert_eq!(head.headers.len(), 3);
        // A 101 keeps its Upgrade header for the tunnel.
        let head = response(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            &Method::GET,
        )
        .unwrap();
        assert!(head.raw.is_none());
        assert_eq!(head.headers["upgrade"], "websocket");
    }
}
