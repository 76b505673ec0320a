//! Launching the real `controller` binary (snapshot server, on a config folder or a Kubernetes
//! API) and running the `meshctl` CLI.

use crate::gateway::free_addr;
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A binary of the workspace next to the test executable's parent (`target/debug/<name>`),
/// or the path in `env_var`.
pub fn workspace_bin(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut candidates = Vec::new();
    if let Some(parent) = dir.parent() {
        candidates.push(parent.join(name));
    }
    candidates.push(dir.join(name));
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| candidates[0].clone())
}

pub fn controller_bin() -> PathBuf {
    workspace_bin("controller", "MESHGATE_CONTROLLER_BIN")
}

pub fn meshctl_bin() -> PathBuf {
    workspace_bin("meshctl", "MESHGATE_MESHCTL_BIN")
}

/// The token the test controllers and gateways share.
pub const TEST_TOKEN: &str = "e2e-token-0123456789abcdef";

/// A running `controller` serving a config folder or a Kubernetes API. Killed on drop.
pub struct ControllerProcess {
    child: Mutex<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    stderr: Arc<Mutex<String>>,
}

impl ControllerProcess {
    /// Starts `controller --config <config> --listen <addr>` with [`TEST_TOKEN`] in a token
    /// file, and waits until it has translated the config (`/healthz/ready`).
    pub async fn start(config: &Path, addr: Option<SocketAddr>) -> Result<ControllerProcess> {
        let args = vec![OsString::from("--config"), config.as_os_str().to_os_string()];
        Self::spawn(args, Vec::new(), addr).await
    }

    /// Starts `controller --kube --namespace istio-system` on the cluster in `kubeconfig` (env
    /// `KUBECONFIG`; see [`crate::apiserver::FakeApiServer::kubeconfig`]) with `extra_args`
    /// after the generated ones, and waits until the first Store from the cluster is
    /// translated (`/healthz/ready`).
    pub async fn start_kube(kubeconfig: &Path, extra_args: &[&str]) -> Result<ControllerProcess> {
        Self::start_kube_at(kubeconfig, extra_args, None).await
    }

    /// [`start_kube`](Self::start_kube) on a given listen address.
    pub async fn start_kube_at(
        kubeconfig: &Path,
        extra_args: &[&str],
        addr: Option<SocketAddr>,
    ) -> Result<ControllerProcess> {
        let mut args: Vec<OsString> = ["--kube", "--namespace", "istio-system"].iter().map(OsString::from).collect();
        args.extend(extra_args.iter().map(OsString::from));
        let envs = vec![(OsString::from("KUBECONFIG"), kubeconfig.as_os_str().to_os_string())];
        Self::spawn(args, envs, addr).await
    }

    async fn spawn(
        source_args: Vec<OsString>,
        envs: Vec<(OsString, OsString)>,
        addr: Option<SocketAddr>,
    ) -> Result<ControllerProcess> {
        let dir = tempfile::Builder::new().prefix("meshgate-controller-").tempdir()?;
        std::fs::write(dir.path().join("token"), format!("{TEST_TOKEN}\n"))?;
        let addr = addr.unwrap_or_else(free_addr);
        let mut child = Command::new(controller_bin())
            .args(&source_args)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--token-file")
            .arg(dir.path().join("token"))
            .arg("--debounce-ms")
            .arg("30")
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {} (cargo build -p controller)", controller_bin().display()))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                if std::env::var_os("MESHGATE_E2E_VERBOSE").is_some() {
                    eprint!("[controller] {text}");
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&text);
            }
        });
        let controller = ControllerProcess { child: Mutex::new(child), addr, dir, stderr };
        controller.wait_ready(Duration::from_secs(20)).await?;
        Ok(controller)
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait() {
                bail!("controller exited ({status}) before becoming ready\n{}", self.stderr());
            }
            if let Ok(r) = crate::client::get(self.addr, "/healthz/ready").timeout(Duration::from_secs(1)).send().await
            {
                if r.status.as_u16() == 200 {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("controller not ready within {timeout:?}\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A file holding [`TEST_TOKEN`], for gateways and meshctl.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// `GET /v1/status` with the token, as JSON.
    pub async fn status(&self) -> Result<serde_json::Value> {
        let r = crate::client::get(self.addr, "/v1/status")
            .header("authorization", format!("Bearer {TEST_TOKEN}"))
            .send()
            .await?;
        anyhow::ensure!(r.status.as_u16() == 200, "status answered {}: {}", r.status, r.text());
        Ok(serde_json::from_str(&r.text())?)
    }

    /// `GET /metrics` (Prometheus text; no token needed).
    pub async fn metrics(&self) -> Result<String> {
        let r = crate::client::get(self.addr, "/metrics").send().await?;
        anyhow::ensure!(r.status.as_u16() == 200, "metrics answered {}: {}", r.status, r.text());
        Ok(r.text())
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGKILL and reap (the controller "dies").
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- controller stderr ---\n{}", self.stderr());
        }
        self.kill();
    }
}

/// Runs `meshctl` with `args` (async, so tokio workers stay free); returns (exit code, stdout, stderr).
pub async fn run_meshctl(args: &[&str]) -> Result<(i32, String, String)> {
    let out = tokio::process::Command::new(meshctl_bin())
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {} (cargo build -p controller)", meshctl_bin().display()))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    ))
}
