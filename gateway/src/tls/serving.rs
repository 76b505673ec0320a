//! The gateway's own certificates: a chain and its key, taken as Envoy takes them.
//!
//! rustls's `with_single_cert` checks that the key matches the certificate by parsing the leaf
//! with webpki, which accepts only X.509 v3. Istio's "Secure Gateways" task makes its leaf
//! certificates with `openssl x509 -req` (v1: no extensions, serial 0) and Envoy serves them.
//! So the key is matched here, against a leaf parsed by x509-parser, and nothing about the
//! chain (version, extensions, validity dates) is judged: a client judges what it is served.
//!
//! Several certificates (`credentialNames`, e.g. RSA and ECDSA) are picked per handshake by the
//! client's signature schemes, as Envoy does: ECDSA (or another non-RSA key) for clients that
//! can verify it, otherwise the first certificate the client can verify.

use super::TlsError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureAlgorithm;
use std::sync::Arc;

/// What a served certificate reports besides itself (for `meshgate_certificate_expiry_seconds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Served {
    /// The snapshot's secret key (`kubernetes://ns/name` or `file://path`).
    pub(crate) secret: String,
    /// The leaf's `notAfter`, in seconds since the Unix epoch.
    pub(crate) not_after: i64,
}

/// A chain and its key, checked to belong together. `name` names the secret in errors.
pub(crate) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    name: &str,
) -> Result<(CertifiedKey, i64), TlsError> {
    let leaf = chain.first().ok_or_else(|| TlsError::BadPem(name.to_string(), "no certificate".into()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| TlsError::BadPem(name.to_string(), format!("certificate: {e}")))?;
    let not_after = parsed.validity().not_after.timestamp();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadPem(name.to_string(), format!("private key: {e}")))?;
    // A key type whose public half rustls cannot derive is served unchecked, as rustls does.
    if let Some(public) = signing.public_key() {
        if public.as_ref() != parsed.tbs_certificate.subject_pki.raw {
            return Err(TlsError::KeyMismatch(name.to_string()));
        }
    }
    Ok((CertifiedKey::new(chain, signing), not_after))
}

/// Picks one of a server's certificates for each ClientHello.
#[derive(Debug)]
pub(crate) struct ByClientSchemes {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ByClientSchemes {
    pub(crate) fn new(keys: Vec<Arc<CertifiedKey>>) -> ByClientSchemes {
        ByClientSchemes { keys }
    }
}

impl ResolvesServerCert for ByClientSchemes {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let [only] = self.keys.as_slice() {
            return Some(only.clone());
        }
        let schemes = hello.signature_schemes();
        let usable = |k: &&Arc<CertifiedKey>| k.key.choose_scheme(schemes).is_some();
        self.keys
            .iter()
            .filter(usable)
            .find(|k| k.key.algorithm() != SignatureAlgorithm::RSA)
            .or_else(|| self.keys.iter().find(usable))
            // None usable: the first one, so the handshake fails on the client's schemes, which
            // says more than "no certificate".
            .or_else(|| self.keys.first())
            .cloned()
    }
}
