//! The resource source a binary runs, written once for `controller` and `gateway` (embedded
//! mode): the command-line flags that choose it, and starting it.
//!
//! ```text
//!  SourceArgs ─► start ─┬─ --config: files loaded and watched (source::watch) ─┐
//!                       └─ --kube:   the Kubernetes API (source::kube)      ───┴─► on_store(Store)
//! ```

use super::files::{FileOptions, DEFAULT_MAX_FILE_BYTES};
use super::watch::{self, FileSource};
use crate::store::Store;
use std::path::PathBuf;
use std::time::Duration;

/// Where resources come from, as both binaries take it on the command line.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// Files or folders of Istio/Kubernetes YAML; repeatable; watched for changes.
    #[arg(long = "config", value_name = "PATH", num_args = 1.., conflicts_with = "kube")]
    pub config: Vec<PathBuf>,
    /// With --config: config and certificate files larger than this are not read (an error
    /// names each; what it held before keeps serving). Default 16 MiB.
    #[arg(long, value_name = "BYTES")]
    pub max_config_file_bytes: Option<u64>,
    /// Read resources from the Kubernetes API (in-cluster service account or KUBECONFIG).
    #[arg(long)]
    pub kube: bool,
    /// With --kube: namespaces to watch (default: all).
    #[arg(long, value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// With --kube: only resources labelled `istio.io/rev=<revision>` ("default" also takes
    /// unlabelled ones), as istiod revisions select their config.
    #[arg(long)]
    pub revision: Option<String>,
    /// Quiet time after a change before translating, so a burst of changes is one version
    /// (default: 10 ms for files in the gateway, 100 ms otherwise).
    #[arg(long, value_name = "MS")]
    pub debounce_ms: Option<u64>,
}

impl SourceArgs {
    /// `NoSource` unless the flags name a source (a binary checks before it starts serving).
    pub fn check(&self) -> Result<(), StartError> {
        if self.kube || !self.config.is_empty() {
            Ok(())
        } else {
            Err(StartError::NoSource)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("give a config source: --config PATH (a folder or file of Istio YAML) or --kube")]
    NoSource,
    #[error("watching the config files: {0}")]
    Files(#[from] std::io::Error),
    #[cfg(feature = "kube")]
    #[error(transparent)]
    Kube(#[from] super::kube::EmbedError),
    #[cfg(not(feature = "kube"))]
    #[error("this binary was built without the `kube` feature; use --config")]
    KubeNotBuilt,
}

/// What the source does with what it reads.
pub struct Sink<S, H> {
    /// A complete Store after each (debounced) change; runs off the async workers.
    pub on_store: S,
    /// The Kubernetes source's health summary, every second (not called for files).
    pub on_health: H,
}

/// Starts the source `args` names. `gateway_namespace` is where Secrets (and the security
/// policies that can select the gateway) are read; `file_debounce` is the binary's default
/// quiet time for files. Returns once the source runs.
pub async fn start<S, H>(
    args: &SourceArgs,
    gateway_namespace: &str,
    file_debounce: Duration,
    registry: &prometheus::Registry,
    sink: Sink<S, H>,
) -> Result<(), StartError>
where
    S: FnMut(Store) + Send + 'static,
    H: Fn(serde_json::Value) + Send + 'static,
{
    args.check()?;
    if args.kube {
        return start_kube(args, gateway_namespace, registry, sink).await;
    }
    let source = FileSource {
        paths: args.config.clone(),
        options: FileOptions { max_file_bytes: args.max_config_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES) },
    };
    let quiet = args.debounce_ms.map_or(file_debounce, Duration::from_millis);
    // Parsing and translation garbage, and the previous store, were freed on the loop's
    // thread: given back once the config settles.
    watch::spawn_loop(source, quiet, sink.on_store, meshgate_model::memory::release_freed)?;
    Ok(())
}

#[cfg(feature = "kube")]
async fn start_kube<S, H>(
    args: &SourceArgs,
    gateway_namespace: &str,
    registry: &prometheus::Registry,
    sink: Sink<S, H>,
) -> Result<(), StartError>
where
    S: FnMut(Store) + Send + 'static,
    H: Fn(serde_json::Value) + Send + 'static,
{
    let mut options = super::kube::KubeOptions {
        namespaces: args.watch_namespaces.clone(),
        gateway_namespace: gateway_namespace.to_string(),
        revision: args.revision.clone(),
        ..Default::default()
    };
    if let Some(ms) = args.debounce_ms {
        options.debounce = Duration::from_millis(ms);
    }
    super::kube::start(options, registry, sink.on_store, sink.on_health).await?;
    tracing::info!(namespaces = ?args.watch_namespaces, revision = ?args.revision, "watching the Kubernetes API");
    Ok(())
}

#[cfg(not(feature = "kube"))]
async fn start_kube<S, H>(_: &SourceArgs, _: &str, _: &prometheus::Registry, _: Sink<S, H>) -> Result<(), StartError> {
    Err(StartError::KubeNotBuilt)
}
