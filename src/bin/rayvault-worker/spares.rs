//! Empty files made ahead of time in the state folder's `spares/`, for the
//! inputs that a `POST /jobs` carries inline.
//!
//! Creating a file allocates an inode, and on some filesystems that is the
//! slowest step of accepting a short job: on the benchmark VM's ext4 (no
//! journal, many files deleted recently) a `File::create` in the blob
//! folder took 300-350 us, against 30 us to write a 22 KB input into the
//! file once it exists, and NTFS is slow to create files too. A
//! submission takes one of these files, writes its input into it and
//! renames it into place (`files::prepare_inline`); a task on the blocking
//! pool makes the next ones, off every request's path. When none is ready
//! (a burst took them all), the submission creates its own file, as it
//! would without the pool.
//!
//! The folder is apart from `blobs/`, which holds only blobs and the
//! uploads in progress, so that nothing there is mistaken for either; a
//! spare is renamed into `blobs/` (the same filesystem) once written. At
//! start the files a previous process left are deleted and new ones made.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Files kept ready: enough for the submissions that arrive together at
/// 16 in flight to find most of theirs made while the pool refills.
const READY: usize = 8;

/// One empty file, open for writing.
pub struct Spare {
    pub path: PathBuf,
    pub file: File,
}

/// The pool of one `spares/` folder.
pub struct Spares {
    dir: PathBuf,
    ready: Mutex<Vec<Spare>>,
    refilling: AtomicBool,
}

impl Spares {
    /// A pool for `dir`, which is created, emptied of what a previous
    /// process left, and filled here (blocking, at start-up).
    pub fn new(dir: &Path) -> Arc<Spares> {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::debug!(error = %e, "could not make the folder of spare files");
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let spares = Arc::new(Spares { dir: dir.to_path_buf(), ready: Mutex::new(Vec::new()), refilling: AtomicBool::new(false) });
        spares.refill();
        spares
    }

    /// A ready file, if there is one; starts making more on the blocking
    /// pool either way (at most one such task at a time). Call it on a
    /// Tokio runtime.
    pub fn take(self: &Arc<Self>) -> Option<Spare> {
        let (spare, low) = {
            let mut ready = self.lock();
            (ready.pop(), ready.len() < READY)
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

    /// Makes files until [`READY`] are ready. A failure (a full disk, a
    /// folder that went away) stops it quietly: submissions then create
    /// their own files and meet the error themselves, where it is reported.
    fn refill(&self) {
        while self.lock().len() < READY {
            let path = rayvault::artifacts::temp_path_for(&self.dir.join("spare"));
            match File::create(&path) {
                Ok(file) => self.lock().push(Spare { path, file }),
                Err(e) => {
                    tracing::debug!(error = %e, "could not make a spare file");
                    return;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Spare>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[actix_web::test]
    async fn a_taken_file_is_replaced_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::new(dir.path());
        assert_eq!(spares.ready(), READY);
        let mut spare = spares.take().expect("a file is ready");
        assert!(spare.path.file_name().unwrap().to_string_lossy().starts_with(".spare."));
        spare.file.write_all(b"input").unwrap();
        assert_eq!(std::fs::read(&spare.path).unwrap(), b"input");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while spares.ready() < READY {
            assert!(std::time::Instant::now() < deadline, "the pool was not refilled");
            actix_web::rt::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, READY + 1);
    }

    #[actix_web::test]
    async fn leftovers_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spares::new(dir.path());
        let mut kept = first.take().unwrap();
        kept.file.write_all(b"half an input").unwrap();
        drop(first);
        let names = |d: &Path| std::fs::read_dir(d).unwrap().flatten().map(|e| e.path()).collect::<Vec<_>>();
        let second = Spares::new(dir.path());
        assert_eq!(second.ready(), READY);
        assert!(!names(dir.path()).contains(&kept.path), "a previous process's file is gone");
        assert!(names(dir.path()).iter().all(|p| std::fs::metadata(p).unwrap().len() == 0));
    }

    #[actix_web::test]
    async fn a_pool_that_cannot_make_files_is_empty_and_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("a-file");
        std::fs::write(&blocked, b"").unwrap();
        let spares = Spares::new(&blocked.join("spares"));
        assert_eq!(spares.ready(), 0);
        assert!(spares.take().is_none());
    }
}
