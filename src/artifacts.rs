//! Artifacts: files a step produces, written atomically and listed with their
//! SHA-256 digests.
//!
//! Architecture Invariant: no artifact ever exists under its final name
//! half-written. Every writer goes through [`write_atomic`] or
//! [`commit_temp`], which write to a temporary sibling, fsync, then rename.

use crate::error::StepError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The most bytes of file work (reading and hashing a small input, writing a
/// small unsynced copy) that code on an async thread does itself: tens of
/// microseconds, less than the trip to a blocking thread and back costs.
/// Anything larger goes to the blocking pool.
pub const INLINE_IO_BYTES: usize = 64 * 1024;

/// One entry of an artifact manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactEntry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// Checks that `name` is a plain file name that cannot escape its folder:
/// no separators, no `..`, no drive letters, no NUL, not empty, not too long.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A temporary sibling path for `final_path`, unique within this process.
pub fn temp_path_for(final_path: &Path) -> PathBuf {
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    final_path.with_file_name(format!(".{name}.{}.part", &unique[..12]))
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path_for(path);
    let file = std::fs::File::create(&tmp);
    file.and_then(|f| finish_temp(&tmp, f, path, bytes, true))
}

/// Writes `bytes` into `file`, open on the temporary file `tmp`, syncs it
/// when `sync`, and renames it to `path`. On any failure the temporary file
/// is removed, so nothing half-written stays under either name.
pub fn finish_temp(tmp: &Path, mut file: std::fs::File, path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let result = file.write_all(bytes).and_then(|()| if sync { file.sync_all() } else { Ok(()) }).and_then(|()| {
        drop(file);
        std::fs::rename(tmp, path)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// Replaces `path` with `bytes` through a temporary file and a rename,
/// without a sync: a crash of this process (even kill -9) never leaves the
/// file half-written under its final name, because the written pages stay
/// with the operating system; a power cut may lose the file. For copies
/// whose original is kept elsewhere (a job's `worker.log`, which its worker
/// keeps), where a sync on every job's path would cost more than it saves.
pub fn write_replace_unsynced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path_for(path);
    let file = std::fs::File::create(&tmp);
    file.and_then(|f| finish_temp(&tmp, f, path, bytes, false))
}

/// Moves a finished temporary file to its final name after an fsync.
///
/// The file is opened for writing because Windows refuses to flush a
/// read-only handle (FlushFileBuffers needs write access: "Access denied").
pub fn commit_temp(tmp: &Path, final_path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(tmp)?.sync_all()?;
    std::fs::rename(tmp, final_path)
}

/// Makes the names in `dir` durable: after a rename into it, the new name
/// survives a power cut only once the folder itself is synced (the file's
/// own sync covers its bytes, not the entry that names it).
///
/// On Windows this is a no-op: NTFS journals the rename itself, and the
/// standard library cannot open a folder to flush it.
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
pub fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// SHA-256 (lower-case hex) and size of a file, streamed in blocks of at
/// most 1 MiB (no bigger than the file: a small input costs no 1 MiB
/// buffer to zero).
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let block = f.metadata().map(|m| m.len()).unwrap_or(0).clamp(4096, 1 << 20) as usize;
    let mut buf = vec![0u8; block];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// An absolute form of a path, as receipts show it (relative state
/// folders are common).
pub fn absolute(p: PathBuf) -> String {
    std::path::absolute(&p).unwrap_or(p).to_string_lossy().into_owned()
}

/// Builds the manifest entry of a finished artifact in `dir`.
pub fn entry_for(dir: &Path, name: &str) -> Result<ArtifactEntry, StepError> {
    let path = dir.join(name);
    let (sha256, size) =
        sha256_file(&path).map_err(|e| StepError::io(format!("hashing artifact {name}"), e))?;
    Ok(ArtifactEntry { name: name.to_string(), size, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_synced_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        sync_dir(dir.path()).unwrap();
        if cfg!(unix) {
            assert!(sync_dir(&dir.path().join("missing")).is_err());
        }
    }

    #[test]
    fn safe_names() {
        for ok in ["ffprobe.json", "frame_0001.jpg", "chunk_0001.wav", "worker.log"] {
            assert!(is_safe_name(ok), "{ok}");
        }
        for bad in ["", "..", "../x", "a/b", "a\\b", "C:x", "x\0y", ".hidden", &"a".repeat(200)] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn atomic_write_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"abc").unwrap();
        let (sha, size) = sha256_file(&p).unwrap();
        assert_eq!(size, 3);
        assert_eq!(sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }

    /// On a full disk the write fails as DISK_FULL (through
    /// [`StepError::io`]) and leaves neither the artifact nor its temporary.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_is_disk_full_and_leaves_nothing() {
        let Some(fs) = crate::process::test_support::Tmpfs::mount("1m") else { return };
        let filler = fs.fill();
        let p = fs.path().join("report.json");
        let err = write_atomic(&p, &vec![b'x'; 256 * 1024]).unwrap_err();
        assert!(crate::error::is_disk_full(&err), "{err:?}");
        assert_eq!(StepError::io("writing report.json", err).code, crate::error::ErrorCode::DiskFull);
        let names: Vec<_> = std::fs::read_dir(fs.path()).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(names, vec![filler], "only the filler is left");
    }
}
