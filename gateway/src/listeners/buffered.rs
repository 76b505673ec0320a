//! A write buffer for the connections our accept loop hands to Pingora.
//!
//! Pingora's own listeners give each accepted stream a write buffer of one TCP segment
//! (`DEFAULT_L4_WRITE_BUFFER_SIZE`) in a crate-private step; our accept loop (which lets config
//! changes swap a port's handler) builds its streams with `From<TcpStream>`, which has none.
//! Without it, a response header and a small body left in two `sendto` calls instead of one: a
//! system call per request (docs/benchmarks.md, "Runner results"). Pingora flushes where a
//! response needs it (1xx, no content length, end of body), as it does on its own listeners.

use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, TimingDigest, UniqueID,
    UniqueIDType,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

/// Pingora's default write buffer: one TCP segment's payload.
const WRITE_BUFFER: usize = 1460;

#[derive(Debug)]
pub struct Buffered(BufWriter<L4Stream>);

impl Buffered {
    pub fn new(stream: L4Stream) -> Buffered {
        Buffered(BufWriter::with_capacity(WRITE_BUFFER, stream))
    }

    fn stream(&self) -> &L4Stream {
        self.0.get_ref()
    }
}

impl AsyncRead for Buffered {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Buffered {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Buffered {
    async fn shutdown(&mut self) {
        // Flushes what is buffered first, as the inner stream's shutdown does for its own.
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.0).await {
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
        self.0.get_mut().set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Buffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.stream().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.0.get_mut().set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Buffered {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        // Reads go straight through the write buffer, so the inner stream's rewind holds.
        self.0.get_mut().try_peek(buf).await
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
}
