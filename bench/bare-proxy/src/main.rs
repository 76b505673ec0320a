//! `bare-proxy LISTEN_ADDR UPSTREAM_ADDR [--threads N] [--work-stealing] [--tls ADDR CERT KEY] [--h2c ADDR]`
//!
//! The "bare Pingora proxy" baseline of issue 4 ("features must be free"): the least a Pingora
//! 0.9 HTTP/1.1 reverse proxy can do. One [`ProxyHttp`] whose only method picks a fixed plain-HTTP
//! peer; every other hook is Pingora's default (no routing, no header rewriting, no metrics, no
//! logging). Pingora's default upstream keep-alive pool applies, as in meshgate.
//!
//! It runs under Pingora's own `Server` with one service thread and `work_stealing: false`
//! (a current-thread Tokio runtime per thread, the cheapest layout Pingora offers);
//! `--work-stealing` switches to the default multi-thread runtime (still one worker) to measure
//! what that layout costs. `--threads N` gives each service N threads (the runner's `--mode
//! defaults` passes the CPU count). The load runner (tests/load/run.py) compares meshgate's CPU per
//! request with this binary's: whatever meshgate spends above it is the price of its features.
//!
//! `--tls ADDR CERT KEY` adds a TLS-terminating listener (Pingora's own rustls acceptor, PEM
//! files) and `--h2c ADDR` a plain listener that also takes HTTP/2 with prior knowledge, for the
//! runner's HTTPS and HTTP/2 workloads. h2c is a second service rather than an option of the
//! first: with it, Pingora peeks at every new plain connection for the HTTP/2 preface, which
//! the HTTP/1.1 baseline must not pay.

use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_proxy::{ProxyHttp, Session};
use std::net::SocketAddr;
use std::process::exit;

/// The whole proxy: every request goes to `upstream`.
struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // Plain HTTP (no TLS), no SNI. Peers with equal address/options share the keep-alive pool.
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// Command-line options; see the module documentation.
struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    threads: usize,
    work_stealing: bool,
    /// Address, certificate file, key file.
    tls: Option<(SocketAddr, String, String)>,
    h2c: Option<SocketAddr>,
}

fn parse_args() -> Args {
    let mut addrs = Vec::new();
    let (mut threads, mut work_stealing, mut tls, mut h2c) = (1, false, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--work-stealing" => work_stealing = true,
            "--threads" => match args.next().and_then(|a| a.parse().ok()) {
                Some(n) if n > 0 => threads = n,
                _ => usage(),
            },
            "--tls" => match (args.next().and_then(|a| a.parse().ok()), args.next(), args.next()) {
                (Some(addr), Some(cert), Some(key)) => tls = Some((addr, cert, key)),
                _ => usage(),
            },
            "--h2c" => h2c = Some(args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| usage())),
            _ if arg.starts_with("--") => usage(),
            _ => addrs.push(arg),
        }
    }
    let (listen, upstream) = match addrs.as_slice() {
        [l, u] => match (l.parse::<SocketAddr>(), u.parse::<SocketAddr>()) {
            (Ok(l), Ok(u)) => (l, u),
            _ => usage(),
        },
        _ => usage(),
    };
    Args { listen, upstream, threads, work_stealing, tls, h2c }
}

fn main() {
    let Args { listen, upstream, threads, work_stealing, tls, h2c } = parse_args();

    // Built in code rather than read from a YAML file: the settings that matter are here.
    let conf = ServerConf {
        threads,                                    // 1 (default): like nginx's 1 worker / haproxy's nbthread 1
        work_stealing,                              // false (default here): current-thread runtime per thread
        max_retries: 1,                             // one attempt, as meshgate configures Pingora
        grace_period_seconds: Some(0),              // the runner stops us with SIGTERM:
        graceful_shutdown_timeout_seconds: Some(0), // exit at once
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen.to_string());
    if let Some((addr, cert, key)) = &tls {
        if let Err(e) = proxy.add_tls(&addr.to_string(), cert, key) {
            eprintln!("bare-proxy: TLS listener {addr}: {e}");
            exit(1);
        }
    }
    server.add_service(proxy);
    if let Some(addr) = h2c {
        let mut h2 = pingora_proxy::http_proxy_service(&server.configuration, Bare { upstream });
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        if let Some(app) = h2.app_logic_mut() {
            app.server_options = Some(options);
        }
        h2.add_tcp(&addr.to_string());
        server.add_service(h2);
    }
    eprintln!(
        "bare-proxy: {listen} -> {upstream} (threads {threads}, work_stealing {work_stealing}, tls {:?}, h2c {h2c:?})",
        tls.as_ref().map(|t| t.0)
    );
    server.run_forever();
}

fn usage() -> ! {
    eprintln!(
        "usage: bare-proxy LISTEN_ADDR UPSTREAM_ADDR [--threads N] [--work-stealing] [--tls ADDR CERT KEY] [--h2c ADDR]"
    );
    exit(2);
}
