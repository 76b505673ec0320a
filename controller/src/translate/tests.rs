//! Translation as a pure function: YAML objects in, snapshot and diagnostics out.

use super::*;
use crate::snapshot::{HashAlgorithm, HashKey, LoadBalancer, Shared, StringMatch};
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
    let destinations = routes[1].action.destinations();
    assert_eq!(destinations.iter().map(|d| d.weight).collect::<Vec<_>>(), [50, 50]);
    assert_eq!(&*destinations[0].cluster, "outbound|9080|v1|reviews.default.svc.cluster.local");
}

#[test]
fn clusters_of_one_service_share_each_endpoint_workload() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - route:
    - {destination: {host: reviews}, weight: 50}
    - {destination: {host: reviews, subset: v1}, weight: 50}
"#;
    let (snap, _) = run(&format!("{BASE}{vs}"));
    let all = &snap.clusters["outbound|9080||reviews.default.svc.cluster.local"];
    let v1 = &snap.clusters["outbound|9080|v1|reviews.default.svc.cluster.local"];
    assert_eq!(all.endpoints.len(), 2);
    let in_all = all.endpoints.iter().find(|e| e.address.to_string() == "10.0.0.1").unwrap();
    assert_eq!(in_all.workload.name, "reviews-v1-1");
    assert_eq!(in_all.version(), "v1");
    assert!(Arc::ptr_eq(&in_all.workload, &v1.endpoints[0].workload), "one copy of the pod's labels and names");
}

#[test]
fn subsets_select_endpoints_and_policies_follow_precedence() {
    let (snap, _) = run(&format!("{BASE}{VS}"));
    let v1 = &snap.clusters["outbound|9080|v1|reviews.default.svc.cluster.local"];
    assert_eq!(v1.endpoints.len(), 1);
    assert_eq!(v1.endpoints[0].address.to_string(), "10.0.0.1");
    assert_eq!(v1.endpoints[0].port, 9080);
    assert_eq!(v1.endpoints[0].workload.name, "reviews-v1-1");
    // Subset v1 has no policy: the top level's port-level setting beats its plain setting.
    assert_eq!(v1.load_balancer, LoadBalancer::Random);
    let v2 = &snap.clusters["outbound|9080|v2|reviews.default.svc.cluster.local"];
    assert_eq!(
        v2.load_balancer,
        LoadBalancer::ConsistentHash {
            key: Box::new(HashKey::Cookie { name: "user".into(), path: None, ttl_seconds: Some(10) }),
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
    let vs: Vec<_> = routes.iter().map(|r| &*r.virtual_service).collect();
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
        .all(|v| v.routes.iter().all(|r| &*r.virtual_service != "default/broken")));
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
    assert_eq!((c.endpoints[0].address.to_string().as_str(), c.endpoints[0].port), ("10.1.0.1", 9901));
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

/// Routes and matches are decoded in their written form and kept compact
/// (`api::istio::HttpRoute`): unknown fields, schema errors and "not supported" warnings must
/// still name the field where the user wrote it.
#[test]
fn route_and_match_fields_keep_their_paths() {
    // A VirtualService bound to BASE's gateway with `http` as given (YAML flow style).
    let with_http = |http: &str| {
        run(&format!(
            "{BASE}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: bookinfo}}\nspec:\n  hosts: [\"*\"]\n  gateways: [bookinfo-gateway]\n  http: {http}\n"
        ))
    };
    let (_, unknown) = with_http(
        "[{match: [{uri: {prefix: /a}, methd: {exact: GET}}], corsPolicy: {allowMethods: [FETCH]}, route: [{destination: {host: reviews}}], timout: 2s}]",
    );
    let fields: Vec<_> = unknown.iter().map(|d| (d.code, d.field.as_str())).collect();
    assert!(fields.contains(&(codes::UNKNOWN_FIELD, "spec.http[0].match[0].methd")), "{fields:?}");
    assert!(fields.contains(&(codes::UNKNOWN_FIELD, "spec.http[0].timout")), "{fields:?}");
    assert!(fields.contains(&(codes::SCHEMA, "spec.http[0].corsPolicy.allowMethods[0]")), "{fields:?}");

    let (snap, bad) = with_http(
        "[{match: [{uri: {prefix: /a}}, {method: {exact: GET}, port: eighty}], route: [{destination: {host: reviews}}]}]",
    );
    let error = bad.iter().find(|d| d.is_error()).expect("a schema error");
    assert_eq!(error.field, "spec.http[0].match[1].port", "{error:?}");
    assert!(snap.listeners.iter().all(|l| l.virtual_hosts.is_empty()), "the broken VirtualService is rejected");
}

/// A real self-signed certificate (P-256, valid until 2126): Secrets are checked as X.509.
const TEST_CERT: &str = concat!(
    "-----BEGIN CERTIFICATE-----\n",
    "MIIBjTCCATOgAwIBAgIUDzZZv7QPbq7SSzKol0Ypy8TpkZEwCgYIKoZIzj0EAwIw\n",
    "GzEZMBcGA1UEAwwQdGVzdC5leGFtcGxlLmNvbTAgFw0yNjEyMDYyMzAwMDdaGA8y\n",
    "MTI2MTExMjIzMDAwN1owGzEZMBcGA1UEAwwQdGVzdC5leGFtcGxlLmNvbTBZMBMG\n",
    "ByqGSM49AgEGCCqGSM49AwEHA0IABCCDGcjq4NugkMjU9z8vmOHxmV2vTMKudbZK\n",
    "i1Y8Qx6mCrvCGLkW9ISPmfRZVSyp8BPh3AxoirJj3oDzGgKYjCKjUzBRMB0GA1Ud\n",
    "DgQWBBRohCs50IwlXs67+f+2gZtUqz17vTAfBgNVHSMEGDAWgBRohCs50IwlXs67\n",
    "+f+2gZtUqz17vTAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQCa\n",
    "Rg8JMwAa0FVD8FNFdHsiljWuHCPJKxZgFI/mChSbggIgQpnVp5L/oGC0AQ3zwSwZ\n",
    "9ssrGFnHuzNBv8wnocJV5g0=\n",
    "-----END CERTIFICATE-----\n",
);

/// A Secret with PEM text in `stringData` (the API server turns it into `data`).
fn tls_secret(name: &str, with_ca: bool) -> String {
    let key = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n";
    let ca = if with_ca { format!(", ca.crt: {TEST_CERT:?}") } else { String::new() };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\ntype: kubernetes.io/tls\nstringData: {{tls.crt: {TEST_CERT:?}, tls.key: {key:?}{ca}}}\n"
    )
}

#[test]
fn https_servers_resolve_credentials_and_skip_broken_ones() {
    let yaml = format!(
        r#"{}
---
{}
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["a.example.com"]
    tls: {{mode: SIMPLE, credentialName: good, minProtocolVersion: TLSV1_3, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256, NOPE]}}
  - port: {{number: 443, name: https-b, protocol: HTTPS}}
    hosts: ["b.example.com"]
    tls: {{mode: MUTUAL, credentialName: mtls}}
  - port: {{number: 443, name: https-c, protocol: HTTPS}}
    hosts: ["c.example.com"]
    tls: {{mode: SIMPLE, credentialName: missing}}
  - port: {{number: 443, name: pass, protocol: TLS}}
    hosts: ["d.example.com"]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["a.example.com"]
    tls: {{httpsRedirect: true}}
"#,
        tls_secret("good", false),
        tls_secret("mtls", true)
    );
    let (snap, diags) = run(&yaml);
    assert_eq!(diags.errors(), 0, "{:?}", diags.items);
    let https = snap.listeners.iter().find(|l| l.port == 443).unwrap();
    assert_eq!(https.protocol, crate::snapshot::Protocol::Https);
    let modes: Vec<_> = https.tls.iter().map(|t| (t.hosts[0].as_str(), t.mode)).collect();
    use crate::snapshot::ServerTlsMode::*;
    assert_eq!(modes, [("a.example.com", Simple), ("b.example.com", Mutual), ("d.example.com", Passthrough)]);
    assert_eq!(https.tls[0].credentials, ["kubernetes://istio-system/good"]);
    assert_eq!(https.tls[0].min_version, Some(crate::snapshot::TlsVersion::V1_3));
    assert_eq!(https.tls[0].cipher_suites, ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
    assert_eq!(https.tls[1].client_ca.as_deref(), Some("kubernetes://istio-system/mtls"));
    let missing =
        diags.iter().find(|d| d.field == "spec.servers[2].tls.credentialName").expect("missing secret reported");
    assert!(missing.message.contains("Secret istio-system/missing not found"), "{}", missing.message);
    assert!(diags.iter().any(|d| d.field == "spec.servers[0].tls.cipherSuites[1]"));
    assert_eq!(
        snap.secrets["kubernetes://istio-system/good"].key_pem.as_deref().map(|k| k.contains("PRIVATE KEY")),
        Some(true)
    );
    let json = serde_json::to_string(&snap).unwrap();
    assert!(!json.contains("PRIVATE KEY"), "keys are redacted when serialised");
    let http = snap.listeners.iter().find(|l| l.port == 80).unwrap();
    assert!(http.virtual_hosts[0].https_redirect);
}

#[test]
fn broken_secret_is_an_error_on_the_secret() {
    let yaml = r#"
apiVersion: v1
kind: Secret
metadata: {name: bad, namespace: istio-system}
stringData: {tls.crt: "not a cert", tls.key: "nope"}
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["a.example.com"]
    tls: {mode: SIMPLE, credentialName: bad}
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"#;
    let (snap, diags) = run(yaml);
    let err = diags.iter().find(|d| d.is_error()).expect("error on the Secret");
    assert_eq!(err.resource.as_ref().unwrap().kind, "Secret");
    assert_eq!(err.field, "data.tls.crt");
    assert_eq!(snap.listeners.len(), 1, "the HTTP server still serves; the HTTPS one is skipped");
}

#[test]
fn tcp_and_tls_routes_bind_to_their_servers() {
    let yaml = r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*.example.com"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  ports: [{name: tcp-db, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: grpc-web, port: 8443, appProtocol: grpc}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: l4}
spec:
  hosts: ["*.example.com"]
  gateways: [istio-system/gw]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: db, port: {number: 5432}}}]
  tls:
  - match: [{sniHosts: [web.example.com]}]
    route: [{destination: {host: web}}]
"#;
    let (snap, diags) = run(yaml);
    assert_eq!(diags.errors(), 0, "{:?}", diags.items);
    let tcp = snap.listeners.iter().find(|l| l.port == 31400).unwrap();
    assert_eq!(tcp.protocol, crate::snapshot::Protocol::Tcp);
    assert_eq!(tcp.l4_routes.len(), 1);
    assert!(!tcp.l4_routes[0].passthrough);
    let tls = snap.listeners.iter().find(|l| l.port == 443).unwrap();
    assert_eq!(tls.l4_routes[0].sni_hosts, ["web.example.com"]);
    assert!(tls.l4_routes[0].passthrough);
    let web = &snap.clusters["outbound|8443||web.default.svc.cluster.local"];
    assert_eq!(web.upstream_protocol, crate::snapshot::UpstreamProtocol::Http2, "appProtocol grpc");
    assert_eq!(
        snap.clusters["outbound|5432||db.default.svc.cluster.local"].upstream_protocol,
        crate::snapshot::UpstreamProtocol::Tcp
    );
}

#[test]
fn conflicting_port_classes_are_reported() {
    let yaml = r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 80, name: tcp, protocol: TCP}
    hosts: ["*"]
"#;
    let (snap, diags) = run(yaml);
    assert_eq!(snap.listeners.len(), 1);
    assert!(diags.iter().any(|d| d.code == crate::diagnostics::codes::CONFLICT && d.field == "spec.servers[1].port"));
}

#[test]
fn gateway_server_ports_zero_and_above_65535_are_errors() {
    let yaml = r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  servers:
  - port: {number: 0, name: zero, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 70000, name: big, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: ok, namespace: istio-system}
spec:
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
"#;
    let (snap, diags) = run(yaml);
    let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
    let fields: Vec<_> = errors.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["spec.servers[0].port.number", "spec.servers[1].port.number"], "{errors:?}");
    for e in &errors {
        assert_eq!(e.resource.as_ref().map(|r| r.name.as_str()), Some("gw"));
        assert_eq!(e.origin.file.as_deref(), Some(std::path::Path::new("test.yaml")));
    }
    let ports: Vec<_> = snap.listeners.iter().map(|l| l.port).collect();
    assert_eq!(ports, [8080], "the rejected Gateway is left out, the other one serves");
}

#[test]
fn destination_rule_tls_origination() {
    let yaml = format!(
        r#"{}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: ext}}
spec:
  hosts: [api.external.test]
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  endpoints: [{{address: 10.9.9.9}}]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: ext}}
spec:
  host: api.external.test
  trafficPolicy:
    tls: {{mode: MUTUAL, credentialName: mtls, sni: api.external.test}}
  subsets:
  - name: istio
    trafficPolicy:
      tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: gw}}
spec:
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: ext}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /istio}}}}]
    route: [{{destination: {{host: api.external.test, subset: istio}}}}]
  - route: [{{destination: {{host: api.external.test}}}}]
"#,
        tls_secret("mtls", true)
    );
    let (snap, diags) = run(&yaml);
    let c = &snap.clusters["outbound|443||api.external.test"];
    let tls = c.tls.as_ref().expect("TLS origination");
    assert_eq!(tls.client_certificate.as_deref(), Some("kubernetes://istio-system/mtls"));
    assert_eq!(tls.ca.as_deref(), Some("kubernetes://istio-system/mtls"));
    let istio = &snap.clusters["outbound|443|istio|api.external.test"];
    assert!(istio.endpoints.is_empty(), "ISTIO_MUTUAL fails closed instead of plain text");
    assert!(diags.iter().any(|d| d.message.contains("ISTIO_MUTUAL is not supported yet")));
}

/// `translate_reusing` must give exactly what a fresh translation gives, whatever changed.
#[test]
fn reusing_translation_equals_a_fresh_one() {
    use crate::source::cache::FileCache;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
    for (name, text) in crate::synth::files(30, 1) {
        write(&name, &text);
    }
    // A DestinationRule whose TLS names a credential: the VirtualService routing to it makes
    // a credential lookup, so it is translated again every time.
    let first = crate::synth::file_name(0);
    let with_tls = std::fs::read_to_string(d.join(&first)).unwrap().replace(
        "  host: svc-0\n",
        "  host: svc-0\n  trafficPolicy: {tls: {mode: SIMPLE, credentialName: svc-0-ca}}\n",
    );
    write(&first, &with_tls);
    let vs_file = crate::synth::file_name(7);
    let original = std::fs::read_to_string(d.join(&vs_file)).unwrap();

    let paths = [d.to_path_buf()];
    let options = Options::default();
    let mut cache = FileCache::default();
    let mut previous: Option<(Store, Reuse)> = None;
    let registry_reused = std::cell::Cell::new(false);
    let rules_reused = std::cell::Cell::new(false);
    // Virtual hosts the snapshot shares (by pointer) with the one before.
    let shared_hosts = std::cell::Cell::new(0);
    let mut last: Option<Snapshot> = None;
    let mut step = |what: &str, edit: &dyn Fn()| -> usize {
        edit();
        let store = cache.load(&paths);
        let (snapshot, diagnostics, reuse) =
            translate_reusing(&store, &options, previous.as_ref().map(|(s, r)| (s, r)));
        let (fresh, fresh_diagnostics) = translate(&store, &options);
        assert!(snapshot == fresh, "{what}: the snapshots differ");
        assert_eq!(diagnostics, fresh_diagnostics, "{what}");
        let reused = reuse.reused();
        registry_reused.set(reuse.registry_reused());
        rules_reused.set(reuse.rules_reused());
        let hosts = |s: &Snapshot| s.listeners.iter().flat_map(|l| l.virtual_hosts.clone()).collect::<Vec<_>>();
        let before = last.as_ref().map(hosts).unwrap_or_default();
        shared_hosts.set(hosts(&snapshot).iter().filter(|h| before.iter().any(|b| Shared::is(h, b))).count());
        last = Some(snapshot);
        previous = Some((store, reuse));
        reused
    };

    assert_eq!(step("first load", &|| ()), 0);
    assert_eq!(step("nothing changed", &|| ()), 29, "all but the one that looks up a credential");
    assert!(rules_reused.get());
    assert_eq!(shared_hosts.get(), 29, "reused VirtualServices' hosts are the same allocations");
    let edited = original.replace("/api/v1", "/api/v9");
    assert_eq!(step("one VirtualService edited", &|| write(&vs_file, &edited)), 28);
    assert_eq!(shared_hosts.get(), 28);
    let broken = original.replace("prefix: /api/v1", "regex: \"([\"");
    assert_eq!(step("one VirtualService broken", &|| write(&vs_file, &broken)), 28);
    let merged = original.replace("name: svc-7, namespace: default}\nspec", "name: svc-7b, namespace: default}\nspec");
    step("a second VirtualService for the same host", &|| {
        write(&vs_file, &original);
        write(
            "zz-merge.yaml",
            &merged[merged.find("apiVersion: networking.istio.io/v1beta1\nkind: VirtualService").unwrap()..],
        );
    });
    assert_eq!(step("a VirtualService deleted", &|| std::fs::remove_file(d.join("zz-merge.yaml")).unwrap()), 29);
    let subsets = original.replace("{version: v2}", "{version: v3}");
    assert_eq!(step("a DestinationRule edited", &|| write(&vs_file, &subsets)), 0, "the context changed");
    assert!(!rules_reused.get());
    // A policy the rule index reports a problem for: reused with its problem.
    let pooled = subsets.replace("  host: svc-7\n", "  host: svc-7\n  trafficPolicy: {connectionPool: {}}\n");
    assert_ne!(pooled, subsets);
    step("a DestinationRule with a problem", &|| write(&vs_file, &pooled));
    assert!(!rules_reused.get());
    step("nothing changed after the problem", &|| ());
    assert!(rules_reused.get());
    step("the problem fixed", &|| write(&vs_file, &subsets));
    step("a Gateway edited", &|| {
        let gateways = std::fs::read_to_string(d.join("gateways.yaml")).unwrap();
        write("gateways.yaml", &gateways.replace("\"svc-3.example.com\", ", ""));
    });
    step("the credential appears", &|| {
        write(
            "zz-secret.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: svc-0-ca, namespace: istio-system}\nstringData: {ca.crt: not-a-pem}\n",
        )
    });
    assert_eq!(step("nothing changed again", &|| ()), 29);
    let pods = std::fs::read_to_string(d.join(&vs_file)).unwrap().replace("podIP: 10.", "podIP: 11.");
    step("Pods moved", &|| write(&vs_file, &pods));
    assert!(!registry_reused.get(), "a Pod changed: the registry is built again");
    step("a ServiceEntry with a problem", &|| {
        write(
            "zz-entry.yaml",
            "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [ext.example.com]\n  ports: [{number: 443, name: https, protocol: TLS}]\n  resolution: STATIC\n",
        )
    });
    assert!(!registry_reused.get());
    step("a VirtualService edited after that", &|| write(&vs_file, &pods.replace("/api/v1", "/api/v7")));
    assert!(registry_reused.get(), "only a VirtualService changed");
}

/// BASE without its DestinationRule: the bookinfo Gateway, the reviews Service and its Pods.
fn bookinfo_without_rules() -> &'static str {
    &BASE[..BASE.find("---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule").unwrap()]
}

fn run_in(yaml: &str, namespace: &str) -> (Snapshot, Diagnostics) {
    let mut store = Store::default();
    load_text(&mut store, yaml, Some(std::path::Path::new("test.yaml")));
    translate(&store, &Options { namespace: namespace.into(), ..Options::default() })
}

fn reviews(subset: &str) -> String {
    format!("outbound|9080|{subset}|reviews.default.svc.cluster.local")
}

/// Subsets v1 and v2 of one host in two DestinationRules, as Istio's docs split them: the
/// gateway sees both subsets and the older rule's top-level policy.
#[test]
fn destination_rules_for_one_host_merge_subsets_and_keep_the_first_policy() {
    let rules = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-v1, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v1
    labels: {version: v1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-v2, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
  subsets:
  - name: v2
    labels: {version: v2}
  - name: v1
    labels: {version: v2}
"#;
    let (snap, diags) = run(&format!("{}{rules}{VS}", bookinfo_without_rules()));
    assert_eq!(diags.errors(), 0, "{:?}", diags.items);
    let v1 = &snap.clusters[&*reviews("v1")];
    let v2 = &snap.clusters[&*reviews("v2")];
    assert_eq!(
        v1.endpoints.iter().map(|e| e.address.to_string()).collect::<Vec<_>>(),
        ["10.0.0.1"],
        "the first v1 wins"
    );
    assert_eq!(v2.endpoints.iter().map(|e| e.address.to_string()).collect::<Vec<_>>(), ["10.0.0.2"]);
    assert_eq!(v1.load_balancer, LoadBalancer::RoundRobin);
    assert_eq!(v2.load_balancer, LoadBalancer::RoundRobin, "the later rule's top-level policy is dropped");
    let mut dropped: Vec<_> = diags
        .iter()
        .filter(|d| d.code == codes::MERGE)
        .map(|d| (d.resource.as_ref().unwrap().name.as_str(), d.field.as_str()))
        .collect();
    dropped.sort();
    assert_eq!(dropped, [("reviews-v2", "spec.subsets[1]"), ("reviews-v2", "spec.trafficPolicy")]);
    assert_eq!(diags.warnings(), 2, "{:?}", diags.items);
}

#[test]
fn a_first_rule_without_policy_takes_the_later_rules_policy() {
    let rules = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-v1, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-v2, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets: [{name: v2, labels: {version: v2}}]
"#;
    let (snap, diags) = run(&format!("{}{rules}{VS}", bookinfo_without_rules()));
    assert_eq!(diags.warnings(), 0, "{:?}", diags.items);
    assert_eq!(snap.clusters[&*reviews("v1")].load_balancer, LoadBalancer::Random);
    assert_eq!(snap.clusters[&*reviews("v2")].endpoints.len(), 1);
}

fn reviews_rule(namespace: &str, name: &str, export_to: &str, lb: &str) -> String {
    format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  host: reviews.default.svc.cluster.local
  exportTo: {export_to}
  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
"#
    )
}

/// A gateway in the root namespace (the default): its namespace's rules private to it, then
/// the service's namespace, then the root namespace's exported rules.
#[test]
fn destination_rule_namespace_precedence_for_a_gateway_in_the_root_namespace() {
    let lb = |rules: &[String]| {
        let (snap, diags) = run(&format!("{}{}{VS}", bookinfo_without_rules(), rules.concat()));
        assert_eq!(diags.warnings(), 0, "{:?}", diags.items);
        snap.clusters[&*reviews("v1")].load_balancer.clone()
    };
    let root = reviews_rule("istio-system", "root", "[]", "RANDOM");
    let service = reviews_rule("default", "service", "[]", "ROUND_ROBIN");
    let private = reviews_rule("istio-system", "private", "[.]", "LEAST_REQUEST");
    assert_eq!(lb(std::slice::from_ref(&root)), LoadBalancer::Random, "the root namespace is the fallback");
    assert_eq!(lb(&[root.clone(), service.clone()]), LoadBalancer::RoundRobin, "the service's namespace first");
    assert_eq!(lb(&[root, service, private]), LoadBalancer::LeastRequest, "the gateway's own private rule first");
}

#[test]
fn destination_rule_namespace_precedence_for_a_gateway_in_its_own_namespace() {
    let lb = |rules: &[String]| {
        let (snap, diags) = run_in(&format!("{}{}{VS}", bookinfo_without_rules(), rules.concat()), "ingress");
        assert_eq!(diags.warnings(), 0, "{:?}", diags.items);
        snap.clusters[&*reviews("v1")].load_balancer.clone()
    };
    let root = reviews_rule("istio-system", "root", "[]", "RANDOM");
    let service = reviews_rule("default", "service", "[]", "ROUND_ROBIN");
    let own = reviews_rule("ingress", "own", "[.]", "LEAST_REQUEST");
    let root_private = reviews_rule("istio-system", "private", "[.]", "ROUND_ROBIN");
    assert_eq!(lb(&[root.clone(), root_private]), LoadBalancer::Random, "root rules private to it are not seen");
    assert_eq!(lb(&[root.clone(), service.clone()]), LoadBalancer::RoundRobin);
    assert_eq!(lb(&[root, service, own]), LoadBalancer::LeastRequest, "the gateway's namespace first");
}

#[test]
fn destination_rules_not_exported_to_the_gateway_do_not_apply() {
    let run_rules = |rules: &[String]| run(&format!("{}{}{VS}", bookinfo_without_rules(), rules.concat()));
    // Private to the service's namespace: no rule, so no subsets.
    let (snap, diags) = run_rules(&[reviews_rule("default", "private", "[.]", "RANDOM")]);
    assert!(snap.clusters[&*reviews("v1")].endpoints.is_empty());
    let unknown = diags.iter().find(|d| d.field.ends_with(".subset")).expect("subset warning");
    assert!(unknown.message.contains("no DestinationRule"), "{}", unknown.message);
    // Exported to the gateway's namespace by name.
    let (snap, diags) = run_rules(&[reviews_rule("default", "named", "[istio-system]", "RANDOM")]);
    assert_eq!(diags.warnings(), 0, "{:?}", diags.items);
    assert_eq!(snap.clusters[&*reviews("v1")].load_balancer, LoadBalancer::Random);
    // Exported elsewhere: the lookup goes on to the root namespace.
    let (snap, _) = run_rules(&[
        reviews_rule("default", "elsewhere", "[other]", "RANDOM"),
        reviews_rule("istio-system", "root", "[]", "ROUND_ROBIN"),
    ]);
    assert_eq!(snap.clusters[&*reviews("v1")].load_balancer, LoadBalancer::RoundRobin);
}

#[test]
fn destination_rules_with_different_export_to_do_not_merge() {
    let first = reviews_rule("default", "first", "[]", "RANDOM")
        .replace("{name: first,", "{name: first, creationTimestamp: \"2024-01-01T00:00:00Z\",");
    let second = reviews_rule("default", "second", "['*']", "ROUND_ROBIN")
        .replace("{name: second,", "{name: second, creationTimestamp: \"2024-02-01T00:00:00Z\",")
        .replace("{name: v1, labels: {version: v1}}, ", "");
    let (snap, diags) = run(&format!("{}{first}{second}{VS}", bookinfo_without_rules()));
    // The later rule applies alone: its policy, and no v1.
    assert_eq!(snap.clusters[&*reviews("v2")].load_balancer, LoadBalancer::RoundRobin);
    assert!(snap.clusters[&*reviews("v1")].endpoints.is_empty());
    let lost = diags.iter().find(|d| d.code == codes::MERGE).expect("the first rule is reported");
    assert_eq!((lost.resource.as_ref().unwrap().name.as_str(), lost.field.as_str()), ("first", "spec.exportTo"));
    assert!(lost.message.contains("default/second"), "{}", lost.message);
}

fn bookinfo_vs(name: &str, namespace: &str, export_to: &str, prefix: &str) -> String {
    format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: ["*"]
  gateways: [default/bookinfo-gateway]
  exportTo: {export_to}
  http:
  - match: [{{uri: {{prefix: {prefix}}}}}]
    route: [{{destination: {{host: reviews.default.svc.cluster.local}}}}]
"#
    )
}

#[test]
fn virtual_services_bind_only_when_exported_to_the_gateway_namespace() {
    let routes = |vs: &str, namespace: &str| {
        let (snap, diags) = run_in(&format!("{BASE}{vs}"), namespace);
        assert_eq!(diags.errors(), 0, "{:?}", diags.items);
        let names: Vec<String> = snap
            .listeners
            .iter()
            .flat_map(|l| l.virtual_hosts.iter().flat_map(|h| h.routes.iter().map(|r| r.virtual_service.to_string())))
            .collect();
        (names, diags)
    };
    let (bound, diags) = routes(&bookinfo_vs("private", "default", "[.]", "/a"), "istio-system");
    assert!(bound.is_empty());
    let hidden = diags.iter().find(|d| d.code == codes::NOT_EXPORTED).expect("MG0008");
    assert_eq!((hidden.field.as_str(), hidden.resource.as_ref().unwrap().name.as_str()), ("spec.exportTo", "private"));
    assert_eq!(routes(&bookinfo_vs("private", "default", "[.]", "/a"), "default").0, ["default/private"]);
    assert_eq!(routes(&bookinfo_vs("named", "default", "[istio-system]", "/a"), "istio-system").0, ["default/named"]);
    assert_eq!(routes(&bookinfo_vs("own", "istio-system", "[.]", "/a"), "istio-system").0, ["istio-system/own"]);
    assert_eq!(routes(&bookinfo_vs("all", "default", "['*']", "/a"), "istio-system").0, ["default/all"]);
}

/// For a shared host, Istio gives a gateway its own namespace's VirtualServices exported to it
/// by name first, then other namespaces' exported to it by name, then those exported to all.
#[test]
fn virtual_services_exported_by_name_come_first() {
    let vs = [
        bookinfo_vs("public", "default", "[]", "/public"),
        bookinfo_vs("named", "default", "[istio-system]", "/named"),
        bookinfo_vs("own", "istio-system", "[.]", "/own"),
    ]
    .concat();
    let (snap, diags) = run(&format!("{BASE}{vs}"));
    assert_eq!(diags.warnings(), 0, "{:?}", diags.items);
    let order: Vec<_> = snap.listeners[0].virtual_hosts[0].routes.iter().map(|r| &*r.virtual_service).collect();
    assert_eq!(order, ["istio-system/own", "default/named", "default/public"]);
}

#[test]
fn service_entries_not_exported_to_the_gateway_are_unknown_hosts() {
    let entry = |namespace: &str, export_to: &str, address: &str| {
        format!(
            r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext, namespace: {namespace}}}
spec:
  hosts: [api.external.test]
  exportTo: {export_to}
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  endpoints: [{{address: {address}}}]
"#
        )
    };
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ext}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - route: [{destination: {host: api.external.test, port: {number: 443}}}]
"#;
    let cluster = "outbound|443||api.external.test";
    let (snap, diags) = run(&format!("{}{}{vs}", bookinfo_without_rules(), entry("default", "[.]", "10.9.9.9")));
    assert!(snap.clusters[cluster].endpoints.is_empty(), "not a destination");
    let unknown = diags.iter().find(|d| d.field == "spec.http[0].route[0].destination.host").expect("IST0101");
    assert!(unknown.message.contains("ServiceEntry default/ext") && unknown.message.contains("exportTo"));
    // Another entry for the host, exported to the gateway, is the destination.
    let yaml = format!(
        "{}{}{}{vs}",
        bookinfo_without_rules(),
        entry("default", "['~']", "10.9.9.9"),
        entry("shared", "[istio-system]", "10.8.8.8")
    );
    let (snap, diags) = run(&yaml);
    assert_eq!(diags.warnings(), 0, "{:?}", diags.items);
    assert_eq!(snap.clusters[cluster].endpoints[0].address.to_string(), "10.8.8.8");
}

#[test]
fn export_to_is_validated_with_field_paths() {
    let yaml = format!(
        "{}{}{}{}",
        bookinfo_without_rules(),
        bookinfo_vs("both", "default", "[., '*']", "/a"),
        reviews_rule("default", "none", "['~']", "RANDOM"),
        r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.external.test]
  exportTo: [istio-system, Bad_Name]
  ports: [{number: 443, name: https, protocol: HTTPS}]
"#
    );
    let (snap, diags) = run(&yaml);
    let mut errors: Vec<_> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| {
            let r = d.resource.as_ref().unwrap();
            (r.kind.as_str(), r.name.as_str(), d.field.as_str())
        })
        .collect();
    errors.sort();
    assert_eq!(
        errors,
        [
            ("DestinationRule", "none", "spec.exportTo[0]"),
            ("ServiceEntry", "ext", "spec.exportTo[1]"),
            ("VirtualService", "both", "spec.exportTo"),
        ]
    );
    assert!(snap.listeners[0].virtual_hosts.is_empty(), "the invalid VirtualService is left out");
}

fn gateway_and_reviews(servers: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  servers:
{servers}
---
apiVersion: v1
kind: Service
metadata: {{name: reviews}}
spec:
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080}}]
"#
    )
}

fn first_match(snap: &Snapshot) -> &crate::snapshot::RouteMatch {
    &snap.listeners[0].virtual_hosts[0].routes[0].matches[0]
}

#[test]
fn regex_star_means_present_in_header_and_query_matches() {
    // Istio's canBeConvertedToPresentMatch: `*` is not an RE2 regex; it becomes present_match.
    let yaml = gateway_and_reviews("  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]")
        + r#"---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: star}
spec:
  hosts: ["*"]
  gateways: [istio-system/gw]
  http:
  - match:
    - headers: {x-canary: {regex: "*"}}
      withoutHeaders: {x-debug: {regex: "*"}}
      queryParams: {v: {regex: "*"}}
      authority: {regex: "*"}
    route: [{destination: {host: reviews}}]
"#;
    let (snap, diags) = run(&yaml);
    assert_eq!(diags.errors(), 0, "{:?}", diags.items);
    let m = first_match(&snap);
    assert_eq!(m.headers[0].name, "x-canary");
    assert_eq!(m.headers[0].value, None, "present");
    assert_eq!(m.without_headers[0].value, None, "present");
    assert_eq!(m.query_params[0].value, None, "present");
    assert!(m.authority.is_none(), ":authority is always present");

    // Not for `uri`: there Istio passes `*` to Envoy as a regex, which is invalid.
    let bad = yaml.replace("authority: {regex: \"*\"}", "uri: {regex: \"*\"}");
    let (_, diags) = run(&bad);
    let err = diags.iter().find(|d| d.is_error()).expect("uri regex * is invalid");
    assert_eq!(err.field, "spec.http[0].match[0].uri.regex");
}

#[test]
fn unknown_hosts_and_subsets_are_clusters_envoy_would_not_have() {
    let yaml = gateway_and_reviews("  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]")
        + r#"---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ["*"]
  gateways: [istio-system/gw]
  http:
  - match: [{uri: {prefix: /nope}}]
    route: [{destination: {host: nope}}]
  - match: [{uri: {prefix: /v9}}]
    route: [{destination: {host: reviews, subset: v9}}]
  - route: [{destination: {host: reviews}}]
"#;
    let (snap, diags) = run(&yaml);
    assert_eq!(diags.errors(), 0, "{:?}", diags.items);
    let warned: Vec<_> = diags.iter().filter(|d| d.code == codes::NOT_FOUND).map(|d| d.field.as_str()).collect();
    assert_eq!(warned, ["spec.http[0].route[0].destination.host", "spec.http[1].route[0].destination.subset"]);
    assert!(snap.clusters["outbound|80||nope.default.svc.cluster.local"].not_found);
    assert!(snap.clusters["outbound|9080|v9|reviews.default.svc.cluster.local"].not_found);
    assert!(!snap.clusters["outbound|9080||reviews.default.svc.cluster.local"].not_found);
    let json = serde_json::to_string(&snap.clusters["outbound|9080||reviews.default.svc.cluster.local"]).unwrap();
    assert!(!json.contains("not_found"), "left out of the wire form when false: {json}");
}

#[test]
fn https_redirect_covers_the_hosts_bound_virtual_services_add() {
    // Istio's gateway.go: every virtual host made from a server with httpsRedirect gets
    // require_tls, including a VirtualService host more specific than the server's.
    let yaml = gateway_and_reviews(
        "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*.example.com\"]\n    tls: {httpsRedirect: true}\n  - port: {number: 80, name: http-other, protocol: HTTP}\n    hosts: [\"plain.other.com\"]",
    ) + r#"---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [a.example.com, plain.other.com]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: reviews}}]
"#;
    let (snap, diags) = run(&yaml);
    assert_eq!(diags.errors(), 0, "{:?}", diags.items);
    let redirect: Vec<_> =
        snap.listeners[0].virtual_hosts.iter().map(|h| (h.name.as_str(), h.https_redirect)).collect();
    assert_eq!(
        redirect,
        [("a.example.com:80", true), ("plain.other.com:80", false), ("*.example.com:80", true)],
        "the server without httpsRedirect keeps serving its host"
    );
}

#[test]
fn https_redirect_on_one_server_covers_a_host_another_server_shares() {
    let yaml = gateway_and_reviews(
        "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"a.example.com\"]\n  - port: {number: 80, name: http-redirect, protocol: HTTP}\n    hosts: [\"*.example.com\"]\n    tls: {httpsRedirect: true}",
    ) + r#"---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [a.example.com]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: reviews}}]
"#;
    let (snap, _) = run(&yaml);
    let a = snap.listeners[0].virtual_hosts.iter().find(|h| h.name == "a.example.com:80").unwrap();
    assert!(a.https_redirect, "Istio merges both servers' host into one virtual host with require_tls");
    assert_eq!(a.routes.len(), 1, "bound once per gateway");
}

#[test]
fn a_tls_block_without_mode_is_passthrough() {
    // ServerTLSSettings.mode's zero value is PASSTHROUGH.
    let yaml = gateway_and_reviews(
        "  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: [\"a.example.com\"]\n    tls: {}\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"b.example.com\"]\n    tls: {credentialName: unused}",
    );
    let (snap, diags) = run(&yaml);
    assert_eq!(diags.errors(), 0, "{:?}", diags.items);
    let modes: Vec<_> = snap.listeners[0].tls.iter().map(|t| t.mode).collect();
    assert_eq!(modes, [crate::snapshot::ServerTlsMode::Passthrough, crate::snapshot::ServerTlsMode::Passthrough]);
}

#[test]
fn tcp_routes_bind_by_host_and_belong_to_their_terminating_server() {
    let yaml = format!(
        "{}---\n{}---\n{}",
        tls_secret("a-cert", false),
        tls_secret("b-cert", false),
        gateway_and_reviews(
            "  - port: {number: 9443, name: tls-a, protocol: TLS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, credentialName: a-cert}\n  - port: {number: 9443, name: tls-b, protocol: TLS}\n    hosts: [b.example.com]\n    tls: {mode: SIMPLE, credentialName: b-cert}\n  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n  - port: {number: 31400, name: tcp-2, protocol: TCP}\n    hosts: [\"*\"]\n  - port: {number: 31401, name: tcp-narrow, protocol: TCP}\n    hosts: [db.example.com]"
        )
    ) + r#"---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [a.example.com]
  gateways: [istio-system/gw]
  tcp:
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: [b.example.com]
  gateways: [istio-system/gw]
  tcp:
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: elsewhere}
spec:
  hosts: [other.org]
  gateways: [istio-system/gw]
  tcp:
  - match: [{port: 31401}]
    route: [{destination: {host: reviews}}]
"#;
    let (snap, diags) = run(&yaml);
    assert_eq!(diags.errors(), 0, "{:?}", diags.items);
    let routes = |port: u16| -> Vec<(String, Option<String>)> {
        let l = snap.listeners.iter().find(|l| l.port == port).unwrap();
        l.l4_routes.iter().map(|r| (r.name.clone(), r.server.clone())).collect()
    };
    assert_eq!(
        routes(9443),
        [
            ("default/a.tcp[0]".to_string(), Some("gateway istio-system/gw spec.servers[0]".to_string())),
            ("default/b.tcp[0]".to_string(), Some("gateway istio-system/gw spec.servers[1]".to_string())),
        ],
        "each VirtualService binds to the server whose host it names, and only there"
    );
    // A TCP server for `*` meets every host; the second TCP server on the port is ignored.
    let tcp: Vec<_> = routes(31400).into_iter().map(|(n, _)| n).collect();
    assert_eq!(tcp, ["default/a.tcp[0]", "default/b.tcp[0]"]);
    assert!(diags.iter().any(|d| d.code == codes::CONFLICT && d.field == "spec.servers[3].port"));
    assert!(routes(31401).is_empty(), "other.org does not meet db.example.com");
    let unbound = diags.iter().find(|d| d.code == codes::HOST_NOT_IN_GATEWAY).expect("IST0132");
    assert_eq!(unbound.resource.as_ref().unwrap().name, "elsewhere");
}

#[test]
fn destination_headers_apply_and_port_level_pools_are_reported_as_unsupported() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  ports: [{port: 9080, name: http}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: ["*"]
  gateways: [istio-system/gw]
  http:
  - route:
    - destination: {host: reviews}
      headers: {request: {set: {x-a: b}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    portLevelSettings:
    - port: {number: 9080}
      connectionPool: {tcp: {maxConnections: 100}}
      outlierDetection: {consecutive5xxErrors: 7}
"#;
    let (snapshot, diags) = run(yaml);
    let unsupported: Vec<&str> =
        diags.iter().filter(|d| d.code == codes::UNSUPPORTED).map(|d| d.field.as_str()).collect();
    assert!(!unsupported.iter().any(|f| f.contains("headers")), "destination headers are supported: {unsupported:?}");
    let route = &snapshot.listeners[0].virtual_hosts[0].routes[0];
    let edits = route.action.destinations()[0].headers.as_deref().expect("the destination's headers");
    assert_eq!(edits.request.set.len(), 1);
    assert!(unsupported.contains(&"spec.trafficPolicy.portLevelSettings[0].connectionPool"), "{unsupported:?}");
    assert!(unsupported.contains(&"spec.trafficPolicy.portLevelSettings[0].outlierDetection"), "{unsupported:?}");
}

#[test]
fn destination_rules_with_a_workload_selector_apply_only_to_the_workloads_they_select() {
    // Istio's shape (networking/v1 DestinationRule `workloadSelector`): a rule for the ratings
    // pods' own outbound traffic, and one selecting the ingress gateway in its namespace.
    let for_ratings = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-from-ratings, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  host: reviews
  workloadSelector:
    matchLabels:
      app: ratings
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
  subsets:
  - name: v1
    labels: {version: v1}
"#;
    let (snap, diags) = run(&format!("{}{for_ratings}{VS}", bookinfo_without_rules()));
    assert_eq!(diags.errors(), 0, "{:?}", diags.items);
    assert!(
        snap.clusters.get(&*reviews("v1")).is_none_or(|c| c.not_found),
        "a rule for other workloads does not give the gateway its subsets"
    );
    let for_gateway = for_ratings
        .replace("namespace: default", "namespace: istio-system")
        .replace("app: ratings", "istio: ingressgateway")
        .replace("host: reviews", "host: reviews.default.svc.cluster.local");
    let (snap, diags) = run(&format!("{}{for_gateway}{VS}", bookinfo_without_rules()));
    assert_eq!(diags.errors(), 0, "{:?}", diags.items);
    let v1 = &snap.clusters[&*reviews("v1")];
    assert!(!v1.not_found);
    assert_eq!(v1.load_balancer, LoadBalancer::Random, "it selects the gateway");
    // Selecting the gateway's labels from another namespace is not enough.
    let elsewhere = for_gateway.replace("namespace: istio-system", "namespace: default");
    let (snap, _) = run(&format!("{}{elsewhere}{VS}", bookinfo_without_rules()));
    assert!(snap.clusters.get(&*reviews("v1")).is_none_or(|c| c.not_found));
}
