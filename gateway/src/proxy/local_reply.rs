//! Responses the gateway writes itself, with Envoy's status codes, bodies and response flags.

use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::response_flag::ResponseFlag;

pub(super) struct LocalReply {
    pub(crate) code: u16,
    pub(crate) flags: ResponseFlag,
    pub(crate) body: Bytes,
    /// `location` header of a redirect.
    pub(crate) location: Option<String>,
    /// Sent as it is, also to gRPC clients: a route's own answer (`directResponse`) and
    /// redirects (Envoy maps only its own error replies to gRPC statuses).
    pub(crate) verbatim: bool,
    /// The `grpc-status` a gRPC client gets, when not the one mapped from `code` (a fault
    /// abort with `grpcStatus`).
    pub(crate) grpc_status: Option<u8>,
    /// More headers: a CORS preflight's answer, or the CORS headers of an allowed origin.
    pub(crate) headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl LocalReply {
    /// One of the gateway's own error replies: Envoy's status, flag and body, mapped to a
    /// `grpc-status` for gRPC clients.
    pub(super) const fn error(code: u16, flags: ResponseFlag, body: &'static [u8]) -> LocalReply {
        LocalReply {
            code,
            flags,
            body: Bytes::from_static(body),
            location: None,
            verbatim: false,
            grpc_status: None,
            headers: Vec::new(),
        }
    }

    /// Envoy's RBAC filter denial: 403 with its body.
    pub(super) fn rbac_denied() -> LocalReply {
        LocalReply::error(403, ResponseFlag::UnenforcedPolicy, b"RBAC: access denied")
    }

    /// No virtual host or route matched (Envoy: 404, flag NR, empty body).
    pub(super) fn no_route() -> LocalReply {
        LocalReply::error(404, ResponseFlag::NoRoute, b"")
    }

    /// The route's destinations all have weight 0, or the picked one names a cluster Envoy
    /// would not have (unknown host or subset): Envoy's `NC`, cluster not found, which its
    /// router answers with `cluster_not_found_response_code` (503) and no body.
    pub(super) fn no_cluster() -> LocalReply {
        LocalReply::error(503, ResponseFlag::NoClusterFound, b"")
    }

    /// The cluster has no ready endpoint (Envoy: UH).
    pub(super) fn no_healthy_upstream() -> LocalReply {
        LocalReply::error(503, ResponseFlag::NoHealthyUpstream, b"no healthy upstream")
    }

    /// A malformed request (no Host in HTTP/1.1, a request-target of no allowed form): Envoy's
    /// 400 with flag DPE; the connection closes after it.
    pub(super) fn bad_request() -> LocalReply {
        LocalReply::error(400, ResponseFlag::DownstreamProtocolError, b"")
    }

    /// A request head over the size limit (Envoy's `max_request_headers_kb`): 431, flag DPE;
    /// the connection closes after it.
    pub(super) fn headers_too_large() -> LocalReply {
        LocalReply::error(431, ResponseFlag::DownstreamProtocolError, b"")
    }

    /// The request body stopped arriving (`--body-read-timeout`): Envoy's 408 for a request
    /// that was not received in time.
    pub(super) fn request_timeout() -> LocalReply {
        LocalReply::error(408, ResponseFlag::DownstreamProtocolError, b"request timeout")
    }

    pub(super) fn internal() -> LocalReply {
        LocalReply::error(500, ResponseFlag::None, b"internal error")
    }

    /// `tls.httpsRedirect` (Envoy's `require_tls: ALL`): `https://` + the `Host` as the client
    /// sent it (port included) + the path, as Envoy's `createSslRedirectPath` writes it.
    pub(super) fn https_redirect(host: &str, path: &str) -> LocalReply {
        LocalReply {
            code: 301,
            flags: ResponseFlag::None,
            body: Bytes::new(),
            location: Some(format!("https://{host}{path}")),
            verbatim: true,
            grpc_status: None,
            headers: Vec::new(),
        }
    }

    /// A route's `redirect`.
    pub(super) fn redirect(code: u16, location: String) -> LocalReply {
        LocalReply {
            code,
            flags: ResponseFlag::None,
            body: Bytes::new(),
            location: Some(location),
            verbatim: true,
            grpc_status: None,
            headers: Vec::new(),
        }
    }

    /// A route's `directResponse`.
    pub(super) fn direct(code: u16, body: Bytes) -> LocalReply {
        LocalReply {
            code,
            flags: ResponseFlag::None,
            body,
            location: None,
            verbatim: true,
            grpc_status: None,
            headers: Vec::new(),
        }
    }

    /// A CORS preflight the route's `corsPolicy` answers: 200 with the policy's headers.
    pub(super) fn cors_preflight(headers: Vec<(http::HeaderName, http::HeaderValue)>) -> LocalReply {
        LocalReply { headers, ..LocalReply::direct(200, Bytes::new()) }
    }

    /// The route's `fault` aborted the request (Envoy's fault filter: its body, flag FI).
    /// A `grpcStatus` abort gives gRPC clients that status, others its HTTP equivalent.
    pub(super) fn fault_abort(status: meshgate_model::snapshot::AbortStatus) -> LocalReply {
        use meshgate_model::snapshot::AbortStatus;
        let (code, grpc_status) = match status {
            AbortStatus::Http(code) => (code, None),
            AbortStatus::Grpc(g) => (http_status_of_grpc(g), Some(g)),
        };
        LocalReply { grpc_status, ..LocalReply::error(code, ResponseFlag::FaultInjected, b"fault filter abort") }
    }

    /// The route timeout (or a try's read timeout) passed: Envoy's router's 504, flag UT.
    pub(super) fn route_timeout() -> LocalReply {
        LocalReply::error(504, ResponseFlag::UpstreamRequestTimeout, b"upstream request timeout")
    }

    /// HTTP/2 connection coalescing sent a request for a host this connection's certificate
    /// (server) does not serve, while another server on the port does.
    pub(super) fn misdirected() -> LocalReply {
        LocalReply::error(421, ResponseFlag::NoRoute, b"misdirected request")
    }

    /// TLS origination is configured but its material is unusable.
    pub(super) fn upstream_tls_unusable() -> LocalReply {
        LocalReply::error(503, ResponseFlag::UpstreamConnectionFailure, b"upstream TLS settings are unusable")
    }

    /// Connect failures → 503 UF; timeouts waiting for the response → 504 UT; a reset after
    /// connecting → 503 UC.
    pub(super) fn upstream_failure(e: &Error, flags: ResponseFlag) -> LocalReply {
        use ErrorType::*;
        const CONNECTION_FAILURE: &[u8] =
            b"upstream connect error or disconnect/reset before headers. reset reason: connection failure";
        const CONNECTION_TERMINATION: &[u8] =
            b"upstream connect error or disconnect/reset before headers. reset reason: connection termination";
        match e.etype() {
            ReadTimedout | WriteTimedout => LocalReply::route_timeout(),
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError
            | BindError => LocalReply::error(503, ResponseFlag::UpstreamConnectionFailure, CONNECTION_FAILURE),
            _ if flags == ResponseFlag::UpstreamConnectionFailure => {
                LocalReply::error(503, ResponseFlag::UpstreamConnectionFailure, CONNECTION_FAILURE)
            }
            _ => LocalReply::error(503, ResponseFlag::UpstreamConnectionTermination, CONNECTION_TERMINATION),
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
        let (head, body) = self.response(grpc_content_type(session.req_header()))?;
        session.write_response_header(head, body.is_none()).await?;
        // The end goes down explicitly, also after a headers-only reply: Pingora writes an
        // HTTP/2 head without its end-of-stream flag, and a stream dropped unended (as after
        // a failed upstream) is reset, reply and all.
        session.write_response_body(body, true).await
    }

    /// [`send`](Self::send), straight to a downstream session (meshgate's own request loop).
    pub(super) async fn send_to(&self, session: &mut ServerSession) -> Result<()> {
        if self.flags == ResponseFlag::DownstreamProtocolError {
            session.set_keepalive(None);
        }
        let (head, body) = self.response(grpc_content_type(session.req_header()))?;
        session.write_response_header(head).await?;
        session.write_response_body(body.unwrap_or_default(), true).await
    }

    /// The reply's head and body (`None` when it has none). gRPC requests get Envoy's gRPC
    /// form: HTTP 200 with `grpc-status` (mapped from the HTTP status) and `grpc-message`,
    /// headers only.
    fn response(&self, grpc: Option<&'static str>) -> Result<(Box<ResponseHeader>, Option<Bytes>)> {
        if let Some(content_type) = grpc.filter(|_| !self.verbatim) {
            let mut resp = ResponseHeader::build(200, Some(5))?;
            resp.insert_header("content-type", content_type)?;
            resp.insert_header("grpc-status", self.grpc_status.unwrap_or(grpc_status(self.code)).to_string())?;
            let message = std::str::from_utf8(&self.body).unwrap_or_default();
            resp.insert_header("grpc-message", if message.is_empty() { "route not found" } else { message })?;
            resp.insert_header("server", "istio-envoy")?;
            resp.insert_header("content-length", "0")?;
            for (name, value) in &self.headers {
                resp.insert_header(name.clone(), value.clone())?;
            }
            return Ok((Box::new(resp), None));
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
        for (name, value) in &self.headers {
            resp.insert_header(name.clone(), value.clone())?;
        }
        Ok((Box::new(resp), (!self.body.is_empty()).then(|| self.body.clone())))
    }
}

fn httpdate_now() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

/// For a gRPC (or gRPC-Web) request, the content type of a reply in its form.
fn grpc_content_type(req: &pingora_http::RequestHeader) -> Option<&'static str> {
    let content_type = req.headers.get(http::header::CONTENT_TYPE)?.as_bytes();
    let rest = content_type.strip_prefix(b"application/grpc")?;
    Some(match rest {
        _ if rest.starts_with(b"-web-text") => "application/grpc-web-text+proto",
        _ if rest.starts_with(b"-web") => "application/grpc-web+proto",
        _ => "application/grpc",
    })
}

/// gRPC's status → HTTP mapping (grpc/doc/http-grpc-status-mapping.md, the reverse way, as
/// Envoy's `grpcToHttpStatus`).
fn http_status_of_grpc(code: u8) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
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
