//! TLS certificates served by the HTTPS listener of every node.
//!
//! A [`Cert`] carries a PEM chain and its PEM private key. The names it is served for and its
//! validity period are derived from the chain by [`inspect_cert`], a pure function of the PEM
//! text, so it runs both at the boundary and in `State::apply`. Whether the certificate has
//! expired depends on the clock, so [`check_cert_time`] runs only at the boundary.
//!
//! The key never leaves the replicated state: [`Cert::redacted`] is what read APIs show, and
//! `Debug` never prints it.

use crate::error::Invalid;
use crate::validate::validate_name;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::fmt;
use x509_parser::extensions::GeneralName;

/// Largest PEM chain or key accepted (bytes).
pub const MAX_PEM: usize = 64 * 1024;

/// A certificate chain and its key, served for the names in the leaf certificate.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cert {
    /// Unique certificate name (letters, digits, `.`, `_`, `-`; at most 64).
    #[serde(default)]
    pub name: String,
    /// The leaf certificate first, then its intermediates, PEM.
    #[serde(default)]
    pub cert_pem: String,
    /// The leaf's private key, PEM (PKCS#8, PKCS#1 or SEC1). Empty in what read APIs show.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_pem: String,
    /// Served to clients whose SNI names no certificate (or who send none).
    #[serde(default, skip_serializing_if = "is_false")]
    pub default: bool,
    /// DNS names the leaf is valid for (its subjectAltNames, else its common name); derived
    /// from `cert_pem`, ignored on input.
    #[serde(default)]
    pub names: Vec<String>,
    /// Start of validity, Unix seconds; derived, ignored on input.
    #[serde(default)]
    pub not_before: i64,
    /// End of validity, Unix seconds; derived, ignored on input.
    #[serde(default)]
    pub not_after: i64,
    /// The configuration revision that last changed this certificate; set by the cluster.
    #[serde(default)]
    pub revision: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl fmt::Debug for Cert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cert")
            .field("name", &self.name)
            .field("names", &self.names)
            .field("default", &self.default)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .field("revision", &self.revision)
            .finish()
    }
}

impl Cert {
    /// The certificate without its key, as read APIs and watchers show it.
    pub fn redacted(&self) -> Cert {
        Cert {
            key_pem: String::new(),
            ..self.clone()
        }
    }
}

/// What a chain says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
}

/// Checks a certificate's name, chain and key, and derives its names and validity period.
///
/// Refused: a chain or key that is not PEM, a leaf that is not X.509, a key of an unsupported
/// type, a key that does not belong to the leaf, a leaf without a DNS name.
pub fn validate_cert(c: &Cert) -> Result<CertInfo, Invalid> {
    validate_name("name", &c.name)?;
    inspect_cert(&c.cert_pem, &c.key_pem)
}

const PEM_CHAIN_FIX: &str = "pass the chain as PEM, leaf first (-----BEGIN CERTIFICATE----- ...), e.g. the fullchain.pem of your CA";
const PEM_KEY_FIX: &str = "pass the leaf's private key as PEM (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)";

/// Parses a PEM chain and key (see [`validate_cert`]).
pub fn inspect_cert(cert_pem: &str, key_pem: &str) -> Result<CertInfo, Invalid> {
    if cert_pem.len() > MAX_PEM {
        return Err(Invalid::new(
            "cert_pem",
            format!("is {} bytes", cert_pem.len()),
            format!("pass at most {MAX_PEM} bytes"),
        ));
    }
    if key_pem.len() > MAX_PEM {
        return Err(Invalid::new(
            "key_pem",
            format!("is {} bytes", key_pem.len()),
            format!("pass at most {MAX_PEM} bytes"),
        ));
    }
    let chain = parse_chain(cert_pem)?;
    if key_pem.trim().is_empty() {
        return Err(Invalid::new("key_pem", "is empty", PEM_KEY_FIX));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        Invalid::new(
            "key_pem",
            format!(
                "is not a PEM private key ({})",
                pem_problem(&e, "private key")
            ),
            PEM_KEY_FIX,
        )
    })?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
        Invalid::new(
            "cert_pem",
            format!("the first certificate is not valid X.509 ({e})"),
            PEM_CHAIN_FIX,
        )
    })?;
    for (i, der) in chain.iter().enumerate().skip(1) {
        if let Err(e) = x509_parser::parse_x509_certificate(der) {
            return Err(Invalid::new(
                "cert_pem",
                format!(
                    "certificate {} of the chain is not valid X.509 ({e})",
                    i + 1
                ),
                PEM_CHAIN_FIX,
            ));
        }
    }
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        Invalid::new(
            "key_pem",
            format!("is not a usable private key ({e})"),
            "use an ECDSA (P-256, P-384), Ed25519 or RSA key",
        )
    })?;
    let Some(spki) = signer.public_key() else {
        return Err(Invalid::new(
            "key_pem",
            "its public key cannot be derived",
            "use an ECDSA (P-256, P-384), Ed25519 or RSA key",
        ));
    };
    if spki.as_ref() != leaf.public_key().raw {
        return Err(Invalid::new(
            "key_pem",
            "does not match the certificate (the key's public key is not the leaf's)",
            "pass the private key that was issued with this certificate, and the leaf certificate first in cert_pem",
        ));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in leaf.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(Invalid::new(
            "cert_pem",
            "the leaf certificate names no DNS name (no subjectAltName, no common name)",
            "issue the certificate for the host names it should serve",
        ));
    }
    let validity = leaf.validity();
    Ok(CertInfo {
        names,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

fn parse_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, Invalid> {
    if pem.trim().is_empty() {
        return Err(Invalid::new("cert_pem", "is empty", PEM_CHAIN_FIX));
    }
    let mut chain = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        match item {
            Ok(der) => chain.push(der),
            Err(e) => {
                return Err(Invalid::new(
                    "cert_pem",
                    format!("is not valid PEM ({})", pem_problem(&e, "certificate")),
                    PEM_CHAIN_FIX,
                ));
            }
        }
    }
    if chain.is_empty() {
        return Err(Invalid::new(
            "cert_pem",
            "holds no PEM certificate",
            PEM_CHAIN_FIX,
        ));
    }
    Ok(chain)
}

/// What is wrong with a PEM text, in words, without quoting any of it (it may be a key).
fn pem_problem(e: &rustls_pki_types::pem::Error, what: &str) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "a section has no END line: the text is cut short".into(),
        E::IllegalSectionStart { .. } => "a BEGIN line is malformed".into(),
        E::Base64Decode(_) => "a section's base64 does not decode".into(),
        E::NoItemsFound => format!("no {what} section found"),
        E::SectionTooLarge => "a section is too large".into(),
        _ => "unreadable".into(),
    }
}

/// Checks that a certificate is valid at `now` (Unix seconds). Uses the clock, so it runs at
/// the boundary, never in `State::apply`.
pub fn check_cert_time(info: &CertInfo, now: i64) -> Result<(), Invalid> {
    if info.not_after < now {
        return Err(Invalid::new(
            "cert_pem",
            format!(
                "the certificate expired at {} (Unix time {}), it is now {now}",
                info.not_after, info.not_after
            ),
            "renew the certificate and upload the new one",
        ));
    }
    if info.not_before > now {
        return Err(Invalid::new(
            "cert_pem",
            format!(
                "the certificate is not valid before Unix time {}, it is now {now}",
                info.not_before
            ),
            "check the clock of the machine that issued it, or wait until it is valid",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(names: &[&str]) -> (String, String) {
        let k = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (k.cert.pem(), k.signing_key.serialize_pem())
    }

    #[test]
    fn names_and_validity_are_derived() {
        let (cert, key) = make(&["a.test", "*.b.test"]);
        let info = inspect_cert(&cert, &key).unwrap();
        assert_eq!(
            info.names,
            vec!["*.b.test".to_string(), "a.test".to_string()]
        );
        assert!(info.not_after > info.not_before);
    }

    #[test]
    fn bad_input_is_refused_with_the_field() {
        let (cert, key) = make(&["a.test"]);
        let (_, other_key) = make(&["a.test"]);
        let e = inspect_cert("not pem", &key).unwrap_err();
        assert_eq!(e.field, "cert_pem", "{e}");
        let e = inspect_cert(&cert, "nope").unwrap_err();
        assert_eq!(e.field, "key_pem", "{e}");
        let e = inspect_cert(&cert, &other_key).unwrap_err();
        assert!(e.problem.contains("does not match"), "{e}");
        let garbled = cert.replace("MII", "MIX");
        assert!(inspect_cert(&garbled, &key).is_err());
    }

    #[test]
    fn expiry_is_checked_against_the_given_clock() {
        let info = CertInfo {
            names: vec!["a".into()],
            not_before: 100,
            not_after: 200,
        };
        assert!(check_cert_time(&info, 150).is_ok());
        assert!(
            check_cert_time(&info, 201)
                .unwrap_err()
                .problem
                .contains("expired")
        );
        assert!(check_cert_time(&info, 50).is_err());
    }

    #[test]
    fn debug_and_redacted_never_show_the_key() {
        let (cert_pem, key_pem) = make(&["a.test"]);
        let c = Cert {
            name: "a".into(),
            cert_pem,
            key_pem,
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("PRIVATE"));
        let json = serde_json::to_string(&c.redacted()).unwrap();
        assert!(
            !json.contains("PRIVATE") && !json.contains("key_pem"),
            "{json}"
        );
    }
}
