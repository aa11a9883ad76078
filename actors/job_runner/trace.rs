//! The trace of one job (what it collects on its way: timings, attempts,
//! placement) and its end state, and how the two become the receipt.

use super::super::messages::JobProgress;
use super::JobDeps;
use crate::error::ErrorCode;
use crate::joblog::format_utc;
use crate::receipt::{Attempt, AttemptOutcome, JobSpec, JobStatus, NodeExplanation, Receipt, ReceiptArtifact, ReceiptError, Timings};
use crate::steps::StepName;
use actix::prelude::*;
use std::time::{Instant, SystemTime};

/// What a job collects on its way, turned into the receipt at the end.
pub struct Trace {
    pub key: String,
    pub submitted_at: SystemTime,
    pub started: Instant,
    pub started_at: Option<SystemTime>,
    pub run_ms: u64,
    pub sync_ms: u64,
    pub attempts: Vec<Attempt>,
    pub placement: Vec<NodeExplanation>,
    pub progress: Option<Recipient<JobProgress>>,
    /// The earlier receipt's `inputs_hash`, when this run replaced it.
    pub replaced_inputs_hash: Option<String>,
    /// Starts making the receipt's folder and files (see [`Trace::underway`]).
    pub(super) folder_go: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Trace {
    /// A fresh trace for `spec`, started now.
    pub(super) fn new(spec: &JobSpec, submitted_at: SystemTime, deps: &JobDeps) -> Trace {
        Trace {
            key: spec.key(),
            submitted_at,
            started: Instant::now(),
            started_at: None,
            run_ms: 0,
            sync_ms: 0,
            attempts: Vec::new(),
            placement: Vec::new(),
            progress: deps.progress.clone(),
            replaced_inputs_hash: None,
            folder_go: None,
        }
    }

    /// The job is underway on a worker: its submission is being sent, or
    /// (re-attached after a restart) the worker holds it. The receipt's
    /// folder and files are made now, while the worker accepts and runs
    /// the job, rather than between its end and its answer: a worker that
    /// records a short check's end with its acceptance answers both at
    /// once, leaving no time between the two. Once only.
    pub fn underway(&mut self) {
        if let Some(go) = self.folder_go.take() {
            let _ = go.send(());
        }
    }

    pub fn say(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(job = %self.key, "{line}");
        if let Some(p) = &self.progress {
            p.do_send(JobProgress { key: self.key.clone(), line });
        }
    }

    pub fn attempt(&mut self, executed_on: &str, remote_job_id: Option<String>, outcome: AttemptOutcome, detail: Option<String>, began: SystemTime) {
        self.attempts.push(Attempt {
            executed_on: executed_on.to_string(),
            remote_job_id,
            outcome,
            detail,
            fate: None,
            ignored_result_sha256: None,
            started_at: format_utc(began),
            ended_at: format_utc(SystemTime::now()),
        });
    }
}

/// The end state of a job before it becomes a receipt.
pub struct Ending {
    pub status: JobStatus,
    /// Where the step ran; None when it ran nowhere.
    pub executed_on: Option<String>,
    pub remote_job_id: Option<String>,
    pub cached: bool,
    pub compat_mode: Option<String>,
    pub error: Option<ReceiptError>,
    pub result: Option<serde_json::Value>,
    pub artifacts: Vec<ReceiptArtifact>,
    pub fallback_reason: Option<String>,
}

impl Ending {
    /// A failed (or cancelled) ending; `executed_on` is None when the step
    /// ran nowhere.
    pub fn failed(code: ErrorCode, message: impl Into<String>, executed_on: Option<&str>) -> Ending {
        Ending {
            status: if code == ErrorCode::Cancelled { JobStatus::Cancelled } else { JobStatus::Failed },
            executed_on: executed_on.map(str::to_string),
            remote_job_id: None,
            cached: false,
            compat_mode: None,
            error: Some(ReceiptError::new(code, message)),
            result: None,
            artifacts: Vec::new(),
            fallback_reason: None,
        }
    }
}

pub(super) fn build_receipt(spec: &JobSpec, inputs_hash: String, e: Ending, trace: &Trace) -> Receipt {
    let now = SystemTime::now();
    let ms = |a: SystemTime, b: SystemTime| b.duration_since(a).unwrap_or_default().as_millis() as u64;
    let started = trace.started_at;
    let (verdict, verdict_failures) = match (&e.result, e.status, StepName::parse(&spec.step_name)) {
        (Some(result), JobStatus::Succeeded, Ok(StepName::AudioPostcheck)) => match Receipt::verdict_of(result) {
            Some((v, f)) => (Some(v), f),
            None => (None, Vec::new()),
        },
        _ => (None, Vec::new()),
    };
    Receipt {
        run_id: spec.run_id.clone(),
        job_id: spec.job_id.clone(),
        step_name: spec.step_name.clone(),
        inputs_hash,
        status: e.status,
        executed_on: e.executed_on,
        verdict,
        verdict_failures,
        fallback_reason: e.fallback_reason,
        remote_job_id: e.remote_job_id,
        cached: e.cached,
        compat_mode: e.compat_mode,
        error: e.error,
        result: e.result,
        artifacts: e.artifacts,
        timings: Timings {
            submitted_at: format_utc(trace.submitted_at),
            started_at: started.map(format_utc),
            finished_at: format_utc(now),
            queue_ms: started.map(|s| ms(trace.submitted_at, s)).unwrap_or(0),
            run_ms: trace.run_ms,
            sync_ms: trace.sync_ms,
            total_ms: ms(trace.submitted_at, now).max(trace.started.elapsed().as_millis() as u64),
        },
        attempts: trace.attempts.clone(),
        placement: trace.placement.clone(),
        requirements: spec.requirements.clone(),
        replaced_inputs_hash: trace.replaced_inputs_hash.clone(),
    }
}
