//! The one place where errors become HTTP statuses and JSON bodies.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gateway_cluster::ClusterError;
use gateway_model::{ApplyError, Invalid};
use serde_json::json;

pub(crate) const REVISION: &str = "x-gateway-revision";

/// An error answer: status, message (what was wrong and how to fix it), and the field at fault.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
    pub revision: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
            revision: None,
        }
    }

    pub(crate) fn bad(field: &str, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.to_string()),
            ..ApiError::new(StatusCode::BAD_REQUEST, message)
        }
    }

    pub(crate) fn at(mut self, revision: u64) -> Self {
        self.revision = Some(revision);
        self
    }
}

impl From<Invalid> for ApiError {
    fn from(v: Invalid) -> Self {
        ApiError::bad(&v.field, v.to_string())
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Invalid(v) => v.into(),
            e @ ApplyError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            e @ ApplyError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            e @ ApplyError::Stale { .. } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, e.to_string())
            }
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let status = match &e {
            ClusterError::NotLeader { .. }
            | ClusterError::NoLeader(_)
            | ClusterError::Unreachable(_)
            | ClusterError::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
            ClusterError::Refused(_) => StatusCode::CONFLICT,
            ClusterError::NotFound(_) => StatusCode::NOT_FOUND,
            ClusterError::Unauthenticated(_) => StatusCode::FORBIDDEN,
            ClusterError::Store(_) | ClusterError::Protocol(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut msg = e.to_string();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            msg.push_str("; retry shortly");
        }
        ApiError::new(status, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(f) = &self.field {
            body["field"] = json!(f);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(r) = self.revision {
            resp.headers_mut().insert(REVISION, HeaderValue::from(r));
        }
        resp
    }
}
