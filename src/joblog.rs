//! The per-job log (`worker.log`): lifecycle lines plus the output of every
//! child process the step runs.
//!
//! Lines are appended with a UTC timestamp. Writes are small and go straight
//! to the file so that the log endpoint can tail a running job.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A cheap, cloneable handle on one job's log file.
#[derive(Clone, Debug)]
pub struct JobLog {
    inner: Arc<Mutex<File>>,
    /// Where the job's child process groups are recorded while they run.
    children: Option<crate::process::ChildTracker>,
    /// Where `progress` lines also go as they are written (the controller's
    /// LocalRunner passes them to `submit`'s progress display).
    progress: Option<ProgressSink>,
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
        Ok(JobLog { inner: Arc::new(Mutex::new(file)), children: None, progress: None })
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
        let mut f = match self.inner.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A log write failure must never fail the job; the job's result is
        // what matters, and the store records it separately.
        let _ = writeln!(f, "{stamp} [{source}] {text}");
        drop(f);
        if let (PROGRESS_SOURCE, Some(sink)) = (source, &self.progress) {
            (sink.0)(text);
        }
    }
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

    #[test]
    fn utc_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(format_utc(t), "2023-11-14T22:13:20.123Z");
    }
}
