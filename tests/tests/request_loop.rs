//! The prototype of meshgate's own request loop (`--request-loop own`, issue 19 item 8):
//! the same routing, headers and telemetry as Pingora's path for what it has, one deadline
//! over the whole exchange for a route `timeout`, and 501 for what it does not have yet.

mod common;

use common::*;
use meshgate_e2e::prelude::*;
use std::time::Instant;

/// The gateway on `cfg`, port 80, with `--request-loop own`.
async fn start_own(cfg: &ConfigDir) -> GatewayProcess {
    GatewayProcess::builder()
        .config(cfg.path())
        .port(80)
        .args(["--request-loop", "own"])
        .start()
        .await
        .expect("gateway starts")
}

async fn own_loop(http: &str) -> (Upstream, ConfigDir, GatewayProcess) {
    let (up, cfg) = app_behind_gateway().await;
    cfg.write("vs.yaml", &app_vs(http)).unwrap();
    let gw = start_own(&cfg).await;
    (up, cfg, gw)
}

#[tokio::test]
async fn the_own_loop_proxies_with_the_same_headers_and_telemetry() {
    let http = r#"  - match: [{uri: {prefix: /slow}}]
    timeout: 0.5s
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /faulty}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 100}}, delay: {fixedDelay: 0.2s, percentage: {value: 100}}}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /mirrored}}]
    mirror: {host: app}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /cors}}]
    corsPolicy: {allowOrigins: [{exact: "https://app.example"}], allowMethods: [PUT]}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /app}}]
    headers: {request: {set: {x-edited: "yes"}}, response: {set: {cache-control: no-store}}}
    route: [{destination: {host: app}}]
"#;
    let (up, _cfg, gw) = own_loop(http).await;
    let at = gw.addr(80);
    let client = HttpClient::pooled();
    for i in 0..5 {
        let r = client.post(at, &format!("/app/{i}")).body(pattern_bytes(100_000)).send().await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!((r.header("server"), r.header("cache-control")), (Some("istio-envoy"), Some("no-store")));
        assert!(r.header("x-envoy-upstream-service-time").is_some());
        let e = r.echo().unwrap();
        assert_eq!(e.body.len(), 100_000);
        for h in ["x-forwarded-for", "x-forwarded-proto", "x-request-id"] {
            assert!(e.headers.contains_key(h), "{h}: {:?}", e.headers);
        }
        assert_eq!(e.headers.get("x-edited").map(String::as_str), Some("yes"));
    }
    assert!(up.connections() <= 2, "upstream connections are pooled: {}", up.connections());
    assert_eq!(get(at, "/none").send().await.unwrap().status, StatusCode::NOT_FOUND, "no route: 404 NR");

    // One deadline over the exchange: 504 UT at about the route's 0.5 s.
    let t0 = Instant::now();
    let r = get(at, "/slow/delay/3000").send().await.unwrap();
    let took = t0.elapsed();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (504, "upstream request timeout"));
    assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(2500), "{took:?}");

    // A fault, as Envoy's filter before the router: the delay, then the abort; nothing upstream.
    let hits = up.hits();
    let t0 = Instant::now();
    let r = get(at, "/faulty").send().await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(200), "delayed first: {:?}", t0.elapsed());
    assert_eq!((r.status.as_u16(), r.text().as_str()), (500, "fault filter abort"));
    assert_eq!(up.hits(), hits, "aborted before any upstream");
    let line = gw.wait_for_log(|l| l.contains("/faulty"), Duration::from_secs(5)).await.unwrap();
    assert!(line.contains("\"response_flags\":\"DI,FI\""), "{line}");

    // CORS: the preflight answered at the gateway, the actual request's response decorated.
    let hits = up.hits();
    let r = request(Method::OPTIONS, at, "/cors")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("access-control-allow-methods"), Some("PUT"));
    assert_eq!(up.hits(), hits, "the preflight is answered at the gateway");
    let r = get(at, "/cors").header("origin", "https://app.example").send().await.unwrap();
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(up.hits(), hits + 1);

    // A mirror: the copy (host `-shadow`) gets the whole body too.
    let hits = up.hits();
    let body = pattern_bytes(100_000);
    let r = post(at, "/mirrored").body(body.clone()).send().await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(up.wait_for_hits(hits + 2, Duration::from_secs(5)).await, "the copy arrives");
    let copy = up.requests().into_iter().find(|e| e.host.contains("-shadow")).expect("a -shadow copy");
    assert_eq!(copy.body.as_bytes(), &body[..]);

    // What the prototype lacks is refused, not ignored.
    let r = post(at, "/app/grpc-web").header("content-type", "application/grpc-web").send().await.unwrap();
    // 501 in gRPC's form: HTTP 200, Envoy's mapping of 501 (UNKNOWN), and the reason.
    assert_eq!((r.status.as_u16(), r.header("grpc-status")), (200, Some("2")));
    assert!(r.header("grpc-message").is_some_and(|m| m.contains("prototype")), "{:?}", r.header("grpc-message"));

    let text = wait_metric(&gw, "istio_requests_total", &[("response_code", "504")], 1.0).await;
    assert!(text.contains("response_flags=\"UT\""), "the timeout is counted with UT");
    let line = gw.wait_for_log(|l| l.contains("/slow/delay/3000"), Duration::from_secs(5)).await.unwrap();
    assert!(line.contains("\"response_flags\":\"UT\""), "{line}");
}

/// Between requests the own loop keeps only the stream; pipelined requests (read together
/// with the one before) are still answered in order.
#[tokio::test]
async fn the_own_loop_keeps_pipelined_requests_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, _cfg, gw) = own_loop("  - route: [{destination: {host: app}}]\n").await;
    let mut conn = tokio::net::TcpStream::connect(gw.addr(80)).await.unwrap();
    conn.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    while !(String::from_utf8_lossy(&seen).matches("HTTP/1.1 200").count() == 2
        && String::from_utf8_lossy(&seen).contains("/second\""))
    {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.expect("responses").unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.find("/first\"").unwrap() < text.find("/second\"").unwrap(), "{text}");
    // The connection stays usable for a third request after the pipelined pair.
    conn.write_all(b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200"), "{}", String::from_utf8_lossy(&buf[..n]));
    assert_eq!(up.hits(), 3);
}

/// A head Pingora's parser refuses and a body that breaks its chunked framing get a 400, as on
/// Pingora's path, and the connection closes cleanly (lingering, not reset) without the next
/// pipelined request reaching the upstream.
#[tokio::test]
async fn the_own_loop_answers_malformed_requests_with_400_and_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, _cfg, gw) = own_loop("  - route: [{destination: {host: app}}]\n").await;
    let cases: [(&str, &[u8]); 2] = [
        ("not a request line", b"HELLO\r\n\r\n"),
        (
            "a chunk size that is not hex",
            b"POST /bad HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let mut conn = tokio::net::TcpStream::connect(gw.addr(80)).await.unwrap();
        conn.write_all(bytes).await.unwrap();
        conn.write_all(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await.expect(what);
        let text = String::from_utf8_lossy(&out);
        assert!(read.is_ok(), "{what}: a clean close, got {read:?} after {text}");
        assert!(text.starts_with("HTTP/1.1 400"), "{what}: {text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{what}: one answer, then the close: {text}");
    }
    assert!(!up.requests().iter().any(|r| r.path == "/after"), "nothing after a malformed request went upstream");
}

/// A route's retry policy in the own loop: a retriable status after the request went out is
/// tried again with the whole body while nothing went downstream, then the last answer goes
/// down with URX; `attempts: 0` sends once.
#[tokio::test]
async fn the_own_loop_retries_by_the_routes_policy_with_the_body() {
    let http = r#"  - match: [{uri: {prefix: /off}}]
    retries: {attempts: 0}
    route: [{destination: {host: app}}]
  - retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: app}}]
"#;
    let (up, _cfg, gw) = own_loop(http).await;
    let at = gw.addr(80);
    let r = post(at, "/status/503").body(bytes::Bytes::from(vec![b'a'; 1000])).send().await.unwrap();
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(up.hits(), 3, "one try and two retries");
    assert!(up.requests().iter().all(|e| e.body.len() == 1000), "every try carried the whole body");
    let line = gw.wait_for_log(|l| l.contains("\"path\":\"/status/503\""), Duration::from_secs(5)).await.unwrap();
    assert!(line.contains("\"response_flags\":\"URX\""), "{line}");
    up.reset();
    assert_eq!(get(at, "/off/status/503").send().await.unwrap().status.as_u16(), 503);
    assert_eq!(up.hits(), 1);
    let text = wait_metric(&gw, "meshgate_upstream_rq_retry_total", &[], 2.0).await;
    assert_eq!(metric_value(&text, "meshgate_upstream_rq_retry_total", &[]), Some(2.0), "{text}");
}

/// Istio's default retries in the own loop: a refused connect goes to another endpoint.
#[tokio::test]
async fn the_own_loop_retries_refused_connects_elsewhere() {
    let up = Upstream::new("app").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write("app.yaml", &service_at("app", &[up.addr(), free_addr(), free_addr()])).unwrap();
    cfg.write("vs.yaml", &app_route(None)).unwrap();
    let gw = start_own(&cfg).await;
    for i in 0..30 {
        let r = get(gw.addr(80), &format!("/r/{i}")).send().await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
    }
    assert_eq!(up.hits(), 30);
    let cluster = [("cluster_name", "outbound|9080||app.default.svc.cluster.local")];
    let text = wait_metric(&gw, "meshgate_upstream_rq_retry_success_total", &cluster, 1.0).await;
    assert!(metric_value(&text, "meshgate_upstream_rq_retry_total", &cluster).unwrap_or(0.0) >= 10.0, "{text}");
}
