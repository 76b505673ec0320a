//! Round trips between the harness's own client and upstream: if these fail,
//! a failing suite says nothing about the gateway.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::client::{get, post, raw_http, raw_http_timeout, request, HttpClient};
use crate::upstream::{pattern_bytes, Echo, Upstream};

#[tokio::test]
async fn echo_round_trip() {
    let up = Upstream::new("reviews").version("v2").start().await;
    let r = get(up.addr(), "/reviews/1?x=y")
        .host("bookinfo.example.com")
        .header("end-user", "jason")
        .header("X-Multi", "a")
        .header("x-multi", "b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-upstream"), Some("reviews-v2"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let e: Echo = r.json().unwrap();
    assert_eq!(e.service, "reviews");
    assert_eq!(e.version, "v2");
    assert_eq!(e.pod, None);
    assert_eq!(e.method, "GET");
    assert_eq!(e.path, "/reviews/1?x=y");
    assert_eq!(e.host, "bookinfo.example.com");
    assert_eq!(e.header("End-User"), Some("jason"));
    assert_eq!(e.header("x-multi"), Some("a, b"));
    assert_eq!(e.http_version, "HTTP/1.1");
    assert_eq!(e.connection, 1);
    assert_eq!(up.hits(), 1);
    assert_eq!(up.requests(), vec![e]);
}

#[tokio::test]
async fn default_host_is_listener_address() {
    let up = Upstream::new("a").start().await;
    let e = get(up.addr(), "/").send().await.unwrap().echo().unwrap();
    assert_eq!(e.host, up.addr().to_string());
}

#[tokio::test]
async fn post_body_and_pod_and_extra_header() {
    let up = Upstream::new("demoapp").pod("demoapp-v1-abc").response_header("x-extra", "1").start().await;
    let r = post(up.addr(), "/submit").json(&serde_json::json!({"k": "v"})).send().await.unwrap();
    assert_eq!(r.header("x-upstream-pod"), Some("demoapp-v1-abc"));
    assert_eq!(r.header("x-extra"), Some("1"));
    let e = r.echo().unwrap();
    assert_eq!(e.method, "POST");
    assert_eq!(e.body, r#"{"k":"v"}"#);
    assert_eq!(e.pod.as_deref(), Some("demoapp-v1-abc"));
    assert_eq!(e.header("content-type"), Some("application/json"));

    let r = request(Method::DELETE, up.addr(), "x").send().await.unwrap();
    assert_eq!(r.echo().unwrap().path, "/x");
}

#[tokio::test]
async fn delay_status_bytes() {
    let up = Upstream::new("s").start().await;

    let t = Instant::now();
    let r = get(up.addr(), "/delay/200").send().await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.status, StatusCode::OK);

    // A client timeout shorter than the delay fails, but the hit counts.
    let before = up.hits();
    let err = get(up.addr(), "/delay/2000").timeout(Duration::from_millis(100)).send().await;
    assert!(err.is_err());
    assert_eq!(up.hits(), before + 1);

    let r = get(up.addr(), "/prefix/status/503").send().await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.echo().unwrap().path, "/prefix/status/503");

    let r = get(up.addr(), "/status/204").send().await.unwrap();
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());

    let r = get(up.addr(), "/bytes/100000").send().await.unwrap();
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.body, pattern_bytes(100_000));
}

#[tokio::test]
async fn connection_counting_pooled_vs_fresh() {
    let up = Upstream::new("c").start().await;
    let pooled = HttpClient::pooled();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let e = pooled.get(up.addr(), "/").send().await.unwrap().echo().unwrap();
        ids.push(e.connection);
    }
    assert_eq!(up.connections(), 1, "keep-alive must reuse the connection");
    assert!(ids.iter().all(|&i| i == ids[0]));

    up.reset();
    assert_eq!((up.hits(), up.connections()), (0, 0));
    let fresh = HttpClient::fresh();
    for _ in 0..3 {
        fresh.get(up.addr(), "/").send().await.unwrap();
    }
    for _ in 0..2 {
        get(up.addr(), "/").send().await.unwrap();
    }
    assert_eq!(up.hits(), 5);
    assert_eq!(up.connections(), 5);
}

#[tokio::test]
async fn raw_http10_closes() {
    let up = Upstream::new("raw").version("v9").start().await;
    let resp = raw_http(up.addr(), "GET /old HTTP/1.0\r\nHost: legacy\r\n\r\n").await.unwrap();
    assert!(resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap();
    let e: Echo = serde_json::from_str(body).unwrap();
    assert_eq!(e.http_version, "HTTP/1.0");
    assert_eq!(e.host, "legacy");

    // Keep-alive request: the server does not close, the deadline ends the read.
    let resp =
        raw_http_timeout(up.addr(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_millis(300)).await.unwrap();
    assert!(resp.contains("v9"), "{resp}");
}

#[tokio::test]
async fn bind_other_loopback_and_drop_stops() {
    let up = Upstream::new("demoapp").bind("127.0.0.12:0".parse().unwrap()).start().await;
    let addr = up.addr();
    assert_eq!(addr.ip().to_string(), "127.0.0.12");
    get(addr, "/").send().await.unwrap();
    // An idle keep-alive connection must not keep the server alive.
    let pooled = HttpClient::pooled();
    pooled.get(addr, "/").send().await.unwrap();
    assert_eq!(up.active_connections(), 1);
    drop(up);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(get(addr, "/").timeout(Duration::from_secs(2)).send().await.is_err());
    assert!(pooled.get(addr, "/").timeout(Duration::from_secs(2)).send().await.is_err());
}

#[tokio::test]
async fn wait_for_hits_times_out_and_succeeds() {
    let up = Upstream::new("w").start().await;
    assert!(!up.wait_for_hits(1, Duration::from_millis(50)).await);
    let addr = up.addr();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        get(addr, "/").send().await.unwrap();
    });
    assert!(up.wait_for_hits(1, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn metrics_helper_reads_prometheus_path() {
    let up = Upstream::new("m").start().await;
    let text = crate::client::metrics(up.addr()).await.unwrap();
    let e: Echo = serde_json::from_str(&text).unwrap();
    assert_eq!(e.path, "/stats/prometheus");
}

/// The readiness wait succeeds once something answers 200 on the status
/// address; an echo upstream bound there stands in for the gateway's.
#[tokio::test]
async fn wait_ready_succeeds_when_status_answers() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sleepy-gateway");
    std::fs::write(
        &script,
        "#!/bin/sh
exec sleep 30
",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let gw = crate::gateway::GatewayProcess::builder().binary(&script).start_unready().await.unwrap();
    assert!(gw.wait_ready(Duration::from_millis(100)).await.unwrap_err().to_string().contains("not ready"));
    let _status = Upstream::new("status").bind(gw.status_addr()).start().await;
    gw.wait_ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(gw.ready_status().await, Some(200));
    let pid = gw.pid();
    drop(gw);
    // Killed and reaped on drop.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

/// The prelude must import unambiguously (glob conflicts only error on use).
mod prelude_compiles {
    use crate::prelude::*;

    #[tokio::test]
    async fn prelude_names_resolve() {
        let up = Upstream::new("p").start().await;
        let cfg = ConfigDir::new().unwrap();
        cfg.write("svc.yaml", &service("p", "default", 80, up.addr().port())).unwrap();
        cfg.write("ep.yaml", &endpoints_for("p", "default", None, &[(&up, &[("version", "v1")])])).unwrap();
        let _b: GatewayBuilder = GatewayProcess::builder().config(cfg.path()).ports(&[80]);
        let r = get(up.addr(), "/").timeout(Duration::from_secs(5)).send().await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let _: Method = Method::GET;
        let _: Option<SocketAddr> = None;
        // TLS/TCP additions resolve too.
        let ca = TestCa::new("prelude");
        let tcp = TcpUpstream::start("t").await;
        let _ = endpoints_for("t", "default", Some("tcp"), &[(&tcp, &[])]);
        let _: Option<(TlsEcho, TlsInfo, GrpcReply, Version, ProtocolVersion)> = None;
        let _ = (&TLS12, &TLS13, tls_secret_yaml("s", "ns", &ca.issue_server(&["h"]), None));
    }
}
