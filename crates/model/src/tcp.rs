//! TCP routes: a listen address bound on every node (or on the nodes listed) whose
//! connections are proxied, as raw bytes, to a backend of a pool.

use crate::config::NodeId;
use crate::error::Invalid;
use crate::validate::validate_name;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The PROXY protocol header sent to the backend before the client's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

/// Default for [`TcpRoute::idle_timeout_ms`]: 10 minutes.
pub const DEFAULT_TCP_IDLE_TIMEOUT_MS: u64 = 600_000;
/// Default for [`TcpRoute::connect_timeout_ms`]: 5 s.
pub const DEFAULT_TCP_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// A TCP route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRoute {
    /// Unique route name (letters, digits, `.`, `_`, `-`; at most 64).
    #[serde(default)]
    pub name: String,
    /// The address every node (or every node of `nodes`) listens on: `ip:port`.
    #[serde(default)]
    pub listen: String,
    /// The pool whose backends take the connections; must exist.
    #[serde(default)]
    pub pool: String,
    /// Only these nodes listen; empty: every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeId>,
    /// A connection with no byte either way for this long is closed (1 to 86,400,000 ms);
    /// 600,000 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// How long connecting to one backend may take before the next is tried (1 to 60,000
    /// ms); 5,000 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// Most client connections open at once on each node (1 to 1,000,000); more are closed
    /// at once. Unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Send the client's address to the backend in a PROXY protocol header (`v1` or `v2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// The configuration revision that last changed this route; set by the cluster.
    #[serde(default)]
    pub revision: u64,
}

/// Checks a TCP route on its own (its pool's existence and listen-address clashes are
/// checked against the state in `apply`).
pub fn validate_tcp_route(r: &TcpRoute) -> Result<(), Invalid> {
    validate_name("name", &r.name)?;
    match r.listen.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => {}
        _ => {
            return Err(Invalid::new(
                "listen",
                format!("'{}' is not an ip:port address", r.listen),
                "use an IP address and a port, e.g. 0.0.0.0:6380 or 127.0.0.1:6380",
            ));
        }
    }
    validate_name("pool", &r.pool)?;
    if r.nodes.contains(&0) {
        return Err(Invalid::new(
            "nodes",
            "0 is not a node id",
            "list the ids of the nodes that should listen, or none for every node",
        ));
    }
    let range = |field: &str, v: Option<u64>, max: u64| match v {
        Some(v) if v == 0 || v > max => Err(Invalid::new(
            field,
            format!("{v} is out of range"),
            format!("use 1 to {max}, or leave it out for the default"),
        )),
        _ => Ok(()),
    };
    range("idle_timeout_ms", r.idle_timeout_ms, 86_400_000)?;
    range("connect_timeout_ms", r.connect_timeout_ms, 60_000)?;
    range(
        "max_connections",
        r.max_connections.map(u64::from),
        1_000_000,
    )?;
    Ok(())
}

/// The state of one TCP route's listener on one node, as `/status` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpListenerStatus {
    pub route: String,
    pub listen: String,
    /// Listening, or why not.
    pub listening: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_and_ranges_are_checked() {
        let ok = TcpRoute {
            name: "redis".into(),
            listen: "127.0.0.1:6380".into(),
            pool: "r".into(),
            ..Default::default()
        };
        validate_tcp_route(&ok).unwrap();
        for (bad, field) in [
            (
                TcpRoute {
                    listen: "localhost:6380".into(),
                    ..ok.clone()
                },
                "listen",
            ),
            (
                TcpRoute {
                    listen: "127.0.0.1:0".into(),
                    ..ok.clone()
                },
                "listen",
            ),
            (
                TcpRoute {
                    idle_timeout_ms: Some(0),
                    ..ok.clone()
                },
                "idle_timeout_ms",
            ),
            (
                TcpRoute {
                    nodes: vec![0],
                    ..ok.clone()
                },
                "nodes",
            ),
        ] {
            assert_eq!(validate_tcp_route(&bad).unwrap_err().field, field);
        }
        let json = r#"{"listen":"0.0.0.0:1","pool":"p","proxy_protocol":"v2"}"#;
        let r: TcpRoute = serde_json::from_str(json).unwrap();
        assert_eq!(r.proxy_protocol, Some(ProxyProtocol::V2));
    }
}
