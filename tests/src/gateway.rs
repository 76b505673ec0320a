//! Launching the real `gateway` binary as a child process.
//!
//! Tests drive the gateway strictly through its public contract (CLI flags,
//! config files, HTTP listeners, stdout access log, signals) so that what is
//! tested is what ships. This crate therefore does not link the gateway; it
//! finds the built binary (see [`gateway_bin`]); build it first with
//! `cargo build -p gateway`.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// Default readiness deadline; `MESHGATE_E2E_READY_TIMEOUT_SECS` overrides it
/// (slow CI machines, debug builds under load).
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Readiness poll interval.
const READY_POLL: Duration = Duration::from_millis(20);
/// Keep at most this much stderr per process (the tail is what matters).
const MAX_STDERR: usize = 256 * 1024;

/// Locates the gateway binary: `$MESHGATE_GATEWAY_BIN` if set; otherwise
/// `gateway` next to the parent of the running executable's directory (tests
/// run from `target/debug/deps/`, the binary is `target/debug/gateway`), then
/// in that same directory (for binaries of this crate, which live in
/// `target/debug/`). Returns the first candidate that exists, else the first
/// candidate, so the spawn error names the expected location.
pub fn gateway_bin() -> PathBuf {
    crate::controller::workspace_bin("gateway", "MESHGATE_GATEWAY_BIN")
}

/// Locks ignoring poison: a panicking test predicate must not turn the
/// `Drop` cleanup into a double panic (abort) that leaks the child process.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ports handed out by [`free_port`] in this process, never handed out twice:
/// a port released by one test could otherwise be picked again by a test
/// running in parallel before the first gateway binds it.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A currently free `127.0.0.1` port (bound then released). Inherently racy
/// against other processes, but unique within this test process.
pub fn free_addr() -> SocketAddr {
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = l.local_addr().expect("local_addr");
        if lock(handed_out()).insert(addr.port()) {
            return addr;
        }
    }
    panic!("could not find a free loopback port");
}

/// Builder for [`GatewayProcess`]; see [`GatewayProcess::builder`].
#[derive(Debug, Clone, Default)]
pub struct GatewayBuilder {
    bin: Option<PathBuf>,
    configs: Vec<PathBuf>,
    ports: BTreeMap<u16, Option<SocketAddr>>,
    labels: Vec<String>,
    namespace: Option<String>,
    access_log: Option<String>,
    drain_seconds: Option<u64>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    ready_timeout: Option<Duration>,
    otlp_endpoint: Option<String>,
    trace_sampling: Option<f64>,
    workload_name: Option<String>,
    descriptor_limit: Option<u64>,
}

impl GatewayBuilder {
    /// Starts the gateway with this descriptor limit (soft and hard `RLIMIT_NOFILE`), as a
    /// container runtime or `ulimit -n` would set it.
    pub fn descriptor_limit(mut self, limit: u64) -> Self {
        self.descriptor_limit = Some(limit);
        self
    }

    /// Use this binary instead of [`gateway_bin`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.bin = Some(path.into());
        self
    }

    /// A config file or folder (`--config`); repeatable.
    pub fn config(mut self, path: impl AsRef<Path>) -> Self {
        self.configs.push(path.as_ref().to_path_buf());
        self
    }

    /// Gateway server ports to map to fresh loopback listen addresses.
    pub fn ports(mut self, ports: &[u16]) -> Self {
        for p in ports {
            self.ports.entry(*p).or_insert(None);
        }
        self
    }

    /// One Gateway server port mapped to a fresh loopback listen address.
    pub fn port(self, port: u16) -> Self {
        self.ports(&[port])
    }

    /// Map a Gateway server port to a specific listen address.
    pub fn port_addr(mut self, port: u16, addr: SocketAddr) -> Self {
        self.ports.insert(port, Some(addr));
        self
    }

    /// `--labels k=v,...` (the gateway workload's own labels, which Gateway
    /// `selector`s match). Combined with [`label`](Self::label).
    pub fn labels(mut self, labels: &str) -> Self {
        self.labels.extend(labels.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().to_string()));
        self
    }

    /// One workload label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push(format!("{key}={value}"));
        self
    }

    /// Snapshots from a controller instead of files: `--controller URL
    /// --controller-token-file PATH --name NAME`.
    pub fn controller(self, url: impl AsRef<OsStr>, token_file: impl AsRef<OsStr>, name: &str) -> Self {
        self.arg("--controller").arg(url).arg("--controller-token-file").arg(token_file).arg("--name").arg(name)
    }

    /// `--namespace NS`.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// `--access-log off|stdout|PATH`. Defaults to `stdout`, which is what
    /// [`GatewayProcess::access_log_lines`] reads.
    pub fn access_log(mut self, mode: impl Into<String>) -> Self {
        self.access_log = Some(mode.into());
        self
    }

    /// `--drain-seconds N`.
    pub fn drain_seconds(mut self, secs: u64) -> Self {
        self.drain_seconds = Some(secs);
        self
    }

    /// Any extra argument, passed after the ones the builder generates.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// An environment variable for the child (e.g. `RUST_LOG`).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// `--otlp-endpoint URL`: turns tracing on (see [`crate::collector::Collector`]).
    pub fn otlp_endpoint(mut self, url: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(url.into());
        self
    }

    /// `--trace-sampling PERCENT` (0-100).
    pub fn trace_sampling(mut self, percent: f64) -> Self {
        self.trace_sampling = Some(percent);
        self
    }

    /// `--workload-name NAME` (metrics' `source_workload`, traces' `service.name`).
    pub fn workload_name(mut self, name: impl Into<String>) -> Self {
        self.workload_name = Some(name.into());
        self
    }

    /// Readiness deadline for [`start`](Self::start).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = Some(timeout);
        self
    }

    /// Spawns the gateway and waits until `/healthz/ready` answers 200.
    /// On failure the error carries the exit status (if it died) and its
    /// stderr.
    pub async fn start(self) -> Result<GatewayProcess> {
        let timeout = self.ready_timeout.unwrap_or_else(ready_timeout_from_env);
        let gw = self.start_unready().await?;
        gw.wait_ready(timeout).await?;
        Ok(gw)
    }

    /// Spawns the gateway without waiting for readiness (for tests of the
    /// readiness endpoint itself, or of startup failures).
    pub async fn start_unready(self) -> Result<GatewayProcess> {
        self.spawn()
    }

    fn spawn(self) -> Result<GatewayProcess> {
        let bin = self.bin.clone().unwrap_or_else(gateway_bin);
        let ports: BTreeMap<u16, SocketAddr> =
            self.ports.iter().map(|(p, a)| (*p, a.unwrap_or_else(free_addr))).collect();
        let status_addr = free_addr();
        let metrics_addr = free_addr();
        let admin_addr = free_addr();

        let mut cmd = Command::new(&bin);
        for c in &self.configs {
            cmd.arg("--config").arg(c);
        }
        for (p, a) in &ports {
            cmd.arg("--port-map").arg(format!("{p}={a}"));
        }
        cmd.arg("--status-addr").arg(status_addr.to_string());
        cmd.arg("--metrics-addr").arg(metrics_addr.to_string());
        cmd.arg("--admin-addr").arg(admin_addr.to_string());
        if !self.labels.is_empty() {
            cmd.arg("--labels").arg(self.labels.join(","));
        }
        if let Some(ns) = &self.namespace {
            cmd.arg("--namespace").arg(ns);
        }
        cmd.arg("--access-log").arg(self.access_log.as_deref().unwrap_or("stdout"));
        if let Some(d) = self.drain_seconds {
            cmd.arg("--drain-seconds").arg(d.to_string());
        }
        if let Some(url) = &self.otlp_endpoint {
            cmd.arg("--otlp-endpoint").arg(url);
        }
        if let Some(p) = self.trace_sampling {
            cmd.arg("--trace-sampling").arg(p.to_string());
        }
        if let Some(name) = &self.workload_name {
            cmd.arg("--workload-name").arg(name);
        }
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(limit) = self.descriptor_limit {
            use std::os::unix::process::CommandExt;
            let rlim = libc::rlimit { rlim_cur: limit as libc::rlim_t, rlim_max: limit as libc::rlim_t };
            // SAFETY: runs in the child between fork and exec, where only async-signal-safe
            // calls are allowed; setrlimit is a plain system call on a value copied in.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }

        let command_line = format!("{cmd:?}");
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "spawning gateway binary {} (build it with `cargo build -p gateway` \
                 or set MESHGATE_GATEWAY_BIN)",
                bin.display()
            )
        })?;
        let verbose = std::env::var_os("MESHGATE_E2E_VERBOSE").is_some();
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipes_closed = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        {
            let out = child.stdout.take().expect("piped stdout");
            let lines = stdout_lines.clone();
            let closed = pipes_closed.clone();
            std::thread::spawn(move || {
                collect_lines(out, &lines, verbose);
                closed[0].store(true, Ordering::SeqCst);
            });
        }
        {
            let err = child.stderr.take().expect("piped stderr");
            let buf = stderr.clone();
            let closed = pipes_closed.clone();
            std::thread::spawn(move || {
                collect_stderr(err, &buf, verbose);
                closed[1].store(true, Ordering::SeqCst);
            });
        }
        Ok(GatewayProcess {
            pid: child.id(),
            child: Mutex::new(child),
            exit: Mutex::new(None),
            command_line,
            ports,
            status_addr,
            metrics_addr,
            admin_addr,
            stdout_lines,
            stderr,
            pipes_closed,
        })
    }
}

fn ready_timeout_from_env() -> Duration {
    std::env::var("MESHGATE_E2E_READY_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_READY_TIMEOUT)
}

fn collect_lines(out: impl Read, lines: &Mutex<Vec<String>>, verbose: bool) {
    let mut reader = BufReader::new(out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
                if verbose {
                    eprintln!("[gateway stdout] {line}");
                }
                lock(lines).push(line);
            }
        }
    }
}

fn collect_stderr(err: impl Read, buf: &Mutex<String>, verbose: bool) {
    let mut reader = BufReader::new(err);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                if verbose {
                    eprint!("[gateway stderr] {text}");
                }
                let mut b = lock(buf);
                b.push_str(&text);
                if b.len() > MAX_STDERR {
                    let mut cut = b.len() - MAX_STDERR / 2;
                    while !b.is_char_boundary(cut) {
                        cut += 1;
                    }
                    b.drain(..cut);
                }
            }
        }
    }
}

/// A running gateway child process. Killed (SIGKILL) when dropped; if the
/// drop happens during a panic, its stderr and the tail of its stdout are
/// printed so the failing test shows why.
#[derive(Debug)]
pub struct GatewayProcess {
    pid: u32,
    child: Mutex<Child>,
    exit: Mutex<Option<ExitStatus>>,
    command_line: String,
    ports: BTreeMap<u16, SocketAddr>,
    status_addr: SocketAddr,
    metrics_addr: SocketAddr,
    admin_addr: SocketAddr,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// Set by the stdout / stderr reader threads when they hit EOF.
    pipes_closed: Arc<[AtomicBool; 2]>,
}

impl GatewayProcess {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// Listen address of Gateway server port `port`. Panics if the port was
    /// not requested from the builder (a test bug).
    pub fn addr(&self, port: u16) -> SocketAddr {
        *self.ports.get(&port).unwrap_or_else(|| {
            panic!("gateway port {port} was not mapped; mapped: {:?}", self.ports.keys().collect::<Vec<_>>())
        })
    }

    /// All Gateway server port → listen address mappings.
    pub fn port_map(&self) -> &BTreeMap<u16, SocketAddr> {
        &self.ports
    }

    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The spawned command line (for diagnostics).
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Sends SIGTERM (graceful drain).
    pub fn sigterm(&self) -> std::io::Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// Sends an arbitrary signal, e.g. `libc::SIGHUP`.
    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        if self.try_exit().is_some() {
            return Err(std::io::Error::other("gateway already exited"));
        }
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own un-reaped child, so it cannot have been recycled.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&self) {
        // Lock order (exit, then child) matches `try_exit`.
        let mut exit = lock(&self.exit);
        let mut child = lock(&self.child);
        if exit.is_none() {
            let _ = child.kill();
            *exit = child.wait().ok();
        }
    }

    /// Exit status if the process has exited (non-blocking).
    pub fn try_exit(&self) -> Option<ExitStatus> {
        let mut exit = lock(&self.exit);
        if exit.is_none() {
            *exit = lock(&self.child).try_wait().ok().flatten();
        }
        *exit
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Status code of `GET /healthz/ready` now, or `None` if unreachable.
    pub async fn ready_status(&self) -> Option<u16> {
        crate::client::get(self.status_addr, "/healthz/ready")
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()
            .map(|r| r.status.as_u16())
    }

    /// Polls `/healthz/ready` every 20 ms until it answers 200. Fails early,
    /// with stderr attached, if the process exits.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                self.wait_pipes_closed(Duration::from_millis(500)).await;
                bail!(
                    "gateway exited ({status}) before becoming ready\ncommand: {}\n--- stderr ---\n{}",
                    self.command_line,
                    self.stderr()
                );
            }
            let last = match crate::client::get(self.status_addr, "/healthz/ready")
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                Ok(r) if r.status.as_u16() == 200 => return Ok(()),
                Ok(r) => format!("status {}: {}", r.status, r.text()),
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(anyhow!(
                    "gateway not ready within {timeout:?} (last: {last})\ncommand: {}\n--- stderr ---\n{}",
                    self.command_line,
                    self.stderr()
                ));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// All stdout lines so far (access-log JSON lines when `--access-log
    /// stdout`), oldest first.
    pub fn access_log_lines(&self) -> Vec<String> {
        lock(&self.stdout_lines).clone()
    }

    /// Stdout lines that parse as JSON objects.
    pub fn access_log_json(&self) -> Vec<serde_json::Value> {
        self.access_log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }

    /// Waits until some stdout line (already received or arriving within
    /// `timeout`) satisfies `pred`; returns that line. Access-log entries
    /// may be written after the response reached the client, hence waiting.
    pub async fn wait_for_log<F>(&self, pred: F, timeout: Duration) -> Option<String>
    where
        F: Fn(&str) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut scanned = 0;
        loop {
            {
                let lines = lock(&self.stdout_lines);
                if let Some(l) = lines[scanned..].iter().find(|l| pred(l)) {
                    return Some(l.clone());
                }
                scanned = lines.len();
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After exit, waits (bounded: a grandchild may hold the pipes open) until
    /// the reader threads have seen EOF, so no output is missed.
    pub async fn wait_pipes_closed(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.pipes_closed.iter().all(|c| c.load(Ordering::SeqCst)) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Captured stderr so far (the last ~256 KiB).
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// `http://ADDR{path}` for Gateway server port `port`.
    pub fn url(&self, port: u16, path: &str) -> String {
        format!("http://{}{}", self.addr(port), path)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // Give the reader threads a moment to drain the pipes.
            for _ in 0..50 {
                if self.pipes_closed.iter().all(|c| c.load(Ordering::SeqCst)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let stdout = self.access_log_lines();
            let tail = &stdout[stdout.len().saturating_sub(50)..];
            eprintln!(
                "--- gateway (pid {}) {} ---\n--- stderr ---\n{}\n--- stdout (last {} lines) ---\n{}",
                self.pid,
                self.command_line,
                self.stderr(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Runs `gateway analyze PATH...` and returns (exit code, stdout, stderr);
/// exit code is -1 if killed by a signal. Panics if the binary cannot be run.
pub fn run_analyze<I, P>(paths: I) -> (i32, String, String)
where
    I: IntoIterator<Item = P>,
    P: AsRef<OsStr>,
{
    let bin = gateway_bin();
    let out =
        Command::new(&bin).arg("analyze").args(paths).stdin(Stdio::null()).output().unwrap_or_else(|e| {
            panic!("running {} analyze: {e} (build it with `cargo build -p gateway`)", bin.display())
        });
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_addrs_are_unique() {
        let a: HashSet<u16> = (0..50).map(|_| free_addr().port()).collect();
        assert_eq!(a.len(), 50);
    }

    /// Exercises the process plumbing with a stand-in "gateway": a shell
    /// script that prints an access-log line, then sleeps until SIGTERM.
    #[tokio::test]
    async fn unready_process_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-gateway");
        std::fs::write(
            &script,
            "#!/bin/sh\necho '{\"path\":\"/x\"}'\necho oops >&2\ntrap 'exit 7' TERM\nwhile :; do sleep 0.05; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let gw = GatewayProcess::builder().binary(&script).ports(&[80, 8081]).start_unready().await.unwrap();
        assert_ne!(gw.addr(80), gw.addr(8081));
        assert!(gw.command_line().contains("--port-map"));
        let line = gw.wait_for_log(|l| l.contains("/x"), Duration::from_secs(5)).await;
        assert_eq!(line.as_deref(), Some(r#"{"path":"/x"}"#));
        assert_eq!(gw.access_log_json().len(), 1);
        assert_eq!(gw.ready_status().await, None);
        gw.sigterm().unwrap();
        let status = gw.wait_exit(Duration::from_secs(5)).await.expect("exited");
        assert_eq!(status.code(), Some(7));
        gw.wait_pipes_closed(Duration::from_secs(2)).await;
        assert!(gw.stderr().contains("oops"));
    }

    #[tokio::test]
    async fn readiness_failure_reports_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("dying-gateway");
        std::fs::write(&script, "#!/bin/sh\necho 'bad config: boom' >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let err = GatewayProcess::builder().binary(&script).port(80).start().await.unwrap_err().to_string();
        assert!(err.contains("bad config: boom"), "{err}");
        assert!(err.contains("exited"), "{err}");
    }
}
