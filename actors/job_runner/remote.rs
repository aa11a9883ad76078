//! Running a job on a worker: probing, staging, submit, waiting, cancel,
//! artifact sync, and the decision to give a node up.

pub use super::node_client::{CallError, NodeClient};
use super::super::artifact_sync::SyncArtifacts;
use super::super::messages::{Compat, NodeCaps, NodeLost, ProbeFailure, ProbeNow, StepSet};
use super::super::node_probe::{NodeDirectory, NodeHandle};
use super::super::scheduler::NodeLoad;
use super::liveness;
use super::node_client::CurrentClient;
use super::staging::Staged;
use super::{Ending, JobDeps, NodeFailure, Trace};
use crate::auth::Keyring;
use crate::controller_store::{Phase, RemoteRef};
use crate::error::ErrorCode;
use crate::legacy_v05::{self, LegacyAuth, LegacyClient};
use crate::nodes::NodeConfig;
use crate::receipt::{JobSpec, JobStatus, ReceiptError};
use crate::steps::StepName;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// What one probe found.
pub struct ProbeResult {
    pub health: Option<Value>,
    /// The normalised caps and the raw `/caps`, or why the node cannot be used.
    pub outcome: Result<(NodeCaps, Value), ProbeFailure>,
}

/// Probes `/health`, detects the contract, then fetches `/caps` with the
/// right credential. Tells unavailability (down) from misconfiguration
/// (credentials refused, another worker id, no secret) and from a worker
/// that says it is degraded.
pub async fn probe(cfg: NodeConfig, keyring: Option<Arc<Keyring>>, timeout: Duration, allow_plain: bool) -> ProbeResult {
    let Some(keyring) = keyring else {
        return ProbeResult {
            health: None,
            outcome: Err(ProbeFailure::Misconfigured(
                ErrorCode::SecretMissing,
                "cannot be used: this controller has no cluster secret; set RAYVAULT_CLUSTER_SECRET (the same as the worker's) in its environment, or disable the node in nodes.json".into(),
            )),
        };
    };
    let current = CurrentClient::new(cfg.base_url(), cfg.node_id.clone(), keyring.clone(), timeout);
    let health = match current.health().await {
        Ok(h) => h,
        Err(e) => return ProbeResult { health: None, outcome: Err(ProbeFailure::Down(e.to_string())) },
    };
    let claimed = health.get("worker_id").and_then(Value::as_str).unwrap_or_default();
    let outcome = if legacy_v05::is_legacy_health(&health) {
        probe_legacy(&cfg, keyring, timeout, allow_plain).await
    } else if claimed != cfg.node_id {
        // Requests are signed for the node id; a worker with another id
        // would refuse them as if the secret were wrong.
        Err(ProbeFailure::Misconfigured(
            ErrorCode::NodeIdMismatch,
            format!(
                "is misconfigured: the worker at {}:{} says it is {claimed:?}; set node_id in nodes.json to its RAYVAULT_WORKER_ID, or that worker's RAYVAULT_WORKER_ID to {:?}",
                cfg.host, cfg.port, cfg.node_id
            ),
        ))
    } else {
        match current.caps().await {
            Ok(raw) => Ok((node_caps(&raw, Compat::Current), raw)),
            Err(CallError::Auth(reason)) if allow_plain => {
                let plain = CurrentClient::new(cfg.base_url(), cfg.node_id.clone(), keyring, timeout).plain();
                match plain.caps().await {
                    Ok(raw) => {
                        tracing::warn!(node = %cfg.node_id, "worker rejected HMAC ({reason}); using the plain token because RAYVAULT_ALLOW_PLAIN_FALLBACK=1");
                        Ok((node_caps(&raw, Compat::CurrentPlainToken), raw))
                    }
                    Err(e) => Err(auth_failure(format!("{reason}; plain token also refused: {e}"))),
                }
            }
            Err(CallError::Auth(reason)) => Err(auth_failure(reason)),
            Err(e @ (CallError::Unreachable(_) | CallError::Busy(..))) => Err(ProbeFailure::Down(e.to_string())),
            Err(e) => Err(ProbeFailure::Down(format!("answered /caps with an error ({e})"))),
        }
    };
    // A worker short of disk space (or with a failed store) still answers;
    // it says so in /health, and takes no new jobs until it recovers.
    // A worker asked to drain says so too; it takes no new jobs either.
    let draining = health.get("draining").and_then(Value::as_bool) == Some(true);
    let outcome = match outcome {
        Ok(_) if draining => Err(ProbeFailure::Draining),
        Ok(ok) => match degraded_reason(&health) {
            Some(why) => Err(ProbeFailure::Degraded(why)),
            None => Ok(ok),
        },
        Err(e) => Err(e),
    };
    ProbeResult { health: Some(health), outcome }
}

/// The worker's own reason when its `/health` says `"status": "degraded"`.
fn degraded_reason(health: &Value) -> Option<String> {
    if health.get("status").and_then(Value::as_str) != Some("degraded") {
        return None;
    }
    let why = health
        .get("degraded_reason")
        .or_else(|| health.get("reason"))
        .and_then(Value::as_str)
        .unwrap_or("no reason given");
    let free = health.get("free_bytes").and_then(Value::as_u64).map(|b| format!(" ({} MiB free)", b / (1024 * 1024))).unwrap_or_default();
    Some(format!("is degraded: {why}{free}"))
}

fn auth_failure(reason: String) -> ProbeFailure {
    ProbeFailure::Misconfigured(ErrorCode::AuthRejected, format!("refused our credentials: {reason}"))
}

async fn probe_legacy(cfg: &NodeConfig, keyring: Arc<Keyring>, timeout: Duration, allow_plain: bool) -> Result<(NodeCaps, Value), ProbeFailure> {
    let hmac = LegacyClient::new(cfg, keyring.clone(), LegacyAuth::Hmac, timeout);
    match hmac.caps().await.map_err(CallError::from) {
        Ok(raw) => Ok((node_caps(&raw, Compat::LegacyHmacV05), raw)),
        Err(CallError::Auth(reason)) if allow_plain => {
            let plain = LegacyClient::new(cfg, keyring, LegacyAuth::Plain, timeout);
            match plain.caps().await.map_err(CallError::from) {
                Ok(raw) => {
                    tracing::warn!(node = %cfg.node_id, "v0.5 worker rejected HMAC ({reason}); using the plain token because RAYVAULT_ALLOW_PLAIN_FALLBACK=1");
                    Ok((node_caps(&raw, Compat::LegacyPlainToken), raw))
                }
                Err(e) => Err(auth_failure(format!("{reason}; plain token also refused: {e}"))),
            }
        }
        Err(CallError::Auth(reason)) => Err(auth_failure(format!("{reason} (a v0.5 worker; RAYVAULT_ALLOW_PLAIN_FALLBACK=1 would allow the plain token)"))),
        Err(e) => Err(ProbeFailure::Down(e.to_string())),
    }
}

/// Normalises a `/caps` body: the documented caps keys plus the steps the node runs.
pub fn node_caps(raw: &Value, compat: Compat) -> NodeCaps {
    let num = |k: &str| raw.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let gpu = raw.get("gpu_model").and_then(Value::as_str).unwrap_or("");
    let mut steps = StepSet::default();
    if compat.is_legacy() {
        let listed = legacy_v05::listed_steps(raw);
        for s in StepName::ALL {
            if listed.iter().any(|l| l == s.legacy_name()) {
                steps.insert(s);
            }
        }
    } else if let Some(list) = raw.get("steps").and_then(Value::as_array) {
        for s in list.iter().filter_map(Value::as_str) {
            if let Ok(step) = StepName::parse(s) {
                steps.insert(step);
            }
        }
    }
    let unavailable: Vec<(StepName, String)> = raw
        .get("unavailable_steps")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((StepName::parse(k).ok()?, v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    NodeCaps {
        unavailable: unavailable.into(),
        os: raw.get("os").and_then(Value::as_str).unwrap_or("unknown").to_ascii_lowercase(),
        ram_gb: num("ram_gb"),
        vram_gb: num("vram_gb"),
        has_gpu: !gpu.is_empty() && !gpu.eq_ignore_ascii_case("none"),
        steps,
        compat,
    }
}

/// How a remote attempt ended.
pub enum Outcome {
    /// The job is settled (succeeded, failed for a reason a local run would
    /// share, or cancelled): this becomes the receipt.
    Done(Ending),
    /// This node could not run it (and why); try another or run locally.
    NodeFailed(NodeFailure),
}

/// Keeps the scheduler's load count right however the attempt ends.
struct LoadGuard(actix::Recipient<NodeLoad>, String);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.do_send(NodeLoad { node_id: self.1.clone(), delta: -1 });
    }
}

async fn connect(deps: &JobDeps, node_id: &str) -> Result<(NodeHandle, NodeClient), String> {
    let keyring = deps.keyring.clone().ok_or("no cluster secret set")?;
    let lookup = || deps.directory.send(NodeDirectory { node_id: node_id.to_string() });
    let mut handle = lookup().await.map_err(|e| format!("node directory unavailable: {e}"))?.ok_or("no longer in nodes.json")?;
    if !handle.probed {
        // Re-attaching right after a restart: learn the node's contract
        // before talking to it.
        let _ = deps.probe_now.send(ProbeNow { node_id: Some(node_id.to_string()) }).await;
        handle = lookup().await.map_err(|e| format!("node directory unavailable: {e}"))?.ok_or("no longer in nodes.json")?;
        if !handle.probed {
            return Err("not reachable for a probe".into());
        }
    }
    let timeout = Duration::from_secs(deps.settings.controller.probe_timeout_s.max(1) * 3);
    let client = NodeClient::new(&handle, keyring, timeout);
    Ok((handle, client))
}

/// Retries a call on transient failures with exponential backoff.
async fn retry<T, F, Fut>(deps: &JobDeps, cancel: &CancellationToken, mut f: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let max = deps.settings.controller.max_attempts.max(1);
    let mut delay = Duration::from_millis(deps.settings.controller.retry_backoff_ms);
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if e.is_transient() && attempt < max && !cancel.is_cancelled() => {
                tracing::debug!("transient failure (attempt {attempt}/{max}): {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Runs the job on `node_id` from the start (staging, submit, wait, sync).
/// `reserved`: the Scheduler already counted this job on the node when it
/// placed it; the slot is released when the attempt ends, either way.
#[allow(clippy::too_many_arguments)]
pub async fn run_on(deps: &JobDeps, spec: &JobSpec, node_id: &str, reserved: bool, staged: &Staged, dir: &Path, cancel: &CancellationToken, trace: &mut Trace) -> Outcome {
    if !reserved {
        deps.load.do_send(NodeLoad { node_id: node_id.to_string(), delta: 1 });
    }
    let _load = LoadGuard(deps.load.clone(), node_id.to_string());
    let (handle, client) = match connect(deps, node_id).await {
        Ok(c) => c,
        Err(e) => return Outcome::NodeFailed(NodeFailure::Unavailable(e)),
    };
    let began = SystemTime::now();
    trace.started_at.get_or_insert(began);
    let inputs_hash = crate::protocol::inputs_hash(&spec.step_name, &staged.payload);
    let fence = lease_fence(deps, &client);
    let submitted = match &client {
        NodeClient::Current(c) => {
            for blob in &staged.blobs {
                trace.say(format!("staging {} ({} bytes) to {node_id}", blob.original, blob.size));
                match retry(deps, cancel, || c.put_blob(&blob.path)).await {
                    Ok(sha) if sha == blob.sha256 => {}
                    Ok(_) => return give_up(deps, node_id, None, NodeFailure::Unavailable(format!("could not take {}: it changed while it was being staged", blob.original)), trace, began, false),
                    Err(e) => {
                        let lost = matches!(e, CallError::Unreachable(_));
                        return give_up(deps, node_id, None, call_failure(&e, &format!("while staging {}", blob.original)), trace, began, lost);
                    }
                }
            }
            if cancel.is_cancelled() {
                trace.attempt(node_id, None, "cancelled", Some("cancelled while staging".into()), began);
                return Outcome::Done(Ending::failed(ErrorCode::Cancelled, "the job was cancelled before it was submitted", None));
            }
            let label = spec.key();
            let lease_s = deps.settings.controller.lease_s.max(1);
            retry(deps, cancel, || {
                fence.sent();
                c.submit(&spec.step_name, &staged.payload, &inputs_hash, &label, lease_s)
            })
            .await
            .map(|s| (s.job.job_id, s.cached))
        }
        NodeClient::Legacy(l) => {
            let Ok(step) = StepName::parse(&spec.step_name) else {
                return Outcome::NodeFailed(NodeFailure::Unavailable(format!("does not know step {}", spec.step_name)));
            };
            // v0.5 has no blob upload: paths go as given, and must be valid
            // on the worker (documented in docs/protocol.md).
            retry(deps, cancel, || async { l.submit(step.legacy_name(), &spec.payload, &inputs_hash).await.map_err(CallError::from) })
                .await
                .map(|j| (j.job_id, j.cached))
        }
    };
    let (remote_job_id, cached) = match submitted {
        Ok(s) => s,
        Err(e) => {
            let lost = matches!(e, CallError::Unreachable(_));
            if lost && !liveness::is_refused(&e) {
                // The submission may have reached the worker and created the
                // job under a lease that nobody renews: it runs nowhere else
                // until that lease has surely expired.
                wait_for_fence(&fence, node_id, "the submitted job", trace).await;
            }
            return give_up(deps, node_id, None, call_failure(&e, "when the job was submitted"), trace, began, lost);
        }
    };
    trace.say(format!("{} job {remote_job_id} on {node_id}", if cached { "worker returned existing" } else { "submitted" }));
    record_remote(deps, spec, node_id, &remote_job_id, &trace.placement).await;
    follow(deps, spec, &handle, &client, &remote_job_id, cached, staged, dir, cancel, trace, began, &fence).await
}

/// The fence of a job on this node: the configured lease plus margin for
/// the current contract, none for a v0.5 worker (which knows no lease).
fn lease_fence(deps: &JobDeps, client: &NodeClient) -> liveness::Fence {
    let c = &deps.settings.controller;
    match client {
        NodeClient::Current(_) => liveness::Fence::new(Duration::from_secs(c.lease_s.max(1)), Duration::from_millis(c.lease_margin_ms)),
        NodeClient::Legacy(_) => liveness::Fence::none(),
    }
}

/// Waits until the worker's lease on a job it may still hold has surely
/// expired, saying so.
async fn wait_for_fence(fence: &liveness::Fence, node_id: &str, what: &str, trace: &Trace) {
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
    deps.load.do_send(NodeLoad { node_id: r.node_id.clone(), delta: 1 });
    let _load = LoadGuard(deps.load.clone(), r.node_id.clone());
    let began = SystemTime::now();
    trace.started_at.get_or_insert(began);
    trace.placement = r.placement.clone();
    // Renewals the previous daemon sent are older than this moment.
    let fence = lease_fence(deps, &client);
    follow(deps, spec, &handle, &client, &r.remote_job_id, false, staged, dir, cancel, trace, began, &fence).await
}

async fn record_remote(deps: &JobDeps, spec: &JobSpec, node_id: &str, remote_job_id: &str, placement: &[crate::receipt::NodeExplanation]) {
    let Some(store) = deps.store.clone() else { return };
    let r = RemoteRef { node_id: node_id.into(), remote_job_id: remote_job_id.into(), placement: placement.to_vec() };
    let key = spec.key();
    let res = tokio::task::spawn_blocking(move || {
        store.update(&key, |j| {
            j.phase = Phase::Running;
            j.remote = Some(r);
        })
    })
    .await;
    if let Ok(Err(e)) = res {
        tracing::error!("could not record the remote job id: {e}");
    }
}

/// Classifies a failed call: refused credentials are a misconfiguration,
/// anything else makes the node unavailable for this job.
fn call_failure(e: &CallError, when: &str) -> NodeFailure {
    match e {
        CallError::Auth(m) => NodeFailure::Misconfigured(ErrorCode::AuthRejected, format!("refused our credentials {when}: {m}")),
        CallError::Unreachable(m) => NodeFailure::Unavailable(format!("unreachable {when} ({m})")),
        CallError::Busy(429, _) | CallError::Busy(503, _) => NodeFailure::Unavailable(format!("is full {when} ({e})")),
        CallError::Refused { code, message, .. } if code == crate::protocol::ApiCode::Draining.as_str() => {
            NodeFailure::Unavailable(format!("is draining, so it refused the job {when}: {message}"))
        }
        CallError::Refused { code, message, .. } if code == ErrorCode::DiskFull.as_str() => NodeFailure::Step(code.clone(), format!("is out of disk space {when}: {message}")),
        other => NodeFailure::Unavailable(format!("could not take the job {when}: {other}")),
    }
}

fn give_up(deps: &JobDeps, node_id: &str, remote_job_id: Option<String>, failure: NodeFailure, trace: &mut Trace, began: SystemTime, lost: bool) -> Outcome {
    if lost {
        deps.node_lost.do_send(NodeLost { node_id: node_id.into(), reason: failure.text().to_string() });
    }
    trace.attempt(node_id, remote_job_id, "abandoned", Some(failure.text().to_string()), began);
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

/// One poll of the job's state, in either contract's terms.
struct Polled {
    state: &'static str,
    result: Option<Value>,
    error: Option<ReceiptError>,
    artifacts: Vec<crate::artifacts::ArtifactEntry>,
    /// The whole log, when the worker's final answer carried it.
    log: Option<String>,
}

async fn poll(client: &NodeClient, job_id: &str, wait_s: u64, fence: &liveness::Fence) -> Result<Polled, CallError> {
    match client {
        NodeClient::Current(c) => {
            fence.sent();
            let v = c.wait(job_id, wait_s).await?;
            Ok(polled_of(v))
        }
        NodeClient::Legacy(l) => {
            // v0.5 has no long-poll: wait a little between polls instead.
            let j = l.job(job_id).await.map_err(CallError::from)?;
            if !j.is_terminal() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let state = match j.status.as_str() {
                "queued" => "queued",
                "succeeded" => "succeeded",
                "failed" => "failed",
                "cancelled" => "cancelled",
                _ => "running",
            };
            Ok(Polled { state, result: j.result, error: j.error.map(|e| ReceiptError { code: e.code, message: e.message }), artifacts: j.artifacts, log: None })
        }
    }
}

/// Reads the remote job's log every second from where it left off and
/// forwards its `progress` lines; never returns (it is dropped with the
/// attempt). A failed read is skipped: the long-poll and the watchdog judge
/// the node, not this.
async fn tail_progress(client: &CurrentClient, job_id: &str, node_id: &str, key: String, sink: actix::Recipient<super::super::messages::JobProgress>) {
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
                sink.do_send(super::super::messages::JobProgress { key: key.clone(), line });
            }
        }
    }
}

/// A current worker's job view in the poll's terms.
fn polled_of(v: crate::protocol::JobView) -> Polled {
    use crate::protocol::JobState;
    let state = match v.state {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Abandoned => "abandoned",
    };
    let error = v.error.map(|e| ReceiptError { code: e.code, message: e.message });
    Polled { state, result: v.result, error, artifacts: v.artifacts, log: v.log }
}

async fn cancel_remote(client: &NodeClient, job_id: &str) {
    let r = match client {
        NodeClient::Current(c) => c.cancel(job_id).await,
        NodeClient::Legacy(l) => l.cancel(job_id).await.map_err(Into::into),
    };
    if let Err(e) = r {
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
    staged: &Staged,
    dir: &Path,
    cancel: &CancellationToken,
    trace: &mut Trace,
    began: SystemTime,
    fence: &liveness::Fence,
) -> Outcome {
    let node_id = handle.config.node_id.as_str();
    let wait_s = deps.settings.controller.wait_poll_s.max(1);
    let max = deps.settings.controller.max_attempts.max(1);
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
    let watchdog = liveness::watch(watcher, watched_job, probe_timeout, fence);
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
    let mut last_state = "";
    let t0 = Instant::now();
    let polled = loop {
        let r = tokio::select! {
            // An answer that arrives together with a watchdog verdict wins
            // (a job that succeeded must never be run again), and so does a
            // cancellation.
            biased;
            r = tokio::time::timeout(poll_bound, poll(client, job_id, wait_s, fence)) => {
                r.unwrap_or_else(|_| Err(CallError::Unreachable(format!("no answer to the long-poll within {} s", poll_bound.as_secs()))))
            }
            _ = cancel.cancelled() => {
                trace.say(format!("cancelling {job_id} on {node_id}"));
                cancel_remote(client, job_id).await;
                // Wait briefly for the worker to confirm, so the log we fetch
                // shows the cancellation.
                let _ = tokio::time::timeout(Duration::from_secs(5), poll(client, job_id, 2, fence)).await;
                if let Err(e) = fetch_log(client, job_id, None, &dir.join(crate::receipt::LOG_FILE)).await {
                    tracing::warn!("could not fetch the cancelled job's log: {e}");
                }
                let ending = Ending { remote_job_id: Some(job_id.into()), ..Ending::failed(ErrorCode::Cancelled, "the job was cancelled", Some(node_id)) };
                trace.attempt(node_id, Some(job_id.into()), "cancelled", None, began);
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
            Ok(p) if !matches!(p.state, "queued" | "running") => break p,
            Ok(p) => {
                failures = 0;
                previous = None;
                if p.state != last_state {
                    trace.say(format!("{job_id} is {} on {node_id}", p.state));
                    last_state = p.state;
                }
            }
            Err(e) if e.is_transient() => {
                failures += 1;
                trace.say(format!("{node_id} not answering about {job_id} ({failures}/{max}): {e}"));
                let backoff = match liveness::after_failure(&e, previous.as_ref(), failures, max, deps.settings.controller.retry_backoff_ms) {
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
            artifacts: (polled.state == "succeeded").then(|| polled.artifacts.clone()).or(Some(Vec::new())),
            dest: dir.to_path_buf(),
            log: polled.log.take(),
        })
        .await
        .unwrap_or_else(|e| Err(super::super::artifact_sync::SyncError::other(format!("artifact sync unavailable: {e}"))));
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
        "succeeded" => match synced {
            Ok(artifacts) => {
                let pairs: Vec<(String, String)> = artifacts.iter().map(|a| (a.name.clone(), a.path.clone())).collect();
                if let Some(r) = &mut ending.result {
                    super::staging::map_back(r, &staged.blobs, &pairs);
                }
                ending.status = JobStatus::Succeeded;
                ending.artifacts = artifacts;
                trace.attempt(node_id, Some(job_id.into()), "succeeded", None, began);
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
                trace.attempt(node_id, Some(job_id.into()), "succeeded", Some("artifact sync failed".into()), began);
            }
        },
        "cancelled" => {
            ending.status = JobStatus::Cancelled;
            trace.attempt(node_id, Some(job_id.into()), "cancelled", None, began);
        }
        _ => {
            let err = polled.error.clone().unwrap_or_else(|| ReceiptError::new(ErrorCode::Internal, "the worker reported a failure without an error"));
            if environmental(&err.code) {
                let failure = NodeFailure::Step(err.code.clone(), format!("failed the job with {}: {}", err.code, err.message));
                return give_up(deps, node_id, Some(job_id.into()), failure, trace, began, false);
            }
            trace.attempt(node_id, Some(job_id.into()), "failed", Some(format!("{}: {}", err.code, err.message)), began);
        }
    }
    Outcome::Done(with_compat(ending, handle.compat))
}

fn with_compat(mut e: Ending, compat: Compat) -> Ending {
    e.compat_mode = compat.mode_name().map(str::to_string);
    e
}

/// Writes a remote job's whole log into `dest`, atomically: the log the
/// worker's final answer carried (`inline`), or else downloaded.
pub async fn fetch_log(client: &NodeClient, job_id: &str, inline: Option<String>, dest: &Path) -> Result<(), String> {
    let bytes = match inline {
        Some(log) => log.into_bytes(),
        None => client.whole_log(job_id).await.map_err(|e| e.to_string())?,
    };
    let d = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if let Some(parent) = d.parent() {
            std::fs::create_dir_all(parent)?;
        }
        crate::artifacts::write_atomic(&d, &bytes)
    })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("writing {}: {e}", dest.display()))
}

/// Learns what became of every remote copy this job gave up (the receipt
/// must never contradict a worker): asks each one's worker once, bounded by
/// the probe timeout, and records the fate on its attempt.
pub async fn settle_fates(deps: &JobDeps, trace: &mut Trace) {
    // Short: a node given up for silence would only hold the receipt back.
    let bound = Duration::from_secs(1);
    for i in 0..trace.attempts.len() {
        let a = &trace.attempts[i];
        let (Some(job_id), true) = (a.remote_job_id.clone(), a.outcome == "abandoned") else { continue };
        let node_id = a.executed_on.clone();
        // A peek, never a renewal: the job was given up, and a renewal
        // would re-attach a copy parked by a restarted worker.
        let asked = async {
            let (_, client) = connect(deps, &node_id).await.map_err(CallError::Other)?;
            match &client {
                NodeClient::Current(c) => c.peek(&job_id).await.map(polled_of),
                NodeClient::Legacy(_) => poll(&client, &job_id, 0, &liveness::Fence::none()).await,
            }
        };
        let (fate, digest) = match tokio::time::timeout(bound, asked).await {
            Ok(Ok(p)) => match p.state {
                "abandoned" => ("stopped_by_lease", None),
                "cancelled" => ("cancelled", None),
                "failed" => ("failed", None),
                "succeeded" => {
                    let bytes = serde_json::to_vec(&p.result).unwrap_or_default();
                    ("finished_ignored", Some(crate::artifacts::sha256_hex(&bytes)))
                }
                "queued" => ("never_started", None),
                _ => ("unknown", None),
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

#[cfg(test)]
mod inline_log_tests {
    use super::*;

    /// The log the worker's final answer carried is written as it is, with
    /// no request to the worker (here: an address where nothing listens);
    /// without it the log is downloaded, which fails there.
    #[actix_rt::test]
    async fn an_inline_log_is_written_without_a_download() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Arc::new(Keyring::from_secrets("inline-log-secret", None).unwrap());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let nobody = NodeClient::Current(CurrentClient::new(format!("http://127.0.0.1:{port}"), "w".into(), ring, Duration::from_secs(2)));
        let dest = dir.path().join("worker.log");
        fetch_log(&nobody, "j1", Some("line one\nline two\n".into()), &dest).await.unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "line one\nline two\n");
        assert!(fetch_log(&nobody, "j1", None, &dir.path().join("other.log")).await.is_err());
    }
}
