//! The replicated state and its pure, deterministic transition function.

use crate::cert::{Cert, validate_cert};
use crate::command::{Applied, Command, MAX_BATCH, Proposal, Request, Response};
use crate::config::{NodeId, Pool, Route};
use crate::error::{ApplyError, Invalid};
use crate::health::{AlertSink, BackendHealth, Event, EventKind, validate_alert_sink};
use crate::process::{RollingRestart, is_managed, managed_index};
use crate::tcp::{TcpRoute, validate_tcp_route};
use crate::validate::{validate_name, validate_pool, validate_route};
use imbl::{OrdMap, Vector};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// How many recent request ids the state machine remembers to deduplicate retried writes.
/// A retry arriving after this many newer writes would apply again; retries happen within
/// seconds, so the window is ample while keeping snapshots small.
pub const DEDUP_WINDOW: usize = 10_000;

/// How many recent revisions keep their changes, for watchers that resume from a revision.
pub const HISTORY: usize = 1_000;

/// How many recent events (health transitions, node and leader changes) the state keeps for
/// alert sinks that have not had them yet.
pub const EVENTS: usize = 1_000;

/// One change within a revision, as a watcher sees it.
// Changes are recorded once per write, never on the request path; boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    PutPool {
        pool: Pool,
    },
    DeletePool {
        name: String,
    },
    PutRoute {
        route: Route,
    },
    DeleteRoute {
        name: String,
    },
    RetireNode {
        id: NodeId,
    },
    /// The cluster's verdict on a backend changed.
    Health {
        pool: String,
        backend: String,
        health: BackendHealth,
    },
    PutAlertSink {
        sink: AlertSink,
    },
    DeleteAlertSink {
        name: String,
    },
    /// A certificate, without its key.
    PutCert {
        cert: Cert,
    },
    DeleteCert {
        name: String,
    },
    PutTcpRoute {
        route: TcpRoute,
    },
    DeleteTcpRoute {
        name: String,
    },
    /// The node-wide limits were replaced.
    SetLimits {
        limits: crate::limits::Limits,
    },
}

/// Everything one revision changed, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    pub revision: u64,
    pub changes: Vec<Change>,
}

/// A watcher asked for changes older than the history keeps.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "revision {asked} is compacted (history starts after revision {oldest}); read the whole config and watch from its revision"
)]
pub struct Compacted {
    pub asked: u64,
    pub oldest: u64,
}

/// Everything the cluster replicates (besides Raft membership, which openraft keeps).
///
/// Its collections are persistent (structure-sharing) ones, so a copy for readers costs O(1)
/// ([`State::for_readers`]): the state machine publishes a new version after every write while
/// readers still hold older ones. The deduplication window alone is plain and never published.
/// Their bulky values sit behind an `Arc`: a write that changes one entry copies the tree
/// node holding it, up to 64 neighbours, and those copies must cost a counter each, not a
/// deep clone of a pool or a change set (serde's `rc` feature keeps the encoding as before).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Bumped by every applied change; the version every read reports.
    pub revision: u64,
    pub pools: OrdMap<String, Arc<Pool>>,
    pub routes: OrdMap<String, Route>,
    /// TLS certificates, with their keys (read APIs show [`Cert::redacted`]).
    #[serde(default)]
    pub certs: OrdMap<String, Cert>,
    /// TCP routes.
    #[serde(default)]
    pub tcp_routes: OrdMap<String, TcpRoute>,
    /// Node ids that have left the cluster and may never be used again.
    pub retired: BTreeSet<NodeId>,
    /// The agreed health of backends that were ever marked down, by pool and backend id
    /// (a backend without an entry is up). Entries go with their backend.
    #[serde(default)]
    pub health: OrdMap<String, OrdMap<String, BackendHealth>>,
    /// Members the leader recorded as lost and not yet back.
    #[serde(default)]
    pub lost: BTreeSet<NodeId>,
    /// Where alerts go.
    #[serde(default)]
    pub alerts: OrdMap<String, AlertSink>,
    /// The last [`EVENTS`] events, oldest first.
    #[serde(default)]
    pub events: Vector<Event>,
    /// The id the next event gets (ids start at 1).
    #[serde(default)]
    pub next_event: u64,
    /// Per alert sink, the last event id delivered to it.
    #[serde(default)]
    pub delivered: OrdMap<String, u64>,
    /// Rolling restarts of pools with managed backends, by pool (kept after they finish, for
    /// their epoch).
    #[serde(default)]
    pub restarts: OrdMap<String, RollingRestart>,
    /// Node-wide limits, applied by every node to itself.
    #[serde(default)]
    pub limits: crate::limits::Limits,
    /// The changes of the last [`HISTORY`] revisions, oldest first.
    history: Vector<Arc<ChangeSet>>,
    /// Responses to the most recent requests, oldest first, for deduplication. Plain (not
    /// persistent) collections: only the state machine's own copy holds them, never a
    /// published one ([`State::for_readers`]), so they are changed in place.
    recent: VecDeque<(Arc<str>, Response)>,
    #[serde(skip)]
    recent_index: HashMap<Arc<str>, usize>,
    /// Total requests ever recorded in `recent`; positions in `recent_index` are offsets of it.
    recorded: usize,
}

/// The configuration maps a command works on: the live ones, or scratch copies for a batch.
struct Maps<'a> {
    pools: &'a mut OrdMap<String, Arc<Pool>>,
    routes: &'a mut OrdMap<String, Route>,
    certs: &'a mut OrdMap<String, Cert>,
    tcp_routes: &'a mut OrdMap<String, TcpRoute>,
    limits: &'a mut crate::limits::Limits,
}

fn expect_rev(
    what: &str,
    name: &str,
    expect: Option<u64>,
    actual: Option<u64>,
) -> Result<(), ApplyError> {
    let ok = match (expect, actual) {
        (None, _) => true,
        (Some(0), None) => true,
        (Some(e), Some(a)) => e == a,
        (Some(_), None) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ApplyError::Stale {
            what: what.into(),
            name: name.into(),
            expected: expect.unwrap_or(0),
            actual,
        })
    }
}

impl Maps<'_> {
    /// Checks one configuration command and, if it is valid here, applies it at `rev`.
    fn apply(&mut self, cmd: &Command, rev: u64, out: &mut Vec<Change>) -> Result<(), ApplyError> {
        match cmd {
            Command::PutPool { pool, expect } => {
                validate_pool(pool)?;
                if let Some(name) = pool.tls.as_ref().and_then(|t| t.client_cert.as_ref())
                    && !self.certs.contains_key(name)
                {
                    return Err(Invalid::new(
                        "tls.client_cert",
                        format!("certificate '{name}' does not exist"),
                        "upload it first (gateway cert add NAME --cert FILE --key FILE) or name an existing one",
                    )
                    .into());
                }
                expect_rev(
                    "pool",
                    &pool.name,
                    *expect,
                    self.pools.get(&pool.name).map(|p| p.revision),
                )?;
                let mut pool = pool.clone();
                pool.revision = rev;
                self.pools.insert(pool.name.clone(), Arc::new(pool.clone()));
                out.push(Change::PutPool { pool });
            }
            Command::DeletePool { name, expect } => {
                validate_name("name", name)?;
                let Some(current) = self.pools.get(name) else {
                    return Err(ApplyError::NotFound {
                        what: "pool".into(),
                        name: name.clone(),
                    });
                };
                expect_rev("pool", name, *expect, Some(current.revision))?;
                let users: Vec<&str> = self
                    .routes
                    .values()
                    .filter(|r| &r.pool == name)
                    .map(|r| r.name.as_str())
                    .chain(
                        self.tcp_routes
                            .values()
                            .filter(|r| &r.pool == name)
                            .map(|r| r.name.as_str()),
                    )
                    .collect();
                if !users.is_empty() {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "pool '{name}' is used by route(s) {}; delete those routes or point them at another pool first",
                            users.join(", ")
                        ),
                    });
                }
                self.pools.remove(name);
                out.push(Change::DeletePool { name: name.clone() });
            }
            Command::PutRoute { route, expect } => {
                validate_route(route)?;
                if !self.pools.contains_key(&route.pool) {
                    return Err(Invalid::new(
                        "pool",
                        format!("pool '{}' does not exist", route.pool),
                        "create the pool first (PUT /v1/pools/NAME) or name an existing one",
                    )
                    .into());
                }
                expect_rev(
                    "route",
                    &route.name,
                    *expect,
                    self.routes.get(&route.name).map(|r| r.revision),
                )?;
                let mut route = route.clone();
                route.revision = rev;
                self.routes.insert(route.name.clone(), route.clone());
                out.push(Change::PutRoute { route });
            }
            Command::DeleteRoute { name, expect } => {
                validate_name("name", name)?;
                let Some(current) = self.routes.get(name) else {
                    return Err(ApplyError::NotFound {
                        what: "route".into(),
                        name: name.clone(),
                    });
                };
                expect_rev("route", name, *expect, Some(current.revision))?;
                self.routes.remove(name);
                out.push(Change::DeleteRoute { name: name.clone() });
            }
            Command::PutCert { cert, expect } => {
                let info = validate_cert(cert)?;
                expect_rev(
                    "cert",
                    &cert.name,
                    *expect,
                    self.certs.get(&cert.name).map(|c| c.revision),
                )?;
                if cert.default
                    && let Some(other) = self
                        .certs
                        .values()
                        .find(|c| c.default && c.name != cert.name)
                {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "certificate '{}' is already the default; unset its default first, or change both in one transaction",
                            other.name
                        ),
                    });
                }
                let mut cert = cert.clone();
                cert.names = info.names;
                cert.not_before = info.not_before;
                cert.not_after = info.not_after;
                cert.revision = rev;
                self.certs.insert(cert.name.clone(), cert.clone());
                out.push(Change::PutCert {
                    cert: cert.redacted(),
                });
            }
            Command::DeleteCert { name, expect } => {
                validate_name("name", name)?;
                let Some(current) = self.certs.get(name) else {
                    return Err(ApplyError::NotFound {
                        what: "cert".into(),
                        name: name.clone(),
                    });
                };
                expect_rev("cert", name, *expect, Some(current.revision))?;
                let users: Vec<&str> = self
                    .pools
                    .values()
                    .filter(|p| p.tls.as_ref().and_then(|t| t.client_cert.as_ref()) == Some(name))
                    .map(|p| p.name.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "certificate '{name}' is the TLS client certificate of pool(s) {}; change their tls.client_cert first",
                            users.join(", ")
                        ),
                    });
                }
                self.certs.remove(name);
                out.push(Change::DeleteCert { name: name.clone() });
            }
            Command::PutTcpRoute { route, expect } => {
                validate_tcp_route(route)?;
                if !self.pools.contains_key(&route.pool) {
                    return Err(Invalid::new(
                        "pool",
                        format!("pool '{}' does not exist", route.pool),
                        "create the pool first (PUT /v1/pools/NAME) or name an existing one",
                    )
                    .into());
                }
                expect_rev(
                    "tcp-route",
                    &route.name,
                    *expect,
                    self.tcp_routes.get(&route.name).map(|r| r.revision),
                )?;
                if let Some(other) = self
                    .tcp_routes
                    .values()
                    .find(|r| r.listen == route.listen && r.name != route.name)
                {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "TCP route '{}' already listens on {}; pick another address or change that route",
                            other.name, route.listen
                        ),
                    });
                }
                let mut route = route.clone();
                route.revision = rev;
                self.tcp_routes.insert(route.name.clone(), route.clone());
                out.push(Change::PutTcpRoute { route });
            }
            Command::DeleteTcpRoute { name, expect } => {
                validate_name("name", name)?;
                let Some(current) = self.tcp_routes.get(name) else {
                    return Err(ApplyError::NotFound {
                        what: "tcp-route".into(),
                        name: name.clone(),
                    });
                };
                expect_rev("tcp-route", name, *expect, Some(current.revision))?;
                self.tcp_routes.remove(name);
                out.push(Change::DeleteTcpRoute { name: name.clone() });
            }
            Command::SetLimits { limits, expect } => {
                crate::limits::validate_limits(limits)?;
                if let Some(e) = expect
                    && *e != self.limits.revision
                {
                    return Err(ApplyError::Stale {
                        what: "limits".into(),
                        name: "limits".into(),
                        expected: *e,
                        actual: Some(self.limits.revision),
                    });
                }
                let mut limits = limits.clone();
                limits.revision = rev;
                *self.limits = limits.clone();
                out.push(Change::SetLimits { limits });
            }
            _ => {
                return Err(Invalid::new(
                    "commands",
                    "a batch may only hold pool, route, certificate and limits changes",
                    "send node changes and nested batches on their own",
                )
                .into());
            }
        }
        Ok(())
    }
}

impl State {
    /// The names of the pools added, changed or removed between `before` and this version.
    /// Versions of one state machine share structure, so this costs O(changes · log pools),
    /// not O(pools): watchers that care about a few pools (health checks, managed backends)
    /// use it to stay cheap when thousands of pools exist and every write adds one.
    pub fn pools_changed_since<'a>(
        &'a self,
        before: &'a State,
    ) -> impl Iterator<Item = &'a String> + 'a {
        before.pools.diff(&self.pools).map(|d| match d {
            imbl::ordmap::DiffItem::Add(k, _)
            | imbl::ordmap::DiffItem::Remove(k, _)
            | imbl::ordmap::DiffItem::Update { new: (k, _), .. } => k,
        })
    }
}

impl State {
    /// Applies one request. Deterministic: the same state and request give the same result on
    /// every node. A request id seen recently returns the first response without applying again.
    pub fn apply(&mut self, req: &Request) -> Response {
        if let Some(resp) = self.seen(&req.id) {
            return resp;
        }
        let outcome = self.apply_command(&req.command);
        let resp = Response {
            revision: self.revision,
            outcome,
        };
        self.remember(req.id.as_str().into(), resp.clone());
        resp
    }

    /// Applies every request of a Raft entry in order (see [`Proposal`]).
    pub fn apply_proposal(&mut self, p: &Proposal) -> Applied {
        match p {
            Proposal::One(req) => Applied::One(self.apply(req)),
            Proposal::Group { requests } => Applied::Group {
                responses: requests.iter().map(|r| self.apply(r)).collect(),
            },
        }
    }

    /// The response already given to request `id`, if it is within the dedup window.
    pub fn seen(&self, id: &str) -> Option<Response> {
        let base = self.recorded - self.recent.len();
        let pos = *self.recent_index.get(id)?;
        self.recent.get(pos - base).map(|(_, r)| r.clone())
    }

    fn remember(&mut self, id: Arc<str>, resp: Response) {
        if self.recent.len() == DEDUP_WINDOW
            && let Some((old, _)) = self.recent.pop_front()
        {
            self.recent_index.remove(&old);
        }
        self.recent_index.insert(id.clone(), self.recorded);
        self.recorded += 1;
        self.recent.push_back((id, resp));
    }

    /// Rebuilds indexes after deserialising (they are not part of the snapshot).
    pub fn reindex(&mut self) {
        let base = self.recorded - self.recent.len();
        self.recent_index = self
            .recent
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.clone(), base + i))
            .collect();
    }

    /// The change sets after revision `since`, oldest first; empty when `since` is current.
    pub fn changes_since(&self, since: u64) -> Result<Vec<ChangeSet>, Compacted> {
        if since >= self.revision {
            return Ok(Vec::new());
        }
        let oldest = self
            .history
            .front()
            .map(|c| c.revision - 1)
            .unwrap_or(self.revision);
        if since < oldest {
            return Err(Compacted {
                asked: since,
                oldest,
            });
        }
        Ok(self
            .history
            .iter()
            .filter(|c| c.revision > since)
            .map(|c| ChangeSet::clone(c))
            .collect())
    }

    /// A copy of everything but the deduplication window, which only [`State::apply`]
    /// consults: the version to publish to readers. The window stays with the state
    /// machine's copy alone, so applying the next write changes it in place. Shared with a
    /// published version, every write copied the nodes of the window's index it touched: 8 %
    /// of the leader's thread in a profile of `bench/raft-writes.sh` (bench/README.md, session
    /// 13). O(1), like any copy of the persistent collections.
    pub fn for_readers(&self) -> State {
        State {
            revision: self.revision,
            pools: self.pools.clone(),
            routes: self.routes.clone(),
            certs: self.certs.clone(),
            tcp_routes: self.tcp_routes.clone(),
            retired: self.retired.clone(),
            health: self.health.clone(),
            lost: self.lost.clone(),
            alerts: self.alerts.clone(),
            events: self.events.clone(),
            next_event: self.next_event,
            delivered: self.delivered.clone(),
            restarts: self.restarts.clone(),
            limits: self.limits.clone(),
            history: self.history.clone(),
            recent: VecDeque::new(),
            recent_index: HashMap::new(),
            recorded: 0,
        }
    }

    fn apply_command(&mut self, cmd: &Command) -> Result<(), ApplyError> {
        let rev = self.revision + 1;
        let mut changes = Vec::new();
        match cmd {
            Command::RetireNode { id } => {
                if *id == 0 {
                    return Err(Invalid::new(
                        "id",
                        "0 is not a node id",
                        "use the id of the node that left",
                    )
                    .into());
                }
                if !self.retired.insert(*id) {
                    return Ok(()); // already retired: nothing changes, no new revision
                }
                changes.push(Change::RetireNode { id: *id });
            }
            Command::SetHealth {
                pool,
                backend,
                up,
                down_on,
                at_ms,
            } => {
                let Some(p) = self.pools.get(pool) else {
                    return Err(ApplyError::NotFound {
                        what: "pool".into(),
                        name: pool.clone(),
                    });
                };
                let Some(b) = p.backends.iter().find(|b| &b.id == backend) else {
                    return Err(ApplyError::NotFound {
                        what: "backend".into(),
                        name: format!("{pool}/{backend}"),
                    });
                };
                if p.health_check.is_none() {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "pool '{pool}' has no health_check; its backends are always up"
                        ),
                    });
                }
                let address = b.address.clone();
                let now_up = self
                    .health
                    .get(pool)
                    .and_then(|m| m.get(backend))
                    .is_none_or(|h| h.up);
                if now_up == *up {
                    return Ok(()); // already so: nothing changes, no new revision
                }
                let mut down_on = down_on.clone();
                down_on.sort_unstable();
                down_on.dedup();
                let kind = if *up {
                    EventKind::BackendUp {
                        pool: pool.clone(),
                        backend: backend.clone(),
                        address: address.clone(),
                    }
                } else {
                    EventKind::BackendDown {
                        pool: pool.clone(),
                        backend: backend.clone(),
                        address: address.clone(),
                        down_on: down_on.clone(),
                    }
                };
                let transition = self.record(kind, *at_ms);
                let health = BackendHealth {
                    up: *up,
                    address,
                    down_on: if *up { Vec::new() } else { down_on },
                    since_ms: *at_ms,
                    transition,
                };
                self.health
                    .entry(pool.clone())
                    .or_default()
                    .insert(backend.clone(), health.clone());
                changes.push(Change::Health {
                    pool: pool.clone(),
                    backend: backend.clone(),
                    health,
                });
            }
            Command::Record { event, at_ms } => {
                match event {
                    EventKind::NodeLost { node } => {
                        if !self.lost.insert(*node) {
                            return Ok(());
                        }
                    }
                    EventKind::NodeBack { node } => {
                        if !self.lost.remove(node) {
                            return Ok(());
                        }
                    }
                    EventKind::LeaderChange { .. } | EventKind::BackendFailed { .. } => {}
                    EventKind::BackendDown { .. } | EventKind::BackendUp { .. } => {
                        return Err(Invalid::new(
                            "event",
                            "backend health is recorded by set_health",
                            "propose set_health instead",
                        )
                        .into());
                    }
                }
                self.record(event.clone(), *at_ms);
                return Ok(()); // an event is not configuration: no new revision
            }
            Command::Delivered { sink, upto } => {
                let upto = (*upto).min(self.next_event.saturating_sub(1));
                let entry = self.delivered.entry(sink.clone()).or_insert(0);
                *entry = (*entry).max(upto);
                return Ok(()); // bookkeeping, not configuration
            }
            Command::PutAlertSink { sink, expect } => {
                validate_alert_sink(sink)?;
                expect_rev(
                    "alert",
                    &sink.name,
                    *expect,
                    self.alerts.get(&sink.name).map(|s| s.revision),
                )?;
                let mut sink = sink.clone();
                sink.revision = rev;
                if !self.alerts.contains_key(&sink.name) {
                    // A new sink hears of events from now on, not of the whole backlog.
                    self.delivered
                        .insert(sink.name.clone(), self.next_event.saturating_sub(1));
                }
                self.alerts.insert(sink.name.clone(), sink.clone());
                changes.push(Change::PutAlertSink { sink });
            }
            Command::DeleteAlertSink { name, expect } => {
                validate_name("name", name)?;
                let Some(current) = self.alerts.get(name) else {
                    return Err(ApplyError::NotFound {
                        what: "alert".into(),
                        name: name.clone(),
                    });
                };
                expect_rev("alert", name, *expect, Some(current.revision))?;
                self.alerts.remove(name);
                self.delivered.remove(name);
                changes.push(Change::DeleteAlertSink { name: name.clone() });
            }
            Command::SetManaged {
                pool,
                node,
                backends,
            } => {
                let Some(current) = self.pools.get(pool) else {
                    return Err(ApplyError::NotFound {
                        what: "pool".into(),
                        name: pool.clone(),
                    });
                };
                if current.process.is_none() {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "pool '{pool}' has no process spec, so it has no managed backends"
                        ),
                    });
                }
                if *node == 0 {
                    return Err(
                        Invalid::new("node", "0 is not a node id", "use the node's id").into(),
                    );
                }
                for (i, b) in backends.iter().enumerate() {
                    if b.node != Some(*node) || managed_index(*node, &b.id).is_none() {
                        return Err(Invalid::new(
                            format!("backends[{i}].id"),
                            format!("'{}' is not a managed backend of node {node}", b.id),
                            format!("use ids n{node}-I owned by node {node}"),
                        )
                        .into());
                    }
                }
                let mut next = Pool::clone(current);
                next.backends = current
                    .backends
                    .iter()
                    .filter(|b| !(b.node == Some(*node) && managed_index(*node, &b.id).is_some()))
                    .cloned()
                    .collect();
                let mut mine = backends.clone();
                mine.sort_by_key(|b| managed_index(*node, &b.id));
                next.backends.extend(mine);
                if next.backends == current.backends {
                    return Ok(()); // already so: nothing changes, no new revision
                }
                validate_pool(&next)?;
                next.revision = rev;
                self.pools.insert(pool.clone(), Arc::new(next.clone()));
                changes.push(Change::PutPool { pool: next });
            }
            Command::RestartPool { pool, at_ms } => {
                let Some(p) = self.pools.get(pool) else {
                    return Err(ApplyError::NotFound {
                        what: "pool".into(),
                        name: pool.clone(),
                    });
                };
                if p.process.is_none() {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "pool '{pool}' has no process spec: only managed backends can be restarted; give it a \"process\" first"
                        ),
                    });
                }
                let pending = p
                    .backends
                    .iter()
                    .filter(|b| is_managed(p, b))
                    .map(|b| b.id.clone())
                    .collect();
                let epoch = self.restarts.get(pool).map_or(0, |r| r.epoch) + 1;
                self.restarts.insert(
                    pool.clone(),
                    RollingRestart {
                        epoch,
                        started_ms: *at_ms,
                        pending,
                        done: Vec::new(),
                    },
                );
                return Ok(()); // an operation, not configuration: no new revision
            }
            Command::Restarted {
                pool,
                epoch,
                backend,
            } => {
                if let Some(r) = self.restarts.get_mut(pool)
                    && r.epoch == *epoch
                    && let Some(i) = r.pending.iter().position(|b| b == backend)
                {
                    let id = r.pending.remove(i);
                    r.done.push(id);
                }
                return Ok(()); // a stale or repeated report changes nothing
            }
            Command::Batch { commands } => {
                if commands.is_empty() || commands.len() > MAX_BATCH {
                    return Err(Invalid::new(
                        "commands",
                        format!("a batch holds {} commands", commands.len()),
                        format!("send 1 to {MAX_BATCH} commands"),
                    )
                    .into());
                }
                // All or nothing: work on copies, keep them only if every command applies.
                let (mut pools, mut routes) = (self.pools.clone(), self.routes.clone());
                let mut certs = self.certs.clone();
                let mut tcp_routes = self.tcp_routes.clone();
                let mut limits = self.limits.clone();
                let mut maps = Maps {
                    pools: &mut pools,
                    routes: &mut routes,
                    certs: &mut certs,
                    tcp_routes: &mut tcp_routes,
                    limits: &mut limits,
                };
                for (i, c) in commands.iter().enumerate() {
                    maps.apply(c, rev, &mut changes)
                        .map_err(|e| in_batch(i, e))?;
                }
                self.pools = pools;
                self.routes = routes;
                self.certs = certs;
                self.tcp_routes = tcp_routes;
                self.limits = limits;
            }
            single => {
                let mut maps = Maps {
                    pools: &mut self.pools,
                    routes: &mut self.routes,
                    certs: &mut self.certs,
                    tcp_routes: &mut self.tcp_routes,
                    limits: &mut self.limits,
                };
                maps.apply(single, rev, &mut changes)?;
            }
        }
        if matches!(
            cmd,
            Command::PutPool { .. }
                | Command::DeletePool { .. }
                | Command::Batch { .. }
                | Command::SetManaged { .. }
        ) {
            self.prune_health();
            self.prune_restarts();
        }
        self.revision = rev;
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Arc::new(ChangeSet {
            revision: rev,
            changes,
        }));
        Ok(())
    }
}

impl State {
    /// Records an event under the next id, keeping the last [`EVENTS`]; returns its id.
    fn record(&mut self, kind: EventKind, at_ms: u64) -> u64 {
        let id = self.next_event.max(1);
        self.next_event = id + 1;
        if self.events.len() == EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(Event { id, at_ms, kind });
        id
    }

    /// Forgets verdicts on backends that are gone, have a new address, or whose pool no
    /// longer checks health.
    fn prune_health(&mut self) {
        let pools = &self.pools;
        let keep = |pool: &str, backend: &str, h: &BackendHealth| {
            pools.get(pool).is_some_and(|p| {
                p.health_check.is_some()
                    && p.backends
                        .iter()
                        .any(|b| b.id == backend && b.address == h.address)
            })
        };
        let mut pruned = self.health.clone();
        for (pool, backends) in self.health.iter() {
            let kept: OrdMap<String, BackendHealth> = backends
                .iter()
                .filter(|(b, h)| keep(pool, b, h))
                .map(|(b, h)| (b.clone(), h.clone()))
                .collect();
            if kept.is_empty() {
                pruned.remove(pool);
            } else if kept.len() != backends.len() {
                pruned.insert(pool.clone(), kept);
            }
        }
        self.health = pruned;
    }

    /// Forgets restarts of pools that are gone or no longer managed, and pending instances
    /// that are no longer in their pool (a restart never waits for an instance that left).
    fn prune_restarts(&mut self) {
        let mut next = self.restarts.clone();
        for (name, r) in self.restarts.iter() {
            match self.pools.get(name).filter(|p| p.process.is_some()) {
                None => {
                    next.remove(name);
                }
                Some(p) => {
                    let pending: Vec<String> = r
                        .pending
                        .iter()
                        .filter(|id| p.backends.iter().any(|b| &&b.id == id && is_managed(p, b)))
                        .cloned()
                        .collect();
                    if pending != r.pending {
                        let mut r = r.clone();
                        r.pending = pending;
                        next.insert(name.clone(), r);
                    }
                }
            }
        }
        self.restarts = next;
    }

    /// The managed backend of pool `pool` whose turn it is in the pool's rolling restart: the
    /// first pending one that the cluster does not see down and whose node is not lost (those
    /// are skipped until they come back, so a dead node cannot hold the restart up).
    pub fn restart_turn(&self, pool: &str) -> Option<(u64, &crate::config::Backend)> {
        let r = self.restarts.get(pool)?;
        let p = self.pools.get(pool)?;
        r.pending.iter().find_map(|id| {
            let b = p.backends.iter().find(|b| &b.id == id)?;
            let node = b.node?;
            (!self.is_down(pool, id) && !self.lost.contains(&node)).then_some((r.epoch, b))
        })
    }

    /// Whether the cluster has marked this backend down.
    pub fn is_down(&self, pool: &str, backend: &str) -> bool {
        self.health
            .get(pool)
            .and_then(|m| m.get(backend))
            .is_some_and(|h| !h.up)
    }

    /// The events after id `after`, oldest first.
    pub fn events_after(&self, after: u64) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.id > after)
    }
}

/// Says which command of a batch failed.
fn in_batch(i: usize, e: ApplyError) -> ApplyError {
    match e {
        ApplyError::Invalid(mut v) => {
            v.field = format!("commands[{i}].{}", v.field);
            ApplyError::Invalid(v)
        }
        ApplyError::Conflict { message } => ApplyError::Conflict {
            message: format!("commands[{i}]: {message}"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;

    fn req(id: &str, command: Command) -> Request {
        Request {
            id: id.into(),
            command,
        }
    }

    fn pool(name: &str) -> Pool {
        Pool {
            name: name.into(),
            backends: vec![
                serde_json::from_str::<Backend>(r#"{"id":"a","address":"127.0.0.1:9000"}"#)
                    .unwrap(),
            ],
            ..Default::default()
        }
    }

    fn route(name: &str, pool: &str) -> Route {
        Route {
            name: name.into(),
            pool: pool.into(),
            path_prefix: "/".into(),
            ..Default::default()
        }
    }

    fn put_pool(p: Pool) -> Command {
        Command::PutPool {
            pool: p,
            expect: None,
        }
    }

    fn put_route(r: Route) -> Command {
        Command::PutRoute {
            route: r,
            expect: None,
        }
    }

    #[test]
    fn node_limits_are_validated_compared_and_replaced_whole() {
        let mut s = State::default();
        let set = |max_requests, max_connections, expect| Command::SetLimits {
            limits: crate::limits::Limits {
                max_requests,
                max_connections,
                revision: 0,
            },
            expect,
        };
        let r = s.apply(&req("1", set(Some(0), None, None)));
        assert!(matches!(r.outcome, Err(ApplyError::Invalid(ref i)) if i.field == "max_requests"));
        assert_eq!(
            (s.revision, &s.limits),
            (0, &crate::limits::Limits::default())
        );
        s.apply(&req("2", set(Some(100), Some(50), Some(0))))
            .outcome
            .unwrap();
        assert_eq!(s.limits.max_requests, Some(100));
        assert_eq!(s.limits.revision, 1);
        let r = s.apply(&req("3", set(None, None, Some(7))));
        assert!(matches!(r.outcome, Err(ApplyError::Stale { .. })));
        s.apply(&req("4", set(None, Some(10), Some(1))))
            .outcome
            .unwrap();
        assert_eq!(s.limits.max_requests, None, "replaced whole");
        assert_eq!(s.limits.max_connections, Some(10));
        let back: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back.limits, s.limits);
        assert!(matches!(
            s.changes_since(1).unwrap()[0].changes[0],
            Change::SetLimits { .. }
        ));
    }

    #[test]
    fn a_batch_sets_limits_with_the_rest_or_not_at_all() {
        let mut s = State::default();
        let limits = |max_requests| Command::SetLimits {
            limits: crate::limits::Limits {
                max_requests,
                ..crate::limits::Limits::default()
            },
            expect: Some(0),
        };
        let bad = Command::Batch {
            commands: vec![limits(Some(10)), put_route(route("x", "missing"))],
        };
        assert!(s.apply(&req("1", bad)).outcome.is_err());
        assert_eq!(
            s.limits,
            crate::limits::Limits::default(),
            "nothing of a failed batch stays"
        );
        let ok = Command::Batch {
            commands: vec![put_pool(pool("p")), limits(Some(10))],
        };
        s.apply(&req("2", ok)).outcome.unwrap();
        assert_eq!((s.limits.max_requests, s.limits.revision), (Some(10), 1));
        assert!(matches!(
            s.changes_since(0).unwrap()[0].changes[1],
            Change::SetLimits { .. }
        ));
        let stale = Command::Batch {
            commands: vec![limits(None)],
        };
        let r = s.apply(&req("3", stale));
        assert!(matches!(r.outcome, Err(ApplyError::Stale { .. })), "{r:?}");
        assert_eq!(s.limits.max_requests, Some(10));
    }

    #[test]
    fn pools_changed_since_names_only_what_changed() {
        let mut s = State::default();
        for i in 0..2000 {
            s.apply(&req(&format!("p{i}"), put_pool(pool(&format!("p{i}")))))
                .outcome
                .unwrap();
        }
        let before = s.clone();
        assert_eq!(s.pools_changed_since(&before).count(), 0);
        let mut changed = pool("p7");
        changed.backends.clear();
        s.apply(&req("c", put_pool(changed))).outcome.unwrap();
        s.apply(&req("n", put_pool(pool("new")))).outcome.unwrap();
        s.apply(&req(
            "d",
            Command::DeletePool {
                name: "p1999".into(),
                expect: None,
            },
        ))
        .outcome
        .unwrap();
        let mut names: Vec<&String> = s.pools_changed_since(&before).collect();
        names.sort();
        assert_eq!(names, ["new", "p1999", "p7"]);
    }

    #[test]
    fn route_needs_pool_and_pool_in_use_cannot_go() {
        let mut s = State::default();
        let r = s.apply(&req("1", put_route(route("r", "p"))));
        assert!(matches!(r.outcome, Err(ApplyError::Invalid(ref i)) if i.field == "pool"));
        assert_eq!(s.revision, 0);
        s.apply(&req("2", put_pool(pool("p")))).outcome.unwrap();
        s.apply(&req("3", put_route(route("r", "p"))))
            .outcome
            .unwrap();
        assert_eq!(s.revision, 2);
        assert_eq!(s.routes["r"].revision, 2);
        let r = s.apply(&req(
            "4",
            Command::DeletePool {
                name: "p".into(),
                expect: None,
            },
        ));
        assert!(matches!(r.outcome, Err(ApplyError::Conflict { .. })));
        assert!(s.pools.contains_key("p"));
        s.apply(&req(
            "5",
            Command::DeleteRoute {
                name: "r".into(),
                expect: None,
            },
        ))
        .outcome
        .unwrap();
        s.apply(&req(
            "6",
            Command::DeletePool {
                name: "p".into(),
                expect: None,
            },
        ))
        .outcome
        .unwrap();
        assert!(s.pools.is_empty() && s.routes.is_empty());
        assert_eq!(s.revision, 4);
    }

    #[test]
    fn every_refusal_survives_a_snapshot() {
        let mut s = State::default();
        s.apply(&req("1", put_pool(pool("p")))).outcome.unwrap();
        s.apply(&req("2", put_route(route("r", "p"))))
            .outcome
            .unwrap();
        let refusals = [
            s.apply(&req(
                "3",
                Command::DeletePool {
                    name: "p".into(),
                    expect: None,
                },
            )),
            s.apply(&req(
                "4",
                Command::DeleteRoute {
                    name: "nope".into(),
                    expect: None,
                },
            )),
            s.apply(&req("5", put_route(route("r2", "nope")))),
            s.apply(&req(
                "6",
                Command::PutPool {
                    pool: pool("p"),
                    expect: Some(9),
                },
            )),
        ];
        assert!(refusals.iter().all(|r| r.outcome.is_err()));
        let json = serde_json::to_string(&s)
            .expect("a state with refusals in its dedup window serialises");
        let mut back: State = serde_json::from_str(&json).unwrap();
        back.reindex();
        assert_eq!(back, s);
    }

    #[test]
    fn compare_and_set_on_revisions() {
        let mut s = State::default();
        let create_only = |p| Command::PutPool {
            pool: p,
            expect: Some(0),
        };
        s.apply(&req("1", create_only(pool("p")))).outcome.unwrap();
        let again = s.apply(&req("2", create_only(pool("p"))));
        assert!(
            matches!(
                again.outcome,
                Err(ApplyError::Stale {
                    actual: Some(1),
                    ..
                })
            ),
            "{again:?}"
        );
        let stale = s.apply(&req(
            "3",
            Command::PutPool {
                pool: pool("p"),
                expect: Some(7),
            },
        ));
        assert!(matches!(
            stale.outcome,
            Err(ApplyError::Stale {
                expected: 7,
                actual: Some(1),
                ..
            })
        ));
        assert_eq!(s.revision, 1, "refused changes make no revision");
        s.apply(&req(
            "4",
            Command::PutPool {
                pool: pool("p"),
                expect: Some(1),
            },
        ))
        .outcome
        .unwrap();
        let del = s.apply(&req(
            "5",
            Command::DeletePool {
                name: "p".into(),
                expect: Some(1),
            },
        ));
        assert!(matches!(del.outcome, Err(ApplyError::Stale { .. })));
        s.apply(&req(
            "6",
            Command::DeletePool {
                name: "p".into(),
                expect: Some(2),
            },
        ))
        .outcome
        .unwrap();
        assert!(s.pools.is_empty());
    }

    #[test]
    fn batch_is_all_or_nothing_under_one_revision() {
        let mut s = State::default();
        let ok = Command::Batch {
            commands: vec![
                put_pool(pool("p")),
                put_route(route("r", "p")),
                put_route(route("r2", "p")),
            ],
        };
        s.apply(&req("1", ok)).outcome.unwrap();
        assert_eq!(s.revision, 1);
        assert!(s.routes.values().all(|r| r.revision == 1));
        let bad = Command::Batch {
            commands: vec![
                put_pool(pool("q")),
                Command::DeleteRoute {
                    name: "r".into(),
                    expect: None,
                },
                put_route(route("x", "missing")),
            ],
        };
        let r = s.apply(&req("2", bad));
        assert!(
            matches!(r.outcome, Err(ApplyError::Invalid(ref i)) if i.field == "commands[2].pool"),
            "{r:?}"
        );
        assert_eq!(s.revision, 1);
        assert!(
            !s.pools.contains_key("q") && s.routes.contains_key("r"),
            "nothing of a failed batch stays"
        );
        let nested = Command::Batch {
            commands: vec![Command::Batch { commands: vec![] }],
        };
        assert!(s.apply(&req("3", nested)).outcome.is_err());
        assert!(
            s.apply(&req("4", Command::Batch { commands: vec![] }))
                .outcome
                .is_err()
        );
    }

    #[test]
    fn history_lists_changes_in_order_and_compacts() {
        let mut s = State::default();
        s.apply(&req("1", put_pool(pool("p")))).outcome.unwrap();
        s.apply(&req(
            "2",
            Command::Batch {
                commands: vec![put_route(route("a", "p")), put_route(route("b", "p"))],
            },
        ))
        .outcome
        .unwrap();
        let all = s.changes_since(0).unwrap();
        assert_eq!(
            all.iter().map(|c| c.revision).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(all[1].changes.len(), 2);
        assert!(s.changes_since(2).unwrap().is_empty());
        for i in 0..(HISTORY as u64 + 5) {
            s.apply(&req(&format!("n{i}"), Command::RetireNode { id: 100 + i }))
                .outcome
                .unwrap();
        }
        assert!(s.changes_since(0).is_err());
        let tail = s.changes_since(s.revision - 3).unwrap();
        assert_eq!(tail.len(), 3);
    }

    #[test]
    fn retried_request_applies_once() {
        let mut s = State::default();
        let first = s.apply(&req("x", put_pool(pool("p"))));
        s.apply(&req(
            "y",
            Command::DeletePool {
                name: "p".into(),
                expect: None,
            },
        ))
        .outcome
        .unwrap();
        let again = s.apply(&req("x", put_pool(pool("p"))));
        assert_eq!(first, again);
        assert!(s.pools.is_empty(), "the retry must not recreate the pool");
    }

    #[test]
    fn dedup_survives_serialisation_and_window_moves() {
        let mut s = State::default();
        for i in 0..(DEDUP_WINDOW + 5) {
            s.apply(&req(
                &format!("id{i}"),
                Command::RetireNode { id: 1 + i as u64 },
            ));
        }
        let mut back: State = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        back.reindex();
        assert!(back.seen("id0").is_none(), "oldest ids leave the window");
        assert!(back.seen(&format!("id{}", DEDUP_WINDOW + 4)).is_some());
        assert_eq!(back, s);
    }

    fn checked_pool(name: &str) -> Pool {
        Pool {
            health_check: Some(crate::health::HealthCheck::default()),
            ..pool(name)
        }
    }

    fn set_health(up: bool, at_ms: u64) -> Command {
        Command::SetHealth {
            pool: "p".into(),
            backend: "a".into(),
            up,
            down_on: vec![3, 1, 3],
            at_ms,
        }
    }

    #[test]
    fn health_transitions_take_a_revision_and_an_event_once() {
        let mut s = State::default();
        s.apply(&req("1", put_pool(pool("p")))).outcome.unwrap();
        // A pool without a health check cannot have its backends marked down.
        let r = s.apply(&req("2", set_health(false, 10)));
        assert!(matches!(r.outcome, Err(ApplyError::Conflict { .. })));
        s.apply(&req("3", put_pool(checked_pool("p"))))
            .outcome
            .unwrap();
        assert_eq!(s.revision, 2);
        // Up while up: nothing.
        s.apply(&req("4", set_health(true, 11))).outcome.unwrap();
        assert_eq!((s.revision, s.events.len()), (2, 0));
        s.apply(&req("5", set_health(false, 12))).outcome.unwrap();
        assert_eq!(s.revision, 3);
        assert!(s.is_down("p", "a"));
        let h = &s.health["p"]["a"];
        assert_eq!(
            (h.down_on.clone(), h.since_ms, h.transition),
            (vec![1, 3], 12, 1)
        );
        // Down while down: nothing.
        s.apply(&req("6", set_health(false, 13))).outcome.unwrap();
        assert_eq!((s.revision, s.events.len()), (3, 1));
        s.apply(&req("7", set_health(true, 14))).outcome.unwrap();
        assert!(!s.is_down("p", "a"));
        assert_eq!(
            s.events.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(matches!(s.events[1].kind, EventKind::BackendUp { .. }));
        let missing = Command::SetHealth {
            pool: "p".into(),
            backend: "zz".into(),
            up: false,
            down_on: vec![],
            at_ms: 1,
        };
        assert!(matches!(
            s.apply(&req("8", missing)).outcome,
            Err(ApplyError::NotFound { .. })
        ));
    }

    #[test]
    fn a_verdict_goes_with_its_backend_address_or_check() {
        let mut s = State::default();
        s.apply(&req("1", put_pool(checked_pool("p"))))
            .outcome
            .unwrap();
        s.apply(&req("2", set_health(false, 1))).outcome.unwrap();
        // Same backend, same address: the verdict stays.
        let mut p = checked_pool("p");
        p.backends[0].weight = 5;
        s.apply(&req("3", put_pool(p.clone()))).outcome.unwrap();
        assert!(s.is_down("p", "a"));
        // A new address starts afresh.
        p.backends[0].address = "127.0.0.1:9999".into();
        s.apply(&req("4", put_pool(p.clone()))).outcome.unwrap();
        assert!(!s.is_down("p", "a"));
        s.apply(&req("5", set_health(false, 2))).outcome.unwrap();
        // Without a health check every backend is up.
        p.health_check = None;
        s.apply(&req("6", put_pool(p))).outcome.unwrap();
        assert!(s.health.is_empty());
    }

    #[test]
    fn events_and_deliveries_are_recorded_without_revisions() {
        let mut s = State::default();
        let lost = |n| Command::Record {
            event: EventKind::NodeLost { node: n },
            at_ms: 5,
        };
        s.apply(&req("1", lost(2))).outcome.unwrap();
        s.apply(&req("2", lost(2))).outcome.unwrap(); // already lost
        assert_eq!((s.revision, s.events.len(), s.next_event), (0, 1, 2));
        let sink = AlertSink {
            name: "ops".into(),
            webhook: Some("http://127.0.0.1:1/h".into()),
            ..Default::default()
        };
        s.apply(&req(
            "3",
            Command::PutAlertSink {
                sink,
                expect: Some(0),
            },
        ))
        .outcome
        .unwrap();
        // A new sink starts after the events already recorded.
        assert_eq!(s.delivered["ops"], 1);
        s.apply(&req(
            "4",
            Command::Record {
                event: EventKind::NodeBack { node: 2 },
                at_ms: 6,
            },
        ))
        .outcome
        .unwrap();
        assert_eq!(s.events_after(s.delivered["ops"]).count(), 1);
        s.apply(&req(
            "5",
            Command::Delivered {
                sink: "ops".into(),
                upto: 99,
            },
        ))
        .outcome
        .unwrap();
        assert_eq!(s.delivered["ops"], 2); // never past the last event
        assert_eq!(s.revision, 1);
    }

    #[test]
    fn managed_backends_are_replaced_per_node_and_restarted_in_turn() {
        let mut s = State::default();
        let mut p = pool("p");
        p.process =
            Some(serde_json::from_str(r#"{"command":"app","ports":"20000-20009"}"#).unwrap());
        s.apply(&req("1", put_pool(p))).outcome.unwrap();
        let inst = |node: u64, i: u32, port: u16| Backend {
            id: crate::process::managed_id(node, i),
            address: format!("127.0.0.1:{port}"),
            node: Some(node),
            ..Default::default()
        };
        let set = |node, backends| Command::SetManaged {
            pool: "p".into(),
            node,
            backends,
        };
        s.apply(&req("2", set(1, vec![inst(1, 0, 20000)])))
            .outcome
            .unwrap();
        s.apply(&req("3", set(2, vec![inst(2, 0, 20001)])))
            .outcome
            .unwrap();
        let rev = s.revision;
        s.apply(&req("4", set(2, vec![inst(2, 0, 20001)])))
            .outcome
            .unwrap();
        assert_eq!(s.revision, rev, "an unchanged set takes no revision");
        let ids: Vec<&str> = s.pools["p"]
            .backends
            .iter()
            .map(|b| b.id.as_str())
            .collect();
        assert_eq!(ids, ["a", "n1-0", "n2-0"]);
        // A node may only register its own instances.
        let r = s.apply(&req("5", set(1, vec![inst(2, 0, 20005)])));
        assert!(
            matches!(r.outcome, Err(ApplyError::Invalid(ref i)) if i.field == "backends[0].id")
        );
        // A rolling restart goes through the managed backends in order.
        s.apply(&req(
            "6",
            Command::RestartPool {
                pool: "p".into(),
                at_ms: 1,
            },
        ))
        .outcome
        .unwrap();
        assert_eq!(
            s.restart_turn("p").map(|(e, b)| (e, b.id.as_str())),
            Some((1, "n1-0"))
        );
        let done = |id: &str, epoch| Command::Restarted {
            pool: "p".into(),
            epoch,
            backend: id.into(),
        };
        s.apply(&req("7", done("n1-0", 0))).outcome.unwrap(); // stale epoch: ignored
        assert_eq!(s.restart_turn("p").unwrap().1.id, "n1-0");
        s.apply(&req("8", done("n1-0", 1))).outcome.unwrap();
        assert_eq!(s.restart_turn("p").unwrap().1.id, "n2-0");
        // An instance that leaves the pool is not waited for.
        s.apply(&req("9", set(2, vec![]))).outcome.unwrap();
        assert!(s.restart_turn("p").is_none());
        assert_eq!(s.restarts["p"].done, ["n1-0"]);
        // A pool without a spec cannot be restarted.
        s.apply(&req("10", put_pool(pool("q")))).outcome.unwrap();
        let r = s.apply(&req(
            "11",
            Command::RestartPool {
                pool: "q".into(),
                at_ms: 1,
            },
        ));
        assert!(matches!(r.outcome, Err(ApplyError::Conflict { .. })));
    }
}

// ---- TLS to backends (issue 7) ----
#[cfg(test)]
mod backend_tls_tests {
    use super::*;
    use crate::{BackendTls, Cert, Request};

    fn req(id: &str, command: Command) -> Request {
        Request {
            id: id.into(),
            command,
        }
    }

    fn cert(name: &str) -> Cert {
        let k = rcgen::generate_simple_self_signed(vec!["client.internal".to_string()]).unwrap();
        Cert {
            name: name.into(),
            cert_pem: k.cert.pem(),
            key_pem: k.signing_key.serialize_pem(),
            ..Cert::default()
        }
    }

    fn tls_pool(client_cert: &str) -> Pool {
        Pool {
            name: "secure".into(),
            tls: Some(BackendTls {
                client_cert: Some(client_cert.into()),
                ..BackendTls::default()
            }),
            ..Pool::default()
        }
    }

    #[test]
    fn a_pool_names_an_existing_certificate_which_then_cannot_go() {
        let mut s = State::default();
        let put = |p| Command::PutPool {
            pool: p,
            expect: None,
        };
        let r = s.apply(&req("1", put(tls_pool("gw"))));
        match r.outcome {
            Err(ApplyError::Invalid(v)) => assert_eq!(v.field, "tls.client_cert"),
            other => panic!("expected tls.client_cert to be refused: {other:?}"),
        }
        assert!(s.pools.is_empty(), "a refused pool changes nothing");
        s.apply(&req(
            "2",
            Command::PutCert {
                cert: cert("gw"),
                expect: None,
            },
        ))
        .outcome
        .unwrap();
        s.apply(&req("3", put(tls_pool("gw")))).outcome.unwrap();
        let del = Command::DeleteCert {
            name: "gw".into(),
            expect: None,
        };
        let r = s.apply(&req("4", del.clone()));
        assert!(
            matches!(&r.outcome, Err(ApplyError::Conflict { message }) if message.contains("secure")),
            "{:?}",
            r.outcome
        );
        s.apply(&req(
            "5",
            put(Pool {
                tls: None,
                ..tls_pool("gw")
            }),
        ))
        .outcome
        .unwrap();
        s.apply(&req("6", del)).outcome.unwrap();
        assert!(s.certs.is_empty());
    }
}
