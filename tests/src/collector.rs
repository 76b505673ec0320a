//! A real OpenTelemetry collector for tracing suites: Rotel (`pip install rotel`), receiving
//! OTLP/HTTP on a loopback port and printing every span it receives (`--debug-log traces
//! --debug-log-verbosity detailed`) to stdout, which [`Collector`] parses.
//!
//! ```ignore
//! let collector = Collector::start().await?;          // or skip when rotel_bin() is None
//! let gw = GatewayProcess::builder().otlp_endpoint(collector.traces_url()).start().await?;
//! let span = collector.wait_for_span(|s| s.trace_id == id, Duration::from_secs(20)).await;
//! ```

use crate::gateway::free_addr;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The Rotel binary: `$ROTEL_BIN`, `rotel` or `rotel-agent` on `PATH`, or the agent inside the
/// installed Python package (`pip install rotel` puts it there, not on `PATH`).
pub fn rotel_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ROTEL_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["rotel", "rotel-agent"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let out = Command::new("python3")
        .args(["-c", "import os, rotel; print(os.path.dirname(rotel.__file__))"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let candidate = PathBuf::from(dir.trim()).join("rotel-agent");
    candidate.is_file().then_some(candidate)
}

/// One span as the collector printed it.
#[derive(Debug, Clone, Default)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub parent_id: String,
    pub span_id: String,
    pub name: String,
    /// e.g. `SPAN_KIND_SERVER`.
    pub kind: String,
    /// e.g. `STATUS_CODE_UNSET`, `STATUS_CODE_ERROR`.
    pub status: String,
    /// Span attributes, values without their type wrapper (`Int(200)` → `200`).
    pub attributes: BTreeMap<String, String>,
    /// Attributes of the resource the span came with (`service.name`, ...).
    pub resource: BTreeMap<String, String>,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running Rotel process; killed when dropped.
pub struct Collector {
    child: Child,
    http_addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    /// Holds Rotel's own log file for as long as it runs.
    _log_dir: tempfile::TempDir,
}

impl Collector {
    /// Starts Rotel on free loopback ports and waits until its OTLP/HTTP port accepts
    /// connections.
    pub async fn start() -> Result<Collector> {
        let bin = rotel_bin().context("rotel not found (pip install rotel)")?;
        let http_addr = free_addr();
        let grpc_addr = free_addr();
        let log_dir = tempfile::tempdir()?;
        let mut child = Command::new(&bin)
            .arg("start")
            .args(["--otlp-http-endpoint", &http_addr.to_string()])
            .args(["--otlp-grpc-endpoint", &grpc_addr.to_string()])
            .args(["--exporter", "blackhole", "--debug-log", "traces", "--debug-log-verbosity", "detailed"])
            .arg("--log-file")
            .arg(log_dir.path().join("rotel.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut collector = Collector { child, http_addr, lines, _log_dir: log_dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(http_addr).await.is_ok() {
                return Ok(collector);
            }
            if let Some(status) = collector.child.try_wait()? {
                bail!("rotel exited ({status}) before listening on {http_addr}");
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("rotel did not listen on {http_addr} within 20s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The OTLP/HTTP traces URL to give the gateway.
    pub fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.http_addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        parse_debug_log(&self.lines.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Polls the received spans until one matches or `timeout` passes.
    pub async fn wait_for_span(&self, pred: impl Fn(&ReceivedSpan) -> bool, timeout: Duration) -> Option<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.spans().into_iter().find(|s| pred(s)) {
                return Some(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The collector's stdout so far (for failure messages).
    pub fn output(&self) -> String {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads Rotel's detailed debug output (the OpenTelemetry Collector's debug exporter layout):
///
/// ```text
/// ResourceSpans #0
/// Resource attributes:
///      -> service.name: Str(istio-ingressgateway)
/// ScopeSpans #0
/// Span #0
///     Trace ID       : 4bf92f3577b34da6a3ce929d0e0e4736
///     Parent ID      : 00f067aa0ba902b7
///     ID             : 1f2e3d4c5b6a7988
///     Name           : reviews.default.svc.cluster.local:9080/*
///     Kind           : SPAN_KIND_SERVER
///     Status code    : STATUS_CODE_ERROR
/// Attributes:
///      -> http.status_code: Int(503)
/// ```
pub fn parse_debug_log(lines: &[String]) -> Vec<ReceivedSpan> {
    enum Target {
        None,
        Resource,
        Span,
    }
    let mut spans: Vec<ReceivedSpan> = Vec::new();
    let mut resource = BTreeMap::new();
    let mut target = Target::None;
    for line in lines {
        let trimmed = line.trim();
        if trimmed.starts_with("ResourceSpans #") {
            resource = BTreeMap::new();
            target = Target::None;
        } else if trimmed == "Resource attributes:" {
            target = Target::Resource;
        } else if trimmed.starts_with("ScopeSpans #") {
            target = Target::None;
        } else if trimmed.starts_with("Span #") {
            spans.push(ReceivedSpan { resource: resource.clone(), ..Default::default() });
            target = Target::None;
        } else if trimmed == "Attributes:" {
            target = Target::Span;
        } else if let Some(kv) = trimmed.strip_prefix("-> ") {
            let Some((k, v)) = kv.split_once(": ") else { continue };
            let v = v.split_once('(').and_then(|(_, rest)| rest.strip_suffix(')')).unwrap_or(v);
            match (&target, spans.last_mut()) {
                (Target::Resource, _) => {
                    resource.insert(k.to_string(), v.to_string());
                }
                (Target::Span, Some(span)) => {
                    span.attributes.insert(k.to_string(), v.to_string());
                }
                _ => {}
            }
        } else if let (Some((k, v)), Some(span)) = (trimmed.split_once(':'), spans.last_mut()) {
            let v = v.trim().to_string();
            match k.trim() {
                "Trace ID" => span.trace_id = v,
                "Parent ID" => span.parent_id = v,
                "ID" => span.span_id = v,
                "Name" => span.name = v,
                "Kind" => span.kind = v,
                "Status code" => span.status = v,
                _ => {}
            }
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debug_output() {
        let text = "ResourceSpans #0\nResource SchemaURL: \nResource attributes:\n     -> service.name: \
                    Str(gw)\nScopeSpans #0\nInstrumentationScope meshgate \nSpan #0\n    Trace ID       : \
                    4bf9\n    Parent ID      : \n    ID             : 00f0\n    Name           : a:80/*\n    \
                    Kind           : SPAN_KIND_SERVER\nStart time: 1\n    Status code    : \
                    STATUS_CODE_ERROR\nAttributes:\n     -> http.status_code: Int(503)\n     -> http.url: \
                    Str(http://h/x(1))\nSpan #1\n    Trace ID       : beef\n";
        let lines: Vec<String> = text.lines().map(String::from).collect();
        let spans = parse_debug_log(&lines);
        assert_eq!(spans.len(), 2);
        let s = &spans[0];
        assert_eq!((s.trace_id.as_str(), s.parent_id.as_str(), s.span_id.as_str()), ("4bf9", "", "00f0"));
        assert_eq!(
            (s.name.as_str(), s.kind.as_str(), s.status.as_str()),
            ("a:80/*", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR")
        );
        assert_eq!(s.attr("http.status_code"), Some("503"));
        assert_eq!(s.attr("http.url"), Some("http://h/x(1)"));
        assert_eq!(s.resource.get("service.name").map(String::as_str), Some("gw"));
        assert_eq!(spans[1].trace_id, "beef");
        assert_eq!(spans[1].resource.get("service.name").map(String::as_str), Some("gw"));
    }
}
