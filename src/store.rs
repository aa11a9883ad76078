//! The worker's durable job store: an embedded transactional database
//! (`redb`) at `$RAYVAULT_STATE_DIR/worker/worker.redb` holding jobs, their
//! state and the idempotency index.
//!
//! Architecture Invariant: every state change is one write transaction, and
//! the idempotency check and the insert of a new job happen in the same
//! transaction, so concurrent duplicate submissions yield exactly one job.
//! The store is synchronous; async callers go through `spawn_blocking`.
//!
//! Tables:
//! - `jobs`: job id -> JSON [`JobRecord`];
//! - `idempotency`: `STEP_NAME \0 inputs_hash` -> job id of the latest job;
//! - `active`: job id -> sequence number, for jobs queued or running (its
//!   size is the in-flight count; restart recovery walks it in order);
//! - `meta`: counters (`next_seq`);
//! - `nonces`: accepted request nonces and their expiry ([`nonces`]).

use crate::artifacts::ArtifactEntry;
use crate::error::{ErrorCode, StepError};
use crate::protocol::{JobError, JobState, JobView};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

mod find;
pub mod nonces;
mod paths;

pub use paths::WorkerPaths;

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const IDEMPOTENCY: TableDefinition<&str, &str> = TableDefinition::new("idempotency");
const ACTIVE: TableDefinition<&str, u64> = TableDefinition::new("active");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A store failure (database or record encoding).
#[derive(Debug, thiserror::Error)]
#[error("job store: {0}")]
pub struct StoreError(String);

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        StoreError(e.into().to_string())
    }
}

fn codec(e: serde_json::Error) -> StoreError {
    StoreError(format!("corrupt job record: {e}"))
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
}

impl JobRecord {
    /// The job as the wire shows it (without the payload).
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
        }
    }
}

/// A new job to record.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub step_name: String,
    pub inputs_hash: String,
    pub payload: Value,
    pub label: Option<String>,
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

/// A cheap, cloneable handle on the database.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
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
            match Database::create(path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let tx = db.begin_write()?;
        {
            tx.open_table(JOBS)?;
            tx.open_table(IDEMPOTENCY)?;
            tx.open_table(ACTIVE)?;
            tx.open_table(META)?;
            tx.open_table(nonces::NONCES)?;
        }
        tx.commit()?;
        Ok(Store { db: Arc::new(db) })
    }

    /// Looks a job up.
    pub fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let jobs = tx.open_table(JOBS)?;
        let rec = jobs.get(job_id)?;
        rec.map(|g| serde_json::from_slice(g.value()).map_err(codec)).transpose()
    }

    /// Number of jobs queued or running.
    pub fn in_flight(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(ACTIVE)?.len()?)
    }

    /// Records a submission: returns the existing job for the same step and
    /// inputs hash unless it failed or was cancelled, else queues a new one.
    pub fn submit(&self, new: NewJob, now_ms: u64, max_in_flight: u64) -> Result<Submission, StoreError> {
        let tx = self.db.begin_write()?;
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
                Some(rec) if !matches!(rec.state, JobState::Failed | JobState::Cancelled) => Submission::Existing(rec),
                _ if active.len()? >= max_in_flight => Submission::Full,
                _ => {
                    let seq = meta.get("next_seq")?.map(|g| g.value()).unwrap_or(0);
                    meta.insert("next_seq", seq + 1)?;
                    let rec = JobRecord {
                        job_id: new_job_id(),
                        step_name: new.step_name,
                        state: JobState::Queued,
                        inputs_hash: new.inputs_hash,
                        label: new.label,
                        payload: new.payload,
                        created_at_ms: now_ms,
                        started_at_ms: None,
                        finished_at_ms: None,
                        attempt: 0,
                        result: None,
                        error: None,
                        artifacts: Vec::new(),
                        seq,
                    };
                    let bytes = serde_json::to_vec(&rec).map_err(codec)?;
                    jobs.insert(rec.job_id.as_str(), bytes.as_slice())?;
                    idem.insert(key.as_str(), rec.job_id.as_str())?;
                    active.insert(rec.job_id.as_str(), seq)?;
                    Submission::Created(rec)
                }
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// Applies `f` to a job inside one write transaction and saves the
    /// result; `f` returns false to leave the job unchanged.
    fn update<F>(&self, job_id: &str, f: F) -> Result<Option<(JobRecord, bool)>, StoreError>
    where
        F: FnOnce(&mut JobRecord) -> bool,
    {
        let tx = self.db.begin_write()?;
        let out = {
            let mut jobs = tx.open_table(JOBS)?;
            let mut active = tx.open_table(ACTIVE)?;
            let current = jobs.get(job_id)?.map(|g| serde_json::from_slice::<JobRecord>(g.value())).transpose().map_err(codec)?;
            match current {
                None => None,
                Some(mut rec) => {
                    let changed = f(&mut rec);
                    if changed {
                        let bytes = serde_json::to_vec(&rec).map_err(codec)?;
                        jobs.insert(job_id, bytes.as_slice())?;
                        if rec.state.is_terminal() {
                            active.remove(job_id)?;
                        }
                    }
                    Some((rec, changed))
                }
            }
        };
        tx.commit()?;
        Ok(out)
    }

    /// Moves a queued job to running; `None` if it is no longer queued
    /// (cancelled while waiting) or does not exist.
    pub fn mark_running(&self, job_id: &str, now_ms: u64) -> Result<Option<JobRecord>, StoreError> {
        let out = self.update(job_id, |r| {
            if r.state != JobState::Queued {
                return false;
            }
            r.state = JobState::Running;
            r.started_at_ms = Some(now_ms);
            r.attempt += 1;
            true
        })?;
        Ok(out.and_then(|(r, changed)| changed.then_some(r)))
    }

    /// Records the outcome of a running job. A `CANCELLED` error makes the
    /// job `cancelled`; any other error makes it `failed`.
    pub fn finish(
        &self,
        job_id: &str,
        outcome: Result<(Value, Vec<ArtifactEntry>), StepError>,
        now_ms: u64,
    ) -> Result<Option<JobRecord>, StoreError> {
        let out = self.update(job_id, |r| {
            if r.state != JobState::Running {
                return false;
            }
            r.finished_at_ms = Some(now_ms);
            match outcome {
                Ok((result, artifacts)) => {
                    r.state = JobState::Succeeded;
                    r.result = Some(result);
                    r.artifacts = artifacts;
                }
                Err(e) => {
                    r.state = if e.code == ErrorCode::Cancelled { JobState::Cancelled } else { JobState::Failed };
                    r.error = Some(JobError { code: e.code.as_str().to_string(), message: e.message });
                }
            }
            true
        })?;
        Ok(out.map(|(r, _)| r))
    }

    /// Cancels a queued job at once; reports a running one so its executor
    /// can stop it (the executor then records `cancelled`).
    pub fn cancel(&self, job_id: &str, now_ms: u64) -> Result<Cancellation, StoreError> {
        let out = self.update(job_id, |r| {
            if r.state != JobState::Queued {
                return false;
            }
            r.state = JobState::Cancelled;
            r.finished_at_ms = Some(now_ms);
            r.error = Some(JobError { code: ErrorCode::Cancelled.as_str().into(), message: "cancelled before it started".into() });
            true
        })?;
        Ok(match out {
            None => Cancellation::NotFound,
            Some((r, true)) => Cancellation::Cancelled(r),
            Some((r, false)) if r.state == JobState::Running => Cancellation::Running(r),
            Some((r, false)) => Cancellation::Finished(r),
        })
    }

    /// Marks a running job failed with `INTERRUPTED` (graceful shutdown that
    /// could not wait for it).
    pub fn interrupt(&self, job_id: &str, message: &str, now_ms: u64) -> Result<(), StoreError> {
        self.update(job_id, |r| {
            if r.state != JobState::Running {
                return false;
            }
            r.state = JobState::Failed;
            r.finished_at_ms = Some(now_ms);
            r.error = Some(JobError { code: ErrorCode::Interrupted.as_str().into(), message: message.into() });
            true
        })?;
        Ok(())
    }

    /// Startup recovery: jobs left `running` by a crash are failed with
    /// `INTERRUPTED` or queued again, per `policy`. Reports every job that
    /// is now queued, in submission order, for the executors, and the ids
    /// of the jobs failed as interrupted.
    pub fn recover(&self, policy: InterruptedPolicy, now_ms: u64) -> Result<Recovery, StoreError> {
        let tx = self.db.begin_write()?;
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
    }

    /// Deletes finished jobs that ended before `cutoff_ms`, with their
    /// idempotency entries. Returns the ids removed, so that their folders
    /// can be deleted too.
    pub fn prune(&self, cutoff_ms: u64) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_write()?;
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn new_job(hash: &str) -> NewJob {
        NewJob { step_name: "FFMPEG_PROBE".into(), inputs_hash: hash.into(), payload: json!({"a": 1}), label: None }
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
}
