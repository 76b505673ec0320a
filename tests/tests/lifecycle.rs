//! Readiness and shutdown: SIGTERM stops accepting, lets in-flight requests finish within
//! --drain-seconds, then exits 0.

mod common;

use common::*;
use meshgate_e2e::prelude::*;

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let (up, cfg) = app_behind_gateway().await;
    let gw = GatewayProcess::builder().config(cfg.path()).ports(&[80]).drain_seconds(5).start().await.unwrap();
    let at = gw.addr(80);
    let in_flight = tokio::spawn(async move { get(at, "/delay/700").send().await });
    assert!(up.wait_for_hits(1, Duration::from_secs(5)).await);

    gw.sigterm().unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        gw.ready_status().await,
        |s| *s != Some(200),
        "readiness fails while draining"
    );
    let _ = assert_eventually!(
        Duration::from_secs(5),
        get(at, "/").send().await.map(|r| r.status),
        |r| r.is_err(),
        "new connections are refused while draining"
    );
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::OK, "the in-flight request completed");
    let status = gw.wait_exit(Duration::from_secs(10)).await.expect("gateway exited");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn drain_deadline_bounds_shutdown() {
    let (up, cfg) = app_behind_gateway().await;
    let gw = GatewayProcess::builder().config(cfg.path()).ports(&[80]).drain_seconds(1).start().await.unwrap();
    let at = gw.addr(80);
    let stuck = tokio::spawn(async move { get(at, "/delay/30000").timeout(Duration::from_secs(40)).send().await });
    assert!(up.wait_for_hits(1, Duration::from_secs(5)).await);
    let t0 = std::time::Instant::now();
    gw.sigterm().unwrap();
    let status = gw.wait_exit(Duration::from_secs(15)).await.expect("gateway exited after the drain deadline");
    assert!(status.success(), "exit status {status:?}");
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert!(stuck.await.unwrap().is_err(), "the request that outlived the deadline was cut");
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_hold_shutdown() {
    let (_up, cfg) = app_behind_gateway().await;
    let gw = GatewayProcess::builder().config(cfg.path()).ports(&[80]).drain_seconds(20).start().await.unwrap();
    let client = HttpClient::pooled();
    assert_eq!(client.get(gw.addr(80), "/").send().await.unwrap().status, 200);
    // The pooled connection stays open and idle; shutdown must close it rather than wait 20 s.
    let t0 = std::time::Instant::now();
    gw.sigterm().unwrap();
    let status = gw.wait_exit(Duration::from_secs(15)).await.expect("exited without waiting for the idle connection");
    assert!(status.success());
    assert!(t0.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn not_ready_until_every_listener_is_open() {
    let (_up, cfg) = app_behind_gateway().await;
    let addr = free_addr();
    let squatter = std::net::TcpListener::bind(addr).unwrap();
    let gw = GatewayProcess::builder().config(cfg.path()).port_addr(80, addr).start_unready().await.unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        gw.stderr(),
        |log| log.contains("cannot listen for gateway port"),
        "bind failure reported: {}",
        gw.stderr()
    );
    assert_eq!(gw.ready_status().await, Some(503), "not ready while port 80 cannot open");

    drop(squatter);
    gw.wait_ready(Duration::from_secs(10)).await.expect("ready once the port is free");
    assert_eq!(get(addr, "/").send().await.unwrap().status, StatusCode::OK);
}

/// `THP_enabled` of a process, from /proc (Linux 5.0+; `None` where the kernel does not say).
fn thp_enabled(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("THP_enabled:")).map(|v| v.trim().to_string())
}

#[tokio::test]
async fn transparent_huge_pages_are_off_unless_allowed() {
    let (_up, cfg) = app_behind_gateway().await;
    let gw = GatewayProcess::builder().config(cfg.path()).ports(&[80]).start().await.unwrap();
    let Some(flag) = thp_enabled(gw.pid()) else { return };
    assert_eq!(flag, "0", "mimalloc's MADV_HUGEPAGE would back sparse regions with 2 MiB pages");
    let allowed =
        GatewayProcess::builder().config(cfg.path()).ports(&[80]).env("MIMALLOC_ALLOW_THP", "1").start().await.unwrap();
    assert_eq!(thp_enabled(allowed.pid()).as_deref(), Some("1"));
}

/// Names of the process's threads, from /proc.
fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut names: Vec<String> = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn every_worker_accepts_and_serves_the_current_config() {
    let (_up, cfg) = app_behind_gateway().await;
    let gw = GatewayProcess::builder().config(cfg.path()).ports(&[80]).arg("--threads").arg("3").start().await.unwrap();
    let workers: Vec<String> = thread_names(gw.pid()).into_iter().filter(|n| n.starts_with("meshgate-w")).collect();
    assert_eq!(workers, ["meshgate-w0", "meshgate-w1", "meshgate-w2"]);

    // The kernel hashes each new connection to one worker's socket: with 30 connections, a
    // worker left without one would mean its socket is not in the port's group (odds of that
    // by chance: 3 × (2/3)^30, about 1 in 70,000).
    let at = gw.addr(80);
    for _ in 0..30 {
        assert_eq!(get(at, "/").send().await.unwrap().status, StatusCode::OK);
    }
    let text = metrics(gw.metrics_addr()).await.unwrap();
    for w in ["0", "1", "2"] {
        let n = metric_value(&text, "meshgate_worker_connections_total", &[("worker", w)]).unwrap_or(0.0);
        assert!(n >= 1.0, "worker {w} accepted no connection:\n{text}");
    }
    assert_eq!(metric_sum(&text, "meshgate_worker_connections_total", &[]), 30.0);

    // A swap reaches every worker: no new connection, whichever worker takes it, sees the old route.
    cfg.write("vs.yaml", &app_route(Some("/v2"))).unwrap();
    let _ = assert_eventually!(
        Duration::from_secs(10),
        get(at, "/").send().await.map(|r| r.status),
        |s| matches!(s, Ok(s) if *s == StatusCode::NOT_FOUND),
        "the new config (no route for /) is served"
    );
    for _ in 0..30 {
        assert_eq!(get(at, "/").send().await.unwrap().status, StatusCode::NOT_FOUND, "a worker kept the old config");
        assert_eq!(get(at, "/v2").send().await.unwrap().status, StatusCode::OK);
    }
}
