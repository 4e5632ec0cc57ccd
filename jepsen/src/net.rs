//! The network the harness controls: a TCP relay in front of every node's cluster port.
//!
//! Node `n` binds its cluster port on `127.0.0.(10+n)` and advertises its relay on
//! `127.0.0.(130+n)` (`--cluster-advertise-addr`), so every Raft and forwarding connection to
//! it passes through the relay. Nodes dial from their own address, so the relay knows which
//! link `(i, j)` a connection belongs to from its source IP.
//!
//! * Blackhole (a partition): on a blocked link the relay stops forwarding and drops the bytes,
//!   in both directions, on existing connections too; new connections are accepted and then
//!   swallowed (the peer sees a silent network, not a refusal). A TCP stream that lost bytes
//!   cannot resume, so when the link heals the connections that dropped anything are reset and
//!   the nodes reconnect — what a real partition long enough to trip keepalives does.
//! * Delay: each chunk is held back by a delay (plus jitter), keeping order.
//! * Loss: TCP does not lose bytes, it retransmits; a lost segment shows as a stall. With
//!   probability `loss` a chunk is held back an extra retransmission timeout (200–400 ms), and
//!   everything behind it waits (head-of-line blocking).

use rand::Rng;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The highest node id the address plan holds.
pub const MAX_ID: u64 = 110;

/// The address node `id` binds.
pub fn node_ip(id: u64) -> Ipv4Addr {
    assert!(
        (1..=110).contains(&id),
        "node ids 1 to 110 fit the address plan"
    );
    Ipv4Addr::new(127, 0, 0, 10 + id as u8)
}

/// The address of node `id`'s relay.
pub fn relay_ip(id: u64) -> Ipv4Addr {
    assert!(
        (1..=110).contains(&id),
        "node ids 1 to 110 fit the address plan"
    );
    Ipv4Addr::new(127, 0, 0, 130 + id as u8)
}

/// Delay and loss on a link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Shape {
    pub delay: Duration,
    pub jitter: Duration,
    /// Probability that a chunk stalls for a retransmission timeout.
    pub loss: f64,
}

#[derive(Default)]
struct Rules {
    /// Blocked links, as (smaller id, larger id).
    blocked: BTreeSet<(u64, u64)>,
    /// Shaped links, as (smaller id, larger id).
    shaped: HashMap<(u64, u64), Shape>,
}

fn link(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

struct Conn {
    from: Option<u64>,
    to: u64,
    poisoned: Arc<AtomicBool>,
    kill: watch::Sender<bool>,
}

/// Counters for the report.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct NetStats {
    pub connections: u64,
    pub forwarded_bytes: u64,
    pub dropped_bytes: u64,
    pub reset_on_heal: u64,
    pub stalls: u64,
}

struct Inner {
    rules: Mutex<Rules>,
    conns: Mutex<HashMap<u64, Conn>>,
    relays: Mutex<HashMap<u64, watch::Sender<bool>>>,
    next_conn: AtomicU64,
    connections: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    resets: AtomicU64,
    stalls: AtomicU64,
}

/// The relays and their rules. Cheap to clone.
#[derive(Clone)]
pub struct Net {
    inner: Arc<Inner>,
}

/// Which node a source address belongs to.
fn node_of(ip: IpAddr) -> Option<u64> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 127 && o[1] == 0 && o[2] == 0 && (11..=120).contains(&o[3]))
                .then(|| u64::from(o[3]) - 10)
        }
        IpAddr::V6(_) => None,
    }
}

enum Verdict {
    Drop,
    Pass(Duration),
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Net {
    pub fn new() -> Net {
        Net {
            inner: Arc::new(Inner {
                rules: Mutex::new(Rules::default()),
                conns: Mutex::new(HashMap::new()),
                relays: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(0),
                connections: AtomicU64::new(0),
                forwarded: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                resets: AtomicU64::new(0),
                stalls: AtomicU64::new(0),
            }),
        }
    }

    /// Starts node `id`'s relay on `listen`, forwarding to `upstream` (the node's cluster port).
    pub async fn start_relay(
        &self,
        id: u64,
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> std::io::Result<()> {
        let listener = TcpListener::bind(listen).await?;
        let (stop_tx, mut stop) = watch::channel(false);
        if let Some(old) = self.inner.relays.lock().unwrap().insert(id, stop_tx) {
            let _ = old.send(true);
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    r = listener.accept() => {
                        let Ok((sock, peer)) = r else { continue };
                        let inner = inner.clone();
                        tokio::spawn(async move { handle(inner, sock, peer, id, upstream).await });
                    }
                }
            }
        });
        Ok(())
    }

    /// Stops node `id`'s relay and closes every connection to or from it.
    pub fn stop_relay(&self, id: u64) {
        if let Some(tx) = self.inner.relays.lock().unwrap().remove(&id) {
            let _ = tx.send(true);
        }
        for c in self.inner.conns.lock().unwrap().values() {
            if c.to == id || c.from == Some(id) {
                let _ = c.kill.send(true);
            }
        }
    }

    /// Stops every relay.
    pub fn stop_all(&self) {
        let ids: Vec<u64> = self.inner.relays.lock().unwrap().keys().copied().collect();
        for id in ids {
            self.stop_relay(id);
        }
    }

    /// Blocks every link between nodes of different groups (and only those).
    pub fn partition(&self, groups: &[Vec<u64>]) {
        let mut blocked = BTreeSet::new();
        for (gi, g) in groups.iter().enumerate() {
            for h in groups.iter().skip(gi + 1) {
                for &a in g {
                    for &b in h {
                        blocked.insert(link(a, b));
                    }
                }
            }
        }
        self.set_blocked(blocked);
    }

    /// Blocks exactly these links.
    pub fn set_blocked(&self, links: BTreeSet<(u64, u64)>) {
        let links: BTreeSet<(u64, u64)> = links.into_iter().map(|(a, b)| link(a, b)).collect();
        self.inner.rules.lock().unwrap().blocked = links;
        self.reset_healed();
    }

    /// Delay and loss on these links (replacing any shaping).
    pub fn shape(&self, links: &[(u64, u64)], shape: Shape) {
        let mut r = self.inner.rules.lock().unwrap();
        r.shaped = links.iter().map(|&(a, b)| (link(a, b), shape)).collect();
    }

    /// Removes every block and every delay; connections that dropped bytes are reset.
    pub fn heal(&self) {
        {
            let mut r = self.inner.rules.lock().unwrap();
            r.blocked.clear();
            r.shaped.clear();
        }
        self.reset_healed();
    }

    /// The blocked links.
    pub fn blocked(&self) -> BTreeSet<(u64, u64)> {
        self.inner.rules.lock().unwrap().blocked.clone()
    }

    pub fn stats(&self) -> NetStats {
        let i = &self.inner;
        NetStats {
            connections: i.connections.load(Ordering::Relaxed),
            forwarded_bytes: i.forwarded.load(Ordering::Relaxed),
            dropped_bytes: i.dropped.load(Ordering::Relaxed),
            reset_on_heal: i.resets.load(Ordering::Relaxed),
            stalls: i.stalls.load(Ordering::Relaxed),
        }
    }

    /// Closes the poisoned connections of links that are no longer blocked.
    fn reset_healed(&self) {
        let blocked = self.inner.rules.lock().unwrap().blocked.clone();
        for c in self.inner.conns.lock().unwrap().values() {
            let Some(from) = c.from else { continue };
            if c.poisoned.load(Ordering::SeqCst) && !blocked.contains(&link(from, c.to)) {
                self.inner.resets.fetch_add(1, Ordering::Relaxed);
                let _ = c.kill.send(true);
            }
        }
    }
}

impl Inner {
    fn verdict(&self, from: Option<u64>, to: u64, poisoned: &AtomicBool) -> Verdict {
        let Some(from) = from else {
            return Verdict::Pass(Duration::ZERO);
        };
        let r = self.rules.lock().unwrap();
        if r.blocked.contains(&link(from, to)) {
            poisoned.store(true, Ordering::SeqCst);
        }
        if poisoned.load(Ordering::SeqCst) {
            return Verdict::Drop;
        }
        match r.shaped.get(&link(from, to)) {
            None => Verdict::Pass(Duration::ZERO),
            Some(s) => {
                let mut rng = rand::rng();
                let mut d = s.delay;
                if !s.jitter.is_zero() {
                    d += Duration::from_micros(rng.random_range(0..s.jitter.as_micros() as u64));
                }
                if s.loss > 0.0 && rng.random_bool(s.loss.min(1.0)) {
                    self.stalls.fetch_add(1, Ordering::Relaxed);
                    d += Duration::from_millis(rng.random_range(200..400));
                }
                Verdict::Pass(d)
            }
        }
    }
}

async fn handle(
    inner: Arc<Inner>,
    sock: TcpStream,
    peer: SocketAddr,
    to: u64,
    upstream: SocketAddr,
) {
    let from = node_of(peer.ip());
    let poisoned = Arc::new(AtomicBool::new(false));
    let (kill_tx, kill) = watch::channel(false);
    let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    inner.connections.fetch_add(1, Ordering::Relaxed);
    inner.conns.lock().unwrap().insert(
        id,
        Conn {
            from,
            to,
            poisoned: poisoned.clone(),
            kill: kill_tx,
        },
    );
    let blocked_now =
        from.is_some_and(|f| inner.rules.lock().unwrap().blocked.contains(&link(f, to)));
    if blocked_now {
        // Swallow: accept, forward nothing, until healed (reset) or the peer gives up.
        poisoned.store(true, Ordering::SeqCst);
        let (mut rd, _wr) = sock.into_split();
        let mut kill = kill.clone();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                _ = kill.changed() => break,
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => { inner.dropped.fetch_add(n as u64, Ordering::Relaxed); }
                },
            }
        }
    } else if let Ok(Ok(up)) =
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(upstream)).await
    {
        let _ = sock.set_nodelay(true);
        let _ = up.set_nodelay(true);
        let (cr, cw) = sock.into_split();
        let (ur, uw) = up.into_split();
        // from → to and to → from are the same link.
        let a = pump(
            inner.clone(),
            cr,
            uw,
            from,
            to,
            poisoned.clone(),
            kill.clone(),
        );
        let b = pump(
            inner.clone(),
            ur,
            cw,
            from,
            to,
            poisoned.clone(),
            kill.clone(),
        );
        tokio::join!(a, b);
    }
    inner.conns.lock().unwrap().remove(&id);
}

async fn pump(
    inner: Arc<Inner>,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    from: Option<u64>,
    to: u64,
    poisoned: Arc<AtomicBool>,
    kill: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = {
        let inner = inner.clone();
        let poisoned = poisoned.clone();
        let mut kill = kill.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut last = Instant::now();
            loop {
                let n = tokio::select! {
                    _ = kill.changed() => break,
                    r = rd.read(&mut buf) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    },
                };
                match inner.verdict(from, to, &poisoned) {
                    Verdict::Drop => {
                        inner.dropped.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Verdict::Pass(d) => {
                        let at = (Instant::now() + d).max(last);
                        last = at;
                        if tx.send((at, buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    };
    let writer = {
        let inner = inner.clone();
        let mut kill = kill.clone();
        async move {
            loop {
                let item = tokio::select! {
                    _ = kill.changed() => break,
                    it = rx.recv() => it,
                };
                let Some((at, chunk)) = item else {
                    // The reader side ended: pass the end of stream on.
                    let _ = wr.shutdown().await;
                    break;
                };
                tokio::select! {
                    _ = kill.changed() => break,
                    _ = tokio::time::sleep_until(at) => {}
                }
                if poisoned.load(Ordering::SeqCst) {
                    inner
                        .dropped
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    continue;
                }
                if wr.write_all(&chunk).await.is_err() {
                    break;
                }
                inner
                    .forwarded
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server(ip: Ipv4Addr) -> SocketAddr {
        let l = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// Connects to `to` from node `from`'s address.
    async fn dial(from: u64, to: SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(IpAddr::V4(node_ip(from)), 0))
            .unwrap();
        s.connect(to).await.unwrap()
    }

    async fn roundtrip(s: &mut TcpStream, within: Duration) -> bool {
        if s.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        matches!(
            tokio::time::timeout(within, s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        )
    }

    #[tokio::test]
    async fn blocks_heals_and_identifies_links_by_source_address() {
        let net = Net::new();
        let upstream = echo_server(node_ip(102)).await;
        let relay = SocketAddr::new(IpAddr::V4(relay_ip(102)), upstream.port());
        net.start_relay(102, relay, upstream).await.unwrap();
        let mut from1 = dial(101, relay).await;
        let mut from3 = dial(103, relay).await;
        assert!(roundtrip(&mut from1, Duration::from_secs(5)).await);
        assert!(roundtrip(&mut from3, Duration::from_secs(5)).await);
        // Partition {101} from {102, 103}: the existing connection from 101 goes silent,
        // 103's keeps working.
        net.partition(&[vec![101], vec![102, 103]]);
        assert!(!roundtrip(&mut from1, Duration::from_millis(300)).await);
        assert!(roundtrip(&mut from3, Duration::from_secs(5)).await);
        // A new connection from 101 is accepted but swallowed.
        let mut again = dial(101, relay).await;
        assert!(!roundtrip(&mut again, Duration::from_millis(300)).await);
        // Heal: the poisoned connections are reset; a new one works.
        net.heal();
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(5), from1.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        let mut fresh = dial(101, relay).await;
        assert!(roundtrip(&mut fresh, Duration::from_secs(5)).await);
        assert!(net.stats().dropped_bytes > 0 && net.stats().reset_on_heal >= 1);
        net.stop_all();
    }

    #[tokio::test]
    async fn delay_holds_bytes_back_in_order() {
        let net = Net::new();
        let upstream = echo_server(node_ip(105)).await;
        let relay = SocketAddr::new(IpAddr::V4(relay_ip(105)), upstream.port());
        net.start_relay(105, relay, upstream).await.unwrap();
        net.shape(
            &[(104, 105)],
            Shape {
                delay: Duration::from_millis(100),
                jitter: Duration::from_millis(20),
                loss: 0.0,
            },
        );
        let mut s = dial(104, relay).await;
        let t = std::time::Instant::now();
        for i in 0..5u8 {
            s.write_all(&[i]).await.unwrap();
        }
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [0, 1, 2, 3, 4]);
        // There and back: two delayed passes.
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        net.stop_all();
    }
}
