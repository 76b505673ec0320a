use anyhow::Result;
use clap::Parser;
use gateway::cli::{Cli, Command};

/// mimalloc: glibc's malloc/free were a fifth of the proxy's CPU per request in profiles
/// (many small short-lived header and buffer allocations); mimalloc's thread-local free lists
/// serve that pattern much better.
#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

/// mimalloc as the `mimalloc` crate's `MiMalloc` uses it, except that requests needing no more
/// than word alignment (nearly all of them) go to `mi_malloc`/`mi_realloc`/`mi_zalloc`.
/// `MiMalloc` sends every request through the `_aligned` variants, whose checks and generic
/// path (taken ~15 times per proxied request) cost ~3,900 instructions per request more
/// (docs/benchmarks.md, "Instructions per request").
struct Mimalloc;

/// Every mimalloc block is at least word aligned: its size classes are whole words.
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: each method forwards to the mimalloc function of the same contract; the plain
// variants are used only for alignments every mimalloc block already has, and any block from
// any variant may be freed with `mi_free` and resized with either realloc.
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= WORD {
            libmimalloc_sys::mi_malloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= WORD {
            libmimalloc_sys::mi_zalloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

// Transparent huge pages off before std's first allocation (see the function).
meshgate_model::run_before_main!(meshgate_model::memory::disable_transparent_huge_pages);

fn main() -> Result<()> {
    // SAFETY: `mi_collect` has no preconditions; it touches only mimalloc's own state.
    meshgate_model::memory::set_release(|| unsafe { libmimalloc_sys::mi_collect(true) });
    let cli = Cli::parse();
    // Logs go to stderr: stdout carries the access log.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match cli.command {
        #[cfg(feature = "embedded")]
        Some(Command::Analyze { paths, identity }) => {
            use controller::analyze;
            let options = controller::Options { labels: identity.labels, namespace: identity.namespace };
            let (text, code) = analyze::report(&analyze::analyze(&paths, &options));
            print!("{text}");
            std::process::exit(code);
        }
        #[cfg(not(feature = "embedded"))]
        Some(Command::Analyze { .. }) => {
            eprintln!(
                "this gateway was built without the embedded controller (feature `embedded`); run `meshctl analyze`"
            );
            std::process::exit(2);
        }
        None => {
            // The control runtime: config source, snapshot swaps and the admin ports. The data
            // plane runs on worker threads of its own (`workers.rs`), so one thread is enough
            // here and keeps config work off the workers.
            let config = cli.run.config();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            // Pingora times upstream reads (a route `timeout`) with its own timer wheel: one
            // global B-tree of 10 ms slots under a lock, a clock thread, and two clock reads
            // per armed read. Timeouts of a second or more go to tokio's timer instead, which
            // each worker arms and disarms on its own (docs/benchmarks.md, "Features are free?").
            pingora_timeout::fast_timeout::set_fast_timeout_to_tokio_threshold(Some(std::time::Duration::ZERO));
            rt.block_on(gateway::server::run(config))?;
            // Do not wait for lingering connections past the drain deadline.
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            Ok(())
        }
    }
}
