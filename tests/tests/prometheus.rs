//! Observability with the real Prometheus: it scrapes the gateway while traffic flows, and
//! the PromQL that Istio's Grafana dashboards and Kiali issue returns the expected series.

mod common;

use common::*;
use meshgate_e2e::prelude::*;

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn query(prom: SocketAddr, q: &str) -> Vec<serde_json::Value> {
    let Ok(r) = get(prom, &format!("/api/v1/query?query={}", encode(q))).send().await else { return Vec::new() };
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Kills Prometheus when the test ends, however it ends.
struct Prometheus(tokio::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[tokio::test]
async fn prometheus_scrapes_istio_metrics_that_dashboards_query() {
    let v1 = Upstream::new("reviews").version("v1").start().await;
    let v2 = Upstream::new("reviews").version("v2").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["bookinfo.example.com"])).unwrap();
    cfg.write("svc.yaml", &backends("reviews", &[&v1, &v2])).unwrap();
    cfg.write("dr.yaml", &destination_rule("reviews", &["v1", "v2"], "")).unwrap();
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
    route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v2}, weight: 50}
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[80]).await;

    let dir = ConfigDir::new().unwrap();
    let prom_addr = free_addr();
    std::fs::write(
        dir.file("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: meshgate\n  metrics_path: /stats/prometheus\n  static_configs: [{{targets: ['{}']}}]\n",
            gw.metrics_addr()
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", dir.file("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.file("data").display()))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus is installed (apt-get install prometheus)");
    let _prom = Prometheus(child);
    let _ = assert_eventually!(
        Duration::from_secs(30),
        get(prom_addr, "/-/ready").send().await.map(|r| r.status),
        |r| r.as_ref().is_ok_and(|s| *s == 200),
        "prometheus did not become ready"
    );

    // Traffic keeps flowing while we query, so rate() always has increasing samples.
    let at = gw.addr(80);
    let traffic = tokio::spawn(async move {
        let client = HttpClient::pooled();
        loop {
            for _ in 0..5 {
                let _ = client.get(at, "/reviews/1").host("bookinfo.example.com").send().await;
            }
            let _ = client.get(at, "/missing").host("bookinfo.example.com").send().await;
            tokio::time::sleep(Duration::from_millis(50)).await; // paces the load across scrapes
        }
    });
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _traffic = Abort(traffic);

    let by_code = r#"sum(rate(istio_requests_total{reporter="source",source_workload="istio-ingressgateway"}[1m])) by (destination_service, response_code)"#;
    assert_eventually!(
        Duration::from_secs(30),
        query(prom_addr, by_code).await,
        |rows| {
            let has = |svc: &str, code: &str| {
                rows.iter().any(|r| r["metric"]["destination_service"] == svc && r["metric"]["response_code"] == code)
            };
            let positive = rows
                .iter()
                .all(|r| r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0));
            positive && has("reviews.default.svc.cluster.local", "200") && has("unknown", "404")
        },
        "series by destination_service/response_code"
    );

    let versions = query(
        prom_addr,
        r#"sum(rate(istio_requests_total{reporter="source",destination_service_name="reviews"}[1m])) by (destination_workload, destination_version)"#,
    )
    .await;
    let mut seen: Vec<String> =
        versions.iter().filter_map(|r| r["metric"]["destination_version"].as_str().map(str::to_string)).collect();
    seen.sort();
    assert_eq!(seen, ["v1", "v2"], "Kiali's per-version traffic: {versions:?}");

    let p99 = r#"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{reporter="source",destination_service_name="reviews"}[1m])) by (le))"#;
    let buckets =
        r#"sum(rate(istio_request_duration_milliseconds_bucket{destination_service_name="reviews"}[1m])) by (le)"#;
    assert_eventually!(
        Duration::from_secs(20),
        query(prom_addr, p99).await,
        |rows| rows
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v.is_finite() && v > 0.0),
        "p99 from the histogram; buckets: {:?}",
        query(prom_addr, buckets).await
    );
}
