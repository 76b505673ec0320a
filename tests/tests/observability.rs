//! Status, Prometheus metrics with Istio's names and labels, admin endpoints, access log.

mod common;

use common::*;
use meshgate_e2e::prelude::*;

async fn setup() -> (Upstream, ConfigDir) {
    let v1 = Upstream::new("reviews").version("v1").pod("reviews-v1-abc").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["bookinfo.example.com"])).unwrap();
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
  - name: reviews-route
    match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /empty}}]
    route: [{destination: {host: empty}}]
"#,
    )
    .unwrap();
    (v1, cfg)
}

#[tokio::test]
async fn istio_standard_metrics_with_labels() {
    let (_v1, cfg) = setup().await;
    let gw = start(&cfg, &[80]).await;
    let host = "bookinfo.example.com";
    for _ in 0..3 {
        assert_eq!(get(gw.addr(80), "/reviews").host(host).body("hello").send().await.unwrap().status, 200);
    }
    assert_eq!(get(gw.addr(80), "/nothing").host(host).send().await.unwrap().status, 404);
    assert_eq!(get(gw.addr(80), "/empty").host(host).send().await.unwrap().status, 503);

    // Samples land after each response is written; wait for all of them.
    wait_metric(&gw, "istio_requests_total", &[("response_code", "200")], 3.0).await;
    wait_metric(&gw, "istio_requests_total", &[("response_code", "404")], 1.0).await;
    let text = wait_metric(&gw, "istio_requests_total", &[("response_code", "503")], 1.0).await;
    let ok = [
        ("reporter", "source"),
        ("source_workload", "istio-ingressgateway"),
        ("source_workload_namespace", "istio-system"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        ("destination_version", "v1"),
        ("destination_app", "reviews"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    assert_eq!(metric_value(&text, "istio_requests_total", &ok), Some(3.0), "{text}");
    assert_eq!(
        metric_value(&text, "istio_requests_total", &[("response_code", "404"), ("response_flags", "NR")]),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "istio_requests_total",
            &[("response_code", "503"), ("response_flags", "UH"), ("destination_service_name", "empty")]
        ),
        Some(1.0)
    );
    assert_eq!(metric_value(&text, "istio_request_duration_milliseconds_count", &ok), Some(3.0));
    assert!(text.contains("istio_request_duration_milliseconds_bucket{") && text.contains("le=\"0.5\""));
    assert_eq!(metric_value(&text, "istio_request_bytes_sum", &ok), Some(15.0), "3 bodies of 5 bytes");
    assert!(metric_value(&text, "istio_response_bytes_sum", &ok).unwrap() > 0.0);
    assert_eq!(metric_value(&text, "meshgate_config_version", &[]), Some(1.0));
    assert_eq!(metric_value(&text, "meshgate_config_rejected_resources", &[]), Some(0.0));
    assert!(metric_value(&text, "meshgate_downstream_connections_total", &[]).unwrap() >= 5.0);
    assert!(text.contains("meshgate_downstream_connections_active"));
}

#[tokio::test]
async fn access_log_has_one_json_line_per_request() {
    let (_v1, cfg) = setup().await;
    let gw = start(&cfg, &[80]).await;
    let r = get(gw.addr(80), "/reviews?x=1")
        .host("bookinfo.example.com")
        .header("user-agent", "e2e-agent")
        .header("x-request-id", "rid-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let line = gw.wait_for_log(|l| l.contains("rid-1"), Duration::from_secs(5)).await.expect("access log line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["authority"], "bookinfo.example.com");
    assert_eq!(v["path"], "/reviews?x=1");
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["response_code"], 200);
    assert_eq!(v["response_flags"], "-");
    assert_eq!(v["route_name"], "reviews-route");
    assert_eq!(v["upstream_cluster"], "outbound|9080||reviews.default.svc.cluster.local");
    assert_eq!(v["user_agent"], "e2e-agent");
    assert!(v["upstream_host"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(v["bytes_sent"].as_u64().unwrap() > 0);
    assert!(v["duration"].is_u64());
    for field in ["start_time", "bytes_received", "x_forwarded_for", "request_id"] {
        assert!(v.get(field).is_some(), "{field} missing");
    }

    let quiet = GatewayProcess::builder().config(cfg.path()).ports(&[80]).access_log("off").start().await.unwrap();
    get(quiet.addr(80), "/reviews").host("bookinfo.example.com").send().await.unwrap();
    assert!(quiet.access_log_json().is_empty(), "--access-log off writes nothing");
}

#[tokio::test]
async fn access_log_to_a_file() {
    let (_v1, cfg) = setup().await;
    let dir = ConfigDir::new().unwrap();
    let path = dir.file("access.log");
    let gw = GatewayProcess::builder()
        .config(cfg.path())
        .ports(&[80])
        .access_log(path.to_string_lossy().to_string())
        .start()
        .await
        .unwrap();
    get(gw.addr(80), "/reviews").host("bookinfo.example.com").header("x-request-id", "in-file").send().await.unwrap();
    let _ = assert_eventually!(
        Duration::from_secs(5),
        std::fs::read_to_string(&path),
        |s| s.as_ref().is_ok_and(|s| s.lines().any(|l| l.contains("in-file"))),
        "line written to {}",
        path.display()
    );
}

#[tokio::test]
async fn admin_config_dump_and_clusters() {
    let (_v1, cfg) = setup().await;
    let gw = start(&cfg, &[80]).await;
    let dump = admin_get(gw.admin_addr(), "/config_dump").await.unwrap();
    assert_eq!(dump.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&dump.body).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["listeners"][0]["port"], 80);
    assert_eq!(v["listeners"][0]["virtual_hosts"][0]["domains"][0], "bookinfo.example.com");
    assert!(v["clusters"]["outbound|9080||reviews.default.svc.cluster.local"]["endpoints"].is_array());

    let clusters = admin_get(gw.admin_addr(), "/clusters").await.unwrap().text();
    assert!(clusters.contains("outbound|9080||reviews.default.svc.cluster.local::127.0.0.1:"), "{clusters}");
    assert_eq!(admin_get(gw.admin_addr(), "/ready").await.unwrap().status, 200);
    assert_eq!(get(gw.status_addr(), "/healthz/ready").send().await.unwrap().text(), "LIVE\n");
}
