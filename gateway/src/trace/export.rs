//! OTLP/HTTP JSON export from a dedicated thread.
//!
//! Why not the `opentelemetry-otlp` crate: measured against the OpenTelemetry SDK path
//! (BatchSpanProcessor and the OTLP HTTP/protobuf exporter) it costs more instructions per
//! sampled request, the SDK's queue does not expose its drop count for
//! `meshgate_trace_spans_dropped_total`, and it adds an HTTP client stack (reqwest) or, for gRPC,
//! tonic plus a tokio runtime of its own next to Pingora's; see docs/architecture.md,
//! "Tracing: OpenTelemetry crates". The gateway needs one fixed span shape, so encoding it
//! directly as OTLP JSON (a stable, documented encoding) and POSTing batches over a plain
//! socket keeps the request path to encoding the span into one buffer.
//!
//! The request path never blocks and never wakes the export thread: a sampled request encodes
//! its span into its worker thread's buffer (`telemetry::per_thread`, as the access log does:
//! one uncontended lock, no allocation, no channel, no futex call). The export thread collects
//! every thread's spans each [`TICK`], or early when one thread holds a full batch, and POSTs
//! batches of up to [`MAX_BATCH`] spans, a partial one once its first span has waited
//! [`FLUSH_INTERVAL`]. A worker thread that holds [`MAX_QUEUED`] spans (the export thread is
//! stuck in a slow POST, or cannot keep up) drops new ones and counts them
//! (`meshgate_trace_spans_dropped_total`).

use crate::telemetry::per_thread::{lock, PerThread, Records};
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Spans one worker thread may hold for the export thread; past this, its new spans are
/// dropped. The OTel SDKs queue 2,048 in all; this is per worker thread, so a burst on one
/// thread has the same headroom, and memory stays bounded by threads × this.
const MAX_QUEUED: usize = 2048;
/// Bytes of spans one worker thread may hold (a span is ~1 KiB; long URLs make it larger).
const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;
/// Spans per POST (the OTel SDK batch default). A worker thread that holds this many wakes
/// the export thread rather than waiting for its tick.
pub(crate) const MAX_BATCH: usize = 512;
/// How long a batch's first span may wait for the batch to fill, counted from its collection
/// (so at most this plus a [`TICK`] from the request's end). Shorter than the SDK's 5 s so
/// traces show up promptly; one POST per second at most when traffic is light.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the export thread collects the worker threads' spans.
const TICK: Duration = Duration::from_millis(100);
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

/// Encoded spans back to back, span `i` ending at `ends[i]` (and starting where span `i - 1`
/// ends): a worker thread's queue, and the export thread's batch.
#[derive(Default)]
struct Spans {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Spans {
    fn with_capacity(spans: usize) -> Spans {
        Spans { bytes: Vec::with_capacity(spans * 1024), ends: Vec::with_capacity(spans) }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn push(&mut self, span: &[u8]) {
        self.bytes.extend_from_slice(span);
        self.ends.push(self.bytes.len());
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(start, end)| &self.bytes[start..end])
    }
}

impl Records for Spans {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// What the request side and the export thread share.
struct Queue {
    /// Spans not yet collected, one buffer per worker thread.
    spans: PerThread<Spans>,
    control: Mutex<Control>,
    /// Signalled when the export thread has done a flush.
    flushed: Condvar,
    dropped: prometheus::IntCounter,
}

/// Requests to the export thread, read once per round.
#[derive(Default)]
struct Control {
    /// The [`Exporter`] is gone: export what is left and end.
    stop: bool,
    /// Flushes asked for so far, and how many of them the export thread has done.
    flushes_requested: u64,
    flushes_done: u64,
}

/// Counters the exporter keeps (registered in [`crate::telemetry::metrics::Metrics`]).
#[derive(Clone)]
pub(crate) struct ExportCounters {
    pub(crate) dropped: prometheus::IntCounter,
    pub(crate) exported: prometheus::IntCounter,
    pub(crate) failed: prometheus::IntCounter,
}

/// The request side of the exporter: per-thread span buffers and the export thread's handle.
pub(crate) struct Exporter {
    queue: Arc<Queue>,
    /// The export thread, to wake it (a full batch, a flush, the stop).
    thread: std::thread::Thread,
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
        let queue = Arc::new(Queue {
            spans: PerThread::new(|| Spans::with_capacity(64)),
            control: Mutex::new(Control::default()),
            flushed: Condvar::new(),
            dropped: counters.dropped.clone(),
        });
        let q = queue.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_loop(&q, &endpoint, &head, &counters))?;
        Ok(Exporter { queue, thread: thread.thread().clone() })
    }

    /// Queues one span, which `encode` appends to the buffer it is given; never waits. The
    /// span stays in this worker thread's buffer until the export thread's next tick.
    pub(crate) fn send(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        let queue = &*self.queue;
        let full_batch = queue.spans.with(|spans| {
            if spans.len() >= MAX_QUEUED || spans.bytes.len() >= MAX_QUEUED_BYTES {
                queue.dropped.inc();
                return false;
            }
            encode(&mut spans.bytes);
            spans.ends.push(spans.bytes.len());
            spans.len() == MAX_BATCH
        });
        if full_batch {
            self.thread.unpark();
        }
    }

    /// Exports everything queued so far; waits at most `timeout` (for shutdown).
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let mut control = lock(&self.queue.control);
        control.flushes_requested += 1;
        let ticket = control.flushes_requested;
        self.thread.unpark();
        let (control, _) = self
            .queue
            .flushed
            .wait_timeout_while(control, timeout, |c| c.flushes_done < ticket)
            .unwrap_or_else(|e| e.into_inner());
        control.flushes_done >= ticket
    }
}

impl Drop for Exporter {
    /// Tells the export thread to export what is left and end; does not wait for it.
    fn drop(&mut self) {
        lock(&self.queue.control).stop = true;
        self.thread.unpark();
    }
}

fn export_loop(queue: &Queue, endpoint: &Endpoint, head: &[u8], counters: &ExportCounters) {
    let mut batch = Spans::with_capacity(MAX_BATCH);
    let mut spare = Spans::default();
    // When the batch goes out even if not full; meaningful while it holds spans.
    let mut deadline = Instant::now();
    let mut last_error: Option<String> = None;
    loop {
        // Read before collecting, so that spans queued before a flush or the stop was asked
        // for are collected in this round.
        let (stop, flush) = {
            let control = lock(&queue.control);
            (control.stop, (control.flushes_done < control.flushes_requested).then_some(control.flushes_requested))
        };
        queue.spans.drain(&mut spare, |spans| {
            for span in spans.iter() {
                if batch.is_empty() {
                    deadline = Instant::now() + FLUSH_INTERVAL;
                }
                batch.push(span);
                if batch.len() == MAX_BATCH {
                    export(&mut batch, endpoint, head, counters, &mut last_error);
                }
            }
        });
        if stop || flush.is_some() || Instant::now() >= deadline {
            export(&mut batch, endpoint, head, counters, &mut last_error);
        }
        if let Some(ticket) = flush {
            lock(&queue.control).flushes_done = ticket;
            queue.flushed.notify_all();
        }
        if stop {
            return;
        }
        // Sleep until the next tick, or the batch's deadline if sooner; `unpark` ends it early.
        let wait = if batch.is_empty() { TICK } else { TICK.min(deadline.saturating_duration_since(Instant::now())) };
        std::thread::park_timeout(wait);
    }
}

/// POSTs the batch; failures are counted and logged once per distinct error (a collector
/// that is down must not flood the log at the span rate).
fn export(
    batch: &mut Spans,
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

fn request_body(head: &[u8], spans: &Spans) -> Vec<u8> {
    let len = head.len() + spans.bytes.len() + spans.len() + 8;
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

    /// A collector that answers `status` to POSTs until it has `spans` spans (at least one
    /// POST), and hands back the bodies.
    fn collector_of(status: u16, spans: usize) -> (Endpoint, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let mut bodies = Vec::new();
            let mut got = 0;
            while bodies.is_empty() || got < spans {
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
                let body = String::from_utf8(body).unwrap();
                got += spans_of(&body).len();
                bodies.push(body);
            }
            bodies
        });
        (Endpoint { host: "127.0.0.1".into(), port, path: "/v1/traces".into() }, handle)
    }

    /// A one-shot collector: answers `status` to one POST and hands back the body.
    fn collector(status: u16) -> (Endpoint, std::thread::JoinHandle<String>) {
        let (endpoint, bodies) = collector_of(status, 0);
        (endpoint, std::thread::spawn(move || bodies.join().unwrap().remove(0)))
    }

    fn spans_of(body: &str) -> Vec<serde_json::Value> {
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        body["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap().clone()
    }

    #[test]
    fn batches_are_valid_otlp_json() {
        let (endpoint, got) = collector(200);
        let c = counters();
        let exporter = Exporter::start(endpoint, &[("service.name", "gw")], c.clone()).unwrap();
        exporter.send(|out| out.extend_from_slice(br#"{"name":"a"}"#));
        exporter.send(|out| out.extend_from_slice(br#"{"name":"b"}"#));
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
        exporter.send(|out| out.extend_from_slice(b"{}"));
        assert!(exporter.flush(Duration::from_secs(10)));
        got.join().unwrap();
        assert_eq!((c.exported.get(), c.failed.get()), (0, 1));
    }

    #[test]
    fn spans_of_every_thread_are_exported_once_in_batches() {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 300;
        let (endpoint, got) = collector_of(200, (THREADS * PER_THREAD) as usize);
        let c = counters();
        let exporter = Exporter::start(endpoint, &[], c.clone()).unwrap();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let exporter = &exporter;
                s.spawn(move || {
                    for i in 0..PER_THREAD {
                        exporter.send(|out| write!(out, r#"{{"t":{t},"i":{i}}}"#).unwrap());
                    }
                });
            }
        });
        assert!(exporter.flush(Duration::from_secs(10)));
        let bodies = got.join().unwrap();
        assert!(bodies.len() >= 3, "{} spans in batches of at most {MAX_BATCH}", THREADS * PER_THREAD);
        let mut next = [0; THREADS as usize];
        for body in &bodies {
            let spans = spans_of(body);
            assert!(spans.len() <= MAX_BATCH);
            for span in spans {
                let t = span["t"].as_u64().unwrap() as usize;
                assert_eq!(span["i"], next[t], "each span once, a thread's spans in order");
                next[t] += 1;
            }
        }
        assert_eq!(next, [PER_THREAD; THREADS as usize]);
        assert_eq!((c.exported.get(), c.dropped.get()), (THREADS * PER_THREAD, 0));
    }

    #[test]
    fn spans_go_out_on_the_tick_and_when_the_exporter_stops() {
        let (endpoint, got) = collector_of(200, 2);
        let c = counters();
        let exporter = Exporter::start(endpoint, &[], c.clone()).unwrap();
        exporter.send(|out| out.extend_from_slice(br#"{"name":"tick"}"#));
        // No flush: the export thread collects it on a tick and posts it after FLUSH_INTERVAL.
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.exported.get() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(c.exported.get(), 1);
        // Dropping the exporter exports what is left.
        exporter.send(|out| out.extend_from_slice(br#"{"name":"stop"}"#));
        drop(exporter);
        let bodies = got.join().unwrap();
        let names: Vec<_> =
            bodies.iter().map(|b| spans_of(b).iter().map(|s| s["name"].clone()).collect::<Vec<_>>()).collect();
        assert_eq!(names, [["tick"], ["stop"]]);
    }

    #[test]
    fn a_thread_past_its_queue_drops_and_counts() {
        // A collector that takes the connection and never answers: the export thread waits in
        // its POST, so nothing is collected meanwhile.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = Endpoint { host: "127.0.0.1".into(), port: l.local_addr().unwrap().port(), path: "/".into() };
        let c = counters();
        let exporter = Exporter::start(endpoint, &[], c.clone()).unwrap();
        exporter.send(|out| out.extend_from_slice(b"{}"));
        exporter.flush(Duration::ZERO);
        let (stuck, _) = l.accept().unwrap();
        for _ in 0..MAX_QUEUED + 5 {
            exporter.send(|out| out.extend_from_slice(b"{}"));
        }
        assert_eq!(c.dropped.get(), 5);
        drop((stuck, l));
    }
}
