//! Test harness: small hyper backends, a `serve()` instance driven through watches we hold,
//! a client, and builders for the replicated state.

use bytes::Bytes;
use futures::future::BoxFuture;
use gateway_model::{Backend, Balance, Pool, Route, State, WritePolicy};
use gateway_proxy::{Leader, ProxyConfig, serve};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The hop key every test node shares.
pub const KEY: &[u8] = b"test cluster key";

pub type Handler =
    Arc<dyn Fn(String, Parts, Bytes) -> BoxFuture<'static, Response<Full<Bytes>>> + Send + Sync>;

/// Answers like the demo backend: "<method lower> from NAME\n", with `x-backend: NAME` and
/// `x-body-len`; `/headers` answers the request headers it received, one `name: value` a line.
pub fn default_handler() -> Handler {
    Arc::new(|name, parts, body| Box::pin(async move { answer(&name, &parts, &body) }))
}

pub fn answer(name: &str, parts: &Parts, body: &Bytes) -> Response<Full<Bytes>> {
    let text = if parts.uri.path() == "/headers" {
        let mut lines: Vec<String> = parts
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
            .collect();
        lines.sort();
        lines.join("\n") + "\n"
    } else {
        format!("{} from {name}\n", parts.method.as_str().to_lowercase())
    };
    Response::builder()
        .header("x-backend", name)
        .header("x-body-len", body.len())
        .body(Full::new(Bytes::from(text)))
        .unwrap()
}

/// A running test backend. Dropping it stops accepting.
pub struct TestBackend {
    /// `host:port` or `unix:/path`, as a pool names it.
    pub address: String,
    pub hits: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestBackend {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve_backend_conn<IO>(io: IO, name: String, handler: Handler, hits: Arc<AtomicUsize>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let (name, handler, hits) = (name.clone(), handler.clone(), hits.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            hits.fetch_add(1, Ordering::SeqCst);
            Ok::<_, hyper::Error>(handler(name, parts, body).await)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

/// A backend on 127.0.0.1 answering with `handler`.
pub async fn backend_with(name: &str, handler: Handler) -> TestBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (n, h, c) = (name.to_string(), hits.clone(), connections.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_backend_conn(
                stream,
                n.clone(),
                handler.clone(),
                h.clone(),
            ));
        }
    });
    TestBackend {
        address,
        hits,
        connections,
        task,
    }
}

/// A backend answering like the demo backend.
pub async fn backend(name: &str) -> TestBackend {
    backend_with(name, default_handler()).await
}

/// A backend on a unix socket at `path`.
pub async fn unix_backend(name: &str, path: &std::path::Path) -> TestBackend {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (n, h, c) = (name.to_string(), hits.clone(), connections.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_backend_conn(
                stream,
                n.clone(),
                default_handler(),
                h.clone(),
            ));
        }
    });
    TestBackend {
        address: format!("unix:{}", path.display()),
        hits,
        connections,
        task,
    }
}

/// An address where nothing listens (bound, then released).
pub async fn dead_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

/// A `serve()` instance with the watches that drive it.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub state: watch::Sender<Arc<State>>,
    pub leader: watch::Sender<Option<Leader>>,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestProxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn as_leader(&self, id: u64) -> Leader {
        Leader {
            id,
            http_addr: self.addr.to_string(),
        }
    }

    /// Publishes a new state (revision bumped).
    pub fn set_state(&self, mut state: State) {
        state.revision = self.state.borrow().revision + 1;
        self.state.send_replace(Arc::new(state));
    }

    /// Stops accepting and waits for `serve` to return.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

pub async fn proxy(node_id: u64, state: State, leader: Option<Leader>) -> TestProxy {
    proxy_with(ProxyConfig::new(node_id, KEY), state, leader).await
}

pub async fn proxy_with(config: ProxyConfig, state: State, leader: Option<Leader>) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (state_tx, state_rx) = watch::channel(Arc::new(state));
    let (leader_tx, leader_rx) = watch::channel(leader);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state_rx, leader_rx, config, async move {
        let _ = stopped.await;
    }));
    TestProxy {
        addr,
        state: state_tx,
        leader: leader_tx,
        stop: Some(stop),
        task: Some(task),
    }
}

pub fn be(id: &str, address: &str, node: Option<u64>) -> Backend {
    Backend {
        id: id.into(),
        address: address.into(),
        node,
        ..Default::default()
    }
}

pub fn pool(name: &str, balance: Balance, backends: Vec<Backend>) -> Pool {
    Pool {
        name: name.into(),
        balance,
        backends,
        ..Default::default()
    }
}

pub fn route(name: &str, hosts: &[&str], prefix: &str, pool: &str) -> Route {
    Route {
        name: name.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        path_prefix: prefix.into(),
        pool: pool.into(),
        ..Default::default()
    }
}

pub fn leader_route(name: &str, prefix: &str, pool: &str) -> Route {
    Route {
        writes: WritePolicy::Leader,
        ..route(name, &[], prefix, pool)
    }
}

pub fn state(pools: Vec<Pool>, routes: Vec<Route>) -> State {
    let mut s = State::default();
    s.revision = 1;
    s.pools = pools.into_iter().map(|p| (p.name.clone(), p)).collect();
    s.routes = routes.into_iter().map(|r| (r.name.clone(), r)).collect();
    for (pool, route) in s.routes.values().map(|r| (&r.pool, &r.name)) {
        assert!(
            s.pools.contains_key(pool),
            "route {route} names missing pool {pool}"
        );
    }
    s
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

pub async fn send(
    client: &TestClient,
    method: Method,
    url: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    for (k, v) in headers {
        req = req.header(*k, HeaderValue::from_str(v).unwrap());
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = client
        .request(req)
        .await
        .expect("request reaches the proxy");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("whole body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(client: &TestClient, url: &str, host: Option<&str>) -> Reply {
    send(client, Method::GET, url, host, &[], "").await
}

/// Polls `check` until it holds, failing the test after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Writes `bytes` on a fresh connection to `addr` and reads until the server closes it (or
/// 10 s pass); returns what was read, lossily as text.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server neither answered nor closed: {}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of the responses in a raw exchange, in order.
pub fn statuses(raw: &str) -> Vec<u16> {
    raw.split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.get(..3)?.parse().ok())
        .collect()
}

/// A handler that answers "/headers" and other paths like `answer`, plus `x-uri` and
/// `x-host` headers telling what the backend received.
pub fn echo_handler() -> Handler {
    Arc::new(|name, parts, body| {
        Box::pin(async move {
            let mut r = answer(&name, &parts, &body);
            r.headers_mut().insert(
                "x-uri",
                HeaderValue::from_str(&parts.uri.to_string()).unwrap(),
            );
            if let Some(h) = parts.headers.get("host") {
                r.headers_mut().insert("x-host", h.clone());
            }
            r
        })
    })
}
