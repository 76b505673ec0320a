//! Process memory settings shared by the `controller` and `gateway` binaries.

/// Transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` asks for them.
/// mimalloc advises its arena `MADV_HUGEPAGE`, so on kernels with THP in `madvise` (or
/// `always`) mode a 2 MiB page backs every region that holds even one live block: a 10k-service
/// config cost the gateway 13 MiB more RSS for the same live heap (docs/benchmarks.md, "Fifth
/// round"). The request path's working set is small enough that huge pages buy it nothing
/// measurable. Call it first thing in `main`, before the allocator maps its arena.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none_or(|v| v == "0") {
        // Failure (kernels before 3.15) leaves THP as it was.
        let _ = nix::sys::prctl::set_thp_disable(true);
    }
}
