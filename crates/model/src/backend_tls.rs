//! TLS from the gateway to a pool's backends (`Pool::tls`).
//!
//! The pool carries the CA bundle it trusts (PEM, inline), an optional SNI override and the
//! name of a certificate uploaded with `gateway cert add` that the gateway presents to backends
//! asking for a client certificate. The key of that certificate stays in the replicated
//! certificate store and is never copied into the pool, so read APIs showing the pool show no
//! key. Whether the named certificate exists is checked by `State::apply`.

use crate::error::Invalid;
use crate::validate::validate_name;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};

/// How the gateway speaks TLS to a pool's backends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTls {
    /// The CA certificates (PEM) a backend's certificate must chain to; the Mozilla roots
    /// bundled with the gateway (webpki-roots) when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The server name sent (SNI) and verified; when omitted, the host of the backend's
    /// address (an IP address is verified against the certificate's IP names and no SNI is
    /// sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The name of a certificate (uploaded with `gateway cert add`) presented to backends that
    /// ask for a client certificate; none when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
}

const CA_FIX: &str = "pass the CA certificates as PEM (-----BEGIN CERTIFICATE----- ...), or leave tls.ca_pem out to trust the usual public CAs";

/// Checks a pool's TLS options (all but the existence of `client_cert`).
pub fn validate_backend_tls(t: &BackendTls) -> Result<(), Invalid> {
    if let Some(ca) = &t.ca_pem {
        parse_ca(ca)?;
    }
    if let Some(sni) = &t.sni
        && (sni.is_empty() || sni.len() > 253 || ServerName::try_from(sni.as_str()).is_err())
    {
        return Err(Invalid::new(
            "tls.sni",
            format!("'{sni}' is not a host name"),
            "use a DNS name such as api.internal (or an IP address), or leave it out to use the backend's host",
        ));
    }
    if let Some(name) = &t.client_cert {
        validate_name("tls.client_cert", name)?;
    }
    Ok(())
}

/// The CA certificates of a PEM bundle, each checked to be a usable trust anchor.
pub fn parse_ca(pem: &str) -> Result<Vec<CertificateDer<'static>>, Invalid> {
    if pem.len() > crate::cert::MAX_PEM {
        return Err(Invalid::new(
            "tls.ca_pem",
            format!("is {} bytes", pem.len()),
            format!("pass at most {} bytes", crate::cert::MAX_PEM),
        ));
    }
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        match item {
            Ok(der) => out.push(der),
            Err(_) => return Err(Invalid::new("tls.ca_pem", "is not valid PEM", CA_FIX)),
        }
    }
    if out.is_empty() {
        return Err(Invalid::new(
            "tls.ca_pem",
            "holds no PEM certificate",
            CA_FIX,
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, der) in out.iter().enumerate() {
        if let Err(e) = roots.add(der.clone()) {
            return Err(Invalid::new(
                "tls.ca_pem",
                format!("certificate {} is not a usable CA certificate ({e})", i + 1),
                CA_FIX,
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn accepts_a_ca_an_sni_and_a_cert_name() {
        let t = BackendTls {
            ca_pem: Some(ca_pem()),
            sni: Some("api.internal".into()),
            client_cert: Some("client-1".into()),
        };
        validate_backend_tls(&t).unwrap();
        validate_backend_tls(&BackendTls::default()).unwrap();
    }

    #[test]
    fn refuses_bad_pem_sni_and_names() {
        let bad = |t: BackendTls| validate_backend_tls(&t).unwrap_err().field;
        assert_eq!(
            bad(BackendTls {
                ca_pem: Some("hello".into()),
                ..Default::default()
            }),
            "tls.ca_pem"
        );
        assert_eq!(
            bad(BackendTls {
                ca_pem: Some(
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()
                ),
                ..Default::default()
            }),
            "tls.ca_pem"
        );
        assert_eq!(
            bad(BackendTls {
                sni: Some("not a name".into()),
                ..Default::default()
            }),
            "tls.sni"
        );
        assert_eq!(
            bad(BackendTls {
                client_cert: Some("a/b".into()),
                ..Default::default()
            }),
            "tls.client_cert"
        );
    }
}
