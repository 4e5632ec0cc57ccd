//! The replicated state and its pure, deterministic transition function.

use crate::command::{Command, Request, Response};
use crate::config::{NodeId, Pool, Route};
use crate::error::{ApplyError, Invalid};
use crate::validate::{validate_name, validate_pool, validate_route};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// How many recent request ids the state machine remembers to deduplicate retried writes.
/// A retry arriving after this many newer writes would apply again; retries happen within
/// seconds, so the window is ample while keeping snapshots small.
pub const DEDUP_WINDOW: usize = 10_000;

/// Everything the cluster replicates (besides Raft membership, which openraft keeps).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Bumped by every applied change; the version every read reports.
    pub revision: u64,
    pub pools: BTreeMap<String, Pool>,
    pub routes: BTreeMap<String, Route>,
    /// Node ids that have left the cluster and may never be used again.
    pub retired: BTreeSet<NodeId>,
    /// Responses to the most recent requests, oldest first, for deduplication.
    recent: VecDeque<(String, Response)>,
    #[serde(skip)]
    recent_index: HashMap<String, usize>,
    /// Total requests ever recorded in `recent`; positions in `recent_index` are offsets of it.
    recorded: usize,
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
        self.remember(req.id.clone(), resp.clone());
        resp
    }

    /// The response already given to request `id`, if it is within the dedup window.
    pub fn seen(&self, id: &str) -> Option<Response> {
        let base = self.recorded - self.recent.len();
        let pos = *self.recent_index.get(id)?;
        self.recent.get(pos - base).map(|(_, r)| r.clone())
    }

    fn remember(&mut self, id: String, resp: Response) {
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

    /// Checks a command against the current state without changing anything.
    pub fn check(&self, cmd: &Command) -> Result<(), ApplyError> {
        match cmd {
            Command::PutPool { pool } => validate_pool(pool)?,
            Command::DeletePool { name } => {
                validate_name("name", name)?;
                if !self.pools.contains_key(name) {
                    return Err(ApplyError::NotFound {
                        what: "pool".into(),
                        name: name.clone(),
                    });
                }
                let users: Vec<&str> = self
                    .routes
                    .values()
                    .filter(|r| &r.pool == name)
                    .map(|r| r.name.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "pool '{name}' is used by route(s) {}; delete those routes or point them at another pool first",
                            users.join(", ")
                        ),
                    });
                }
            }
            Command::PutRoute { route } => {
                validate_route(route)?;
                if !self.pools.contains_key(&route.pool) {
                    return Err(Invalid::new(
                        "pool",
                        format!("pool '{}' does not exist", route.pool),
                        "create the pool first (PUT /v1/pools/NAME) or name an existing one",
                    )
                    .into());
                }
            }
            Command::DeleteRoute { name } => {
                validate_name("name", name)?;
                if !self.routes.contains_key(name) {
                    return Err(ApplyError::NotFound {
                        what: "route".into(),
                        name: name.clone(),
                    });
                }
            }
            Command::RetireNode { id } => {
                if *id == 0 {
                    return Err(Invalid::new(
                        "id",
                        "0 is not a node id",
                        "use the id of the node that left",
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    fn apply_command(&mut self, cmd: &Command) -> Result<(), ApplyError> {
        self.check(cmd)?;
        let rev = self.revision + 1;
        match cmd {
            Command::PutPool { pool } => {
                let mut pool = pool.clone();
                pool.revision = rev;
                self.pools.insert(pool.name.clone(), pool);
            }
            Command::DeletePool { name } => {
                self.pools.remove(name);
            }
            Command::PutRoute { route } => {
                let mut route = route.clone();
                route.revision = rev;
                self.routes.insert(route.name.clone(), route);
            }
            Command::DeleteRoute { name } => {
                self.routes.remove(name);
            }
            Command::RetireNode { id } => {
                if !self.retired.insert(*id) {
                    return Ok(()); // already retired: nothing changes, no new revision
                }
            }
        }
        self.revision = rev;
        Ok(())
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
            backends: vec![Backend {
                id: "a".into(),
                address: "127.0.0.1:9000".into(),
                weight: 1,
                node: None,
            }],
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

    #[test]
    fn route_needs_pool_and_pool_in_use_cannot_go() {
        let mut s = State::default();
        let r = s.apply(&req(
            "1",
            Command::PutRoute {
                route: route("r", "p"),
            },
        ));
        assert!(matches!(r.outcome, Err(ApplyError::Invalid(ref i)) if i.field == "pool"));
        assert_eq!(s.revision, 0);
        s.apply(&req("2", Command::PutPool { pool: pool("p") }))
            .outcome
            .unwrap();
        s.apply(&req(
            "3",
            Command::PutRoute {
                route: route("r", "p"),
            },
        ))
        .outcome
        .unwrap();
        assert_eq!(s.revision, 2);
        assert_eq!(s.routes["r"].revision, 2);
        let r = s.apply(&req("4", Command::DeletePool { name: "p".into() }));
        assert!(matches!(r.outcome, Err(ApplyError::Conflict { .. })));
        assert!(s.pools.contains_key("p"));
        s.apply(&req("5", Command::DeleteRoute { name: "r".into() }))
            .outcome
            .unwrap();
        s.apply(&req("6", Command::DeletePool { name: "p".into() }))
            .outcome
            .unwrap();
        assert!(s.pools.is_empty() && s.routes.is_empty());
        assert_eq!(s.revision, 4);
    }

    #[test]
    fn every_refusal_survives_a_snapshot() {
        let mut s = State::default();
        s.apply(&req("1", Command::PutPool { pool: pool("p") }))
            .outcome
            .unwrap();
        s.apply(&req(
            "2",
            Command::PutRoute {
                route: route("r", "p"),
            },
        ))
        .outcome
        .unwrap();
        let refusals = [
            s.apply(&req("3", Command::DeletePool { name: "p".into() })),
            s.apply(&req(
                "4",
                Command::DeleteRoute {
                    name: "nope".into(),
                },
            )),
            s.apply(&req(
                "5",
                Command::PutRoute {
                    route: route("r2", "nope"),
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
    fn retried_request_applies_once() {
        let mut s = State::default();
        let first = s.apply(&req("x", Command::PutPool { pool: pool("p") }));
        s.apply(&req("y", Command::DeletePool { name: "p".into() }))
            .outcome
            .unwrap();
        let again = s.apply(&req("x", Command::PutPool { pool: pool("p") }));
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
}
