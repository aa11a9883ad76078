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

use crate::error::{ErrorCode, StepError};
use crate::joblog::JobLog;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
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

/// A started child's process group, as recorded for [`reap`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildGroup {
    /// Unix: the process group id, which is the direct child's pid. Windows:
    /// the direct child's pid (its Job Object holds the rest).
    pub id: u32,
    /// When the direct child started, to tell it from a later process that
    /// got the same pid: on Linux the `starttime` field of
    /// `/proc/<pid>/stat` (clock ticks after boot), elsewhere seconds since
    /// the Unix epoch as the OS reports them.
    pub started: Option<u64>,
    /// Linux: `/proc/sys/kernel/random/boot_id`, so that a record from before
    /// a reboot never matches a process of this boot.
    #[serde(default)]
    pub boot_id: Option<String>,
}

impl ChildGroup {
    /// Describes the group of the live child `pid`.
    pub fn of(pid: u32) -> ChildGroup {
        ChildGroup { id: pid, started: identity::start_time(pid), boot_id: identity::boot_id() }
    }
}

/// What [`reap`] did with one recorded group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    /// It was alive and was killed.
    Killed,
    /// Nothing of it was left.
    Gone,
    /// Its id now belongs to another process (another start time or boot),
    /// which was left alone.
    Reused,
}

/// Kills the process groups that a previous, now dead, process recorded
/// (call it at start-up, before any new child is started). Each group is
/// checked against pid reuse first:
/// - Linux: if a process with the group's id lives, it is killed only if its
///   start time and the boot id match the record. If none lives but the
///   group still has members (the leader died of its parent-death signal,
///   its children did not), the group is killed when every member started
///   after the recorded leader: the kernel never hands out a pid whose number
///   is still a live group's id, so such a group is the recorded one unless
///   the number was freed, reused and the new leader exited since.
/// - Other Unix: the leader must be alive with a matching start time; a group
///   whose leader is gone is killed if it still exists (there is no cheap way
///   to list a group's members there, and the guardian process normally
///   killed it already).
/// - Windows: the Job Object killed the tree when the worker died; a leader
///   still alive with a matching start time is terminated all the same.
pub fn reap(groups: &[ChildGroup]) -> Vec<Reaped> {
    groups.iter().map(reap_one).collect()
}

#[cfg(target_os = "linux")]
fn reap_one(g: &ChildGroup) -> Reaped {
    let pgid = g.id as i32;
    if g.boot_id.is_some() && g.boot_id != identity::boot_id() {
        return Reaped::Reused;
    }
    match identity::start_time(g.id) {
        Some(now) if Some(now) != g.started => return Reaped::Reused,
        Some(_) => {}
        None => {
            let members = identity::group_members(pgid);
            if members.is_empty() {
                return Reaped::Gone;
            }
            // Without the leader's start time there is nothing to compare
            // the members with: leave them.
            let Some(recorded) = g.started else { return Reaped::Reused };
            if members.iter().any(|&(_, started)| started < recorded) {
                return Reaped::Reused;
            }
        }
    }
    // SAFETY: killpg only sends a signal to the group checked above.
    let rc = unsafe { libc::killpg(pgid, libc::SIGKILL) };
    if rc == 0 {
        Reaped::Killed
    } else {
        Reaped::Gone
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
fn reap_one(g: &ChildGroup) -> Reaped {
    let pgid = g.id as i32;
    match identity::start_time(g.id) {
        Some(now) if Some(now) != g.started => return Reaped::Reused,
        _ => {}
    }
    // SAFETY: signal 0 only checks that the group exists; SIGKILL goes to a
    // group that exists and whose leader, if alive, matched the record.
    unsafe {
        if libc::killpg(pgid, 0) != 0 {
            return Reaped::Gone;
        }
        libc::killpg(pgid, libc::SIGKILL);
    }
    Reaped::Killed
}

#[cfg(not(unix))]
fn reap_one(g: &ChildGroup) -> Reaped {
    let mut sys = sysinfo::System::new();
    let pid = sysinfo::Pid::from_u32(g.id);
    sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
    match sys.process(pid) {
        None => Reaped::Gone,
        Some(p) if Some(p.start_time()) != g.started => Reaped::Reused,
        Some(p) => {
            if p.kill() {
                Reaped::Killed
            } else {
                Reaped::Gone
            }
        }
    }
}

/// Who a process is: start times and, on Linux, group membership.
mod identity {
    #[cfg(target_os = "linux")]
    fn stat_fields(pid: u32) -> Option<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses; the
        // fields after its last ')' start with field 3 (the state).
        let rest = &stat[stat.rfind(')')? + 1..];
        Some(rest.split_whitespace().map(str::to_string).collect())
    }

    /// The process's start time: clock ticks after boot (field 22).
    #[cfg(target_os = "linux")]
    pub fn start_time(pid: u32) -> Option<u64> {
        let fields = stat_fields(pid)?;
        // A zombie is dead already; it only waits for its parent.
        if fields.first().is_some_and(|s| s == "Z") {
            return None;
        }
        fields.get(19)?.parse().ok()
    }

    #[cfg(target_os = "linux")]
    pub fn boot_id() -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string())
    }

    /// Live members of the process group `pgid`, with their start times.
    #[cfg(target_os = "linux")]
    pub fn group_members(pgid: i32) -> Vec<(u32, u64)> {
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let f = stat_fields(pid)?;
                // Field 5 is the process group, field 22 the start time.
                let alive = f.first().is_some_and(|s| s != "Z");
                (alive && f.get(2)?.parse::<i32>().ok()? == pgid).then_some((pid, f.get(19)?.parse().ok()?))
            })
            .collect()
    }

    #[cfg(not(target_os = "linux"))]
    pub fn start_time(pid: u32) -> Option<u64> {
        let mut sys = sysinfo::System::new();
        let pid = sysinfo::Pid::from_u32(pid);
        sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
        sys.process(pid).map(|p| p.start_time())
    }

    #[cfg(not(target_os = "linux"))]
    pub fn boot_id() -> Option<String> {
        None
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

/// The one thread that forks children on Linux.
///
/// `PR_SET_PDEATHSIG` fires when the thread that forked the child exits,
/// not when its process does, so a child forked by a tokio blocking-pool
/// thread would be killed as soon as that thread retires after a few idle
/// seconds. This thread lives as long as the process and does nothing but
/// spawn, so it never exits before the process does.
#[cfg(target_os = "linux")]
mod spawner {
    use std::os::unix::process::CommandExt as _;
    use std::sync::mpsc;
    use std::sync::OnceLock;
    use tokio::process::{Child, Command};

    struct Request {
        cmd: Command,
        /// The caller's runtime: the child's pipes and exit watcher belong
        /// to it, so the spawn runs inside it.
        runtime: tokio::runtime::Handle,
        reply: tokio::sync::oneshot::Sender<std::io::Result<Child>>,
    }

    fn queue() -> Option<&'static mpsc::Sender<Request>> {
        static QUEUE: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();
        QUEUE
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel::<Request>();
                let started = std::thread::Builder::new().name("rayvault-spawner".into()).spawn(move || {
                    for req in rx {
                        let _inside = req.runtime.enter();
                        let mut cmd = req.cmd;
                        // A caller that gave up drops the child, which kills
                        // it (kill_on_drop).
                        let _ = req.reply.send(cmd.spawn());
                    }
                });
                match started {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the spawner thread; children will not get a parent-death signal");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Spawns `cmd` on the spawner thread, with SIGKILL as its parent-death
    /// signal.
    pub async fn spawn(mut cmd: Command) -> std::io::Result<Child> {
        let Some(queue) = queue() else { return cmd.spawn() };
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and calls
        // only async-signal-safe functions (prctl, getppid), allocating
        // nothing on its success path.
        unsafe {
            cmd.as_std_mut().pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between the fork and the prctl:
                // then the signal will never come, and the child must not run.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let req = Request { cmd, runtime: tokio::runtime::Handle::current(), reply };
        queue.send(req).map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        answer.await.map_err(|_| std::io::Error::other("the spawner thread dropped the request"))?
    }
}

/// The guardian: one `/bin/sh` per process that kills every live child
/// process group when that process dies.
///
/// It reads `+ <pgid>` and `- <pgid>` lines on its stdin, a pipe whose only
/// writer is this process (the write end is close-on-exec, so no child
/// inherits it). When this process dies, however it dies, the kernel closes
/// the pipe; the guardian's `read` then ends and it sends SIGKILL to every
/// group still listed. It runs in a process group of its own, so a Ctrl-C
/// in the terminal does not stop it before the worker, and with an empty
/// environment.
#[cfg(unix)]
mod guardian {
    use std::io::Write;
    use std::os::unix::process::CommandExt as _;
    use std::process::{ChildStdin, Command, Stdio};
    use std::sync::{Mutex, OnceLock};

    const SCRIPT: &str = r#"groups=' '
while read -r op id; do
  case "$op" in
    +) groups="$groups$id " ;;
    -) case "$groups" in *" $id "*) groups="${groups%%" $id "*} ${groups#*" $id "}" ;; esac ;;
  esac
done
for g in $groups; do kill -9 "-$g" 2>/dev/null; done
"#;

    fn pipe() -> &'static Mutex<Option<ChildStdin>> {
        static PIPE: OnceLock<Mutex<Option<ChildStdin>>> = OnceLock::new();
        PIPE.get_or_init(|| {
            let started = Command::new("/bin/sh")
                .arg("-c")
                .arg(SCRIPT)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn();
            Mutex::new(match started {
                Ok(mut child) => {
                    let stdin = child.stdin.take();
                    // Nobody waits for it: it ends only after this process.
                    drop(child);
                    stdin
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the child guardian (/bin/sh); children may outlive a killed worker until its next start");
                    None
                }
            })
        })
    }

    fn send(line: &str) {
        let mut guard = match pipe().lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(stdin) = guard.as_mut() {
            if let Err(e) = stdin.write_all(line.as_bytes()) {
                tracing::warn!(error = %e, "the child guardian is gone; children may outlive a killed worker until its next start");
                *guard = None;
            }
        }
    }

    /// Adds a process group to the guardian's list.
    pub fn watch(pgid: i32) {
        send(&format!("+ {pgid}\n"));
    }

    /// Removes a process group from the list (it is dead).
    pub fn unwatch(pgid: i32) {
        send(&format!("- {pgid}\n"));
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

/// Processes that tests elsewhere in the crate start: a small tmpfs for a
/// real full disk (Linux, as root) and a sleeper in a process group of its
/// own (a stand-in for a tool a dead process left running).
#[cfg(all(test, unix))]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};

    /// `sleep 300` in a process group of its own.
    pub fn sleeper_in_own_group() -> std::process::Child {
        use std::os::unix::process::CommandExt as _;
        std::process::Command::new("sleep").arg("300").process_group(0).spawn().unwrap()
    }

    /// A mounted tmpfs, unmounted on drop.
    pub struct Tmpfs {
        pub dir: tempfile::TempDir,
    }

    impl Tmpfs {
        /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g.
        /// "4m"); `None`, with the reason printed, where mounting is not
        /// permitted.
        pub fn mount(size: &str) -> Option<Tmpfs> {
            let dir = tempfile::tempdir().ok()?;
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .output();
            match out {
                Ok(o) if o.status.success() => Some(Tmpfs { dir }),
                Ok(o) => {
                    eprintln!("SKIPPED: cannot mount a tmpfs here: {}", String::from_utf8_lossy(&o.stderr).trim());
                    None
                }
                Err(e) => {
                    eprintln!("SKIPPED: cannot run mount: {e}");
                    None
                }
            }
        }

        pub fn path(&self) -> &Path {
            self.dir.path()
        }

        /// Fills the file system with `filler`; returns its path.
        pub fn fill(&self) -> PathBuf {
            use std::io::Write;
            let filler = self.path().join("filler");
            let mut f = std::fs::File::create(&filler).unwrap();
            let block = vec![0x5a_u8; 64 * 1024];
            loop {
                if let Err(e) = f.write_all(&block) {
                    assert!(crate::error::is_disk_full(&e), "filling failed with another error: {e}");
                    break;
                }
            }
            filler
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
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

    /// True while `pid` exists and is not a zombie.
    fn alive(pid: u32) -> bool {
        // SAFETY: signal 0 only checks for existence.
        (unsafe { libc::kill(pid as i32, 0) } == 0)
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
    }

    fn wait_dead(pid: u32, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(pid) {
            assert!(std::time::Instant::now() < deadline, "{what} {pid} is still alive");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts `sh` in a process group of its own, with a grandchild sleeper;
    /// returns the shell and the grandchild's pid.
    fn group_with_grandchild(dir: &std::path::Path) -> (std::process::Child, u32) {
        use std::os::unix::process::CommandExt as _;
        let marker = dir.join("gc.pid");
        let script = format!("sleep 300 & echo $! > {m}.tmp; mv {m}.tmp {m}; wait", m = marker.display());
        let leader = std::process::Command::new("sh").args(["-c", &script]).process_group(0).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let gc = loop {
            if let Ok(s) = std::fs::read_to_string(&marker) {
                break s.trim().parse::<u32>().unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "the grandchild never started");
            std::thread::sleep(Duration::from_millis(10));
        };
        (leader, gc)
    }

    #[test]
    fn reap_kills_a_recorded_group_and_its_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let (mut leader, gc) = group_with_grandchild(dir.path());
        let group = ChildGroup::of(leader.id());
        assert!(group.started.is_some() && group.boot_id.is_some(), "{group:?}");
        assert_eq!(reap(std::slice::from_ref(&group)), vec![Reaped::Killed]);
        leader.wait().unwrap();
        wait_dead(gc, "the grandchild");
        assert_eq!(reap(&[group]), vec![Reaped::Gone]);
    }

    #[test]
    fn reap_kills_a_group_whose_leader_died_first() {
        // What a parent-death signal leaves: the direct child killed, its
        // own children still running in the group.
        let dir = tempfile::tempdir().unwrap();
        let (mut leader, gc) = group_with_grandchild(dir.path());
        let group = ChildGroup::of(leader.id());
        leader.kill().unwrap();
        leader.wait().unwrap();
        assert!(alive(gc));
        assert_eq!(reap(&[group]), vec![Reaped::Killed]);
        wait_dead(gc, "the orphaned grandchild");
    }

    #[test]
    fn reap_leaves_a_reused_pid_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut leader, gc) = group_with_grandchild(dir.path());
        // The record of an older process that had the same pid.
        let mut group = ChildGroup::of(leader.id());
        group.started = group.started.map(|t| t.saturating_sub(1));
        assert_eq!(reap(std::slice::from_ref(&group)), vec![Reaped::Reused]);
        // And of a previous boot.
        let mut other_boot = ChildGroup::of(leader.id());
        other_boot.boot_id = Some("another-boot".into());
        assert_eq!(reap(&[other_boot]), vec![Reaped::Reused]);
        assert!(alive(leader.id()) && alive(gc), "nothing was killed");
        // SAFETY: our own child's group.
        unsafe {
            libc::killpg(leader.id() as i32, libc::SIGKILL);
        }
        leader.wait().unwrap();
    }

    /// The tool itself reads its parent-death signal (PR_GET_PDEATHSIG): it
    /// must be SIGKILL, whichever thread asked for the spawn.
    #[cfg(target_os = "linux")]
    #[test]
    fn children_get_sigkill_as_parent_death_signal() {
        let (_d, log) = log();
        let script = "import ctypes; s = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(s)); print(s.value)";
        let tool = Tool::new("python3", "python3").args(["-c", script]).capture_stdout();
        // Asked from a short-lived thread with a runtime of its own: the
        // fork still happens on the spawner thread.
        let out = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(run_tool(&tool, &log, &CancellationToken::new())).unwrap()
        })
        .join()
        .unwrap();
        assert!(out.success(), "{}", out.stderr_tail);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), libc::SIGKILL.to_string());
    }

    /// Every tool is recorded while it runs and forgotten when it ends.
    #[tokio::test]
    async fn children_are_recorded_while_they_run() {
        #[derive(Default)]
        struct Seen(std::sync::Mutex<Vec<String>>);
        impl ChildRegistry for Seen {
            fn record(&self, owner: &str, group: &ChildGroup) -> Result<(), String> {
                self.0.lock().unwrap().push(format!("+{owner}/{}", group.id));
                Ok(())
            }
            fn forget(&self, owner: &str, group: &ChildGroup) -> Result<(), String> {
                self.0.lock().unwrap().push(format!("-{owner}/{}", group.id));
                Ok(())
            }
        }
        let seen = Arc::new(Seen::default());
        let (_d, log) = log();
        let log = log.tracking_children(ChildTracker::new("j1", seen.clone()));
        let out = run_tool(&Tool::new("sh", "sh").args(["-c", "echo $$"]).capture_stdout(), &log, &CancellationToken::new())
            .await
            .unwrap();
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(*seen.0.lock().unwrap(), vec![format!("+j1/{pid}"), format!("-j1/{pid}")]);
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
