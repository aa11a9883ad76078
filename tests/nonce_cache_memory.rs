//! The nonce cache's memory per entry, measured with a counting allocator:
//! a burst of signed requests must not leave a heap block per nonce.

use rayvault::auth::NonceCache;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting the bytes live at any time.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// 10,000 nonces of the usual 32 characters: the map's table only, about
/// 24 bytes an entry plus the table's spare room, never the nonce's text in
/// a block of its own (which took about 86 bytes an entry).
#[test]
fn nonce_cache_entries_are_compact() {
    const N: usize = 10_000;
    let nonces: Vec<String> = (0..N).map(|i| format!("{i:032x}")).collect();
    let cache = NonceCache::new(100_000);
    let before = LIVE.load(Ordering::Relaxed);
    for n in &nonces {
        assert!(cache.insert(n, 1_600, 1_000));
    }
    let per_entry = (LIVE.load(Ordering::Relaxed) - before) as usize / N;
    assert!(per_entry <= 48, "{per_entry} bytes per nonce");
    // Still a replay cache: every nonce kept is refused again, long ones too.
    assert!(nonces.iter().all(|n| !cache.insert(n, 1_600, 1_000)));
    let long = "n".repeat(4096);
    assert!(cache.insert(&long, 1_600, 1_000));
    assert!(!cache.insert(&long, 1_600, 1_000));
    assert!(cache.insert(&format!("{long}x"), 1_600, 1_000), "a nonce differing only at its end is new");
}
