//! Node-wide limits: replicated like the rest of the configuration, applied by every node to
//! itself (each node counts its own requests and connections).

use crate::error::Invalid;
use serde::{Deserialize, Serialize};

/// The most a value of [`Limits`] may be.
pub const MAX_NODE_LIMIT: u32 = 10_000_000;

/// Limits every node applies to itself, over its HTTP and HTTPS listeners together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most requests one node serves at once (from request head to response head, 1 to
    /// 10,000,000); beyond it a fast 503 with `Retry-After: 1`. Unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Most client connections one node holds open (1 to 10,000,000); beyond it the node
    /// stops accepting and new connections wait in the kernel's backlog (as HAProxy's
    /// `maxconn`). Unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// The configuration revision that last changed them; set by the cluster, ignored on input.
    #[serde(default)]
    pub revision: u64,
}

/// Checks node limits.
pub fn validate_limits(l: &Limits) -> Result<(), Invalid> {
    for (field, v) in [
        ("max_requests", l.max_requests),
        ("max_connections", l.max_connections),
    ] {
        if let Some(v) = v
            && !(1..=MAX_NODE_LIMIT).contains(&v)
        {
            return Err(Invalid::new(
                field,
                format!("{v} is out of range"),
                format!("use 1 to {MAX_NODE_LIMIT}, or leave it out for no limit"),
            ));
        }
    }
    Ok(())
}
