//! `upstreams PATH...`: serve fake pods where the manifests say they are.
//!
//! Reads every YAML file under the given files/folders, starts one echo
//! [`Upstream`] (HTTP/1.1, h2c and gRPC) per Pod container port (at `status.podIP`) and per STATIC
//! ServiceEntry endpoint port, prints one line per listener, and runs until
//! Ctrl-C or SIGTERM. Together with loopback pod IPs (`127.0.0.11`, ...) this
//! lets the gateway be run by hand against an examples folder.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use meshgate_e2e::manifest::{load_objects, upstream_specs};
use meshgate_e2e::Upstream;

#[derive(Debug, Parser)]
#[command(about = "Start echo upstreams for the Pods and STATIC ServiceEntries in YAML manifests")]
struct Args {
    /// YAML files or folders (searched recursively for *.yaml / *.yml).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let objects = match load_objects(&args.paths) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("upstreams: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let specs = upstream_specs(&objects);
    if specs.is_empty() {
        eprintln!("upstreams: no Pods with status.podIP or STATIC ServiceEntries found");
        return ExitCode::FAILURE;
    }
    let mut running = Vec::with_capacity(specs.len());
    for spec in specs {
        // `.grpc()` also accepts h2c and answers gRPC content types, so
        // HTTP/2 and gRPC examples work; plain HTTP/1.1 echo is unchanged.
        let mut b = Upstream::new(spec.service.clone()).version(spec.version.clone()).bind(spec.addr).grpc();
        if let Some(pod) = &spec.pod {
            b = b.pod(pod.clone());
        }
        match b.try_start().await {
            Ok(up) => {
                println!(
                    "{} {} {} listening on {}",
                    spec.service,
                    spec.version,
                    spec.pod.as_deref().unwrap_or("-"),
                    up.addr()
                );
                running.push(up);
            }
            Err(e) => {
                eprintln!("upstreams: cannot bind {} ({}): {e}", spec.addr, spec.service);
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{} upstreams running; Ctrl-C to stop", running.len());

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("upstreams: cannot install SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(running);
    ExitCode::SUCCESS
}
