//! `mirror` / `mirrors` end to end (issue 19 item 4): the copy the shadow upstream sees
//! (`-shadow` host, headers, body), shares within statistical bounds, and the original
//! request untouched by a dead or black-holed mirror, whose copies are capped and counted.

mod common;

use common::*;
use meshgate_e2e::prelude::*;
use tokio::net::TcpListener;

const SHADOW: &str = "outbound|9080||shadow.default.svc.cluster.local";

/// Gateway on port 80: `app` serves, `shadow` (at `shadow_eps`) receives the copies of the
/// routes in `http` (YAML, indented for `http:`).
async fn setup(app: &Upstream, shadow_eps: &[SocketAddr], http: &str, args: &[&str]) -> (ConfigDir, GatewayProcess) {
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write("app.yaml", &backends("app", &[app])).unwrap();
    cfg.write("shadow.yaml", &service_at("shadow", shadow_eps)).unwrap();
    cfg.write("vs.yaml", &app_vs(http)).unwrap();
    let gw = GatewayProcess::builder().config(cfg.path()).port(80).args(args).start().await.expect("gateway starts");
    (cfg, gw)
}

#[tokio::test]
async fn the_shadow_gets_a_copy_with_its_host_suffixed_and_the_whole_body() {
    let app = Upstream::new("app").start().await;
    let shadow = Upstream::new("shadow").version("v2").start().await;
    let http = r#"  - match: [{uri: {prefix: /half}}]
    route: [{destination: {host: app}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 50.0}
  - route: [{destination: {host: app}}]
    mirror: {host: shadow}
"#;
    let (_cfg, gw) = setup(&app, &[shadow.addr()], http, &[]).await;
    let at = gw.addr(80);

    let r = get(at, "/get?x=1").host("httpbin.example.com:8000").header("x-custom", "kept").send().await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echo().unwrap().service, "app", "the client gets the original's response");
    assert!(shadow.wait_for_hits(1, Duration::from_secs(5)).await, "the copy arrives");
    let copy = shadow.requests().pop().unwrap();
    let original = app.requests().pop().unwrap();
    assert_eq!(copy.host, "httpbin.example.com-shadow:8000", "Envoy's shadow host");
    assert_eq!((copy.method.as_str(), copy.path.as_str()), ("GET", "/get?x=1"));
    for h in ["x-custom", "x-request-id", "x-forwarded-for", "x-forwarded-proto"] {
        assert_eq!(copy.headers.get(h), original.headers.get(h), "{h} as the original's");
    }

    // A body of many chunks, beyond Pingora's 64 KiB retry buffer, arrives whole.
    shadow.reset();
    let body = pattern_bytes(300 * 1024);
    let r = post(at, "/post").body(body.clone()).send().await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(shadow.wait_for_hits(1, Duration::from_secs(5)).await);
    let copy = shadow.requests().pop().unwrap();
    assert_eq!(copy.body.len(), body.len());
    assert_eq!(copy.body.as_bytes(), &body[..]);

    // mirrorPercentage 50: 400 requests, within six standard deviations (σ = 10).
    shadow.reset();
    for i in 0..400 {
        assert_eq!(get(at, &format!("/half/{i}")).send().await.unwrap().status, StatusCode::OK);
    }
    // Every drawn copy ends as `sent`, after the client had its response.
    let sent = eventually_sent(&gw, &shadow).await;
    assert!((140..=260).contains(&sent), "{sent} of 400 mirrored at 50 %");
}

/// The copies the shadow saw once the gateway counted each of them sent.
async fn eventually_sent(gw: &GatewayProcess, shadow: &Upstream) -> u64 {
    let labels = [("cluster_name", SHADOW), ("outcome", "sent")];
    for _ in 0..500 {
        let text = metrics(gw.metrics_addr()).await.unwrap();
        let sent = metric_value(&text, "meshgate_mirror_requests_total", &labels).unwrap_or(0.0) as u64;
        // 1 GET + 1 POST before the reset, then the half route's copies.
        if sent >= 2 && shadow.hits() == sent - 2 {
            return shadow.hits();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the mirror counter and the shadow's hits never agreed");
}

#[tokio::test]
async fn a_dead_mirror_never_touches_the_original() {
    let app = Upstream::new("app").start().await;
    // Connections refused.
    let (_cfg, gw) =
        setup(&app, &[free_addr()], "  - route: [{destination: {host: app}}]\n    mirror: {host: shadow}\n", &[]).await;
    let at = gw.addr(80);
    for i in 0..20 {
        let r = post(at, &format!("/r/{i}")).body("payload").send().await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
    }
    assert_eq!(app.hits(), 20);
    let labels = [("cluster_name", SHADOW), ("outcome", "failed")];
    let text = wait_metric(&gw, "meshgate_mirror_requests_total", &labels, 20.0).await;
    assert_eq!(metric_value(&text, "meshgate_mirror_requests_total", &labels), Some(20.0));
    // The access log shows the originals only, without a flag.
    let lines = gw.access_log_json();
    assert!(lines.iter().all(|l| l["response_flags"] == "-"), "{lines:?}");
}

#[tokio::test]
async fn copies_to_a_black_hole_are_capped_and_the_rest_dropped() {
    let app = Upstream::new("app").start().await;
    // Accepts connections and never answers: each copy holds its slot until its deadline.
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            open.push(s);
        }
    });
    let http = "  - route: [{destination: {host: app}}]\n    mirror: {host: shadow}\n    timeout: 30s\n";
    let (_cfg, gw) = setup(&app, &[hole_addr], http, &["--max-mirrors-in-flight", "3"]).await;
    let at = gw.addr(80);
    for i in 0..10 {
        let r = get(at, &format!("/r/{i}")).timeout(Duration::from_secs(5)).send().await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "request {i}");
    }
    let dropped = [("cluster_name", SHADOW), ("outcome", "dropped")];
    let text = wait_metric(&gw, "meshgate_mirror_requests_total", &dropped, 7.0).await;
    assert_eq!(metric_value(&text, "meshgate_mirror_requests_total", &dropped), Some(7.0));
    held.abort();
}
