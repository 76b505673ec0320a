//! Hot reload: watched files produce new snapshots, swapped atomically while traffic flows;
//! broken edits never replace the last good config; ports open and close live.

mod common;

use common::*;
use meshgate_e2e::prelude::*;

async fn metric(gw: &GatewayProcess, name: &str) -> f64 {
    metric_value(&metrics(gw.metrics_addr()).await.unwrap(), name, &[]).unwrap_or(-1.0)
}

#[tokio::test]
async fn edits_apply_without_restart() {
    let (_v1, _v2, cfg) = reviews_v1_v2().await;
    let gw = start(&cfg, &[80]).await;
    assert_eq!(version_of(&gw, 80, "/", "x").await, "v1");
    let version = metric(&gw, "meshgate_config_version").await;
    cfg.write("vs.yaml", &reviews_to("v2")).unwrap();
    assert_eventually!(Duration::from_secs(10), version_of(&gw, 80, "/", "x").await, |v| v == "v2");
    assert!(metric(&gw, "meshgate_config_version").await > version);
    assert!(metric(&gw, "meshgate_config_swaps_total").await >= 2.0);
}

#[tokio::test]
async fn a_broken_edit_keeps_the_last_good_version_serving() {
    let (_v1, _v2, cfg) = reviews_v1_v2().await;
    let gw = start(&cfg, &[80]).await;
    assert_eq!(metric(&gw, "meshgate_config_rejected_resources").await, 0.0);

    // Invalid regex: the VirtualService is rejected; its previous version keeps routing.
    let broken = reviews_to("v2").replace("{prefix: /}", "{regex: \"([\"}");
    cfg.write("vs.yaml", &broken).unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        metric(&gw, "meshgate_config_rejected_resources").await,
        |rejected| *rejected == 1.0,
        "the VirtualService with the invalid regex is rejected"
    );
    for _ in 0..5 {
        assert_eq!(version_of(&gw, 80, "/", "x").await, "v1", "the last good VirtualService still routes");
    }
    let stderr = gw.stderr();
    assert!(
        stderr.contains("VirtualService default/reviews") && stderr.contains("spec.http[0].match[0].uri.regex"),
        "diagnostic names resource and field: {stderr}"
    );

    // Half-written YAML (a syntax error) keeps every resource of that file.
    cfg.write("gw.yaml", "apiVersion: networking.istio.io/v1beta1\nkind: Gateway\nmetadata: {name: gw\n").unwrap();
    cfg.write("vs.yaml", &reviews_to("v1").replace("name: reviews", "name: reviews\n  labels: {touch: \"1\"}"))
        .unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        metric(&gw, "meshgate_config_rejected_resources").await,
        |rejected| *rejected == 1.0,
        "the fixed VirtualService is accepted; only the broken file counts"
    );
    assert_eventually!(
        Duration::from_secs(10),
        version_of(&gw, 80, "/", "x").await,
        |v| v == "v1",
        "the fixed VirtualService is accepted; only the broken file counts"
    );
    assert_eq!(version_of(&gw, 80, "/", "x").await, "v1", "the Gateway of the broken file still serves");

    // Fixing everything resumes normal updates.
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write("vs.yaml", &reviews_to("v2")).unwrap();
    assert_eventually!(Duration::from_secs(10), version_of(&gw, 80, "/", "x").await, |v| v == "v2");
    assert_eq!(metric(&gw, "meshgate_config_rejected_resources").await, 0.0);
}

#[tokio::test]
async fn ports_open_and_close_live() {
    let (_v1, _v2, cfg) = reviews_v1_v2().await;
    let extra = free_addr();
    let gw = GatewayProcess::builder().config(cfg.path()).ports(&[80]).port_addr(9090, extra).start().await.unwrap();
    assert!(get(extra, "/").send().await.is_err(), "no Gateway server on 9090 yet");

    let both = gateway("gw", 80, &["*"]).replace(
        "    hosts:\n    - \"*\"\n",
        "    hosts:\n    - \"*\"\n  - port:\n      number: 9090\n      name: http-9090\n      protocol: HTTP\n    hosts:\n    - \"*\"\n",
    );
    cfg.write("gw.yaml", &both).unwrap();
    let _ = assert_eventually!(
        Duration::from_secs(10),
        get(extra, "/").send().await.map(|r| r.status),
        |r| r.as_ref().is_ok_and(|s| *s == StatusCode::OK),
        "port 9090 opened"
    );
    // Port 80 kept serving throughout and keeps its connections.
    let client = HttpClient::pooled();
    assert_eq!(client.get(gw.addr(80), "/").send().await.unwrap().status, StatusCode::OK);

    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    let _ = assert_eventually!(
        Duration::from_secs(10),
        get(extra, "/").send().await.map(|r| r.status),
        |r| r.is_err(),
        "port 9090 closed"
    );
    assert_eq!(client.get(gw.addr(80), "/").send().await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn in_flight_requests_finish_on_their_snapshot_and_reloads_drop_nothing() {
    let (v1, _v2, cfg) = reviews_v1_v2().await;
    let gw = start(&cfg, &[80]).await;
    let at = gw.addr(80);
    let slow = tokio::spawn(async move { get(at, "/delay/800").send().await });
    assert!(v1.wait_for_hits(1, Duration::from_secs(5)).await, "slow request reached v1");

    // Traffic keeps flowing while the config flips back and forth.
    let load = tokio::spawn(async move {
        let client = HttpClient::pooled();
        let mut failures = 0;
        for _ in 0..300 {
            match client.get(at, "/").send().await {
                Ok(r) if r.status == StatusCode::OK => {}
                _ => failures += 1,
            }
        }
        failures
    });
    for i in 0..10 {
        cfg.write("vs.yaml", &reviews_to(if i % 2 == 0 { "v2" } else { "v1" })).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await; // pacing the edits, not synchronisation
    }
    assert_eq!(load.await.unwrap(), 0, "no request failed during reloads");
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echo().unwrap().version, "v1", "the in-flight request finished where it started");
}
