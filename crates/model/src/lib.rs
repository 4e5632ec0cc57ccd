//! Domain types of the gateway: pools, backends, routes, cluster nodes, the replicated
//! [`Command`]s that change them, their validation, and the pure [`State::apply`].
//!
//! This crate does no I/O and knows nothing of tokio, Raft, sled or HTTP: every other crate
//! depends on it, it depends on none of ours. `State::apply` is deterministic — no clock,
//! randomness or I/O — so that every node that applies the same log reaches the same state.

mod backend_tls;
mod cert;
mod command;
mod config;
mod error;
mod health;
mod limits;
mod process;
mod state;
mod tcp;
mod validate;

pub use backend_tls::{BackendTls, parse_ca, validate_backend_tls};
pub use cert::{Cert, CertInfo, MAX_PEM, check_cert_time, inspect_cert, validate_cert};
pub use command::{Applied, Command, MAX_BATCH, Proposal, Request, Response};
pub use config::{
    Backend, Balance, ErrorPage, HeaderMatch, HeaderRules, NodeAddr, NodeId, Pool, Protocol,
    RateLimit, Route, WritePolicy,
};
pub use config::{DEFAULT_CACHE_ENTRY_BYTES, RouteCache};
pub use error::{ApplyError, Invalid};
pub use health::{
    AlertSink, BackendHealth, CheckKind, EVENT_TYPES, Ejection, Event, EventKind, HealthCheck,
    HealthPolicy, SeenDown, SmtpSink, StatusRanges, health_state, validate_alert_sink,
};
pub use limits::{Limits, MAX_NODE_LIMIT, validate_limits};
pub use process::{ProcessSpec, RollingRestart, is_managed, managed_id, managed_index};
pub use state::{Change, ChangeSet, Compacted, DEDUP_WINDOW, HISTORY, State};
pub use tcp::{
    DEFAULT_TCP_CONNECT_TIMEOUT_MS, DEFAULT_TCP_IDLE_TIMEOUT_MS, ProxyProtocol, TcpListenerStatus,
    TcpRoute, validate_tcp_route,
};
pub use validate::{is_tchar, validate_name, validate_pool, validate_route};
