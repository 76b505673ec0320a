//! Responses the gateway writes itself, with Envoy's status codes, bodies and response flags.

use bytes::Bytes;
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
}

impl LocalReply {
    /// Envoy's RBAC filter denial: 403 with its body.
    pub(super) fn rbac_denied() -> LocalReply {
        LocalReply {
            code: 403,
            flags: ResponseFlag::UnenforcedPolicy,
            body: Bytes::from_static(b"RBAC: access denied"),
            location: None,
            verbatim: false,
            grpc_status: None,
        }
    }

    /// No virtual host or route matched (Envoy: 404, flag NR, empty body).
    pub(super) fn no_route() -> LocalReply {
        LocalReply {
            code: 404,
            flags: ResponseFlag::NoRoute,
            body: Bytes::new(),
            location: None,
            verbatim: false,
            grpc_status: None,
        }
    }

    /// The route's destinations all have weight 0, or the picked one names a cluster Envoy
    /// would not have (unknown host or subset): Envoy's `NC`, cluster not found, which its
    /// router answers with `cluster_not_found_response_code` (503) and no body.
    pub(super) fn no_cluster() -> LocalReply {
        LocalReply {
            code: 503,
            flags: ResponseFlag::NoClusterFound,
            body: Bytes::new(),
            location: None,
            verbatim: false,
            grpc_status: None,
        }
    }

    /// The cluster has no ready endpoint (Envoy: UH).
    pub(super) fn no_healthy_upstream() -> LocalReply {
        LocalReply {
            code: 503,
            flags: ResponseFlag::NoHealthyUpstream,
            body: Bytes::from_static(b"no healthy upstream"),
            location: None,
            verbatim: false,
            grpc_status: None,
        }
    }

    /// A malformed request (no Host in HTTP/1.1, a request-target of no allowed form): Envoy's
    /// 400 with flag DPE; the connection closes after it.
    pub(super) fn bad_request() -> LocalReply {
        LocalReply {
            code: 400,
            flags: ResponseFlag::DownstreamProtocolError,
            body: Bytes::new(),
            location: None,
            verbatim: false,
            grpc_status: None,
        }
    }

    /// A request head over the size limit (Envoy's `max_request_headers_kb`): 431, flag DPE;
    /// the connection closes after it.
    pub(super) fn headers_too_large() -> LocalReply {
        LocalReply {
            code: 431,
            flags: ResponseFlag::DownstreamProtocolError,
            body: Bytes::new(),
            location: None,
            verbatim: false,
            grpc_status: None,
        }
    }

    /// The request body stopped arriving (`--body-read-timeout`): Envoy's 408 for a request
    /// that was not received in time.
    pub(super) fn request_timeout() -> LocalReply {
        LocalReply {
            code: 408,
            flags: ResponseFlag::DownstreamProtocolError,
            body: Bytes::from_static(b"request timeout"),
            location: None,
            verbatim: false,
            grpc_status: None,
        }
    }

    pub(super) fn internal() -> LocalReply {
        LocalReply {
            code: 500,
            flags: ResponseFlag::None,
            body: Bytes::from_static(b"internal error"),
            location: None,
            verbatim: false,
            grpc_status: None,
        }
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
        }
    }

    /// A route's `directResponse`.
    pub(super) fn direct(code: u16, body: Bytes) -> LocalReply {
        LocalReply { code, flags: ResponseFlag::None, body, location: None, verbatim: true, grpc_status: None }
    }

    /// The route's `fault` aborted the request (Envoy's fault filter: its body, flag FI).
    /// A `grpcStatus` abort gives gRPC clients that status, others its HTTP equivalent.
    pub(super) fn fault_abort(status: meshgate_model::snapshot::AbortStatus) -> LocalReply {
        use meshgate_model::snapshot::AbortStatus;
        let (code, grpc_status) = match status {
            AbortStatus::Http(code) => (code, None),
            AbortStatus::Grpc(g) => (http_status_of_grpc(g), Some(g)),
        };
        LocalReply {
            code,
            flags: ResponseFlag::FaultInjected,
            body: Bytes::from_static(b"fault filter abort"),
            location: None,
            verbatim: false,
            grpc_status,
        }
    }

    /// The route timeout (or a try's read timeout) passed: Envoy's router's 504, flag UT.
    pub(super) fn route_timeout() -> LocalReply {
        LocalReply {
            code: 504,
            flags: ResponseFlag::UpstreamRequestTimeout,
            body: Bytes::from_static(b"upstream request timeout"),
            location: None,
            verbatim: false,
            grpc_status: None,
        }
    }

    /// HTTP/2 connection coalescing sent a request for a host this connection's certificate
    /// (server) does not serve, while another server on the port does.
    pub(super) fn misdirected() -> LocalReply {
        LocalReply {
            code: 421,
            flags: ResponseFlag::NoRoute,
            body: Bytes::from_static(b"misdirected request"),
            location: None,
            verbatim: false,
            grpc_status: None,
        }
    }

    /// TLS origination is configured but its material is unusable.
    pub(super) fn upstream_tls_unusable() -> LocalReply {
        LocalReply {
            code: 503,
            flags: ResponseFlag::UpstreamConnectionFailure,
            body: Bytes::from_static(b"upstream TLS settings are unusable"),
            location: None,
            verbatim: false,
            grpc_status: None,
        }
    }

    /// Connect failures → 503 UF; timeouts waiting for the response → 504 UT; a reset after
    /// connecting → 503 UC.
    pub(super) fn upstream_failure(e: &Error, flags: ResponseFlag) -> LocalReply {
        use ErrorType::*;
        match e.etype() {
            ReadTimedout | WriteTimedout => LocalReply::route_timeout(),
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError
            | BindError => LocalReply {
                code: 503,
                flags: ResponseFlag::UpstreamConnectionFailure,
                body: Bytes::from_static(
                    b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                ),
                location: None,
                verbatim: false,
                grpc_status: None,
            },
            _ if flags == ResponseFlag::UpstreamConnectionFailure => LocalReply {
                code: 503,
                flags: ResponseFlag::UpstreamConnectionFailure,
                body: Bytes::from_static(
                    b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                ),
                location: None,
                verbatim: false,
                grpc_status: None,
            },
            _ => LocalReply {
                code: 503,
                flags: ResponseFlag::UpstreamConnectionTermination,
                body: Bytes::from_static(
                    b"upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                ),
                location: None,
                verbatim: false,
                grpc_status: None,
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
        if !self.verbatim && is_grpc(session) {
            let mut resp = ResponseHeader::build(200, Some(5))?;
            resp.insert_header("content-type", "application/grpc")?;
            resp.insert_header("grpc-status", self.grpc_status.unwrap_or(grpc_status(self.code)).to_string())?;
            let message = std::str::from_utf8(&self.body).unwrap_or_default();
            resp.insert_header("grpc-message", if message.is_empty() { "route not found" } else { message })?;
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
            session.write_response_body(Some(self.body.clone()), true).await?;
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
