//! Active health checks and this node's view of its backends.
//!
//! Every node probes every backend of every pool that has a `health_check`, on the pool's
//! interval: an HTTP `GET` (healthy when the status is in the check's ranges and the body holds
//! the check's text) or a TCP connect. A node sees a backend down after `fall` failures in a
//! row and up again after `rise` successes in a row; a failure the data plane meets in real
//! traffic (passive ejection) counts as one failed probe at once. The node's view, the set of
//! backends it sees down, is published on a watch; the node hands it to the cluster's leader,
//! which commits the cluster's verdict when the pool's policy is met. Routing follows the
//! committed verdict only, so every node chooses among the same backends.
//!
//! This module does not route anything and knows nothing of Raft.

use gateway_model::{CheckKind, HealthCheck, HealthPolicy, SeenDown, State, StatusRanges};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The most of a probe's response that is read (head and body), for the body check.
const MAX_PROBE_RESPONSE: usize = 64 << 10;

/// This node's view: the backends it sees down.
pub type View = Arc<BTreeSet<SeenDown>>;

/// One probed backend.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    pool: String,
    backend: String,
    address: String,
    check: HealthCheck,
    /// The pool's TLS, used by the probes too.
    tls: Option<Arc<crate::backend_tls::UpstreamTls>>,
}

/// Rise/fall counting for one backend on this node.
#[derive(Debug, Default)]
struct Counts {
    down: bool,
    ok_run: u32,
    fail_run: u32,
}

struct Probe {
    task: JoinHandle<()>,
    counts: Arc<Mutex<Counts>>,
    rise: u32,
    fall: u32,
}

/// Runs the probes and keeps this node's view. Cheap to share.
pub struct Monitor {
    node: u64,
    view: watch::Sender<View>,
    probes: Mutex<HashMap<(String, String), (Target, Probe)>>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("down", &self.view.borrow().len())
            .finish()
    }
}

impl Monitor {
    /// A monitor for node `node` (sent as `X-Gateway-Node` on HTTP probes, so a backend
    /// can tell which node asks).
    pub fn new(node: u64) -> Arc<Monitor> {
        Arc::new(Monitor {
            node,
            view: watch::channel(View::default()).0,
            probes: Mutex::new(HashMap::new()),
        })
    }

    /// This node's view, updated whenever a backend goes down or up here.
    pub fn view(&self) -> watch::Receiver<View> {
        self.view.subscribe()
    }

    /// Probes the backends of `state`'s pools, following its changes, until `state` closes.
    pub async fn run(self: Arc<Self>, mut state: watch::Receiver<Arc<State>>) {
        let mut before: Option<Arc<State>> = None;
        loop {
            let current = state.borrow_and_update().clone();
            // Only the pools that changed since the last version are looked at: every write
            // publishes a version, and a cluster may hold thousands of pools.
            match &before {
                None => self.sync(&current, current.pools.keys()),
                Some(b) => {
                    let mut changed: BTreeSet<&String> = current.pools_changed_since(b).collect();
                    // A TLS pool's client certificate is part of how its probes connect.
                    changed.extend(pools_with_changed_client_cert(b, &current));
                    self.sync(&current, changed.into_iter())
                }
            }
            before = Some(current);
            if state.changed().await.is_err() {
                break;
            }
        }
        self.stop();
    }

    /// Stops every probe.
    pub fn stop(&self) {
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        for (_, (_, p)) in probes.drain() {
            p.task.abort();
        }
    }

    /// Starts probes for new targets of the pools `changed`, stops those of their targets that
    /// are gone or changed. Probes of other pools are left alone.
    fn sync<'a>(self: &Arc<Self>, state: &State, changed: impl Iterator<Item = &'a String>) {
        let changed: BTreeSet<&str> = changed.map(String::as_str).collect();
        if changed.is_empty() {
            return;
        }
        // The compiled TLS of the probes running, by identity (rebuilt only when it changed).
        let probes_tls: HashMap<u64, Arc<crate::backend_tls::UpstreamTls>> = self
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|(t, _)| t.tls.as_ref().map(|x| (x.id, x.clone())))
            .collect();
        let mut wanted: HashMap<(String, String), Target> = HashMap::new();
        for pool in changed.iter().filter_map(|name| state.pools.get(*name)) {
            let Some(check) = &pool.health_check else {
                continue;
            };
            // The policy is the leader's rule for a verdict, not part of a probe: changing it
            // leaves the probes running.
            let check = HealthCheck {
                policy: HealthPolicy::default(),
                ..check.clone()
            };
            let tls = pool.tls.as_ref().map(|t| {
                use crate::backend_tls::{UpstreamTls, fingerprint};
                let client = t.client_cert.as_ref().and_then(|n| state.certs.get(n));
                let id = fingerprint(t, client);
                // Rebuilt only when it changed: probes compare it by identity.
                match probes_tls.get(&id) {
                    Some(known) => Arc::clone(known),
                    None => Arc::new(UpstreamTls::build(t, client, id)),
                }
            });
            for b in &pool.backends {
                wanted.insert(
                    (pool.name.clone(), b.id.clone()),
                    Target {
                        pool: pool.name.clone(),
                        backend: b.id.clone(),
                        address: b.address.clone(),
                        check: check.clone(),
                        tls: tls.clone(),
                    },
                );
            }
        }
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        let mut stopped = false;
        // What a replaced probe saw of a backend at the same address: its verdict stands until
        // the new probe's own runs overturn it, so a change to the pool's check (its interval,
        // its path, ...) does not show a down backend as up in between.
        let mut was_down: BTreeSet<(String, String)> = BTreeSet::new();
        probes.retain(|key, (target, probe)| {
            let keep = !changed.contains(key.0.as_str()) || wanted.get(key) == Some(target);
            if !keep {
                probe.task.abort();
                stopped = true;
                if wanted.get(key).is_some_and(|w| w.address == target.address)
                    && probe.counts.lock().unwrap_or_else(|e| e.into_inner()).down
                {
                    was_down.insert(key.clone());
                }
            }
            keep
        });
        for (key, target) in wanted {
            if probes.contains_key(&key) {
                continue;
            }
            let counts = Arc::new(Mutex::new(Counts {
                down: was_down.contains(&key),
                ..Counts::default()
            }));
            let task = tokio::spawn(probe_loop(
                Arc::downgrade(self),
                self.node,
                target.clone(),
                counts.clone(),
            ));
            let (rise, fall) = (target.check.rise, target.check.fall);
            probes.insert(
                key,
                (
                    target,
                    Probe {
                        task,
                        counts,
                        rise,
                        fall,
                    },
                ),
            );
        }
        drop(probes);
        // A new probe starts up (or goes on from its predecessor's verdict); only a stopped one
        // can change the view.
        if stopped {
            self.publish();
        }
    }

    /// Counts a failure seen in real traffic (a refused connection, a 5xx run) as a failed probe.
    pub fn passive_failure(&self, pool: &str, backend: &str) {
        let probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_, p)) = probes.get(&(pool.to_string(), backend.to_string())) else {
            return;
        };
        let changed = observe(&p.counts, false, p.rise, p.fall);
        drop(probes);
        if changed {
            self.publish();
        }
    }

    fn publish(&self) {
        let probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        let down: BTreeSet<SeenDown> = probes
            .values()
            .filter(|(_, p)| p.counts.lock().unwrap_or_else(|e| e.into_inner()).down)
            .map(|(t, _)| SeenDown {
                pool: t.pool.clone(),
                backend: t.backend.clone(),
                address: t.address.clone(),
            })
            .collect();
        drop(probes);
        self.view.send_if_modified(|v| {
            if **v == down {
                false
            } else {
                *v = Arc::new(down);
                true
            }
        });
    }
}

/// Records one probe outcome; `true` when the node's view of the backend flipped.
fn observe(counts: &Mutex<Counts>, ok: bool, rise: u32, fall: u32) -> bool {
    let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
    if ok {
        c.fail_run = 0;
        c.ok_run = c.ok_run.saturating_add(1);
        if c.down && c.ok_run >= rise {
            c.down = false;
            return true;
        }
    } else {
        c.ok_run = 0;
        c.fail_run = c.fail_run.saturating_add(1);
        if !c.down && c.fail_run >= fall {
            c.down = true;
            return true;
        }
    }
    false
}

async fn probe_loop(
    monitor: std::sync::Weak<Monitor>,
    node: u64,
    target: Target,
    counts: Arc<Mutex<Counts>>,
) {
    let interval = Duration::from_millis(target.check.interval_ms);
    let timeout = Duration::from_millis(target.check.timeout_ms);
    // Spread the first probes of many backends over one interval.
    let jitter = rand::random_range(0..=interval.as_millis() as u64 / 4);
    tokio::time::sleep(Duration::from_millis(jitter)).await;
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = String::new();
    loop {
        every.tick().await;
        let outcome = match tokio::time::timeout(timeout, probe(&target, node)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", target.check.timeout_ms)),
        };
        let ok = outcome.is_ok();
        if let Err(e) = &outcome
            && *e != last_error
        {
            tracing::debug!(pool = %target.pool, backend = %target.backend, address = %target.address, "health probe failed: {e}");
        }
        last_error = outcome.err().unwrap_or_default();
        if observe(&counts, ok, target.check.rise, target.check.fall) {
            let Some(m) = monitor.upgrade() else { return };
            let verdict = if ok { "up" } else { "down" };
            tracing::info!(pool = %target.pool, backend = %target.backend, address = %target.address, "this node sees the backend {verdict}{}", if ok { String::new() } else { format!(": {last_error}") });
            m.publish();
        }
    }
}

/// The TLS pools whose client certificate changed between `before` and `now` (no look at the
/// pools when no certificate changed).
fn pools_with_changed_client_cert<'a>(
    before: &'a State,
    now: &'a State,
) -> impl Iterator<Item = &'a String> + 'a {
    let certs_changed = !before.certs.ptr_eq(&now.certs);
    now.pools
        .values()
        // Nothing to look at (and no pool visited) when no certificate changed.
        .take(if certs_changed { usize::MAX } else { 0 })
        .filter(move |p| {
            p.tls
                .as_ref()
                .and_then(|t| t.client_cert.as_ref())
                .is_some_and(|n| {
                    before.certs.get(n).map(|c| c.revision) != now.certs.get(n).map(|c| c.revision)
                })
        })
        .map(|p| &p.name)
}

/// One probe: `Ok` when the backend is healthy, else why not.
async fn probe(t: &Target, node: u64) -> Result<(), String> {
    match t.address.strip_prefix("unix:") {
        Some(path) => {
            let s = UnixStream::connect(path)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            match &t.tls {
                None => check(s, t, node).await,
                Some(tls) => {
                    let s = tls
                        .handshake(s, &t.address, crate::backend_tls::Alpn::Http1)
                        .await
                        .map_err(|e| e.to_string())?;
                    check(s, t, node).await
                }
            }
        }
        None => {
            let s = TcpStream::connect(t.address.as_str())
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = s.set_nodelay(true);
            match &t.tls {
                None => check(s, t, node).await,
                Some(tls) => {
                    let s = tls
                        .handshake(s, &t.address, crate::backend_tls::Alpn::Http1)
                        .await
                        .map_err(|e| e.to_string())?;
                    check(s, t, node).await
                }
            }
        }
    }
}

async fn check<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    t: &Target,
    node: u64,
) -> Result<(), String> {
    if t.check.kind == CheckKind::Tcp {
        return Ok(());
    }
    let host = t.check.host.as_deref().unwrap_or_else(|| {
        if t.address.starts_with("unix:") {
            "localhost"
        } else {
            &t.address
        }
    });
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gateway-health-check\r\nX-Gateway-Node: {node}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        t.check.path
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    // Read the head, and the body when a body check needs it.
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= MAX_PROBE_RESPONSE {
            break;
        }
        if t.check.body.is_none() && buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if let Some(want) = &t.check.body
            && contains(&buf, want.as_bytes())
        {
            break;
        }
    }
    let line_end = buf
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or("no response head")?;
    let line =
        std::str::from_utf8(&buf[..line_end]).map_err(|_| "a response line that is not text")?;
    let mut parts = line.split(' ');
    let (version, status) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 response: '{line}'"));
    }
    let status: u16 = status
        .parse()
        .map_err(|_| format!("no status in '{line}'"))?;
    let ranges = StatusRanges::parse(&t.check.status).map_err(|e| format!("status ranges: {e}"))?;
    if !ranges.contains(status) {
        return Err(format!("status {status} (expected {})", t.check.status));
    }
    if let Some(want) = &t.check.body {
        let body_start = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(buf.len(), |p| p + 4);
        if !contains(&buf[body_start..], want.as_bytes()) {
            return Err(format!("the body does not contain '{want}'"));
        }
    }
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_need_runs() {
        let c = Mutex::new(Counts::default());
        assert!(!observe(&c, false, 2, 3));
        assert!(!observe(&c, false, 2, 3));
        assert!(!observe(&c, true, 2, 3)); // a success breaks the run
        assert!(!observe(&c, false, 2, 3));
        assert!(!observe(&c, false, 2, 3));
        assert!(observe(&c, false, 2, 3)); // third failure in a row: down
        assert!(!observe(&c, true, 2, 3));
        assert!(observe(&c, true, 2, 3)); // second success in a row: up
    }

    async fn serve_once(answer: &'static str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    async fn probe_t(t: &Target) -> Result<(), String> {
        probe(t, 1).await
    }

    fn target(address: String, check: HealthCheck) -> Target {
        Target {
            pool: "p".into(),
            backend: "a".into(),
            address,
            check,
            tls: None,
        }
    }

    #[tokio::test]
    async fn http_probes_check_status_and_body() {
        let ok = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nall ok\n").await;
        let bad = serve_once("HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n").await;
        let check = HealthCheck::default();
        probe_t(&target(ok.clone(), check.clone())).await.unwrap();
        let e = probe_t(&target(bad, check.clone())).await.unwrap_err();
        assert!(e.contains("status 503"), "{e}");
        let want_body = HealthCheck {
            body: Some("ready".into()),
            ..check.clone()
        };
        let e = probe_t(&target(ok, want_body)).await.unwrap_err();
        assert!(e.contains("does not contain"), "{e}");
        let closed = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().to_string()
        };
        let tcp = HealthCheck {
            kind: CheckKind::Tcp,
            ..check
        };
        assert!(
            probe_t(&target(closed, tcp))
                .await
                .unwrap_err()
                .contains("connect")
        );
    }

    /// Whether the monitor's view holds backend `a` of pool `p`.
    fn sees_a_down(m: &Monitor) -> bool {
        m.view
            .borrow()
            .iter()
            .any(|d| d.pool == "p" && d.backend == "a")
    }

    /// The counts of the probe of backend `a` of pool `p` (one per probe started).
    fn counts_of_a(m: &Monitor) -> Arc<Mutex<Counts>> {
        let key = ("p".to_string(), "a".to_string());
        m.probes.lock().unwrap()[&key].1.counts.clone()
    }

    /// Waits until the probe of `a` has failed `n` times in a row.
    async fn failed_runs(m: &Monitor, n: u32) {
        for _ in 0..500 {
            if counts_of_a(m).lock().unwrap().fail_run >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the probe of a did not fail {n} times in a row");
    }

    #[tokio::test]
    async fn a_pool_change_keeps_what_the_probes_saw_at_the_same_address() {
        use gateway_model::{Backend, HealthPolicy, Pool};
        let closed = || async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().to_string()
        };
        let (dead, other) = (closed().await, closed().await);
        let pool = |policy: HealthPolicy, interval_ms: u64, address: &str| -> Arc<Pool> {
            Arc::new(Pool {
                name: "p".into(),
                backends: vec![Backend {
                    id: "a".into(),
                    address: address.into(),
                    ..Backend::default()
                }],
                health_check: Some(HealthCheck {
                    kind: CheckKind::Tcp,
                    interval_ms,
                    fall: 2,
                    policy,
                    ..HealthCheck::default()
                }),
                ..Pool::default()
            })
        };
        let m = Monitor::new(1);
        let mut state = State::default();
        state
            .pools
            .insert("p".into(), pool(HealthPolicy::Majority, 10, &dead));
        m.sync(&state, state.pools.keys());
        failed_runs(&m, 2).await;
        assert!(sees_a_down(&m));

        // Another policy is not another probe: the same one goes on.
        let mut view = m.view();
        view.mark_unchanged();
        let before = counts_of_a(&m);
        state
            .pools
            .insert("p".into(), pool(HealthPolicy::Any, 10, &dead));
        m.sync(&state, state.pools.keys());
        assert!(Arc::ptr_eq(&before, &counts_of_a(&m)));
        assert!(sees_a_down(&m));

        // Another interval is another probe, but what the old one saw stands: the view keeps a,
        // and the new probe's failures do not flip it.
        state
            .pools
            .insert("p".into(), pool(HealthPolicy::Any, 20, &dead));
        m.sync(&state, state.pools.keys());
        assert!(!Arc::ptr_eq(&before, &counts_of_a(&m)));
        assert!(sees_a_down(&m));
        failed_runs(&m, 3).await;
        assert!(sees_a_down(&m));
        assert!(
            !view.has_changed().unwrap(),
            "the view changed: {:?}",
            view.borrow()
        );

        // Another address is another backend: its probe starts from nothing.
        state
            .pools
            .insert("p".into(), pool(HealthPolicy::Any, 20, &other));
        m.sync(&state, state.pools.keys());
        assert!(!sees_a_down(&m));
        m.stop();
    }

    // ---- TLS to backends (issue 7) ----
    #[test]
    fn a_replaced_client_certificate_names_the_pools_that_present_it() {
        use gateway_model::{BackendTls, Cert, Pool};
        let mut before = State::default();
        for (name, cert) in [("a", Some("gw")), ("b", None), ("c", Some("other"))] {
            before.pools.insert(
                name.into(),
                Pool {
                    name: name.into(),
                    tls: Some(BackendTls {
                        client_cert: cert.map(str::to_string),
                        ..BackendTls::default()
                    }),
                    ..Pool::default()
                }
                .into(),
            );
        }
        for (name, revision) in [("gw", 1), ("other", 2)] {
            before.certs.insert(
                name.into(),
                Cert {
                    name: name.into(),
                    revision,
                    ..Cert::default()
                },
            );
        }
        let same = before.clone();
        assert_eq!(pools_with_changed_client_cert(&before, &same).count(), 0);
        let mut now = before.clone();
        now.certs.get_mut("gw").unwrap().revision = 5;
        let names: Vec<&String> = pools_with_changed_client_cert(&before, &now).collect();
        assert_eq!(names, ["a"]);
    }
}
