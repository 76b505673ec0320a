//! Bytes as written: TCP and TLS exchanges for TCP routes and passthrough, and hand-written
//! HTTP for requests a real client refuses to produce.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn::{connect_tcp, connect_tls};
use crate::tls::Verify;

/// Silence after which [`tcp_exchange`] without half-close stops reading.
pub const TCP_QUIET: Duration = Duration::from_millis(500);

/// Sends `payload` over a new TCP connection and returns every byte received.
///
/// With `half_close`, the client shuts down its write side after the payload
/// and reads until the peer closes; not seeing EOF within [`RAW_TIMEOUT`] is
/// an error, since half-close propagation is the point of such a test.
/// Without it, the write side stays open and reading stops at EOF or after
/// [`TCP_QUIET`] without new bytes (waiting up to [`RAW_TIMEOUT`] for the
/// first). Writing and reading run concurrently so large payloads cannot
/// deadlock against an echoing peer. A peer that closes at once yields an
/// empty vector; a reset before any byte arrived is an error.
pub async fn tcp_exchange(addr: SocketAddr, payload: &[u8], half_close: bool) -> Result<Vec<u8>> {
    let (r, w) = connect_tcp(addr).await?.into_split();
    exchange(r, w, payload, half_close).await.with_context(|| format!("TCP exchange with {addr}"))
}

/// [`tcp_exchange`] inside TLS: handshakes with `sni` (verifying against
/// `ca_pem` if given), sends `payload`, then close_notify and FIN, and reads
/// until the peer's close_notify. Close notifications travel inside the TLS
/// stream, so this works through a passthrough proxy whether or not it
/// propagates TCP half-close.
pub async fn tls_tcp_exchange(addr: SocketAddr, sni: &str, ca_pem: Option<&[u8]>, payload: &[u8]) -> Result<Vec<u8>> {
    let tcp = connect_tcp(addr).await?;
    let verify = ca_pem.map_or(Verify::None, Verify::Ca);
    let stream = connect_tls(tcp, sni, verify, None, &[], &[]).await?;
    let (r, w) = tokio::io::split(stream);
    exchange(r, w, payload, true).await.with_context(|| format!("TLS exchange with {addr} (SNI {sni})"))
}

async fn exchange<R, W>(mut r: R, mut w: W, payload: &[u8], half_close: bool) -> Result<Vec<u8>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let write = async {
        w.write_all(payload).await?;
        w.flush().await?;
        if half_close {
            w.shutdown().await?;
        }
        std::io::Result::Ok(w)
    };
    let read = async {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let deadline = tokio::time::Instant::now() + RAW_TIMEOUT;
        loop {
            let wait = if half_close || out.is_empty() {
                deadline
            } else {
                (tokio::time::Instant::now() + TCP_QUIET).min(deadline)
            };
            match tokio::time::timeout_at(wait, r.read(&mut buf)).await {
                Err(_) if half_close => bail!("peer did not close within {RAW_TIMEOUT:?}; got {} bytes", out.len()),
                Err(_) => break,
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(_)) if !out.is_empty() => break,
                Ok(Err(e)) => return Err(e).context("reading"),
            }
        }
        Ok(out)
    };
    let (written, read) = tokio::join!(write, read);
    // A peer that closes without reading everything makes the write fail;
    // what it sent is still the interesting part, so reads win.
    let out = read?;
    if let Err(e) = &written {
        if out.is_empty() {
            bail!("writing: {e}");
        }
    }
    // The write half (still open without half-close) is dropped only now.
    drop(written);
    Ok(out)
}

/// Default for [`raw_http`]'s read deadline.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `request` verbatim to a new TCP connection and returns everything
/// read until the peer closes (lossy UTF-8). For requests a real client
/// refuses to produce: HTTP/1.0, missing Host, malformed lines. The write
/// side is left open (some proxies treat a half-close as an abort). If the
/// peer keeps the connection open, returns what arrived after [`RAW_TIMEOUT`].
pub async fn raw_http(addr: SocketAddr, request: impl AsRef<[u8]>) -> Result<String> {
    raw_http_timeout(addr, request, RAW_TIMEOUT).await
}

/// [`raw_http`] with an explicit read deadline; errors only if nothing at all
/// arrived before a timeout (a closed connection with no bytes yields `""`).
pub async fn raw_http_timeout(addr: SocketAddr, request: impl AsRef<[u8]>, timeout: Duration) -> Result<String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    stream.write_all(request.as_ref()).await?;
    stream.flush().await?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) if out.is_empty() => bail!("no response from {addr} within {timeout:?}"),
            Err(_) => break,
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            // A reset after the response was sent still leaves a usable answer.
            Ok(Err(_)) if !out.is_empty() => break,
            Ok(Err(e)) => return Err(e).with_context(|| format!("reading from {addr}")),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}
