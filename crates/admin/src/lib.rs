//! The admin plane: the REST API on the admin port (configuration, membership, status,
//! `/leader`, health and readiness), and the same API over gRPC on the cluster port (with a
//! stream of configuration changes and server reflection), `/metrics` (Prometheus text format:
//! the cluster's figures plus collectors the node hands in), and the web dashboard at `/ui`
//! (assets compiled in, module `ui`) with its server-sent events at `/v1/stream`.
//!
//! Input is validated here, at the boundary, before anything is proposed; the state machine
//! checks again when it applies. The HTTP status of every error is decided in [`error`], its
//! gRPC code in `grpc` ([`Failure`]).
//! Depends on the model and the cluster handle; it must not depend on the proxy or on sled.

mod auth;
mod certs;
mod error;
mod grpc;
mod https;
pub mod metrics;
mod rest;
mod ui;

pub use auth::{Denied, Role, Tokens};
pub use grpc::{
    AdminService, FIELD_METADATA, Failure, MAX_REQUEST, REASON_METADATA, RETRY_AFTER_METADATA,
    REVISION_METADATA, grpc_routes,
};
pub use rest::{AdminOptions, StatusFn, serve};

pub(crate) use gateway_cluster::unix_ms as now_ms;
