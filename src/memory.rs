//! Allocator settings for the long-running binaries (the worker and the
//! controller's daemon), so that a burst of jobs does not leave them larger
//! for good.
//!
//! During a burst at concurrency 16 both processes grow to 25-45 threads
//! (tokio blocking pools, actix arbiters). glibc gives each new thread a
//! malloc arena of its own and keeps it after the thread exits, and it
//! keeps freed memory inside its heaps rather than giving it back; the
//! benchmark measured +11 MiB (worker) and +27 MiB (daemon) that stayed
//! after 300 jobs. Three settings keep that down:
//!
//! - few arenas ([`tune_malloc`]): one in the worker, two in the daemon.
//!   glibc's `malloc_trim` hands back free pages inside a heap, but not the
//!   free top of a secondary arena, which only shrinks at a `free` once it
//!   exceeds the trim threshold below: after a burst of 2,000 jobs the
//!   worker's second arena kept about 2 MiB that way. The worker does its
//!   allocating on one HTTP thread and a few blocking threads, and one
//!   arena cost it nothing measurable (A/B, 5 rounds of 1,000 jobs at 16
//!   in flight through the daemon: rate higher in 4; RSS growth after
//!   2,000 jobs 3.2-3.5 against 5.0-5.2 MiB). With one arena in both
//!   binaries the rate was lower in all 5 rounds, so the daemon, which has
//!   more threads allocating at once, keeps two;
//! - a fixed mmap threshold of 1 MiB and a trim threshold of 8 MiB
//!   ([`tune_malloc`]): glibc otherwise raises the mmap threshold each time
//!   a large block is freed (up to 32 MiB). Blocks under 1 MiB (a job's
//!   audio buffers of a few hundred KiB, request bodies) come from the heap
//!   and are reused from one job to the next; with the default trim
//!   threshold (128 KiB) each free at the heap's top handed those pages
//!   back and the next job faulted them in again (with a 128 KiB mmap
//!   threshold instead, each job mapped and unmapped them: 15 % more CPU
//!   per job in the worker). What the heap keeps this way goes back to the
//!   system when the trimmer below runs;
//! - a trimmer thread ([`spawn_trimmer`]) that hands freed pages back to
//!   the system soon after the heap goes quiet (within about half a second
//!   of a burst's end) and at least every [`TRIM_EVERY`].
//!
//! Elsewhere (musl, Windows, macOS) these are no-ops.

mod huge;
pub use huge::{HugePages, HUGE_PAGE};

use std::time::Duration;

/// The longest the trimmer waits between two trims, busy or not.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// How often the trimmer looks at the heap's figures.
pub const TRIM_TICK: Duration = Duration::from_millis(200);

/// The heap counts as quiet over one [`TRIM_TICK`] when neither its bytes
/// in use nor its free bytes moved by more than this; a tick where either
/// moved more counts as activity.
pub const QUIET_BYTES: usize = 64 * 1024;

/// Allocations of this size or more get pages of their own (mmap), which go
/// back to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 1024 * 1024;

/// Free bytes at the top of a heap that glibc keeps at a `free` rather than
/// handing back at once (the trimmer hands them back once the heap is
/// quiet, [`spawn_trimmer`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 8 * 1024 * 1024;

/// Malloc arenas of the worker (see the module comment).
pub const WORKER_ARENAS: i32 = 1;

/// Malloc arenas of the controller (see the module comment).
pub const CONTROLLER_ARENAS: i32 = 2;

/// Caps glibc at `arenas` malloc arenas (few are plenty for processes that
/// mostly wait on disk and network, and each extra arena is memory kept for
/// good) and fixes the mmap and trim thresholds (see the module comment).
/// Call it first thing in `main`, before any other thread exists.
pub fn tune_malloc(#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(unused_variables))] arenas: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it runs before any
    // other thread starts, and a refusal (0) only leaves glibc's default.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas.max(1));
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// The heap's figures the trimmer decides on, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeapSample {
    /// Bytes in blocks the program holds.
    pub in_use: usize,
    /// Bytes in free blocks the allocator keeps inside its heaps.
    pub free: usize,
}

/// Whether the heap moved between two samples one [`TRIM_TICK`] apart
/// (allocating or freeing more than [`QUIET_BYTES`]).
pub fn heap_moved(prev: HeapSample, now: HeapSample) -> bool {
    now.in_use.abs_diff(prev.in_use) > QUIET_BYTES || now.free.abs_diff(prev.free) > QUIET_BYTES
}

/// Whether the trimmer trims now. `prev` and `now` are the last two
/// samples, `active` whether the heap moved in any tick since the last
/// trim, and `since_trim` the time since it. A trim is due when
/// [`TRIM_EVERY`] has passed, or as soon as the heap is quiet again after
/// activity (a burst has ended): trimming in the middle of a burst would
/// only hand back pages the next job faults in again.
///
/// The free-bytes figure alone cannot say whether a trim is worth it:
/// glibc keeps a trimmed free block in its lists (only its pages go back),
/// so a burst that reuses the trimmed blocks and frees them again leaves
/// the free figure where the last trim left it while the pages are
/// resident once more. A trimmer that waited for the free figure to rise
/// kept such a burst's pages until the periodic trim, up to ten seconds
/// (1.5 MiB in the controller after 1,000 jobs).
pub fn trim_due(prev: HeapSample, now: HeapSample, active: bool, since_trim: Duration) -> bool {
    since_trim >= TRIM_EVERY || (active && !heap_moved(prev, now))
}

/// The current heap figures from glibc (`mallinfo2`), summed over all
/// arenas; `None` where there is no glibc.
pub fn heap_sample() -> Option<HeapSample> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes each arena's lock and only reads.
        let info = unsafe { libc::mallinfo2() };
        Some(HeapSample { in_use: info.uordblks, free: info.fordblks })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Hands free pages inside the heaps back to the system (`malloc_trim(0)`:
/// the top of each heap and every whole free page inside it).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe (it takes each arena's lock) and
    // only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Starts a small thread that trims the heap when [`trim_due`] says so,
/// looking every [`TRIM_TICK`]. A plain thread rather than a task, so it
/// needs no runtime and never delays one (a look costs some microseconds, a
/// trim of a heap of some MiB well under a millisecond). On other platforms
/// it starts nothing.
pub fn spawn_trimmer() {
    if heap_sample().is_none() {
        return;
    }
    let started = std::thread::Builder::new().name("malloc-trim".into()).spawn(|| {
        let mut prev = heap_sample().unwrap_or_default();
        let mut active = false;
        let mut last_trim = std::time::Instant::now();
        loop {
            std::thread::sleep(TRIM_TICK);
            let now = heap_sample().unwrap_or_default();
            if trim_due(prev, now, active, last_trim.elapsed()) {
                trim();
                last_trim = std::time::Instant::now();
                active = false;
                // The trim itself moves the free figure (the top of a heap
                // goes back): the next tick compares with the heap as the
                // trim left it, so that is not taken for activity.
                prev = heap_sample().unwrap_or_default();
                continue;
            }
            active |= heap_moved(prev, now);
            prev = now;
        }
    });
    if let Err(e) = started {
        tracing::warn!("could not start the malloc trimmer thread ({e}); memory freed after a burst may stay reserved");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn trims_once_a_burst_has_ended() {
        let busy = HeapSample { in_use: 6 * MIB, free: MIB };
        let ended = HeapSample { in_use: 2 * MIB, free: 5 * MIB };
        let quiet = HeapSample { in_use: 2 * MIB + 1024, free: 5 * MIB };
        assert!(heap_moved(busy, ended));
        // The tick where the burst's memory is freed is not quiet yet.
        assert!(!trim_due(busy, ended, true, Duration::from_secs(1)));
        // One quiet tick later the trim is due.
        assert!(trim_due(ended, quiet, true, Duration::from_secs(1)));
    }

    #[test]
    fn a_burst_that_leaves_the_free_figure_unchanged_is_still_trimmed() {
        // Before the burst and after it the figures are the same (the
        // burst reused blocks an earlier trim had emptied, then freed them
        // again), but the heap moved in between: its pages are resident
        // again and the trim is due once it is quiet.
        let rest = HeapSample { in_use: 2 * MIB, free: 5 * MIB };
        let during = HeapSample { in_use: 6 * MIB, free: MIB };
        let mut active = heap_moved(rest, during);
        active |= heap_moved(during, rest);
        assert!(active);
        assert!(trim_due(rest, rest, active, Duration::from_secs(1)));
    }

    #[test]
    fn no_trim_in_a_busy_heap_or_without_activity() {
        let a = HeapSample { in_use: 4 * MIB, free: 3 * MIB };
        let b = HeapSample { in_use: 5 * MIB, free: 3 * MIB };
        assert!(!trim_due(a, b, true, Duration::from_secs(1)), "in use moved by 1 MiB: busy");
        let c = HeapSample { in_use: 4 * MIB, free: 3 * MIB + MIB };
        assert!(!trim_due(a, c, true, Duration::from_secs(1)), "free moved by 1 MiB: busy");
        let d = HeapSample { in_use: 4 * MIB + 1024, free: 3 * MIB + 1024 };
        assert!(!heap_moved(a, d));
        assert!(!trim_due(a, d, false, Duration::from_secs(1)), "a quiet heap with no activity since the last trim");
        assert!(trim_due(a, d, false, TRIM_EVERY), "the periodic trim happens regardless");
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_sample_sees_freed_memory() {
        let before = heap_sample().expect("glibc");
        // Many small blocks (below the mmap threshold) come from the heap;
        // freeing them raises the free figure or lets glibc shrink the top.
        let blocks: Vec<Vec<u8>> = (0..32_768).map(|i| vec![i as u8; 1000]).collect();
        let during = heap_sample().expect("glibc");
        assert!(during.in_use >= before.in_use + 24 * MIB, "{before:?} -> {during:?}");
        drop(blocks);
        let after = heap_sample().expect("glibc");
        assert!(after.in_use + 24 * MIB <= during.in_use, "{during:?} -> {after:?}");
    }
}
