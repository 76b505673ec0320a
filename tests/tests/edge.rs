//! Edge hardening, probed with raw sockets as an attacker would: connection limits, slow and
//! silent clients, malformed requests (docs/configuration.md, "Edge limits").

mod common;

use common::*;
use meshgate_e2e::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn setup() -> (Upstream, ConfigDir) {
    let up = Upstream::new("app").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write("svc.yaml", &backends("app", &[&up])).unwrap();
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: app, namespace: default}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - route: [{destination: {host: app}}]
"#,
    )
    .unwrap();
    (up, cfg)
}

async fn metric(gw: &GatewayProcess, name: &str) -> f64 {
    let text = metrics(gw.metrics_addr()).await.unwrap();
    metric_value(&text, name, &[]).unwrap_or(f64::NAN)
}

#[tokio::test]
async fn at_the_connection_limit_accepting_pauses_and_probes_still_answer() {
    let (_up, cfg) = setup().await;
    let gw = GatewayProcess::builder()
        .config(cfg.path())
        .ports(&[80])
        .args(["--max-connections", "20"])
        .start()
        .await
        .unwrap();
    assert_eq!(metric(&gw, "meshgate_downstream_connections_limit").await, 20.0);
    let at = gw.addr(80);
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(at).await.unwrap());
    }
    assert_eventually!(
        Duration::from_secs(5),
        metric(&gw, "meshgate_downstream_overloaded").await,
        |v| *v == 1.0,
        "overload reported once 20 connections are open"
    );
    // The probe and the metrics port are not data ports: they answer from the reserve.
    assert_eq!(gw.ready_status().await, Some(200));
    // A new client waits in the backlog rather than being accepted and starved (a worker
    // already waiting in accept may take one connection past the limit)…
    let waiting = tokio::spawn(async move { get(at, "/").timeout(Duration::from_secs(20)).send().await });
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    assert!(metric(&gw, "meshgate_downstream_connections_active").await <= 20.0 + workers - 1.0);
    // …and is served as soon as one connection closes.
    idle.pop();
    let r = waiting.await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(metric(&gw, "meshgate_downstream_accept_paused_total").await >= 1.0);
}
