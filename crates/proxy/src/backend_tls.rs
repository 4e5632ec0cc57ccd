//! TLS from the gateway to a pool's backends: the rustls client configurations compiled from a
//! pool's `tls` option (trusted CAs, SNI override, client certificate), and the handshake on a
//! freshly connected socket.
//!
//! One [`UpstreamTls`] is built per distinct option and kept across route-table swaps by the
//! registry, so TLS sessions resume across configuration changes. Plain backends never touch
//! this module: an endpoint without TLS connects exactly as before.

use gateway_model::{BackendTls, Cert, parse_ca};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Which application protocol a connection is opened for (its ALPN offer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alpn {
    Http1,
    H2,
}

/// The compiled TLS option of a pool.
pub(crate) struct UpstreamTls {
    /// Identifies the option (and the client certificate's revision) for endpoint sharing.
    pub(crate) id: u64,
    sni: Option<ServerName<'static>>,
    /// Offering `http/1.1` and `h2`; or why the option could not be compiled (every connection
    /// then fails with it: a TLS pool never falls back to plaintext).
    configs: Result<(Arc<ClientConfig>, Arc<ClientConfig>), String>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("id", &self.id)
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

/// The identity of a pool's TLS option: the option and the client certificate it names.
pub(crate) fn fingerprint(tls: &BackendTls, client: Option<&Cert>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tls.hash(&mut h);
    if let Some(c) = client {
        c.cert_pem.hash(&mut h);
        c.key_pem.hash(&mut h);
    }
    h.finish().max(1)
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for UpstreamTls {}

impl UpstreamTls {
    /// Compiles a pool's TLS option; `client` is the certificate its `client_cert` names.
    pub(crate) fn build(tls: &BackendTls, client: Option<&Cert>, id: u64) -> UpstreamTls {
        let sni = tls
            .sni
            .as_deref()
            .and_then(|s| ServerName::try_from(s.to_string()).ok());
        UpstreamTls {
            id,
            sni,
            configs: configs(tls, client),
        }
    }

    /// The name verified (and sent as SNI unless it is an IP address) for a backend address.
    fn server_name(&self, address: &str) -> io::Result<ServerName<'static>> {
        if let Some(n) = &self.sni {
            return Ok(n.clone());
        }
        let host = if address.starts_with("unix:") {
            "localhost"
        } else {
            let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
            host.trim_start_matches('[').trim_end_matches(']')
        };
        ServerName::try_from(host.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TLS: '{host}' is not a server name; set the pool's tls.sni"),
            )
        })
    }

    /// Runs the TLS handshake on a connected socket.
    pub(crate) async fn handshake<S>(
        &self,
        io: S,
        address: &str,
        alpn: Alpn,
    ) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (h1, h2) = self
            .configs
            .as_ref()
            .map_err(|e| io::Error::other(format!("TLS to the backend is not usable: {e}")))?;
        let config = match alpn {
            Alpn::Http1 => h1.clone(),
            Alpn::H2 => h2.clone(),
        };
        let name = self.server_name(address)?;
        let stream = TlsConnector::from(config)
            .connect(name, io)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
        if alpn == Alpn::H2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(io::Error::other(
                "TLS: the backend did not agree to HTTP/2 (ALPN h2); use protocol http1 for this pool",
            ));
        }
        Ok(stream)
    }
}

fn configs(
    tls: &BackendTls,
    client: Option<&Cert>,
) -> Result<(Arc<ClientConfig>, Arc<ClientConfig>), String> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_pem {
        Some(pem) => {
            for der in parse_ca(pem).map_err(|e| e.to_string())? {
                roots.add(der).map_err(|e| format!("tls.ca_pem: {e}"))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match (&tls.client_cert, client) {
        (None, _) => builder.with_no_client_auth(),
        (Some(name), None) => return Err(format!("certificate '{name}' does not exist")),
        (Some(name), Some(c)) => {
            let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("certificate '{name}': chain: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
                .map_err(|_| format!("certificate '{name}': its key is not usable"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("certificate '{name}': {e}"))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let h1 = Arc::new(config.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((h1, Arc::new(config)))
}
