//! Responses the gateway writes itself, with Envoy's status codes, bodies and response flags.

use bytes::Bytes;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::response_flag::ResponseFlag;

pub(super) struct LocalReply {
    pub(crate) code: u16,
    pub(crate) flags: ResponseFlag,
    pub(crate) body: &'static str,
    /// `location` header of a redirect.
    pub(crate) location: Option<String>,
}

impl LocalReply {
    /// Envoy's RBAC filter denial: 403 with its body.
    pub(super) fn rbac_denied() -> LocalReply {
        LocalReply { code: 403, flags: ResponseFlag::UnenforcedPolicy, body: "RBAC: access denied", location: None }
    }

    /// No virtual host or route matched (Envoy: 404, flag NR, empty body).
    pub(super) fn no_route() -> LocalReply {
        LocalReply { code: 404, flags: ResponseFlag::NoRoute, body: "", location: None }
    }

    /// The route's destinations all have weight 0, or the picked one names a cluster Envoy
    /// would not have (unknown host or subset): Envoy's `NC`, cluster not found, which its
    /// router answers with `cluster_not_found_response_code` (503) and no body.
    pub(super) fn no_cluster() -> LocalReply {
        LocalReply { code: 503, flags: ResponseFlag::NoClusterFound, body: "", location: None }
    }

    /// The cluster has no ready endpoint (Envoy: UH).
    pub(super) fn no_healthy_upstream() -> LocalReply {
        LocalReply { code: 503, flags: ResponseFlag::NoHealthyUpstream, body: "no healthy upstream", location: None }
    }

    /// A malformed request (no Host in HTTP/1.1, a request-target of no allowed form): Envoy's
    /// 400 with flag DPE; the connection closes after it.
    pub(super) fn bad_request() -> LocalReply {
        LocalReply { code: 400, flags: ResponseFlag::DownstreamProtocolError, body: "", location: None }
    }

    /// A request head over the size limit (Envoy's `max_request_headers_kb`): 431, flag DPE;
    /// the connection closes after it.
    pub(super) fn headers_too_large() -> LocalReply {
        LocalReply { code: 431, flags: ResponseFlag::DownstreamProtocolError, body: "", location: None }
    }

    /// The request body stopped arriving (`--body-read-timeout`): Envoy's 408 for a request
    /// that was not received in time.
    pub(super) fn request_timeout() -> LocalReply {
        LocalReply { code: 408, flags: ResponseFlag::DownstreamProtocolError, body: "request timeout", location: None }
    }

    pub(super) fn internal() -> LocalReply {
        LocalReply { code: 500, flags: ResponseFlag::None, body: "internal error", location: None }
    }

    /// `tls.httpsRedirect` (Envoy's `require_tls: ALL`): `https://` + the `Host` as the client
    /// sent it (port included) + the path, as Envoy's `createSslRedirectPath` writes it.
    pub(super) fn https_redirect(host: &str, path: &str) -> LocalReply {
        LocalReply { code: 301, flags: ResponseFlag::None, body: "", location: Some(format!("https://{host}{path}")) }
    }

    /// HTTP/2 connection coalescing sent a request for a host this connection's certificate
    /// (server) does not serve, while another server on the port does.
    pub(super) fn misdirected() -> LocalReply {
        LocalReply { code: 421, flags: ResponseFlag::NoRoute, body: "misdirected request", location: None }
    }

    /// TLS origination is configured but its material is unusable.
    pub(super) fn upstream_tls_unusable() -> LocalReply {
        LocalReply {
            code: 503,
            flags: ResponseFlag::UpstreamConnectionFailure,
            body: "upstream TLS settings are unusable",
            location: None,
        }
    }

    /// Connect failures → 503 UF; timeouts waiting for the response → 504 UT; a reset after
    /// connecting → 503 UC.
    pub(super) fn upstream_failure(e: &Error, flags: ResponseFlag) -> LocalReply {
        use ErrorType::*;
        match e.etype() {
            ReadTimedout | WriteTimedout => LocalReply {
                code: 504,
                flags: ResponseFlag::UpstreamRequestTimeout,
                body: "upstream request timeout",
                location: None,
            },
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError
            | BindError => LocalReply {
                code: 503,
                flags: ResponseFlag::UpstreamConnectionFailure,
                body: "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                location: None,
            },
            _ if flags == ResponseFlag::UpstreamConnectionFailure => LocalReply {
                code: 503,
                flags: ResponseFlag::UpstreamConnectionFailure,
                body: "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                location: None,
            },
            _ => LocalReply {
                code: 503,
                flags: ResponseFlag::UpstreamConnectionTermination,
                body: "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                location: None,
            },
        }
    }

    /// Writes the reply. gRPC requests get Envoy's gRPC form: HTTP 200 with `grpc-status`
    /// (mapped from the HTTP status) and `grpc-message`, headers only.
    pub(super) async fn send(&self, session: &mut Session) -> Result<()> {
        if self.flags == ResponseFlag::DownstreamProtocolError {
            // After a malformed or stalled request the connection cannot be trusted: this
            // reply is its last.
            session.set_keepalive(None);
        }
        if is_grpc(session) && self.location.is_none() {
            let mut resp = ResponseHeader::build(200, Some(5))?;
            resp.insert_header("content-type", "application/grpc")?;
            resp.insert_header("grpc-status", grpc_status(self.code).to_string())?;
            resp.insert_header("grpc-message", if self.body.is_empty() { "route not found" } else { self.body })?;
            resp.insert_header("server", "istio-envoy")?;
            resp.insert_header("content-length", "0")?;
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(());
        }
        let mut resp = ResponseHeader::build(self.code, Some(5))?;
        if let Some(location) = &self.location {
            resp.insert_header("location", location.as_str())?;
        }
        resp.insert_header("server", "istio-envoy")?;
        resp.insert_header("content-length", self.body.len().to_string())?;
        if !self.body.is_empty() {
            resp.insert_header("content-type", "text/plain")?;
        }
        resp.insert_header("date", httpdate_now())?;
        session.write_response_header(Box::new(resp), self.body.is_empty()).await?;
        if !self.body.is_empty() {
            session.write_response_body(Some(Bytes::from_static(self.body.as_bytes())), true).await?;
        }
        Ok(())
    }
}

fn httpdate_now() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

fn is_grpc(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Envoy's HTTP → gRPC status mapping for locally generated replies.
fn grpc_status(http: u16) -> u8 {
    match http {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}
