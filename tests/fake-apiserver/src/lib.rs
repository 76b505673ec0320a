//! A fake Kubernetes API server: one in-memory "cluster" that speaks enough of the real API
//! for kube-rs's watcher. It is shared by the controller's unit tests of its Kubernetes source
//! and by the end-to-end tests (through `meshgate_e2e::apiserver`).
//!
//! It serves list and watch (by URL path, cluster-wide and per namespace) of every kind
//! meshgate watches, with a global resourceVersion, newline-delimited JSON watch events over a
//! streamed body, BOOKMARKs, `timeoutSeconds`, `410 Expired` after compaction, and `Status`
//! bodies for 401/403/404. Tests change the cluster with [`FakeApiServer::apply`] /
//! [`FakeApiServer::delete`] and simulate trouble with [`FakeApiServer::expire_watches`],
//! [`FakeApiServer::set_down`], [`FakeApiServer::forbid`] and
//! [`FakeApiServer::serve_istio_versions`].
//!
//! Two transports reach the same cluster:
//!
//! - [`FakeApiServer::start`] listens on a loopback port over real HTTP, for `controller
//!   --kube` and `gateway --kube` processes; [`FakeApiServer::kubeconfig`] writes a kubeconfig
//!   pointing at it (plain `http://`, which kube-rs accepts: its rustls connector is built
//!   `https_or_http`), and requests must carry its bearer token ([`FAKE_API_TOKEN`]).
//! - [`FakeApiServer::service`] answers in process, as the tower `Service` that
//!   `kube::Client::new` takes. Unit tests run on paused (virtual) time, which auto-advances
//!   whenever every task is idle: a request waiting on a real socket would count as idle and
//!   let timeouts fire, while an in-process answer is ready at once, so those tests stay
//!   deterministic. There is no connection to authenticate, so no token is checked.
//!
//! It is a crate of its own rather than a module of `meshgate-e2e` because the controller's
//! unit tests cannot depend on that harness without building all of it (reqwest, rcgen, the
//! process launchers); and it depends on neither kube nor the controller, so both sides use it
//! without a cycle.
//!
//! ```ignore
//! // End to end:
//! let api = FakeApiServer::start().await;
//! api.apply_yaml(&gateway("gw", 80, &["*"]))?;
//! let controller = ControllerProcess::start_kube(&api.kubeconfig(dir.path()), &[]).await?;
//! // In process:
//! let api = FakeApiServer::new();
//! let client = kube::Client::new(api.service(), "default");
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
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::AbortHandle;

/// Response bodies of both transports. A watch body ends with an error when the server goes
/// [down](FakeApiServer::set_down), which is how a broken connection looks to the client.
pub type Body = BoxBody<Bytes, io::Error>;

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
    /// Istio's custom resources (networking and security) keep `apiVersion`/`kind` on list
    /// items, are served in several versions and follow [`FakeApiServer::serve_istio_versions`];
    /// built-in kinds do none of this.
    fn is_crd(&self) -> bool {
        self.group.ends_with(".istio.io")
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
    let istio = |group, plural, kind| Resource {
        group,
        versions: vec!["v1".into(), "v1beta1".into(), "v1alpha3".into()],
        plural,
        kind,
    };
    let networking = |plural, kind| istio("networking.istio.io", plural, kind);
    // The security kinds are there because the controller watches them in the gateway's and
    // the root namespace: a kind the fake does not serve would show as failing (404).
    let security = |plural, kind| istio("security.istio.io", plural, kind);
    let v1 = |group, plural, kind| Resource { group, versions: vec!["v1".into()], plural, kind };
    vec![
        networking("gateways", "Gateway"),
        networking("virtualservices", "VirtualService"),
        networking("destinationrules", "DestinationRule"),
        networking("serviceentries", "ServiceEntry"),
        networking("workloadentries", "WorkloadEntry"),
        security("authorizationpolicies", "AuthorizationPolicy"),
        security("requestauthentications", "RequestAuthentication"),
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
    /// Open connections of the HTTP transport, aborted when the server goes down.
    connections: Vec<AbortHandle>,
    /// Connections closed on accept (or in-process requests refused) while down.
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
    /// Bumped when the server goes down: open watches break.
    outage: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fake kube-apiserver holding one cluster. With a listener ([`start`](Self::start)) it
/// stops, and drops every connection, on drop.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    listener: Option<Listener>,
}

struct Listener {
    addr: SocketAddr,
    accept: AbortHandle,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApiServer {
    /// An empty cluster without a socket, reached through [`service`](Self::service).
    pub fn new() -> FakeApiServer {
        let (changes, _) = broadcast::channel(4096);
        let state = State { resources: resources(), ..Default::default() };
        let shared =
            Shared { state: Mutex::new(state), changes, expire: watch::channel(0).0, outage: watch::channel(0).0 };
        FakeApiServer { shared: Arc::new(shared), listener: None }
    }

    /// An empty cluster served over HTTP on a free loopback port.
    pub async fn start() -> FakeApiServer {
        let mut api = FakeApiServer::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake API server");
        let addr = listener.local_addr().expect("local_addr");
        let accept_shared = api.shared.clone();
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
                        async move { Ok::<_, Infallible>(handle_http(&shared, request)) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
                state.connections.retain(|h| !h.is_finished());
                state.connections.push(task.abort_handle());
            }
        })
        .abort_handle();
        api.listener = Some(Listener { addr, accept });
        api
    }

    /// The in-process transport: a tower `Service` for `kube::Client::new(api.service(), ns)`.
    /// Clones share this cluster. While the server is [down](Self::set_down), calls fail as a
    /// refused connection would.
    pub fn service(&self) -> InProcess {
        InProcess { shared: self.shared.clone() }
    }

    /// The loopback address; only after [`start`](Self::start).
    pub fn addr(&self) -> SocketAddr {
        self.listener.as_ref().expect("FakeApiServer::new() has no socket; use start()").addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
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
    /// `meshgate_e2e::config` builders write them.
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

    /// `true`: the API server is unreachable. Open watches break, every open connection is
    /// closed and new ones are closed on accept (in process: refused). `false`: serving again.
    pub fn set_down(&self, down: bool) {
        let mut state = self.shared.lock();
        state.down = down;
        if down {
            self.shared.outage.send_modify(|generation| *generation += 1);
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

    /// Serves only these versions of Istio's groups (`networking.istio.io` and
    /// `security.istio.io`, which gained `v1` together in Istio 1.22: e.g. `["v1beta1"]` for
    /// older Istio, `[]` for a cluster without Istio's CRDs); other versions answer 404.
    pub fn serve_istio_versions(&self, versions: &[&str]) {
        let mut state = self.shared.lock();
        for r in state.resources.iter_mut().filter(|r| r.is_crd()) {
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
        self.requests().iter().filter(|r| names_collection(r, plural) && is_watch_request(r)).count()
    }

    /// List (not watch) requests so far on paths ending in `/<plural>`.
    pub fn list_count(&self, plural: &str) -> usize {
        self.requests().iter().filter(|r| names_collection(r, plural) && !is_watch_request(r)).count()
    }

    fn record(&self, state: &mut State, change: Change) {
        let change = Arc::new(change);
        state.history.push(change.clone());
        let _ = self.shared.changes.send(change);
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.accept.abort();
        }
        for connection in self.shared.lock().connections.drain(..) {
            connection.abort();
        }
    }
}

/// Whether a recorded request (`METHOD path?query`) is on a collection `/<plural>`.
fn names_collection(request: &str, plural: &str) -> bool {
    let path = request.split(' ').nth(1).unwrap_or("").split('?').next().unwrap_or("");
    path.strip_suffix(plural).is_some_and(|rest| rest.ends_with('/'))
}

fn is_watch_request(request: &str) -> bool {
    request.split_once('?').is_some_and(|(_, query)| query.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

/// [`FakeApiServer::service`]: answers kube-rs's requests without a socket.
#[derive(Clone)]
pub struct InProcess {
    shared: Arc<Shared>,
}

impl<B> tower_service::Service<Request<B>> for InProcess {
    type Response = Response<Body>;
    type Error = io::Error;
    type Future = std::future::Ready<Result<Response<Body>, io::Error>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut state = self.shared.lock();
        if state.down {
            state.refused += 1;
            return std::future::ready(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the fake API server is down",
            )));
        }
        // No connection, so no credentials to check: the client is the test itself.
        std::future::ready(Ok(answer(&self.shared, &mut state, request.method(), request.uri(), true)))
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

/// A request of the HTTP transport, which checks the bearer token of the kubeconfig.
fn handle_http(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let authorized = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {FAKE_API_TOKEN}"));
    let mut state = shared.lock();
    answer(shared, &mut state, request.method(), request.uri(), authorized)
}

/// The answer of either transport, recorded in [`FakeApiServer::requests`].
fn answer(
    shared: &Arc<Shared>,
    state: &mut State,
    method: &Method,
    uri: &http::Uri,
    authorized: bool,
) -> Response<Body> {
    let path = uri.path().to_string();
    let query: BTreeMap<String, String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    state.requests.push(format!("{method} {uri}"));
    if !authorized {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized".into());
    }
    let target = match route(state, &path, is_watch(&query)) {
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
    if method != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake serves list and watch only".into(),
        );
    }
    if is_watch(&query) {
        start_watch(shared, state, target, &query)
    } else {
        list(state, &target)
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
    respond(StatusCode::OK, full(body))
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
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(1024);
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
                let _ = tx.try_send(Ok(expired_line(rv, state.compacted)));
                return respond(StatusCode::OK, body);
            }
        },
    };
    let mut changes = shared.changes.subscribe();
    let mut expire = shared.expire.subscribe();
    expire.borrow_and_update();
    let mut outage = shared.outage.subscribe();
    outage.borrow_and_update();
    let timeout = query.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(Ok(line)).await.is_err() {
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
                // In this order: a watch that was expired or broken delivers no change made
                // after that (a test may change the cluster right after expire_watches, for
                // the relist to find).
                biased;
                _ = outage.changed() => {
                    let _ = tx.send(Err(io::Error::new(io::ErrorKind::ConnectionReset, "the fake API server went down"))).await;
                    return;
                }
                _ = expire.changed() => {
                    let _ = tx.send(Ok(expired_line(&last_rv.to_string(), last_rv))).await;
                    return;
                }
                () = &mut end => return,
                () = tx.closed() => return,
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
                        let _ = tx.send(Ok(expired_line(&last_rv.to_string(), last_rv))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    respond(StatusCode::OK, body)
}

/// A streaming body fed by a channel: ends (chunked terminator) when the sender is dropped,
/// fails (over HTTP: the connection is cut) on an error.
struct ChannelBody(mpsc::Receiver<io::Result<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.0.poll_recv(cx).map(|line| line.map(|bytes| bytes.map(Frame::data)))
    }
}

fn full(body: Value) -> Body {
    Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed()
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
    respond(code, full(body))
}

#[cfg(test)]
mod tests;
