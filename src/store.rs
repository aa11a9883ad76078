//! The worker's durable job store: an embedded transactional database
//! (`redb`) at `$RAYVAULT_STATE_DIR/worker/worker.redb` holding jobs, their
//! state and the idempotency index.
//!
//! Architecture Invariant: every state change is one write transaction, and
//! the idempotency check and the insert of a new job happen in the same
//! transaction, so concurrent duplicate submissions yield exactly one job.
//! Writes go through a commit queue ([`queue`]): one writer thread applies
//! the writes that arrive together in one transaction and commits once, so
//! they share one sync (group commit); no caller gets its answer before the
//! commit holding its write returned. Blocking callers wait on the queue;
//! async callers await it (the `*_async` methods) without holding a thread.
//! The job writes it runs are built in `changes`.
//! Reads of a single record take microseconds and run on the caller's
//! thread.
//!
//! Tables:
//! - `jobs`: job id -> JSON [`JobRecord`];
//! - `idempotency`: `STEP_NAME \0 inputs_hash` -> job id of the latest job;
//! - `active`: job id -> sequence number, for jobs queued or running (its
//!   size is the in-flight count; restart recovery walks it in order);
//! - `meta`: counters (`next_seq`);
//! - `nonces`: accepted request nonces and their expiry ([`nonces`]);
//! - `children`: the process groups of running jobs' tools ([`children`]),
//!   so that a worker started after a crash kills what is left of them.
//!
//! The database recovers by itself from an I/O failure (a full disk, most
//! often): redb then refuses every later call with "Previous I/O error
//! occurred. Please close and re-open the database", so the handle is closed
//! and opened again by the first call that meets such an error (see
//! [`Store::run`], and `db` for the handle); once space is back, the next
//! call succeeds without a restart of the worker.

use crate::artifacts::ArtifactEntry;
use crate::error::{ErrorCode, StepError};
use crate::protocol::{JobError, JobState, JobView};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

mod changes;
pub mod children;
mod db;
mod error;
mod find;
pub mod nonces;
mod paths;
mod queue;
#[cfg(test)]
mod tests;
pub(crate) use queue::{next_batch, Batched};

use changes::{cancel_change, cancellation, changed, finish_change, keep_log_change, start_change, submit_op, update_op};
use db::{open_database, Db, OpenError};
use queue::Flush;

pub use error::{StoreError, StoreErrorKind};
use error::codec;
pub use paths::WorkerPaths;

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const IDEMPOTENCY: TableDefinition<&str, &str> = TableDefinition::new("idempotency");
const ACTIVE: TableDefinition<&str, u64> = TableDefinition::new("active");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Everything the worker keeps about one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub step_name: String,
    pub state: JobState,
    pub inputs_hash: String,
    pub label: Option<String>,
    /// The payload as submitted (blob references unresolved).
    pub payload: Value,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub attempt: u32,
    pub result: Option<Value>,
    pub error: Option<JobError>,
    pub artifacts: Vec<ArtifactEntry>,
    /// Submission order, used to requeue in order after a restart.
    pub seq: u64,
    /// The submitter's lease length in seconds, if it holds one (see
    /// `crate::lease`); kept so that a restarted worker parks the job until
    /// its controller re-attaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_s: Option<u64>,
    /// The finished job's whole log, when it stayed small enough to be
    /// held in memory (see [`crate::joblog::JobLog::buffered`]); a larger
    /// log is in the job's folder instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

impl JobRecord {
    /// The job as the wire shows it (without the payload; with the log once
    /// the job has ended, when the record holds it).
    pub fn view(&self) -> JobView {
        JobView {
            job_id: self.job_id.clone(),
            step_name: self.step_name.clone(),
            state: self.state,
            inputs_hash: self.inputs_hash.clone(),
            label: self.label.clone(),
            created_at_ms: self.created_at_ms,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            attempt: self.attempt,
            result: self.result.clone(),
            error: self.error.clone(),
            artifacts: self.artifacts.clone(),
            log: self.inline_log().map(str::to_string),
            log_bytes: self.inline_log().map(|l| l.len() as u64),
        }
    }

    /// The whole log, once the job has ended, when the record holds it.
    fn inline_log(&self) -> Option<&str> {
        self.log.as_deref().filter(|_| self.state.is_terminal())
    }
}

/// A new job to record.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub step_name: String,
    pub inputs_hash: String,
    pub payload: Value,
    pub label: Option<String>,
    pub lease_s: Option<u64>,
}

/// What [`Store::submit`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Submission {
    /// A new job was queued.
    Created(JobRecord),
    /// The same step + inputs hash is queued, running or succeeded.
    Existing(JobRecord),
    /// The in-flight limit is reached; nothing was recorded.
    Full,
}

/// What [`Store::cancel`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancellation {
    /// The job was queued and is now cancelled.
    Cancelled(JobRecord),
    /// The job is running: its executor must be told to stop it.
    Running(JobRecord),
    /// The job had already finished; nothing changed.
    Finished(JobRecord),
    NotFound,
}

/// What to do at startup with jobs that were running when the worker died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptedPolicy {
    /// Mark them failed with code `INTERRUPTED`.
    Fail,
    /// Queue them again (their attempt count goes up when they start).
    Rerun,
}

/// What [`Store::recover`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// Jobs to hand to the executors, oldest first.
    pub queued: Vec<JobRecord>,
    /// Jobs that were running and are now failed with `INTERRUPTED`.
    pub interrupted: Vec<String>,
}

/// What a step produced: its result and artifacts, or its error.
pub type Outcome = Result<(Value, Vec<ArtifactEntry>), StepError>;

/// A cheap, cloneable handle on the database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Db>,
    /// The commit queue; its thread holds the database open until the last
    /// handle is dropped.
    writer: Arc<queue::Writer>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Generates a job id: `j` followed by 32 lower-case hex digits.
pub fn new_job_id() -> String {
    format!("j{}", uuid::Uuid::new_v4().simple())
}

/// True for an id of the form [`new_job_id`] makes; anything else is never
/// looked up (ids become folder names).
pub fn is_job_id(s: &str) -> bool {
    s.len() == 33 && s.starts_with('j') && crate::protocol::is_lower_hex(&s[1..])
}

fn idem_key(step: &str, hash: &str) -> String {
    format!("{step}\0{hash}")
}

impl Store {
    /// Opens (creating if needed) the database at `path`. Fails if another
    /// process has it open, which keeps two workers off one state folder.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_waiting(path, std::time::Duration::ZERO)
    }

    /// Like [`Store::open`], but while another process holds the database
    /// it tries again for up to `wait`. A worker restarted right after a
    /// crash needs this: the dead process's lock can outlive it for a
    /// moment (seen after kill -9 under load), and refusing to start then
    /// would turn a crash into an outage. A second live worker still fails,
    /// only `wait` later.
    pub fn open_waiting(path: &Path, wait: std::time::Duration) -> Result<Store, StoreError> {
        let deadline = std::time::Instant::now() + wait;
        let db = loop {
            match open_database(path) {
                Err(OpenError::AlreadyOpen) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(OpenError::AlreadyOpen) => {
                    return Err(StoreError::new(StoreErrorKind::Other, redb::DatabaseError::DatabaseAlreadyOpen.to_string()))
                }
                Err(OpenError::Store(e)) => return Err(e),
                Ok(db) => break db,
            }
        };
        let inner = Arc::new(Db::new(path, db));
        Ok(Store { writer: Arc::new(queue::Writer::start(inner.clone())), inner })
    }

    /// How many transactions the commit queue has committed (or tried),
    /// and how many writes they held; the second divided by the first is
    /// the mean batch size.
    pub fn commit_stats(&self) -> (u64, u64) {
        (self.inner.batches.load(Ordering::Relaxed), self.inner.batched_writes.load(Ordering::Relaxed))
    }

    /// Queues a write and blocks until the commit holding it returned.
    fn write<T, F>(&self, sync: Flush, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.write(sync, op)
    }

    /// Queues a write; resolves after the commit holding it returned.
    fn write_async<T, F>(&self, sync: Flush, op: F) -> impl std::future::Future<Output = Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.write_async(sync, op)
    }

    /// True while the store is in its failed state: the last call met an I/O
    /// error and none has succeeded since. `/health` reports it.
    pub fn is_failed(&self) -> bool {
        self.inner.failed.load(Ordering::Acquire)
    }

    /// Tries to leave the failed state: an empty write transaction, which
    /// re-opens the database first if it is poisoned by an earlier I/O
    /// error. True when the store works again. Cheap, and only worth calling
    /// while [`Store::is_failed`]: nothing else would write (and so heal)
    /// while the controller keeps jobs away from a degraded worker.
    pub fn try_heal(&self) -> bool {
        self.run(|db| {
            let tx = db.begin_write()?;
            tx.commit()?;
            Ok(())
        })
        .is_ok()
    }

    /// Runs `op` on the database. When it fails with an I/O error, the
    /// database is closed and opened again (once per call, by one caller at
    /// a time); `op` is then tried once more if the failure was only redb's
    /// "previous I/O error" state, and otherwise reported. A failure whose
    /// cause is a full disk is reported as [`StoreErrorKind::DiskFull`].
    fn run<T>(&self, op: impl FnMut(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.inner.run(op)
    }
}

impl Store {
    /// Looks a job up.
    pub fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read()?;
            let jobs = tx.open_table(JOBS)?;
            let rec = jobs.get(job_id)?;
            rec.map(|g| serde_json::from_slice(g.value()).map_err(codec)).transpose()
        })
    }

    /// Whether a job of `step_name` with `inputs_hash` was ever accepted
    /// here (in whatever state): a submission of it is then answered from
    /// that job, or replaces a failed one, through the usual commit.
    pub fn knows_inputs(&self, step_name: &str, inputs_hash: &str) -> Result<bool, StoreError> {
        let key = idem_key(step_name, inputs_hash);
        self.run(|db| Ok(db.begin_read()?.open_table(IDEMPOTENCY)?.get(key.as_str())?.is_some()))
    }

    /// Number of jobs queued or running.
    pub fn in_flight(&self) -> Result<u64, StoreError> {
        self.run(|db| Ok(db.begin_read()?.open_table(ACTIVE)?.len()?))
    }

    /// Records a submission: returns the existing job for the same step and
    /// inputs hash unless it failed or was cancelled, else queues a new one.
    pub fn submit(&self, new: NewJob, now_ms: u64, max_in_flight: u64) -> Result<Submission, StoreError> {
        self.write(Flush::Immediate, submit_op(new, None, None, now_ms, max_in_flight))
    }

    /// [`Store::submit`] for async callers, as the worker's `POST /jobs`
    /// makes it, in one commit:
    /// - `started`: the id for a new job that holds a free slot of its
    ///   executor (a reservation); the job is created under that id and
    ///   recorded `running` (attempt 1, started now) in the commit that
    ///   accepts it, so it starts without a second sync. A duplicate
    ///   answers the existing job as usual, and the slot is not used.
    /// - `nonce`: the request's own nonce, recorded in the same transaction
    ///   whatever the outcome.
    pub async fn submit_async(
        &self,
        new: NewJob,
        started: Option<String>,
        nonce: Option<nonces::RequestNonce>,
        now_ms: u64,
        max_in_flight: u64,
    ) -> Result<Submission, StoreError> {
        self.write_async(Flush::Immediate, submit_op(new, started, nonce, now_ms, max_in_flight)).await
    }

    /// [`Store::submit_async`] for a job started ahead of its acceptance
    /// (under a reservation, `started`): the write is queued when this is
    /// called, not when the future is first polled, so that anything the
    /// job writes afterwards (its end) comes after it in the queue; and it
    /// is *patient* until `patience`: it waits that long for another write
    /// to share its commit, so that a step ending within it has its end
    /// recorded in the same transaction and sync as its acceptance
    /// ([`queue`]: an end queued before any record exists changes nothing,
    /// so a job that was not created stays unrecorded).
    pub fn submit_started_early(
        &self,
        new: NewJob,
        started: String,
        nonce: Option<nonces::RequestNonce>,
        now_ms: u64,
        max_in_flight: u64,
        patience: std::time::Instant,
    ) -> impl std::future::Future<Output = Result<Submission, StoreError>> {
        self.writer.write_async_patient(Flush::Immediate, Some(patience), submit_op(new, Some(started), nonce, now_ms, max_in_flight))
    }

    /// Applies `f` to a job inside one write transaction and saves the
    /// result; `f` returns false to leave the job unchanged.
    fn update<F>(&self, job_id: &str, f: F) -> Result<Option<(JobRecord, bool)>, StoreError>
    where
        F: FnMut(&mut JobRecord) -> bool + Send + 'static,
    {
        self.write(Flush::Immediate, update_op(job_id, f))
    }

    /// [`Store::update`] for async callers.
    async fn update_async<F>(&self, job_id: &str, f: F) -> Result<Option<(JobRecord, bool)>, StoreError>
    where
        F: FnMut(&mut JobRecord) -> bool + Send + 'static,
    {
        self.write_async(Flush::Immediate, update_op(job_id, f)).await
    }

    /// Moves a queued job to running; `None` if it is no longer queued
    /// (cancelled while waiting) or does not exist.
    pub fn mark_running(&self, job_id: &str, now_ms: u64) -> Result<Option<JobRecord>, StoreError> {
        Ok(changed(self.update(job_id, start_change(now_ms))?))
    }

    /// [`Store::mark_running`] for async callers.
    pub async fn mark_running_async(&self, job_id: &str, now_ms: u64) -> Result<Option<JobRecord>, StoreError> {
        Ok(changed(self.update_async(job_id, start_change(now_ms)).await?))
    }

    /// Records the outcome of a running job. A `CANCELLED` error makes the
    /// job `cancelled`; any other error makes it `failed`.
    pub fn finish(&self, job_id: &str, outcome: Outcome, now_ms: u64) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.update(job_id, finish_change(outcome, None, now_ms))?.map(|(r, _)| r))
    }

    /// [`Store::finish`] for async callers; `log` is the job's whole log
    /// when it was held in memory, kept in the record in the same write.
    pub async fn finish_async(&self, job_id: &str, outcome: Outcome, log: Option<String>, now_ms: u64) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.update_async(job_id, finish_change(outcome, log, now_ms)).await?.map(|(r, _)| r))
    }

    /// Keeps a job's whole log in its record (a job that ended without its
    /// executor recording it: cancelled or abandoned while queued,
    /// interrupted by a shutdown).
    pub fn keep_log(&self, job_id: &str, log: String) -> Result<(), StoreError> {
        self.update(job_id, keep_log_change(log))?;
        Ok(())
    }

    /// [`Store::keep_log`] for async callers.
    pub async fn keep_log_async(&self, job_id: &str, log: String) -> Result<(), StoreError> {
        self.update_async(job_id, keep_log_change(log)).await?;
        Ok(())
    }

    /// Cancels a queued job at once; reports a running one so its executor
    /// can stop it (the executor then records `cancelled`).
    pub fn cancel(&self, job_id: &str, now_ms: u64) -> Result<Cancellation, StoreError> {
        Ok(cancellation(self.update(job_id, cancel_change(now_ms))?))
    }

    /// [`Store::cancel`] for async callers.
    pub async fn cancel_async(&self, job_id: &str, now_ms: u64) -> Result<Cancellation, StoreError> {
        Ok(cancellation(self.update_async(job_id, cancel_change(now_ms)).await?))
    }

    /// Marks a queued job `abandoned` with `LEASE_EXPIRED` (its lease expired
    /// before it could start). A running job is stopped by its executor,
    /// which records the same; `None` when the job was not queued.
    pub fn abandon_queued(&self, job_id: &str, message: &str, now_ms: u64) -> Result<Option<JobRecord>, StoreError> {
        let message = message.to_string();
        let out = self.update(job_id, move |r| {
            if r.state != JobState::Queued {
                return false;
            }
            r.state = JobState::Abandoned;
            r.finished_at_ms = Some(now_ms);
            r.error = Some(JobError { code: ErrorCode::LeaseExpired.as_str().into(), message: message.clone() });
            true
        })?;
        Ok(changed(out))
    }

    /// Marks a running job failed with `INTERRUPTED` (graceful shutdown that
    /// could not wait for it).
    pub fn interrupt(&self, job_id: &str, message: &str, now_ms: u64) -> Result<(), StoreError> {
        let message = message.to_string();
        self.update(job_id, move |r| {
            if r.state != JobState::Running {
                return false;
            }
            r.state = JobState::Failed;
            r.finished_at_ms = Some(now_ms);
            r.error = Some(JobError { code: ErrorCode::Interrupted.as_str().into(), message: message.clone() });
            true
        })?;
        Ok(())
    }

    /// Startup recovery: jobs left `running` by a crash are failed with
    /// `INTERRUPTED` or queued again, per `policy`. Reports every job that
    /// is now queued, in submission order, for the executors, and the ids
    /// of the jobs failed as interrupted.
    pub fn recover(&self, policy: InterruptedPolicy, now_ms: u64) -> Result<Recovery, StoreError> {
        self.run(|db| {
            let tx = db.begin_write()?;
            let mut queued = Vec::new();
            let mut interrupted = Vec::new();
            {
                let mut jobs = tx.open_table(JOBS)?;
                let mut active = tx.open_table(ACTIVE)?;
                let mut ids: Vec<(u64, String)> = Vec::new();
                for item in active.iter()? {
                    let (k, v) = item?;
                    ids.push((v.value(), k.value().to_string()));
                }
                ids.sort();
                for (_, id) in ids {
                    let rec = jobs.get(id.as_str())?.map(|g| serde_json::from_slice::<JobRecord>(g.value())).transpose().map_err(codec)?;
                    let Some(mut rec) = rec else {
                        active.remove(id.as_str())?;
                        continue;
                    };
                    match (rec.state, policy) {
                        (JobState::Running, InterruptedPolicy::Fail) => {
                            rec.state = JobState::Failed;
                            rec.finished_at_ms = Some(now_ms);
                            rec.error = Some(JobError {
                                code: ErrorCode::Interrupted.as_str().into(),
                                message: "the worker stopped while this job was running (crash or kill); submit it again to re-run it".into(),
                            });
                            active.remove(id.as_str())?;
                            interrupted.push(id.clone());
                        }
                        (JobState::Running, InterruptedPolicy::Rerun) => {
                            rec.state = JobState::Queued;
                            queued.push(rec.clone());
                        }
                        (JobState::Queued, _) => queued.push(rec.clone()),
                        _ => {
                            active.remove(id.as_str())?;
                            continue;
                        }
                    }
                    let bytes = serde_json::to_vec(&rec).map_err(codec)?;
                    jobs.insert(id.as_str(), bytes.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(Recovery { queued, interrupted })
        })
    }

    /// Deletes finished jobs that ended before `cutoff_ms`, with their
    /// idempotency entries. Returns the ids removed, so that their folders
    /// can be deleted too.
    pub fn prune(&self, cutoff_ms: u64) -> Result<Vec<String>, StoreError> {
        self.run(|db| {
            let tx = db.begin_write()?;
            let mut removed = Vec::new();
            {
                let mut jobs = tx.open_table(JOBS)?;
                let mut idem = tx.open_table(IDEMPOTENCY)?;
                let mut old = Vec::new();
                for item in jobs.iter()? {
                    let (k, v) = item?;
                    let rec: JobRecord = serde_json::from_slice(v.value()).map_err(codec)?;
                    if rec.state.is_terminal() && rec.finished_at_ms.unwrap_or(rec.created_at_ms) < cutoff_ms {
                        old.push((k.value().to_string(), idem_key(&rec.step_name, &rec.inputs_hash)));
                    }
                }
                for (id, key) in old {
                    jobs.remove(id.as_str())?;
                    let points_here = idem.get(key.as_str())?.is_some_and(|g| g.value() == id);
                    if points_here {
                        idem.remove(key.as_str())?;
                    }
                    removed.push(id);
                }
            }
            tx.commit()?;
            Ok(removed)
        })
    }
}
