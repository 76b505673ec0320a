//! Retries, route timeouts and fault injection end to end (issue 19 items 1–3): what the
//! upstreams saw (tries, endpoints, bodies), what the client got, the flags in the access log
//! and the retry counters.

mod common;

use common::*;
use meshgate_e2e::prelude::*;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTER: &str = "outbound|9080||app.default.svc.cluster.local";

/// The gateway on port 80 in front of service `app` backed by `upstreams` and `extra`
/// endpoints (addresses nothing listens on, or raw servers of a test).
async fn setup(upstreams: &[&Upstream], extra: &[SocketAddr], http: &str) -> (ConfigDir, GatewayProcess) {
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr()).chain(extra.iter().copied()).collect();
    cfg.write("app.yaml", &service_at("app", &addrs)).unwrap();
    cfg.write("vs.yaml", &app_vs(http)).unwrap();
    let gw = start(&cfg, &[80]).await;
    (cfg, gw)
}

fn flags_logged(gw: &GatewayProcess, path: &str) -> Vec<String> {
    gw.access_log_lines()
        .iter()
        .filter(|l| l.contains(&format!("\"path\":\"{path}\"")))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["response_flags"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn wait_logged(gw: &GatewayProcess, path: &str) -> String {
    let needle = format!("\"path\":\"{path}\"");
    gw.wait_for_log(|l| l.contains(&needle), Duration::from_secs(5)).await.expect("access log line");
    flags_logged(gw, path).pop().unwrap()
}

#[tokio::test]
async fn retries_follow_the_policy_and_run_out_with_urx() {
    let up = Upstream::new("app").start().await;
    let http = r#"  - match: [{uri: {prefix: /five}}]
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /codes}}]
    retries: {attempts: 2, retryOn: "gateway-error,409"}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /off}}]
    retries: {attempts: 0}
    route: [{destination: {host: app}}]
  - route: [{destination: {host: app}}]
"#;
    let (_cfg, gw) = setup(&[&up], &[], http).await;
    let at = gw.addr(80);

    // 1 try + 3 retries, each seen by the upstream; the last 503 goes to the client.
    let r = get(at, "/five/status/503").send().await.unwrap();
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(up.hits(), 4);
    assert_eq!(wait_logged(&gw, "/five/status/503").await, "URX");
    // Not a 5xx: no retry.
    up.reset();
    assert_eq!(get(at, "/five/status/404").send().await.unwrap().status.as_u16(), 404);
    assert_eq!(up.hits(), 1);
    // Bare status codes bring retriable-status-codes; gateway-error is 502..504 only.
    for (path, hits) in [("/codes/status/409", 3), ("/codes/status/504", 3), ("/codes/status/500", 1)] {
        up.reset();
        get(at, path).send().await.unwrap();
        assert_eq!(up.hits(), hits, "{path}");
    }
    // attempts: 0 turns retries off; Istio's default does not retry a 503 (since 1.24).
    for path in ["/off/status/503", "/default/status/503"] {
        up.reset();
        assert_eq!(get(at, path).send().await.unwrap().status.as_u16(), 503);
        assert_eq!(up.hits(), 1, "{path}");
    }
    let text = wait_metric(&gw, "meshgate_upstream_rq_retry_total", &[("cluster_name", CLUSTER)], 7.0).await;
    assert_eq!(metric_value(&text, "meshgate_upstream_rq_retry_total", &[("cluster_name", CLUSTER)]), Some(7.0));
    let text =
        wait_metric(&gw, "meshgate_upstream_rq_retry_limit_exceeded_total", &[("cluster_name", CLUSTER)], 3.0).await;
    assert_eq!(
        metric_value(&text, "meshgate_upstream_rq_retry_limit_exceeded_total", &[("cluster_name", CLUSTER)]),
        Some(3.0)
    );
}

#[tokio::test]
async fn default_retries_move_a_refused_connect_to_another_endpoint() {
    let up = Upstream::new("app").start().await;
    // Two endpoints that refuse connections and one that answers: Istio's default policy (2
    // retries on connect-failure, previous hosts skipped) gets every request through.
    let (dead1, dead2) = (free_addr(), free_addr());
    let (_cfg, gw) = setup(&[&up], &[dead1, dead2], "  - route: [{destination: {host: app}}]\n").await;
    let at = gw.addr(80);
    for i in 0..30 {
        let r = get(at, &format!("/r/{i}")).send().await.unwrap();
        assert_eq!(r.status.as_u16(), 200, "request {i}: {}", r.text());
    }
    assert_eq!(up.hits(), 30);
    let text = wait_metric(&gw, "meshgate_upstream_rq_retry_success_total", &[("cluster_name", CLUSTER)], 1.0).await;
    let retries = metric_value(&text, "meshgate_upstream_rq_retry_total", &[("cluster_name", CLUSTER)]).unwrap_or(0.0);
    assert!(retries >= 10.0, "two thirds of first picks hit a dead endpoint: {retries} retries");
    // Retries are counted, not logged one WARN line each.
    assert!(!gw.stderr().contains("Fail to proxy"), "{}", gw.stderr());
}

#[tokio::test]
async fn bodies_are_replayed_up_to_the_buffer_and_not_past_it() {
    let up = Upstream::new("app").start().await;
    let http = "  - retries: {attempts: 2, retryOn: 5xx}\n    route: [{destination: {host: app}}]\n";
    let (_cfg, gw) = setup(&[&up], &[], http).await;
    let at = gw.addr(80);
    let small = bytes::Bytes::from(vec![b'a'; 1000]);
    let r = post(at, "/status/503").body(small).send().await.unwrap();
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(up.hits(), 3);
    assert!(up.requests().iter().all(|e| e.body.len() == 1000), "every try carried the whole body");
    // Past Pingora's 64 KiB replay buffer the request is sent once.
    up.reset();
    let large = bytes::Bytes::from(vec![b'b'; 200 * 1024]);
    let r = post(at, "/status/503").body(large).send().await.unwrap();
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(up.hits(), 1);
}

/// A raw upstream that sends a 200 head and part of its body, then closes: the response has
/// started, so nothing may retry it. Counts the connections it served.
async fn half_response_server() -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly part").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    (addr, served)
}

#[tokio::test]
async fn no_retry_once_the_response_started() {
    let (addr, served) = half_response_server().await;
    let http = "  - retries: {attempts: 3, retryOn: \"reset,5xx\"}\n    route: [{destination: {host: app}}]\n";
    let (_cfg, gw) = setup(&[], &[addr], http).await;
    let r = get(gw.addr(80), "/partial").send().await;
    assert!(r.is_err() || r.as_ref().is_ok_and(|r| r.body.len() < 1000), "the client sees the cut response");
    wait_logged(&gw, "/partial").await;
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1, "one try only");
}

#[tokio::test]
async fn route_and_per_try_timeouts_fire_in_their_range() {
    let up = Upstream::new("app").start().await;
    let http = r#"  - match: [{uri: {prefix: /route}}]
    timeout: 0.5s
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /per-try}}]
    retries: {attempts: 2, perTryTimeout: 0.3s, retryOn: 5xx}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /both}}]
    timeout: 0.5s
    retries: {attempts: 5, perTryTimeout: 0.2s, retryOn: 5xx}
    route: [{destination: {host: app}}]
"#;
    let (_cfg, gw) = setup(&[&up], &[], http).await;
    let at = gw.addr(80);

    let t = Instant::now();
    let r = get(at, "/route/delay/5000").send().await.unwrap();
    let took = t.elapsed();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (504, "upstream request timeout"));
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(3000), "{took:?}");
    assert_eq!(wait_logged(&gw, "/route/delay/5000").await, "UT");

    // Three tries of 0.3 s each (plus backoff), each seen upstream; then 504 UT,URX.
    up.reset();
    let t = Instant::now();
    let r = get(at, "/per-try/delay/5000").send().await.unwrap();
    let took = t.elapsed();
    assert_eq!(r.status.as_u16(), 504);
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(4000), "{took:?}");
    assert_eq!(up.hits(), 3);
    assert_eq!(wait_logged(&gw, "/per-try/delay/5000").await, "UT,URX");

    // The route timeout bounds the retries: at most three 0.2 s tries fit in 0.5 s.
    up.reset();
    let t = Instant::now();
    let r = get(at, "/both/delay/5000").send().await.unwrap();
    let took = t.elapsed();
    assert_eq!(r.status.as_u16(), 504);
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(3000), "{took:?}");
    assert!((2..=3).contains(&up.hits()), "{} tries", up.hits());
    // Under the timeouts, requests pass.
    assert_eq!(get(at, "/both/delay/10").send().await.unwrap().status.as_u16(), 200);
}

/// A raw upstream that sends a 200 head and the first half of its body, then stalls; or, with
/// `trickle`, a byte of the body every 100 ms for ten seconds (no read ever waits long).
async fn stalling_body_server(trickle: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                if trickle {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n").await;
                    for _ in 0..100 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if s.write_all(b".").await.is_err() {
                            return;
                        }
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf.").await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_route_timeout_covers_the_body() {
    let (stall, trickle) = (stalling_body_server(false).await, stalling_body_server(true).await);
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write("app.yaml", &docs(&[service_at("stall", &[stall]), service_at("trickle", &[trickle])])).unwrap();
    let http = "  - match: [{uri: {prefix: /trickle}}]\n    timeout: 0.5s\n    route: [{destination: {host: trickle}}]\n  - timeout: 0.5s\n    route: [{destination: {host: stall}}]\n";
    cfg.write("vs.yaml", &app_vs(http)).unwrap();
    let gw = start(&cfg, &[80]).await;

    // A body that keeps coming, slower than the route allows: cut at the deadline, though
    // no single read waits anywhere near it.
    let t = Instant::now();
    let raw = raw_http(gw.addr(80), "GET /trickle HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(1500), "{took:?} {raw:?}");
    assert_eq!(wait_logged(&gw, "/trickle").await, "UT");

    let t = Instant::now();
    let raw = raw_http(gw.addr(80), "GET /stall HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let took = t.elapsed();
    // The response is cut (the server never sends the ten bytes its head promised): the
    // connection closes. Pingora still held the head and first chunk in its write buffer,
    // so the client gets nothing; Envoy would have sent them, then reset.
    assert!(raw.is_empty() || raw.starts_with("HTTP/1.1 200"), "{raw:?}");
    // The cut comes at the deadline, or one read timeout (the time left) after the last
    // chunk, at most twice the route timeout (docs/compatibility.md).
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(wait_logged(&gw, "/stall").await, "UT");
}

#[tokio::test]
async fn faults_delay_and_abort_before_the_upstream() {
    let up = Upstream::new("app").start().await;
    let http = r#"  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 0.4s, percentage: {value: 100}}}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /half}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
    retries: {attempts: 0}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /legacy}}]
    fault: {delay: {fixedDelay: 5s, percent: 0}}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /grpc}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: app}}]
"#;
    let (_cfg, gw) = setup(&[&up], &[], http).await;
    let at = gw.addr(80);

    let r = get(at, "/abort").send().await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (418, "fault filter abort"));
    assert_eq!(up.hits(), 0, "aborted before any upstream");
    assert_eq!(wait_logged(&gw, "/abort").await, "FI");

    let t = Instant::now();
    let r = get(at, "/delay").send().await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    assert!(t.elapsed() >= Duration::from_millis(400), "{:?}", t.elapsed());
    assert_eq!(up.hits(), 1);
    assert_eq!(wait_logged(&gw, "/delay").await, "DI");

    // 50 %: over 400 requests, 200 ± 60 (six standard deviations) are aborted.
    up.reset();
    let client = HttpClient::pooled();
    let mut aborted = 0;
    for _ in 0..400 {
        if client.get(at, "/half").send().await.unwrap().status.as_u16() == 503 {
            aborted += 1;
        }
    }
    assert!((140..=260).contains(&aborted), "{aborted} of 400 aborted");
    assert_eq!(up.hits(), 400 - aborted);

    // A legacy `percent: 0` (and no percentage) injects nothing.
    let t = Instant::now();
    assert_eq!(get(at, "/legacy").send().await.unwrap().status.as_u16(), 200);
    assert!(t.elapsed() < Duration::from_secs(4));

    // A grpcStatus abort: gRPC clients get that status, others its HTTP form.
    let reply = grpc_request(at, "/grpc.Echo/Call").send().await.unwrap();
    assert_eq!(reply.grpc_status.as_deref(), Some("14"), "{:?}", reply.headers);
    assert_eq!(get(at, "/grpc").send().await.unwrap().status.as_u16(), 503);
}

/// A gRPC request's `grpc-timeout` shortens the route's timeout (Istio sets Envoy's
/// `max_grpc_timeout` to it): 504 in gRPC's form (UNAVAILABLE) at about the header's time.
#[tokio::test]
async fn grpc_timeout_header_caps_the_deadline() {
    let grpc = Upstream::new("greeter").grpc().start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write(
        "svc.yaml",
        &docs(&[
            service_named("greeter", "default", "grpc", 50051, 50051),
            endpoints_for("greeter", "default", Some("grpc"), &[(&grpc, &[][..])]),
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: greeter, namespace: default}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - timeout: 10s
    route: [{destination: {host: greeter}}]
"#
            .to_string(),
        ]),
    )
    .unwrap();
    let gw = start(&cfg, &[80]).await;
    let t0 = Instant::now();
    let r = grpc_request(gw.addr(80), "/delay/3000/helloworld.Greeter/SayHello")
        .header("grpc-timeout", "300m")
        .message("hi")
        .send()
        .await
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(r.grpc_status.as_deref(), Some("14"), "{r:?}");
    assert!(took >= Duration::from_millis(280) && took < Duration::from_millis(2500), "{took:?}");
    // Without the header, the route's 10 s applies: the 300 ms delay is served.
    let r = grpc_request(gw.addr(80), "/delay/300/helloworld.Greeter/SayHello").message("hi").send().await.unwrap();
    assert!(r.ok(), "{r:?}");
}
