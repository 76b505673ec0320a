//! One JSON line per request, written by a dedicated thread so the request path never blocks
//! on stdout or disk. Lines are batched per worker thread (see [`Queue`]); when the writer
//! falls behind, lines are dropped and counted.

use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
    /// RFC 3339 text; written without escaping, like `protocol` and `response_flags` (the
    /// gateway's own vocabulary).
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
    pub downstream_remote_address: Option<std::net::SocketAddr>,
}

impl Entry<'_> {
    /// The JSON line (with its newline), written field by field. serde_json's derive produced
    /// the same bytes at about twice the instructions: it escapes strings byte by byte and
    /// formats numbers and addresses through `core::fmt`. Each key goes out with the
    /// punctuation around it in one copy. The unit tests hold the output equal to serde_json's.
    pub fn encode(&self, out: &mut Vec<u8>) {
        // One reservation for the whole line, so the copies below do not each check for room
        // to grow (they still check, but never take the slow path).
        out.reserve(LINE_OVERHEAD + self.variable_len());
        out.extend_from_slice(b"{\"start_time\":");
        plain(out, self.start_time);
        out.extend_from_slice(b",\"method\":");
        string(out, self.method);
        out.extend_from_slice(b",\"authority\":");
        string(out, self.authority);
        out.extend_from_slice(b",\"path\":");
        string(out, self.path);
        out.extend_from_slice(b",\"protocol\":");
        plain(out, self.protocol);
        out.extend_from_slice(b",\"response_code\":");
        number(out, u64::from(self.response_code));
        out.extend_from_slice(b",\"response_flags\":");
        plain(out, self.response_flags);
        out.extend_from_slice(b",\"bytes_received\":");
        number(out, self.bytes_received);
        out.extend_from_slice(b",\"bytes_sent\":");
        number(out, self.bytes_sent);
        out.extend_from_slice(b",\"duration\":");
        number(out, self.duration);
        out.extend_from_slice(b",\"upstream_service_time\":");
        optional(out, self.upstream_service_time, number);
        out.extend_from_slice(b",\"upstream_host\":");
        optional(out, self.upstream_host, address);
        out.extend_from_slice(b",\"upstream_cluster\":");
        optional(out, self.upstream_cluster, string);
        out.extend_from_slice(b",\"route_name\":");
        optional(out, self.route_name, string);
        out.extend_from_slice(b",\"request_id\":");
        optional(out, self.request_id, string);
        out.extend_from_slice(b",\"x_forwarded_for\":");
        optional(out, self.x_forwarded_for, string);
        out.extend_from_slice(b",\"user_agent\":");
        optional(out, self.user_agent, string);
        out.extend_from_slice(b",\"downstream_remote_address\":");
        optional(out, self.downstream_remote_address, address);
        out.extend_from_slice(b"}\n");
    }

    /// Bytes of the string fields before escaping.
    fn variable_len(&self) -> usize {
        let optional = |s: Option<&str>| s.map_or(0, str::len);
        self.start_time.len()
            + self.method.len()
            + self.authority.len()
            + self.path.len()
            + self.protocol.len()
            + self.response_flags.len()
            + optional(self.upstream_cluster)
            + optional(self.route_name)
            + optional(self.request_id)
            + optional(self.x_forwarded_for)
            + optional(self.user_agent)
    }
}

/// Keys, quotes, numbers and addresses of a line: with [`Entry::variable_len`], room for any
/// line without escapes.
const LINE_OVERHEAD: usize = 512;

fn optional<T>(out: &mut Vec<u8>, value: Option<T>, write: fn(&mut Vec<u8>, T)) {
    match value {
        Some(v) => write(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A JSON string. Header values and paths almost never need escaping, so they are checked
/// first and copied whole; the rare one with quotes, backslashes or control bytes goes
/// through serde_json's escaper.
fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        let _ = serde_json::to_writer(&mut *out, s);
        return;
    }
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Whether JSON needs any byte of `s` escaped: control bytes, `"` and `\` (serde_json escapes
/// nothing else). Eight bytes per step: scanning the path, the cluster name and the header
/// values a byte at a time was a quarter of the encoder's instructions.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // High bit set in bytes of `x` below `n` (n <= 0x80). A borrow can also mark a byte after
    // a real hit, never when there is none, so "any byte below" is exact.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let special = |word: [u8; 8]| {
        let x = u64::from_ne_bytes(word);
        below(x, 0x20) | below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1) != 0
    };
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        w
    };
    if s.len() < 8 {
        // Padded with spaces, which need no escaping.
        let mut w = [b' '; 8];
        w[..s.len()].copy_from_slice(s);
        return special(w);
    }
    // Whole words, then the last eight bytes (overlapping the last word): no byte loop.
    (0..s.len() / 8).any(|i| special(word(i * 8))) || special(word(s.len() - 8))
}

/// A string the gateway itself produced from a fixed alphabet (timestamps, protocol names,
/// response flags): nothing to escape, so nothing to scan.
fn plain(out: &mut Vec<u8>, s: &str) {
    debug_assert!(!needs_escape(s.as_bytes()), "{s:?}");
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn address(out: &mut Vec<u8>, addr: std::net::SocketAddr) {
    out.push(b'"');
    match addr {
        std::net::SocketAddr::V4(v4) => {
            // Built on the stack and appended once: each push onto the line re-reads and
            // re-stores its length and checks its capacity.
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                let digits = [b'0' + octet / 100, b'0' + octet / 10 % 10, b'0' + octet % 10];
                let skip = usize::from(octet < 100) + usize::from(octet < 10);
                text[len..len + 3 - skip].copy_from_slice(&digits[skip..]);
                len += 3 - skip;
            }
            out.extend_from_slice(&text[..len]);
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(v4.port()).as_bytes());
        }
        // IPv6 text has compression rules; the standard formatter knows them.
        v6 => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
    out.push(b'"');
}

/// Bytes a worker thread buffers before it wakes the writer early. Below it, the writer picks
/// the lines up on its next tick.
const WAKE_AT: usize = 64 * 1024;
/// Bytes a worker thread may hold unwritten; past it, lines are dropped and counted (the
/// writer fell behind, or the disk is stuck).
const MAX_BUFFERED: usize = 8 * 1024 * 1024;
/// How often the writer collects lines when no buffer filled up. Envoy flushes its access
/// log buffers every second; a tenth of that keeps `tail -f` lively.
const TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Ids of [`Queue`]s, so a thread's buffer of one log is never mistaken for another's (tests
/// and embedders may start several logs in one process).
static NEXT_QUEUE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One worker thread's unwritten lines.
type Buffer = Arc<Mutex<Vec<u8>>>;

thread_local! {
    /// This thread's buffer per log it has written to (by [`Queue`] id); usually exactly one.
    static LOCAL: std::cell::RefCell<Vec<(u64, Buffer)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Lines are encoded straight into a buffer owned by the worker thread and collected by the
/// writer thread on a timer or when a buffer fills. A request therefore takes one uncontended
/// lock of its own thread's buffer: no allocation, no channel, and no wake-up (a futex call
/// on both sides) per line. Lines of one thread stay in order; lines of different worker
/// threads written within one tick may interleave out of order.
struct Queue {
    id: u64,
    /// Every worker thread's buffer; locked when a thread writes its first line and by the
    /// writer, never on the request path.
    buffers: Mutex<Vec<Buffer>>,
    out: Mutex<Box<dyn Write + Send>>,
    stop: AtomicBool,
    dropped: prometheus::IntCounter,
}

impl Queue {
    fn buffer(&self) -> Buffer {
        let buffer = Arc::new(Mutex::new(Vec::with_capacity(WAKE_AT + 4096)));
        lock(&self.buffers).push(buffer.clone());
        buffer
    }

    /// Writes out everything buffered so far. `spare` is swapped in for each full buffer, so
    /// buffers keep their capacity and nothing allocates in steady state.
    fn drain(&self, spare: &mut Vec<u8>) {
        let buffers = lock(&self.buffers).clone();
        let mut out = lock(&self.out);
        for buffer in buffers {
            std::mem::swap(&mut *lock(&buffer), spare);
            if !spare.is_empty() {
                let _ = out.write_all(spare);
                spare.clear();
            }
        }
        let _ = out.flush();
    }
}

/// A poisoned lock only means a thread panicked while holding it; the bytes are still usable.
fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
pub struct AccessLog {
    writer: Option<Arc<Writer>>,
}

impl AccessLog {
    pub fn start(target: &Target, dropped: prometheus::IntCounter) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            Target::Off => return Ok(AccessLog { writer: None }),
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let queue = Arc::new(Queue {
            id: NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed),
            buffers: Mutex::new(Vec::new()),
            out: Mutex::new(out),
            stop: AtomicBool::new(false),
            dropped,
        });
        let q = queue.clone();
        let thread = std::thread::Builder::new().name("access-log".into()).spawn(move || write_loop(&q))?;
        Ok(AccessLog { writer: Some(Arc::new(Writer { queue, thread: Mutex::new(Some(thread)) })) })
    }

    pub fn enabled(&self) -> bool {
        self.writer.is_some()
    }

    pub fn log(&self, entry: &Entry) {
        let Some(writer) = &self.writer else { return };
        let queue = &writer.queue;
        let wake = LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let buffer = match local.iter().find(|(id, _)| *id == queue.id) {
                Some((_, buffer)) => buffer,
                None => {
                    local.push((queue.id, queue.buffer()));
                    &local[local.len() - 1].1
                }
            };
            let mut buffer = lock(buffer);
            if buffer.len() >= MAX_BUFFERED {
                queue.dropped.inc();
                return false;
            }
            let before = buffer.len();
            entry.encode(&mut buffer);
            before < WAKE_AT && buffer.len() >= WAKE_AT
        });
        if wake {
            if let Some(thread) = lock(&writer.thread).as_ref() {
                thread.thread().unpark();
            }
        }
    }

    /// Writes every line logged so far before returning (used at shutdown).
    pub fn flush(&self) {
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
    use super::*;

    fn entry<'a>(path: &'a str, agent: Option<&'a str>, peer: &str) -> Entry<'a> {
        Entry {
            start_time: "2026-11-23T06:41:33.123Z",
            method: "GET",
            authority: "bookinfo.example.com",
            path,
            protocol: "HTTP/1.1",
            response_code: 503,
            response_flags: "UF",
            bytes_received: 0,
            bytes_sent: 18_446_744_073_709_551_615,
            duration: 12,
            upstream_service_time: None,
            upstream_host: Some("10.0.0.7:9080".parse().unwrap()),
            upstream_cluster: Some("outbound|9080|v1|reviews.default.svc.cluster.local"),
            route_name: None,
            request_id: Some("5f0e6c6e-8a51-4b4e-9d6f-0c1a2b3c4d5e"),
            x_forwarded_for: Some("203.0.113.9, 10.0.0.1"),
            user_agent: agent,
            downstream_remote_address: Some(peer.parse().unwrap()),
        }
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
                        let p = format!("/t{t}/{i}");
                        log.log(&entry(&p, None, "127.0.0.1:1"));
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
        log.log(&entry("/last", None, "127.0.0.1:1"));
        drop(log);
        assert!(lines(&path).last().unwrap().contains("\"/last\""));
    }

    #[test]
    fn the_writer_collects_lines_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(&Target::File(path.clone()), counter()).unwrap();
        log.log(&entry("/tick", None, "127.0.0.1:1"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while lines(&path).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(lines(&path).len(), 1);
    }

    #[test]
    fn escapes_are_found_at_every_position() {
        for len in 0..40 {
            let plain: String = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRST".chars().take(len).collect();
            assert!(!needs_escape(plain.as_bytes()), "{plain:?}");
            for at in 0..len {
                for special in [b'"', b'\\', b'\n', 0, 0x1f] {
                    let mut s = plain.clone().into_bytes();
                    s[at] = special;
                    assert!(needs_escape(&s), "{len} {at} {special:?}");
                }
                for fine in ['\u{7f}', ' ', '!', '#', '[', ']', 'é', '✓'] {
                    let mut s = plain.clone();
                    s.replace_range(at..at + 1, fine.encode_utf8(&mut [0; 4]));
                    assert!(!needs_escape(s.as_bytes()), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn encoding_matches_serde_json_byte_for_byte() {
        for e in [
            entry("/productpage?x=1", Some("curl/8.5.0"), "127.0.0.1:50123"),
            entry("/quote\"back\\slash\ttab\u{1}", Some("ünïcode ✓"), "[2001:db8::1]:443"),
            entry("/", None, "255.255.255.255:0"),
            entry("/a/long/path/without/escapes/in/it?and=a&query=string", Some("x\"y"), "10.1.2.3:8080"),
        ] {
            let mut ours = Vec::new();
            e.encode(&mut ours);
            let mut reference = serde_json::to_vec(&e).unwrap();
            reference.push(b'\n');
            assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(reference).unwrap());
        }
    }
}
