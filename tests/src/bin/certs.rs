//! `certs --out DIR --host NAME...`: throw-away certificates for the examples.
//!
//! Writes a fresh CA (`ca.crt`), a server certificate for the given hosts
//! (`tls.crt`, `tls.key`), optionally a client certificate (`client.crt`,
//! `client.key`) and optionally a `kubernetes.io/tls` Secret (`secret.yaml`)
//! to drop into a config folder next to a Gateway whose `credentialName`
//! names it. With `--client` the Secret also carries `ca.crt`, which is how a
//! MUTUAL Gateway server learns which clients to trust. The CA key is not
//! kept: re-run the command to get a new set rather than extending an old one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use meshgate_e2e::certs::{tls_secret_yaml, TestCa};

#[derive(Debug, Parser)]
#[command(about = "Generate a test CA, server (and client) certificates and a Kubernetes TLS Secret")]
struct Args {
    /// Folder to write into (created if missing; existing files are replaced).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// DNS names (wildcards allowed) or IPs for the server certificate; repeatable.
    #[arg(long = "host", value_name = "NAME", required = true, num_args = 1..)]
    hosts: Vec<String>,
    /// Also issue a client certificate with this common name (for MUTUAL).
    #[arg(long, value_name = "NAME")]
    client: Option<String>,
    /// SANs of the client certificate (default: the --client name); URIs such
    /// as spiffe://cluster.local/ns/default/sa/sleep are allowed.
    #[arg(long = "client-san", value_name = "SAN", requires = "client")]
    client_sans: Vec<String>,
    /// Also write secret.yaml, a kubernetes.io/tls Secret with this name.
    #[arg(long, value_name = "NAME")]
    secret: Option<String>,
    /// Namespace of the Secret (the gateway's own namespace by default).
    #[arg(long, value_name = "NS", default_value = "istio-system", requires = "secret")]
    namespace: String,
    /// Common name of the generated CA.
    #[arg(long, value_name = "CN", default_value = "meshgate example CA")]
    ca_name: String,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write(path: &Path, contents: &str, what: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} ({what})", path.display());
    Ok(())
}

fn run(args: &Args) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let ca = TestCa::new(&args.ca_name);
    let ca_pem = ca.cert_pem();
    write(&args.out.join("ca.crt"), &ca_pem, &format!("CA {:?}", args.ca_name))?;

    let hosts: Vec<&str> = args.hosts.iter().map(String::as_str).collect();
    let server = ca.issue_server(&hosts);
    let (cert, key) = server.write_files(&args.out).context("writing server certificate")?;
    println!("wrote {} (server certificate for {})", cert.display(), hosts.join(", "));
    println!("wrote {} (server key)", key.display());

    if let Some(name) = &args.client {
        let sans: Vec<&str> = if args.client_sans.is_empty() {
            vec![name.as_str()]
        } else {
            args.client_sans.iter().map(String::as_str).collect()
        };
        let client = ca.issue_client(name, &sans);
        let (cert, key) =
            client.write_files_named(&args.out, "client.crt", "client.key").context("writing client certificate")?;
        println!("wrote {} (client certificate {name:?}, SANs {})", cert.display(), sans.join(", "));
        println!("wrote {} (client key)", key.display());
    }

    if let Some(secret) = &args.secret {
        // ca.crt in the Secret turns on client verification for MUTUAL
        // servers; without a client certificate there is nothing to verify.
        let ca = args.client.as_ref().map(|_| ca_pem.as_str());
        let yaml = tls_secret_yaml(secret, &args.namespace, &server, ca);
        let with_ca = if ca.is_some() { ", with ca.crt" } else { "" };
        write(&args.out.join("secret.yaml"), &yaml, &format!("Secret {}/{secret}{with_ca}", args.namespace))?;
    }
    Ok(())
}
