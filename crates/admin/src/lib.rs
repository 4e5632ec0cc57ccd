//! The admin plane: the REST API on the admin port (configuration, membership, status,
//! `/leader`, health and readiness).
//!
//! Input is validated here, at the boundary, before anything is proposed; the state machine
//! checks again when it applies. The HTTP status of every error is decided in [`error`].
//! Depends on the model and the cluster handle; it must not depend on the proxy or on sled.

mod auth;
mod error;
mod rest;

pub use auth::{Denied, Role, Tokens};
pub use rest::{AdminOptions, serve};
