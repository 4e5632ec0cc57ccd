//! Pools as the request path sees them, and the balancers that pick a backend.
//!
//! Counters that must outlive a route-table swap live in [`BackendStats`] (per pool name and
//! backend id: requests in flight, smooth-weighted-round-robin current weights) and
//! [`PoolShared`] (per pool name: round-robin cursors). A new table picks up the same `Arc`s for
//! the same names, so a config change does not reset least-connections counts or cursors.
//!
//! Every balancer works over a *view*: all backends of the pool, or those owned by this node
//! (for writes served on the leader, hop-marked requests and `prefer_local` pools). A view has
//! its own cursors, so it is balanced on its own.
//!
//! * `round_robin`: each backend of the view in turn.
//! * `weighted_round_robin`: nginx's smooth weighted round robin; weights 5,1,1 give
//!   `a a b a c a a`, never long runs of one backend.
//! * `least_connections`: fewest requests in flight relative to weight; ties go round robin.
//! * `random_two_choices`: two distinct backends at random, the less loaded of them.
//! * `ip_hash`: weighted rendezvous (highest random weight) hashing of the client IP with each
//!   backend id. Every node computes the same choice without coordination, and removing a
//!   backend moves only the clients that were on it. The client IP is the TCP peer's; behind a
//!   trusted proxy (`ProxyConfig::trusted_proxies`) it is the last `X-Forwarded-For` entry
//!   that is not a trusted proxy; on a request forwarded by another gateway node
//!   (authenticated hop marker) it is the client as that node saw it.
//! * `cookie`: a `gw_sticky=<backend id>.<signature>` cookie, HMAC-signed with the cluster key
//!   over pool name and backend id, pins the client on every node. A client without a valid
//!   cookie, or whose backend is gone or failed, is assigned one round robin and gets a new
//!   cookie.
//!
//! # Connection limits
//!
//! A backend with `max_connections` takes at most that many requests at once (counted from
//! sending the request until its response body is done, or its upgraded connection closed).
//! [`CompiledPool::try_enter`] reserves a slot; a request whose backend is full tries another
//! backend with room (except on sticky pools: `ip_hash`, or a valid `cookie`), and when none
//! has room it waits for a slot to free, up to the pool's `queue_timeout_ms`.

use crate::budget::{BudgetPolicy, RetryBudget};
use crate::hop::{COOKIE_NAME, COOKIE_SIG_LEN, HopKey, sig_matches};
use crate::table::Registry;
use gateway_model::{Balance, Pool};
use http::HeaderValue;
use rand::Rng;
use std::net::IpAddr;
use std::sync::atomic::{
    AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How long a request waits for a backend below its `max_connections` when the pool does
/// not say.
pub(crate) const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

/// Counters of one backend that survive table swaps.
#[derive(Default, Debug)]
pub(crate) struct BackendStats {
    pub(crate) in_flight: AtomicUsize,
    /// Requests sent to this backend (attempts, retries included).
    pub(crate) requests: std::sync::atomic::AtomicU64,
    /// Attempts that failed: not connected, broken, timed out.
    pub(crate) failures: std::sync::atomic::AtomicU64,
    /// Passive ejection: no new requests from this node until this time ([`now_ms`]); 0: none.
    ejected_until: AtomicU64,
    /// 5xx responses in a row, for `eject.consecutive_5xx`.
    fives: AtomicU32,
    /// Smooth weighted round robin current weight, per view (all, local).
    current_weight: [AtomicI64; 2],
}

/// Counters of one pool that survive table swaps.
#[derive(Default, Debug)]
pub(crate) struct PoolShared {
    /// Round-robin cursor per view (all, local).
    cursor: [AtomicUsize; 2],
    /// Serialises smooth weighted round robin, whose step reads and writes every weight.
    swrr: Mutex<()>,
    /// Retries taken from the budget, in all.
    pub(crate) retries: std::sync::atomic::AtomicU64,
    /// Requests and retries of the pool over the last seconds.
    pub(crate) budget: RetryBudget,
    /// Requests waiting for a slot on a backend at its `max_connections`.
    queued: AtomicUsize,
    /// Woken when a slot frees on a limited backend while requests wait.
    freed: Notify,
}

/// Counts a request as in flight on a backend until dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    stats: Arc<BackendStats>,
    /// The pool to wake when the backend is limited.
    limited: Option<Arc<PoolShared>>,
    /// The request's place in its route's `max_concurrent`, held as long as this.
    route: Option<crate::limits::RouteGuard>,
}

impl InFlight {
    /// Counts a request on a backend without a limit.
    pub(crate) fn new(stats: &Arc<BackendStats>) -> Self {
        stats.in_flight.fetch_add(1, SeqCst);
        InFlight {
            stats: stats.clone(),
            limited: None,
            route: None,
        }
    }

    /// Holds the request's route slot until the response is done.
    pub(crate) fn hold(mut self, route: Option<crate::limits::RouteGuard>) -> Self {
        self.route = route;
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, SeqCst);
        // Paired with the SeqCst increment of `queued` before a waiter re-checks the counts:
        // either it sees this slot free, or this sees it waiting.
        if let Some(pool) = &self.limited
            && pool.queued.load(SeqCst) > 0
        {
            pool.freed.notify_waiters();
        }
    }
}

/// Registers a request as waiting for a slot in a pool until dropped.
pub(crate) struct Queued<'a>(&'a PoolShared);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, SeqCst);
    }
}

/// A backend as the request path sees it.
pub(crate) struct CompiledBackend {
    pub(crate) id: Box<str>,
    pub(crate) address: Box<str>,
    pub(crate) weight: u32,
    pub(crate) node: Option<u64>,
    pub(crate) stats: Arc<BackendStats>,
    pub(crate) endpoint: Arc<crate::upstream::Endpoint>,
    /// Most requests at once (`max_connections`); 0: no limit.
    pub(crate) max_conns: usize,
    /// FNV-1a state after hashing the backend id, for rendezvous hashing.
    hash_seed: u64,
    /// Expected `gw_sticky` signature for this backend (hex).
    cookie_sig: [u8; COOKIE_SIG_LEN],
    /// The `Set-Cookie` value pinning a client to this backend.
    pub(crate) set_cookie: HeaderValue,
}

/// Which backends of a pool a request may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every backend of the pool.
    All,
    /// The backends owned by this node, or every backend when this node owns none.
    Local,
}

/// Milliseconds on a monotonic clock shared by the whole process (never 0).
pub(crate) fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// A pool's passive ejection settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EjectPolicy {
    pub(crate) connect_failure: bool,
    pub(crate) consecutive_5xx: u32,
    pub(crate) cooldown_ms: u64,
}

/// A pool as the request path sees it.
pub(crate) struct CompiledPool {
    pub(crate) name: Box<str>,
    /// Passive ejection; None: off.
    pub(crate) eject: Option<EjectPolicy>,
    pub(crate) balance: Balance,
    pub(crate) backends: Box<[CompiledBackend]>,
    pub(crate) prefer_local: bool,
    pub(crate) queue_timeout: Duration,
    pub(crate) budget: BudgetPolicy,
    all: Box<[u32]>,
    local: Box<[u32]>,
    pub(crate) shared: Arc<PoolShared>,
    /// Backends of the pool left out of `backends` (draining, or marked down): their counters
    /// stay in the registry (and in the metrics) until they serve again.
    pub(crate) resting: Box<[RestingBackend]>,
}

/// A backend that is not picked now (draining or marked down), for the metrics.
pub(crate) struct RestingBackend {
    pub(crate) id: Box<str>,
    pub(crate) address: Box<str>,
    pub(crate) stats: Arc<BackendStats>,
}

/// What a balancer knows about the request.
pub(crate) struct PickCtx {
    pub(crate) client_ip: IpAddr,
    /// The backend a valid sticky cookie names (index into the pool's backends).
    pub(crate) pinned: Option<usize>,
}

/// A balancer's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Picked {
    pub(crate) idx: usize,
    /// Send a `Set-Cookie` pinning the client to this backend.
    pub(crate) set_cookie: bool,
}

/// Backends a request must not be sent to (already tried, or full). The first few are kept
/// inline, so the common cases do not allocate.
#[derive(Default, Clone)]
pub(crate) struct Tried {
    idx: [u32; 12],
    len: usize,
    more: Vec<u32>,
}

impl Tried {
    pub(crate) fn contains(&self, i: u32) -> bool {
        self.idx[..self.len.min(12)].contains(&i) || self.more.contains(&i)
    }
    pub(crate) fn push(&mut self, i: usize) {
        if self.len < self.idx.len() {
            self.idx[self.len] = i as u32;
        } else {
            self.more.push(i as u32);
        }
        self.len += 1;
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl CompiledPool {
    #[cfg(test)]
    pub(crate) fn compile(pool: &Pool, node_id: u64, key: &HopKey, reg: &mut Registry) -> Self {
        Self::compile_with(pool, node_id, key, reg, &|_| false, None)
    }

    /// Compiles a pool without its draining backends and without those the cluster marked
    /// down (`down`), unless every backend left is down: then the pool fails open and uses
    /// them all, since a wrong verdict must not take a whole service away.
    pub(crate) fn compile_with(
        pool: &Pool,
        node_id: u64,
        key: &HopKey,
        reg: &mut Registry,
        down: &dyn Fn(&str) -> bool,
        tls: Option<&Arc<crate::backend_tls::UpstreamTls>>,
    ) -> Self {
        // A draining backend takes no new requests; those it serves keep their connection and
        // counters (kept in the registry), so they finish.
        let serving: Vec<_> = pool.backends.iter().filter(|b| !b.drain).collect();
        let healthy: Vec<_> = serving.iter().copied().filter(|b| !down(&b.id)).collect();
        let chosen = if healthy.is_empty() { serving } else { healthy };
        let keep_alive = pool
            .keep_alive_timeout_ms
            .map_or(crate::upstream::DEFAULT_KEEP_ALIVE, Duration::from_millis);
        let resting = pool
            .backends
            .iter()
            .filter(|b| !chosen.iter().any(|c| c.id == b.id))
            .map(|b| RestingBackend {
                id: b.id.as_str().into(),
                address: b.address.as_str().into(),
                stats: reg.backend(&pool.name, &b.id),
            })
            .collect();
        let backends: Box<[CompiledBackend]> = chosen
            .into_iter()
            .map(|b| {
                let cookie_sig = key.cookie_sig(&pool.name, &b.id);
                let sig = std::str::from_utf8(&cookie_sig).expect("hex");
                let set_cookie = HeaderValue::try_from(format!(
                    "{COOKIE_NAME}={}.{sig}; Path=/; HttpOnly; SameSite=Lax",
                    b.id
                ))
                .expect("validated backend ids are cookie-safe");
                CompiledBackend {
                    id: b.id.as_str().into(),
                    address: b.address.as_str().into(),
                    weight: b.weight.max(1),
                    node: b.node,
                    stats: reg.backend(&pool.name, &b.id),
                    endpoint: reg
                        .endpoints
                        .get_with(&b.address, pool.protocol, tls, keep_alive),
                    max_conns: b.max_connections.map_or(0, |m| m.max(1) as usize),
                    hash_seed: fnv1a(FNV_OFFSET, b.id.as_bytes()),
                    cookie_sig,
                    set_cookie,
                }
            })
            .collect();
        let all = (0..backends.len() as u32).collect();
        let local = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.node == Some(node_id))
            .map(|(i, _)| i as u32)
            .collect();
        CompiledPool {
            name: pool.name.as_str().into(),
            eject: pool.eject.as_ref().map(|e| EjectPolicy {
                connect_failure: e.connect_failure,
                consecutive_5xx: e.consecutive_5xx,
                cooldown_ms: e.cooldown_ms,
            }),
            balance: pool.balance,
            backends,
            prefer_local: pool.prefer_local,
            queue_timeout: pool
                .queue_timeout_ms
                .map_or(DEFAULT_QUEUE_TIMEOUT, Duration::from_millis),
            budget: BudgetPolicy {
                percent: pool
                    .retry_budget_percent
                    .unwrap_or(crate::budget::DEFAULT_PERCENT),
                min_per_second: pool
                    .retry_budget_min_per_second
                    .unwrap_or(crate::budget::DEFAULT_MIN_PER_SECOND),
            },
            all,
            local,
            shared: reg.pool(&pool.name),
            resting,
        }
    }

    /// Whether this node has ejected backend `idx` (passive ejection) for now.
    pub(crate) fn is_ejected(&self, idx: usize) -> bool {
        let until = self.backends[idx].stats.ejected_until.load(Relaxed);
        until != 0 && until > now_ms()
    }

    /// A connection to backend `idx` failed: eject it if the pool says so. `true` when this
    /// ejected it (it was not ejected already).
    pub(crate) fn connect_failed(&self, idx: usize) -> bool {
        match self.eject {
            Some(p) if p.connect_failure => self.eject_for(idx, p.cooldown_ms),
            _ => false,
        }
    }

    /// Backend `idx` answered with `status`: a run of 5xx ejects it if the pool says so.
    /// `true` when this ejected it.
    pub(crate) fn answered(&self, idx: usize, status: u16) -> bool {
        let Some(p) = self.eject else { return false };
        if p.consecutive_5xx == 0 {
            return false;
        }
        let stats = &self.backends[idx].stats;
        if status < 500 {
            if stats.fives.load(Relaxed) != 0 {
                stats.fives.store(0, Relaxed);
            }
            return false;
        }
        if stats.fives.fetch_add(1, Relaxed) + 1 >= p.consecutive_5xx {
            stats.fives.store(0, Relaxed);
            return self.eject_for(idx, p.cooldown_ms);
        }
        false
    }

    fn eject_for(&self, idx: usize, cooldown_ms: u64) -> bool {
        let now = now_ms();
        let prev = self.backends[idx]
            .stats
            .ejected_until
            .swap(now + cooldown_ms, Relaxed);
        prev <= now
    }

    /// Like [`CompiledPool::pick`], but passes over backends this node has ejected, unless
    /// every candidate is ejected (then the balancer's own choice stands).
    pub(crate) fn pick_live(&self, scope: Scope, ctx: &PickCtx, tried: &Tried) -> Option<Picked> {
        let first = self.pick(scope, ctx, tried)?;
        if self.eject.is_none() || !self.is_ejected(first.idx) {
            return Some(first);
        }
        let mut skip = tried.clone();
        skip.push(first.idx);
        while let Some(next) = self.pick(scope, ctx, &skip) {
            if !self.is_ejected(next.idx) {
                return Some(next);
            }
            skip.push(next.idx);
        }
        Some(first)
    }

    /// Counts a request in the retry budget.
    pub(crate) fn record_request(&self) {
        self.shared.budget.record_request();
    }

    /// Takes a retry from the budget; `false` when retries would exceed it.
    pub(crate) fn try_retry(&self) -> bool {
        let ok = self.shared.budget.try_retry(self.budget);
        if ok {
            self.shared.retries.fetch_add(1, Relaxed);
        }
        ok
    }

    /// Reserves a slot on backend `idx` if it is below its `max_connections`.
    pub(crate) fn try_enter(&self, idx: usize) -> Option<InFlight> {
        let b = &self.backends[idx];
        if b.max_conns == 0 {
            return Some(InFlight::new(&b.stats));
        }
        let mut cur = b.stats.in_flight.load(SeqCst);
        loop {
            if cur >= b.max_conns {
                return None;
            }
            match b
                .stats
                .in_flight
                .compare_exchange_weak(cur, cur + 1, SeqCst, SeqCst)
            {
                Ok(_) => {
                    return Some(InFlight {
                        stats: b.stats.clone(),
                        limited: Some(self.shared.clone()),
                        route: None,
                    });
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Registers a waiter for a free slot; drop it when done waiting.
    pub(crate) fn queue(&self) -> Queued<'_> {
        self.shared.queued.fetch_add(1, SeqCst);
        Queued(&self.shared)
    }

    /// A future that completes when a slot frees after it was created and enabled.
    pub(crate) fn slot_freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.freed.notified()
    }

    /// Whether a request pinned by this balancer must stay on its backend (no spill-over to
    /// another backend when it is full).
    pub(crate) fn is_sticky(&self, ctx: &PickCtx) -> bool {
        match self.balance {
            Balance::IpHash => true,
            Balance::Cookie => ctx.pinned.is_some(),
            _ => false,
        }
    }

    /// The candidates of a scope and the index of their view's counters.
    fn view(&self, scope: Scope) -> (&[u32], usize) {
        match scope {
            Scope::Local if !self.local.is_empty() => (&self.local, 1),
            _ => (&self.all, 0),
        }
    }

    /// Whether this node owns any backend of the pool.
    pub(crate) fn has_local(&self) -> bool {
        !self.local.is_empty()
    }

    /// The backend a `gw_sticky` cookie value names, if its signature is valid.
    pub(crate) fn resolve_cookie(&self, value: &str) -> Option<usize> {
        let (id, sig) = value.rsplit_once('.')?;
        let i = self.backends.iter().position(|b| &*b.id == id)?;
        sig_matches(sig.as_bytes(), &self.backends[i].cookie_sig).then_some(i)
    }

    /// Picks a backend of `scope` that is not in `tried`; `None` when none is left.
    pub(crate) fn pick(&self, scope: Scope, ctx: &PickCtx, tried: &Tried) -> Option<Picked> {
        let (cands, view) = self.view(scope);
        let plain = |idx: Option<u32>| {
            idx.map(|i| Picked {
                idx: i as usize,
                set_cookie: false,
            })
        };
        match self.balance {
            Balance::RoundRobin => plain(self.round_robin(cands, view, tried)),
            Balance::WeightedRoundRobin => plain(self.smooth_weighted(cands, view, tried)),
            Balance::LeastConnections => plain(self.least_loaded(cands, view, tried)),
            Balance::RandomTwoChoices => plain(self.two_choices(cands, view, tried)),
            Balance::IpHash => plain(self.rendezvous(cands, ctx.client_ip, tried)),
            Balance::Cookie => {
                if let Some(p) = ctx.pinned {
                    let p32 = p as u32;
                    if (view == 0 || cands.contains(&p32)) && !tried.contains(p32) {
                        return Some(Picked {
                            idx: p,
                            set_cookie: false,
                        });
                    }
                }
                let i = self.round_robin(cands, view, tried)?;
                Some(Picked {
                    idx: i as usize,
                    set_cookie: view == 0,
                })
            }
        }
    }

    fn round_robin(&self, cands: &[u32], view: usize, tried: &Tried) -> Option<u32> {
        let n = cands.len();
        if n == 0 {
            return None;
        }
        let start = self.shared.cursor[view].fetch_add(1, Relaxed);
        (0..n)
            .map(|k| cands[(start + k) % n])
            .find(|&i| !tried.contains(i))
    }

    fn smooth_weighted(&self, cands: &[u32], view: usize, tried: &Tried) -> Option<u32> {
        let _step = self.shared.swrr.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<(u32, i64)> = None;
        for &i in cands {
            if tried.contains(i) {
                continue;
            }
            let b = &self.backends[i as usize];
            let w = i64::from(b.weight);
            let cw = b.stats.current_weight[view].fetch_add(w, Relaxed) + w;
            total += w;
            if best.is_none_or(|(_, best_cw)| cw > best_cw) {
                best = Some((i, cw));
            }
        }
        let (i, _) = best?;
        self.backends[i as usize].stats.current_weight[view].fetch_sub(total, Relaxed);
        Some(i)
    }

    /// `a` is less loaded than `b` relative to their weights.
    fn lighter(&self, a: u32, b: u32) -> bool {
        let (a, b) = (&self.backends[a as usize], &self.backends[b as usize]);
        let la = a.stats.in_flight.load(Relaxed) as u64;
        let lb = b.stats.in_flight.load(Relaxed) as u64;
        la * u64::from(b.weight) < lb * u64::from(a.weight)
    }

    fn least_loaded(&self, cands: &[u32], view: usize, tried: &Tried) -> Option<u32> {
        let n = cands.len();
        if n == 0 {
            return None;
        }
        let start = self.shared.cursor[view].fetch_add(1, Relaxed);
        let mut best: Option<u32> = None;
        for k in 0..n {
            let i = cands[(start + k) % n];
            if tried.contains(i) {
                continue;
            }
            if best.is_none_or(|b| self.lighter(i, b)) {
                best = Some(i);
            }
        }
        best
    }

    fn two_choices(&self, cands: &[u32], view: usize, tried: &Tried) -> Option<u32> {
        let n = cands.len();
        if n <= 2 || tried.len() > 0 {
            // With two candidates (or after a failure) the choice is simply the lighter one.
            return self.least_loaded(cands, view, tried);
        }
        let mut rng = rand::rng();
        let a = rng.random_range(0..n);
        let mut b = rng.random_range(0..n - 1);
        if b >= a {
            b += 1;
        }
        let (a, b) = (cands[a], cands[b]);
        Some(if self.lighter(b, a) { b } else { a })
    }

    fn rendezvous(&self, cands: &[u32], ip: IpAddr, tried: &Tried) -> Option<u32> {
        let ip = ip.to_canonical();
        let v4;
        let v6;
        let key: &[u8] = match ip {
            IpAddr::V4(a) => {
                v4 = a.octets();
                &v4
            }
            IpAddr::V6(a) => {
                v6 = a.octets();
                &v6
            }
        };
        let mut best: Option<(u32, f64)> = None;
        for &i in cands {
            if tried.contains(i) {
                continue;
            }
            let b = &self.backends[i as usize];
            let score = hrw_score(fmix64(fnv1a(b.hash_seed, key)), b.weight);
            let better = match best {
                None => true,
                Some((bi, bs)) => {
                    score > bs || (score == bs && b.id < self.backends[bi as usize].id)
                }
            };
            if better {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a continued from `state`: a fixed, portable hash, so every node computes the same.
fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(FNV_PRIME);
    }
    state
}

/// MurmurHash3's finaliser: spreads FNV's weak low bits over the whole word.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Weighted rendezvous score: `weight / -ln(u)` with `u` the hash mapped into (0, 1).
fn hrw_score(hash: u64, weight: u32) -> f64 {
    let u = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_model::Backend;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    fn pool(balance: Balance, backends: &[(&str, u32, Option<u64>)]) -> Pool {
        Pool {
            name: "web".into(),
            balance,
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, (id, weight, node))| Backend {
                    id: id.to_string(),
                    address: format!("127.0.0.1:{}", 9000 + i),
                    weight: *weight,
                    node: *node,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn compile(p: &Pool) -> CompiledPool {
        CompiledPool::compile(p, 1, &HopKey::new(b"key"), &mut Registry::default())
    }

    fn ctx(ip: IpAddr) -> PickCtx {
        PickCtx {
            client_ip: ip,
            pinned: None,
        }
    }

    fn localhost() -> PickCtx {
        ctx(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    fn id_of(p: &CompiledPool, pick: Option<Picked>) -> String {
        p.backends[pick.expect("a backend").idx].id.to_string()
    }

    fn counts(p: &CompiledPool, scope: Scope, n: usize) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for _ in 0..n {
            *m.entry(id_of(p, p.pick(scope, &localhost(), &Tried::default())))
                .or_default() += 1;
        }
        m
    }

    #[test]
    fn round_robin_cycles_and_skips_tried() {
        let p = compile(&pool(
            Balance::RoundRobin,
            &[("a", 1, None), ("b", 1, None), ("c", 1, None)],
        ));
        let seq: Vec<String> = (0..6)
            .map(|_| id_of(&p, p.pick(Scope::All, &localhost(), &Tried::default())))
            .collect();
        assert_eq!(seq, ["a", "b", "c", "a", "b", "c"]);
        let mut tried = Tried::default();
        for _ in 0..3 {
            let pick = p.pick(Scope::All, &localhost(), &tried).unwrap();
            assert!(!tried.contains(pick.idx as u32));
            tried.push(pick.idx);
        }
        assert_eq!(
            p.pick(Scope::All, &localhost(), &tried),
            None,
            "every backend tried"
        );
    }

    #[test]
    fn smooth_weighted_round_robin_keeps_ratio_and_interleaves() {
        let p = compile(&pool(
            Balance::WeightedRoundRobin,
            &[("a", 5, None), ("b", 1, None), ("c", 1, None)],
        ));
        let seq: Vec<String> = (0..7)
            .map(|_| id_of(&p, p.pick(Scope::All, &localhost(), &Tried::default())))
            .collect();
        assert_eq!(
            seq,
            ["a", "a", "b", "a", "c", "a", "a"],
            "nginx's smooth sequence"
        );
        let c = counts(&p, Scope::All, 700);
        assert_eq!((c["a"], c["b"], c["c"]), (500, 100, 100));

        let p = compile(&pool(
            Balance::WeightedRoundRobin,
            &[("x", 3, None), ("y", 1, None)],
        ));
        let c = counts(&p, Scope::All, 4000);
        assert_eq!((c["x"], c["y"]), (3000, 1000));
    }

    #[test]
    fn least_connections_picks_the_idle_one() {
        let p = compile(&pool(
            Balance::LeastConnections,
            &[("a", 1, None), ("b", 1, None), ("c", 1, None)],
        ));
        let _busy_a = [
            InFlight::new(&p.backends[0].stats),
            InFlight::new(&p.backends[0].stats),
        ];
        let _busy_c = InFlight::new(&p.backends[2].stats);
        for _ in 0..10 {
            assert_eq!(
                id_of(&p, p.pick(Scope::All, &localhost(), &Tried::default())),
                "b"
            );
        }
        // Ties are spread round robin rather than always landing on the first backend.
        let p = compile(&pool(
            Balance::LeastConnections,
            &[("a", 1, None), ("b", 1, None)],
        ));
        let c = counts(&p, Scope::All, 100);
        assert_eq!((c["a"], c["b"]), (50, 50));
        // Weight counts: 2 in flight on a weight-4 backend is lighter than 1 on weight 1.
        let p = compile(&pool(
            Balance::LeastConnections,
            &[("big", 4, None), ("small", 1, None)],
        ));
        let _g = [
            InFlight::new(&p.backends[0].stats),
            InFlight::new(&p.backends[0].stats),
        ];
        let _h = InFlight::new(&p.backends[1].stats);
        assert_eq!(
            id_of(&p, p.pick(Scope::All, &localhost(), &Tried::default())),
            "big"
        );
    }

    #[test]
    fn in_flight_counts_survive_a_recompile() {
        let mut reg = Registry::default();
        let key = HopKey::new(b"k");
        let spec = pool(Balance::LeastConnections, &[("a", 1, None), ("b", 1, None)]);
        let old = CompiledPool::compile(&spec, 1, &key, &mut reg);
        let _busy = InFlight::new(&old.backends[0].stats);
        let new = CompiledPool::compile(&spec, 1, &key, &mut reg);
        assert_eq!(new.backends[0].stats.in_flight.load(Relaxed), 1);
        assert!(Arc::ptr_eq(
            &old.backends[0].endpoint,
            &new.backends[0].endpoint
        ));
        for _ in 0..4 {
            assert_eq!(
                id_of(&new, new.pick(Scope::All, &localhost(), &Tried::default())),
                "b"
            );
        }
    }

    #[test]
    fn random_two_choices_avoids_the_loaded_backend() {
        let p = compile(&pool(
            Balance::RandomTwoChoices,
            &[
                ("a", 1, None),
                ("b", 1, None),
                ("c", 1, None),
                ("d", 1, None),
            ],
        ));
        let _busy: Vec<InFlight> = (0..5)
            .map(|_| InFlight::new(&p.backends[0].stats))
            .collect();
        let c = counts(&p, Scope::All, 600);
        assert_eq!(c.get("a"), None, "a loaded backend loses every comparison");
        for id in ["b", "c", "d"] {
            assert!(c[id] > 100, "{id}: {c:?}");
        }
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919))
    }

    #[test]
    fn ip_hash_is_stable_across_nodes_and_moves_only_the_removed_backends_keys() {
        let five = pool(
            Balance::IpHash,
            &[
                ("a", 1, None),
                ("b", 1, None),
                ("c", 1, None),
                ("d", 1, None),
                ("e", 1, None),
            ],
        );
        // Two "nodes": separately compiled, different keys and registries.
        let n1 = compile(&five);
        let n2 = CompiledPool::compile(&five, 2, &HopKey::new(b"other"), &mut Registry::default());
        let before: Vec<String> = (0..2000)
            .map(|i| id_of(&n1, n1.pick(Scope::All, &ctx(ip(i)), &Tried::default())))
            .collect();
        for (i, b) in before.iter().enumerate() {
            assert_eq!(
                &id_of(
                    &n2,
                    n2.pick(Scope::All, &ctx(ip(i as u32)), &Tried::default())
                ),
                b
            );
            assert_eq!(
                &id_of(
                    &n1,
                    n1.pick(Scope::All, &ctx(ip(i as u32)), &Tried::default())
                ),
                b,
                "stable"
            );
        }
        let mut per: HashMap<&str, usize> = HashMap::new();
        for b in &before {
            *per.entry(b.as_str()).or_default() += 1;
        }
        for (id, n) in &per {
            assert!((300..=500).contains(n), "{id} got {n} of 2000: {per:?}");
        }
        // Remove c: exactly the clients that were on c move.
        let mut four = five.clone();
        four.backends.retain(|b| b.id != "c");
        let n3 = compile(&four);
        let mut moved = 0;
        for (i, b) in before.iter().enumerate() {
            let now = id_of(
                &n3,
                n3.pick(Scope::All, &ctx(ip(i as u32)), &Tried::default()),
            );
            if b == "c" {
                moved += 1;
            } else {
                assert_eq!(&now, b, "client {i} moved although its backend stayed");
            }
        }
        assert_eq!(moved, per["c"]);
        // A failed backend is skipped with the next-highest score.
        let first = n1.pick(Scope::All, &ctx(ip(1)), &Tried::default()).unwrap();
        let mut tried = Tried::default();
        tried.push(first.idx);
        assert_ne!(
            n1.pick(Scope::All, &ctx(ip(1)), &tried).unwrap().idx,
            first.idx
        );
    }

    #[test]
    fn ip_hash_respects_weights() {
        let p = compile(&pool(Balance::IpHash, &[("a", 3, None), ("b", 1, None)]));
        let c: usize = (0..4000)
            .filter(|&i| id_of(&p, p.pick(Scope::All, &ctx(ip(i)), &Tried::default())) == "a")
            .count();
        assert!((2800..=3200).contains(&c), "a got {c} of 4000");
    }

    #[test]
    fn cookie_pins_and_rejects_tampering() {
        let p = compile(&pool(
            Balance::Cookie,
            &[("a", 1, None), ("b", 1, None), ("c", 1, None)],
        ));
        let first = p.pick(Scope::All, &localhost(), &Tried::default()).unwrap();
        assert!(first.set_cookie, "a new client gets a cookie");
        let cookie = p.backends[first.idx]
            .set_cookie
            .to_str()
            .unwrap()
            .to_string();
        let value = cookie
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("gw_sticky=")
            .unwrap()
            .to_string();
        let pinned = p.resolve_cookie(&value);
        assert_eq!(pinned, Some(first.idx));
        for _ in 0..5 {
            let again = p
                .pick(
                    Scope::All,
                    &PickCtx {
                        client_ip: ip(1),
                        pinned,
                    },
                    &Tried::default(),
                )
                .unwrap();
            assert_eq!(
                again,
                Picked {
                    idx: first.idx,
                    set_cookie: false
                }
            );
        }
        // The same cookie is understood by another node with the same key.
        let other = CompiledPool::compile(
            &pool(
                Balance::Cookie,
                &[("a", 1, None), ("b", 1, None), ("c", 1, None)],
            ),
            2,
            &HopKey::new(b"key"),
            &mut Registry::default(),
        );
        assert_eq!(other.resolve_cookie(&value), Some(first.idx));
        // Tampering: another backend's id with this signature, a flipped signature character,
        // a truncated signature, or a cookie made with another key.
        let (id, sig) = value.rsplit_once('.').unwrap();
        let other_id = if id == "a" { "b" } else { "a" };
        assert_eq!(p.resolve_cookie(&format!("{other_id}.{sig}")), None);
        let flipped: String = sig.chars().rev().collect();
        assert_eq!(p.resolve_cookie(&format!("{id}.{flipped}")), None);
        assert_eq!(p.resolve_cookie(&format!("{id}.{}", &sig[..10])), None);
        assert_eq!(p.resolve_cookie(id), None);
        let foreign = CompiledPool::compile(
            &pool(
                Balance::Cookie,
                &[("a", 1, None), ("b", 1, None), ("c", 1, None)],
            ),
            1,
            &HopKey::new(b"not the key"),
            &mut Registry::default(),
        );
        let forged = foreign.backends[first.idx].set_cookie.to_str().unwrap();
        let forged = forged
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("gw_sticky=")
            .unwrap();
        assert_eq!(p.resolve_cookie(forged), None);
        // A cookie naming a backend that is gone is re-pinned.
        let gone = compile(&pool(Balance::Cookie, &[("x", 1, None), ("y", 1, None)]));
        assert_eq!(gone.resolve_cookie(&value), None);
        let repin = gone
            .pick(
                Scope::All,
                &PickCtx {
                    client_ip: ip(1),
                    pinned: None,
                },
                &Tried::default(),
            )
            .unwrap();
        assert!(repin.set_cookie);
        // A pinned backend that failed is replaced, and the client re-pinned.
        let mut tried = Tried::default();
        tried.push(first.idx);
        let failover = p
            .pick(
                Scope::All,
                &PickCtx {
                    client_ip: ip(1),
                    pinned,
                },
                &tried,
            )
            .unwrap();
        assert_ne!(failover.idx, first.idx);
        assert!(failover.set_cookie);
    }

    #[test]
    fn local_scope_uses_owned_backends_or_falls_back_to_all() {
        let p = compile(&pool(
            Balance::RoundRobin,
            &[("a", 1, Some(2)), ("b", 1, Some(1)), ("c", 1, Some(1))],
        ));
        let c = counts(&p, Scope::Local, 10);
        assert_eq!((c.get("a"), c["b"], c["c"]), (None, 5, 5));
        let none_owned = compile(&pool(
            Balance::RoundRobin,
            &[("a", 1, Some(2)), ("b", 1, None)],
        ));
        let c = counts(&none_owned, Scope::Local, 10);
        assert_eq!((c["a"], c["b"]), (5, 5));
    }
}
