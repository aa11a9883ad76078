//! `OPENCLAW_TASK`: hands a task to the OpenClaw desktop agent.
//!
//! Payload: `{"task": "<text>", "timeout_s": <seconds, optional>}`.
//!
//! Order of checks, each with its own code:
//! 1. the payload parses (`INPUT_INVALID`);
//! 2. an interactive desktop session is active (`UI_SESSION_REQUIRED`),
//!    checked before anything else about the payload, because without a
//!    session nothing else matters and the user must fix that first;
//! 3. the payload's values are sane (`INPUT_INVALID`);
//! 4. a command is configured (`[openclaw] command`) or `openclaw` is on
//!    `PATH` (`OPENCLAW_UNAVAILABLE`).
//!
//! The task text goes to the command's stdin, never on its command line,
//! where other users could read it in the process list. Everything the
//! command prints, stdout and stderr interleaved in order with timestamps,
//! becomes the artifact `openclaw_output.txt`; on failure the same
//! transcript is copied into the job log instead. A non-zero exit is
//! `OPENCLAW_FAILED` and a run past `timeout_s` is `TIMEOUT`, with the whole
//! process tree killed by [`crate::process`].

use super::{parse_payload, StepContext, StepName, StepOutput};
use crate::artifacts::{commit_temp, entry_for, temp_path_for};
use crate::caps::find_program;
use crate::config::Settings;
use crate::error::{ErrorCode, StepError};
use crate::joblog::JobLog;
use crate::process::{run_tool, Tool};
use crate::ui_session::SessionProbe;
use serde::Deserialize;
use serde_json::{json, Value};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::Duration;

/// The artifact holding the command's output.
pub const OUTPUT_ARTIFACT: &str = "openclaw_output.txt";

/// The executable looked for on `PATH` when no command is configured.
pub const DEFAULT_PROGRAM: &str = "openclaw";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    task: String,
    #[serde(default)]
    timeout_s: Option<f64>,
}

/// What the step needs to know about the host, injectable for tests.
#[derive(Debug, Clone)]
pub struct OpenclawHost {
    /// How to decide whether a desktop session is active.
    pub session: SessionProbe,
    /// A `PATH` to search for `openclaw` instead of the process's own.
    pub search_path: Option<OsString>,
}

impl OpenclawHost {
    /// The real host: platform session detection and the process `PATH`.
    pub fn real() -> Self {
        OpenclawHost { session: SessionProbe::Host, search_path: None }
    }
}

/// Runs the step on the real host.
pub async fn run(payload: &Value, ctx: &StepContext) -> Result<StepOutput, StepError> {
    run_with(payload, ctx, &OpenclawHost::real()).await
}

/// Runs the step with an explicit session probe and `PATH`.
pub async fn run_with(payload: &Value, ctx: &StepContext, host: &OpenclawHost) -> Result<StepOutput, StepError> {
    // serde accepts a struct written as an array too; the contract is an object.
    if !payload.is_object() {
        return Err(StepError::invalid("OPENCLAW_TASK payload must be a JSON object {\"task\", \"timeout_s\"}"));
    }
    let p: Payload = parse_payload(StepName::OpenclawTask, payload)?;
    let session = require_session(&host.session)?;
    let step_timeout = ctx.settings.step(StepName::OpenclawTask.as_str()).timeout_s;
    let timeout = effective_timeout(p.timeout_s, step_timeout)?;
    if p.task.trim().is_empty() {
        return Err(StepError::invalid("OPENCLAW_TASK payload field \"task\" is empty; give the task text"));
    }
    if timeout.as_secs_f64() < p.timeout_s.unwrap_or(0.0) {
        ctx.log.line("openclaw", &format!("timeout_s capped at the step timeout of {step_timeout} s"));
    }
    let settings = ctx.settings.clone();
    let search_path = host.search_path.clone();
    let argv = tokio::task::spawn_blocking(move || resolve_command(&settings, search_path.as_deref()))
        .await
        .map_err(|e| StepError::new(ErrorCode::Internal, format!("resolving the OpenClaw command: {e}")))?
        .map_err(|why| StepError::new(ErrorCode::OpenclawUnavailable, why))?;

    let (program, args) = argv.split_first().ok_or_else(|| {
        StepError::new(ErrorCode::Internal, "the resolved OpenClaw command is empty")
    })?;
    ctx.log.line(
        "openclaw",
        &format!(
            "running {} ({}) with the task on stdin ({} bytes), timeout {} s",
            program.to_string_lossy(),
            session.detail,
            p.task.len(),
            timeout.as_secs_f64()
        ),
    );
    ctx.create_out_dir()?;
    let final_path = ctx.out_dir.join(OUTPUT_ARTIFACT);
    let tmp = temp_path_for(&final_path);
    let mut transcript = JobLog::open(&tmp).map_err(|e| StepError::io("creating the OpenClaw output file", e))?;
    // The tool runs with the transcript as its log: it must carry the job's
    // child tracker too, or the tool's process group is never recorded and a
    // worker (or daemon) started after a crash cannot kill what it left.
    if let Some(tracker) = ctx.log.child_tracker() {
        transcript = transcript.tracking_children(tracker.clone());
    }
    let tool = Tool::new(program, "openclaw")
        .args(args.iter().cloned())
        .stdin(p.task.clone().into_bytes())
        .timeout(timeout)
        .codes(ErrorCode::OpenclawUnavailable, ErrorCode::OpenclawFailed);
    let outcome = run_tool(&tool, &transcript, &ctx.cancel).await;
    drop(transcript);

    let out = match outcome {
        Ok(out) if out.success() => out,
        Ok(out) => {
            copy_to_job_log(&tmp, &ctx.log).await;
            let tail = if out.stderr_tail.is_empty() { String::new() } else { format!("; last stderr: {}", out.stderr_tail) };
            return Err(StepError::new(
                ErrorCode::OpenclawFailed,
                format!("OpenClaw exited with {}{tail}; its full output is in the job log", out.status),
            ));
        }
        Err(e) => {
            copy_to_job_log(&tmp, &ctx.log).await;
            return Err(e);
        }
    };
    let dir = ctx.out_dir.clone();
    let entry = tokio::task::spawn_blocking(move || {
        commit_temp(&tmp, &final_path).map_err(|e| StepError::io("saving openclaw_output.txt", e))?;
        entry_for(&dir, OUTPUT_ARTIFACT)
    })
    .await
    .map_err(|e| StepError::new(ErrorCode::Internal, format!("saving the OpenClaw output: {e}")))??;
    ctx.log.line("openclaw", &format!("output saved as {OUTPUT_ARTIFACT} ({} bytes)", entry.size));
    Ok(StepOutput {
        result: json!({
            "exit_code": out.status.code(),
            "timeout_s": timeout.as_secs_f64(),
            "session": session.detail,
            "output": OUTPUT_ARTIFACT,
            "output_bytes": entry.size,
        }),
        artifacts: vec![entry],
    })
}

/// Why OPENCLAW_TASK cannot run on this host, or `Ok` if it can; used by
/// the capability probe. `search_path` overrides `PATH`.
pub fn availability(settings: &Settings, probe: &SessionProbe, search_path: Option<&OsStr>) -> Result<(), String> {
    require_session(probe).map_err(|e| e.message)?;
    resolve_command(settings, search_path).map(|_| ())
}

fn require_session(probe: &SessionProbe) -> Result<crate::ui_session::SessionStatus, StepError> {
    let status = probe.detect();
    if status.active {
        return Ok(status);
    }
    Err(StepError::new(
        ErrorCode::UiSessionRequired,
        format!(
            "OPENCLAW_TASK requested without active logged-in desktop session ({}); start the worker from a \
             logged-in user's desktop session (not as a service, in session 0 or over SSH without a display), \
             or send the task to a node that has one",
            status.detail
        ),
    ))
}

/// The run time allowed: the payload's `timeout_s` (positive, finite),
/// capped by the step timeout; the step timeout when absent.
fn effective_timeout(requested: Option<f64>, step_timeout_s: u64) -> Result<Duration, StepError> {
    let cap = step_timeout_s as f64;
    match requested {
        None => Ok(Duration::from_secs(step_timeout_s)),
        Some(t) if t.is_finite() && t > 0.0 => Ok(Duration::from_secs_f64(t.min(cap))),
        Some(t) => Err(StepError::invalid(format!(
            "OPENCLAW_TASK timeout_s must be a positive number of seconds (at most {step_timeout_s}), got {t}"
        ))),
    }
}

/// The configured command split into words, or `openclaw` found on the
/// search path.
pub fn resolve_command(settings: &Settings, search_path: Option<&OsStr>) -> Result<Vec<OsString>, String> {
    let configured = settings.openclaw.command.trim();
    if configured.is_empty() {
        return find_program(DEFAULT_PROGRAM, search_path)
            .map(|p| vec![p.into_os_string()])
            .ok_or_else(|| {
                "no OpenClaw command is configured and no `openclaw` executable is on PATH; install OpenClaw \
                 or set [openclaw] command in the config (RAYVAULT_OPENCLAW__COMMAND)"
                    .to_string()
            });
    }
    let words = split_command(configured).map_err(|e| format!("[openclaw] command {configured:?}: {e}"))?;
    let program = find_program(&words[0], search_path).ok_or_else(|| {
        format!("[openclaw] command names {:?}, which is not an executable file or on PATH; fix the path", words[0])
    })?;
    let mut argv = vec![program.into_os_string()];
    argv.extend(words[1..].iter().map(OsString::from));
    Ok(argv)
}

/// Splits a command line into words: whitespace separates, single or double
/// quotes group (so `"C:\Program Files\OpenClaw\openclaw.exe" --headless`
/// works). Backslashes are literal, since they are Windows path separators.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current.get_or_insert_with(String::new).push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                current.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(current.take()),
            (None, c) => current.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(q) = quote {
        return Err(format!("unterminated {q} quote"));
    }
    words.extend(current);
    if words.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(words)
}

/// Copies a failed run's transcript into the job log and removes it, so the
/// output survives in the log without becoming an artifact.
async fn copy_to_job_log(transcript: &Path, log: &JobLog) {
    let path = transcript.to_path_buf();
    let text = tokio::task::spawn_blocking(move || {
        let text = std::fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned());
        let _ = std::fs::remove_file(&path);
        text
    })
    .await;
    if let Ok(Ok(text)) = text {
        for line in text.lines() {
            log.line("openclaw:output", line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_commands() {
        let check = |line: &str, expected: &[&str]| assert_eq!(split_command(line).unwrap(), expected, "{line}");
        check("openclaw", &["openclaw"]);
        check("  openclaw   --headless -v ", &["openclaw", "--headless", "-v"]);
        check(
            r#""C:\Program Files\OpenClaw\openclaw.exe" --profile 'my agent'"#,
            &[r"C:\Program Files\OpenClaw\openclaw.exe", "--profile", "my agent"],
        );
        check(r#"run """#, &["run", ""]);
        assert!(split_command("'unterminated").is_err());
        assert!(split_command("   ").is_err());
    }

    #[test]
    fn timeouts_are_validated_and_capped() {
        assert_eq!(effective_timeout(None, 1800).unwrap(), Duration::from_secs(1800));
        assert_eq!(effective_timeout(Some(2.5), 1800).unwrap(), Duration::from_millis(2500));
        assert_eq!(effective_timeout(Some(1e12), 60).unwrap(), Duration::from_secs(60));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(effective_timeout(Some(bad), 60).unwrap_err().code, ErrorCode::InputInvalid, "{bad}");
        }
    }
}
