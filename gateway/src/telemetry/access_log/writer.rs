//! The writer thread: lines batched per worker thread, collected on a tick or when a buffer
//! fills, written to stdout or a file; dropped and counted when the writer falls behind.

use super::{Entry, Target};
use crate::telemetry::per_thread::{lock, PerThread};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes a worker thread buffers before it wakes the writer early. Below it, the writer picks
/// the lines up on its next tick.
const WAKE_AT: usize = 64 * 1024;
/// Bytes a worker thread may hold unwritten; past it, lines are dropped and counted (the
/// writer fell behind, or the disk is stuck).
const MAX_BUFFERED: usize = 8 * 1024 * 1024;
/// How often the writer collects lines when no buffer filled up. Envoy flushes its access
/// log buffers every second; a tenth of that keeps `tail -f` lively.
const TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Lines are encoded straight into their worker thread's buffer (`telemetry::per_thread`):
/// one uncontended lock per line, no allocation, no channel, no wake-up.
struct Queue {
    lines: PerThread<Vec<u8>>,
    out: Mutex<Box<dyn Write + Send>>,
    stop: AtomicBool,
    dropped: prometheus::IntCounter,
}

impl Queue {
    /// Writes out everything buffered so far. `spare` is swapped in for each full buffer, so
    /// buffers keep their capacity and nothing allocates in steady state.
    fn drain(&self, spare: &mut Vec<u8>) {
        let mut out = lock(&self.out);
        self.lines.drain(spare, |lines| {
            if !lines.is_empty() {
                let _ = out.write_all(lines);
            }
        });
        let _ = out.flush();
    }
}

/// Stops the writer when the last [`AccessLog`] clone goes: it writes what is left first.
struct Writer {
    queue: Arc<Queue>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.stop.store(true, Ordering::Release);
        if let Some(thread) = lock(&self.thread).take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

#[derive(Clone)]
pub(crate) struct AccessLog {
    writer: Option<Arc<Writer>>,
}

impl AccessLog {
    pub(crate) fn start(target: &Target, dropped: prometheus::IntCounter) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            Target::Off => return Ok(AccessLog { writer: None }),
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let queue = Arc::new(Queue {
            lines: PerThread::new(|| Vec::with_capacity(WAKE_AT + 4096)),
            out: Mutex::new(out),
            stop: AtomicBool::new(false),
            dropped,
        });
        let q = queue.clone();
        let thread = std::thread::Builder::new().name("access-log".into()).spawn(move || write_loop(&q))?;
        Ok(AccessLog { writer: Some(Arc::new(Writer { queue, thread: Mutex::new(Some(thread)) })) })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.writer.is_some()
    }

    /// Queues the exchange's line (nothing when the log is off). Inline, so a request with
    /// the log off pays one test here rather than a call.
    #[inline]
    pub(crate) fn log(&self, exchange: &crate::telemetry::Exchange) {
        if self.writer.is_some() {
            self.log_exchange(exchange);
        }
    }

    fn log_exchange(&self, exchange: &crate::telemetry::Exchange) {
        let start_time = crate::telemetry::timestamp::rfc3339_now_minus(exchange.duration);
        self.log_entry(&Entry::of(exchange, &start_time));
    }

    /// Queues one line.
    fn log_entry(&self, entry: &Entry) {
        let Some(writer) = &self.writer else { return };
        let queue = &writer.queue;
        let wake = queue.lines.with(|buffer| {
            if buffer.len() >= MAX_BUFFERED {
                queue.dropped.inc();
                return false;
            }
            let before = buffer.len();
            entry.encode(buffer);
            before < WAKE_AT && buffer.len() >= WAKE_AT
        });
        if wake {
            if let Some(thread) = lock(&writer.thread).as_ref() {
                thread.thread().unpark();
            }
        }
    }

    /// Writes every line logged so far before returning (used at shutdown).
    pub(crate) fn flush(&self) {
        if let Some(writer) = &self.writer {
            writer.queue.drain(&mut Vec::new());
        }
    }
}

fn write_loop(queue: &Queue) {
    let mut spare = Vec::with_capacity(WAKE_AT + 4096);
    loop {
        // Read before draining, so lines logged before `stop` was set are still written.
        let stop = queue.stop.load(Ordering::Acquire);
        queue.drain(&mut spare);
        if stop {
            return;
        }
        std::thread::park_timeout(TICK);
    }
}

#[cfg(test)]
mod tests {
    use super::super::line::tests::reference;
    use super::*;

    /// Logs the line of `reference(path, ...)`.
    fn log_line(log: &AccessLog, path: &str) {
        let r = reference(path, None, "127.0.0.1:1");
        log.log_entry(&r.entry(&r.fields()));
    }

    fn counter() -> prometheus::IntCounter {
        prometheus::IntCounter::new("dropped", "-").unwrap()
    }

    fn lines(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
    }

    #[test]
    fn lines_of_every_thread_are_written_by_flush_and_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(&Target::File(path.clone()), counter()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        log_line(&log, &format!("/t{t}/{i}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.flush();
        let written = lines(&path);
        assert_eq!(written.len(), 400);
        for t in 0..4 {
            let mine: Vec<_> = written.iter().filter(|l| l.contains(&format!("\"/t{t}/"))).collect();
            let expected: Vec<_> = (0..100).map(|i| format!("\"path\":\"/t{t}/{i}\"")).collect();
            assert!(mine.iter().zip(&expected).all(|(l, e)| l.contains(e.as_str())), "a thread's lines stay in order");
        }
        // Not flushed, not yet collected: the last handle going writes it.
        log_line(&log, "/last");
        drop(log);
        assert!(lines(&path).last().unwrap().contains("\"/last\""));
    }

    #[test]
    fn the_writer_collects_lines_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(&Target::File(path.clone()), counter()).unwrap();
        log_line(&log, "/tick");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while lines(&path).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(lines(&path).len(), 1);
    }
}
