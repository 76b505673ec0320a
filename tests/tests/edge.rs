//! Edge hardening, probed with raw sockets as an attacker would: connection limits, slow and
//! silent clients, malformed requests (docs/configuration.md, "Edge limits").

mod common;

use anyhow::Result;
use common::*;
use meshgate_e2e::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn metric(gw: &GatewayProcess, name: &str) -> f64 {
    let text = metrics(gw.metrics_addr()).await.unwrap();
    metric_value(&text, name, &[]).unwrap_or(f64::NAN)
}

#[tokio::test]
async fn at_the_connection_limit_accepting_pauses_and_probes_still_answer() {
    let (_up, cfg) = app_behind_gateway().await;
    let gw = GatewayProcess::builder()
        .config(cfg.path())
        .ports(&[80])
        .args(["--max-connections", "20"])
        .start()
        .await
        .unwrap();
    assert_eq!(metric(&gw, "meshgate_downstream_connections_limit").await, 20.0);
    let at = gw.addr(80);
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(at).await.unwrap());
    }
    assert_eventually!(
        Duration::from_secs(5),
        metric(&gw, "meshgate_downstream_overloaded").await,
        |v| *v == 1.0,
        "overload reported once 20 connections are open"
    );
    // The probe and the metrics port are not data ports: they answer from the reserve.
    assert_eq!(gw.ready_status().await, Some(200));
    // A new client waits in the backlog rather than being accepted and starved (a worker
    // already waiting in accept may take one connection past the limit)…
    let waiting = tokio::spawn(async move { get(at, "/").timeout(Duration::from_secs(20)).send().await });
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    assert!(metric(&gw, "meshgate_downstream_connections_active").await <= 20.0 + workers - 1.0);
    // …and is served as soon as one connection closes.
    idle.pop();
    let r = waiting.await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(metric(&gw, "meshgate_downstream_accept_paused_total").await >= 1.0);
}

/// Sends `bytes` on a new connection (a byte at a time, `gap` apart, when given) and reads
/// until the gateway closes it. Returns what came back, or an error when the connection was
/// still open after `within` (the gateway failed to close it).
async fn exchange(at: std::net::SocketAddr, bytes: &[u8], gap: Option<Duration>, within: Duration) -> Result<String> {
    let mut s = TcpStream::connect(at).await?;
    match gap {
        // The gateway may answer and close before it has read everything (a head over the
        // limit): a failed write is not the end, what it answered is still there to read.
        None => {
            let _ = s.write_all(bytes).await;
        }
        Some(gap) => {
            for b in bytes {
                // The gateway may close mid-way (that is the point): stop writing then.
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(gap).await;
            }
        }
    }
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.map_err(|_| anyhow::anyhow!("connection still open after {within:?}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

async fn edge_gateway(cfg: &ConfigDir, extra: &[&str]) -> GatewayProcess {
    let mut args = vec!["--request-header-timeout", "1s", "--idle-timeout", "1s", "--body-read-timeout", "1s"];
    args.extend_from_slice(extra);
    GatewayProcess::builder().config(cfg.path()).ports(&[80]).args(args).start().await.unwrap()
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let (_up, cfg) = app_behind_gateway().await;
    let gw = edge_gateway(&cfg, &[]).await;
    let at = gw.addr(80);
    // Never sends a byte: closed at the header timeout, without a response.
    let out = exchange(at, b"", None, Duration::from_secs(10)).await.expect("a silent connection is closed");
    assert_eq!(out, "");
    // A kept-alive connection with nothing more to ask is closed after the idle timeout.
    let out = exchange(at, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection is closed");
    assert_eq!(status_line(&out), "HTTP/1.1 200 OK");
    assert!(metric(&gw, "meshgate_downstream_idle_timeouts_total").await >= 2.0);
}

#[tokio::test]
async fn slowloris_gets_408_at_the_header_timeout() {
    let (up, cfg) = app_behind_gateway().await;
    let gw = edge_gateway(&cfg, &[]).await;
    // A byte every 100 ms: each read is quick, the head never completes within 1 s.
    let head = b"GET /slow HTTP/1.1\r\nHost: a\r\nX-1: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let out = exchange(gw.addr(80), head, Some(Duration::from_millis(100)), Duration::from_secs(15))
        .await
        .expect("the slow head is cut off");
    assert!(status_line(&out).starts_with("HTTP/1.1 408"), "{out}");
    assert!(!up.requests().iter().any(|r| r.path == "/slow"), "nothing went upstream");
    assert_eq!(metric(&gw, "meshgate_downstream_header_timeouts_total").await, 1.0);
}

#[tokio::test]
async fn a_stalled_body_gets_408() {
    let (_up, cfg) = app_behind_gateway().await;
    let gw = edge_gateway(&cfg, &[]).await;
    let out = exchange(
        gw.addr(80),
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly part",
        None,
        Duration::from_secs(10),
    )
    .await
    .expect("the stalled request is ended");
    assert!(status_line(&out).starts_with("HTTP/1.1 408"), "{out}");
}

#[tokio::test]
async fn more_idle_connections_than_the_limit_pass_once_they_time_out() {
    let (_up, cfg) = app_behind_gateway().await;
    let gw = edge_gateway(&cfg, &["--max-connections", "20"]).await;
    let at = gw.addr(80);
    let mut idle = Vec::new();
    for _ in 0..60 {
        // Past the limit the kernel's backlog holds them; they count as connected here.
        idle.push(TcpStream::connect(at).await.unwrap());
    }
    assert_eq!(gw.ready_status().await, Some(200), "readiness answers while the data port is full");
    // Normal traffic gets through once the idle connections reach their header timeout.
    let r = get(at, "/").timeout(Duration::from_secs(20)).send().await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(metric(&gw, "meshgate_downstream_idle_timeouts_total").await >= 20.0);
    drop(idle);
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_connection_closes() {
    let (up, cfg) = app_behind_gateway().await;
    let gw = edge_gateway(&cfg, &[]).await;
    let cases: &[(&str, &[u8], &str)] = &[
        ("no Host in HTTP/1.1", b"GET /bad HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        ("two Host headers", b"GET /bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "HTTP/1.1 400"),
        ("not a request line", b"HELLO\r\n\r\n", "HTTP/1.1 400"),
        ("a relative target", b"GET bad HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 400"),
        ("asterisk form for GET", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 400"),
        (
            "a chunk size that is not hex",
            b"POST /bad HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
    ];
    for (what, bytes, want) in cases {
        // A second request follows on the same connection: it must not be answered.
        let mut bytes = bytes.to_vec();
        bytes.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n");
        let out = exchange(gw.addr(80), &bytes, None, Duration::from_secs(10)).await.expect(what);
        assert!(status_line(&out).starts_with(want), "{what}: {out}");
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{what}: the connection closes after the 400: {out}");
    }
    assert!(!up.requests().iter().any(|r| r.path == "/after"), "nothing after a malformed request went upstream");
}

#[tokio::test]
async fn heads_over_the_limit_get_431() {
    let (up, cfg) = app_behind_gateway().await;
    let gw = edge_gateway(&cfg, &[]).await;
    for size in [61 * 1024, 100 * 1024, 2 * 1024 * 1024] {
        let head = format!("GET /big HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(size));
        let out = exchange(gw.addr(80), head.as_bytes(), None, Duration::from_secs(10)).await.unwrap();
        assert!(status_line(&out).starts_with("HTTP/1.1 431"), "{size}: {}", status_line(&out));
    }
    // Just under the default 60 KiB passes.
    let head = format!("GET /ok HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "a".repeat(59 * 1024));
    let out = exchange(gw.addr(80), head.as_bytes(), None, Duration::from_secs(10)).await.unwrap();
    assert_eq!(status_line(&out), "HTTP/1.1 200 OK");
    assert!(!up.requests().iter().any(|r| r.path == "/big"));
    assert!(metric(&gw, "meshgate_downstream_headers_too_large_total").await >= 2.0);
}

/// A client still sending when the gateway refuses its head gets the refusal and a clean
/// close: the gateway reads and drops the rest (a lingering close) instead of closing with
/// unread input, which makes the kernel reset the connection and can lose the reply.
#[tokio::test]
async fn a_refused_client_still_sending_gets_a_clean_close() {
    let (_up, cfg) = app_behind_gateway().await;
    let gw = edge_gateway(&cfg, &[]).await;
    let mut s = TcpStream::connect(gw.addr(80)).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\nX-Big: ").await.unwrap();
    let filler = vec![b'a'; 16 * 1024];
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    // Past the 60 KiB limit, until the 431 arrives.
    while !String::from_utf8_lossy(&reply).contains("\r\n\r\n") {
        s.write_all(&filler).await.unwrap();
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            reply.extend_from_slice(&buf[..n]);
        }
    }
    assert!(status_line(&String::from_utf8_lossy(&reply)).starts_with("HTTP/1.1 431"));
    // The client goes on writing for a while: every write lands (no reset)…
    for _ in 0..16 {
        s.write_all(&filler).await.expect("the gateway drains input after refusing");
    }
    s.shutdown().await.unwrap();
    // …and the connection ends with the gateway's close, not a reset.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.expect("closed");
    assert!(end.is_ok(), "clean close expected, got {end:?}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (up, cfg) = app_behind_gateway().await;
    let gw = edge_gateway(&cfg, &[]).await;
    let bytes = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\nGET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let out = exchange(gw.addr(80), bytes, None, Duration::from_secs(10)).await.unwrap();
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    let (one, two, three) =
        (out.find("\"/one\"").unwrap(), out.find("\"/two\"").unwrap(), out.find("\"/three\"").unwrap());
    assert!(one < two && two < three, "responses in request order");
    let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/one", "/two", "/three"]);
}

/// Request smuggling probes (CL.TE, TE.CL, obfuscated Transfer-Encoding, conflicting
/// Content-Length, bad chunk sizes, bare LF), each hiding `GET /smuggled` where a parser that
/// disagrees with the gateway's about the body's end would read a second request. Whatever
/// the gateway makes of a probe (400, a request with that text as its body, or a pipelined
/// second request), every request the upstream sees must be one whose response the client
/// got, in order: the gateway and the upstream never disagree on where a request ends. (The
/// probe itself may reach the upstream and be cut off there when its body turns out to be
/// malformed after its head went up, as with any streaming proxy: it is left out.)
#[tokio::test]
async fn request_smuggling_probes_never_desync() {
    let (up, cfg) = app_behind_gateway().await;
    let gw = edge_gateway(&cfg, &[]).await;
    const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let chunked_smuggle = format!("0\r\n\r\n{SMUGGLED}");
    let smuggle_len = SMUGGLED.len();
    let probes: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_smuggle}", chunked_smuggle.len()),
        ),
        (
            "TE.CL",
            format!(
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
                smuggle_len
            ),
        ),
        ("TE xchunked", format!("Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n{chunked_smuggle}")),
        ("TE space before colon", format!("Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n{chunked_smuggle}")),
        ("TE tab", format!("Transfer-Encoding:\tchunked\r\nContent-Length: 5\r\n\r\n{chunked_smuggle}")),
        ("TE obs-fold", format!("Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\n{chunked_smuggle}")),
        ("TE twice", format!("Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n{chunked_smuggle}")),
        (
            "TE chunked, identity",
            format!("Transfer-Encoding: chunked, identity\r\nContent-Length: 5\r\n\r\n{chunked_smuggle}"),
        ),
        ("TE identity", format!("Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\n{chunked_smuggle}")),
        ("TE upper case", format!("Transfer-Encoding: CHUNKED\r\n\r\n{chunked_smuggle}")),
        ("TE with CL 0", format!("Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n{chunked_smuggle}")),
        ("two different CL", format!("Content-Length: 0\r\nContent-Length: {smuggle_len}\r\n\r\n{SMUGGLED}")),
        ("CL list", format!("Content-Length: 0, {smuggle_len}\r\n\r\n{SMUGGLED}")),
        ("CL plus sign", format!("Content-Length: +0\r\n\r\n{SMUGGLED}")),
        ("CL hex", format!("Content-Length: 0x0\r\n\r\n{SMUGGLED}")),
        ("CL space inside", format!("Content-Length: 0 0\r\n\r\n{SMUGGLED}")),
        ("CL negative", format!("Content-Length: -1\r\n\r\n{SMUGGLED}")),
        (
            "chunk size overflow",
            format!("Transfer-Encoding: chunked\r\n\r\nffffffffffffffff1\r\n{SMUGGLED}\r\n0\r\n\r\n"),
        ),
        ("chunk size with junk", format!("Transfer-Encoding: chunked\r\n\r\n0;\x00\r\n\r\n{SMUGGLED}")),
        ("chunk ext then LF", format!("Transfer-Encoding: chunked\r\n\r\n0\n\r\n{SMUGGLED}")),
        ("bare LF head", format!("Transfer-Encoding: chunked\n\n{chunked_smuggle}")),
        (
            "CR in header value",
            format!("X-A: b\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n{chunked_smuggle}"),
        ),
    ];
    for (name, rest) in &probes {
        let probe = format!("POST /probe HTTP/1.1\r\nHost: a\r\n{rest}");
        let mut bytes = probe.into_bytes();
        bytes.extend_from_slice(b"GET /follow HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let out = exchange(gw.addr(80), &bytes, None, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let status = status_line(&out).to_string();
        assert!(status.starts_with("HTTP/1.1 "), "{name}: no answer: {out:?}");
        eprintln!("{name}: {status}, {} response(s)", out.matches("HTTP/1.1 ").count());
        let upstream: Vec<String> = up.requests().into_iter().map(|r| r.path).filter(|p| p != "/probe").collect();
        let answered: Vec<String> = out
            .split("\"path\":\"")
            .skip(1)
            .filter_map(|p| p.split('"').next())
            .filter(|p| *p != "/probe")
            .map(str::to_string)
            .collect();
        assert_eq!(upstream, answered, "{name} ({status}): the upstream saw requests the client got no answer for");
        up.reset();
    }
    assert_eq!(get(gw.addr(80), "/").send().await.unwrap().status, StatusCode::OK, "still serving");
}

#[tokio::test]
async fn more_idle_connections_than_descriptors_do_not_starve_the_gateway() {
    let (_up, cfg) = app_behind_gateway().await;
    // 256 descriptors: the gateway keeps a reserve of 64 and takes (256 - 64) / 2 = 96 clients.
    let gw = GatewayProcess::builder()
        .config(cfg.path())
        .ports(&[80])
        .descriptor_limit(256)
        .args(["--request-header-timeout", "1s"])
        .start()
        .await
        .unwrap();
    assert_eq!(metric(&gw, "meshgate_downstream_connections_limit").await, 96.0);
    let at = gw.addr(80);
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(at).await.unwrap());
    }
    // The probe answers from the reserve while the data port is full…
    assert_eq!(gw.ready_status().await, Some(200));
    let text = metrics(gw.metrics_addr()).await.unwrap();
    assert!(text.contains("meshgate_downstream_overloaded 1"), "{text}");
    // …and normal traffic returns once the idle connections reach their deadline.
    let r = get(at, "/").timeout(Duration::from_secs(30)).send().await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(!gw.stderr().contains("Too many open files"), "{}", gw.stderr());
    drop(idle);
}
