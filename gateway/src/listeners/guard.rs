//! Deadlines and a size cap on an HTTP/1 connection's request heads, enforced where the bytes
//! arrive: below Pingora, which times each read on its own (a client sending one byte every
//! 59 seconds kept a head open for ever) and allows heads of up to 1 MiB.
//!
//! ```text
//!            first byte                head parsed (request_filter: `head_done`)
//!  Idle ───────────────────► Head ─────────────────────────────────────► Body
//!   ▲  deadline: accept +      deadline: first stall +                     no deadline here:
//!   │  header timeout (first   header timeout; bytes                      body reads are Pingora's
//!   │  request), else ~idle    capped at the head limit                   (--body-read-timeout)
//!   └──────────────────── the connection loop, when a response is done (`idle`) ◄──┘
//! ```
//!
//! An idle connection past its deadline reads as closed (Pingora then closes it quietly, as
//! nginx and Envoy close idle connections); a head past its deadline or its size gets 408 or
//! 431, written here, and the read fails. One `Sleep` per connection, polled only when it has
//! fired or was moved: a keep-alive request costs an atomic load here, not a clock read or a
//! timer call (idle waits are timed coarsely, see [`Guarded::timed_out`]).

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Waiting for the connection's first request (its deadline counts from accept).
const FIRST: u8 = 0;
const IDLE: u8 = 1;
const HEAD: u8 = 2;
const BODY: u8 = 3;

/// Bytes a head may take past the limit within the read that completes it: that read may
/// carry the start of a body too. The exact head size is checked once it is parsed.
const READ_SLACK: usize = 4096;

/// Where the connection is: set by the connection loop and the request hook, which reach it
/// through the stream Pingora holds ([`phase_of`]); atomics only because Pingora wants streams
/// `Sync` (everything runs on the connection's task).
#[derive(Debug, Default)]
pub(crate) struct Phase {
    state: AtomicU8,
    /// Set when the head's reads passed the size limit (but not the slack): the hook that
    /// sees the parsed head then checks its exact size.
    oversized: AtomicBool,
}

/// What [`Phase::head_done`] tells the request hook.
pub(crate) struct HeadDone {
    /// The head's reads passed the size limit: its exact size is worth checking.
    pub(crate) oversized: bool,
}

impl Phase {
    /// The request's head was parsed: reads are body reads now. Returns whether the head
    /// may be over the size limit (its exact size is then worth checking).
    pub(crate) fn head_done(&self) -> HeadDone {
        self.state.store(BODY, Ordering::Relaxed);
        HeadDone { oversized: self.oversized.swap(false, Ordering::Relaxed) }
    }

    /// The response is done: the connection waits for its next request.
    pub(crate) fn idle(&self) {
        self.state.store(IDLE, Ordering::Relaxed);
    }

    fn get(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    fn set(&self, phase: u8) {
        self.state.store(phase, Ordering::Relaxed);
    }
}

/// The limits a guarded connection enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_head_bytes: usize,
}

/// Counters of what the guard refused.
#[derive(Clone)]
pub(crate) struct GuardCounters {
    /// Idle connections closed at their deadline (never sent a byte, or kept alive too long).
    pub(crate) idle: prometheus::IntCounter,
    /// Heads not complete at their deadline (408).
    pub(crate) header_timeout: prometheus::IntCounter,
    /// Heads over the size limit (431).
    pub(crate) too_large: prometheus::IntCounter,
}

/// A downstream HTTP/1 stream with head deadlines and a head size cap.
pub(crate) struct Guarded {
    inner: Stream,
    phase: Phase,
    limits: HeadLimits,
    counters: GuardCounters,
    /// The current head's deadline, once known: the first request's is set at accept (and
    /// covers its idle wait too); a later head's is fixed at its first stall.
    head_deadline: Option<Instant>,
    /// Bytes read in the current head.
    head_bytes: usize,
    /// Heads started on this connection: an idle timer that fires after this moved saw
    /// activity, and is moved on instead of closing the connection.
    heads: u64,
    /// `heads` when the timer was last armed for an idle wait.
    heads_at_arming: u64,
    /// The connection's one timer, and whether it has been polled (so holds this task's
    /// waker) since it was last armed.
    timer: Pin<Box<Sleep>>,
    timer_polled: bool,
    /// A refusal being written before the read fails.
    refusal: Option<Refusal>,
    /// Closing: the write side is shut and input is being drained (`poll_shutdown`).
    lingering: bool,
}

struct Refusal {
    bytes: &'static [u8],
    written: usize,
    error: io::ErrorKind,
}

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\nserver: istio-envoy\r\n\r\n";
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\nserver: istio-envoy\r\n\r\n";

impl Guarded {
    /// Guards `inner` from now on: its first request head must be complete within the header
    /// timeout.
    pub(crate) fn new(inner: Stream, limits: HeadLimits, counters: GuardCounters) -> Guarded {
        let deadline = Instant::now() + limits.header_timeout;
        Guarded {
            inner,
            phase: Phase::default(),
            limits,
            counters,
            head_deadline: Some(deadline),
            head_bytes: 0,
            heads: 0,
            heads_at_arming: 0,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            timer_polled: false,
            refusal: None,
            lingering: false,
        }
    }

    fn arm(&mut self, deadline: Instant) {
        self.timer.as_mut().reset(deadline);
        self.timer_polled = false;
    }

    /// Polls the timer unless it already holds this task's waker and has not fired: then
    /// there is nothing to learn (an atomic load, no clock read, no timer call).
    fn fired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timer_polled && !self.timer.is_elapsed() {
            return false;
        }
        self.timer_polled = true;
        self.timer.as_mut().poll(cx).is_ready()
    }

    /// A read found nothing to read in `phase`: whether the wait is over its deadline. Idle
    /// waits are timed coarsely so that a keep-alive request costs no clock read: the timer,
    /// once fired, closes the connection only if no head started since it was armed, and is
    /// otherwise moved a whole idle timeout on (an idle connection closes between one and two
    /// idle timeouts after its last request). Heads are timed from their first stall.
    fn timed_out(&mut self, cx: &mut Context<'_>, phase: u8) -> bool {
        match phase {
            HEAD => {
                let deadline = match self.head_deadline {
                    Some(d) => d,
                    None => {
                        let d = Instant::now() + self.limits.header_timeout;
                        self.head_deadline = Some(d);
                        if self.timer.deadline() > d || self.timer.is_elapsed() {
                            self.arm(d);
                        }
                        d
                    }
                };
                loop {
                    if !self.fired(cx) {
                        return false;
                    }
                    if Instant::now() >= deadline {
                        return true;
                    }
                    // An idle wait's timer, armed earlier: on to the head's deadline.
                    self.arm(deadline);
                }
            }
            // The first request: its deadline counts from accept.
            FIRST => self.fired(cx),
            _ => loop {
                if !self.fired(cx) {
                    return false;
                }
                if self.heads == self.heads_at_arming {
                    return true;
                }
                self.heads_at_arming = self.heads;
                self.arm(Instant::now() + self.limits.idle_timeout);
            },
        }
    }

    fn refuse(&mut self, cx: &mut Context<'_>, bytes: &'static [u8], error: io::ErrorKind) -> Poll<io::Result<()>> {
        self.refusal = Some(Refusal { bytes, written: 0, error });
        self.write_refusal(cx)
    }

    /// Writes the refusal without waiting on the client (a few bytes into an empty send
    /// buffer), then fails the read so Pingora closes the connection.
    fn write_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(refusal) = &mut self.refusal else { return Poll::Ready(Err(io::ErrorKind::Other.into())) };
        while refusal.written < refusal.bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &refusal.bytes[refusal.written..]) {
                Poll::Ready(Ok(n)) if n > 0 => refusal.written += n,
                _ => break,
            }
        }
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        Poll::Ready(Err(refusal.error.into()))
    }
}

/// The phase of a guarded HTTP/1 connection, from the stream Pingora holds (a downcast: a
/// type comparison, where a task-local cost a thread-local swap on every poll of the
/// connection). `None` for streams without a guard.
pub(crate) fn phase_of(stream: &Stream) -> Option<&Phase> {
    stream.as_any().downcast_ref::<Guarded>().map(|g| &g.phase)
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.refusal.is_some() {
            return this.write_refusal(cx);
        }
        let phase = this.phase.get();
        if phase == BODY {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n == 0 {
                    return Poll::Ready(Ok(()));
                }
                if phase != HEAD {
                    this.phase.set(HEAD);
                    this.head_bytes = 0;
                    this.heads += 1;
                    if phase != FIRST {
                        // Its deadline is fixed at its first stall, if it stalls (the first
                        // head keeps the one counted from accept).
                        this.head_deadline = None;
                    }
                }
                this.head_bytes += n;
                if this.head_bytes > this.limits.max_head_bytes {
                    this.phase.oversized.store(true, Ordering::Relaxed);
                }
                if this.head_bytes > this.limits.max_head_bytes + READ_SLACK {
                    this.counters.too_large.inc();
                    buf.set_filled(before);
                    return this.refuse(cx, TOO_LARGE, io::ErrorKind::InvalidData);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if !this.timed_out(cx, phase) {
                    return Poll::Pending;
                }
                if phase != HEAD {
                    // Nothing sent: the connection ends as if the client had closed it.
                    this.counters.idle.inc();
                    return Poll::Ready(Ok(()));
                }
                this.counters.header_timeout.inc();
                this.refuse(cx, REQUEST_TIMEOUT, io::ErrorKind::TimedOut)
            }
            ready_err => ready_err,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Pingora's close, after a response that ends the connection or a failed read (our
    /// 408/431, a malformed head, a 400 of ours): the write side closes, then what the client
    /// is still sending is read and dropped until it closes too, for up to [`LINGER`].
    /// Closing with unread input makes the kernel reset the connection, and a reset can
    /// discard the reply before the client read it (nginx's lingering close, for the same
    /// reason).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.lingering {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.lingering = true;
            this.arm(Instant::now() + LINGER);
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut discard = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut discard) {
                Poll::Ready(Ok(())) if !discard.filled().is_empty() => continue,
                // The client closed (or the connection broke): done.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending if this.fired(cx) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded").field("inner", &self.inner).field("phase", &self.phase).finish()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

/// How long a closing connection keeps reading what the client still sends (nginx's
/// `lingering_timeout` is 5 s; a client that got its reply closes at once).
const LINGER: Duration = Duration::from_secs(2);

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
