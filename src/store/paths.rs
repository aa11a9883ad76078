//! The worker's folder layout and the file-level upkeep that goes with it.

use std::path::{Path, PathBuf};

/// The worker's folder layout under `$RAYVAULT_STATE_DIR/worker/`:
/// `worker.redb`, `jobs/<job_id>/{worker.log, artifacts/}`, `blobs/<sha256>`.
/// A job's folder exists only once its step wrote an artifact or its log
/// grew past [`crate::protocol::MAX_INLINE_LOG`] bytes.
#[derive(Debug, Clone)]
pub struct WorkerPaths {
    root: PathBuf,
}

impl WorkerPaths {
    pub fn new(root: &Path) -> Self {
        WorkerPaths { root: root.to_path_buf() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.join("worker.redb")
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.root.join("jobs")
    }

    /// A job's folder; callers pass only ids that [`is_job_id`] accepts.
    pub fn job_dir(&self, job_id: &str) -> PathBuf {
        self.jobs_dir().join(job_id)
    }

    pub fn log_path(&self, job_id: &str) -> PathBuf {
        self.job_dir(job_id).join("worker.log")
    }

    pub fn artifacts_dir(&self, job_id: &str) -> PathBuf {
        self.job_dir(job_id).join("artifacts")
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// Where earlier versions made their spare files (empty files for the
    /// inputs that submissions carry inline); they are made in
    /// [`Self::blobs_dir`] now, and this folder is removed at start.
    pub fn old_spares_dir(&self) -> PathBuf {
        self.root.join("spares")
    }

    /// A staged blob; callers pass only digests that
    /// [`crate::protocol::is_sha256_hex`] accepts.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.blobs_dir().join(sha256)
    }

    /// Free bytes for this user on the disk holding the state folder; `None`
    /// if they cannot be measured.
    pub fn free_bytes(&self) -> Option<u64> {
        crate::steps::disk::free_bytes(&self.root)
    }

    /// Creates the folders.
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.jobs_dir())?;
        std::fs::create_dir_all(self.blobs_dir())
    }

    /// Deletes the temporaries of blob uploads that a crash (or `kill -9`)
    /// interrupted: `.<digest>.<id>.part` files in the blob folder. Call it
    /// only while holding the store, so that no upload can be in progress;
    /// a broken connection is cleaned up by the upload itself, a dead
    /// process is not. Returns how many were removed.
    pub fn remove_upload_leftovers(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.blobs_dir())? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".part") && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_leftovers_are_removed_and_blobs_kept() {
        let dir = tempfile::tempdir().unwrap();
        let paths = WorkerPaths::new(dir.path());
        paths.create().unwrap();
        let digest = "ab".repeat(32);
        std::fs::write(paths.blob_path(&digest), b"kept").unwrap();
        std::fs::write(crate::artifacts::temp_path_for(&paths.blob_path(&digest)), b"half").unwrap();
        assert_eq!(paths.remove_upload_leftovers().unwrap(), 1);
        let names: Vec<_> = std::fs::read_dir(paths.blobs_dir()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(&digest)]);
    }
}
