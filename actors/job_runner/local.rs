//! Running one job on the controller itself, through the LocalRunner: the
//! fallback when no node ran it.

use super::super::messages::{JobProgress, RunLocal};
use super::{Ending, JobDeps, Trace};
use crate::error::{ErrorCode, StepError};
use crate::joblog::JobLog;
use crate::receipt::{AttemptOutcome, JobSpec, JobStatus, ReceiptArtifact};
use crate::steps::StepName;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Runs the job on the controller through the LocalRunner.
pub(super) async fn run_local(deps: &JobDeps, spec: &JobSpec, dir: &std::path::Path, cancel: &CancellationToken, trace: &mut Trace) -> Ending {
    let step = match StepName::parse(&spec.step_name) {
        Ok(s) => s,
        Err(e) => return Ending::failed(e.code, e.message, None),
    };
    let log_path = dir.join(crate::receipt::LOG_FILE);
    // The step's `progress` lines (chunk 3/10, ...) go to `submit` too.
    let sink = {
        let (progress, key) = (deps.progress.clone(), spec.key());
        crate::joblog::ProgressSink(Arc::new(move |text: &str| {
            let line = format!("local: {text}");
            tracing::info!(job = %key, "{line}");
            if let Some(p) = &progress {
                p.do_send(JobProgress { key: key.clone(), line });
            }
        }))
    };
    let opened = {
        let p = log_path.clone();
        // A resubmitted job starts a fresh log, matching its new receipt.
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_file(&p);
            JobLog::open(&p).map(|l| l.with_progress(sink))
        })
        .await
    };
    let log = match opened {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return Ending::failed(ErrorCode::IoError, format!("cannot open {}: {e}", log_path.display()), None),
        Err(e) => return Ending::failed(ErrorCode::Internal, format!("opening the job log failed: {e}"), None),
    };
    let began = SystemTime::now();
    trace.started_at.get_or_insert(began);
    let t0 = Instant::now();
    let msg = RunLocal {
        job_key: spec.key(),
        step,
        payload: spec.payload.clone(),
        out_dir: dir.to_path_buf(),
        log,
        cancel: cancel.clone(),
    };
    let out = deps
        .local
        .send(msg)
        .await
        .unwrap_or_else(|e| Err(StepError::new(ErrorCode::Internal, format!("local runner unavailable: {e}"))));
    trace.run_ms += t0.elapsed().as_millis() as u64;
    match out {
        Ok(out) => {
            trace.attempt("local", None, AttemptOutcome::Succeeded, None, began);
            let artifacts = out
                .artifacts
                .iter()
                .map(|a| ReceiptArtifact {
                    name: a.name.clone(),
                    size: a.size,
                    sha256: a.sha256.clone(),
                    path: crate::artifacts::absolute(dir.join(&a.name)),
                })
                .collect();
            Ending {
                status: JobStatus::Succeeded,
                executed_on: Some("local".into()),
                remote_job_id: None,
                cached: false,
                compat_mode: None,
                error: None,
                result: Some(out.result),
                artifacts,
                fallback_reason: None,
            }
        }
        Err(e) => {
            let outcome = if e.code == ErrorCode::Cancelled { AttemptOutcome::Cancelled } else { AttemptOutcome::Failed };
            trace.attempt("local", None, outcome, Some(e.to_string()), began);
            Ending::failed(e.code, e.message, Some("local"))
        }
    }
}
