//! The listener loop, graceful shutdown, and the task that recompiles the route table when the
//! replicated state or the leader changes.

use crate::guard::{ConnGuard, Guarded, Scanner};
use crate::hop::HopKey;
use crate::proxy::{LeaderTarget, Live, Shared, handle};
use crate::table::{Registry, RouteTable};
use crate::{Leader, ProxyConfig};
use arc_swap::ArcSwap;
use gateway_model::{Protocol, State};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// Serves the data plane on `listener` until `shutdown` resolves (then stops accepting, lets in-flight requests finish).
///
/// Every change published on `state` or `leader` is compiled into a new route table and
/// swapped in atomically; requests already under way finish on the table they started with.
/// Returns once every connection has closed after `shutdown` (idle keep-alive connections are
/// closed at once; upgraded connections such as WebSockets are not waited for).
pub async fn serve(
    listener: TcpListener,
    mut state: watch::Receiver<Arc<State>>,
    mut leader: watch::Receiver<Option<Leader>>,
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let key = HopKey::new(&config.hop_key);
    let mut registry = Registry::default();
    let (live, compiled_from) =
        compile(&mut state, &mut leader, config.node_id, &key, &mut registry);
    let shared = Arc::new(Shared {
        node_id: config.node_id,
        key,
        max_replay_body: config.max_replay_body,
        trusted: config.trusted_proxies.clone().into_boxed_slice(),
        live: ArcSwap::from_pointee(live),
        swapped: Notify::new(),
    });
    let watcher = tokio::spawn(watch_changes(
        shared.clone(),
        state,
        leader,
        registry,
        compiled_from,
    ));
    tracing::info!(
        addr = %listener.local_addr()?,
        node = config.node_id,
        "data plane listening"
    );

    // hyper answers a head larger than max_header_bytes with 431, and closes a connection
    // whose head is not complete within header_read_timeout (slowloris).
    let max_head = config.max_header_bytes.max(8192);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(max_head);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let guard = Arc::new(ConnGuard::default());
        let stream = Guarded::new(stream, Scanner::new(max_head, guard.clone()));
        let service = service_fn(move |req| handle(shared.clone(), peer, guard.clone(), req));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(connections = graceful.count(), "data plane shutting down");
    graceful.shutdown().await;
    watcher.abort();
    Ok(())
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
        endpoint: registry.endpoints.get(&l.http_addr, Protocol::Http1),
    })
}

/// Recompiles on every change until both senders are gone (the last config then stays).
async fn watch_changes(
    shared: Arc<Shared>,
    mut state: watch::Receiver<Arc<State>>,
    mut leader: watch::Receiver<Option<Leader>>,
    mut registry: Registry,
    // The state the live table was compiled from.
    mut compiled_from: Arc<State>,
) {
    let (mut state_open, mut leader_open) = (true, true);
    while state_open || leader_open {
        tokio::select! {
            changed = state.changed(), if state_open => {
                if changed.is_err() {
                    state_open = false;
                    continue;
                }
                let snapshot = state.borrow_and_update().clone();
                if crate::table::same_routing(&compiled_from, &snapshot) {
                    continue;
                }
                let table = Arc::new(RouteTable::compile(&snapshot, shared.node_id, &shared.key, &mut registry));
                compiled_from = snapshot.clone();
                let leader = shared.live.load().leader.as_ref().map(|l| LeaderTarget {
                    id: l.id,
                    address: l.address.clone(),
                    endpoint: l.endpoint.clone(),
                });
                shared.swap(Live { table, leader });
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
