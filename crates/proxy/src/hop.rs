//! Signatures made with the cluster's hop key: the write-to-leader hop marker and the sticky
//! cookie. Both are HMAC-SHA256, so any node holding the key can make and check them and a
//! client cannot forge them.
//!
//! The hop marker is `gateway-hop: <node_id>.<unix_seconds>.<hex hmac>` where the HMAC covers
//! `"<node_id>.<unix_seconds>\n<METHOD> <path?query>"`: a captured marker cannot be reused on
//! another method or path, and is accepted only within [`HOP_MAX_SKEW`] of the receiver's clock.

use hmac::{Hmac, Mac};
use http::{HeaderName, HeaderValue, Method};
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// The header carrying the hop marker between gateway nodes.
pub(crate) static HOP_HEADER: HeaderName = HeaderName::from_static("gateway-hop");

/// How far the timestamp of a hop marker may be from the receiver's clock, in seconds.
pub(crate) const HOP_MAX_SKEW: u64 = 60;

/// Name of the sticky-session cookie.
pub(crate) const COOKIE_NAME: &str = "gw_sticky";

/// Hex characters of the cookie signature (the HMAC truncated to 128 bits).
pub(crate) const COOKIE_SIG_LEN: usize = 32;

/// The cluster's HMAC key, keyed once and cloned per use.
#[derive(Clone)]
pub(crate) struct HopKey {
    mac: Hmac<Sha256>,
}

/// Why a hop marker was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HopError {
    #[error("malformed marker")]
    Malformed,
    #[error("marker expired or from the future")]
    Expired,
    #[error("bad signature")]
    BadSignature,
}

impl HopKey {
    pub(crate) fn new(key: &[u8]) -> Self {
        HopKey {
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length"),
        }
    }

    fn hop_mac(&self, node: &str, ts: &str, method: &Method, path_and_query: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(node.as_bytes());
        mac.update(b".");
        mac.update(ts.as_bytes());
        mac.update(b"\n");
        mac.update(method.as_str().as_bytes());
        mac.update(b" ");
        mac.update(path_and_query.as_bytes());
        mac
    }

    /// The marker a node attaches to a request it forwards to the leader.
    pub(crate) fn sign_hop(
        &self,
        node_id: u64,
        now: u64,
        method: &Method,
        path_and_query: &str,
    ) -> HeaderValue {
        let node = node_id.to_string();
        let ts = now.to_string();
        let tag = self
            .hop_mac(&node, &ts, method, path_and_query)
            .finalize()
            .into_bytes();
        let value = format!("{node}.{ts}.{}", hex::encode(tag));
        HeaderValue::try_from(value).expect("digits, dots and hex are valid header characters")
    }

    /// Checks a marker; returns the id of the node that forwarded the request.
    pub(crate) fn verify_hop(
        &self,
        value: &HeaderValue,
        method: &Method,
        path_and_query: &str,
        now: u64,
    ) -> Result<u64, HopError> {
        let s = value.to_str().map_err(|_| HopError::Malformed)?;
        let mut parts = s.splitn(3, '.');
        let (Some(node), Some(ts), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(HopError::Malformed);
        };
        let node_id: u64 = node.parse().map_err(|_| HopError::Malformed)?;
        let when: u64 = ts.parse().map_err(|_| HopError::Malformed)?;
        let mut raw = [0u8; 32];
        hex::decode_to_slice(tag, &mut raw).map_err(|_| HopError::Malformed)?;
        if now.abs_diff(when) > HOP_MAX_SKEW {
            return Err(HopError::Expired);
        }
        self.hop_mac(node, ts, method, path_and_query)
            .verify_slice(&raw)
            .map_err(|_| HopError::BadSignature)?;
        Ok(node_id)
    }

    /// The signature of a sticky cookie pinning pool `pool` to backend `id`, as lower-case hex.
    pub(crate) fn cookie_sig(&self, pool: &str, id: &str) -> [u8; COOKIE_SIG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(COOKIE_NAME.as_bytes());
        mac.update(b"\0");
        mac.update(pool.as_bytes());
        mac.update(b"\0");
        mac.update(id.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; COOKIE_SIG_LEN];
        hex::encode_to_slice(&tag[..COOKIE_SIG_LEN / 2], &mut out).expect("sizes match");
        out
    }
}

/// Constant-time comparison of a presented cookie signature with the expected one.
pub(crate) fn sig_matches(presented: &[u8], expected: &[u8; COOKIE_SIG_LEN]) -> bool {
    presented.len() == COOKIE_SIG_LEN && bool::from(presented.ct_eq(expected))
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_marker_round_trip_and_forgeries() {
        let key = HopKey::new(b"secret");
        let now = 1_700_000_000;
        let v = key.sign_hop(2, now, &Method::POST, "/a?b=1");
        assert!(v.to_str().unwrap().starts_with("2.1700000000."));
        assert_eq!(key.verify_hop(&v, &Method::POST, "/a?b=1", now + 5), Ok(2));
        // Another key, method, path or a stale clock: refused.
        let other = HopKey::new(b"other");
        assert_eq!(
            other.verify_hop(&v, &Method::POST, "/a?b=1", now),
            Err(HopError::BadSignature)
        );
        assert_eq!(
            key.verify_hop(&v, &Method::PUT, "/a?b=1", now),
            Err(HopError::BadSignature)
        );
        assert_eq!(
            key.verify_hop(&v, &Method::POST, "/a", now),
            Err(HopError::BadSignature)
        );
        assert_eq!(
            key.verify_hop(&v, &Method::POST, "/a?b=1", now + 61),
            Err(HopError::Expired)
        );
        // Changing the claimed node breaks the signature.
        let forged = v.to_str().unwrap().replacen('2', "3", 1);
        let forged = HeaderValue::from_str(&forged).unwrap();
        assert_eq!(
            key.verify_hop(&forged, &Method::POST, "/a?b=1", now),
            Err(HopError::BadSignature)
        );
        for bad in ["", "1", "1.2", "x.1.00", "1.2.zz", "1.2.00"] {
            let h = HeaderValue::from_static(bad);
            assert_eq!(
                key.verify_hop(&h, &Method::POST, "/", now),
                Err(HopError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn cookie_signature_depends_on_pool_backend_and_key() {
        let key = HopKey::new(b"k");
        let a = key.cookie_sig("web", "a");
        assert!(sig_matches(&a, &key.cookie_sig("web", "a")));
        assert!(!sig_matches(&a, &key.cookie_sig("web", "b")));
        assert!(!sig_matches(&a, &key.cookie_sig("api", "a")));
        assert!(!sig_matches(&a, &HopKey::new(b"k2").cookie_sig("web", "a")));
        assert!(!sig_matches(&a[..31], &a));
    }
}
