//! `gateway analyze`: the diagnostics users see, with file, document, resource and field, and
//! the exit code scripts rely on.

use std::path::Path;
use std::process::Command;

fn analyze(dir: &Path) -> (i32, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_gateway")).arg("analyze").arg(dir).output().expect("run gateway analyze");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

const GATEWAY: &str = r#"apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*.magedu.com"]
  - port: {number: 80, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  ports: [{name: http, port: 9080}]
"#;

#[test]
fn warnings_name_the_place_and_exit_zero() {
    let vs = r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: ["reviews.other.org"]
  gateways: ["istio-system/gw", "missing-gw"]
  http:
  - route:
    - destination: {host: reviw}
      weight: 30
    - destination: {host: reviews, subset: v9}
      weight: 30
"#;
    let dir = folder(&[("a.yaml", GATEWAY), ("b.yaml", vs)]);
    let (code, out) = analyze(dir.path());
    assert_eq!(code, 0, "{out}");
    let expect = [
        ("IST0101", "spec.gateways[1]", "gateway \"default/missing-gw\" does not exist"),
        ("IST0101", "spec.http[0].route[0].destination.host", "unknown host \"reviw.default.svc.cluster.local\""),
        ("IST0101", "spec.http[0].route[1].destination.subset", "subset \"v9\" is not defined"),
        ("IST0132", "spec.hosts", "is served by gateway \"istio-system/gw\""),
        ("MG0002", "spec.http[0].route", "weights sum to 60"),
        ("IST0145", "spec.servers[1].port", "port 80 is already served as HTTP"),
    ];
    for (code, field, text) in expect {
        let line = out.lines().find(|l| l.contains(code) && l.contains(field) && l.contains(text));
        assert!(line.is_some(), "missing {code} {field} {text:?} in:\n{out}");
    }
    assert!(out.contains("b.yaml#0 VirtualService default/reviews: spec.hosts:"), "{out}");
}

#[test]
fn errors_reject_the_resource_and_exit_one() {
    let bad = r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: ok, namespace: default}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: bad-regex, namespace: default}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - match: [{uri: {regex: "(["}}]
    route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: FASTEST}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: bad-type, namespace: default}
spec:
  hosts: ["*"]
  http:
  - route: [{destination: {host: reviews, port: {number: "eighty"}}}]
"#;
    let dir = folder(&[("a.yaml", GATEWAY), ("b.yaml", bad), ("c.yaml", "kind: [unclosed\n")]);
    let (code, out) = analyze(dir.path());
    assert_eq!(code, 1, "{out}");
    let expect = [
        "b.yaml#1 VirtualService default/bad-regex: spec.http[0].match[0].uri.regex: invalid RE2 regex",
        "b.yaml#2 DestinationRule default/reviews: spec.trafficPolicy.loadBalancer.simple: unknown load balancer \"FASTEST\"",
        "b.yaml#3 VirtualService default/bad-type: spec.http[0].route[0].destination.port.number:",
        "c.yaml#0",
    ];
    for e in expect {
        assert!(out.contains(e), "missing {e:?} in:\n{out}");
    }
    assert!(!out.contains("default/ok"), "the valid VirtualService has no finding:\n{out}");
    assert!(out.lines().take(4).all(|l| l.starts_with("Error")), "errors come first:\n{out}");
}

#[test]
fn clean_config_reports_no_issues() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demoapp");
    let (code, out) = analyze(&examples);
    assert_eq!(code, 0);
    assert!(out.contains("No validation issues"), "{out}");
}
