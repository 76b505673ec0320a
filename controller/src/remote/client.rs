//! The gateway's side: long-poll the controller, hand new snapshots to the data plane, report
//! back what it applied, and keep serving the last snapshot whenever the controller is away.

use super::transport::{self, HttpError};
use super::wire::{PollRequest, SnapshotMessage};
use crate::snapshot::Snapshot;
use http::Method;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Controller base URL, e.g. `http://meshgate-controller.istio-system:15010`.
    pub url: String,
    pub token: String,
    pub gateway: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// How long the controller may hold a poll with nothing new.
    pub wait: Duration,
}

/// What happened on the channel, for logs and metrics of the embedding gateway.
#[derive(Debug)]
pub enum Event {
    /// A new snapshot arrived.
    Received { version: u64 },
    /// A poll ended without change: the controller is there.
    Unchanged,
    /// The controller could not be reached or refused; `retry_in` is the backoff.
    Failed { error: String, retry_in: Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("snapshot from {url} does not decode: {source}")]
    Decode { url: String, source: serde_json::Error },
}

/// One poll: `Ok(None)` when nothing changed within the wait.
pub async fn poll_once(
    options: &ClientOptions,
    have: u64,
    instance: &str,
    acked: u64,
) -> Result<Option<SnapshotMessage>, PollError> {
    let url = format!("{}/v1/snapshot", transport::normalize(&options.url));
    let request = PollRequest {
        gateway: options.gateway.clone(),
        namespace: options.namespace.clone(),
        labels: options.labels.clone(),
        have,
        instance: instance.to_string(),
        acked,
        wait_seconds: options.wait.as_secs(),
    };
    let body = serde_json::to_vec(&request).expect("poll request serializes");
    // The controller holds the poll up to `wait`; allow for a slow large answer beyond that.
    let timeout = options.wait + Duration::from_secs(30);
    let reply = transport::send(Method::POST, &url, Some(&options.token), Some(body), timeout).await?;
    match reply.status {
        http::StatusCode::NO_CONTENT => Ok(None),
        s if s.is_success() => {
            SnapshotMessage::decode(&reply.body).map(Some).map_err(|source| PollError::Decode { url, source })
        }
        _ => Err(reply.success(&url).expect_err("non-2xx statuses are errors").into()),
    }
}

/// Runs until `snapshots` has no receiver left. `applied` follows the version the data plane
/// has compiled; it is reported as the acknowledgement on the next poll, and the next poll
/// waits for it so `proxy-status` sees a fresh version acknowledged promptly.
pub async fn run(
    options: ClientOptions,
    snapshots: watch::Sender<Arc<Snapshot>>,
    mut applied: watch::Receiver<u64>,
    on_event: impl Fn(Event) + Send,
) {
    let mut have = 0;
    let mut instance = String::new();
    let mut backoff = Backoff::new();
    while !snapshots.is_closed() {
        let acked = *applied.borrow();
        match poll_once(&options, have, &instance, acked).await {
            Ok(Some(message)) => {
                backoff.reset();
                let snapshot = message.snapshot;
                have = snapshot.version;
                instance = message.instance;
                on_event(Event::Received { version: have });
                snapshots.send_replace(Arc::new(snapshot));
                // Bounded: a data plane that cannot compile must not stop us from polling.
                let _ = tokio::time::timeout(Duration::from_secs(30), applied.wait_for(|v| *v == have)).await;
                // The data plane skips version 0, and a controller restart may repeat a
                // version number; either way the next poll must go out.
            }
            Ok(None) => {
                backoff.reset();
                on_event(Event::Unchanged);
            }
            Err(e) => {
                let retry_in = backoff.next();
                on_event(Event::Failed { error: e.to_string(), retry_in });
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// Exponential backoff with jitter: 250 ms doubling to 30 s, so a fleet of replicas does not
/// reconnect in lockstep after a controller restart.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        // Up to +50% jitter, from the clock's low bits (no RNG dependency for this).
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        base + base.mul_f64((nanos % 500) as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_and_resets() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(first >= Backoff::FIRST && first < Backoff::FIRST * 2);
        for _ in 0..20 {
            assert!(b.next() <= Backoff::MAX.mul_f64(1.5));
        }
        b.reset();
        assert!(b.next() < Backoff::FIRST * 2);
    }
}
