//! Running external tools (ffprobe, ffmpeg, espeak-ng, powershell, say,
//! piper, OpenClaw) the one safe way.
//!
//! Every child process:
//! - runs with every `RAYVAULT_CLUSTER_SECRET*` variable removed from its
//!   environment, so a tool can never leak the cluster secret;
//! - has its stderr (and stdout, unless the caller captures it) copied line by
//!   line into the job log;
//! - has a timeout, and on timeout or cancellation its whole process tree is
//!   killed: a process group on Unix, a Job Object on Windows;
//! - is awaited asynchronously, so no executor thread ever blocks on it;
//! - dies with the process that started it, even when that one is killed
//!   with `kill -9` (see below), so that a step never goes on running beside
//!   the copy a controller starts elsewhere after losing its worker.
//!
//! Dying with the parent, per platform:
//! - Windows: the Job Object is created with kill-on-close; the kernel
//!   closes its handle when the worker dies, which kills the whole tree.
//! - Linux: the direct child gets a parent-death signal (`PR_SET_PDEATHSIG`,
//!   SIGKILL). The kernel sends it when the *thread* that forked the child
//!   exits, so every child is forked by one long-lived spawner thread
//!   ([`spawner`]), never by a pool thread that may retire.
//! - Every Unix: a parent-death signal reaches only the direct child, not
//!   the rest of its process group, so a small guardian process (`/bin/sh`,
//!   see [`guardian`]) holds the list of live groups and kills them all when
//!   the pipe from its parent reaches end-of-file, which is when the parent
//!   dies, however it dies.
//! - And, for what survives all that (a guardian killed too, a machine
//!   reset halfway): each group is recorded through a [`ChildRegistry`]
//!   while it runs, and [`reap`] kills the groups a dead predecessor
//!   recorded, at start-up.
//!
//! This file holds the API ([`Tool`], [`run_tool`], [`run_detached`], the
//! child records) and the handle that kills a child's tree; the platform
//! parts live in submodules: [`spawner`] (Linux), [`guardian`] (Unix),
//! `windows_job` (the Job Object), `identity` (start times and boot id, to
//! tell a process from a later one with the same pid) and `reaper`
//! ([`ChildGroup`] and [`reap`]).

use crate::error::{ErrorCode, StepError};
use crate::joblog::JobLog;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

#[cfg(unix)]
mod guardian;
mod identity;
mod reaper;
#[cfg(target_os = "linux")]
mod spawner;
#[cfg(all(test, unix))]
pub(crate) mod test_support;
#[cfg(all(test, unix))]
mod tests;
#[cfg(windows)]
mod windows_job;

pub use reaper::{reap, ChildGroup, Reaped};

/// Environment variables whose names start with this prefix are never passed
/// to a child process.
pub const SECRET_ENV_PREFIX: &str = "RAYVAULT_CLUSTER_SECRET";

/// A tool invocation.
#[derive(Debug, Clone)]
pub struct Tool {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Bytes written to the child's stdin, then closed (text for TTS engines
    /// goes here or into a file, never on the command line).
    pub stdin: Option<Vec<u8>>,
    pub cwd: Option<PathBuf>,
    pub timeout: Duration,
    /// Keep stdout in memory (for ffprobe's JSON) instead of logging it.
    pub capture_stdout: bool,
    /// Short name used as the log tag, e.g. `ffprobe`.
    pub label: String,
    /// The error code to report when the program cannot be found.
    pub unavailable_code: ErrorCode,
    /// The error code to report when the tool times out... or fails to run.
    pub failed_code: ErrorCode,
}

impl Tool {
    pub fn new(program: impl Into<OsString>, label: &str) -> Self {
        Tool {
            program: program.into(),
            args: Vec::new(),
            stdin: None,
            cwd: None,
            timeout: Duration::from_secs(300),
            capture_stdout: false,
            label: label.to_string(),
            unavailable_code: ErrorCode::StepUnavailable,
            failed_code: ErrorCode::Internal,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, items: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(items.into_iter().map(Into::into));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn stdin(mut self, bytes: Vec<u8>) -> Self {
        self.stdin = Some(bytes);
        self
    }

    pub fn capture_stdout(mut self) -> Self {
        self.capture_stdout = true;
        self
    }

    pub fn codes(mut self, unavailable: ErrorCode, failed: ErrorCode) -> Self {
        self.unavailable_code = unavailable;
        self.failed_code = failed;
        self
    }
}

/// Where the process groups of running children are written down, so that
/// the next start of a process that died can kill what it left behind
/// ([`reap`]). The worker's store and the controller daemon's store
/// implement it.
pub trait ChildRegistry: Send + Sync {
    /// Records that `group` runs for `owner` (a job id or key).
    fn record(&self, owner: &str, group: &ChildGroup) -> Result<(), String>;
    /// Removes the record once the group is dead.
    fn forget(&self, owner: &str, group: &ChildGroup) -> Result<(), String>;
}

/// A job's link to a [`ChildRegistry`]; carried by its [`JobLog`] so that
/// every tool the job runs is recorded, in whatever task it is started.
#[derive(Clone)]
pub struct ChildTracker {
    owner: String,
    registry: Arc<dyn ChildRegistry>,
}

impl ChildTracker {
    pub fn new(owner: impl Into<String>, registry: Arc<dyn ChildRegistry>) -> Self {
        ChildTracker { owner: owner.into(), registry }
    }

    /// The job the children are recorded for.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    async fn call(&self, group: &ChildGroup, record: bool) {
        let (this, g) = (self.clone(), group.clone());
        let done = tokio::task::spawn_blocking(move || {
            if record {
                this.registry.record(&this.owner, &g)
            } else {
                this.registry.forget(&this.owner, &g)
            }
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(owner = %self.owner, group = group.id, error = %e, "could not update the record of a child process group"),
            Err(e) => tracing::warn!(owner = %self.owner, error = %e, "the child-record task failed"),
        }
    }
}

impl std::fmt::Debug for ChildTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildTracker").field("owner", &self.owner).finish_non_exhaustive()
    }
}

/// What a finished tool left behind.
#[derive(Debug)]
pub struct ToolOutput {
    pub status: ExitStatus,
    /// Captured stdout (empty unless `capture_stdout`).
    pub stdout: Vec<u8>,
    /// The last few stderr lines, for error messages.
    pub stderr_tail: String,
}

impl ToolOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Builds the command with a scrubbed environment. Exposed for tests.
pub fn scrubbed_command(tool: &Tool) -> Command {
    let mut cmd = Command::new(&tool.program);
    cmd.args(&tool.args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(SECRET_ENV_PREFIX) {
            cmd.env_remove(&key);
        }
    }
    if let Some(cwd) = &tool.cwd {
        cmd.current_dir(cwd);
    }
    cmd.stdin(if tool.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped());
    cmd.stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(windows)]
    {
        // CREATE_NO_WINDOW: tools must not flash console windows on the
        // interactive desktop.
        cmd.creation_flags(0x0800_0000);
    }
    cmd
}

/// Starts a program meant to outlive the process that starts it (the
/// browser `rayvault-orchestrator dashboard` opens), with the scrubbed
/// environment of every tool, no input or output, in a process group of its
/// own and not tied to our lifetime; then waits at most `tool.timeout` for
/// it to exit. `Ok(None)` when it still runs by then (it is left running).
pub async fn run_detached(tool: &Tool) -> std::io::Result<Option<ExitStatus>> {
    let mut cmd = scrubbed_command(tool);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(false);
    let mut child = cmd.spawn()?;
    match tokio::time::timeout(tool.timeout, child.wait()).await {
        Ok(status) => status.map(Some),
        Err(_) => Ok(None),
    }
}

/// Runs `tool` to completion, honouring its timeout and `cancel`.
///
/// A non-zero exit is returned as `Ok` with the status so the caller can
/// classify it; only "could not run", timeout and cancellation are errors.
pub async fn run_tool(
    tool: &Tool,
    log: &JobLog,
    cancel: &CancellationToken,
) -> Result<ToolOutput, StepError> {
    let cmd = scrubbed_command(tool);
    log.line("job", &format!("run {} {}", tool.program.to_string_lossy(), describe_args(&tool.args)));
    let mut child = spawn(cmd).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::PermissionDenied {
            StepError::new(
                tool.unavailable_code,
                format!(
                    "{} could not be started ({e}); install it or set its path in the [tools] section of the config",
                    tool.program.to_string_lossy()
                ),
            )
        } else {
            StepError::new(tool.failed_code, format!("{} could not be started: {e}", tool.label))
        }
    })?;
    let tree = ProcessTree::adopt(&child, log.child_tracker().cloned()).await;

    if let (Some(bytes), Some(mut stdin)) = (tool.stdin.clone(), child.stdin.take()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(&bytes).await;
            let _ = stdin.shutdown().await;
        });
    }
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let capture = tool.capture_stdout;
    let out_log = log.clone();
    let out_label = format!("{}:stdout", tool.label);
    let stdout_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(mut out) = stdout {
            if capture {
                let _ = out.read_to_end(&mut buf).await;
            } else {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    out_log.line(&out_label, &line);
                }
            }
        }
        buf
    });
    let err_log = log.clone();
    let err_label = format!("{}:stderr", tool.label);
    let stderr_task = tokio::spawn(async move {
        let mut tail: std::collections::VecDeque<String> = Default::default();
        if let Some(err) = stderr {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                err_log.line(&err_label, &line);
                if tail.len() == 5 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        }
        tail.into_iter().collect::<Vec<_>>().join("\n")
    });

    let outcome = tokio::select! {
        status = child.wait() => Ok(status),
        _ = tokio::time::sleep(tool.timeout) => Err(ErrorCode::Timeout),
        _ = cancel.cancelled() => Err(ErrorCode::Cancelled),
    };
    match outcome {
        Ok(status) => {
            let status = status.map_err(|e| StepError::new(tool.failed_code, format!("{}: {e}", tool.label)))?;
            // The child is gone; kill stragglers it may have left in its group.
            tree.release().await;
            let stdout = stdout_task.await.unwrap_or_default();
            let stderr_tail = stderr_task.await.unwrap_or_default();
            log.line("job", &format!("{} exited with {status}", tool.label));
            Ok(ToolOutput { status, stdout, stderr_tail })
        }
        Err(code) => {
            tree.kill();
            let _ = child.kill().await;
            tree.release().await;
            stdout_task.abort();
            stderr_task.abort();
            let message = if code == ErrorCode::Timeout {
                format!(
                    "{} did not finish within {} s and was killed; raise the step timeout or use a smaller input",
                    tool.label,
                    tool.timeout.as_secs_f64()
                )
            } else {
                format!("{} was cancelled and its process tree killed", tool.label)
            };
            log.line("job", &message);
            Err(StepError::new(code, message))
        }
    }
}

/// Describes arguments for the log without ever printing text payloads: the
/// callers never put secrets or user text on the command line, so arguments
/// are safe to show.
fn describe_args(args: &[OsString]) -> String {
    args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

/// Starts `cmd`. On Linux the fork happens on the spawner thread, with a
/// parent-death signal; elsewhere here.
async fn spawn(cmd: Command) -> std::io::Result<tokio::process::Child> {
    #[cfg(target_os = "linux")]
    {
        spawner::spawn(cmd).await
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut cmd = cmd;
        cmd.spawn()
    }
}

/// A handle able to kill a child and everything it started, which also
/// keeps the group known to the guardian and to the job's [`ChildTracker`]
/// while it may be alive.
struct ProcessTree {
    #[cfg(unix)]
    pgid: Option<i32>,
    #[cfg(windows)]
    job: Option<windows_job::JobHandle>,
    /// The recorded group and where it is recorded, until released.
    record: Option<(ChildGroup, Option<ChildTracker>)>,
}

impl ProcessTree {
    async fn adopt(child: &tokio::process::Child, tracker: Option<ChildTracker>) -> Self {
        // The guardian (Unix) or the Job Object (Windows) first: they are
        // what kills the tree if this process dies in the next moment.
        #[cfg(unix)]
        let tree = {
            let pgid = child.id().map(|id| id as i32);
            if let Some(pgid) = pgid {
                guardian::watch(pgid);
            }
            ProcessTree { pgid, record: None }
        };
        #[cfg(windows)]
        let tree = ProcessTree { job: child.raw_handle().and_then(windows_job::JobHandle::assign), record: None };
        #[cfg(not(any(unix, windows)))]
        let tree = ProcessTree { record: None };
        let mut tree = tree;
        let group = child.id().map(ChildGroup::of);
        if let Some(group) = group {
            if let Some(t) = &tracker {
                t.call(&group, true).await;
            }
            tree.record = Some((group, tracker));
        }
        tree
    }

    fn kill(&self) {
        #[cfg(unix)]
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg only sends a signal; a stale group id is harmless
            // (ESRCH), and the group was created for this child alone.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
        #[cfg(windows)]
        if let Some(job) = &self.job {
            job.terminate();
        }
    }

    /// Kills what is left of the tree and removes its records.
    async fn release(mut self) {
        self.kill();
        #[cfg(unix)]
        if let Some(pgid) = self.pgid.take() {
            guardian::unwatch(pgid);
        }
        if let Some((group, Some(tracker))) = self.record.take() {
            tracker.call(&group, false).await;
        }
    }
}

/// A tree dropped without [`ProcessTree::release`] (its task was aborted)
/// is killed all the same, and its record removed in the background.
impl Drop for ProcessTree {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: as in `kill`.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
            guardian::unwatch(pgid);
        }
        if let Some((group, Some(tracker))) = self.record.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { tracker.call(&group, false).await });
            }
        }
    }
}
