//! The little HTTP/1.1 the distribution protocol and the diagnostics CLI need, on hyper.
//!
//! One request per connection: polls are long-lived and rare, admin reads are one-off, so a
//! connection pool would add state without saving anything measurable.

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpStream;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("{0:?} is not an http:// URL with a host and port")]
    Url(String),
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("HTTP exchange with {addr}: {source}")]
    Exchange { addr: String, source: hyper::Error },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: StatusCode, body: String },
}

/// A response that arrived, whatever its status.
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body when the status is 2xx, an error naming the URL otherwise.
    pub fn success(self, url: &str) -> Result<Bytes, HttpError> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            let body = String::from_utf8_lossy(&self.body).trim().to_string();
            Err(HttpError::Status { url: url.to_string(), status: self.status, body })
        }
    }
}

/// Accepts `host:port` as shorthand for `http://host:port`.
pub fn normalize(url: &str) -> String {
    if url.contains("://") {
        url.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", url.trim_end_matches('/'))
    }
}

pub async fn send(
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Reply, HttpError> {
    let uri: Uri = url.parse().map_err(|_| HttpError::Url(url.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(HttpError::Url(url.to_string()));
    }
    let authority = uri.authority().ok_or_else(|| HttpError::Url(url.to_string()))?.clone();
    let addr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
    let exchange = async {
        let stream =
            TcpStream::connect(&addr).await.map_err(|source| HttpError::Connect { addr: addr.clone(), source })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| HttpError::Exchange { addr: addr.clone(), source })?;
        // The connection task ends with the exchange (no keep-alive reuse).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut request = Request::builder().method(method).uri(path).header("host", authority.as_str());
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|_| HttpError::Url(url.to_string()))?;
        let response =
            sender.send_request(request).await.map_err(|source| HttpError::Exchange { addr: addr.clone(), source })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|source| HttpError::Exchange { addr: addr.clone(), source })?
            .to_bytes();
        Ok(Reply { status, headers, body })
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(HttpError::Timeout { addr, timeout }))
}

/// GET returning the body of a 2xx answer.
pub async fn get(url: &str, token: Option<&str>, timeout: Duration) -> Result<Bytes, HttpError> {
    send(Method::GET, url, token, None, timeout).await?.success(url)
}
