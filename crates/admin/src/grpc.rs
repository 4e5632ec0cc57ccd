//! The admin API over gRPC (`proto/admin.proto`), served on the cluster port beside Raft, with
//! server reflection. It mirrors the REST API and adds a stream of configuration changes.
//!
//! Wire input becomes model types only through `gateway_wire::convert::checked_*`, which
//! validate it; the gRPC code of every failure is decided in one place, [`Failure`]'s
//! conversion into a [`Status`].

use crate::auth::{Denied, Role, Tokens};
use gateway_cluster::{Cluster, ClusterError, Consistency, Member, Status as ClusterStatus};
use gateway_model::{ApplyError, Command, Compacted, Invalid, validate_name};
use gateway_wire::admin::admin_server::{Admin, AdminServer};
use gateway_wire::admin::{self, watch_response::Event};
use gateway_wire::convert;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

/// Metadata naming the revision a reply reflects.
pub const REVISION_METADATA: &str = "x-gateway-revision";
/// Metadata naming the field at fault on INVALID_ARGUMENT.
pub const FIELD_METADATA: &str = "x-gateway-field";
/// Metadata on UNAVAILABLE: seconds to wait before retrying.
pub const RETRY_AFTER_METADATA: &str = "retry-after";
/// Metadata saying why a write was refused as FAILED_PRECONDITION or ALREADY_EXISTS: `stale`
/// (its `if_revision` did not hold) or `conflict` (it conflicts with other configuration).
pub const REASON_METADATA: &str = "x-gateway-reason";
/// Largest request accepted (a transaction replacing a large configuration fits).
pub const MAX_REQUEST: usize = 16 * 1024 * 1024;

/// Why a call failed. Turned into a gRPC status in one place (`From<Failure> for Status`).
#[derive(Debug)]
pub enum Failure {
    /// Bad input: INVALID_ARGUMENT, naming the field.
    Invalid(Invalid),
    /// The state machine refused a write.
    Apply(ApplyError),
    /// The cluster could not serve the call.
    Cluster(ClusterError),
    /// The token does not allow the call.
    Denied(Denied),
    /// The object named does not exist (on a read).
    Missing { what: &'static str, name: String },
    /// A watch asked for revisions the history no longer keeps.
    Compacted(Compacted),
    /// The node has not finished starting (the cluster handle is not there yet).
    Starting,
}

impl From<Invalid> for Failure {
    fn from(v: Invalid) -> Self {
        Failure::Invalid(v)
    }
}

impl From<ApplyError> for Failure {
    fn from(e: ApplyError) -> Self {
        Failure::Apply(e)
    }
}

impl From<ClusterError> for Failure {
    fn from(e: ClusterError) -> Self {
        Failure::Cluster(e)
    }
}

impl From<Denied> for Failure {
    fn from(e: Denied) -> Self {
        Failure::Denied(e)
    }
}

fn unavailable(msg: String) -> Status {
    let mut s = Status::unavailable(format!("{msg}; retry shortly"));
    s.metadata_mut()
        .insert(RETRY_AFTER_METADATA, MetadataValue::from_static("1"));
    s
}

fn missing_message(what: &str, name: &str) -> String {
    format!("{what} '{name}' does not exist; list them with `gateway {what} list`")
}

impl From<Failure> for Status {
    fn from(f: Failure) -> Status {
        match f {
            Failure::Invalid(v) => {
                let mut s = Status::invalid_argument(v.to_string());
                if let Ok(field) = v.field.parse() {
                    s.metadata_mut().insert(FIELD_METADATA, field);
                }
                s
            }
            Failure::Apply(ApplyError::Invalid(v)) => Failure::Invalid(v).into(),
            Failure::Apply(ApplyError::NotFound { what, name }) => {
                Status::not_found(missing_message(&what, &name))
            }
            Failure::Apply(e @ ApplyError::Stale { .. }) => {
                let mut s = match e {
                    ApplyError::Stale { expected: 0, .. } => Status::already_exists(e.to_string()),
                    _ => Status::failed_precondition(e.to_string()),
                };
                s.metadata_mut()
                    .insert(REASON_METADATA, MetadataValue::from_static("stale"));
                s
            }
            Failure::Apply(e @ ApplyError::Conflict { .. }) => {
                let mut s = Status::failed_precondition(e.to_string());
                s.metadata_mut()
                    .insert(REASON_METADATA, MetadataValue::from_static("conflict"));
                s
            }
            Failure::Cluster(e) => {
                let msg = e.to_string();
                match e {
                    ClusterError::NotLeader { .. }
                    | ClusterError::NoLeader(_)
                    | ClusterError::Unreachable(_)
                    | ClusterError::Stopped(_) => unavailable(msg),
                    ClusterError::Refused(_) => Status::failed_precondition(msg),
                    ClusterError::NotFound(_) => Status::not_found(msg),
                    ClusterError::Unauthenticated(_)
                    | ClusterError::Store(_)
                    | ClusterError::Protocol(_) => Status::internal(msg),
                }
            }
            Failure::Denied(e @ Denied::Unauthenticated) => Status::unauthenticated(e.to_string()),
            Failure::Denied(e @ Denied::Forbidden) => Status::permission_denied(e.to_string()),
            Failure::Missing { what, name } => Status::not_found(missing_message(what, &name)),
            Failure::Compacted(c) => Status::out_of_range(c.to_string()),
            Failure::Starting => unavailable("node is starting".into()),
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// The admin gRPC service of one node.
#[derive(Clone)]
pub struct AdminService {
    cluster: Arc<OnceLock<Cluster>>,
    tokens: Tokens,
}

/// The admin service and server reflection, ready to pass to `Cluster::start`. Until
/// `cluster` is set every call but Health answers UNAVAILABLE "node is starting".
pub fn grpc_routes(cluster: Arc<OnceLock<Cluster>>, tokens: Tokens) -> tonic::service::Routes {
    let admin = AdminServer::new(AdminService { cluster, tokens })
        .max_decoding_message_size(MAX_REQUEST)
        .max_encoding_message_size(64 * 1024 * 1024);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(admin::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the admin descriptor set is generated at build time and valid");
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(admin::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the admin descriptor set is generated at build time and valid");
    tonic::service::Routes::new(admin)
        .add_service(reflection)
        .add_service(reflection_alpha)
}

fn with_revision<T>(msg: T, revision: u64) -> Response<T> {
    let mut r = Response::new(msg);
    r.metadata_mut()
        .insert(REVISION_METADATA, MetadataValue::from(revision));
    r
}

fn consistency(v: i32) -> Result<Consistency> {
    Ok(match convert::consistency_from_wire(v)? {
        admin::Consistency::Leader => Consistency::Leader,
        admin::Consistency::Stale => Consistency::Stale,
        admin::Consistency::Linearizable | admin::Consistency::Unspecified => {
            Consistency::Linearizable
        }
    })
}

fn member(m: &Member) -> admin::Member {
    admin::Member {
        id: m.id,
        cluster_addr: m.cluster_addr.clone(),
        admin_addr: m.admin_addr.clone(),
        http_addr: m.http_addr.clone(),
        matched_index: m.matched_index,
        lag: m.lag,
    }
}

fn status_reply(s: &ClusterStatus) -> admin::StatusReply {
    admin::StatusReply {
        id: s.id,
        cluster_id: s.cluster_id.clone(),
        role: s.role.to_string(),
        term: s.term,
        leader: s.leader,
        last_log_index: s.last_log_index,
        committed_index: s.committed_index,
        applied_index: s.applied_index,
        revision: s.revision,
        snapshot_index: s.snapshot_index,
        purged_index: s.purged_index,
        voters: s.voters.iter().map(member).collect(),
        learners: s.learners.iter().map(member).collect(),
    }
}

impl AdminService {
    /// The cluster handle, once the node has started.
    fn cluster(&self) -> Result<&Cluster> {
        self.cluster.get().ok_or(Failure::Starting)
    }

    /// Lets the call through if its `authorization` metadata allows `need`; returns the
    /// cluster handle.
    fn allow<T>(&self, req: &Request<T>, need: Role) -> Result<&Cluster> {
        let given = req.metadata().get("authorization").map(|v| v.as_bytes());
        self.tokens.check(given, need)?;
        self.cluster()
    }

    /// Deletes the named object: `command` is the delete command for the checked name and the
    /// revision the client expects.
    async fn delete(
        &self,
        req: Request<admin::DeleteRequest>,
        command: fn(String, Option<u64>) -> Command,
    ) -> std::result::Result<Response<admin::DeleteReply>, Status> {
        let cluster = self.allow(&req, Role::Write)?;
        let request_id = request_id(&req)?;
        let req = req.into_inner();
        validate_name("name", &req.name).map_err(Failure::from)?;
        let rev = self
            .propose(cluster, request_id, command(req.name, req.if_revision))
            .await?;
        Ok(with_revision(admin::DeleteReply { revision: rev }, rev))
    }

    /// Reads one named object at the asked consistency: `reply` finds it in the state and
    /// builds the answer; not found is `Missing { what }`.
    async fn get_one<T>(
        &self,
        req: Request<admin::GetRequest>,
        what: &'static str,
        reply: impl FnOnce(&gateway_model::State, &str) -> Option<T>,
    ) -> std::result::Result<Response<T>, Status> {
        let cluster = self.allow(&req, Role::Read)?;
        let req = req.into_inner();
        validate_name("name", &req.name).map_err(Failure::from)?;
        let st = cluster
            .read(consistency(req.consistency)?)
            .await
            .map_err(Failure::from)?;
        match reply(&st, &req.name) {
            Some(r) => Ok(with_revision(r, st.revision)),
            None => Err(Failure::Missing {
                what,
                name: req.name,
            }
            .into()),
        }
    }

    /// Proposes a command under the client's request id, if it sent one (`x-request-id`), so a
    /// retry of the same call applies once; the new revision, or why it was refused.
    async fn propose(
        &self,
        cluster: &Cluster,
        request_id: Option<String>,
        command: Command,
    ) -> Result<u64> {
        let resp = cluster
            .write_with_id(request_id.as_deref(), command)
            .await?;
        resp.outcome.map_err(Failure::Apply)?;
        Ok(resp.revision)
    }
}

/// The request id a client chose for this call (`x-request-id` metadata), checked.
fn request_id<T>(req: &Request<T>) -> Result<Option<String>> {
    let Some(v) = req.metadata().get("x-request-id") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(id) if crate::auth::valid_request_id(id) => Ok(Some(id.to_string())),
        _ => Err(Failure::Invalid(Invalid::new(
            "x-request-id",
            "is not a request id",
            "send 1 to 128 letters, digits, '.', '_', ':' or '-', the same on every retry",
        ))),
    }
}

type WatchStream =
    Pin<Box<dyn Stream<Item = std::result::Result<admin::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn leader(
        &self,
        _req: Request<admin::LeaderRequest>,
    ) -> std::result::Result<Response<admin::LeaderReply>, Status> {
        let cluster = self.cluster()?;
        match cluster.leader() {
            Some(l) => Ok(Response::new(admin::LeaderReply {
                id: l.id,
                term: l.term,
                cluster_addr: l.cluster_addr,
                admin_addr: l.admin_addr,
                http_addr: l.http_addr,
            })),
            None => {
                let st = cluster.status().await;
                Err(unavailable(format!(
                    "no leader known: node {} is {} in term {}",
                    st.id, st.role, st.term
                )))
            }
        }
    }

    async fn health(
        &self,
        _req: Request<admin::HealthRequest>,
    ) -> std::result::Result<Response<admin::HealthReply>, Status> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(Response::new(admin::HealthReply {
                node_id: 0,
                ready: false,
                reason: "node is starting".into(),
            }));
        };
        let ready = cluster.ready().await;
        Ok(Response::new(admin::HealthReply {
            node_id: cluster.id(),
            ready: ready.is_ok(),
            reason: ready.err().unwrap_or_default(),
        }))
    }

    async fn status(
        &self,
        req: Request<admin::StatusRequest>,
    ) -> std::result::Result<Response<admin::StatusReply>, Status> {
        let cluster = self.allow(&req, Role::Read)?;
        let st = cluster.status().await;
        Ok(with_revision(status_reply(&st), st.revision))
    }

    async fn get_config(
        &self,
        req: Request<admin::ReadRequest>,
    ) -> std::result::Result<Response<admin::Config>, Status> {
        let cluster = self.allow(&req, Role::Read)?;
        let st = cluster
            .read(consistency(req.get_ref().consistency)?)
            .await
            .map_err(Failure::from)?;
        let reply = admin::Config {
            revision: st.revision,
            pools: st
                .pools
                .values()
                .map(|p| convert::pool_to_wire(p))
                .collect(),
            routes: st.routes.values().map(convert::route_to_wire).collect(),
            tcp_routes: st
                .tcp_routes
                .values()
                .map(convert::tcp_route_to_wire)
                .collect(),
            certs: st.certs.values().map(convert::cert_to_wire).collect(),
            limits: Some(convert::limits_to_wire(&st.limits)),
        };
        Ok(with_revision(reply, st.revision))
    }

    async fn list_pools(
        &self,
        req: Request<admin::ReadRequest>,
    ) -> std::result::Result<Response<admin::PoolList>, Status> {
        let cluster = self.allow(&req, Role::Read)?;
        let st = cluster
            .read(consistency(req.get_ref().consistency)?)
            .await
            .map_err(Failure::from)?;
        let reply = admin::PoolList {
            revision: st.revision,
            pools: st
                .pools
                .values()
                .map(|p| convert::pool_to_wire(p))
                .collect(),
        };
        Ok(with_revision(reply, st.revision))
    }

    async fn get_pool(
        &self,
        req: Request<admin::GetRequest>,
    ) -> std::result::Result<Response<admin::PoolReply>, Status> {
        self.get_one(req, "pool", |st, name| {
            st.pools.get(name).map(|x| admin::PoolReply {
                revision: st.revision,
                pool: Some(convert::pool_to_wire(x)),
            })
        })
        .await
    }

    async fn put_pool(
        &self,
        req: Request<admin::PutPoolRequest>,
    ) -> std::result::Result<Response<admin::PoolReply>, Status> {
        let cluster = self.allow(&req, Role::Write)?;
        let request_id = request_id(&req)?;
        let req = req.into_inner();
        let wire = req
            .pool
            .ok_or_else(|| Invalid::new("pool", "is missing", "send the pool to put"))
            .map_err(Failure::from)?;
        let pool = convert::checked_pool(wire).map_err(Failure::from)?;
        let mut shown = pool.clone();
        let rev = self
            .propose(
                cluster,
                request_id,
                Command::PutPool {
                    pool,
                    expect: req.if_revision,
                },
            )
            .await?;
        shown.revision = rev;
        Ok(with_revision(
            admin::PoolReply {
                revision: rev,
                pool: Some(convert::pool_to_wire(&shown)),
            },
            rev,
        ))
    }

    async fn delete_pool(
        &self,
        req: Request<admin::DeleteRequest>,
    ) -> std::result::Result<Response<admin::DeleteReply>, Status> {
        self.delete(req, |name, expect| Command::DeletePool { name, expect })
            .await
    }

    async fn list_health(
        &self,
        req: Request<admin::ReadRequest>,
    ) -> std::result::Result<Response<admin::HealthList>, Status> {
        let cluster = self.allow(&req, Role::Read)?;
        let st = cluster
            .read(consistency(req.get_ref().consistency)?)
            .await
            .map_err(Failure::from)?;
        Ok(with_revision(convert::health_list(&st), st.revision))
    }

    async fn list_alert_sinks(
        &self,
        req: Request<admin::ReadRequest>,
    ) -> std::result::Result<Response<admin::AlertSinkList>, Status> {
        let cluster = self.allow(&req, Role::Read)?;
        let st = cluster
            .read(consistency(req.get_ref().consistency)?)
            .await
            .map_err(Failure::from)?;
        let reply = admin::AlertSinkList {
            revision: st.revision,
            sinks: st
                .alerts
                .values()
                .map(convert::alert_sink_to_wire)
                .collect(),
        };
        Ok(with_revision(reply, st.revision))
    }

    async fn put_alert_sink(
        &self,
        req: Request<admin::PutAlertSinkRequest>,
    ) -> std::result::Result<Response<admin::AlertSinkReply>, Status> {
        let cluster = self.allow(&req, Role::Write)?;
        let request_id = request_id(&req)?;
        let req = req.into_inner();
        let wire = req
            .sink
            .ok_or_else(|| Invalid::new("sink", "is missing", "send the alert sink to put"))
            .map_err(Failure::from)?;
        let sink = convert::checked_alert_sink(wire).map_err(Failure::from)?;
        let mut shown = sink.clone();
        let rev = self
            .propose(
                cluster,
                request_id,
                Command::PutAlertSink {
                    sink,
                    expect: req.if_revision,
                },
            )
            .await?;
        shown.revision = rev;
        Ok(with_revision(
            admin::AlertSinkReply {
                revision: rev,
                sink: Some(convert::alert_sink_to_wire(&shown)),
            },
            rev,
        ))
    }

    async fn delete_alert_sink(
        &self,
        req: Request<admin::DeleteRequest>,
    ) -> std::result::Result<Response<admin::DeleteReply>, Status> {
        self.delete(req, |name, expect| Command::DeleteAlertSink {
            name,
            expect,
        })
        .await
    }

    async fn restart_pool(
        &self,
        req: Request<admin::GetRequest>,
    ) -> std::result::Result<Response<admin::RestartReply>, Status> {
        let cluster = self.allow(&req, Role::Write)?;
        let request_id = request_id(&req)?;
        let req = req.into_inner();
        validate_name("name", &req.name).map_err(Failure::from)?;
        let at_ms = crate::now_ms();
        let rev = self
            .propose(
                cluster,
                request_id,
                Command::RestartPool {
                    pool: req.name.clone(),
                    at_ms,
                },
            )
            .await?;
        let st = cluster
            .read(Consistency::Linearizable)
            .await
            .map_err(Failure::from)?;
        let reply = convert::restart_to_wire(&req.name, st.restarts.get(&req.name));
        Ok(with_revision(reply, rev))
    }

    async fn get_restart(
        &self,
        req: Request<admin::GetRequest>,
    ) -> std::result::Result<Response<admin::RestartReply>, Status> {
        let cluster = self.allow(&req, Role::Read)?;
        let req = req.into_inner();
        validate_name("name", &req.name).map_err(Failure::from)?;
        let st = cluster
            .read(consistency(req.consistency)?)
            .await
            .map_err(Failure::from)?;
        if !st.pools.contains_key(&req.name) {
            return Err(Failure::Missing {
                what: "pool",
                name: req.name,
            }
            .into());
        }
        let reply = convert::restart_to_wire(&req.name, st.restarts.get(&req.name));
        Ok(with_revision(reply, st.revision))
    }

    async fn get_limits(
        &self,
        req: Request<admin::ReadRequest>,
    ) -> std::result::Result<Response<admin::LimitsReply>, Status> {
        let cluster = self.allow(&req, Role::Read)?;
        let st = cluster
            .read(consistency(req.get_ref().consistency)?)
            .await
            .map_err(Failure::from)?;
        Ok(with_revision(
            admin::LimitsReply {
                revision: st.revision,
                limits: Some(convert::limits_to_wire(&st.limits)),
            },
            st.revision,
        ))
    }

    async fn set_limits(
        &self,
        req: Request<admin::SetLimitsRequest>,
    ) -> std::result::Result<Response<admin::LimitsReply>, Status> {
        let cluster = self.allow(&req, Role::Write)?;
        let request_id = request_id(&req)?;
        let req = req.into_inner();
        let limits =
            convert::checked_limits(req.limits.unwrap_or_default()).map_err(Failure::from)?;
        let mut shown = limits.clone();
        let rev = self
            .propose(
                cluster,
                request_id,
                Command::SetLimits {
                    limits,
                    expect: req.if_revision,
                },
            )
            .await?;
        shown.revision = rev;
        Ok(with_revision(
            admin::LimitsReply {
                revision: rev,
                limits: Some(convert::limits_to_wire(&shown)),
            },
            rev,
        ))
    }

    async fn list_routes(
        &self,
        req: Request<admin::ReadRequest>,
    ) -> std::result::Result<Response<admin::RouteList>, Status> {
        let cluster = self.allow(&req, Role::Read)?;
        let st = cluster
            .read(consistency(req.get_ref().consistency)?)
            .await
            .map_err(Failure::from)?;
        let reply = admin::RouteList {
            revision: st.revision,
            routes: st.routes.values().map(convert::route_to_wire).collect(),
        };
        Ok(with_revision(reply, st.revision))
    }

    async fn get_route(
        &self,
        req: Request<admin::GetRequest>,
    ) -> std::result::Result<Response<admin::RouteReply>, Status> {
        self.get_one(req, "route", |st, name| {
            st.routes.get(name).map(|x| admin::RouteReply {
                revision: st.revision,
                route: Some(convert::route_to_wire(x)),
            })
        })
        .await
    }

    async fn put_route(
        &self,
        req: Request<admin::PutRouteRequest>,
    ) -> std::result::Result<Response<admin::RouteReply>, Status> {
        let cluster = self.allow(&req, Role::Write)?;
        let request_id = request_id(&req)?;
        let req = req.into_inner();
        let wire = req
            .route
            .ok_or_else(|| Invalid::new("route", "is missing", "send the route to put"))
            .map_err(Failure::from)?;
        let route = convert::checked_route(wire).map_err(Failure::from)?;
        let mut shown = route.clone();
        let rev = self
            .propose(
                cluster,
                request_id,
                Command::PutRoute {
                    route,
                    expect: req.if_revision,
                },
            )
            .await?;
        shown.revision = rev;
        Ok(with_revision(
            admin::RouteReply {
                revision: rev,
                route: Some(convert::route_to_wire(&shown)),
            },
            rev,
        ))
    }

    async fn delete_route(
        &self,
        req: Request<admin::DeleteRequest>,
    ) -> std::result::Result<Response<admin::DeleteReply>, Status> {
        self.delete(req, |name, expect| Command::DeleteRoute { name, expect })
            .await
    }

    async fn list_certs(
        &self,
        req: Request<admin::ReadRequest>,
    ) -> std::result::Result<Response<admin::CertList>, Status> {
        let cluster = self.allow(&req, Role::Read)?;
        let st = cluster
            .read(consistency(req.get_ref().consistency)?)
            .await
            .map_err(Failure::from)?;
        let reply = admin::CertList {
            revision: st.revision,
            certs: st.certs.values().map(convert::cert_to_wire).collect(),
        };
        Ok(with_revision(reply, st.revision))
    }

    async fn get_cert(
        &self,
        req: Request<admin::GetRequest>,
    ) -> std::result::Result<Response<admin::CertReply>, Status> {
        self.get_one(req, "cert", |st, name| {
            st.certs.get(name).map(|x| admin::CertReply {
                revision: st.revision,
                cert: Some(convert::cert_to_wire(x)),
            })
        })
        .await
    }

    async fn put_cert(
        &self,
        req: Request<admin::PutCertRequest>,
    ) -> std::result::Result<Response<admin::CertReply>, Status> {
        let cluster = self.allow(&req, Role::Write)?;
        let request_id = request_id(&req)?;
        let req = req.into_inner();
        let wire = req
            .cert
            .ok_or_else(|| Invalid::new("cert", "is missing", "send the certificate to put"))
            .map_err(Failure::from)?;
        let cert = convert::cert_from_wire(wire);
        let mut shown = crate::certs::checked_cert(&cert).map_err(Failure::from)?;
        let rev = self
            .propose(
                cluster,
                request_id,
                Command::PutCert {
                    cert,
                    expect: req.if_revision,
                },
            )
            .await?;
        shown.revision = rev;
        Ok(with_revision(
            admin::CertReply {
                revision: rev,
                cert: Some(convert::cert_to_wire(&shown)),
            },
            rev,
        ))
    }

    async fn delete_cert(
        &self,
        req: Request<admin::DeleteRequest>,
    ) -> std::result::Result<Response<admin::DeleteReply>, Status> {
        self.delete(req, |name, expect| Command::DeleteCert { name, expect })
            .await
    }

    // ---- TCP routes (issue 7) ----
    async fn list_tcp_routes(
        &self,
        req: Request<admin::ReadRequest>,
    ) -> std::result::Result<Response<admin::TcpRouteList>, Status> {
        let cluster = self.allow(&req, Role::Read)?;
        let st = cluster
            .read(consistency(req.get_ref().consistency)?)
            .await
            .map_err(Failure::from)?;
        let reply = admin::TcpRouteList {
            revision: st.revision,
            tcp_routes: st
                .tcp_routes
                .values()
                .map(convert::tcp_route_to_wire)
                .collect(),
        };
        Ok(with_revision(reply, st.revision))
    }

    async fn get_tcp_route(
        &self,
        req: Request<admin::GetRequest>,
    ) -> std::result::Result<Response<admin::TcpRouteReply>, Status> {
        self.get_one(req, "tcp-route", |st, name| {
            st.tcp_routes.get(name).map(|x| admin::TcpRouteReply {
                revision: st.revision,
                tcp_route: Some(convert::tcp_route_to_wire(x)),
            })
        })
        .await
    }

    async fn put_tcp_route(
        &self,
        req: Request<admin::PutTcpRouteRequest>,
    ) -> std::result::Result<Response<admin::TcpRouteReply>, Status> {
        let cluster = self.allow(&req, Role::Write)?;
        let request_id = request_id(&req)?;
        let req = req.into_inner();
        let wire = req
            .tcp_route
            .ok_or_else(|| Invalid::new("tcp_route", "is missing", "send the TCP route to put"))
            .map_err(Failure::from)?;
        let route = convert::checked_tcp_route(wire).map_err(Failure::from)?;
        let mut shown = route.clone();
        let rev = self
            .propose(
                cluster,
                request_id,
                Command::PutTcpRoute {
                    route,
                    expect: req.if_revision,
                },
            )
            .await?;
        shown.revision = rev;
        Ok(with_revision(
            admin::TcpRouteReply {
                revision: rev,
                tcp_route: Some(convert::tcp_route_to_wire(&shown)),
            },
            rev,
        ))
    }

    async fn delete_tcp_route(
        &self,
        req: Request<admin::DeleteRequest>,
    ) -> std::result::Result<Response<admin::DeleteReply>, Status> {
        self.delete(req, |name, expect| Command::DeleteTcpRoute { name, expect })
            .await
    }
    // ---- end TCP routes ----

    async fn transaction(
        &self,
        req: Request<admin::TransactionRequest>,
    ) -> std::result::Result<Response<admin::TransactionReply>, Status> {
        let cluster = self.allow(&req, Role::Write)?;
        let request_id = request_id(&req)?;
        let commands =
            convert::checked_commands(req.into_inner().commands).map_err(Failure::from)?;
        let applied = commands.len() as u32;
        let rev = self
            .propose(cluster, request_id, Command::Batch { commands })
            .await?;
        Ok(with_revision(
            admin::TransactionReply {
                revision: rev,
                applied,
            },
            rev,
        ))
    }

    async fn list_nodes(
        &self,
        req: Request<admin::ListNodesRequest>,
    ) -> std::result::Result<Response<admin::NodeList>, Status> {
        let cluster = self.allow(&req, Role::Read)?;
        let st = cluster.status().await;
        Ok(with_revision(
            admin::NodeList {
                revision: st.revision,
                voters: st.voters.iter().map(member).collect(),
                learners: st.learners.iter().map(member).collect(),
            },
            st.revision,
        ))
    }

    async fn remove_node(
        &self,
        req: Request<admin::RemoveNodeRequest>,
    ) -> std::result::Result<Response<admin::RemoveNodeReply>, Status> {
        let cluster = self.allow(&req, Role::Write)?;
        let id = req.get_ref().id;
        if id == 0 {
            return Err(Failure::Invalid(Invalid::new(
                "id",
                "0 is not a node id",
                "use the numeric id shown by `gateway cluster members`",
            ))
            .into());
        }
        cluster.remove_node(id).await.map_err(Failure::from)?;
        let rev = cluster.state().borrow().revision;
        Ok(with_revision(admin::RemoveNodeReply { removed: id }, rev))
    }

    async fn transfer_leader(
        &self,
        req: Request<admin::TransferLeaderRequest>,
    ) -> std::result::Result<Response<admin::TransferLeaderReply>, Status> {
        let cluster = self.allow(&req, Role::Write)?;
        let to = Some(req.get_ref().to).filter(|t| *t != 0);
        let leader = cluster.transfer_leader(to).await.map_err(Failure::from)?;
        let rev = cluster.state().borrow().revision;
        Ok(with_revision(admin::TransferLeaderReply { leader }, rev))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<admin::WatchRequest>,
    ) -> std::result::Result<Response<WatchStream>, Status> {
        let cluster = self.allow(&req, Role::Read)?;
        let start = req.get_ref().start_revision;
        let after = if start == 0 {
            cluster
                .read(Consistency::Linearizable)
                .await
                .map_err(Failure::from)?
                .revision
        } else {
            start - 1
        };
        let mut state = cluster.state();
        let now = state.borrow_and_update().clone();
        if let Err(c) = now.changes_since(after) {
            return Err(Failure::Compacted(c).into());
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let synced = admin::WatchResponse {
                event: Some(Event::Synced(after)),
            };
            if tx.send(Ok(synced)).await.is_err() {
                return;
            }
            let mut last = after;
            let mut current = now;
            loop {
                match current.changes_since(last) {
                    Ok(sets) => {
                        for set in sets {
                            last = set.revision;
                            let ev = admin::WatchResponse {
                                event: Some(Event::ChangeSet(convert::change_set_to_wire(&set))),
                            };
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(c) => {
                        // This watcher fell more than the history behind: it must start over.
                        let _ = tx.send(Err(Failure::Compacted(c).into())).await;
                        return;
                    }
                }
                tokio::select! {
                    changed = state.changed() => {
                        if changed.is_err() {
                            let _ = tx
                                .send(Err(unavailable("this node is stopping; watch from another node".into())))
                                .await;
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                }
                current = state.borrow_and_update().clone();
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_wire::admin::admin_client::AdminClient;
    use tonic::Code;

    #[test]
    fn one_mapping_for_every_failure() {
        let stale = |expected| ApplyError::Stale {
            what: "pool".into(),
            name: "web".into(),
            expected,
            actual: Some(3),
        };
        let cases: Vec<(Failure, Code)> = vec![
            (
                Invalid::new("backends[0].address", "bad", "fix it").into(),
                Code::InvalidArgument,
            ),
            (
                ApplyError::NotFound {
                    what: "route".into(),
                    name: "r".into(),
                }
                .into(),
                Code::NotFound,
            ),
            (stale(0).into(), Code::AlreadyExists),
            (stale(2).into(), Code::FailedPrecondition),
            (
                ApplyError::Conflict {
                    message: "in use".into(),
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                ClusterError::NoLeader("election".into()).into(),
                Code::Unavailable,
            ),
            (
                ClusterError::NotLeader { leader: None }.into(),
                Code::Unavailable,
            ),
            (
                ClusterError::Refused("last voter".into()).into(),
                Code::FailedPrecondition,
            ),
            (Denied::Unauthenticated.into(), Code::Unauthenticated),
            (Denied::Forbidden.into(), Code::PermissionDenied),
            (Failure::Starting, Code::Unavailable),
            (
                Failure::Compacted(Compacted {
                    asked: 1,
                    oldest: 5,
                }),
                Code::OutOfRange,
            ),
        ];
        for (f, code) in cases {
            let desc = format!("{f:?}");
            assert_eq!(Status::from(f).code(), code, "{desc}");
        }
        let s = Status::from(Failure::Invalid(Invalid::new(
            "hosts[2]",
            "'X' has upper-case letters",
            "write host patterns in lower case",
        )));
        assert_eq!(s.metadata().get(FIELD_METADATA).unwrap(), "hosts[2]");
        assert!(s.message().starts_with("hosts[2]: "), "{}", s.message());
        let s = Status::from(Failure::Starting);
        assert_eq!(s.metadata().get(RETRY_AFTER_METADATA).unwrap(), "1");
        assert!(s.message().contains("retry"), "{}", s.message());
    }

    /// Serves the routes with no cluster handle yet (a starting node) and checks auth,
    /// the "starting" answer and reflection through real gRPC clients.
    #[tokio::test]
    async fn auth_starting_and_reflection_over_the_wire() {
        let tokens =
            Tokens::parse("read rrrrrrrrrrrrrrrrrrrrrrrr\nwrite wwwwwwwwwwwwwwwwwwwwwwww\n")
                .unwrap();
        let routes = grpc_routes(Arc::new(OnceLock::new()), tokens);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = AdminClient::new(channel.clone());
        let with = |token: Option<&str>| {
            let mut r = Request::new(admin::DeleteRequest {
                name: "web".into(),
                if_revision: None,
            });
            if let Some(t) = token {
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            r
        };
        let code =
            |r: std::result::Result<_, Status>| r.map(|_: Response<_>| ()).unwrap_err().code();
        assert_eq!(
            code(client.delete_pool(with(None)).await),
            Code::Unauthenticated
        );
        assert_eq!(
            code(
                client
                    .delete_pool(with(Some("not-a-known-token-at-all")))
                    .await
            ),
            Code::Unauthenticated
        );
        assert_eq!(
            code(
                client
                    .delete_pool(with(Some("rrrrrrrrrrrrrrrrrrrrrrrr")))
                    .await
            ),
            Code::PermissionDenied
        );
        let starting = client
            .delete_pool(with(Some("wwwwwwwwwwwwwwwwwwwwwwww")))
            .await
            .unwrap_err();
        assert_eq!(starting.code(), Code::Unavailable);
        assert!(starting.message().contains("node is starting"));
        // Leader and Health need no token.
        let leader = client.leader(admin::LeaderRequest {}).await.unwrap_err();
        assert_eq!(leader.code(), Code::Unavailable);
        let health = client.health(admin::HealthRequest {}).await.unwrap();
        assert!(!health.get_ref().ready);

        // Reflection lists the service.
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut refl = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = refl
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let reply = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected reflection reply {reply:?}");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"gateway.admin.v1.Admin"), "{names:?}");
        // What a generic client (grpcurl) asks next: the file that defines the service, with
        // every method, so it can build requests itself.
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "gateway.admin.v1.Admin".into(),
            )),
        };
        let mut stream = refl
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let reply = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = reply.message_response else {
            panic!("unexpected reflection reply {reply:?}");
        };
        use prost::Message;
        let file =
            prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
                .unwrap();
        let service = file.service.iter().find(|s| s.name() == "Admin").unwrap();
        let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        for m in [
            "PutPool",
            "GetConfig",
            "Transaction",
            "Watch",
            "RemoveNode",
            "Leader",
        ] {
            assert!(methods.contains(&m), "{m} missing from {methods:?}");
        }
    }
}
