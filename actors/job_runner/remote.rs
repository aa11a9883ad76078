//! Following one job on one node: staging, submit, waiting (long-poll plus
//! watchdog), cancel, handing the artifacts to ArtifactSync, and the
//! decision to give the node up. Talking to the worker is the client
//! layer's ([`crate::client`]).

mod restart;

pub use restart::{find_submitted, wait_out, Found};

use super::super::messages::{JobProgress, NodeDirectory, NodeLoad, NodeLost, ProbeNow, SyncArtifacts, SyncError};
use super::liveness;
use super::staging::Staged;
use super::{Ending, JobDeps, NodeFailure, Trace};
use crate::backoff::Backoff;
use crate::client::liveness::{self as watch, Fence};
use crate::client::{Accepted, CallError, CallErrorKind, CurrentClient, HeldPoll, NodeClient, Polled, Submission};
use crate::controller_store::{Phase, RemoteRef};
use crate::error::ErrorCode;
use crate::nodes::{Compat, NodeHandle};
use crate::protocol::JobState;
use crate::receipt::{AttemptOutcome, JobSpec, JobStatus, ReceiptError};
use crate::steps::StepName;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// How a remote attempt ended.
pub enum Outcome {
    /// The job is settled (succeeded, failed for a reason a local run would
    /// share, or cancelled): this becomes the receipt.
    Done(Ending),
    /// This node could not run it (and why); try another or run locally.
    NodeFailed(NodeFailure),
}

/// Keeps the scheduler's load count right however the attempt ends: the
/// slot is given back once, when the worker says the job ended (before the
/// log and artifacts are fetched, so that the count matches what the worker
/// reports in `/health` from then on), or when the attempt ends otherwise.
struct LoadGuard(actix::Recipient<NodeLoad>, String, String, std::cell::Cell<bool>);

impl LoadGuard {
    fn new(to: actix::Recipient<NodeLoad>, node_id: &str, step_name: &str) -> LoadGuard {
        LoadGuard(to, node_id.to_string(), step_name.to_string(), std::cell::Cell::new(false))
    }

    /// Gives the slot back now (once).
    fn release(&self) {
        if !self.3.replace(true) {
            self.0.do_send(NodeLoad { node_id: self.1.clone(), step_name: self.2.clone(), delta: -1 });
        }
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.release();
    }
}

async fn connect(deps: &JobDeps, node_id: &str) -> Result<(NodeHandle, NodeClient), String> {
    let keyring = deps.keyring.clone().ok_or("no cluster secret set")?;
    let lookup = || deps.directory.send(NodeDirectory { node_id: node_id.to_string() });
    let mut handle = lookup().await.map_err(|e| format!("node directory unavailable: {e}"))?.ok_or("no longer in nodes.json")?;
    if !handle.probed {
        // Re-attaching right after a restart: learn the node's contract
        // before talking to it.
        let _ = deps.probe_now.send(ProbeNow { node_id: Some(node_id.to_string()), since: None }).await;
        handle = lookup().await.map_err(|e| format!("node directory unavailable: {e}"))?.ok_or("no longer in nodes.json")?;
        if !handle.probed {
            return Err("not reachable for a probe".into());
        }
    }
    let timeout = Duration::from_secs(deps.settings.controller.probe_timeout_s.max(1) * 3);
    let client = NodeClient::new(&handle, keyring, timeout);
    Ok((handle, client))
}

/// Retries a call on transient failures on the configured back-off series
/// ([`Backoff`]), unless the job was cancelled.
async fn retry<T, F, Fut>(deps: &JobDeps, cancel: &CancellationToken, f: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let transient = |e: &CallError| {
        let again = e.is_transient() && !cancel.is_cancelled();
        if again {
            tracing::debug!("transient failure, retrying: {e}");
        }
        again
    };
    Backoff::from_settings(&deps.settings.controller).retry(f, transient).await
}

/// Runs the job on `node_id` from the start (staging, submit, wait, sync).
/// `reserved`: the Scheduler already counted this job on the node when it
/// placed it; the slot is released when the attempt ends, either way.
#[allow(clippy::too_many_arguments)]
pub async fn run_on(deps: &JobDeps, spec: &JobSpec, node_id: &str, reserved: bool, staged: &Staged, dir: &Path, cancel: &CancellationToken, trace: &mut Trace) -> Outcome {
    if !reserved {
        deps.load.do_send(NodeLoad { node_id: node_id.to_string(), step_name: spec.step_name.clone(), delta: 1 });
    }
    let load = LoadGuard::new(deps.load.clone(), node_id, &spec.step_name);
    let (handle, client) = match connect(deps, node_id).await {
        Ok(c) => c,
        Err(e) => return Outcome::NodeFailed(NodeFailure::Unavailable(e)),
    };
    let began = SystemTime::now();
    trace.started_at.get_or_insert(began);
    let inputs_hash = crate::protocol::inputs_hash(&spec.step_name, &staged.payload);
    let fence = lease_fence(deps, &client);
    // Small inputs travel inside the submission when the node allows it
    // (no upload round trip, no commit of its own on the worker); the rest
    // are uploaded first.
    let inline: Vec<&super::staging::Blob> = match &client {
        NodeClient::Current(c) => pick_inline(&staged.blobs, c.inline_blob_bytes()),
        NodeClient::Legacy(_) => Vec::new(),
    };
    for blob in &inline {
        trace.say(format!("staging {} ({} bytes) to {node_id} inside the submission", blob.original, blob.size));
    }
    let inline_bytes: Vec<(&str, &[u8])> = inline.iter().filter_map(|b| Some((b.sha256.as_str(), b.bytes.as_deref()?))).collect();
    match &client {
        NodeClient::Current(c) => {
            for blob in staged.blobs.iter().filter(|b| !inline.iter().any(|i| i.sha256 == b.sha256)) {
                trace.say(format!("staging {} ({} bytes) to {node_id}", blob.original, blob.size));
                match retry(deps, cancel, || c.put_blob(&blob.path)).await {
                    Ok(sha) if sha == blob.sha256 => {}
                    Ok(_) => return give_up(deps, node_id, None, NodeFailure::Unavailable(format!("could not take {}: it changed while it was being staged", blob.original)), trace, began, false),
                    Err(e) => {
                        let lost = e.is_connection();
                        return give_up(deps, node_id, None, call_failure(&e, &format!("while staging {}", blob.original)), trace, began, lost);
                    }
                }
            }
            if cancel.is_cancelled() {
                trace.attempt(node_id, None, AttemptOutcome::Cancelled, Some("cancelled while staging".into()), began);
                return Outcome::Done(Ending::failed(ErrorCode::Cancelled, "the job was cancelled before it was submitted", None));
            }
        }
        NodeClient::Legacy(_) => {
            if StepName::parse(&spec.step_name).is_err() {
                return Outcome::NodeFailed(NodeFailure::Unavailable(format!("does not know step {}", spec.step_name)));
            }
        }
    }
    let submit = Submission {
        step_name: &spec.step_name,
        payload: &staged.payload,
        // v0.5 has no blob upload: paths go as given, and must be valid on
        // the worker (documented in docs/protocol.md).
        unstaged_payload: &spec.payload,
        inputs_hash: &inputs_hash,
        label: &spec.key(),
        lease_s: deps.settings.controller.lease_s.max(1),
        inline: &inline_bytes,
        hold: SUBMIT_HOLD,
    };
    // The receipt's folder is made while the worker accepts and runs the
    // job (see `Trace::underway`).
    trace.underway();
    let submitted = retry(deps, cancel, || {
        fence.sent();
        client.submit(&submit)
    })
    .await;
    let Accepted { job_id: remote_job_id, cached, held } = match submitted {
        Ok(s) => s,
        Err(e) => {
            let lost = e.is_connection();
            if lost && e.kind != CallErrorKind::Refused {
                // The submission may have reached the worker and created the
                // job under a lease that nobody renews: it runs nowhere else
                // until that lease has surely expired.
                wait_for_fence(&fence, node_id, "the submitted job", trace).await;
            }
            return give_up(deps, node_id, None, call_failure(&e, "when the job was submitted"), trace, began, lost);
        }
    };
    trace.say(format!("{} job {remote_job_id} on {node_id}", if cached { "worker returned existing" } else { "submitted" }));
    trace.underway();
    record_remote(deps, spec, node_id, &remote_job_id, &trace.placement).await;
    follow(deps, spec, &handle, &client, &remote_job_id, cached, held, staged, dir, cancel, trace, began, &fence, &load).await
}

/// How long a worker that streams its answer to a submission may hold its
/// second line for the job to end (it also caps the wait at 2 s and half
/// the lease). The acceptance, with the job's id, comes first, so a cut
/// during the wait loses nothing; the second line is awaited as the first
/// long-poll, beside the watchdog, so a short job needs no poll at all.
const SUBMIT_HOLD: Duration = Duration::from_secs(2);

/// The inputs to send inside the submission: those read while staging
/// (small files), smallest first, while their total fits `limit` (the
/// node's `inline_blob_bytes`). The others are uploaded before it.
fn pick_inline(blobs: &[super::staging::Blob], limit: u64) -> Vec<&super::staging::Blob> {
    let mut small: Vec<&super::staging::Blob> = blobs.iter().filter(|b| b.bytes.is_some()).collect();
    small.sort_by_key(|b| b.size);
    let mut total = 0u64;
    small.retain(|b| {
        total = total.saturating_add(b.size);
        total <= limit
    });
    small
}

/// The fence of a job on this node: the configured lease plus margin for
/// the current contract, none for a v0.5 worker (which knows no lease).
fn lease_fence(deps: &JobDeps, client: &NodeClient) -> Fence {
    match client {
        NodeClient::Current(_) => current_fence(deps),
        NodeClient::Legacy(_) => Fence::none(),
    }
}

/// The configured lease plus margin, counted from now.
fn current_fence(deps: &JobDeps) -> Fence {
    let c = &deps.settings.controller;
    Fence::new(Duration::from_secs(c.lease_s.max(1)), Duration::from_millis(c.lease_margin_ms))
}

/// Waits until the worker's lease on a job it may still hold has surely
/// expired, saying so.
async fn wait_for_fence(fence: &Fence, node_id: &str, what: &str, trace: &Trace) {
    let left = fence.expires_at().saturating_duration_since(Instant::now());
    if !left.is_zero() {
        trace.say(format!("waiting {:.1} s for {node_id}'s lease on {what} to expire, so that it cannot run twice", left.as_secs_f64()));
    }
    fence.wait().await;
}

/// Re-attaches to a job a previous daemon handed to a node.
pub async fn resume(deps: &JobDeps, spec: &JobSpec, r: &RemoteRef, staged: &Staged, dir: &Path, cancel: &CancellationToken, trace: &mut Trace) -> Outcome {
    let (handle, client) = match connect(deps, &r.node_id).await {
        Ok(c) => c,
        Err(e) => return Outcome::NodeFailed(NodeFailure::Unavailable(e)),
    };
    deps.load.do_send(NodeLoad { node_id: r.node_id.clone(), step_name: spec.step_name.clone(), delta: 1 });
    let load = LoadGuard::new(deps.load.clone(), &r.node_id, &spec.step_name);
    let began = SystemTime::now();
    trace.started_at.get_or_insert(began);
    trace.placement = r.placement.clone();
    trace.underway();
    // Renewals the previous daemon sent are older than this moment.
    let fence = lease_fence(deps, &client);
    follow(deps, spec, &handle, &client, &r.remote_job_id, false, None, staged, dir, cancel, trace, began, &fence, &load).await
}

/// Records which remote job the job follows, so that a restarted daemon
/// re-attaches to it. The long-poll starts without waiting for that
/// commit: waiting would not make the record durable any sooner, and
/// polling changes nothing on the worker. (A daemon killed between the
/// worker's acceptance and this commit restarts without the record and
/// places the job again, as it did when this was awaited; see
/// docs/reliability.md.)
async fn record_remote(deps: &JobDeps, spec: &JobSpec, node_id: &str, remote_job_id: &str, placement: &[crate::receipt::NodeExplanation]) {
    let Some(store) = deps.store.as_ref() else { return };
    let r = RemoteRef { node_id: node_id.into(), remote_job_id: remote_job_id.into(), placement: placement.to_vec() };
    store.update_soon(&spec.key(), |j| {
        j.phase = Phase::Running;
        j.remote = Some(r);
    });
}

/// Classifies a failed call: refused credentials are a misconfiguration,
/// anything else makes the node unavailable for this job.
fn call_failure(e: &CallError, when: &str) -> NodeFailure {
    let (code, message) = (e.code.as_str(), &e.message);
    match e.kind {
        CallErrorKind::Auth => NodeFailure::Misconfigured(ErrorCode::AuthRejected, format!("refused our credentials {when}: {message}")),
        k if k.is_connection() => NodeFailure::Unavailable(format!("unreachable {when} ({message})")),
        CallErrorKind::Busy { status: 429 | 503 } => NodeFailure::Unavailable(format!("is full {when} ({e})")),
        CallErrorKind::Http { .. } if code == crate::protocol::ApiCode::Draining.as_str() => {
            NodeFailure::Unavailable(format!("is draining, so it refused the job {when}: {message}"))
        }
        CallErrorKind::Http { .. } if code == ErrorCode::DiskFull.as_str() => NodeFailure::Step(code.to_string(), format!("is out of disk space {when}: {message}")),
        _ => NodeFailure::Unavailable(format!("could not take the job {when}: {e}")),
    }
}

fn give_up(deps: &JobDeps, node_id: &str, remote_job_id: Option<String>, failure: NodeFailure, trace: &mut Trace, began: SystemTime, lost: bool) -> Outcome {
    if lost {
        deps.node_lost.do_send(NodeLost { node_id: node_id.into(), reason: failure.text().to_string() });
    }
    trace.attempt(node_id, remote_job_id, AttemptOutcome::Abandoned, Some(failure.text().to_string()), began);
    Outcome::NodeFailed(failure)
}

/// Job error codes that say something about the node rather than the job:
/// another node or a local run may well succeed.
fn environmental(code: &str) -> bool {
    matches!(
        code,
        "STEP_UNAVAILABLE" | "STEP_UNKNOWN" | "FFMPEG_UNAVAILABLE" | "TTS_UNAVAILABLE" | "OPENCLAW_UNAVAILABLE" | "UI_SESSION_REQUIRED" | "INTERRUPTED" | "IO_ERROR" | "INPUT_NOT_FOUND" | "BLOB_NOT_FOUND" | "DISK_FULL" | "LEASE_EXPIRED"
    )
}

/// One poll of the job; a current worker's long-poll renews the lease
/// (recorded in `fence`).
async fn poll(client: &NodeClient, job_id: &str, wait_s: u64, fence: &Fence) -> Result<Polled, CallError> {
    if matches!(client, NodeClient::Current(_)) {
        fence.sent();
    }
    client.poll(job_id, wait_s).await
}

/// Reads the remote job's log every second from where it left off and
/// forwards its `progress` lines; never returns (it is dropped with the
/// attempt). A failed read is skipped: the long-poll and the watchdog judge
/// the node, not this.
async fn tail_progress(client: &CurrentClient, job_id: &str, node_id: &str, key: String, sink: actix::Recipient<JobProgress>) {
    let mut offset = 0u64;
    let mut partial = String::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok((data, next)) = client.log_from(job_id, offset).await else { continue };
        offset = next;
        partial.push_str(&data);
        while let Some(end) = partial.find('\n') {
            let line: String = partial.drain(..=end).collect();
            if let Some(text) = crate::joblog::progress_text(&line) {
                let line = format!("{node_id}: {text}");
                tracing::info!(job = %key, "{line}");
                sink.do_send(JobProgress { key: key.clone(), line });
            }
        }
    }
}

async fn cancel_remote(client: &NodeClient, job_id: &str) {
    if let Err(e) = client.cancel(job_id).await {
        tracing::warn!("cancelling remote job {job_id} failed: {e}");
    }
}

/// Waits for the remote job to end, then syncs its artifacts and log.
#[allow(clippy::too_many_arguments)]
async fn follow(
    deps: &JobDeps,
    spec: &JobSpec,
    handle: &NodeHandle,
    client: &NodeClient,
    job_id: &str,
    cached: bool,
    mut held: Option<HeldPoll>,
    staged: &Staged,
    dir: &Path,
    cancel: &CancellationToken,
    trace: &mut Trace,
    began: SystemTime,
    fence: &Fence,
    load: &LoadGuard,
) -> Outcome {
    let node_id = handle.config.node_id.as_str();
    let wait_s = deps.settings.controller.wait_poll_s.max(1);
    let policy = Backoff::from_settings(&deps.settings.controller);
    let max = policy.max_attempts();
    let probe_timeout = Duration::from_secs(deps.settings.controller.probe_timeout_s.max(1));
    // No poll may hang longer than the worker's own wait plus the time a
    // live worker needs to answer.
    let poll_bound = Duration::from_secs(wait_s) + probe_timeout;
    // The watchdog asks about the job every second beside the long-poll (a
    // signed status call that renews the lease; `/health` for a v0.5
    // worker), so a worker that stops answering is noticed within about a
    // second plus the probe timeout. Its own client timeout is a little
    // longer, so the watchdog's bound is the one seen.
    let watcher = deps.keyring.clone().map(|k| CurrentClient::new(handle.config.base_url(), node_id.to_string(), k, probe_timeout + Duration::from_secs(1)));
    let watched_job = matches!(client, NodeClient::Current(_)).then_some(job_id);
    let watchdog = watch::watch(watcher, watched_job, probe_timeout, fence);
    tokio::pin!(watchdog);
    // The step's progress lines (chunk 3/10, ...) from the worker's log,
    // shown while the job runs; ends with this function.
    let progress = match (client, &trace.progress) {
        (NodeClient::Current(c), Some(p)) => Some(tail_progress(c, job_id, node_id, trace.key.clone(), p.clone())),
        _ => None,
    };
    let progress = async move {
        match progress {
            Some(f) => f.await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(progress);
    let mut failures = 0u32;
    let mut previous: Option<CallError> = None;
    let mut last_state = None;
    let t0 = Instant::now();
    // The second line of a streamed submission is the first poll.
    let polled = loop {
        let next = async {
            match held.take() {
                Some(h) => h.await,
                None => poll(client, job_id, wait_s, fence).await,
            }
        };
        let r = tokio::select! {
            // An answer that arrives together with a watchdog verdict wins
            // (a job that succeeded must never be run again), and so does a
            // cancellation.
            biased;
            r = tokio::time::timeout(poll_bound, next) => {
                r.unwrap_or_else(|_| Err(CallError::new(CallErrorKind::TimedOut, format!("no answer to the long-poll within {} s", poll_bound.as_secs()))))
            }
            _ = cancel.cancelled() => {
                trace.say(format!("cancelling {job_id} on {node_id}"));
                cancel_remote(client, job_id).await;
                // Wait briefly for the worker to confirm, so the log we fetch
                // shows the cancellation.
                let _ = tokio::time::timeout(Duration::from_secs(5), poll(client, job_id, 2, fence)).await;
                if let Err(e) = client.fetch_log(job_id, None, &dir.join(crate::receipt::LOG_FILE)).await {
                    tracing::warn!("could not fetch the cancelled job's log: {e}");
                }
                let ending = Ending { remote_job_id: Some(job_id.into()), ..Ending::failed(ErrorCode::Cancelled, "the job was cancelled", Some(node_id)) };
                trace.attempt(node_id, Some(job_id.into()), AttemptOutcome::Cancelled, None, began);
                return Outcome::Done(with_compat(ending, handle.compat));
            }
            () = &mut progress => continue,
            // Last: a cancellation asked for at the same moment is honoured
            // rather than moving the job elsewhere.
            reason = &mut watchdog => {
                wait_for_fence(fence, node_id, job_id, trace).await;
                return give_up(deps, node_id, Some(job_id.into()), NodeFailure::Lost(reason), trace, began, true);
            }
        };
        match r {
            Ok(p) if p.state.is_terminal() => break p,
            Ok(p) => {
                failures = 0;
                previous = None;
                if Some(p.state) != last_state {
                    trace.say(format!("{job_id} is {} on {node_id}", p.state.as_str()));
                    last_state = Some(p.state);
                }
            }
            Err(e) if e.is_transient() => {
                failures += 1;
                trace.say(format!("{node_id} not answering about {job_id} ({failures}/{max}): {e}"));
                let backoff = match liveness::after_failure(&e, previous.as_ref(), failures, &policy) {
                    liveness::AfterFailure::Lost => {
                        wait_for_fence(fence, node_id, job_id, trace).await;
                        return give_up(deps, node_id, Some(job_id.into()), NodeFailure::Lost(format!("was lost mid-job: {e}")), trace, began, true);
                    }
                    liveness::AfterFailure::RetryIn(d) => d,
                };
                previous = Some(e);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.cancelled() => {}
                    reason = &mut watchdog => {
                        wait_for_fence(fence, node_id, job_id, trace).await;
                        return give_up(deps, node_id, Some(job_id.into()), NodeFailure::Lost(reason), trace, began, true);
                    }
                }
            }
            Err(e) => {
                wait_for_fence(fence, node_id, job_id, trace).await;
                let failure = match call_failure(&e, "while the job ran") {
                    NodeFailure::Unavailable(r) => NodeFailure::Lost(format!("lost track of job {job_id}: {r}")),
                    other => other,
                };
                return give_up(deps, node_id, Some(job_id.into()), failure, trace, began, false);
            }
        }
    };
    trace.run_ms += t0.elapsed().as_millis() as u64;
    load.release();
    // The worker names its own copies of the inputs; the user knows the
    // paths they gave.
    let mut polled = polled;
    if let Some(e) = &mut polled.error {
        e.message = super::staging::user_paths(&e.message, &staged.blobs);
    }
    let sync_t0 = Instant::now();
    let synced = deps
        .sync
        .send(SyncArtifacts {
            node: handle.clone(),
            remote_job_id: job_id.into(),
            artifacts: (polled.state == JobState::Succeeded).then(|| polled.artifacts.clone()).or(Some(Vec::new())),
            dest: dir.to_path_buf(),
            log: polled.log.take(),
        })
        .await
        .unwrap_or_else(|e| Err(SyncError::other(format!("artifact sync unavailable: {e}"))));
    trace.sync_ms += sync_t0.elapsed().as_millis() as u64;
    let mut ending = Ending {
        status: JobStatus::Failed,
        executed_on: Some(node_id.into()),
        remote_job_id: Some(job_id.into()),
        cached,
        compat_mode: None,
        error: polled.error.clone(),
        result: polled.result.clone(),
        artifacts: Vec::new(),
        fallback_reason: None,
    };
    match polled.state {
        JobState::Succeeded => match synced {
            Ok(artifacts) => {
                let pairs: Vec<(String, String)> = artifacts.iter().map(|a| (a.name.clone(), a.path.clone())).collect();
                if let Some(r) = &mut ending.result {
                    super::staging::map_back(r, &staged.blobs, &pairs);
                }
                ending.status = JobStatus::Succeeded;
                ending.artifacts = artifacts;
                trace.attempt(node_id, Some(job_id.into()), AttemptOutcome::Succeeded, None, began);
            }
            Err(e) => {
                // The step succeeded; it must not run again. Report the sync
                // failure so `sync-artifacts` can finish the copy.
                let (code, first) = if e.disk_full {
                    (ErrorCode::DiskFull, format!("the step succeeded on {node_id}, but this machine's disk is full, so its artifacts could not be copied ({e}); free space in {}, then", dir.display()))
                } else {
                    (ErrorCode::ArtifactSyncFailed, format!("{e};"))
                };
                ending.error = Some(ReceiptError::new(code, format!("{first} retry with: rayvault-orchestrator sync-artifacts --run-id {} --job-id {} --node-id {node_id}", spec.run_id, spec.job_id)));
                trace.attempt(node_id, Some(job_id.into()), AttemptOutcome::Succeeded, Some("artifact sync failed".into()), began);
            }
        },
        JobState::Cancelled => {
            ending.status = JobStatus::Cancelled;
            trace.attempt(node_id, Some(job_id.into()), AttemptOutcome::Cancelled, None, began);
        }
        _ => {
            let err = polled.error.clone().unwrap_or_else(|| ReceiptError::new(ErrorCode::Internal, "the worker reported a failure without an error"));
            if environmental(&err.code) {
                let failure = NodeFailure::Step(err.code.clone(), format!("failed the job with {}: {}", err.code, err.message));
                return give_up(deps, node_id, Some(job_id.into()), failure, trace, began, false);
            }
            trace.attempt(node_id, Some(job_id.into()), AttemptOutcome::Failed, Some(format!("{}: {}", err.code, err.message)), began);
        }
    }
    Outcome::Done(with_compat(ending, handle.compat))
}

fn with_compat(mut e: Ending, compat: Compat) -> Ending {
    e.compat_mode = compat.mode_name().map(str::to_string);
    e
}

/// Learns what became of every remote copy this job gave up (the receipt
/// must never contradict a worker): asks each one's worker once, bounded by
/// the probe timeout, and records the fate on its attempt.
pub async fn settle_fates(deps: &JobDeps, trace: &mut Trace) {
    // Short: a node given up for silence would only hold the receipt back.
    let bound = Duration::from_secs(1);
    for i in 0..trace.attempts.len() {
        let a = &trace.attempts[i];
        let (Some(job_id), true) = (a.remote_job_id.clone(), a.outcome == AttemptOutcome::Abandoned) else { continue };
        let node_id = a.executed_on.clone();
        // A peek, never a renewal: the job was given up, and a renewal
        // would re-attach a copy parked by a restarted worker.
        let asked = async {
            let (_, client) = connect(deps, &node_id).await.map_err(CallError::protocol)?;
            client.peek(&job_id).await
        };
        let (fate, digest) = match tokio::time::timeout(bound, asked).await {
            Ok(Ok(p)) => match p.state {
                JobState::Abandoned => ("stopped_by_lease", None),
                JobState::Cancelled => ("cancelled", None),
                JobState::Failed => ("failed", None),
                JobState::Succeeded => {
                    let bytes = serde_json::to_vec(&p.result).unwrap_or_default();
                    ("finished_ignored", Some(crate::protocol::sha256_hex(&bytes)))
                }
                JobState::Queued => ("never_started", None),
                JobState::Running => ("unknown", None),
            },
            _ => ("unknown", None),
        };
        if fate == "finished_ignored" {
            trace.say(format!("{node_id} finished job {job_id} after it was given up; its result was not used"));
        }
        let a = &mut trace.attempts[i];
        a.fate = Some(fate.to_string());
        a.ignored_result_sha256 = digest;
    }
}
