//! Responses the gateway writes itself, with Envoy's status codes, bodies and response flags.

use bytes::Bytes;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

pub struct LocalReply {
    pub code: u16,
    pub flags: &'static str,
    pub body: &'static str,
}

impl LocalReply {
    /// No virtual host or route matched (Envoy: 404, flag NR, empty body).
    pub fn no_route() -> LocalReply {
        LocalReply { code: 404, flags: "NR", body: "" }
    }

    /// The route's destinations all have weight 0 or name no cluster (Envoy: NC).
    pub fn no_cluster() -> LocalReply {
        LocalReply { code: 503, flags: "NC", body: "no healthy upstream" }
    }

    /// The cluster has no ready endpoint (Envoy: UH).
    pub fn no_healthy_upstream() -> LocalReply {
        LocalReply { code: 503, flags: "UH", body: "no healthy upstream" }
    }

    pub fn internal() -> LocalReply {
        LocalReply { code: 500, flags: "-", body: "internal error" }
    }

    /// Connect failures → 503 UF; timeouts waiting for the response → 504 UT; a reset after
    /// connecting → 503 UC.
    pub fn upstream_failure(e: &Error, flags: &'static str) -> LocalReply {
        use ErrorType::*;
        match e.etype() {
            ReadTimedout | WriteTimedout => LocalReply { code: 504, flags: "UT", body: "upstream request timeout" },
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError
            | BindError => LocalReply {
                code: 503,
                flags: "UF",
                body: "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            },
            _ if flags == "UF" => LocalReply {
                code: 503,
                flags: "UF",
                body: "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            },
            _ => LocalReply {
                code: 503,
                flags: "UC",
                body: "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            },
        }
    }

    pub async fn send(&self, session: &mut Session) -> Result<()> {
        let mut resp = ResponseHeader::build(self.code, Some(4))?;
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
