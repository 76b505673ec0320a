//! The Kubernetes mode end to end: `controller --kube` and `gateway --kube` against a fake
//! kube-apiserver over real HTTP ([`FakeApiServer`]), following changes through watches,
//! relists after `410 Expired`, outages and RBAC denials.

mod common;

use common::*;
use meshgate_e2e::prelude::*;
use serde_json::{json, Value};

fn vs_to(subset: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "hosts": ["*"],
            "gateways": ["istio-system/gw"],
            "http": [{"route": [{"destination": {"host": "reviews", "subset": subset}}]}],
        },
    })
}

/// A cluster with the ingress Gateway, Service `reviews` backed by a v1 and a v2 upstream
/// (a Pod and an EndpointSlice each), subsets by version and a VirtualService to v1.
struct Cluster {
    api: FakeApiServer,
    _v1: Upstream,
    _v2: Upstream,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let v1 = Upstream::new("reviews").version("v1").start().await;
        let v2 = Upstream::new("reviews").version("v2").start().await;
        let api = FakeApiServer::start().await;
        api.apply_yaml(&gateway("gw", 80, &["*"])).unwrap();
        api.apply_yaml(&backends("reviews", &[&v1, &v2])).unwrap();
        api.apply_yaml(&destination_rule("reviews", &["v1", "v2"], "")).unwrap();
        api.apply(vs_to("v1")).unwrap();
        let dir = tempfile::Builder::new().prefix("meshgate-kube-").tempdir().unwrap();
        Cluster { api, _v1: v1, _v2: v2, dir }
    }

    fn kubeconfig(&self) -> std::path::PathBuf {
        self.api.kubeconfig(self.dir.path())
    }

    /// List (not watch) requests of `plural` so far.
    fn lists(&self, plural: &str) -> usize {
        self.api.list_count(plural)
    }
}

/// (acked, current) of `name` in the controller's status.
async fn sync_state(controller: &ControllerProcess, name: &str) -> Option<(u64, u64)> {
    let status = controller.status().await.ok()?;
    let g = status["gateways"].as_array()?.iter().find(|g| g["name"] == name)?.clone();
    Some((g["acked"].as_u64()?, g["current"].as_u64()?))
}

/// The newest version the controller translated for any identity.
async fn newest_version(controller: &ControllerProcess) -> u64 {
    let status = controller.status().await.expect("controller status");
    status["versions"].as_object().map(|v| v.values().filter_map(Value::as_u64).max().unwrap_or(0)).unwrap_or(0)
}

/// Waits until the replica serves `version` and has acknowledged a controller version newer
/// than `before`.
async fn followed(controller: &ControllerProcess, gw: &GatewayProcess, name: &str, version: &str, before: u64) {
    assert_eventually!(
        Duration::from_secs(20),
        version_of(gw, 80, "/", "x").await,
        |v| v == version,
        "the gateway follows the cluster to {version}\n--- controller ---\n{}\n--- gateway ---\n{}",
        controller.stderr(),
        gw.stderr()
    );
    assert_eventually!(
        Duration::from_secs(10),
        sync_state(controller, name).await,
        |s| matches!(*s, Some((acked, current)) if acked == current && current > before),
        "{name} acknowledges a version newer than {before}: {:?}",
        controller.status().await
    );
}

#[tokio::test]
async fn controller_follows_the_cluster() {
    let cluster = Cluster::start().await;
    let controller = ControllerProcess::start_kube(&cluster.kubeconfig(), &[]).await.unwrap();
    let gw = replica(&controller, "kube-a").await;
    assert_eq!(version_of(&gw, 80, "/", "x").await, "v1");
    let status = controller.status().await.unwrap();
    assert!(!status["source"].is_null(), "the Kubernetes source reports its state: {status}");

    // A change arrives through the watch.
    let before = newest_version(&controller).await;
    cluster.api.apply(vs_to("v2")).unwrap();
    followed(&controller, &gw, "kube-a", "v2", before).await;

    // History is compacted: open watches end with 410, the watchers list again and keep
    // following.
    let lists = cluster.lists("virtualservices");
    cluster.api.expire_watches();
    assert_eventually!(
        Duration::from_secs(20),
        cluster.lists("virtualservices"),
        |n| *n > lists,
        "the VirtualService watcher relists after 410: {:?}",
        cluster.api.requests()
    );
    let before = newest_version(&controller).await;
    cluster.api.apply(vs_to("v1")).unwrap();
    followed(&controller, &gw, "kube-a", "v1", before).await;

    // The API server goes away: the controller reports it and keeps serving what it has.
    cluster.api.set_down(true);
    assert_eventually!(
        Duration::from_secs(30),
        {
            let text = controller.metrics().await.unwrap_or_default();
            let failing = metric_value(&text, "meshgate_kube_watch_failing", &[("kind", "VirtualService")]);
            (failing, metric_sum(&text, "meshgate_kube_watch_errors_total", &[("kind", "VirtualService")]))
        },
        |(failing, errors)| *failing == Some(1.0) && *errors > 0.0,
        "the outage shows in the controller's metrics:\n{}",
        controller.metrics().await.unwrap_or_default()
    );
    for _ in 0..5 {
        assert_eq!(version_of(&gw, 80, "/", "x").await, "v1", "traffic keeps flowing during the outage");
    }
    assert_eq!(get(controller.addr(), "/healthz/ready").send().await.unwrap().status, StatusCode::OK);

    // Back up: the watchers reconnect (after their backoff) and a change is followed again.
    cluster.api.set_down(false);
    let before = newest_version(&controller).await;
    cluster.api.apply(vs_to("v2")).unwrap();
    assert_eventually!(
        Duration::from_secs(60),
        version_of(&gw, 80, "/", "x").await,
        |v| v == "v2",
        "followed after the outage\n--- controller ---\n{}",
        controller.stderr()
    );
    followed(&controller, &gw, "kube-a", "v2", before).await;
    assert_eventually!(
        Duration::from_secs(10),
        {
            let text = controller.metrics().await.unwrap_or_default();
            metric_value(&text, "meshgate_kube_watch_failing", &[("kind", "VirtualService")])
        },
        |failing| *failing == Some(0.0),
        "recovered watches stop counting as failing"
    );
    // Losing the controller does not stop traffic.
    controller.kill();
    for _ in 0..5 {
        assert_eq!(version_of(&gw, 80, "/", "x").await, "v2", "the replica serves its last snapshot");
    }
    assert_eq!(gw.ready_status().await, Some(200));
}

#[tokio::test]
async fn embedded_gateway_kube() {
    let cluster = Cluster::start().await;
    let gw = GatewayProcess::builder()
        .ports(&[80])
        .arg("--kube")
        .env("KUBECONFIG", cluster.kubeconfig())
        .start()
        .await
        .expect("gateway --kube becomes ready from the cluster");
    assert_eq!(version_of(&gw, 80, "/", "x").await, "v1");

    cluster.api.apply(vs_to("v2")).unwrap();
    assert_eventually!(
        Duration::from_secs(20),
        version_of(&gw, 80, "/", "x").await,
        |v| v == "v2",
        "follows a change\n{}",
        gw.stderr()
    );

    // A deletion arrives as DELETED: no VirtualService binds the Gateway any more.
    assert!(cluster.api.delete("networking.istio.io/v1", "VirtualService", "default", "reviews"));
    let _ = assert_eventually!(
        Duration::from_secs(20),
        get(gw.addr(80), "/").host("x").send().await.map(|r| r.status),
        |r| r.as_ref().is_ok_and(|s| *s == StatusCode::NOT_FOUND),
        "the deleted route is gone\n{}",
        gw.stderr()
    );
    // The source's health is exported once a second.
    assert_eventually!(
        Duration::from_secs(5),
        {
            let text = metrics(gw.metrics_addr()).await.unwrap_or_default();
            metric_value(&text, "meshgate_kube_watch_synced", &[("kind", "VirtualService")])
        },
        |synced| *synced == Some(1.0),
        "the gateway exports the source's health:\n{}",
        metrics(gw.metrics_addr()).await.unwrap_or_default()
    );
}

/// `gateway --kube` takes the controller's source flags: with `--revision default`, config
/// labelled for another revision does not apply (Istio's revision filter).
#[tokio::test]
async fn embedded_gateway_kube_takes_the_revision_flag() {
    let cluster = Cluster::start().await;
    let canary = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        // Created at the same time as the catch-all `reviews` (the fake API server's clock) and
        // ordered before it by name, so its route comes first when both apply.
        "metadata": {"name": "a-canary", "namespace": "default", "labels": {"istio.io/rev": "canary"}},
        "spec": {
            "hosts": ["*"],
            "gateways": ["istio-system/gw"],
            "http": [{"match": [{"uri": {"prefix": "/canary"}}],
                      "route": [{"destination": {"host": "reviews", "subset": "v2"}}]}],
        },
    });
    cluster.api.apply(canary).unwrap();
    let start = |revision: Option<&'static str>| {
        let mut b = GatewayProcess::builder().ports(&[80]).arg("--kube").env("KUBECONFIG", cluster.kubeconfig());
        if let Some(r) = revision {
            b = b.args(["--revision", r]);
        }
        b.start()
    };
    let all = start(None).await.expect("gateway --kube becomes ready");
    assert_eq!(version_of(&all, 80, "/canary", "x").await, "v2", "without a revision every VirtualService applies");
    let default_only = start(Some("default")).await.expect("gateway --kube --revision default becomes ready");
    assert_eq!(version_of(&default_only, 80, "/canary", "x").await, "v1", "the canary's VirtualService is left out");
}

#[tokio::test]
async fn a_forbidden_kind_does_not_block() {
    let cluster = Cluster::start().await;
    cluster.api.forbid("secrets");
    let controller = ControllerProcess::start_kube(&cluster.kubeconfig(), &[]).await.unwrap();
    let gw = replica(&controller, "kube-no-secrets").await;
    assert_eq!(version_of(&gw, 80, "/", "x").await, "v1");
    assert_eventually!(
        Duration::from_secs(10),
        {
            let text = controller.metrics().await.unwrap_or_default();
            metric_sum(&text, "meshgate_kube_watch_errors_total", &[("kind", "Secret"), ("reason", "forbidden")])
        },
        |errors| *errors > 0.0,
        "the denial is counted:\n{}",
        controller.metrics().await.unwrap_or_default()
    );
    assert!(
        cluster
            .api
            .requests()
            .iter()
            .all(|r| !r.contains("/secrets") || r.contains("/namespaces/istio-system/secrets")),
        "Secrets are read only in the gateway namespace: {:?}",
        cluster.api.requests()
    );

    // Other kinds keep following.
    let before = newest_version(&controller).await;
    cluster.api.apply(vs_to("v2")).unwrap();
    followed(&controller, &gw, "kube-no-secrets", "v2", before).await;

    // Granting the permission later: the retrying watch lists Secrets (after its backoff).
    cluster.api.allow("secrets");
    assert_eventually!(
        Duration::from_secs(60),
        {
            let text = controller.metrics().await.unwrap_or_default();
            let synced = metric_value(&text, "meshgate_kube_watch_synced", &[("kind", "Secret")]);
            (synced, metric_value(&text, "meshgate_kube_watch_failing", &[("kind", "Secret")]))
        },
        |(synced, failing)| *synced == Some(1.0) && *failing == Some(0.0),
        "Secrets sync once allowed:\n{}",
        controller.metrics().await.unwrap_or_default()
    );
}

#[tokio::test]
async fn istio_before_v1_falls_back_to_v1beta1() {
    let cluster = Cluster::start().await;
    cluster.api.serve_istio_versions(&["v1beta1"]);
    let controller = ControllerProcess::start_kube(&cluster.kubeconfig(), &[]).await.unwrap();
    let gw = replica(&controller, "kube-old-istio").await;
    assert_eq!(version_of(&gw, 80, "/", "x").await, "v1");
    cluster.api.apply(vs_to("v2")).unwrap();
    assert_eventually!(
        Duration::from_secs(20),
        version_of(&gw, 80, "/", "x").await,
        |v| v == "v2",
        "follows through v1beta1\n{}",
        controller.stderr()
    );
    assert!(cluster.api.requests().iter().any(|r| r.contains("/apis/networking.istio.io/v1beta1/virtualservices")));
}

#[tokio::test]
async fn the_controller_waits_for_the_api_server() {
    let cluster = Cluster::start().await;
    cluster.api.set_down(true);
    let kubeconfig = cluster.kubeconfig();
    let starting = tokio::spawn(async move { ControllerProcess::start_kube(&kubeconfig, &[]).await });
    assert_eventually!(
        Duration::from_secs(20),
        cluster.api.refused_connections(),
        |n| *n >= 3,
        "the controller tries the API server"
    );
    assert!(!starting.is_finished(), "not ready without the cluster");
    cluster.api.set_down(false);
    let controller = starting.await.unwrap().expect("ready once the API server answers");
    let gw = replica(&controller, "kube-late").await;
    assert_eq!(version_of(&gw, 80, "/", "x").await, "v1");
}

#[tokio::test]
async fn watching_listed_namespaces_only() {
    let cluster = Cluster::start().await;
    // A more specific host in a namespace that is not watched would route to v2.
    let mut other = vs_to("v2");
    other["metadata"] = json!({"name": "other", "namespace": "other"});
    other["spec"]["hosts"] = json!(["other.example.com"]);
    other["spec"]["http"][0]["route"][0]["destination"]["host"] = json!("reviews.default.svc.cluster.local");
    cluster.api.apply(other.clone()).unwrap();

    let controller =
        ControllerProcess::start_kube(&cluster.kubeconfig(), &["--watch-namespaces", "default,istio-system"])
            .await
            .unwrap();
    let gw = replica(&controller, "kube-scoped").await;
    assert_eq!(version_of(&gw, 80, "/", "x").await, "v1");
    let requests = cluster.api.requests();
    assert!(requests.iter().any(|r| r.contains("/apis/networking.istio.io/v1/namespaces/default/virtualservices?")));
    assert!(
        !requests.iter().any(|r| r.contains("/apis/networking.istio.io/v1/virtualservices?")),
        "no cluster-wide watch: {requests:?}"
    );

    // A later change in a watched namespace is followed, so the store is current; the object
    // in `other` is still not part of it.
    let mut probe = vs_to("v2");
    probe["metadata"]["name"] = json!("probe");
    probe["spec"]["hosts"] = json!(["probe.example.com"]);
    cluster.api.apply(other).unwrap();
    cluster.api.apply(probe).unwrap();
    assert_eventually!(Duration::from_secs(20), version_of(&gw, 80, "/", "probe.example.com").await, |v| v == "v2");
    assert_eq!(version_of(&gw, 80, "/", "other.example.com").await, "v1", "the unwatched namespace is ignored");
}

#[tokio::test]
async fn credentials_come_from_secrets_in_the_gateway_namespace() {
    const HOST: &str = "bookinfo.example.com";
    let cluster = Cluster::start().await;
    let gateway = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "istio-system"},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]},
                {
                    "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                    "hosts": [HOST],
                    "tls": {"mode": "SIMPLE", "credentialName": "bookinfo-cred"},
                },
            ],
        },
    });
    cluster.api.apply(gateway).unwrap();
    let first = TestCa::new("first ca");
    cluster
        .api
        .apply_yaml(&tls_secret_yaml("bookinfo-cred", "istio-system", &first.issue_server(&[HOST]), None))
        .unwrap();
    let gw = GatewayProcess::builder()
        .ports(&[80, 443])
        .arg("--kube")
        .env("KUBECONFIG", cluster.kubeconfig())
        .start()
        .await
        .expect("gateway --kube becomes ready");
    let https = |ca: &TestCa| get(gw.addr(443), "/").https().host(HOST).ca_pem(ca.cert_pem()).send();
    let r = https(&first).await.expect("HTTPS with the Secret's certificate");
    assert_eq!((r.status, r.echo().unwrap().version.as_str()), (StatusCode::OK, "v1"));

    // Rotation: the new certificate is served once the Secret changes.
    let second = TestCa::new("second ca");
    cluster
        .api
        .apply_yaml(&tls_secret_yaml("bookinfo-cred", "istio-system", &second.issue_server(&[HOST]), None))
        .unwrap();
    let _ = assert_eventually!(
        Duration::from_secs(20),
        https(&second).await.map(|r| r.status),
        |r| r.as_ref().is_ok_and(|s| *s == StatusCode::OK),
        "the rotated certificate is served\n{}",
        gw.stderr()
    );
    assert!(https(&first).await.is_err(), "the old certificate is gone");
}

/// kube's watcher reports nothing when a watch restarts successfully after `WatchStartFailed`,
/// so a kind that does not change is heard from only through its errors: it stops counting as
/// failing once no error came for longer than kube's backoff cap (`FAILING_FOR`, 65 s). This
/// test therefore takes over a minute; the suites run in parallel, so it costs no wall time.
#[tokio::test]
async fn a_resumed_watch_stops_counting_as_failing() {
    let cluster = Cluster::start().await;
    let controller = ControllerProcess::start_kube(&cluster.kubeconfig(), &[]).await.unwrap();
    let failing = |kind: &'static str| {
        let controller = &controller;
        async move {
            let text = controller.metrics().await.unwrap_or_default();
            metric_value(&text, "meshgate_kube_watch_failing", &[("kind", kind)])
        }
    };
    // Pods relist (410), then starting the watch is refused: the watch restarts fail.
    cluster.api.forbid_watch("pods");
    cluster.api.expire_watches();
    assert_eventually!(
        Duration::from_secs(20),
        {
            let text = controller.metrics().await.unwrap_or_default();
            let errors =
                metric_sum(&text, "meshgate_kube_watch_errors_total", &[("kind", "Pod"), ("reason", "forbidden")]);
            (errors, failing("Pod").await)
        },
        |(errors, failing)| *errors > 0.0 && *failing == Some(1.0)
    );
    // Watching is allowed again and the watch resumes, with no Pod changing.
    let watches = cluster.api.watch_count("pods");
    cluster.api.allow("pods");
    assert_eventually!(
        Duration::from_secs(60),
        cluster.api.watch_count("pods"),
        |n| *n > watches,
        "the watch is retried"
    );
    assert_eventually!(
        Duration::from_secs(100),
        failing("Pod").await,
        |failing| *failing == Some(0.0),
        "the resumed Pod watch still counts as failing:\n{}\n{:?}",
        controller.metrics().await.unwrap_or_default(),
        cluster.api.requests().iter().filter(|r| r.contains("/pods")).collect::<Vec<_>>()
    );
}
