//! Job progress on stderr, for `submit` and `wait`.
//!
//! On a terminal: an `indicatif` spinner with the elapsed time and the job's
//! current phase line (staging, running, syncing; with the sizes the job
//! runner reports). Elsewhere (a log file, a pipe): plain lines, at most one
//! a second; lines that arrive faster are coalesced, the latest one winning,
//! but the last line is always printed at the end. Quiet: nothing.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often plain progress may print a line.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// Plain lines starting with this are printed even when they come fast.
pub const KEEP_PREFIX: &str = "ran locally:";

/// The spinner on screen, if any: other stderr output (log lines) is
/// written with it cleared, so that the two do not mix on one line.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Runs `f` (which writes to stderr) with the spinner, if any, cleared.
fn suspended<R>(f: impl FnOnce() -> R) -> R {
    let bar = ACTIVE_BAR.lock().ok().and_then(|b| b.clone());
    match bar {
        Some(bar) => bar.suspend(f),
        None => f(),
    }
}

/// stderr for log lines: each write is made with the spinner cleared.
pub struct StderrBelowSpinner;

impl std::io::Write for StderrBelowSpinner {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        suspended(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Where progress goes.
enum Sink {
    Bar(ProgressBar),
    Plain(Plain),
    Quiet,
}

/// Coalescing state of plain progress.
struct Plain {
    last_printed: Option<Instant>,
    /// The newest line not printed yet.
    pending: Option<String>,
    /// Prints one line (stderr; a buffer in tests).
    write: Box<dyn FnMut(&str) + Send>,
}

impl Plain {
    fn print(&mut self, key: &str, line: &str) {
        (self.write)(&format!("[{key}] {line}"));
    }
}

/// Progress of one job on stderr; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Progress {
    key: String,
    sink: Arc<Mutex<Sink>>,
}

impl Progress {
    /// A spinner when stderr is a terminal, plain lines otherwise, nothing when `quiet`.
    pub fn new(key: &str, quiet: bool) -> Progress {
        let sink = if quiet {
            Sink::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {prefix} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(key.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            if let Ok(mut active) = ACTIVE_BAR.lock() {
                *active = Some(bar.clone());
            }
            Sink::Bar(bar)
        } else {
            Sink::Plain(Plain { last_printed: None, pending: None, write: Box::new(|l| eprintln!("{l}")) })
        };
        Progress { key: key.to_string(), sink: Arc::new(Mutex::new(sink)) }
    }

    /// Plain progress written through `write` (for tests).
    #[cfg(test)]
    fn plain_to(key: &str, write: impl FnMut(&str) + Send + 'static) -> Progress {
        let sink = Sink::Plain(Plain { last_printed: None, pending: None, write: Box::new(write) });
        Progress { key: key.to_string(), sink: Arc::new(Mutex::new(sink)) }
    }

    /// Reports the job's current phase line.
    pub fn line(&self, line: &str) {
        let Ok(mut sink) = self.sink.lock() else { return };
        match &mut *sink {
            Sink::Bar(bar) => bar.set_message(line.to_string()),
            Sink::Plain(p) if line.starts_with(KEEP_PREFIX) => {
                // Never coalesced away: print what was pending, then it.
                if let Some(old) = p.pending.take() {
                    p.print(&self.key, &old);
                }
                p.last_printed = Some(Instant::now());
                p.print(&self.key, line);
            }
            Sink::Plain(p) => {
                if p.last_printed.map_or(true, |t| t.elapsed() >= PLAIN_EVERY) {
                    p.pending = None;
                    p.last_printed = Some(Instant::now());
                    p.print(&self.key, line);
                } else {
                    p.pending = Some(line.to_string());
                }
            }
            Sink::Quiet => {}
        }
    }

    /// Prints a coalesced line once its second has passed; call it
    /// regularly (see [`Progress::spawn_ticker`]).
    pub fn tick(&self) {
        let Ok(mut sink) = self.sink.lock() else { return };
        if let Sink::Plain(p) = &mut *sink {
            if p.last_printed.map_or(true, |t| t.elapsed() >= PLAIN_EVERY) {
                if let Some(line) = p.pending.take() {
                    p.last_printed = Some(Instant::now());
                    p.print(&self.key, &line);
                }
            }
        }
    }

    /// On a terminal, shows beside the phase line how many bytes the job's
    /// receipt folder holds and how fast that grows: the artifacts being
    /// downloaded (or written by a local run) into it. Samples every 500 ms.
    pub fn watch_folder(&self, dir: std::path::PathBuf) {
        let bar = match self.sink.lock().as_deref() {
            Ok(Sink::Bar(bar)) => bar.clone(),
            _ => return,
        };
        let key = self.key.clone();
        actix::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(500));
            let mut last: Option<(u64, Instant)> = None;
            while !bar.is_finished() {
                every.tick().await;
                let d = dir.clone();
                let Ok(size) = tokio::task::spawn_blocking(move || folder_bytes(&d)).await else { return };
                let now = Instant::now();
                let rate = match last {
                    Some((before, at)) if size > before => Some((size - before) as f64 / now.duration_since(at).as_secs_f64().max(0.001)),
                    _ => None,
                };
                last = Some((size, now));
                bar.set_prefix(match (size, rate) {
                    (0, _) => key.clone(),
                    (n, Some(r)) => format!("{key} · {} at {}/s", bytes(n), bytes(r as u64)),
                    (n, None) => format!("{key} · {}", bytes(n)),
                });
            }
        });
    }

    /// Ticks every 200 ms on the current actix/tokio runtime.
    pub fn spawn_ticker(&self) {
        let me = self.clone();
        actix::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                every.tick().await;
                me.tick();
            }
        });
    }

    /// Prints a line at once, above the spinner (for what must not be
    /// coalesced away, e.g. a warning about the daemon).
    pub fn note(&self, line: &str) {
        let Ok(mut sink) = self.sink.lock() else { return };
        match &mut *sink {
            Sink::Bar(bar) => bar.println(format!("[{}] {line}", self.key)),
            Sink::Plain(p) => p.print(&self.key, line),
            Sink::Quiet => {}
        }
    }

    /// Ends the display: clears the spinner, or prints the last coalesced line.
    pub fn finish(&self) {
        let Ok(mut sink) = self.sink.lock() else { return };
        match &mut *sink {
            Sink::Bar(bar) => {
                bar.finish_and_clear();
                if let Ok(mut active) = ACTIVE_BAR.lock() {
                    *active = None;
                }
            }
            Sink::Plain(p) => {
                if let Some(line) = p.pending.take() {
                    p.print(&self.key, &line);
                }
            }
            Sink::Quiet => {}
        }
        *sink = Sink::Quiet;
    }
}

/// The total size of the files in `dir` (not recursive; partial downloads included).
fn folder_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}

/// A byte count for people: `812 B`, `4.2 KB`, `12.3 MB`, `1.1 GB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured() -> (Progress, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        (Progress::plain_to("r/j", move |l| sink.lock().unwrap().push(l.to_string())), lines)
    }

    #[test]
    fn plain_lines_are_coalesced_to_one_a_second_and_the_last_is_kept() {
        let (p, lines) = captured();
        for i in 0..50 {
            p.line(&format!("step {i}"));
        }
        assert_eq!(*lines.lock().unwrap(), ["[r/j] step 0"], "only the first line of the second is printed at once");
        p.tick();
        assert_eq!(lines.lock().unwrap().len(), 1, "a tick within the second prints nothing");
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines.lock().unwrap().len() < 2 {
            assert!(Instant::now() < deadline, "the coalesced line was never printed");
            std::thread::sleep(Duration::from_millis(20));
            p.tick();
        }
        assert_eq!(lines.lock().unwrap()[1], "[r/j] step 49", "the latest line wins");
        p.line("syncing");
        p.line("done");
        p.finish();
        assert_eq!(lines.lock().unwrap().last().unwrap(), "[r/j] done", "the final line is never dropped");
        p.line("after the end");
        assert!(!lines.lock().unwrap().iter().any(|l| l.contains("after the end")));
    }

    #[test]
    fn byte_counts_read_like_sizes() {
        for (n, want) in [(0, "0 B"), (812, "812 B"), (4_200, "4.2 KB"), (12_345_678, "12.3 MB"), (1_100_000_000, "1.1 GB")] {
            assert_eq!(bytes(n), want);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.part"), vec![0u8; 1500]).unwrap();
        std::fs::write(dir.path().join("b.wav"), vec![0u8; 500]).unwrap();
        assert_eq!(folder_bytes(dir.path()), 2000);
        assert_eq!(folder_bytes(&dir.path().join("missing")), 0);
    }

    #[test]
    fn ran_locally_lines_are_never_coalesced() {
        let (p, lines) = captured();
        p.line("probing");
        p.line("placing on w1");
        p.line("ran locally: w1 unreachable (connection refused)");
        p.line("running");
        p.finish();
        assert_eq!(
            *lines.lock().unwrap(),
            ["[r/j] probing", "[r/j] placing on w1", "[r/j] ran locally: w1 unreachable (connection refused)", "[r/j] running"]
        );
    }
}
