//! Backend health: how a pool's backends are checked (active probes, passive ejection), the
//! health the cluster agreed on, the transitions it recorded, and where alerts about them go.
//!
//! Every node probes; the leader commits a backend's transition (down or up) once the pool's
//! [`HealthPolicy`] is met by the nodes' views, so every node routes around the same backends.

use crate::config::NodeId;
use crate::error::Invalid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What an active probe does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// `GET path`; healthy when the status is in `status` (and the body holds `body`).
    #[default]
    Http,
    /// Healthy when a TCP connection opens within the timeout.
    Tcp,
}

/// How many nodes must see a backend down before the cluster marks it down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthPolicy {
    /// More than half of the cluster's members (voters and learners).
    #[default]
    Majority,
    /// Any one node.
    Any,
}

fn default_path() -> String {
    "/".into()
}
fn default_status() -> String {
    "200-399".into()
}
fn default_interval() -> u64 {
    2_000
}
fn default_timeout() -> u64 {
    1_000
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_true() -> bool {
    true
}
fn default_cooldown() -> u64 {
    10_000
}
fn is_true(b: &bool) -> bool {
    *b
}

/// Active health checking of a pool's backends, run by every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http` (default) or `tcp`.
    #[serde(rename = "type", default)]
    pub kind: CheckKind,
    /// Path (and query) probed by `http` checks; `/` when omitted.
    #[serde(default = "default_path")]
    pub path: String,
    /// Healthy statuses: `200`, `200-399`, or a comma-separated list of both; `200-399` when
    /// omitted.
    #[serde(default = "default_status")]
    pub status: String,
    /// A healthy response body must contain this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `Host` header of `http` probes; the backend's address when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Time between probes of one backend, in milliseconds (100 to 3,600,000); 2,000 when
    /// omitted.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// A probe without an answer this long fails (10 ms up to `interval_ms`); 1,000 when omitted.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Consecutive successes before a node sees a down backend up again (1 to 100); 2.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures before a node sees a backend down (1 to 100); 3.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// `majority` (default) or `any`: how many nodes must see a backend down.
    #[serde(default)]
    pub policy: HealthPolicy,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: CheckKind::Http,
            path: default_path(),
            status: default_status(),
            body: None,
            host: None,
            interval_ms: default_interval(),
            timeout_ms: default_timeout(),
            rise: default_rise(),
            fall: default_fall(),
            policy: HealthPolicy::Majority,
        }
    }
}

/// Passive ejection: what a node sees in real traffic takes a backend out of its own choices at
/// once, for `cooldown_ms`, and counts as a failed probe towards the cluster's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ejection {
    /// Eject on a failed connection (refused, reset, timed out); `true` when omitted.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub connect_failure: bool,
    /// Eject after this many 5xx responses in a row (1 to 1000); off when omitted or 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_5xx: u32,
    /// How long an ejected backend gets no new requests from this node, in milliseconds
    /// (100 to 3,600,000); 10,000 when omitted.
    #[serde(default = "default_cooldown")]
    pub cooldown_ms: u64,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Default for Ejection {
    fn default() -> Self {
        Ejection {
            connect_failure: true,
            consecutive_5xx: 0,
            cooldown_ms: default_cooldown(),
        }
    }
}

/// Parsed `HealthCheck::status`: inclusive ranges of HTTP statuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRanges(Vec<(u16, u16)>);

impl StatusRanges {
    /// Parses `200`, `200-399`, `200-299,404`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let num = |t: &str| {
                t.parse::<u16>()
                    .ok()
                    .filter(|n| (100..=599).contains(n))
                    .ok_or_else(|| format!("'{t}' is not an HTTP status (100 to 599)"))
            };
            let (lo, hi) = (num(lo)?, num(hi)?);
            if lo > hi {
                return Err(format!("the range {lo}-{hi} is empty"));
            }
            out.push((lo, hi));
        }
        Ok(StatusRanges(out))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

pub(crate) fn validate_health_check(c: &HealthCheck) -> Result<(), Invalid> {
    let f = |name: &str| format!("health_check.{name}");
    if c.kind == CheckKind::Http {
        if !c.path.starts_with('/') || c.path.len() > 1024 || c.path.chars().any(char::is_control) {
            return Err(Invalid::new(
                f("path"),
                format!("'{}' is not a request path", c.path),
                "use a path starting with '/', e.g. /healthz (at most 1024 characters)",
            ));
        }
        if let Err(e) = StatusRanges::parse(&c.status) {
            return Err(Invalid::new(
                f("status"),
                e,
                "use a status, a range or a list of both, e.g. 200, 200-399 or 200-299,404",
            ));
        }
        if let Some(b) = &c.body
            && (b.is_empty() || b.len() > 4096)
        {
            return Err(Invalid::new(
                f("body"),
                format!("{} bytes", b.len()),
                "use 1 to 4096 bytes of text the healthy body contains, or leave it out",
            ));
        }
        if let Some(h) = &c.host
            && (h.is_empty()
                || h.len() > 255
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b)))
        {
            return Err(Invalid::new(
                f("host"),
                format!("'{h}' is not a host name"),
                "use a host or host:port, e.g. app.internal, or leave it out",
            ));
        }
    }
    if !(100..=3_600_000).contains(&c.interval_ms) {
        return Err(Invalid::new(
            f("interval_ms"),
            format!("{} is out of range", c.interval_ms),
            "use 100 to 3600000 milliseconds, or leave it out for the 2000 default",
        ));
    }
    if c.timeout_ms < 10 || c.timeout_ms > c.interval_ms {
        return Err(Invalid::new(
            f("timeout_ms"),
            format!(
                "{} is out of range (interval_ms is {})",
                c.timeout_ms, c.interval_ms
            ),
            "use 10 milliseconds up to interval_ms",
        ));
    }
    for (name, v) in [("rise", c.rise), ("fall", c.fall)] {
        if !(1..=100).contains(&v) {
            return Err(Invalid::new(
                f(name),
                format!("{v} is out of range"),
                "use 1 to 100 consecutive probes",
            ));
        }
    }
    Ok(())
}

pub(crate) fn validate_ejection(e: &Ejection) -> Result<(), Invalid> {
    if e.consecutive_5xx > 1000 {
        return Err(Invalid::new(
            "eject.consecutive_5xx",
            format!("{} is out of range", e.consecutive_5xx),
            "use 1 to 1000 responses in a row, or 0 to eject on connection failures only",
        ));
    }
    if !(100..=3_600_000).contains(&e.cooldown_ms) {
        return Err(Invalid::new(
            "eject.cooldown_ms",
            format!("{} is out of range", e.cooldown_ms),
            "use 100 to 3600000 milliseconds, or leave it out for the 10000 default",
        ));
    }
    Ok(())
}

/// A backend that one node sees down (its address included: a backend given a new address is
/// another thing to see).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeenDown {
    pub pool: String,
    pub backend: String,
    pub address: String,
}

/// The health the cluster agreed on for one backend (absent: never marked down, so up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealth {
    /// Whether the backend gets requests.
    pub up: bool,
    /// The address the verdict is about (a backend given a new address starts afresh).
    pub address: String,
    /// The nodes that saw it down when the transition was committed.
    #[serde(default)]
    pub down_on: Vec<NodeId>,
    /// When the leader committed the last transition (milliseconds since the Unix epoch).
    pub since_ms: u64,
    /// The id of the event that recorded the last transition.
    pub transition: u64,
}

/// A backend's health as read APIs name it, from its pool and the cluster's verdict: `up`,
/// `down`, or `unknown` when the pool has no health check.
pub fn health_state(pool: &crate::config::Pool, verdict: Option<&BackendHealth>) -> &'static str {
    match (&pool.health_check, verdict) {
        (None, _) => "unknown",
        (Some(_), Some(h)) if !h.up => "down",
        (Some(_), _) => "up",
    }
}

/// Something alert-worthy the cluster agreed on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventKind {
    BackendDown {
        pool: String,
        backend: String,
        address: String,
        down_on: Vec<NodeId>,
    },
    BackendUp {
        pool: String,
        backend: String,
        address: String,
    },
    /// The leader stopped hearing from a member.
    NodeLost { node: NodeId },
    /// A lost member answers again.
    NodeBack { node: NodeId },
    /// A node became leader (`previous`: the leader before it, when known).
    LeaderChange {
        leader: NodeId,
        term: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<NodeId>,
    },
    /// A managed backend kept crashing and was given up on.
    BackendFailed {
        pool: String,
        backend: String,
        node: NodeId,
        reason: String,
    },
}

impl EventKind {
    /// A one-line summary, for e-mail subjects and logs.
    pub fn summary(&self) -> String {
        match self {
            EventKind::BackendDown {
                pool,
                backend,
                address,
                down_on,
            } => {
                let nodes: Vec<String> = down_on.iter().map(u64::to_string).collect();
                format!(
                    "backend {pool}/{backend} ({address}) is DOWN (seen down by node(s) {})",
                    nodes.join(", ")
                )
            }
            EventKind::BackendUp {
                pool,
                backend,
                address,
            } => format!("backend {pool}/{backend} ({address}) is UP"),
            EventKind::NodeLost { node } => {
                format!("node {node} is LOST (the leader cannot reach it)")
            }
            EventKind::NodeBack { node } => format!("node {node} is BACK"),
            EventKind::LeaderChange {
                leader,
                term,
                previous: Some(p),
            } => format!("node {leader} is the new leader (term {term}; was node {p})"),
            EventKind::LeaderChange { leader, term, .. } => {
                format!("node {leader} is the new leader (term {term})")
            }
            EventKind::BackendFailed {
                pool,
                backend,
                node,
                reason,
            } => format!("managed backend {pool}/{backend} on node {node} FAILED: {reason}"),
        }
    }
}

/// A recorded transition, with its cluster-wide id (increasing, never reused): alert sinks
/// are told each id once, and a receiver may deduplicate on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    /// When the leader proposed it (milliseconds since the Unix epoch).
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Where alerts go: a JSON webhook or e-mail over SMTP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSink {
    /// Unique sink name (letters, digits, `.`, `_`, `-`; at most 64).
    #[serde(default)]
    pub name: String,
    /// `http://host:port/path` that gets one JSON POST per event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Extra headers sent with each webhook POST (e.g. an authorization header).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// E-mail delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpSink>,
    /// Only these event types (`backend_down`, `node_lost`, ...); every type when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// The configuration revision that last changed this sink; set by the cluster.
    #[serde(default)]
    pub revision: u64,
}

/// E-mail over SMTP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSink {
    /// `host:port` of the SMTP server.
    pub server: String,
    pub from: String,
    pub to: Vec<String>,
    /// `none` (plain, e.g. a local relay), `starttls` or `tls`; `none` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// The event types a sink may filter on.
pub const EVENT_TYPES: [&str; 6] = [
    "backend_down",
    "backend_up",
    "node_lost",
    "node_back",
    "leader_change",
    "backend_failed",
];

impl EventKind {
    /// The `type` tag of this event.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::BackendDown { .. } => EVENT_TYPES[0],
            EventKind::BackendUp { .. } => EVENT_TYPES[1],
            EventKind::NodeLost { .. } => EVENT_TYPES[2],
            EventKind::NodeBack { .. } => EVENT_TYPES[3],
            EventKind::LeaderChange { .. } => EVENT_TYPES[4],
            EventKind::BackendFailed { .. } => EVENT_TYPES[5],
        }
    }
}

impl AlertSink {
    /// Whether this sink wants events of this type.
    pub fn wants(&self, kind: &EventKind) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind.type_name())
    }
}

fn email_ok(s: &str) -> bool {
    match s.split_once('@') {
        Some((user, domain)) => {
            !user.is_empty()
                && !domain.is_empty()
                && s.len() <= 254
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        }
        None => false,
    }
}

/// Checks an alert sink as `apply` will.
pub fn validate_alert_sink(s: &AlertSink) -> Result<(), Invalid> {
    crate::validate::validate_name("name", &s.name)?;
    if s.webhook.is_none() && s.smtp.is_none() {
        return Err(Invalid::new(
            "webhook",
            "the sink has neither a webhook nor smtp",
            "give a webhook URL (\"webhook\": \"http://host:port/path\") or an smtp block",
        ));
    }
    if let Some(url) = &s.webhook {
        if url.starts_with("https://") {
            return Err(Invalid::new(
                "webhook",
                "https webhooks are not supported yet",
                "use an http:// URL (e.g. a relay on the node's network), or e-mail over SMTP with TLS",
            ));
        }
        let rest = url.strip_prefix("http://");
        let authority = rest.map(|r| r.split('/').next().unwrap_or(""));
        if url.len() > 2048
            || authority.is_none_or(|a| a.is_empty() || a.chars().any(|c| c.is_whitespace()))
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Invalid::new(
                "webhook",
                format!("'{url}' is not an http URL"),
                "use http://host:port/path",
            ));
        }
    }
    for (name, value) in &s.headers {
        let ok_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !ok_name || value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
            return Err(Invalid::new(
                format!("headers.{name}"),
                "is not a valid header",
                "use a header name of letters, digits and '-' and a value on one line",
            ));
        }
    }
    if let Some(m) = &s.smtp {
        let port_ok = m
            .server
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(Invalid::new(
                "smtp.server",
                format!("'{}' is not host:port", m.server),
                "use the SMTP server's host:port, e.g. mail.example.com:587",
            ));
        }
        if !email_ok(&m.from) {
            return Err(Invalid::new(
                "smtp.from",
                format!("'{}' is not an e-mail address", m.from),
                "use an address such as gateway@example.com",
            ));
        }
        if m.to.is_empty() {
            return Err(Invalid::new(
                "smtp.to",
                "no recipients",
                "list at least one address to send alerts to",
            ));
        }
        for (i, to) in m.to.iter().enumerate() {
            if !email_ok(to) {
                return Err(Invalid::new(
                    format!("smtp.to[{i}]"),
                    format!("'{to}' is not an e-mail address"),
                    "use an address such as ops@example.com",
                ));
            }
        }
        if let Some(sec) = &m.security
            && !matches!(sec.as_str(), "none" | "starttls" | "tls")
        {
            return Err(Invalid::new(
                "smtp.security",
                format!("'{sec}' is not a security mode"),
                "use none, starttls or tls",
            ));
        }
        if m.username.is_some() != m.password.is_some() {
            return Err(Invalid::new(
                "smtp.username",
                "a username without a password (or the reverse)",
                "give both username and password, or neither",
            ));
        }
    }
    for (i, e) in s.events.iter().enumerate() {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(Invalid::new(
                format!("events[{i}]"),
                format!("'{e}' is not an event type"),
                format!("use some of {}", EVENT_TYPES.join(", ")),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse_and_match() {
        let r = StatusRanges::parse("200-299, 404").unwrap();
        assert!(r.contains(200) && r.contains(299) && r.contains(404));
        assert!(!r.contains(300) && !r.contains(500));
        assert!(StatusRanges::parse("399-200").is_err());
        assert!(StatusRanges::parse("20x").is_err());
        assert!(StatusRanges::parse("700").is_err());
    }

    #[test]
    fn checks_are_validated_with_their_field() {
        let mut c = HealthCheck::default();
        validate_health_check(&c).unwrap();
        c.timeout_ms = 5000;
        assert_eq!(
            validate_health_check(&c).unwrap_err().field,
            "health_check.timeout_ms"
        );
        let c = HealthCheck {
            path: "healthz".into(),
            ..Default::default()
        };
        assert_eq!(
            validate_health_check(&c).unwrap_err().field,
            "health_check.path"
        );
        let c: HealthCheck = serde_json::from_str(r#"{"type":"tcp","path":"x"}"#).unwrap();
        validate_health_check(&c).unwrap(); // a tcp check has no path to check
    }

    #[test]
    fn sinks_need_a_destination_and_valid_addresses() {
        let mut s = AlertSink {
            name: "ops".into(),
            ..Default::default()
        };
        assert_eq!(validate_alert_sink(&s).unwrap_err().field, "webhook");
        s.webhook = Some("ftp://x".into());
        assert_eq!(validate_alert_sink(&s).unwrap_err().field, "webhook");
        s.webhook = Some("http://127.0.0.1:9000/hook".into());
        validate_alert_sink(&s).unwrap();
        s.smtp = Some(SmtpSink {
            server: "127.0.0.1:2525".into(),
            from: "gw@example.com".into(),
            to: vec!["not an address".into()],
            ..Default::default()
        });
        assert_eq!(validate_alert_sink(&s).unwrap_err().field, "smtp.to[0]");
        s.events = vec!["backend_sideways".into()];
        s.smtp.as_mut().unwrap().to = vec!["ops@example.com".into()];
        assert_eq!(validate_alert_sink(&s).unwrap_err().field, "events[0]");
    }
}
