//! What the daemon keeps in memory about jobs beside its store: their
//! progress lines and the notifies that wake long-polls ([`Live`]), and the
//! actor that collects progress lines ([`ProgressSink`]).

use actix::{Actor, Context, Handler};
use dashmap::DashMap;
use rayvault::actors::messages::JobProgress;
use rayvault::controller_store::{Phase, StoredJob};
use rayvault::receipt::Receipt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long the progress lines of an ended job are kept, for a client
/// mid-poll.
const KEEP_PROGRESS: Duration = Duration::from_secs(60);

/// The most ended jobs whose progress lines are kept (the oldest go first).
const KEEP_PROGRESS_JOBS: usize = 256;

/// What the daemon keeps in memory about jobs, beside its store.
#[derive(Default)]
pub(super) struct Live {
    /// Progress lines by job key (shared with the dashboard).
    pub(super) progress: Arc<DashMap<String, Vec<String>>>,
    /// One notify per job in flight, woken when the job reports progress
    /// and when it ends (after its end is recorded and its receipt file
    /// written), for long-polls.
    pub(super) waits: DashMap<String, Arc<Notify>>,
    /// Woken whenever a job starts, for a long-poll that came before its
    /// job's notify existed.
    pub(super) begun: Notify,
    /// The ended jobs whose progress lines are still kept, oldest first:
    /// at most [`KEEP_PROGRESS_JOBS`], none older than [`KEEP_PROGRESS`].
    ended: std::sync::Mutex<std::collections::VecDeque<(Instant, String, Arc<Notify>)>>,
    /// Receipts of jobs that ended on a worker whose end is still being
    /// committed (see `dispatch`): the API answers from here meanwhile.
    pub(super) recording: Arc<Recording>,
}

/// The ends of jobs that are queued in the store but not yet committed: a
/// job's end is committed up to `controller_store::SOON` later, with the
/// next write, and everything that reads jobs from the store (status, the
/// dashboard, metrics) reports it as finished from the moment it ended.
///
/// Read it *before* the store: the store's writer drops an end from here
/// right after committing it, so an end missing here was either never here
/// or is already in any store read that begins afterwards.
#[derive(Default)]
pub struct Recording(DashMap<String, Receipt>);

impl Recording {
    pub(super) fn insert(&self, key: String, receipt: Receipt) {
        self.0.insert(key, receipt);
    }

    /// The end of `key` is committed: forgets it unless a newer end of the
    /// same key replaced it meanwhile.
    pub(super) fn committed(&self, key: &str, receipt: &Receipt) {
        self.0.remove_if(key, |_, r| r == receipt);
    }

    /// The receipt of `key` if its end is still being committed.
    pub fn get(&self, key: &str) -> Option<Receipt> {
        self.0.get(key).map(|r| r.value().clone())
    }

    /// Every end still being committed, by job key.
    pub fn snapshot(&self) -> std::collections::HashMap<String, Receipt> {
        self.0.iter().map(|e| (e.key().clone(), e.value().clone())).collect()
    }

    /// Reports `job` as it stands once its queued end is committed (an end
    /// here is always the newest: it leaves only when that very receipt
    /// is committed).
    pub fn apply(job: &mut StoredJob, ending: Option<Receipt>) {
        if let Some(r) = ending {
            job.phase = Phase::Finished;
            job.receipt = Some(r);
        }
    }

    /// [`Recording::apply`] to every job in `jobs`, from a `snapshot` taken
    /// before they were read.
    pub fn apply_all(jobs: &mut [StoredJob], mut snapshot: std::collections::HashMap<String, Receipt>) {
        if snapshot.is_empty() {
            return;
        }
        for j in jobs {
            let ending = snapshot.remove(&j.spec.key());
            Self::apply(j, ending);
        }
    }
}

impl Live {
    /// A job starts (or starts again): its notify, replacing any earlier one.
    pub(super) fn begin(&self, key: &str) -> Arc<Notify> {
        self.progress.remove(key);
        let notify = Arc::new(Notify::new());
        self.waits.insert(key.to_string(), notify.clone());
        self.begun.notify_waiters();
        notify
    }

    /// The job that `notify` belongs to ended: wakes its long-polls, and
    /// frees what is kept of jobs that ended long enough ago.
    pub(super) fn end(&self, key: &str, notify: &Arc<Notify>) {
        self.waits.remove_if(key, |_, n| Arc::ptr_eq(n, notify));
        notify.notify_waiters();
        let Ok(mut ended) = self.ended.lock() else { return };
        let now = Instant::now();
        ended.push_back((now, key.to_string(), notify.clone()));
        while let Some((at, k, n)) = ended.front() {
            if ended.len() <= KEEP_PROGRESS_JOBS && now.duration_since(*at) < KEEP_PROGRESS {
                break;
            }
            // Unless the key was submitted again meanwhile.
            if !self.waits.get(k).is_some_and(|current| !Arc::ptr_eq(current.value(), n)) {
                self.progress.remove(k);
            }
            ended.pop_front();
        }
    }
}

/// Collects job progress lines for the API and the daemon log.
pub(super) struct ProgressSink {
    pub(super) live: Arc<Live>,
}

impl Actor for ProgressSink {
    type Context = Context<Self>;
}

/// Records one progress line.
impl Handler<JobProgress> for ProgressSink {
    type Result = ();
    fn handle(&mut self, msg: JobProgress, _: &mut Context<Self>) {
        let mut entry = self.live.progress.entry(msg.key.clone()).or_default();
        // Bounded: a chatty job must not grow the daemon without limit.
        if entry.len() < 10_000 {
            entry.push(msg.line);
        }
        drop(entry);
        if let Some(n) = self.live.waits.get(&msg.key) {
            n.notify_waiters();
        }
    }
}
