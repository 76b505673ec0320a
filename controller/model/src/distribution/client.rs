//! The gateway's side: long-poll the controller, hand new snapshots to the data plane, report
//! back what it applied, and keep serving the last snapshot whenever the controller is away.

use super::delta::DeltaError;
use super::transport::{self, HttpError};
use super::wire::{DeltaMessage, PollRequest, SnapshotMessage, DELTA_HEADER};
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
    /// Called on the thread that decoded a snapshot, once the wire bytes and the decoding's
    /// garbage are freed (the gateway gives that memory back to the system there: a 10k-service
    /// snapshot is ~22 MB of JSON).
    pub after_decode: Option<fn()>,
}

/// What happened on the channel, for logs and metrics of the embedding gateway.
#[derive(Debug)]
pub enum Event {
    /// A new snapshot arrived, whole or as a delta from the one held.
    Received { version: u64, delta: bool },
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
    #[error("decoding the snapshot was interrupted: {0}")]
    Interrupted(tokio::task::JoinError),
    #[error(transparent)]
    Delta(#[from] DeltaError),
}

/// A snapshot from one poll.
#[derive(Debug)]
pub struct Received {
    pub snapshot: Snapshot,
    /// The sending controller process (see [`PollRequest::instance`]).
    pub instance: String,
    /// It came as a delta from the snapshot the poll held.
    pub delta: bool,
}

/// One poll: `Ok(None)` when nothing changed within the wait. `held` is the snapshot the
/// gateway serves (version 0 when none): deltas apply to it.
pub async fn poll_once(
    options: &ClientOptions,
    held: &Arc<Snapshot>,
    instance: &str,
    acked: u64,
) -> Result<Option<Received>, PollError> {
    let url = format!("{}/v1/snapshot", transport::normalize(&options.url));
    let request = PollRequest {
        gateway: options.gateway.clone(),
        namespace: options.namespace.clone(),
        labels: options.labels.clone(),
        have: held.version,
        instance: instance.to_string(),
        acked,
        wait_seconds: options.wait.as_secs(),
        deltas: true,
    };
    let body = serde_json::to_vec(&request).expect("poll request serializes");
    // The controller holds the poll up to `wait`; allow for a slow large answer beyond that.
    let timeout = options.wait + Duration::from_secs(30);
    let reply = transport::send(Method::POST, &url, Some(&options.token), Some(body), timeout).await?;
    if reply.status == http::StatusCode::NO_CONTENT {
        return Ok(None);
    }
    if !reply.status.is_success() {
        return Err(reply.success(&url).expect_err("non-2xx statuses are errors").into());
    }
    let is_delta = reply.headers.contains_key(DELTA_HEADER);
    let held = held.clone();
    let after_decode = options.after_decode;
    // Off the async workers: at 10k services a whole snapshot takes ~100 ms to decode, and
    // the gateway's requests run on these workers.
    let decoded = tokio::task::spawn_blocking(move || {
        let decoded = if is_delta {
            DeltaMessage::decode(&reply.body).map_err(|source| PollError::Decode { url, source }).and_then(|m| {
                let snapshot = m.delta.apply(&held)?;
                Ok(Received { snapshot, instance: m.instance, delta: true })
            })
        } else {
            SnapshotMessage::decode(&reply.body)
                .map(|mut m| {
                    m.snapshot.share_decoded_parts();
                    Received { snapshot: m.snapshot, instance: m.instance, delta: false }
                })
                .map_err(|source| PollError::Decode { url, source })
        };
        drop((reply, held));
        if let Some(after) = after_decode {
            after();
        }
        decoded
    })
    .await;
    match decoded {
        Ok(decoded) => decoded.map(Some),
        Err(source) => Err(PollError::Interrupted(source)),
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
    let mut instance = String::new();
    let mut backoff = Backoff::new();
    while !snapshots.is_closed() {
        let acked = *applied.borrow();
        let held = snapshots.borrow().clone();
        match poll_once(&options, &held, &instance, acked).await {
            Ok(Some(received)) => {
                backoff.reset();
                let snapshot = received.snapshot;
                let have = snapshot.version;
                instance = received.instance;
                on_event(Event::Received { version: have, delta: received.delta });
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
                if matches!(e, PollError::Delta(_)) {
                    // Not from the snapshot we hold: the next poll asks for a whole one.
                    instance.clear();
                }
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
