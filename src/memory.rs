//! How the process's allocator treats large buffers.
//!
//! glibc's malloc serves an allocation of at least its mmap threshold with a mapping of its
//! own, unmapped on free. The threshold starts at 128 KiB but rises to the size of every
//! mapped buffer freed, up to 32 MiB. A node frees large buffers all the time (Arrow column
//! builders of a cut batch, encoded Parquet files, decompressed bodies), so after the first
//! upload the threshold sits near 32 MiB and everything smaller comes from the heap arenas,
//! which keep freed memory. In the NDJSON benchmark that put the node's peak RSS about
//! 100 MiB higher (378 MiB for a 128 MiB `batch.held_bytes_max`; 277 MiB with a fixed 1 MiB
//! threshold at the same events/s; mimalloc gave 601 MiB; docs/benchmarks.md "Memory"). A
//! fixed threshold keeps buffers of 1 MiB and more out of the arenas, so memory the budgets
//! release goes back to the kernel.

/// Buffers at least this large are mapped on their own and unmapped when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 1 << 20;

/// Fixes glibc's mmap threshold at 1 MiB, unless the operator chose one with glibc's own
/// `MALLOC_MMAP_THRESHOLD_` variable. Called first thing in `main`, before any thread starts.
pub fn return_large_buffers_to_the_kernel() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt takes two integers and only changes malloc's own parameters, under
        // malloc's lock; no memory of ours is involved.
        #[allow(unsafe_code)]
        let done = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
        if done != 1 {
            tracing::warn!(
                "could not fix malloc's mmap threshold; large freed buffers may stay in the heap"
            );
        }
    }
}
