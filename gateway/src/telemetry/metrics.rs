//! Istio's standard request metrics (so Kiali and Istio's Grafana dashboards work unchanged)
//! and meshgate's own `meshgate_*` metrics, in one Prometheus registry.

use super::destination::DestinationLabels;
use super::Exchange;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use std::sync::Arc;

/// Istio's bucket boundaries for `istio_request_duration_milliseconds`.
const DURATION_BUCKETS_MS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];
/// Istio's bucket boundaries for request/response sizes (powers of ten up to 1 GB).
const SIZE_BUCKETS: &[f64] =
    &[1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0, 100000000.0, 1000000000.0];

/// Reporter, source and destination label names, shared by Istio's HTTP and TCP metrics, in
/// Istio's order; [`Metrics::peer_values`] yields their values.
const PEER_LABELS: [&str; 20] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
];
/// What HTTP metrics add to [`PEER_LABELS`].
const HTTP_LABELS: [&str; 5] =
    ["request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy"];
/// What TCP metrics add: Istio's TCP metrics have no response code.
const TCP_LABELS: [&str; 3] = ["request_protocol", "response_flags", "connection_security_policy"];

fn label_names(extra: &[&'static str]) -> Vec<&'static str> {
    PEER_LABELS.iter().chain(extra).copied().collect()
}

/// Per-connection TCP counters, resolved once when the connection opens so byte updates do
/// not hash label sets.
pub(crate) struct TcpCounters {
    pub(crate) sent: prometheus::IntCounter,
    pub(crate) received: prometheus::IntCounter,
    closed: prometheus::IntCounter,
}

impl TcpCounters {
    pub(crate) fn close(&self) {
        self.closed.inc();
    }
}

/// The four request metrics of one label set, resolved once.
pub(crate) struct Series {
    requests: IntCounter,
    duration: prometheus::Histogram,
    request_bytes: prometheus::Histogram,
    response_bytes: prometheus::Histogram,
}

/// The varying part of a request's label set; the rest comes from the destination.
type SeriesKey = (u16, &'static str, &'static str, &'static str);

/// Resolved series per destination, so a request does not hash 25 label values four times.
/// Readers never lock: the list is replaced whole (copy on write) when a new status code or
/// flag shows up, which happens a handful of times per destination. Empty until the first
/// request: most of a large config's destinations never see one, and an empty list would
/// still be an allocation per destination.
#[derive(Default)]
pub(crate) struct SeriesCache {
    entries: arc_swap::ArcSwapOption<Vec<(SeriesKey, Arc<Series>)>>,
}

impl std::fmt::Debug for SeriesCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SeriesCache({})", self.entries.load().as_ref().map_or(0, |e| e.len()))
    }
}

/// Bound on cached label sets per destination; past it, requests resolve labels directly.
const MAX_CACHED_SERIES: usize = 64;

impl SeriesCache {
    fn get(&self, key: SeriesKey, make: impl FnOnce() -> Series) -> Arc<Series> {
        if let Some((_, s)) = self.entries.load().as_ref().and_then(|e| e.iter().find(|(k, _)| *k == key)) {
            return s.clone();
        }
        let series = Arc::new(make());
        let current = self.entries.load();
        let current = current.as_deref().map_or(&[][..], Vec::as_slice);
        if current.len() < MAX_CACHED_SERIES {
            let mut next = current.to_vec();
            next.push((key, series.clone()));
            self.entries.store(Some(Arc::new(next)));
        }
        series
    }
}

fn trace_counters() -> crate::trace::export::ExportCounters {
    let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("static metric definition");
    crate::trace::export::ExportCounters {
        dropped: counter("meshgate_trace_spans_dropped_total", "Spans dropped because the export queue was full"),
        exported: counter("meshgate_trace_spans_exported_total", "Spans the OTLP collector accepted"),
        failed: counter("meshgate_trace_spans_export_failed_total", "Spans lost because an export request failed"),
    }
}

/// Who the gateway is, as the `source_*` labels say.
#[derive(Debug, Clone)]
pub(crate) struct SourceIdentity {
    pub(crate) workload: String,
    pub(crate) namespace: String,
    pub(crate) app: String,
    pub(crate) version: String,
}

pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    source: SourceIdentity,
    requests: IntCounterVec,
    duration: HistogramVec,
    request_bytes: HistogramVec,
    response_bytes: HistogramVec,
    pub(crate) config_version: IntGauge,
    /// Set by the embedded controller; a replica exports it as registered (the dashboards
    /// query it), never set.
    #[cfg_attr(not(feature = "embedded"), allow(dead_code))]
    pub(crate) config_rejected: IntGauge,
    pub(crate) config_swaps: IntCounter,
    /// Reloads by result, counted by the embedded controller (see `config_rejected`).
    #[cfg_attr(not(feature = "embedded"), allow(dead_code))]
    pub(crate) config_reloads: IntCounterVec,
    pub(crate) downstream_active: IntGauge,
    pub(crate) downstream_total: IntCounter,
    pub(crate) listeners: IntGauge,
    /// Downstream connections each worker accepted: how evenly the kernel spreads them.
    pub(crate) worker_connections: IntCounterVec,
    /// The data ports' connection limit, whether accepting is paused at it, and how often.
    pub(crate) connection_limit: IntGauge,
    pub(crate) overload: crate::listeners::Overload,
    /// Connections the request-head guard closed or refused.
    pub(crate) guard: crate::listeners::GuardCounters,
    pub(crate) access_log_dropped: IntCounter,
    tcp_sent: IntCounterVec,
    tcp_received: IntCounterVec,
    tcp_opened: IntCounterVec,
    tcp_closed: IntCounterVec,
    pub(crate) tls_handshake_failures: IntCounterVec,
    /// Retries by cluster (Envoy's `upstream_rq_retry`), and requests whose retries ran out
    /// (`upstream_rq_retry_limit_exceeded`) or whose retry got a response the policy took
    /// (`upstream_rq_retry_success`).
    upstream_rq_retry: IntCounterVec,
    upstream_rq_retry_limit_exceeded: IntCounterVec,
    upstream_rq_retry_success: IntCounterVec,
    /// Mirrored requests by mirror cluster and outcome: `sent` (a response came back),
    /// `failed` (no response: connect failure, reset, timeout, the original request's body
    /// broke off) and `dropped` (not sent: the in-flight cap was reached).
    mirror_requests: IntCounterVec,
    /// `notAfter` of each served certificate, by secret (`kubernetes://ns/name`, `file://...`).
    pub(crate) certificate_expiry: prometheus::IntGaugeVec,
    /// Span export (`meshgate_trace_spans_*_total`), registered whether or not tracing is on.
    pub(crate) trace: crate::trace::export::ExportCounters,
    /// Series of requests that reached no destination (404 NR and the like).
    no_destination: SeriesCache,
}

impl Metrics {
    pub(crate) fn new(source: SourceIdentity) -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("istio_requests_total", "Requests processed by the gateway"),
            &label_names(&HTTP_LABELS),
        )
        .expect("static metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new("istio_request_duration_milliseconds", "Request duration in milliseconds")
                .buckets(DURATION_BUCKETS_MS.to_vec()),
            &label_names(&HTTP_LABELS),
        )
        .expect("static metric definition");
        let request_bytes = HistogramVec::new(
            HistogramOpts::new("istio_request_bytes", "Request body sizes in bytes").buckets(SIZE_BUCKETS.to_vec()),
            &label_names(&HTTP_LABELS),
        )
        .expect("static metric definition");
        let response_bytes = HistogramVec::new(
            HistogramOpts::new("istio_response_bytes", "Response body sizes in bytes").buckets(SIZE_BUCKETS.to_vec()),
            &label_names(&HTTP_LABELS),
        )
        .expect("static metric definition");
        let config_version = IntGauge::new("meshgate_config_version", "Version of the snapshot being served")
            .expect("static metric definition");
        let config_rejected = IntGauge::new(
            "meshgate_config_rejected_resources",
            "Resources rejected (or kept at their last valid version) in the latest config load",
        )
        .expect("static metric definition");
        let config_swaps = IntCounter::new("meshgate_config_swaps_total", "Snapshots swapped into the request path")
            .expect("static metric definition");
        let config_reloads =
            IntCounterVec::new(Opts::new("meshgate_config_reloads_total", "Config loads by result"), &["result"])
                .expect("static metric definition");
        let downstream_active = IntGauge::new("meshgate_downstream_connections_active", "Open downstream connections")
            .expect("static metric definition");
        let downstream_total =
            IntCounter::new("meshgate_downstream_connections_total", "Accepted downstream connections")
                .expect("static metric definition");
        let listeners =
            IntGauge::new("meshgate_listeners", "Listening data-plane ports").expect("static metric definition");
        let worker_connections = IntCounterVec::new(
            Opts::new("meshgate_worker_connections_total", "Downstream connections accepted, by worker thread"),
            &["worker"],
        )
        .expect("static metric definition");
        let connection_limit = IntGauge::new(
            "meshgate_downstream_connections_limit",
            "Downstream connections the data ports keep open at once",
        )
        .expect("static metric definition");
        let overload = crate::listeners::Overload {
            active: IntGauge::new(
                "meshgate_downstream_overloaded",
                "1 while the data ports are at their connection limit and accepting is paused",
            )
            .expect("static metric definition"),
            paused: IntCounter::new(
                "meshgate_downstream_accept_paused_total",
                "Times accepting paused at the connection limit",
            )
            .expect("static metric definition"),
        };
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("static metric definition");
        let guard = crate::listeners::GuardCounters {
            idle: counter(
                "meshgate_downstream_idle_timeouts_total",
                "Connections closed idle: no request within the header timeout of accept, or none within the idle timeout on keep-alive",
            ),
            header_timeout: counter(
                "meshgate_downstream_header_timeouts_total",
                "Requests whose head was not complete within the header timeout (408)",
            ),
            too_large: counter(
                "meshgate_downstream_headers_too_large_total",
                "Requests whose head was over the size limit (431)",
            ),
        };
        let tcp = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &label_names(&TCP_LABELS)).expect("static metric definition")
        };
        let tcp_sent = tcp("istio_tcp_sent_bytes_total", "Bytes sent to the downstream on TCP connections");
        let tcp_received =
            tcp("istio_tcp_received_bytes_total", "Bytes received from the downstream on TCP connections");
        let tcp_opened = tcp("istio_tcp_connections_opened_total", "TCP connections opened to upstreams");
        let tcp_closed = tcp("istio_tcp_connections_closed_total", "TCP connections closed");
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "meshgate_tls_handshake_failures_total",
                "Downstream TLS connections that failed before a request",
            ),
            &["port", "reason"],
        )
        .expect("static metric definition");
        // Envoy's `ssl.certificate.<name>.expiration_unix_time_seconds`: a timestamp, so an
        // alert is `meshgate_certificate_expiry_seconds - time() < 14 * 86400`.
        let certificate_expiry = prometheus::IntGaugeVec::new(
            Opts::new(
                "meshgate_certificate_expiry_seconds",
                "When each served certificate expires, in seconds since the Unix epoch",
            ),
            &["secret"],
        )
        .expect("static metric definition");
        let retry = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["cluster_name"]).expect("static metric definition")
        };
        let upstream_rq_retry =
            retry("meshgate_upstream_rq_retry_total", "Retries sent upstream, by cluster (Envoy's upstream_rq_retry)");
        let upstream_rq_retry_limit_exceeded = retry(
            "meshgate_upstream_rq_retry_limit_exceeded_total",
            "Requests whose retries ran out with a retriable outcome (flag URX)",
        );
        let upstream_rq_retry_success = retry(
            "meshgate_upstream_rq_retry_success_total",
            "Retried requests that got a response their retry policy accepts",
        );
        let mirror_requests = IntCounterVec::new(
            Opts::new(
                "meshgate_mirror_requests_total",
                "Mirrored requests by mirror cluster and outcome (sent, failed, dropped at the in-flight cap)",
            ),
            &["cluster_name", "outcome"],
        )
        .expect("static metric definition");
        let access_log_dropped = IntCounter::new(
            "meshgate_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind",
        )
        .expect("static metric definition");
        let trace = trace_counters();
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(request_bytes.clone()),
            Box::new(response_bytes.clone()),
            Box::new(config_version.clone()),
            Box::new(config_rejected.clone()),
            Box::new(config_swaps.clone()),
            Box::new(config_reloads.clone()),
            Box::new(downstream_active.clone()),
            Box::new(downstream_total.clone()),
            Box::new(listeners.clone()),
            Box::new(worker_connections.clone()),
            Box::new(connection_limit.clone()),
            Box::new(overload.active.clone()),
            Box::new(overload.paused.clone()),
            Box::new(guard.idle.clone()),
            Box::new(guard.header_timeout.clone()),
            Box::new(guard.too_large.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(tcp_sent.clone()),
            Box::new(tcp_received.clone()),
            Box::new(tcp_opened.clone()),
            Box::new(tcp_closed.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(certificate_expiry.clone()),
            Box::new(upstream_rq_retry.clone()),
            Box::new(upstream_rq_retry_limit_exceeded.clone()),
            Box::new(upstream_rq_retry_success.clone()),
            Box::new(mirror_requests.clone()),
            Box::new(trace.dropped.clone()),
            Box::new(trace.exported.clone()),
            Box::new(trace.failed.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            source,
            requests,
            duration,
            request_bytes,
            response_bytes,
            config_version,
            config_rejected,
            config_swaps,
            config_reloads,
            downstream_active,
            downstream_total,
            listeners,
            worker_connections,
            connection_limit,
            overload,
            guard,
            access_log_dropped,
            tcp_sent,
            tcp_received,
            tcp_opened,
            tcp_closed,
            tls_handshake_failures,
            certificate_expiry,
            upstream_rq_retry,
            upstream_rq_retry_limit_exceeded,
            upstream_rq_retry_success,
            mirror_requests,
            trace,
            no_destination: SeriesCache::default(),
        }
    }

    /// The reporter, source and destination labels (the first 20 of both label sets).
    fn peer_values<'a>(&'a self, destination: Option<&'a DestinationLabels>) -> [&'a str; 20] {
        let unknown = "unknown";
        let d = destination;
        let s = &self.source;
        [
            "source",
            &s.workload,
            &s.workload,
            &s.version,
            &s.namespace,
            unknown,
            &s.app,
            &s.version,
            "Kubernetes",
            d.map_or(unknown, |d| &*d.workload),
            d.map_or(unknown, |d| &*d.workload_namespace),
            unknown,
            d.map_or(unknown, |d| &*d.app),
            d.map_or(unknown, |d| &*d.version),
            d.map_or(unknown, |d| &*d.service),
            d.map_or(unknown, |d| if &*d.app == "unknown" { &*d.service_name } else { &*d.app }),
            d.map_or(unknown, |d| if &*d.version == "unknown" { "latest" } else { &*d.version }),
            d.map_or(unknown, |d| &*d.service_name),
            d.map_or(unknown, |d| &*d.service_namespace),
            "Kubernetes",
        ]
    }

    /// The peer labels' values followed by a metric family's own.
    fn label_values<'a>(&'a self, destination: Option<&'a DestinationLabels>, extra: &[&'a str]) -> Vec<&'a str> {
        self.peer_values(destination).into_iter().chain(extra.iter().copied()).collect()
    }

    /// Counts an opened TCP connection and returns its byte/close counters.
    pub(crate) fn tcp_open(
        &self,
        destination: Option<&DestinationLabels>,
        flags: crate::response_flag::ResponseFlag,
        security_policy: &str,
    ) -> TcpCounters {
        let values = self.label_values(destination, &["tcp", flags.as_str(), security_policy]);
        self.tcp_opened.with_label_values(&values).inc();
        TcpCounters {
            sent: self.tcp_sent.with_label_values(&values),
            received: self.tcp_received.with_label_values(&values),
            closed: self.tcp_closed.with_label_values(&values),
        }
    }

    /// Istio's request metrics for one finished HTTP request.
    pub(crate) fn record(&self, x: &Exchange) {
        let key = (x.code, x.flags.as_str(), x.protocol_label(), x.security_policy());
        let destination = x.destination_labels();
        let cache = destination.map_or(&self.no_destination, |d| &d.series);
        let series = cache.get(key, || self.series(destination, key));
        series.requests.inc();
        series.duration.observe(x.duration.as_secs_f64() * 1000.0);
        series.request_bytes.observe(x.bytes_received as f64);
        series.response_bytes.observe(x.bytes_sent as f64);
    }

    fn series(&self, destination: Option<&DestinationLabels>, key: SeriesKey) -> Series {
        let (code, flags, protocol, security_policy) = key;
        let mut code_buf = [0u8; 5];
        let code = code_str(&mut code_buf, code);
        let values = self.label_values(destination, &[protocol, code, "-", flags, security_policy]);
        Series {
            requests: self.requests.with_label_values(&values),
            duration: self.duration.with_label_values(&values),
            request_bytes: self.request_bytes.with_label_values(&values),
            response_bytes: self.response_bytes.with_label_values(&values),
        }
    }

    /// A retry was sent to `cluster`.
    pub(crate) fn upstream_retry(&self, cluster: &str) {
        self.upstream_rq_retry.with_label_values(&[cluster]).inc();
    }

    /// The end of a request that was retried: its retries ran out, or one succeeded.
    pub(crate) fn retried_request_done(&self, cluster: &str, exhausted: bool) {
        let counter = if exhausted { &self.upstream_rq_retry_limit_exceeded } else { &self.upstream_rq_retry_success };
        counter.with_label_values(&[cluster]).inc();
    }

    /// A mirrored request to `cluster` ended (`sent`, `failed`) or was not sent (`dropped`).
    pub(crate) fn mirror(&self, cluster: &str, outcome: &str) {
        self.mirror_requests.with_label_values(&[cluster, outcome]).inc();
    }

    /// Prometheus text exposition of everything registered.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Formats a status code without allocating.
fn code_str(buf: &mut [u8; 5], code: u16) -> &str {
    let mut n = code;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_format() {
        let mut b = [0u8; 5];
        assert_eq!(code_str(&mut b, 200), "200");
        assert_eq!(code_str(&mut b, 0), "0");
        assert_eq!(code_str(&mut b, 503), "503");
    }
}
