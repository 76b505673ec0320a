//! One-shot connections shared by the protocol modules: a TCP connect with a deadline, a
//! TLS handshake with the crate's verifiers, and one HTTP/1.1 or HTTP/2 exchange over hyper
//! (a new connection each time, so nothing is pooled behind a test's back).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::SupportedProtocolVersion;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::tls::Verify;

/// TLS options of an HTTP request or gRPC call.
#[derive(Debug, Clone, Default)]
pub(super) struct Tls {
    pub(super) sni: Option<String>,
    pub(super) ca_pem: Option<Vec<u8>>,
    pub(super) identity_pem: Option<Vec<u8>>,
}

/// The SNI rule of the reqwest path: explicit SNI, else the Host without its
/// port, else `localhost`.
pub(super) fn default_sni(tls: &Tls, host: Option<&str>) -> String {
    match (&tls.sni, host) {
        (Some(sni), _) => sni.clone(),
        (None, Some(host)) => strip_port(host),
        (None, None) => "localhost".into(),
    }
}

pub(super) async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

pub(super) async fn connect_tls(
    tcp: TcpStream,
    server_name: &str,
    verify: Verify<'_>,
    identity_pem: Option<&[u8]>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&str],
) -> Result<TlsStream<TcpStream>> {
    let config = crate::tls::client_config(verify, identity_pem, versions, alpn)?;
    let name = crate::tls::server_name(server_name)?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake (server name {server_name})"))
}

/// One request over a new HTTP/2 connection; returns the response head and
/// its whole body.
pub(super) async fn send_h2<I>(io: I, req: http::Request<Full<Bytes>>) -> Result<(http::Response<()>, Bytes)>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (resp, body, _) = send_h2_trailers(io, req).await?;
    Ok((resp, body))
}

/// [`send_h2`] plus the response trailers (empty if none), for gRPC.
pub(super) async fn send_h2_trailers<I>(
    io: I,
    req: http::Request<Full<Bytes>>,
) -> Result<(http::Response<()>, Bytes, HeaderMap)>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .context("HTTP/2 handshake")?;
    // The connection future drives all I/O; it ends when `sender` is dropped.
    let driver = tokio::spawn(conn);
    let result = async {
        let resp = sender.send_request(req).await.context("sending HTTP/2 request")?;
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.context("reading HTTP/2 response body")?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        Ok((http::Response::from_parts(parts, ()), collected.to_bytes(), trailers))
    }
    .await;
    drop(sender);
    driver.abort();
    result
}

pub(super) async fn send_h1<I>(io: I, req: http::Request<Full<Bytes>>) -> Result<(http::Response<()>, Bytes)>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.context("HTTP/1.1 handshake")?;
    let driver = tokio::spawn(conn);
    let result = async {
        let resp = sender.send_request(req).await.context("sending HTTP/1.1 request")?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.context("reading HTTP/1.1 response body")?.to_bytes();
        Ok((http::Response::from_parts(parts, ()), body))
    }
    .await;
    driver.abort();
    result
}

pub(super) fn strip_port(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_port() {
        assert_eq!(strip_port("a.example.com:8443"), "a.example.com");
        assert_eq!(strip_port("a.example.com"), "a.example.com");
    }
}
