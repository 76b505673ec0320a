//! The HTTP data path: one [`MeshProxy`] per listener port, implementing Pingora's `ProxyHttp`.
//!
//! ```text
//!  request_filter ── trace context (when tracing is on; see crate::trace)
//!       │            → head parsed: the connection guard stops timing it (listeners::http)
//!       │            → validate::check (pure: 400 no Host / bad target, 431 head too large)
//!       │            → decide::decide (pure: 403 RBAC, 421, host, 301, route, cluster, endpoint)
//!       │            → the decision into ctx (LB guard held there), or its local reply sent
//!  upstream_peer ─── HttpPeer for the picked endpoint (pool reuse keyed by address)
//!  upstream_request_filter ── x-forwarded-for/-proto, x-request-id, traceparent/B3, the route's
//!                             rewrite and header edits; start upstream timer
//!  upstream_response_filter ─ upstream service time (for x-envoy-upstream-service-time)
//!  response_filter ── the route's header edits, server, x-envoy-upstream-service-time,
//!                     consistent-hash cookie
//!  (header edits leave Pingora's case-preserving name maps behind: see headers.rs)
//!  fail_to_connect / fail_to_proxy ── UF → 503, UT → 504, Envoy-style bodies
//!  logging ───────── one telemetry::Exchange → istio_* metrics, access log line, span (if sampled);
//!                    LB guard released (ctx drop)
//! ```

mod decide;
mod fault;
mod grpc_web;
mod headers;
mod local_reply;
pub(crate) mod mirror;
pub(crate) mod own_loop;
mod redirect;
pub(crate) mod request;
mod retry;
mod validate;

use crate::balance::Pick;
use crate::compiled::cluster::ClusterRuntime;
use crate::compiled::headers::CompiledEdits;
use crate::compiled::retry_policy::Failure;
use crate::compiled::{Current, Route, Runtime};
use crate::head::X_REQUEST_ID;
use crate::response_flag::{Flags, ResponseFlag};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::Exchange;
use crate::trace::context::SpanContext;
use crate::trace::Tracer;
use async_trait::async_trait;
use http::header::{HeaderName, HeaderValue};
use local_reply::LocalReply;
use pingora_core::protocols::http::ServerSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result, RetryType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Envoy's default connect timeout in Istio (DestinationRule connectionPool.tcp.connectTimeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle upstream connections are kept this long for reuse.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

// Names built once: a `&str` name is parsed (and lower-cased) on every lookup, and copied
// into a new allocation on every insert of a non-standard header.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
const X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
// Fixed values built once: a `&str` value is validated and copied on every request.
const HTTPS: HeaderValue = HeaderValue::from_static("https");
const HTTP: HeaderValue = HeaderValue::from_static("http");
const ISTIO_ENVOY: HeaderValue = HeaderValue::from_static("istio-envoy");

/// Shared by every listener's proxy.
pub(crate) struct Shared {
    pub(crate) current: Arc<Current>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) access_log: AccessLog,
    /// `None` when tracing is off: then each hook pays one branch for it.
    pub(crate) tracer: Option<Arc<Tracer>>,
    /// `--max-request-headers-kb`, in bytes.
    pub(crate) max_request_header_bytes: usize,
    /// Mirrored requests in flight, under `--max-mirrors-in-flight`.
    pub(crate) mirroring: mirror::Mirroring,
}

pub(crate) struct MeshProxy {
    /// The Gateway server port (Service port) this listener serves.
    pub(crate) port: u16,
    pub(crate) shared: Arc<Shared>,
    /// For TLS-terminated connections: the name of the Gateway server whose certificate the
    /// client got (`ServerTls::server`); requests for hosts of other servers get 421.
    pub(crate) tls_server: Option<String>,
}

/// Per-request state (pingora `CTX`).
pub(crate) struct Ctx {
    start: Instant,
    runtime: Option<Arc<Runtime>>,
    route: Option<Arc<Route>>,
    cluster: Option<Arc<ClusterRuntime>>,
    endpoint: Option<usize>,
    /// Holds the endpoint's in-flight count until the request ends.
    pick: Option<Pick>,
    /// The consistent-hash key, for a retry's pick.
    hash: Option<u64>,
    /// The tries against the route's retry policy and timeout.
    tries: retry::Tries,
    flags: ResponseFlag,
    /// The route's `fault` delayed the request (flag DI).
    delay_injected: bool,
    local_code: Option<u16>,
    /// The x-request-id generated for a request that came without one (inline: no
    /// allocation); added to the upstream request. A request's own id stays in its header.
    generated_id: Option<[u8; 36]>,
    /// Set when the upstream request was built and the client sent no x-forwarded-for, so
    /// the access log need not look for one again.
    no_forwarded_for: bool,
    set_cookie: Option<String>,
    upstream_start: Option<Instant>,
    upstream_time_ms: Option<u64>,
    /// The gateway's span ids and sampling decision (tracing on only).
    trace: Option<SpanContext>,
    /// The route's `rewrite` for this request, applied to the upstream request.
    rewrite: Option<Box<decide::Rewritten>>,
    /// The picked destination's own `headers` (the route's are on `route`).
    destination_headers: Option<Arc<CompiledEdits>>,
    /// The route's mirrors, taking the request body (mirrored routes only).
    mirror: Option<mirror::Feed>,
    /// The `Origin` the route's `corsPolicy` allowed: the response gets its CORS headers.
    cors_origin: Option<HeaderValue>,
    /// A gRPC-Web request, translated to gRPC and back.
    grpc_web: Option<Box<grpc_web::GrpcWeb>>,
    /// The overall deadline's length: the route's `timeout`, or a gRPC request's
    /// `grpc-timeout` when shorter (Istio sets Envoy's `max_grpc_timeout` to the route timeout).
    timeout: Option<Duration>,
}

impl Ctx {
    /// The header edits for this request: the destination's `headers`, then the route's
    /// (Envoy's order: the enclosing level applies last, so its `set` wins).
    fn edits(&self) -> [Option<&CompiledEdits>; 2] {
        [self.destination_headers.as_deref(), self.route.as_ref().and_then(|r| r.headers()).map(|e| &**e)]
    }

    /// Where the decision sends the request: route, cluster, endpoint (its pick held here).
    fn take(&mut self, d: decide::Decision) {
        self.endpoint = Some(d.pick.index());
        (self.route, self.cluster, self.pick, self.hash, self.set_cookie, self.rewrite, self.destination_headers) =
            (Some(d.route), Some(d.cluster), Some(d.pick), d.hash, d.set_cookie, d.rewrite, d.destination_headers);
    }

    /// Like Envoy, a request keeps its own id; one without (or with an unreadable one) gets a
    /// fresh id, which replaces its header upstream.
    fn request_id(&mut self, req: &RequestHeader) {
        if req.headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).is_none() {
            self.generated_id = Some(request::uuid_v4());
        }
    }

    /// The request's way, for both request loops: the route (with its CORS verdict), Envoy's
    /// fault filter before the router (a route with a `fault` draws whether this request waits
    /// and whether it is aborted), then the upstream. The decision, or the route and cluster of
    /// a refusal, goes into the context; `Err` is the reply to send instead.
    async fn decide(&mut self, runtime: &Runtime, incoming: &decide::Incoming<'_>) -> Result<(), LocalReply> {
        let decided = match decide::route(runtime, incoming) {
            Ok(mut routed) => {
                self.cors_origin = routed.cors_origin.take();
                match routed.route.fault().map(fault::draw) {
                    None => decide::upstream(routed, incoming),
                    Some(injection) => {
                        if let Some(delay) = injection.delay {
                            self.delay_injected = true;
                            tokio::time::sleep(delay).await;
                        }
                        match injection.abort {
                            Some(reply) => Err(decide::Refusal { reply, route: Some(routed.route), cluster: None }),
                            None => decide::upstream(routed, incoming),
                        }
                    }
                }
            }
            Err(refusal) => Err(refusal),
        };
        match decided {
            Ok(d) => {
                self.take(d);
                Ok(())
            }
            Err(refusal) => {
                (self.route, self.cluster) = (refusal.route, refusal.cluster);
                Err(refusal.reply)
            }
        }
    }

    /// The local reply to an exchange that failed with `e`, for both request loops, recorded
    /// as this request's (flags, code, an allowed origin's CORS headers); `None` when the
    /// client went away (nothing to answer; the flags then say so).
    fn failure_reply(&mut self, e: &Error) -> Option<LocalReply> {
        let reply = match e.esource() {
            _ if e.etype() == &ROUTE_TIMEOUT => LocalReply::route_timeout(),
            pingora_error::ErrorSource::Upstream => LocalReply::upstream_failure(e, self.flags),
            pingora_error::ErrorSource::Downstream => match e.etype() {
                // A body that breaks its framing (Pingora's `InvalidChunk`), or a head Pingora
                // refused late: 400, as Envoy's codec answers, if nothing went down yet.
                ErrorType::Custom("InvalidChunk") | ErrorType::InvalidHTTPHeader => LocalReply::bad_request(),
                // A body that stopped arriving (--body-read-timeout): Envoy's 408.
                ErrorType::ReadTimedout => LocalReply::request_timeout(),
                _ => {
                    self.flags = ResponseFlag::DownstreamConnectionTermination;
                    return None;
                }
            },
            _ => LocalReply::internal(),
        };
        let mut reply = reply;
        reply.headers.extend(self.cors_headers());
        (self.flags, self.local_code) = (reply.flags, Some(reply.code));
        Some(reply)
    }

    /// The CORS headers of an allowed origin's response (once: the origin is taken).
    fn cors_headers(&mut self) -> Vec<(HeaderName, HeaderValue)> {
        match (self.cors_origin.take(), self.route.as_ref().and_then(|r| r.cors())) {
            (Some(origin), Some(cors)) => cors.response_headers(origin).collect(),
            _ => Vec::new(),
        }
    }

    /// The request's record for metrics, the access log and the span.
    fn exchange<'a>(&'a self, proxy: &MeshProxy, session: &'a ServerSession) -> Exchange<'a> {
        Exchange {
            duration: self.start.elapsed(),
            head: Some(session.req_header()),
            port: proxy.port,
            tls: proxy.tls_server.is_some(),
            sni: None,
            code: session.response_written().map(|r| r.status.as_u16()).or(self.local_code).unwrap_or(0),
            flags: Flags {
                outcome: self.flags,
                delay_injected: self.delay_injected,
                retry_limit_exceeded: self.tries.exhausted,
            },
            details: match self.flags {
                ResponseFlag::UnenforcedPolicy => self.runtime.as_ref().and_then(|r| r.deny.as_deref()),
                _ => None,
            },
            route_name: self.route.as_deref().map(Route::log_name),
            cluster: self.cluster.as_deref(),
            endpoint: self.endpoint,
            bytes_received: session.body_bytes_read() as u64,
            bytes_sent: session.body_bytes_sent() as u64,
            upstream_service_time: self.upstream_time_ms,
            generated_id: self.generated_id.as_ref(),
            no_forwarded_for: self.no_forwarded_for,
            downstream: session.client_addr().and_then(|a| a.as_inet()).copied(),
        }
    }

    /// Whether `failure` is retried: the route's policy takes it, a retry is left, and the
    /// request can still be sent again (see retry.rs).
    fn retries(&mut self, failure: Failure, session: &Session) -> bool {
        let Some(route) = &self.route else { return false };
        self.tries.judge(route.retry_policy(), failure, replayable(session), Instant::now()) == retry::Verdict::Retry
    }
}

#[async_trait]
impl ProxyHttp for MeshProxy {
    /// Boxed: Pingora moves the context through its per-request futures, and each move of an
    /// inline context is a memcpy of its whole size; a box moves as one pointer.
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx {
            start: Instant::now(),
            runtime: None,
            route: None,
            cluster: None,
            endpoint: None,
            pick: None,
            hash: None,
            tries: retry::Tries::default(),
            flags: ResponseFlag::None,
            delay_injected: false,
            local_code: None,
            generated_id: None,
            no_forwarded_for: false,
            set_cookie: None,
            upstream_start: None,
            upstream_time_ms: None,
            trace: None,
            rewrite: None,
            destination_headers: None,
            mirror: None,
            cors_origin: None,
            grpc_web: None,
            timeout: None,
        })
    }

    /// Routing: host, route, cluster, endpoint. Answers 404/503 locally when any step fails.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        if let Some(tracer) = &self.shared.tracer {
            ctx.trace = Some(tracer.begin(session.req_header()));
        }
        // The head is parsed: body reads from here on are not timed as the head's.
        let done = crate::listeners::http::head_done(session.as_downstream().stream());
        let head_len = match done.oversized {
            true => session.as_downstream().as_http1().map(|h1| h1.get_headers_raw_bytes().len()),
            false => None,
        };
        let authority = match validate::check(session.req_header(), head_len, self.shared.max_request_header_bytes) {
            Ok(authority) => authority,
            Err(reply) => return answer(session, ctx, reply).await,
        };
        let runtime = self.shared.current.load();
        let incoming = decide::Incoming {
            port: self.port,
            tls_server: self.tls_server.as_deref(),
            head: session.req_header(),
            authority,
            client_ip: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
        };
        let decision = ctx.decide(&runtime, &incoming).await;
        ctx.runtime = Some(runtime);
        ctx.request_id(session.req_header());
        match decision {
            Ok(()) => {
                ctx.grpc_web = grpc_web::GrpcWeb::detect(session.req_header()).map(Box::new);
                ctx.timeout = ctx.route.as_ref().and_then(|r| r.timeout());
                if session.req_header().method == http::Method::POST {
                    if let Some(grpc) = request::grpc_timeout(session.req_header()) {
                        ctx.timeout = Some(ctx.timeout.map_or(grpc, |t| t.min(grpc)));
                    }
                }
                if ctx.route.as_ref().is_some_and(|r| !r.mirrors().is_empty()) {
                    self.start_mirrors(session, ctx)?;
                }
                Ok(false)
            }
            Err(reply) => answer(session, ctx, reply).await,
        }
    }

    /// Decodes a gRPC-Web-text body, and hands each body chunk to the route's mirrors, if it
    /// has any.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let Ctx { grpc_web, mirror, tries, .. } = &mut **ctx;
        if let Some(g) = grpc_web {
            g.request_body(tries.started(), body, end_of_stream)?;
        }
        if let Some(feed) = mirror {
            feed.push(tries.started(), body.as_ref(), end_of_stream);
        }
        Ok(())
    }

    /// The endpoint picked in `request_filter`; for a retry, another one after a backoff
    /// (see retry.rs). Each try reads for its per-try timeout or the time the route has left.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Box<Ctx>) -> Result<Box<HttpPeer>> {
        // Borrowed field by field: no reference count taken per request.
        let Ctx { route, cluster, endpoint, pick, hash, tries, timeout, .. } = &mut **ctx;
        let (Some(route), Some(cluster), Some(i)) = (route.as_ref(), cluster.as_ref(), endpoint.as_mut()) else {
            return Err(Error::explain(ErrorType::InternalError, "no endpoint picked"));
        };
        let policy = route.retry_policy();
        if tries.retry_pending() {
            let wait = policy.backoff(tries.started());
            if tries.deadline().is_some_and(|d| Instant::now() + wait >= d) {
                return Err(route_timeout());
            }
            tokio::time::sleep(wait).await;
            // A new pick replaces the old one (its in-flight count is released).
            if let Some(new) = tries.pick(&cluster.balancer, *hash, *i, policy) {
                *i = new.index();
                *pick = Some(new);
            }
            self.shared.metrics.upstream_retry(&cluster.definition.name);
        }
        let i = *i;
        let read_timeout = tries.start(i, Instant::now(), *timeout, policy);
        let mut peer = peer_for(cluster, i)?;
        peer.options.read_timeout = read_timeout;
        Ok(Box::new(peer))
    }

    /// Headers Envoy adds on the way up (use_remote_address = true, as Istio configures).
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let had_forwarded_for = self.upstream_head(upstream, client, ctx)?;
        ctx.no_forwarded_for = client.is_some() && !had_forwarded_for;
        if let Some(g) = &ctx.grpc_web {
            g.upstream_request(upstream)?;
        }
        if let Some(trace) = &ctx.trace {
            trace.inject(upstream)?;
        }
        ctx.upstream_start = Some(Instant::now());
        Ok(())
    }

    /// Takes the upstream service time when the upstream's response header arrives, and
    /// turns a response the retry policy retries into an error Pingora retries on (nothing
    /// of it has gone downstream yet: Pingora writes the header after the filters).
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        // gRPC statuses come in the headers of a trailers-only response, over h2.
        let h2 = ctx.cluster.as_ref().is_some_and(|c| c.http2);
        if ctx.route.as_ref().is_some_and(|r| r.retry_policy().may_retry_status(status, h2)) {
            let grpc_status = match status == 200 && h2 {
                true => resp.headers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()),
                false => None,
            };
            if ctx.retries(Failure::Response { status, grpc_status }, session) {
                let mut e = Error::explain(ErrorType::HTTPStatus(status), "retriable response");
                e.set_retry(true);
                return Err(e.into_up());
            }
        }
        // The header itself goes in with `server` in `response_filter`, which follows for the
        // same response: one pass over the response's header map instead of two.
        if let Some(start) = ctx.upstream_start {
            ctx.upstream_time_ms = Some(start.elapsed().as_millis() as u64);
        }
        Ok(())
    }

    /// Headers Envoy sets on the way down: `server`, `x-envoy-upstream-service-time`, and
    /// the consistent-hash cookie when one was generated.
    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        downstream_headers(ctx, resp)
    }

    /// gRPC-Web-text responses are base64 (other responses pay one branch per chunk).
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<Duration>> {
        if let Some(g) = &mut ctx.grpc_web {
            g.response_body(body, end_of_stream);
        }
        Ok(None)
    }

    /// gRPC-Web carries the upstream's trailers in the body (Pingora writes what this returns
    /// as the body's last bytes).
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<bytes::Bytes>> {
        Ok(ctx.grpc_web.as_mut().and_then(|g| g.trailers(trailers)))
    }

    /// The route timeout also covers the body: past the deadline the response is cut (504
    /// UT if nothing went down yet). Routes without a timeout pay one branch per chunk.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<Duration>> {
        if ctx.tries.deadline().is_some() && ctx.tries.deadline_passed(Instant::now()) {
            return Err(route_timeout());
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.flags = ResponseFlag::UpstreamConnectionFailure;
        e.set_retry(ctx.retries(Failure::Connect, session));
        e
    }

    /// A failure after the connection was made: a retriable response (from
    /// `upstream_response_filter`), a reset, a per-try timeout. Pingora's own retry of a
    /// failure on a reused pooled connection is kept: same endpoint, not a policy retry.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<Ctx>,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.tries.retry_pending() {
            return e; // decided in upstream_response_filter
        }
        let stale_pooled = matches!(e.retry, RetryType::ReusedOnly)
            && client_reused
            && session.req_header().method.is_idempotent()
            && replayable(session);
        if stale_pooled {
            e.set_retry(true);
            return e;
        }
        e.set_retry(false);
        let failure = match (e.esource(), e.etype()) {
            (pingora_error::ErrorSource::Upstream, ErrorType::ReadTimedout) => {
                if ctx.tries.deadline_passed(Instant::now()) {
                    return e; // the route timeout: 504 UT
                }
                Failure::PerTryTimeout
            }
            (pingora_error::ErrorSource::Upstream, ErrorType::H2Error) if refused_stream(&e) => Failure::RefusedStream,
            (pingora_error::ErrorSource::Upstream, _) => Failure::Reset,
            _ => return e,
        };
        e.set_retry(ctx.retries(failure, session));
        e
    }

    /// A failed request is in the access log and the metrics with its response flag, as Envoy
    /// reports it; Pingora would also log an ERROR line for each (a dead upstream under load,
    /// or clients that go away, would fill the gateway's log). Kept at debug level.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Box<Ctx>, error: &Error) -> bool {
        tracing::debug!(%error, "request failed");
        true
    }

    /// A retried failure is counted (`meshgate_upstream_rq_retry_total`) and, when its
    /// retries run out, logged with `URX`; Pingora's WARN line per retry would fill the log
    /// whenever an endpoint dies. Kept at debug level.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Box<Ctx>,
        error: &Error,
        _context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        tracing::debug!(%error, "retrying");
        true
    }

    /// Envoy-compatible status and body for upstream failures.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Box<Ctx>) -> FailToProxy {
        // Pingora closes the downstream connection after a failure once an upstream was
        // chosen (it honours `can_reuse_downstream` only before): the reply says so, rather
        // than `connection: keep-alive` on a connection about to close. Envoy keeps it open;
        // docs/compatibility.md.
        session.set_keepalive(None);
        let reply = ctx.failure_reply(e);
        let code = reply.as_ref().map_or(0, |r| r.code);
        if let (Some(reply), None) = (reply, session.response_written()) {
            let _ = reply.send(session).await;
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    /// Metrics, access log and span, from one exchange record; the LB guard in `ctx` is
    /// released when ctx drops after this.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Box<Ctx>) {
        self.record(session.as_downstream(), ctx);
        ctx.pick = None;
    }
}

/// The error for a request past its route timeout (504 UT in `fail_to_proxy`).
const ROUTE_TIMEOUT: ErrorType = ErrorType::Custom("RouteTimeout");

fn route_timeout() -> Box<Error> {
    Error::explain(ROUTE_TIMEOUT, "route timeout").into_up()
}

/// Whether the request can be sent again: nothing of the response went downstream and the
/// body (if any) is still whole in Pingora's replay buffer (64 KiB).
fn replayable(session: &Session) -> bool {
    session.response_written().is_none() && !session.as_ref().retry_buffer_truncated()
}

/// An HTTP/2 stream the upstream refused (`REFUSED_STREAM`): it never processed it.
fn refused_stream(e: &Error) -> bool {
    e.root_cause().downcast_ref::<h2::Error>().and_then(h2::Error::reason) == Some(h2::Reason::REFUSED_STREAM)
}

impl MeshProxy {
    /// Builds the upstream request's head from the client's: Envoy's forwarding headers
    /// (use_remote_address, as Istio configures), the request id, the route's rewrite and
    /// header edits. Returns whether the client sent an x-forwarded-for.
    fn upstream_head(&self, upstream: &mut RequestHeader, client: Option<std::net::IpAddr>, ctx: &Ctx) -> Result<bool> {
        let proto = (X_FORWARDED_PROTO, if self.tls_server.is_some() { HTTPS } else { HTTP });
        let id = match &ctx.generated_id {
            Some(id) => Some((X_REQUEST_ID, HeaderValue::from_bytes(id).map_err(invalid_header)?)),
            None => None,
        };
        let (original_path, host) = match &ctx.rewrite {
            Some(rewrite) => apply_rewrite(upstream, rewrite)?,
            None => (None, None),
        };
        headers::insert_request(upstream, client, [Some(proto), id, original_path, host], ctx.edits())
    }

    /// Metrics, access log and span of a finished exchange, for both request loops.
    fn record(&self, session: &ServerSession, ctx: &Ctx) {
        let exchange = ctx.exchange(self, session);
        self.shared.metrics.record(&exchange);
        // A retried request ends as Envoy's retry_limit_exceeded or retry_success.
        let retried = ctx.tries.exhausted || (ctx.tries.started() > 1 && ctx.flags == ResponseFlag::None);
        if let (Some(cluster), true) = (&ctx.cluster, retried) {
            self.shared.metrics.retried_request_done(&cluster.definition.name, ctx.tries.exhausted);
        }
        self.shared.access_log.log(&exchange);
        if let (Some(tracer), Some(trace)) = (&self.shared.tracer, &ctx.trace) {
            tracer.finish(trace, &exchange);
        }
    }

    /// Starts the copies of the route's mirrors with the head the upstream gets (`-shadow`
    /// on its host); the body follows in `request_body_filter`.
    fn start_mirrors(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let Some(route) = ctx.route.clone() else { return Ok(()) };
        let mut head = session.req_header().clone();
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        self.upstream_head(&mut head, client, ctx)?;
        // Envoy's grpc_web filter runs before the router: its shadow gets the gRPC request,
        // as the body the copies get (decoded in `request_body_filter`) is.
        if let Some(g) = &ctx.grpc_web {
            g.upstream_request(&mut head)?;
        }
        let has_body = !session.as_downstream_mut().is_body_empty();
        let request = mirror::Request { head: &head, has_body, timeout: route.timeout() };
        ctx.mirror = mirror::start(&self.shared.mirroring, &self.shared.metrics, route.mirrors(), request);
        Ok(())
    }
}

/// Answers the request locally from `request_filter` (which then returns `Ok(true)`: the
/// request goes no further), recording the reply for metrics and the access log.
async fn answer(session: &mut Session, ctx: &mut Ctx, mut reply: LocalReply) -> Result<bool> {
    reply.headers.extend(ctx.cors_headers());
    ctx.flags = reply.flags;
    ctx.local_code = Some(reply.code);
    reply.send(session).await?;
    Ok(true)
}

/// A route's `rewrite` on the upstream request: sets the new path, and returns the headers
/// that go with it, for `headers::insert_request` to set: the original path in
/// `x-envoy-original-path` (as Envoy sends it) and the new `Host`.
fn apply_rewrite(upstream: &mut RequestHeader, rewrite: &decide::Rewritten) -> Result<(HeaderPair, HeaderPair)> {
    let mut original_path = None;
    if let Some(path) = &rewrite.path {
        let uri =
            http::Uri::try_from(path.as_str()).map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?;
        let original = upstream.uri.path_and_query().map_or("/", |p| p.as_str());
        original_path = Some((X_ENVOY_ORIGINAL_PATH, HeaderValue::from_str(original).map_err(invalid_header)?));
        upstream.set_uri(uri);
    }
    Ok((original_path, rewrite.authority.clone().map(|a| (http::header::HOST, a))))
}

/// The peer for endpoint `i` of `cluster`, without a read timeout (the caller's to set).
fn peer_for(cluster: &ClusterRuntime, i: usize) -> Result<HttpPeer> {
    let endpoint = &cluster.endpoints[i];
    let mut peer = match cluster.tls() {
        Ok(None) => HttpPeer::new(endpoint.addr, false, String::new()),
        Ok(Some(tls)) => tls.peer(endpoint.addr),
        Err(_) => return Err(Error::explain(ErrorType::InternalError, "upstream TLS unusable")),
    };
    if cluster.http2 {
        // h2 over TLS by ALPN, or h2c with prior knowledge in plain text (Istio's choice for
        // grpc/http2 ports).
        peer.options.set_http_version(2, 2);
    }
    peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
    peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
    Ok(peer)
}

type HeaderPair = Option<(HeaderName, HeaderValue)>;

fn invalid_header(e: http::header::InvalidHeaderValue) -> Box<Error> {
    Error::because(ErrorType::InvalidHTTPHeader, "generated header value", e)
}

/// Headers Envoy sets on the way down, for both request loops: `server` (overwritten after
/// the route's edits too, as Envoy does by default: scripts that look for it keep working),
/// `x-envoy-upstream-service-time`, the route's edits, the consistent-hash cookie when one was
/// generated, the CORS headers of an allowed origin, and gRPC-Web's translation.
fn downstream_headers(ctx: &mut Ctx, resp: &mut ResponseHeader) -> Result<()> {
    let service_time = ctx.upstream_time_ms.map(|ms| (X_ENVOY_UPSTREAM_SERVICE_TIME, HeaderValue::from(ms)));
    headers::insert_response(resp, [Some((http::header::SERVER, ISTIO_ENVOY)), service_time], ctx.edits());
    if let Some(cookie) = ctx.set_cookie.take() {
        resp.append_header("set-cookie", cookie)?;
    }
    if ctx.cors_origin.is_some() {
        for (name, value) in ctx.cors_headers() {
            resp.insert_header(name, value)?;
        }
    }
    if let Some(g) = &mut ctx.grpc_web {
        g.response_header(resp)?;
    }
    Ok(())
}
