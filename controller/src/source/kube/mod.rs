//! The Kubernetes API source: watches the kinds meshgate uses and hands complete [`Store`]s to
//! the caller, which runs the same translation as file mode.
//!
//! ```text
//!  one watch task per kind (and per namespace when namespaces are listed)
//!     │  kube::runtime::watcher + default backoff; relists by itself after 410 Gone
//!     ▼  Update (Listed / Applied / Deleted / Unavailable) over one channel
//!  aggregator: Cache of decoded objects (and JSON fingerprints) by (watch, namespace/name)
//!     │  waits until every watch has listed once, then debounces changes
//!     ▼
//!  Cache::build → decode::add_document per new or changed object, replay of the
//!                 kept results for the others → Store → on_change(Store)
//! ```
//!
//! Failure handling: a failing watch (API server down, RBAC denial, 410) is logged, counted in
//! [`SourceHealth`] and retried with kube's default backoff; meanwhile nothing is published,
//! so the last Store keeps serving. A kind that is forbidden (403) or not served (404, e.g.
//! Istio CRDs missing) before its first successful list counts as empty, so one missing
//! permission does not hold back the first snapshot; when the list later succeeds its objects
//! are published like any change.
//!
//! Istio API version: Istio serves the same stored objects as v1alpha3, v1beta1 and v1.
//! [`KubeOptions::istio_version`] (default `v1`) is used; when it is `v1` and the API server
//! answers 404 for a kind before any list succeeded (Istio before 1.22), that kind's watch falls
//! back to `v1beta1`.

mod cache;
mod embed;
mod health;
#[cfg(test)]
mod tests;

pub use embed::{start, EmbedError};
pub use health::{ErrorReason, HealthSummary, KindSummary, SourceHealth};

use crate::store::kind::Scope;
use crate::store::Kind;
use crate::store::{ObjectKey, Store, DEFAULT_NAMESPACE};
use cache::{Cache, Update};
use futures_util::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, TypeMeta};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The label Istio uses to bind config to a control-plane revision.
pub const REVISION_LABEL: &str = "istio.io/rev";

/// A steadily changing cluster still publishes at least this often (in multiples of the
/// debounce), so endpoint churn cannot starve configuration changes.
const MAX_DELAY_FACTOR: u32 = 10;

/// What to watch and how to publish.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Namespaces to watch; empty means all namespaces (cluster-wide list/watch).
    pub namespaces: Vec<String>,
    /// The gateway's own namespace: Secrets are read only here, as Istio requires for
    /// `credentialName`.
    pub gateway_namespace: String,
    /// When set, only Istio config labelled `istio.io/rev=<revision>` applies; unlabelled config
    /// applies only when the revision is `default`. Services, Pods, EndpointSlices and Secrets
    /// are not filtered (Istio does not filter them by revision either).
    pub revision: Option<String>,
    /// Quiet time after the last change before a Store is published.
    pub debounce: Duration,
    /// Version of `networking.istio.io` to watch (see the module docs for the fallback).
    pub istio_version: String,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            namespaces: Vec::new(),
            gateway_namespace: "istio-system".to_string(),
            revision: None,
            debounce: Duration::from_millis(100),
            istio_version: "v1".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Kubernetes source option: {0}")]
    Options(String),
    /// Watches end only if their task panicked; the caller should exit and be restarted.
    #[error("every Kubernetes watch ended")]
    WatchesEnded,
}

/// One watch: a kind (its group and plural from [`Kind::api`]) in one namespace or all.
struct Target {
    kind: Kind,
    /// Versions to try, in order (more than one only for the Istio fallback).
    versions: Vec<String>,
    namespace: Option<String>,
}

/// Watches the cluster and calls `on_change` with a complete Store after the initial lists and
/// after every (debounced) change. Runs until every watch has ended, which does not happen in
/// normal operation, so it returns only with an error; dropping the future stops all watches.
///
/// `on_change` runs on this task: keep it short (translate and publish, or send to a channel).
/// It is not called when nothing visible changed, and never during an outage: the last Store
/// it received stays valid.
///
/// Wiring it to the publisher (translation `Options::namespace` should be the same namespace
/// as [`KubeOptions::gateway_namespace`]):
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use controller::publish::Publisher;
/// use controller::source::kube::{run, KubeOptions, SourceHealth};
/// use std::sync::Arc;
///
/// let (mut publisher, _snapshots) = Publisher::new(controller::Options::default());
/// let health = Arc::new(SourceHealth::new());
/// let client = kube::Client::try_default().await?;
/// run(client, KubeOptions::default(), health.clone(), move |store| {
///     let outcome = publisher.apply(store);
///     tracing::info!(version = outcome.version, rejected = outcome.rejected, "cluster change applied");
/// })
/// .await?;
/// # Ok(())
/// # }
/// ```
pub async fn run<F>(
    client: Client,
    options: KubeOptions,
    health: Arc<SourceHealth>,
    mut on_change: F,
) -> Result<(), Error>
where
    F: FnMut(Store) + Send + 'static,
{
    if options.gateway_namespace.is_empty() {
        return Err(Error::Options("gateway_namespace must not be empty".into()));
    }
    let mut cache = Cache::default();
    let (tx, mut rx) = mpsc::channel(256);
    // Owning the tasks here means dropping `run` aborts them.
    let mut tasks = tokio::task::JoinSet::new();
    for target in targets(&options) {
        health.register(target.kind);
        let stream = cache.add_stream(target.kind);
        // The revision filter applies to Istio's own kinds.
        let revision = if target.kind.api().istio { options.revision.clone() } else { None };
        tasks.spawn(watch(client.clone(), target, stream, revision, tx.clone(), health.clone()));
    }
    drop(tx);

    // Time of the first unpublished change and of the latest one.
    let mut pending: Option<(Instant, Instant)> = None;
    loop {
        let deadline = match pending {
            Some((first, last)) if cache.all_ready() => {
                Some((last + options.debounce).min(first + options.debounce * MAX_DELAY_FACTOR))
            }
            _ => None,
        };
        tokio::select! {
            update = rx.recv() => {
                let Some(update) = update else { return Err(Error::WatchesEnded) };
                let stream = match &update {
                    Update::Listed { stream, .. }
                    | Update::Applied { stream, .. }
                    | Update::Deleted { stream, .. }
                    | Update::Unavailable { stream } => *stream,
                };
                if cache.apply(update) {
                    let now = Instant::now();
                    pending = Some((pending.map_or(now, |(first, _)| first), now));
                }
                let kind = cache.kind_of(stream);
                health.set_synced(kind, cache.kind_synced(kind));
            }
            () = sleep_until(deadline) => {
                pending = None;
                let store = cache.build(&options.gateway_namespace);
                tracing::info!(resources = store.len(), "Kubernetes source publishing a new store");
                health.published();
                on_change(store);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Every watch the options ask for.
fn targets(options: &KubeOptions) -> Vec<Target> {
    let mut istio_versions = vec![options.istio_version.clone()];
    if options.istio_version == "v1" {
        istio_versions.push("v1beta1".to_string());
    }
    let scopes: Vec<Option<String>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().map(|n| Some(n.clone())).collect()
    };
    // Policies are read so that meshgate denies instead of ignoring what it cannot enforce;
    // only these namespaces hold policies that can select the gateway.
    let mut policy_scopes = vec![Some(options.gateway_namespace.clone())];
    if options.gateway_namespace != crate::translate::policies::ROOT_NAMESPACE {
        policy_scopes.push(Some(crate::translate::policies::ROOT_NAMESPACE.to_string()));
    }
    let gateway_scope = vec![Some(options.gateway_namespace.clone())];
    let mut out = Vec::new();
    for &kind in Kind::ALL {
        let api = kind.api();
        let versions = if api.istio { istio_versions.clone() } else { vec![api.versions[0].to_string()] };
        let namespaces = match api.scope {
            Scope::Watched => &scopes,
            Scope::GatewayAndRoot => &policy_scopes,
            Scope::Gateway => &gateway_scope,
        };
        for namespace in namespaces {
            out.push(Target { kind, versions: versions.clone(), namespace: namespace.clone() });
        }
    }
    out
}

/// One watch: runs kube's watcher (with backoff) and turns its events into cache updates.
/// Returns only when the aggregator is gone.
async fn watch(
    client: Client,
    target: Target,
    stream: usize,
    revision: Option<String>,
    tx: mpsc::Sender<Update>,
    health: Arc<SourceHealth>,
) {
    let kind = target.kind;
    let scope = target.namespace.as_deref().unwrap_or("<all>");
    let mut version = 0;
    loop {
        let api = kind.api();
        let gvk = GroupVersionKind::gvk(api.group, &target.versions[version], kind.as_str());
        let resource = ApiResource::from_gvk_with_plural(&gvk, api.plural);
        let api: Api<DynamicObject> = match &target.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let mut events = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
        // Objects of a list in progress; committed on InitDone so a relist replaces atomically.
        let mut listing: Vec<(ObjectKey, serde_json::Value)> = Vec::new();
        let mut listed = false;
        let mut fall_back = false;
        while let Some(event) = events.next().await {
            let update = match event {
                Ok(Event::Init) => {
                    listing.clear();
                    None
                }
                Ok(Event::InitApply(object)) => {
                    health.event(kind);
                    listing.extend(accept(object, &resource, revision.as_deref()).ok());
                    None
                }
                Ok(Event::InitDone) => {
                    if !listed {
                        tracing::info!(%kind, namespace = scope, version = resource.version, "watch synced");
                    }
                    listed = true;
                    health.succeeded(kind);
                    Some(Update::Listed { stream, objects: std::mem::take(&mut listing) })
                }
                Ok(Event::Apply(object)) => {
                    health.event(kind);
                    Some(match accept(object, &resource, revision.as_deref()) {
                        Ok((key, object)) => Update::Applied { stream, key, object },
                        // Relabelled to another revision: for us it is gone.
                        Err(key) => Update::Deleted { stream, key },
                    })
                }
                Ok(Event::Delete(object)) => {
                    health.event(kind);
                    Some(Update::Deleted { stream, key: key_of(&object) })
                }
                Err(e) => {
                    let reason = classify(&e);
                    tracing::warn!(%kind, namespace = scope, reason = reason.as_str(), error = %e, "watch failed; retrying with backoff");
                    health.error(kind, reason, e.to_string());
                    if !listed && reason == ErrorReason::NotFound && version + 1 < target.versions.len() {
                        fall_back = true;
                        break;
                    }
                    let unavailable = matches!(reason, ErrorReason::Forbidden | ErrorReason::NotFound);
                    (!listed && unavailable).then_some(Update::Unavailable { stream })
                }
            };
            if let Some(update) = update {
                if tx.send(update).await.is_err() {
                    return;
                }
            }
        }
        if !fall_back {
            // The watcher stream is endless; ending means the aggregator is shutting down.
            return;
        }
        version += 1;
        tracing::info!(%kind, version = target.versions[version], "falling back to an older networking.istio.io version");
    }
}

/// Normalises an object for the cache: `apiVersion`/`kind` set (list items omit them), and
/// fields that change without changing meaning removed so they do not trigger publications.
/// `Err(key)` when the revision filter rejects it.
fn accept(
    mut object: DynamicObject,
    resource: &ApiResource,
    revision: Option<&str>,
) -> Result<(ObjectKey, serde_json::Value), ObjectKey> {
    let key = key_of(&object);
    if let Some(revision) = revision {
        let label = object.metadata.labels.as_ref().and_then(|l| l.get(REVISION_LABEL));
        let matches = match label {
            Some(value) => value == revision,
            None => revision == "default",
        };
        if !matches {
            return Err(key);
        }
    }
    object.types = Some(TypeMeta { api_version: resource.api_version.clone(), kind: resource.kind.clone() });
    object.metadata.managed_fields = None;
    object.metadata.resource_version = None;
    if resource.group == "networking.istio.io" {
        // istiod's status writer updates this; translation reads only `spec`.
        if let Some(map) = object.data.as_object_mut() {
            map.remove("status");
        }
    }
    match serde_json::to_value(&object) {
        Ok(value) => Ok((key, value)),
        Err(e) => {
            // Cannot happen for JSON that came from JSON; treat the object as absent.
            tracing::error!(error = %e, name = key.name, "cannot re-encode an API object");
            Err(key)
        }
    }
}

fn key_of(object: &DynamicObject) -> ObjectKey {
    let namespace = object.metadata.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(DEFAULT_NAMESPACE);
    ObjectKey::new(namespace, object.metadata.name.as_deref().unwrap_or_default())
}

fn classify(error: &watcher::Error) -> ErrorReason {
    let from_code = |code: u16| match code {
        410 => ErrorReason::Gone,
        403 => ErrorReason::Forbidden,
        404 => ErrorReason::NotFound,
        _ => ErrorReason::Other,
    };
    let client_error = match error {
        watcher::Error::WatchError(status) => return from_code(status.code),
        watcher::Error::NoResourceVersion => return ErrorReason::Other,
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            e
        }
    };
    match client_error {
        kube::Error::Api(status) => from_code(status.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => ErrorReason::Connect,
        _ => ErrorReason::Other,
    }
}
