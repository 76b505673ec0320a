//! Unary gRPC calls over a new HTTP/2 connection (h2c or TLS), reading trailers and the
//! Trailers-Only form proxies use for their own errors.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::Full;

use super::conn::{connect_tcp, connect_tls, default_sni, send_h2_trailers, Tls};
use super::DEFAULT_TIMEOUT;
use crate::certs::CertKey;
use crate::tls::Verify;
use crate::upstream::{grpc_frame, grpc_messages, Echo};

/// A finished gRPC call.
#[derive(Debug, Clone)]
pub struct GrpcReply {
    pub http_status: StatusCode,
    /// `grpc-status` from the trailers, or from the headers of a
    /// Trailers-Only response (how proxies report errors such as "no route").
    pub grpc_status: Option<String>,
    /// `grpc-message`, as sent (not percent-decoded).
    pub grpc_message: Option<String>,
    /// Payload of the first response message; if the body holds no complete
    /// gRPC message (e.g. a plain-text error page), the raw body instead, so
    /// a failing assertion shows what arrived.
    pub body: Vec<u8>,
    /// Payloads of all response messages, in order.
    pub messages: Vec<Vec<u8>>,
    pub headers: HeaderMap,
    pub trailers: HeaderMap,
}

impl GrpcReply {
    /// `grpc-status` is `0`.
    pub fn ok(&self) -> bool {
        self.grpc_status.as_deref() == Some("0")
    }

    /// The [`Echo`] a [`grpc`](crate::upstream::UpstreamBuilder::grpc)
    /// upstream puts in its reply message.
    pub fn echo(&self) -> Result<Echo> {
        serde_json::from_slice(&self.body).map_err(|e| {
            anyhow!(
                "gRPC reply (http {}, grpc-status {:?}) is not an Echo: {e}; body: {}",
                self.http_status,
                self.grpc_status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One unary gRPC call over a new HTTP/2 connection: `POST path` with
/// `:authority` = `host`, `content-type: application/grpc`, `te: trailers`
/// and an empty request message. `tls` is (CA PEM, SNI): TLS with ALPN `h2`,
/// verifying the server against that CA; `None` is h2c with prior knowledge.
/// Use [`grpc_request`] for headers, a message, client certificates or an
/// unverified TLS server.
pub async fn grpc_call(addr: SocketAddr, path: &str, host: &str, tls: Option<(&[u8], &str)>) -> Result<GrpcReply> {
    let mut req = grpc_request(addr, path).host(host);
    if let Some((ca, sni)) = tls {
        req = req.ca_pem(ca).sni(sni);
    }
    req.send().await
}

/// Starts building a gRPC call (see [`grpc_call`] for the defaults).
pub fn grpc_request(addr: SocketAddr, path: &str) -> GrpcRequest {
    GrpcRequest {
        addr,
        path: if path.starts_with('/') { path.to_string() } else { format!("/{path}") },
        host: None,
        headers: Vec::new(),
        message: Bytes::new(),
        tls: None,
        timeout: DEFAULT_TIMEOUT,
    }
}

/// A gRPC call being built; finish with [`send`](Self::send).
#[derive(Debug, Clone)]
pub struct GrpcRequest {
    addr: SocketAddr,
    path: String,
    host: Option<String>,
    headers: Vec<(String, String)>,
    message: Bytes,
    tls: Option<Tls>,
    timeout: Duration,
}

impl GrpcRequest {
    /// `:authority` (default: the address).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Request metadata (repeatable).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Payload of the single request message (already serialized; the
    /// echo upstream reports it as [`Echo::body`]).
    pub fn message(mut self, payload: impl Into<Bytes>) -> Self {
        self.message = payload.into();
        self
    }

    /// TLS without verifying the server.
    pub fn tls(mut self) -> Self {
        self.tls.get_or_insert_with(Tls::default);
        self
    }

    /// TLS with this SNI (default: the host without its port, or `localhost`).
    pub fn sni(mut self, sni: impl Into<String>) -> Self {
        self.tls.get_or_insert_with(Tls::default).sni = Some(sni.into());
        self
    }

    /// TLS, verifying the server against this CA.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.get_or_insert_with(Tls::default).ca_pem = Some(pem.into());
        self
    }

    /// TLS with a client certificate.
    pub fn client_cert(mut self, cert: &CertKey) -> Self {
        self.tls.get_or_insert_with(Tls::default).identity_pem = Some(cert.identity_pem().into_bytes());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub async fn send(self) -> Result<GrpcReply> {
        let what = format!("gRPC {} via {}", self.path, self.addr);
        tokio::time::timeout(self.timeout, self.send_inner())
            .await
            .map_err(|_| anyhow!("{what}: timed out after {:?}", self.timeout))?
            .with_context(|| what.clone())
    }

    async fn send_inner(&self) -> Result<GrpcReply> {
        let authority = self.host.clone().unwrap_or_else(|| self.addr.to_string());
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut req = http::Request::builder()
            .method(Method::POST)
            .uri(format!("{scheme}://{authority}{}", self.path))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers");
        for (k, v) in &self.headers {
            req = req.header(
                HeaderName::from_bytes(k.as_bytes()).with_context(|| format!("header {k}"))?,
                HeaderValue::from_str(v).with_context(|| format!("header {k} value"))?,
            );
        }
        let req = req.body(Full::new(grpc_frame(&self.message))).context("building gRPC request")?;
        let tcp = connect_tcp(self.addr).await?;
        let (resp, body, trailers) = match &self.tls {
            None => send_h2_trailers(tcp, req).await?,
            Some(tls) => {
                let sni = default_sni(tls, self.host.as_deref());
                let verify = tls.ca_pem.as_deref().map_or(Verify::None, Verify::Ca);
                let stream = connect_tls(tcp, &sni, verify, tls.identity_pem.as_deref(), &[], &["h2"]).await?;
                send_h2_trailers(stream, req).await?
            }
        };
        let (parts, _) = resp.into_parts();
        let field = |name: &str| {
            trailers
                .get(name)
                .or_else(|| parts.headers.get(name))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let messages: Vec<Vec<u8>> = grpc_messages(&body).into_iter().map(|m| m.to_vec()).collect();
        Ok(GrpcReply {
            http_status: parts.status,
            grpc_status: field("grpc-status"),
            grpc_message: field("grpc-message"),
            body: messages.first().cloned().unwrap_or_else(|| body.to_vec()),
            messages,
            headers: parts.headers,
            trailers,
        })
    }
}
