//! Free space on the disk a step writes to, checked before a step that
//! writes much (TTS_RENDER_CHUNKS, FRAME_SAMPLING) starts its tools, so a
//! disk too full for the job fails at once with `DISK_FULL` instead of
//! part-way through with a tool's confusing error (or, with espeak-ng, a
//! silently truncated file).
//!
//! The estimates are deliberately small: they catch a disk that is plainly
//! too full, and a disk that fills up anyway is caught when a write fails.

use crate::error::StepError;
use std::path::Path;

/// Kept free beyond a step's own estimate: the job log, the store and the
/// worker's other jobs need room too.
pub const RESERVE_BYTES: u64 = 1 << 20;

/// Below this much free space after a tool "succeeded", its output is
/// suspect (espeak-ng exits 0 after a short write): the disk is full.
pub const NEARLY_FULL_BYTES: u64 = 64 << 10;

/// Bytes available to this process on the disk holding `path`, or `None`
/// when the system cannot say (then no check is made).
pub fn free_bytes(path: &Path) -> Option<u64> {
    imp::free_bytes(path)
}

/// Fails with `DISK_FULL`, naming `folder`, when its disk has less than
/// `needed` bytes plus [`RESERVE_BYTES`] free. `what` describes the output
/// ("12 frames", "3 chunks of speech").
pub fn ensure_free(folder: &Path, needed: u64, what: &str) -> Result<(), StepError> {
    let Some(free) = free_bytes(folder) else { return Ok(()) };
    let wanted = needed.saturating_add(RESERVE_BYTES);
    if free < wanted {
        return Err(StepError::disk_full(
            folder,
            format!("{} free, and {what} need about {}", human(free), human(wanted)),
        ));
    }
    Ok(())
}

/// Whether the disk holding `folder` is (nearly) full right now.
pub fn is_nearly_full(folder: &Path) -> bool {
    free_bytes(folder).is_some_and(|f| f < NEARLY_FULL_BYTES)
}

/// A byte count for messages: "512 KiB", "3.2 MiB", "1.5 GiB".
pub fn human(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB * KIB {
        format!("{:.0} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.1} GiB", b / (KIB * KIB * KIB))
    }
}

#[cfg(unix)]
mod imp {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    pub fn free_bytes(path: &Path) -> Option<u64> {
        let c = CString::new(path.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a writable
        // statvfs that outlives the call.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
}

#[cfg(windows)]
mod imp {
    use std::os::windows::ffi::OsStrExt;
    use std::path::Path;
    use windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW;

    pub fn free_bytes(path: &Path) -> Option<u64> {
        let wide: Vec<u16> = path.as_os_str().encode_wide().chain(std::iter::once(0)).collect();
        let mut available: u64 = 0;
        // SAFETY: `wide` is a NUL-terminated UTF-16 path; the out pointer is
        // a valid u64 and the two unused ones may be null.
        let ok = unsafe { GetDiskFreeSpaceExW(wide.as_ptr(), &mut available, std::ptr::null_mut(), std::ptr::null_mut()) };
        (ok != 0).then_some(available)
    }
}

#[cfg(not(any(unix, windows)))]
mod imp {
    pub fn free_bytes(_: &std::path::Path) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_known_here_and_plenty_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some_and(|f| f > 0));
        let err = ensure_free(dir.path(), u64::MAX / 2, "a test").unwrap_err();
        assert_eq!(err.code, crate::error::ErrorCode::DiskFull);
        assert!(err.message.contains(&dir.path().display().to_string()), "{err}");
        ensure_free(dir.path(), 1, "a byte").unwrap();
        assert_eq!(human(512 * 1024), "512 KiB");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
