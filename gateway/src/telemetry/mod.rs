//! What the gateway tells about its traffic. The request path (and the TCP path) fills one
//! [`Exchange`] when a request or connection ends; every sink renders from it:
//!
//! ```text
//!  proxy::logging / l4::forward
//!        │  Exchange { head, timing, route, cluster, endpoint, flags, ids, bytes, … }
//!        ├─► metrics::Metrics::record      istio_requests_total and friends (series cached per destination)
//!        ├─► access_log::AccessLog::log    one JSON line (fields of the config pre-encoded)
//!        └─► trace::Tracer::finish         the server span (sampled requests only)
//! ```
//!
//! Sinks read only what they print: a field that needs work (a header lookup, a timestamp) is a
//! method here, called by the sinks that use it, so turning a sink off saves its work.
//! `destination` holds what telemetry keeps per compiled cluster (label sets with their
//! series caches, pre-encoded log fields), built on a cluster's first request.

pub(crate) mod access_log;
pub(crate) mod destination;
pub(crate) mod metrics;
pub(crate) mod per_thread;
pub(crate) mod timestamp;

use crate::compiled::cluster::ClusterRuntime;
use crate::head::{self, X_FORWARDED_FOR, X_REQUEST_ID};
use crate::response_flag::Flags;
use access_log::{Prepared, RequestId, RouteName};
use destination::{ClusterTelemetry, DestinationLabels, EndpointTelemetry};
use http::header::HeaderName;
use pingora_http::RequestHeader;
use std::net::SocketAddr;
use std::time::Duration;

/// One finished request (HTTP) or connection (TCP), borrowed from the state that served it.
pub(crate) struct Exchange<'a> {
    /// From the first byte of the request (or the accepted connection) to the end.
    pub(crate) duration: Duration,
    /// The request's head; `None` for TCP connections.
    pub(crate) head: Option<&'a RequestHeader>,
    /// The Gateway server port it came in on.
    pub(crate) port: u16,
    /// Whether the gateway terminated TLS for it (`https` in the span's URL).
    pub(crate) tls: bool,
    /// SNI of a TCP connection over TLS (the access log's authority for TCP).
    pub(crate) sni: Option<&'a str>,
    /// Status sent downstream (0 when none was, and for TCP).
    pub(crate) code: u16,
    pub(crate) flags: Flags,
    /// Why the gateway answered itself where the flag alone does not say
    /// (`%RESPONSE_CODE_DETAILS%`).
    pub(crate) details: Option<&'a str>,
    /// The route's access-log name, when a route matched.
    pub(crate) route_name: Option<&'a Prepared<RouteName>>,
    /// The destination cluster, when one was chosen, and the endpoint picked in it.
    pub(crate) cluster: Option<&'a ClusterRuntime>,
    pub(crate) endpoint: Option<usize>,
    /// Body bytes (HTTP) or stream bytes (TCP) from and to downstream.
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    /// Milliseconds from sending upstream to the upstream's response head.
    pub(crate) upstream_service_time: Option<u64>,
    /// The id the gateway generated for a request that came without one.
    pub(crate) generated_id: Option<&'a [u8; 36]>,
    /// Known when the request was forwarded: it carried no x-forwarded-for, so the access log
    /// need not look for one.
    pub(crate) no_forwarded_for: bool,
    pub(crate) downstream: Option<SocketAddr>,
}

impl<'a> Exchange<'a> {
    /// Labels and log fields of the destination cluster.
    pub(crate) fn cluster_telemetry(&self) -> Option<&'a ClusterTelemetry> {
        self.cluster.map(ClusterRuntime::telemetry)
    }

    /// Labels and log fields of the picked endpoint.
    pub(crate) fn endpoint_telemetry(&self) -> Option<&'a EndpointTelemetry> {
        self.cluster_telemetry().zip(self.endpoint).map(|(t, i)| t.endpoint(i))
    }

    /// Istio's destination labels: the endpoint's, or the service's when no endpoint was
    /// picked (503 no healthy upstream).
    pub(crate) fn destination_labels(&self) -> Option<&'a DestinationLabels> {
        let telemetry = self.cluster_telemetry()?;
        Some(match self.endpoint {
            Some(i) => &telemetry.endpoint(i).labels,
            None => &telemetry.service_labels,
        })
    }

    /// The endpoint's address.
    pub(crate) fn upstream_address(&self) -> Option<SocketAddr> {
        self.cluster.zip(self.endpoint).map(|(c, i)| c.endpoints[i].addr)
    }

    /// `connection_security_policy`: `mutual_tls` when the upstream connection presents a
    /// client certificate, `unknown` without a destination.
    pub(crate) fn security_policy(&self) -> &'static str {
        self.cluster.map_or("unknown", ClusterRuntime::security_policy)
    }

    /// A request header's value, when it is text.
    pub(crate) fn header(&self, name: &HeaderName) -> Option<&'a str> {
        self.head?.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn method(&self) -> &'a str {
        self.head.map_or("-", |h| h.method.as_str())
    }

    /// The authority as sent (the SNI for TCP over TLS).
    pub(crate) fn authority(&self) -> &'a str {
        match self.head {
            Some(h) => head::authority(h).unwrap_or_default(),
            None => self.sni.unwrap_or("-"),
        }
    }

    pub(crate) fn path(&self) -> &'a str {
        match self.head {
            Some(h) => h.uri.path_and_query().map_or("", |p| p.as_str()),
            None => "-",
        }
    }

    /// Envoy's `%PROTOCOL%`: `HTTP/1.1`, `HTTP/2`… or `TCP`.
    pub(crate) fn protocol_name(&self) -> &'static str {
        self.head.map_or("TCP", head::protocol_name)
    }

    /// The `request_protocol` label of Istio's HTTP metrics: `http` or `grpc`.
    pub(crate) fn protocol_label(&self) -> &'static str {
        self.head.map_or("tcp", head::protocol_label)
    }

    /// The request's own x-request-id, or the one generated for it.
    pub(crate) fn request_id(&self) -> Option<RequestId<'a>> {
        match self.generated_id {
            Some(id) => Some(RequestId::Generated(id)),
            None => self.header(&X_REQUEST_ID).map(RequestId::Header),
        }
    }

    pub(crate) fn x_forwarded_for(&self) -> Option<&'a str> {
        if self.no_forwarded_for {
            return None;
        }
        self.header(&X_FORWARDED_FOR)
    }

    pub(crate) fn user_agent(&self) -> Option<&'a str> {
        self.header(&http::header::USER_AGENT)
    }

    pub(crate) fn tracestate(&self) -> Option<&'a str> {
        self.header(&crate::trace::context::TRACESTATE)
    }
}

impl<'a> RequestId<'a> {
    pub(crate) fn as_str(self) -> &'a str {
        match self {
            RequestId::Header(id) => id,
            // Generated ids are hex digits and dashes.
            RequestId::Generated(id) => std::str::from_utf8(&id[..]).unwrap_or_default(),
        }
    }
}
