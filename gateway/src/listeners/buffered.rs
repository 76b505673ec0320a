//! Read-ahead and a write buffer for the connections our accept loop hands to Pingora.
//!
//! Pingora's own listeners give each accepted stream a write buffer of one TCP segment
//! (`DEFAULT_L4_WRITE_BUFFER_SIZE`) in a crate-private step; our accept loop (which lets config
//! changes swap a port's handler) builds its streams with `From<TcpStream>`, which has none.
//! Without it, a response header and a small body left in two `sendto` calls instead of one: a
//! system call per request (docs/benchmarks.md, "Runner results"). Pingora flushes where a
//! response needs it (1xx, no content length, end of body), as it does on its own listeners.
//!
//! Reads: Pingora peeks at the first 24 bytes of every plain-text connection for the h2c
//! preface, with `read_exact` on the stream. Pingora's own streams have a read buffer that
//! takes the whole request in that read; ours did not, so a new connection cost one `recvfrom`
//! for the 24 bytes and another for the rest of the request. A peek here reads what the socket
//! has (up to [`READ_AHEAD`]) and the reads that follow take it from there.
//!
//! Under TLS the buffer sits below the encryption, as on Pingora's TLS listeners, so a
//! response's records leave in one write too. It is switched on only once the handshake has
//! succeeded ([`Buffered::deferred`]): a failed handshake ends with an alert (say,
//! "certificate required") that rustls writes but nobody flushes, and the client must get it.

use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, TimingDigest, UniqueID,
    UniqueIDType,
};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

/// Pingora's default write buffer: one TCP segment's payload.
const WRITE_BUFFER: usize = 1460;

/// How much a peek reads at once: a request head and a small body. Held only until the reads
/// after the peek have taken it, not for the life of the connection.
const READ_AHEAD: usize = 4096;

#[derive(Debug)]
pub(super) struct Buffered {
    inner: BufWriter<L4Stream>,
    /// Bytes a peek read from the socket, from `taken` on not yet returned by a read.
    ahead: Vec<u8>,
    taken: usize,
    /// Until its [`BufferSwitch`] is turned on, writes go straight to the socket; `None` once
    /// they are buffered.
    deferred: Option<Arc<AtomicBool>>,
}

/// Turns buffering on for the [`Buffered`] stream it came with.
pub(super) struct BufferSwitch(Arc<AtomicBool>);

impl BufferSwitch {
    pub(super) fn on(self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Buffered {
    pub(super) fn new(stream: L4Stream) -> Buffered {
        Buffered { inner: BufWriter::with_capacity(WRITE_BUFFER, stream), ahead: Vec::new(), taken: 0, deferred: None }
    }

    /// A stream that writes through until the switch is turned on, then buffers.
    pub(super) fn deferred(stream: L4Stream) -> (Buffered, BufferSwitch) {
        let switch = Arc::new(AtomicBool::new(false));
        (Buffered { deferred: Some(switch.clone()), ..Buffered::new(stream) }, BufferSwitch(switch))
    }

    fn stream(&self) -> &L4Stream {
        self.inner.get_ref()
    }

    /// Whether writes still bypass the (empty) buffer.
    fn writes_through(&mut self) -> bool {
        match &self.deferred {
            None => false,
            Some(switch) if switch.load(Ordering::Acquire) => {
                self.deferred = None;
                false
            }
            Some(_) => true,
        }
    }
}

impl AsyncRead for Buffered {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.taken < this.ahead.len() {
            let n = buf.remaining().min(this.ahead.len() - this.taken);
            buf.put_slice(&this.ahead[this.taken..this.taken + n]);
            this.taken += n;
            if this.taken == this.ahead.len() {
                // Freed, not kept: an idle kept-alive connection holds no read-ahead.
                this.ahead = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Buffered {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.writes_through() {
            return Pin::new(self.inner.get_mut()).poll_write(cx, buf);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.writes_through() {
            return Pin::new(self.inner.get_mut()).poll_write_vectored(cx, bufs);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Buffered {
    async fn shutdown(&mut self) {
        // Flushes what is buffered first, as the inner stream's shutdown does for its own.
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.inner).await {
            tracing::debug!(error = %e, "shutting down a connection");
        }
    }
}

impl UniqueID for Buffered {
    fn id(&self) -> UniqueIDType {
        self.stream().id()
    }
}

impl Ssl for Buffered {}

impl GetTimingDigest for Buffered {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.stream().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.stream().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.stream().get_write_pending_time()
    }
}

impl GetProxyDigest for Buffered {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.stream().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.get_mut().set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Buffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.stream().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.get_mut().set_socket_digest(digest)
    }
}

impl Buffered {
    /// Whether the stream starts with `prefix`, reading only as far as it takes to tell: the
    /// first byte that differs decides, so a short HTTP/1 request is not held waiting for as
    /// many bytes as an HTTP/2 preface has. What was read stays for the reads that follow.
    /// An end of stream before it is decided is `UnexpectedEof`.
    pub(super) async fn starts_with(&mut self, prefix: &[u8]) -> io::Result<bool> {
        loop {
            let have = &self.ahead[self.taken..];
            let n = have.len().min(prefix.len());
            if have[..n] != prefix[..n] {
                return Ok(false);
            }
            if n == prefix.len() {
                return Ok(true);
            }
            self.ahead.reserve(READ_AHEAD);
            if self.inner.get_mut().read_buf(&mut self.ahead).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

#[async_trait]
impl Peek for Buffered {
    /// Fills `buf` from the start of what reads will return, waiting for that much as
    /// Pingora's `read_exact`-based peek does (an end of stream first is `UnexpectedEof`).
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        while self.ahead.len() - self.taken < buf.len() {
            // `read_buf` fills spare capacity only: make room for one read of what is there.
            self.ahead.reserve(READ_AHEAD.max(buf.len()));
            if self.inner.get_mut().read_buf(&mut self.ahead).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        buf.copy_from_slice(&self.ahead[self.taken..self.taken + buf.len()]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Buffered, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Buffered::new(L4Stream::from(server)), client)
    }

    #[tokio::test]
    async fn a_prefix_is_decided_by_the_first_byte_that_differs() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        // 18 bytes, fewer than the preface's 24: decided without waiting for more.
        assert!(!server.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap());
        let mut got = [0u8; 18];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.0\r\n\r\n", "the bytes read to decide are read again");

        let (mut server, mut client) = pair().await;
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let decide = tokio::spawn(async move { server.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await });
        tokio::task::yield_now().await;
        client.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
        assert!(decide.await.unwrap().unwrap(), "the whole preface, in two segments");
    }

    #[tokio::test]
    async fn writes_wait_for_a_flush_and_leave_together() {
        let (mut server, mut client) = pair().await;
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        server.write_all(b"body").await.unwrap();
        // On loopback a sent segment is in the peer's queue when `send` returns: nothing is.
        let mut buf = [0u8; 64];
        assert_eq!(client.try_read(&mut buf).map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
        server.flush().await.unwrap();
        let mut got = Vec::new();
        while got.len() < 23 {
            let n = client.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\nbody");
    }

    #[tokio::test]
    async fn a_deferred_stream_writes_through_until_switched_on() {
        let (server, mut client) = pair().await;
        let (mut server, switch) = Buffered::deferred(server.inner.into_inner());
        server.write_all(b"alert").await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf)).await;
        let n = read.expect("sent without a flush").unwrap();
        assert_eq!(&buf[..n], b"alert");
        switch.on();
        server.write_all(b"record").await.unwrap();
        assert_eq!(client.try_read(&mut buf).map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
        server.flush().await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"record");
    }

    #[tokio::test]
    async fn peeked_bytes_are_read_again_and_shutdown_flushes() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let mut peeked = [0u8; 3];
        assert!(server.try_peek(&mut peeked).await.unwrap());
        assert_eq!(&peeked, b"PRI");
        let mut read = [0u8; 14];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"PRI * HTTP/2.0");

        server.write_all(b"bye").await.unwrap();
        Shutdown::shutdown(&mut server).await;
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
    }

    #[tokio::test]
    async fn a_peek_reads_the_whole_request_once() {
        let (mut server, mut client) = pair().await;
        let request = b"GET /a-path-long-enough HTTP/1.1\r\nhost: example.com\r\n\r\n";
        client.write_all(request).await.unwrap();
        // On loopback the written bytes are in the server's receive queue when `write` returns.
        let mut preface = [0u8; 24];
        assert!(server.try_peek(&mut preface).await.unwrap());
        assert_eq!(&preface, &request[..24]);
        assert_eq!(server.ahead.len(), request.len(), "one read took everything that had arrived");
        let mut read = vec![0u8; request.len()];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(read, request);
        assert_eq!(server.ahead.capacity(), 0, "read-ahead is freed once taken");
    }

    #[tokio::test]
    async fn a_stream_ending_before_the_peek_is_filled_is_an_error() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"GET").await.unwrap();
        client.shutdown().await.unwrap();
        let mut preface = [0u8; 24];
        let err = server.try_peek(&mut preface).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
