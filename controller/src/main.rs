//! `controller`: validate a folder of Istio YAML and print the snapshot it translates to.
//! (The Kubernetes source and snapshot server come with the Kubernetes issue.)

use anyhow::Result;
use clap::{Parser, Subcommand};
use controller::{analyze, source::files, translate, Options};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "controller", about = "meshgate control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report problems in Istio YAML like `istioctl analyze`.
    Analyze { paths: Vec<PathBuf> },
    /// Print the routing snapshot the files translate to, as JSON.
    Snapshot { paths: Vec<PathBuf> },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    match Cli::parse().command {
        Command::Analyze { paths } => {
            let (text, code) = analyze::report(&analyze::analyze(&paths, &Options::default()));
            print!("{text}");
            std::process::exit(code);
        }
        Command::Snapshot { paths } => {
            let (snapshot, _) = translate(&files::load(&paths), &Options::default());
            println!("{}", serde_json::to_string_pretty(&snapshot)?);
        }
    }
    Ok(())
}
