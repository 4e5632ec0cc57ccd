//! The web dashboard (`/ui`) in headless Chromium, driven over WebDriver (`chromedriver`)
//! with `fantoccini`, against a real `gateway` node: log in with a token, add a pool and a
//! route through the forms and see the route served by the proxy, have a stale edit refused
//! with a clear message (and nothing overwritten), and see a backend turn red when it is
//! killed.
//!
//! Needs Debian's `chromium` and `chromium-driver` (listed in `.ci/packages`) and the binary
//! (`cargo build -p gateway`). `GATEWAY_DASHBOARD_PNG=$PWD/docs/dashboard.png cargo test -p
//! gateway-tests --test dashboard -- killed` writes the README's screenshot.

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use gateway_tests::{
    CATCH_UP, DemoBackend, ELECTION, Node, TestCluster, TestResult, ensure, free_addr, note,
    wait_for,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

const READ: &str = "read-token-0123456789abcdef";
const WRITE: &str = "write-token-0123456789abcdef";
/// How long the page may take to show a change (it follows server-sent events; the machine
/// may be slow).
const SHOWN: Duration = Duration::from_secs(30);

/// One HTTP request with an optional bearer token, Host and If-Match; answers status and body.
async fn call(
    method: &str,
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Result<(u16, String)> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, Full<Bytes>>(HttpConnector::new());
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let resp = tokio::time::timeout(
        gateway_tests::REQUEST,
        client.request(req.body(Full::new(Bytes::from(body)))?),
    )
    .await
    .map_err(|_| anyhow!("{method} {path}: no answer"))??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn admin(
    node: &Node,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let bearer = format!("Bearer {WRITE}");
    let mut all = vec![("authorization", bearer.as_str())];
    all.extend_from_slice(headers);
    let (s, b) = call(method, node.admin_addr, path, None, &all, body).await?;
    Ok((s, serde_json::from_str(&b).unwrap_or(Value::String(b))))
}

/// A one-node cluster whose admin API wants tokens.
async fn secured_node(c: &TestCluster) -> Result<Node> {
    let spec = c.spec(1)?;
    let tokens = c.dir().join("tokens");
    std::fs::write(&tokens, format!("read {READ}\nwrite {WRITE}\n"))?;
    let mut args = c.init_args(&spec);
    args.extend(["--admin-token-file".into(), tokens.display().to_string()]);
    let node = Node::spawn(&spec, args, c.http().clone())?;
    wait_for("the node to lead", ELECTION, || async {
        node.ensure_running()?;
        ensure!(node.leader().await?.id == 1, "not leading yet");
        Ok(())
    })
    .await?;
    Ok(node)
}

/// `chromedriver` and a headless Chromium session; both end when dropped.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Result<Browser> {
        let driver_bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or_else(|| {
                anyhow!(
                    "chromedriver not found: install Debian's chromium and chromium-driver (listed in .ci/packages)"
                )
            })?;
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or_else(|| {
                anyhow!("chromium not found: install Debian's chromium (listed in .ci/packages)")
            })?;
        let port = free_addr()?.port();
        let mut cmd = match ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        {
            Some(w) => {
                let mut c = tokio::process::Command::new(w);
                c.args(["--pdeathsig", "KILL", "--", driver_bin]);
                c
            }
            None => tokio::process::Command::new(driver_bin),
        };
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let driver = cmd.spawn().context("starting chromedriver")?;
        let url = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to listen", CATCH_UP, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            Ok(())
        })
        .await?;
        let profile = tempfile::tempdir()?;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1366,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .context("starting a Chromium session through chromedriver")?;
        Ok(Browser {
            client,
            _driver: driver,
            _profile: profile,
        })
    }

    /// Waits for an element and clicks it (again if the page re-rendered it meanwhile).
    async fn click(&self, css: &str) -> Result<()> {
        wait_for(&format!("to click {css}"), SHOWN, || async {
            self.client.find(Locator::Css(css)).await?.click().await?;
            Ok(())
        })
        .await
    }

    /// Clicks a button in a table the page redraws as it goes live, in one step inside the
    /// page. A WebDriver click presses and releases at the element's place in two events; a
    /// redraw between them puts a new button there and no click fires, so the test would wait
    /// for an effect that never comes (seen once in CI with the members table).
    async fn click_live(&self, css: &str) -> Result<()> {
        wait_for(&format!("to click {css}"), SHOWN, || async {
            let clicked = self
                .client
                .execute(
                    "const e = document.querySelector(arguments[0]);
                     if (e === null) return false;
                     e.click();
                     return true;",
                    vec![json!(css)],
                )
                .await?;
            ensure!(clicked.as_bool() == Some(true), "no element matches {css}");
            Ok(())
        })
        .await
    }

    /// Replaces the text of an input.
    async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let e = self
            .client
            .wait()
            .at_most(SHOWN)
            .for_element(Locator::Css(css))
            .await?;
        e.clear().await?;
        e.send_keys(text).await?;
        Ok(())
    }

    /// Waits until the element's text satisfies `ok`; answers the text.
    async fn text_of(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> Result<String> {
        wait_for(what, SHOWN, || async {
            let t = self.client.find(Locator::Css(css)).await?.text().await?;
            ensure!(ok(&t), "{css} shows {t:?}");
            Ok(t)
        })
        .await
    }

    /// The attribute of the element that `css` matches, read in one step inside the page: the
    /// page redraws its tables on every poll, so an element found first could be gone (stale)
    /// by the time its attribute is asked for.
    async fn attr_of(&self, css: &str, attr: &str) -> Result<Option<String>> {
        let read = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]);
                 return e === null ? {missing: true} : {value: e.getAttribute(arguments[1])};",
                vec![json!(css), json!(attr)],
            )
            .await?;
        ensure!(read.get("missing").is_none(), "no element matches {css}");
        Ok(read
            .get("value")
            .and_then(|v| v.as_str())
            .map(str::to_owned))
    }

    /// Opens the dashboard and logs in with `token`.
    async fn log_in(&self, node: &Node, token: &str) -> Result<()> {
        self.client
            .goto(&format!("http://{}/ui", node.admin_addr))
            .await?;
        self.fill("#token", token).await?;
        self.click("#login-btn").await?;
        Ok(())
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

#[tokio::test]
async fn dashboard_login_add_route_and_refuse_a_stale_edit() -> TestResult {
    let c = TestCluster::new()?;
    let node = secured_node(&c).await?;
    let a = DemoBackend::start("a").await?;
    let browser = Browser::start().await?;
    let b = &browser;

    // A wrong token is refused on the login form.
    b.log_in(&node, "not-a-token-at-all-xxxxxxxx").await?;
    b.text_of("#login-error", "the refusal of a wrong token", |t| {
        t.contains("refused")
    })
    .await?;
    // The right one opens the dashboard, which goes live.
    b.log_in(&node, WRITE).await?;
    b.text_of("#live", "the dashboard to go live", |t| t == "live")
        .await?;
    b.text_of("#node-info", "this node's figures", |t| {
        t.contains("node 1") && t.contains("leader")
    })
    .await?;
    b.text_of("#members tbody", "the member list", |t| t.contains("1"))
        .await?;

    // A pool and a route through the forms; the proxy serves the route.
    b.fill("#pool-name", "web").await?;
    b.fill("#pool-backends", &format!("a {}", a.addr)).await?;
    b.click("#pool-save").await?;
    b.text_of(".pool[data-pool=web]", "pool web on the page", |t| {
        t.contains(&a.addr.to_string())
    })
    .await?;
    b.fill("#route-name", "dash").await?;
    b.fill("#route-hosts", "dash.test").await?;
    b.fill("#route-path", "/").await?;
    b.fill("#route-pool", "web").await?;
    b.click("#route-save").await?;
    b.text_of("#message", "the route saved", |t| t.contains("saved"))
        .await?;
    b.text_of("tr[data-route=dash]", "route dash on the page", |t| {
        t.contains("dash.test")
    })
    .await?;
    let served = wait_for("the proxy to serve route dash", CATCH_UP, || async {
        let (s, body) = call("GET", node.http_addr, "/", Some("dash.test"), &[], None).await?;
        ensure!(s == 200, "{s} {body}");
        Ok(body)
    })
    .await?;
    ensure!(served.contains("from a"), "served: {served}");
    // Live requests/s come from the metrics ticks.
    for _ in 0..20 {
        call("GET", node.http_addr, "/", Some("dash.test"), &[], None).await?;
    }
    b.text_of(
        "tr[data-route=dash] .rps",
        "a request rate for route dash",
        |t| t.parse::<f64>().is_ok(),
    )
    .await?;

    // A stale edit: the form is opened, someone else changes the route, the form is saved.
    b.click("tr[data-route=dash] .edit-route").await?;
    b.text_of("#route-revision", "the form to edit route dash", |t| {
        t.contains("editing revision")
    })
    .await?;
    let (s, route) = admin(&node, "GET", "/v1/routes/dash", &[], None).await?;
    ensure!(s == 200, "{s} {route}");
    let rev = route["route"]["revision"]
        .as_u64()
        .or_else(|| route["revision"].as_u64())
        .ok_or_else(|| anyhow!("no revision in {route}"))?;
    let etag = format!("\"{rev}\"");
    let (s, v) = admin(
        &node,
        "PUT",
        "/v1/routes/dash",
        &[("if-match", etag.as_str())],
        Some(json!({"hosts": ["dash.test"], "path_prefix": "/v2", "pool": "web"})),
    )
    .await?;
    ensure!(s == 200, "the other edit: {s} {v}");
    b.fill("#route-hosts", "overwritten.test").await?;
    b.click("#route-save").await?;
    let msg = b
        .text_of("#message", "the stale edit to be refused", |t| {
            t.contains("changed by someone else")
        })
        .await?;
    note!("stale edit message: {msg}");
    ensure!(
        b.attr_of("#message", "class").await?.as_deref() == Some("error"),
        "shown as an error"
    );
    let (_, now) = admin(&node, "GET", "/v1/routes/dash", &[], None).await?;
    let now = if now.get("route").is_some() {
        &now["route"]
    } else {
        &now
    };
    ensure!(
        now["path_prefix"] == "/v2",
        "the other edit was kept: {now}"
    );
    ensure!(
        now["hosts"] == json!(["dash.test"]),
        "nothing overwritten: {now}"
    );

    // Drain a backend from its row: the pool object carries `drain: true`.
    b.click_live(".pool[data-pool=web] tr[data-backend=a] .drain")
        .await?;
    b.text_of(
        ".pool[data-pool=web] tr[data-backend=a]",
        "backend a shown draining",
        |t| t.contains("draining"),
    )
    .await?;
    let (_, pool) = admin(&node, "GET", "/v1/pools/web", &[], None).await?;
    let pool = if pool.get("pool").is_some() {
        &pool["pool"]
    } else {
        &pool
    };
    ensure!(pool["backends"][0]["drain"] == true, "drained: {pool}");

    browser.close().await;
    Ok(())
}

#[tokio::test]
async fn dashboard_shows_a_killed_backend_red() -> TestResult {
    let c = TestCluster::new()?;
    let node = secured_node(&c).await?;
    let a = DemoBackend::start("a").await?;
    let mut victim = DemoBackend::start("b").await?;
    let (s, v) = admin(
        &node,
        "PUT",
        "/v1/pools/hc",
        &[],
        Some(json!({
            "backends": [
                {"id": "a", "address": a.addr.to_string()},
                {"id": "b", "address": victim.addr.to_string()},
            ],
            "health_check": {"type": "tcp", "interval_ms": 200, "timeout_ms": 200, "rise": 1, "fall": 1},
        })),
    )
    .await?;
    ensure!(s == 200, "pool with a health check: {s} {v}");
    let (s, v) = admin(
        &node,
        "PUT",
        "/v1/routes/shop",
        &[],
        Some(json!({"hosts": ["shop.example"], "pool": "hc"})),
    )
    .await?;
    ensure!(s == 200, "route: {s} {v}");
    let browser = Browser::start().await?;
    let b = &browser;
    b.log_in(&node, READ).await?;
    let row = ".pool[data-pool=hc] tr[data-backend=b]";
    wait_for("backend b to show up (green)", SHOWN, || async {
        let h = b.attr_of(row, "data-health").await?;
        ensure!(h.as_deref() == Some("up"), "health {h:?}");
        Ok(())
    })
    .await?;
    victim.kill().await?;
    wait_for("backend b to turn red", SHOWN, || async {
        let h = b.attr_of(row, "data-health").await?;
        ensure!(h.as_deref() == Some("down"), "health {h:?}");
        let color = b
            .client
            .find(Locator::Css(&format!("{row} td.health")))
            .await?
            .css_value("color")
            .await?;
        ensure!(color.contains("207, 34, 46"), "drawn in {color}");
        Ok(())
    })
    .await?;
    let other = b
        .attr_of(".pool[data-pool=hc] tr[data-backend=a]", "data-health")
        .await?;
    ensure!(
        other.as_deref() == Some("up"),
        "backend a stays up: {other:?}"
    );
    // Once marked down it gets no more attempts (the route table left it out).
    let attempts = async || -> Result<f64> {
        let (s, text) = call(
            "GET",
            node.admin_addr,
            "/metrics",
            None,
            &[("authorization", &format!("Bearer {READ}"))],
            None,
        )
        .await?;
        ensure!(s == 200, "{s}");
        text.lines()
            .find(|l| {
                l.starts_with("gateway_backend_requests_total{")
                    && l.contains("pool=\"hc\"")
                    && l.contains("backend=\"b\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .ok_or_else(|| anyhow!("no attempts counter for hc/b"))
    };
    let before = attempts().await?;
    for _ in 0..10 {
        let (s, body) = call("GET", node.http_addr, "/", Some("shop.example"), &[], None).await?;
        ensure!(s == 200 && body.contains("from a"), "{s} {body}");
    }
    let after = attempts().await?;
    ensure!(
        after == before,
        "backend b, marked down, still got {} attempts",
        after - before
    );
    if let Ok(path) = std::env::var("GATEWAY_DASHBOARD_PNG") {
        // Some traffic, so the requests/s columns have figures.
        for _ in 0..30 {
            call("GET", node.http_addr, "/", Some("shop.example"), &[], None).await?;
        }
        b.text_of("tr[data-route=shop] .rps", "a request rate", |t| {
            t.parse::<f64>().is_ok_and(|r| r > 0.0)
        })
        .await?;
        let png = b.client.screenshot().await?;
        std::fs::write(&path, png).with_context(|| format!("writing {path}"))?;
        note!("screenshot written to {path}");
    }
    browser.close().await;
    Ok(())
}

#[tokio::test]
async fn dashboard_transfers_leadership() -> TestResult {
    // No token file: the loopback admin API is open and the page goes straight in.
    let c = TestCluster::start(3).await?;
    let leader = c.wait_leader(ELECTION).await?;
    let to = c
        .ids()
        .into_iter()
        .find(|&id| id != leader.id)
        .ok_or_else(|| anyhow!("no other node"))?;
    let browser = Browser::start().await?;
    let b = &browser;
    b.client
        .goto(&format!("http://{}/ui", c.node(leader.id).admin_addr))
        .await?;
    b.text_of("#live", "the dashboard to go live", |t| t == "live")
        .await?;
    b.text_of("#members tbody", "three members", |t| {
        t.lines().count() == 3
    })
    .await?;
    b.click_live(&format!("tr[data-member=\"{to}\"] .transfer"))
        .await?;
    let want = format!("leader: node {to}");
    b.text_of("#node-info", "the new leader on the page", |t| {
        t.contains(&want)
    })
    .await?;
    let now = c.wait_leader(ELECTION).await?;
    ensure!(now.id == to, "node {} leads, not {to}", now.id);
    b.text_of(
        &format!("tr[data-member=\"{to}\"] .role"),
        "its role shown as leader",
        |t| t == "leader",
    )
    .await?;
    browser.close().await;
    Ok(())
}
