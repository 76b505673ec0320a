//! Client certificate verification for MUTUAL and OPTIONAL_MUTUAL servers.
//!
//! webpki (rustls's verifier) refuses X.509 v1 and v2 certificates outright. Envoy (BoringSSL)
//! accepts a v1 client certificate that its CA signed, and Istio's own task makes client
//! certificates that way (`openssl x509 -req ... -set_serial 1`). So a v3 chain is verified by
//! webpki as before, and only a leaf older than v3 that webpki refused is verified here, as
//! strictly as a v1 certificate allows: valid at this moment, signed by a configured CA (or
//! by an intermediate that is a CA, valid, and signed in turn), and the handshake signed by
//! the leaf's key. Nothing else is relaxed.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, PeerMisbehaved, SignatureScheme};
use std::sync::Arc;
use x509_parser::certificate::X509Certificate;
use x509_parser::time::ASN1Time;
use x509_parser::x509::X509Version;

/// Intermediates followed at most (Envoy's default `max_verify_depth` is unlimited; a chain
/// from a client is short, and this bounds the work an attacker can ask for).
const MAX_DEPTH: usize = 8;

#[derive(Debug)]
pub(crate) struct ClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    /// The configured CA certificates, kept as DER and parsed only on the rare v1 path.
    anchors: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientVerifier {
    /// Wraps webpki's verifier for the CA certificates `anchors`.
    pub(crate) fn wrap(
        webpki: Arc<dyn ClientCertVerifier>,
        anchors: Vec<CertificateDer<'static>>,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Arc<dyn ClientCertVerifier> {
        Arc::new(ClientVerifier { webpki, anchors, algorithms })
    }
}

/// The leaf's public key when it is older than v3 (the certificates webpki refuses).
fn pre_v3_key(cert: &[u8]) -> Option<SubjectPublicKeyInfoDer<'static>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    (parsed.version() != X509Version::V3)
        .then(|| SubjectPublicKeyInfoDer::from(parsed.tbs_certificate.subject_pki.raw.to_vec()))
}

fn bad(e: CertificateError) -> Error {
    Error::InvalidCertificate(e)
}

fn check_validity(cert: &X509Certificate<'_>, at: ASN1Time) -> Result<(), Error> {
    let validity = cert.validity();
    if at < validity.not_before {
        return Err(bad(CertificateError::NotValidYet));
    }
    if at > validity.not_after {
        return Err(bad(CertificateError::Expired));
    }
    Ok(())
}

/// A CA certificate may sign others: v3 with basicConstraints `cA`, and keyCertSign when it
/// restricts its key usage.
fn may_issue(cert: &X509Certificate<'_>) -> bool {
    let ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let usage = match cert.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    };
    ca && usage
}

fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == issuer.subject().as_raw() && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

impl ClientVerifier {
    /// Chain verification for a leaf older than v3.
    fn verify_pre_v3(&self, leaf: &[u8], intermediates: &[CertificateDer<'_>], now: UnixTime) -> Result<(), Error> {
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf).map_err(|_| bad(CertificateError::BadEncoding))?;
        let at = i64::try_from(now.as_secs())
            .ok()
            .and_then(|s| ASN1Time::from_timestamp(s).ok())
            .ok_or_else(|| Error::General("clock out of range".into()))?;
        check_validity(&leaf, at)?;
        let anchors: Vec<_> =
            self.anchors.iter().filter_map(|c| x509_parser::parse_x509_certificate(c).ok().map(|(_, c)| c)).collect();
        let intermediates: Vec<_> =
            intermediates.iter().filter_map(|c| x509_parser::parse_x509_certificate(c).ok().map(|(_, c)| c)).collect();
        let mut current = &leaf;
        for _ in 0..MAX_DEPTH {
            // Trust anchors are trusted as configured (webpki does not judge them either).
            if anchors.iter().any(|a| signed_by(current, a)) {
                return Ok(());
            }
            current = intermediates
                .iter()
                .find(|i| may_issue(i) && check_validity(i, at).is_ok() && signed_by(current, i))
                .ok_or_else(|| bad(CertificateError::UnknownIssuer))?;
        }
        Err(bad(CertificateError::UnknownIssuer))
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match self.webpki.verify_client_cert(end_entity, intermediates, now) {
            Ok(verified) => Ok(verified),
            Err(refused) if pre_v3_key(end_entity).is_some() => {
                tracing::trace!(%refused, "webpki refused a pre-v3 client certificate; verifying it as Envoy does");
                self.verify_pre_v3(end_entity, intermediates, now).map(|()| ClientCertVerified::assertion())
            }
            Err(refused) => Err(refused),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // webpki first: a v3 certificate pays nothing for the fallback.
        let refused = match self.webpki.verify_tls12_signature(message, cert, dss) {
            Ok(valid) => return Ok(valid),
            Err(refused) => refused,
        };
        let Some(spki) = pre_v3_key(cert) else { return Err(refused) };
        // TLS 1.2 schemes do not name one algorithm (an ECDSA scheme covers every curve): try
        // each one the provider maps the scheme to.
        let key = webpki::RawPublicKeyEntity::try_from(&spki).map_err(|_| bad(CertificateError::BadEncoding))?;
        let candidates = self
            .algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algs)| *algs)
            .ok_or(Error::PeerMisbehaved(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme))?;
        if candidates.iter().any(|alg| key.verify_signature(*alg, message, dss.signature()).is_ok()) {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(bad(CertificateError::BadSignature))
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        match self.webpki.verify_tls13_signature(message, cert, dss) {
            Ok(valid) => Ok(valid),
            Err(refused) => match pre_v3_key(cert) {
                Some(spki) => {
                    rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, &self.algorithms)
                }
                None => Err(refused),
            },
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
