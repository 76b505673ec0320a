//! Running the folders of `examples/` as shipped: their pods as echo upstreams at the pods'
//! addresses, the gateway on the folders.

use meshgate_e2e::manifest::{load_objects, upstream_specs};
use meshgate_e2e::prelude::*;
use std::path::{Path, PathBuf};

/// `examples/NAME` of this workspace.
pub fn example(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).join(name)
}

/// `gateway analyze` accepts the files (exit 0: no errors).
pub fn assert_analyze_clean(paths: &[&Path]) {
    let (code, stdout, stderr) = run_analyze(paths);
    assert_eq!(code, 0, "gateway analyze {paths:?} failed:\n{stdout}{stderr}");
}

/// `gateway analyze` finds nothing at all in the files (no error, no warning), as the READMEs
/// show.
pub fn assert_analyze_silent(paths: &[&Path]) {
    let (code, stdout, stderr) = run_analyze(paths);
    assert_eq!(code, 0, "gateway analyze {paths:?} failed:\n{stdout}{stderr}");
    assert!(stdout.contains("No validation issues found"), "gateway analyze {paths:?}:\n{stdout}{stderr}");
}

/// One echo upstream per Pod container port in `dir`, bound where the Pod says it runs.
pub async fn start_upstreams(dir: &Path) -> Vec<Upstream> {
    let objects = load_objects(&[dir.to_path_buf()]).expect("example manifests load");
    let specs = upstream_specs(&objects);
    assert!(!specs.is_empty(), "{} declares no pods", dir.display());
    let mut running = Vec::with_capacity(specs.len());
    for spec in specs {
        // The upstreams of a test that just ended may still hold the address for a moment:
        // their accept tasks are aborted, not yet dropped.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let up = loop {
            let mut b = Upstream::new(spec.service.clone()).version(spec.version.clone()).bind(spec.addr);
            if let Some(pod) = &spec.pod {
                b = b.pod(pod.clone());
            }
            match b.try_start().await {
                Ok(up) => break up,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!(
                    "cannot bind {} for pod {:?} of {}: {e} (is `examples/run.sh` or `upstreams` running this example?)",
                    spec.addr,
                    spec.pod,
                    dir.display()
                ),
            }
        };
        running.push(up);
    }
    running
}

/// The gateway serving `configs`, Gateway port 80 on a free loopback port.
pub async fn start_gateway(configs: &[&Path]) -> GatewayProcess {
    let mut b = GatewayProcess::builder().port(80);
    for c in configs {
        b = b.config(c);
    }
    b.start().await.expect("gateway starts and becomes ready")
}
