//! JobRunner: takes a job from submission to receipt.
//!
//! For each job it asks NodeProbe for a node snapshot and the Scheduler for a
//! placement, then runs the job on the best node (see [`remote`]: staging by
//! digest, submit, long-poll, artifact sync), moving on to the next node when
//! one is lost or fails for an environmental reason, and finally falling back
//! to the LocalRunner unless `--no-fallback` forbids it. A step that
//! succeeded anywhere is never run again: after a success only artifact
//! synchronisation is retried.

pub mod fallback;
pub mod liveness;
mod local;
pub mod remote;
pub mod staging;
mod trace;

use super::crash_guard::{catch, Panicked};
use super::messages::{
    GetNodes, JobProgress, NodeDirectory, NodeHealth, NodeLoad, NodeLost, PlaceJob, PlacementReport, ProbeNow, RunLocal, Stop, SyncArtifacts,
};
use crate::auth::Keyring;
use crate::config::Settings;
pub use crate::controller_store::RemoteRef;
pub use fallback::NodeFailure;
use fallback::{fallback_class, fallback_reason, misconfiguration, why_nothing_ran};
use local::run_local;
pub use trace::{Ending, Trace};
use trace::build_receipt;
use crate::controller_store::ControllerStore;
use crate::error::ErrorCode;
use crate::receipt::{receipt_dir, FallbackMode, JobSpec, JobStatus, Receipt, ReceiptError};
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Runs one job to its end and answers with the receipt (also written to
/// the receipt folder).
#[derive(Message)]
#[rtype(result = "Receipt")]
pub struct SubmitJob {
    pub spec: JobSpec,
    /// Re-attach to a job already submitted to a node (daemon restart).
    pub resume: Option<RemoteRef>,
    /// Picked up again after a restart (of the daemon or of this actor)
    /// without a remote job id on record: the job may have reached a
    /// worker in the instant before the restart, so the nodes are asked
    /// for it (by its label) before it is placed again.
    pub recovered: bool,
    /// When the job was first submitted (kept across daemon restarts).
    pub submitted_at: SystemTime,
    /// Set when the caller probed every node just before submitting (a
    /// one-shot `submit`): a node probed since then is not probed again
    /// before falling back. None: nodes the cached view says are not up are
    /// probed again first.
    pub probed_at: Option<Instant>,
    /// Set when the job is handed over while its acceptance is still being
    /// committed (the daemon): the run stages its inputs meanwhile, then
    /// waits for `true` before it does anything else (placing it, touching
    /// its receipt folder, contacting a worker, running it here). `false`
    /// or a dropped sender (the submission was a duplicate, or the commit
    /// failed) ends the run there, with nothing done and a placeholder
    /// receipt, which the caller discards.
    pub admission: Option<tokio::sync::oneshot::Receiver<bool>>,
}

/// Cancels a running job; answers whether it was running here.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct CancelJob {
    pub key: String,
}

/// Everything a job's future needs, cheap to clone.
#[derive(Clone)]
pub struct JobDeps {
    pub settings: Arc<Settings>,
    pub nodes: Recipient<GetNodes>,
    pub node_lost: Recipient<NodeLost>,
    pub directory: Recipient<NodeDirectory>,
    pub probe_now: Recipient<ProbeNow>,
    pub place: Recipient<PlaceJob>,
    pub load: Recipient<NodeLoad>,
    pub local: Recipient<RunLocal>,
    pub sync: Recipient<SyncArtifacts>,
    pub progress: Option<Recipient<JobProgress>>,
    /// None when no secret is set: remote execution is then impossible and
    /// every job runs locally with that reason.
    pub keyring: Option<Arc<Keyring>>,
    /// The daemon's store, to record remote job ids as soon as they exist.
    pub store: Option<Arc<ControllerStore>>,
}

/// The JobRunner actor.
pub struct JobRunner {
    deps: JobDeps,
    /// Cancellation handles of the jobs in flight, by `run_id/job_id`, with
    /// how many runs of that key share the handle (a resubmission while the
    /// first run is in flight shares it, so one cancel reaches both) and
    /// how many of those were admitted (see [`SubmitJob::admission`]).
    running: HashMap<String, (CancellationToken, usize, Arc<AtomicUsize>)>,
}

impl JobRunner {
    pub fn new(deps: JobDeps) -> Self {
        JobRunner { deps, running: HashMap::new() }
    }
}

impl Actor for JobRunner {
    type Context = Context<Self>;

    /// Receipts kept while the disk was full are written once space
    /// returns (see [`crate::receipt::write_pending`]).
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(std::time::Duration::from_secs(2), |_, ctx| {
            if !crate::receipt::pending_dirs().is_empty() {
                ctx.spawn(actix::fut::wrap_future(async {
                    let _ = tokio::task::spawn_blocking(crate::receipt::write_pending).await;
                }));
            }
        });
    }
}

/// A restart drops the futures of the jobs in flight (actix cancels what an
/// actor spawned): each one's caller gets an error. Their tokens are
/// cancelled so that a local step one had started stops (left running
/// unobserved, it would hold a LocalRunner slot); a remote job keeps running
/// on its worker, and the daemon re-attaches to it at once.
impl actix::Supervised for JobRunner {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(jobs_dropped = self.running.len(), "JobRunner restarted");
        for (token, _, _) in self.running.values() {
            token.cancel();
        }
        self.running.clear();
    }
}

/// Stops the JobRunner, which is then restarted (see [`Stop`]).
impl Handler<Stop> for JobRunner {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Runs the job in the background of the actor (never blocking it).
impl Handler<SubmitJob> for JobRunner {
    type Result = ResponseActFuture<Self, Receipt>;

    fn handle(&mut self, msg: SubmitJob, _: &mut Context<Self>) -> Self::Result {
        let key = msg.spec.key();
        let entry = self.running.entry(key.clone()).or_insert_with(|| (CancellationToken::new(), 0, Arc::new(AtomicUsize::new(0))));
        entry.1 += 1;
        // Only a run that is alone with its key may empty the receipt
        // folder: counted once admitted, so that a duplicate refused at its
        // gate never makes the run it duplicated think it is not alone.
        let runs = Runs { admitted: entry.2.clone(), new: msg.resume.is_none() };
        let cancel = entry.0.clone();
        let deps = self.deps.clone();
        let (spec, submitted_at) = (msg.spec.clone(), msg.submitted_at);
        let resume = match (msg.resume, msg.recovered) {
            (Some(r), _) => Resume::Remote(r),
            (None, true) => Resume::Search,
            (None, false) => Resume::No,
        };
        let job = run_job(deps.clone(), msg.spec, resume, msg.submitted_at, cancel, runs, msg.probed_at, msg.admission);
        // The job's future runs inside this actor's task: a panic in it would
        // take the actor and every other job in flight down. Caught, it
        // fails this job alone, with a receipt that says so.
        let fut = async move {
            match catch("JobRunner", "running a job", job).await {
                Ok(receipt) => receipt,
                Err(p) => crashed(&deps, &spec, submitted_at, p).await,
            }
        };
        Box::pin(fut.into_actor(self).map(move |receipt, act, _| {
            if let Some(e) = act.running.get_mut(&key) {
                e.1 -= 1;
                if e.1 == 0 {
                    act.running.remove(&key);
                }
            }
            receipt
        }))
    }
}

/// Cancels a job in flight (local step or remote job).
impl Handler<CancelJob> for JobRunner {
    type Result = bool;
    fn handle(&mut self, msg: CancelJob, _: &mut Context<Self>) -> bool {
        match self.running.get(&msg.key) {
            Some((t, _, _)) => {
                t.cancel();
                true
            }
            None => false,
        }
    }
}

/// Where a job's run starts.
pub enum Resume {
    /// A new job: placed as usual.
    No,
    /// Re-attach to this job on its node.
    Remote(RemoteRef),
    /// Picked up after a restart with no remote job on record: look for it
    /// on the nodes first ([`remote::find_submitted`]).
    Search,
}

/// The admitted runs of one key (see [`SubmitJob::admission`]).
pub struct Runs {
    admitted: Arc<AtomicUsize>,
    /// A new job rather than one re-attached to its remote job.
    new: bool,
}

impl Runs {
    /// Counts this run as admitted until the guard is dropped; true when
    /// it is the only admitted run of its key and a new job (it may then
    /// empty the receipt folder).
    fn admit(self) -> (bool, AdmittedGuard) {
        let alone = self.admitted.fetch_add(1, Ordering::AcqRel) == 0 && self.new;
        (alone, AdmittedGuard(self.admitted))
    }
}

/// Counts an admitted run out when it ends.
struct AdmittedGuard(Arc<AtomicUsize>);

impl Drop for AdmittedGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The whole life of one job; always ends in a receipt, written to disk
/// here unless the store keeps it (the daemon then writes the file).
#[allow(clippy::too_many_arguments)]
pub async fn run_job(
    deps: JobDeps,
    spec: JobSpec,
    resume: Resume,
    submitted_at: SystemTime,
    cancel: CancellationToken,
    runs: Runs,
    probed_at: Option<Instant>,
    admission: Option<tokio::sync::oneshot::Receiver<bool>>,
) -> Receipt {
    let mut trace = Trace::new(&spec, submitted_at, &deps);
    let dir = receipt_dir(&deps.settings.cluster_dir(), &spec.run_id, &spec.job_id);
    // The whole-job deadline: cancelling on expiry reaches the worker the
    // same way a user's cancel does.
    // A child token: the deadline cancels this run only, while a user's
    // cancel of the key (the parent) reaches every run of it.
    let cancel = cancel.child_token();
    let done = CancellationToken::new();
    let _stop_timer = done.clone().drop_guard();
    let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(t) = spec.timeout_s {
        let (c, flag, done) = (cancel.clone(), timed_out.clone(), done.clone());
        actix::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(t)) => {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    c.cancel();
                }
                _ = done.cancelled() => {}
            }
        });
    }
    let staged = if staging::is_quick(&spec.step_name, &spec.payload) {
        Ok(staging::stage(&spec.step_name, &spec.payload))
    } else {
        let (step, payload) = (spec.step_name.clone(), spec.payload.clone());
        tokio::task::spawn_blocking(move || staging::stage(&step, &payload)).await
    };
    // Staging only read files; nothing else happens before the admission.
    if let Some(gate) = admission {
        if !gate.await.unwrap_or(false) {
            // A placeholder, never recorded, written or counted.
            let ending = Ending::failed(ErrorCode::Internal, "not admitted: the submission was not recorded", None);
            return build_receipt(&spec, String::new(), ending, &trace);
        }
    }
    let (fresh_folder, _admitted) = runs.admit();
    let (inputs_hash, ending) = match staged {
        Ok(Ok(staged)) => {
            let hash = crate::protocol::inputs_hash(&spec.step_name, &staged.payload);
            // A new job has no folder yet (one `stat`, inline); emptying an
            // earlier run's folder is file work for a blocking thread.
            if fresh_folder && std::fs::symlink_metadata(&dir).is_ok() {
                let (d, h) = (dir.clone(), hash.clone());
                match tokio::task::spawn_blocking(move || empty_receipt_folder(&d, &h)).await {
                    Ok(Ok(replaced)) => trace.replaced_inputs_hash = replaced,
                    Ok(Err(e)) => trace.say(format!("could not empty the receipt folder {}: {e}", dir.display())),
                    Err(e) => trace.say(format!("emptying the receipt folder failed: {e}")),
                }
            }
            // The receipt folder is made while the job runs, off the path
            // between its end and its answer (a folder is an inode: on some
            // filesystems its allocation is the slowest step of a short
            // job's bookkeeping). A failure here is met again, and reported,
            // where the files are written.
            // With it, the receipt's file is made ahead (a run alone with
            // its key only, so that no two runs share it). Awaited before
            // the receipt is written, so the writer finds the file.
            // It starts once the job is submitted to a worker
            // (`Trace::underway`). A run that ends without that (a local
            // run) makes nothing ahead: its writers create what they need
            // when they write, which is no later.
            let early = dir.clone();
            let (go, underway) = tokio::sync::oneshot::channel::<()>();
            trace.folder_go = Some(go);
            let folder = actix::spawn(async move {
                if underway.await.is_ok() {
                    let _ = tokio::task::spawn_blocking(move || crate::receipt::prepare_folder(&early, fresh_folder)).await;
                }
            });
            let ending = execute(&deps, &spec, resume, &staged, &dir, &cancel, &mut trace, probed_at).await;
            drop(trace.folder_go.take());
            let _ = folder.await;
            remote::settle_fates(&deps, &mut trace).await;
            (hash, ending)
        }
        Ok(Err(e)) => (
            crate::protocol::inputs_hash(&spec.step_name, &spec.payload),
            if e.kind() == std::io::ErrorKind::InvalidInput {
                Ending::failed(ErrorCode::InputInvalid, e.to_string(), None)
            } else {
                Ending::failed(ErrorCode::InputNotFound, format!("reading an input file failed: {e}"), None)
            },
        ),
        Err(e) => (
            crate::protocol::inputs_hash(&spec.step_name, &spec.payload),
            Ending::failed(ErrorCode::Internal, format!("staging task failed: {e}"), None),
        ),
    };
    let mut ending = ending;
    if timed_out.load(std::sync::atomic::Ordering::SeqCst) && ending.status != JobStatus::Succeeded {
        ending.status = JobStatus::Failed;
        ending.error = Some(ReceiptError::new(
            ErrorCode::Timeout,
            format!("the job did not finish within --timeout {} s; it was cancelled", spec.timeout_s.unwrap_or(0)),
        ));
    }
    let receipt = build_receipt(&spec, inputs_hash, ending, &trace);
    crate::metrics::controller().record_receipt(&receipt);
    // The daemon records the receipt in its store and writes the file
    // itself (see `ControllerStore::keeping_receipts`).
    if deps.store.as_ref().is_some_and(|s| s.keeps_receipts()) {
        trace.say(match &receipt.executed_on {
            Some(on) => format!("{} on {on}", status_word(receipt.status)),
            None => format!("{} without running anywhere", status_word(receipt.status)),
        });
        return receipt;
    }
    let write = {
        let (r, d) = (receipt.clone(), dir.clone());
        tokio::task::spawn_blocking(move || r.write_or_keep(&d)).await
    };
    match write {
        Ok(Ok(path)) => trace.say(match &receipt.executed_on {
            Some(on) => format!("{} on {on}; receipt {}", status_word(receipt.status), path.display()),
            None => format!("{} without running anywhere; receipt {}", status_word(receipt.status), path.display()),
        }),
        Ok(Err(e)) if crate::error::is_disk_full(&e) => trace.say(format!(
            "DISK_FULL: the receipt could not be written into {} ({e}); it is kept in memory and written as soon as space is freed there",
            dir.display()
        )),
        Ok(Err(e)) => trace.say(format!("could not write the receipt into {}: {e}", dir.display())),
        Err(e) => trace.say(format!("receipt writer task failed: {e}")),
    }
    receipt
}

/// Empties a job's receipt folder before a new run, so that no file of an
/// earlier run with the same ids (a `chunk_0005.wav` the new run does not
/// make) is mistaken for this run's. Answers the earlier receipt's
/// `inputs_hash` when it differs from `inputs_hash`.
fn empty_receipt_folder(dir: &std::path::Path, inputs_hash: &str) -> std::io::Result<Option<String>> {
    let previous = match Receipt::read(dir) {
        Ok(r) => Some(r.inputs_hash),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        // An unreadable receipt is replaced like any other.
        Err(_) => Some(String::new()),
    };
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(previous.filter(|h| h != inputs_hash))
}

/// The receipt of a job whose run panicked (a controller bug): failed with
/// `INTERNAL`, written like any other receipt.
async fn crashed(deps: &JobDeps, spec: &JobSpec, submitted_at: SystemTime, p: Panicked) -> Receipt {
    let trace = Trace::new(spec, submitted_at, deps);
    let hash = crate::protocol::inputs_hash(&spec.step_name, &spec.payload);
    let receipt = build_receipt(spec, hash, Ending::failed(ErrorCode::Internal, p.to_string(), None), &trace);
    crate::metrics::controller().record_receipt(&receipt);
    let dir = receipt_dir(&deps.settings.cluster_dir(), &spec.run_id, &spec.job_id);
    let (r, d) = (receipt.clone(), dir.clone());
    match tokio::task::spawn_blocking(move || r.write(&d)).await {
        Ok(Ok(path)) => trace.say(format!("failed on a controller bug; receipt {}", path.display())),
        _ => trace.say(format!("failed on a controller bug; the receipt could not be written into {}", dir.display())),
    }
    receipt
}

fn status_word(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Succeeded => "succeeded",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    }
}

/// A placement with the node snapshot it was made from.
struct Placed {
    report: PlacementReport,
    nodes: Vec<super::messages::NodeSnapshot>,
}

/// Placement, remote attempts and fallback.
#[allow(clippy::too_many_arguments)]
async fn execute(
    deps: &JobDeps,
    spec: &JobSpec,
    resume: Resume,
    staged: &staging::Staged,
    dir: &std::path::Path,
    cancel: &CancellationToken,
    trace: &mut Trace,
    probed_at: Option<Instant>,
) -> Ending {
    let mode = spec.fallback_mode(deps.settings.controller.fallback);
    let mut tried: Vec<String> = Vec::new();
    // This job's own failed attempts, in order: the fallback reason and the
    // error code are built from these and this job's placement only.
    let mut failures: Vec<(String, NodeFailure)> = Vec::new();
    let resume = match resume {
        Resume::Remote(r) => Some(r),
        Resume::No => None,
        Resume::Search => match remote::find_submitted(deps, spec, staged, trace).await {
            remote::Found::On(r) => {
                trace.say(format!("found it on {} as {}: it reached the worker just before the restart", r.node_id, r.remote_job_id));
                Some(r)
            }
            remote::Found::Nowhere => None,
            remote::Found::Unknown(nodes) => {
                remote::wait_out(deps, &nodes, cancel, trace).await;
                None
            }
        },
    };
    if let Some(r) = resume {
        trace.say(format!("re-attaching to {} on {}", r.remote_job_id, r.node_id));
        tried.push(r.node_id.clone());
        match remote::resume(deps, spec, &r, staged, dir, cancel, trace).await {
            remote::Outcome::Done(ending) => return ending,
            remote::Outcome::NodeFailed(f) => failures.push((r.node_id.clone(), f)),
        }
    }
    let mut reprobed = false;
    let placed = loop {
        let placed = match placement(deps, spec).await {
            Ok(p) => p,
            Err(e) => return Ending::failed(ErrorCode::Internal, e, None),
        };
        trace.placement = placed.report.explanations.clone();
        // The Scheduler counted this job on its first choice; that slot is
        // handed to the attempt there, or released if it is not made.
        let mut reservation = Reservation(placed.report.reserved.clone(), deps.load.clone(), spec.step_name.clone());
        if reservation.0.as_deref().is_some_and(|r| tried.iter().any(|t| t == r)) {
            drop(std::mem::replace(&mut reservation, Reservation(None, deps.load.clone(), spec.step_name.clone())));
        }
        for node_id in placed.report.ranked.iter() {
            if tried.iter().any(|t| t == node_id.as_ref()) || cancel.is_cancelled() {
                continue;
            }
            tried.push(node_id.to_string());
            trace.say(format!("placing on {node_id}"));
            let reserved = reservation.take_for(node_id);
            match remote::run_on(deps, spec, node_id, reserved, staged, dir, cancel, trace).await {
                remote::Outcome::Done(ending) => return ending,
                remote::Outcome::NodeFailed(f) => {
                    trace.say(format!("{node_id} could not run it: {}", f.text()));
                    failures.push((node_id.to_string(), f));
                }
            }
        }
        // Before giving up on nodes that the cached view says are down (or
        // were never probed, or misconfigured, or degraded), ask them again:
        // a worker restarted a moment ago is then used at once, and a
        // reason from an earlier job is never reported for this one.
        // The probe a one-shot `submit` made just before is fresh enough.
        let fresh = |n: &super::messages::NodeSnapshot| matches!((n.probed_at, probed_at), (Some(node), Some(caller)) if node >= caller);
        let stale: Vec<String> = placed
            .nodes
            .iter()
            .filter(|n| !matches!(n.health, NodeHealth::Up | NodeHealth::Disabled | NodeHealth::Draining(super::messages::DrainedBy::NodesJson)) && !fresh(n))
            .map(|n| n.node_id.to_string())
            .filter(|id| !tried.contains(id))
            .collect();
        if reprobed || stale.is_empty() || cancel.is_cancelled() || placed.report.controller_only {
            break placed;
        }
        reprobed = true;
        trace.say(format!("probing {} again before deciding", stale.join(", ")));
        reprobe(deps, &stale).await;
    };
    if cancel.is_cancelled() {
        return Ending::failed(ErrorCode::Cancelled, "the job was cancelled before it ran", None);
    }
    let reason = fallback_reason(&placed.report, &failures, &tried);
    if let Some(ending) = misconfiguration(&placed, &failures, &tried, mode, &reason) {
        return ending;
    }
    if mode == FallbackMode::Never {
        let (code, what) = why_nothing_ran(&placed.report, &failures);
        return Ending::failed(
            code,
            format!("{what}, and fallback is \"never\" (--no-fallback), so nothing ran: {reason}"),
            None,
        );
    }
    trace.say(format!("running locally: {reason}"));
    crate::metrics::controller().record_fallback(fallback_class(&placed, &failures));
    let mut ending = run_local(deps, spec, dir, cancel, trace).await;
    ending.fallback_reason = Some(reason);
    ending
}

/// A slot the Scheduler reserved on a node for this job; released on drop
/// unless an attempt on that node took it over. The third field is the
/// job's step (the Scheduler counts slots per step).
struct Reservation(Option<Arc<str>>, Recipient<NodeLoad>, String);

impl Reservation {
    /// True (and the slot is handed over) when the slot is on `node_id`.
    fn take_for(&mut self, node_id: &str) -> bool {
        if self.0.as_deref() == Some(node_id) {
            self.0 = None;
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(node) = self.0.take() {
            self.1.do_send(NodeLoad { node_id: node.to_string(), step_name: self.2.clone(), delta: -1 });
        }
    }
}

/// Probes the given nodes again, each bounded by `probe_timeout_s`.
async fn reprobe(deps: &JobDeps, nodes: &[String]) {
    let bound = std::time::Duration::from_secs(deps.settings.controller.probe_timeout_s.max(1) + 1);
    let probes = nodes.iter().map(|id| deps.probe_now.send(ProbeNow { node_id: Some(id.clone()), since: None }));
    let _ = tokio::time::timeout(bound, futures_util::future::join_all(probes)).await;
}

async fn placement(deps: &JobDeps, spec: &JobSpec) -> Result<Placed, String> {
    let nodes = deps.nodes.send(GetNodes).await.map_err(|e| format!("node probe unavailable: {e}"))?;
    let report = deps
        .place
        .send(PlaceJob { step_name: spec.step_name.clone(), requirements: spec.requirements.clone(), nodes: nodes.clone() })
        .await
        .map_err(|e| format!("scheduler unavailable: {e}"))?
        .map_err(|e| e.to_string())?;
    Ok(Placed { report, nodes })
}
