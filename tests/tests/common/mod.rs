//! YAML and setup shared by the suites.
#![allow(dead_code)]

use meshgate_e2e::prelude::*;

pub mod examples;

/// A Gateway in istio-system selecting the default ingress gateway labels.
pub fn gateway(name: &str, port: u16, hosts: &[&str]) -> String {
    let hosts: String = hosts.iter().map(|h| format!("\n    - \"{h}\"")).collect();
    format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: {name}
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: {port}
      name: http-{port}
      protocol: HTTP
    hosts:{hosts}
"#
    )
}

/// A service `name` in `default` on port 9080 backed by the upstreams, labelled by version.
pub fn backends(name: &str, upstreams: &[&Upstream]) -> String {
    let svc = service_named(name, "default", "http", 9080, 9080);
    let list: Vec<(&Upstream, Vec<(&str, &str)>)> =
        upstreams.iter().map(|u| (*u, vec![("version", u.version())])).collect();
    let refs: Vec<(&Upstream, &[(&str, &str)])> = list.iter().map(|(u, l)| (*u, l.as_slice())).collect();
    docs(&[svc, endpoints_for(name, "default", Some("http"), &refs)])
}

/// A service `name` in `default` on port 9080 (`http`) with unlabelled endpoints at `addrs`
/// (upstreams, raw servers of a test, or addresses nothing listens on).
pub fn service_at(name: &str, addrs: &[SocketAddr]) -> String {
    let eps: Vec<(SocketAddr, &[(&str, &str)])> = addrs.iter().map(|a| (*a, &[][..])).collect();
    docs(&[service_named(name, "default", "http", 9080, 9080), endpoints_for(name, "default", Some("http"), &eps)])
}

/// DestinationRule with subsets v1..vN by `version` label and an optional traffic policy block.
pub fn destination_rule(host: &str, versions: &[&str], policy: &str) -> String {
    let subsets: String =
        versions.iter().map(|v| format!("\n  - name: {v}\n    labels:\n      version: {v}")).collect();
    let policy = if policy.is_empty() { String::new() } else { format!("\n  trafficPolicy:\n{policy}") };
    format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: {host}
  namespace: default
spec:
  host: {host}{policy}
  subsets:{subsets}
"#
    )
}

/// Starts the gateway on `cfg` with the given Gateway ports.
pub async fn start(cfg: &ConfigDir, ports: &[u16]) -> GatewayProcess {
    GatewayProcess::builder().config(cfg.path()).ports(ports).start().await.expect("gateway starts")
}

/// Which upstream pod/version answered, via the echo body.
pub async fn version_of(gw: &GatewayProcess, port: u16, path: &str, host: &str) -> String {
    let r = get(gw.addr(port), path).host(host).send().await.expect("request");
    match r.echo() {
        Ok(e) => e.version,
        Err(_) => format!("status {}", r.status.as_u16()),
    }
}

/// Metrics are recorded after the response is written (pingora's logging phase), so a test
/// that just got its response waits for the sample instead of reading it at once.
pub async fn wait_metric(gw: &GatewayProcess, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    let mut text = String::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < end {
        text = metrics(gw.metrics_addr()).await.unwrap_or_default();
        if metric_value(&text, name, labels).is_some_and(|v| v >= want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    text
}

/// A VirtualService sending everything on gateway `istio-system/gw` to subset `subset` of reviews.
pub fn reviews_to(subset: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - match: [{{uri: {{prefix: /}}}}]
    route: [{{destination: {{host: reviews, subset: {subset}}}}}]
"#
    )
}

/// Upstreams reviews v1 and v2 and a folder routing port 80 to v1 (vs.yaml holds the route).
pub async fn reviews_v1_v2() -> (Upstream, Upstream, ConfigDir) {
    let v1 = Upstream::new("reviews").version("v1").start().await;
    let v2 = Upstream::new("reviews").version("v2").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write("svc.yaml", &backends("reviews", &[&v1, &v2])).unwrap();
    cfg.write("dr.yaml", &destination_rule("reviews", &["v1", "v2"], "")).unwrap();
    cfg.write("vs.yaml", &reviews_to("v1")).unwrap();
    (v1, v2, cfg)
}

/// A gateway replica on port 80 fed by `controller`, ready once it serves its first snapshot.
pub async fn replica(controller: &ControllerProcess, name: &str) -> GatewayProcess {
    GatewayProcess::builder()
        .ports(&[80])
        .controller(controller.url(), controller.token_file(), name)
        .start()
        .await
        .expect("replica becomes ready from the controller's snapshot")
}

/// The YAML of an Istio task page, as the task applies it (`tests/compat/istio.io/`, see its
/// README).
pub fn istio_docs(path: &str) -> String {
    let file = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/compat/istio.io")).join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// A VirtualService `app` on the `gw` Gateway for every host, sending requests (those under
/// `prefix` when given) to the Service `app`.
pub fn app_route(prefix: Option<&str>) -> String {
    let when = prefix.map(|p| format!("\n    match: [{{uri: {{prefix: {p}}}}}]")).unwrap_or_default();
    format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: app, namespace: default}}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - route: [{{destination: {{host: app}}}}]{when}
"#
    )
}

/// A VirtualService `app` on the `gw` Gateway for every host with the `http` routes given (YAML,
/// indented for `http:`).
pub fn app_vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: app, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [\"istio-system/gw\"]\n  http:\n{http}"
    )
}

/// One upstream `app` behind a Gateway on port 80 for every host, every path routed to it.
pub async fn app_behind_gateway() -> (Upstream, ConfigDir) {
    let up = Upstream::new("app").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write("svc.yaml", &backends("app", &[&up])).unwrap();
    cfg.write("vs.yaml", &app_route(None)).unwrap();
    (up, cfg)
}
