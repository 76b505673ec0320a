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

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Upper bound on `delay/<ms>` so a typo cannot hang a suite.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// Upper bound on `bytes/<n>` (64 MiB).
const MAX_BYTES: usize = 64 << 20;
/// How many received requests [`Upstream::requests`] remembers; older ones are
/// discarded so load tests do not grow memory without bound.
const MAX_RECORDED: usize = 10_000;

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

    /// Binds and starts serving; panics if the address cannot be bound
    /// (a test cannot do anything useful in that case).
    pub async fn start(self) -> Upstream {
        let bind = self.bind;
        match self.try_start().await {
            Ok(up) => up,
            Err(e) => panic!("upstream: cannot bind {bind}: {e}"),
        }
    }

    /// Like [`start`](Self::start) but returns bind errors.
    pub async fn try_start(self) -> io::Result<Upstream> {
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
            recorded: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
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
    recorded: Mutex<Vec<Echo>>,
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
        }
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`, for talking to the upstream directly.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
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

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
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
                conns.spawn(async move {
                    let _guard = guard;
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(req, &shared, peer, conn_id).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            // Reap finished connection tasks so the set does not grow forever.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
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

async fn handle(req: Request<Incoming>, shared: &Shared, peer: SocketAddr, conn_id: u64) -> Response<Full<Bytes>> {
    shared.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();

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

    let mut resp = Response::new(Full::new(payload));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
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
    fn pattern_is_alphabet() {
        assert_eq!(&pattern_bytes(28)[..], b"abcdefghijklmnopqrstuvwxyzab");
    }
}
