//! Open downstream connections: counted so shutdown can wait for them, and limited so that
//! a flood of idle connections cannot take every descriptor the process has.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Counts open connections of a set of listeners (the data ports, or the admin ports) and
/// holds them under a limit.
#[derive(Clone)]
pub(crate) struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    open: AtomicUsize,
    limit: usize,
    /// Notified when the last connection closes (drain waits for it).
    idle: Notify,
    /// Notified when a connection closes while the count is at the limit.
    below_limit: Notify,
    active_gauge: prometheus::IntGauge,
    total: prometheus::IntCounter,
    overload: Option<Overload>,
}

/// How the data ports report being at their connection limit.
#[derive(Clone)]
pub(crate) struct Overload {
    /// 1 while accepting is paused at the limit.
    pub(crate) active: prometheus::IntGauge,
    /// Times accepting paused.
    pub(crate) paused: prometheus::IntCounter,
}

/// Gives the connection's place back on drop, whichever way the connection ends.
pub(crate) struct ConnectionGuard(Connections);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let inner = &self.0.inner;
        inner.active_gauge.dec();
        let before = inner.open.fetch_sub(1, Ordering::AcqRel);
        if before >= inner.limit {
            inner.below_limit.notify_waiters();
        }
        if before == 1 {
            inner.idle.notify_waiters();
        }
    }
}

impl Connections {
    /// `limit`: connections open at once (`usize::MAX` for none); `overload` reports pauses.
    pub(crate) fn new(
        active_gauge: prometheus::IntGauge,
        total: prometheus::IntCounter,
        limit: usize,
        overload: Option<Overload>,
    ) -> Connections {
        Connections {
            inner: Arc::new(Inner {
                open: AtomicUsize::new(0),
                limit: limit.max(1),
                idle: Notify::new(),
                below_limit: Notify::new(),
                active_gauge,
                total,
                overload,
            }),
        }
    }

    pub(crate) fn open(&self) -> ConnectionGuard {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        self.inner.active_gauge.inc();
        self.inner.total.inc();
        ConnectionGuard(self.clone())
    }

    pub(crate) fn count(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Whether the limit is reached. Each worker checks it before it accepts, so together
    /// they may pass it by one connection per worker besides the first (a worker already
    /// waiting in `accept` takes the next connection).
    pub(crate) fn full(&self) -> bool {
        self.count() >= self.inner.limit
    }

    /// Resolves once the count is below the limit; a wait is reported as overload.
    pub(crate) async fn admit(&self) {
        let inner = &self.inner;
        let mut paused = false;
        loop {
            let below = inner.below_limit.notified();
            if !self.full() {
                if paused {
                    if let Some(o) = &inner.overload {
                        o.active.set(0);
                    }
                }
                return;
            }
            if !paused {
                paused = true;
                if let Some(o) = &inner.overload {
                    o.active.set(1);
                    o.paused.inc();
                }
                tracing::debug!(limit = inner.limit, "connection limit reached; accepting paused");
            }
            below.await;
        }
    }

    /// Resolves once no connection is open.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(limit: usize) -> (Connections, Overload) {
        let overload = Overload {
            active: prometheus::IntGauge::new("a", "-").unwrap(),
            paused: prometheus::IntCounter::new("p", "-").unwrap(),
        };
        let gauge = prometheus::IntGauge::new("g", "-").unwrap();
        let total = prometheus::IntCounter::new("t", "-").unwrap();
        (Connections::new(gauge, total, limit, Some(overload.clone())), overload)
    }

    #[tokio::test]
    async fn admission_waits_for_a_connection_to_close() {
        let (c, overload) = connections(2);
        let first = c.open();
        let _second = c.open();
        assert!(c.full());
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.admit().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "admitted while at the limit");
        assert_eq!(overload.active.get(), 1);
        assert_eq!(overload.paused.get(), 1);
        drop(first);
        waiting.await.unwrap();
        assert_eq!(overload.active.get(), 0);
        assert!(!c.full());
    }

    #[tokio::test]
    async fn drain_waits_for_the_last_connection() {
        let (c, _) = connections(usize::MAX);
        let guard = c.open();
        let idle = tokio::spawn({
            let c = c.clone();
            async move { c.wait_idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!idle.is_finished());
        drop(guard);
        idle.await.unwrap();
    }
}
