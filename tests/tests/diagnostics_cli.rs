//! `meshctl`: proxy-status, proxy-config and analyze against a real controller and gateway,
//! with HTTPS from a Secret delivered over the controller channel.

mod common;

use common::*;
use meshgate_e2e::prelude::*;

const HOST: &str = "bookinfo.example.com";

fn config(cfg: &ConfigDir, up: &Upstream, ca: &TestCa) {
    let cert = ca.issue_server(&[HOST]);
    cfg.write("secret.yaml", &tls_secret_yaml("bookinfo-cred", "istio-system", &cert, None)).unwrap();
    cfg.write("app.yaml", &backends("productpage", &[up])).unwrap();
    cfg.write(
        "gw.yaml",
        &format!(
            r#"apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: bookinfo-gateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["{HOST}"]
    tls: {{mode: SIMPLE, credentialName: bookinfo-cred}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: bookinfo, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: ["istio-system/bookinfo-gateway"]
  http:
  - match: [{{uri: {{exact: /productpage}}}}]
    route: [{{destination: {{host: productpage, port: {{number: 9080}}}}}}]
"#
        ),
    )
    .unwrap();
}

async fn meshctl(args: &[&str]) -> (i32, String) {
    let (code, out, err) = run_meshctl(args).await.unwrap();
    (code, format!("{out}{err}"))
}

#[tokio::test]
async fn proxy_status_proxy_config_and_live_analysis() {
    let up = Upstream::new("productpage").start().await;
    let ca = TestCa::new("test ca");
    let cfg = ConfigDir::new().unwrap();
    config(&cfg, &up, &ca);
    let controller = ControllerProcess::start(cfg.path(), None).await.unwrap();
    let gw = GatewayProcess::builder()
        .ports(&[443])
        .controller(controller.url(), controller.token_file(), "istio-ingressgateway-7f9c")
        .start()
        .await
        .unwrap();
    // The certificate's private key crossed the controller channel: HTTPS works.
    let r = get(gw.addr(443), "/productpage").https().host(HOST).ca_pem(ca.cert_pem()).send().await.unwrap();
    assert_eq!(r.status, 200);

    let token = controller.token_file();
    let token = token.to_str().unwrap();
    let url = controller.url();
    let ctl = ["--controller", url.as_str(), "--token-file", token];
    assert_eventually!(
        Duration::from_secs(10),
        meshctl(&[&["proxy-status"][..], &ctl].concat()).await,
        |(code, out)| *code == 0
            && out.lines().any(|l| l.starts_with("istio-ingressgateway-7f9c") && l.contains("SYNCED")),
        "proxy-status shows the replica SYNCED"
    );
    let (code, json) = meshctl(&[&["proxy-status", "-o", "json"][..], &ctl].concat()).await;
    assert_eq!(code, 0, "{json}");
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list[0]["name"], "istio-ingressgateway-7f9c");

    let admin = gw.admin_addr().to_string();
    let (code, out) = meshctl(&["proxy-config", "listeners", &admin]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("PORT") && out.contains("HTTPS") && out.contains(&format!("SNI: {HOST}")), "{out}");

    let (_, out) = meshctl(&["pc", "routes", &admin]).await;
    assert!(out.lines().any(|l| l.contains("/productpage") && l.contains("bookinfo")), "{out}");
    let (_, out) = meshctl(&["pc", "routes", &admin, "--port", "80"]).await;
    assert_eq!(out.lines().count(), 1, "only the header for a port without listeners: {out}");

    let (_, out) = meshctl(&["pc", "clusters", &admin, "-o", "json"]).await;
    let clusters: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(clusters
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["service"]["host"] == "productpage.default.svc.cluster.local"));

    let (_, out) = meshctl(&["pc", "endpoints", &admin, "--fqdn", "productpage"]).await;
    assert!(out.lines().any(|l| l.starts_with(&up.addr().to_string()) && l.contains("HEALTHY")), "{out}");

    let (_, out) = meshctl(&["pc", "secrets", &admin]).await;
    assert!(
        out.lines().any(|l| l.contains("kubernetes://istio-system/bookinfo-cred")
            && l.contains("Cert Chain")
            && l.contains("true")),
        "{out}"
    );
    let (_, out) = meshctl(&["pc", "secrets", &admin, "-o", "json"]).await;
    assert!(!out.contains("PRIVATE KEY"), "keys never leave the gateway: {out}");

    // Live analysis: a VirtualService pointing at a missing Gateway shows up via the controller.
    let (code, out) = meshctl(&[&["analyze", "--live"][..], &ctl].concat()).await;
    assert_eq!(code, 0, "{out}");
    cfg.write(
        "broken.yaml",
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: lost, namespace: default}\nspec:\n  hosts: [\"lost.example.com\"]\n  gateways: [\"istio-system/nowhere\"]\n  http:\n  - route: [{destination: {host: productpage}}]\n",
    )
    .unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        meshctl(&[&["analyze", "--live"][..], &ctl].concat()).await.1,
        |out| out.contains("VirtualService default/lost"),
        "live analysis reports the VirtualService bound to a missing Gateway"
    );
    // File analysis of the same folder agrees.
    let (_, out) = meshctl(&["analyze", cfg.path().to_str().unwrap()]).await;
    assert!(out.contains("VirtualService default/lost"), "{out}");
}

#[tokio::test]
async fn unreachable_admin_is_a_clear_error() {
    let addr = free_addr().to_string();
    let (code, out) = meshctl(&["pc", "routes", &addr]).await;
    assert_ne!(code, 0);
    assert!(out.contains(&addr) && out.contains("connecting"), "{out}");
}
