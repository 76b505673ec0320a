//! Snapshot distribution: a `controller` serves versions to `gateway --controller` replicas,
//! records what each acknowledged, and losing it never stops traffic.

mod common;

use common::*;
use meshgate_e2e::prelude::*;

/// (acked, current, state) of `name` in the controller's status.
async fn sync_state(controller: &ControllerProcess, name: &str) -> Option<(u64, u64, bool)> {
    let status = controller.status().await.ok()?;
    let g = status["gateways"].as_array()?.iter().find(|g| g["name"] == name)?.clone();
    Some((g["acked"].as_u64()?, g["current"].as_u64()?, g["connected"].as_bool()?))
}

/// A log without its terminal colours (`tracing`'s formatter adds them even to pipes).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(start) = rest.find('\x1b') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn replicas_follow_the_controller_and_acknowledge_versions() {
    let (_v1, _v2, cfg) = reviews_v1_v2().await;
    let controller = ControllerProcess::start(cfg.path(), None).await.unwrap();
    let a = replica(&controller, "gw-a").await;
    let b = replica(&controller, "gw-b").await;
    assert_eq!(version_of(&a, 80, "/", "x").await, "v1");
    assert_eq!(version_of(&b, 80, "/", "x").await, "v1");

    cfg.write("vs.yaml", &reviews_to("v2")).unwrap();
    for gw in [&a, &b] {
        assert_eventually!(Duration::from_secs(10), version_of(gw, 80, "/", "x").await, |v| v == "v2");
    }
    // Both acknowledge the new version: the controller's status shows them in sync.
    for name in ["gw-a", "gw-b"] {
        assert_eventually!(
            Duration::from_secs(10),
            sync_state(&controller, name).await,
            |s| matches!(*s, Some((acked, current, true)) if acked == current && current >= 2),
            "{name} acknowledges the current version: {:?}",
            controller.status().await
        );
    }
    // The replica reports the same version it serves.
    let served = metric_value(&metrics(a.metrics_addr()).await.unwrap(), "meshgate_config_version", &[]).unwrap();
    assert_eq!(Some(served as u64), sync_state(&controller, "gw-a").await.map(|s| s.1));
    // The first version came whole; the edit came as a delta from the version each replica
    // held, and both replicas built the same routes from it (asserted above).
    for gw in [&a, &b] {
        let log = plain(&gw.stderr());
        assert!(log.contains("snapshot received from the controller version=1 delta=false"), "{log}");
        assert!(log.contains("delta=true"), "the edit arrives as a delta\n{log}");
    }
    let pushed = metric_value(&controller.metrics().await.unwrap(), "meshgate_controller_delta_pushes_total", &[]);
    assert!(pushed >= Some(2.0), "{pushed:?}");
}

#[tokio::test]
async fn losing_the_controller_keeps_the_last_snapshot_serving() {
    let (_v1, _v2, cfg) = reviews_v1_v2().await;
    let addr = free_addr();
    let controller = ControllerProcess::start(cfg.path(), Some(addr)).await.unwrap();
    let gw = replica(&controller, "gw-lonely").await;
    assert_eq!(version_of(&gw, 80, "/", "x").await, "v1");

    controller.kill();
    assert_eventually!(
        Duration::from_secs(20),
        metric_value(&metrics(gw.metrics_addr()).await.unwrap(), "meshgate_controller_connected", &[]),
        |v| *v == Some(0.0),
        "the replica notices the controller is gone"
    );
    for _ in 0..5 {
        assert_eq!(version_of(&gw, 80, "/", "x").await, "v1", "traffic keeps flowing on the last snapshot");
    }
    assert_eq!(gw.ready_status().await, Some(200), "still ready: it serves");

    // A new controller (same address, config changed meanwhile) is found again; its versions
    // restart at 1 but come from another process, so the replica takes them.
    cfg.write("vs.yaml", &reviews_to("v2")).unwrap();
    let again = ControllerProcess::start(cfg.path(), Some(addr)).await.unwrap();
    assert_eventually!(
        Duration::from_secs(40),
        version_of(&gw, 80, "/", "x").await,
        |v| v == "v2",
        "reconnects with backoff and applies the new controller's snapshot\n{}",
        gw.stderr()
    );
    assert!(gw.stderr().contains("controller unreachable"), "the outage is logged");
    drop(again);
}

#[tokio::test]
async fn a_wrong_token_is_refused() {
    let (_v1, _v2, cfg) = reviews_v1_v2().await;
    let controller = ControllerProcess::start(cfg.path(), None).await.unwrap();
    let bad = ConfigDir::with_files(&[("token", "not-the-right-token-at-all")]).unwrap();
    let gw = GatewayProcess::builder()
        .ports(&[80])
        .controller(controller.url(), bad.file("token"), "intruder")
        .start_unready()
        .await
        .unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        gw.stderr(),
        |log| log.contains("401"),
        "the refusal is logged: {}",
        gw.stderr()
    );
    assert_eq!(gw.ready_status().await, Some(503), "nothing to serve without a snapshot");
    let status = controller.status().await.unwrap();
    assert!(
        status["gateways"].as_array().unwrap().iter().all(|g| g["name"] != "intruder"),
        "unauthenticated polls are not recorded"
    );
    // Status and snapshots need the token; readiness does not.
    let r = get(controller.addr(), "/v1/status").send().await.unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn each_identity_gets_its_own_translation() {
    // An egress gateway (istio=egressgateway) polling the same controller must not receive
    // the ingress Gateway's listeners.
    let (_v1, _v2, cfg) = reviews_v1_v2().await;
    let controller = ControllerProcess::start(cfg.path(), None).await.unwrap();
    let ingress = replica(&controller, "ingress-1").await;
    assert_eq!(version_of(&ingress, 80, "/", "x").await, "v1");
    let egress = GatewayProcess::builder()
        .ports(&[80])
        .labels("istio=egressgateway,app=istio-egressgateway")
        .controller(controller.url(), controller.token_file(), "egress-1")
        .start_unready()
        .await
        .unwrap();
    assert_eventually!(Duration::from_secs(10), sync_state(&controller, "egress-1").await, Option::is_some);
    let status = controller.status().await.unwrap();
    let versions = status["versions"].as_object().unwrap();
    assert!(versions.keys().any(|k| k.contains("istio=egressgateway")), "{versions:?}");
    assert!(get(egress.addr(80), "/").host("x").send().await.is_err(), "no listener for the egress identity");
}

/// A VirtualService `name` for host `host`, to `subset` of reviews.
fn host_to(name: &str, host: &str, subset: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: ["{host}"]
  gateways: ["istio-system/gw"]
  http:
  - route: [{{destination: {{host: reviews, subset: {subset}}}}}]
"#
    )
}

#[tokio::test]
async fn a_replica_that_followed_deltas_holds_what_a_fresh_one_gets_whole() {
    let (v1, v2, cfg) = reviews_v1_v2().await;
    let controller = ControllerProcess::start(cfg.path(), None).await.unwrap();
    let follower = replica(&controller, "gw-follower").await;
    // Each edit touches another part of the snapshot: virtual hosts added, changed and
    // removed, a cluster's endpoints and load balancer, a Gateway server's hosts.
    let edits: Vec<Box<dyn Fn() + '_>> = vec![
        Box::new(|| drop(cfg.write("h1.yaml", &host_to("h1", "h1.example.com", "v2")))),
        Box::new(|| drop(cfg.write("h2.yaml", &host_to("h2", "h2.example.com", "v1")))),
        Box::new(|| drop(cfg.write("vs.yaml", &reviews_to("v2")))),
        Box::new(|| drop(cfg.remove("h1.yaml"))),
        Box::new(|| drop(cfg.write("svc.yaml", &backends("reviews", &[&v1])))),
        Box::new(|| {
            drop(cfg.write(
                "dr.yaml",
                &destination_rule("reviews", &["v1", "v2"], "    loadBalancer:\n      simple: ROUND_ROBIN"),
            ))
        }),
        Box::new(|| drop(cfg.write("gw.yaml", &gateway("gw", 80, &["*", "extra.example.com"])))),
        Box::new(|| drop(cfg.write("svc.yaml", &backends("reviews", &[&v1, &v2])))),
    ];
    for (i, edit) in edits.iter().enumerate() {
        let before = sync_state(&controller, "gw-follower").await.expect("the follower is known").1;
        edit();
        assert_eventually!(
            Duration::from_secs(10),
            sync_state(&controller, "gw-follower").await,
            |s| matches!(*s, Some((acked, current, _)) if current > before && acked == current),
            "edit {i} is published and applied: {:?}",
            controller.status().await
        );
    }
    let log = plain(&follower.stderr());
    assert!(log.matches("delta=true").count() >= edits.len(), "the follower took the edits as deltas\n{log}");

    let fresh = replica(&controller, "gw-fresh").await;
    assert!(plain(&fresh.stderr()).contains("delta=false"));
    let dump = |gw: &GatewayProcess| {
        let addr = gw.admin_addr();
        async move { get(addr, "/config_dump").send().await.unwrap().text() }
    };
    let (followed, whole) = (dump(&follower).await, dump(&fresh).await);
    assert!(followed.contains("extra.example.com") && followed.contains("h2.example.com"));
    assert!(!followed.contains("h1.example.com"));
    assert_eq!(followed, whole, "the same version, built from deltas and whole");
}
