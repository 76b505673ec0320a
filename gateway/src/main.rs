use anyhow::Result;
use clap::Parser;
use controller::analyze;
use gateway::cli::{Cli, Command};

/// mimalloc: glibc's malloc/free were a fifth of the proxy's CPU per request in profiles
/// (many small short-lived header and buffer allocations); mimalloc's thread-local free lists
/// serve that pattern much better.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Logs go to stderr: stdout carries the access log.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match cli.command {
        Some(Command::Analyze { paths, identity }) => {
            let options = controller::Options { labels: identity.labels, namespace: identity.namespace };
            let (text, code) = analyze::report(&analyze::analyze(&paths, &options));
            print!("{text}");
            std::process::exit(code);
        }
        None => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = cli.run.threads {
                builder.worker_threads(n.max(1));
            }
            let rt = builder.enable_all().thread_name("meshgate-worker").build()?;
            rt.block_on(gateway::server::run(cli.run))?;
            // Do not wait for lingering connections past the drain deadline.
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            Ok(())
        }
    }
}
