//! One JSON line per request, written by a dedicated thread so the request path never blocks
//! on stdout or disk. When the writer falls behind, lines are dropped and counted.

use serde::Serialize;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Off,
    Stdout,
    File(std::path::PathBuf),
}

impl std::str::FromStr for Target {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "off" | "" => Target::Off,
            "stdout" | "-" => Target::Stdout,
            path => Target::File(path.into()),
        })
    }
}

/// Field names follow Envoy's default access log vocabulary as Istio prints it. Borrowed so
/// a request serialises its line straight from its own state: one buffer, no field copies.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub start_time: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub protocol: &'static str,
    pub response_code: u16,
    pub response_flags: &'static str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: u64,
    pub upstream_service_time: Option<u64>,
    pub upstream_host: Option<std::net::SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub route_name: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub x_forwarded_for: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub downstream_remote_address: Option<String>,
}

#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Vec<u8>>>,
    dropped: prometheus::IntCounter,
}

impl AccessLog {
    pub fn start(target: &Target, dropped: prometheus::IntCounter) -> std::io::Result<AccessLog> {
        let writer: Box<dyn Write + Send> = match target {
            Target::Off => return Ok(AccessLog { tx: None, dropped }),
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (tx, rx) = sync_channel(16 * 1024);
        std::thread::Builder::new().name("access-log".into()).spawn(move || write_loop(rx, writer))?;
        Ok(AccessLog { tx: Some(tx), dropped })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn log(&self, entry: &Entry) {
        if let Some(tx) = &self.tx {
            let mut line = Vec::with_capacity(512);
            if serde_json::to_writer(&mut line, entry).is_err() {
                return;
            }
            line.push(b'\n');
            if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                self.dropped.inc();
            }
        }
    }
}

fn write_loop(rx: Receiver<Vec<u8>>, writer: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(writer);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Write everything queued, then flush once: one syscall per burst, not per line.
        while let Some(line) = next {
            let _ = out.write_all(&line);
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}
