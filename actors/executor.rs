//! The worker's executor: one [`StepExecutor`] actor per step type, each
//! running at most its configured number of jobs at once; further jobs wait
//! in its queue (and, durably, as `queued` in the store).
//!
//! A job's life here: [`Enqueue`] -> (slot free) the store marks it running
//! -> blob references are resolved to local paths -> [`steps::run_step`](crate::steps::run_step)
//! with a cancellation token -> the slot is freed -> the store records the
//! outcome (so the next job's start shares that commit). A submission that
//! finds a free slot reserves it ([`Reserve`]) and is recorded running in
//! the commit that accepts it ([`StartReserved`]). Store writes
//! are awaited on the store's commit queue, so the actor never blocks its
//! thread.
//! Every state change bumps [`ExecutorEnv::changes`], which wakes long-polls.
//!
//! Each job runs in a task of its own, and the actor keeps only the registry
//! of queued and running jobs: a panic inside a step is caught in that task
//! and fails the job with `INTERNAL` (the message carries the panic's text),
//! the task still reports [`JobEnded`], so the slot is freed and later jobs
//! of the type run. The actors are started under `actix::Supervisor`, and a
//! handler that panics stops its actor through
//! [`crate::actors::crash_guard::guard`], so it is restarted in place with
//! its registry and without dropping the jobs in flight.

use crate::actors::crash_guard::{catch, guard};
use crate::joblog::JobLog;
use crate::steps::StepName;
use crate::store::{JobRecord, Store, WorkerPaths};
use actix::prelude::*;
use job::{run_job, Slot, Start};
pub use job::resolve_blobs;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod job;

/// Queue a job (already recorded as `queued` in the store).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Enqueue {
    pub job_id: String,
}

/// A job's step returned; its outcome is being recorded. Its slot is free
/// for the next job, and the job still counts as in flight (a shutdown
/// waits for it) until [`JobEnded`].
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
struct StepDone {
    job_id: String,
}

/// Reserve a slot for a job about to be submitted, so that its record can
/// be written `running` in the same commit that accepts it (one sync
/// instead of two before the step starts). Granted only when a slot is
/// free and no job waits (a reservation never overtakes the queue) and
/// the executor is not draining. The submitter then sends [`StartReserved`]
/// once the record is durable, or [`Unreserve`] if it was not created.
#[derive(Message, Debug, Clone)]
#[rtype(result = "bool")]
pub struct Reserve {
    pub job_id: String,
}

/// Run a job whose record was written `running` under a reservation.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct StartReserved {
    pub record: JobRecord,
}

/// Run a job under a reservation *before* the commit that accepts it is
/// durable, for a step that allows it
/// ([`StepName::starts_before_acceptance`]): the step runs while the
/// worker makes the job and its inline inputs durable. Its end is queued
/// behind the acceptance's write (so it changes nothing unless that write
/// created the job), and counts once `accepted` brings the job's record.
/// If `accepted` brings `None` or is dropped (the job was not created: a
/// full worker, a store error), the run is discarded: nothing of it is
/// recorded and its folder is removed.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StartEarly {
    /// The record as the accepting commit writes it (`running`, attempt 1).
    pub record: JobRecord,
    /// Inline inputs not yet in place under their digest: the digest and
    /// the temporary file the step reads instead. The submission links
    /// (not renames) each into place, and the job removes these names
    /// once its end is recorded.
    pub inputs: Vec<(String, std::path::PathBuf)>,
    pub accepted: tokio::sync::oneshot::Receiver<Option<JobRecord>>,
}

/// Give a reservation back: the submission did not create the job.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Unreserve {
    pub job_id: String,
}

/// A job's task finished (its outcome is already in the store): free its
/// slot and start the next queued job.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
struct JobEnded {
    job_id: String,
}

/// Stop a running job; answers whether it was running here.
#[derive(Message, Debug, Clone)]
#[rtype(result = "bool")]
pub struct CancelRunning {
    pub job_id: String,
}

/// Stop starting queued jobs (shutdown); queued jobs stay queued in the
/// store and run after the next start. Answers a receiver of the number of
/// jobs still running.
#[derive(Message, Debug)]
#[rtype(result = "watch::Receiver<usize>")]
pub struct Drain;

/// Hand over the jobs still running after the shutdown grace period, so the
/// caller can record them as interrupted and then cancel them.
#[derive(Message, Debug)]
#[rtype(result = "Vec<(String, CancellationToken)>")]
pub struct TakeRunning;

/// How many jobs are queued and running here.
#[derive(Message, Debug)]
#[rtype(result = "(usize, usize)")]
pub struct Load;

/// What every executor shares with the HTTP handlers.
#[derive(Debug)]
pub struct ExecutorEnv {
    pub store: Store,
    pub paths: WorkerPaths,
    pub settings: Arc<crate::config::Settings>,
    /// Bumped when every long-poll must look again (a shutdown); a job's
    /// own changes wake only its own waiters ([`ExecutorEnv::notify_job`]).
    pub changes: watch::Sender<u64>,
    /// One notify per job that someone waits for (long-polls, submissions
    /// that wait): a change of one job wakes its waiters only, not every
    /// long-poll of the worker.
    pub waiters: dashmap::DashMap<String, Arc<tokio::sync::Notify>>,
    /// The submitters' leases on jobs (see [`crate::lease`]).
    pub leases: Arc<crate::lease::LeaseBook>,
    /// The logs of jobs queued or running, from submission until their
    /// outcome (and, for a small log, the log itself) is in the store.
    pub live_logs: std::sync::Mutex<HashMap<String, JobLog>>,
}

impl ExecutorEnv {
    /// Starts the log of a new job: in memory, with no file or folder until
    /// it grows past [`crate::protocol::MAX_INLINE_LOG`] bytes.
    pub fn new_log(&self, job_id: &str) -> JobLog {
        let log = JobLog::buffered(&self.paths.log_path(job_id), crate::protocol::MAX_INLINE_LOG);
        self.live_logs.lock().unwrap_or_else(|p| p.into_inner()).insert(job_id.to_string(), log.clone());
        log
    }

    /// The log of a job queued or running here.
    pub fn live_log(&self, job_id: &str) -> Option<JobLog> {
        self.live_logs.lock().unwrap_or_else(|p| p.into_inner()).get(job_id).cloned()
    }

    /// Forgets a job's live log (its job ended and is recorded).
    pub fn drop_log(&self, job_id: &str) -> Option<JobLog> {
        self.live_logs.lock().unwrap_or_else(|p| p.into_inner()).remove(job_id)
    }

    /// Wakes every long-poll so it re-reads its job.
    pub fn notify(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Wakes the long-polls of one job so they re-read it.
    pub fn notify_job(&self, job_id: &str) {
        if let Some(n) = self.waiters.get(job_id) {
            n.notify_waiters();
        }
    }

    /// The notify a waiter of `job_id` listens to, held while the returned
    /// guard lives: dropping it (however the wait ends, also when the
    /// waiting answer is dropped mid-wait) forgets the job's notify once no
    /// other waiter holds it.
    pub fn wait_on<'a>(&'a self, job_id: &'a str) -> JobWaiter<'a> {
        let notify = self.waiters.entry(job_id.to_string()).or_default().clone();
        JobWaiter { env: self, job_id, notify: Some(notify) }
    }
}

/// A waiter of one job ([`ExecutorEnv::wait_on`]).
pub struct JobWaiter<'a> {
    env: &'a ExecutorEnv,
    job_id: &'a str,
    notify: Option<Arc<tokio::sync::Notify>>,
}

impl std::ops::Deref for JobWaiter<'_> {
    type Target = tokio::sync::Notify;
    fn deref(&self) -> &tokio::sync::Notify {
        self.notify.as_deref().expect("present until dropped")
    }
}

impl Drop for JobWaiter<'_> {
    fn drop(&mut self) {
        drop(self.notify.take());
        self.env.waiters.remove_if(self.job_id, |_, n| Arc::strong_count(n) == 1);
    }
}

/// Runs the jobs of one step type.
pub struct StepExecutor {
    step: StepName,
    /// Jobs of this step allowed to run at once (`steps.<name>.concurrency`).
    concurrency: usize,
    /// Jobs waiting for a slot, oldest first.
    queue: VecDeque<String>,
    /// Running jobs and the tokens that cancel them.
    running: HashMap<String, CancellationToken>,
    /// Jobs whose step returned and whose outcome is being recorded: no
    /// longer holding a slot, still in flight.
    finishing: std::collections::HashSet<String>,
    /// Set on shutdown: no new job starts.
    draining: bool,
    /// The number of running jobs, watched during shutdown.
    running_count: watch::Sender<usize>,
    env: Arc<ExecutorEnv>,
}

impl StepExecutor {
    pub fn new(step: StepName, env: Arc<ExecutorEnv>) -> Self {
        let concurrency = env.settings.step(step.as_str()).concurrency.max(1);
        StepExecutor {
            step,
            concurrency,
            queue: VecDeque::new(),
            running: HashMap::new(),
            finishing: Default::default(),
            draining: false,
            running_count: watch::channel(0).0,
            env,
        }
    }

    /// Starts queued jobs while slots are free; each job's task reports
    /// its end to `addr`.
    fn pump(&mut self, addr: &Addr<Self>) {
        while !self.draining && self.running.len() < self.concurrency {
            let Some(job_id) = self.queue.pop_front() else { break };
            // A job whose lease expired while it waited never starts (the
            // lease monitor records it abandoned); a job parked after a
            // restart waits for its controller to re-attach.
            if self.env.leases.expired(&job_id) || self.env.leases.parked(&job_id) {
                continue;
            }
            let token = CancellationToken::new();
            self.running.insert(job_id.clone(), token.clone());
            self.spawn_job(addr, job_id, Start::Queued, token);
        }
        self.publish_count();
    }

    /// Publishes the number of jobs in flight (running or recording their
    /// outcome), which a shutdown waits on.
    fn publish_count(&self) {
        self.running_count.send_replace(self.running.len() + self.finishing.len());
    }

    /// Runs one job in a task of its own: from `queued` (marking it running
    /// first), from the record a reservation already wrote `running`, or
    /// ahead of that record ([`StartEarly`]).
    fn spawn_job(&self, addr: &Addr<Self>, job_id: String, started: Start, token: CancellationToken) {
        let span = tracing::info_span!("job", step = %self.step, job_id = %job_id);
        let env = self.env.clone();
        let slot = Slot { addr: Some(addr.clone()), job_id: job_id.clone() };
        let fut = run_job(env.clone(), self.step, started, token, slot).instrument(span);
        // A task of its own: a restart of this actor does not drop it.
        // The slot is freed even if the job's own bookkeeping panics
        // (the step itself is guarded inside `run_job`): `Slot` frees it
        // when dropped.
        actix::spawn(async move {
            let _ = catch("StepExecutor", "recording a job", fut).await;
            // Long-polls learn of the end only now, after the slot's release
            // is in this actor's mailbox: a submission that their answer
            // prompts is handled after it and finds the slot free.
            env.notify_job(&job_id);
        });
    }

    /// Runs a job in the slot its reservation holds (the token a cancel
    /// may already have reached).
    fn start_held(&mut self, ctx: &mut Context<Self>, job_id: String, start: Start, work: &'static str) {
        let token = self.running.entry(job_id.clone()).or_default().clone();
        self.publish_count();
        let addr = ctx.address();
        let _ = guard("StepExecutor", work, ctx, || self.spawn_job(&addr, job_id, start, token));
    }

    /// Runs [`Self::pump`] so that a panic in it stops the actor, which
    /// `actix::Supervisor` then restarts, instead of killing it for good.
    fn pump_guarded(&mut self, ctx: &mut Context<Self>) {
        let addr = ctx.address();
        let _ = guard("StepExecutor", "starting queued jobs", ctx, || self.pump(&addr));
    }
}

impl Actor for StepExecutor {
    type Context = Context<Self>;

    /// Also runs after a restart: jobs queued meanwhile start.
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.pump_guarded(ctx);
    }
}

/// A restarted executor keeps its registry: running jobs live in tasks of
/// their own and still report [`JobEnded`], and queued jobs stay queued.
impl actix::Supervised for StepExecutor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(step = %self.step, "executor restarted");
    }
}

/// Queues the job and starts it if a slot is free.
impl Handler<Enqueue> for StepExecutor {
    type Result = ();
    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) {
        if !self.running.contains_key(&msg.job_id) && !self.queue.contains(&msg.job_id) {
            self.queue.push_back(msg.job_id);
        }
        self.pump_guarded(ctx);
    }
}

/// Grants a slot to a job about to be submitted when one is free.
impl Handler<Reserve> for StepExecutor {
    type Result = bool;
    fn handle(&mut self, msg: Reserve, _: &mut Context<Self>) -> bool {
        if self.draining || !self.queue.is_empty() || self.running.len() >= self.concurrency || self.running.contains_key(&msg.job_id) {
            return false;
        }
        // The token exists from now on, so a cancel or a lease expiry that
        // arrives before the job starts still reaches it.
        self.running.insert(msg.job_id, CancellationToken::new());
        self.publish_count();
        true
    }
}

/// Starts the job a reservation was made for.
impl Handler<StartReserved> for StepExecutor {
    type Result = ();
    fn handle(&mut self, msg: StartReserved, ctx: &mut Context<Self>) {
        let job_id = msg.record.job_id.clone();
        self.start_held(ctx, job_id, Start::Reserved(msg.record), "starting a reserved job");
    }
}

/// Starts the job a reservation was made for, ahead of its acceptance.
impl Handler<StartEarly> for StepExecutor {
    type Result = ();
    fn handle(&mut self, msg: StartEarly, ctx: &mut Context<Self>) {
        let job_id = msg.record.job_id.clone();
        self.start_held(ctx, job_id, Start::Early { record: msg.record, inputs: msg.inputs, accepted: msg.accepted }, "starting a job early");
    }
}

/// Frees a reservation that was not used.
impl Handler<Unreserve> for StepExecutor {
    type Result = ();
    fn handle(&mut self, msg: Unreserve, ctx: &mut Context<Self>) {
        self.running.remove(&msg.job_id);
        self.publish_count();
        self.pump_guarded(ctx);
    }
}

/// Frees the slot of a job whose step returned, and starts the next one.
impl Handler<StepDone> for StepExecutor {
    type Result = ();
    fn handle(&mut self, msg: StepDone, ctx: &mut Context<Self>) {
        if self.running.remove(&msg.job_id).is_some() {
            self.finishing.insert(msg.job_id);
        }
        self.publish_count();
        self.pump_guarded(ctx);
    }
}

/// Forgets the ended job (freeing its slot if the step never returned)
/// and starts the next one.
impl Handler<JobEnded> for StepExecutor {
    type Result = ();
    fn handle(&mut self, msg: JobEnded, ctx: &mut Context<Self>) {
        self.running.remove(&msg.job_id);
        self.finishing.remove(&msg.job_id);
        self.publish_count();
        #[cfg(debug_assertions)]
        if guard("StepExecutor", "running the test hook", ctx, || test_hook::panic_in_executor_if_requested(&msg.job_id))
            .is_err()
        {
            // Stopped by the guard; `started` pumps after the restart.
            return;
        }
        self.pump_guarded(ctx);
    }
}

/// Cancels the job's token if it is running here.
impl Handler<CancelRunning> for StepExecutor {
    type Result = bool;
    fn handle(&mut self, msg: CancelRunning, _: &mut Context<Self>) -> bool {
        match self.running.get(&msg.job_id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// Stops starting jobs; answers the running-count receiver.
impl Handler<Drain> for StepExecutor {
    type Result = MessageResult<Drain>;
    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        MessageResult(self.running_count.subscribe())
    }
}

/// Hands over the still-running jobs.
impl Handler<TakeRunning> for StepExecutor {
    type Result = MessageResult<TakeRunning>;
    fn handle(&mut self, _: TakeRunning, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.running.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

/// Reports (queued, running).
impl Handler<Load> for StepExecutor {
    type Result = MessageResult<Load>;
    fn handle(&mut self, _: Load, _: &mut Context<Self>) -> Self::Result {
        MessageResult((self.queue.len(), self.running.len()))
    }
}

/// Starts one supervised executor per step type, each in the current
/// arbiter.
pub fn start_all(env: Arc<ExecutorEnv>) -> HashMap<StepName, Addr<StepExecutor>> {
    #[cfg(debug_assertions)]
    test_hook::read_environment();
    StepName::ALL
        .into_iter()
        .map(|s| {
            let env = env.clone();
            (s, actix::Supervisor::start(move |_| StepExecutor::new(s, env)))
        })
        .collect()
}

/// A payload containing this text makes a job's step panic when the test
/// hook (`RAYVAULT_TEST_PANIC_STEP`, debug builds only) names its step.
pub const TEST_PANIC_MARKER: &str = "rayvault-test-panic:step";

/// A payload containing this text makes the executor actor itself panic
/// once the job has ended, under the same conditions.
pub const TEST_EXECUTOR_PANIC_MARKER: &str = "rayvault-test-panic:executor";

/// A way for the integration tests to make a step panic inside the real
/// worker binary, to prove that a panic fails only its job.
///
/// It exists only in debug builds (`cfg(debug_assertions)`), so a release
/// build has no such behaviour whatever its environment. The worker reads
/// `RAYVAULT_TEST_PANIC_STEP` (a step name such as `FFMPEG_PROBE`) once when
/// it starts its executors; a job of that step whose payload contains
/// [`TEST_PANIC_MARKER`] anywhere then panics just before its step runs,
/// and one whose payload contains [`TEST_EXECUTOR_PANIC_MARKER`] runs
/// normally, after which its executor's handler panics.
#[cfg(debug_assertions)]
mod test_hook {
    use super::*;
    use serde_json::Value;
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};

    static PANIC_STEP: OnceLock<Option<String>> = OnceLock::new();
    /// Jobs whose end makes their executor panic.
    static EXECUTOR_PANICS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

    pub fn read_environment() {
        PANIC_STEP.get_or_init(|| std::env::var("RAYVAULT_TEST_PANIC_STEP").ok());
    }

    pub fn panic_if_requested(step: StepName, job_id: &str, payload: &Value) {
        let Some(Some(wanted)) = PANIC_STEP.get() else { return };
        if wanted != step.as_str() {
            return;
        }
        let text = payload.to_string();
        if text.contains(TEST_EXECUTOR_PANIC_MARKER) {
            if let Ok(mut set) = EXECUTOR_PANICS.lock() {
                set.get_or_insert_with(HashSet::new).insert(job_id.to_string());
            }
        }
        if text.contains(TEST_PANIC_MARKER) {
            panic!("test panic requested by RAYVAULT_TEST_PANIC_STEP for {step}");
        }
    }

    pub fn panic_in_executor_if_requested(job_id: &str) {
        let hit = EXECUTOR_PANICS.lock().ok().and_then(|mut set| set.as_mut().map(|s| s.remove(job_id))).unwrap_or(false);
        if hit {
            panic!("test panic in the executor requested by RAYVAULT_TEST_PANIC_STEP after job {job_id}");
        }
    }
}
