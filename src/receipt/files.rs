//! The receipt on disk: `job_receipt.json` in a job's receipt folder
//! ([`super::receipt_dir`]), written atomically, made ahead while the job
//! runs ([`prepare_folder`]), and kept in memory while the disk is full
//! ([`write_pending`]).

use super::{Receipt, LOG_FILE, RECEIPT_FILE};
use std::path::{Path, PathBuf};

/// Receipts that could not be written because the disk was full, with
/// their folders, oldest first. A controller keeps them for as long as it
/// runs and writes them when space returns ([`write_pending`]): the daemon
/// tries every few seconds, a one-shot `submit` before it exits.
static PENDING: std::sync::Mutex<Vec<(PathBuf, Receipt)>> = std::sync::Mutex::new(Vec::new());

/// Tries to write every kept receipt again; answers how many are still
/// waiting for space. Does file I/O: call it from a blocking context.
pub fn write_pending() -> usize {
    let Ok(mut pending) = PENDING.lock() else { return 0 };
    pending.retain(|(dir, receipt)| match receipt.write(dir) {
        Ok(path) => {
            tracing::info!(path = %path.display(), "wrote a receipt kept while the disk was full");
            false
        }
        Err(_) => true,
    });
    pending.len()
}

/// The folders of the receipts still waiting for space.
pub fn pending_dirs() -> Vec<PathBuf> {
    PENDING.lock().map(|p| p.iter().map(|(d, _)| d.clone()).collect()).unwrap_or_default()
}

/// Empty temporary files made ahead of time for receipts and logs, by
/// folder and final name (see [`prepare_folder`]).
static PREPARED: std::sync::Mutex<Vec<(PathBuf, &'static str, PathBuf, std::fs::File)>> = std::sync::Mutex::new(Vec::new());

/// The files [`prepare_folder`] makes ahead: the receipt and the worker's
/// log, both written after the job ends.
const MADE_AHEAD: [&str; 2] = [RECEIPT_FILE, LOG_FILE];

/// Makes a job's receipt folder while the job runs, with (when `file`)
/// empty temporary files that the receipt and the worker's log are later
/// written into and renamed from: creating a file allocates an inode,
/// which on some filesystems is the slowest step between a short job's end
/// and its answer (ext4 without a journal, for one, checks each candidate
/// inode against the ones deleted in the last minutes), and here it happens
/// while the job runs. The writers take them ([`Receipt::write`],
/// [`Receipt::write_unsynced`], [`write_log_unsynced`]); when none was made
/// they create their own. Blocking.
pub fn prepare_folder(dir: &Path, file: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if file {
        for name in MADE_AHEAD {
            let tmp = crate::artifacts::temp_path_for(&dir.join(name));
            let f = std::fs::File::create(&tmp)?;
            // One per folder and name: a run of the key dropped before its
            // end (a JobRunner restart) leaves its file for the run that
            // replaces it.
            if let Some((old, _)) = take_prepared(dir, name) {
                let _ = std::fs::remove_file(old);
            }
            if let Ok(mut prepared) = PREPARED.lock() {
                prepared.push((dir.to_path_buf(), name, tmp, f));
            }
        }
    }
    Ok(())
}

/// The temporary file made for `name` in `dir`, if there is one.
fn take_prepared(dir: &Path, name: &str) -> Option<(PathBuf, std::fs::File)> {
    let mut prepared = PREPARED.lock().ok()?;
    let at = prepared.iter().position(|(d, n, _, _)| d == dir && *n == name)?;
    let (_, _, tmp, f) = prepared.swap_remove(at);
    Some((tmp, f))
}

/// Writes `bytes` into the file made ahead for `dir`'s receipt (synced when
/// `sync`) and renames it to `path`; `None` when there is no such file.
/// The log's file made ahead is of no more use once the receipt is
/// written (a log is written before its receipt): it is removed.
fn write_prepared(dir: &Path, path: &Path, bytes: &[u8], sync: bool) -> Option<std::io::Result<()>> {
    if let Some((unused, _)) = take_prepared(dir, LOG_FILE) {
        let _ = std::fs::remove_file(unused);
    }
    let (tmp, f) = take_prepared(dir, RECEIPT_FILE)?;
    Some(crate::artifacts::finish_temp(&tmp, f, path, bytes, sync))
}

/// Writes a job's log, `path` (`worker.log` in a receipt folder), without
/// a sync: into the file made ahead for it while the job ran when there is
/// one (then no inode is allocated between the job's end and its answer),
/// else into a new temporary file; renamed into place either way, so a
/// reader never sees half a log. Blocking.
pub fn write_log_unsynced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let made = path.parent().filter(|_| path.file_name().is_some_and(|n| n == LOG_FILE)).and_then(|dir| take_prepared(dir, LOG_FILE));
    match made {
        Some((tmp, f)) => crate::artifacts::finish_temp(&tmp, f, path, bytes, false),
        None => crate::artifacts::write_replace_unsynced(path, bytes),
    }
}

/// Makes a receipt's name durable: syncs its folder `dir`, and (best
/// effort) the run's folder and `receipts/` above it, which a new job's
/// folder may just have been made in. A no-op on Windows, where NTFS
/// journals names itself.
fn sync_names(dir: &Path) -> std::io::Result<()> {
    crate::artifacts::sync_dir(dir)?;
    for up in dir.ancestors().skip(1).take(2) {
        let _ = crate::artifacts::sync_dir(up);
    }
    Ok(())
}

/// Deletes the files made ahead for receipts in `dir` that no writer here
/// will take: those a process killed mid-job left behind. Called where a
/// receipt is written without one, so that a resumed job's folder ends up
/// clean.
fn remove_stale_prepared(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefixes = MADE_AHEAD.map(|n| format!(".{n}."));
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) && name.ends_with(".part") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Receipt {
    /// The bytes of `job_receipt.json`: pretty JSON and a final newline.
    pub fn file_bytes(&self) -> std::io::Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Writes the receipt atomically and durably into `dir` (temporary
    /// file, sync to disk, rename, then the folders that name it synced:
    /// where no store holds the receipt, as in a one-shot `submit`, the
    /// file is the job's only record, and a rename reaches the disk only
    /// with its folder).
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join(RECEIPT_FILE);
        let bytes = self.file_bytes()?;
        if let Some(Ok(())) = write_prepared(dir, &path, &bytes, true) {
            sync_names(dir)?;
            return Ok(path);
        }
        remove_stale_prepared(dir);
        std::fs::create_dir_all(dir)?;
        crate::artifacts::write_atomic(&path, &bytes)?;
        sync_names(dir)?;
        Ok(path)
    }

    /// Writes the receipt into `dir` without a sync to disk: into the file
    /// made ahead for it and renamed, else with one write, creating the
    /// folders only when they are missing. For a writer that
    /// holds the durable copy elsewhere (the daemon's store) and writes the
    /// file again when it is missing or differs.
    pub fn write_unsynced(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join(RECEIPT_FILE);
        let bytes = self.file_bytes()?;
        // Into the file made ahead and renamed: a reader never sees half a
        // receipt. Any failure there is met again just below.
        if let Some(Ok(())) = write_prepared(dir, &path, &bytes, false) {
            return Ok(path);
        }
        remove_stale_prepared(dir);
        let written = match std::fs::write(&path, &bytes) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, &bytes)),
            other => other,
        };
        if let Err(e) = written {
            // No partial receipt stays behind (a full disk, say).
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }

    /// Writes the receipt like [`Receipt::write`]; when that fails because
    /// the disk is full, keeps it in memory (see [`write_pending`]) so that
    /// it is written once space returns, and still reports the error.
    pub fn write_or_keep(&self, dir: &Path) -> std::io::Result<PathBuf> {
        self.keep_if_disk_full(dir, self.write(dir))
    }

    /// [`Receipt::write_unsynced`], keeping the receipt in memory when the
    /// disk is full like [`Receipt::write_or_keep`].
    pub fn write_unsynced_or_keep(&self, dir: &Path) -> std::io::Result<PathBuf> {
        self.keep_if_disk_full(dir, self.write_unsynced(dir))
    }

    fn keep_if_disk_full(&self, dir: &Path, written: std::io::Result<PathBuf>) -> std::io::Result<PathBuf> {
        match written {
            Err(e) if crate::error::is_disk_full(&e) => {
                if let Ok(mut pending) = PENDING.lock() {
                    pending.retain(|(d, _)| d != dir);
                    pending.push((dir.to_path_buf(), self.clone()));
                }
                Err(e)
            }
            other => other,
        }
    }

    /// Reads a receipt written by [`Receipt::write`].
    pub fn read(dir: &Path) -> std::io::Result<Receipt> {
        let bytes = std::fs::read(dir.join(RECEIPT_FILE))?;
        serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_goes_into_the_file_made_ahead_and_is_renamed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("receipts/r/j");
        let names = |d: &Path| {
            let mut n: Vec<String> = std::fs::read_dir(d).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            n.sort();
            n
        };
        prepare_folder(&dir, true).unwrap();
        // Made again (a run that replaced one dropped mid-way): one file
        // for the receipt and one for the log.
        prepare_folder(&dir, true).unwrap();
        let made = names(&dir);
        assert_eq!(made.len(), 2, "{made:?}");
        assert!(made[0].starts_with(".job_receipt.json.") && made[0].ends_with(".part"), "{made:?}");
        assert!(made[1].starts_with(".worker.log.") && made[1].ends_with(".part"), "{made:?}");
        // The log goes into its file, then the receipt into its own.
        write_log_unsynced(&dir.join(LOG_FILE), b"line\n").unwrap();
        assert_eq!(names(&dir).len(), 2, "the log's file was renamed, no other made: {:?}", names(&dir));
        let path = dir.join(RECEIPT_FILE);
        assert!(write_prepared(&dir, &path, b"{\"a\": 1}\n", false).unwrap().is_ok());
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\": 1}\n");
        assert_eq!(std::fs::read(dir.join(LOG_FILE)).unwrap(), b"line\n");
        assert_eq!(names(&dir), vec![RECEIPT_FILE.to_string(), LOG_FILE.to_string()], "nothing else is left in the folder");
        // Taken once: the next write has none and makes its own.
        assert!(write_prepared(&dir, &path, b"{}", true).is_none());
        write_log_unsynced(&dir.join(LOG_FILE), b"again\n").unwrap();
        assert_eq!(std::fs::read(dir.join(LOG_FILE)).unwrap(), b"again\n");
        // A job whose log was not fetched (it ran locally, say): the log's
        // file made ahead goes when the receipt is written.
        let local = root.path().join("receipts/r/local");
        prepare_folder(&local, true).unwrap();
        assert!(write_prepared(&local, &local.join(RECEIPT_FILE), b"{}", false).unwrap().is_ok());
        assert_eq!(names(&local), vec![RECEIPT_FILE.to_string()]);
        // Files a killed process made ahead are removed where a receipt is
        // written without one.
        std::fs::write(dir.join(".job_receipt.json.0123456789ab.part"), b"").unwrap();
        std::fs::write(dir.join(".worker.log.0123456789ab.part"), b"").unwrap();
        remove_stale_prepared(&dir);
        assert_eq!(names(&dir), vec![RECEIPT_FILE.to_string(), LOG_FILE.to_string()]);
        // A folder made without the file, and one that cannot be made.
        let other = root.path().join("receipts/r/k");
        prepare_folder(&other, false).unwrap();
        assert!(names(&other).is_empty());
        std::fs::write(root.path().join("blocker"), b"").unwrap();
        assert!(prepare_folder(&root.path().join("blocker/j"), true).is_err());
    }
}
