//! Header hygiene for forwarded requests and responses.
//!
//! Hop-by-hop headers are removed in both directions: `Connection` and every header it names,
//! `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding` (hyper frames the
//! body itself), `Upgrade` (kept, with `Connection: upgrade`, on an upgrade request and its
//! `101` answer) and every `Proxy-*` header. Requests gain `X-Forwarded-For` (the client IP
//! appended), `X-Forwarded-Proto` and `X-Forwarded-Host` (both overwritten); a request relayed
//! by another gateway node keeps what that node set.

use http::header::{CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, Version};
use std::net::IpAddr;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
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

/// Removes hop-by-hop headers; with `upgrade`, keeps `Upgrade` and sets `Connection: upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Headers named by Connection (allocates only when it names something unusual).
    let mut named: Vec<HeaderName> = Vec::new();
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
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    headers.remove(CONNECTION);
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(TE);
    headers.remove(TRAILER);
    headers.remove(TRANSFER_ENCODING);
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Appends `ip` to `X-Forwarded-For` (joining several headers into one).
pub(crate) fn append_forwarded_for(headers: &mut HeaderMap, ip: IpAddr) {
    let ip = ip.to_canonical();
    let mut value = String::with_capacity(64);
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                value.push_str(s);
                value.push_str(", ");
            }
        }
    }
    use std::fmt::Write;
    let _ = write!(value, "{ip}");
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

/// The last `X-Forwarded-For` entry, i.e. the client as seen by the previous gateway node.
pub(crate) fn last_forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last = headers.get_all(&X_FORWARDED_FOR).iter().next_back()?;
    last.to_str().ok()?.rsplit(',').next()?.trim().parse().ok()
}

/// Rewrites a client request into the request sent upstream: hop-by-hop headers removed,
/// forwarding headers added (unless `relayed` from another gateway node, which added them),
/// `Host` set from `:authority` when missing (HTTP/2), origin-form target, HTTP/1.1.
pub(crate) fn prepare_request<B>(
    req: &mut Request<B>,
    client_ip: IpAddr,
    relayed: bool,
    upgrade: bool,
) {
    let authority = req.uri().authority().cloned();
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    headers.remove(&crate::hop::HOP_HEADER);
    if !headers.contains_key(HOST)
        && let Some(a) = &authority
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        headers.insert(HOST, v);
    }
    if !relayed {
        append_forwarded_for(headers, client_ip);
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        if let Some(host) = headers.get(HOST).cloned() {
            headers.insert(&X_FORWARDED_HOST, host);
        }
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
    if host.iter().any(u8::is_ascii_uppercase) {
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
        h.insert(TRAILER, HeaderValue::from_static("x"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("proxy-foo", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut up = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        strip_hop_by_hop(&mut up, true);
        assert_eq!(up.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(up.get(CONNECTION).unwrap(), "upgrade");
        assert!(up.get("x-secret").is_none());
    }

    #[test]
    fn forwarding_headers() {
        let mut r = req("http://example.com/a?b", None);
        r.headers_mut()
            .append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        r.headers_mut()
            .append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        r.headers_mut()
            .insert(&X_FORWARDED_PROTO, HeaderValue::from_static("spoofed"));
        r.headers_mut()
            .insert(&crate::hop::HOP_HEADER, HeaderValue::from_static("1.2.3"));
        prepare_request(&mut r, "10.0.0.9".parse().unwrap(), false, false);
        assert_eq!(r.headers()[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(r.headers()[&X_FORWARDED_PROTO], "http");
        assert_eq!(r.headers()[&X_FORWARDED_HOST], "example.com");
        assert_eq!(r.headers()[HOST], "example.com");
        assert!(r.headers().get(&crate::hop::HOP_HEADER).is_none());
        assert_eq!(r.uri(), "/a?b");
        assert_eq!(r.version(), Version::HTTP_11);
        assert_eq!(
            last_forwarded_for(r.headers()),
            Some("10.0.0.9".parse().unwrap())
        );
        // A relayed request keeps what the first node set.
        let mut relayed = req("/", Some("h"));
        relayed
            .headers_mut()
            .insert(&X_FORWARDED_FOR, HeaderValue::from_static("3.3.3.3"));
        prepare_request(&mut relayed, "10.0.0.1".parse().unwrap(), true, false);
        assert_eq!(relayed.headers()[&X_FORWARDED_FOR], "3.3.3.3");
        assert!(relayed.headers().get(&X_FORWARDED_PROTO).is_none());
    }
}
