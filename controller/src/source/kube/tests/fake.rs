//! A scripted Kubernetes API server behind `tower_test::mock::pair`, for many concurrent
//! watchers: requests are routed by URL path, and each path has its own list reply and its own
//! queue of open watch streams that a test can write events into.
//!
//! Bodies are shaped like the real API server's: lists carry `metadata.resourceVersion` and
//! omit `apiVersion`/`kind` on items; watches are newline-delimited `{"type":..,"object":..}`;
//! failures are `Status` objects.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// What a list request on a path gets.
#[derive(Debug, Clone)]
pub enum Reply {
    Items(Vec<Value>),
    /// An HTTP error with a `Status` body (403 Forbidden, 404 NotFound, ...).
    Status(u16, &'static str),
    /// The connection fails (the API server is unreachable).
    Disconnect,
}

type WatchQueue = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Watch>>>;

struct PathState {
    list: Reply,
    watch_reply: Option<Reply>,
    watches_tx: mpsc::UnboundedSender<Watch>,
    watches_rx: WatchQueue,
}

impl PathState {
    fn new(list: Reply) -> Self {
        let (watches_tx, rx) = mpsc::unbounded_channel();
        PathState { list, watch_reply: None, watches_tx, watches_rx: Arc::new(tokio::sync::Mutex::new(rx)) }
    }
}

#[derive(Default)]
struct Inner {
    paths: HashMap<String, PathState>,
    requests: Vec<String>,
    resource_version: u64,
}

/// Clone freely: all clones script the same server.
#[derive(Clone, Default)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
}

/// An open watch response; events written here reach the watcher that made the request.
pub struct Watch {
    pub uri: String,
    tx: mpsc::UnboundedSender<Bytes>,
    api: FakeApi,
}

impl Watch {
    pub fn added(&self, object: Value) {
        self.event("ADDED", object);
    }

    pub fn modified(&self, object: Value) {
        self.event("MODIFIED", object);
    }

    pub fn deleted(&self, object: Value) {
        self.event("DELETED", object);
    }

    /// A BOOKMARK with a fresh resourceVersion, as sent when `allowWatchBookmarks=true`.
    pub fn bookmark(&self, api_version: &str, kind: &str) {
        let rv = self.api.next_resource_version();
        let object = json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv}});
        self.send(json!({"type": "BOOKMARK", "object": object}));
    }

    /// The API server's answer to a watch from a compacted resourceVersion.
    pub fn gone(&self) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 5 (42)", "reason": "Expired", "code": 410
        });
        self.send(json!({"type": "ERROR", "object": status}));
    }

    fn event(&self, kind: &str, mut object: Value) {
        object["metadata"]["resourceVersion"] = json!(self.api.next_resource_version());
        self.send(json!({"type": kind, "object": object}));
    }

    fn send(&self, event: Value) {
        let mut line = serde_json::to_vec(&event).expect("JSON");
        line.push(b'\n');
        // A closed stream means the watcher already reconnected; the test will notice.
        let _ = self.tx.send(Bytes::from(line));
    }
}

impl FakeApi {
    pub fn new() -> Self {
        Self::default()
    }

    /// A kube Client whose requests this fake answers (on a spawned task).
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<kube::client::Body>, Response<ResponseBody>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                match api.respond(&request) {
                    Some(response) => send.send_response(response),
                    None => send.send_error(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused")),
                }
            }
        });
        kube::Client::new(service, "default")
    }

    /// Sets what a list of `path` returns from now on.
    pub fn set_list(&self, path: &str, reply: Reply) {
        let mut inner = self.lock();
        match inner.paths.get_mut(path) {
            Some(state) => state.list = reply,
            None => {
                inner.paths.insert(path.to_string(), PathState::new(reply));
            }
        }
    }

    pub fn serve(&self, path: &str, items: Vec<Value>) {
        self.set_list(path, Reply::Items(items));
    }

    /// Makes watch requests on `path` fail with `reply` (None: open a stream again).
    pub fn set_watch(&self, path: &str, reply: Option<Reply>) {
        self.ensure(path);
        self.lock().paths.get_mut(path).expect("path").watch_reply = reply;
    }

    /// Waits for the next watch request on `path` (they queue up in arrival order).
    pub async fn next_watch(&self, path: &str) -> Watch {
        let queue = {
            self.ensure(path);
            self.lock().paths[path].watches_rx.clone()
        };
        let mut rx = queue.lock().await;
        rx.recv().await.expect("the fake keeps a sender")
    }

    /// Every request URI (path and query) so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    fn ensure(&self, path: &str) {
        let mut inner = self.lock();
        if !inner.paths.contains_key(path) {
            inner.paths.insert(path.to_string(), PathState::new(Reply::Items(Vec::new())));
        }
    }

    fn next_resource_version(&self) -> String {
        let mut inner = self.lock();
        inner.resource_version += 1;
        inner.resource_version.to_string()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake API lock")
    }

    /// `None`: fail the connection.
    fn respond(&self, request: &Request<kube::client::Body>) -> Option<Response<ResponseBody>> {
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("");
        let is_watch = query.split('&').any(|p| p == "watch=true");
        self.ensure(&path);
        let rv = self.next_resource_version();
        let mut inner = self.lock();
        inner.requests.push(request.uri().to_string());
        let state = inner.paths.get_mut(&path).expect("ensured");
        if is_watch {
            if let Some(reply) = &state.watch_reply {
                return reply_error(reply);
            }
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            let watch = Watch { uri: request.uri().to_string(), tx, api: self.clone() };
            let _ = state.watches_tx.send(watch);
            let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
            });
            return Some(json_response(StatusCode::OK, StreamBody::new(frames).boxed_unsync()));
        }
        match &state.list {
            Reply::Items(items) => {
                let first = items.first();
                let text = |k: &str| first.and_then(|o| o[k].as_str()).unwrap_or("").to_string();
                let list_kind = if first.is_some() { format!("{}List", text("kind")) } else { "List".to_string() };
                // The real API server omits apiVersion/kind on list items.
                let items: Vec<Value> = items
                    .iter()
                    .cloned()
                    .map(|mut o| {
                        if let Some(map) = o.as_object_mut() {
                            map.remove("apiVersion");
                            map.remove("kind");
                        }
                        o["metadata"]["resourceVersion"] = json!(rv);
                        o
                    })
                    .collect();
                let body = json!({
                    "apiVersion": if first.is_some() { text("apiVersion") } else { "v1".to_string() },
                    "kind": list_kind,
                    "metadata": {"resourceVersion": rv},
                    "items": items,
                });
                Some(json_response(StatusCode::OK, full(body)))
            }
            other => reply_error(other),
        }
    }
}

fn reply_error(reply: &Reply) -> Option<Response<ResponseBody>> {
    match reply {
        Reply::Status(code, reason) => {
            let body = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("scripted failure: {reason}"), "reason": reason, "code": code
            });
            Some(json_response(StatusCode::from_u16(*code).expect("status code"), full(body)))
        }
        Reply::Disconnect => None,
        Reply::Items(_) => unreachable!("not an error reply"),
    }
}

fn full(body: Value) -> ResponseBody {
    Full::new(Bytes::from(serde_json::to_vec(&body).expect("JSON"))).boxed_unsync()
}

fn json_response(status: StatusCode, body: ResponseBody) -> Response<ResponseBody> {
    Response::builder().status(status).header("content-type", "application/json").body(body).expect("response")
}

/// URL path of a collection: `api_version` `v1` is the core group.
pub fn path(api_version: &str, plural: &str, namespace: Option<&str>) -> String {
    let prefix = if api_version == "v1" { "/api/v1".to_string() } else { format!("/apis/{api_version}") };
    match namespace {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}"),
        None => format!("{prefix}/{plural}"),
    }
}
