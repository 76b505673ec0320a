//! TLS material compiled for the request path: rustls server configs for Gateway servers
//! (SIMPLE, MUTUAL, OPTIONAL_MUTUAL; versions; cipher suites; client SAN checks) and peer
//! settings for TLS origination to upstreams.
//!
//! Everything here is built when a snapshot is compiled, never per connection. A server whose
//! material fails to build is reported and left out; the other servers keep serving.

pub(crate) mod client_auth;
pub(crate) mod san;
pub(crate) mod serving;
pub(crate) mod upstream;

use meshgate_model::snapshot::{Secret, ServerTls, ServerTlsMode, TlsVersion};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("secret {0:?} is missing from the snapshot")]
    MissingSecret(String),
    #[error("secret {0:?} has no {1}")]
    MissingPart(String, &'static str),
    #[error("secret {0:?}: {1}")]
    BadPem(String, String),
    #[error("no cipher suite left after applying cipherSuites for the allowed TLS versions")]
    NoCipherSuites,
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("secret {0:?}: the private key does not belong to the certificate (tls.key and tls.crt differ)")]
    KeyMismatch(String),
}

/// A terminating server's rustls config and the certificates it serves.
pub(crate) struct ServerTlsConfig {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) served: Vec<serving::Served>,
}

/// Sets `meshgate_certificate_expiry_seconds` to the certificates `runtime` serves (a removed
/// certificate's series goes away).
pub(crate) fn report_expiry(runtime: &crate::compiled::Runtime, gauge: &prometheus::IntGaugeVec) {
    gauge.reset();
    for server in runtime.listeners.values().flat_map(|l| &l.tls) {
        for served in &server.served {
            gauge.with_label_values(&[served.secret.as_str()]).set(served.not_after);
        }
    }
}

pub(crate) fn certs(pem: &str, name: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem(name.to_string(), e.to_string()))?;
    // pingora and webpki parse these again later; reject garbage here instead of panicking there.
    for c in &certs {
        x509_parser::parse_x509_certificate(c).map_err(|e| TlsError::BadPem(name.to_string(), e.to_string()))?;
    }
    if certs.is_empty() {
        return Err(TlsError::BadPem(name.to_string(), "no certificate".into()));
    }
    Ok(certs)
}

pub(crate) fn key(pem: &str, name: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::BadPem(name.to_string(), e.to_string()))
}

fn secret<'a>(secrets: &'a BTreeMap<String, Secret>, name: &str) -> Result<&'a Secret, TlsError> {
    secrets.get(name).ok_or_else(|| TlsError::MissingSecret(name.to_string()))
}

pub(crate) fn roots(pem: &str, name: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(pem, name)? {
        store.add(c)?;
    }
    Ok(store)
}

/// Builds the rustls config of one terminating Gateway server.
pub(crate) fn server_config(def: &ServerTls, secrets: &BTreeMap<String, Secret>) -> Result<ServerTlsConfig, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !def.cipher_suites.is_empty() {
        // TLS 1.3 suites are kept unless named: Envoy's cipherSuites applies to TLS <= 1.2 only.
        let named_13 = def.cipher_suites.iter().any(|n| n.starts_with("TLS13_"));
        provider.cipher_suites.retain(|s| {
            let name = format!("{:?}", s.suite());
            def.cipher_suites.contains(&name) || (!named_13 && name.starts_with("TLS13_"))
        });
    }
    let min = def.min_version.unwrap_or(TlsVersion::V1_2);
    let max = def.max_version.unwrap_or(TlsVersion::V1_3);
    let mut versions = Vec::new();
    if min <= TlsVersion::V1_2 && max >= TlsVersion::V1_2 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= TlsVersion::V1_3 {
        versions.push(&rustls::version::TLS13);
    }
    let usable = provider.cipher_suites.iter().any(|s| versions.iter().any(|v| s.version() == *v));
    if versions.is_empty() || !usable {
        return Err(TlsError::NoCipherSuites);
    }

    let mut keys = Vec::new();
    let mut served = Vec::new();
    for cred_name in &def.credentials {
        let cred = secret(secrets, cred_name)?;
        let missing = |what| TlsError::MissingPart(cred_name.clone(), what);
        let chain = certs(cred.cert_pem.as_deref().ok_or_else(|| missing("certificate"))?, cred_name)?;
        let key = key(cred.key_pem.as_deref().ok_or_else(|| missing("private key"))?, cred_name)?;
        let (certified, not_after) = serving::certified_key(chain, key, &provider, cred_name)?;
        keys.push(Arc::new(certified));
        served.push(serving::Served { secret: cred_name.clone(), not_after });
    }
    if keys.is_empty() {
        return Err(TlsError::MissingSecret(String::new()));
    }

    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let builder = match def.mode {
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
            let ca_name = def.client_ca.as_deref().unwrap_or("");
            let ca = secret(secrets, ca_name)?;
            let ca_pem = ca.ca_pem.as_deref().ok_or(TlsError::MissingPart(ca_name.into(), "ca.crt"))?;
            let roots = Arc::new(roots(ca_pem, ca_name)?);
            let algorithms = provider.signature_verification_algorithms;
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            if def.mode == ServerTlsMode::OptionalMutual {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| TlsError::Verifier(e.to_string()))?;
            let verifier = client_auth::ClientVerifier::wrap(verifier, certs(ca_pem, ca_name)?, algorithms);
            let verifier = san::SanCheckingVerifier::wrap(verifier, &def.subject_alt_names);
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(serving::ByClientSchemes::new(keys)));
    if def.http {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Ok(ServerTlsConfig { config: Arc::new(config), served })
}
