//! The fake against plain HTTP requests (what kube-rs sends), and the in-process transport.

use super::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn get(api: &FakeApiServer, path: &str) -> (u16, Value) {
    let r = client().get(format!("{}{path}", api.url())).bearer_auth(FAKE_API_TOKEN).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Reads watch events until `n` arrived or the stream ended.
async fn events(r: &mut reqwest::Response, n: usize) -> Vec<Value> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let Some(chunk) = r.chunk().await.unwrap() else { break };
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            out.push(serde_json::from_slice(&line).unwrap());
        }
    }
    out
}

async fn watch(api: &FakeApiServer, path_and_query: &str) -> reqwest::Response {
    let r = client().get(format!("{}{path_and_query}", api.url())).bearer_auth(FAKE_API_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["transfer-encoding"], "chunked");
    r
}

fn svc(name: &str, ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": {}})
}

#[tokio::test]
async fn lists_by_namespace_and_version() {
    let api = FakeApiServer::start().await;
    api.apply(svc("a", "default")).unwrap();
    api.apply(svc("b", "other")).unwrap();
    let vs = json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                    "metadata": {"name": "r", "namespace": "default"}, "spec": {}});
    let rv = api.apply(vs).unwrap();

    let (code, all) = get(&api, "/api/v1/services").await;
    assert_eq!(code, 200);
    assert_eq!(all["kind"], "ServiceList");
    assert_eq!(all["metadata"]["resourceVersion"], rv.to_string());
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    assert!(all["items"][0].get("kind").is_none(), "built-in list items carry no kind");
    let (_, one) = get(&api, "/api/v1/namespaces/other/services").await;
    assert_eq!(one["items"].as_array().unwrap().len(), 1);
    assert_eq!(one["items"][0]["metadata"]["name"], "b");
    assert!(one["items"][0]["metadata"]["uid"].is_string());

    // Istio objects are served in every version, as the API server converts them.
    let (_, v1) = get(&api, "/apis/networking.istio.io/v1/namespaces/default/virtualservices").await;
    assert_eq!(v1["items"][0]["apiVersion"], "networking.istio.io/v1");
    let (_, beta) = get(&api, "/apis/networking.istio.io/v1beta1/virtualservices").await;
    assert_eq!(beta["items"][0]["apiVersion"], "networking.istio.io/v1beta1");
    api.serve_istio_versions(&["v1beta1"]);
    let (code, status) = get(&api, "/apis/networking.istio.io/v1/virtualservices").await;
    assert_eq!((code, status["reason"].as_str()), (404, Some("NotFound")));
    let (code, _) = get(&api, "/apis/example.com/v1/widgets").await;
    assert_eq!(code, 404);

    api.forbid("secrets");
    let (code, status) = get(&api, "/api/v1/namespaces/istio-system/secrets").await;
    assert_eq!((code, status["reason"].as_str(), status["code"].as_u64()), (403, Some("Forbidden"), Some(403)));
    let r = client().get(format!("{}/api/v1/pods", api.url())).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token");
}

#[tokio::test]
async fn watches_stream_changes_after_the_resource_version() {
    let api = FakeApiServer::start().await;
    api.apply(svc("a", "default")).unwrap();
    let listed = api.resource_version();
    api.apply(svc("b", "default")).unwrap(); // between list and watch: in the backlog
    let mut w = watch(&api, &format!("/api/v1/namespaces/default/services?watch=true&resourceVersion={listed}")).await;
    api.apply(svc("c", "other")).unwrap(); // another namespace: not seen
    api.apply(svc("a", "default")).unwrap();
    assert!(api.delete("v1", "Service", "default", "b"));
    let got = events(&mut w, 3).await;
    let summary: Vec<(String, String)> = got
        .iter()
        .map(|e| {
            (e["type"].as_str().unwrap().to_string(), e["object"]["metadata"]["name"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        summary,
        [("ADDED".into(), "b".into()), ("MODIFIED".into(), "a".into()), ("DELETED".into(), "b".into())]
    );
    assert_eq!(got[0]["object"]["kind"], "Service");
    let rvs: Vec<u64> =
        got.iter().map(|e| e["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()).collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");

    // Compaction: open watches end with 410, and old resourceVersions are refused.
    api.expire_watches();
    let got = events(&mut w, 2).await;
    assert_eq!(got.len(), 1, "one ERROR, then the end: {got:?}");
    assert_eq!((got[0]["type"].as_str(), got[0]["object"]["code"].as_u64()), (Some("ERROR"), Some(410)));
    let mut old = watch(&api, &format!("/api/v1/services?watch=true&resourceVersion={listed}")).await;
    assert_eq!(events(&mut old, 2).await[0]["object"]["reason"], "Expired");

    // timeoutSeconds ends the stream; resourceVersion 0 starts with every object.
    let mut short = watch(&api, "/api/v1/services?watch=true&resourceVersion=0&timeoutSeconds=1").await;
    let got = events(&mut short, 10).await;
    assert_eq!(got.len(), 2, "a and c as ADDED, then the end: {got:?}");
}

#[tokio::test]
async fn bookmarks_and_outages() {
    let api = FakeApiServer::start().await;
    let rv = api.apply(svc("a", "default")).unwrap();
    let mut w =
        watch(&api, &format!("/api/v1/services?watch=true&resourceVersion={rv}&allowWatchBookmarks=true")).await;
    let got = events(&mut w, 1).await;
    assert_eq!(got[0]["type"], "BOOKMARK");
    assert_eq!(got[0]["object"]["metadata"]["resourceVersion"], rv.to_string());

    api.set_down(true);
    assert!(w.chunk().await.is_err() || w.chunk().await.is_err(), "the open watch breaks");
    let refused = client().get(format!("{}/api/v1/services", api.url())).bearer_auth(FAKE_API_TOKEN).send().await;
    assert!(refused.is_err(), "connections are closed while down");
    api.set_down(false);
    let (code, _) = get(&api, "/api/v1/services").await;
    assert_eq!(code, 200);
}

/// The in-process transport serves the same cluster, without a token, and shows an outage as
/// refused requests and broken watches.
#[tokio::test]
async fn in_process_service_answers_and_breaks_when_down() {
    use tower_service::Service as _;
    let api = FakeApiServer::new();
    api.apply(svc("a", "default")).unwrap();
    let mut service = api.service();
    let get = |uri: &str| Request::get(uri).body(()).unwrap();

    let response = service.call(get("/api/v1/namespaces/default/services")).await.unwrap();
    assert_eq!(response.status(), 200);
    let list: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(list["items"][0]["metadata"]["name"], "a");

    let rv = api.resource_version();
    let mut watch = service.call(get(&format!("/api/v1/services?watch=true&resourceVersion={rv}"))).await.unwrap();
    api.apply(svc("b", "default")).unwrap();
    let frame = watch.body_mut().frame().await.unwrap().unwrap().into_data().unwrap();
    let event: Value = serde_json::from_slice(&frame).unwrap();
    assert_eq!((event["type"].as_str(), event["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("b")));

    api.set_down(true);
    assert!(watch.body_mut().frame().await.unwrap().is_err(), "the open watch breaks");
    let refused = service.call(get("/api/v1/services")).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(api.refused_connections(), 1);
    api.set_down(false);
    assert_eq!(service.call(get("/api/v1/services")).await.unwrap().status(), 200);
    assert_eq!((api.list_count("services"), api.watch_count("services")), (2, 1));
}
