//! Security policies meshgate does not enforce yet never fail open: an AuthorizationPolicy or
//! RequestAuthentication that selects the gateway is an analyze error and the gateway denies
//! (403 `RBAC: access denied`, TCP connections closed) unless `--unenforced-policy allow`.
//! Istio's own task YAML ("Authorization on ingress gateway", "JWT authentication").

mod common;

use common::*;
use meshgate_e2e::prelude::*;

/// Istio's task "Ingress Gateway" (security/authorization/authz-ingress): an IP allow-list on
/// the ingress gateway.
fn ingress_policy() -> String {
    istio_docs("tasks/security/authorization/authz-ingress/ingress-policy.yaml")
}

/// Istio's "Authentication Policy" task, JWT on the ingress gateway.
fn jwt_on_ingress() -> String {
    istio_docs("tasks/security/authentication/authn-policy/jwt-example-ingress.yaml")
}

/// The httpbin sample's policy from the same task series: it selects httpbin, not the gateway.
const HTTPBIN_POLICY: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
"#;

async fn app(cfg: &ConfigDir) -> Upstream {
    let up = Upstream::new("app").start().await;
    cfg.write("app.yaml", &backends("app", &[&up])).unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: app}\nspec:\n  hosts: [\"*\"]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: app}}]\n",
    )
    .unwrap();
    up
}

#[tokio::test]
async fn a_policy_selecting_the_gateway_denies_every_request_and_fails_analyze() {
    let cfg = ConfigDir::new().unwrap();
    let _up = app(&cfg).await;
    cfg.write("policy.yaml", &ingress_policy()).unwrap();

    let (code, out, err) = run_analyze([cfg.path()]);
    assert_ne!(code, 0, "analyze fails on an unenforced policy: {out}{err}");
    let report = format!("{out}{err}");
    assert!(
        report.contains("MG0010") && report.contains("AuthorizationPolicy istio-system/ingress-policy"),
        "{report}"
    );

    let gw = start(&cfg, &[80]).await;
    let r = get(gw.addr(80), "/headers").host("httpbin.example.com").send().await.unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "RBAC: access denied");
    // Even a path no route matches: Envoy's RBAC filter runs before the router.
    let r = get(gw.addr(80), "/nothing-routes-here").host("unknown.example.com").send().await.unwrap();
    assert_eq!(r.status, 403);

    let line = gw
        .wait_for_log(|l| l.contains("/headers"), Duration::from_secs(5))
        .await
        .expect("access log line for the denied request");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["response_code"], 403);
    assert_eq!(v["response_flags"], "RBAC");
    assert_eq!(
        v["response_code_details"],
        "rbac_access_denied_unenforced_policy[ns[istio-system]-policy[ingress-policy]]"
    );
    let text =
        wait_metric(&gw, "istio_requests_total", &[("response_code", "403"), ("response_flags", "RBAC")], 2.0).await;
    assert_eq!(metric_value(&text, "istio_requests_total", &[("response_code", "200")]), None, "{text}");

    // Removing the policy opens the gateway again, without a restart.
    cfg.remove("policy.yaml").unwrap();
    let _ = assert_eventually!(
        Duration::from_secs(10),
        get(gw.addr(80), "/headers").host("httpbin.example.com").send().await.map(|r| r.status),
        |r| r.as_ref().is_ok_and(|s| *s == 200),
        "{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn request_authentication_on_the_gateway_denies_too() {
    let cfg = ConfigDir::new().unwrap();
    let _up = app(&cfg).await;
    cfg.write("jwt.yaml", &jwt_on_ingress()).unwrap();
    let gw = start(&cfg, &[80]).await;
    let r = get(gw.addr(80), "/headers").host("httpbin.example.com").send().await.unwrap();
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn a_policy_for_another_workload_changes_nothing() {
    let cfg = ConfigDir::new().unwrap();
    let _up = app(&cfg).await;
    cfg.write("policy.yaml", HTTPBIN_POLICY).unwrap();
    let (code, out, err) = run_analyze([cfg.path()]);
    assert_eq!(code, 0, "{out}{err}");
    let gw = start(&cfg, &[80]).await;
    let r = get(gw.addr(80), "/headers").host("httpbin.example.com").send().await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn unenforced_policy_allow_lets_requests_through_and_says_so() {
    let cfg = ConfigDir::new().unwrap();
    let _up = app(&cfg).await;
    cfg.write("policy.yaml", &ingress_policy()).unwrap();
    let gw = GatewayProcess::builder()
        .config(cfg.path())
        .ports(&[80])
        .args(["--unenforced-policy", "allow"])
        .start()
        .await
        .unwrap();
    let r = get(gw.addr(80), "/headers").host("httpbin.example.com").send().await.unwrap();
    assert_eq!(r.status, 200);
    assert_eventually!(
        Duration::from_secs(5),
        gw.stderr(),
        |log| log.contains("are NOT enforced") && log.contains("ingress-policy"),
        "an error at every reload: {}",
        gw.stderr()
    );
}

#[tokio::test]
async fn tcp_connections_are_closed_while_denying() {
    let db = TcpUpstream::start("db").await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write(
        "gw.yaml",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n",
    )
    .unwrap();
    cfg.write(
        "svc.yaml",
        &docs(&[
            service_named("db", "default", "tcp", 27017, db.addr().port()),
            endpoints_for("db", "default", Some("tcp"), &[(&db, &[])]),
        ]),
    )
    .unwrap();
    cfg.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db}\nspec:\n  hosts: [\"*\"]\n  gateways: [istio-system/gw]\n  tcp:\n  - route: [{destination: {host: db, port: {number: 27017}}}]\n",
    )
    .unwrap();
    cfg.write("policy.yaml", &ingress_policy()).unwrap();
    let gw = start(&cfg, &[31400]).await;
    let reply = tcp_exchange(gw.addr(31400), b"ping", true).await.unwrap_or_default();
    assert!(reply.is_empty(), "nothing reaches the upstream: {:?}", String::from_utf8_lossy(&reply));
    let text = wait_metric(&gw, "istio_tcp_connections_closed_total", &[("response_flags", "RBAC")], 1.0).await;
    assert_eq!(
        metric_value(&text, "istio_tcp_connections_closed_total", &[("destination_service_name", "db")]),
        None,
        "{text}"
    );
    // Without the policy the same connection is proxied.
    cfg.remove("policy.yaml").unwrap();
    let _ = assert_eventually!(
        Duration::from_secs(10),
        tcp_exchange(gw.addr(31400), b"ping", true).await.map(|r| String::from_utf8_lossy(&r).into_owned()),
        |r| r.as_ref().is_ok_and(|r| r.starts_with("db\n")),
        "{}",
        gw.stderr()
    );
}
