//! HTTPS on real `gateway` processes: certificates uploaded once through the admin API are
//! served by every node's `--https-addr`, chosen by SNI (exact and wildcard names), over
//! HTTP/1.1 and HTTP/2 (ALPN); a route redirects plain HTTP to HTTPS; bad certificates are
//! refused with errors that say what is wrong; and a certificate replaced under load fails no
//! request.
//!
//! Certificates are made by the test with rcgen, signed by throwaway CAs, so a client that
//! trusts only one CA proves which certificate it was given. `curl` (Debian's, in
//! `.ci/packages`) is the client where a user would use it; the load test speaks TLS itself
//! to count every failed handshake. Build the binary first: `cargo build -p gateway`.

use anyhow::{Context, Result, anyhow, bail};
use gateway_tests::DemoBackend as Demo;
use gateway_tests::{TestCluster, TestResult, ensure, note, wait_for};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// How long a committed change may take to reach every node.
const CONVERGE: Duration = Duration::from_secs(30);

/// A throwaway certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ok(Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf for `names` (ECDSA P-256): its PEM certificate and PEM key.
    fn leaf(&self, names: &[&str]) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Puts a certificate through node `n`'s admin API; the answer's JSON.
async fn put_cert(
    c: &TestCluster,
    n: u64,
    name: &str,
    cert: &str,
    key: &str,
    default: bool,
) -> Result<Value> {
    let body = json!({"cert_pem": cert, "key_pem": key, "default": default});
    c.node(n)
        .put(&format!("/v1/certs/{name}"), &body)
        .await?
        .expect_json(200)
}

/// A pool with one demo backend and a route for `hosts`.
async fn route_to(c: &TestCluster, demo: &Demo, hosts: &[&str], extra: Value) -> Result<u64> {
    c.node(1)
        .put(
            "/v1/pools/web",
            &json!({"backends": [{"id": "d", "address": demo.addr.to_string()}]}),
        )
        .await?
        .expect(200)?;
    let mut route = json!({"hosts": hosts, "path_prefix": "/", "pool": "web"});
    if let (Some(r), Some(e)) = (route.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    let resp = c.node(1).put("/v1/routes/site", &route).await?;
    resp.expect(200)?;
    resp.revision_header()
}

/// Waits until every node has applied `revision`.
async fn converge(c: &TestCluster, revision: u64) -> Result<()> {
    for node in c.nodes() {
        wait_for(
            &format!("node {} to apply revision {revision}", node.id),
            CONVERGE,
            || async {
                let st = node.status().await?;
                ensure!(st.revision >= revision, "at revision {}", st.revision);
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

/// `curl` over HTTPS to `host` at `addr` (through `--resolve`), trusting only `ca_file`.
/// Returns curl's exit status, its output (body, then the HTTP version on the last line)
/// and its stderr.
async fn curl(
    addr: SocketAddr,
    host: &str,
    path: &str,
    ca_file: &Path,
    extra: &[&str],
) -> Result<(bool, String, String)> {
    let port = addr.port();
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            "--cacert",
        ])
        .arg(ca_file)
        .args(["-w", "\n%{http_version}"])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .await
        .context("running curl (Debian package curl, listed in .ci/packages)")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Every node serves each host name its own certificate (a client trusting only that
/// certificate's CA succeeds, one trusting the other CA fails), over HTTP/1.1 and HTTP/2;
/// a route redirects plain HTTP to HTTPS and the backend sees `X-Forwarded-Proto: https`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_serves_each_name_its_certificate() -> TestResult {
    let c = TestCluster::start(3).await?;
    let demo = Demo::start("web1").await?;
    let (ca_a, ca_b) = (Ca::new("test CA a")?, Ca::new("test CA b")?);
    let dir = c.dir().to_path_buf();
    let (ca_a_file, ca_b_file) = (dir.join("ca-a.pem"), dir.join("ca-b.pem"));
    std::fs::write(&ca_a_file, ca_a.pem())?;
    std::fs::write(&ca_b_file, ca_b.pem())?;

    let (cert, key) = ca_a.leaf(&["a.test"])?;
    let shown = put_cert(&c, 2, "site-a", &cert, &key, false).await?;
    ensure!(
        shown["cert"]["names"] == json!(["a.test"]),
        "the answer lists the names the certificate serves: {shown}"
    );
    let (cert, key) = ca_b.leaf(&["*.b.test"])?;
    put_cert(&c, 3, "site-b", &cert, &key, false).await?;
    let rev = route_to(
        &c,
        &demo,
        &["a.test", "*.b.test"],
        json!({"https_redirect": 308}),
    )
    .await?;
    converge(&c, rev).await?;

    for node in c.nodes() {
        let addr = node.https_addr;
        let (ok, out, err) = curl(addr, "a.test", "/", &ca_a_file, &[]).await?;
        ensure!(
            ok && out.to_ascii_lowercase().starts_with("get from web1"),
            "node {}: a.test over HTTPS: {out} {err}",
            node.id
        );
        let (ok, out, err) = curl(addr, "x.b.test", "/", &ca_b_file, &["--http2"]).await?;
        ensure!(
            ok && out.to_ascii_lowercase().starts_with("get from web1") && out.ends_with("\n2"),
            "node {}: x.b.test over HTTP/2: {out} {err}",
            node.id
        );
        let (ok, out, _) = curl(addr, "x.b.test", "/", &ca_b_file, &["--http1.1"]).await?;
        ensure!(
            ok && out.ends_with("\n1.1"),
            "node {}: x.b.test over HTTP/1.1: {out}",
            node.id
        );
        // Each name got its own certificate: the other CA does not vouch for it.
        let (ok, _, err) = curl(addr, "a.test", "/", &ca_b_file, &[]).await?;
        ensure!(!ok, "node {}: a.test verified against CA b", node.id);
        note!(
            "node {}: a.test against the wrong CA: {}",
            node.id,
            err.trim()
        );
        let (ok, _, _) = curl(addr, "x.b.test", "/", &ca_a_file, &[]).await?;
        ensure!(!ok, "node {}: x.b.test verified against CA a", node.id);
        // A wildcard covers one label only, and a name without a certificate gets none.
        let (ok, _, _) = curl(addr, "x.y.b.test", "/", &ca_b_file, &[]).await?;
        ensure!(!ok, "node {}: *.b.test served x.y.b.test", node.id);

        // Plain HTTP on a redirecting route: 308 to the same URL over HTTPS.
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
            ])
            .args(["-H", "host: a.test"])
            .arg(format!("http://{}/path/x?y=1", node.http_addr))
            .stdin(Stdio::null())
            .output()
            .await?;
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let want = format!("308 https://a.test:{}/path/x?y=1", addr.port());
        ensure!(out == want, "plain HTTP got '{out}', want '{want}'");
        let (ok, out, err) = curl(addr, "a.test", "/headers", &ca_a_file, &[]).await?;
        ensure!(
            ok && out.contains("x-forwarded-proto: https"),
            "node {}: the backend should see X-Forwarded-Proto https: {out} {err}",
            node.id
        );
    }

    // Removing a certificate takes effect on every node.
    let resp = c.node(1).delete("/v1/certs/site-b").await?;
    resp.expect(200)?;
    converge(&c, resp.revision_header()?).await?;
    for node in c.nodes() {
        let (ok, _, _) = curl(node.https_addr, "x.b.test", "/", &ca_b_file, &[]).await?;
        ensure!(!ok, "node {} still serves the deleted certificate", node.id);
    }
    Ok(())
}

/// Bad certificates are refused with an error naming the field and the problem, and change
/// nothing; read APIs never show a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_and_keys_never_shown() -> TestResult {
    let c = TestCluster::start(1).await?;
    let node = c.node(1);
    let ca = Ca::new("test CA")?;
    let (cert, key) = ca.leaf(&["a.test"])?;
    let (_, other_key) = ca.leaf(&["a.test"])?;
    put_cert(&c, 1, "good", &cert, &key, true).await?;
    let before = node.status().await?.revision;

    let expired = {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["old.test".to_string()])?;
        params.not_before = date_time_ymd(2001, 1, 1);
        params.not_after = date_time_ymd(2002, 1, 1);
        (
            params.signed_by(&key, &ca.issuer)?.pem(),
            key.serialize_pem(),
        )
    };
    let cases: [(&str, Value, &str); 6] = [
        (
            "not PEM",
            json!({"cert_pem": "hello", "key_pem": key}),
            "cert_pem",
        ),
        (
            "a key that is not PEM",
            json!({"cert_pem": cert, "key_pem": "-----BEGIN PRIVATE KEY-----\nAAAA\n"}),
            "key_pem",
        ),
        (
            "another certificate's key",
            json!({"cert_pem": cert, "key_pem": other_key}),
            "does not match",
        ),
        (
            "an expired certificate",
            json!({"cert_pem": expired.0, "key_pem": expired.1}),
            "expired",
        ),
        (
            "a second default",
            json!({"cert_pem": cert, "key_pem": key, "default": true}),
            "already the default",
        ),
        (
            "an unknown field",
            json!({"cert_pem": cert, "key_pem": key, "private": 1}),
            "private",
        ),
    ];
    // The base64 lines of every key sent: no answer may echo them.
    let secrets: Vec<String> = [&key, &other_key, &expired.1]
        .iter()
        .flat_map(|k| k.lines())
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_string)
        .collect();
    for (what, body, says) in cases {
        let resp = node.put("/v1/certs/bad", &body).await?;
        let text = resp.text();
        ensure!(
            (400..500).contains(&resp.status.as_u16()) && text.contains(says),
            "{what}: {} {text}",
            resp.status
        );
        ensure!(
            !secrets.iter().any(|l| text.contains(l.as_str())),
            "{what}: the error shows the key"
        );
        note!("{what}: {} {}", resp.status, text.trim());
    }
    ensure!(
        node.status().await?.revision == before,
        "a refused certificate changed the configuration"
    );
    for path in ["/v1/certs", "/v1/certs/good"] {
        let text = node.get(path).await?.expect(200)?.text();
        ensure!(
            text.contains("BEGIN CERTIFICATE")
                && !text.contains("PRIVATE")
                && !text.contains("key_pem"),
            "{path} shows the key: {text}"
        );
    }
    let log = node.log();
    ensure!(
        !secrets.iter().any(|l| log.contains(l.as_str())),
        "the node logged a key"
    );
    Ok(())
}

/// `gateway cert add|list|get|rm` through any node: add from PEM files, a clear error for a
/// key that does not match, a table without keys, removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_commands_of_the_cli() -> TestResult {
    let c = TestCluster::start(1).await?;
    let server = c.node(1).cluster_addr.to_string();
    let ca = Ca::new("test CA")?;
    let (cert, key) = ca.leaf(&["cli.test", "*.cli.test"])?;
    let (_, other_key) = ca.leaf(&["cli.test"])?;
    let dir = c.dir();
    for (f, text) in [
        ("full.pem", &cert),
        ("key.pem", &key),
        ("other.pem", &other_key),
    ] {
        std::fs::write(dir.join(f), text)?;
    }
    let path = |f: &str| dir.join(f).display().to_string();
    let run = |args: Vec<String>| {
        let server = server.clone();
        async move {
            let mut all = args;
            all.extend(["--server".to_string(), server]);
            gateway_tests::run_gateway(&all, gateway_tests::REQUEST).await
        }
    };
    let add = |key_file: String| {
        vec![
            "cert".to_string(),
            "add".into(),
            "site".into(),
            "--cert".into(),
            path("full.pem"),
            "--key".into(),
            key_file,
        ]
    };
    let out = run(add(path("other.pem"))).await?;
    ensure!(
        !out.status.success() && out.stderr.starts_with("error: key_pem: does not match"),
        "a mismatched key: {} {}",
        out.status,
        out.stderr
    );
    let out = run(add(path("key.pem"))).await?;
    ensure!(
        out.status.success()
            && out.stdout.contains("cert site created")
            && out.stdout.contains("*.cli.test,cli.test"),
        "cert add: {} {}",
        out.stdout,
        out.stderr
    );
    let out = run(add(path("key.pem"))).await?;
    ensure!(
        !out.status.success() && out.stderr.contains("already exists"),
        "a second add without --replace: {}",
        out.stderr
    );
    let out = run(vec!["cert".into(), "list".into()]).await?;
    ensure!(
        out.status.success() && out.stdout.contains("NAME") && out.stdout.contains("site"),
        "cert list: {}",
        out.stdout
    );
    for args in [
        vec![
            "cert".to_string(),
            "list".into(),
            "--output".into(),
            "json".into(),
        ],
        vec![
            "cert".to_string(),
            "get".into(),
            "site".into(),
            "--output".into(),
            "json".into(),
        ],
    ] {
        let out = run(args).await?;
        ensure!(
            out.status.success()
                && out.stdout.contains("BEGIN CERTIFICATE")
                && !out.stdout.contains("PRIVATE")
                && !out.stdout.contains("key_pem"),
            "reads must not show the key: {}",
            out.stdout
        );
    }
    let out = run(vec!["cert".into(), "rm".into(), "site".into()]).await?;
    ensure!(out.status.success(), "cert rm: {}", out.stderr);
    let out = run(vec!["cert".into(), "list".into()]).await?;
    ensure!(
        out.stdout.starts_with("no certificates"),
        "after rm: {}",
        out.stdout
    );
    Ok(())
}

/// A TLS client that trusts `ca` and offers HTTP/1.1.
fn tls_client(ca: CertificateDer<'static>) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A new TLS connection to `addr` for `host`; the leaf certificate it was given.
async fn connect(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    host: &str,
) -> Result<(Tls, Vec<u8>)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(host.to_string())?;
    let stream = tls.connect(name, tcp).await?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| anyhow!("no peer certificate"))?;
    Ok((stream, leaf))
}

/// One GET on `stream`; the status line must be 200. Reads the body by its Content-Length.
async fn get(stream: &mut Tls, host: &str) -> Result<()> {
    stream
        .write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!(
                "connection closed before a full answer: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            ensure!(head.starts_with("http/1.1 200"), "answer: {head}");
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| anyhow!("no content-length in {head}"))?;
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed within the body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// Replacing a certificate five times while clients make new handshakes and reuse keep-alive
/// connections on every node fails no request; every node ends up serving the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_certificate_under_load_fails_no_request() -> TestResult {
    let c = TestCluster::start(3).await?;
    let demo = Demo::start("web1").await?;
    let ca = Ca::new("test CA")?;
    let (cert, key) = ca.leaf(&["a.test"])?;
    put_cert(&c, 1, "site", &cert, &key, false).await?;
    let rev = route_to(&c, &demo, &["a.test"], json!({})).await?;
    converge(&c, rev).await?;
    let tls = tls_client(ca.der())?;
    let addrs: Vec<SocketAddr> = c.nodes().iter().map(|n| n.https_addr).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::new(Mutex::new(BTreeSet::<Vec<u8>>::new()));
    let mut workers = Vec::new();
    for (i, addr) in addrs.iter().copied().enumerate() {
        // One worker making a new handshake per request, one reusing a connection, per node.
        for keep_alive in [false, true] {
            let (tls, stop, ok, failed, errors, seen) = (
                tls.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                errors.clone(),
                seen.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut conn: Option<Tls> = None;
                while !stop.load(Ordering::SeqCst) {
                    let attempt = async {
                        let stream = match conn.take() {
                            Some(s) => s,
                            None => {
                                let (s, leaf) = connect(&tls, addr, "a.test").await?;
                                seen.lock().await.insert(leaf);
                                s
                            }
                        };
                        let mut stream = stream;
                        get(&mut stream, "a.test").await?;
                        anyhow::Ok(stream)
                    };
                    match tokio::time::timeout(Duration::from_secs(20), attempt).await {
                        Ok(Ok(stream)) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            if keep_alive {
                                conn = Some(stream);
                            }
                        }
                        Ok(Err(e)) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            errors.lock().await.push(format!("node {}: {e:#}", i + 1));
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            errors
                                .lock()
                                .await
                                .push(format!("node {}: timed out", i + 1));
                        }
                    }
                }
            }));
        }
    }

    let mut last = Vec::new();
    for round in 0..5 {
        let (cert, key) = ca.leaf(&["a.test"])?;
        let der = rustls_pki_types::CertificateDer::from_pem_slice_der(&cert)?;
        put_cert(&c, 1 + (round % 3), "site", &cert, &key, false).await?;
        for addr in &addrs {
            wait_for(
                &format!("{addr} to serve replacement {round}"),
                CONVERGE,
                || async {
                    let (_, leaf) = connect(&tls, *addr, "a.test").await?;
                    ensure!(leaf == der, "still the previous certificate");
                    Ok(())
                },
            )
            .await?;
        }
        last = der;
        note!(
            "replacement {round} served by every node; {} requests so far",
            ok.load(Ordering::SeqCst)
        );
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await?;
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    let errors = errors.lock().await;
    note!("{ok} requests served, {failed} failed");
    ensure!(
        failed == 0,
        "{failed} requests failed: {:?}",
        &errors[..errors.len().min(10)]
    );
    ensure!(
        ok >= 60,
        "only {ok} requests were made: the load was too light to show anything"
    );
    let seen = seen.lock().await;
    ensure!(
        seen.len() >= 3 && seen.contains(&last),
        "the clients saw {} distinct certificates",
        seen.len()
    );
    Ok(())
}

/// The DER of a PEM certificate.
trait FromPemDer {
    fn from_pem_slice_der(pem: &str) -> Result<Vec<u8>>;
}

impl FromPemDer for CertificateDer<'_> {
    fn from_pem_slice_der(pem: &str) -> Result<Vec<u8>> {
        use rustls_pki_types::pem::PemObject;
        Ok(CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| anyhow!("{e}"))?
            .to_vec())
    }
}

// ---- admin HTTPS (issue 7) ----

/// With `--admin-tls-cert/--admin-tls-key` the admin REST API answers over HTTPS (curl with
/// `--cacert` trusts it) and no longer over plain HTTP; the setting survives a restart that
/// gives only `--data-dir`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_over_https() -> TestResult {
    let c = TestCluster::new()?;
    let ca = Ca::new("admin CA")?;
    let (cert, key) = ca.leaf(&["admin.test", "127.0.0.1"])?;
    let dir = c.dir().to_path_buf();
    let (ca_file, cert_file, key_file) = (
        dir.join("admin-ca.pem"),
        dir.join("admin.pem"),
        dir.join("admin-key.pem"),
    );
    std::fs::write(&ca_file, ca.pem())?;
    std::fs::write(&cert_file, &cert)?;
    std::fs::write(&key_file, &key)?;
    let spec = c.spec(1)?;
    let mut args = c.init_args(&spec);
    args.extend([
        "--admin-tls-cert".to_string(),
        cert_file.display().to_string(),
        "--admin-tls-key".to_string(),
        key_file.display().to_string(),
    ]);
    let node = gateway_tests::Node::spawn(&spec, args, c.http().clone())?;
    let admin = spec.admin_addr;
    let leader = wait_for("the admin API over HTTPS", CONVERGE, || async {
        node.ensure_running()?;
        let (ok, out, err) = curl(admin, "admin.test", "/leader", &ca_file, &[]).await?;
        ensure!(
            ok && out.contains("\"id\":1") && out.ends_with("\n1.1"),
            "{out} {err}"
        );
        Ok(out)
    })
    .await?;
    note!("GET /leader over HTTPS: {leader}");
    // Writes go through too, with the JSON body.
    let port = admin.port();
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--resolve",
            &format!("admin.test:{port}:127.0.0.1"),
            "--cacert",
        ])
        .arg(&ca_file)
        .args([
            "-X",
            "PUT",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"backends": [{"id": "a", "address": "127.0.0.1:9"}]}"#,
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!("https://admin.test:{port}/v1/pools/web"))
        .stdin(Stdio::null())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.ends_with("\n200"), "PUT over HTTPS: {text}");
    // `gateway top` reads the node over HTTPS with --admin-ca (the certificate names the IP).
    let top = gateway_tests::run_gateway(
        &[
            "top",
            "--once",
            "--interval-ms",
            "200",
            "--admin",
            &admin.to_string(),
            "--admin-ca",
            ca_file.to_str().context("utf-8 path")?,
        ],
        gateway_tests::REQUEST,
    )
    .await?;
    ensure!(
        top.status.success() && top.stdout.contains("node 1"),
        "gateway top over HTTPS: {}",
        top.dump()
    );
    // Plain HTTP is not served on the HTTPS port.
    let plain = c.http().get(admin, "/leader").await;
    ensure!(
        plain.as_ref().map_or(true, |r| r.status != 200),
        "plain HTTP must not be answered: {:?}",
        plain.map(|r| r.status)
    );
    // A restart with only the data dir keeps HTTPS.
    node.kill()?;
    let restart = vec![
        "serve".to_string(),
        "--data-dir".to_string(),
        spec.data_dir.display().to_string(),
    ];
    let node = gateway_tests::Node::spawn(&spec, restart, c.http().clone())?;
    wait_for(
        "the admin API over HTTPS after a restart",
        CONVERGE,
        || async {
            node.ensure_running()?;
            let (ok, out, err) = curl(admin, "admin.test", "/healthz", &ca_file, &[]).await?;
            ensure!(ok && out.starts_with("ok"), "{out} {err}");
            Ok(())
        },
    )
    .await?;
    Ok(())
}
