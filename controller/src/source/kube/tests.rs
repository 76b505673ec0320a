//! The Kubernetes source against the fake API server the end-to-end tests use too (crate
//! `fake-apiserver`, in process): lists, watch events, 410 relists, RBAC denials and outages,
//! observed through `on_change` and `SourceHealth`.
//!
//! Time is paused: the debounce and kube's backoff run on virtual time, which only advances
//! when every task is idle, so "wait for the next Store" is deterministic. The fake answers in
//! process for that reason (a request on a real socket would count as idle).

use super::*;
use crate::store::{lookup, Key};
use crate::translate::{translate, Options};
use fake_apiserver::FakeApiServer;
use serde_json::{json, Value};
use std::time::Duration;

const ISTIO: &str = "networking.istio.io/v1";

/// A collection's URL path as kube-rs requests it (`api_version` `v1` is the core group).
fn path(api_version: &str, plural: &str, namespace: Option<&str>) -> String {
    let prefix = if api_version == "v1" { "/api/v1".to_string() } else { format!("/apis/{api_version}") };
    match namespace {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}"),
        None => format!("{prefix}/{plural}"),
    }
}

/// The cluster's objects, applied in order (the fake assigns resourceVersions and uids).
fn apply(api: &FakeApiServer, objects: impl IntoIterator<Item = Value>) {
    for object in objects {
        api.apply(object).expect("the fake serves the kind");
    }
}

fn gateway(credential: Option<&str>) -> Value {
    let mut servers = vec![json!({"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]})];
    if let Some(name) = credential {
        servers.push(json!({
            "port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"],
            "tls": {"mode": "SIMPLE", "credentialName": name}
        }));
    }
    json!({
        "apiVersion": ISTIO, "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "istio-system"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": servers}
    })
}

fn virtual_service(namespace: &str, name: &str, prefix: &str) -> Value {
    json!({
        "apiVersion": ISTIO, "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "hosts": ["*"], "gateways": ["istio-system/gw"],
            "http": [{"match": [{"uri": {"prefix": prefix}}], "route": [{"destination": {"host": "reviews"}}]}]
        }
    })
}

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "reviews", "namespace": "bookinfo"},
        "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}
    })
}

fn endpoint_slice() -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "reviews-x1", "namespace": "bookinfo", "labels": {"kubernetes.io/service-name": "reviews"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 9080}],
        "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": true}}]
    })
}

fn secret(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": "istio-system"},
        "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}
    })
}

/// The bookinfo-like cluster most tests start from.
fn serve_basics(api: &FakeApiServer) {
    apply(api, [gateway(None), virtual_service("bookinfo", "reviews", "/reviews"), service(), endpoint_slice()]);
}

struct Source {
    stores: mpsc::UnboundedReceiver<Store>,
    health: Arc<SourceHealth>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Source {
    fn start(api: &FakeApiServer, options: KubeOptions) -> Source {
        let (tx, stores) = mpsc::unbounded_channel();
        let health = Arc::new(SourceHealth::new());
        let client = kube::Client::new(api.service(), "default");
        let task = tokio::spawn(run(client, options, health.clone(), move |store| {
            let _ = tx.send(store);
        }));
        Source { stores, health, task }
    }

    async fn next_store(&mut self) -> Store {
        // Virtual time: this only fires if the source never publishes.
        tokio::time::timeout(Duration::from_secs(3600), self.stores.recv())
            .await
            .expect("a Store is published")
            .expect("the source is running")
    }

    /// No further Store while a long (virtual) time passes.
    async fn assert_quiet(&mut self) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(self.stores.try_recv().is_err(), "no further on_change expected");
    }

    fn kind(&self, kind: &str) -> KindSummary {
        self.health.summary().kinds.get(kind).cloned().unwrap_or_default()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn prefixes(store: &Store) -> Vec<String> {
    let mut out: Vec<String> = store
        .virtual_services
        .values()
        .flat_map(|vs| vs.spec.http.iter())
        .flat_map(|h| h.matches.iter())
        .filter_map(|m| Some(m.uri.as_ref()?.prefix.as_ref()?.to_string()))
        .collect();
    out.sort();
    out
}

#[tokio::test(start_paused = true)]
async fn initial_lists_publish_one_store_that_translates_to_the_route() {
    let api = FakeApiServer::new();
    serve_basics(&api);
    let mut source = Source::start(&api, KubeOptions::default());

    let store = source.next_store().await;
    assert_eq!(
        (store.gateways.len(), store.virtual_services.len(), store.services.len(), store.endpoint_slices.len()),
        (1, 1, 1, 1)
    );
    assert!(store.diagnostics.items.is_empty(), "{:?}", store.diagnostics.items);
    let (snapshot, diagnostics) = translate(&store, &Options::default());
    assert_eq!(diagnostics.errors(), 0, "{:?}", diagnostics.items);
    let route = &snapshot.listeners[0].virtual_hosts[0].routes[0];
    assert_eq!(&*route.virtual_service, "bookinfo/reviews");
    let destinations = route.action.destinations();
    let cluster = &snapshot.clusters[&destinations[0].cluster];
    assert_eq!(&*cluster.name, "outbound|9080||reviews.bookinfo.svc.cluster.local");
    assert_eq!((cluster.endpoints[0].address.to_string().as_str(), cluster.endpoints[0].port), ("10.0.0.7", 9080));

    source.assert_quiet().await;
    let summary = source.health.summary();
    assert_eq!(summary.published, 1);
    assert!(summary.kinds.values().all(|k| k.synced && k.errors.is_empty()), "{summary:?}");
}

#[tokio::test(start_paused = true)]
async fn watch_events_in_quick_succession_publish_once() {
    let api = FakeApiServer::new();
    serve_basics(&api);
    let mut source = Source::start(&api, KubeOptions::default());
    source.next_store().await;

    // The watch goes on from the list's resourceVersion.
    let requests = api.requests();
    let watch = format!("GET {}?", path(ISTIO, "virtualservices", None));
    assert!(
        requests.iter().any(|r| r.starts_with(&watch) && r.contains("watch=true") && r.contains("resourceVersion=")),
        "{requests:?}"
    );
    api.apply(virtual_service("bookinfo", "reviews", "/v2")).unwrap();
    // Virtual time: by the time this sleep ends the first event has been taken in and the
    // debounce (100 ms) is running; the second event lands inside it.
    tokio::time::sleep(Duration::from_millis(60)).await;
    api.apply(virtual_service("bookinfo", "ratings", "/ratings")).unwrap();

    let store = source.next_store().await;
    assert_eq!(prefixes(&store), ["/ratings", "/v2"]);
    // Quiet for 10 s, during which the fake sends a BOOKMARK a second on every watch: those
    // publish nothing either.
    source.assert_quiet().await;

    assert!(api.delete(ISTIO, "VirtualService", "bookinfo", "ratings"));
    assert_eq!(prefixes(&source.next_store().await), ["/v2"]);
    assert_eq!(source.health.summary().published, 3);
}

#[tokio::test(start_paused = true)]
async fn an_event_decodes_only_the_object_it_changed() {
    let api = FakeApiServer::new();
    serve_basics(&api);
    apply(&api, [virtual_service("bookinfo", "ratings", "/ratings")]);
    let mut source = Source::start(&api, KubeOptions::default());
    let first = source.next_store().await;

    api.apply(virtual_service("bookinfo", "reviews", "/v2")).unwrap();
    let second = source.next_store().await;
    assert_eq!(prefixes(&second), ["/ratings", "/v2"]);

    // Unchanged objects are the same decoded allocations (so translation reuses its results
    // for them); the changed one was decoded again.
    let vs = |store: &Store, name: &str| lookup(&store.virtual_services, "bookinfo", name).unwrap().spec.clone();
    assert!(Arc::ptr_eq(&vs(&first, "ratings"), &vs(&second, "ratings")));
    assert!(!Arc::ptr_eq(&vs(&first, "reviews"), &vs(&second, "reviews")));
    let one = |store: &Store| {
        let gateway = store.gateways.values().next().unwrap();
        let service = store.services.values().next().unwrap();
        (gateway.spec.clone(), gateway.meta.clone(), service.spec.clone())
    };
    let (before, after) = (one(&first), one(&second));
    assert!(Arc::ptr_eq(&before.0, &after.0) && Arc::ptr_eq(&before.1, &after.1) && Arc::ptr_eq(&before.2, &after.2));

    // And the Store is the one a fresh start on the changed cluster decodes.
    let fresh_api = FakeApiServer::new();
    serve_basics(&fresh_api);
    apply(
        &fresh_api,
        [virtual_service("bookinfo", "reviews", "/v2"), virtual_service("bookinfo", "ratings", "/ratings")],
    );
    let fresh = Source::start(&fresh_api, KubeOptions::default()).next_store().await;
    assert_eq!(second, fresh);
}

#[tokio::test(start_paused = true)]
async fn a_constantly_changing_cluster_still_publishes_within_ten_debounces() {
    let api = FakeApiServer::new();
    serve_basics(&api);
    let mut source = Source::start(&api, KubeOptions::default());
    source.next_store().await;
    let start = tokio::time::Instant::now();

    let mut published = None;
    for i in 0..100 {
        api.apply(virtual_service("bookinfo", "reviews", &format!("/v{i}"))).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(store) = source.stores.try_recv() {
            published = Some((store, start.elapsed()));
            break;
        }
    }
    let (store, after) = published.expect("published while changes kept coming");
    assert!(after <= Duration::from_millis(1100), "{after:?}");
    assert!(prefixes(&store)[0].starts_with("/v"));
}

#[tokio::test(start_paused = true)]
async fn gone_relists_and_publishes_the_relisted_contents() {
    let api = FakeApiServer::new();
    serve_basics(&api);
    apply(&api, [virtual_service("bookinfo", "ratings", "/ratings")]);
    let mut source = Source::start(&api, KubeOptions::default());
    let first = source.next_store().await;
    assert_eq!(prefixes(&first), ["/ratings", "/reviews"]);

    // The server compacts its history and ends the watches with 410; the change after that
    // reaches the source only through the relist (an expired watch delivers nothing more).
    api.expire_watches();
    api.apply(virtual_service("bookinfo", "reviews", "/relisted")).unwrap();

    let relisted = source.next_store().await;
    assert_eq!(prefixes(&relisted), ["/ratings", "/relisted"]);
    // What the relist returned unchanged was not decoded again.
    let spec = |store: &Store| lookup(&store.virtual_services, "bookinfo", "ratings").unwrap().spec.clone();
    assert!(Arc::ptr_eq(&spec(&first), &spec(&relisted)));
    assert_eq!(api.list_count("virtualservices"), 2, "one initial list and one relist");
    assert_eq!(api.watch_count("virtualservices"), 2, "and it watches again from the relist");
    let vs = source.kind("VirtualService");
    assert_eq!(vs.errors.get("gone"), Some(&1));
    assert!(vs.synced && !vs.failing);
}

#[tokio::test(start_paused = true)]
async fn forbidden_secrets_do_not_block_the_rest_and_show_in_health() {
    let api = FakeApiServer::new();
    serve_basics(&api);
    apply(&api, [gateway(Some("gw-cert"))]);
    api.forbid("secrets");
    let mut source = Source::start(&api, KubeOptions::default());

    let store = source.next_store().await;
    assert_eq!((store.gateways.len(), store.secrets.len()), (1, 0));
    let secrets_health = source.kind("Secret");
    assert!(!secrets_health.synced && secrets_health.failing, "{secrets_health:?}");
    assert!(secrets_health.errors["forbidden"] >= 1);
    assert!(secrets_health.last_error.as_deref().unwrap_or("").contains("Forbidden"));
    assert!(source.kind("Gateway").synced);

    // RBAC fixed: the retry (after backoff) lists the Secret and publishes it.
    api.allow("secrets");
    apply(&api, [secret("gw-cert")]);
    let store = source.next_store().await;
    assert_eq!(store.secrets.len(), 1);
    let secrets_health = source.kind("Secret");
    assert!(secrets_health.synced && !secrets_health.failing);
}

#[tokio::test(start_paused = true)]
async fn only_referenced_secrets_and_their_cacert_companions_reach_the_store() {
    let api = FakeApiServer::new();
    serve_basics(&api);
    apply(&api, [gateway(Some("gw-cert")), secret("gw-cert"), secret("gw-cert-cacert"), secret("database-password")]);
    let mut source = Source::start(&api, KubeOptions::default());

    let store = source.next_store().await;
    let names: Vec<&str> = store.secrets.keys().map(|k| k.name()).collect();
    assert_eq!(names, ["gw-cert", "gw-cert-cacert"]);
    assert!(store.secrets.keys().all(|k| k.namespace() == "istio-system"));
}

#[tokio::test(start_paused = true)]
async fn listed_namespaces_use_namespaced_urls_only() {
    let api = FakeApiServer::new();
    // An object in a namespace nobody asked for: the namespaced watches must never see it.
    apply(&api, [virtual_service("elsewhere", "stray", "/stray"), virtual_service("bookinfo", "reviews", "/reviews")]);
    let options = KubeOptions { namespaces: vec!["bookinfo".into(), "web".into()], ..KubeOptions::default() };
    let mut source = Source::start(&api, options);

    let store = source.next_store().await;
    assert_eq!(prefixes(&store), ["/reviews"]);
    // Recorded as `GET /path?query`.
    let requests: Vec<String> = api.requests().iter().map(|r| r.trim_start_matches("GET ").to_string()).collect();
    for plural in ["gateways", "virtualservices", "destinationrules", "serviceentries", "workloadentries"] {
        for ns in ["bookinfo", "web"] {
            let url = path(ISTIO, plural, Some(ns));
            assert!(requests.iter().any(|u| u.starts_with(&url)), "{url} not requested: {requests:?}");
        }
    }
    for url in [path("v1", "pods", Some("web")), path("discovery.k8s.io/v1", "endpointslices", Some("bookinfo"))] {
        assert!(requests.iter().any(|u| u.starts_with(&url)), "{url} not requested");
    }
    assert!(requests.iter().all(|u| u.contains("/namespaces/")), "a cluster-wide request: {requests:?}");
    let secrets = path("v1", "secrets", Some("istio-system"));
    assert!(requests.iter().any(|u| u.starts_with(&secrets)), "Secrets come from the gateway namespace");
}

#[tokio::test(start_paused = true)]
async fn an_outage_keeps_the_last_store_and_resumes_with_backoff() {
    let api = FakeApiServer::new();
    serve_basics(&api);
    let mut source = Source::start(&api, KubeOptions::default());
    source.next_store().await;

    // The API server becomes unreachable: the watches break, reconnects are refused, nothing
    // publishes.
    api.set_down(true);
    source.assert_quiet().await;
    let vs = source.kind("VirtualService");
    // One error for the broken watch, one per refused reconnect.
    let attempts = vs.errors["connect"];
    assert!(vs.failing && attempts >= 3, "{vs:?}");
    assert!(attempts < 15, "backoff spaces the retries out over 10s: {attempts} errors");

    // Back again: the watch resumes from its resourceVersion (no relist) and new events flow.
    api.set_down(false);
    api.apply(virtual_service("bookinfo", "reviews", "/after-outage")).unwrap();
    assert_eq!(prefixes(&source.next_store().await), ["/after-outage"]);
    assert!(!source.kind("VirtualService").failing);
    assert_eq!(api.list_count("virtualservices"), 1);
}

#[tokio::test(start_paused = true)]
async fn revision_selects_istio_config_by_label() {
    let labelled = |name: &str, rev: Option<&str>| {
        let mut vs = virtual_service("bookinfo", name, &format!("/{name}"));
        if let Some(rev) = rev {
            vs["metadata"]["labels"] = json!({ REVISION_LABEL: rev });
        }
        vs
    };
    let api = FakeApiServer::new();
    serve_basics(&api);
    // These three instead of the basics' VirtualService.
    assert!(api.delete(ISTIO, "VirtualService", "bookinfo", "reviews"));
    apply(&api, [labelled("canary", Some("canary")), labelled("stable", Some("stable")), labelled("plain", None)]);

    let mut canary = Source::start(&api, KubeOptions { revision: Some("canary".into()), ..KubeOptions::default() });
    assert_eq!(prefixes(&canary.next_store().await), ["/canary"]);
    let mut default = Source::start(&api, KubeOptions { revision: Some("default".into()), ..KubeOptions::default() });
    assert_eq!(prefixes(&default.next_store().await), ["/plain"]);
    let mut canary_only =
        Source::start(&api, KubeOptions { revision: Some("canary".into()), ..KubeOptions::default() });
    let store = canary_only.next_store().await;
    assert_eq!(store.services.len(), 1, "Services are never filtered by revision");
    let mut any = Source::start(&api, KubeOptions::default());
    assert_eq!(prefixes(&any.next_store().await), ["/canary", "/plain", "/stable"]);
}

#[tokio::test(start_paused = true)]
async fn istio_v1_missing_falls_back_to_v1beta1() {
    let api = FakeApiServer::new();
    serve_basics(&api);
    // Istio before 1.22: v1 answers 404.
    api.serve_istio_versions(&["v1beta1"]);
    let mut old = virtual_service("bookinfo", "reviews", "/old-istio");
    old["apiVersion"] = json!("networking.istio.io/v1beta1");
    api.apply(old).unwrap();
    let mut source = Source::start(&api, KubeOptions::default());

    let store = source.next_store().await;
    assert_eq!(prefixes(&store), ["/old-istio"]);
    assert!(store.diagnostics.items.is_empty(), "{:?}", store.diagnostics.items);
    assert!(source.kind("VirtualService").synced);
}

#[tokio::test(start_paused = true)]
async fn missing_istio_crds_still_publish_kubernetes_objects() {
    let api = FakeApiServer::new();
    serve_basics(&api);
    // No Istio CRDs at all: every version of its groups answers 404.
    api.serve_istio_versions(&[]);
    let mut source = Source::start(&api, KubeOptions::default());

    let store = source.next_store().await;
    assert_eq!((store.gateways.len(), store.services.len()), (0, 1));
    let gw = source.kind("Gateway");
    assert!(!gw.synced && gw.errors["not_found"] >= 2, "{gw:?}");
}

#[tokio::test(start_paused = true)]
async fn security_policies_in_the_gateway_namespace_are_read_and_deny() {
    let api = FakeApiServer::new();
    serve_basics(&api);
    let policy = json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "ingress-policy", "namespace": "istio-system", "resourceVersion": "1"},
        "spec": {
            "selector": {"matchLabels": {"app": "istio-ingressgateway"}},
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"ipBlocks": ["1.2.3.4"]}}]}]
        }
    });
    // Watched in the gateway's namespace even when every namespace is watched for routing.
    apply(&api, [policy]);
    let mut source = Source::start(&api, KubeOptions::default());
    let store = source.next_store().await;
    assert_eq!(store.authorization_policies.len(), 1);
    let (snapshot, diagnostics) = translate(&store, &Options::default());
    assert_eq!(snapshot.unenforced_policies.len(), 1);
    assert!(diagnostics.iter().any(|d| d.code == crate::diagnostics::codes::UNENFORCED), "{:?}", diagnostics.items);
}
