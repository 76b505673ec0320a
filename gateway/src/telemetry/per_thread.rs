//! Buffers owned one per worker thread and collected by one background thread: how the access
//! log's lines and the tracer's spans leave the request path.
//!
//! A worker thread appends to its own buffer under that buffer's lock. The only other taker of
//! the lock is the collecting thread, for the moment it takes to swap the buffer with an empty
//! one, so a record costs one uncontended lock: no channel, no allocation once the buffer has
//! grown to its working size (buffers keep their capacity), and no wake-up — a futex call on
//! both sides — per record. The collector runs on a timer and is woken early only by a thread
//! whose buffer filled up (each sink decides when).
//!
//! Records of one thread stay in order; the collector takes the threads' buffers one after
//! the other, so records of different threads written within one tick are not in time order.
//! A thread's buffer stays registered after the thread exits (emptied by the next collection,
//! capacity kept): the gateway's worker threads live as long as the process.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a per-thread buffer holds.
pub(crate) trait Records: Send + 'static {
    /// Empties the buffer, keeping its capacity.
    fn clear(&mut self);
}

impl Records for Vec<u8> {
    fn clear(&mut self) {
        Vec::clear(self)
    }
}

/// Ids of [`PerThread`]s, so that a thread's buffer of one sink is never taken for another's
/// (tests and embedders may start several logs or exporters in one process).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's buffer in each [`PerThread`] it has written to, by id: usually one per
    /// sink. `Any` because the sinks' buffer types differ; the type is checked on lookup.
    static LOCAL: RefCell<Vec<(u64, Arc<dyn Any + Send + Sync>)>> = const { RefCell::new(Vec::new()) };
}

/// One buffer of `T` per thread that writes, and the list of them for the collector.
pub(crate) struct PerThread<T: Records> {
    id: u64,
    /// Makes a thread's buffer on its first record (with the capacity the sink wants).
    new: fn() -> T,
    /// Every thread's buffer; locked when a thread writes its first record and by the
    /// collector, never on the request path otherwise.
    buffers: Mutex<Vec<Arc<Mutex<T>>>>,
}

impl<T: Records> PerThread<T> {
    pub(crate) fn new(new: fn() -> T) -> PerThread<T> {
        PerThread { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), new, buffers: Mutex::new(Vec::new()) }
    }

    /// Runs `append` on the calling thread's buffer, under its lock. `append` must not write
    /// to another `PerThread` (this thread's buffer list is borrowed meanwhile).
    pub(crate) fn with<R>(&self, append: impl FnOnce(&mut T) -> R) -> R {
        LOCAL.with(|local| {
            if let Some((_, buffer)) = local.borrow().iter().find(|(id, _)| *id == self.id) {
                let buffer = buffer.downcast_ref::<Mutex<T>>().expect("one buffer type per PerThread id");
                return append(&mut lock(buffer));
            }
            // The thread's first record: register its buffer with the collector.
            let buffer = Arc::new(Mutex::new((self.new)()));
            lock(&self.buffers).push(buffer.clone());
            local.borrow_mut().push((self.id, buffer.clone()));
            let result = append(&mut lock(&buffer));
            result
        })
    }

    /// Hands every thread's records to `take`, one buffer at a time, and empties them. Each
    /// buffer is swapped with `spare` under its lock, so a writer waits at most for a swap,
    /// never for `take`; `spare` comes back empty, with the capacity of some buffer.
    pub(crate) fn drain(&self, spare: &mut T, mut take: impl FnMut(&T)) {
        let buffers = lock(&self.buffers).clone();
        for buffer in buffers {
            std::mem::swap(&mut *lock(&buffer), spare);
            take(spare);
            spare.clear();
        }
    }
}

/// A poisoned lock only means a thread panicked while holding it; the records are still usable.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(records: &PerThread<Vec<u8>>) -> Vec<u8> {
        let mut all = Vec::new();
        records.drain(&mut Vec::new(), |b| all.extend_from_slice(b));
        all
    }

    #[test]
    fn each_thread_appends_to_its_own_buffer_and_drain_takes_them_all() {
        let records = Arc::new(PerThread::new(Vec::new));
        let other = PerThread::new(Vec::new);
        records.with(|b| b.extend_from_slice(b"a1 "));
        other.with(|b| b.extend_from_slice(b"x "));
        std::thread::scope(|s| {
            s.spawn(|| records.with(|b| b.extend_from_slice(b"b1 ")));
        });
        records.with(|b| b.extend_from_slice(b"a2 "));
        let mut all = collect(&records);
        all.sort_unstable();
        let mut expected = b"a1 a2 b1 ".to_vec();
        expected.sort_unstable();
        assert_eq!(all, expected, "two threads' buffers, nothing of the other PerThread");
        assert!(collect(&records).is_empty(), "drained buffers are empty");
        assert_eq!(collect(&other), b"x ");
        records.with(|b| b.extend_from_slice(b"a3"));
        assert_eq!(collect(&records), b"a3", "a thread keeps its buffer");
    }
}
