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
//! [`Store::run`]); once space is back, the next call succeeds without a
//! restart of the worker.

use crate::artifacts::ArtifactEntry;
use crate::error::{ErrorCode, StepError};
use crate::protocol::{JobError, JobState, JobView};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub mod children;
mod find;
pub mod nonces;
mod paths;
mod queue;
pub(crate) use queue::{next_batch, Batched};

use queue::Flush;

pub use paths::WorkerPaths;

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const IDEMPOTENCY: TableDefinition<&str, &str> = TableDefinition::new("idempotency");
const ACTIVE: TableDefinition<&str, u64> = TableDefinition::new("active");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A store failure (database or record encoding).
#[derive(Debug, thiserror::Error)]
#[error("job store: {message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    /// The error is redb's "previous I/O error" state (or a closed handle),
    /// not a failure of this call's own I/O.
    closed: bool,
}

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// A write failed because the disk is full (ENOSPC).
    DiskFull,
    /// Another I/O failure, or the database is closed after one.
    Io,
    /// Anything else (a corrupt record, a bug).
    Other,
}

impl StoreError {
    fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError { kind, message: message.into(), closed: false }
    }

    fn closed() -> Self {
        StoreError { kind: StoreErrorKind::Io, message: "the database is closed after an I/O error".into(), closed: true }
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// True when the cause is a full disk.
    pub fn is_disk_full(&self) -> bool {
        self.kind == StoreErrorKind::DiskFull
    }

    /// The error code a caller reports: `DISK_FULL`, `IO_ERROR` or `INTERNAL`.
    pub fn code(&self) -> ErrorCode {
        match self.kind {
            StoreErrorKind::DiskFull => ErrorCode::DiskFull,
            StoreErrorKind::Io => ErrorCode::IoError,
            StoreErrorKind::Other => ErrorCode::Internal,
        }
    }

    /// True for the failures after which redb must be closed and re-opened.
    fn needs_reopen(&self) -> bool {
        self.kind != StoreErrorKind::Other
    }
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        match e.into() {
            redb::Error::Io(io) => {
                let kind = if crate::error::is_disk_full(&io) { StoreErrorKind::DiskFull } else { StoreErrorKind::Io };
                StoreError::new(kind, io.to_string())
            }
            redb::Error::PreviousIo => StoreError::closed(),
            other => StoreError::new(StoreErrorKind::Other, other.to_string()),
        }
    }
}

fn codec(e: serde_json::Error) -> StoreError {
    StoreError::new(StoreErrorKind::Other, format!("corrupt job record: {e}"))
}

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

/// Free space under which an I/O failure of the store is taken for a full
/// disk (a redb page write needs a few pages at most).
const NEARLY_FULL_BYTES: u64 = 1 << 20;

/// A cheap, cloneable handle on the database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Db>,
    /// The commit queue; its thread holds the database open until the last
    /// handle is dropped.
    writer: Arc<queue::Writer>,
}

/// The database behind a [`Store`], re-opened after an I/O failure.
struct Db {
    path: PathBuf,
    /// A generation number, bumped at every re-open, and the open database
    /// (`None` while a re-open failed; the next call tries again).
    slot: RwLock<(u64, Option<Arc<Database>>)>,
    /// Held while re-opening, so that concurrent callers re-open once.
    reopening: Mutex<()>,
    /// The last call failed with an I/O error and no call has succeeded since.
    failed: AtomicBool,
    /// That failure was a full disk.
    disk_full: AtomicBool,
    /// Transactions the commit queue ran, and the writes they held.
    batches: AtomicU64,
    batched_writes: AtomicU64,
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
        let inner = Arc::new(Db {
            path: path.to_path_buf(),
            slot: RwLock::new((0, Some(Arc::new(db)))),
            reopening: Mutex::new(()),
            failed: AtomicBool::new(false),
            disk_full: AtomicBool::new(false),
            batches: AtomicU64::new(0),
            batched_writes: AtomicU64::new(0),
        });
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

impl Db {
    /// See [`Store::run`].
    fn run<T>(&self, mut op: impl FnMut(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let db = self;
        let mut reopened = false;
        loop {
            let (generation, handle) = {
                let slot = db.slot.read().unwrap_or_else(|p| p.into_inner());
                (slot.0, slot.1.clone())
            };
            let result = match handle {
                // A panic inside the storage engine (seen on a full disk)
                // is one more I/O failure of this call: it re-opens the
                // database like any other, instead of failing the request
                // with no reason.
                Some(handle) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&handle))).unwrap_or_else(|p| {
                    let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                    tracing::error!("the job store's engine panicked: {what}");
                    Err(StoreError::new(StoreErrorKind::Io, format!("the storage engine failed ({what})")))
                }),
                None => Err(StoreError::closed()),
            };
            match result {
                Ok(v) => {
                    db.failed.store(false, Ordering::Release);
                    db.disk_full.store(false, Ordering::Release);
                    return Ok(v);
                }
                Err(e) if e.needs_reopen() => {
                    // Only a fresh error says what the cause was; the closed
                    // state keeps the cause of the error that closed it.
                    let fresh = !e.closed;
                    if fresh {
                        db.disk_full.store(e.is_disk_full(), Ordering::Release);
                    }
                    db.failed.store(true, Ordering::Release);
                    if reopened {
                        return Err(self.explain(e));
                    }
                    reopened = true;
                    if let Err(again) = db.reopen(generation) {
                        if again.is_disk_full() {
                            db.disk_full.store(true, Ordering::Release);
                        }
                        return Err(self.explain(again));
                    }
                    if fresh {
                        return Err(self.explain(e));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives an I/O failure its cause and a message that says what to do.
    fn explain(&self, e: StoreError) -> StoreError {
        // Not every failure on a full disk carries ENOSPC (the engine can
        // fail one step later, or panic): an I/O failure while the disk has
        // almost no room left is the full disk's.
        let nearly_full = || {
            let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
            crate::steps::disk::free_bytes(dir).is_some_and(|free| free < NEARLY_FULL_BYTES)
        };
        if e.is_disk_full() || self.disk_full.load(Ordering::Acquire) || (e.kind == StoreErrorKind::Io && nearly_full()) {
            StoreError::new(
                StoreErrorKind::DiskFull,
                format!(
                    "the disk holding {} is full ({}); free space there, the worker recovers by itself",
                    self.path.display(),
                    e.message
                ),
            )
        } else {
            StoreError::new(e.kind, format!("{} at {}", e.message, self.path.display()))
        }
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

/// What a step produced: its result and artifacts, or its error.
pub type Outcome = Result<(Value, Vec<ArtifactEntry>), StepError>;

/// The record, when an update changed it.
fn changed(out: Option<(JobRecord, bool)>) -> Option<JobRecord> {
    out.and_then(|(r, changed)| changed.then_some(r))
}

/// queued -> running.
fn start_change(now_ms: u64) -> impl FnMut(&mut JobRecord) -> bool + Send + 'static {
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
fn finish_change(outcome: Outcome, log: Option<String>, now_ms: u64) -> impl FnMut(&mut JobRecord) -> bool + Send + 'static {
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
fn keep_log_change(log: String) -> impl FnMut(&mut JobRecord) -> bool + Send + 'static {
    move |r| {
        r.log = Some(log.clone());
        true
    }
}

/// queued -> cancelled.
fn cancel_change(now_ms: u64) -> impl FnMut(&mut JobRecord) -> bool + Send + 'static {
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

fn cancellation(out: Option<(JobRecord, bool)>) -> Cancellation {
    match out {
        None => Cancellation::NotFound,
        Some((r, true)) => Cancellation::Cancelled(r),
        Some((r, false)) if r.state == JobState::Running => Cancellation::Running(r),
        Some((r, false)) => Cancellation::Finished(r),
    }
}

/// The write of [`Store::submit`].
/// `started`: the id of a new job that holds a reserved slot, recorded
/// `running` from the start (see [`Store::submit_async`]);
/// `nonce`: the request's nonce, recorded first.
fn submit_op(
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

/// The write of [`Store::update`]: applies `f` to the job and saves it
/// when `f` returns true.
fn update_op<F>(job_id: &str, mut f: F) -> impl FnMut(&WriteTransaction) -> Result<Option<(JobRecord, bool)>, StoreError> + Send + 'static
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

enum OpenError {
    AlreadyOpen,
    Store(StoreError),
}

/// The database's page cache. redb's default (1 GiB) lets the cache grow
/// with the file, so the worker's memory grew with every job it kept; the
/// records a worker reads again (jobs in flight, the idempotency index) are
/// few, and other pages are read back from the operating system's file
/// cache. 256 KiB (redb keeps a tenth of it for pages being written): a
/// bigger cache only fills with pages of ended jobs, about 1 MiB that
/// stayed in memory after a burst of 2,000 jobs at 1 MiB.
const CACHE_BYTES: usize = 256 << 10;

/// Opens (creating) the database file and its tables.
fn open_database(path: &Path) -> Result<Database, OpenError> {
    let db = match redb::Builder::new().set_cache_size(CACHE_BYTES).create(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(OpenError::AlreadyOpen),
        Err(e) => return Err(OpenError::Store(e.into())),
    };
    let create = || -> Result<(), StoreError> {
        let tx = db.begin_write()?;
        {
            tx.open_table(JOBS)?;
            tx.open_table(IDEMPOTENCY)?;
            tx.open_table(ACTIVE)?;
            tx.open_table(META)?;
            tx.open_table(nonces::NONCES)?;
            tx.open_table(children::CHILDREN)?;
        }
        tx.commit()?;
        Ok(())
    };
    create().map_err(OpenError::Store)?;
    Ok(db)
}

impl Db {
    /// Closes the database of generation `failed` and opens the file again.
    /// Does nothing if another caller re-opened it since.
    fn reopen(&self, failed: u64) -> Result<(), StoreError> {
        let _one_at_a_time = self.reopening.lock().unwrap_or_else(|p| p.into_inner());
        let old = {
            let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
            if slot.0 != failed {
                return Ok(());
            }
            slot.0 += 1;
            slot.1.take()
        };
        // The file stays locked until the last handle on the old database is
        // dropped; callers hold one only for the length of one transaction.
        if let Some(mut old) = old {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if std::time::Instant::now() < deadline => {
                        old = still_shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => {
                        return Err(StoreError::new(StoreErrorKind::Io, "the database could not be closed after an I/O error (still in use)"))
                    }
                }
            }
        }
        match open_database(&self.path) {
            Ok(db) => {
                self.slot.write().unwrap_or_else(|p| p.into_inner()).1 = Some(Arc::new(db));
                tracing::warn!(path = %self.path.display(), "re-opened the job store after an I/O error");
                Ok(())
            }
            Err(OpenError::AlreadyOpen) => {
                Err(StoreError::new(StoreErrorKind::Io, "the database could not be re-opened: its file is still locked"))
            }
            Err(OpenError::Store(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn new_job(hash: &str) -> NewJob {
        NewJob { step_name: "FFMPEG_PROBE".into(), inputs_hash: hash.into(), payload: json!({"a": 1}), label: None, lease_s: None }
    }

    fn created(s: Submission) -> JobRecord {
        match s {
            Submission::Created(r) => r,
            other => panic!("expected Created, got {other:?}"),
        }
    }

    #[test]
    fn idempotency_follows_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.redb")).unwrap();
        let a = created(store.submit(new_job("h1"), 1, 10).unwrap());
        assert!(is_job_id(&a.job_id));
        assert!(matches!(store.submit(new_job("h1"), 2, 10).unwrap(), Submission::Existing(r) if r.job_id == a.job_id));
        store.mark_running(&a.job_id, 3).unwrap().unwrap();
        store.finish(&a.job_id, Err(StepError::new(ErrorCode::FfmpegFailed, "x")), 4).unwrap();
        // A failed job runs anew on resubmission.
        let b = created(store.submit(new_job("h1"), 5, 10).unwrap());
        assert_ne!(a.job_id, b.job_id);
        store.mark_running(&b.job_id, 6).unwrap().unwrap();
        let done = store.finish(&b.job_id, Ok((json!({"ok": true}), vec![])), 7).unwrap().unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        assert!(matches!(store.submit(new_job("h1"), 8, 10).unwrap(), Submission::Existing(r) if r.job_id == b.job_id));
        assert_eq!(store.in_flight().unwrap(), 0);
    }

    #[test]
    fn in_flight_limit_and_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.redb")).unwrap();
        let a = created(store.submit(new_job("h1"), 1, 1).unwrap());
        assert_eq!(store.submit(new_job("h2"), 1, 1).unwrap(), Submission::Full);
        assert!(matches!(store.cancel(&a.job_id, 2).unwrap(), Cancellation::Cancelled(_)));
        assert!(store.mark_running(&a.job_id, 3).unwrap().is_none(), "a cancelled job never starts");
        assert!(matches!(store.cancel(&a.job_id, 2).unwrap(), Cancellation::Finished(_)));
        assert_eq!(store.cancel("jnope", 2).unwrap(), Cancellation::NotFound);
        created(store.submit(new_job("h2"), 4, 1).unwrap());
    }

    #[test]
    fn recovery_and_prune_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        let (a, b) = {
            let store = Store::open(&path).unwrap();
            let a = created(store.submit(new_job("h1"), 1, 10).unwrap());
            let b = created(store.submit(new_job("h2"), 2, 10).unwrap());
            store.mark_running(&a.job_id, 3).unwrap().unwrap();
            (a, b)
        };
        let store = Store::open(&path).unwrap();
        let rec = store.recover(InterruptedPolicy::Fail, 10).unwrap();
        assert_eq!(rec.interrupted, vec![a.job_id.clone()]);
        assert_eq!(rec.queued.iter().map(|r| r.job_id.clone()).collect::<Vec<_>>(), vec![b.job_id.clone()]);
        let a2 = store.get(&a.job_id).unwrap().unwrap();
        assert_eq!((a2.state, a2.error.unwrap().code.as_str()), (JobState::Failed, "INTERRUPTED"));
        assert_eq!(store.prune(11).unwrap(), vec![a.job_id.clone()]);
        assert!(store.get(&a.job_id).unwrap().is_none());
        assert!(store.get(&b.job_id).unwrap().is_some());
    }

    #[test]
    fn rerun_policy_requeues_running_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.redb")).unwrap();
        let a = created(store.submit(new_job("h1"), 1, 10).unwrap());
        store.mark_running(&a.job_id, 2).unwrap().unwrap();
        let q = store.recover(InterruptedPolicy::Rerun, 3).unwrap();
        assert_eq!((q.queued.len(), q.interrupted.len()), (1, 0));
        let again = store.mark_running(&a.job_id, 4).unwrap().unwrap();
        assert_eq!(again.attempt, 2);
    }

    #[test]
    fn concurrent_duplicates_make_one_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.redb")).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let s = store.clone();
                std::thread::spawn(move || s.submit(new_job("same"), 1, 100).unwrap())
            })
            .collect();
        let outcomes: Vec<Submission> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let created = outcomes.iter().filter(|o| matches!(o, Submission::Created(_))).count();
        assert_eq!(created, 1);
        assert_eq!(store.in_flight().unwrap(), 1);
    }

    /// Writes queued while the writer waits for the database share one
    /// transaction: the writer is held up by a write transaction of the
    /// test's own, 16 submissions queue behind it, and once it is released
    /// they are committed in at most two transactions (the first write may
    /// have been taken alone), and all of them are on disk after a re-open.
    #[test]
    fn writes_that_arrive_together_share_one_commit() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        let store = Store::open(&path).unwrap();
        let db = store.inner.slot.read().unwrap().1.clone().unwrap();
        let blocker = db.begin_write().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let ids = rt.block_on(async {
            let all = (0..16).map(|i| {
                let s = store.clone();
                async move { s.submit_async(new_job(&format!("h{i}")), None, None, 1, 100).await }
            });
            let mut all = Box::pin(futures_util::future::join_all(all));
            // One poll queues every write; none can be answered yet.
            assert!((&mut all).now_or_never().is_none());
            drop(blocker);
            all.await.into_iter().map(|o| created(o.unwrap()).job_id).collect::<Vec<_>>()
        });
        drop(db);
        let (batches, writes) = store.commit_stats();
        assert_eq!(writes, 16);
        assert!(batches <= 2, "16 queued writes took {batches} transactions");
        drop(store);
        let store = Store::open(&path).unwrap();
        for id in &ids {
            assert!(store.get(id).unwrap().is_some(), "{id} is on disk");
        }
        assert_eq!(store.in_flight().unwrap(), 16);
    }

    /// One failing write of a batch fails alone: the others of the same
    /// transaction are committed and answered.
    #[test]
    fn a_failing_write_does_not_fail_its_batch() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.redb")).unwrap();
        let db = store.inner.slot.read().unwrap().1.clone().unwrap();
        let blocker = db.begin_write().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (good, bad) = rt.block_on(async {
            let good = store.submit_async(new_job("good"), None, None, 1, 100);
            let bad = store.write_async(Flush::Immediate, |_tx| -> Result<(), StoreError> {
                Err(StoreError::new(StoreErrorKind::Other, "this write fails"))
            });
            let mut both = Box::pin(async { tokio::join!(good, bad) });
            assert!((&mut both).now_or_never().is_none());
            drop(blocker);
            both.await
        });
        drop(db);
        let good = created(good.unwrap());
        assert_eq!(bad.unwrap_err().kind(), StoreErrorKind::Other);
        assert!(store.get(&good.job_id).unwrap().is_some());
    }

    #[test]
    fn child_records_are_reaped_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.redb")).unwrap();
        let mut live = crate::process::test_support::sleeper_in_own_group();
        let group = crate::process::ChildGroup::of(live.id());
        store.record_child("ja", &group).unwrap();
        let ended = crate::process::ChildGroup { id: 999_999, started: Some(1), boot_id: None };
        store.record_child("jb", &ended).unwrap();
        store.record_child("jb", &crate::process::ChildGroup { id: 999_998, ..ended.clone() }).unwrap();
        store.forget_child("jb", &crate::process::ChildGroup { id: 999_998, ..ended.clone() }).unwrap();
        assert_eq!(store.children().unwrap().len(), 2);
        let report = store.reap_children().unwrap();
        assert_eq!(report.killed, vec![("ja".to_string(), live.id())]);
        assert_eq!(report.stale, 1);
        assert!(store.children().unwrap().is_empty());
        assert!(live.wait().unwrap().code().is_none(), "killed by a signal");
    }

    /// A full disk: the write fails with DISK_FULL and the store is in its
    /// failed state; once space is back the next write succeeds on the same
    /// handle, without a restart.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_store_recovers_once_space_returns() {
        let Some(fs) = crate::process::test_support::Tmpfs::mount("4m") else { return };
        let store = Store::open(&fs.path().join("w.redb")).unwrap();
        created(store.submit(new_job("before"), 1, 1000).unwrap());
        let filler = fs.fill();
        let big = json!({"blob": "x".repeat(256 * 1024)});
        let mut failure = None;
        for i in 0..64 {
            let job = NewJob { payload: big.clone(), ..new_job(&format!("full{i}")) };
            if let Err(e) = store.submit(job, 2, 1000) {
                failure = Some(e);
                break;
            }
        }
        let e = failure.expect("a write on a full disk failed");
        assert!(e.is_disk_full(), "{e:?}");
        assert_eq!(e.code(), ErrorCode::DiskFull);
        assert!(store.is_failed());
        // Still full: the next call fails the same way, and says why.
        if let Err(again) = store.submit(NewJob { payload: big.clone(), ..new_job("still") }, 3, 1000) {
            assert!(again.is_disk_full(), "{again:?}");
        }
        std::fs::remove_file(filler).unwrap();
        let after = created(store.submit(new_job("after"), 4, 1000).unwrap());
        assert!(!store.is_failed());
        assert_eq!(store.get(&after.job_id).unwrap().unwrap().job_id, after.job_id);
    }
}
