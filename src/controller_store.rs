//! The controller daemon's embedded transactional store (`redb`), at
//! `$RAYVAULT_STATE_DIR/cluster/controller.redb`.
//!
//! It keeps every job the daemon accepted: its spec, whether it is queued,
//! running or finished, the worker and remote job id once it has one, and
//! its receipt at the end. Every change is durable before its caller hears
//! back, so a daemon killed with `kill -9` restarts knowing exactly which
//! jobs were in flight and on which worker, and re-attaches to them instead
//! of running them again.
//!
//! Writes go through one writer thread (group commit): the writes that are
//! waiting when it starts a transaction share that transaction and its one
//! sync to disk, and each caller is answered once the commit is durable.
//! Reads open a read transaction on the caller's thread: a single-record
//! read takes microseconds.

use crate::process::{ChildGroup, ChildRegistry, Reaped};
use crate::receipt::{JobSpec, Receipt};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("controller_jobs");
/// `<run_id>/<job_id>/<group id>` -> JSON [`ChildGroup`]: the process groups
/// of the tools that local steps (the LocalRunner) run, while they run.
const CHILDREN: TableDefinition<&str, &[u8]> = TableDefinition::new("controller_children");

/// The most pages redb keeps cached in memory. The jobs table is read one
/// record at a time (and in full only by `status` and the dashboard), so a
/// small cache costs little time and keeps a daemon that ran thousands of
/// jobs from holding their pages in memory: at 1 MiB the cache filled with
/// pages of ended jobs during a burst of 2,000 and stayed full.
const CACHE_BYTES: usize = 256 << 10;

/// A store failure, with the file it concerns.
#[derive(Debug, Clone, thiserror::Error)]
#[error("controller store: {0}")]
pub struct StoreError(pub String);

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        StoreError(e.into().to_string())
    }
}

/// A job already handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRef {
    pub node_id: String,
    pub remote_job_id: String,
    /// The placement that chose the node, so that the receipt of a job
    /// re-attached after a restart still explains it.
    #[serde(default)]
    pub placement: Vec<crate::receipt::NodeExplanation>,
}

/// Where a job is in the daemon's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Queued,
    Running,
    Finished,
}

/// One job as the daemon remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredJob {
    pub spec: JobSpec,
    pub phase: Phase,
    /// Unix milliseconds of the first submission.
    pub submitted_at_ms: u64,
    pub remote: Option<RemoteRef>,
    pub receipt: Option<Receipt>,
}

/// The jobs table inside a write transaction.
type JobsTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;

/// One write waiting for the writer thread: it is applied inside the
/// batch's transaction, then told whether the transaction committed.
trait Write: Send + crate::store::Batched {
    fn apply(&mut self, table: &mut JobsTable<'_>);
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

/// A [`Write`] made of a closure that changes the table and answers `R`,
/// and one that receives the answer once the commit is durable (or failed).
struct Op<R, F, D> {
    change: Option<F>,
    answer: Option<Result<R, StoreError>>,
    done: D,
    patience: Option<std::time::Instant>,
}

impl<R, F, D> Write for Op<R, F, D>
where
    R: Send,
    F: FnOnce(&mut JobsTable<'_>) -> Result<R, StoreError> + Send,
    D: FnOnce(Result<R, StoreError>) + Send,
{
    fn apply(&mut self, table: &mut JobsTable<'_>) {
        if let Some(change) = self.change.take() {
            self.answer = Some(change(table));
        }
    }

    fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
        let answer = match committed {
            Ok(()) => self.answer.unwrap_or_else(|| Err(StoreError("the write was not applied".into()))),
            Err(e) => Err(e),
        };
        (self.done)(answer);
    }
}

impl<R, F, D> crate::store::Batched for Op<R, F, D> {
    /// Until when the write may wait for another one to share its commit
    /// (see [`crate::store::next_batch`]).
    fn patience(&self) -> Option<std::time::Instant> {
        self.patience
    }
}

/// How long a write queued with [`ControllerStore::update_soon`] may wait
/// for another write to share its commit.
pub const SOON: std::time::Duration = std::time::Duration::from_millis(50);

/// The daemon's store.
pub struct ControllerStore {
    db: Arc<Database>,
    path: PathBuf,
    /// The writer thread's queue; `None` once the store is being dropped.
    queue: Mutex<Option<mpsc::Sender<Box<dyn Write>>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// True for the daemon's store: it records each job's receipt, and the
    /// daemon writes the receipt file after the record (see
    /// [`ControllerStore::keeping_receipts`]).
    keeps_receipts: bool,
    /// Write transactions committed by the writer thread.
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for ControllerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerStore").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The writer thread: takes the first waiting write, then every other one
/// already queued ([`crate::store::next_batch`]), applies them in one transaction,
/// commits it (one sync to disk), and answers each.
fn writer(db: Arc<Database>, queue: mpsc::Receiver<Box<dyn Write>>, commits: Arc<AtomicU64>) {
    while let Some(mut batch) = crate::store::next_batch(&queue) {
        let committed = commit_batch(&db, &mut batch);
        commits.fetch_add(1, Ordering::Relaxed);
        for w in batch {
            w.finish(committed.clone());
        }
    }
}

fn commit_batch(db: &Database, batch: &mut [Box<dyn Write>]) -> Result<(), StoreError> {
    let tx = db.begin_write()?;
    {
        let mut table = tx.open_table(JOBS)?;
        for w in batch.iter_mut() {
            w.apply(&mut table);
        }
    }
    tx.commit()?;
    Ok(())
}

fn insert(table: &mut JobsTable<'_>, job: &StoredJob) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(job).map_err(|e| StoreError(e.to_string()))?;
    table.insert(job.spec.key().as_str(), bytes.as_slice())?;
    Ok(())
}

/// Applies `f` to the record at `key`; the changed record, or `None` when
/// there is none.
fn change(table: &mut JobsTable<'_>, key: &str, f: impl FnOnce(&mut StoredJob)) -> Result<Option<StoredJob>, StoreError> {
    let current = match table.get(key)? {
        Some(v) => decode(v.value())?,
        None => return Ok(None),
    };
    let mut job = current;
    f(&mut job);
    let bytes = serde_json::to_vec(&job).map_err(|e| StoreError(e.to_string()))?;
    table.insert(key, bytes.as_slice())?;
    Ok(Some(job))
}

impl ControllerStore {
    /// `$state_dir/cluster/controller.redb`.
    pub fn default_path(cluster_dir: &Path) -> PathBuf {
        cluster_dir.join("controller.redb")
    }

    /// Opens (creating) the store and starts its writer thread. Blocking:
    /// call from `spawn_blocking` or before the runtime starts.
    pub fn open(path: &Path) -> Result<ControllerStore, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError(format!("creating {}: {e}", parent.display())))?;
        }
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(|e| {
            StoreError(format!("cannot open {}: {e}; is another daemon running on this state dir?", path.display()))
        })?;
        let tx = db.begin_write()?;
        tx.open_table(JOBS)?;
        tx.open_table(CHILDREN)?;
        tx.commit()?;
        let db = Arc::new(db);
        let (send, receive) = mpsc::channel();
        let (for_writer, commits) = (db.clone(), Arc::new(AtomicU64::new(0)));
        let counted = commits.clone();
        let writer = std::thread::Builder::new()
            .name("controller-store".into())
            .spawn(move || writer(for_writer, receive, counted))
            .map_err(|e| StoreError(format!("cannot start the store's writer thread: {e}")))?;
        Ok(ControllerStore { db, path: path.to_path_buf(), queue: Mutex::new(Some(send)), writer: Some(writer), keeps_receipts: false, commits })
    }

    /// Marks the store as the durable home of its jobs' receipts: the
    /// JobRunner then leaves writing the receipt file to the store's owner
    /// (the daemon), which writes it while the record commits.
    pub fn keeping_receipts(mut self) -> ControllerStore {
        self.keeps_receipts = true;
        self
    }

    /// How many write transactions the writer thread committed so far (each
    /// one sync to disk, shared by the writes that arrived together).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// See [`ControllerStore::keeping_receipts`].
    pub fn keeps_receipts(&self) -> bool {
        self.keeps_receipts
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a write; `done` runs on the writer thread once the batch it
    /// joined committed (or failed).
    fn enqueue<R, F, D>(&self, change: F, done: D)
    where
        R: Send + 'static,
        F: FnOnce(&mut JobsTable<'_>) -> Result<R, StoreError> + Send + 'static,
        D: FnOnce(Result<R, StoreError>) + Send + 'static,
    {
        self.enqueue_patient(None, change, done)
    }

    /// [`ControllerStore::enqueue`] for a write that may wait until
    /// `patience` for another write to share its commit.
    fn enqueue_patient<R, F, D>(&self, patience: Option<std::time::Instant>, change: F, done: D)
    where
        R: Send + 'static,
        F: FnOnce(&mut JobsTable<'_>) -> Result<R, StoreError> + Send + 'static,
        D: FnOnce(Result<R, StoreError>) + Send + 'static,
    {
        let op: Box<dyn Write> = Box::new(Op { change: Some(change), answer: None, done, patience });
        let refused = match self.queue.lock() {
            Ok(q) => match q.as_ref() {
                Some(q) => q.send(op).err().map(|e| e.0),
                None => Some(op),
            },
            Err(_) => Some(op),
        };
        if let Some(op) = refused {
            op.finish(Err(StoreError("the store's writer thread stopped".into())));
        }
    }

    /// A write, waited for on this thread (blocking).
    fn write_blocking<R, F>(&self, change: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut JobsTable<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let (send, receive) = mpsc::sync_channel(1);
        self.enqueue(change, move |r| {
            let _ = send.send(r);
        });
        receive.recv().unwrap_or_else(|_| Err(StoreError("the store's writer thread stopped".into())))
    }

    /// A write, awaited without blocking the caller's thread. It is queued
    /// when this is called, not when the answer is first awaited, so that
    /// the caller can do other work while it commits.
    fn write_async<R, F>(&self, change: F) -> impl std::future::Future<Output = Result<R, StoreError>> + 'static
    where
        R: Send + 'static,
        F: FnOnce(&mut JobsTable<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let (send, receive) = tokio::sync::oneshot::channel();
        self.enqueue(change, move |r: Result<R, StoreError>| {
            let _ = send.send(r);
        });
        async move { receive.await.unwrap_or_else(|_| Err(StoreError("the store's writer thread stopped".into()))) }
    }

    /// Inserts or replaces a job record; durable when it returns. Blocking.
    pub fn put(&self, job: &StoredJob) -> Result<(), StoreError> {
        let job = job.clone();
        self.write_blocking(move |t| insert(t, &job))
    }

    /// Records a newly submitted job unless the same key is in flight
    /// (queued or running): true when recorded (durably), false when a job
    /// of that key is already in flight. One transaction decides, so two
    /// submissions of one key never both start it.
    /// The write is queued when this is called (see `write_async`).
    pub fn insert_unless_in_flight(&self, job: StoredJob) -> impl std::future::Future<Output = Result<bool, StoreError>> + 'static {
        self.write_async(move |t| {
            let key = job.spec.key();
            let in_flight = match t.get(key.as_str())? {
                Some(v) => decode(v.value())?.phase != Phase::Finished,
                None => false,
            };
            if in_flight {
                return Ok(false);
            }
            insert(t, &job)?;
            Ok(true)
        })
    }

    /// Reads one job by `run_id/job_id`.
    pub fn get(&self, key: &str) -> Result<Option<StoredJob>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(JOBS)?;
        let Some(v) = table.get(key)? else { return Ok(None) };
        decode(v.value()).map(Some)
    }

    /// Applies `f` to a job in one write transaction; false if absent.
    /// Durable when it returns. Blocking.
    pub fn update(&self, key: &str, f: impl FnOnce(&mut StoredJob) + Send + 'static) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.write_blocking(move |t| change(t, &key, f).map(|j| j.is_some()))
    }

    /// Queues a change to a job without waiting for its commit: it is
    /// applied in order with the other writes (any later write of the same
    /// job commits with it or after it, as if it had been awaited), and a
    /// failure is only logged. It may wait up to [`SOON`] for another write
    /// to share its commit (a short job's end usually does), so it is
    /// durable at most that much later than an awaited write would be.
    pub fn update_soon(&self, key: &str, f: impl FnOnce(&mut StoredJob) + Send + 'static) {
        let key = key.to_string();
        let what = key.clone();
        self.enqueue_patient(
            Some(std::time::Instant::now() + SOON),
            move |t| change(t, &key, f).map(|j| j.is_some()),
            move |r: Result<bool, StoreError>| {
                if let Err(e) = r {
                    tracing::error!(job = %what, "could not record a change of the job: {e}");
                }
            },
        );
    }

    /// Queues a change to a job now, in order with the other writes, and
    /// calls `done` with the changed record once it is durable, `None` if
    /// absent, on the store's writer thread: keep `done` short. Like
    /// [`ControllerStore::update_soon`], it may wait up to [`SOON`] for
    /// another write to share its commit: a job's end, written this way,
    /// then commits with the next job's acceptance instead of syncing on
    /// its own just as that acceptance arrives, which would make the
    /// acceptance wait for two syncs in a row.
    pub fn update_then(
        &self,
        key: &str,
        f: impl FnOnce(&mut StoredJob) + Send + 'static,
        done: impl FnOnce(Result<Option<StoredJob>, StoreError>) + Send + 'static,
    ) {
        let key = key.to_string();
        self.enqueue_patient(Some(std::time::Instant::now() + SOON), move |t| change(t, &key, f), done);
    }

    /// [`ControllerStore::update`] awaited without blocking: the changed
    /// record once it is durable, `None` if absent.
    pub async fn update_async(&self, key: &str, f: impl FnOnce(&mut StoredJob) + Send + 'static) -> Result<Option<StoredJob>, StoreError> {
        let key = key.to_string();
        self.write_async(move |t| change(t, &key, f)).await
    }

    /// Every job, in key order.
    pub fn all(&self) -> Result<Vec<StoredJob>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(JOBS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (_, v) = item?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// The jobs a restarted daemon must pick up again.
    pub fn unfinished(&self) -> Result<Vec<StoredJob>, StoreError> {
        Ok(self.all()?.into_iter().filter(|j| j.phase != Phase::Finished).collect())
    }
}

/// Stops the writer thread (after the writes already queued) and waits
/// for it, so that the database file is closed when the store is gone.
impl Drop for ControllerStore {
    fn drop(&mut self) {
        if let Ok(mut q) = self.queue.lock() {
            q.take();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl ControllerStore {
    /// Records a running child's group for the local job `owner`. `Eventual`
    /// commit: it survives a crash of the daemon, not a power cut (which
    /// kills the child as well).
    pub fn record_child(&self, owner: &str, group: &ChildGroup) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(group).map_err(|e| StoreError(e.to_string()))?;
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Eventual);
        tx.open_table(CHILDREN)?.insert(format!("{owner}/{}", group.id).as_str(), bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Removes the record of a group that ended.
    pub fn forget_child(&self, owner: &str, group: &ChildGroup) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Eventual);
        tx.open_table(CHILDREN)?.remove(format!("{owner}/{}", group.id).as_str())?;
        tx.commit()?;
        Ok(())
    }

    /// Every recorded group, with the job it belongs to.
    pub fn children(&self) -> Result<Vec<(String, ChildGroup)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CHILDREN)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let owner = k.value().rsplit_once('/').map(|(o, _)| o.to_string()).unwrap_or_default();
            if let Ok(g) = serde_json::from_slice::<ChildGroup>(v.value()) {
                out.push((owner, g));
            }
        }
        Ok(out)
    }

    /// Daemon start-up: kills the process groups that local steps of a dead
    /// daemon left running (see [`crate::process::reap`] for the pid-reuse
    /// checks) and clears the records. Returns the `(job, group id)` pairs
    /// killed.
    pub fn reap_children(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let recorded = self.children()?;
        let groups: Vec<ChildGroup> = recorded.iter().map(|(_, g)| g.clone()).collect();
        let killed = recorded
            .iter()
            .zip(crate::process::reap(&groups))
            .filter(|(_, r)| *r == Reaped::Killed)
            .map(|((owner, g), _)| (owner.clone(), g.id))
            .collect();
        let tx = self.db.begin_write()?;
        tx.open_table(CHILDREN)?.retain(|_, _| false)?;
        tx.commit()?;
        Ok(killed)
    }
}

impl ChildRegistry for ControllerStore {
    fn record(&self, owner: &str, group: &ChildGroup) -> Result<(), String> {
        self.record_child(owner, group).map_err(|e| e.to_string())
    }

    fn forget(&self, owner: &str, group: &ChildGroup) -> Result<(), String> {
        self.forget_child(owner, group).map_err(|e| e.to_string())
    }
}

fn decode(bytes: &[u8]) -> Result<StoredJob, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError(format!("a stored job does not decode: {e}")))
}

#[cfg(test)]
mod tests;
