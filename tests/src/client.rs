//! Thin HTTP client helpers for talking to the gateway under test.
//!
//! The defaults are chosen so that what a test sees is what the gateway did:
//! no proxy (environment proxies would silently reroute loopback traffic), no
//! redirect following (redirect routes must be observable as 3xx), no
//! decompression, and, for the free functions, a brand-new TCP connection per
//! request so that connection-level behaviour (keep-alive, drain, per-
//! connection load balancing) is never masked by a shared pool. Use
//! [`HttpClient::pooled`] when reuse is exactly what a test wants.
//!
//! HTTP/2 requests ([`RequestBuilder::http2`],
//! [`RequestBuilder::http2_prior_knowledge`]) and gRPC calls ([`grpc_call`])
//! go through hyper's connection API directly rather than reqwest, so the
//! test controls `:authority`, the offered ALPN list and sees trailers.
//! [`tls_probe`] stops at the handshake, and [`tcp_exchange`] /
//! [`tls_tcp_exchange`] speak raw bytes for TCP routes and passthrough.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{ProtocolVersion, SupportedProtocolVersion};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::certs::CertKey;
use crate::tls::Verify;
use crate::upstream::{grpc_frame, grpc_messages, Echo};

/// Default per-request timeout: long enough for `delay` tests, short enough
/// that a hung gateway fails the test instead of the CI run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

fn base_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
}

/// A reusable client. [`pooled`](Self::pooled) keeps connections alive between
/// requests; [`fresh`](Self::fresh) never reuses one.
///
/// Create it inside the test's runtime: pooled connections belong to the
/// runtime that opened them, so sharing one client across `#[tokio::test]`s
/// (each with its own runtime) fails with dispatch errors.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

impl HttpClient {
    /// Keep-alive pool (per destination), for connection-reuse tests.
    pub fn pooled() -> Self {
        HttpClient { inner: base_builder().build().expect("reqwest client") }
    }

    /// Every request opens a new TCP connection.
    pub fn fresh() -> Self {
        HttpClient { inner: base_builder().pool_max_idle_per_host(0).build().expect("reqwest client") }
    }

    pub fn get(&self, addr: SocketAddr, path: &str) -> RequestBuilder {
        self.request(Method::GET, addr, path)
    }

    pub fn post(&self, addr: SocketAddr, path: &str) -> RequestBuilder {
        self.request(Method::POST, addr, path)
    }

    pub fn request(&self, method: Method, addr: SocketAddr, path: &str) -> RequestBuilder {
        RequestBuilder::new(Some(self.inner.clone()), method, addr, path)
    }
}

/// `GET http://ADDR{path}` on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> RequestBuilder {
    request(Method::GET, addr, path)
}

/// `POST http://ADDR{path}` on a fresh connection.
pub fn post(addr: SocketAddr, path: &str) -> RequestBuilder {
    request(Method::POST, addr, path)
}

/// Any method on a fresh connection.
pub fn request(method: Method, addr: SocketAddr, path: &str) -> RequestBuilder {
    RequestBuilder::new(None, method, addr, path)
}

#[derive(Debug, Clone, Default)]
struct Tls {
    sni: Option<String>,
    ca_pem: Option<Vec<u8>>,
    identity_pem: Option<Vec<u8>>,
}

/// Which HTTP/2 mode a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H2 {
    /// HTTP/1.1 through reqwest (the default).
    Off,
    /// TLS, ALPN offers `h2` then `http/1.1`; the server picks.
    Alpn,
    /// HTTP/2 without negotiation: h2c in cleartext, ALPN `h2` only over TLS.
    PriorKnowledge,
}

/// A request being built; finish with [`send`](Self::send).
#[derive(Debug)]
pub struct RequestBuilder {
    /// `None`: build a one-shot, non-pooling client at send time.
    client: Option<reqwest::Client>,
    method: Method,
    addr: SocketAddr,
    path: String,
    host: Option<String>,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
    timeout: Duration,
    tls: Option<Tls>,
    h2: H2,
}

impl RequestBuilder {
    fn new(client: Option<reqwest::Client>, method: Method, addr: SocketAddr, path: &str) -> Self {
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        RequestBuilder {
            client,
            method,
            addr,
            path,
            host: None,
            headers: Vec::new(),
            body: None,
            timeout: DEFAULT_TIMEOUT,
            tls: None,
            h2: H2::Off,
        }
    }

    /// The Host header (what Gateway/VirtualService `hosts` match on). Without
    /// it the client sends `IP:PORT` of the listener.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Adds a request header (repeatable; repeated names are all sent).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// JSON body plus `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        let bytes = serde_json::to_vec(value).expect("serializable body");
        self.body = Some(bytes.into());
        self.headers.push(("content-type".into(), "application/json".into()));
        self
    }

    /// Whole-request timeout (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Speak HTTPS. The SNI name is the [`host`](Self::host) (port stripped)
    /// or `localhost`; the TCP connection still goes to `addr`. Server
    /// certificates are *not* verified unless [`ca_pem`](Self::ca_pem) is set,
    /// because test certificates are self-signed. Always uses a one-shot client.
    pub fn https(mut self) -> Self {
        self.tls.get_or_insert_with(Tls::default);
        self
    }

    /// HTTPS with an explicit SNI name (independent of the Host header, for
    /// SNI/Host mismatch tests).
    pub fn sni(mut self, sni: impl Into<String>) -> Self {
        self.tls.get_or_insert_with(Tls::default).sni = Some(sni.into());
        self
    }

    /// HTTPS, verifying the server against this CA (PEM).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.get_or_insert_with(Tls::default).ca_pem = Some(pem.into());
        self
    }

    /// HTTPS with a client certificate (PEM holding the certificate chain and
    /// the private key), for mutual TLS.
    pub fn client_identity_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.get_or_insert_with(Tls::default).identity_pem = Some(pem.into());
        self
    }

    /// HTTPS with a client certificate from a [`CertKey`].
    pub fn client_cert(self, cert: &CertKey) -> Self {
        self.client_identity_pem(cert.identity_pem())
    }

    /// HTTP/2 over TLS negotiated with ALPN (offers `h2`, then `http/1.1`,
    /// so [`Response::version`] shows what the server chose). Implies
    /// [`https`](Self::https). The [`host`](Self::host) becomes `:authority`
    /// (HTTP/2 has no Host header). Always a new connection.
    pub fn http2(mut self) -> Self {
        self.tls.get_or_insert_with(Tls::default);
        self.h2 = H2::Alpn;
        self
    }

    /// HTTP/2 without negotiation: cleartext h2c with prior knowledge, or,
    /// combined with TLS options, ALPN offering only `h2`. The
    /// [`host`](Self::host) becomes `:authority`. Always a new connection.
    pub fn http2_prior_knowledge(mut self) -> Self {
        self.h2 = H2::PriorKnowledge;
        self
    }

    /// Sends the request and reads the whole body.
    pub async fn send(self) -> Result<Response> {
        if self.h2 != H2::Off {
            let what = format!("{} {}{} ({:?})", self.method, self.addr, self.path, self.h2);
            return tokio::time::timeout(self.timeout, self.send_hyper())
                .await
                .map_err(|_| anyhow!("{what}: timed out after {:?}", self.timeout))?
                .with_context(|| what.clone());
        }
        let (client, url) = match &self.tls {
            None => {
                let client = match &self.client {
                    Some(c) => c.clone(),
                    None => base_builder().pool_max_idle_per_host(0).build()?,
                };
                (client, format!("http://{}{}", self.addr, self.path))
            }
            Some(tls) => {
                let sni = tls
                    .sni
                    .clone()
                    .or_else(|| self.host.as_deref().map(strip_port))
                    .unwrap_or_else(|| "localhost".into());
                let mut b = base_builder().pool_max_idle_per_host(0).resolve(&sni, self.addr);
                match &tls.ca_pem {
                    Some(pem) => {
                        let cert = reqwest::Certificate::from_pem(pem).context("CA PEM")?;
                        b = b.tls_built_in_root_certs(false).add_root_certificate(cert);
                    }
                    None => b = b.danger_accept_invalid_certs(true),
                }
                if let Some(pem) = &tls.identity_pem {
                    b = b.identity(reqwest::Identity::from_pem(pem).context("identity PEM")?);
                }
                let url = format!("https://{}:{}{}", sni, self.addr.port(), self.path);
                (b.build()?, url)
            }
        };

        let mut req = client.request(self.method.clone(), &url).timeout(self.timeout);
        let mut headers = HeaderMap::new();
        if let Some(host) = &self.host {
            headers.insert(http::header::HOST, HeaderValue::from_str(host)?);
        }
        for (k, v) in &self.headers {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).with_context(|| format!("header {k}"))?,
                HeaderValue::from_str(v).with_context(|| format!("header {k} value"))?,
            );
        }
        req = req.headers(headers);
        if let Some(body) = self.body.clone() {
            req = req.body(body);
        }
        let resp = req.send().await.with_context(|| format!("{} {url}", self.method))?;
        let status = resp.status();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.with_context(|| format!("reading body of {} {url}", self.method))?;
        Ok(Response { status, version, headers, body })
    }
}

impl RequestBuilder {
    /// The hyper path for HTTP/2 modes (and HTTP/1.1 when ALPN picks it).
    async fn send_hyper(&self) -> Result<Response> {
        let authority = self.host.clone().unwrap_or_else(|| self.addr.to_string());
        let tcp = connect_tcp(self.addr).await?;
        let body = self.body.clone().unwrap_or_default();
        let (resp, body) = match &self.tls {
            None => {
                let req = self.hyper_request(&format!("http://{authority}{}", self.path), None, body)?;
                send_h2(tcp, req).await?
            }
            Some(tls) => {
                let sni = default_sni(tls, self.host.as_deref());
                let alpn: &[&str] = if self.h2 == H2::PriorKnowledge { &["h2"] } else { &["h2", "http/1.1"] };
                let verify = tls.ca_pem.as_deref().map_or(Verify::None, Verify::Ca);
                let stream = connect_tls(tcp, &sni, verify, tls.identity_pem.as_deref(), &[], alpn).await?;
                let negotiated_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                if negotiated_h2 || self.h2 == H2::PriorKnowledge {
                    let req = self.hyper_request(&format!("https://{authority}{}", self.path), None, body)?;
                    send_h2(stream, req).await?
                } else {
                    let req = self.hyper_request(&self.path, Some(&authority), body)?;
                    send_h1(stream, req).await?
                }
            }
        };
        let (parts, _) = resp.into_parts();
        Ok(Response { status: parts.status, version: parts.version, headers: parts.headers, body })
    }

    /// `host_header` is set for HTTP/1.1 (origin-form URI plus Host); for
    /// HTTP/2 the authority travels in the absolute URI instead.
    fn hyper_request(&self, uri: &str, host_header: Option<&str>, body: Bytes) -> Result<http::Request<Full<Bytes>>> {
        let mut req = http::Request::builder().method(self.method.clone()).uri(uri);
        if let Some(host) = host_header {
            req = req.header(http::header::HOST, host);
        }
        for (k, v) in &self.headers {
            req = req.header(
                HeaderName::from_bytes(k.as_bytes()).with_context(|| format!("header {k}"))?,
                HeaderValue::from_str(v).with_context(|| format!("header {k} value"))?,
            );
        }
        req.body(Full::new(body)).context("building request")
    }
}

/// The SNI rule of the reqwest path: explicit SNI, else the Host without its
/// port, else `localhost`.
fn default_sni(tls: &Tls, host: Option<&str>) -> String {
    match (&tls.sni, host) {
        (Some(sni), _) => sni.clone(),
        (None, Some(host)) => strip_port(host),
        (None, None) => "localhost".into(),
    }
}

async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect_tls(
    tcp: TcpStream,
    server_name: &str,
    verify: Verify<'_>,
    identity_pem: Option<&[u8]>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&str],
) -> Result<TlsStream<TcpStream>> {
    let config = crate::tls::client_config(verify, identity_pem, versions, alpn)?;
    let name = crate::tls::server_name(server_name)?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake (server name {server_name})"))
}

/// One request over a new HTTP/2 connection; returns the response head and
/// its whole body.
async fn send_h2<I>(io: I, req: http::Request<Full<Bytes>>) -> Result<(http::Response<()>, Bytes)>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (resp, body, _) = send_h2_trailers(io, req).await?;
    Ok((resp, body))
}

/// [`send_h2`] plus the response trailers (empty if none), for gRPC.
async fn send_h2_trailers<I>(io: I, req: http::Request<Full<Bytes>>) -> Result<(http::Response<()>, Bytes, HeaderMap)>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .context("HTTP/2 handshake")?;
    // The connection future drives all I/O; it ends when `sender` is dropped.
    let driver = tokio::spawn(conn);
    let result = async {
        let resp = sender.send_request(req).await.context("sending HTTP/2 request")?;
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.context("reading HTTP/2 response body")?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        Ok((http::Response::from_parts(parts, ()), collected.to_bytes(), trailers))
    }
    .await;
    drop(sender);
    driver.abort();
    result
}

async fn send_h1<I>(io: I, req: http::Request<Full<Bytes>>) -> Result<(http::Response<()>, Bytes)>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.context("HTTP/1.1 handshake")?;
    let driver = tokio::spawn(conn);
    let result = async {
        let resp = sender.send_request(req).await.context("sending HTTP/1.1 request")?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.context("reading HTTP/1.1 response body")?.to_bytes();
        Ok((http::Response::from_parts(parts, ()), body))
    }
    .await;
    driver.abort();
    result
}

fn strip_port(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => host.to_string(),
    }
}

/// A fully-read response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// First value of a response header, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Deserializes the body; the error includes status and body text so a
    /// failing assertion shows what the gateway actually answered.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body)
            .map_err(|e| anyhow!("response ({}) is not the expected JSON: {e}; body: {}", self.status, self.text()))
    }

    /// The upstream [`Echo`] (shorthand for `json::<Echo>()`).
    pub fn echo(&self) -> Result<Echo> {
        self.json()
    }

    /// Body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

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

/// Silence after which [`tcp_exchange`] without half-close stops reading.
pub const TCP_QUIET: Duration = Duration::from_millis(500);

/// Sends `payload` over a new TCP connection and returns every byte received.
///
/// With `half_close`, the client shuts down its write side after the payload
/// and reads until the peer closes; not seeing EOF within [`RAW_TIMEOUT`] is
/// an error, since half-close propagation is the point of such a test.
/// Without it, the write side stays open and reading stops at EOF or after
/// [`TCP_QUIET`] without new bytes (waiting up to [`RAW_TIMEOUT`] for the
/// first). Writing and reading run concurrently so large payloads cannot
/// deadlock against an echoing peer. A peer that closes at once yields an
/// empty vector; a reset before any byte arrived is an error.
pub async fn tcp_exchange(addr: SocketAddr, payload: &[u8], half_close: bool) -> Result<Vec<u8>> {
    let (r, w) = connect_tcp(addr).await?.into_split();
    exchange(r, w, payload, half_close).await.with_context(|| format!("TCP exchange with {addr}"))
}

/// [`tcp_exchange`] inside TLS: handshakes with `sni` (verifying against
/// `ca_pem` if given), sends `payload`, then close_notify and FIN, and reads
/// until the peer's close_notify. Close notifications travel inside the TLS
/// stream, so this works through a passthrough proxy whether or not it
/// propagates TCP half-close.
pub async fn tls_tcp_exchange(addr: SocketAddr, sni: &str, ca_pem: Option<&[u8]>, payload: &[u8]) -> Result<Vec<u8>> {
    let tcp = connect_tcp(addr).await?;
    let verify = ca_pem.map_or(Verify::None, Verify::Ca);
    let stream = connect_tls(tcp, sni, verify, None, &[], &[]).await?;
    let (r, w) = tokio::io::split(stream);
    exchange(r, w, payload, true).await.with_context(|| format!("TLS exchange with {addr} (SNI {sni})"))
}

async fn exchange<R, W>(mut r: R, mut w: W, payload: &[u8], half_close: bool) -> Result<Vec<u8>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let write = async {
        w.write_all(payload).await?;
        w.flush().await?;
        if half_close {
            w.shutdown().await?;
        }
        std::io::Result::Ok(w)
    };
    let read = async {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let deadline = tokio::time::Instant::now() + RAW_TIMEOUT;
        loop {
            let wait = if half_close || out.is_empty() {
                deadline
            } else {
                (tokio::time::Instant::now() + TCP_QUIET).min(deadline)
            };
            match tokio::time::timeout_at(wait, r.read(&mut buf)).await {
                Err(_) if half_close => bail!("peer did not close within {RAW_TIMEOUT:?}; got {} bytes", out.len()),
                Err(_) => break,
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(_)) if !out.is_empty() => break,
                Ok(Err(e)) => return Err(e).context("reading"),
            }
        }
        Ok(out)
    };
    let (written, read) = tokio::join!(write, read);
    // A peer that closes without reading everything makes the write fail;
    // what it sent is still the interesting part, so reads win.
    let out = read?;
    if let Err(e) = &written {
        if out.is_empty() {
            bail!("writing: {e}");
        }
    }
    // The write half (still open without half-close) is dropped only now.
    drop(written);
    Ok(out)
}

/// Default for [`raw_http`]'s read deadline.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `request` verbatim to a new TCP connection and returns everything
/// read until the peer closes (lossy UTF-8). For requests a real client
/// refuses to produce: HTTP/1.0, missing Host, malformed lines. The write
/// side is left open (some proxies treat a half-close as an abort). If the
/// peer keeps the connection open, returns what arrived after [`RAW_TIMEOUT`].
pub async fn raw_http(addr: SocketAddr, request: impl AsRef<[u8]>) -> Result<String> {
    raw_http_timeout(addr, request, RAW_TIMEOUT).await
}

/// [`raw_http`] with an explicit read deadline; errors only if nothing at all
/// arrived before a timeout (a closed connection with no bytes yields `""`).
pub async fn raw_http_timeout(addr: SocketAddr, request: impl AsRef<[u8]>, timeout: Duration) -> Result<String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    stream.write_all(request.as_ref()).await?;
    stream.flush().await?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) if out.is_empty() => bail!("no response from {addr} within {timeout:?}"),
            Err(_) => break,
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            // A reset after the response was sent still leaves a usable answer.
            Ok(Err(_)) if !out.is_empty() => break,
            Ok(Err(e)) => return Err(e).with_context(|| format!("reading from {addr}")),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `GET /stats/prometheus` on the metrics address; errors unless 200.
pub async fn metrics(addr: SocketAddr) -> Result<String> {
    let resp = get(addr, "/stats/prometheus").send().await?;
    if resp.status != StatusCode::OK {
        bail!("metrics endpoint answered {}: {}", resp.status, resp.text());
    }
    Ok(resp.text())
}

/// `GET {path}` on the admin address.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Result<Response> {
    get(addr, path).send().await
}

/// One Prometheus sample: (metric name, labels, value).
type Sample<'a> = (&'a str, Vec<(String, String)>, f64);

/// Parses one Prometheus text-format sample line.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i..]),
        None => {
            let mut it = line.splitn(2, char::is_whitespace);
            let name = it.next()?;
            let value = it.next()?.split_whitespace().next()?.parse().ok()?;
            return Some((name, Vec::new(), value));
        }
    };
    // Labels: {k="v",k2="v\"2"} value [timestamp]
    let mut labels = Vec::new();
    let bytes = rest.as_bytes();
    let mut i = 1;
    loop {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        if bytes[i] == b'}' {
            i += 1;
            break;
        }
        let eq = rest[i..].find('=')? + i;
        let key = rest[i..eq].trim().to_string();
        if bytes.get(eq + 1) != Some(&b'"') {
            return None;
        }
        let mut j = eq + 2;
        let mut val = String::new();
        while j < bytes.len() && bytes[j] != b'"' {
            if bytes[j] == b'\\' && j + 1 < bytes.len() {
                val.push(match bytes[j + 1] {
                    b'n' => '\n',
                    other => other as char,
                });
                j += 2;
            } else {
                let ch = rest[j..].chars().next()?;
                val.push(ch);
                j += ch.len_utf8();
            }
        }
        labels.push((key, val));
        i = j + 1;
    }
    let value = rest[i..].split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// Value of the first sample of metric `name` whose labels include all of
/// `labels` (other labels are ignored).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter_map(parse_sample).find(|(n, l, _)| *n == name && labels_match(l, labels)).map(|(_, _, v)| v)
}

/// Sum over all samples of `name` whose labels include all of `labels`;
/// `0.0` if none match (a counter that was never incremented).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(parse_sample)
        .filter(|(n, l, _)| *n == name && labels_match(l, labels))
        .map(|(_, _, v)| v)
        .sum()
}

fn labels_match(have: &[(String, String)], want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
# HELP istio_requests_total Total requests.
# TYPE istio_requests_total counter
istio_requests_total{response_code="200",destination_service="reviews.default.svc.cluster.local"} 3
istio_requests_total{response_code="503",destination_service="reviews.default.svc.cluster.local"} 2
istio_requests_total{response_code="200",destination_service="ratings.default.svc.cluster.local",path="a\"b"} 1
up 1
"#;

    #[test]
    fn metrics_parse() {
        assert_eq!(metric_value(SAMPLE, "up", &[]), Some(1.0));
        assert_eq!(metric_value(SAMPLE, "istio_requests_total", &[("response_code", "503")]), Some(2.0));
        assert_eq!(metric_sum(SAMPLE, "istio_requests_total", &[("response_code", "200")]), 4.0);
        assert_eq!(metric_value(SAMPLE, "istio_requests_total", &[("path", "a\"b")]), Some(1.0));
        assert_eq!(metric_sum(SAMPLE, "nope", &[]), 0.0);
    }

    #[test]
    fn strips_port() {
        assert_eq!(strip_port("a.example.com:8443"), "a.example.com");
        assert_eq!(strip_port("a.example.com"), "a.example.com");
    }
}
