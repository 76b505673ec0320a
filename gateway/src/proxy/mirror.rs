//! `mirror` / `mirrors`: fire-and-forget copies of a route's requests, as Envoy's request
//! mirror policies send them.
//!
//! ```text
//!  request_filter (route decided) ─ per mirror: draw its share, take a slot under
//!  │   --max-mirrors-in-flight (or count `dropped`), pick an endpoint of the mirror cluster,
//!  │   spawn the copy with the upstream head and `-shadow` appended to its host
//!  request_body_filter ─ each body chunk to the copies' bounded queues (a copy that falls
//!  │   behind is abandoned, never waited for); a retry's replay is not sent twice
//!  the copy's task ─ connect, send, read and discard the response, within the route's
//!      timeout (60 s without one): `sent` or `failed`
//! ```
//!
//! The original request never waits for a copy and never sees its outcome; a copy holds at
//! most its queue of body chunks, so a slow or dead mirror target costs a bounded amount of
//! memory per slot.

use crate::balance::Pick;
use crate::compiled::MirrorRuntime;
use crate::telemetry::metrics::Metrics;
use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a copy may take when its route has no timeout.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Body chunks queued for a copy; a copy further behind than this is abandoned.
const QUEUE: usize = 16;
/// How long a mirror's idle upstream connection stays pooled.
const IDLE: Duration = Duration::from_secs(60);

/// The copies in flight, process-wide, and their cap.
pub(crate) struct Mirroring {
    in_flight: Arc<AtomicUsize>,
    cap: usize,
}

/// A place under the cap, released when the copy ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Mirroring {
    pub(crate) fn new(cap: usize) -> Mirroring {
        Mirroring { in_flight: Arc::default(), cap }
    }

    fn slot(&self) -> Option<Slot> {
        let taken = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(self.in_flight.clone());
        (taken < self.cap).then_some(slot)
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

thread_local! {
    /// Each worker's own connector (and so its own pool of connections to mirror targets):
    /// copies stay on the worker that took the request, like the requests themselves.
    static CONNECTOR: Arc<Connector> = Arc::new(Connector::new(None));
}

enum Message {
    Chunk(Bytes),
    End,
}

/// Where the request body goes to the copies.
pub(super) struct Feed {
    queues: Vec<mpsc::Sender<Message>>,
    /// Body bytes the copies have; a retry replays the body from its start.
    sent: usize,
    /// Body bytes of the current try so far, and which try that is.
    offset: usize,
    try_number: u32,
}

impl Feed {
    /// A chunk of the request body (`None` at its end) on its way to try `try_number`.
    pub(super) fn push(&mut self, try_number: u32, chunk: Option<&Bytes>, end: bool) {
        if try_number != self.try_number {
            (self.try_number, self.offset) = (try_number, 0);
        }
        if let Some(chunk) = chunk {
            let start = self.offset;
            self.offset += chunk.len();
            if self.offset > self.sent {
                let fresh = chunk.slice(self.sent.saturating_sub(start).min(chunk.len())..);
                self.sent = self.offset;
                // A full queue: that copy is behind; dropping its sender abandons it.
                self.queues.retain(|q| q.try_send(Message::Chunk(fresh.clone())).is_ok());
            }
        }
        if end {
            for q in self.queues.drain(..) {
                let _ = q.try_send(Message::End);
            }
        }
    }
}

/// What a copy needs besides the head.
pub(super) struct Request<'a> {
    /// The upstream head of the original request (rewrites and header edits applied).
    pub(super) head: &'a RequestHeader,
    pub(super) has_body: bool,
    /// The route's timeout, which bounds each copy too.
    pub(super) timeout: Option<Duration>,
}

/// Starts the copies `mirrors` draw for `request`; the returned feed takes its body.
pub(super) fn start(
    mirroring: &Mirroring,
    metrics: &Arc<Metrics>,
    mirrors: &[MirrorRuntime],
    request: Request<'_>,
) -> Option<Feed> {
    let mut queues = Vec::new();
    for mirror in mirrors {
        if mirror.per_million < 1_000_000 && fastrand::u32(0..1_000_000) >= mirror.per_million {
            continue;
        }
        let cluster = &mirror.cluster;
        let name = cluster.definition.name.clone();
        let Some(slot) = mirroring.slot() else {
            metrics.mirror(&name, "dropped");
            continue;
        };
        let pick = match cluster.definition.not_found {
            true => None,
            false => cluster.balancer.pick(None, None),
        };
        let Some((pick, peer)) = pick.and_then(|p| super::peer_for(cluster, p.index()).ok().map(|peer| (p, peer)))
        else {
            metrics.mirror(&name, "failed");
            continue;
        };
        let mut head = request.head.clone();
        if let Some(shadow) = head.headers.get(http::header::HOST).and_then(|h| shadow_host(h.to_str().ok()?)) {
            let _ = head.insert_header(http::header::HOST, shadow);
        }
        let body = request.has_body.then(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.push(tx);
            rx
        });
        let copy = Copy { head: Box::new(head), peer, body, _pick: pick, _slot: slot };
        let deadline = request.timeout.unwrap_or(DEFAULT_DEADLINE);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let connector = CONNECTOR.with(Arc::clone);
            let outcome = match tokio::time::timeout(deadline, copy.send(&connector)).await {
                Ok(Ok(())) => "sent",
                Ok(Err(e)) => {
                    tracing::debug!(cluster = &*name, error = %e, "mirrored request failed");
                    "failed"
                }
                Err(_) => "failed",
            };
            metrics.mirror(&name, outcome);
        });
    }
    (!queues.is_empty()).then_some(Feed { queues, sent: 0, offset: 0, try_number: 0 })
}

/// Envoy's shadow host: `-shadow` after the host name, before any port.
fn shadow_host(host: &str) -> Option<String> {
    let (name, port) = match host.rsplit_once(':') {
        // Not an IPv6 literal's colon.
        Some((name, port)) if !port.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => (name, Some(port)),
        _ => (host, None),
    };
    match port {
        Some(port) => Some(format!("{name}-shadow:{port}")),
        None => Some(format!("{name}-shadow")),
    }
}

struct Copy {
    head: Box<RequestHeader>,
    peer: HttpPeer,
    /// `None` for a request without a body.
    body: Option<mpsc::Receiver<Message>>,
    /// The endpoint's in-flight count and the cap's slot, held until the copy ends.
    _pick: Pick,
    _slot: Slot,
}

impl Copy {
    async fn send(self, connector: &Connector) -> Result<()> {
        let Copy { head, peer, body, .. } = self;
        let (mut session, _reused) = connector.get_http_session(&peer).await?;
        session.write_request_header(head).await?;
        if let Some(mut body) = body {
            loop {
                match body.recv().await {
                    Some(Message::Chunk(chunk)) => session.write_request_body(chunk, false).await?,
                    Some(Message::End) => break,
                    // The original request's body broke off, or this copy fell behind.
                    None => return Err(Error::explain(ErrorType::WriteError, "request body incomplete")),
                }
            }
        }
        session.finish_request_body().await?;
        session.read_response_header().await?;
        while session.read_response_body().await?.is_some() {}
        connector.release_http_session(session, &peer, Some(IDLE)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_hosts_as_envoy_writes_them() {
        assert_eq!(shadow_host("httpbin").as_deref(), Some("httpbin-shadow"));
        assert_eq!(shadow_host("httpbin.example.com:8080").as_deref(), Some("httpbin.example.com-shadow:8080"));
        assert_eq!(shadow_host("[::1]:80").as_deref(), Some("[::1]-shadow:80"));
        assert_eq!(shadow_host("[::1]").as_deref(), Some("[::1]-shadow"));
    }

    #[test]
    fn the_cap_counts_slots_until_they_drop() {
        let m = Mirroring::new(2);
        let (a, b) = (m.slot(), m.slot());
        assert!(a.is_some() && b.is_some());
        assert!(m.slot().is_none(), "a third copy is over the cap");
        drop(a);
        assert!(m.slot().is_some(), "a released slot is free again");
        drop(b);
        assert_eq!(m.in_flight(), 0);
    }

    fn feed(queues: usize) -> (Feed, Vec<mpsc::Receiver<Message>>) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..queues).map(|_| mpsc::channel(QUEUE)).unzip();
        (Feed { queues: tx, sent: 0, offset: 0, try_number: 0 }, rx)
    }

    fn received(rx: &mut mpsc::Receiver<Message>) -> (Vec<u8>, bool) {
        let (mut bytes, mut end) = (Vec::new(), false);
        while let Ok(m) = rx.try_recv() {
            match m {
                Message::Chunk(c) => bytes.extend_from_slice(&c),
                Message::End => end = true,
            }
        }
        (bytes, end)
    }

    #[test]
    fn a_retry_replay_is_not_sent_twice() {
        let (mut f, mut rx) = feed(1);
        f.push(1, Some(&Bytes::from_static(b"hello ")), false);
        // The second try replays what Pingora buffered, then the body goes on.
        f.push(2, Some(&Bytes::from_static(b"hel")), false);
        f.push(2, Some(&Bytes::from_static(b"lo wor")), false);
        f.push(2, Some(&Bytes::from_static(b"ld")), false);
        f.push(2, None, true);
        assert_eq!(received(&mut rx[0]), (b"hello world".to_vec(), true));
    }

    #[test]
    fn a_copy_that_falls_behind_is_abandoned() {
        let (mut f, mut rx) = feed(2);
        for _ in 0..QUEUE + 1 {
            f.push(1, Some(&Bytes::from_static(b"x")), false);
            let _ = rx[1].try_recv(); // this copy keeps up
        }
        f.push(1, None, true);
        let (bytes, end) = received(&mut rx[0]);
        assert_eq!((bytes.len(), end), (QUEUE, false), "the slow copy got what fit, and no end");
        assert!(rx[0].try_recv().is_err(), "its queue is closed");
        assert!(matches!(rx[1].try_recv(), Ok(Message::End)));
    }
}
