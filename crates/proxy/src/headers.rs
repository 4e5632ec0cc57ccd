//! Header hygiene for forwarded requests and responses.
//!
//! Hop-by-hop headers are removed in both directions: `Connection` and every header it names,
//! `Keep-Alive`, `Proxy-Connection`, `TE` (except that a request's `TE: trailers` is passed on,
//! since trailers are forwarded), `Transfer-Encoding` (hyper frames the body itself),
//! `Upgrade` (kept, with `Connection: upgrade`, on an upgrade request and its `101` answer) and
//! every `Proxy-*` header. `Trailer` is kept: it declares the trailers that follow.
//!
//! # Forwarding headers
//!
//! A request from a client that is not a trusted proxy (`ProxyConfig::trusted_proxies`, none
//! by default) loses whatever `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and
//! `Forwarded` it sent, and gets `X-Forwarded-For: <client ip>`, `X-Forwarded-Proto: http`,
//! `X-Forwarded-Host: <its Host>` and `Forwarded: for=<client ip>;host=<Host>;proto=http`.
//! A request from a trusted proxy keeps them: the peer is appended to `X-Forwarded-For` and
//! `Forwarded` gains an element, while `X-Forwarded-Proto`/`-Host` are only set when absent.
//! A request relayed by another gateway node (authenticated hop marker) keeps what that node
//! set.
//!
//! A request whose head stays raw ([`crate::codec::RawRequest`]: none of these headers, nothing
//! hop-by-hop) gets the same four headers as lines written after its own
//! ([`write_forwarding`]) instead of through [`prepare_request`]'s map.

use crate::cidr::{Cidr, any_contains};
use http::header::{CONNECTION, FORWARDED, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, Version};
use std::net::IpAddr;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// A backend's request to have the gateway replay the request on the leader.
pub(crate) static REPLAY_HEADER: HeaderName = HeaderName::from_static("gateway-replay");

/// Whether a request asks for an HTTP/1.1 upgrade (e.g. WebSocket).
pub(crate) fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

/// Whether a `Connection` header lists `token`.
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether `name` is hop-by-hop whatever `Connection` says.
fn always_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == KEEP_ALIVE
        || name.as_str().starts_with("proxy-")
}

/// Removes hop-by-hop headers; with `upgrade`, keeps `Upgrade` and sets `Connection: upgrade`.
///
/// One pass over the names finds what to remove (usually nothing), so a request without
/// hop-by-hop headers costs no hashing.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    strip_and_note(headers, upgrade);
}

/// What `prepare_request` needs to know of a request's headers, noted by the pass that strips
/// the hop-by-hop ones (instead of a lookup each).
struct Noted {
    /// `TE` asked for trailers (the one `TE` value passed on).
    trailers: bool,
    host: bool,
    hop_header: bool,
}

/// [`strip_hop_by_hop`], noting what `prepare_request` asks of the headers on the way.
fn strip_and_note(headers: &mut HeaderMap, upgrade: bool) -> Noted {
    let mut doomed: Vec<HeaderName> = Vec::new();
    let mut connection = false;
    let (mut te, mut host, mut hop_header) = (false, false, false);
    for name in headers.keys() {
        if name == HOST {
            host = true;
        } else if name == CONNECTION {
            connection = true;
        } else if always_hop(name) && !(upgrade && name == UPGRADE) {
            te |= name == TE;
            doomed.push(name.clone());
        } else if name == crate::hop::HOP_HEADER {
            hop_header = true;
        }
    }
    let trailers = te
        && headers
            .get_all(TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    if connection {
        // Headers named by Connection.
        for v in headers.get_all(CONNECTION) {
            for token in v.to_str().unwrap_or("").split(',') {
                let token = token.trim();
                if token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("keep-alive")
                    || token.eq_ignore_ascii_case("upgrade")
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    doomed.push(name);
                }
            }
        }
        if !upgrade {
            headers.remove(CONNECTION);
        }
    }
    for name in doomed {
        if name == HOST {
            host = false;
        } else if name == crate::hop::HOP_HEADER {
            hop_header = false;
        }
        headers.remove(name);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    Noted {
        trailers,
        host,
        hop_header,
    }
}

/// The client end of a connection, with its address formatted once for the forwarding
/// headers of every request on it (each request takes a reference-counted copy).
#[derive(Clone, Debug)]
pub(crate) struct ClientAddr {
    pub(crate) ip: IpAddr,
    /// The address as `X-Forwarded-For` gives it.
    xff: HeaderValue,
    /// The client came over TLS (the HTTPS listener).
    pub(crate) tls: bool,
}

impl ClientAddr {
    pub(crate) fn new(peer: IpAddr) -> Self {
        let mut text = [0u8; 46];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{}", peer.to_canonical()));
        let len = cursor.position() as usize;
        ClientAddr {
            ip: peer,
            xff: HeaderValue::from_bytes(&text[..len]).expect("an address is a valid header value"),
            tls: false,
        }
    }

    /// Marks the connection as one that came over TLS.
    pub(crate) fn over_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// `X-Forwarded-Proto` and `Forwarded: proto=` for this client.
    fn proto(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    fn text(&self) -> &[u8] {
        self.xff.as_bytes()
    }

    /// The address as `X-Forwarded-For` gives it.
    fn xff(&self) -> HeaderValue {
        self.xff.clone()
    }

    /// `for=...` of a `Forwarded` element (an IPv6 address quoted and bracketed).
    fn push_forwarded_for(&self, out: &mut Vec<u8>) {
        let ip = self.text();
        if ip.contains(&b':') {
            out.extend_from_slice(b"for=\"[");
            out.extend_from_slice(ip);
            out.extend_from_slice(b"]\"");
        } else {
            out.extend_from_slice(b"for=");
            out.extend_from_slice(ip);
        }
    }
}

/// Appends the client to `X-Forwarded-For` (joining several headers into one).
pub(crate) fn append_forwarded_for(headers: &mut HeaderMap, client: &ClientAddr) {
    if !headers.contains_key(&X_FORWARDED_FOR) {
        headers.insert(&X_FORWARDED_FOR, client.xff());
        return;
    }
    let mut value = Vec::with_capacity(64);
    for v in headers.get_all(&X_FORWARDED_FOR) {
        let s = v.as_bytes().trim_ascii();
        if !s.is_empty() {
            value.extend_from_slice(s);
            value.extend_from_slice(b", ");
        }
    }
    value.extend_from_slice(client.text());
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

/// The client's address for balancing: the peer, or behind trusted proxies the last
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub(crate) fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[Cidr]) -> IpAddr {
    if trusted.is_empty() || !any_contains(trusted, peer) {
        return peer;
    }
    forwarded_client(headers, trusted).unwrap_or(peer)
}

/// The client of a request relayed by another gateway node, as that node saw it: the last
/// `X-Forwarded-For` entry (the peer that node appended) unless it is a trusted proxy, in
/// which case the entries before it are looked at the same way.
pub(crate) fn relayed_client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[Cidr]) -> IpAddr {
    forwarded_client(headers, trusted).unwrap_or(peer)
}

/// Walks `X-Forwarded-For` from the right to the first entry that is not a trusted proxy
/// (or the leftmost readable one).
fn forwarded_client(headers: &HeaderMap, trusted: &[Cidr]) -> Option<IpAddr> {
    let mut client = None;
    for v in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(v) = v.to_str() else { return client };
        for entry in v.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                return client;
            };
            client = Some(ip);
            if !any_contains(trusted, ip) {
                return client;
            }
        }
    }
    client
}

/// The bytes of an RFC 9110 token (`tchar`), as a table.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = gateway_model::is_tchar(b as u8);
        b += 1;
    }
    t
};

/// A `Forwarded` element (RFC 7239) for a request from `client` with `host`.
fn forwarded_element(client: &ClientAddr, host: Option<&HeaderValue>) -> Vec<u8> {
    let mut e = Vec::with_capacity(64);
    push_forwarded_element(&mut e, client, host.map(HeaderValue::as_bytes));
    e
}

/// Appends [`forwarded_element`] to `e`.
fn push_forwarded_element(e: &mut Vec<u8>, client: &ClientAddr, host: Option<&[u8]>) {
    client.push_forwarded_for(e);
    if let Some(host) = host {
        // One pass: whether the host is a token, and whether quoting it needs escapes.
        let (mut token, mut escapes) = (!host.is_empty(), false);
        for &b in host {
            token &= TCHAR[usize::from(b)];
            escapes |= b == b'"' || b == b'\\';
        }
        if token {
            e.extend_from_slice(b";host=");
            e.extend_from_slice(host);
        } else if !escapes {
            // A quoted string; a host with a port (":") is the common case.
            e.extend_from_slice(b";host=\"");
            e.extend_from_slice(host);
            e.push(b'"');
        } else {
            e.extend_from_slice(b";host=\"");
            let mut rest = host;
            while let Some(at) = rest.iter().position(|&c| c == b'"' || c == b'\\') {
                e.extend_from_slice(&rest[..at]);
                e.push(b'\\');
                e.push(rest[at]);
                rest = &rest[at + 1..];
            }
            e.extend_from_slice(rest);
            e.push(b'"');
        }
    }
    e.extend_from_slice(b";proto=");
    e.extend_from_slice(client.proto().as_bytes());
}

/// Appends, as HTTP/1.1 header lines, the forwarding headers that [`prepare_request`] sets
/// for a request from `client` (not a trusted proxy) with the `Host` value `host` and none of
/// these headers of its own: the same names, values and order, for a head passed on raw
/// ([`crate::codec::RawRequest`]).
pub(crate) fn write_forwarding(out: &mut Vec<u8>, client: &ClientAddr, host: &[u8]) {
    out.extend_from_slice(b"x-forwarded-for: ");
    out.extend_from_slice(client.text());
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(client.proto().as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-host: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\nforwarded: ");
    push_forwarded_element(out, client, Some(host));
    out.extend_from_slice(b"\r\n");
}

fn header_value(mut v: Vec<u8>) -> Option<HeaderValue> {
    // A vector with spare room becomes `Bytes` through a second allocation; shrunk, it does
    // not (and the allocator shrinks a block this small in place).
    v.shrink_to_fit();
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
}

/// Sets the forwarding headers of a request from `client` (see the module docs).
fn set_forwarding(headers: &mut HeaderMap, client: &ClientAddr, trusted_peer: bool) {
    let host = headers.get(HOST).cloned();
    let element = forwarded_element(client, host.as_ref());
    if trusted_peer {
        append_forwarded_for(headers, client);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto()));
        }
        if !headers.contains_key(&X_FORWARDED_HOST)
            && let Some(host) = host
        {
            headers.insert(&X_FORWARDED_HOST, host);
        }
        let mut value = Vec::with_capacity(128);
        for v in headers.get_all(FORWARDED) {
            let s = v.as_bytes().trim_ascii();
            if !s.is_empty() {
                value.extend_from_slice(s);
                value.extend_from_slice(b", ");
            }
        }
        value.extend_from_slice(&element);
        if let Some(v) = header_value(value) {
            headers.insert(FORWARDED, v);
        }
    } else {
        headers.insert(&X_FORWARDED_FOR, client.xff());
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto()));
        match host {
            Some(host) => headers.insert(&X_FORWARDED_HOST, host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        if let Some(v) = header_value(element) {
            headers.insert(FORWARDED, v);
        }
    }
}

/// Rewrites a client request into the request sent upstream: hop-by-hop headers removed,
/// forwarding headers set (unless `relayed` from another gateway node, which set them),
/// `Host` set from `:authority` when missing (HTTP/2), origin-form target, HTTP/1.1.
pub(crate) fn prepare_request<B>(
    req: &mut Request<B>,
    client: &ClientAddr,
    trusted_peer: bool,
    relayed: bool,
    upgrade: bool,
) {
    let authority = req.uri().authority().cloned();
    let headers = req.headers_mut();
    let noted = strip_and_note(headers, upgrade);
    if noted.trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if noted.hop_header {
        headers.remove(&crate::hop::HOP_HEADER);
    }
    if !noted.host
        && let Some(a) = &authority
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        headers.insert(HOST, v);
    }
    if !relayed {
        set_forwarding(headers, client, trusted_peer);
    }
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq = req.uri().path_and_query().cloned();
        *req.uri_mut() = match pq {
            Some(pq) => Uri::from(pq),
            None => Uri::from_static("/"),
        };
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Cleans a backend's response before it goes to the client.
pub(crate) fn prepare_response(headers: &mut HeaderMap, upgraded: bool) {
    strip_hop_by_hop(headers, upgraded);
}

/// The request's host for routing: `:authority` or `Host`, without port or trailing dot, lower
/// case (copied into `buf` only when it has upper-case letters). Empty when absent or invalid.
pub(crate) fn request_host<'a, B>(req: &'a Request<B>, buf: &'a mut [u8; 256]) -> &'a str {
    let raw: &[u8] = match req.uri().authority() {
        Some(a) => a.as_str().as_bytes(),
        None => req.headers().get(HOST).map_or(&b""[..], |v| v.as_bytes()),
    };
    routing_host(raw, buf)
}

/// [`request_host`] of a `Host` value or authority.
pub(crate) fn routing_host<'a>(raw: &'a [u8], buf: &'a mut [u8; 256]) -> &'a str {
    // One pass over the usual `name[:port]`: where the name ends, and what it holds.
    let (mut end, mut upper, mut bad) = (raw.len(), false, false);
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'@' | b'[' => return bracketed_or_userinfo(raw, buf),
            _ if end < raw.len() => {} // the port (read on only for an '@')
            b':' => end = i,
            b'A'..=b'Z' => upper = true,
            b if !b.is_ascii_graphic() => bad = true,
            _ => {}
        }
    }
    let host = &raw[..end];
    let host = host.strip_suffix(b".").unwrap_or(host);
    if bad || host.len() > buf.len() {
        return "";
    }
    lower_host(host, upper, buf)
}

/// `request_host` for an authority with userinfo (`user@host`) or an IPv6 literal (`[::1]`).
#[cold]
fn bracketed_or_userinfo<'a>(raw: &'a [u8], buf: &'a mut [u8; 256]) -> &'a str {
    let raw = match raw.iter().rposition(|&b| b == b'@') {
        Some(at) => &raw[at + 1..],
        None => raw,
    };
    let host = if raw.first() == Some(&b'[') {
        match raw.iter().position(|&b| b == b']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.iter().position(|&b| b == b':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.len() > buf.len() || !host.iter().all(|b| b.is_ascii_graphic()) {
        return "";
    }
    lower_host(host, host.iter().any(u8::is_ascii_uppercase), buf)
}

/// `host` (printable ASCII) in lower case, copied into `buf` only when it has `upper` case.
fn lower_host<'a>(host: &'a [u8], upper: bool, buf: &'a mut [u8; 256]) -> &'a str {
    if upper {
        let out = &mut buf[..host.len()];
        out.copy_from_slice(host);
        out.make_ascii_lowercase();
        std::str::from_utf8(out).unwrap_or("")
    } else {
        std::str::from_utf8(host).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str) -> ClientAddr {
        ClientAddr::new(ip.parse().unwrap())
    }

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_normalisation() {
        let mut buf = [0u8; 256];
        assert_eq!(
            request_host(&req("/", Some("Example.COM:8080")), &mut buf),
            "example.com"
        );
        assert_eq!(
            request_host(&req("/", Some("example.com.")), &mut buf),
            "example.com"
        );
        assert_eq!(request_host(&req("/", Some("[::1]:80")), &mut buf), "[::1]");
        assert_eq!(
            request_host(&req("http://h2.test:443/x", None), &mut buf),
            "h2.test"
        );
        assert_eq!(request_host(&req("/", None), &mut buf), "");
        assert_eq!(request_host(&req("/", Some("a b")), &mut buf), "");
        assert_eq!(request_host(&req("/", Some("a:b c")), &mut buf), "a");
        assert_eq!(request_host(&req("/", Some("[::1]")), &mut buf), "[::1]");
        assert_eq!(request_host(&req("/", Some("[::1")), &mut buf), "[::1");
        assert_eq!(request_host(&req("/", Some("H.Test.")), &mut buf), "h.test");
        assert_eq!(request_host(&req("/", Some(":80")), &mut buf), "");
        assert_eq!(
            request_host(&req("http://u:p@Userinfo.test:8/x", None), &mut buf),
            "userinfo.test"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, close"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(
            http::header::TRAILER,
            HeaderValue::from_static("x-checksum"),
        );
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("proxy-foo", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut up = h.clone();
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["trailer", "x-kept"]);
        strip_hop_by_hop(&mut up, true);
        assert_eq!(up.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(up.get(CONNECTION).unwrap(), "upgrade");
        assert!(up.get("x-secret").is_none());
    }

    #[test]
    fn headers_named_by_connection_go_before_host_and_te_are_looked_at() {
        // `Connection: host` takes the client's Host away; the target's authority gives it.
        let mut r = req("http://from-target.test/", Some("from-header.test"));
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("host, gateway-hop"));
        r.headers_mut()
            .insert(&crate::hop::HOP_HEADER, HeaderValue::from_static("1.2.3"));
        r.headers_mut().insert(TE, HeaderValue::from_static("gzip"));
        prepare_request(&mut r, &addr("10.0.0.9"), false, false, false);
        assert_eq!(r.headers()[HOST], "from-target.test");
        assert!(r.headers().get(&crate::hop::HOP_HEADER).is_none());
        assert!(r.headers().get(TE).is_none(), "no trailers token: no TE");
        assert!(r.headers().get(CONNECTION).is_none());
        // Without an authority there is no Host to give.
        let mut r = req("/", Some("from-header.test"));
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("Host"));
        prepare_request(&mut r, &addr("10.0.0.9"), false, false, false);
        assert!(r.headers().get(HOST).is_none());
        assert!(r.headers().get(&X_FORWARDED_HOST).is_none());
    }

    #[test]
    fn forwarding_headers_from_an_untrusted_client_are_replaced() {
        let mut r = req("http://example.com/a?b", None);
        r.headers_mut()
            .append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        r.headers_mut()
            .append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        r.headers_mut()
            .insert(&X_FORWARDED_PROTO, HeaderValue::from_static("spoofed"));
        r.headers_mut()
            .insert(&X_FORWARDED_HOST, HeaderValue::from_static("spoofed"));
        r.headers_mut()
            .insert(FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        r.headers_mut()
            .insert(TE, HeaderValue::from_static("gzip, trailers"));
        r.headers_mut()
            .insert(&crate::hop::HOP_HEADER, HeaderValue::from_static("1.2.3"));
        prepare_request(&mut r, &addr("10.0.0.9"), false, false, false);
        assert_eq!(r.headers()[&X_FORWARDED_FOR], "10.0.0.9");
        assert_eq!(r.headers()[&X_FORWARDED_PROTO], "http");
        assert_eq!(r.headers()[&X_FORWARDED_HOST], "example.com");
        assert_eq!(
            r.headers()[FORWARDED],
            "for=10.0.0.9;host=example.com;proto=http"
        );
        assert_eq!(
            r.headers()[TE],
            "trailers",
            "only the trailers token passes"
        );
        assert_eq!(r.headers()[HOST], "example.com");
        assert!(r.headers().get(&crate::hop::HOP_HEADER).is_none());
        assert_eq!(r.uri(), "/a?b");
        assert_eq!(r.version(), Version::HTTP_11);
        assert_eq!(
            relayed_client_ip(r.headers(), "192.0.2.1".parse().unwrap(), &[]),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        // IPv6 clients and hosts with a port are quoted in Forwarded.
        let mut r = req("/", Some("h.test:8080"));
        prepare_request(&mut r, &addr("::1"), false, false, false);
        assert_eq!(
            r.headers()[FORWARDED],
            "for=\"[::1]\";host=\"h.test:8080\";proto=http"
        );
        assert!(r.headers().get(TE).is_none());
    }

    #[test]
    fn forwarding_headers_from_a_trusted_proxy_are_kept_and_extended() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut r = req("/", Some("site.test"));
        r.headers_mut().insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("203.0.113.7, 10.1.1.1"),
        );
        r.headers_mut()
            .insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        r.headers_mut().insert(
            FORWARDED,
            HeaderValue::from_static("for=203.0.113.7;proto=https"),
        );
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            client_ip(r.headers(), peer, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap(),
            "the first untrusted hop from the right"
        );
        assert_eq!(client_ip(r.headers(), peer, &[]), peer);
        prepare_request(&mut r, &ClientAddr::new(peer), true, false, false);
        assert_eq!(
            r.headers()[&X_FORWARDED_FOR],
            "203.0.113.7, 10.1.1.1, 10.0.0.2"
        );
        assert_eq!(r.headers()[&X_FORWARDED_PROTO], "https");
        assert_eq!(r.headers()[&X_FORWARDED_HOST], "site.test");
        assert_eq!(
            r.headers()[FORWARDED],
            "for=203.0.113.7;proto=https, for=10.0.0.2;host=site.test;proto=http"
        );
        // An untrusted peer claiming to forward is ignored for balancing too.
        let outsider: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(r.headers(), outsider, &trusted), outsider);
        // The leader sees a relayed request's client as the first node did.
        let node: IpAddr = "192.0.2.50".parse().unwrap();
        assert_eq!(
            relayed_client_ip(r.headers(), node, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            relayed_client_ip(r.headers(), node, &[]),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        // A relayed request keeps what the first node set.
        let mut relayed = req("/", Some("h"));
        relayed
            .headers_mut()
            .insert(&X_FORWARDED_FOR, HeaderValue::from_static("3.3.3.3"));
        prepare_request(&mut relayed, &addr("10.0.0.1"), false, true, false);
        assert_eq!(relayed.headers()[&X_FORWARDED_FOR], "3.3.3.3");
        assert!(relayed.headers().get(&X_FORWARDED_PROTO).is_none());
    }
}
