//! Istio compatibility of routing details (issue 16, part 3), each against what Istio's
//! translation and Envoy do: repeated headers, `regex: "*"`, `authority` with a port, unknown
//! destinations (NC), httpsRedirect for VirtualService hosts, a `tls` block without `mode`, and
//! tcp routes bound by host and per terminating TLS server.

mod common;

use common::*;
use meshgate_e2e::prelude::*;

fn gateway_servers(servers: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}"
    )
}

/// reviews v1 and v2 behind a Gateway for `*.example.com` on port 80, with `vs` as the routes.
async fn reviews_with(vs: &str) -> (Upstream, Upstream, ConfigDir) {
    let v1 = Upstream::new("reviews").version("v1").start().await;
    let v2 = Upstream::new("reviews").version("v2").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*.example.com"])).unwrap();
    cfg.write("svc.yaml", &backends("reviews", &[&v1, &v2])).unwrap();
    cfg.write("dr.yaml", &destination_rule("reviews", &["v1", "v2"], "")).unwrap();
    cfg.write("vs.yaml", vs).unwrap();
    (v1, v2, cfg)
}

const HOST: &str = "bookinfo.example.com";

/// Istio's own example of header matching (the Bookinfo `reviews` VirtualService for a
/// logged-in user), with a header the client may send twice, Istio's `regex: "*"` spelling of
/// "present", and an `authority` match.
const MATCHES_VS: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: ["bookinfo.example.com"]
  gateways: ["istio-system/gw"]
  http:
  - name: joined
    match:
    - headers:
        x-group: {exact: "beta,internal"}
    route: [{destination: {host: reviews, subset: v2}}]
  - name: joined-prefix
    match:
    - headers:
        x-trace: {regex: "on,.*"}
    route: [{destination: {host: reviews, subset: v2}}]
  - name: star-header
    match:
    - headers:
        end-user: {regex: "*"}
    route: [{destination: {host: reviews, subset: v2}}]
  - name: star-query
    match:
    - queryParams:
        preview: {regex: "*"}
    route: [{destination: {host: reviews, subset: v2}}]
  - name: star-without
    match:
    - uri: {prefix: /guarded}
      withoutHeaders:
        x-debug: {regex: "*"}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: authority-exact
    match:
    - uri: {prefix: /authority}
      authority: {exact: bookinfo.example.com}
    route: [{destination: {host: reviews, subset: v2}}]
  - name: authority-with-port
    match:
    - uri: {prefix: /authority}
      authority: {regex: "bookinfo\\.example\\.com:[0-9]+"}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: default
    match:
    - uri: {prefix: /reviews}
    route: [{destination: {host: reviews, subset: v1}}]
"#;

#[tokio::test]
async fn repeated_headers_are_matched_joined_with_commas() {
    let (_v1, _v2, cfg) = reviews_with(MATCHES_VS).await;
    let gw = start(&cfg, &[80]).await;
    let at = gw.addr(80);
    let version = |r: Response| r.echo().map(|e| e.version).unwrap_or_else(|_| format!("status {}", r.status));

    // Envoy joins the values of a repeated header with "," before matching.
    let twice = get(at, "/reviews").host(HOST).header("x-group", "beta").header("x-group", "internal");
    assert_eq!(version(twice.send().await.unwrap()), "v2");
    let once = get(at, "/reviews").host(HOST).header("x-group", "beta,internal");
    assert_eq!(version(once.send().await.unwrap()), "v2", "the same value sent once");
    let first_only = get(at, "/reviews").host(HOST).header("x-group", "beta");
    assert_eq!(version(first_only.send().await.unwrap()), "v1");
    let regex = get(at, "/reviews").host(HOST).header("x-trace", "on").header("x-trace", "1");
    assert_eq!(version(regex.send().await.unwrap()), "v2", "regex over the joined value");
    let regex_miss = get(at, "/reviews").host(HOST).header("x-trace", "off").header("x-trace", "on");
    assert_eq!(version(regex_miss.send().await.unwrap()), "v1");
}

#[tokio::test]
async fn regex_star_means_present_as_istio_translates_it() {
    let (_v1, _v2, cfg) = reviews_with(MATCHES_VS).await;
    let gw = start(&cfg, &[80]).await;
    let at = gw.addr(80);
    assert_eq!(version_of(&gw, 80, "/reviews", HOST).await, "v1");
    let user = get(at, "/reviews").host(HOST).header("end-user", "jason").send().await.unwrap();
    assert_eq!(user.echo().unwrap().version, "v2", "any end-user value");
    let empty = get(at, "/reviews").host(HOST).header("end-user", "").send().await.unwrap();
    assert_eq!(empty.echo().unwrap().version, "v2", "present, even empty");
    assert_eq!(version_of(&gw, 80, "/reviews?preview", HOST).await, "v2");
    assert_eq!(version_of(&gw, 80, "/reviews?a=1&preview=no", HOST).await, "v2");
    assert_eq!(version_of(&gw, 80, "/guarded", HOST).await, "v1");
    let debug = get(at, "/guarded").host(HOST).header("x-debug", "1").send().await.unwrap();
    assert_eq!(debug.status, StatusCode::NOT_FOUND, "withoutHeaders regex * excludes any x-debug");
}

#[tokio::test]
async fn authority_matches_the_host_as_sent_with_its_port() {
    let (_v1, _v2, cfg) = reviews_with(MATCHES_VS).await;
    let gw = start(&cfg, &[80]).await;
    // Istio matches `authority` as an Envoy header match on `:authority`: the port is part of
    // it. Virtual host selection ignores the port (both requests reach the host).
    assert_eq!(version_of(&gw, 80, "/authority", HOST).await, "v2");
    assert_eq!(version_of(&gw, 80, "/authority", "bookinfo.example.com:32070").await, "v1");
    let h2 = get(gw.addr(80), "/authority").host("bookinfo.example.com:32070").http2_prior_knowledge();
    assert_eq!(h2.send().await.unwrap().echo().unwrap().version, "v1", ":authority of HTTP/2 too");
}

#[tokio::test]
async fn unknown_destination_host_or_subset_is_503_with_flag_nc() {
    let (_v1, _v2, cfg) = reviews_with(
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: ["bookinfo.example.com"]
  gateways: ["istio-system/gw"]
  http:
  - match: [{uri: {prefix: /ratings}}]
    route: [{destination: {host: ratings}}]
  - match: [{uri: {prefix: /v9}}]
    route: [{destination: {host: reviews, subset: v9}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#,
    )
    .await;
    let (_, out, err) = run_analyze([cfg.path()]);
    assert!(out.contains("IST0101"), "the warning stays: {out} {err}");
    let gw = start(&cfg, &[80]).await;
    for path in ["/ratings", "/v9"] {
        let r = get(gw.addr(80), path).host(HOST).send().await.unwrap();
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(r.text(), "", "Envoy's cluster-not-found reply has no body");
    }
    assert_eq!(version_of(&gw, 80, "/reviews", HOST).await, "v1");

    let nc = [("response_code", "503"), ("response_flags", "NC")];
    let text = wait_metric(&gw, "istio_requests_total", &nc, 2.0).await;
    assert_eq!(metric_sum(&text, "istio_requests_total", &nc), 2.0);
    let line = gw.wait_for_log(|l| l.contains("\"response_flags\":\"NC\""), Duration::from_secs(5)).await;
    let v: serde_json::Value = serde_json::from_str(&line.expect("access log line with NC")).unwrap();
    assert_eq!(v["response_code"], 503);
    assert!(!gw.access_log_lines().iter().any(|l| l.contains("\"response_flags\":\"UH\"")));
}

#[tokio::test]
async fn https_redirect_covers_virtual_service_hosts_and_keeps_the_port() {
    let up = Upstream::new("app").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("app.yaml", &backends("app", &[&up])).unwrap();
    // Istio's Secure Gateways task redirects port 80 this way; here the server host is a
    // wildcard and the VirtualService names one host under it.
    cfg.write(
        "gw.yaml",
        &gateway_servers(
            "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*.example.com\"]\n    tls: {httpsRedirect: true}\n",
        ),
    )
    .unwrap();
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: app, namespace: default}
spec:
  hosts: [a.example.com]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: app}}]
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[80]).await;
    let r = get(gw.addr(80), "/login?next=/").host("a.example.com").send().await.unwrap();
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY, "the VirtualService's host redirects too");
    assert_eq!(r.header("location"), Some("https://a.example.com/login?next=/"));
    // Envoy's require_tls writes `https://` + the Host header as sent, port included.
    let r = get(gw.addr(80), "/x").host("a.example.com:8080").send().await.unwrap();
    assert_eq!(r.header("location"), Some("https://a.example.com:8080/x"));
    let r = get(gw.addr(80), "/x").host("other.example.com").send().await.unwrap();
    assert_eq!(r.header("location"), Some("https://other.example.com/x"), "the server's own wildcard");
}

#[tokio::test]
async fn a_tls_server_without_mode_passes_through() {
    // ServerTLSSettings.mode's zero value is PASSTHROUGH: `tls: {}` forwards by SNI untouched.
    let ca = TestCa::new("upstream ca");
    let alpha = TlsTcpUpstream::start("alpha", ca.issue_server(&["alpha.example.com"])).await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write(
        "gw.yaml",
        &gateway_servers(
            "  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: [alpha.example.com]\n    tls: {}\n",
        ),
    )
    .unwrap();
    cfg.write(
        "alpha.yaml",
        &docs(&[
            service_named("alpha", "default", "tls", 443, alpha.addr().port()),
            endpoints_for("alpha", "default", Some("tls"), &[(&alpha, &[("version", "v1")])]),
        ]),
    )
    .unwrap();
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: alpha, namespace: default}
spec:
  hosts: [alpha.example.com]
  gateways: [istio-system/gw]
  tls:
  - match: [{sniHosts: [alpha.example.com]}]
    route: [{destination: {host: alpha, port: {number: 443}}}]
"#,
    )
    .unwrap();
    let (code, out, err) = run_analyze([cfg.path()]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(!out.contains("IST0106"), "{out}");
    let gw = start(&cfg, &[443]).await;
    let ca_pem = ca.cert_pem();
    let reply = tls_tcp_exchange(gw.addr(443), "alpha.example.com", Some(ca_pem.as_bytes()), b"ping").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&reply), "alpha sni=alpha.example.com\nping", "the upstream's certificate");
}

#[tokio::test]
async fn tcp_routes_follow_the_terminating_server_the_sni_chose() {
    let ca = TestCa::new("gateway ca");
    let db_a = TcpUpstream::start("db-a").await;
    let db_b = TcpUpstream::start("db-b").await;
    let cfg = ConfigDir::new().unwrap();
    let a = ca.issue_server(&["a.example.com"]);
    let b = ca.issue_server(&["b.example.com"]);
    cfg.write("a-cred.yaml", &tls_secret_yaml("a-cred", "istio-system", &a, None)).unwrap();
    cfg.write("b-cred.yaml", &tls_secret_yaml("b-cred", "istio-system", &b, None)).unwrap();
    cfg.write(
        "gw.yaml",
        &gateway_servers(concat!(
            "  - port: {number: 9443, name: tls-a, protocol: TLS}\n    hosts: [a.example.com]\n",
            "    tls: {mode: SIMPLE, credentialName: a-cred}\n",
            "  - port: {number: 9443, name: tls-b, protocol: TLS}\n    hosts: [b.example.com]\n",
            "    tls: {mode: SIMPLE, credentialName: b-cred}\n",
        )),
    )
    .unwrap();
    for (name, up) in [("db-a", &db_a), ("db-b", &db_b)] {
        cfg.write(
            &format!("{name}.yaml"),
            &docs(&[
                service_named(name, "default", "tcp", 5432, up.addr().port()),
                endpoints_for(name, "default", Some("tcp"), &[(up, &[("version", "v1")])]),
            ]),
        )
        .unwrap();
    }
    let vs = |name: &str, host: &str, dest: &str| {
        format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{host}]\n  gateways: [istio-system/gw]\n  tcp:\n  - match: [{{port: 9443}}]\n    route: [{{destination: {{host: {dest}, port: {{number: 5432}}}}}}]\n"
        )
    };
    cfg.write("vs.yaml", &docs(&[vs("a", "a.example.com", "db-a"), vs("b", "b.example.com", "db-b")])).unwrap();
    let gw = start(&cfg, &[9443]).await;
    let ca_pem = ca.cert_pem();
    let reply = tls_tcp_exchange(gw.addr(9443), "a.example.com", Some(ca_pem.as_bytes()), b"one").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&reply), "db-a\none");
    let reply = tls_tcp_exchange(gw.addr(9443), "b.example.com", Some(ca_pem.as_bytes()), b"two").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&reply), "db-b\ntwo", "the second server's own tcp route");
}

#[tokio::test]
async fn tcp_routes_bind_only_where_the_hosts_meet() {
    let db = TcpUpstream::start("db").await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write(
        "gw.yaml",
        &gateway_servers(concat!(
            "  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n",
            "  - port: {number: 31401, name: tcp-db, protocol: TCP}\n    hosts: [db.example.com]\n",
        )),
    )
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
  hosts: [db.other.org]
  gateways: ["istio-system/gw"]
  tcp:
  - route: [{destination: {host: db, port: {number: 5432}}}]
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[31400, 31401]).await;
    let reply = tcp_exchange(gw.addr(31400), b"x", true).await.unwrap();
    assert_eq!(reply, b"db\nx", "a TCP server for `*` meets every host");
    let reply = tcp_exchange(gw.addr(31401), b"x", true).await.unwrap_or_default();
    assert!(reply.is_empty(), "db.other.org does not meet db.example.com: no route, closed");
    let line = gw.wait_for_log(|l| l.contains("\"response_flags\":\"NR\""), Duration::from_secs(5)).await;
    assert!(line.is_some(), "the unrouted connection is logged with NR");
}
