//! Client helpers for talking to the gateway under test, one file per protocol. The modules
//! are private and their items re-exported here, so suites keep naming `client::get`,
//! `client::grpc_call`, ... and `prelude::*` does not bring module names such as `http` or
//! `tls` that would clash with the crates of those names.
//!
//! The defaults are chosen so that what a test sees is what the gateway did:
//! no proxy (environment proxies would silently reroute loopback traffic), no
//! redirect following (redirect routes must be observable as 3xx), no
//! decompression, and, for the free functions, a brand-new TCP connection per
//! request so that connection-level behaviour (keep-alive, drain, per-
//! connection load balancing) is never masked by a shared pool. Use
//! [`HttpClient::pooled`] when reuse is exactly what a test wants.
//!
//! - `http`: HTTP/1.1 through reqwest, and HTTP/2 ([`RequestBuilder::http2`],
//!   [`RequestBuilder::http2_prior_knowledge`]) through hyper's connection API so the test
//!   controls `:authority` and the offered ALPN list.
//! - `grpc`: unary gRPC calls ([`grpc_call`]) that see trailers.
//! - `tls`: [`tls_probe`] stops at the handshake.
//! - `raw`: bytes as written: [`tcp_exchange`] / [`tls_tcp_exchange`] for TCP routes and
//!   passthrough, [`raw_http`] for requests a real client refuses to produce.
//! - `metrics`: scraping `/stats/prometheus` and reading samples out of the text.
//! - `conn`: the one-shot TCP/TLS connections and single exchanges the others share.

use std::time::Duration;

mod conn;
mod grpc;
mod http;
mod metrics;
mod raw;
mod tls;

pub use grpc::{grpc_call, grpc_request, GrpcReply, GrpcRequest};
pub use http::{admin_get, get, post, request, HttpClient, RequestBuilder, Response};
pub use metrics::{metric_sum, metric_value, metrics};
pub use raw::{raw_http, raw_http_timeout, tcp_exchange, tls_tcp_exchange, RAW_TIMEOUT, TCP_QUIET};
pub use tls::{tls_probe, TlsInfo, TlsProbe};

/// Default per-request timeout: long enough for `delay` tests, short enough
/// that a hung gateway fails the test instead of the CI run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
