//! A real HTTP/1.1 upstream ("pod") for end-to-end tests.
//!
//! Every response carries an [`Echo`] JSON body describing exactly what the
//! upstream received, so a test can assert on what the gateway *forwarded*
//! (rewritten path, injected headers, Host, HTTP version) rather than only on
//! what came back. A handful of special path segments make the upstream
//! misbehave on demand (slow, failing, large) for timeout, retry and
//! streaming tests.
//!
//! Special segments are recognised anywhere in the path, as `name/value`
//! pairs, so they still work behind a prefix route that does not rewrite
//! (`/api/delay/200` delays just like `/delay/200`) and they can be combined
//! (`/delay/100/status/503`):
//!
//! * `delay/<ms>`  – wait that long before answering (capped at 60 s);
//! * `status/<code>` – answer with that status (200..=599);
//! * `bytes/<n>`  – answer `n` bytes of [`pattern_bytes`] instead of JSON.
//!
//! Protocol variants (all keep the echo behaviour):
//!
//! * default: cleartext HTTP/1.x only, so a gateway that wrongly speaks
//!   HTTP/2 to a plain upstream fails visibly;
//! * [`h2c`](UpstreamBuilder::h2c): also HTTP/2 with prior knowledge (the
//!   connection preface decides, per connection);
//! * [`tls`](UpstreamBuilder::tls): HTTPS, ALPN `h2` and `http/1.1`, with
//!   [`client_ca`](UpstreamBuilder::client_ca) for mutual TLS; what the
//!   handshake carried is reported in [`Echo::tls`];
//! * [`grpc`](UpstreamBuilder::grpc): `POST`s with a gRPC content type get a
//!   gRPC answer (one message holding the [`Echo`] JSON, then trailers), and
//!   HTTP/2 is accepted as with `h2c`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::SupportedProtocolVersion;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::certs::CertKey;

/// Upper bound on `delay/<ms>` so a typo cannot hang a suite.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// Upper bound on `bytes/<n>` (64 MiB).
const MAX_BYTES: usize = 64 << 20;
/// How many received requests [`Upstream::requests`] remembers; older ones are
/// discarded so load tests do not grow memory without bound.
const MAX_RECORDED: usize = 10_000;
/// A client that connects but never finishes the TLS handshake must not pin
/// a connection task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Response bodies: plain bytes, or bytes plus trailers for gRPC.
type UpBody = BoxBody<Bytes, Infallible>;

/// The JSON body of every non-`bytes` response: what the upstream saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo {
    /// Service name the upstream was started with.
    pub service: String,
    /// Version label the upstream was started with (e.g. `v1`).
    pub version: String,
    /// Pod name, when the upstream impersonates a specific pod.
    #[serde(default)]
    pub pod: Option<String>,
    /// Request method as received.
    pub method: String,
    /// Path plus query exactly as received (after any gateway rewrite).
    pub path: String,
    /// The Host header as received (empty if absent).
    pub host: String,
    /// Request headers with lowercase names; repeated headers are joined
    /// with `", "` in arrival order.
    pub headers: BTreeMap<String, String>,
    /// `HTTP/1.0`, `HTTP/1.1`, ...
    pub http_version: String,
    /// Request body (lossy UTF-8), so mirroring/body-forwarding can be checked.
    #[serde(default)]
    pub body: String,
    /// The peer (the gateway's upstream-side socket) address.
    #[serde(default)]
    pub peer: String,
    /// 1-based index of the TCP connection this request arrived on, in accept
    /// order (not reset by [`Upstream::reset`]); equal values on two responses prove the gateway reused a
    /// connection.
    #[serde(default)]
    pub connection: u64,
    /// What the TLS handshake carried, for a [`tls`](UpstreamBuilder::tls)
    /// upstream; absent on cleartext connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsEcho>,
}

/// The TLS side of a request an HTTPS upstream received: lets upstream-TLS
/// tests check which SNI and ALPN the gateway sent and whether it presented
/// a client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsEcho {
    /// SNI the client sent, if any.
    pub sni: Option<String>,
    /// Negotiated ALPN protocol (`h2`, `http/1.1`), if any.
    pub alpn: Option<String>,
    /// `TLSv1_2` or `TLSv1_3`.
    pub protocol: String,
    /// Whether the client presented a certificate (with
    /// [`client_ca`](UpstreamBuilder::client_ca) it was also verified).
    pub client_cert: bool,
}

impl Echo {
    /// A received header by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// The deterministic body served by `bytes/<n>`: `a..z` repeated, so a
/// truncated or reordered body is detectable, not just a short one.
pub fn pattern_bytes(n: usize) -> Bytes {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>().into()
}

/// Builder returned by [`Upstream::new`].
#[derive(Debug, Clone)]
pub struct UpstreamBuilder {
    service: String,
    version: String,
    pod: Option<String>,
    bind: SocketAddr,
    headers: Vec<(String, String)>,
    tls: Option<CertKey>,
    client_ca: Option<String>,
    tls_versions: Vec<&'static SupportedProtocolVersion>,
    alpn: Vec<String>,
    h2c: bool,
    grpc: bool,
}

impl UpstreamBuilder {
    /// Version label reported in [`Echo::version`] and `x-upstream` (default `v1`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Pod name reported in [`Echo::pod`] and the `x-upstream-pod` header.
    pub fn pod(mut self, pod: impl Into<String>) -> Self {
        self.pod = Some(pod.into());
        self
    }

    /// Listen address (default `127.0.0.1:0`, i.e. any free port). Other
    /// loopback addresses such as `127.0.0.12:8080` work on Linux and let a
    /// test impersonate several pods on the same port.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// An extra header added to every response (e.g. for response-header
    /// manipulation tests).
    pub fn response_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Serve HTTPS with this certificate. ALPN offers `h2` then `http/1.1`
    /// (see [`alpn`](Self::alpn)); the echo is unchanged apart from
    /// [`Echo::tls`] and `HTTP/2.0` as the version of h2 requests.
    pub fn tls(mut self, cert: CertKey) -> Self {
        self.tls = Some(cert);
        self
    }

    /// Require client certificates issued by this CA (PEM), for gateway →
    /// upstream mutual TLS. A client without one fails the handshake, which
    /// counts in [`Upstream::handshake_failures`]. Only meaningful with
    /// [`tls`](Self::tls).
    pub fn client_ca(mut self, ca_pem: impl Into<String>) -> Self {
        self.client_ca = Some(ca_pem.into());
        self
    }

    /// Restrict the TLS versions offered (default TLS 1.2 and 1.3), e.g.
    /// `&[&rustls::version::TLS12]` to test the gateway's upstream minimum.
    pub fn tls_versions(mut self, versions: &[&'static SupportedProtocolVersion]) -> Self {
        self.tls_versions = versions.to_vec();
        self
    }

    /// ALPN protocols offered by a TLS upstream, in preference order
    /// (default `["h2", "http/1.1"]`; empty: no ALPN, so the client must
    /// guess, and the connection preface decides as with [`h2c`](Self::h2c)).
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_string()).collect();
        self
    }

    /// Also accept cleartext HTTP/2 with prior knowledge. Each connection is
    /// sniffed: the HTTP/2 preface selects HTTP/2, anything else HTTP/1.x.
    pub fn h2c(mut self) -> Self {
        self.h2c = true;
        self
    }

    /// Answer gRPC: a `POST` whose content type starts with
    /// `application/grpc` gets status 200, `content-type: application/grpc`,
    /// one length-prefixed message holding the [`Echo`] JSON (its `body` is
    /// the request's first message, decoded) and trailers `grpc-status: 0`;
    /// a path ending in `/Fail` gets no message and trailers
    /// `grpc-status: 13`, `grpc-message: boom`. Other requests get the usual
    /// echo. Implies [`h2c`](Self::h2c) (gRPC needs HTTP/2).
    pub fn grpc(mut self) -> Self {
        self.grpc = true;
        self.h2c = true;
        self
    }

    /// Binds and starts serving; panics if the address cannot be bound
    /// (a test cannot do anything useful in that case).
    pub async fn start(self) -> Upstream {
        let bind = self.bind;
        match self.try_start().await {
            Ok(up) => up,
            Err(e) => panic!("upstream: cannot bind {bind}: {e}"),
        }
    }

    /// Like [`start`](Self::start) but returns bind (and TLS setup) errors.
    pub async fn try_start(self) -> io::Result<Upstream> {
        let acceptor = match &self.tls {
            Some(cert) => {
                let alpn: Vec<&str> = self.alpn.iter().map(String::as_str).collect();
                let config = crate::tls::server_config(cert, self.client_ca.as_deref(), &self.tls_versions, &alpn)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:#}")))?;
                Some(TlsAcceptor::from(Arc::new(config)))
            }
            None => None,
        };
        let listener = TcpListener::bind(self.bind).await?;
        let addr = listener.local_addr()?;
        let mut fixed_headers = Vec::with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let value = HeaderValue::from_str(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            fixed_headers.push((name, value));
        }
        let shared = Arc::new(Shared {
            service: self.service.clone(),
            version: self.version.clone(),
            pod: self.pod.clone(),
            fixed_headers,
            hits: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            next_conn_id: AtomicU64::new(0),
            active: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            recorded: Mutex::new(Vec::new()),
            h2c: self.h2c,
            grpc: self.grpc,
            tls: acceptor.is_some(),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone(), acceptor));
        Ok(Upstream { addr, shared, task })
    }
}

/// A running upstream. Stops (listener and all connections) when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    service: String,
    version: String,
    pod: Option<String>,
    fixed_headers: Vec<(http::HeaderName, HeaderValue)>,
    hits: AtomicU64,
    connections: AtomicU64,
    /// Connection ids; never reset, so ids stay unique across [`Upstream::reset`].
    next_conn_id: AtomicU64,
    active: AtomicU64,
    handshake_failures: AtomicU64,
    recorded: Mutex<Vec<Echo>>,
    /// Sniff for the HTTP/2 preface instead of speaking HTTP/1.x only.
    h2c: bool,
    grpc: bool,
    tls: bool,
}

impl Upstream {
    /// Starts building an upstream for `service`. Named `new` so tests read
    /// `Upstream::new("reviews").version("v2").start().await`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(service: impl Into<String>) -> UpstreamBuilder {
        UpstreamBuilder {
            service: service.into(),
            version: "v1".into(),
            pod: None,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            headers: Vec::new(),
            tls: None,
            client_ca: None,
            tls_versions: Vec::new(),
            alpn: vec!["h2".into(), "http/1.1".into()],
            h2c: false,
            grpc: false,
        }
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}` (`https://` for a TLS upstream), for talking to
    /// the upstream directly.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.shared.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, path)
    }

    /// Whether this upstream serves TLS.
    pub fn is_tls(&self) -> bool {
        self.shared.tls
    }

    /// TLS handshakes that failed or timed out (e.g. a client without the
    /// required certificate, or one that does not trust ours). Not reset by
    /// [`reset`](Self::reset).
    pub fn handshake_failures(&self) -> u64 {
        self.shared.handshake_failures.load(Ordering::SeqCst)
    }

    pub fn service(&self) -> &str {
        &self.shared.service
    }

    pub fn version(&self) -> &str {
        &self.shared.version
    }

    pub fn pod(&self) -> Option<&str> {
        self.shared.pod.as_deref()
    }

    /// Requests received so far. Counted on arrival (before any `delay`), so
    /// a request the gateway timed out or retried still counts: this is what
    /// retry and mirroring tests need.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Distinct TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// TCP connections currently open.
    pub fn active_connections(&self) -> u64 {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// The most recent requests received (up to 10 000), oldest first, as
    /// [`Echo`] records. Useful where the response never reaches the test
    /// (mirrored traffic, requests the gateway abandoned).
    pub fn requests(&self) -> Vec<Echo> {
        self.shared.recorded.lock().unwrap().clone()
    }

    /// Zeroes `hits` and `connections` and forgets recorded requests, so a
    /// test can measure one phase in isolation.
    pub fn reset(&self) {
        self.shared.hits.store(0, Ordering::SeqCst);
        self.shared.connections.store(0, Ordering::SeqCst);
        self.shared.recorded.lock().unwrap().clear();
    }

    /// Waits until at least `n` hits were seen; false on timeout. Needed for
    /// fire-and-forget traffic such as mirroring, which arrives after the
    /// client already has its response.
    pub async fn wait_for_hits(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.hits() >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Aborting the accept task drops the listener and its JoinSet, which
        // in turn aborts every connection task.
        self.task.abort();
    }
}

/// Decrements the active-connection gauge however the connection task ends
/// (normally or by abort).
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, acceptor: Option<TlsAcceptor>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(_) => {
                        // EMFILE and friends: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let conn_id = shared.next_conn_id.fetch_add(1, Ordering::SeqCst) + 1;
                shared.active.fetch_add(1, Ordering::SeqCst);
                let guard = ActiveGuard(shared.clone());
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let _guard = guard;
                    let Some(acceptor) = acceptor else {
                        let mode = if shared.h2c { Mode::Auto } else { Mode::Http1 };
                        return serve(stream, shared, peer, conn_id, None, mode).await;
                    };
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        _ => {
                            shared.handshake_failures.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    let conn = tls.get_ref().1;
                    let info = TlsEcho {
                        sni: conn.server_name().map(str::to_string),
                        alpn: conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
                        protocol: conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
                        client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                    };
                    // ALPN is authoritative when negotiated; without it the
                    // client may still send the HTTP/2 preface.
                    let mode = match info.alpn.as_deref() {
                        Some("h2") => Mode::Http2,
                        Some(_) => Mode::Http1,
                        None if shared.h2c => Mode::Auto,
                        None => Mode::Http1,
                    };
                    serve(tls, shared, peer, conn_id, Some(info), mode).await;
                });
            }
            // Reap finished connection tasks so the set does not grow forever.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Which HTTP versions a connection is served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Http1,
    Http2,
    /// HTTP/2 if the connection starts with its preface, else HTTP/1.x.
    Auto,
}

async fn serve<I>(io: I, shared: Arc<Shared>, peer: SocketAddr, conn_id: u64, tls: Option<TlsEcho>, mode: Mode)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        let tls = tls.clone();
        async move { Ok::<_, Infallible>(handle(req, &shared, peer, conn_id, tls).await) }
    });
    let io = TokioIo::new(io);
    // Errors here are client disconnects and protocol violations; the
    // upstream has nobody to report them to, and tests observe them from
    // the client side.
    match mode {
        Mode::Http1 => {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .serve_connection(io, svc)
                .await;
        }
        Mode::Http2 => {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(io, svc)
                .await;
        }
        Mode::Auto => {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).keep_alive(true);
            builder.http2().timer(TokioTimer::new());
            let _ = builder.serve_connection(io, svc).await;
        }
    }
}

/// The effect of the special path segments.
#[derive(Debug, Default, PartialEq, Eq)]
struct Directives {
    delay: Option<Duration>,
    status: Option<StatusCode>,
    bytes: Option<usize>,
}

fn parse_directives(path: &str) -> Directives {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut d = Directives::default();
    for pair in segments.windows(2) {
        match pair[0] {
            "delay" => {
                if let Ok(ms) = pair[1].parse::<u64>() {
                    d.delay = Some(Duration::from_millis(ms).min(MAX_DELAY));
                }
            }
            "status" => {
                if let Some(code) = pair[1]
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (200..=599).contains(c))
                    .and_then(|c| StatusCode::from_u16(c).ok())
                {
                    d.status = Some(code);
                }
            }
            "bytes" => {
                if let Ok(n) = pair[1].parse::<usize>() {
                    d.bytes = Some(n.min(MAX_BYTES));
                }
            }
            _ => {}
        }
    }
    d
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
    conn_id: u64,
    tls: Option<TlsEcho>,
) -> Response<UpBody> {
    shared.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let grpc = shared.grpc && parts.method == http::Method::POST && is_grpc(&parts.headers);
    // For gRPC the interesting body is the message, not its framing.
    let body = if grpc { grpc_messages(&body).into_iter().next().unwrap_or_default() } else { body };

    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let host =
        headers.get("host").cloned().or_else(|| parts.uri.authority().map(|a| a.to_string())).unwrap_or_default();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let echo = Echo {
        service: shared.service.clone(),
        version: shared.version.clone(),
        pod: shared.pod.clone(),
        method: parts.method.to_string(),
        path: path.clone(),
        host,
        headers,
        http_version: format!("{:?}", parts.version),
        body: String::from_utf8_lossy(&body).into_owned(),
        peer: peer.to_string(),
        connection: conn_id,
        tls,
    };
    {
        let mut rec = shared.recorded.lock().unwrap();
        if rec.len() >= MAX_RECORDED {
            rec.remove(0);
        }
        rec.push(echo.clone());
    }

    let directives = parse_directives(parts.uri.path());
    if let Some(delay) = directives.delay {
        tokio::time::sleep(delay).await;
    }
    if grpc {
        return grpc_response(&echo, shared);
    }
    let status = directives.status.unwrap_or(StatusCode::OK);
    let (content_type, payload) = if let Some(n) = directives.bytes {
        ("application/octet-stream", pattern_bytes(n))
    } else if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        // These statuses must not carry a body.
        ("application/json", Bytes::new())
    } else {
        let json = serde_json::to_vec(&echo).expect("Echo serializes");
        ("application/json", Bytes::from(json))
    };

    let mut resp = Response::new(Full::new(payload).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    add_identity_headers(resp.headers_mut(), shared);
    resp
}

/// `x-upstream`, `x-upstream-pod` and the configured extra headers.
fn add_identity_headers(h: &mut HeaderMap, shared: &Shared) {
    if let Ok(v) = HeaderValue::from_str(&format!("{}-{}", shared.service, shared.version)) {
        h.insert("x-upstream", v);
    }
    if let Some(pod) = &shared.pod {
        if let Ok(v) = HeaderValue::from_str(pod) {
            h.insert("x-upstream-pod", v);
        }
    }
    for (k, v) in &shared.fixed_headers {
        h.append(k.clone(), v.clone());
    }
}

/// Frames `payload` as one uncompressed gRPC message (flag byte, 4-byte
/// big-endian length, payload).
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.into()
}

/// Splits a gRPC body into message payloads; a truncated tail is dropped
/// (it is not a message), and compression flags are ignored because nothing
/// here compresses.
pub fn grpc_messages(body: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rest = body;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < 5 + len {
            break;
        }
        out.push(Bytes::copy_from_slice(&rest[5..5 + len]));
        rest = &rest[5 + len..];
    }
    out
}

fn grpc_response(echo: &Echo, shared: &Shared) -> Response<UpBody> {
    let mut trailers = HeaderMap::new();
    let payload = if echo.path.split('?').next().unwrap_or_default().ends_with("/Fail") {
        trailers.insert("grpc-status", HeaderValue::from_static("13"));
        trailers.insert("grpc-message", HeaderValue::from_static("boom"));
        Bytes::new()
    } else {
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        grpc_frame(&serde_json::to_vec(echo).expect("Echo serializes"))
    };
    let body = Full::new(payload).with_trailers(async move { Some(Ok(trailers)) }).boxed();
    let mut resp = Response::new(body);
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    add_identity_headers(resp.headers_mut(), shared);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_anywhere_and_combined() {
        assert_eq!(parse_directives("/"), Directives::default());
        let d = parse_directives("/api/delay/150/status/503");
        assert_eq!(d.delay, Some(Duration::from_millis(150)));
        assert_eq!(d.status, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(parse_directives("/bytes/10").bytes, Some(10));
        // Out-of-range or non-numeric values are ignored, not errors.
        assert_eq!(parse_directives("/status/42").status, None);
        assert_eq!(parse_directives("/status/abc").status, None);
        assert_eq!(parse_directives("/delay/99999999").delay, Some(MAX_DELAY));
    }

    #[test]
    fn grpc_framing_round_trips() {
        let mut body = grpc_frame(b"hello").to_vec();
        body.extend_from_slice(&grpc_frame(b""));
        body.extend_from_slice(&[0, 0, 0, 0, 9, b'x']);
        assert_eq!(grpc_messages(&body), vec![Bytes::from_static(b"hello"), Bytes::new()]);
    }

    #[test]
    fn pattern_is_alphabet() {
        assert_eq!(&pattern_bytes(28)[..], b"abcdefghijklmnopqrstuvwxyzab");
    }
}
