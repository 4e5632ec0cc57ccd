//! Dog-pile avoidance and the response cache against a real `gateway` process and a counting
//! backend of the test's own: identical concurrent GETs reach the backend once; distinct
//! queries, `private` and `Set-Cookie` responses, requests with `Authorization` and other
//! `Vary` values are not merged; stored responses are served within their max-age, served
//! stale while one request refreshes them, evicted within the size bound, and dropped when the
//! route changes; bad cache settings get a clear 400.

use anyhow::{Context, Result};
use bytes::Bytes;
use gateway_tests::{ELECTION, Node, TestCluster, TestResult, ensure, note, wait_for};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CHANGE: Duration = Duration::from_secs(30);

/// A backend that counts the requests it gets per path and query. Query parameters shape the
/// answer: `ms=N` waits N ms first, `cc=V` sends `Cache-Control: V`, `cookie=1` a
/// `Set-Cookie`, `vary=H` `Vary: H` (and the body names the request's `H`), `size=N` pads
/// the body to N bytes. The body starts `n=COUNT` (this key's count so far). Paths under
/// `/held` also wait `held_ms`.
struct Counting {
    addr: SocketAddr,
    counts: Arc<Mutex<HashMap<String, u64>>>,
    held_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Counting {
    async fn start() -> Result<Counting> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let held_ms = Arc::new(AtomicU64::new(0));
        let (c, h) = (counts.clone(), held_ms.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (c, h) = (c.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (c, h) = (c.clone(), h.clone());
                        async move { Ok::<_, std::convert::Infallible>(answer(req, &c, &h).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Ok(Counting {
            addr,
            counts,
            held_ms,
            task,
        })
    }

    fn count(&self, path_and_query: &str) -> u64 {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.get(path_and_query).copied().unwrap_or(0)
    }
}

async fn answer(
    req: Request<Incoming>,
    counts: &Mutex<HashMap<String, u64>>,
    held: &AtomicU64,
) -> Response<Full<Bytes>> {
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let n = {
        let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
        let e = c.entry(pq.clone()).or_insert(0);
        *e += 1;
        *e
    };
    let params: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%20", " ")))
        .collect();
    let mut wait = params.get("ms").and_then(|v| v.parse().ok()).unwrap_or(0);
    if req.uri().path().starts_with("/held") {
        wait += held.load(Ordering::SeqCst);
    }
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    let mut body = format!("n={n}");
    let mut resp = Response::builder().status(200);
    if let Some(cc) = params.get("cc") {
        resp = resp.header("cache-control", cc.as_str());
    }
    if params.contains_key("cookie") {
        resp = resp.header("set-cookie", format!("session={n}"));
    }
    if let Some(v) = params.get("vary") {
        resp = resp.header("vary", v.as_str());
        let value = req
            .headers()
            .get(v.as_str())
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        body.push_str(&format!(" {v}={value}"));
    }
    if let Some(size) = params.get("size").and_then(|s| s.parse::<usize>().ok()) {
        while body.len() < size {
            body.push('.');
        }
    }
    resp.body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// A client sending requests with extra headers, over as many connections as needed.
#[derive(Clone)]
struct Client2 {
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Got {
    fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Client2 {
    fn new(addr: SocketAddr) -> Self {
        Client2 {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            addr,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Got> {
        let mut req =
            Request::get(format!("http://{}{path}", self.addr)).header("host", "app.test");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let req = req.body(Full::new(Bytes::new()))?;
        let resp = tokio::time::timeout(Duration::from_secs(60), async {
            let resp = self.client.request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok((parts, body))
        })
        .await
        .with_context(|| format!("GET {path}: no answer within 60 s"))?
        .with_context(|| format!("GET {path}"))?;
        Ok(Got {
            status: resp.0.status,
            headers: resp.0.headers,
            body: String::from_utf8_lossy(&resp.1).into_owned(),
        })
    }

    /// `n` identical requests at once.
    async fn many(&self, n: usize, path: &str, headers: &[(&str, &str)]) -> Result<Vec<Got>> {
        let owned: Vec<(String, String)> = headers
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (c, path, owned) = (self.clone(), path.to_string(), owned.clone());
                tokio::spawn(async move {
                    let h: Vec<(&str, &str)> = owned
                        .iter()
                        .map(|(a, b)| (a.as_str(), b.as_str()))
                        .collect();
                    c.get(&path, &h).await
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await??);
        }
        Ok(out)
    }
}

/// A one-node cluster with pool `web` on `backend` and route `app` (host `app.test`) with
/// `cache`.
async fn setup(backend: &Counting, cache: Value) -> Result<TestCluster> {
    let mut c = TestCluster::new()?;
    c.init(1).await?;
    c.wait_leader(ELECTION).await?;
    let n = c.node(1);
    n.put(
        "/v1/pools/web",
        &json!({"backends": [{"id": "a", "address": backend.addr.to_string()}]}),
    )
    .await?
    .expect(200)?;
    put_route(n, Some(cache)).await?;
    Ok(c)
}

async fn put_route(n: &Node, cache: Option<Value>) -> Result<()> {
    let mut route = json!({"hosts": ["app.test"], "pool": "web"});
    if let Some(cache) = cache {
        route["cache"] = cache;
    }
    n.put("/v1/routes/app", &route).await?.expect(200)?;
    Ok(())
}

/// Waits until the route answers `probe` with an `X-Cache` header (or without one, when
/// `cached` is false).
async fn wait_serving(client: &Client2, probe: &str, cached: bool) -> Result<()> {
    wait_for("the route to serve as configured", CHANGE, || async {
        let r = client.get(probe, &[]).await?;
        ensure!(r.status == 200, "{} {}", r.status, r.body);
        ensure!(
            r.headers.contains_key("x-cache") == cached,
            "x-cache: {:?}",
            r.headers.get("x-cache")
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_identical_gets_reach_a_slow_backend_once() -> TestResult {
    let b = Counting::start().await?;
    let c = setup(&b, json!({})).await?;
    let client = Client2::new(c.node(1).http_addr);
    wait_serving(&client, "/probe", true).await?;

    let got = client.many(100, "/slow?ms=4000", &[]).await?;
    let first = &got[0].body;
    let mut tags: HashMap<String, usize> = HashMap::new();
    for g in &got {
        ensure!(
            g.status == 200 && &g.body == first,
            "{} {}",
            g.status,
            g.body
        );
        *tags.entry(g.x_cache().to_string()).or_default() += 1;
    }
    note!("x-cache of 100 identical GETs: {tags:?}");
    ensure!(
        b.count("/slow?ms=4000") == 1,
        "the backend got {} requests",
        b.count("/slow?ms=4000")
    );
    ensure!(
        tags.get("MISS") == Some(&1) && tags.get("COALESCED") == Some(&99),
        "{tags:?}"
    );

    // Distinct queries are not merged.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.get(&format!("/slow?ms=1000&q={i}"), &[]).await })
        })
        .collect();
    for t in tasks {
        t.await??
            .status
            .as_u16()
            .eq(&200)
            .then_some(())
            .context("status")?;
    }
    for i in 0..10 {
        ensure!(b.count(&format!("/slow?ms=1000&q={i}")) == 1, "query {i}");
    }

    // Not stored without max_bytes: the next request goes upstream again.
    let r = client.get("/slow?ms=4000", &[]).await?;
    ensure!(
        r.x_cache() == "MISS" && b.count("/slow?ms=4000") == 2,
        "{}",
        r.x_cache()
    );

    // The counters in /metrics.
    let m = c.node(1).get("/metrics").await?.text();
    ensure!(
        m.contains("gateway_cache_coalesced_total{route=\"app\"} 99"),
        "{}",
        m.lines()
            .filter(|l| l.starts_with("gateway_cache"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_cookie_authorized_and_varying_answers_are_not_shared() -> TestResult {
    let b = Counting::start().await?;
    let c = setup(&b, json!({"max_bytes": 1_000_000})).await?;
    let client = Client2::new(c.node(1).http_addr);
    wait_serving(&client, "/probe", true).await?;

    // Cache-Control: private: every waiter goes on its own.
    let path = "/p?ms=1000&cc=private,%20max-age%3D60";
    let got = client.many(20, path, &[]).await?;
    ensure!(got.iter().all(|g| g.status == 200));
    ensure!(
        b.count(path) == 20,
        "private answer shared: {} requests",
        b.count(path)
    );
    // ... and later requests skip waiting (hit-for-pass), and are never served from the store.
    let r = client.get(path, &[]).await?;
    ensure!(r.x_cache() == "MISS" && b.count(path) == 21);

    // Set-Cookie: not shared.
    let path = "/k?ms=1000&cookie=1&cc=max-age%3D60";
    let got = client.many(20, path, &[]).await?;
    ensure!(got.iter().all(|g| g.status == 200));
    ensure!(
        b.count(path) == 20,
        "Set-Cookie shared: {} requests",
        b.count(path)
    );
    let cookies: std::collections::BTreeSet<_> = got
        .iter()
        .filter_map(|g| g.headers.get("set-cookie").cloned())
        .collect();
    ensure!(cookies.len() == 20, "{cookies:?}");

    // Authorization: not coalesced.
    let path = "/a?ms=1000&cc=max-age%3D60";
    let got = client
        .many(20, path, &[("authorization", "Bearer x")])
        .await?;
    ensure!(
        got.iter()
            .all(|g| g.status == 200 && g.x_cache().is_empty())
    );
    ensure!(
        b.count(path) == 20,
        "Authorization coalesced: {} requests",
        b.count(path)
    );

    // Vary: waiters with another x-lang send their own request and get their own answer.
    let path = "/v?ms=3000&vary=x-lang";
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        let lang = if i % 2 == 0 { "en" } else { "fr" };
        tasks.push(tokio::spawn(async move {
            let g = client.get(path, &[("x-lang", lang)]).await?;
            anyhow::Ok((lang, g))
        }));
    }
    for t in tasks {
        let (lang, g) = t.await??;
        ensure!(
            g.body.ends_with(&format!("x-lang={lang}")),
            "asked in {lang}, got {}",
            g.body
        );
    }
    // One flight, shared by the others of its language; the 10 of the other language alone
    // (a request arriving after the flight landed leads a new one, so on a slow machine a
    // few more may go upstream, never all 20).
    let n = b.count(path);
    ensure!((11..20).contains(&n), "{n} requests");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_hits_serves_stale_while_one_refreshes_evicts_and_forgets() -> TestResult {
    let b = Counting::start().await?;
    let c = setup(
        &b,
        json!({"max_bytes": 20_000, "max_entry_bytes": 8_000, "stale_while_revalidate_ms": 60_000}),
    )
    .await?;
    let n = c.node(1);
    let client = Client2::new(n.http_addr);
    wait_serving(&client, "/probe", true).await?;

    // Within max-age: a hit, without touching the backend.
    let path = "/c?cc=max-age%3D600";
    let r = client.get(path, &[]).await?;
    ensure!(r.x_cache() == "MISS" && r.body == "n=1");
    let r = client.get(path, &[]).await?;
    ensure!(
        r.x_cache() == "HIT" && r.body == "n=1",
        "{} {}",
        r.x_cache(),
        r.body
    );
    ensure!(r.headers.contains_key("age"));
    ensure!(b.count(path) == 1);
    // no-cache: shared in flight, never stored.
    let nc = "/nc?cc=no-cache";
    client.get(nc, &[]).await?;
    let r = client.get(nc, &[]).await?;
    ensure!(r.x_cache() == "MISS" && b.count(nc) == 2);

    // Stale while one request refreshes: once max-age (1 s) has passed, the first request
    // goes upstream (held 2 s by the backend) and the others get the stale entry meanwhile.
    let path = "/held?cc=max-age%3D1";
    let r = client.get(path, &[]).await?;
    ensure!(r.x_cache() == "MISS" && r.body == "n=1");
    b.held_ms.store(2000, Ordering::SeqCst);
    let poll = |client: Client2| async move {
        loop {
            let r = client.get(path, &[]).await?;
            if r.x_cache() != "HIT" {
                return anyhow::Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let pollers: Vec<_> = (0..4).map(|_| tokio::spawn(poll(client.clone()))).collect();
    let mut tags = Vec::new();
    for p in pollers {
        let r = p.await??;
        tags.push((r.x_cache().to_string(), r.body));
    }
    note!("after max-age: {tags:?}");
    ensure!(
        tags.iter().filter(|(t, _)| t == "MISS").count() == 1
            && tags.iter().filter(|(t, _)| t == "STALE").count() == 3,
        "{tags:?}"
    );
    ensure!(
        tags.iter()
            .all(|(t, body)| (t == "MISS") == (body == "n=2")),
        "{tags:?}"
    );
    ensure!(b.count(path) == 2, "{} refreshes", b.count(path) - 1);
    // The entry was replaced by the refreshed answer.
    let r = client.get(path, &[]).await?;
    ensure!(
        r.body == "n=2" && r.x_cache() != "MISS",
        "{} {}",
        r.x_cache(),
        r.body
    );
    b.held_ms.store(0, Ordering::SeqCst);

    // The size bound: three 7 kB entries do not fit in 20 kB with the others; the least
    // recently used goes first.
    for i in 1..=3 {
        let r = client
            .get(&format!("/e?i={i}&size=7000&cc=max-age%3D600"), &[])
            .await?;
        ensure!(r.x_cache() == "MISS" && r.body.len() == 7000);
    }
    let r = client.get("/e?i=3&size=7000&cc=max-age%3D600", &[]).await?;
    ensure!(r.x_cache() == "HIT");
    let r = client.get("/e?i=1&size=7000&cc=max-age%3D600", &[]).await?;
    ensure!(
        r.x_cache() == "MISS",
        "the oldest entry was kept: {}",
        r.x_cache()
    );
    let m = n.get("/metrics").await?.text();
    let evictions: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("gateway_cache_evictions_total{route=\"app\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    ensure!(evictions >= 1, "no eviction counted");
    // A body over max_entry_bytes streams to its client, whole, and is not stored.
    let big = "/big?size=30000&cc=max-age%3D600";
    for _ in 0..2 {
        let r = client.get(big, &[]).await?;
        ensure!(r.x_cache() == "MISS" && r.body.len() == 30000);
    }
    ensure!(b.count(big) == 2);

    // Changing the route drops its entries; without a cache, nothing is shared.
    put_route(
        n,
        Some(json!({"max_bytes": 20_000, "stale_while_revalidate_ms": 1})),
    )
    .await?;
    wait_for(
        "the changed route to forget its entries",
        CHANGE,
        || async {
            let r = client.get("/c?cc=max-age%3D600", &[]).await?;
            ensure!(
                r.x_cache() == "MISS" || r.body != "n=1",
                "{} {}",
                r.x_cache(),
                r.body
            );
            Ok(())
        },
    )
    .await?;
    put_route(n, None).await?;
    wait_serving(&client, "/probe", false).await?;
    let before = b.count("/c?cc=max-age%3D600");
    client.get("/c?cc=max-age%3D600", &[]).await?;
    ensure!(b.count("/c?cc=max-age%3D600") == before + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_cache_settings_get_a_clear_400_and_change_nothing() -> TestResult {
    let b = Counting::start().await?;
    let c = setup(&b, json!({"max_bytes": 1000})).await?;
    let n = c.node(1);
    let before = n.get("/v1/routes/app").await?.expect_json(200)?;
    for (cache, says) in [
        (json!({"coalesce": false}), "cache"),
        (
            json!({"max_bytes": 1000, "max_entry_bytes": 5000}),
            "cache.max_entry_bytes",
        ),
        (json!({"max_entry_bytes": 0}), "cache.max_entry_bytes"),
        (json!({"max_bytes": 1u64 << 40}), "cache.max_bytes"),
        (
            json!({"stale_while_revalidate_ms": 100_000_000}),
            "cache.stale_while_revalidate_ms",
        ),
        (json!({"max_size": 5}), "max_size"),
    ] {
        let r = n
            .put(
                "/v1/routes/app",
                &json!({"hosts": ["app.test"], "pool": "web", "cache": cache}),
            )
            .await?;
        ensure!(r.status == 400, "{cache}: {} {}", r.status, r.text());
        ensure!(r.text().contains(says), "{cache}: {}", r.text());
    }
    let after = n.get("/v1/routes/app").await?.expect_json(200)?;
    ensure!(before == after, "{before} became {after}");

    // The CLI: flags make the route's cache; a cache that does nothing is refused.
    let server = n.cluster_addr.to_string();
    let r = gateway_tests::run_gateway(
        &[
            "route",
            "add",
            "cli",
            "--pool",
            "web",
            "--path",
            "/cli",
            "--coalesce",
            "--cache-max-bytes",
            "65536",
            "--cache-stale-ms",
            "500",
            "--server",
            &server,
        ],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(r.status.success(), "{} {}", r.stdout, r.stderr);
    let got = n.get("/v1/routes/cli").await?.expect_json(200)?;
    ensure!(
        got["route"]["cache"] == json!({"max_bytes": 65536, "stale_while_revalidate_ms": 500}),
        "{got}"
    );
    let r = gateway_tests::run_gateway(
        &[
            "route",
            "add",
            "cli2",
            "--pool",
            "web",
            "--no-coalesce",
            "--server",
            &server,
        ],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(
        !r.status.success() && r.stderr.contains("cache"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    ensure!(n.get("/v1/routes/cli2").await?.status == 404);
    Ok(())
}
