//! Thin HTTP client helpers for talking to the gateway under test.
//!
//! The defaults are chosen so that what a test sees is what the gateway did:
//! no proxy (environment proxies would silently reroute loopback traffic), no
//! redirect following (redirect routes must be observable as 3xx), no
//! decompression, and, for the free functions, a brand-new TCP connection per
//! request so that connection-level behaviour (keep-alive, drain, per-
//! connection load balancing) is never masked by a shared pool. Use
//! [`HttpClient::pooled`] when reuse is exactly what a test wants.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::upstream::Echo;

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

    /// Sends the request and reads the whole body.
    pub async fn send(self) -> Result<Response> {
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
