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
//! - is awaited asynchronously, so no executor thread ever blocks on it.

use crate::error::{ErrorCode, StepError};
use crate::joblog::JobLog;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

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

/// Runs `tool` to completion, honouring its timeout and `cancel`.
///
/// A non-zero exit is returned as `Ok` with the status so the caller can
/// classify it; only "could not run", timeout and cancellation are errors.
pub async fn run_tool(
    tool: &Tool,
    log: &JobLog,
    cancel: &CancellationToken,
) -> Result<ToolOutput, StepError> {
    let mut cmd = scrubbed_command(tool);
    log.line("job", &format!("run {} {}", tool.program.to_string_lossy(), describe_args(&tool.args)));
    let mut child = cmd.spawn().map_err(|e| {
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
    let tree = ProcessTree::adopt(&child);

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
            tree.kill();
            let stdout = stdout_task.await.unwrap_or_default();
            let stderr_tail = stderr_task.await.unwrap_or_default();
            log.line("job", &format!("{} exited with {status}", tool.label));
            Ok(ToolOutput { status, stdout, stderr_tail })
        }
        Err(code) => {
            tree.kill();
            let _ = child.kill().await;
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

/// A handle able to kill a child and everything it started.
struct ProcessTree {
    #[cfg(unix)]
    pgid: Option<i32>,
    #[cfg(windows)]
    job: Option<windows_job::JobHandle>,
}

impl ProcessTree {
    #[cfg(unix)]
    fn adopt(child: &tokio::process::Child) -> Self {
        ProcessTree { pgid: child.id().map(|id| id as i32) }
    }

    #[cfg(windows)]
    fn adopt(child: &tokio::process::Child) -> Self {
        ProcessTree { job: child.raw_handle().and_then(windows_job::JobHandle::assign) }
    }

    #[cfg(not(any(unix, windows)))]
    fn adopt(_child: &tokio::process::Child) -> Self {
        ProcessTree {}
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
}

#[cfg(windows)]
mod windows_job {
    use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
        SetInformationJobObject, TerminateJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
        JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    };

    /// A Job Object holding one child and all its descendants. Closing it
    /// (on drop) kills them all, so even a panicking executor leaves no
    /// orphaned tool behind.
    pub struct JobHandle(HANDLE);

    // SAFETY: a job object handle may be used from any thread.
    unsafe impl Send for JobHandle {}
    unsafe impl Sync for JobHandle {}

    impl JobHandle {
        pub fn assign(process: std::os::windows::io::RawHandle) -> Option<Self> {
            // SAFETY: plain Win32 calls on handles we own; failures are
            // checked and the job handle is closed on every error path.
            unsafe {
                let job = CreateJobObjectW(std::ptr::null(), std::ptr::null());
                if job.is_null() {
                    return None;
                }
                let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
                info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
                let ok = SetInformationJobObject(
                    job,
                    JobObjectExtendedLimitInformation,
                    &info as *const _ as *const _,
                    std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
                );
                if ok == 0 || AssignProcessToJobObject(job, process as HANDLE) == 0 {
                    CloseHandle(job);
                    return None;
                }
                Some(JobHandle(job))
            }
        }

        pub fn terminate(&self) {
            // SAFETY: the handle is valid until drop.
            unsafe {
                TerminateJobObject(self.0, 1);
            }
        }
    }

    impl Drop for JobHandle {
        fn drop(&mut self) {
            // SAFETY: closing our own handle once.
            unsafe {
                CloseHandle(self.0);
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn log() -> (tempfile::TempDir, JobLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = JobLog::open(&dir.path().join("worker.log")).unwrap();
        (dir, log)
    }

    #[tokio::test]
    async fn secrets_are_scrubbed_from_child_env() {
        std::env::set_var("RAYVAULT_CLUSTER_SECRET_TEST_SCRUB", "hunter2");
        let (_d, log) = log();
        let out = run_tool(&Tool::new("env", "env").capture_stdout(), &log, &CancellationToken::new())
            .await
            .unwrap();
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(env.contains("PATH="));
        assert!(!env.contains("hunter2"));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_tree() {
        let (dir, log) = log();
        let marker = dir.path().join("grandchild.pid");
        // The shell starts a grandchild sleeper and records its pid.
        let script = format!("sleep 30 & echo $! > {}; wait", marker.display());
        let tool = Tool::new("sh", "sh").args(["-c", &script]).timeout(Duration::from_millis(500));
        let err = run_tool(&tool, &log, &CancellationToken::new()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Timeout);
        let pid: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        // Wait (with a deadline) until the grandchild is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            // SAFETY: signal 0 only checks for existence.
            let alive = unsafe { libc::kill(pid, 0) } == 0
                && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ");
            if !alive {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "grandchild {pid} survived the timeout");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn missing_program_reports_the_unavailable_code() {
        let (_d, log) = log();
        let tool = Tool::new("definitely-not-a-real-tool-xyz", "x")
            .codes(ErrorCode::FfmpegUnavailable, ErrorCode::FfmpegFailed);
        let err = run_tool(&tool, &log, &CancellationToken::new()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::FfmpegUnavailable);
    }

    #[tokio::test]
    async fn cancel_stops_the_tool() {
        let (_d, log) = log();
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c2.cancel();
        });
        let err = run_tool(&Tool::new("sleep", "sleep").arg("30"), &log, &cancel).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Cancelled);
    }
}
