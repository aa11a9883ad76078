//! One job's task on the worker: from `queued` (or a reservation's
//! `running` record) through its step to the recorded outcome, freeing its
//! executor slot as soon as the step returns. Blob references in the payload
//! are resolved to staged local paths here.

use super::{ExecutorEnv, JobEnded, StepDone, StepExecutor};
#[cfg(debug_assertions)]
use super::test_hook;
use crate::actors::crash_guard::catch;
use crate::error::{ErrorCode, StepError};
use crate::joblog::JobLog;
use crate::protocol::{now_ms, BLOB_REF_PREFIX};
use crate::steps::{self, StepContext, StepName};
use crate::store::{JobRecord, WorkerPaths};
use actix::Addr;
use serde_json::Value;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs a store operation off the actor's thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "store task panicked");
            None
        }
    }
}

/// A running job's slot in its executor, freed once (by [`Slot::free`] or
/// when dropped, so a job whose bookkeeping panicked frees it too).
pub(super) struct Slot {
    pub(super) addr: Option<Addr<StepExecutor>>,
    pub(super) job_id: String,
}

impl Slot {
    /// The step has returned: its slot may take the next job while the
    /// outcome is being recorded.
    fn free(&mut self) {
        if let Some(addr) = &self.addr {
            addr.do_send(StepDone { job_id: self.job_id.clone() });
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(addr) = self.addr.take() {
            addr.do_send(JobEnded { job_id: self.job_id.clone() });
        }
    }
}

/// Where a job's task starts from.
pub(super) enum Start {
    /// Queued in the store: marked running first.
    Queued,
    /// Recorded `running` by the commit that accepted it (a reservation).
    Reserved(JobRecord),
    /// Under a reservation, while the commit that accepts it is still
    /// being made durable (see `StartEarly`): `record` is the record that
    /// commit writes, `inputs` the inline inputs' temporary files, and
    /// `accepted` brings the job's record once it is durable, or `None`.
    Early {
        record: JobRecord,
        inputs: Vec<(String, std::path::PathBuf)>,
        accepted: tokio::sync::oneshot::Receiver<Option<JobRecord>>,
    },
}

/// One job from `queued` (or, under a reservation, from the `running`
/// record its submission wrote, or ahead of it) to a final state.
///
/// The slot is freed as soon as the step has returned, before its outcome
/// is committed: the next queued job's start then joins the same commit as
/// this job's outcome (group commit), so a busy slot costs one sync per
/// job instead of two. Nothing of the step runs any more at that point.
///
/// A job started early records nothing ahead of its acceptance: its end
/// is queued behind the acceptance's write (in the same commit or a later
/// one), so the store never holds an end without the acceptance before
/// it, and a job that was not accepted is discarded.
pub(super) async fn run_job(env: Arc<ExecutorEnv>, step: StepName, started: Start, token: CancellationToken, mut slot: Slot) {
    let job_id = slot.job_id.clone();
    // An early start's inline inputs (digest, temporary file) and its
    // acceptance; none for the others.
    let (rec, inputs, acceptance) = match started {
        Start::Reserved(rec) => (rec, Vec::new(), None),
        Start::Early { record, inputs, accepted } => (record, inputs, Some(accepted)),
        Start::Queued => match env.store.mark_running_async(&job_id, now_ms()).await {
            Ok(Some(rec)) => (rec, Vec::new(), None),
            Ok(None) => return, // Cancelled while it waited.
            Err(e) => {
                tracing::error!(error = %e, "cannot mark the job running");
                return;
            }
        },
    };
    if acceptance.is_none() {
        env.notify_job(&rec.job_id);
    }
    tracing::info!(attempt = rec.attempt, early = acceptance.is_some(), "job started");
    // A panic inside the step fails this job only; see the module doc.
    let outcome = match catch("StepExecutor", "running a step", execute(&env, step, &rec, token.clone(), &inputs)).await {
        Ok(outcome) => outcome,
        Err(p) => Err(StepError::new(
            ErrorCode::Internal,
            format!(
                "{step} hit a bug and stopped: {}; the worker keeps serving; retry, and report the bug with the job log",
                p.message
            ),
        )),
    };
    // The paths the step was given, as the job's inputs are named once in
    // place: what its result, error and log say of them.
    let staged_names: Vec<(String, String)> = inputs
        .iter()
        .map(|(digest, tmp)| (tmp.to_string_lossy().into_owned(), env.paths.blob_path(digest).to_string_lossy().into_owned()))
        .collect();
    let outcome = match outcome {
        // Whatever the step made, a job whose lease expired is abandoned:
        // its submitter has given it up and may be running it elsewhere.
        _ if env.leases.expired(&job_id) => Err(StepError::new(
            ErrorCode::LeaseExpired,
            "the controller's lease on this job expired (it stopped renewing: it gave the job up, or the link was cut); the worker stopped the job and discards its result",
        )),
        Err(e) if token.is_cancelled() && e.code != ErrorCode::Cancelled => {
            Err(StepError::new(ErrorCode::Cancelled, format!("cancelled while running ({e})")))
        }
        other => other,
    };
    match &outcome {
        Ok(_) => tracing::info!("job succeeded"),
        Err(e) => tracing::info!(code = %e.code, "job ended: {}", e.message),
    }
    let result = match outcome {
        Ok(mut o) => {
            as_staged_value(&mut o.result, &staged_names);
            Ok((o.result, o.artifacts))
        }
        Err(mut e) => {
            e.message = as_staged(&e.message, &staged_names);
            Err(e)
        }
    };
    // A log still in memory goes into the job's record with the outcome.
    let log = env.live_log(&job_id).and_then(|l| l.in_memory()).map(|b| as_staged(&String::from_utf8_lossy(&b), &staged_names));
    slot.free();
    match acceptance {
        // Started early: the end is queued now, behind the acceptance
        // (which may still wait for it, to share its commit), and counts
        // only if the job was accepted.
        Some(accepted) => {
            let (accepted, finished) = tokio::join!(accepted, env.store.finish_async(&job_id, result.clone(), log.clone(), now_ms()));
            if accepted.ok().flatten().is_none() {
                remove_temp_names(&inputs);
                discard(&env, &job_id).await;
                return;
            }
            match finished {
                Ok(Some(rec)) => crate::metrics::worker().record_job(&rec),
                _ => record_outcome(&env, &job_id, result, log).await,
            }
        }
        None => record_outcome(&env, &job_id, result, log).await,
    }
    // The inputs of a job started early are in place under their digests
    // once it is accepted (linked there beside the commit); their
    // temporary names go once its outcome is recorded, so that a re-run
    // after a power cut finds its input under one name or the other.
    remove_temp_names(&inputs);
    env.drop_log(&job_id);
    env.leases.release(&job_id);
    // The caller (`StepExecutor::spawn_job`) frees the slot, then notifies.
}

/// `text` with each temporary input path an early start's step was given
/// replaced by the path of its blob (`names`: pairs of the two), so that
/// the job's result, error and log name its inputs as a job started after
/// its acceptance would, where the controller maps them back to the
/// submitter's own paths. A log too large to be held in memory keeps, in
/// its file, the temporary paths the step wrote.
fn as_staged(text: &str, names: &[(String, String)]) -> String {
    names.iter().fold(text.to_string(), |t, (tmp, blob)| if t.contains(tmp.as_str()) { t.replace(tmp.as_str(), blob) } else { t })
}

/// [`as_staged`] for every string in a JSON value.
fn as_staged_value(value: &mut Value, names: &[(String, String)]) {
    if names.is_empty() {
        return;
    }
    match value {
        Value::String(s) if names.iter().any(|(tmp, _)| s.contains(tmp.as_str())) => *s = as_staged(s, names),
        Value::Array(items) => items.iter_mut().for_each(|v| as_staged_value(v, names)),
        Value::Object(map) => map.values_mut().for_each(|v| as_staged_value(v, names)),
        _ => {}
    }
}

/// Removes the temporary names of an early start's inputs (a name or two,
/// microseconds: done in place).
fn remove_temp_names(inputs: &[(String, std::path::PathBuf)]) {
    for (_, tmp) in inputs {
        let _ = std::fs::remove_file(tmp);
    }
}

/// Forgets a job started early that was not accepted: its log and the
/// folder its step may have written. Nothing of it was recorded, and its
/// submitter was told it failed (or was given the existing job).
async fn discard(env: &Arc<ExecutorEnv>, job_id: &str) {
    env.drop_log(job_id);
    let dir = env.paths.job_dir(job_id);
    let removed = blocking(move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    })
    .await;
    if let Some(Err(e)) = removed {
        tracing::warn!(error = %e, "could not remove the folder of a job that was not accepted; the next start removes it");
    }
    tracing::info!("the job was not accepted; the run started ahead of its acceptance is discarded");
}

/// How long the executor keeps trying to record a job's outcome while the
/// store fails (a full disk): the store re-opens itself once space returns,
/// and a job must not stay `running` for ever because one write failed.
const RECORD_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// Records a finished job's outcome, retrying with back-off while the store
/// fails. A job whose outcome could not be recorded in that time stays
/// `running` in the store and is recovered (INTERRUPTED or re-run) at the
/// next start.
async fn record_outcome(
    env: &Arc<ExecutorEnv>,
    job_id: &str,
    result: Result<(Value, Vec<crate::artifacts::ArtifactEntry>), StepError>,
    log: Option<String>,
) {
    let deadline = tokio::time::Instant::now() + RECORD_RETRY_FOR;
    let mut pause = std::time::Duration::from_millis(250);
    loop {
        match env.store.finish_async(job_id, result.clone(), log.clone(), now_ms()).await {
            Ok(rec) => {
                if let Some(rec) = rec {
                    crate::metrics::worker().record_job(&rec);
                }
                return;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "cannot record the job's outcome yet; retrying in {:?}", pause);
            }
            Err(e) => {
                tracing::error!(error = %e, "gave up recording the job's outcome; it is recovered at the next start");
                return;
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Opens the log, resolves staged inputs and runs the step.
async fn execute(
    env: &Arc<ExecutorEnv>,
    step: StepName,
    rec: &JobRecord,
    cancel: CancellationToken,
    inline: &[(String, std::path::PathBuf)],
) -> Result<steps::StepOutput, StepError> {
    let log_path = env.paths.log_path(&rec.job_id);
    let out_dir = env.paths.artifacts_dir(&rec.job_id);
    let log = match env.live_log(&rec.job_id) {
        // The usual case: the log the submission started, still in memory.
        Some(log) if rec.attempt <= 1 => log,
        live => {
            // A re-run after a crash starts from an empty artifact folder, so
            // no half-written file of the first attempt is ever served; it
            // appends to the first attempt's log file if there is one.
            let (attempt, dir) = (rec.attempt, out_dir.clone());
            let log = blocking(move || -> std::io::Result<Option<JobLog>> {
                if attempt > 1 && dir.exists() {
                    std::fs::remove_dir_all(&dir)?;
                }
                Ok(match live {
                    Some(log) => Some(log),
                    None if log_path.exists() => Some(JobLog::open(&log_path)?),
                    None => None,
                })
            })
            .await
            .ok_or_else(|| StepError::new(ErrorCode::Internal, "log task failed"))?
            .map_err(|e| StepError::io("opening the job log", e))?;
            match log {
                Some(log) => {
                    env.live_logs.lock().unwrap_or_else(|p| p.into_inner()).insert(rec.job_id.clone(), log.clone());
                    log
                }
                None => env.new_log(&rec.job_id),
            }
        }
    }
    .tracking_children(crate::process::ChildTracker::new(rec.job_id.clone(), Arc::new(env.store.clone())));
    log.line("worker", &format!("job {} started (attempt {})", rec.job_id, rec.attempt));
    let payload = resolve_blobs_with(&rec.payload, &env.paths, inline)?;
    #[cfg(debug_assertions)]
    test_hook::panic_if_requested(step, &rec.job_id, &payload);
    let ctx = StepContext { job_id: rec.job_id.clone(), out_dir, log: log.clone(), cancel, settings: env.settings.clone() };
    let outcome = steps::run_step(step, &payload, &ctx).await;
    if let Ok(out) = &outcome {
        if let Some(bad) = out.artifacts.iter().find(|a| !crate::artifacts::is_safe_name(&a.name)) {
            return Err(StepError::new(ErrorCode::Internal, format!("step produced an unsafe artifact name {:?}", bad.name)));
        }
    }
    match &outcome {
        Ok(o) => log.line("worker", &format!("job {} succeeded ({} artifact(s))", rec.job_id, o.artifacts.len())),
        Err(e) => log.line("worker", &format!("job {} failed: {e}", rec.job_id)),
    }
    outcome
}

/// Replaces every `"blob:sha256:<digest>"` string with the staged blob's
/// local path; a missing blob is `INPUT_NOT_FOUND`.
pub fn resolve_blobs(payload: &Value, paths: &WorkerPaths) -> Result<Value, StepError> {
    resolve_blobs_with(payload, paths, &[])
}

/// [`resolve_blobs`], where the digests in `inline` resolve to the given
/// temporary files (an early start's inputs, not yet in place).
fn resolve_blobs_with(payload: &Value, paths: &WorkerPaths, inline: &[(String, std::path::PathBuf)]) -> Result<Value, StepError> {
    Ok(match payload {
        Value::String(s) => match s.strip_prefix(BLOB_REF_PREFIX) {
            Some(d) if crate::protocol::is_sha256_hex(d) => {
                let p = inline.iter().find(|(digest, _)| digest == d).map_or_else(|| paths.blob_path(d), |(_, tmp)| tmp.clone());
                if !p.is_file() {
                    return Err(StepError::new(ErrorCode::InputNotFound, format!("blob {d} is not staged on this worker; upload it with PUT /blobs/{d}")));
                }
                Value::String(p.to_string_lossy().into_owned())
            }
            Some(_) => return Err(StepError::invalid(format!("{s:?} is not a valid blob reference"))),
            None => payload.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(|i| resolve_blobs_with(i, paths, inline)).collect::<Result<_, _>>()?),
        Value::Object(map) => Value::Object(
            map.iter().map(|(k, v)| Ok((k.clone(), resolve_blobs_with(v, paths, inline)?))).collect::<Result<_, StepError>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_early_start_names_its_inputs_by_their_blob_paths() {
        let names = vec![("/w/blobs/.spare.1a2b".to_string(), "/w/blobs/abcd".to_string())];
        let mut result = json!({"files": [{"path": "/w/blobs/.spare.1a2b", "n": 3}], "note": "read /w/blobs/.spare.1a2b twice"});
        as_staged_value(&mut result, &names);
        assert_eq!(result, json!({"files": [{"path": "/w/blobs/abcd", "n": 3}], "note": "read /w/blobs/abcd twice"}));
        assert_eq!(as_staged("cannot decode /w/blobs/.spare.1a2b: bad header", &names), "cannot decode /w/blobs/abcd: bad header");
        assert_eq!(as_staged("nothing to change", &names), "nothing to change");
        let mut untouched = json!({"path": "/elsewhere"});
        as_staged_value(&mut untouched, &[]);
        assert_eq!(untouched, json!({"path": "/elsewhere"}));
    }

    #[test]
    fn blob_refs_resolve_to_staged_paths() {
        let dir = tempfile::tempdir().unwrap();
        let paths = WorkerPaths::new(dir.path());
        std::fs::create_dir_all(paths.blobs_dir()).unwrap();
        let d = "ab".repeat(32);
        std::fs::write(paths.blob_path(&d), b"x").unwrap();
        let v = json!({"media_path": format!("blob:sha256:{d}"), "n": [1, "plain"]});
        let r = resolve_blobs(&v, &paths).unwrap();
        assert_eq!(r["media_path"], json!(paths.blob_path(&d).to_string_lossy()));
        assert_eq!(r["n"], json!([1, "plain"]));
        let missing = json!({"a": format!("blob:sha256:{}", "cd".repeat(32))});
        assert_eq!(resolve_blobs(&missing, &paths).unwrap_err().code, ErrorCode::InputNotFound);
    }
}
