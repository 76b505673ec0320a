//! OTLP/HTTP JSON export from a dedicated thread.
//!
//! Why not the `opentelemetry-otlp` crate: measured against the OpenTelemetry SDK path
//! (BatchSpanProcessor and the OTLP HTTP/protobuf exporter) it costs more instructions per
//! sampled request, the SDK's queue does not expose its drop count for
//! `meshgate_trace_spans_dropped_total`, and it adds an HTTP client stack (reqwest) or, for gRPC,
//! tonic plus a tokio runtime of its own next to Pingora's; see docs/architecture.md,
//! "Tracing: OpenTelemetry crates". The gateway needs one fixed span shape, so encoding it
//! directly as OTLP JSON (a stable, documented encoding) and POSTing batches over a plain
//! socket keeps the request path to one buffer and one channel send.
//!
//! The request path never blocks: spans go through a bounded channel (`try_send`); a full
//! queue drops the span and counts it (`meshgate_trace_spans_dropped_total`). The thread
//! batches up to [`MAX_BATCH`] spans or [`FLUSH_INTERVAL`], whichever comes first.

use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Spans waiting for export; past this, new spans are dropped (OTel SDKs default to 2048;
/// a gateway sees bursts, so more headroom).
const QUEUE_CAPACITY: usize = 8192;
/// Spans per POST (the OTel SDK batch default).
pub(crate) const MAX_BATCH: usize = 512;
/// How long a span may wait for its batch to fill. Shorter than the SDK's 5 s so traces show
/// up promptly; one POST per second at most when traffic is light.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub(crate) enum EndpointError {
    #[error("--otlp-endpoint {0:?}: only http:// URLs are supported (point it at a local collector for TLS)")]
    Scheme(String),
    #[error("--otlp-endpoint {0:?}: no host")]
    Host(String),
    #[error("--otlp-endpoint {0:?}: bad port")]
    Port(String),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    #[error("resolving {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("talking to the collector: {0}")]
    Io(#[from] std::io::Error),
    #[error("collector answered HTTP {0}")]
    Status(u16),
    #[error("collector did not answer with HTTP")]
    NotHttp,
}

/// Where spans go: `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(url: &str) -> Result<Endpoint, EndpointError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| EndpointError::Scheme(url.into()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // The OTLP exporter convention: a bare base URL means the standard traces path.
        let path = if path.is_empty() || path == "/" { "/v1/traces" } else { path };
        let port = |p: &str| p.parse::<u16>().map_err(|_| EndpointError::Port(url.into()));
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(|| EndpointError::Host(url.into()))?;
            match after.strip_prefix(':') {
                Some(p) => (host, port(p)?),
                None if after.is_empty() => (host, 80),
                None => return Err(EndpointError::Host(url.into())),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, p)) => (host, port(p)?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            return Err(EndpointError::Host(url.into()));
        }
        Ok(Endpoint { host: host.into(), port, path: path.into() })
    }
}

enum Message {
    Span(Vec<u8>),
    /// Export what is queued, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Counters the exporter keeps (registered in [`crate::telemetry::metrics::Metrics`]).
#[derive(Clone)]
pub(crate) struct ExportCounters {
    pub(crate) dropped: prometheus::IntCounter,
    pub(crate) exported: prometheus::IntCounter,
    pub(crate) failed: prometheus::IntCounter,
}

/// The request side of the exporter: a bounded queue into the export thread.
pub(crate) struct Exporter {
    tx: SyncSender<Message>,
    dropped: prometheus::IntCounter,
}

/// The constant head of every export request: resource and scope around the spans.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Resource<'a> {
    attributes: Vec<super::span::Attr<'a>>,
}

impl Exporter {
    /// Starts the export thread. `resource` are the OTLP resource attributes (service.name…).
    pub(crate) fn start(
        endpoint: Endpoint,
        resource: &[(&'static str, &str)],
        counters: ExportCounters,
    ) -> std::io::Result<Exporter> {
        let resource = Resource {
            attributes: resource
                .iter()
                .map(|(k, v)| super::span::Attr { key: k, value: super::span::Value::Str(v) })
                .collect(),
        };
        let mut head = br#"{"resourceSpans":[{"resource":"#.to_vec();
        serde_json::to_writer(&mut head, &resource).map_err(std::io::Error::other)?;
        head.extend_from_slice(br#","scopeSpans":[{"scope":{"name":"meshgate","version":""#);
        head.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
        head.extend_from_slice(br#""},"spans":["#);
        let (tx, rx) = sync_channel(QUEUE_CAPACITY);
        let dropped = counters.dropped.clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_loop(rx, &endpoint, &head, &counters))?;
        Ok(Exporter { tx, dropped })
    }

    /// Queues one encoded span; never waits.
    pub(crate) fn send(&self, span: Vec<u8>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(Message::Span(span)) {
            self.dropped.inc();
        }
    }

    /// Exports everything queued so far; waits at most `timeout` (for shutdown).
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut msg = Message::Flush(done_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return false,
            }
        }
        done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok()
    }
}

fn export_loop(rx: Receiver<Message>, endpoint: &Endpoint, head: &[u8], counters: &ExportCounters) {
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(MAX_BATCH);
    let mut last_error: Option<String> = None;
    loop {
        let mut flushed = None;
        match rx.recv() {
            Ok(Message::Span(s)) => batch.push(s),
            Ok(Message::Flush(done)) => flushed = Some(done),
            Err(_) => return,
        }
        let deadline = Instant::now() + FLUSH_INTERVAL;
        while flushed.is_none() && batch.len() < MAX_BATCH {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Message::Span(s)) => batch.push(s),
                Ok(Message::Flush(done)) => flushed = Some(done),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    export(&mut batch, endpoint, head, counters, &mut last_error);
                    return;
                }
            }
        }
        export(&mut batch, endpoint, head, counters, &mut last_error);
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// POSTs the batch; failures are counted and logged once per distinct error (a collector
/// that is down must not flood the log at the span rate).
fn export(
    batch: &mut Vec<Vec<u8>>,
    endpoint: &Endpoint,
    head: &[u8],
    counters: &ExportCounters,
    last_error: &mut Option<String>,
) {
    if batch.is_empty() {
        return;
    }
    let body = request_body(head, batch);
    let n = batch.len() as u64;
    batch.clear();
    match post(endpoint, &body) {
        Ok(()) => {
            counters.exported.inc_by(n);
            if last_error.take().is_some() {
                tracing::info!(host = endpoint.host, port = endpoint.port, "span export recovered");
            }
        }
        Err(e) => {
            counters.failed.inc_by(n);
            let text = e.to_string();
            if last_error.as_deref() != Some(text.as_str()) {
                tracing::warn!(host = endpoint.host, port = endpoint.port, error = %text, spans = n, "span export failed; spans dropped");
                *last_error = Some(text);
            }
        }
    }
}

fn request_body(head: &[u8], spans: &[Vec<u8>]) -> Vec<u8> {
    let len = head.len() + spans.iter().map(|s| s.len() + 1).sum::<usize>() + 8;
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(head);
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(s);
    }
    body.extend_from_slice(b"]}]}]}");
    body
}

/// One HTTP/1.1 POST on a fresh connection (`Connection: close`). At most one per second
/// or per full batch, so connection reuse would save little and cost a response parser.
fn post(endpoint: &Endpoint, body: &[u8]) -> Result<(), ExportError> {
    let target = format!("{}:{}", endpoint.host, endpoint.port);
    let addrs: Vec<_> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| ExportError::Resolve(target.clone(), e))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e.into()),
        (None, None) => return Err(ExportError::NoAddress(target)),
    };
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let host = if endpoint.host.contains(':') { format!("[{}]", endpoint.host) } else { endpoint.host.clone() };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         User-Agent: meshgate/{}\r\nConnection: close\r\n\r\n",
        endpoint.path,
        endpoint.port,
        body.len(),
        env!("CARGO_PKG_VERSION"),
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let code = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or(ExportError::NotHttp)?;
    // Read (bounded) to the end so the collector is not reset mid-response.
    let _ = std::io::copy(&mut reader.take(64 * 1024), &mut std::io::sink());
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(ExportError::Status(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn endpoints() {
        let e: Endpoint = "http://127.0.0.1:4318/v1/traces".parse().unwrap();
        assert_eq!(e, Endpoint { host: "127.0.0.1".into(), port: 4318, path: "/v1/traces".into() });
        let e: Endpoint = "http://otel-collector.observability".parse().unwrap();
        assert_eq!((e.port, e.path.as_str()), (80, "/v1/traces"));
        let e: Endpoint = "http://[::1]:4318/".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("::1", 4318, "/v1/traces"));
        assert!(matches!("https://x:4318".parse::<Endpoint>(), Err(EndpointError::Scheme(_))));
        assert!(matches!("http://:4318".parse::<Endpoint>(), Err(EndpointError::Host(_))));
        assert!(matches!("http://x:port".parse::<Endpoint>(), Err(EndpointError::Port(_))));
    }

    fn counters() -> ExportCounters {
        let c = |n: &str| prometheus::IntCounter::new(n, "-").unwrap();
        ExportCounters { dropped: c("d"), exported: c("e"), failed: c("f") }
    }

    /// A one-shot collector: answers `status` to one POST and hands back the body.
    fn collector(status: u16) -> (Endpoint, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let mut s = r.into_inner();
            write!(s, "HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\n{{}}").unwrap();
            String::from_utf8(body).unwrap()
        });
        (Endpoint { host: "127.0.0.1".into(), port, path: "/v1/traces".into() }, handle)
    }

    #[test]
    fn batches_are_valid_otlp_json() {
        let (endpoint, got) = collector(200);
        let c = counters();
        let exporter = Exporter::start(endpoint, &[("service.name", "gw")], c.clone()).unwrap();
        exporter.send(br#"{"name":"a"}"#.to_vec());
        exporter.send(br#"{"name":"b"}"#.to_vec());
        assert!(exporter.flush(Duration::from_secs(10)));
        let body: serde_json::Value = serde_json::from_str(&got.join().unwrap()).unwrap();
        let rs = &body["resourceSpans"][0];
        assert_eq!(rs["resource"]["attributes"][0]["key"], "service.name");
        assert_eq!(rs["resource"]["attributes"][0]["value"]["stringValue"], "gw");
        assert_eq!(rs["scopeSpans"][0]["scope"]["name"], "meshgate");
        assert_eq!(rs["scopeSpans"][0]["spans"][1]["name"], "b");
        assert_eq!((c.exported.get(), c.failed.get()), (2, 0));
    }

    #[test]
    fn rejected_batches_are_counted() {
        let (endpoint, got) = collector(503);
        let c = counters();
        let exporter = Exporter::start(endpoint, &[], c.clone()).unwrap();
        exporter.send(b"{}".to_vec());
        assert!(exporter.flush(Duration::from_secs(10)));
        got.join().unwrap();
        assert_eq!((c.exported.get(), c.failed.get()), (0, 1));
    }
}
