//! `daemon`: the long-running controller. It serves an authenticated API on
//! loopback through which `submit`, `status`, `cancel` and pipelines hand it
//! jobs, keeps every job in its redb store (so a restart, even after
//! `kill -9`, re-attaches to the jobs in flight), and shuts down gracefully
//! on Ctrl-C or SIGTERM.
//!
//! API (every route authenticated with the workers' HMAC scheme, target id
//! `controller`; loopback callers get no exemption), except the routes in
//! [`UNSIGNED_ROUTES`]:
//! - `GET /v1/health`
//! - `POST /v1/jobs` (a job spec) -> accepted
//! - `GET /v1/jobs/{run_id}/{job_id}?wait_s=N&progress_from=K` -> [`JobView`]:
//!   at once, or (with `wait_s`) the moment the job ends, with its receipt
//!   file written, or [`PROGRESS_LINGER`] after its first new progress line,
//!   or after N seconds (at most 60)
//! - `POST /v1/jobs/{run_id}/{job_id}/cancel`
//! - `GET /v1/status`
//! - `GET /metrics` (unsigned; Prometheus text, see `daemon_metrics`)
//!
//! Plus the web dashboard (`dashboard`): `POST /v1/dashboard/login` is
//! signed like the rest; its pages, data and files answer to a browser
//! session instead.

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::{bail, Context as _};
use dashmap::DashMap;
use rayvault::actors::job_runner::{CancelJob, SubmitJob};
use rayvault::actors::messages::JobProgress;
use rayvault::actors::node_probe::DescribeNodes;
use rayvault::actors::supervisor::{Controller, ControllerOptions, ControllerSupervisor, Shutdown};
use rayvault::auth::{AuthError, Keyring, Verifier};
use rayvault::config::Settings;
use rayvault::controller_store::{ControllerStore, Phase, RemoteRef, StoredJob};
use rayvault::protocol;
use rayvault::receipt::{JobSpec, Receipt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// The target id requests to the daemon are signed for.
pub const DAEMON_ID: &str = "controller";

/// The routes served without a signature, as (method, path). The API
/// listens on loopback only (`run` refuses any other `api_host`), so anyone
/// logged in on this machine can read them: they must hold nothing secret.
/// Every other route refuses a request without a valid signature.
const UNSIGNED_ROUTES: [(&str, &str); 1] = [("GET", "/metrics")];

/// A job as `GET /v1/jobs/{run_id}/{job_id}` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobView {
    pub key: String,
    pub phase: Phase,
    pub remote: Option<RemoteRef>,
    /// Present once the job has ended.
    pub receipt: Option<Receipt>,
    /// Progress lines from `progress_from` on.
    pub progress: Vec<String>,
    pub progress_next: usize,
}

struct ApiState {
    settings: Arc<Settings>,
    verifier: Verifier,
    store: Arc<ControllerStore>,
    controller: Controller,
    live: Arc<Live>,
}

type Data = web::Data<ApiState>;

/// How long the progress lines of an ended job are kept, for a client
/// mid-poll.
const KEEP_PROGRESS: Duration = Duration::from_secs(60);

/// The most ended jobs whose progress lines are kept (the oldest go first).
const KEEP_PROGRESS_JOBS: usize = 256;

/// What the daemon keeps in memory about jobs, beside its store.
#[derive(Default)]
struct Live {
    /// Progress lines by job key (shared with the dashboard).
    progress: Arc<DashMap<String, Vec<String>>>,
    /// One notify per job in flight, woken when the job reports progress
    /// and when it ends (after its end is recorded and its receipt file
    /// written), for long-polls.
    waits: DashMap<String, Arc<Notify>>,
    /// Woken whenever a job starts, for a long-poll that came before its
    /// job's notify existed.
    begun: Notify,
    /// The ended jobs whose progress lines are still kept, oldest first:
    /// at most [`KEEP_PROGRESS_JOBS`], none older than [`KEEP_PROGRESS`].
    ended: std::sync::Mutex<std::collections::VecDeque<(Instant, String, Arc<Notify>)>>,
    /// Receipts of jobs that ended on a worker whose end is still being
    /// committed (see `dispatch`): the API answers from here meanwhile.
    recording: DashMap<String, Receipt>,
}

impl Live {
    /// A job starts (or starts again): its notify, replacing any earlier one.
    fn begin(&self, key: &str) -> Arc<Notify> {
        self.progress.remove(key);
        let notify = Arc::new(Notify::new());
        self.waits.insert(key.to_string(), notify.clone());
        self.begun.notify_waiters();
        notify
    }

    /// The job that `notify` belongs to ended: wakes its long-polls, and
    /// frees what is kept of jobs that ended long enough ago.
    fn end(&self, key: &str, notify: &Arc<Notify>) {
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
struct ProgressSink {
    live: Arc<Live>,
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

use rayvault::protocol::now_ms;

/// Runs the daemon until Ctrl-C/SIGTERM.
pub fn run(settings: Arc<Settings>) -> anyhow::Result<u8> {
    let host: std::net::IpAddr = settings
        .controller
        .api_host
        .parse()
        .with_context(|| format!("controller.api_host {:?} is not an IP address", settings.controller.api_host))?;
    if !host.is_loopback() {
        bail!("controller.api_host {host} is not a loopback address; the daemon API only listens on loopback (127.0.0.1)");
    }
    let verifier_keys = Keyring::from_env().context("the daemon authenticates its API with the cluster secret")?;
    let keyring = Arc::new(Keyring::from_env()?);
    let store_path = ControllerStore::default_path(&settings.cluster_dir());
    let store = Arc::new(ControllerStore::open(&store_path)?.keeping_receipts());
    // Before any local step starts: kill what the local steps of a dead
    // daemon left running.
    match store.reap_children() {
        Ok(killed) if killed.is_empty() => {}
        Ok(killed) => tracing::warn!(groups = ?killed, "killed child process groups left running by the previous daemon"),
        Err(e) => tracing::warn!(error = %e, "could not check for child processes left by the previous daemon"),
    }
    let port = settings.controller.api_port;
    let (http_workers, max_blocking) = (settings.controller.http_workers.max(1), settings.controller.max_blocking_threads.max(1));
    runtime(max_blocking).block_on(async move {
        let live = Arc::new(Live::default());
        let sink = ProgressSink { live: live.clone() }.start();
        let controller = ControllerSupervisor::start(ControllerOptions {
            settings: settings.clone(),
            keyring: Some(keyring.clone()),
            store: Some(store.clone()),
            progress: Some(sink.recipient()),
        });
        let scrape = web::Data::new(crate::daemon_metrics::Scrape { settings: settings.clone(), keyring: Some(keyring), probe: controller.probe.clone(), store: store.clone() });
        let state = web::Data::new(ApiState {
            settings: settings.clone(),
            verifier: Verifier::new(verifier_keys, DAEMON_ID.into(), settings.worker.skew_s, false),
            store: store.clone(),
            controller: controller.clone(),
            live,
        });
        resume_unfinished(&state).await?;
        let dashboard = web::Data::new(crate::dashboard::Dashboard::new(settings.clone(), store.clone(), controller.clone(), state.live.progress.clone())?);
        let st = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(st.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                // Refuse a request without a usable credential before its
                // body is read, so that nobody without the secret can make
                // the daemon wait for or buffer a body.
                .wrap_fn(|req, srv| {
                    use actix_web::dev::Service as _;
                    use futures_util::future::{ready, Either};
                    match precheck(&req) {
                        Ok(()) => Either::Left(srv.call(req)),
                        Err(refusal) => Either::Right(ready(Ok(req.into_response(*refusal)))),
                    }
                })
                .route("/v1/health", web::get().to(health))
                .route("/v1/jobs", web::post().to(submit))
                .route("/v1/jobs/{run_id}/{job_id}", web::get().to(job))
                .route("/v1/jobs/{run_id}/{job_id}/cancel", web::post().to(cancel))
                .route("/v1/status", web::get().to(status))
                .configure(|cfg| crate::dashboard::routes(cfg, dashboard.clone()))
                .configure(|cfg| crate::daemon_metrics::routes(cfg, scrape.clone()))
        })
        .workers(http_workers)
        .worker_max_blocking_threads(max_blocking)
        .shutdown_timeout(5)
        .bind((host, port))
        .with_context(|| format!("cannot listen on {host}:{port}; is another daemon running? (controller.api_port)"))?;
        tracing::info!("controller daemon listening on {host}:{port}, store {}", store.path().display());
        server.run().await.context("API server failed")?;
        tracing::info!("API stopped; jobs in flight stay recorded and resume at the next start");
        let _ = controller.supervisor.send(Shutdown).await;
        Ok(0)
    })
}

/// The daemon's actix System: the runtime actix would build (one thread for
/// the actors), except for the blocking pool, capped at `max_blocking`
/// threads (`[controller] max_blocking_threads`).
fn runtime(max_blocking: usize) -> actix_rt::SystemRunner {
    System::with_tokio_rt(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(max_blocking)
            .build()
            .unwrap_or_else(|e| panic!("cannot start the async runtime: {e}"))
    })
}

/// The receipt of this submission of `job` if one was written already (its
/// run ended, but the end was not recorded in the store). Reads a file.
fn ended_before(cluster_dir: &std::path::Path, job: &StoredJob) -> Option<Receipt> {
    let at = UNIX_EPOCH + Duration::from_millis(job.submitted_at_ms);
    let dir = rayvault::receipt::receipt_dir(cluster_dir, &job.spec.run_id, &job.spec.job_id);
    Receipt::read(&dir).ok().filter(|r| r.timings.submitted_at == rayvault::joblog::format_utc(at))
}

/// Writes the receipt file of an ended job, without a sync to disk: the
/// store holds the durable copy, and [`rewrite_receipts`] restores a file
/// lost with the daemon. A receipt that finds the disk full is kept in
/// memory and written once space returns.
fn write_receipt_file(cluster_dir: &std::path::Path, receipt: &Receipt) {
    let dir = rayvault::receipt::receipt_dir(cluster_dir, &receipt.run_id, &receipt.job_id);
    match receipt.write_unsynced_or_keep(&dir) {
        Ok(_) => {}
        Err(e) if rayvault::error::is_disk_full(&e) => tracing::error!(
            job = %format!("{}/{}", receipt.run_id, receipt.job_id),
            "DISK_FULL: the receipt could not be written into {} ({e}); it is kept in memory and written as soon as space is freed there",
            dir.display()
        ),
        Err(e) => tracing::error!(job = %format!("{}/{}", receipt.run_id, receipt.job_id), "could not write the receipt into {}: {e}", dir.display()),
    }
}

/// Start-up: writes again the receipt file of every ended job whose file is
/// missing or differs from the receipt in the store (a daemon killed between
/// recording a job's end and writing its file, or a machine that lost the
/// file's unsynced data). Answers how many it wrote.
fn rewrite_receipts(cluster_dir: &std::path::Path, store: &ControllerStore) -> anyhow::Result<usize> {
    let mut written = 0;
    for job in store.all()? {
        let Some(receipt) = job.receipt.as_ref().filter(|_| job.phase == Phase::Finished) else { continue };
        let dir = rayvault::receipt::receipt_dir(cluster_dir, &receipt.run_id, &receipt.job_id);
        let current = std::fs::read(dir.join(rayvault::receipt::RECEIPT_FILE)).ok();
        if current.is_some_and(|bytes| receipt.file_bytes().is_ok_and(|b| b == bytes)) {
            continue;
        }
        write_receipt_file(cluster_dir, receipt);
        written += 1;
    }
    Ok(written)
}

/// Picks up the jobs a previous daemon left unfinished: re-attaching to
/// remote ones, running local ones again (they never completed). Before
/// that, restores the receipt files of the jobs that ended.
async fn resume_unfinished(state: &Data) -> anyhow::Result<()> {
    let cluster = state.settings.cluster_dir();
    let rewritten = rewrite_receipts(&cluster, &state.store)?;
    if rewritten > 0 {
        tracing::info!("wrote {rewritten} receipt file(s) again from the store (missing or not up to date after the previous run)");
    }
    for job in state.store.unfinished()? {
        let at = UNIX_EPOCH + Duration::from_millis(job.submitted_at_ms);
        // A job whose receipt file of this submission exists ended, and
        // must not run again: earlier versions wrote the receipt before
        // recording the end, and a failed store write leaves the file as
        // the only record.
        if let Some(receipt) = ended_before(&cluster, &job) {
            tracing::info!(job = %job.spec.key(), "the job had ended before the restart; recording its receipt");
            state
                .store
                .update_async(&job.spec.key(), |j| {
                    j.phase = Phase::Finished;
                    j.receipt = Some(receipt);
                })
                .await?;
            continue;
        }
        match &job.remote {
            Some(r) => tracing::info!(job = %job.spec.key(), "resuming a job from the previous run: re-attaching to {} on {}", r.remote_job_id, r.node_id),
            None => tracing::info!(job = %job.spec.key(), "resuming a job from the previous run: it had not reached a worker, so it runs again"),
        }
        dispatch(state.clone(), job.spec, job.remote, true, at);
    }
    Ok(())
}

/// How many times one job is picked up again after the JobRunner restarted
/// under it, before it is left for the next daemon start.
const MAX_RUNNER_RESTARTS: u32 = 3;

/// Hands a job to the JobRunner and records its end: the store's record
/// (durable) and the receipt file at once, then the job's long-polls are
/// woken, so that an answer saying the job ended always finds its receipt
/// file. When the JobRunner is restarted mid-job (which drops the job's
/// run), the job is picked up again at once, the way a daemon restart
/// would: re-attached to its remote job if it had one, run again otherwise.
/// `recovered`: the job is picked up after a restart (see
/// `SubmitJob::recovered`).
fn dispatch(state: Data, spec: JobSpec, resume: Option<RemoteRef>, recovered: bool, submitted_at: SystemTime) {
    let key = spec.key();
    let notify = state.live.begin(&key);
    actix::spawn(async move {
        let (mut resume, mut recovered) = (resume, recovered);
        let mut restarts = 0;
        let receipt = loop {
            let sent = state.controller.runner.send(SubmitJob { spec: spec.clone(), resume: resume.take(), recovered, submitted_at, probed_at: None }).await;
            match sent {
                Ok(receipt) => break receipt,
                // Restarted in place, the JobRunner keeps its address; a
                // closed one means the daemon is shutting down.
                Err(_) if restarts < MAX_RUNNER_RESTARTS && state.controller.runner.connected() => {
                    restarts += 1;
                    let stored = match state.store.get(&key) {
                        Ok(Some(j)) => j,
                        other => {
                            let why = match other {
                                Err(e) => e.to_string(),
                                Ok(_) => "it is no longer in the store".to_string(),
                            };
                            tracing::error!(job = %key, "the job runner restarted mid-job and the job cannot be read back ({why}); it resumes at the next start");
                            return;
                        }
                    };
                    tracing::warn!(job = %key, "the job runner restarted mid-job; picking the job up again ({restarts}/{MAX_RUNNER_RESTARTS})");
                    resume = stored.remote;
                    recovered = true;
                }
                Err(_) => {
                    tracing::error!(job = %key, "the job runner stopped before the job ended; it resumes at the next start");
                    return;
                }
            }
        };
        // The end's record and the receipt file are written at once (the
        // commit's sync and the file's creation overlap), and the job's
        // long-polls are woken once both are done. A crash between the two
        // leaves either the record without the file (written again at
        // start-up, `rewrite_receipts`) or the file without the record
        // (the restart recognises the job as ended from it, `ended_before`).
        //
        // A job that ran on a worker is answered once its receipt file is
        // written, while its end commits: the worker holds the job's
        // outcome durably, so a daemon that dies before the commit finds
        // the job ended from the file (`ended_before`), or, when a power
        // cut lost the unsynced file too, re-attaches to the finished job
        // on its worker (by its recorded remote id, or by its label,
        // `remote::find_submitted`); it never runs again. A job that ran
        // here (or nowhere) is answered only once its end is durable too.
        fn report(key: &str, saved: Result<Option<StoredJob>, rayvault::controller_store::StoreError>) {
            if !matches!(saved, Ok(Some(_))) {
                let why = match saved {
                    Err(e) => e.to_string(),
                    Ok(_) => "it is no longer in the store".to_string(),
                };
                // The receipt file is then the only record of the end.
                tracing::error!(job = %key, "could not record the end of the job: {why}");
            }
        }
        let on_worker = receipt.executed_on.as_deref().is_some_and(|on| on != rayvault::receipt::LOCAL);
        let recorded = receipt.clone();
        let cluster = state.settings.cluster_dir();
        if on_worker {
            // Queued now, before the answer: a later submission of the same
            // key is written after it, so it finds this job finished.
            state.live.recording.insert(key.clone(), receipt.clone());
            let (live, k, kept) = (state.live.clone(), key.clone(), receipt.clone());
            state.store.update_then(
                &key,
                |j| {
                    j.phase = Phase::Finished;
                    j.receipt = Some(recorded);
                },
                move |saved| {
                    report(&k, saved);
                    live.recording.remove_if(&k, |_, r| r == &kept);
                },
            );
            // One small unsynced file: written here, in less time than a
            // trip to a blocking thread and back takes.
            write_receipt_file(&cluster, &receipt);
        } else {
            let saved = state.store.update_async(&key, |j| {
                j.phase = Phase::Finished;
                j.receipt = Some(recorded);
            });
            let file = web::block(move || write_receipt_file(&cluster, &receipt));
            let (saved, _) = futures_util::future::join(saved, file).await;
            report(&key, saved);
        }
        state.live.end(&key, &notify);
    });
}

fn error(status: u16, code: &str, message: impl Into<String>, server_time: Option<u64>) -> HttpResponse {
    let body = protocol::ErrorBody { error: message.into(), code: code.into(), server_time };
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR)).json(body)
}

/// Checks the request's signature over the raw body.
/// The body-free part of [`authorize`]: one Authorization header with a
/// known key id (see [`Verifier::precheck`]).
fn precheck(req: &actix_web::dev::ServiceRequest) -> Result<(), Box<HttpResponse>> {
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

async fn health(state: Data, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if let Err(r) = authorize(&state, &req, &body) {
        return *r;
    }
    HttpResponse::Ok().json(serde_json::json!({"status": "ok", "pid": std::process::id()}))
}

async fn submit(state: Data, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if let Err(r) = authorize(&state, &req, &body) {
        return *r;
    }
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
    // One transaction decides whether this is new work or a job in flight;
    // the answer waits until the record is durable.
    match state.store.insert_unless_in_flight(record).await {
        Ok(true) => {
            let key = spec.key();
            dispatch(state.clone(), spec, None, false, UNIX_EPOCH + Duration::from_millis(submitted_ms));
            HttpResponse::Accepted().json(serde_json::json!({"accepted": true, "key": key, "already_running": false}))
        }
        Ok(false) => HttpResponse::Accepted().json(serde_json::json!({"accepted": true, "key": spec.key(), "already_running": true})),
        Err(e) => error(500, "INTERNAL", e.to_string(), None),
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait_s: u64,
    #[serde(default)]
    progress_from: usize,
}

/// A job's view now, and whether it ended (its end recorded and its receipt
/// file written).
fn view(state: &ApiState, key: &str, from: usize) -> Result<(JobView, bool), Box<HttpResponse>> {
    let job = match state.store.get(key) {
        Ok(Some(j)) => j,
        Ok(None) => return Err(Box::new(error(404, "JOB_NOT_FOUND", format!("no job {key} in this daemon"), None))),
        Err(e) => return Err(Box::new(error(500, "INTERNAL", e.to_string(), None))),
    };
    let lines: Vec<String> = state.live.progress.get(key).map(|l| l.iter().skip(from).cloned().collect()).unwrap_or_default();
    // A finished record counts once the job's notify is gone: the receipt
    // file is written between the two. A job whose end is still being
    // committed is answered from memory.
    let recording = state.live.recording.get(key).map(|r| r.value().clone());
    let finished = job.phase == Phase::Finished || recording.is_some();
    let ended = finished && !state.live.waits.contains_key(key);
    let phase = if finished && !ended { Phase::Running } else if finished { Phase::Finished } else { job.phase };
    let receipt = if ended { recording.or(job.receipt) } else { None };
    let view = JobView { key: key.to_string(), phase, remote: job.remote, receipt, progress_next: from + lines.len(), progress: lines };
    Ok((view, ended))
}

/// How long a long-poll that has new progress lines waits for more (or for
/// the end) before it answers with them: a short job's lines then come with
/// its end in one answer instead of one round trip each.
const PROGRESS_LINGER: Duration = Duration::from_millis(100);

/// A job's view, answered at once or, with `wait_s`, the moment the job ends
/// (woken by the job's own notify, see [`Live`]), or [`PROGRESS_LINGER`]
/// after new progress lines.
async fn job(state: Data, req: HttpRequest, body: web::Bytes, path: web::Path<(String, String)>, q: web::Query<WaitQuery>) -> HttpResponse {
    if let Err(r) = authorize(&state, &req, &body) {
        return *r;
    }
    let key = format!("{}/{}", path.0, path.1);
    let mut answer_by = tokio::time::Instant::now() + Duration::from_secs(q.wait_s.min(60));
    let mut lingering = false;
    loop {
        // Register interest before reading, so a change in between is not
        // missed. A job without a notify of its own is about to start (or
        // is not in flight in this daemon): the next start wakes the poll.
        let own = state.live.waits.get(&key).map(|n| n.value().clone());
        let begun = state.live.begun.notified();
        let own_notified = own.as_ref().map(|n| n.notified());
        let (now, ended) = match view(&state, &key, q.progress_from) {
            Ok(v) => v,
            Err(r) => return *r,
        };
        let at = tokio::time::Instant::now();
        if !now.progress.is_empty() && !lingering {
            lingering = true;
            answer_by = answer_by.min(at + PROGRESS_LINGER);
        }
        if ended || at >= answer_by {
            return HttpResponse::Ok().json(now);
        }
        // Woken or not, the next turn reads the job again.
        let _ = match own_notified {
            Some(n) => tokio::time::timeout_at(answer_by, n).await,
            None => tokio::time::timeout_at(answer_by, begun).await,
        };
    }
}

async fn cancel(state: Data, req: HttpRequest, body: web::Bytes, path: web::Path<(String, String)>) -> HttpResponse {
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

async fn status(state: Data, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if let Err(r) = authorize(&state, &req, &body) {
        return *r;
    }
    let store = state.store.clone();
    let jobs = match web::block(move || store.all()).await {
        Ok(Ok(j)) => j,
        Ok(Err(e)) => return error(500, "INTERNAL", e.to_string(), None),
        Err(e) => return error(500, "INTERNAL", e.to_string(), None),
    };
    let mut nodes = match state.controller.probe.send(DescribeNodes).await {
        Ok(n) => n,
        Err(e) => return error(500, "INTERNAL", e.to_string(), None),
    };
    let jobs: Vec<_> = jobs.iter().map(crate::commands::job_line).collect();
    crate::nodes_cmd::settle_drains(&mut nodes, &jobs);
    HttpResponse::Ok().json(serde_json::json!({
        "daemon": {"pid": std::process::id()},
        "jobs": jobs,
        "nodes": nodes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayvault::actors::messages::Stop;
    use rayvault::receipt::JobStatus;

    /// Waits (without blocking the arbiter) until `cond` holds, or panics.
    async fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn a_job_dropped_by_a_job_runner_restart_is_picked_up_again() {
        let dir = tempfile::tempdir().unwrap();
        // A speech engine that hangs on its first run (until it is killed)
        // and renders a short tone on the next.
        let engine = dir.path().join("engine.py");
        let marker = dir.path().join("first-run");
        std::fs::write(
            &engine,
            format!(
                "import math, os, sys, time, wave\n\
                 if not os.path.exists({marker:?}):\n    open({marker:?}, 'w').close()\n    time.sleep(60)\n\
                 w = wave.open(sys.argv[2], 'wb'); w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050)\n\
                 w.writeframes(b''.join(int(8000 * math.sin(i * 0.125)).to_bytes(2, 'little', signed=True) for i in range(11025)))\n\
                 w.close()\n",
                marker = marker.to_str().unwrap()
            ),
        )
        .unwrap();
        let env: Vec<(String, String)> = [
            ("RAYVAULT_STATE_DIR", dir.path().join("state").to_str().unwrap().to_string()),
            ("RAYVAULT_TTS__ENGINE", "command".to_string()),
            ("RAYVAULT_TTS__COMMAND_TEMPLATE", format!("python3 {} {{text_file}} {{out_wav}}", engine.display())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let settings = Arc::new(Settings::load_from(None, &env).unwrap());
        std::fs::create_dir_all(settings.cluster_dir()).unwrap();
        let store = Arc::new(ControllerStore::open(&ControllerStore::default_path(&settings.cluster_dir())).unwrap().keeping_receipts());
        let keyring = Keyring::from_secrets("daemon-test-secret-0123456789abcdef", None).unwrap();
        actix::System::new().block_on(async move {
            let controller = ControllerSupervisor::start(ControllerOptions { settings: settings.clone(), keyring: None, store: Some(store.clone()), progress: None });
            let state = web::Data::new(ApiState {
                settings: settings.clone(),
                verifier: Verifier::new(keyring, DAEMON_ID.into(), 300, false),
                store: store.clone(),
                controller: controller.clone(),
                live: Arc::new(Live::default()),
            });
            let spec = JobSpec {
                run_id: "r".into(),
                job_id: "tts".into(),
                step_name: "TTS_RENDER_CHUNKS".into(),
                payload: serde_json::json!({"text": "Hello there."}),
                requirements: Default::default(),
                no_fallback: false,
                fallback: None,
                timeout_s: None,
            };
            let submitted_ms = now_ms();
            store.put(&StoredJob { spec: spec.clone(), phase: Phase::Queued, submitted_at_ms: submitted_ms, remote: None, receipt: None }).unwrap();
            dispatch(state.clone(), spec, None, false, UNIX_EPOCH + Duration::from_millis(submitted_ms));
            wait_for("the first run to start", 20, || marker.exists()).await;
            controller.runner.send(Stop).await.unwrap();
            let finished = || store.get("r/tts").unwrap().is_some_and(|j| j.phase == Phase::Finished);
            wait_for("the job to end after the restart", 30, finished).await;
            let job = store.get("r/tts").unwrap().unwrap();
            let receipt = job.receipt.unwrap();
            assert_eq!(receipt.status, JobStatus::Succeeded, "{:?}", receipt.error);
            assert_eq!(receipt.executed_on.as_deref(), Some("local"));
        });
    }
}
