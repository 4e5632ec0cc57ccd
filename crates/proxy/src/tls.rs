//! HTTPS: the certificate table compiled from the replicated certificates, the rustls
//! resolver that picks a certificate by SNI for every new handshake, and the redirect of
//! plain-HTTP requests to HTTPS.
//!
//! A certificate is chosen for the SNI name: exact names first, then a `*.suffix` wildcard
//! covering exactly one more label (`*.example.com` serves `a.example.com`, not
//! `a.b.example.com` nor `example.com`), then the certificate marked `default`. Among
//! certificates naming the same host, the one valid longest (latest `not_after`) wins, then
//! the name sorting first. No match and no default: the handshake fails with an
//! `unrecognized_name` alert.
//!
//! The table is swapped whole when certificates change; handshakes under way and open
//! connections keep the certificate they got, so replacing a certificate drops nothing.

use arc_swap::ArcSwap;
use bytes::Bytes;
use gateway_model::{Cert, State};
use http::{HeaderValue, Request, Response, StatusCode};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::sync::Arc;

use crate::body::ProxyBody;

/// Certificates by the names they serve.
#[derive(Default)]
pub(crate) struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// How many certificates loaded.
    pub(crate) loaded: usize,
}

fn load(c: &Cert) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("chain: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).map_err(|e| format!("key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| e.to_string())
}

impl CertTable {
    pub(crate) fn compile(state: &State) -> CertTable {
        // Best first: latest expiry, then name.
        let mut certs: Vec<&Cert> = state.certs.values().collect();
        certs.sort_by(|a, b| b.not_after.cmp(&a.not_after).then(a.name.cmp(&b.name)));
        let mut table = CertTable::default();
        let mut defaults: Vec<(&str, Arc<CertifiedKey>)> = Vec::new();
        for c in certs {
            let key = match load(c) {
                Ok(k) => Arc::new(k),
                Err(e) => {
                    // Validated before it was committed; only a provider difference gets here.
                    tracing::warn!(cert = %c.name, error = %e, "certificate not loaded");
                    continue;
                }
            };
            table.loaded += 1;
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(suffix) => {
                        table
                            .wildcard
                            .entry(suffix.to_string())
                            .or_insert_with(|| key.clone());
                    }
                    None => {
                        table.exact.entry(n.clone()).or_insert_with(|| key.clone());
                    }
                }
            }
            if c.default {
                defaults.push((&c.name, key.clone()));
            }
        }
        defaults.sort_by(|a, b| a.0.cmp(b.0));
        table.default = defaults.into_iter().next().map(|(_, k)| k);
        table
    }

    /// The certificate for SNI name `sni` (any case, no trailing dot needed).
    pub(crate) fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return Some(k.clone());
            }
        }
        self.default.clone()
    }
}

/// Picks a certificate from the current table for every handshake.
#[derive(Debug)]
pub(crate) struct Resolver {
    pub(crate) table: Arc<ArcSwap<CertTable>>,
}

impl std::fmt::Debug for CertTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertTable")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table.load().find(hello.server_name())
    }
}

/// The rustls server configuration of the HTTPS listener: ALPN h2 and http/1.1, certificates
/// from `table`.
pub(crate) fn server_config(table: Arc<ArcSwap<CertTable>>) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { table }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// The redirect of a plain-HTTP request to the same host and path over HTTPS.
pub(crate) fn redirect_to_https<B>(
    req: &Request<B>,
    status: StatusCode,
    https_port: Option<u16>,
) -> Response<ProxyBody> {
    let mut buf = [0u8; 256];
    let host = crate::headers::request_host(req, &mut buf);
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let location = match https_port {
        Some(port) if port != 443 => format!("https://{host}:{port}{target}"),
        _ => format!("https://{host}{target}"),
    };
    let mut resp = Response::new(ProxyBody::full(Bytes::from(format!(
        "redirecting to {location}\n"
    ))));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str, names: &[&str], default: bool, not_after: i64) -> Cert {
        let k = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        Cert {
            name: name.into(),
            cert_pem: k.cert.pem(),
            key_pem: k.signing_key.serialize_pem(),
            default,
            names: names.iter().map(|s| s.to_string()).collect(),
            not_after,
            ..Default::default()
        }
    }

    fn table(certs: Vec<Cert>) -> (CertTable, Vec<Vec<u8>>) {
        let mut state = State::default();
        let ders = certs
            .iter()
            .map(|c| {
                CertificateDer::from_pem_slice(c.cert_pem.as_bytes())
                    .unwrap()
                    .to_vec()
            })
            .collect();
        for c in certs {
            state.certs.insert(c.name.clone(), c);
        }
        (CertTable::compile(&state), ders)
    }

    fn leaf(k: Option<Arc<CertifiedKey>>) -> Option<Vec<u8>> {
        k.map(|k| k.cert[0].to_vec())
    }

    #[test]
    fn exact_then_one_label_wildcard_then_default() {
        let (t, der) = table(vec![
            cert("a", &["a.test"], false, 10),
            cert("w", &["*.b.test"], false, 10),
            cert("d", &["fallback.test"], true, 10),
        ]);
        assert_eq!(t.loaded, 3);
        assert_eq!(leaf(t.find(Some("A.test."))), Some(der[0].clone()));
        assert_eq!(leaf(t.find(Some("x.b.test"))), Some(der[1].clone()));
        // A wildcard covers one label: these fall to the default.
        assert_eq!(leaf(t.find(Some("x.y.b.test"))), Some(der[2].clone()));
        assert_eq!(leaf(t.find(Some("b.test"))), Some(der[2].clone()));
        assert_eq!(leaf(t.find(None)), Some(der[2].clone()));
    }

    #[test]
    fn no_default_means_no_certificate_and_latest_expiry_wins() {
        let (t, der) = table(vec![
            cert("old", &["a.test"], false, 10),
            cert("new", &["a.test"], false, 20),
        ]);
        assert!(t.find(None).is_none());
        assert!(t.find(Some("other.test")).is_none());
        assert_eq!(leaf(t.find(Some("a.test"))), Some(der[1].clone()));
    }
}
