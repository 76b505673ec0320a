//! Protocols other than HTTP/1.1: HTTP/2 cleartext, gRPC (trailers, gateway errors as
//! grpc-status), TCP routes, TLS passthrough by SNI, and TLS origination to upstreams.

mod common;

use common::*;
use meshgate_e2e::prelude::*;

fn gateway_servers(servers: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}"
    )
}

#[tokio::test]
async fn h2c_and_grpc_through_a_plain_port() {
    let grpc = Upstream::new("greeter").grpc().start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write(
        "svc.yaml",
        &docs(&[
            service_named("greeter", "default", "grpc", 50051, 50051),
            endpoints_for("greeter", "default", Some("grpc"), &[(&grpc, &[("version", "v1")])]),
            service_named("empty", "default", "grpc", 50051, 50051),
        ]),
    )
    .unwrap();
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: greeter, namespace: default}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - match: [{uri: {prefix: /helloworld.Greeter/}}]
    route: [{destination: {host: greeter}}]
  - match: [{uri: {prefix: /empty.Service/}}]
    route: [{destination: {host: empty}}]
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[80]).await;
    let at = gw.addr(80);

    let r = get(at, "/helloworld.Greeter/x").http2_prior_knowledge().send().await.unwrap();
    assert_eq!(r.version, Version::HTTP_2, "h2c accepted on a plain port");

    let ok = grpc_call(at, "/helloworld.Greeter/SayHello", "greeter.example.com", None).await.unwrap();
    assert_eq!(ok.grpc_status.as_deref(), Some("0"), "{ok:?}");
    let echo = ok.echo().unwrap();
    assert_eq!(echo.http_version, "HTTP/2.0", "the upstream got HTTP/2 (grpc port name)");

    let fail = grpc_call(at, "/helloworld.Greeter/Fail", "greeter.example.com", None).await.unwrap();
    assert_eq!(fail.grpc_status.as_deref(), Some("13"), "upstream trailers preserved");
    assert_eq!(fail.grpc_message.as_deref(), Some("boom"));

    let no_route = grpc_call(at, "/unknown.Service/X", "greeter.example.com", None).await.unwrap();
    assert_eq!(no_route.http_status, StatusCode::OK);
    assert_eq!(no_route.grpc_status.as_deref(), Some("12"), "no route is UNIMPLEMENTED, as Envoy answers");
    let unavailable = grpc_call(at, "/empty.Service/X", "greeter.example.com", None).await.unwrap();
    assert_eq!(unavailable.grpc_status.as_deref(), Some("14"), "no endpoint is UNAVAILABLE");
    let grpc_ok = [("request_protocol", "grpc"), ("response_code", "200")];
    let text = wait_metric(&gw, "istio_requests_total", &grpc_ok, 1.0).await;
    assert!(metric_value(&text, "istio_requests_total", &grpc_ok).is_some());
}

#[tokio::test]
async fn tcp_routes_carry_bytes_both_ways_with_half_close() {
    let db = TcpUpstream::start("db").await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway_servers("  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n"))
        .unwrap();
    cfg.write(
        "svc.yaml",
        &docs(&[
            service_named("db", "default", "tcp", 5432, 5432),
            endpoints_for("db", "default", Some("tcp"), &[(&db, &[("version", "v1")])]),
        ]),
    )
    .unwrap();
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: db, port: {number: 5432}}}]
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[31400]).await;
    let payload = vec![b'x'; 200_000];
    let reply = tcp_exchange(gw.addr(31400), &payload, true).await.unwrap();
    assert!(reply.starts_with(b"db\n"));
    assert_eq!(reply.len(), 3 + payload.len(), "everything echoed before the upstream closed");

    let labels = [("destination_service_name", "db"), ("request_protocol", "tcp")];
    let text = wait_metric(&gw, "istio_tcp_connections_closed_total", &labels, 1.0).await;
    assert_eq!(metric_value(&text, "istio_tcp_connections_opened_total", &labels), Some(1.0));
    assert_eq!(metric_value(&text, "istio_tcp_connections_closed_total", &labels), Some(1.0));
    assert_eq!(metric_value(&text, "istio_tcp_received_bytes_total", &labels), Some(payload.len() as f64));
    assert_eq!(metric_value(&text, "istio_tcp_sent_bytes_total", &labels), Some((payload.len() + 3) as f64));
    let line =
        gw.wait_for_log(|l| l.contains("\"protocol\":\"TCP\""), Duration::from_secs(5)).await.expect("TCP access log");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["bytes_received"], payload.len() as u64);
    assert_eq!(v["upstream_cluster"], "outbound|5432||db.default.svc.cluster.local");
}

#[tokio::test]
async fn tls_passthrough_routes_by_sni_without_terminating() {
    let ca = TestCa::new("upstream ca");
    let a = TlsTcpUpstream::start("alpha", ca.issue_server(&["alpha.example.com"])).await;
    let b = TlsTcpUpstream::start("beta", ca.issue_server(&["beta.example.com"])).await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write(
        "gw.yaml",
        &gateway_servers(
            "  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: [\"*.example.com\"]\n    tls: {mode: PASSTHROUGH}\n",
        ),
    )
    .unwrap();
    for (name, up) in [("alpha", &a), ("beta", &b)] {
        cfg.write(
            &format!("{name}.yaml"),
            &docs(&[
                service_named(name, "default", "tls", 443, up.addr().port()),
                endpoints_for(name, "default", Some("tls"), &[(up, &[("version", "v1")])]),
            ]),
        )
        .unwrap();
    }
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: passthrough, namespace: default}
spec:
  hosts: ["*.example.com"]
  gateways: ["istio-system/gw"]
  tls:
  - match: [{sniHosts: [alpha.example.com]}]
    route: [{destination: {host: alpha, port: {number: 443}}}]
  - match: [{sniHosts: [beta.example.com]}]
    route: [{destination: {host: beta, port: {number: 443}}}]
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[443]).await;
    let ca_pem = ca.cert_pem();
    let reply = tls_tcp_exchange(gw.addr(443), "alpha.example.com", Some(ca_pem.as_bytes()), b"ping").await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "alpha sni=alpha.example.com\nping",
        "the upstream terminated TLS itself"
    );
    let reply = tls_tcp_exchange(gw.addr(443), "beta.example.com", Some(ca_pem.as_bytes()), b"pong").await.unwrap();
    assert!(String::from_utf8_lossy(&reply).starts_with("beta sni=beta.example.com"));
    assert!(tls_tcp_exchange(gw.addr(443), "gamma.other.org", Some(ca_pem.as_bytes()), b"x").await.is_err());
}

#[tokio::test]
async fn tls_origination_to_upstreams_simple_and_mutual() {
    let ca = TestCa::new("upstream ca");
    let simple = Upstream::new("secure").tls(ca.issue_server(&["secure.default.svc.cluster.local"])).start().await;
    let mutual =
        Upstream::new("locked").tls(ca.issue_server(&["locked.internal"])).client_ca(ca.cert_pem()).start().await;
    let client = ca.issue_client("gateway", &["spiffe://cluster.local/ns/istio-system/sa/gateway"]);
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write("secure.yaml", &backends("secure", &[&simple])).unwrap();
    cfg.write("locked.yaml", &backends("locked", &[&mutual])).unwrap();
    cfg.write("ca.yaml", &generic_secret_yaml("upstream-ca", "istio-system", &[("ca.crt", &ca.cert_pem())])).unwrap();
    cfg.write("client.yaml", &tls_secret_yaml("gateway-client", "istio-system", &client, Some(&ca.cert_pem())))
        .unwrap();
    cfg.write(
        "dr.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: secure, namespace: default}
spec:
  host: secure
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: upstream-ca}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: locked, namespace: default}
spec:
  host: locked
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: gateway-client, sni: locked.internal}
"#,
    )
    .unwrap();
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: app, namespace: default}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - match: [{uri: {prefix: /locked}}]
    route: [{destination: {host: locked}}]
  - route: [{destination: {host: secure}}]
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[80]).await;
    let r = get(gw.addr(80), "/").send().await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let tls = r.echo().unwrap().tls.expect("the upstream saw TLS");
    assert_eq!(tls.sni.as_deref(), Some("secure.default.svc.cluster.local"), "SNI defaults to the destination host");
    let r = get(gw.addr(80), "/locked").send().await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.echo().unwrap().tls.unwrap().client_cert, "the gateway presented its client certificate");
    let mtls = [("destination_service_name", "locked"), ("connection_security_policy", "mutual_tls")];
    let text = wait_metric(&gw, "istio_requests_total", &mtls, 1.0).await;
    assert!(metric_value(&text, "istio_requests_total", &mtls).is_some());
}
