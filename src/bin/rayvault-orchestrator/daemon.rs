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
//! - `POST /v1/jobs?wait_s=N` (a job spec) -> accepted, as soon as the job's
//!   record is durable; with `wait_s`, also the job's [`JobView`] when it
//!   ends (as the long-poll below gives it), so that a short job needs one
//!   request
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

mod api;
mod dispatch;
mod live;
#[cfg(test)]
mod tests;

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use anyhow::{bail, Context as _};
use api::{cancel, health, job, precheck, status, submit};
use dispatch::resume_unfinished;
pub use live::Recording;
use live::{Live, ProgressSink};
use rayvault::actors::supervisor::{Controller, ControllerOptions, ControllerSupervisor, Shutdown};
use rayvault::auth::{Keyring, Verifier};
use rayvault::config::Settings;
use rayvault::controller_store::{ControllerStore, Phase, RemoteRef};
use rayvault::receipt::Receipt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The target id requests to the daemon are signed for.
pub const DAEMON_ID: &str = "controller";

/// The routes served without a signature, as (method, path). The API
/// listens on loopback only (`run` refuses any other `api_host`), so anyone
/// logged in on this machine can read them: they must hold nothing secret.
/// Every other route refuses a request without a valid signature.
const UNSIGNED_ROUTES: [(&str, &str); 1] = [("GET", "/metrics")];

/// How long a long-poll that has new progress lines waits for more (or for
/// the end) before it answers with them: a short job's lines then come with
/// its end in one answer instead of one round trip each.
const PROGRESS_LINGER: Duration = Duration::from_millis(100);

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
        let scrape = web::Data::new(crate::daemon_metrics::Scrape { settings: settings.clone(), keyring: Some(keyring), probe: controller.probe.clone(), store: store.clone(), recording: live.recording.clone() });
        let state = web::Data::new(ApiState {
            settings: settings.clone(),
            verifier: Verifier::new(verifier_keys, DAEMON_ID.into(), settings.worker.skew_s, false),
            store: store.clone(),
            controller: controller.clone(),
            live,
        });
        resume_unfinished(&state).await?;
        let dashboard = web::Data::new(crate::dashboard::Dashboard::new(settings.clone(), store.clone(), controller.clone(), state.live.progress.clone(), state.live.recording.clone())?);
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
