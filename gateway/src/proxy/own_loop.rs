//! A prototype of meshgate's own HTTP/1 request loop on pingora-core's sessions and
//! connectors, beside Pingora's `ProxyHttp` path (issue 19 item 8). `--request-loop own`
//! turns it on for plain HTTP/1 connections; the default stays Pingora's.
//!
//! ```text
//!  read the head ─► validate ─► decide::route ─► decide::upstream   (the same pure functions)
//!  ─► upstream head (MeshProxy::upstream_head) ─► pooled HTTP/1 connection of this worker
//!  ─► request body, then response head (server, service time, edits) and body, streamed
//!  ─► connection back to the pool ─► one Exchange: metrics and access log
//! ```
//!
//! What it does not do yet, and answers 501 for instead of doing differently (a setting it
//! cannot honour must not be ignored): HTTP/2 or gRPC upstreams,
//! gRPC-Web. The route `timeout` is one deadline over the whole upstream exchange, as Envoy's;
//! retries follow the route's policy (Istio's default: a refused connect, on another endpoint,
//! after Envoy's backoff), after the request went out too while nothing went downstream and
//! the body is within the 64 KiB replay buffer; `perTryTimeout` bounds a try until its
//! response head. Spans are made as on Pingora's path. It sends the request body before
//! reading the response.
//! docs/architecture.md, "Request loop", has the measurements and the decision.

use super::local_reply::LocalReply;
use super::{decide, mirror, peer_for, retry, validate, Ctx, MeshProxy, UPSTREAM_IDLE_TIMEOUT};
use crate::compiled::retry_policy::{CompiledRetry, Failure};
use crate::response_flag::ResponseFlag;
use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::v1::Connector;
use pingora_core::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::ProxyHttp;
use std::sync::Arc;
use std::time::Instant;

thread_local! {
    /// Each worker's upstream HTTP/1 connections, as Pingora's proxy keeps one pool per worker.
    static CONNECTOR: Arc<Connector> = Arc::new(Connector::new(None));
}

/// Serves one request of `session` (HTTP/1), returning the connection when it can carry the
/// next one, with the bytes of a pipelined next request already read.
pub(crate) async fn serve(proxy: &MeshProxy, mut session: ServerSession) -> Option<(Stream, Option<BytesMut>)> {
    match session.read_request().await {
        Ok(true) => {}
        Ok(false) => return None,
        // A head Pingora's parser refused gets a 400, as on Pingora's `ProxyHttp` path; then,
        // as after any failed read (the guard's 408 or 431), the connection closes lingering
        // (the guard drains what the client still sends, so the reply is not lost to a reset).
        Err(e) => {
            if e.etype() == &ErrorType::InvalidHTTPHeader {
                let _ = session.respond_error(400).await;
            }
            session.shutdown().await;
            return None;
        }
    }
    let mut ctx = proxy.new_ctx();
    let outcome = exchange(proxy, &mut session, &mut ctx).await;
    if let Err(e) = &outcome {
        tracing::debug!(error = %e, "request failed");
        // After a failure the connection closes, and the reply says so (as on Pingora's path).
        session.set_keepalive(None);
        if let (Some(reply), None) = (ctx.failure_reply(e), session.response_written()) {
            let _ = reply.send_to(&mut session).await;
        }
    }
    proxy.record(&session, &ctx);
    match session.finish().await {
        Ok(Some(reusable)) => Some(reusable.into_parts()),
        _ => None,
    }
}

/// Routes and proxies the request; an error is answered by the caller.
async fn exchange(proxy: &MeshProxy, session: &mut ServerSession, ctx: &mut Ctx) -> Result<()> {
    if let Some(tracer) = &proxy.shared.tracer {
        ctx.trace = Some(tracer.begin(session.req_header()));
    }
    let done = crate::listeners::http::head_done(session.stream());
    let head_len = match done.oversized {
        true => session.as_http1().map(|h1| h1.get_headers_raw_bytes().len()),
        false => None,
    };
    let max = proxy.shared.max_request_header_bytes;
    let authority = match validate::check(session.req_header(), head_len, max) {
        Ok(authority) => authority,
        Err(reply) => return answer(session, ctx, reply).await,
    };
    let runtime = proxy.shared.current.load();
    let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
    let incoming = decide::Incoming {
        port: proxy.port,
        tls_server: proxy.tls_server.as_deref(),
        head: session.req_header(),
        authority,
        client_ip: client,
    };
    let decision = ctx.decide(&runtime, &incoming).await;
    ctx.runtime = Some(runtime);
    if let Err(reply) = decision {
        return answer(session, ctx, reply).await;
    }
    let Some(cluster) = ctx.cluster.clone() else { return Err(Error::explain(ErrorType::InternalError, "no cluster")) };
    if cluster.http2 {
        return answer(session, ctx, LocalReply::error(501, ResponseFlag::None, UNSUPPORTED_H2)).await;
    }
    if super::grpc_web::GrpcWeb::detect(session.req_header()).is_some() {
        return answer(session, ctx, LocalReply::error(501, ResponseFlag::None, UNSUPPORTED_GRPC_WEB)).await;
    }
    ctx.request_id(session.req_header());

    let mut head = Box::new(session.req_header().clone());
    let had_forwarded_for = proxy.upstream_head(&mut head, client, ctx)?;
    ctx.no_forwarded_for = client.is_some() && !had_forwarded_for;
    // The route's mirrors get the upstream head as it is here (as on Pingora's path: rewrites
    // and header edits, no trace context of this request's span); the body follows in `send`.
    if let Some(route) = ctx.route.as_ref().filter(|r| !r.mirrors().is_empty()) {
        let request = mirror::Request { head: &head, has_body: !session.is_body_empty(), timeout: route.timeout() };
        ctx.mirror = mirror::start(&proxy.shared.mirroring, &proxy.shared.metrics, route.mirrors(), request);
    }
    if let Some(trace) = &ctx.trace {
        trace.inject(&mut head)?;
    }
    // The route timeout: one deadline over the whole upstream exchange, body included, the
    // way Envoy's is (Pingora's hooks only give per-read timeouts; compatibility.md §12).
    match ctx.route.as_ref().and_then(|r| r.timeout()) {
        None => forward(&proxy.shared.metrics, session, ctx, &cluster, head).await,
        // Boxed: the exchange's future is large, and the timer would move it whole (a 29k
        // instructions memcpy per request when measured inline).
        Some(limit) => match pingora_timeout::timeout(
            limit,
            Box::pin(forward(&proxy.shared.metrics, session, ctx, &cluster, head)),
        )
        .await
        {
            Ok(done) => done,
            Err(_) => Err(super::route_timeout()),
        },
    }
}

/// A request body up to this size is kept for the route's retries (as Pingora's path keeps
/// 64 KiB); past it the request is sent once.
const REPLAY_LIMIT: usize = 64 * 1024;

/// The request body as far as a retry needs it again.
#[derive(Default)]
struct Replay {
    chunks: Vec<Bytes>,
    len: usize,
    /// The body outgrew [`REPLAY_LIMIT`]: no retry after it started going out.
    truncated: bool,
    /// The client's body was read to its end.
    complete: bool,
}

impl Replay {
    fn keep(&mut self, chunk: &Bytes) {
        if self.truncated {
            return;
        }
        self.len += chunk.len();
        match self.len <= REPLAY_LIMIT {
            true => self.chunks.push(chunk.clone()),
            false => (self.truncated, self.chunks) = (true, Vec::new()),
        }
    }
}

/// The upstream exchange: connect (or reuse), request head and body, response head and body.
/// A try that fails after the request went out (a reset, the per-try timeout, a status the
/// policy retries) is made again on another endpoint while nothing went downstream, the body
/// is still whole in the replay buffer and retries are left, as Envoy's router does.
async fn forward(
    metrics: &crate::telemetry::metrics::Metrics,
    session: &mut ServerSession,
    ctx: &mut Ctx,
    cluster: &crate::compiled::cluster::ClusterRuntime,
    head: Box<pingora_http::RequestHeader>,
) -> Result<()> {
    let connector = CONNECTOR.with(Arc::clone);
    let Some(route) = ctx.route.clone() else { return Err(Error::explain(ErrorType::InternalError, "no route")) };
    let policy = route.retry_policy();
    // Istio's default retries nothing once the request went out (on HTTP/1 upstreams), and
    // `attempts: 0` nothing at all: such routes keep no copy of the head or the body.
    let after_send = policy.retries > 0 && !std::ptr::eq(policy, CompiledRetry::istio_default());
    let mut replay = Replay::default();
    let mut head = Some(head);
    let (mut upstream, peer, started) = loop {
        let (mut upstream, peer) = connect(&connector, metrics, ctx, cluster, policy).await?;
        let try_head = match after_send {
            true => head.as_ref().map(|h| Box::new((**h).clone())),
            false => head.take(),
        };
        let try_head = try_head.ok_or_else(|| Error::explain(ErrorType::InternalError, "no request head"))?;
        let started = Instant::now();
        let sent = send(session, &mut upstream, try_head, &mut replay, after_send, ctx.mirror.as_mut());
        let outcome = match policy.per_try_timeout.filter(|_| after_send) {
            None => sent.await,
            Some(limit) => pingora_timeout::timeout(limit, Box::pin(sent))
                .await
                .unwrap_or_else(|_| Err(Error::explain(ErrorType::ReadTimedout, "per-try timeout").into_up())),
        };
        let failure = match &outcome {
            Ok(()) => match upstream.resp_header().map(|r| r.status.as_u16()) {
                Some(status) if after_send && policy.may_retry_status(status, false) => {
                    Some(Failure::Response { status, grpc_status: None })
                }
                _ => None,
            },
            Err(e) if e.esource() == &pingora_error::ErrorSource::Upstream && after_send => Some(match e.etype() {
                ErrorType::ReadTimedout => Failure::PerTryTimeout,
                _ => Failure::Reset,
            }),
            Err(_) => None,
        };
        let retry = failure.is_some_and(|failure| {
            ctx.tries.judge(policy, failure, !replay.truncated, Instant::now()) == retry::Verdict::Retry
        });
        if !retry {
            outcome?;
            break (upstream, peer, started);
        }
        // This connection carries an unfinished exchange: it is dropped, not pooled.
        drop(upstream);
        Box::pin(next_endpoint(ctx, cluster, policy, metrics)).await;
    };
    ctx.upstream_time_ms = Some(started.elapsed().as_millis() as u64);
    let mut resp = Box::new(
        upstream.resp_header().cloned().ok_or_else(|| Error::explain(ErrorType::ReadError, "no response head"))?,
    );
    super::downstream_headers(ctx, &mut resp)?;
    session.write_response_header(resp).await.map_err(|e| e.into_down())?;
    if upstream.was_upgraded() {
        // A 101 to an upgrade request (WebSocket): both sessions now pass bytes through until
        // each side closes; the upstream connection is not pooled after.
        // Boxed: a rare path, kept out of every request's future (see `exchange`'s timer).
        return Box::pin(tunnel(session, &mut upstream)).await;
    }
    while let Some(chunk) = upstream.read_body_bytes().await.map_err(|e| e.into_up())? {
        session.write_response_body(chunk, false).await.map_err(|e| e.into_down())?;
    }
    session.write_response_body(Bytes::new(), true).await.map_err(|e| e.into_down())?;
    release(connector, upstream, peer).await;
    Ok(())
}

/// An upgraded connection: client bytes go up and upstream bytes go down as they come, until
/// both directions ended (a client that stops sending ends the upstream's side too, as on
/// Pingora's path).
async fn tunnel(session: &mut ServerSession, upstream: &mut UpstreamSession) -> Result<()> {
    upstream.maybe_upgrade_body_writer();
    let (mut down_done, mut up_done) = (false, false);
    while !(down_done && up_done) {
        // Each branch's read is dropped when the other completes: both reads are cancel-safe
        // (bytes are taken only when a read returns).
        tokio::select! {
            chunk = session.read_request_body(), if !down_done => match chunk.map_err(|e| e.into_down())? {
                Some(chunk) => {
                    upstream.write_body(&chunk).await.map_err(|e| e.into_up())?;
                }
                None => {
                    down_done = true;
                    upstream.finish_body().await.map_err(|e| e.into_up())?;
                }
            },
            chunk = upstream.read_body_bytes(), if !up_done => match chunk.map_err(|e| e.into_up())? {
                Some(chunk) => session.write_response_body(chunk, false).await.map_err(|e| e.into_down())?,
                None => {
                    up_done = true;
                    session.write_response_body(Bytes::new(), true).await.map_err(|e| e.into_down())?;
                }
            },
        }
    }
    Ok(())
}

/// One try: the head, the body (what earlier tries read of it first, then the rest from the
/// client, kept for later tries when `keep` and handed to the route's mirrors), and the
/// response head.
async fn send(
    session: &mut ServerSession,
    upstream: &mut UpstreamSession,
    head: Box<pingora_http::RequestHeader>,
    replay: &mut Replay,
    keep: bool,
    mut mirror: Option<&mut mirror::Feed>,
) -> Result<()> {
    upstream.write_request_header(head).await.map_err(|e| e.into_up())?;
    for chunk in &replay.chunks {
        upstream.write_body(chunk).await.map_err(|e| e.into_up())?;
    }
    if !replay.complete {
        while let Some(chunk) = session.read_request_body().await.map_err(|e| e.into_down())? {
            if keep {
                replay.keep(&chunk);
            }
            // The copies get each byte once, in order: only what comes from the client, as
            // one stream (try 1) whichever try carries it.
            if let Some(feed) = mirror.as_deref_mut() {
                feed.push(1, Some(&chunk), false);
            }
            upstream.write_body(&chunk).await.map_err(|e| e.into_up())?;
        }
        replay.complete = true;
        if let Some(feed) = mirror {
            feed.push(1, None, true);
        }
    }
    upstream.finish_body().await.map_err(|e| e.into_up())?;
    upstream.read_response().await.map_err(|e| e.into_up())?;
    Ok(())
}

/// A connection to the picked endpoint; a refused connect is retried on another endpoint as
/// `policy` (the route's) says (Istio's default: twice, on `connect-failure`), after Envoy's
/// backoff. Nothing was sent yet, so every connect failure can be retried.
async fn connect(
    connector: &Connector,
    metrics: &crate::telemetry::metrics::Metrics,
    ctx: &mut Ctx,
    cluster: &crate::compiled::cluster::ClusterRuntime,
    policy: &CompiledRetry,
) -> Result<(UpstreamSession, pingora_core::upstreams::peer::HttpPeer)> {
    loop {
        let i = ctx.endpoint.unwrap_or_default();
        ctx.tries.start(i, Instant::now(), None, policy);
        let peer = peer_for(cluster, i)?;
        match connector.get_http_session(&peer).await {
            Ok((session, _reused)) => return Ok((session, peer)),
            Err(e) => {
                ctx.flags = ResponseFlag::UpstreamConnectionFailure;
                if ctx.tries.judge(policy, Failure::Connect, true, Instant::now()) != retry::Verdict::Retry {
                    return Err(e.into_up());
                }
                Box::pin(next_endpoint(ctx, cluster, policy, metrics)).await;
            }
        }
    }
}

/// Before a retry: Envoy's backoff, then another endpoint when there is one.
async fn next_endpoint(
    ctx: &mut Ctx,
    cluster: &crate::compiled::cluster::ClusterRuntime,
    policy: &CompiledRetry,
    metrics: &crate::telemetry::metrics::Metrics,
) {
    tokio::time::sleep(policy.backoff(ctx.tries.started())).await;
    if let Some(pick) = ctx.tries.pick(&cluster.balancer, ctx.hash, ctx.endpoint.unwrap_or_default(), policy) {
        ctx.endpoint = Some(pick.index());
        ctx.pick = Some(pick);
    }
    ctx.flags = ResponseFlag::None;
    metrics.upstream_retry(&cluster.definition.name);
}

const UNSUPPORTED_H2: &[u8] = b"the prototype request loop has no HTTP/2 upstreams (--request-loop pingora)";
const UNSUPPORTED_GRPC_WEB: &[u8] = b"the prototype request loop has no gRPC-Web (--request-loop pingora)";

/// The upstream connection goes back to this worker's pool when its response is complete.
async fn release(connector: Arc<Connector>, upstream: UpstreamSession, peer: pingora_core::upstreams::peer::HttpPeer) {
    connector.release_http_session(upstream, &peer, Some(UPSTREAM_IDLE_TIMEOUT)).await;
}

async fn answer(session: &mut ServerSession, ctx: &mut Ctx, mut reply: LocalReply) -> Result<()> {
    reply.headers.extend(ctx.cors_headers());
    (ctx.flags, ctx.local_code) = (reply.flags, Some(reply.code));
    reply.send_to(session).await.map_err(|e| e.into_down())
}
