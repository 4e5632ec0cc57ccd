//! Validation of configuration objects, shared by every interface and by `State::apply`.

use crate::config::{Pool, Route};
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
    }
    Ok(())
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
    if route.pool.is_empty() {
        return Err(Invalid::new(
            "pool",
            "is missing",
            "name the pool that serves this route",
        ));
    }
    validate_name("pool", &route.pool)?;
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
