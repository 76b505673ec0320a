//! Distributed tracing: one server span per proxied request, continued from W3C
//! `traceparent` or B3, propagated upstream, sampled parent-based, exported as OTLP/HTTP JSON.
//!
//! ```text
//!  request_filter ─────────── Tracer::begin: read headers, ids, sampling decision → ctx
//!  upstream_request_filter ── SpanContext::inject: traceparent (+ B3 if it came in)
//!  logging ────────────────── Tracer::finish: sampled only → encode into the worker thread's buffer
//!  otlp-export thread ─────── collect every 100 ms → batch → POST /v1/traces
//! ```
//!
//! Cost model: with tracing off the proxy holds `None` and each hook pays one branch. With
//! tracing on, an unsampled request pays the header parse, two random ids and the upstream
//! header values; no span is built or queued.

pub(crate) mod context;
pub(crate) mod export;
pub(crate) mod span;

use crate::config::Tracing;
use context::SpanContext;
use export::{Endpoint, EndpointError, ExportCounters, Exporter};
use pingora_http::RequestHeader;
use span::GatewayTags;
pub(crate) use span::RequestFacts;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub(crate) enum TraceError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("starting the span export thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Ratio sampling on the trace id, like OpenTelemetry's TraceIdRatioBased: the low 64 bits of
/// the id compared with a threshold, so every gateway replica decides the same for one trace
/// and no extra random number is drawn.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sampler {
    /// Sampled when `low64(trace_id) < threshold`; 2^64 samples everything.
    threshold: u128,
}

impl Sampler {
    pub(crate) fn from_percent(percent: f64) -> Sampler {
        let fraction = (percent / 100.0).clamp(0.0, 1.0);
        Sampler { threshold: (fraction * 18_446_744_073_709_551_616.0) as u128 }
    }

    pub(crate) fn sample(&self, trace_id: u128) -> bool {
        u128::from(trace_id as u64) < self.threshold
    }
}

/// Who the gateway is in traces.
pub(crate) struct TraceIdentity {
    /// `service.name` and `istio.canonical_service` (the `--workload-name`).
    pub(crate) workload: String,
    pub(crate) namespace: String,
}

pub(crate) struct Tracer {
    sampler: Sampler,
    exporter: Exporter,
    tags: GatewayTags,
}

impl Tracer {
    /// `None` when no `--otlp-endpoint` is set: tracing and propagation are off.
    pub(crate) fn start(
        settings: &Tracing,
        identity: TraceIdentity,
        counters: ExportCounters,
    ) -> Result<Option<Tracer>, TraceError> {
        let Some(url) = &settings.otlp_endpoint else { return Ok(None) };
        let endpoint: Endpoint = url.parse()?;
        tracing::info!(endpoint = url, sampling_percent = settings.sampling_percent, "tracing on (OTLP/HTTP JSON)");
        let exporter = Exporter::start(
            endpoint,
            &[("service.name", &identity.workload), ("k8s.namespace.name", &identity.namespace)],
            counters,
        )?;
        // Envoy's node id shape (`router~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`), from the
        // downward-API variables Istio's gateway pods have, so Jaeger tags look familiar.
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let pod = env("POD_NAME").or_else(|| env("HOSTNAME")).unwrap_or_else(|| identity.workload.clone());
        let ip = env("INSTANCE_IP").unwrap_or_else(|| "0.0.0.0".into());
        let ns = &identity.namespace;
        let tags = GatewayTags {
            node_id: format!("router~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
            canonical_service: identity.workload,
            namespace: identity.namespace,
        };
        Ok(Some(Tracer { sampler: Sampler::from_percent(settings.sampling_percent), exporter, tags }))
    }

    /// The gateway's span for a new request: continues the incoming trace or starts one.
    pub(crate) fn begin(&self, req: &RequestHeader) -> SpanContext {
        let incoming = context::extract(&req.headers);
        let (trace_id, parent_id) = match incoming.ids {
            Some((trace, parent)) => (trace, Some(parent)),
            None => (fastrand::u128(1..), None),
        };
        SpanContext {
            trace_id,
            span_id: fastrand::u64(1..),
            parent_id,
            // Parent-based: the caller's decision stands; the ratio decides only for new
            // traces or callers that left it open.
            sampled: incoming.sampled.unwrap_or_else(|| self.sampler.sample(trace_id)),
            debug: incoming.debug,
            b3: incoming.b3,
            b3_short_trace_id: incoming.b3_short_trace_id && incoming.ids.is_some(),
            // tracestate belongs to a valid traceparent only (W3C: discard it otherwise).
            drop_tracestate: !incoming.from_traceparent,
        }
    }

    /// Encodes and queues the span of a finished request if it is sampled.
    pub(crate) fn finish(&self, span: &SpanContext, exchange: &crate::telemetry::Exchange) {
        if span.sampled {
            let facts = RequestFacts::of(exchange);
            self.exporter.send(|out| span::encode(out, span, &facts, &self.tags));
        }
    }

    /// Exports what is queued (shutdown), waiting at most `timeout`.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        self.exporter.flush(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_ratio() {
        assert!(!Sampler::from_percent(0.0).sample(1));
        assert!(!Sampler::from_percent(0.0).sample(u128::from(u64::MAX)));
        assert!(Sampler::from_percent(100.0).sample(u128::from(u64::MAX)));
        assert!(Sampler::from_percent(100.0).sample(0));
        let one = Sampler::from_percent(1.0);
        let hits = (0..100_000).filter(|_| one.sample(fastrand::u128(..))).count();
        assert!((500..1500).contains(&hits), "{hits}");
        // The decision depends on the trace id only.
        let id = fastrand::u128(..);
        assert_eq!(one.sample(id), one.sample(id));
    }

    fn tracer(percent: f64) -> Tracer {
        let c = |n: &str| prometheus::IntCounter::new(n, "-").unwrap();
        let args = Tracing { otlp_endpoint: Some("http://127.0.0.1:9/v1/traces".into()), sampling_percent: percent };
        let identity = TraceIdentity { workload: "istio-ingressgateway".into(), namespace: "istio-system".into() };
        let counters = ExportCounters { dropped: c("d"), exported: c("e"), failed: c("f") };
        Tracer::start(&args, identity, counters).unwrap().unwrap()
    }

    #[test]
    fn begin_continues_or_starts() {
        let t = tracer(0.0);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let fresh = t.begin(&req);
        assert!(fresh.trace_id != 0 && fresh.span_id != 0 && fresh.parent_id.is_none());
        assert!(!fresh.sampled, "0% samples no new trace");
        req.insert_header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let cont = t.begin(&req);
        assert_eq!((cont.trace_id, cont.parent_id), (0x4bf92f3577b34da6a3ce929d0e0e4736, Some(0x00f067aa0ba902b7)));
        assert!(cont.sampled, "the caller's decision wins over 0%");
        assert_ne!(cont.span_id, 0x00f067aa0ba902b7);
        assert!(!cont.drop_tracestate);
    }

    #[test]
    fn off_without_endpoint() {
        let c = |n: &str| prometheus::IntCounter::new(n, "-").unwrap();
        let args = Tracing { otlp_endpoint: None, sampling_percent: 1.0 };
        let identity = TraceIdentity { workload: "w".into(), namespace: "n".into() };
        let counters = ExportCounters { dropped: c("d"), exported: c("e"), failed: c("f") };
        assert!(Tracer::start(&args, identity, counters).unwrap().is_none());
    }
}
