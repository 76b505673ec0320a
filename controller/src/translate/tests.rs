//! Translation as a pure function: YAML objects in, snapshot and diagnostics out.

use super::*;
use crate::snapshot::{HashAlgorithm, HashKey, LoadBalancer, RouteAction, StringMatch};
use crate::source::files::load_text;

fn run(yaml: &str) -> (Snapshot, Diagnostics) {
    let mut store = Store::default();
    load_text(&mut store, yaml, Some(std::path::Path::new("test.yaml")));
    translate(&store, &Options::default())
}

const BASE: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-1, labels: {app: reviews, version: v1}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-1, labels: {app: reviews, version: v2}}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: RANDOM}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpCookie: {name: user, ttl: 10s}
          maglev: {tableSize: 1021}
"#;

const VS: &str = r#"
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match:
    - headers: {end-user: {exact: jason}}
    route:
    - destination: {host: reviews, subset: v2}
  - match:
    - uri: {exact: /productpage}
    - uri: {prefix: /static}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v2}
      weight: 50
"#;

#[test]
fn bookinfo_translates_to_one_listener_with_ordered_routes() {
    let (snap, diags) = run(&format!("{BASE}{VS}"));
    assert_eq!(diags.errors(), 0, "{:?}", diags.items);
    assert_eq!(diags.warnings(), 0, "{:?}", diags.items);
    assert_eq!(snap.listeners.len(), 1);
    let l = &snap.listeners[0];
    assert_eq!((l.port, l.name.as_str()), (80, "http.80"));
    assert_eq!(l.virtual_hosts.len(), 1);
    assert_eq!(l.virtual_hosts[0].domains, ["*"]);
    let routes = &l.virtual_hosts[0].routes;
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0].matches[0].headers[0].value, Some(StringMatch::Exact("jason".into())));
    assert_eq!(routes[1].matches.len(), 2, "match blocks are kept as alternatives");
    let RouteAction::Route { destinations } = &routes[1].action;
    assert_eq!(destinations.iter().map(|d| d.weight).collect::<Vec<_>>(), [50, 50]);
    assert_eq!(destinations[0].cluster, "outbound|9080|v1|reviews.default.svc.cluster.local");
}

#[test]
fn subsets_select_endpoints_and_policies_follow_precedence() {
    let (snap, _) = run(&format!("{BASE}{VS}"));
    let v1 = &snap.clusters["outbound|9080|v1|reviews.default.svc.cluster.local"];
    assert_eq!(v1.endpoints.len(), 1);
    assert_eq!(v1.endpoints[0].address, "10.0.0.1");
    assert_eq!(v1.endpoints[0].port, 9080);
    assert_eq!(v1.endpoints[0].workload, "reviews-v1-1");
    // Subset v1 has no policy: the top level's port-level setting beats its plain setting.
    assert_eq!(v1.load_balancer, LoadBalancer::Random);
    let v2 = &snap.clusters["outbound|9080|v2|reviews.default.svc.cluster.local"];
    assert_eq!(
        v2.load_balancer,
        LoadBalancer::ConsistentHash {
            key: HashKey::Cookie { name: "user".into(), path: None, ttl_seconds: Some(10) },
            algorithm: HashAlgorithm::Maglev { table_size: 1021 },
        }
    );
}

#[test]
fn gateways_bind_by_selector_and_host_intersection() {
    let yaml = r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {app: istio-ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["demoapp.magedu.com", "*.apps.magedu.com"]
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 81, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ["*"]
  gateways: [istio-system/gw, istio-system/egress]
  http:
  - route: [{destination: {host: demoapp, port: {number: 80}}}]
"#;
    let (snap, diags) = run(yaml);
    assert_eq!(snap.listeners.len(), 1, "the egress Gateway selects other labels");
    let mut domains: Vec<_> = snap.listeners[0].virtual_hosts.iter().map(|v| v.domains[0].clone()).collect();
    domains.sort();
    assert_eq!(domains, ["*.apps.magedu.com", "demoapp.magedu.com"], "VS '*' narrows to the server hosts");
    assert!(diags
        .iter()
        .any(|d| d.code == crate::diagnostics::codes::NOT_FOUND && d.field.ends_with("destination.host")));
}

#[test]
fn several_virtual_services_for_one_host_merge_in_order() {
    let yaml = format!(
        "{BASE}{}",
        r#"
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: first, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: second, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match: [{uri: {prefix: /b}}]
    route: [{destination: {host: reviews}}]
"#
    );
    let (snap, _) = run(&yaml);
    let routes = &snap.listeners[0].virtual_hosts[0].routes;
    let vs: Vec<_> = routes.iter().map(|r| r.virtual_service.as_str()).collect();
    assert_eq!(vs, ["default/first", "default/second"]);
}

#[test]
fn invalid_resources_are_left_out_and_the_rest_applies() {
    let yaml = format!(
        "{BASE}{VS}{}",
        r#"
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: broken}
spec:
  hosts: ["broken.example.com"]
  gateways: [bookinfo-gateway]
  http:
  - match: [{uri: {exact: /x, prefix: /y}}]
    route: [{destination: {host: reviews}}]
"#
    );
    let (snap, diags) = run(&yaml);
    let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.http[0].match[0].uri");
    assert_eq!(errors[0].resource.as_ref().unwrap().name, "broken");
    assert_eq!(errors[0].origin.document, Some(6), "0-based document index in the file");
    assert!(snap.listeners[0]
        .virtual_hosts
        .iter()
        .all(|v| v.routes.iter().all(|r| r.virtual_service != "default/broken")));
    assert_eq!(snap.listeners[0].virtual_hosts[0].routes.len(), 2, "bookinfo still applies");
}

#[test]
fn endpoint_slices_take_precedence_and_only_ready_endpoints_count() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 81}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: admin, port: 9901}]
endpoints:
- addresses: [10.1.0.1]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: web-1}
- addresses: [10.1.0.2]
  conditions: {ready: false}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, version: v7}}
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: shop}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["./*"]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: ["web.example.com"]
  gateways: [gw]
  http:
  - route: [{destination: {host: web, port: {number: 81}}}]
"#;
    let mut store = Store::default();
    load_text(&mut store, yaml, None);
    let (snap, diags) = translate(&store, &Options { namespace: "shop".into(), ..Options::default() });
    assert_eq!(diags.errors(), 0, "{:?}", diags.items);
    let c = &snap.clusters["outbound|81||web.shop.svc.cluster.local"];
    assert_eq!(c.endpoints.len(), 1, "not-ready endpoint dropped");
    assert_eq!((c.endpoints[0].address.as_str(), c.endpoints[0].port), ("10.1.0.1", 9901));
    assert_eq!(c.endpoints[0].version(), "v7", "labels come from the target Pod");
}

#[test]
fn destination_port_is_required_for_multi_port_services() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80}, {name: admin, port: 81}]
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{destination: {host: web}}]
"#;
    let (snap, diags) = run(yaml);
    assert!(diags.iter().any(|d| d.is_error() && d.field == "spec.http[0].route[0].destination.port.number"));
    assert!(snap.listeners[0].virtual_hosts.is_empty());
}

#[test]
fn lists_and_unknown_kinds() {
    let yaml = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a}
  spec: {ports: [{port: 80}]}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: ignored}
"#;
    let mut store = Store::default();
    load_text(&mut store, yaml, None);
    assert_eq!(store.services.len(), 1);
    assert!(store.diagnostics.items.is_empty());
}

#[test]
fn unknown_fields_are_warnings_not_rejections() {
    let yaml = r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw}
spec:
  selectorr: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"#;
    let (snap, diags) = run(yaml);
    assert_eq!(snap.listeners.len(), 1);
    let w = diags.iter().find(|d| d.code == crate::diagnostics::codes::UNKNOWN_FIELD).expect("warning");
    assert_eq!(w.field, "spec.selectorr");
}
