//! `delegate` end to end (issue 19 item 5): the API reference's root and delegate
//! VirtualServices in other namespaces, the root's settings inherited, a delegate route
//! whose match leaves the root's dropped with a warning, and an edit of a delegate reaching
//! the routes of the root that names it.

mod common;

use common::*;
use meshgate_e2e::prelude::*;

/// The reference's root (gateway bookinfo.com), with `headers` and a `timeout` the delegate
/// routes inherit.
const ROOT: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: ["bookinfo.com"]
  gateways: ["istio-system/mygateway"]
  http:
  - match:
    - uri:
        prefix: "/productpage"
    delegate:
       name: productpage
       namespace: nsa
    headers:
      request:
        set: {x-root: "yes"}
  - match:
    - uri:
        prefix: "/reviews"
    delegate:
        name: reviews
        namespace: nsb
"#;

const PRODUCTPAGE: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: productpage, namespace: nsa}
spec:
  http:
  - match:
     - uri:
        prefix: "/productpage/v1/"
    route:
    - destination:
        host: productpage-v1.nsa.svc.cluster.local
  - route:
    - destination:
        host: productpage.nsa.svc.cluster.local
"#;

/// The reference's reviews delegate, with a route outside the root's `/reviews` and a short
/// host that resolves in the delegate's namespace.
fn reviews_delegate(host: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: nsb}}
spec:
  http:
  - match: [{{uri: {{prefix: /ratings}}}}]
    route: [{{destination: {{host: {host}}}}}]
  - route:
    - destination:
        host: {host}
"#
    )
}

fn service(name: &str, ns: &str, up: &Upstream) -> String {
    docs(&[service_named(name, ns, "http", 9080, 9080), endpoints_for(name, ns, Some("http"), &[(up.addr(), &[][..])])])
}

#[tokio::test]
async fn delegates_serve_under_their_root() {
    let page_v1 = Upstream::new("productpage").version("v1").start().await;
    let page = Upstream::new("productpage").start().await;
    let reviews = Upstream::new("reviews").start().await;
    let reviews2 = Upstream::new("reviews2").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("mygateway", 80, &["bookinfo.com"])).unwrap();
    cfg.write(
        "services.yaml",
        &docs(&[
            service("productpage-v1", "nsa", &page_v1),
            service("productpage", "nsa", &page),
            service("reviews", "nsb", &reviews),
            service("reviews2", "nsb", &reviews2),
        ]),
    )
    .unwrap();
    cfg.write("root.yaml", ROOT).unwrap();
    cfg.write("productpage.yaml", PRODUCTPAGE).unwrap();
    cfg.write("reviews.yaml", &reviews_delegate("reviews")).unwrap();

    // analyze: the /ratings route of the reviews delegate conflicts with the root's match.
    let (code, stdout, stderr) = run_analyze([cfg.path()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("spec.http[1].delegate(nsb/reviews).http[0].match") && stdout.contains("does not fall within"),
        "{stdout}"
    );

    let gw = start(&cfg, &[80]).await;
    let at = gw.addr(80);
    let echo = |path: &'static str| async move {
        let r = get(at, path).host("bookinfo.com").send().await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        r.echo().unwrap()
    };
    let e = echo("/productpage/v1/x").await;
    assert_eq!((e.service.as_str(), e.version.as_str()), ("productpage", "v1"));
    assert_eq!(e.headers.get("x-root").map(String::as_str), Some("yes"), "the root's headers are inherited");
    let e = echo("/productpage").await;
    assert_eq!(e.service, "productpage");
    assert_eq!(page.hits(), 1);
    assert_eq!(echo("/reviews/1").await.service, "reviews");
    // Outside every root match, or only in the dropped delegate route: no route.
    for path in ["/ratings", "/other"] {
        let r = get(at, path).host("bookinfo.com").send().await.unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }

    // Editing the delegate changes what its root serves.
    cfg.write("reviews.yaml", &reviews_delegate("reviews2")).unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        get(at, "/reviews/2").host("bookinfo.com").send().await.ok().and_then(|r| r.echo().ok()).map(|e| e.service),
        |s| s.as_deref() == Some("reviews2"),
        "after the delegate's edit"
    );
}

#[tokio::test]
async fn delegate_misuse_is_reported_as_istio_validates_it() {
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("mygateway", 80, &["bookinfo.com"])).unwrap();
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: default}
spec:
  hosts: ["bookinfo.com"]
  gateways: ["istio-system/mygateway"]
  http:
  - name: both
    delegate: {name: leaf}
    route: [{destination: {host: reviews}}]
  - delegate: {name: missing}
  - delegate: {name: private, namespace: other}
  - delegate: {name: root}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: leaf, namespace: default}
spec:
  gateways: [mygateway]
  http:
  - delegate: {name: deeper}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: private, namespace: other}
spec:
  exportTo: ["."]
  http:
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: orphan, namespace: default}
spec:
  http:
  - route: [{destination: {host: reviews}}]
"#,
    )
    .unwrap();
    let (code, stdout, _) = run_analyze([cfg.path()]);
    assert_ne!(code, 0, "{stdout}");
    for expected in [
        "root HTTP route both must not specify route",
        "delegate VirtualService default/missing not found",
        "VirtualService default/root has hosts, so it is not a delegate",
        "delegate VirtualService other/private is not exported to namespace \"default\"",
        "delegate virtual service must have no gateways specified",
        "delegate HTTP route cannot contain delegate",
        "no route delegates to it",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
}
