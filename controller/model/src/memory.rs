//! Process memory settings shared by the `controller` and `gateway` binaries.

/// Transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` asks for them.
/// mimalloc advises its arena `MADV_HUGEPAGE`, so on kernels with THP in `madvise` (or
/// `always`) mode a 2 MiB page backs every region that holds even one live block: a 10k-service
/// config cost the gateway 13 MiB more RSS for the same live heap (docs/benchmarks.md, "Fifth
/// round"). The request path's working set is small enough that huge pages buy it nothing
/// measurable.
///
/// Call it before the first allocation, which is before `main`: std allocates while it sets up
/// the main thread, and that alone faulted two huge pages in (4 MiB of an idle gateway's
/// 19.7 MiB). The binaries run it from their `.init_array` ([`run_before_main!`]). It
/// allocates nothing itself: the lookup of an unset variable copies nothing.
pub extern "C" fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none_or(|v| v == "0") {
        // Failure (kernels before 3.15) leaves THP as it was.
        let _ = nix::sys::prctl::set_thp_disable(true);
    }
}

/// Runs `$f` (an `extern "C" fn()`) from the ELF `.init_array`, before std's runtime set-up
/// and so before any allocation. In the binary's own crate: a library's unused object file,
/// constructor and all, may be left out by the linker.
#[macro_export]
macro_rules! run_before_main {
    ($f:path) => {
        #[cfg(target_os = "linux")]
        #[used]
        #[link_section = ".init_array"]
        static RUN_BEFORE_MAIN: extern "C" fn() = $f;
    };
}

/// The allocator's "give freed memory back to the system" call, registered once by the binary
/// that picks the allocator (`mi_collect` in both `main`s), so the libraries stay free of
/// `unsafe`. A reload of a large config frees a whole store, snapshot and runtime at once, and
/// mimalloc keeps freed pages for reuse by their owning thread: without a collection RSS grew
/// with each of the first edits (docs/benchmarks.md, "Third round"). Requests never call it: a
/// collection walks the thread's pages, milliseconds at 10k services.
static RELEASE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Registers the allocator's release call. The first registration wins.
pub fn set_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Called by the threads that load, translate and compile configs after each change. Does
/// nothing unless the binary registered a release call.
pub fn release_freed() {
    if let Some(release) = RELEASE.get() {
        release();
    }
}

/// `items` in an allocation of exactly its length. `shrink_to_fit` is not enough with mimalloc:
/// it keeps a block in place when the new size is at least half the old, so a list of three
/// in room for four stays as it was.
pub fn exact<T>(mut items: Vec<T>) -> Vec<T> {
    if items.capacity() == items.len() {
        return items;
    }
    let mut out = Vec::with_capacity(items.len());
    out.append(&mut items);
    out
}

/// `items` as a boxed slice in an allocation of exactly its length (see [`exact`]: a
/// `Vec::into_boxed_slice` shrinks in place under mimalloc).
pub fn boxed<T>(items: Vec<T>) -> Box<[T]> {
    exact(items).into_boxed_slice()
}

/// `#[serde(deserialize_with = "crate::memory::exact_list")]` for lists a long-lived value
/// keeps: JSON gives no length ahead, so a decoded list grows by doubling from four. Copied to
/// its length as each list ends, the grown block is freed at once and taken by the next list
/// that grows, instead of every list keeping its spare room (or all of them leaving holes when
/// trimmed after the whole document).
pub fn exact_list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Vec<T> as serde::Deserialize>::deserialize(deserializer).map(exact)
}

/// [`exact_list`] for a boxed slice (which `Box<[T]>`'s own decoding gets by shrinking, and so
/// not always, see [`exact`]).
pub fn exact_slice<'de, D, T>(deserializer: D) -> Result<Box<[T]>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    exact_list(deserializer).map(Vec::into_boxed_slice)
}

#[cfg(test)]
mod tests {
    #[test]
    fn exact_copies_only_lists_with_spare_room() {
        let mut spare = Vec::with_capacity(4);
        spare.extend([1, 2, 3]);
        let trimmed = super::exact(spare);
        assert_eq!((trimmed.len(), trimmed.capacity()), (3, 3));
        let full = vec![1, 2];
        let at = full.as_ptr();
        let kept = super::exact(full);
        assert_eq!(kept.as_ptr(), at, "no copy when already exact");
        let decoded: Vec<u32> = super::exact_list(&mut serde_json::Deserializer::from_str("[1,2,3]")).unwrap();
        assert_eq!((decoded.len(), decoded.capacity()), (3, 3));
    }
}
