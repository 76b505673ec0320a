//! gRPC-Web through the gateway (issue 19 item 6): `application/grpc-web+proto` and
//! `application/grpc-web-text` requests, as a browser's grpc-web client sends them over
//! HTTP/1.1, reach a real gRPC server (tonic's standard health service) as gRPC over h2c,
//! and its answers come back in gRPC-Web's form, trailers in the body.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use meshgate_e2e::prelude::*;
use prost::Message;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::ServingStatus;

const CHECK: &str = "/grpc.health.v1.Health/Check";

/// tonic's health service with `meshgate.Demo` serving, behind the gateway as service
/// `health` on a `grpc` port (so the upstream speaks h2c).
async fn setup() -> (ConfigDir, GatewayProcess) {
    setup_mirrored(None).await
}

/// As [`setup`]; with `shadow`, the route mirrors to it (service `shadow`, a `grpc` port).
async fn setup_mirrored(shadow: Option<SocketAddr>) -> (ConfigDir, GatewayProcess) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("meshgate.Demo", ServingStatus::Serving).await;
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(async move {
        let _keep = reporter;
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await.unwrap();
    });
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write(
        "health.yaml",
        &docs(&[
            service_named("health", "default", "grpc", 9090, addr.port()),
            endpoints_for("health", "default", Some("grpc"), &[(addr, &[][..])]),
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: health, namespace: default}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - route: [{destination: {host: health}}]
"#
            .to_string(),
        ]),
    )
    .unwrap();
    if let Some(addr) = shadow {
        cfg.write(
            "shadow.yaml",
            &docs(&[
                service_named("shadow", "default", "grpc", 9090, addr.port()),
                endpoints_for("shadow", "default", Some("grpc"), &[(addr, &[][..])]),
            ]),
        )
        .unwrap();
        let vs = std::fs::read_to_string(cfg.path().join("health.yaml")).unwrap().replace(
            "  - route: [{destination: {host: health}}]",
            "  - route: [{destination: {host: health}}]\n    mirror: {host: shadow}",
        );
        cfg.write("health.yaml", &vs).unwrap();
    }
    let gw = start(&cfg, &[80]).await;
    (cfg, gw)
}

/// A gRPC-Web frame: flag, big-endian length, payload.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The frames of a gRPC-Web body, as (flag, payload).
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "trailing bytes {body:?}");
    out
}

fn check_request(service: &str) -> Vec<u8> {
    frame(0, &HealthCheckRequest { service: service.into() }.encode_to_vec())
}

/// Status and trailers of a gRPC-Web answer; the trailers-only form carries them in the
/// head.
fn outcome(r: &Response, body: &[u8]) -> (Option<i32>, String) {
    let frames = frames(body);
    let status =
        frames.iter().find(|(flag, _)| *flag == 0).map(|(_, m)| HealthCheckResponse::decode(&m[..]).unwrap().status);
    let trailers = match frames.iter().find(|(flag, _)| *flag == 0x80) {
        Some((_, t)) => String::from_utf8(t.clone()).unwrap(),
        None => format!("grpc-status:{}\r\n", r.header("grpc-status").unwrap_or("?")),
    };
    (status, trailers)
}

#[tokio::test]
async fn binary_grpc_web_reaches_a_grpc_server() {
    let (_cfg, gw) = setup().await;
    let r = post(gw.addr(80), CHECK)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("accept", "application/grpc-web+proto")
        .body(check_request("meshgate.Demo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/grpc-web+proto"));
    let (status, trailers) = outcome(&r, &r.body);
    assert_eq!(status, Some(ServingStatus::Serving as i32), "{trailers}");
    assert!(trailers.starts_with("grpc-status:0\r\n"), "{trailers:?}");

    // An unknown service: NOT_FOUND (5), which tonic sends trailers-only.
    let r = post(gw.addr(80), CHECK)
        .header("content-type", "application/grpc-web+proto")
        .body(check_request("nope"))
        .send()
        .await
        .unwrap();
    let (status, trailers) = outcome(&r, &r.body);
    assert_eq!((status, trailers.starts_with("grpc-status:5\r\n")), (None, true), "{trailers:?}");
}

#[tokio::test]
async fn text_grpc_web_is_base64_both_ways() {
    let (_cfg, gw) = setup().await;
    let r = post(gw.addr(80), CHECK)
        .header("content-type", "application/grpc-web-text")
        .header("accept", "application/grpc-web-text")
        .body(STANDARD.encode(check_request("meshgate.Demo")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/grpc-web-text+proto"));
    let body = STANDARD.decode(r.text().trim()).expect("a base64 body");
    let (status, trailers) = outcome(&r, &body);
    assert_eq!(status, Some(ServingStatus::Serving as i32));
    assert!(trailers.starts_with("grpc-status:0\r\n"), "{trailers:?}");

    // A request body that is not base64: the gateway's 400, in gRPC's form (INTERNAL).
    let r = post(gw.addr(80), CHECK)
        .header("content-type", "application/grpc-web-text")
        .body("not base64!")
        .send()
        .await
        .unwrap();
    assert_eq!(r.header("grpc-status"), Some("13"), "{:?}", r.headers);
    assert_eq!(r.header("content-type"), Some("application/grpc-web-text+proto"));
}

/// A mirrored gRPC-Web request's copy is the translated gRPC request, as Envoy's router (after
/// the grpc_web filter) mirrors it: gRPC's content type and the decoded body.
#[tokio::test]
async fn a_mirrored_grpc_web_request_is_copied_as_grpc() {
    let shadow = Upstream::new("shadow").h2c().start().await;
    let (_cfg, gw) = setup_mirrored(Some(shadow.addr())).await;
    let request = check_request("meshgate.Demo");
    let r = post(gw.addr(80), CHECK)
        .header("content-type", "application/grpc-web-text")
        .body(STANDARD.encode(&request))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    if !shadow.wait_for_hits(1, Duration::from_secs(5)).await {
        let text = metrics(gw.metrics_addr()).await.unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("mirror")).collect();
        panic!("no copy arrived: {lines:?}");
    }
    let copy = shadow.requests().pop().unwrap();
    assert_eq!(copy.headers.get("content-type").map(String::as_str), Some("application/grpc"), "{:?}", copy.headers);
    assert_eq!(copy.body.as_bytes(), &request[..], "the decoded frames");
}
