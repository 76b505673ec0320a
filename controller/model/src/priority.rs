//! Thread priorities shared by the `gateway` and `controller` binaries.
//!
//! Config work (loading, translating and compiling a snapshot, swapping it in, the admin
//! ports) runs on threads of its own. On a machine whose CPUs the data-plane workers keep busy,
//! the kernel would otherwise share them evenly with that work, and a request waits behind a
//! translation: at a change every 100 ms, the gateway's p99 latency rose by a quarter
//! (docs/benchmarks.md, "Tail latency under config churn"). Those threads run at a lower
//! priority (nice 10), as background work: the workers get the CPU first, and config work gets
//! what they leave, which on an idle machine is all of it.

/// How much nicer than the workers config threads are.
pub const BACKGROUND_NICE: i32 = 10;

static LOWER: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Registers the call that lowers the calling thread's priority (the binaries own the
/// `unsafe` system call, so the libraries stay free of it). The first registration wins.
pub fn set_background(lower: fn()) {
    let _ = LOWER.set(lower);
}

/// Lowers the calling thread's priority to background, if the binary registered how.
pub fn background_thread() {
    if let Some(lower) = LOWER.get() {
        lower();
    }
}
