//! Handshake-level TLS probes: what a server negotiates (version, ALPN, cipher, certificate)
//! or why it refused, without sending a request.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use rustls::{ProtocolVersion, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conn::{connect_tcp, connect_tls};
use super::DEFAULT_TIMEOUT;
use crate::certs::CertKey;
use crate::tls::Verify;

/// What a completed TLS handshake negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `ProtocolVersion::TLSv1_2` or `TLSv1_3`.
    pub protocol_version: ProtocolVersion,
    pub alpn: Option<String>,
    /// e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher_suite: String,
    /// DER of the server's leaf certificate; compare with
    /// [`CertKey::cert_der`] to see which certificate SNI selected.
    pub peer_cert_der_first: Option<Vec<u8>>,
}

/// How long a TLS 1.3 probe listens after its handshake: a server rejects a
/// client certificate only after the client already considers the handshake
/// done, so the rejection arrives as an alert on the first read. A server
/// that accepted usually says so sooner by sending session tickets (rustls
/// does by default), which ends the wait early.
const POST_HANDSHAKE_WAIT: Duration = Duration::from_secs(1);

/// Handshake-level options; [`tls_probe`] covers the common ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsProbe<'a> {
    /// SNI to send; `None` sends none (the server certificate is then
    /// checked against the CA but not against any name).
    pub sni: Option<&'a str>,
    /// Verify the server against this CA; `None` accepts any certificate.
    pub ca_pem: Option<&'a [u8]>,
    /// Client certificate to present.
    pub client: Option<&'a CertKey>,
    /// Versions to offer; empty: TLS 1.2 and 1.3.
    pub versions: &'a [&'static SupportedProtocolVersion],
    /// ALPN protocols to offer; empty: no ALPN extension.
    pub alpn: &'a [&'a str],
}

impl TlsProbe<'_> {
    /// Connects, handshakes and closes. `Err` carries the reason a test can
    /// match on: the alert the server sent, the certificate problem, a
    /// connection refused or reset.
    pub async fn run(&self, addr: SocketAddr) -> Result<TlsInfo, String> {
        let tcp = connect_tcp(addr).await.map_err(|e| format!("{e:#}"))?;
        // An IP-literal server name makes rustls omit SNI.
        let (name, verify) = match (self.sni, self.ca_pem) {
            (Some(sni), Some(ca)) => (sni.to_string(), Verify::Ca(ca)),
            (Some(sni), None) => (sni.to_string(), Verify::None),
            (None, Some(ca)) => (addr.ip().to_string(), Verify::CaChainOnly(ca)),
            (None, None) => (addr.ip().to_string(), Verify::None),
        };
        let identity = self.client.map(CertKey::identity_pem);
        let mut stream = tokio::time::timeout(
            DEFAULT_TIMEOUT,
            connect_tls(tcp, &name, verify, identity.as_deref().map(str::as_bytes), self.versions, self.alpn),
        )
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("{e:#}"))?;
        let conn = stream.get_ref().1;
        let info = TlsInfo {
            protocol_version: conn.protocol_version().ok_or("no protocol version after handshake")?,
            alpn: conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
            cipher_suite: conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default(),
            peer_cert_der_first: conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()),
        };
        if info.protocol_version == ProtocolVersion::TLSv1_3 {
            let deadline = tokio::time::Instant::now() + POST_HANDSHAKE_WAIT;
            let mut buf = [0u8; 1];
            // Short read slices so a processed ticket is noticed promptly
            // (reading is cancel-safe: nothing is lost between slices).
            while stream.get_ref().1.tls13_tickets_received() == 0 && tokio::time::Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await {
                    Err(_) => {}
                    Ok(Ok(0)) => return Err("server closed the connection right after the handshake".into()),
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => return Err(format!("after handshake: {e}")),
                }
            }
        }
        let _ = stream.shutdown().await;
        Ok(info)
    }
}

/// Handshake only, for certificate/SNI/version tests: `sni` (or none),
/// verification against `ca_pem` (or none), an optional client certificate
/// and the versions to offer (empty: 1.2 and 1.3). See [`TlsProbe`] to also
/// offer ALPN.
pub async fn tls_probe(
    addr: SocketAddr,
    sni: Option<&str>,
    ca_pem: Option<&[u8]>,
    client: Option<&CertKey>,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<TlsInfo, String> {
    TlsProbe { sni, ca_pem, client, versions, alpn: &[] }.run(addr).await
}
