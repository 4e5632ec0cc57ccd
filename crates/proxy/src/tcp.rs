//! TCP routes: listeners bound and unbound at runtime as the replicated TCP routes change,
//! each proxying raw bytes to a backend of its pool.
//!
//! * **Listeners.** A node listens for every TCP route whose `nodes` is empty or names it.
//!   A route added binds its address; a route removed (or moved to another address) stops
//!   accepting, while connections already open go on until they end. An address that cannot be
//!   bound is reported (route, address, error) on the status this module publishes, which the
//!   node shows on `/status`; binding is tried again on every configuration change.
//! * **Backends** are chosen by the pool's balancer from the current route table (client IP
//!   for `ip_hash`), honouring each backend's `max_connections`; a backend that refuses or
//!   does not answer within `connect_timeout_ms` is skipped for the next one, until every
//!   backend was tried (then the client connection is closed).
//! * **Bytes** flow both ways until both sides have finished: when one side closes its
//!   sending half, the other side's sending half is shut down too (half-close), and reading
//!   goes on the other way. A connection with no byte either way for `idle_timeout_ms` is
//!   closed. A route's `max_connections` caps its open client connections on this node;
//!   connections beyond it are closed at once.
//! * **PROXY protocol** v1 or v2 headers carry the client's address to the backend when the
//!   route asks for it.

use crate::proxy::Shared;
use arc_swap::ArcSwap;
use gateway_model::{
    DEFAULT_TCP_CONNECT_TIMEOUT_MS, DEFAULT_TCP_IDLE_TIMEOUT_MS, ProxyProtocol, State,
    TcpListenerStatus, TcpRoute,
};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A route's settings as its listener uses them; replaced whole when the route changes.
struct Conf {
    route: TcpRoute,
    idle: Duration,
    connect: Duration,
    /// Open client connections allowed (`max_connections`).
    limit: Option<Arc<Semaphore>>,
}

impl Conf {
    fn new(route: &TcpRoute) -> Conf {
        Conf {
            route: route.clone(),
            idle: Duration::from_millis(
                route.idle_timeout_ms.unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT_MS),
            ),
            connect: Duration::from_millis(
                route
                    .connect_timeout_ms
                    .unwrap_or(DEFAULT_TCP_CONNECT_TIMEOUT_MS),
            ),
            limit: route
                .max_connections
                .map(|n| Arc::new(Semaphore::new(n as usize))),
        }
    }
}

/// One bound listener.
struct Running {
    conf: Arc<ArcSwap<Conf>>,
    accept: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Stops accepting (the listener is dropped with the task); open connections go on.
        self.accept.abort();
    }
}

/// The TCP listeners of this node.
pub(crate) struct TcpListeners {
    node_id: u64,
    /// By listen address.
    running: BTreeMap<String, Running>,
    status: watch::Sender<Vec<TcpListenerStatus>>,
}

impl TcpListeners {
    pub(crate) fn new(node_id: u64, status: watch::Sender<Vec<TcpListenerStatus>>) -> Self {
        TcpListeners {
            node_id,
            running: BTreeMap::new(),
            status,
        }
    }

    /// Binds, reconfigures and unbinds listeners to match the TCP routes of `state`.
    pub(crate) fn update(&mut self, state: &State, shared: &Arc<Shared>) {
        let wanted: BTreeMap<&str, &TcpRoute> = state
            .tcp_routes
            .values()
            .filter(|r| r.nodes.is_empty() || r.nodes.contains(&self.node_id))
            .map(|r| (r.listen.as_str(), r))
            .collect();
        self.running.retain(|listen, _| {
            let keep = wanted.contains_key(listen.as_str());
            if !keep {
                tracing::info!(listen = %listen, "TCP listener closed");
            }
            keep
        });
        let mut report = Vec::new();
        for (listen, route) in wanted {
            let status = |error: Option<String>| TcpListenerStatus {
                route: route.name.clone(),
                listen: listen.to_string(),
                listening: error.is_none(),
                error,
            };
            if let Some(r) = self.running.get(listen) {
                let changed = r.conf.load().route != *route;
                if changed {
                    r.conf.store(Arc::new(Conf::new(route)));
                }
                report.push(status(None));
                continue;
            }
            match bind(listen) {
                Ok(listener) => {
                    let conf = Arc::new(ArcSwap::from_pointee(Conf::new(route)));
                    tracing::info!(route = %route.name, listen = %listen, pool = %route.pool, "TCP listener bound");
                    let accept = tokio::spawn(accept_loop(listener, conf.clone(), shared.clone()));
                    self.running
                        .insert(listen.to_string(), Running { conf, accept });
                    report.push(status(None));
                }
                Err(e) => {
                    tracing::warn!(route = %route.name, listen = %listen, error = %e, "TCP listener cannot bind");
                    report.push(status(Some(format!("cannot listen on {listen}: {e}"))));
                }
            }
        }
        self.status.send_replace(report);
    }

    /// Whether some wanted listener could not be bound (worth trying again later).
    pub(crate) fn has_failures(&self) -> bool {
        self.status.borrow().iter().any(|s| !s.listening)
    }
}

fn bind(listen: &str) -> io::Result<TcpListener> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not an ip:port address"))?;
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

async fn accept_loop(listener: TcpListener, conf: Arc<ArcSwap<Conf>>, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conf = conf.load_full();
        let permit = match &conf.limit {
            None => None,
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    tracing::debug!(route = %conf.route.name, %peer, "TCP route at max_connections; connection closed");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(shared.clone(), conf, stream, peer, permit));
    }
}

/// Proxies one client connection.
async fn serve(
    shared: Arc<Shared>,
    conf: Arc<Conf>,
    client: TcpStream,
    peer: SocketAddr,
    _permit: Option<OwnedSemaphorePermit>,
) {
    let route = &conf.route;
    let live = shared.live.load_full();
    let Some(pool) = live.table.pool_named(&route.pool) else {
        tracing::warn!(route = %route.name, pool = %route.pool, "TCP route's pool is missing; connection closed");
        return;
    };
    let ctx = crate::balance::PickCtx {
        client_ip: peer.ip(),
        pinned: None,
    };
    let mut tried = crate::balance::Tried::default();
    let (backend, in_flight) = loop {
        let Some(picked) = pool.pick(crate::balance::Scope::All, &ctx, &tried) else {
            tracing::warn!(route = %route.name, pool = %route.pool, %peer, "no TCP backend could be reached; connection closed");
            return;
        };
        tried.push(picked.idx);
        let b = &pool.backends[picked.idx];
        let Some(in_flight) = pool.try_enter(picked.idx) else {
            continue; // at its max_connections
        };
        match tokio::time::timeout(conf.connect, TcpStream::connect(&*b.address)).await {
            Ok(Ok(s)) => break (s, in_flight),
            Ok(Err(e)) => {
                tracing::info!(route = %route.name, backend = %b.id, address = %b.address, error = %e, "TCP backend connect failed; trying the next");
            }
            Err(_) => {
                tracing::info!(route = %route.name, backend = %b.id, address = %b.address, "TCP backend connect timed out; trying the next");
            }
        }
    };
    let _ = backend.set_nodelay(true);
    let mut backend = backend;
    if let Some(version) = route.proxy_protocol {
        let local = client.local_addr().unwrap_or(peer);
        let header = match proxy_header(version, peer, local) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the PROXY header");
                return;
            }
        };
        if backend.write_all(&header).await.is_err() {
            return;
        }
    }
    if let Err(e) = pipe(client, backend, conf.idle).await {
        tracing::debug!(route = %route.name, %peer, error = %e, "TCP connection ended with an error");
    }
    drop(in_flight);
}

/// The PROXY protocol header announcing a connection from `client` to `local`.
fn proxy_header(
    version: ProxyProtocol,
    client: SocketAddr,
    local: SocketAddr,
) -> io::Result<Vec<u8>> {
    // Both addresses in one family: an IPv4 client on an IPv6 socket is shown as mapped.
    let (client, local) = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (client, local)
        }
        (c, l) => (to_v6(c), to_v6(l)),
    };
    match version {
        ProxyProtocol::V1 => Ok(ppp::v1::Addresses::from((client, local))
            .to_string()
            .into_bytes()),
        ProxyProtocol::V2 => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, local),
        )
        .build(),
    }
}

fn to_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    }
}

/// Copies bytes both ways until both directions have ended, passing half-closes on; closes
/// both after `idle` without a byte either way.
async fn pipe(client: TcpStream, backend: TcpStream, idle: Duration) -> io::Result<()> {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (mut cr, mut cw) = client.into_split();
    let (mut br, mut bw) = backend.into_split();
    let both = async {
        tokio::try_join!(
            copy_half(&mut cr, &mut bw, &last, start),
            copy_half(&mut br, &mut cw, &last, start)
        )
    };
    let every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let watchdog = async {
        loop {
            tokio::time::sleep(every).await;
            let quiet = start
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle {
                return;
            }
        }
    };
    tokio::select! {
        done = both => done.map(|_| ()),
        () = watchdog => {
            tracing::debug!("TCP connection idle; closed");
            Ok(())
        }
    }
}

/// Copies one direction; at its end shuts the other side's sending half down.
async fn copy_half<R, W>(r: &mut R, w: &mut W, last: &AtomicU64, start: Instant) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_headers_name_the_client() {
        let c: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let l: SocketAddr = "127.0.0.1:6380".parse().unwrap();
        let v1 = proxy_header(ProxyProtocol::V1, c, l).unwrap();
        assert_eq!(v1, b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 6380\r\n");
        let v2 = proxy_header(ProxyProtocol::V2, c, l).unwrap();
        let parsed = ppp::v2::Header::try_from(&v2[..]).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((c, l)),
            "the v2 header carries both addresses"
        );
    }

    #[tokio::test]
    async fn half_close_passes_on_and_idle_connections_close() {
        // backend: echoes what it gets, then closes after the client half-closed
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let baddr = backend.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = backend.accept().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            s.write_all(&all).await.unwrap();
        });
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let faddr = front.local_addr().unwrap();
        tokio::spawn(async move {
            let (c, _) = front.accept().await.unwrap();
            let b = TcpStream::connect(baddr).await.unwrap();
            pipe(c, b, Duration::from_secs(30)).await.unwrap();
        });
        let mut client = TcpStream::connect(faddr).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello", "the answer after a half-close arrives");

        // idle: a backend that never answers; the pipe ends after the idle timeout
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let saddr = silent.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (s, _) = silent.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        });
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let faddr = front.local_addr().unwrap();
        let piped = tokio::spawn(async move {
            let (c, _) = front.accept().await.unwrap();
            let b = TcpStream::connect(saddr).await.unwrap();
            pipe(c, b, Duration::from_millis(200)).await
        });
        let mut client = TcpStream::connect(faddr).await.unwrap();
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut byte))
            .await
            .expect("the idle connection is closed")
            .unwrap();
        assert_eq!(n, 0);
        piped.await.unwrap().unwrap();
    }
}
