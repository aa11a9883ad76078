//! Empty files made ahead of time in the blob folder, for the inputs that
//! a `POST /jobs` carries inline.
//!
//! Creating a file allocates an inode, and on some filesystems that is the
//! slowest step of accepting a short job: on the benchmark VM's ext4 (no
//! journal, many files deleted recently) a `File::create` in the blob
//! folder took 300-350 us, against 30 us to write a 22 KB input into the
//! file once it exists, and NTFS is slow to create files too. A
//! submission takes one of these files, writes its input into it, syncs
//! it and renames it to its digest (`files::finish_inline`); a task on the
//! blocking pool makes the next ones, off every request's path. When none
//! is ready (a burst took them all), the submission creates its own file,
//! as it would without the pool.
//!
//! **Names made durable ahead of time.** After making a batch, the pool
//! syncs the folder once, before any of them is handed out. A submission
//! then needs only its file's own sync before the job is acknowledged: the
//! rename to the digest is not synced on that path. Should a power cut
//! lose that rename, the input is still on disk, whole (its bytes were
//! synced), under the spare's durable name; the next start finds it there
//! and renames it to the digest of what it holds ([`Spares::new`]), before
//! any job is requeued. Without this, the submission synced the folder
//! after the rename, a second sync in a row on the acceptance's path.
//!
//! The spares live in `blobs/` itself, named `.spare.<random>`, so that
//! the rename stays within one folder (a rename between two folders could
//! reach the disk half done). A blob's name is its digest in hex and an
//! upload's temporary file ends in `.part`, so neither is ever mistaken
//! for a spare; retention leaves spares alone.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Files made ready by a refill: enough for the submissions that arrive
/// together at 16 in flight to find theirs made.
const READY: usize = 24;

/// A refill starts when fewer than this many are ready, so that one
/// folder sync names at least `READY - LOW` new files. (Refilling after
/// every taken file cost each job a file creation and a folder sync on
/// the blocking pool: about a tenth of the worker's CPU in a profile of
/// sequential jobs, and a third sync competing with the job's own.)
const LOW: usize = 16;

/// The start of a spare's file name.
pub const PREFIX: &str = ".spare.";

/// True for the file name of a spare.
pub fn is_spare(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with(PREFIX))
}

/// One empty file, open for writing.
pub struct Spare {
    pub path: PathBuf,
    pub file: File,
    /// The folder was synced after the file was made, so its name survives
    /// a power cut (false when that sync failed).
    pub named: bool,
}

/// The pool of one blob folder.
pub struct Spares {
    dir: PathBuf,
    ready: Mutex<Vec<Spare>>,
    refilling: AtomicBool,
}

impl Spares {
    /// A pool for the blob folder `dir`, which is created; the spares a
    /// previous process left there are recovered or removed
    /// ([`recover_leftovers`]), and the pool is filled here (blocking, at
    /// start-up). `old_dir` is the folder earlier versions kept their
    /// spares in; what is left there is removed.
    pub fn new(dir: &Path, old_dir: &Path) -> Arc<Spares> {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::debug!(error = %e, "could not make the blob folder");
        }
        if old_dir.is_dir() {
            let _ = std::fs::remove_dir_all(old_dir);
        }
        recover_leftovers(dir);
        let spares = Arc::new(Spares { dir: dir.to_path_buf(), ready: Mutex::new(Vec::new()), refilling: AtomicBool::new(false) });
        spares.refill();
        spares
    }

    /// A ready file, if there is one; when fewer than [`LOW`] are left,
    /// starts making more on the blocking pool (at most one such task at a
    /// time). Call it on a Tokio runtime.
    pub fn take(self: &Arc<Self>) -> Option<Spare> {
        let (spare, low) = {
            let mut ready = self.lock();
            (ready.pop(), ready.len() < LOW)
        };
        if low && !self.refilling.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            drop(actix_web::rt::task::spawn_blocking(move || {
                me.refill();
                me.refilling.store(false, Ordering::Release);
            }));
        }
        spare
    }

    /// How many files are ready.
    #[cfg(test)]
    pub fn ready(&self) -> usize {
        self.lock().len()
    }

    /// Makes files until [`READY`] are ready, syncs the folder once, then
    /// hands them out. A failure (a full disk, a folder that went away)
    /// stops it quietly: submissions then create their own files and meet
    /// the error themselves, where it is reported.
    fn refill(&self) {
        let mut made = Vec::new();
        while self.lock().len() + made.len() < READY {
            let unique = uuid::Uuid::new_v4().simple().to_string();
            let path = self.dir.join(format!("{PREFIX}{}", &unique[..12]));
            match File::create(&path) {
                Ok(file) => made.push(Spare { path, file, named: false }),
                Err(e) => {
                    tracing::debug!(error = %e, "could not make a spare file");
                    break;
                }
            }
        }
        if made.is_empty() {
            return;
        }
        let named = match rayvault::artifacts::sync_dir(&self.dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "could not sync the blob folder after making spare files");
                false
            }
        };
        for spare in &mut made {
            spare.named = named;
        }
        self.lock().extend(made);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Spare>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a previous process left in the blob folder `dir` under a spare's
/// name. An empty one was never used and is removed. One with bytes holds
/// an input that a submission wrote and synced (the job may have been
/// acknowledged) but whose rename to its digest did not reach the disk, or
/// one written for a submission that was never acknowledged: either way
/// it is renamed to the digest of what it holds, unless that blob is
/// there already (then it is removed). A blob is named by its content, so
/// keeping a never-used one is harmless; retention removes it in time.
pub fn recover_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut kept = 0;
    for e in entries.flatten() {
        if !is_spare(&e.file_name()) {
            continue;
        }
        let path = e.path();
        let full = std::fs::metadata(&path).map(|m| m.is_file() && m.len() > 0).unwrap_or(false);
        let recovered = full
            && match rayvault::artifacts::sha256_file(&path) {
                Ok((sha256, size)) => {
                    let dest = dir.join(&sha256);
                    !dest.exists()
                        && std::fs::rename(&path, &dest)
                            .map(|()| tracing::warn!(%sha256, size, "an input written before the last stop is kept as its blob"))
                            .is_ok()
                }
                Err(_) => false,
            };
        if recovered {
            kept += 1;
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    if kept > 0 {
        if let Err(e) = rayvault::artifacts::sync_dir(dir) {
            tracing::warn!(error = %e, "could not sync the blob folder after recovering inputs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::Write;

    fn names(d: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(d).unwrap().flatten().map(|e| e.path()).collect()
    }

    #[actix_web::test]
    async fn a_taken_file_is_replaced_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::new(dir.path(), &dir.path().join("old"));
        assert_eq!(spares.ready(), READY);
        let mut spare = spares.take().expect("a file is ready");
        assert!(spare.named, "the folder was synced before the file was handed out");
        assert!(is_spare(spare.path.file_name().unwrap()));
        spare.file.write_all(b"input").unwrap();
        assert_eq!(std::fs::read(&spare.path).unwrap(), b"input");
        // Above the low-water mark nothing is made; below it, a batch.
        assert!(!spares.refilling.load(Ordering::Acquire));
        assert_eq!(spares.ready(), READY - 1);
        let taken: Vec<Spare> = (0..READY - LOW).map(|_| spares.take().expect("a file is ready")).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while spares.ready() < READY {
            assert!(std::time::Instant::now() < deadline, "the pool was not refilled");
            actix_web::rt::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(names(dir.path()).len(), READY + 1 + taken.len());
    }

    #[actix_web::test]
    async fn leftovers_are_kept_as_blobs_when_they_hold_bytes_and_removed_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("spares");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join(".spare.0123456789ab"), b"").unwrap();
        let first = Spares::new(dir.path(), &old);
        assert!(!old.exists(), "the folder of earlier versions is gone");
        // An input written and synced, its rename lost; one whose blob is
        // there already; and one never used.
        let mut lost = first.take().unwrap();
        lost.file.write_all(b"an input").unwrap();
        let mut twice = first.take().unwrap();
        twice.file.write_all(b"stored already").unwrap();
        let stored = dir.path().join(hex::encode(Sha256::digest(b"stored already")));
        std::fs::write(&stored, b"stored already").unwrap();
        let unused = first.take().unwrap();
        // The process "stops" once any background refill is done.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while first.refilling.load(Ordering::Acquire) {
            assert!(std::time::Instant::now() < deadline, "the pool was not refilled");
            actix_web::rt::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(first);
        let second = Spares::new(dir.path(), &old);
        assert_eq!(second.ready(), READY);
        let now = names(dir.path());
        for p in [&lost.path, &twice.path, &unused.path] {
            assert!(!now.contains(p), "{} is gone", p.display());
        }
        let recovered = dir.path().join(hex::encode(Sha256::digest(b"an input")));
        assert_eq!(std::fs::read(&recovered).unwrap(), b"an input");
        assert_eq!(std::fs::read(&stored).unwrap(), b"stored already");
        // Every other file is an empty spare of the new pool.
        let spares: Vec<_> = now.iter().filter(|p| is_spare(p.file_name().unwrap())).collect();
        assert_eq!(spares.len(), READY);
        assert!(spares.iter().all(|p| std::fs::metadata(p).unwrap().len() == 0));
        assert_eq!(now.len(), READY + 2);
    }

    #[actix_web::test]
    async fn a_pool_that_cannot_make_files_is_empty_and_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("a-file");
        std::fs::write(&blocked, b"").unwrap();
        let spares = Spares::new(&blocked.join("blobs"), &blocked.join("spares"));
        assert_eq!(spares.ready(), 0);
        assert!(spares.take().is_none());
    }
}
