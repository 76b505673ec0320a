//! TLS origination to upstreams (DestinationRule `trafficPolicy.tls`) as pingora peer options.

use super::TlsError;
use meshgate_model::snapshot::{Secret, UpstreamTls};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{CertKey, WrappedX509};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Built once per cluster; applied to each peer.
#[derive(Clone)]
pub(crate) struct UpstreamTlsRuntime {
    pub(crate) sni: String,
    ca: Option<Arc<[WrappedX509]>>,
    client: Option<Arc<CertKey>>,
    verify: bool,
    verify_hostname: bool,
}

impl UpstreamTlsRuntime {
    /// `host` is the destination host, the SNI when neither `sni` nor a DNS SAN is given.
    pub(crate) fn compile(
        def: &UpstreamTls,
        host: &str,
        secrets: &BTreeMap<String, Secret>,
    ) -> Result<UpstreamTlsRuntime, TlsError> {
        let get = |name: &str| secrets.get(name).ok_or_else(|| TlsError::MissingSecret(name.to_string()));
        let ca = match &def.ca {
            None => None,
            Some(name) => {
                let pem = get(name)?.ca_pem.as_deref().ok_or(TlsError::MissingPart(name.clone(), "ca.crt"))?;
                let wrapped: Vec<WrappedX509> = super::certs(pem, name)?
                    .into_iter()
                    .map(|c| WrappedX509::new(c.to_vec(), pingora_core::utils::tls::parse_x509))
                    .collect();
                Some(Arc::from(wrapped))
            }
        };
        let client = match &def.client_certificate {
            None => None,
            Some(name) => {
                let s = get(name)?;
                let chain =
                    super::certs(s.cert_pem.as_deref().ok_or(TlsError::MissingPart(name.clone(), "tls.crt"))?, name)?;
                let key =
                    super::key(s.key_pem.as_deref().ok_or(TlsError::MissingPart(name.clone(), "tls.key"))?, name)?;
                Some(Arc::new(CertKey::new(chain.iter().map(|c| c.to_vec()).collect(), key.secret_der().to_vec())))
            }
        };
        // Istio: subjectAltNames replace hostname verification; pingora verifies the SNI name,
        // so without an explicit `sni` the first SAN becomes the name sent and verified.
        let sni = if !def.sni.is_empty() {
            def.sni.clone()
        } else {
            def.subject_alt_names.iter().find(|s| !s.contains("://")).cloned().unwrap_or_else(|| host.to_string())
        };
        Ok(UpstreamTlsRuntime {
            sni,
            ca,
            client,
            verify: !def.insecure_skip_verify,
            verify_hostname: !def.insecure_skip_verify,
        })
    }

    pub(crate) fn peer(&self, addr: std::net::SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, self.sni.clone());
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify_hostname;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
        peer
    }
}
