//! The writes that run inside the commit queue's transactions: the change
//! each transition makes to a job record (start, finish, keep its log,
//! cancel) and the operations that record a submission or apply such a
//! change. The [`Store`](super::Store) methods only build them and queue
//! them, so these plain functions are kept apart from that API.

use super::{codec, idem_key, new_job_id, nonces, Cancellation, JobRecord, NewJob, Outcome, StoreError, Submission, ACTIVE, IDEMPOTENCY, JOBS, META};
use crate::error::ErrorCode;
use crate::protocol::{JobError, JobState};
use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

/// The record, when an update changed it.
pub(super) fn changed(out: Option<(JobRecord, bool)>) -> Option<JobRecord> {
    out.and_then(|(r, changed)| changed.then_some(r))
}

/// queued -> running.
pub(super) fn start_change(now_ms: u64) -> impl FnMut(&mut JobRecord) -> bool + Send + 'static {
    move |r| {
        if r.state != JobState::Queued {
            return false;
        }
        r.state = JobState::Running;
        r.started_at_ms = Some(now_ms);
        r.attempt += 1;
        true
    }
}

/// running -> the state the outcome says.
pub(super) fn finish_change(outcome: Outcome, log: Option<String>, now_ms: u64) -> impl FnMut(&mut JobRecord) -> bool + Send + 'static {
    move |r| {
        if r.state != JobState::Running {
            return false;
        }
        r.finished_at_ms = Some(now_ms);
        r.log = log.clone();
        match outcome.clone() {
            Ok((result, artifacts)) => {
                r.state = JobState::Succeeded;
                r.result = Some(result);
                r.artifacts = artifacts;
            }
            Err(e) => {
                r.state = match e.code {
                    ErrorCode::Cancelled => JobState::Cancelled,
                    ErrorCode::LeaseExpired => JobState::Abandoned,
                    _ => JobState::Failed,
                };
                if e.code == ErrorCode::LeaseExpired {
                    // A result made after the lease expired is not kept.
                    r.result = None;
                    r.artifacts.clear();
                }
                r.error = Some(JobError { code: e.code.as_str().to_string(), message: e.message });
            }
        }
        true
    }
}

/// Sets the record's log.
pub(super) fn keep_log_change(log: String) -> impl FnMut(&mut JobRecord) -> bool + Send + 'static {
    move |r| {
        r.log = Some(log.clone());
        true
    }
}

/// queued -> cancelled.
pub(super) fn cancel_change(now_ms: u64) -> impl FnMut(&mut JobRecord) -> bool + Send + 'static {
    move |r| {
        if r.state != JobState::Queued {
            return false;
        }
        r.state = JobState::Cancelled;
        r.finished_at_ms = Some(now_ms);
        r.error = Some(JobError { code: ErrorCode::Cancelled.as_str().into(), message: "cancelled before it started".into() });
        true
    }
}

pub(super) fn cancellation(out: Option<(JobRecord, bool)>) -> Cancellation {
    match out {
        None => Cancellation::NotFound,
        Some((r, true)) => Cancellation::Cancelled(r),
        Some((r, false)) if r.state == JobState::Running => Cancellation::Running(r),
        Some((r, false)) => Cancellation::Finished(r),
    }
}

/// The write of [`Store::submit`](super::Store::submit).
/// `started`: the id of a new job that holds a reserved slot, recorded
/// `running` from the start (see
/// [`Store::submit_async`](super::Store::submit_async));
/// `nonce`: the request's nonce, recorded first.
pub(super) fn submit_op(
    new: NewJob,
    started: Option<String>,
    nonce: Option<nonces::RequestNonce>,
    now_ms: u64,
    max_in_flight: u64,
) -> impl FnMut(&WriteTransaction) -> Result<Submission, StoreError> + Send + 'static {
    move |tx| {
        if let Some(n) = &nonce {
            n.record(tx)?;
        }
        let new = new.clone();
        let outcome = {
        let mut jobs = tx.open_table(JOBS)?;
        let mut idem = tx.open_table(IDEMPOTENCY)?;
        let mut active = tx.open_table(ACTIVE)?;
        let mut meta = tx.open_table(META)?;
        let key = idem_key(&new.step_name, &new.inputs_hash);
        let existing_id = idem.get(key.as_str())?.map(|g| g.value().to_string());
        let existing = match existing_id {
            Some(id) => jobs.get(id.as_str())?.map(|g| serde_json::from_slice::<JobRecord>(g.value())).transpose().map_err(codec)?,
            None => None,
        };
        match existing {
            // An abandoned job's result is never served: its
            // submitter gave it up, and may have run it elsewhere.
            Some(rec) if !matches!(rec.state, JobState::Failed | JobState::Cancelled | JobState::Abandoned) => Submission::Existing(rec),
            _ if active.len()? >= max_in_flight => Submission::Full,
            _ => {
                let seq = meta.get("next_seq")?.map(|g| g.value()).unwrap_or(0);
                meta.insert("next_seq", seq + 1)?;
                let rec = JobRecord {
                    job_id: started.clone().unwrap_or_else(new_job_id),
                    step_name: new.step_name,
                    state: if started.is_some() { JobState::Running } else { JobState::Queued },
                    inputs_hash: new.inputs_hash,
                    label: new.label,
                    payload: new.payload,
                    created_at_ms: now_ms,
                    started_at_ms: started.as_ref().map(|_| now_ms),
                    finished_at_ms: None,
                    attempt: u32::from(started.is_some()),
                    result: None,
                    error: None,
                    artifacts: Vec::new(),
                    seq,
                    lease_s: new.lease_s,
                    log: None,
                };
                let bytes = serde_json::to_vec(&rec).map_err(codec)?;
                jobs.insert(rec.job_id.as_str(), bytes.as_slice())?;
                idem.insert(key.as_str(), rec.job_id.as_str())?;
                active.insert(rec.job_id.as_str(), seq)?;
                Submission::Created(rec)
            }
        }
        };
        Ok(outcome)
    }
}

/// The write of [`Store::update`](super::Store::update): applies `f` to
/// the job and saves it when `f` returns true.
pub(super) fn update_op<F>(job_id: &str, mut f: F) -> impl FnMut(&WriteTransaction) -> Result<Option<(JobRecord, bool)>, StoreError> + Send + 'static
where
    F: FnMut(&mut JobRecord) -> bool + Send + 'static,
{
    let job_id = job_id.to_string();
    move |tx| {
        let mut jobs = tx.open_table(JOBS)?;
        let mut active = tx.open_table(ACTIVE)?;
        let current = jobs.get(job_id.as_str())?.map(|g| serde_json::from_slice::<JobRecord>(g.value())).transpose().map_err(codec)?;
        Ok(match current {
            None => None,
            Some(mut rec) => {
                let changed = f(&mut rec);
                if changed {
                    let bytes = serde_json::to_vec(&rec).map_err(codec)?;
                    jobs.insert(job_id.as_str(), bytes.as_slice())?;
                    if rec.state.is_terminal() {
                        active.remove(job_id.as_str())?;
                    }
                }
                Some((rec, changed))
            }
        })
    }
}
