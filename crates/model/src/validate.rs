//! Validation of configuration objects, shared by every interface and by `State::apply`.

use crate::config::{HeaderRules, Pool, Route};
use crate::error::Invalid;
use std::collections::HashSet;

const NAME_FIX: &str = "use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'";

/// Checks an object or backend name.
pub fn validate_name(field: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(Invalid::new(field, "is empty", NAME_FIX));
    }
    if name.len() > 64
        || name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Invalid::new(
            field,
            format!("'{name}' is not a valid name"),
            NAME_FIX,
        ));
    }
    Ok(())
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Checks a backend address: `host:port`, `[v6]:port` or `unix:/absolute/path`.
pub fn validate_address(field: &str, addr: &str) -> Result<(), Invalid> {
    const FIX: &str =
        "use host:port (e.g. 127.0.0.1:8080, [::1]:8080, app.local:80) or unix:/absolute/path";
    if let Some(path) = addr.strip_prefix("unix:") {
        if !path.starts_with('/') || path.len() < 2 || path.contains('\0') {
            return Err(Invalid::new(
                field,
                format!("'{addr}' is not an absolute unix socket path"),
                FIX,
            ));
        }
        return Ok(());
    }
    let bad = || Invalid::new(field, format!("'{addr}' is not a valid address"), FIX);
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => {
            return Err(Invalid::new(
                field,
                format!("'{addr}' has no valid port (1-65535)"),
                FIX,
            ));
        }
    }
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.parse::<std::net::Ipv4Addr>().is_ok() || valid_hostname(host)
    };
    if !host_ok {
        return Err(bad());
    }
    Ok(())
}

/// Checks a host pattern: an exact host name or `*.suffix`, lower case, without a port.
pub fn validate_host_pattern(field: &str, pattern: &str) -> Result<(), Invalid> {
    const FIX: &str = "use a host name like example.com or a wildcard like *.example.com";
    if pattern.is_empty() {
        return Err(Invalid::new(field, "is an empty host pattern", FIX));
    }
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    if pattern != pattern.to_ascii_lowercase() {
        return Err(Invalid::new(
            field,
            format!("'{pattern}' has upper-case letters"),
            "write host patterns in lower case",
        ));
    }
    if !valid_hostname(name) {
        return Err(Invalid::new(
            field,
            format!("'{pattern}' is not a valid host pattern"),
            FIX,
        ));
    }
    Ok(())
}

/// Checks a pool on its own (that it exists is checked against the state).
pub fn validate_pool(pool: &Pool) -> Result<(), Invalid> {
    validate_name("name", &pool.name)?;
    let mut ids = HashSet::new();
    for (i, b) in pool.backends.iter().enumerate() {
        validate_name(&format!("backends[{i}].id"), &b.id)?;
        if !ids.insert(b.id.as_str()) {
            return Err(Invalid::new(
                format!("backends[{i}].id"),
                format!("'{}' appears twice", b.id),
                "give every backend of a pool its own id",
            ));
        }
        validate_address(&format!("backends[{i}].address"), &b.address)?;
        if !(1..=1000).contains(&b.weight) {
            return Err(Invalid::new(
                format!("backends[{i}].weight"),
                format!("{} is out of range", b.weight),
                "use a weight from 1 to 1000",
            ));
        }
        if b.node == Some(0) {
            return Err(Invalid::new(
                format!("backends[{i}].node"),
                "0 is not a node id",
                "use the owning node's id (1 or more) or leave it out",
            ));
        }
        if let Some(m) = b.max_connections
            && !(1..=100_000).contains(&m)
        {
            return Err(Invalid::new(
                format!("backends[{i}].max_connections"),
                format!("{m} is out of range"),
                "use 1 to 100000, or leave it out for no limit",
            ));
        }
    }
    if let Some(spec) = &pool.process {
        crate::process::validate_process(spec)?;
    }
    if let Some(t) = pool.queue_timeout_ms
        && t > 60_000
    {
        return Err(Invalid::new(
            "queue_timeout_ms",
            format!("{t} is out of range"),
            "use 0 to 60000 milliseconds, or leave it out for the 1000 default",
        ));
    }
    if let Some(t) = pool.keep_alive_timeout_ms
        && t > 3_600_000
    {
        return Err(Invalid::new(
            "keep_alive_timeout_ms",
            format!("{t} is out of range"),
            "use 0 to 3600000 milliseconds (0: a new connection per request), or leave it out \
             for the 60000 default",
        ));
    }
    if let Some(p) = pool.retry_budget_percent
        && p > 1000
    {
        return Err(Invalid::new(
            "retry_budget_percent",
            format!("{p} is out of range"),
            "use 0 to 1000 (percent of requests), or leave it out for the default of 20",
        ));
    }
    if let Some(m) = pool.retry_budget_min_per_second
        && m > 10_000
    {
        return Err(Invalid::new(
            "retry_budget_min_per_second",
            format!("{m} is out of range"),
            "use 0 to 10000, or leave it out for the default of 10",
        ));
    }
    if let Some(c) = &pool.health_check {
        crate::health::validate_health_check(c)?;
    }
    if let Some(e) = &pool.eject {
        crate::health::validate_ejection(e)?;
    }
    // ---- TLS to backends (issue 7) ----
    match (&pool.tls, pool.protocol) {
        (Some(_), crate::Protocol::H2c) => {
            return Err(Invalid::new(
                "protocol",
                "h2c is cleartext HTTP/2 but the pool has tls",
                "use protocol h2 for HTTP/2 over TLS, or drop tls",
            ));
        }
        (None, crate::Protocol::H2) => {
            return Err(Invalid::new(
                "protocol",
                "h2 is HTTP/2 over TLS but the pool has no tls",
                "add tls (e.g. {\"tls\": {\"ca_pem\": \"...\"}}), or use h2c for cleartext HTTP/2",
            ));
        }
        (Some(t), _) => crate::backend_tls::validate_backend_tls(t)?,
        (None, _) => {}
    }
    // ---- end TLS to backends ----
    Ok(())
}

/// Whether `name` is a valid HTTP header name (an RFC 9110 token).
fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && name.bytes().all(is_tchar)
}

/// Whether `b` may be part of an RFC 9110 token (`tchar`): a header name, for one.
pub const fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Whether `value` is a valid header value: visible ASCII, spaces and tabs, no surrounding
/// whitespace, at most 8 KiB.
fn valid_header_value(value: &str) -> bool {
    value.len() <= 8192
        && value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        && value.trim() == value
}

fn check_header_name(field: &str, name: &str) -> Result<(), Invalid> {
    if !valid_header_name(name) {
        return Err(Invalid::new(
            field,
            format!("'{name}' is not a valid header name"),
            "use letters, digits and -, e.g. x-request-source",
        ));
    }
    Ok(())
}

fn check_header_value(field: &str, value: &str) -> Result<(), Invalid> {
    if !valid_header_value(value) {
        return Err(Invalid::new(
            field,
            "is not a valid header value",
            "use printable ASCII without line breaks or surrounding spaces, at most 8192 bytes",
        ));
    }
    Ok(())
}

/// Headers that frame the message or belong to one connection: rules may not touch them.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "gateway-hop",
];

fn check_rules(field: &str, rules: &HeaderRules, request: bool) -> Result<(), Invalid> {
    let names = rules
        .remove
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("{field}.remove[{i}]"), n))
        .chain(rules.set.keys().map(|n| (format!("{field}.set.{n}"), n)))
        .chain(rules.add.keys().map(|n| (format!("{field}.add.{n}"), n)));
    for (f, name) in names {
        check_header_name(&f, name)?;
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(Invalid::new(
                f,
                format!(
                    "'{name}' frames the message or belongs to one connection and cannot be changed"
                ),
                "leave it out; the gateway manages it",
            ));
        }
        if request && lower == "host" {
            return Err(Invalid::new(
                f,
                "the Host header cannot be changed by header rules",
                "use host_rewrite to send another Host to the backend",
            ));
        }
    }
    for (name, value) in &rules.set {
        check_header_value(&format!("{field}.set.{name}"), value)?;
    }
    for (name, value) in &rules.add {
        check_header_value(&format!("{field}.add.{name}"), value)?;
    }
    if rules.set.len() + rules.add.len() + rules.remove.len() > 64 {
        return Err(Invalid::new(
            field,
            "has more than 64 rules",
            "keep to 64 header rules per direction",
        ));
    }
    Ok(())
}

/// Checks `host`, `host:port`, `[v6]` or `[v6]:port` (a Host header value).
fn valid_host_header(h: &str) -> bool {
    let port_ok = |p: &str| matches!(p.parse::<u16>(), Ok(p) if p > 0);
    if let Some(rest) = h.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        return v6.parse::<std::net::Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(port_ok));
    }
    let (host, port) = match h.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    port.is_none_or(port_ok) && (host.parse::<std::net::Ipv4Addr>().is_ok() || valid_hostname(host))
}

/// Checks a route on its own (that its pool exists is checked against the state).
pub fn validate_route(route: &Route) -> Result<(), Invalid> {
    validate_name("name", &route.name)?;
    for (i, h) in route.hosts.iter().enumerate() {
        validate_host_pattern(&format!("hosts[{i}]"), h)?;
    }
    let p = &route.path_prefix;
    if !p.starts_with('/') || p.contains(['?', '#', ' ']) || p.chars().any(char::is_control) {
        return Err(Invalid::new(
            "path_prefix",
            format!("'{p}' is not a path prefix"),
            "start it with '/' and leave out query, fragment and spaces (e.g. /api)",
        ));
    }
    for (i, m) in route.methods.iter().enumerate() {
        if m.is_empty() || m.len() > 16 || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Invalid::new(
                format!("methods[{i}]"),
                format!("'{m}' is not an HTTP method"),
                "use upper-case method names such as GET or POST",
            ));
        }
    }
    if let Some(t) = route.timeout_ms
        && !(1..=3_600_000).contains(&t)
    {
        return Err(Invalid::new(
            "timeout_ms",
            format!("{t} is out of range"),
            "use 1 to 3600000 milliseconds, or leave it out for the 30000 default",
        ));
    }
    if let Some(r) = route.retries
        && r > 10
    {
        return Err(Invalid::new(
            "retries",
            format!("{r} is out of range"),
            "use 0 to 10, or leave it out for the default of 2",
        ));
    }
    if let Some(d) = route.retry_delay_ms
        && d > 60_000
    {
        return Err(Invalid::new(
            "retry_delay_ms",
            format!("{d} is out of range"),
            "use 0 to 60000 milliseconds, or leave it out for no delay",
        ));
    }
    if route.headers.len() > 16 {
        return Err(Invalid::new(
            "headers",
            format!("has {} conditions", route.headers.len()),
            "use at most 16 header conditions per route",
        ));
    }
    for (i, m) in route.headers.iter().enumerate() {
        check_header_name(&format!("headers[{i}].name"), &m.name)?;
        check_header_value(&format!("headers[{i}].value"), &m.value)?;
    }
    check_rules("request_headers", &route.request_headers, true)?;
    check_rules("response_headers", &route.response_headers, false)?;
    if let Some(h) = &route.host_rewrite
        && !valid_host_header(h)
    {
        return Err(Invalid::new(
            "host_rewrite",
            format!("'{h}' is not a valid host"),
            "use a host name or host:port, e.g. app.internal or app.internal:8080",
        ));
    }
    if let Some(st) = route.https_redirect
        && !matches!(st, 301 | 302 | 307 | 308)
    {
        return Err(Invalid::new(
            "https_redirect",
            format!("{st} is not a redirect status"),
            "use 308 (keeps the method and body), 301, 302 or 307",
        ));
    }
    for (key, page) in &route.error_pages {
        let field = format!("error_pages.{key}");
        if !matches!(key.as_str(), "502" | "503" | "504") {
            return Err(Invalid::new(
                field,
                format!("'{key}' is not an error the gateway answers with"),
                "use \"502\", \"503\" or \"504\" as keys",
            ));
        }
        if let Some(st) = page.status
            && !(200..=599).contains(&st)
        {
            return Err(Invalid::new(
                format!("{field}.status"),
                format!("{st} is out of range"),
                "use a status from 200 to 599, or leave it out to keep the error's",
            ));
        }
        if page.content_type.is_empty() || !valid_header_value(&page.content_type) {
            return Err(Invalid::new(
                format!("{field}.content_type"),
                "is not a valid content type",
                "use a media type such as text/html; charset=utf-8",
            ));
        }
        if page.body.len() > 65_536 {
            return Err(Invalid::new(
                format!("{field}.body"),
                format!("is {} bytes", page.body.len()),
                "keep error pages to 64 KiB",
            ));
        }
    }
    if route.pool.is_empty() {
        return Err(Invalid::new(
            "pool",
            "is missing",
            "name the pool that serves this route",
        ));
    }
    validate_name("pool", &route.pool)?;
    if let Some(m) = route.max_body_bytes
        && !(1..=1u64 << 40).contains(&m)
    {
        return Err(Invalid::new(
            "max_body_bytes",
            format!("{m} is out of range"),
            "use 1 to 1099511627776 bytes, or leave it out for no limit",
        ));
    }
    if let Some(m) = route.max_concurrent
        && !(1..=1_000_000).contains(&m)
    {
        return Err(Invalid::new(
            "max_concurrent",
            format!("{m} is out of range"),
            "use 1 to 1000000 requests at once, or leave it out for no limit",
        ));
    }
    if let Some(r) = &route.rate_limit {
        if !(1..=1_000_000).contains(&r.per_second) {
            return Err(Invalid::new(
                "rate_limit.per_second",
                format!("{} is out of range", r.per_second),
                "use 1 to 1000000 requests per second",
            ));
        }
        if let Some(b) = r.burst
            && !(1..=1_000_000).contains(&b)
        {
            return Err(Invalid::new(
                "rate_limit.burst",
                format!("{b} is out of range"),
                "use 1 to 1000000 requests, or leave it out to use per_second",
            ));
        }
    }
    if let Some(c) = &route.cache {
        validate_cache(c)?;
    }
    Ok(())
}

/// Checks a route's `cache` settings.
fn validate_cache(c: &crate::config::RouteCache) -> Result<(), Invalid> {
    if !c.coalesce && c.max_bytes == 0 {
        return Err(Invalid::new(
            "cache",
            "neither coalesces nor stores anything",
            "set cache.coalesce to true or cache.max_bytes above 0, or leave cache out",
        ));
    }
    if c.max_bytes > 1 << 36 {
        return Err(Invalid::new(
            "cache.max_bytes",
            format!("{} is out of range", c.max_bytes),
            "use 0 (coalescing only) to 68719476736 bytes",
        ));
    }
    if let Some(e) = c.max_entry_bytes {
        if !(1..=1 << 30).contains(&e) {
            return Err(Invalid::new(
                "cache.max_entry_bytes",
                format!("{e} is out of range"),
                "use 1 to 1073741824 bytes, or leave it out for 1 MiB",
            ));
        }
        if c.max_bytes > 0 && e > c.max_bytes {
            return Err(Invalid::new(
                "cache.max_entry_bytes",
                format!("{e} is larger than cache.max_bytes ({})", c.max_bytes),
                "make max_entry_bytes at most max_bytes",
            ));
        }
    }
    if c.stale_while_revalidate_ms > 86_400_000 {
        return Err(Invalid::new(
            "cache.stale_while_revalidate_ms",
            format!("{} is out of range", c.stale_while_revalidate_ms),
            "use 0 to 86400000 milliseconds",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in [
            "127.0.0.1:80",
            "[::1]:8080",
            "app.local:1",
            "unix:/tmp/a.sock",
            "localhost:65535",
        ] {
            validate_address("a", ok).unwrap();
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "host:99999",
            "unix:rel",
            ":80",
            "a b:80",
            "[zz]:80",
        ] {
            assert!(validate_address("a", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn route_timeout_and_retries() {
        let ok = Route {
            name: "r".into(),
            pool: "p".into(),
            path_prefix: "/".into(),
            ..Default::default()
        };
        validate_route(&ok).unwrap();
        validate_route(&Route {
            timeout_ms: Some(1),
            retries: Some(10),
            ..ok.clone()
        })
        .unwrap();
        let e = validate_route(&Route {
            timeout_ms: Some(0),
            ..ok.clone()
        })
        .unwrap_err();
        assert_eq!(e.field, "timeout_ms");
        let e = validate_route(&Route {
            retries: Some(11),
            ..ok.clone()
        })
        .unwrap_err();
        assert_eq!(e.field, "retries");
        // Old JSON without the new fields still parses, and they are not written when unset.
        let r: Route = serde_json::from_str(r#"{"name":"r","pool":"p"}"#).unwrap();
        assert_eq!((r.timeout_ms, r.retries), (None, None));
        assert!(!serde_json::to_string(&r).unwrap().contains("timeout_ms"));
        let p: crate::config::Pool =
            serde_json::from_str(r#"{"name":"p","prefer_local":true}"#).unwrap();
        assert!(p.prefer_local);
    }

    fn route() -> Route {
        Route {
            name: "r".into(),
            pool: "p".into(),
            path_prefix: "/".into(),
            ..Default::default()
        }
    }

    #[test]
    fn data_plane_fields_parse_validate_and_default() {
        let r: Route = serde_json::from_str(
            r#"{"name":"r","pool":"p","retry_delay_ms":50,
                "headers":[{"name":"X-Canary","value":"1"}],
                "request_headers":{"set":{"x-a":"1"},"add":{"x-b":"2"},"remove":["x-c"]},
                "response_headers":{"set":{"cache-control":"no-store"}},
                "strip_prefix":true,"host_rewrite":"app.internal:8080",
                "error_pages":{"503":{"body":"<h1>later</h1>"},"502":{"status":500,"content_type":"text/plain","body":"x"}}}"#,
        )
        .unwrap();
        validate_route(&r).unwrap();
        assert_eq!(
            r.error_pages["503"].content_type,
            "text/html; charset=utf-8"
        );
        assert_eq!(r.request_headers.remove, ["x-c"]);
        let p: Pool = serde_json::from_str(
            r#"{"name":"p","protocol":"h2c","queue_timeout_ms":0,"retry_budget_percent":0,
                "retry_budget_min_per_second":0,"keep_alive_timeout_ms":0,
                "backends":[{"id":"a","address":"127.0.0.1:1","max_connections":2}]}"#,
        )
        .unwrap();
        validate_pool(&p).unwrap();
        assert_eq!(p.protocol, crate::config::Protocol::H2c);
        assert_eq!(p.backends[0].max_connections, Some(2));
        assert_eq!(p.keep_alive_timeout_ms, Some(0));
        // Defaults are not written, so old readers and old JSON keep working.
        let plain = serde_json::to_string(&route()).unwrap();
        for key in [
            "headers",
            "request_headers",
            "strip_prefix",
            "error_pages",
            "host_rewrite",
        ] {
            assert!(!plain.contains(key), "{plain}");
        }
        let plain = serde_json::to_string(&Pool {
            name: "p".into(),
            ..Default::default()
        })
        .unwrap();
        assert!(
            !plain.contains("protocol") && !plain.contains("queue"),
            "{plain}"
        );
        assert!(serde_json::from_str::<Pool>(r#"{"protocol":"h3"}"#).is_err());

        let bad_routes: Vec<(Route, &str)> = vec![
            (
                Route {
                    retry_delay_ms: Some(60_001),
                    ..route()
                },
                "retry_delay_ms",
            ),
            (
                Route {
                    headers: vec![crate::config::HeaderMatch {
                        name: "bad name".into(),
                        value: "1".into(),
                    }],
                    ..route()
                },
                "headers[0].name",
            ),
            (
                Route {
                    headers: vec![crate::config::HeaderMatch {
                        name: "x".into(),
                        value: "a\r\nb".into(),
                    }],
                    ..route()
                },
                "headers[0].value",
            ),
            (
                Route {
                    request_headers: HeaderRules {
                        set: [("Content-Length".to_string(), "1".to_string())].into(),
                        ..Default::default()
                    },
                    ..route()
                },
                "request_headers.set.Content-Length",
            ),
            (
                Route {
                    request_headers: HeaderRules {
                        remove: vec!["host".into()],
                        ..Default::default()
                    },
                    ..route()
                },
                "request_headers.remove[0]",
            ),
            (
                Route {
                    response_headers: HeaderRules {
                        add: [("x-a".to_string(), "\u{7f}".to_string())].into(),
                        ..Default::default()
                    },
                    ..route()
                },
                "response_headers.add.x-a",
            ),
            (
                Route {
                    host_rewrite: Some("a b".into()),
                    ..route()
                },
                "host_rewrite",
            ),
            (
                Route {
                    host_rewrite: Some("a:0".into()),
                    ..route()
                },
                "host_rewrite",
            ),
            (
                Route {
                    error_pages: [("404".to_string(), Default::default())].into(),
                    ..route()
                },
                "error_pages.404",
            ),
            (
                Route {
                    error_pages: [(
                        "502".to_string(),
                        crate::config::ErrorPage {
                            status: Some(99),
                            ..Default::default()
                        },
                    )]
                    .into(),
                    ..route()
                },
                "error_pages.502.status",
            ),
        ];
        for (r, field) in bad_routes {
            let e = validate_route(&r).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        for ok in ["h", "h:1", "10.0.0.1:80", "[::1]", "[::1]:8080"] {
            assert!(valid_host_header(ok), "{ok}");
        }
        for bad in ["", "[::1", "h:", "h:x", "[zz]:1", "h:1:2"] {
            assert!(!valid_host_header(bad), "{bad}");
        }

        let pool = |f: &dyn Fn(&mut Pool)| {
            let mut p: Pool =
                serde_json::from_str(r#"{"name":"p","backends":[{"id":"a","address":"h:1"}]}"#)
                    .unwrap();
            f(&mut p);
            validate_pool(&p).map_err(|e| e.field)
        };
        assert_eq!(
            pool(&|p| p.backends[0].max_connections = Some(0)),
            Err("backends[0].max_connections".to_string())
        );
        assert_eq!(
            pool(&|p| p.queue_timeout_ms = Some(60_001)),
            Err("queue_timeout_ms".to_string())
        );
        assert_eq!(
            pool(&|p| p.keep_alive_timeout_ms = Some(3_600_001)),
            Err("keep_alive_timeout_ms".to_string())
        );
        assert_eq!(pool(&|p| p.keep_alive_timeout_ms = Some(3_600_000)), Ok(()));
        assert_eq!(
            pool(&|p| p.retry_budget_percent = Some(1001)),
            Err("retry_budget_percent".to_string())
        );
        assert_eq!(
            pool(&|p| p.retry_budget_min_per_second = Some(10_001)),
            Err("retry_budget_min_per_second".to_string())
        );
        assert_eq!(pool(&|_| {}), Ok(()));
    }

    #[test]
    fn names_and_hosts() {
        validate_name("n", "web-1.a_b").unwrap();
        for bad in ["", ".x", "a b", "a/b", &"x".repeat(65)] {
            assert!(validate_name("n", bad).is_err(), "{bad}");
        }
        validate_host_pattern("h", "*.example.com").unwrap();
        validate_host_pattern("h", "example.com").unwrap();
        for bad in ["", "*", "Example.com", "a..b", "*.", "a:80"] {
            assert!(validate_host_pattern("h", bad).is_err(), "{bad}");
        }
    }
}
