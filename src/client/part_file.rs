//! The `.part` file of a download being written ([`Output`]): whole
//! aligned blocks straight to the disk with `O_DIRECT` on Linux (several at
//! once with `pwritev` when they queued up), the rest through the page
//! cache with early writeback.

#[cfg(target_os = "linux")]
use super::download::ALIGN;
use super::download::Shared;
#[cfg(target_os = "linux")]
use std::fs::OpenOptions;
use std::fs::File;
use std::io;
use std::path::Path;

/// The `.part` file being appended to.
pub(super) struct Output {
    pub file: File,
    /// A second handle on the file opened with `O_DIRECT` (Linux), while
    /// the file system takes such writes; always `None` elsewhere.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub direct: Option<File>,
    /// Bytes in the file.
    pub len: u64,
    /// Where the last writeback request ended.
    pub flushed: u64,
}

impl Output {
    /// Appends `bytes`: the aligned whole of it straight to the disk when
    /// possible, the rest through the page cache.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let done = self.write_direct(bytes)?;
        if done < bytes.len() {
            let rest = &bytes[done..];
            write_at(&mut self.file, rest, self.len)?;
            self.len += rest.len() as u64;
            if self.len - self.flushed >= WRITEBACK_EVERY {
                start_writeback(&self.file, self.flushed, self.len - self.flushed);
                self.flushed = self.len;
            }
        } else {
            self.flushed = self.len;
        }
        Ok(())
    }

    /// Appends the blocks in order: in one vectored `O_DIRECT` write when
    /// they all can go that way, else one by one.
    pub fn write_batch(&mut self, blocks: &[Shared]) -> io::Result<()> {
        let mut skip = if blocks.len() > 1 { self.write_direct_vectored(blocks)? } else { 0 };
        for b in blocks {
            let bytes = b.bytes();
            if skip >= bytes.len() {
                skip -= bytes.len();
                continue;
            }
            self.write(&bytes[skip..])?;
            skip = 0;
        }
        Ok(())
    }

    /// One `pwritev` with `O_DIRECT` of whole aligned blocks; returns the
    /// bytes written (0 when any block does not qualify).
    #[cfg(target_os = "linux")]
    fn write_direct_vectored(&mut self, blocks: &[Shared]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let Some(direct) = &self.direct else { return Ok(0) };
        let aligned = |n: usize| n % ALIGN == 0;
        if !aligned(self.len as usize) || blocks.iter().any(|b| { let x = b.bytes(); x.is_empty() || !aligned(x.len()) || !aligned(x.as_ptr() as usize) }) {
            return Ok(0);
        }
        let iov: Vec<libc::iovec> = blocks.iter().map(|b| libc::iovec { iov_base: b.bytes().as_ptr() as *mut libc::c_void, iov_len: b.bytes().len() }).collect();
        let Ok(offset) = libc::off_t::try_from(self.len) else { return Ok(0) };
        loop {
            // SAFETY: the iovecs point into blocks borrowed for the call.
            let n = unsafe { libc::pwritev(direct.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, offset) };
            if n >= 0 {
                self.len += n as u64;
                self.flushed = self.len;
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EINVAL) => return Ok(0),
                _ => return Err(e),
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn write_direct_vectored(&mut self, _blocks: &[Shared]) -> io::Result<usize> {
        Ok(0)
    }

    /// Writes what it can of `bytes` with `O_DIRECT`; returns the bytes
    /// written (0 when the offset, the length or the memory is not aligned).
    #[cfg(target_os = "linux")]
    fn write_direct(&mut self, bytes: &[u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while let Some(direct) = &self.direct {
            let rest = &bytes[done..];
            let aligned = |n: usize| n % ALIGN == 0;
            if rest.is_empty() || !aligned(self.len as usize) || !aligned(rest.len()) || !aligned(rest.as_ptr() as usize) {
                break;
            }
            match direct.write_at(rest, self.len) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the file took no more bytes")),
                Ok(n) => {
                    done += n;
                    self.len += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The file system refuses direct writes after all: the page
                // cache takes this block and the next ones.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    #[cfg(not(target_os = "linux"))]
    fn write_direct(&mut self, _bytes: &[u8]) -> io::Result<usize> {
        Ok(0)
    }
}

/// The `.part` file opened again for `O_DIRECT` writes, if the file system
/// allows them.
#[cfg(target_os = "linux")]
pub(super) fn direct_handle(part: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(part).ok()
}

#[cfg(not(target_os = "linux"))]
pub(super) fn direct_handle(_part: &Path) -> Option<File> {
    None
}

/// Writes all of `bytes` at `offset` (the file's end).
#[cfg(unix)]
fn write_at(file: &mut File, bytes: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

/// Writes all of `bytes` at the file's position, which is its end.
#[cfg(not(unix))]
fn write_at(file: &mut File, bytes: &[u8], _offset: u64) -> io::Result<()> {
    io::Write::write_all(file, bytes)
}

/// Most blocks written with one system call.
pub(super) const WRITE_BATCH: usize = 4;

/// Bytes written between two writeback requests.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Asks the kernel to start writing `len` bytes at `offset` to disk now,
/// without waiting: the disk then works while the rest arrives, and the one
/// `fsync` at the end only waits for the last few blocks (it took 0.3 s for
/// a whole GiB of dirty pages here). Durability still comes from that
/// `fsync`; a failure here only loses the head start, so it is ignored.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) else { return };
    // SAFETY: the descriptor is open for as long as `file` is borrowed, and
    // sync_file_range reads no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Elsewhere the final `fsync` does all the writing.
#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

