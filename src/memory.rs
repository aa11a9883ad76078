//! Allocator settings for the long-running binaries (the worker and the
//! controller's daemon), so that a burst of jobs does not leave them larger
//! for good.
//!
//! During a burst at concurrency 16 both processes grow to 35-50 threads
//! (tokio blocking pools, actix arbiters). glibc gives each new thread a
//! malloc arena of its own and keeps it after the thread exits, and it
//! keeps freed memory inside its heaps rather than giving it back; the
//! benchmark measured +11 MiB (worker) and +27 MiB (daemon) that stayed
//! after 300 jobs. Elsewhere (musl, Windows, macOS) these are no-ops.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
use std::time::Duration;

/// How often the trimmer hands freed heap memory back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Caps glibc at two malloc arenas: two are plenty for processes that
/// mostly wait on disk and network, and each extra arena is memory kept
/// for good. Call it first thing in `main`, before any other thread exists.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it runs before any
    // other thread starts, and a refusal (0) only leaves glibc's default.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Starts a small thread that calls `malloc_trim(0)` every
/// [`TRIM_EVERY`], so memory freed after a burst goes back to the system
/// instead of staying in the process's heaps. A plain thread rather than a
/// task, so it needs no runtime and never delays one (a trim of a heap of
/// some tens of MiB takes well under a millisecond). On other platforms it
/// starts nothing.
pub fn spawn_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::thread::Builder::new().name("malloc-trim".into()).spawn(|| loop {
            std::thread::sleep(TRIM_EVERY);
            // SAFETY: malloc_trim is thread-safe (it takes each arena's
            // lock) and only returns free pages to the kernel.
            unsafe {
                libc::malloc_trim(0);
            }
        });
        if let Err(e) = started {
            tracing::warn!("could not start the malloc trimmer thread ({e}); memory freed after a burst may stay reserved");
        }
    }
}
