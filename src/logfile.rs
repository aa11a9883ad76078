//! Log files that rotate by size, and the tracing set-up both binaries use.
//!
//! A service runs for months, so its log file must not grow without bound.
//! [`RotatingFile`] appends to `<name>.log`; when the next write would take
//! it past `max_bytes`, it renames `<name>.log` to `<name>.log.1` (and each
//! older `.N` to `.N+1`, dropping the oldest) and starts a new file. The
//! defaults keep five files of 10 MiB. `tracing-appender` rotates by time
//! only, which lets one busy day fill a disk.
//!
//! One tracing event is written with a single `write` call, so rotation
//! never splits an event between two files.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Largest size of one log file before it rotates (10 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Files kept, the current one included (`x.log`, `x.log.1` .. `x.log.4`).
pub const DEFAULT_FILES: usize = 5;

/// An append-only file rotated by size; shared by reference between
/// threads (every write takes a short lock).
#[derive(Debug)]
pub struct RotatingFile {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// None only while rotating (Windows cannot rename an open file), or
    /// after a rotation failed to open the new file.
    file: Option<File>,
    /// Bytes in the current file, counted as written (the file is opened in
    /// append mode, so the count starts at its length).
    size: u64,
    max_bytes: u64,
    files: usize,
}

impl RotatingFile {
    /// Opens (creating it and its folder if needed) `path` for appending,
    /// rotating at `max_bytes` and keeping `files` files in all.
    pub fn open(path: &Path, max_bytes: u64, files: usize) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        let inner = Inner { path: path.to_path_buf(), file: Some(file), size, max_bytes: max_bytes.max(1), files: files.max(1) };
        Ok(RotatingFile { inner: Mutex::new(inner) })
    }

    /// The file being written.
    pub fn path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a usable file behind.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    /// Shifts `x.log.N` to `x.log.N+1` (the oldest is removed), `x.log` to
    /// `x.log.1`, and opens a new, empty `x.log`.
    fn rotate(&mut self) -> io::Result<()> {
        if let Some(f) = &mut self.file {
            f.flush()?;
        }
        if self.files == 1 {
            self.file = Some(OpenOptions::new().write(true).truncate(true).open(&self.path)?);
            self.size = 0;
            return Ok(());
        }
        let numbered = |n: usize| {
            let mut s = self.path.as_os_str().to_os_string();
            s.push(format!(".{n}"));
            PathBuf::from(s)
        };
        let oldest = numbered(self.files - 1);
        match std::fs::remove_file(&oldest) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..self.files - 1).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        // Windows cannot rename a file that is open: close it first.
        self.file = None;
        let renamed = std::fs::rename(&self.path, numbered(1));
        self.file = Some(open_append(&self.path)?);
        renamed?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Write for &RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = self.lock();
        if inner.size > 0 && inner.size + buf.len() as u64 > inner.max_bytes {
            // A failed rotation must not lose the line: keep appending to
            // the current file and try again on the next write.
            if let Err(e) = inner.rotate() {
                let _ = writeln!(io::stderr(), "log rotation of {} failed: {e}", inner.path.display());
            }
        }
        if inner.file.is_none() {
            inner.file = Some(open_append(&inner.path)?);
        }
        if let Some(f) = &mut inner.file {
            f.write_all(buf)?;
        }
        inner.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.lock().file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

/// The tracing writer for a shared [`RotatingFile`].
#[derive(Debug, Clone)]
pub struct FileWriter(pub Arc<RotatingFile>);

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for FileWriter {
    type Writer = FileWriter;

    fn make_writer(&'a self) -> FileWriter {
        self.clone()
    }
}

/// Installs the global tracing subscriber: `RUST_LOG` (else
/// `default_level`) filters; events go to `file` (without colours) and,
/// when `stderr` is true, to stderr (coloured on a terminal).
pub fn init_tracing(default_level: &str, file: Option<Arc<RotatingFile>>, stderr: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let file_layer = file.map(|f| tracing_subscriber::fmt::layer().with_writer(FileWriter(f)).with_ansi(false));
    let stderr_layer = stderr.then(|| {
        tracing_subscriber::fmt::layer().with_writer(io::stderr).with_ansi(io::stderr().is_terminal())
    });
    tracing_subscriber::registry().with(filter).with(file_layer).with(stderr_layer).init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/x.log");
        let log = RotatingFile::open(&path, 100, 3).unwrap();
        // 30-byte lines: three fit in 100 bytes, the fourth rotates.
        for i in 0..10 {
            (&log).write_all(format!("line {i:02} ....................\n").as_bytes()).unwrap();
        }
        let name = |suffix: &str| dir.path().join(format!("logs/x.log{suffix}"));
        assert_eq!(read(name("")).lines().count(), 1, "line 09 starts the fourth file");
        assert!(read(name("")).starts_with("line 09"));
        assert!(read(name(".1")).starts_with("line 06"), "{}", read(name(".1")));
        assert!(read(name(".2")).starts_with("line 03"), "{}", read(name(".2")));
        assert!(!name(".3").exists(), "only three files are kept");
        for suffix in ["", ".1", ".2"] {
            assert!(std::fs::metadata(name(suffix)).unwrap().len() <= 100);
        }
    }

    #[test]
    fn reopening_appends_and_counts_the_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.log");
        std::fs::write(&path, "x".repeat(90)).unwrap();
        let log = RotatingFile::open(&path, 100, 2).unwrap();
        (&log).write_all(b"twenty bytes here..\n").unwrap();
        assert_eq!(read(path.clone()), "twenty bytes here..\n");
        assert_eq!(read(dir.path().join("y.log.1")).len(), 90);
        // A single write larger than the limit still lands whole.
        let big = "z".repeat(250);
        (&log).write_all(big.as_bytes()).unwrap();
        assert_eq!(read(path), big);
    }

    #[test]
    fn one_file_means_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.log");
        let log = RotatingFile::open(&path, 10, 1).unwrap();
        (&log).write_all(b"12345678\n").unwrap();
        (&log).write_all(b"abc\n").unwrap();
        assert_eq!(read(path), "abc\n");
        assert!(!dir.path().join("z.log.1").exists());
    }
}
