//! DestinationRule load balancing end to end: simple policies, consistent hashing by header,
//! cookie, source IP and query parameter, precedence of subset/port settings, and LB state
//! surviving a snapshot swap.

mod common;

use common::*;
use meshgate_e2e::prelude::*;
use std::collections::HashMap;

const VS: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: app, namespace: default}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - match: [{uri: {prefix: /subset}}]
    route: [{destination: {host: app, subset: v1}}]
  - route: [{destination: {host: app}}]
"#;

/// Three pods of `app` (pod names p0..p2, versions v1, v1, v2) and a DestinationRule whose
/// trafficPolicy block is `policy`.
async fn setup(policy: &str) -> (Vec<Upstream>, ConfigDir) {
    let mut ups = Vec::new();
    for (i, v) in ["v1", "v1", "v2"].iter().enumerate() {
        ups.push(Upstream::new("app").version(*v).pod(format!("p{i}")).start().await);
    }
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write("app.yaml", &backends("app", &ups.iter().collect::<Vec<_>>())).unwrap();
    cfg.write("dr.yaml", &destination_rule("app", &["v1", "v2"], policy)).unwrap();
    cfg.write("vs.yaml", VS).unwrap();
    (ups, cfg)
}

async fn pod(client: &HttpClient, gw: &GatewayProcess, path: &str, headers: &[(&str, &str)]) -> (String, Response) {
    let mut req = client.get(gw.addr(80), path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    (r.echo().unwrap().pod.unwrap_or_default(), r)
}

#[tokio::test]
async fn round_robin_rotates_and_survives_unrelated_config_changes() {
    let (_ups, cfg) = setup("    loadBalancer: {simple: ROUND_ROBIN}").await;
    let gw = start(&cfg, &[80]).await;
    let client = HttpClient::pooled();
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(pod(&client, &gw, "/", &[]).await.0);
    }
    assert_eq!(seen[0..3], seen[3..6], "strict rotation: {seen:?}");
    let mut distinct = seen[0..3].to_vec();
    distinct.sort();
    assert_eq!(distinct, ["p0", "p1", "p2"]);

    // An unrelated change (a new Gateway) swaps the snapshot; the app cluster is unchanged,
    // so its round-robin position continues instead of restarting.
    let before = pod(&client, &gw, "/", &[]).await.0;
    let version = |m: String| metric_value(&m, "meshgate_config_version", &[]).unwrap_or(0.0);
    let v0 = version(metrics(gw.metrics_addr()).await.unwrap());
    cfg.write("other.yaml", &gateway("other", 80, &["other.example.com"])).unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        version(metrics(gw.metrics_addr()).await.unwrap()),
        |v| *v > v0,
        "config change was not picked up"
    );
    let after = pod(&client, &gw, "/", &[]).await.0;
    let pos = |p: &str| seen[0..3].iter().position(|x| x == p).unwrap();
    assert_eq!(pos(&after), (pos(&before) + 1) % 3, "rotation continued across the swap");
}

#[tokio::test]
async fn least_conn_spreads_over_all_endpoints() {
    let (_ups, cfg) = setup("    loadBalancer: {simple: LEAST_CONN}").await;
    let gw = start(&cfg, &[80]).await;
    let dump = admin_get(gw.admin_addr(), "/config_dump").await.unwrap().text();
    assert!(dump.contains("least_request"), "LEAST_CONN becomes least request");
    let client = HttpClient::pooled();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..300 {
        *counts.entry(pod(&client, &gw, "/", &[]).await.0).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|c| *c >= 40), "{counts:?}");
}

#[tokio::test]
async fn subsets_select_endpoints_by_labels() {
    let (_ups, cfg) = setup("    loadBalancer: {simple: RANDOM}").await;
    let gw = start(&cfg, &[80]).await;
    let client = HttpClient::pooled();
    for _ in 0..30 {
        let (p, _) = pod(&client, &gw, "/subset", &[]).await;
        assert!(p == "p0" || p == "p1", "subset v1 has only p0 and p1, got {p}");
    }
}

#[tokio::test]
async fn consistent_hash_by_header_is_sticky() {
    let (_ups, cfg) =
        setup("    loadBalancer:\n      consistentHash:\n        httpHeaderName: x-user\n        ringHash: {minimumRingSize: 1024}")
            .await;
    let gw = start(&cfg, &[80]).await;
    let client = HttpClient::pooled();
    let mut owners = HashMap::new();
    for user in 0..40 {
        let id = format!("user-{user}");
        let (first, _) = pod(&client, &gw, "/", &[("x-user", &id)]).await;
        for _ in 0..3 {
            assert_eq!(pod(&client, &gw, "/", &[("x-user", &id)]).await.0, first, "{id} moved");
        }
        owners.insert(id, first);
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert!(distinct.len() >= 2, "40 users all hashed to one pod: {owners:?}");
}

#[tokio::test]
async fn consistent_hash_by_cookie_sets_it_when_absent() {
    let (_ups, cfg) = setup(
        "    loadBalancer:\n      consistentHash:\n        httpCookie: {name: session, ttl: 3600s, path: /}\n        maglev: {tableSize: 65537}",
    )
    .await;
    let gw = start(&cfg, &[80]).await;
    let client = HttpClient::pooled();
    let (first, r) = pod(&client, &gw, "/", &[]).await;
    let set = r.header("set-cookie").expect("cookie set when absent").to_string();
    assert!(set.starts_with("session=") && set.contains("Max-Age=3600") && set.contains("Path=/"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    for _ in 0..10 {
        let (p, r) = pod(&client, &gw, "/", &[("cookie", &cookie)]).await;
        assert_eq!(p, first, "the cookie pins the pod");
        assert!(r.header("set-cookie").is_none(), "no new cookie when the request has one");
    }
}

#[tokio::test]
async fn consistent_hash_by_source_ip_and_query_parameter() {
    let (_ups, cfg) = setup("    loadBalancer:\n      consistentHash: {useSourceIp: true}").await;
    let gw = start(&cfg, &[80]).await;
    let first = pod(&HttpClient::fresh(), &gw, "/", &[]).await.0;
    for _ in 0..10 {
        assert_eq!(pod(&HttpClient::fresh(), &gw, "/", &[]).await.0, first, "same client IP, same pod");
    }

    let (_ups2, cfg2) = setup("    loadBalancer:\n      consistentHash: {httpQueryParameterName: user}").await;
    let gw2 = start(&cfg2, &[80]).await;
    let client = HttpClient::pooled();
    let mut distinct = std::collections::HashSet::new();
    for u in 0..30 {
        let path = format!("/?user={u}");
        let p = pod(&client, &gw2, &path, &[]).await.0;
        assert_eq!(pod(&client, &gw2, &path, &[]).await.0, p);
        distinct.insert(p);
    }
    assert!(distinct.len() >= 2);
}

#[tokio::test]
async fn subset_policy_overrides_top_level_policy() {
    // Top level: hash on x-user (sticky); subset v1: ROUND_ROBIN (alternates p0/p1).
    let policy = "    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}";
    let (_ups, cfg) = setup(policy).await;
    cfg.write(
        "dr.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: app, namespace: default}
spec:
  host: app
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[80]).await;
    let client = HttpClient::pooled();
    let a = pod(&client, &gw, "/subset", &[("x-user", "same")]).await.0;
    let b = pod(&client, &gw, "/subset", &[("x-user", "same")]).await.0;
    assert_ne!(a, b, "subset round robin ignores the hash header");
    let c = pod(&client, &gw, "/", &[("x-user", "same")]).await.0;
    assert_eq!(pod(&client, &gw, "/", &[("x-user", "same")]).await.0, c, "top level hashes");
}
