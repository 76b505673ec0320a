//! rustls configurations for the harness's TLS servers and clients.
//!
//! Every configuration is built with an explicit ring [`CryptoProvider`]
//! instead of rustls' process default: other crates in the tree may enable a
//! second provider, and then the implicit default panics at first use.
//!
//! Clients never consult the system trust store: a test either trusts
//! exactly the CA it made, or (no CA given) accepts any certificate, because
//! what such a test checks is the gateway's behaviour, not its certificate.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};

use crate::certs::CertKey;

/// The ring provider, shared by everything in this crate.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// All certificates in a PEM blob (other blocks, such as keys, are skipped).
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs =
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().context("parsing PEM certificates")?;
    if certs.is_empty() {
        bail!("no CERTIFICATE block in PEM");
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM blob.
pub fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| anyhow!("parsing PEM private key: {e}"))
}

fn roots(ca_pem: &[u8]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem).context("CA bundle")? {
        roots.add(cert).context("adding CA certificate")?;
    }
    Ok(Arc::new(roots))
}

fn versions_or_default<'a>(
    versions: &'a [&'static SupportedProtocolVersion],
) -> &'a [&'static SupportedProtocolVersion] {
    if versions.is_empty() {
        rustls::DEFAULT_VERSIONS
    } else {
        versions
    }
}

/// A server configuration presenting `cert`. With `client_ca_pem`, clients
/// must present a certificate issued by that CA (mutual TLS). Empty
/// `versions` means TLS 1.2 and 1.3; `alpn` lists protocols in preference
/// order (empty: no ALPN).
pub fn server_config(
    cert: &CertKey,
    client_ca_pem: Option<&str>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&str],
) -> Result<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions_or_default(versions))
        .context("protocol versions")?;
    let builder = match client_ca_pem {
        Some(pem) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(pem.as_bytes())?, provider())
                .build()
                .context("client verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(parse_certs(cert.cert_pem.as_bytes())?, parse_key(cert.key_pem.as_bytes())?)
        .context("server certificate and key")?;
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

/// How a client checks the server certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify<'a> {
    /// Accept anything (test certificates are often self-signed).
    None,
    /// Chain must lead to this CA (PEM) and the certificate must match the
    /// name the client connects to.
    Ca(&'a [u8]),
    /// Chain must lead to this CA, whatever names the certificate holds: for
    /// handshakes that send no SNI and so have no name to check.
    CaChainOnly(&'a [u8]),
}

/// A client configuration. `identity_pem` holds the client certificate chain
/// and its key in one PEM (see [`CertKey::identity_pem`]). Empty `versions`
/// means TLS 1.2 and 1.3; empty `alpn` sends no ALPN extension.
pub fn client_config(
    verify: Verify<'_>,
    identity_pem: Option<&[u8]>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&str],
) -> Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions_or_default(versions))
        .context("protocol versions")?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::None => Arc::new(AcceptAny(provider())),
        Verify::Ca(pem) => WebPkiServerVerifier::builder_with_provider(roots(pem)?, provider()).build()?,
        Verify::CaChainOnly(pem) => {
            Arc::new(ChainOnly(WebPkiServerVerifier::builder_with_provider(roots(pem)?, provider()).build()?))
        }
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let mut config = match identity_pem {
        Some(pem) => {
            builder.with_client_auth_cert(parse_certs(pem)?, parse_key(pem)?).context("client certificate and key")?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

/// The name a client verifies the server against: a DNS name, or an IP
/// literal (for which rustls sends no SNI).
pub fn server_name(name: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(name.to_string()).map_err(|e| anyhow!("invalid TLS server name {name:?}: {e}"))
}

/// Accepts every server certificate but still checks handshake signatures,
/// so a broken key/certificate pair on the server fails like it would in
/// production.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// WebPKI verification minus the name check. webpki validates the chain
/// before the name, so a name error means the chain itself was fine.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::TestCa;

    #[test]
    fn parses_identity_pem() {
        let leaf = TestCa::new("ca").issue_client("c", &[]);
        let pem = leaf.identity_pem();
        assert_eq!(parse_certs(pem.as_bytes()).unwrap().len(), 1);
        parse_key(pem.as_bytes()).unwrap();
        assert!(parse_certs(leaf.key_pem.as_bytes()).is_err());
        assert!(parse_key(leaf.cert_pem.as_bytes()).is_err());
    }

    #[test]
    fn configs_build() {
        let ca = TestCa::new("ca");
        let leaf = ca.issue_server(&["a"]);
        let s = server_config(&leaf, Some(&ca.cert_pem()), &[&rustls::version::TLS13], &["h2", "http/1.1"]).unwrap();
        assert_eq!(s.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let pem = ca.cert_pem();
        for v in [Verify::None, Verify::Ca(pem.as_bytes()), Verify::CaChainOnly(pem.as_bytes())] {
            client_config(v, Some(leaf.identity_pem().as_bytes()), &[], &[]).unwrap();
        }
        assert!(client_config(Verify::Ca(b"junk"), None, &[], &[]).is_err());
    }
}
