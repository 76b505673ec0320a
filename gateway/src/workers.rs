//! Thread-per-core data plane: N worker threads, each a single-threaded Tokio runtime.
//!
//! ```text
//!  main thread (control runtime): config source, snapshot swaps, admin/status/metrics ports,
//!      │                           binds every data port N times (SO_REUSEPORT)
//!      ├─ worker 0 runtime: its own listening socket per port, accept loop, connections,
//!      ├─ worker 1 runtime:   Pingora proxies (so its own upstream connection pools),
//!      └─ …                   timers; a request never leaves the worker that accepted it
//! ```
//!
//! This is how nginx's workers and Envoy's worker threads run. A multi-thread (work-stealing)
//! runtime moves tasks between threads and wakes idle workers through shared queues; on a
//! 2-core machine that cost ~45 % more CPU per request than one thread doing the same work
//! (docs/benchmarks.md, "Thread-per-core"). Here the kernel spreads new connections over the
//! workers' sockets, and everything a connection does afterwards stays on its worker.

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The workers a process runs by default: one per CPU it may use. Rust's
/// `available_parallelism` counts the CPUs of the process's affinity mask and honours cgroup
/// CPU quotas (v1 and v2), so a pod with `limits.cpu: 2` gets 2 workers on a 64-core node
/// (a fractional quota rounds down, with at least one).
pub(crate) fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Running worker threads; [`Workers::stop`] ends them.
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    /// Connections this worker accepted on data ports (`meshgate_worker_connections_total`).
    accepted: prometheus::IntCounter,
}

/// What a listener needs to hand connections to one worker.
#[derive(Clone)]
pub(crate) struct WorkerRef {
    pub(crate) handle: Handle,
    pub(crate) accepted: prometheus::IntCounter,
}

impl Workers {
    /// Starts `count` workers (at least one). `accepted` is the per-worker connection counter
    /// family, labelled by worker index.
    pub(crate) fn start(count: usize, accepted: &prometheus::IntCounterVec) -> std::io::Result<Workers> {
        let mut workers = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new().name(format!("meshgate-w{index}")).spawn(move || {
                // Tasks of a current-thread runtime run only while its thread is inside
                // `block_on`: the worker sits there until told to stop.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Connections still open past the drain deadline are not waited for.
                runtime.shutdown_timeout(std::time::Duration::from_millis(100));
            })?;
            let accepted = accepted.with_label_values(&[&index.to_string()]);
            workers.push(Worker { handle, stop, thread, accepted });
        }
        Ok(Workers { workers })
    }

    pub(crate) fn len(&self) -> usize {
        self.workers.len()
    }

    pub(crate) fn refs(&self) -> Vec<WorkerRef> {
        self.workers.iter().map(|w| WorkerRef { handle: w.handle.clone(), accepted: w.accepted.clone() }).collect()
    }

    /// Ends every worker's runtime (dropping whatever it still runs) and joins the threads.
    pub(crate) fn stop(self) {
        let threads: Vec<_> = self
            .workers
            .into_iter()
            .map(|w| {
                let _ = w.stop.send(());
                w.thread
            })
            .collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_run_tasks_on_their_own_threads_and_stop() {
        let family = prometheus::IntCounterVec::new(prometheus::Opts::new("w", "-"), &["worker"]).unwrap();
        let workers = Workers::start(2, &family).unwrap();
        assert_eq!(workers.len(), 2);
        let names: Vec<String> = workers
            .refs()
            .iter()
            .map(|w| {
                let (tx, rx) = std::sync::mpsc::channel();
                w.handle.spawn(async move {
                    let _ = tx.send(std::thread::current().name().unwrap_or_default().to_string());
                });
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(names, ["meshgate-w0", "meshgate-w1"]);
        workers.stop();
    }

    #[test]
    fn at_least_one_worker() {
        let family = prometheus::IntCounterVec::new(prometheus::Opts::new("w", "-"), &["worker"]).unwrap();
        let workers = Workers::start(0, &family).unwrap();
        assert_eq!(workers.len(), 1);
        workers.stop();
        assert!(default_count() >= 1);
    }
}
