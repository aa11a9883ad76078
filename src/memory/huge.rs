//! Large buffers in huge pages ([`HugePages`]), for the artifact download's
//! blocks and the benchmarks that measure against them.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A huge page on x86-64, and the alignment of every [`HugePages`] buffer
/// (a multiple of the 4 KiB that `O_DIRECT` asks of buffers).
pub const HUGE_PAGE: usize = 2 << 20;

/// `len` zeroed bytes aligned to [`HUGE_PAGE`]. On Linux the buffer is its
/// own anonymous mapping, aligned to a huge page and advised
/// `MADV_HUGEPAGE` before anything touches it: the kernel hands it over
/// zeroed, in 2 MiB pages where it can (one fault and one TLB entry per 2
/// MiB), and nothing writes zeros first. Where transparent huge pages are
/// `madvise` only, an ordinary allocation of that size gets 4 KiB pages,
/// which cost a VM's SHA-256 about a fifth of its speed and split a 2 MiB
/// `O_DIRECT` write into several disk requests. Elsewhere it is an ordinary
/// zeroed allocation.
pub struct HugePages {
    ptr: NonNull<u8>,
    len: usize,
    advised: bool,
}

// SAFETY: the buffer is plain memory owned by this value.
unsafe impl Send for HugePages {}
// SAFETY: shared access only reads.
unsafe impl Sync for HugePages {}

impl HugePages {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.max(1), HUGE_PAGE).expect("a valid layout")
    }

    /// Allocates `len` bytes (at least one).
    #[cfg(target_os = "linux")]
    pub fn new(len: usize) -> HugePages {
        let len = len.max(1);
        // Mapped with room to spare, then trimmed to an aligned `len`.
        let map = len + HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping; no memory of ours is
        // involved.
        let raw = unsafe {
            libc::mmap(std::ptr::null_mut(), map, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if raw == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(Self::layout(len));
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let end = aligned + len.next_multiple_of(4096);
        // SAFETY: both ranges lie inside the mapping made above and are
        // never used: the head before the aligned start, the tail after
        // the aligned buffer's last page. Both bounds are page multiples.
        let advised = unsafe {
            if aligned > start {
                libc::munmap(raw, aligned - start);
            }
            if start + map > end {
                libc::munmap(end as *mut libc::c_void, start + map - end);
            }
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE) == 0
        };
        HugePages { ptr: NonNull::new(aligned as *mut u8).expect("mmap never maps page 0"), len, advised }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new(len: usize) -> HugePages {
        let len = len.max(1);
        let layout = Self::layout(len);
        // SAFETY: a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        HugePages { ptr, len, advised: false }
    }

    /// Whether the kernel took the advice to back the buffer with huge
    /// pages (it still falls back to 4 KiB pages when none is free).
    pub fn advised(&self) -> bool {
        self.advised
    }
}

impl Drop for HugePages {
    #[cfg(target_os = "linux")]
    fn drop(&mut self) {
        // SAFETY: the aligned pages that `new` kept of its mapping.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len.next_multiple_of(4096));
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

impl Deref for HugePages {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes owned by this value (the kernel
        // zeroes a fresh mapping; `alloc_zeroed` elsewhere).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for HugePages {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_aligned_zeroed_writable_and_of_its_length() {
        for len in [1, 4096, 5000, HUGE_PAGE, 3 * HUGE_PAGE + 7] {
            let mut b = HugePages::new(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
            assert!(b.iter().all(|&x| x == 0));
            b[0] = 1;
            b[len - 1] = 7;
            assert_eq!(b[len - 1], 7);
            assert_eq!(b[0], if len > 1 { 1 } else { 7 });
        }
    }
}
