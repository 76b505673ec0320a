//! Giving freed memory back to the system after a config change.
//!
//! A reload of a large config frees a whole store, snapshot and runtime at once, and parsing
//! and compiling leave as much garbage. mimalloc keeps pages freed for reuse by the thread
//! that owns them (and pages freed by other threads until their owner looks at them), so
//! without a collection the gateway's RSS grew with each of the first edits
//! (docs/benchmarks.md, "Third round"). The binary that picks the allocator registers how to
//! collect (src/main.rs: `mi_collect`); this library stays free of `unsafe`. Requests never
//! call this: a collection walks the thread's pages, milliseconds at 10k services.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Registers the allocator's "return free memory" call. The first registration wins.
pub fn set_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Called by the threads that load, translate and compile configs after each change.
/// Does nothing unless the binary registered a release function.
pub fn release_freed() {
    if let Some(release) = RELEASE.get() {
        release();
    }
}
