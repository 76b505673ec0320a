//! Distributed tracing against a real OTLP collector (Rotel): trace context continued from
//! W3C `traceparent` and B3, propagated to the upstream with the gateway's span as parent,
//! parent-based sampling, and the exported server spans.

mod common;

use common::*;
use meshgate_e2e::prelude::*;

const HOST: &str = "bookinfo.example.com";
const SPAN_WAIT: Duration = Duration::from_secs(20);

/// The collector, or `None` (test skipped) when rotel is not installed.
async fn collector() -> Option<Collector> {
    if rotel_bin().is_none() {
        eprintln!("SKIPPED: rotel not installed (`pip install rotel`); .ci/run installs it");
        return None;
    }
    Some(Collector::start().await.expect("rotel starts"))
}

async fn setup() -> (Upstream, ConfigDir) {
    let v1 = Upstream::new("reviews").version("v1").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &[HOST])).unwrap();
    cfg.write("svc.yaml", &backends("reviews", &[&v1])).unwrap();
    cfg.write("empty.yaml", &service_named("empty", "default", "http", 9080, 9080)).unwrap();
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: ["bookinfo.example.com"]
  gateways: ["istio-system/gw"]
  http:
  - match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /empty}}]
    route: [{destination: {host: empty}}]
"#,
    )
    .unwrap();
    (v1, cfg)
}

/// The traced gateway; `request_loop` is `--request-loop`'s value (`pingora`, the default, or
/// `own`).
async fn start_traced(cfg: &ConfigDir, collector: &Collector, sampling: f64, request_loop: &str) -> GatewayProcess {
    GatewayProcess::builder()
        .config(cfg.path())
        .port(80)
        .otlp_endpoint(collector.traces_url())
        .trace_sampling(sampling)
        .args(["--request-loop", request_loop])
        .start()
        .await
        .expect("gateway starts")
}

/// `traceparent` as the upstream received it: (trace id, parent span id, flags).
fn traceparent(echo: &Echo) -> (String, String, String) {
    let tp = echo.headers.get("traceparent").unwrap_or_else(|| panic!("no traceparent upstream: {:?}", echo.headers));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].to_string(), parts[2].to_string(), parts[3].to_string())
}

/// Sends one request with extra headers; returns what the upstream saw.
async fn send(gw: &GatewayProcess, path: &str, headers: &[(&str, &str)]) -> Echo {
    let mut req = get(gw.addr(80), path).host(HOST);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    assert_eq!(r.status, 200);
    r.echo().expect("echo body")
}

/// Waits until the gateway has logged `n` requests, i.e. their `logging` phase (where spans
/// are queued) ran: spans of later requests then queue behind theirs.
async fn logged(gw: &GatewayProcess, n: f64) {
    assert_eventually!(
        Duration::from_secs(5),
        metric_sum(&metrics(gw.metrics_addr()).await.unwrap_or_default(), "istio_requests_total", &[]),
        |logged| *logged >= n,
        "{n} requests not logged"
    );
}

#[tokio::test]
async fn spans_continue_incoming_traces_and_reach_the_collector() {
    let Some(collector) = collector().await else { return };
    let (_v1, cfg) = setup().await;
    let gw = start_traced(&cfg, &collector, 100.0, "pingora").await;

    // An incoming "not sampled" decision is honoured even at 100%: propagated, not exported.
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let up = send(&gw, "/reviews", &[("traceparent", &format!("00-{unsampled_trace}-b7ad6b7169203331-00"))]).await;
    let (up_trace, _, flags) = traceparent(&up);
    assert_eq!((up_trace.as_str(), flags.as_str()), (unsampled_trace, "00"));
    logged(&gw, 1.0).await;

    // W3C: same trace, the gateway's span as the new parent, tracestate passed through.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let up = send(
        &gw,
        "/reviews/1",
        &[("traceparent", &format!("00-{trace}-{caller}-01")), ("tracestate", "congo=t61rcWkgMzE")],
    )
    .await;
    let (up_trace, gateway_span, flags) = traceparent(&up);
    assert_eq!((up_trace.as_str(), flags.as_str()), (trace, "01"));
    assert_ne!(gateway_span, caller, "the gateway's own span is the upstream's parent");
    assert_eq!(up.header("tracestate"), Some("congo=t61rcWkgMzE"));
    assert!(up.header("x-request-id").is_some_and(|id| id.len() == 36), "x-request-id still generated");
    assert_eq!(up.header("x-b3-traceid"), None, "no B3 invented for a W3C caller");

    // B3 multi-header: the B3 headers upstream carry the same trace with the gateway's span.
    let b3_trace = "463ac35c9f6413ad48485a3953bb6124";
    let b3_caller = "a2fb4a1d1a96d312";
    let up =
        send(&gw, "/reviews/2", &[("x-b3-traceid", b3_trace), ("x-b3-spanid", b3_caller), ("x-b3-sampled", "1")]).await;
    assert_eq!(up.header("x-b3-traceid"), Some(b3_trace));
    assert_eq!(up.header("x-b3-parentspanid"), Some(b3_caller));
    assert_eq!(up.header("x-b3-sampled"), Some("1"));
    let b3_gateway_span = up.header("x-b3-spanid").expect("x-b3-spanid").to_string();
    assert_ne!(b3_gateway_span, b3_caller);
    assert_eq!(traceparent(&up), (b3_trace.into(), b3_gateway_span.clone(), "01".into()), "traceparent agrees");

    // Single `b3` header with a 64-bit trace id: rewritten at the same width.
    let short = "48485a3953bb6124";
    let up = send(&gw, "/reviews/3", &[("b3", &format!("{short}-e457b5a2e4d86bd1-1"))]).await;
    let b3 = up.header("b3").expect("b3 upstream").to_string();
    assert!(b3.starts_with(&format!("{short}-")) && b3.ends_with("-1-e457b5a2e4d86bd1"), "{b3}");
    assert_eq!(traceparent(&up).0, format!("0000000000000000{short}"));

    // No context: a new trace, sampled at 100%.
    let up = send(&gw, "/reviews/4", &[]).await;
    let (new_trace, new_span, flags) = traceparent(&up);
    assert_eq!(flags, "01");
    assert!(new_trace != "0".repeat(32) && new_span != "0".repeat(16));

    // A 503 from the gateway itself is a span too, with error status.
    let r = get(gw.addr(80), "/empty").host(HOST).header("traceparent", format!("00-{trace}-{caller}-01")).send();
    assert_eq!(r.await.unwrap().status, 503);

    let span = collector.wait_for_span(|s| s.span_id == gateway_span, SPAN_WAIT).await;
    let span = span.unwrap_or_else(|| panic!("W3C span not exported; collector saw:\n{}", collector.output()));
    assert_eq!((span.trace_id.as_str(), span.parent_id.as_str()), (trace, caller));
    assert_eq!(span.kind, "SPAN_KIND_SERVER");
    assert_eq!(span.name, "reviews.default.svc.cluster.local:9080/*");
    assert_eq!(span.attr("http.status_code"), Some("200"));
    assert_eq!(span.attr("http.method"), Some("GET"));
    assert_eq!(span.attr("http.url"), Some(format!("http://{HOST}/reviews/1").as_str()));
    assert_eq!(span.attr("upstream_cluster"), Some("outbound|9080||reviews.default.svc.cluster.local"));
    assert_eq!(span.attr("response_flags"), Some("-"));
    assert_eq!(span.attr("component"), Some("proxy"));
    assert!(span.attr("guid:x-request-id").is_some_and(|id| id.len() == 36), "{span:?}");
    assert_eq!(span.resource.get("service.name").map(String::as_str), Some("istio-ingressgateway"));

    let span = collector.wait_for_span(|s| s.span_id == b3_gateway_span, SPAN_WAIT).await.expect("B3 span");
    assert_eq!((span.trace_id.as_str(), span.parent_id.as_str()), (b3_trace, b3_caller));
    assert_eq!(span.kind, "SPAN_KIND_SERVER");

    let span = collector.wait_for_span(|s| s.trace_id == new_trace, SPAN_WAIT).await.expect("new-trace span");
    assert_eq!((span.span_id.as_str(), span.parent_id.as_str()), (new_span.as_str(), ""), "a root span");

    let span = collector
        .wait_for_span(|s| s.trace_id == trace && s.attr("http.status_code") == Some("503"), SPAN_WAIT)
        .await
        .expect("503 span");
    assert_eq!(span.status, "STATUS_CODE_ERROR");
    assert_eq!(span.attr("response_flags"), Some("UH"));

    // Spans leave in the order requests were logged, so by now the unsampled one would be here.
    assert!(collector.spans().iter().all(|s| s.trace_id != unsampled_trace), "unsampled trace exported");
    let text = wait_metric(&gw, "meshgate_trace_spans_exported_total", &[], 5.0).await;
    assert_eq!(metric_value(&text, "meshgate_trace_spans_dropped_total", &[]), Some(0.0));
}

#[tokio::test]
async fn sampling_zero_propagates_without_exporting() {
    sampling_zero("pingora").await;
}

/// The own request loop makes the same spans and headers.
#[tokio::test]
async fn the_own_loop_propagates_and_exports_as_pingoras_path() {
    sampling_zero("own").await;
}

async fn sampling_zero(request_loop: &str) {
    let Some(collector) = collector().await else { return };
    let (_v1, cfg) = setup().await;
    let gw = start_traced(&cfg, &collector, 0.0, request_loop).await;

    // A new trace at 0%: headers still go upstream, marked not sampled, and no span leaves.
    let up = send(&gw, "/reviews", &[]).await;
    let (unsampled_trace, _, flags) = traceparent(&up);
    assert_eq!(flags, "00");
    logged(&gw, 1.0).await;

    // A caller that sampled is followed (parent-based), so this one is exported.
    let trace = "5b8aa5a2d2c872e8321cf37308d69df2";
    let up = send(&gw, "/reviews", &[("traceparent", &format!("00-{trace}-051581bf3cb55c13-01"))]).await;
    assert_eq!(traceparent(&up).2, "01");
    let span = collector.wait_for_span(|s| s.trace_id == trace, SPAN_WAIT).await;
    assert!(span.is_some(), "sampled caller's span missing; collector saw:\n{}", collector.output());

    assert!(collector.spans().iter().all(|s| s.trace_id != unsampled_trace), "unsampled trace exported");
    let text = wait_metric(&gw, "meshgate_trace_spans_exported_total", &[], 1.0).await;
    assert_eq!(metric_value(&text, "meshgate_trace_spans_exported_total", &[]), Some(1.0), "{text}");
}

#[tokio::test]
async fn tracing_off_leaves_trace_headers_alone() {
    let (_v1, cfg) = setup().await;
    let gw = start(&cfg, &[80]).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let up = send(&gw, "/reviews", &[("traceparent", tp), ("x-b3-spanid", "a2fb4a1d1a96d312")]).await;
    assert_eq!(up.header("traceparent"), Some(tp), "passed through untouched");
    assert_eq!(up.header("x-b3-spanid"), Some("a2fb4a1d1a96d312"));
    let up = send(&gw, "/reviews", &[]).await;
    assert_eq!(up.header("traceparent"), None, "nothing invented when tracing is off");
}
