//! The per-job log (`worker.log`): lifecycle lines plus the output of every
//! child process the step runs.
//!
//! Lines are appended with a UTC timestamp. A log opened with
//! [`JobLog::buffered`] (the worker's jobs) starts in memory and moves to
//! its file only when it grows past [`crate::protocol::MAX_INLINE_LOG`]
//! bytes, so that a short job creates no file or folder at all; the worker
//! keeps the finished job's small log in its job record. Other logs write
//! straight to their file. Either way the log endpoint can tail a running
//! job.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A cheap, cloneable handle on one job's log file.
#[derive(Clone, Debug)]
pub struct JobLog {
    inner: Arc<Mutex<Sink>>,
    path: PathBuf,
    /// Where the job's child process groups are recorded while they run.
    children: Option<crate::process::ChildTracker>,
    /// Where `progress` lines also go as they are written (the controller's
    /// LocalRunner passes them to `submit`'s progress display).
    progress: Option<ProgressSink>,
}

/// Where a log's lines go.
#[derive(Debug)]
enum Sink {
    File(File),
    /// Held in memory until they pass `limit` bytes; then the file at the
    /// log's path is created (with its folder) and takes them.
    Memory { buf: Vec<u8>, limit: usize },
    /// The file could not be created when the memory buffer overflowed:
    /// later lines are dropped (a log write never fails a job).
    Lost,
}

/// The source of the log lines that count a step's work done (`chunk 3/10`,
/// `frame 4/20`, `file 2/5`); the controller shows them as progress, for a
/// local run as it happens and for a remote one from the worker's log.
pub const PROGRESS_SOURCE: &str = "progress";

/// A receiver of progress lines.
#[derive(Clone)]
pub struct ProgressSink(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// The text of a `progress` line of a job log (`<time> [progress] <text>`).
pub fn progress_text(line: &str) -> Option<&str> {
    line.split_once(" [progress] ").map(|(_, text)| text.trim_end())
}

impl JobLog {
    /// Opens (creating or appending to) the log at `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JobLog { inner: Arc::new(Mutex::new(Sink::File(file))), path: path.to_path_buf(), children: None, progress: None })
    }

    /// A log held in memory while it is at most `limit` bytes; the file at
    /// `path` (and its folder) is created only when it grows past that.
    /// Creates nothing on disk.
    pub fn buffered(path: &Path, limit: usize) -> Self {
        JobLog {
            inner: Arc::new(Mutex::new(Sink::Memory { buf: Vec::new(), limit })),
            path: path.to_path_buf(),
            children: None,
            progress: None,
        }
    }

    /// The whole log while it is held in memory; `None` once it is in its
    /// file (read it there).
    pub fn in_memory(&self) -> Option<Vec<u8>> {
        match &*self.inner.lock().unwrap_or_else(|p| p.into_inner()) {
            Sink::Memory { buf, .. } => Some(buf.clone()),
            _ => None,
        }
    }

    /// Records every child process the job starts through this log in
    /// `tracker` while it runs (see [`crate::process::reap`]).
    pub fn tracking_children(mut self, tracker: crate::process::ChildTracker) -> Self {
        self.children = Some(tracker);
        self
    }

    /// Also hands every `progress` line to `sink`.
    pub fn with_progress(mut self, sink: ProgressSink) -> Self {
        self.progress = Some(sink);
        self
    }

    /// Writes a `progress` line: `done` of `total` `item`s ("chunk 3/10").
    pub fn progress(&self, item: &str, done: usize, total: usize) {
        self.line(PROGRESS_SOURCE, &format!("{item} {done}/{total}"));
    }

    pub fn child_tracker(&self) -> Option<&crate::process::ChildTracker> {
        self.children.as_ref()
    }

    /// Appends one line, prefixed with the time and a source tag such as
    /// `job`, `ffprobe:stderr`.
    pub fn line(&self, source: &str, text: &str) {
        let stamp = format_utc(SystemTime::now());
        let text = text.trim_end_matches(['\n', '\r']);
        let line = format!("{stamp} [{source}] {text}\n");
        let mut sink = match self.inner.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A log write failure must never fail the job; the job's result is
        // what matters, and the store records it separately.
        match &mut *sink {
            Sink::File(f) => {
                let _ = f.write_all(line.as_bytes());
            }
            Sink::Memory { buf, limit } if buf.len() + line.len() <= *limit => buf.extend_from_slice(line.as_bytes()),
            Sink::Memory { buf, .. } => {
                let mut held = std::mem::take(buf);
                held.extend_from_slice(line.as_bytes());
                *sink = match spill(&self.path, &held) {
                    Ok(f) => Sink::File(f),
                    Err(_) => Sink::Lost,
                };
            }
            Sink::Lost => {}
        }
        drop(sink);
        if let (PROGRESS_SOURCE, Some(sink)) = (source, &self.progress) {
            (sink.0)(text);
        }
    }
}

/// Creates the log's file (and folder) holding `held`, for appending.
fn spill(path: &Path, held: &[u8]) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(held)?;
    Ok(f)
}

/// Formats a time as RFC 3339 UTC with milliseconds, without a date crate.
pub fn format_utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A buffered log creates nothing until it passes its limit, then
    /// moves everything into its file, in order.
    #[test]
    fn a_buffered_log_spills_to_its_file_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job").join("worker.log");
        let log = JobLog::buffered(&path, 200);
        log.line("worker", "one");
        log.line("worker", "two");
        assert!(!path.parent().unwrap().exists(), "no folder for a short log");
        let held = String::from_utf8(log.in_memory().unwrap()).unwrap();
        assert!(held.ends_with("[worker] one\n") || held.contains("[worker] one\n"), "{held}");
        for i in 0..5 {
            log.line("worker", &format!("line {i} {}", "x".repeat(40)));
        }
        assert!(log.in_memory().is_none());
        let text = std::fs::read_to_string(&path).unwrap();
        let order: Vec<&str> = text.lines().map(|l| l.split_once("] ").unwrap().1).collect();
        assert_eq!(order[0], "one");
        assert_eq!(order[1], "two");
        assert_eq!(order.len(), 7);
    }

    #[test]
    fn utc_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(format_utc(t), "2023-11-14T22:13:20.123Z");
    }
}
