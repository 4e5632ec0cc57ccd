//! Errors a client sees, and the one place that turns them into HTTP responses.

use crate::body::ProxyBody;
use crate::table::CompiledRoute;
use http::header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use std::time::Duration;

/// Why the gateway answered a request itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("bad request: {why}")]
    BadRequest { why: &'static str },
    #[error("no route for {host} {path}")]
    NoRoute { host: String, path: String },
    #[error("route {route}: rejected gateway-hop marker: {why}")]
    BadHop {
        route: String,
        why: crate::hop::HopError,
    },
    #[error("route {route}: no leader known to serve {method} requests; retry shortly")]
    NoLeader { route: String, method: String },
    #[error("route {route}: pool {pool} has no backends")]
    NoBackends { route: String, pool: String },
    #[error(
        "route {route}: every backend of pool {pool} is at its max_connections; waited {waited:?}"
    )]
    Saturated {
        route: String,
        pool: String,
        waited: Duration,
    },
    #[error("route {route}: backend {backend} ({address}) failed: {cause}")]
    Backend {
        route: String,
        backend: String,
        address: String,
        cause: String,
    },
    #[error("route {route}: backend {backend} ({address}) timed out after {after:?}")]
    BackendTimeout {
        route: String,
        backend: String,
        address: String,
        after: Duration,
    },
    #[error("route {route}: leader node {leader} ({address}) failed: {cause}")]
    Leader {
        route: String,
        leader: u64,
        address: String,
        cause: String,
    },
    #[error("route {route}: leader node {leader} ({address}) timed out after {after:?}")]
    LeaderTimeout {
        route: String,
        leader: u64,
        address: String,
        after: Duration,
    },
    #[error("route {route}: too many requests from {client}; retry after {retry_after:?}")]
    RateLimited {
        route: String,
        client: std::net::IpAddr,
        retry_after: Duration,
    },
    #[error("route {route}: {limit} requests are already in progress (its max_concurrent)")]
    RouteBusy { route: String, limit: usize },
    #[error("route {route}: the request body is larger than {limit} bytes (its max_body_bytes)")]
    TooLarge { route: String, limit: u64 },
    #[error("this node is already serving {limit} requests (the cluster's limits.max_requests)")]
    NodeBusy { limit: usize },
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::BadHop { .. } => StatusCode::FORBIDDEN,
            ProxyError::NoLeader { .. }
            | ProxyError::NoBackends { .. }
            | ProxyError::Saturated { .. }
            | ProxyError::RouteBusy { .. }
            | ProxyError::NodeBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Backend { .. } | ProxyError::Leader { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BackendTimeout { .. } | ProxyError::LeaderTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// The response: the status, and the message as a one-line text body, or the route's
    /// custom error page for this status; the route's response header rules apply.
    pub(crate) fn into_response(self, route: Option<&CompiledRoute>) -> Response<ProxyBody> {
        let status = self.status();
        match status {
            // Answers to clients over their limits are their own doing, and could flood the log.
            StatusCode::NOT_FOUND | StatusCode::TOO_MANY_REQUESTS => {
                tracing::debug!(status = status.as_u16(), "{self}")
            }
            _ => tracing::warn!(status = status.as_u16(), "{self}"),
        }
        let page = route.and_then(|r| r.error_pages.get(status));
        let mut resp = match page {
            Some(page) => {
                let mut resp = Response::new(ProxyBody::full(page.body.clone()));
                *resp.status_mut() = page.status.unwrap_or(status);
                resp.headers_mut()
                    .insert(CONTENT_TYPE, page.content_type.clone());
                resp
            }
            None => {
                let mut resp = Response::new(ProxyBody::full(format!("{self}\n")));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                resp
            }
        };
        match &self {
            ProxyError::NoLeader { .. }
            | ProxyError::Saturated { .. }
            | ProxyError::RouteBusy { .. }
            | ProxyError::NodeBusy { .. } => {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::RateLimited { retry_after, .. } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            ProxyError::BadRequest { .. } | ProxyError::TooLarge { .. } => {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        if let Some(route) = route {
            route.response_ops.apply(resp.headers_mut());
        }
        resp
    }
}
