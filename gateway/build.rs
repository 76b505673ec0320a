//! Link-time layout of the release gateway binary.
//!
//! A process's resident text is every page it has executed plus the kernel's fault-around
//! neighbours (64 KiB around each faulted page). Left to the linker's input order, the ~2.5 MiB
//! of functions a serving gateway runs are spread across ~6 MiB of pages and pull ~10.6 MiB of
//! text into its RSS. `link/order.txt` lists those functions (made by
//! `tests/load/orderfile.py`); lld places them first and together, so they fill few pages and
//! their neighbours are each other. A listed symbol the build does not have (new code, a
//! dependency change, ThinLTO's renamed locals) only leaves its function in its default place:
//! the list never changes behaviour, only the layout.
//!
//! Only lld reads `--symbol-ordering-file`, and rustc links with lld on x86_64 Linux (its
//! default since 1.90); elsewhere, or with `MESHGATE_NO_ORDER_FILE` set, nothing is passed.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=link/order.txt");
    println!("cargo:rerun-if-env-changed=MESHGATE_NO_ORDER_FILE");
    let release = env::var("PROFILE").as_deref() == Ok("release");
    let lld_default = env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu");
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("link/order.txt");
    if !release || !lld_default || env::var_os("MESHGATE_NO_ORDER_FILE").is_some() || !order.exists() {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", order.display());
    // Symbols of code that changed since the list was made are expected, not worth a warning.
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}
