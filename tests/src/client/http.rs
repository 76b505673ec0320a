//! HTTP requests: [`get`], [`post`], [`request`] on a fresh connection each, [`HttpClient`] for
//! a pool, and the fully-read [`Response`]. HTTP/1.1 goes through reqwest; the HTTP/2 modes go
//! through hyper directly (see `conn`), so the test controls `:authority` and ALPN.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body_util::Full;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::conn::{connect_tcp, connect_tls, default_sni, send_h1, send_h2, strip_port, Tls};
use super::DEFAULT_TIMEOUT;
use crate::certs::CertKey;
use crate::tls::Verify;
use crate::upstream::Echo;

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

/// `GET {path}` on the admin address (the gateway's or the controller's).
pub async fn admin_get(addr: SocketAddr, path: &str) -> Result<Response> {
    get(addr, path).send().await
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
