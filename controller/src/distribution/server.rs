//! The controller's side: translate once per gateway identity, hand out versions by long-poll,
//! remember what every replica acknowledged.

use super::delta::SnapshotDelta;
use super::wire::{ControllerStatus, DeltaMessage, Finding, GatewayStatus, PollRequest, SnapshotMessage, DELTA_HEADER};
use crate::publish::Publisher;
use crate::snapshot::Snapshot;
use crate::store::Store;
use crate::translate::Options;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Distinct gateway identities served at once; a bound so a misconfigured fleet (labels with
/// pod hashes, say) cannot make the controller translate without end.
const MAX_IDENTITIES: usize = 64;
/// Upper bound on how long a poll is held, whatever the gateway asks.
const MAX_WAIT: Duration = Duration::from_secs(120);
/// Past versions kept per identity for deltas: the one before the current, and one more for a
/// replica that was still compiling when the next change came.
const RECENT: usize = 2;
/// Poll bodies are a few hundred bytes; anything large is not a gateway.
const MAX_POLL_BODY: usize = 64 * 1024;

struct Identity {
    publisher: Mutex<Publisher>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The current version encoded once, shared by every replica of this identity.
    encoded: Mutex<Option<(u64, Bytes)>>,
    /// The versions before the current one (at most [`RECENT`]): replicas holding one get a
    /// delta. Filled before each publication, so a poll woken by the new version finds the
    /// version it held here.
    recent: Mutex<VecDeque<Arc<Snapshot>>>,
    /// The delta (base, version) encoded once.
    encoded_delta: Mutex<Option<(u64, u64, Bytes)>>,
    findings: Mutex<Vec<Finding>>,
    version: IntGauge,
}

impl Identity {
    fn apply(&self, store: Store) -> (u64, usize) {
        let before = self.snapshots.borrow().clone();
        if before.version != 0 {
            // Shares every unchanged route and cluster with the current snapshot: this costs
            // what the last changes replaced, not another copy of the config.
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.back().is_none_or(|last| last.version != before.version) {
                if recent.len() == RECENT {
                    recent.pop_front();
                }
                recent.push_back(before);
            }
        }
        let outcome = self.publisher.lock().unwrap_or_else(|e| e.into_inner()).apply(store);
        *self.findings.lock().unwrap_or_else(|e| e.into_inner()) =
            outcome.diagnostics.iter().map(Finding::from).collect();
        self.version.set(outcome.version as i64);
        if outcome.changed {
            tracing::info!(version = outcome.version, errors = outcome.diagnostics.errors(), "snapshot translated");
        }
        (outcome.version, outcome.rejected)
    }

    fn encoded(&self, instance: &str, snapshot: &Snapshot) -> Bytes {
        let mut cache = self.encoded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((v, bytes)) = cache.as_ref() {
            if *v == snapshot.version {
                return bytes.clone();
            }
        }
        let bytes = Bytes::from(SnapshotMessage::encode(instance, snapshot).unwrap_or_default());
        *cache = Some((snapshot.version, bytes.clone()));
        bytes
    }

    /// What changed from `have` to `snapshot`, when `have` is a recent version.
    fn delta(&self, instance: &str, have: u64, snapshot: &Snapshot) -> Option<Bytes> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let previous = recent.iter().find(|s| s.version == have)?.clone();
        drop(recent);
        let mut cache = self.encoded_delta.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((base, version, bytes)) = cache.as_ref() {
            if *base == have && *version == snapshot.version {
                return Some(bytes.clone());
            }
        }
        let delta = SnapshotDelta::between(&previous, snapshot);
        let bytes = Bytes::from(DeltaMessage::encode(instance, &delta).ok()?);
        *cache = Some((have, snapshot.version, bytes.clone()));
        Some(bytes)
    }
}

struct Record {
    namespace: String,
    identity: String,
    acked: u64,
    last_seen: Instant,
    open_polls: u32,
    address: String,
}

struct Metrics {
    registry: Registry,
    versions: IntGaugeVec,
    gateways: IntGaugeVec,
    pushes: IntCounter,
    delta_pushes: IntCounter,
    rejected: IntGauge,
    unauthorized: IntCounter,
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let versions = IntGaugeVec::new(
            Opts::new("meshgate_controller_snapshot_version", "Version served per gateway identity"),
            &["identity"],
        )
        .expect("metric");
        let gateways = IntGaugeVec::new(
            Opts::new("meshgate_controller_gateways", "Gateway replicas by sync state (SYNCED, STALE, NOT CONNECTED)"),
            &["state"],
        )
        .expect("metric");
        let pushes = IntCounter::new("meshgate_controller_pushes_total", "Snapshots sent to gateways").expect("metric");
        let delta_pushes = IntCounter::new(
            "meshgate_controller_delta_pushes_total",
            "Snapshots sent as a delta from the version the gateway held (included in pushes_total)",
        )
        .expect("metric");
        let rejected =
            IntGauge::new("meshgate_controller_config_rejected", "Resources rejected by the last translation")
                .expect("metric");
        let unauthorized =
            IntCounter::new("meshgate_controller_unauthorized_total", "Requests refused for a missing or wrong token")
                .expect("metric");
        for c in [
            Box::new(versions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(gateways.clone()),
            Box::new(pushes.clone()),
            Box::new(delta_pushes.clone()),
            Box::new(rejected.clone()),
            Box::new(unauthorized.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics { registry, versions, gateways, pushes, delta_pushes, rejected, unauthorized }
    }
}

/// Shared by the source (which calls [`Distributor::set_store`]) and the HTTP server.
pub struct Distributor {
    token: String,
    /// This process among controller restarts and replicas (see `PollRequest::instance`).
    instance: String,
    store: Mutex<Option<Arc<Store>>>,
    identities: Mutex<BTreeMap<String, Arc<Identity>>>,
    gateways: Mutex<BTreeMap<String, Record>>,
    source_status: Mutex<serde_json::Value>,
    metrics: Metrics,
}

impl Distributor {
    /// `default_identity` is translated from the start so the controller reports a version (and
    /// its analysis) before the first gateway connects.
    pub fn new(token: String, default_identity: Options) -> Arc<Distributor> {
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let instance = format!("{:x}-{:x}", started.as_nanos(), std::process::id());
        let d = Arc::new(Distributor {
            token,
            instance,
            store: Mutex::new(None),
            identities: Mutex::new(BTreeMap::new()),
            gateways: Mutex::new(BTreeMap::new()),
            source_status: Mutex::new(serde_json::Value::Null),
            metrics: Metrics::new(),
        });
        let request = PollRequest {
            namespace: default_identity.namespace.clone(),
            labels: default_identity.labels.clone(),
            ..Default::default()
        };
        d.identity(&request);
        d
    }

    /// Extra collectors (the source's health) are exported on `/metrics` too.
    pub fn registry(&self) -> &Registry {
        &self.metrics.registry
    }

    /// Free-form state of the resource source for `/v1/status`.
    pub fn set_source_status(&self, value: serde_json::Value) {
        *self.source_status.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }

    /// Translates a new store for every identity. Blocking (translation of a large config
    /// takes a while): call it from a thread or `spawn_blocking`.
    pub fn set_store(&self, store: Store) {
        let store = Arc::new(store);
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(store.clone());
        let identities: Vec<Arc<Identity>> =
            self.identities.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let mut rejected = 0;
        for identity in identities {
            rejected = rejected.max(identity.apply((*store).clone()).1);
        }
        self.metrics.rejected.set(rejected as i64);
    }

    /// The current snapshot for an identity, creating (and translating) it on first sight.
    fn identity(&self, request: &PollRequest) -> Option<Arc<Identity>> {
        let key = request.identity();
        let mut identities = self.identities.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = identities.get(&key) {
            return Some(found.clone());
        }
        if identities.len() >= MAX_IDENTITIES {
            return None;
        }
        let options = Options { labels: request.labels.clone(), namespace: request.namespace.clone() };
        let (publisher, snapshots) = Publisher::new(options);
        let identity = Arc::new(Identity {
            publisher: Mutex::new(publisher),
            snapshots,
            encoded: Mutex::new(None),
            recent: Mutex::new(VecDeque::new()),
            encoded_delta: Mutex::new(None),
            findings: Mutex::new(Vec::new()),
            version: self.metrics.versions.with_label_values(&[&key]),
        });
        identities.insert(key, identity.clone());
        drop(identities);
        if let Some(store) = self.store.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            identity.apply((*store).clone());
        }
        Some(identity)
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let given = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Constant time in the token's length so the comparison does not leak a prefix.
        let ok = given.len() == self.token.len()
            && given.bytes().zip(self.token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !ok {
            self.metrics.unauthorized.inc();
        }
        ok && !self.token.is_empty()
    }

    /// True once a source delivered its first store.
    pub fn ready(&self) -> bool {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    pub fn status(&self) -> ControllerStatus {
        let identities = self.identities.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let versions: BTreeMap<String, u64> =
            identities.iter().map(|(k, i)| (k.clone(), i.snapshots.borrow().version)).collect();
        let mut diagnostics: Vec<Finding> = Vec::new();
        for identity in identities.values() {
            for f in identity.findings.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                if !diagnostics.contains(f) {
                    diagnostics.push(f.clone());
                }
            }
        }
        let now = Instant::now();
        let gateways = self
            .gateways
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, r)| GatewayStatus {
                name: name.clone(),
                namespace: r.namespace.clone(),
                identity: r.identity.clone(),
                acked: r.acked,
                current: versions.get(&r.identity).copied().unwrap_or(0),
                last_seen_seconds: now.duration_since(r.last_seen).as_secs(),
                connected: r.open_polls > 0,
                address: r.address.clone(),
            })
            .collect();
        let source = self.source_status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ControllerStatus { gateways, versions, diagnostics, source }
    }

    fn render_metrics(&self) -> Vec<u8> {
        let status = self.status();
        for state in ["SYNCED", "STALE", "NOT CONNECTED"] {
            let n = status.gateways.iter().filter(|g| g.state() == state).count();
            self.metrics.gateways.with_label_values(&[state]).set(n as i64);
        }
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        let _ = prometheus::Encoder::encode(&encoder, &self.metrics.registry.gather(), &mut out);
        out
    }

    async fn poll(self: &Arc<Self>, request: PollRequest, peer: SocketAddr) -> Response<Full<Bytes>> {
        let this = self.clone();
        let asked = request.clone();
        // First sight of an identity translates the whole store: not on an async worker.
        let identity = match tokio::task::spawn_blocking(move || this.identity(&asked)).await {
            Ok(Some(identity)) => identity,
            _ => return text(StatusCode::SERVICE_UNAVAILABLE, "too many distinct gateway identities\n"),
        };
        let _open = self.open_poll(&request, peer);
        let mut snapshots = identity.snapshots.clone();
        let wait = Duration::from_secs(request.wait_seconds).min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            let stale = snapshot.version != request.have || request.instance != self.instance;
            if snapshot.version != 0 && stale {
                self.metrics.pushes.inc();
                let response = Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .header("x-meshgate-version", snapshot.version);
                let delta = (request.deltas && request.instance == self.instance)
                    .then(|| identity.delta(&self.instance, request.have, &snapshot))
                    .flatten();
                let (response, body) = match delta {
                    Some(bytes) => {
                        self.metrics.delta_pushes.inc();
                        (response.header(DELTA_HEADER, request.have), bytes)
                    }
                    None => (response, identity.encoded(&self.instance, &snapshot)),
                };
                return response.body(Full::new(body)).unwrap_or_default();
            }
            match tokio::time::timeout_at(deadline, snapshots.changed()).await {
                Ok(Ok(())) => continue,
                _ => return empty(StatusCode::NO_CONTENT),
            }
        }
    }

    /// Records the poll and returns a guard that marks it closed, also when the gateway hangs
    /// up mid-wait (the handler future is dropped then).
    fn open_poll(self: &Arc<Self>, request: &PollRequest, peer: SocketAddr) -> OpenPoll {
        let mut gateways = self.gateways.lock().unwrap_or_else(|e| e.into_inner());
        let record = gateways.entry(request.gateway.clone()).or_insert_with(|| Record {
            namespace: String::new(),
            identity: String::new(),
            acked: 0,
            last_seen: Instant::now(),
            open_polls: 0,
            address: String::new(),
        });
        record.namespace = request.namespace.clone();
        record.identity = request.identity();
        record.acked = request.acked;
        record.last_seen = Instant::now();
        record.open_polls += 1;
        record.address = peer.ip().to_string();
        OpenPoll { distributor: self.clone(), gateway: request.gateway.clone() }
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        match (request.method(), path.as_str()) {
            (&Method::GET, "/healthz/ready") => {
                if self.ready() {
                    text(StatusCode::OK, "LIVE\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "NOT READY\n")
                }
            }
            (&Method::GET, "/metrics") => Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(self.render_metrics())))
                .unwrap_or_default(),
            (_, "/v1/snapshot" | "/v1/status") if !self.authorized(&request) => {
                text(StatusCode::UNAUTHORIZED, "a valid bearer token is required\n")
            }
            (&Method::GET, "/v1/status") => json(&self.status()),
            (&Method::POST, "/v1/snapshot") => {
                let body = match Limited::new(request.into_body(), MAX_POLL_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "poll body too large\n"),
                };
                match serde_json::from_slice::<PollRequest>(&body) {
                    Ok(poll) if !poll.gateway.is_empty() => self.poll(poll, peer).await,
                    Ok(_) => text(StatusCode::BAD_REQUEST, "poll without a gateway name\n"),
                    Err(e) => text(StatusCode::BAD_REQUEST, &format!("poll body: {e}\n")),
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

struct OpenPoll {
    distributor: Arc<Distributor>,
    gateway: String,
}

impl Drop for OpenPoll {
    fn drop(&mut self) {
        let mut gateways = self.distributor.gateways.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = gateways.get_mut(&self.gateway) {
            r.open_polls = r.open_polls.saturating_sub(1);
            r.last_seen = Instant::now();
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    Response::builder().status(status).body(Full::new(Bytes::new())).unwrap_or_default()
}

fn json<T: serde::Serialize>(value: &T) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec_pretty(value).unwrap_or_default())))
        .unwrap_or_default()
}

/// Serves the distribution endpoints until `shutdown` turns true.
pub async fn serve(listener: TcpListener, distributor: Arc<Distributor>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let distributor = distributor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let d = distributor.clone();
                async move { Ok::<_, std::convert::Infallible>(d.handle(request, peer).await) }
            });
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(%peer, error = %e, "controller connection ended");
            }
        });
    }
}
