//! TLS from the gateway to its backends, on real `gateway` processes: a pool's `tls` option
//! makes the gateway verify the backend against the pool's CA bundle, send the backend's host
//! or the pool's `sni` override as SNI, present an uploaded certificate to backends that
//! require a client certificate, speak HTTP/2 when the pool's protocol is `h2` (ALPN), and
//! run the pool's health checks over TLS too. Bad options are refused with a 400 that says
//! what is wrong.
//!
//! The TLS backends are small tokio-rustls + hyper servers inside the test, so they can report
//! what they saw: the SNI name, the client certificate, the HTTP version, and the health
//! probes. Certificates come from rcgen. Build the binary first: `cargo build -p gateway`.

use anyhow::{Context, Result};
use bytes::Bytes;
use gateway_tests::{TestCluster, TestResult, ensure, wait_for};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a committed change may take to reach the data plane.
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

    /// A leaf for `names` (ECDSA P-256): PEM certificate and PEM key.
    fn leaf(&self, names: &[&str]) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A TLS backend that answers every request with what it saw.
struct TlsBackend {
    addr: SocketAddr,
    /// Health probes received (`User-Agent: gateway-health-check`).
    probes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    /// Serves `cert`/`key`; with `client_ca`, requires a client certificate signed by it.
    async fn start(cert: &str, key: &str, client_ca: Option<&Ca>) -> Result<TlsBackend> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain =
            CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.issuer.der().clone())?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let probes = Arc::new(AtomicUsize::new(0));
        let counted = probes.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let probes = counted.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, session) = tls.get_ref();
                    let sni = session.server_name().unwrap_or("none").to_string();
                    let client = if session.peer_certificates().is_some_and(|c| !c.is_empty()) {
                        "yes"
                    } else {
                        "no"
                    };
                    let h2 = session.alpn_protocol() == Some(b"h2");
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let probe = req
                            .headers()
                            .get("user-agent")
                            .is_some_and(|v| v == "gateway-health-check");
                        if probe {
                            probes.fetch_add(1, Ordering::SeqCst);
                        }
                        let body = format!(
                            "tls backend {:?} sni={sni} client={client} path={}\n",
                            req.version(),
                            req.uri().path()
                        );
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let io = TokioIo::new(tls);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        Ok(TlsBackend { addr, probes, task })
    }
}

/// Puts pool `tlsweb` (one backend at `address`, `tls` as given, `extra` fields merged) and a
/// catch-all route to it through node 1; the pool's revision answer.
async fn pool_and_route(c: &TestCluster, address: &str, tls: Value, extra: Value) -> Result<u64> {
    let mut pool = json!({"backends": [{"id": "t", "address": address}], "tls": tls});
    if let (Some(p), Some(e)) = (pool.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    let resp = c.node(1).put("/v1/pools/tlsweb", &pool).await?;
    resp.expect(200)?;
    let rev = resp.revision_header()?;
    if c.node(1).get("/v1/routes/tlsroute").await?.status == 404 {
        let resp = c
            .node(1)
            .put(
                "/v1/routes/tlsroute",
                &json!({"path_prefix": "/", "pool": "tlsweb", "retries": 0}),
            )
            .await?;
        resp.expect(200)?;
        return resp.revision_header();
    }
    Ok(rev)
}

/// Waits until a request through node 1 answers `status` with a body containing `want`;
/// returns the body.
async fn wait_answer(c: &TestCluster, status: u16, want: &str) -> Result<String> {
    let node = c.node(1);
    wait_for(
        &format!("a {status} whose body contains '{want}'"),
        CONVERGE,
        || async {
            let r = c.http().get(node.http_addr, "/hello").await?;
            let text = r.text();
            ensure!(
                r.status.as_u16() == status && text.contains(want),
                "got {} {text}",
                r.status
            );
            Ok(text)
        },
    )
    .await
}

/// A TLS backend verified against the pool's CA answers through the gateway; the SNI it sees
/// is the backend's host by default and the pool's `sni` when set; `h2` pools speak HTTP/2 by
/// ALPN; health probes go over TLS too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_backend_with_default_and_overridden_sni() -> TestResult {
    let c = TestCluster::start(1).await?;
    let ca = Ca::new("backend CA")?;
    let (cert, key) = ca.leaf(&["localhost", "backend.internal"])?;
    let backend = TlsBackend::start(&cert, &key, None).await?;
    let address = format!("localhost:{}", backend.addr.port());

    pool_and_route(&c, &address, json!({"ca_pem": ca.pem()}), json!({})).await?;
    let body = wait_answer(&c, 200, "sni=localhost").await?;
    ensure!(
        body.contains("HTTP/1.1") && body.contains("path=/hello"),
        "HTTP/1.1 over TLS by default: {body}"
    );

    pool_and_route(
        &c,
        &address,
        json!({"ca_pem": ca.pem(), "sni": "backend.internal"}),
        json!({"protocol": "h2"}),
    )
    .await?;
    let body = wait_answer(&c, 200, "sni=backend.internal").await?;
    ensure!(
        body.contains("HTTP/2.0"),
        "an h2 pool speaks HTTP/2: {body}"
    );

    let shown = c.node(1).get("/v1/pools/tlsweb").await?.expect_json(200)?;
    ensure!(
        shown["pool"]["tls"]["sni"] == "backend.internal" && shown["pool"]["protocol"] == "h2",
        "the pool shows its TLS options: {shown}"
    );

    // Health checks of a TLS pool speak TLS.
    pool_and_route(
        &c,
        &address,
        json!({"ca_pem": ca.pem()}),
        json!({"health_check": {"path": "/health", "interval_ms": 200, "timeout_ms": 150}}),
    )
    .await?;
    wait_for("health probes over TLS", CONVERGE, || async {
        let n = backend.probes.load(Ordering::SeqCst);
        ensure!(n >= 2, "{n} probes so far");
        Ok(())
    })
    .await?;
    let h = c.node(1).get("/v1/health").await?.expect_json(200)?;
    ensure!(
        !h.to_string().contains("\"up\":false"),
        "the TLS backend is healthy: {h}"
    );
    Ok(())
}

/// A backend whose certificate is from another CA than the pool trusts gets a 502 naming the
/// TLS failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_from_another_ca_is_a_502_naming_tls() -> TestResult {
    let c = TestCluster::start(1).await?;
    let (ca, other) = (Ca::new("backend CA")?, Ca::new("other CA")?);
    let (cert, key) = other.leaf(&["localhost"])?;
    let backend = TlsBackend::start(&cert, &key, None).await?;
    let address = format!("localhost:{}", backend.addr.port());
    pool_and_route(&c, &address, json!({"ca_pem": ca.pem()}), json!({})).await?;
    let body = wait_answer(&c, 502, "TLS handshake failed").await?;
    gateway_tests::note!("502 from a backend of another CA: {body}");
    ensure!(
        body.contains("certificate"),
        "the 502 says the certificate was not accepted: {body}"
    );
    // Trusting the right CA fixes it.
    pool_and_route(&c, &address, json!({"ca_pem": other.pem()}), json!({})).await?;
    wait_answer(&c, 200, "tls backend").await?;
    Ok(())
}

/// A backend that requires a client certificate: served when the pool names an uploaded
/// certificate signed by the CA the backend trusts, refused without one. The pool shows the
/// certificate's name only; a certificate in use cannot be deleted; unknown names and bad PEM
/// are refused with a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_for_backends_that_require_one() -> TestResult {
    let c = TestCluster::start(1).await?;
    let (ca, clients) = (Ca::new("backend CA")?, Ca::new("client CA")?);
    let (cert, key) = ca.leaf(&["localhost"])?;
    let backend = TlsBackend::start(&cert, &key, Some(&clients)).await?;
    let address = format!("localhost:{}", backend.addr.port());

    // Unknown certificate name and bad PEM: 400, nothing changes.
    let r = c
        .node(1)
        .put(
            "/v1/pools/tlsweb",
            &json!({"backends": [{"id": "t", "address": address}],
                    "tls": {"ca_pem": ca.pem(), "client_cert": "gw-client"}}),
        )
        .await?;
    ensure!(
        r.status == 400
            && r.text().contains("tls.client_cert")
            && r.text().contains("gateway cert add"),
        "an unknown client certificate is a 400 saying how to fix it: {} {}",
        r.status,
        r.text()
    );
    let r = c
        .node(1)
        .put(
            "/v1/pools/tlsweb",
            &json!({"backends": [{"id": "t", "address": address}],
                    "tls": {"ca_pem": "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"}}),
        )
        .await?;
    ensure!(
        r.status == 400 && r.text().contains("tls.ca_pem"),
        "a bad CA bundle is a 400 naming tls.ca_pem: {} {}",
        r.status,
        r.text()
    );
    let r = c
        .node(1)
        .put(
            "/v1/pools/tlsweb",
            &json!({"backends": [{"id": "t", "address": address}], "protocol": "h2"}),
        )
        .await?;
    ensure!(
        r.status == 400 && r.text().contains("tls"),
        "h2 without tls is a 400: {} {}",
        r.status,
        r.text()
    );
    ensure!(
        c.node(1).get("/v1/pools/tlsweb").await?.status == 404,
        "refused pools were not created"
    );

    // Without a client certificate the backend refuses the gateway.
    pool_and_route(&c, &address, json!({"ca_pem": ca.pem()}), json!({})).await?;
    let body = wait_answer(&c, 502, "tlsroute").await?;
    gateway_tests::note!("502 without a client certificate: {body}");

    let (ccert, ckey) = clients.leaf(&["gw-client.internal"])?;
    c.node(1)
        .put(
            "/v1/certs/gw-client",
            &json!({"cert_pem": ccert, "key_pem": ckey}),
        )
        .await?
        .expect(200)?;
    pool_and_route(
        &c,
        &address,
        json!({"ca_pem": ca.pem(), "client_cert": "gw-client"}),
        json!({}),
    )
    .await?;
    wait_answer(&c, 200, "client=yes").await?;

    let shown = c.node(1).get("/v1/pools/tlsweb").await?.text();
    ensure!(
        shown.contains("\"client_cert\":\"gw-client\"") && !shown.contains("PRIVATE KEY"),
        "the pool names the certificate and holds no key: {shown}"
    );
    let r = c.node(1).delete("/v1/certs/gw-client").await?;
    ensure!(
        r.status == 409 && r.text().contains("tlsweb"),
        "a certificate a pool presents cannot be deleted: {} {}",
        r.status,
        r.text()
    );
    Ok(())
}

/// `gateway pool add` sets the TLS options from files and names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_pool_add_with_backend_tls() -> TestResult {
    let c = TestCluster::start(1).await?;
    let ca = Ca::new("backend CA")?;
    let (cert, key) = ca.leaf(&["backend.internal"])?;
    let backend = TlsBackend::start(&cert, &key, None).await?;
    let ca_file = c.dir().join("backend-ca.pem");
    std::fs::write(&ca_file, ca.pem())?;
    let server = c.node(1).cluster_addr.to_string();
    let out = gateway_tests::run_gateway(
        &[
            "pool",
            "add",
            "tlsweb",
            "--server",
            &server,
            "--backend",
            &format!("t=127.0.0.1:{}", backend.addr.port()),
            "--backend-ca",
            ca_file.to_str().context("utf-8 path")?,
            "--backend-sni",
            "backend.internal",
        ],
        gateway_tests::REQUEST,
    )
    .await?;
    ensure!(out.status.success(), "pool add: {}", out.dump());
    c.node(1)
        .put(
            "/v1/routes/tlsroute",
            &json!({"path_prefix": "/", "pool": "tlsweb"}),
        )
        .await?
        .expect(200)?;
    wait_answer(&c, 200, "sni=backend.internal").await?;
    let out = gateway_tests::run_gateway(
        &["pool", "get", "tlsweb", "--server", &server],
        gateway_tests::REQUEST,
    )
    .await?;
    ensure!(
        out.status.success() && out.stdout.contains("sni backend.internal"),
        "pool get shows the TLS options: {}",
        out.dump()
    );
    Ok(())
}
