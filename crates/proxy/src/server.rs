//! The listener loop, graceful shutdown, and the task that recompiles the route table when the
//! replicated state or the leader changes.

use crate::conn::{Closing, ConnOpts, Tracked};
use crate::hop::HopKey;
use crate::memory::Pressure;
use crate::proxy::{LeaderTarget, Live, Shared};
use crate::stream::ClientStream;
use crate::table::{Registry, RouteTable};
use crate::tcp::TcpListeners;
use crate::tls::CertTable;
use crate::{Leader, ProxyConfig};
use arc_swap::ArcSwap;
use gateway_model::TcpListenerStatus;
use gateway_model::{Protocol, State};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio_rustls::TlsAcceptor;

/// Serves the data plane on `listener` until `shutdown` resolves (then stops accepting, lets in-flight requests finish).
///
/// Every change published on `state` or `leader` is compiled into a new route table and
/// swapped in atomically; requests already under way finish on the table they started with.
/// Returns once every connection has closed after `shutdown` (idle keep-alive connections are
/// closed at once; upgraded connections such as WebSockets are not waited for).
pub async fn serve(
    listener: TcpListener,
    state: watch::Receiver<Arc<State>>,
    leader: watch::Receiver<Option<Leader>>,
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listeners = Listeners {
        http: listener,
        https: None,
        tcp_status: None,
    };
    serve_all(listeners, state, leader, config, shutdown).await
}

/// The data plane's listeners.
pub struct Listeners {
    /// Plain HTTP/1.1 and h2c.
    pub http: TcpListener,
    /// HTTPS (TLS with SNI from the replicated certificates; ALPN h2 and http/1.1).
    pub https: Option<TcpListener>,
    /// Where the state of this node's TCP route listeners is published (listening, or why
    /// not); TCP routes are served whether or not it is given.
    pub tcp_status: Option<watch::Sender<Vec<TcpListenerStatus>>>,
}

/// Like [`serve`], on every listener of `listeners`: the HTTPS one, if any, terminates TLS
/// with the certificates of the replicated state (swapped in when they change, without
/// touching open connections) and then serves HTTP/1.1 or, when the client chose `h2` by
/// ALPN, HTTP/2, exactly as the plain listener does.
pub async fn serve_all(
    listeners: Listeners,
    mut state: watch::Receiver<Arc<State>>,
    mut leader: watch::Receiver<Option<Leader>>,
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Listeners {
        http: listener,
        https,
        tcp_status,
    } = listeners;
    let key = HopKey::new(&config.hop_key);
    let workers = config.workers.max(1);
    crate::upstream::expect_workers(workers);
    let mut registry = Registry::default();
    let (live, compiled_from) =
        compile(&mut state, &mut leader, config.node_id, &key, &mut registry);
    // A head larger than max_header_bytes gets 431; a head not complete within
    // header_read_timeout closes the connection (slowloris); an idle keep-alive connection is
    // closed after keep_alive_timeout.
    let conn = ConnOpts {
        max_head: config.max_header_bytes.max(8192),
        header_timeout: config.header_read_timeout,
        keep_alive: config.keep_alive_timeout,
    };
    let shared = Arc::new(Shared {
        node_id: config.node_id,
        key,
        max_replay_body: config.max_replay_body,
        trusted: config.trusted_proxies.clone().into_boxed_slice(),
        live: ArcSwap::from_pointee(live),
        swapped: Notify::new(),
        conn,
        https_port: config.https_port,
        closing: Closing::default(),
        metrics: config.metrics.clone(),
        access_log: config.access_log,
        health: config.health.clone(),
        limits: Default::default(),
    });
    shared.limits.set(&compiled_from.limits);
    shared.metrics.set_table(shared.live.load().table.clone());
    let certs = Arc::new(ArcSwap::from_pointee(CertTable::compile(&compiled_from)));
    let acceptor = TlsAcceptor::from(Arc::new(crate::tls::server_config(certs.clone())));
    if let Some(l) = &https {
        tracing::info!(addr = %l.local_addr()?, certs = certs.load().loaded, "HTTPS listening");
    }
    let tcp_status = tcp_status.unwrap_or_else(|| watch::channel(Vec::new()).0);
    let mut tcp = TcpListeners::new(config.node_id, tcp_status);
    tcp.update(&compiled_from, &shared);
    let watcher = tokio::spawn(watch_changes(
        tcp,
        shared.clone(),
        state,
        leader,
        registry,
        compiled_from,
        certs,
    ));
    tracing::info!(
        addr = %listener.local_addr()?,
        node = config.node_id,
        "data plane listening"
    );

    // Idle connections have no timer each: one tick wakes the clients' to look at their
    // deadlines and lets go of the backends' that are stale.
    let ticker = tokio::spawn({
        let shared = shared.clone();
        async move {
            let mut every = tokio::time::interval(crate::conn::tick_interval(&shared.conn));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                shared.closing.tick();
                shared.sweep_idle_backends();
            }
        }
    });
    // The memory guard: shed idle connections and answer new ones 503 above the soft mark,
    // accept nothing above the limit.
    let pressure = config.memory.as_ref().map(|g| g.pressure());
    let shedder = pressure.clone().map(|mut p| {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                let now = *p.borrow_and_update();
                shared.closing.shed(now != Pressure::Normal);
                if p.changed().await.is_err() {
                    return;
                }
            }
        })
    });

    // The workers: one thread each, with a single-threaded runtime that serves the
    // connections handed to it to the end (the model of nginx's worker processes): a
    // connection's requests, its backend connections and their readiness stay on one thread,
    // with no work stealing and no cross-thread wake-ups in the hot path. The first worker
    // also accepts, and hands each new connection to the worker serving the fewest (itself
    // when it is among them), as HAProxy's listener queues do: only that worker wakes, where
    // with every worker watching the listening sockets each new connection woke all the idle
    // ones and all but one found nothing to accept.
    // When this future ends or is dropped, `stop` goes first, which stops the accept loop and
    // so the handing over; the guard then tells the connections to close, as a shutdown would.
    let _close = CloseOnDrop(shared.clone());
    let (stop, stopped) = watch::channel(false);
    let load: Arc<[AtomicUsize]> = (0..workers).map(|_| AtomicUsize::new(0)).collect();
    shared.metrics.set_workers(load.clone());
    let mut inboxes = Vec::new();
    let mut receivers = Vec::new();
    for _ in 1..workers {
        let (tx, rx) = mpsc::unbounded_channel();
        inboxes.push(tx);
        receivers.push(rx);
    }
    let mut accept = Some(Acceptor {
        http: listener.into_std()?,
        https: https.map(|l| l.into_std()).transpose()?,
        shared: shared.clone(),
        acceptor: acceptor.clone(),
        pressure: pressure.clone(),
        stop: stopped.clone(),
        workers: Workers {
            load: load.clone(),
            inboxes,
        },
    });
    let mut receivers = receivers.into_iter();
    let mut accepting = Vec::new();
    let mut finished = Vec::new();
    for index in 0..workers {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let role = match accept.take() {
            Some(a) => Role::Accept(a),
            None => Role::Serve(Inbox {
                from: receivers
                    .next()
                    .expect("one inbox per worker after the first"),
                index,
                acceptor: acceptor.clone(),
            }),
        };
        let shared = shared.clone();
        let (accept_done, accept_rx) = tokio::sync::oneshot::channel::<()>();
        let (all_done, all_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("gateway-http-{index}"))
            .spawn(move || {
                crate::upstream::set_worker(index + 1);
                let _timers = crate::timer::keep_on_this_thread();
                let _buffers = crate::spare::keep_on_this_thread();
                runtime.block_on(async move {
                    match role {
                        Role::Accept(a) => {
                            if let Err(e) = a.run().await {
                                tracing::error!(error = %e, "the data plane could not listen");
                            }
                        }
                        Role::Serve(inbox) => inbox.run().await,
                    }
                    drop(accept_done);
                    // Serve what this worker was given until every connection is gone.
                    shared.closing.all_gone().await;
                });
                drop(all_done);
            })?;
        accepting.push(accept_rx);
        finished.push(all_rx);
    }

    shutdown.await;
    let _ = stop.send(true);
    for worker in accepting {
        let _ = worker.await;
    }
    if let Some(s) = shedder {
        s.abort();
    }
    tracing::info!("data plane shutting down");
    shared.closing.close();
    for worker in finished {
        let _ = worker.await;
    }
    watcher.abort();
    ticker.abort();
    Ok(())
}

/// Closes the server's connections (idle ones at once, others after their request) when
/// dropped.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.closing.close();
    }
}

/// What a data plane worker does besides serving: accept, or take what the acceptor hands it.
enum Role {
    Accept(Acceptor),
    Serve(Inbox),
}

/// The accept loop (on the first worker) and what it needs.
struct Acceptor {
    http: std::net::TcpListener,
    https: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    pressure: Option<watch::Receiver<Pressure>>,
    stop: watch::Receiver<bool>,
    workers: Workers,
}

/// The connections each worker serves now, and the way to the workers after the first.
struct Workers {
    load: Arc<[AtomicUsize]>,
    inboxes: Vec<mpsc::UnboundedSender<Handoff>>,
}

/// A connection accepted for another worker, its place already counted.
struct Handoff {
    stream: std::net::TcpStream,
    peer: std::net::SocketAddr,
    tls: bool,
    tracked: Tracked,
    load: Load,
}

/// Counts a connection on its worker until dropped.
struct Load {
    all: Arc<[AtomicUsize]>,
    index: usize,
}

impl Load {
    fn new(all: &Arc<[AtomicUsize]>, index: usize) -> Load {
        all[index].fetch_add(1, Relaxed);
        Load {
            all: all.clone(),
            index,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.all[self.index].fetch_sub(1, Relaxed);
    }
}

/// Serves `stream` on the current worker: TLS first for the HTTPS listener's connections.
fn spawn_conn(
    tracked: Tracked,
    load: Load,
    acceptor: &TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    tls: bool,
) {
    if tls {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _load = load;
            handshake(tracked, acceptor, stream, peer).await;
        });
    } else {
        tokio::spawn(async move {
            let _load = load;
            crate::conn::serve(tracked, ClientStream::Plain(stream), peer).await;
        });
    }
}

impl Workers {
    /// Serves a new connection on the worker serving the fewest now: the first of them (the
    /// acceptor's own worker before the others) on a tie.
    fn place(
        &self,
        tracked: Tracked,
        acceptor: &TlsAcceptor,
        stream: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        tls: bool,
    ) {
        let index = self
            .load
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| n.load(Relaxed))
            .map_or(0, |(i, _)| i);
        let load = Load::new(&self.load, index);
        if index == 0 {
            spawn_conn(tracked, load, acceptor, stream, peer, tls);
            return;
        }
        // Out of this runtime's reactor, into the other worker's when it takes it.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "could not hand a connection over");
                return;
            }
        };
        let handoff = Handoff {
            stream,
            peer,
            tls,
            tracked,
            load,
        };
        if self.inboxes[index - 1].send(handoff).is_err() {
            // Its worker stopped (only a panic stops one before the acceptor): the connection
            // closes as the hand-off is dropped.
            tracing::error!(%peer, worker = index, "a data plane worker is gone");
        }
    }
}

/// The connections handed to a worker after the first.
struct Inbox {
    from: mpsc::UnboundedReceiver<Handoff>,
    index: usize,
    acceptor: TlsAcceptor,
}

impl Inbox {
    /// Serves what the acceptor hands over until it stops.
    async fn run(mut self) {
        while let Some(h) = self.from.recv().await {
            match tokio::net::TcpStream::from_std(h.stream) {
                Ok(stream) => spawn_conn(h.tracked, h.load, &self.acceptor, stream, h.peer, h.tls),
                Err(e) => {
                    tracing::warn!(peer = %h.peer, worker = self.index, error = %e, "could not take a connection over");
                }
            }
        }
    }
}

impl Acceptor {
    /// Accepts until the server stops, placing each connection on a worker.
    async fn run(self) -> std::io::Result<()> {
        let Acceptor {
            http,
            https,
            shared,
            acceptor,
            mut pressure,
            mut stop,
            workers,
        } = self;
        let listener = TcpListener::from_std(http)?;
        let https = https.map(TcpListener::from_std).transpose()?;
        let shutdown = stop.wait_for(|stop| *stop);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            if let Some(p) = &mut pressure
                && *p.borrow_and_update() == Pressure::Refusing
            {
                // New connections wait in the kernel's backlog until memory falls.
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = p.wait_for(|x| *x != Pressure::Refusing) => continue,
                }
            }
            let pressure_changed = async {
                match &mut pressure {
                    Some(p) => {
                        if p.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let (accepted, tls) = tokio::select! {
                _ = &mut shutdown => break,
                // Look again: at the limit, stop accepting at once.
                () = pressure_changed => continue,
                accepted = listener.accept() => (accepted, false),
                accepted = accept_maybe(&https) => (accepted, true),
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            if pressure
                .as_ref()
                .is_some_and(|p| *p.borrow() != Pressure::Normal)
            {
                // Under memory pressure: a fast 503 in plain HTTP; a TLS connection is closed
                // before its handshake (that costs less than answering it).
                if !tls {
                    tokio::spawn(shed(stream));
                }
                continue;
            }
            // The cluster's connection limit (as HAProxy's maxconn): a connection past it is
            // held unserved, as the kernel's backlog would hold it, and nothing more is
            // accepted until one closes or the limit changes.
            let tracked = loop {
                let room = shared.limits.room.notified();
                let mut room = std::pin::pin!(room);
                room.as_mut().enable();
                if let Some(t) = Tracked::within(&shared, shared.limits.max_connections()) {
                    break Some(t);
                }
                tokio::select! {
                    _ = &mut shutdown => break None,
                    () = room => {}
                }
            };
            let Some(tracked) = tracked else { break };
            workers.place(tracked, &acceptor, stream, peer, tls);
        }
        Ok(())
    }
}

/// The fast answer to a connection accepted under memory pressure.
const SHED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 70\r\nConnection: close\r\n\r\nthe gateway is shedding load (memory above its soft mark); retry soon\n";

async fn shed(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(SHED_RESPONSE).await;
        let _ = stream.shutdown().await;
        // Read what the client sent until it closes: closing with its request unread would
        // reset the connection and could destroy the answer before it is read.
        let mut sink = [0u8; 4096];
        let mut left = 64 << 10;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n.min(left),
            }
        }
    })
    .await;
}

/// Accepts on `listener`, or never when there is none.
async fn accept_maybe(
    listener: &Option<TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Completes a TLS handshake (within the header read timeout), then serves the connection
/// as HTTP/2 if the client chose it by ALPN, else as HTTP/1.1.
async fn handshake(
    tracked: Tracked,
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) {
    let within = tracked.conn.header_timeout;
    let tls = match tokio::time::timeout(within, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let stream = ClientStream::Tls(Box::new(tls));
    if h2 {
        crate::conn::serve_h2_tls(tracked, stream, peer).await;
    } else {
        crate::conn::serve(tracked, stream, peer).await;
    }
}

fn compile(
    state: &mut watch::Receiver<Arc<State>>,
    leader: &mut watch::Receiver<Option<Leader>>,
    node_id: u64,
    key: &HopKey,
    registry: &mut Registry,
) -> (Live, Arc<State>) {
    let state = state.borrow_and_update().clone();
    let table = Arc::new(RouteTable::compile(&state, node_id, key, registry));
    let leader = leader.borrow_and_update().clone();
    let live = Live {
        table,
        leader: leader_target(&leader, registry),
    };
    (live, state)
}

fn leader_target(leader: &Option<Leader>, registry: &mut Registry) -> Option<LeaderTarget> {
    leader.as_ref().map(|l| LeaderTarget {
        id: l.id,
        address: l.http_addr.as_str().into(),
        endpoint: registry.endpoints.get_with(
            &l.http_addr,
            Protocol::Http1,
            None,
            crate::upstream::LEADER_KEEP_ALIVE,
        ),
    })
}

/// Recompiles on every change until both senders are gone (the last config then stays).
async fn watch_changes(
    mut tcp: TcpListeners,
    shared: Arc<Shared>,
    mut state: watch::Receiver<Arc<State>>,
    mut leader: watch::Receiver<Option<Leader>>,
    mut registry: Registry,
    // The state the live table was compiled from.
    mut compiled_from: Arc<State>,
    certs: Arc<ArcSwap<CertTable>>,
) {
    let (mut state_open, mut leader_open) = (true, true);
    // TCP listeners that could not bind are tried again on this tick (and on every change).
    let mut rebind = tokio::time::interval(Duration::from_secs(2));
    rebind.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while state_open || leader_open {
        tokio::select! {
            _ = rebind.tick(), if tcp.has_failures() => {
                tcp.update(&compiled_from, &shared);
            }
            changed = state.changed(), if state_open => {
                if changed.is_err() {
                    state_open = false;
                    continue;
                }
                let snapshot = state.borrow_and_update().clone();
                if compiled_from.limits != snapshot.limits {
                    shared.limits.set(&snapshot.limits);
                    tracing::info!(limits = ?snapshot.limits, "node limits changed");
                }
                if !compiled_from.certs.ptr_eq(&snapshot.certs) && compiled_from.certs != snapshot.certs {
                    let table = CertTable::compile(&snapshot);
                    tracing::info!(revision = snapshot.revision, certs = table.loaded, "certificates swapped");
                    certs.store(Arc::new(table));
                }
                if crate::table::same_routing(&compiled_from, &snapshot) {
                    compiled_from = snapshot;
                    continue;
                }
                let table = Arc::new(RouteTable::compile(&snapshot, shared.node_id, &shared.key, &mut registry));
                let tcp_changed = !compiled_from.tcp_routes.ptr_eq(&snapshot.tcp_routes);
                compiled_from = snapshot.clone();
                let leader = shared.live.load().leader.as_ref().map(|l| LeaderTarget {
                    id: l.id,
                    address: l.address.clone(),
                    endpoint: l.endpoint.clone(),
                });
                shared.swap(Live { table, leader });
                // After the swap: new TCP listeners find their pools in the live table.
                if tcp_changed {
                    tcp.update(&snapshot, &shared);
                }
                tracing::debug!(revision = snapshot.revision, "route table swapped");
            }
            changed = leader.changed(), if leader_open => {
                if changed.is_err() {
                    leader_open = false;
                    continue;
                }
                let current = leader.borrow_and_update().clone();
                let target = leader_target(&current, &mut registry);
                let table = shared.live.load().table.clone();
                shared.swap(Live { table, leader: target });
                tracing::debug!(leader = ?current, "leader changed");
            }
        }
    }
}
