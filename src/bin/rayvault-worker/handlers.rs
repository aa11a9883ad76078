//! JSON endpoints: health, caps, submit (`handlers/submit.rs`), find by
//! label, job status (with long-poll), cancel, and the artifact manifest.
//! Files (log, artifact download, blob upload) are in `files.rs`.

use crate::apierror::ApiError;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use rayvault::actors::executor::{CancelRunning, Enqueue, Load};
use rayvault::protocol::{self, ApiCode, ArtifactManifest, Caps, FoundJobs, Health, JobView, StepLoad};
use rayvault::steps::StepName;
use rayvault::store::{is_job_id, Cancellation, JobRecord};
use serde::Deserialize;
use std::time::Duration;

mod submit;
pub use submit::{inline_blob_bytes, submit};

pub type Data = web::Data<AppState>;

pub use rayvault::protocol::now_ms;

/// Bodies up to this size are hashed on the request's own thread; larger
/// ones on the blocking pool.
pub const INLINE_WORK_BYTES: usize = rayvault::artifacts::INLINE_IO_BYTES;

/// `GET /health`: liveness without auth; nothing secret. The status is
/// `degraded`, with the reason, while the disk of the state folder has less
/// than `worker.min_free_bytes` free or the job store is in its failed state
/// (an I/O error it has not recovered from yet); `ok` otherwise. `load`
/// counts the jobs running and queued per step, whoever submitted them.
pub async fn health(st: Data) -> HttpResponse {
    let paths = st.env.paths.clone();
    let free_bytes = web::block(move || paths.free_bytes()).await.ok().flatten();
    let min = st.env.settings.worker.min_free_bytes;
    let mut reasons = Vec::new();
    if let Some(free) = free_bytes.filter(|&f| f < min) {
        reasons.push(format!(
            "only {free} bytes free on the disk of the state folder (worker.min_free_bytes is {min}); free space there"
        ));
    }
    // Once space is back, heal the store here: the controller sends no job
    // to a degraded worker, so no other write would.
    let space_back = !matches!(free_bytes, Some(f) if f < min);
    if st.env.store.is_failed() && space_back {
        let store = st.env.store.clone();
        let _ = web::block(move || store.try_heal()).await;
    }
    if st.env.store.is_failed() {
        reasons.push("the job store failed with an I/O error and has not recovered yet".to_string());
    }
    let degraded_reason = (!reasons.is_empty()).then(|| reasons.join("; "));
    let mut load = std::collections::BTreeMap::new();
    for (step, addr) in &st.executors {
        // A restarting executor answers nothing; its step is left out
        // rather than reported idle.
        if let Ok((queued, running)) = addr.send(Load).await {
            let concurrency = st.env.settings.step(step.as_str()).concurrency.max(1) as u64;
            load.insert(step.as_str().to_string(), StepLoad { running: running as u64, queued: queued as u64, concurrency });
        }
    }
    HttpResponse::Ok().json(Health {
        status: if degraded_reason.is_some() { "degraded" } else { "ok" }.into(),
        worker_id: st.worker_id.clone(),
        contract: protocol::CONTRACT.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        degraded_reason,
        free_bytes,
        draining: st.drain.is_on(),
        load: Some(load),
    })
}

/// `GET /caps`: host capabilities, the steps this host can run, their
/// concurrency, and the contract. Waits (briefly) for the first probe.
pub async fn caps(st: Data) -> Result<HttpResponse, ApiError> {
    let mut rx = st.host_caps.subscribe();
    let probed = match tokio::time::timeout(Duration::from_secs(20), rx.wait_for(Option::is_some)).await {
        Ok(Ok(caps)) => caps.clone(),
        _ => None,
    };
    let (host, steps) = match probed {
        Some(c) => {
            let mut host = match serde_json::to_value(&c) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            };
            // `steps` is the top-level field below; never duplicate the key.
            host.remove("steps");
            (host, c.steps.iter().map(|s| s.as_str().to_string()).collect())
        }
        None => (crate::maintenance::pending_host_caps(), StepName::ALL.iter().map(|s| s.as_str().to_string()).collect()),
    };
    let settings = &st.env.settings;
    Ok(HttpResponse::Ok().json(Caps {
        host,
        worker_id: st.worker_id.clone(),
        steps,
        concurrency: StepName::ALL.iter().map(|s| (s.as_str().to_string(), settings.step(s.as_str()).concurrency)).collect(),
        contract: protocol::CONTRACT.into(),
        inline_blob_bytes: inline_blob_bytes(st.limits.max_body_bytes),
        submit_stream: true,
    }))
}

/// Loads a job by a path id, answering 404 for ids we could not have made.
pub async fn load_job(st: &AppState, id: &str) -> Result<JobRecord, ApiError> {
    let not_found = || ApiError::new(ApiCode::JobNotFound, format!("no job {id:?} on this worker (it may have been pruned)"));
    if !is_job_id(id) {
        return Err(not_found());
    }
    // One record read from redb takes microseconds: it runs inline rather
    // than on the blocking pool.
    st.env.store.get(id)?.ok_or_else(not_found)
}

/// Query of `GET /jobs`: the controller's run and job ids, whose label
/// ([`protocol::job_label`]) the jobs must carry exactly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindQuery {
    pub run_id: String,
    pub job_id: String,
    /// At most this many jobs (default 20, capped at 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `GET /jobs?run_id=R&job_id=J[&limit=N]`: the jobs labelled `R/J`, newest
/// first, so that a controller that lost its receipt can find the job it
/// submitted (and its artifacts) again.
pub async fn find_jobs(st: Data, q: web::Query<FindQuery>) -> Result<HttpResponse, ApiError> {
    let FindQuery { run_id, job_id, limit } = q.into_inner();
    if run_id.is_empty() || job_id.is_empty() {
        return Err(ApiError::bad_request("run_id and job_id must not be empty"));
    }
    let label = protocol::job_label(&run_id, &job_id);
    let limit = limit.unwrap_or(protocol::FIND_JOBS_DEFAULT_LIMIT).clamp(1, protocol::FIND_JOBS_MAX_LIMIT);
    let store = st.env.store.clone();
    let (records, truncated) = web::block(move || store.find_by_label(&label, limit)).await??;
    Ok(HttpResponse::Ok().json(FoundJobs { jobs: records.iter().map(JobRecord::view).collect(), truncated }))
}

/// Query of `GET /jobs/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// Long-poll: wait up to this many seconds for the job to finish.
    #[serde(default)]
    pub wait_s: Option<u64>,
    /// `peek=1`: read the job without renewing its lease (a controller
    /// that gave the job up, asking what became of it).
    #[serde(default)]
    pub peek: Option<u8>,
}

/// `GET /jobs/{id}[?wait_s=N]`: the job; with `wait_s` it answers as soon
/// as the job is finished, or after `wait_s` (capped by worker.max_wait_s).
pub async fn get_job(st: Data, id: web::Path<String>, q: web::Query<JobQuery>) -> Result<HttpResponse, ApiError> {
    let wait = Duration::from_secs(q.wait_s.unwrap_or(0).min(st.limits.max_wait_s));
    // A status call or long-poll renews the submitter's lease on the job,
    // when it arrives and never later: the controller counts its fence from
    // when it sent the request, so a renewal at the end of a long-poll
    // would outlive it.
    if q.peek != Some(1) {
        renew_lease(&st, &id).await;
    }
    let view = wait_for_job(&st, &id, wait).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Renews the lease on a job; a job parked after a restart (its controller
/// has now re-attached) is handed to its executor.
async fn renew_lease(st: &AppState, id: &str) {
    if st.env.leases.renew(id) != rayvault::lease::Renewal::Unparked {
        return;
    }
    match load_job(st, id).await {
        Ok(rec) if rec.state == protocol::JobState::Queued => {
            tracing::info!(job_id = %id, "a controller re-attached: the job may start");
            if let Some(addr) = StepName::parse(&rec.step_name).ok().and_then(|s| st.executors.get(&s)) {
                addr.do_send(Enqueue { job_id: rec.job_id });
            }
        }
        _ => {}
    }
}

/// Reads the job, and while it is not finished waits for state changes
/// until `wait` has passed.
pub async fn wait_for_job(st: &AppState, id: &str, wait: Duration) -> Result<JobView, ApiError> {
    if wait.is_zero() {
        return Ok(load_job(st, id).await?.view());
    }
    let notify = st.env.wait_on(id);
    wait_on_job(st, id, wait, &notify).await
}

async fn wait_on_job(st: &AppState, id: &str, wait: Duration, notify: &tokio::sync::Notify) -> Result<JobView, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    // Listen before reading, so a change between the read and the wait is
    // not missed: the job's own changes, and a shutdown's wake-up of all.
    let mut changes = st.env.changes.subscribe();
    loop {
        let job_changed = notify.notified();
        tokio::pin!(job_changed);
        job_changed.as_mut().enable();
        let rec = load_job(st, id).await?;
        if rec.state.is_terminal() || tokio::time::Instant::now() >= deadline {
            return Ok(rec.view());
        }
        let woken = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                _ = &mut job_changed => true,
                r = changes.changed() => r.is_ok(),
            }
        })
        .await;
        match woken {
            Ok(true) => {}
            // Deadline reached, or the notifier is gone (shutdown): answer
            // with what the store says now rather than spin.
            _ => return Ok(load_job(st, id).await?.view()),
        }
    }
}

/// `POST /jobs/{id}/cancel`: a queued job is cancelled at once; a running
/// one is told to stop and the answer waits briefly for it.
pub async fn cancel(st: Data, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let rec = load_job(&st, &id).await?;
    match st.env.store.cancel_async(&rec.job_id, now_ms()).await? {
        Cancellation::Cancelled(rec) => {
            keep_queued_log(&st, &rec.job_id).await;
            rayvault::metrics::worker().record_job(&rec);
            st.env.notify_job(&rec.job_id);
            Ok(HttpResponse::Ok().json(rec.view()))
        }
        Cancellation::Running(rec) => {
            if let Ok(step) = StepName::parse(&rec.step_name) {
                if let Some(addr) = st.executors.get(&step) {
                    addr.do_send(CancelRunning { job_id: rec.job_id.clone() });
                }
            }
            let view = wait_for_job(&st, &rec.job_id, Duration::from_secs(10)).await?;
            Ok(HttpResponse::Ok().json(view))
        }
        Cancellation::Finished(rec) => Err(ApiError::new(
            ApiCode::JobConflict,
            format!("job {} already finished ({:?}); nothing to cancel", rec.job_id, rec.state),
        )),
        Cancellation::NotFound => Err(ApiError::new(ApiCode::JobNotFound, format!("no job {:?} on this worker", id.as_str()))),
    }
}

/// A job that ended before it started (cancelled or abandoned while
/// queued): its log, still in memory, goes into its record.
pub async fn keep_queued_log(st: &AppState, job_id: &str) {
    let Some(log) = st.env.drop_log(job_id) else { return };
    if let Some(bytes) = log.in_memory() {
        if let Err(e) = st.env.store.keep_log_async(job_id, String::from_utf8_lossy(&bytes).into_owned()).await {
            tracing::warn!(%job_id, error = %e, "could not keep the log of a job that ended while queued");
        }
    }
}

/// `GET /jobs/{id}/artifacts`: the manifest (empty until the job succeeded).
pub async fn artifacts(st: Data, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let rec = load_job(&st, &id).await?;
    Ok(HttpResponse::Ok().json(ArtifactManifest { job_id: rec.job_id, state: rec.state, artifacts: rec.artifacts }))
}

/// Any other path.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ApiCode::NotFound, "no such endpoint; see docs/protocol.md"))
}

/// A known path with another method.
pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ApiCode::MethodNotAllowed, "method not allowed on this endpoint; see docs/protocol.md"))
}
