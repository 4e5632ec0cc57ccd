//! The access log: one line per answered request, off unless [`crate::ProxyConfig::access_log`]
//! asks for it. Lines are emitted as `tracing` events with target `access` at level INFO whose
//! message is the whole line, so `RUST_LOG=access=off` silences them and the node decides where
//! they go (stdout).

use http::{Method, StatusCode, Uri, Version};
use std::net::IpAddr;
use std::time::Duration;

/// How access log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLog {
    /// One JSON object per line.
    Json,
    /// The common log format, followed by `route=`, `backend=`, `duration_ms=` and
    /// `forwarded=` fields.
    Common,
}

/// The `tracing` target of access log events.
pub const ACCESS_TARGET: &str = "access";

/// What the line says about one request.
pub(crate) struct Entry<'a> {
    pub(crate) client: IpAddr,
    pub(crate) method: &'a Method,
    pub(crate) host: &'a str,
    pub(crate) uri: &'a Uri,
    pub(crate) version: Version,
    pub(crate) route: Option<&'a str>,
    pub(crate) backend: Option<&'a str>,
    pub(crate) status: StatusCode,
    /// The response body's length when the head says it (`Content-Length`), else unknown.
    pub(crate) bytes: Option<u64>,
    /// From the request head to the response head.
    pub(crate) duration: Duration,
    /// Carried to the leader node.
    pub(crate) forwarded: bool,
}

impl AccessLog {
    pub(crate) fn emit(self, e: &Entry<'_>) {
        let line = self.format(e, chrono::Utc::now());
        tracing::info!(target: ACCESS_TARGET, "{line}");
    }

    fn format(self, e: &Entry<'_>, now: chrono::DateTime<chrono::Utc>) -> String {
        let path = e.uri.path_and_query().map_or("/", |p| p.as_str());
        let ms = e.duration.as_secs_f64() * 1000.0;
        match self {
            AccessLog::Json => serde_json::json!({
                "ts": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "client": e.client.to_string(),
                "method": e.method.as_str(),
                "host": e.host,
                "path": path,
                "protocol": format!("{:?}", e.version),
                "route": e.route,
                "backend": e.backend,
                "status": e.status.as_u16(),
                "bytes": e.bytes,
                "duration_ms": (ms * 1000.0).round() / 1000.0,
                "forwarded": e.forwarded,
            })
            .to_string(),
            AccessLog::Common => format!(
                "{} - - [{}] \"{} {} {:?}\" {} {} route={} backend={} duration_ms={:.3} forwarded={}",
                e.client,
                now.format("%d/%b/%Y:%H:%M:%S %z"),
                e.method,
                path.replace('"', "%22"),
                e.version,
                e.status.as_u16(),
                e.bytes.map_or_else(|| "-".to_string(), |b| b.to_string()),
                e.route.unwrap_or("-"),
                e.backend.unwrap_or("-"),
                ms,
                e.forwarded,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn entry<'a>(m: &'a Method, uri: &'a Uri) -> Entry<'a> {
        Entry {
            client: "10.0.0.7".parse().unwrap(),
            method: m,
            host: "app.test",
            uri,
            version: Version::HTTP_11,
            route: Some("app"),
            backend: Some("a"),
            status: StatusCode::OK,
            bytes: Some(12),
            duration: Duration::from_micros(1500),
            forwarded: false,
        }
    }

    #[test]
    fn both_formats() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 11, 30, 3, 4, 5).unwrap();
        let (m, uri) = (Method::GET, Uri::from_static("/x?q=1"));
        let e = entry(&m, &uri);
        assert_eq!(
            AccessLog::Common.format(&e, now),
            "10.0.0.7 - - [30/Nov/2026:03:04:05 +0000] \"GET /x?q=1 HTTP/1.1\" 200 12 route=app backend=a duration_ms=1.500 forwarded=false"
        );
        let v: serde_json::Value = serde_json::from_str(&AccessLog::Json.format(&e, now)).unwrap();
        assert_eq!(v["route"], "app");
        assert_eq!(v["backend"], "a");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 12);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["forwarded"], false);
        assert_eq!(v["path"], "/x?q=1");
        assert_eq!(v["ts"], "2026-11-30T03:04:05.000Z");
    }
}
