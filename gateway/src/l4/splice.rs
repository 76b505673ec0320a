//! Bidirectional byte copying between a downstream and an upstream connection.
//!
//! Used once an L4 route (TCP or TLS passthrough) has picked an upstream: from then on the gateway
//! only moves opaque bytes. Both directions are driven from a single poll loop in the caller's task
//! rather than from spawned tasks, so there is nothing to join or abort, the streams need not be
//! `Send` or `'static`, and one idle timer can observe traffic in both directions.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

/// Per-direction buffer size: large enough to move a full TLS record per read/write pair.
const BUF_SIZE: usize = 16 * 1024;

/// Buffers one direction may move in a single poll before yielding. Streams that never return
/// `Pending` (in-memory pipes, or wrappers outside tokio's cooperative budget) could otherwise let
/// one direction monopolise the poll loop and starve the other direction and the runtime.
const MAX_ROUNDS_PER_POLL: usize = 16;

/// Stand-in for "no idle timeout" when `idle_timeout` is too large to add to an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// Bytes delivered in each direction (counted when written to the receiving side, so bytes read but
/// never delivered because the splice ended early are not included).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpliceStats {
    /// Bytes written to the upstream that came from the downstream (client → server).
    pub(crate) downstream_to_upstream: u64,
    /// Bytes written to the downstream that came from the upstream (server → client).
    pub(crate) upstream_to_downstream: u64,
}

/// Which way bytes moved, as reported to the `on_bytes` callback of [`splice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    /// Client → server.
    DownstreamToUpstream,
    /// Server → client.
    UpstreamToDownstream,
}

/// Copies bytes both ways until both directions finish.
///
/// When one side sends EOF, the write half of the other side is shut down (half-close) once every
/// byte read before the EOF has been delivered, and copying continues in the other direction; this
/// keeps protocols that signal "end of request" with a FIN working through the gateway.
///
/// If no byte moves in either direction for `idle_timeout`, both sides are closed. `on_bytes` is
/// called after each successful write with the number of bytes written, so callers can export
/// live metrics for long-lived connections instead of only learning totals at the end.
///
/// Returns the byte counts — also when a direction fails or the idle timeout fires, in which case
/// the splice stops at once and reports what moved (errors are logged at debug level; a peer
/// resetting its connection is routine for a proxy, not an error of the gateway).
///
/// "Closed" means the streams are dropped when this returns, which closes them because they are
/// owned here; callers passing `&mut` references close the streams themselves.
pub(crate) async fn splice<A, B, F>(
    mut downstream: A,
    mut upstream: B,
    idle_timeout: Duration,
    on_bytes: F,
) -> SpliceStats
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Direction, u64),
{
    let mut to_upstream = Pipe::new(Direction::DownstreamToUpstream);
    let mut to_downstream = Pipe::new(Direction::UpstreamToDownstream);

    let mut last_activity = Instant::now();
    // The timer is only re-armed when it fires (to `last_activity + idle_timeout`), not on every
    // byte, so busy connections don't pay a timer-wheel update per read.
    let idle = tokio::time::sleep_until(deadline_after(last_activity, idle_timeout));
    tokio::pin!(idle);

    let outcome = poll_fn(|cx| {
        let mut active = false;
        let up = to_upstream.poll_copy(cx, Pin::new(&mut downstream), Pin::new(&mut upstream), &on_bytes, &mut active);
        if let Poll::Ready(Err(err)) = up {
            return Poll::Ready(Outcome::Failed(Direction::DownstreamToUpstream, err));
        }
        let down =
            to_downstream.poll_copy(cx, Pin::new(&mut upstream), Pin::new(&mut downstream), &on_bytes, &mut active);
        if let Poll::Ready(Err(err)) = down {
            return Poll::Ready(Outcome::Failed(Direction::UpstreamToDownstream, err));
        }
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(Outcome::Finished);
        }

        if active {
            last_activity = Instant::now();
        }
        loop {
            ready!(idle.as_mut().poll(cx));
            let deadline = deadline_after(last_activity, idle_timeout);
            if deadline <= Instant::now() {
                return Poll::Ready(Outcome::Idle);
            }
            // Traffic happened since the timer was armed: push it out and poll again so the new
            // deadline registers a wake-up.
            idle.as_mut().reset(deadline);
        }
    })
    .await;

    match outcome {
        Outcome::Finished => {}
        Outcome::Idle => debug!(?idle_timeout, "splice idle timeout, closing both sides"),
        Outcome::Failed(direction, err) => debug!(?direction, error = %err, "splice stopped on I/O error"),
    }
    SpliceStats { downstream_to_upstream: to_upstream.moved, upstream_to_downstream: to_downstream.moved }
}

/// How the poll loop ended; only used for logging, since stats are returned in every case.
enum Outcome {
    Finished,
    Idle,
    Failed(Direction, io::Error),
}

fn deadline_after(from: Instant, timeout: Duration) -> Instant {
    from.checked_add(timeout).unwrap_or_else(|| from + FAR_FUTURE)
}

/// State of one copy direction.
struct Pipe {
    direction: Direction,
    buf: Box<[u8]>,
    /// `buf[pos..cap]` has been read but not yet written.
    pos: usize,
    cap: usize,
    /// Bytes were written since the last flush; flushed whenever reading would block, so buffered
    /// writers (TLS streams, `BufWriter`) don't sit on data while we wait for more input.
    need_flush: bool,
    read_eof: bool,
    /// EOF has been forwarded by shutting down the writer; nothing more to do.
    done: bool,
    moved: u64,
}

impl Pipe {
    fn new(direction: Direction) -> Self {
        Self {
            direction,
            buf: vec![0; BUF_SIZE].into_boxed_slice(),
            pos: 0,
            cap: 0,
            need_flush: false,
            read_eof: false,
            done: false,
            moved: 0,
        }
    }

    /// Moves as much as possible from `reader` to `writer` without blocking. `Ready(Ok(()))` means
    /// this direction is finished (EOF seen, everything delivered, writer shut down). Sets `active`
    /// when any byte was read or written.
    fn poll_copy<R, W, F>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        on_bytes: &F,
        active: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
        F: Fn(Direction, u64),
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..MAX_ROUNDS_PER_POLL {
            if self.pos == self.cap && !self.read_eof {
                let mut read_buf = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut read_buf)? {
                    Poll::Ready(()) => {
                        let n = read_buf.filled().len();
                        if n == 0 {
                            self.read_eof = true;
                        } else {
                            self.pos = 0;
                            self.cap = n;
                            *active = true;
                        }
                    }
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }

            while self.pos < self.cap {
                let n = ready!(writer.as_mut().poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.moved += n as u64;
                self.need_flush = true;
                *active = true;
                on_bytes(self.direction, n as u64);
            }

            if self.read_eof {
                // Flush explicitly: not every `poll_shutdown` implementation flushes first.
                if self.need_flush {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
        // Budget for this poll used up while still making progress: ask to be polled again.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant as StdInstant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter, DuplexStream};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use super::*;

    const LONG: Duration = Duration::from_secs(10);

    /// Bounds every wait in these tests, so a regression fails instead of hanging the suite.
    async fn within<T>(fut: impl Future<Output = T>) -> T {
        tokio::time::timeout(LONG, fut).await.expect("test step did not finish in time")
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// client <-> [downstream | splice | upstream] <-> server, all in memory with small pipes so
    /// backpressure is exercised.
    fn pipes() -> (DuplexStream, DuplexStream, DuplexStream, DuplexStream) {
        let (client, downstream) = tokio::io::duplex(1024);
        let (upstream, server) = tokio::io::duplex(1024);
        (client, downstream, upstream, server)
    }

    #[derive(Default)]
    struct Counted {
        to_upstream: AtomicU64,
        to_downstream: AtomicU64,
    }

    impl Counted {
        fn record(&self, direction: Direction, n: u64) {
            match direction {
                Direction::DownstreamToUpstream => self.to_upstream.fetch_add(n, Ordering::Relaxed),
                Direction::UpstreamToDownstream => self.to_downstream.fetch_add(n, Ordering::Relaxed),
            };
        }

        fn stats(&self) -> SpliceStats {
            SpliceStats {
                downstream_to_upstream: self.to_upstream.load(Ordering::Relaxed),
                upstream_to_downstream: self.to_downstream.load(Ordering::Relaxed),
            }
        }
    }

    /// A TCP proxy on loopback that accepts one connection, dials `upstream`, and splices them.
    async fn tcp_proxy(
        upstream: SocketAddr,
        idle_timeout: Duration,
    ) -> (SocketAddr, JoinHandle<SpliceStats>, Arc<Counted>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counted = Arc::new(Counted::default());
        let callback_counts = counted.clone();
        let task = tokio::spawn(async move {
            let (downstream, _) = listener.accept().await.unwrap();
            let upstream = TcpStream::connect(upstream).await.unwrap();
            splice(downstream, upstream, idle_timeout, move |d, n| callback_counts.record(d, n)).await
        });
        (addr, task, counted)
    }

    #[test]
    fn splice_future_is_send_for_send_inputs() {
        // Pingora's service traits require `Send` futures; this must keep holding.
        fn assert_send<T: Send>(_: &T) {}
        let (downstream, upstream) = tokio::io::duplex(16);
        let future = splice(downstream, upstream, LONG, |_, _| {});
        assert_send(&future);
    }

    #[tokio::test]
    async fn echoes_both_ways_and_counts_bytes() {
        let (client, downstream, upstream, mut server) = pipes();
        let payload = pattern(200_000);
        let callback_total = Cell::new(SpliceStats::default());
        // A non-Send callback is fine: the splice runs in the caller's task.
        let on_bytes = |direction, n| {
            let mut total = callback_total.get();
            match direction {
                Direction::DownstreamToUpstream => total.downstream_to_upstream += n,
                Direction::UpstreamToDownstream => total.upstream_to_downstream += n,
            }
            callback_total.set(total);
        };

        let echo_server = async {
            let mut buf = vec![0; 4096];
            loop {
                let n = server.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                server.write_all(&buf[..n]).await.unwrap();
            }
            server.shutdown().await.unwrap();
        };
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        let send = async {
            client_tx.write_all(&payload).await.unwrap();
            client_tx.shutdown().await.unwrap();
        };
        let receive = async {
            let mut echoed = Vec::new();
            client_rx.read_to_end(&mut echoed).await.unwrap();
            echoed
        };

        let (stats, (), (), echoed) =
            within(async { tokio::join!(splice(downstream, upstream, LONG, on_bytes), echo_server, send, receive) })
                .await;
        assert_eq!(echoed, payload);
        let expected = SpliceStats { downstream_to_upstream: 200_000, upstream_to_downstream: 200_000 };
        assert_eq!(stats, expected);
        assert_eq!(callback_total.get(), expected);
    }

    #[tokio::test]
    async fn half_close_lets_the_response_finish_after_the_client_stops_sending() {
        let server_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let server_addr = server_listener.local_addr().unwrap();
        let response = pattern(1 << 20);
        let server_response = response.clone();
        let server = tokio::spawn(async move {
            let (mut stream, _) = server_listener.accept().await.unwrap();
            // Only completes if the client's FIN was forwarded as a half-close.
            let mut request = Vec::new();
            stream.read_to_end(&mut request).await.unwrap();
            stream.write_all(&server_response).await.unwrap();
            stream.shutdown().await.unwrap();
            request
        });
        let (proxy_addr, proxy, counted) = tcp_proxy(server_addr, LONG).await;

        let mut client = TcpStream::connect(proxy_addr).await.unwrap();
        client.write_all(b"request body").await.unwrap();
        client.shutdown().await.unwrap();
        let mut received = Vec::new();
        within(client.read_to_end(&mut received)).await.unwrap();

        assert_eq!(server.await.unwrap(), b"request body");
        assert_eq!(received, response);
        let stats = within(proxy).await.unwrap();
        let expected = SpliceStats { downstream_to_upstream: 12, upstream_to_downstream: 1 << 20 };
        assert_eq!(stats, expected);
        assert_eq!(counted.stats(), expected);
    }

    #[tokio::test]
    async fn client_keeps_sending_after_the_server_half_closes() {
        let server_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let server_addr = server_listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = server_listener.accept().await.unwrap();
            stream.write_all(b"banner").await.unwrap();
            stream.shutdown().await.unwrap();
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            rest
        });
        let (proxy_addr, proxy, _) = tcp_proxy(server_addr, LONG).await;

        let mut client = TcpStream::connect(proxy_addr).await.unwrap();
        let mut banner = Vec::new();
        within(client.read_to_end(&mut banner)).await.unwrap();
        assert_eq!(banner, b"banner");
        client.write_all(b"late data").await.unwrap();
        client.shutdown().await.unwrap();

        assert_eq!(within(server).await.unwrap(), b"late data");
        let stats = within(proxy).await.unwrap();
        assert_eq!(stats, SpliceStats { downstream_to_upstream: 9, upstream_to_downstream: 6 });
    }

    #[tokio::test]
    async fn idle_timeout_closes_both_sides_and_reports_what_moved() {
        let server_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let server_addr = server_listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = server_listener.accept().await.unwrap();
            let mut ping = [0; 4];
            stream.read_exact(&mut ping).await.unwrap();
            // Then stay silent: the proxy should close us.
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            (ping, rest)
        });
        let idle = Duration::from_millis(200);
        let (proxy_addr, proxy, counted) = tcp_proxy(server_addr, idle).await;

        let mut client = TcpStream::connect(proxy_addr).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let started = StdInstant::now();
        let mut rest = Vec::new();
        // EOF without the client closing anything: the proxy closed the connection.
        within(client.read_to_end(&mut rest)).await.unwrap();
        let waited = started.elapsed();
        assert!(rest.is_empty());
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");

        let (ping, server_rest) = within(server).await.unwrap();
        assert_eq!(&ping, b"ping");
        assert!(server_rest.is_empty());
        let stats = within(proxy).await.unwrap();
        assert_eq!(stats, SpliceStats { downstream_to_upstream: 4, upstream_to_downstream: 0 });
        assert_eq!(counted.stats(), stats);
    }

    #[tokio::test]
    async fn traffic_in_either_direction_keeps_the_splice_alive() {
        let (mut client, downstream, upstream, mut server) = pipes();
        let idle = Duration::from_millis(300);
        let traffic = async {
            // 8 exchanges 60 ms apart: well past the idle timeout in total, never idle for that long.
            for i in 0..8u8 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                if i % 2 == 0 {
                    client.write_all(&[i]).await.unwrap();
                    let mut got = [0];
                    server.read_exact(&mut got).await.unwrap();
                    assert_eq!(got, [i]);
                } else {
                    server.write_all(&[i]).await.unwrap();
                    let mut got = [0];
                    client.read_exact(&mut got).await.unwrap();
                    assert_eq!(got, [i]);
                }
            }
            client.shutdown().await.unwrap();
            server.shutdown().await.unwrap();
        };
        let (stats, ()) = within(async { tokio::join!(splice(downstream, upstream, idle, |_, _| {}), traffic) }).await;
        assert_eq!(stats, SpliceStats { downstream_to_upstream: 4, upstream_to_downstream: 4 });
    }

    #[tokio::test]
    async fn buffered_writers_are_flushed_while_waiting_for_input() {
        let (mut client, downstream, upstream, mut server) = pipes();
        // BufWriter holds 8 KiB before writing through; without flushing, "hello" would be stuck.
        let upstream = BufWriter::new(upstream);
        let traffic = async {
            client.write_all(b"hello").await.unwrap();
            let mut got = [0; 5];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
            client.shutdown().await.unwrap();
            server.shutdown().await.unwrap();
        };
        let (stats, ()) = within(async { tokio::join!(splice(downstream, upstream, LONG, |_, _| {}), traffic) }).await;
        assert_eq!(stats, SpliceStats { downstream_to_upstream: 5, upstream_to_downstream: 0 });
    }

    /// Upstream whose reads never complete and whose writes fail, like a reset connection.
    struct Broken;

    impl AsyncRead for Broken {
        fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, _buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Broken {
        fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, _buf: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_io_error_ends_the_splice_and_closes_the_other_side() {
        let (mut client, downstream) = tokio::io::duplex(1024);
        let traffic = async {
            client.write_all(b"doomed").await.unwrap();
            let mut rest = Vec::new();
            // EOF: the splice gave up and dropped the downstream.
            client.read_to_end(&mut rest).await.unwrap();
            rest
        };
        let (stats, rest) = within(async {
            tokio::join!(splice(downstream, Broken, LONG, |_, _| panic!("nothing is delivered")), traffic)
        })
        .await;
        assert!(rest.is_empty());
        assert_eq!(stats, SpliceStats::default());
    }

    #[tokio::test]
    async fn huge_idle_timeout_does_not_overflow() {
        let (mut client, downstream, upstream, mut server) = pipes();
        let traffic = async {
            client.write_all(b"x").await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            server.shutdown().await.unwrap();
            got
        };
        let (stats, got) =
            within(async { tokio::join!(splice(downstream, upstream, Duration::MAX, |_, _| {}), traffic) }).await;
        assert_eq!(got, b"x");
        assert_eq!(stats.downstream_to_upstream, 1);
    }
}
