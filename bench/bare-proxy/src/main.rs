//! `bare-proxy LISTEN_ADDR UPSTREAM_ADDR [--work-stealing]`
//!
//! The "bare Pingora proxy" baseline of issue 4 ("features must be free"): the least a Pingora
//! 0.9 HTTP/1.1 reverse proxy can do. One [`ProxyHttp`] whose only method picks a fixed plain-HTTP
//! peer; every other hook is Pingora's default (no routing, no header rewriting, no metrics, no
//! logging). Pingora's default upstream keep-alive pool applies, as in meshgate.
//!
//! It runs under Pingora's own `Server` with one service thread and `work_stealing: false`
//! (a current-thread Tokio runtime per thread, the cheapest layout Pingora offers);
//! `--work-stealing` switches to the default multi-thread runtime (still one worker) to measure
//! what that layout costs. The load runner (tests/load/run.py) compares meshgate's CPU per
//! request with this binary's: whatever meshgate spends above it is the price of its features.

use async_trait::async_trait;
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let work_stealing = args.iter().any(|a| a == "--work-stealing");
    let addrs: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let (listen, upstream) = match addrs.as_slice() {
        [l, u] => match (l.parse::<SocketAddr>(), u.parse::<SocketAddr>()) {
            (Ok(l), Ok(u)) => (l, u),
            _ => usage(),
        },
        _ => usage(),
    };

    // Built in code rather than read from a YAML file: the settings that matter are here.
    let conf = ServerConf {
        threads: 1,                                 // one worker thread, like nginx's 1 worker / haproxy's nbthread 1
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
    server.add_service(proxy);
    eprintln!("bare-proxy: {listen} -> {upstream} (threads 1, work_stealing {work_stealing})");
    server.run_forever();
}

fn usage() -> ! {
    eprintln!("usage: bare-proxy LISTEN_ADDR UPSTREAM_ADDR [--work-stealing]");
    exit(2);
}
