//! The handlers of the daemon's signed API (`health`, `submit`, `job`,
//! `cancel`, `status`), the signature checks they rely on ([`precheck`]
//! before the body is read, [`authorize`] over it), and the JSON error
//! answer they share.

use super::dispatch::{dispatch, dispatch_gated};
use super::{ApiState, Data, JobView, PROGRESS_LINGER, UNSIGNED_ROUTES};
use actix_web::{web, HttpRequest, HttpResponse};
use rayvault::actors::job_runner::CancelJob;
use rayvault::actors::node_probe::DescribeNodes;
use rayvault::auth::AuthError;
use rayvault::controller_store::{Phase, StoredJob};
use rayvault::protocol;
use rayvault::protocol::now_ms;
use rayvault::receipt::JobSpec;
use serde::Deserialize;
use std::time::{Duration, UNIX_EPOCH};

fn error(status: u16, code: &str, message: impl Into<String>, server_time: Option<u64>) -> HttpResponse {
    let body = protocol::ErrorBody { error: message.into(), code: code.into(), server_time };
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR)).json(body)
}

/// The body-free part of [`authorize`]: one Authorization header with a
/// known key id (see [`Verifier::precheck`](rayvault::auth::Verifier::precheck)).
pub(super) fn precheck(req: &actix_web::dev::ServiceRequest) -> Result<(), Box<HttpResponse>> {
    if UNSIGNED_ROUTES.iter().any(|(m, p)| req.method().as_str() == *m && req.path() == *p) {
        return Ok(());
    }
    // The dashboard's pages, data and files answer to a browser session.
    if crate::dashboard::is_session_path(req.path()) {
        return Ok(());
    }
    let Some(state) = req.app_data::<Data>() else {
        return Err(Box::new(error(500, "INTERNAL", "the API state is missing", None)));
    };
    let auth: Vec<&[u8]> = req.headers().get_all("authorization").map(|v| v.as_bytes()).collect();
    state.verifier.precheck(&auth).map_err(|e| {
        let why = match e {
            AuthError::Invalid(why) => why,
            AuthError::Skew { .. } => protocol::SKEW_MESSAGE,
        };
        tracing::warn!("refused an API request: {why}");
        rayvault::metrics::controller().auth_refusal(why);
        Box::new(error(401, "AUTH_INVALID", protocol::AUTH_INVALID_MESSAGE, None))
    })
}

/// Checks the request's signature over the raw body.
fn authorize(state: &ApiState, req: &HttpRequest, body: &[u8]) -> Result<(), Box<HttpResponse>> {
    let auth: Vec<&[u8]> = req.headers().get_all("authorization").map(|v| v.as_bytes()).collect();
    let sha = protocol::sha256_hex(body);
    let query = req.uri().query().unwrap_or("");
    match state.verifier.verify(&auth, req.method().as_str(), req.uri().path(), query, &sha, rayvault::auth::unix_now()) {
        Ok(_) => Ok(()),
        Err(AuthError::Skew { server_time }) => {
            rayvault::metrics::controller().auth_refusal(protocol::SKEW_MESSAGE);
            Err(Box::new(error(401, "AUTH_SKEW", protocol::SKEW_MESSAGE, Some(server_time))))
        }
        Err(AuthError::Invalid(why)) => {
            tracing::warn!("refused an API request: {why}");
            rayvault::metrics::controller().auth_refusal(why);
            Err(Box::new(error(401, "AUTH_INVALID", protocol::AUTH_INVALID_MESSAGE, None)))
        }
    }
}

pub(super) async fn health(state: Data, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if let Err(r) = authorize(&state, &req, &body) {
        return *r;
    }
    HttpResponse::Ok().json(serde_json::json!({"status": "ok", "pid": std::process::id()}))
}

/// Query of `POST /v1/jobs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubmitQuery {
    /// Hold the answer until the job ends or `wait_s` (at most 60) passes,
    /// so that a short job is submitted and answered in one request; the
    /// answer's `job` is then the job's view with its progress lines so far
    /// (unlike the long-poll, new progress does not end the wait). The
    /// job's key is the caller's own, so an answer lost with the connection
    /// loses nothing: a long-poll of that key, or the same submission
    /// again, picks the job up.
    #[serde(default)]
    wait_s: u64,
}

pub(super) async fn submit(state: Data, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if let Err(r) = authorize(&state, &req, &body) {
        return *r;
    }
    let q = match web::Query::<SubmitQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(e) => return error(400, "BAD_REQUEST", format!("bad query: {e}; the only parameter is wait_s (seconds, at most 60)"), None),
    };
    let spec: JobSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return error(400, "BAD_REQUEST", format!("not a job spec: {e}"), None),
    };
    if let Err(e) = spec.validate() {
        return error(400, "BAD_REQUEST", e, None);
    }
    // One instant, kept to the millisecond, for the store and the receipt:
    // a restart compares them to recognise a receipt of this submission.
    let submitted_ms = now_ms();
    let record = StoredJob { spec: spec.clone(), phase: Phase::Queued, submitted_at_ms: submitted_ms, remote: None, receipt: None };
    let key = spec.key();
    let submitted_at = UNIX_EPOCH + Duration::from_millis(submitted_ms);
    // One transaction decides whether this is new work or a job in flight;
    // the answer waits until the record is durable. While it commits, a
    // job whose key is not in flight here is handed to the JobRunner
    // behind a gate: it stages its inputs, and does nothing else until the
    // record is durable and new (a duplicate's gate closes instead).
    let committing = state.store.insert_unless_in_flight(record);
    let gate = (!state.live.waits.contains_key(&key)).then(|| dispatch_gated(state.clone(), spec.clone(), submitted_at));
    let already_running = match committing.await {
        Ok(true) => {
            match gate {
                Some(gate) => gate.admit(),
                None => dispatch(state.clone(), spec, None, false, submitted_at),
            }
            false
        }
        // The gate, dropped, closes.
        Ok(false) => true,
        Err(e) => return error(500, "INTERNAL", e.to_string(), None),
    };
    let job = if q.wait_s > 0 {
        match wait_view(&state, &key, q.wait_s, 0, false).await {
            Ok(view) => Some(view),
            Err(r) => return *r,
        }
    } else {
        None
    };
    HttpResponse::Accepted().json(Accepted { accepted: true, key, already_running, job })
}

/// The answer of `POST /v1/jobs`.
#[derive(serde::Serialize)]
struct Accepted {
    accepted: bool,
    key: String,
    /// The same job (`run_id`/`job_id`) was already in flight: this
    /// submission joined it rather than starting another.
    already_running: bool,
    /// With `wait_s`: the job's view when the answer was sent (its receipt
    /// once it has ended), as `GET /v1/jobs/{run_id}/{job_id}` gives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<JobView>,
}

#[derive(Deserialize)]
pub(super) struct WaitQuery {
    #[serde(default)]
    wait_s: u64,
    #[serde(default)]
    progress_from: usize,
}

/// How long a wait for a job that has no notify yet sleeps before it
/// reads the job again (it is also woken when any job starts).
const NOT_BEGUN_RECHECK: Duration = Duration::from_millis(250);

/// A job's view now, and whether it ended (its end recorded and its receipt
/// file written).
fn view(state: &ApiState, key: &str, from: usize) -> Result<(JobView, bool), Box<HttpResponse>> {
    // `recording` is read before the store. The store's writer thread
    // drops a job from `recording` right after the commit of its end, so
    // a job missing there was either never in it or is already finished
    // in any store read that begins afterwards. The other order lost that
    // window: a store read just before the commit and a `recording` read
    // just after it both missed the end, and a waiting caller slept until
    // its deadline (a held submission answered after 20 s for a job that
    // took 17 ms).
    let ending = state.live.recording.get(key);
    let mut job = match state.store.get(key) {
        Ok(Some(j)) => j,
        Ok(None) => return Err(Box::new(error(404, "JOB_NOT_FOUND", format!("no job {key} in this daemon"), None))),
        Err(e) => return Err(Box::new(error(500, "INTERNAL", e.to_string(), None))),
    };
    let lines: Vec<String> = state.live.progress.get(key).map(|l| l.iter().skip(from).cloned().collect()).unwrap_or_default();
    // A finished record counts once the job's notify is gone: the receipt
    // file is written between the two. A job whose end is still being
    // committed is answered from memory.
    super::Recording::apply(&mut job, ending);
    let finished = job.phase == Phase::Finished;
    let ended = finished && !state.live.waits.contains_key(key);
    let phase = if finished && !ended { Phase::Running } else { job.phase };
    let receipt = if ended { job.receipt } else { None };
    let view = JobView { key: key.to_string(), phase, remote: job.remote, receipt, progress_next: from + lines.len(), progress: lines };
    Ok((view, ended))
}

/// A job's view, answered at once or, with `wait_s`, the moment the job ends
/// (woken by the job's own notify, see [`Live`](super::live::Live)), or
/// [`PROGRESS_LINGER`] after new progress lines.
pub(super) async fn job(state: Data, req: HttpRequest, body: web::Bytes, path: web::Path<(String, String)>, q: web::Query<WaitQuery>) -> HttpResponse {
    if let Err(r) = authorize(&state, &req, &body) {
        return *r;
    }
    let key = format!("{}/{}", path.0, path.1);
    match wait_view(&state, &key, q.wait_s, q.progress_from, true).await {
        Ok(view) => HttpResponse::Ok().json(view),
        Err(r) => *r,
    }
}

/// The job's view at once or, with `wait_s` (at most 60), the moment it
/// ends, or (`on_progress`, a long-poll) [`PROGRESS_LINGER`] after new
/// progress lines.
async fn wait_view(state: &ApiState, key: &str, wait_s: u64, progress_from: usize, on_progress: bool) -> Result<JobView, Box<HttpResponse>> {
    let mut answer_by = tokio::time::Instant::now() + Duration::from_secs(wait_s.min(60));
    let mut lingering = false;
    loop {
        // Register interest before reading, so a change in between is not
        // missed. A job without a notify of its own is about to start (or
        // is not in flight in this daemon): the next start wakes the poll.
        let own = state.live.waits.get(key).map(|n| n.value().clone());
        let begun = state.live.begun.notified();
        let own_notified = own.as_ref().map(|n| n.notified());
        let (now, ended) = view(state, key, progress_from)?;
        let at = tokio::time::Instant::now();
        if on_progress && !now.progress.is_empty() && !lingering {
            lingering = true;
            answer_by = answer_by.min(at + PROGRESS_LINGER);
        }
        if ended || at >= answer_by {
            return Ok(now);
        }
        // Woken or not, the next turn reads the job again. A job with no
        // notify has not begun yet (or has just ended): besides the next
        // start, a short timer makes it read again, so that no missed
        // moment can hold the answer until its deadline.
        let _ = match own_notified {
            Some(n) => tokio::time::timeout_at(answer_by, n).await,
            None => tokio::time::timeout_at(answer_by.min(at + NOT_BEGUN_RECHECK), begun).await,
        };
    }
}

pub(super) async fn cancel(state: Data, req: HttpRequest, body: web::Bytes, path: web::Path<(String, String)>) -> HttpResponse {
    if let Err(r) = authorize(&state, &req, &body) {
        return *r;
    }
    let key = format!("{}/{}", path.0, path.1);
    match state.controller.runner.send(CancelJob { key: key.clone() }).await {
        Ok(true) => HttpResponse::Ok().json(serde_json::json!({"key": key, "cancelling": true})),
        Ok(false) => error(409, "JOB_CONFLICT", format!("{key} is not running in this daemon"), None),
        Err(e) => error(500, "INTERNAL", e.to_string(), None),
    }
}

pub(super) async fn status(state: Data, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if let Err(r) = authorize(&state, &req, &body) {
        return *r;
    }
    let (store, ending) = (state.store.clone(), state.live.recording.snapshot());
    let mut jobs = match web::block(move || store.all()).await {
        Ok(Ok(j)) => j,
        Ok(Err(e)) => return error(500, "INTERNAL", e.to_string(), None),
        Err(e) => return error(500, "INTERNAL", e.to_string(), None),
    };
    let mut nodes = match state.controller.probe.send(DescribeNodes).await {
        Ok(n) => n,
        Err(e) => return error(500, "INTERNAL", e.to_string(), None),
    };
    super::Recording::apply_all(&mut jobs, ending);
    let jobs: Vec<_> = jobs.iter().map(crate::commands::job_line).collect();
    crate::nodes_cmd::settle_drains(&mut nodes, &jobs);
    HttpResponse::Ok().json(serde_json::json!({
        "daemon": {"pid": std::process::id()},
        "jobs": jobs,
        "nodes": nodes,
    }))
}
