//! Job specs and receipts: what a pipeline asked the controller to run, and
//! the record of what happened, written to
//! `$RAYVAULT_STATE_DIR/cluster/receipts/<run_id>/<job_id>/job_receipt.json`.
//!
//! Architecture Invariant: a receipt never holds a secret. It is built only
//! from the job spec, the placement, and what the worker or the local step
//! returned; none of those carry key material.

use crate::error::{ErrorCode, StepError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

mod files;
pub use files::{pending_dirs, prepare_folder, write_log_unsynced, write_pending};

/// Placement requirements, as given by `--requirements-json`. Every field is
/// optional; none means any node fits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequirements {
    /// Operating systems the step may run on (`windows`, `macos`, `linux`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_in: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ram_gb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_vram_gb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_required: Option<bool>,
}

impl JobRequirements {
    /// Parses `--requirements-json`; the error says which key or value is wrong.
    pub fn parse(text: &str) -> Result<JobRequirements, String> {
        let req: JobRequirements = serde_json::from_str(text).map_err(|e| {
            format!("--requirements-json is invalid: {e}; allowed keys are os_in (list), min_ram_gb, min_vram_gb (numbers), gpu_required (bool)")
        })?;
        for (name, v) in [("min_ram_gb", req.min_ram_gb), ("min_vram_gb", req.min_vram_gb)] {
            if v.is_some_and(|x| !x.is_finite() || x < 0.0) {
                return Err(format!("--requirements-json: {name} must be a number of at least 0"));
            }
        }
        Ok(req)
    }
}

/// One job as a pipeline submits it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub run_id: String,
    pub job_id: String,
    pub step_name: String,
    pub payload: Value,
    #[serde(default)]
    pub requirements: JobRequirements,
    /// Fail instead of running locally when no worker can take the job
    /// (the older spelling of `fallback: never`, kept for stored specs).
    #[serde(default)]
    pub no_fallback: bool,
    /// When the controller may run the job itself; None takes
    /// `[controller] fallback` from the settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackMode>,
    /// Whole-job deadline in seconds (None: the step's own timeout applies).
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

impl JobSpec {
    /// Checks ids are usable as folder names and the payload is an object.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, v) in [("--run-id", &self.run_id), ("--job-id", &self.job_id)] {
            if !crate::artifacts::is_safe_name(v) {
                return Err(format!(
                    "{flag} {v:?} is not usable as a folder name; use letters, digits, '_', '-' and '.' (not leading), at most 128"
                ));
            }
        }
        if let Err(e) = crate::steps::StepName::parse(&self.step_name) {
            return Err(format!("--step-name: {}", e.message));
        }
        if !self.payload.is_object() {
            return Err("--payload-json must be a JSON object".into());
        }
        Ok(())
    }

    /// `run_id/job_id`, the job's key in the daemon's store and API.
    pub fn key(&self) -> String {
        format!("{}/{}", self.run_id, self.job_id)
    }

    /// The fallback rule for this job: `--no-fallback` means never, then
    /// the job's own mode, then `default` (`[controller] fallback`).
    pub fn fallback_mode(&self, default: FallbackMode) -> FallbackMode {
        if self.no_fallback {
            FallbackMode::Never
        } else {
            self.fallback.unwrap_or(default)
        }
    }
}

/// When the controller runs a job itself instead of on a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum FallbackMode {
    /// Only when no eligible worker can be reached or can take the job
    /// (down, refused, timed out, lost mid-job, full). A configuration error
    /// (credentials refused, wrong worker id, no secret) fails the job.
    #[default]
    Unavailable,
    /// Also when a worker is misconfigured; the reason is recorded.
    Always,
    /// Never: the job fails when no worker can run it.
    Never,
}

impl TryFrom<String> for FallbackMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        FallbackMode::parse(&s)
    }
}

impl FallbackMode {
    /// Parses `unavailable`, `always` or `never`.
    pub fn parse(s: &str) -> Result<FallbackMode, String> {
        match s {
            "unavailable" => Ok(FallbackMode::Unavailable),
            "always" => Ok(FallbackMode::Always),
            "never" => Ok(FallbackMode::Never),
            other => Err(format!("fallback must be \"unavailable\", \"always\" or \"never\", not {other:?}")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FallbackMode::Unavailable => "unavailable",
            FallbackMode::Always => "always",
            FallbackMode::Never => "never",
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Succeeded,
    Failed,
    Cancelled,
}

/// The `error` object of a receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptError {
    pub code: String,
    pub message: String,
}

impl From<&StepError> for ReceiptError {
    fn from(e: &StepError) -> Self {
        ReceiptError { code: e.code.as_str().to_string(), message: e.message.clone() }
    }
}

impl ReceiptError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ReceiptError { code: code.as_str().to_string(), message: message.into() }
    }
}

/// An artifact copied (or written locally) into the receipt folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptArtifact {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// Absolute path of the verified copy beside the receipt.
    pub path: String,
}

/// Why one node was or was not chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeExplanation {
    pub node_id: String,
    pub eligible: bool,
    pub reason: String,
}

/// One execution attempt (a node or the local runner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// `local` or a node id.
    pub executed_on: String,
    pub remote_job_id: Option<String>,
    /// `succeeded`, `failed`, `cancelled`, or `abandoned` (node lost mid-job).
    pub outcome: AttemptOutcome,
    pub detail: Option<String>,
    /// For an abandoned remote copy: what became of it on its worker, as far
    /// as the controller could learn at the end of the job:
    /// `stopped_by_lease` (the worker stopped it when the lease expired),
    /// `cancelled`, `failed`, `finished_ignored` (it ran to its end after
    /// all; its result was not used: see `ignored_result_sha256`),
    /// `never_started`, or `unknown` (the worker did not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fate: Option<String>,
    /// With `fate: finished_ignored`: the SHA-256 of the ignored result
    /// (its JSON as the worker sent it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored_result_sha256: Option<String>,
    pub started_at: String,
    pub ended_at: String,
}

/// How one attempt ended, as the receipt spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    Cancelled,
    /// The controller gave the node up mid-job (or before the job started
    /// there); see the attempt's `fate`.
    Abandoned,
}

impl AttemptOutcome {
    /// The outcome a finished worker job stands for: its own state, a job
    /// still queued or running counting as failed.
    pub fn of_state(state: crate::protocol::JobState) -> AttemptOutcome {
        use crate::protocol::JobState;
        match state {
            JobState::Succeeded => AttemptOutcome::Succeeded,
            JobState::Cancelled => AttemptOutcome::Cancelled,
            JobState::Abandoned => AttemptOutcome::Abandoned,
            JobState::Failed | JobState::Queued | JobState::Running => AttemptOutcome::Failed,
        }
    }
}

/// Wall-clock timings, RFC 3339 UTC, plus durations in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub submitted_at: String,
    pub started_at: Option<String>,
    pub finished_at: String,
    pub queue_ms: u64,
    pub run_ms: u64,
    pub sync_ms: u64,
    pub total_ms: u64,
}

/// The receipt a pipeline trusts: what ran, where, why there, and what came out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub run_id: String,
    pub job_id: String,
    pub step_name: String,
    pub inputs_hash: String,
    pub status: JobStatus,
    /// `local` or the node id where the step ran (and produced the result,
    /// or failed); `null` when it ran nowhere (a configuration error, no
    /// eligible node, or every attempt refused before the step ran).
    pub executed_on: Option<String>,
    /// For a step whose result is a verdict (`AUDIO_POSTCHECK`): `passed`
    /// or `failed`. A failed verdict keeps `status: succeeded` (the check
    /// ran) and makes `submit` exit 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// With a failed verdict: each failing file (the path the user gave)
    /// and its problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdict_failures: Vec<Value>,
    /// Why the step ran on the controller instead of a worker: this job's
    /// own attempts and rejections, e.g. `windows-worker-1 unreachable
    /// (connection refused)`.
    pub fallback_reason: Option<String>,
    pub remote_job_id: Option<String>,
    /// The worker returned an existing job for the same step and inputs.
    pub cached: bool,
    /// `null` for a current worker or a local run; `legacy_hmac_v05` or
    /// `legacy_plain_token` for a v0.5 worker.
    pub compat_mode: Option<String>,
    pub error: Option<ReceiptError>,
    pub result: Option<Value>,
    pub artifacts: Vec<ReceiptArtifact>,
    pub timings: Timings,
    pub attempts: Vec<Attempt>,
    pub placement: Vec<NodeExplanation>,
    pub requirements: JobRequirements,
    /// Set when this receipt replaced one written for the same run_id and
    /// job_id with other inputs: that receipt's `inputs_hash`. The folder
    /// was emptied first, so no file of the earlier run remains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_inputs_hash: Option<String>,
}

/// The outcome of a check step, apart from whether the step ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Passed,
    Failed,
}

/// Error codes that name a configuration problem rather than a failed job:
/// `submit` exits 2 for them, as for bad usage.
pub const CONFIGURATION_CODES: [ErrorCode; 3] = [ErrorCode::AuthRejected, ErrorCode::NodeIdMismatch, ErrorCode::SecretMissing];

/// Process exit codes of `submit`, `wait` and `result`.
pub mod exit {
    /// The job succeeded (and its verdict, if any, passed).
    pub const SUCCEEDED: i32 = 0;
    /// The job failed or was cancelled.
    pub const FAILED: i32 = 1;
    /// Bad usage or configuration: nothing ran.
    pub const CONFIGURATION: i32 = 2;
    /// The step ran and its verdict failed (e.g. AUDIO_POSTCHECK found
    /// problems).
    pub const VERDICT_FAILED: i32 = 3;
}

/// The receipt folder of a job.
pub fn receipt_dir(cluster_dir: &Path, run_id: &str, job_id: &str) -> PathBuf {
    cluster_dir.join("receipts").join(run_id).join(job_id)
}

/// `job_receipt.json` inside [`receipt_dir`].
pub const RECEIPT_FILE: &str = "job_receipt.json";

/// `worker.log` inside [`receipt_dir`].
pub const LOG_FILE: &str = "worker.log";

/// `executed_on` of a job the controller ran itself (LocalRunner).
pub const LOCAL: &str = "local";

impl Receipt {
    /// The process exit code for this receipt: 0 succeeded, 3 succeeded
    /// with a failed verdict, 2 failed on a configuration error (nothing
    /// ran), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self.status {
            JobStatus::Succeeded if self.verdict == Some(Verdict::Failed) => exit::VERDICT_FAILED,
            JobStatus::Succeeded => exit::SUCCEEDED,
            _ if self.error.as_ref().is_some_and(|e| CONFIGURATION_CODES.iter().any(|c| c.as_str() == e.code)) => exit::CONFIGURATION,
            _ => exit::FAILED,
        }
    }

    /// The verdict of a check step's result and its failing files: the
    /// result's top-level `passed` boolean, and each entry of `files` whose
    /// `passed` is false (with its `path` and `problems`).
    pub fn verdict_of(result: &Value) -> Option<(Verdict, Vec<Value>)> {
        let passed = result.get("passed")?.as_bool()?;
        if passed {
            return Some((Verdict::Passed, Vec::new()));
        }
        let failures = result
            .get("files")
            .and_then(Value::as_array)
            .map(|files| {
                files
                    .iter()
                    .filter(|f| f.get("passed").and_then(Value::as_bool) == Some(false))
                    .map(|f| serde_json::json!({"file": f.get("path").cloned().unwrap_or(Value::Null), "problems": f.get("problems").cloned().unwrap_or(Value::Null)}))
                    .collect()
            })
            .unwrap_or_default();
        Some((Verdict::Failed, failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_reject_unknown_keys() {
        assert!(JobRequirements::parse(r#"{"os_in":["windows"],"min_ram_gb":8}"#).is_ok());
        let err = JobRequirements::parse(r#"{"os":"windows"}"#).unwrap_err();
        assert!(err.contains("unknown field `os`"), "{err}");
        assert!(JobRequirements::parse(r#"{"min_ram_gb":-1}"#).is_err());
    }

    #[test]
    fn ids_must_be_folder_names() {
        let mut spec = JobSpec {
            run_id: "r1".into(),
            job_id: "j1".into(),
            step_name: "FFMPEG_PROBE".into(),
            payload: serde_json::json!({}),
            requirements: JobRequirements::default(),
            no_fallback: false,
            fallback: None,
            timeout_s: None,
        };
        assert!(spec.validate().is_ok());
        spec.job_id = "../x".into();
        assert!(spec.validate().is_err());
    }
}
