//! A fake Kubernetes API server over real HTTP, for running `controller --kube` and
//! `gateway --kube` end to end.
//!
//! It speaks enough of the real API for kube-rs's watcher: list and watch (by URL path,
//! cluster-wide and per namespace) of every kind meshgate watches, with a global
//! resourceVersion, newline-delimited JSON watch events over a chunked response, BOOKMARKs,
//! `timeoutSeconds`, `410 Expired` after compaction, and `Status` bodies for 401/403/404.
//! Tests change the "cluster" with [`FakeApiServer::apply`] / [`FakeApiServer::delete`] and
//! simulate trouble with [`FakeApiServer::expire_watches`], [`FakeApiServer::set_down`] and
//! [`FakeApiServer::forbid`]. [`FakeApiServer::kubeconfig`] writes a kubeconfig pointing at it
//! (plain `http://`, which kube-rs accepts: its rustls connector is built `https_or_http`).
//!
//! ```ignore
//! let api = FakeApiServer::start().await;
//! api.apply_yaml(&gateway("gw", 80, &["*"]));
//! let kubeconfig = api.kubeconfig(dir.path());
//! let controller = ControllerProcess::start_kube(&kubeconfig, &[]).await?;
//! ```

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::AbortHandle;

type Body = BoxBody<Bytes, Infallible>;

/// The bearer token the fake expects (written into [`FakeApiServer::kubeconfig`]).
pub const FAKE_API_TOKEN: &str = "fake-apiserver-token";

/// How often an open watch with `allowWatchBookmarks=true` gets a BOOKMARK.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// A collection the fake serves.
#[derive(Debug, Clone)]
struct Resource {
    group: &'static str,
    /// Versions served; objects are stored once and shown in whichever version was asked for.
    versions: Vec<String>,
    plural: &'static str,
    kind: &'static str,
}

impl Resource {
    /// Custom resources keep `apiVersion`/`kind` on list items; built-in kinds do not.
    fn is_crd(&self) -> bool {
        self.group == "networking.istio.io"
    }

    fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }
}

fn resources() -> Vec<Resource> {
    let istio = |plural, kind| Resource {
        group: "networking.istio.io",
        versions: vec!["v1".into(), "v1beta1".into(), "v1alpha3".into()],
        plural,
        kind,
    };
    let v1 = |group, plural, kind| Resource { group, versions: vec!["v1".into()], plural, kind };
    vec![
        istio("gateways", "Gateway"),
        istio("virtualservices", "VirtualService"),
        istio("destinationrules", "DestinationRule"),
        istio("serviceentries", "ServiceEntry"),
        istio("workloadentries", "WorkloadEntry"),
        v1("", "services", "Service"),
        v1("", "pods", "Pod"),
        v1("", "secrets", "Secret"),
        v1("discovery.k8s.io", "endpointslices", "EndpointSlice"),
    ]
}

/// One change of the cluster, as every watch sees it.
#[derive(Debug)]
struct Change {
    rv: u64,
    resource: usize,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    resources: Vec<Resource>,
    rv: u64,
    uid: u64,
    /// (resource, namespace, name) → object as stored (apiVersion of the first served version).
    objects: BTreeMap<(usize, String, String), Value>,
    history: Vec<Arc<Change>>,
    /// Watches from a resourceVersion older than this get `410 Expired`.
    compacted: u64,
    down: bool,
    forbidden: BTreeSet<String>,
    /// Plurals whose watches (only) answer 403.
    watch_forbidden: BTreeSet<String>,
    connections: Vec<AbortHandle>,
    /// Connections closed on accept while down.
    refused: u64,
    requests: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    /// Sent while `state` is locked, so a watch that subscribes under the same lock sees every
    /// change after its backlog exactly once.
    changes: broadcast::Sender<Arc<Change>>,
    /// Bumped by [`FakeApiServer::expire_watches`].
    expire: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fake kube-apiserver on a loopback port. Stops (and drops every connection) on drop.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

impl FakeApiServer {
    /// Binds a free loopback port and starts serving an empty cluster.
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake API server");
        let addr = listener.local_addr().expect("local_addr");
        let (changes, _) = broadcast::channel(4096);
        let (expire, _) = watch::channel(0);
        let state = State { resources: resources(), ..Default::default() };
        let shared = Arc::new(Shared { state: Mutex::new(state), changes, expire });
        let accept_shared = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let mut state = accept_shared.lock();
                if state.down {
                    // The "outage": the connection is closed before any byte is read.
                    drop(stream);
                    state.refused += 1;
                    continue;
                }
                let conn_shared = accept_shared.clone();
                let task = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = conn_shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, request)) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
                state.connections.retain(|h| !h.is_finished());
                state.connections.push(task.abort_handle());
            }
        })
        .abort_handle();
        FakeApiServer { addr, shared, accept }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes `<dir>/kubeconfig` (cluster at [`url`](Self::url), bearer [`FAKE_API_TOKEN`]) and
    /// returns its path, for `KUBECONFIG=<path>`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: fake\n  user:\n    token: {FAKE_API_TOKEN}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n",
            url = self.url()
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    /// Creates or replaces an object (`apiVersion`, `kind`, `metadata.name`; namespace
    /// `default` when absent): ADDED or MODIFIED on open watches. Returns its new
    /// resourceVersion. Istio kinds may be given in any served version.
    pub fn apply(&self, object: Value) -> Result<u64> {
        let mut state = self.shared.lock();
        let (resource, namespace, name) = locate(&state, &object)?;
        let key = (resource, namespace.clone(), name);
        state.rv += 1;
        let rv = state.rv;
        let mut object = object;
        let stored_version = state.resources[resource].versions[0].clone();
        object["apiVersion"] = json!(state.resources[resource].api_version(&stored_version));
        object["metadata"]["namespace"] = json!(namespace);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = match state.objects.get(&key) {
            Some(old) => {
                object["metadata"]["uid"] = old["metadata"]["uid"].clone();
                object["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                "MODIFIED"
            }
            None => {
                state.uid += 1;
                object["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", state.uid));
                object["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
                "ADDED"
            }
        };
        state.objects.insert(key, object.clone());
        self.record(&mut state, Change { rv, resource, namespace, kind: event, object });
        Ok(rv)
    }

    /// [`apply`](Self::apply) for every document of a (multi-document) YAML string, as the
    /// [`crate::config`] builders write them.
    pub fn apply_yaml(&self, yaml: &str) -> Result<()> {
        use serde::Deserialize;
        for document in serde_norway::Deserializer::from_str(yaml) {
            let value = Value::deserialize(document).context("parsing YAML")?;
            if !value.is_null() {
                self.apply(value)?;
            }
        }
        Ok(())
    }

    /// Deletes an object: DELETED on open watches. False when there was none.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let mut state = self.shared.lock();
        let probe =
            json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}});
        let Ok((resource, namespace, name)) = locate(&state, &probe) else { return false };
        let Some(mut object) = state.objects.remove(&(resource, namespace.clone(), name)) else { return false };
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(&mut state, Change { rv, resource, namespace, kind: "DELETED", object });
        true
    }

    /// Compacts history up to now and ends every open watch with `410 Expired`, as etcd
    /// compaction does: the watchers must list again.
    pub fn expire_watches(&self) {
        let mut state = self.shared.lock();
        state.compacted = state.rv;
        self.shared.expire.send_modify(|generation| *generation += 1);
    }

    /// `true`: every open connection is closed and new ones are closed on accept (the API
    /// server is unreachable). `false`: serving again.
    pub fn set_down(&self, down: bool) {
        let mut state = self.shared.lock();
        state.down = down;
        if down {
            for connection in state.connections.drain(..) {
                connection.abort();
            }
        }
    }

    /// Lists and watches of `plural` (e.g. `secrets`) answer `403 Forbidden`, as without RBAC.
    pub fn forbid(&self, plural: &str) {
        self.shared.lock().forbidden.insert(plural.to_string());
    }

    /// Only watches of `plural` answer `403 Forbidden` (lists still work), as with RBAC that
    /// grants `list` but not `watch`.
    pub fn forbid_watch(&self, plural: &str) {
        self.shared.lock().watch_forbidden.insert(plural.to_string());
    }

    /// Undoes [`forbid`](Self::forbid) and [`forbid_watch`](Self::forbid_watch).
    pub fn allow(&self, plural: &str) {
        let mut state = self.shared.lock();
        state.forbidden.remove(plural);
        state.watch_forbidden.remove(plural);
    }

    /// Serves only these versions of `networking.istio.io` (e.g. `["v1beta1"]` for Istio
    /// before 1.22); other versions answer 404.
    pub fn serve_istio_versions(&self, versions: &[&str]) {
        let mut state = self.shared.lock();
        for r in state.resources.iter_mut().filter(|r| r.group == "networking.istio.io") {
            r.versions = versions.iter().map(|v| v.to_string()).collect();
        }
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Connections closed on accept while [down](Self::set_down).
    pub fn refused_connections(&self) -> u64 {
        self.shared.lock().refused
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Watch requests so far on paths ending in `/<plural>`.
    pub fn watch_count(&self, plural: &str) -> usize {
        let suffix = format!("/{plural}?");
        self.requests().iter().filter(|r| r.contains(&suffix) && r.contains("watch=true")).count()
    }

    fn record(&self, state: &mut State, change: Change) {
        let change = Arc::new(change);
        state.history.push(change.clone());
        let _ = self.shared.changes.send(change);
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept.abort();
        for connection in self.shared.lock().connections.drain(..) {
            connection.abort();
        }
    }
}

/// The resource, namespace and name of an object given to apply/delete.
fn locate(state: &State, object: &Value) -> Result<(usize, String, String)> {
    let api_version = object["apiVersion"].as_str().ok_or_else(|| anyhow!("no apiVersion: {object}"))?;
    let kind = object["kind"].as_str().ok_or_else(|| anyhow!("no kind: {object}"))?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let Some(resource) = state
        .resources
        .iter()
        .position(|r| r.group == group && r.kind == kind && (r.is_crd() || r.versions.iter().any(|v| v == version)))
    else {
        bail!("the fake API server does not serve {api_version} {kind}")
    };
    let name = object["metadata"]["name"].as_str().filter(|n| !n.is_empty()).ok_or_else(|| anyhow!("no name"))?;
    let namespace = object["metadata"]["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("default");
    Ok((resource, namespace.to_string(), name.to_string()))
}

/// What a request path names.
struct Target {
    resource: usize,
    version: String,
    namespace: Option<String>,
}

enum Route {
    Found(Target),
    Forbidden { plural: String, group: String, namespace: Option<String> },
    NotFound,
}

fn route(state: &State, path: &str, watch: bool) -> Route {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Route::NotFound,
    };
    let (namespace, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural),
        _ => return Route::NotFound,
    };
    let Some(resource) = state
        .resources
        .iter()
        .position(|r| r.group == group && r.plural == plural && r.versions.iter().any(|v| v == version))
    else {
        return Route::NotFound;
    };
    if state.forbidden.contains(plural) || (watch && state.watch_forbidden.contains(plural)) {
        return Route::Forbidden { plural: plural.to_string(), group: group.to_string(), namespace };
    }
    Route::Found(Target { resource, version: version.to_string(), namespace })
}

fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let query: BTreeMap<String, String> = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut state = shared.lock();
    state.requests.push(format!("{} {}", request.method(), request.uri()));
    let authorized = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {FAKE_API_TOKEN}"));
    if !authorized {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized".into());
    }
    let target = match route(&state, &path, is_watch(&query)) {
        Route::Found(target) => target,
        Route::NotFound => {
            return status(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource".into())
        }
        Route::Forbidden { plural, group, namespace } => {
            let verb = if is_watch(&query) { "watch" } else { "list" };
            let scope = match namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".to_string(),
            };
            let message = format!(
                "{plural} is forbidden: User \"system:serviceaccount:istio-system:meshgate\" cannot {verb} \
                 resource \"{plural}\" in API group \"{group}\" {scope}"
            );
            return status(StatusCode::FORBIDDEN, "Forbidden", message);
        }
    };
    if request.method() != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake serves list and watch only".into(),
        );
    }
    if is_watch(&query) {
        start_watch(shared, &mut state, target, &query)
    } else {
        list(&state, &target)
    }
}

fn is_watch(query: &BTreeMap<String, String>) -> bool {
    matches!(query.get("watch").map(String::as_str), Some("true" | "1"))
}

/// The object as the client sees it in `version`.
fn present(resource: &Resource, version: &str, object: &Value, in_list: bool) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        if in_list && !resource.is_crd() {
            map.remove("apiVersion");
            map.remove("kind");
        } else {
            map.insert("apiVersion".into(), json!(resource.api_version(version)));
        }
    }
    object
}

fn list(state: &State, target: &Target) -> Response<Body> {
    let resource = &state.resources[target.resource];
    let items: Vec<Value> = state
        .objects
        .iter()
        .filter(|((r, ns, _), _)| *r == target.resource && target.namespace.as_ref().is_none_or(|t| t == ns))
        .map(|(_, object)| present(resource, &target.version, object, true))
        .collect();
    let body = json!({
        "apiVersion": resource.api_version(&target.version),
        "kind": format!("{}List", resource.kind),
        "metadata": {"resourceVersion": state.rv.to_string()},
        "items": items,
    });
    respond(StatusCode::OK, Full::new(Bytes::from(body.to_string())).boxed())
}

fn event_line(kind: &str, object: Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

fn expired_line(rv: &str, compacted: u64) -> Bytes {
    event_line(
        "ERROR",
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {rv} ({compacted})"),
            "reason": "Expired", "code": 410
        }),
    )
}

/// Opens a watch: the backlog after `resourceVersion` (or every object as ADDED for `0`/none),
/// then live changes, BOOKMARKs, and the end after `timeoutSeconds` or on expiry.
fn start_watch(
    shared: &Arc<Shared>,
    state: &mut State,
    target: Target,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let resource = state.resources[target.resource].clone();
    let matches = {
        let namespace = target.namespace.clone();
        let index = target.resource;
        move |r: usize, ns: &str| r == index && namespace.as_deref().is_none_or(|t| t == ns)
    };
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let body = ChannelBody(rx).boxed();
    let requested = query.get("resourceVersion").cloned().unwrap_or_default();
    let mut backlog = Vec::new();
    let from = match requested.as_str() {
        "" | "0" => {
            for ((r, ns, _), object) in &state.objects {
                if matches(*r, ns) {
                    backlog.push(event_line("ADDED", present(&resource, &target.version, object, false)));
                }
            }
            state.rv
        }
        rv => match rv.parse::<u64>() {
            Ok(rv) if rv >= state.compacted => {
                for change in state.history.iter().filter(|c| c.rv > rv && matches(c.resource, &c.namespace)) {
                    backlog.push(event_line(change.kind, present(&resource, &target.version, &change.object, false)));
                }
                rv
            }
            _ => {
                // Too old (compacted) or garbage: one ERROR event, then the end.
                let _ = tx.try_send(expired_line(rv, state.compacted));
                return respond(StatusCode::OK, body);
            }
        },
    };
    let mut changes = shared.changes.subscribe();
    let mut expire = shared.expire.subscribe();
    expire.borrow_and_update();
    let timeout = query.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let mut last_rv = from;
        let end = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(24 * 3600)));
        tokio::pin!(end);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            let line = tokio::select! {
                () = &mut end => return,
                () = tx.closed() => return,
                _ = expire.changed() => {
                    let _ = tx.send(expired_line(&last_rv.to_string(), last_rv)).await;
                    return;
                }
                _ = tick.tick(), if bookmarks => {
                    let object = json!({
                        "apiVersion": resource.api_version(&target.version),
                        "kind": resource.kind,
                        "metadata": {"resourceVersion": last_rv.to_string()},
                    });
                    event_line("BOOKMARK", object)
                }
                change = changes.recv() => match change {
                    Ok(change) => {
                        last_rv = last_rv.max(change.rv);
                        if change.rv <= from || !matches(change.resource, &change.namespace) {
                            continue;
                        }
                        event_line(change.kind, present(&resource, &target.version, &change.object, false))
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(expired_line(&last_rv.to_string(), last_rv)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    respond(StatusCode::OK, body)
}

/// A streaming body fed by a channel; ends (chunked terminator) when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|line| line.map(|bytes| Ok(Frame::data(bytes))))
    }
}

fn respond(code: StatusCode, body: Body) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("response")
}

/// A `Status` failure body like the real API server's.
fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": {}, "code": code.as_u16(),
    });
    respond(code, Full::new(Bytes::from(body.to_string())).boxed())
}

#[cfg(test)]
mod tests {
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
        let r =
            client().get(format!("{}{path_and_query}", api.url())).bearer_auth(FAKE_API_TOKEN).send().await.unwrap();
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
        let mut w =
            watch(&api, &format!("/api/v1/namespaces/default/services?watch=true&resourceVersion={listed}")).await;
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
}
