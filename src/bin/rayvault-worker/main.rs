//! `rayvault-worker`: the authenticated, idempotent, durable worker daemon.
//!
//! `main` parses flags, loads the layered settings, reads the keyring from
//! the environment, applies the bind policy, recovers the job store, then
//! serves until Ctrl-C/SIGTERM. Every refusal to start exits with code 2
//! and a message saying what to change.
//!
//! Modules: `guard` (limits + authentication middleware), `handlers` (JSON
//! endpoints), `files` (log, artifact download, blob upload), `bind` (bind
//! policy), `maintenance` (pruning, capability refresh), `metrics`
//! (`GET /metrics`), `shutdown` (graceful stop), `drain`, `service`
//! (`service install|uninstall|status|print`, `--env-file`, the Windows
//! service entry point), `state`, `apierror`.

mod apierror;
mod bind;
#[cfg(target_os = "linux")]
mod direct;
mod drain;
mod files;
mod guard;
mod handlers;
mod leases;
mod maintenance;
mod metrics;
mod service;
mod shutdown;
mod spares;
mod state;

use actix_web::{middleware::from_fn, web, App, HttpServer};
use anyhow::{bail, Context};
use clap::Parser;
use rayvault::actors::executor::{self, Enqueue, ExecutorEnv};
use rayvault::auth::{Keyring, Verifier};
use rayvault::config::{OnInterrupted, Settings};
use rayvault::steps::StepName;
use rayvault::store::{InterruptedPolicy, Recovery, Store, WorkerPaths};
use state::{AppState, Limits};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Command-line flags; they override the configuration file and the
/// environment. Secrets are never accepted as flags.
#[derive(Debug, Parser)]
#[command(name = "rayvault-worker", version, about = "RayVault worker daemon (HMAC-authenticated job API)")]
struct Args {
    /// Address to bind: loopback or this host's Tailscale IP (held by the Tailscale interface).
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on.
    #[arg(long)]
    port: Option<u16>,
    /// A local configuration file layered over config/default.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Allow binding outside loopback and the Tailscale interface (dangerous).
    #[arg(long)]
    allow_any_bind: bool,
    /// Accept the bare secret as `Authorization: Bearer` (compatibility only).
    #[arg(long)]
    allow_plain_token: bool,
    /// Also log to this file, rotated at 10 MiB with 5 files kept; stderr
    /// then gets the log only when it is a terminal.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Read RAYVAULT_* variables (the secret) from this file, which must be
    /// readable by its owner only (or DPAPI-protected on Windows).
    #[arg(long)]
    env_file: Option<PathBuf>,
    /// Set by `service install --headless`: run under the Windows service
    /// control manager.
    #[arg(long, hide = true)]
    windows_service: bool,
    /// Set by `service install` on Windows: close the console window that
    /// Task Scheduler opens for the worker (logs go to --log-file).
    #[arg(long, hide = true)]
    detach_console: bool,
    #[command(subcommand)]
    command: Option<WorkerCommand>,
}

/// Commands other than serving (no subcommand: serve).
#[derive(Debug, clap::Subcommand)]
enum WorkerCommand {
    /// Drain this machine's worker (no new jobs; running ones finish), or stop draining.
    Drain(drain::DrainArgs),
    /// Run the worker as a service that starts at logon/boot and restarts
    /// after a crash (see docs/operations.md).
    Service(service::ServiceArgs),
}

fn main() -> ExitCode {
    // Before any other thread: see rayvault::memory for why.
    rayvault::memory::tune_malloc(rayvault::memory::WORKER_ARENAS);
    let mut args = Args::parse();
    match args.command.take() {
        Some(WorkerCommand::Service(service_args)) => return ExitCode::from(service::run(service::Command::Service(service_args))),
        Some(WorkerCommand::Drain(drain_args)) => {
            init_tracing(None);
            return match drain::cli(drain_args, args.config.as_deref(), args.host, args.port) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            };
        }
        None => {}
    }
    if args.detach_console {
        // SAFETY: no arguments; afterwards stdio writes are discarded.
        #[cfg(windows)]
        unsafe {
            windows_sys::Win32::System::Console::FreeConsole()
        };
    }
    init_tracing(args.log_file.as_deref());
    if let Some(file) = &args.env_file {
        if let Err(e) = service::load_env_file(file) {
            return fail(e);
        }
    }
    if args.windows_service {
        #[cfg(windows)]
        return service::run_as_windows_service(args);
        #[cfg(not(windows))]
        return fail(anyhow::anyhow!("--windows-service exists on Windows only"));
    }
    run(args)
}

/// The worker itself, from settings to shutdown.
fn run(args: Args) -> ExitCode {
    rayvault::memory::spawn_trimmer();
    match prepare(args) {
        Ok(ready) => {
            let max_blocking = ready.settings.worker.max_blocking_threads.max(1);
            let system = actix_rt::System::with_tokio_rt(move || {
                // The System's runtime is the one actix would build, except
                // for the capped blocking pool (see `max_blocking_threads`).
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(max_blocking)
                    .build()
                    .unwrap_or_else(|e| panic!("cannot start the async runtime: {e}"))
            });
            match system.block_on(serve(ready)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Err(e) => fail(e),
    }
}

/// Whether tracing writes to a log file (`--log-file`).
static LOGGING_TO_FILE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn fail(e: anyhow::Error) -> ExitCode {
    if LOGGING_TO_FILE.load(std::sync::atomic::Ordering::Relaxed) {
        // Into the log file too: a service has nobody reading its stderr.
        tracing::error!("{e:#}");
    }
    eprintln!("rayvault-worker: {e:#}");
    ExitCode::from(2)
}

/// Logs go to `--log-file` when given (and to stderr too when it is a
/// terminal), else to stderr.
fn init_tracing(log_file: Option<&Path>) {
    use rayvault::logfile::{RotatingFile, DEFAULT_FILES, DEFAULT_MAX_BYTES};
    use std::io::IsTerminal;
    let file = log_file.and_then(|p| match RotatingFile::open(p, DEFAULT_MAX_BYTES, DEFAULT_FILES) {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            eprintln!("rayvault-worker: cannot open the log file {} ({e}); logging to stderr only", p.display());
            None
        }
    });
    let stderr = file.is_none() || std::io::stderr().is_terminal();
    LOGGING_TO_FILE.store(file.is_some(), std::sync::atomic::Ordering::Relaxed);
    rayvault::logfile::init_tracing("info", file, stderr);
}

/// Everything checked and opened before the server starts.
struct Ready {
    settings: Settings,
    keyring: Keyring,
    ip: IpAddr,
    store: Store,
    paths: WorkerPaths,
    recovery: Recovery,
}

/// Synchronous start-up: settings, secrets, bind policy, store recovery.
fn prepare(args: Args) -> anyhow::Result<Ready> {
    let mut settings = Settings::load(args.config.as_deref())?;
    if let Some(h) = args.host {
        settings.worker.host = h;
    }
    if let Some(p) = args.port {
        settings.worker.port = p;
    }
    settings.worker.allow_any_bind |= args.allow_any_bind;
    settings.worker.allow_plain_token |= args.allow_plain_token;

    let keyring = Keyring::from_env()?;
    tracing::info!(kid = keyring.current.kid(), "cluster key loaded");
    if let Some(prev) = &keyring.previous {
        tracing::warn!(kid = prev.kid(), "RAYVAULT_CLUSTER_SECRET_PREVIOUS is set: requests signed with the previous key are accepted until it is removed");
    }
    if settings.worker.allow_plain_token {
        tracing::warn!("plain-token fallback ENABLED: `Authorization: Bearer <secret>` is accepted; use only during a migration");
    }

    let ip = bind::parse_host(&settings.worker.host).map_err(anyhow::Error::msg)?;
    match bind::check(ip, settings.worker.allow_any_bind) {
        Ok(None) => {}
        Ok(Some(warning)) => tracing::warn!("{warning}"),
        Err(refusal) => bail!(refusal),
    }

    let paths = WorkerPaths::new(&settings.worker_dir());
    paths.create().with_context(|| format!("cannot create {}", paths.root().display()))?;
    let store = Store::open_waiting(&paths.db_path(), Duration::from_secs(3)).with_context(|| {
        format!("cannot open {} (is another worker running on this state folder?)", paths.db_path().display())
    })?;
    // Before any job starts: kill what the jobs of a dead predecessor left
    // running (process groups recorded in the store while they ran).
    match store.reap_children() {
        Ok(r) if r.killed.is_empty() => {}
        Ok(r) => tracing::warn!(
            killed = r.killed.len(),
            groups = ?r.killed,
            "killed child process groups left running by the previous worker process"
        ),
        Err(e) => tracing::warn!(error = %e, "could not check for child processes left by the previous worker process"),
    }
    match paths.remove_upload_leftovers() {
        Ok(0) => {}
        Ok(n) => tracing::warn!(removed = n, "removed the partial files of blob uploads interrupted by the last stop"),
        Err(e) => tracing::warn!(error = %e, "could not clean the blob folder of interrupted uploads"),
    }
    match remove_unaccepted_job_folders(&paths, &store) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(removed = n, "removed the folders of jobs that were never accepted (started ahead of their acceptance when the worker stopped)"),
        Err(e) => tracing::warn!(error = %e, "could not check the job folders for jobs that were never accepted"),
    }
    let policy = match settings.worker.on_interrupted {
        OnInterrupted::Rerun => InterruptedPolicy::Rerun,
        OnInterrupted::Fail => InterruptedPolicy::Fail,
    };
    let recovery = store.recover(policy, handlers::now_ms())?;
    for id in &recovery.interrupted {
        if let Ok(log) = rayvault::joblog::JobLog::open(&paths.log_path(id)) {
            log.line("worker", "the worker stopped while this job was running; marked failed with code INTERRUPTED");
        }
    }
    if !recovery.interrupted.is_empty() || !recovery.queued.is_empty() {
        tracing::warn!(
            interrupted = recovery.interrupted.len(),
            requeued = recovery.queued.len(),
            policy = settings.worker.on_interrupted.as_str(),
            "recovered jobs from the previous run"
        );
    }
    Ok(Ready { settings, keyring, ip, store, paths, recovery })
}

/// Removes the folders of jobs the store does not know: a job whose step
/// may start before its acceptance is durable
/// (`StepName::starts_before_acceptance`) leaves one when the worker dies
/// before that commit. Nothing reported that job, and its submitter
/// submits it again. Answers how many were removed.
fn remove_unaccepted_job_folders(paths: &WorkerPaths, store: &Store) -> anyhow::Result<usize> {
    let entries = match std::fs::read_dir(paths.jobs_dir()) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().filter(|id| rayvault::store::is_job_id(id)) else { continue };
        if store.get(id)?.is_none() && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Starts the executors and the HTTP server, and runs until a signal.
async fn serve(ready: Ready) -> anyhow::Result<()> {
    let Ready { settings, keyring, ip, store, paths, recovery } = ready;
    let w = settings.worker.clone();
    let verifier = Arc::new(Verifier::new(keyring, w.id.clone(), w.skew_s, w.allow_plain_token));
    let now = rayvault::auth::unix_now();
    let store_for_nonces = store.clone();
    let seen = web::block(move || store_for_nonces.live_nonces(now)).await.context("loading nonces")??;
    verifier.preload_nonces(seen, now);
    let leases = Arc::new(rayvault::lease::LeaseBook::new());
    let spares = spares::Spares::new(&paths.blobs_dir(), &paths.old_spares_dir());
    let env = Arc::new(ExecutorEnv { store, paths, settings: Arc::new(settings), changes: tokio::sync::watch::channel(0).0, waiters: Default::default(), leases: leases.clone(), live_logs: Default::default() });
    let executors = executor::start_all(env.clone());
    for rec in recovery.queued {
        // A leased job waits for its controller to re-attach within one
        // lease; see rayvault::lease.
        if let Some(l) = rec.lease_s {
            leases.park(&rec.job_id, Duration::from_secs(l));
        }
        match StepName::parse(&rec.step_name) {
            Ok(step) => executors.get(&step).map(|a| a.do_send(Enqueue { job_id: rec.job_id })).unwrap_or(()),
            Err(e) => tracing::error!(job_id = %rec.job_id, "cannot requeue: {e}"),
        }
    }
    let state = web::Data::new(AppState {
        worker_id: w.id.clone(),
        spares,
        env: env.clone(),
        verifier,
        executors,
        limits: Limits {
            max_header_bytes: w.max_header_bytes,
            max_body_bytes: w.max_body_bytes,
            max_blob_bytes: w.max_blob_bytes,
            max_jobs_in_flight: w.max_jobs_in_flight as u64,
            max_wait_s: w.max_wait_s,
            body_timeout: Duration::from_secs(w.body_timeout_s.max(1)),
        },
        host_caps: tokio::sync::watch::channel(None).0,
        shutting_down: Arc::new(AtomicBool::new(false)),
        drain: drain::DrainFlag::load(env.paths.root()),
        early: Default::default(),
    });
    maintenance::spawn(state.clone());
    leases::spawn_monitor(state.clone());

    let app_state = state.clone();
    let max_body = w.max_body_bytes;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .app_data(web::PayloadConfig::new(max_body))
            .app_data(web::QueryConfig::default().error_handler(|e, _| apierror::ApiError::bad_request(format!("bad query string: {e}")).into()))
            .app_data(web::PathConfig::default().error_handler(|e, _| apierror::ApiError::bad_request(format!("bad path: {e}")).into()))
            .wrap(from_fn(guard::guard))
            .configure(routes)
    })
    .on_connect(on_connect)
    .workers(w.http_workers.max(1))
    .worker_max_blocking_threads(w.max_blocking_threads.max(1))
    .disable_signals()
    .shutdown_timeout(5)
    .client_request_timeout(Duration::from_secs(10))
    .max_connections(1024)
    .listen(
        bind::listener(ip, w.port)
            .with_context(|| format!("cannot listen on {ip}:{} (is it an address of this host, and is the port free?)", w.port))?,
    )?
    .run();
    tracing::info!(worker_id = %w.id, addr = %format!("{ip}:{}", w.port), contract = rayvault::protocol::CONTRACT, state_dir = %env.paths.root().display(), "rayvault-worker listening");
    shutdown::run_until_signal(server, state, Duration::from_secs(w.shutdown_grace_s)).await
}

/// Sets up each new connection: no Nagle delay (a streamed submission
/// answers in two writes, and the second must not wait for the first's
/// acknowledgement), and, on Linux, a record of its socket for downloads
/// the kernel sends (see `direct`).
fn on_connect(conn: &dyn std::any::Any, _ext: &mut actix_web::dev::Extensions) {
    if let Some(stream) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        let _ = stream.set_nodelay(true);
    }
    #[cfg(target_os = "linux")]
    direct::remember(conn, _ext);
}

/// The endpoint table (docs/protocol.md lists the same).
fn routes(cfg: &mut web::ServiceConfig) {
    use handlers::method_not_allowed as na;
    cfg.service(web::resource("/health").route(web::get().to(handlers::health)).default_service(web::to(na)))
        .service(web::resource("/caps").route(web::get().to(handlers::caps)).default_service(web::to(na)))
        .service(web::resource("/jobs").route(web::post().to(handlers::submit)).route(web::get().to(handlers::find_jobs)).default_service(web::to(na)))
        .service(web::resource("/jobs/{id}").route(web::get().to(handlers::get_job)).default_service(web::to(na)))
        .service(web::resource("/jobs/{id}/cancel").route(web::post().to(handlers::cancel)).default_service(web::to(na)))
        .service(web::resource("/jobs/{id}/log").route(web::get().to(files::log)).default_service(web::to(na)))
        .service(web::resource("/jobs/{id}/artifacts").route(web::get().to(handlers::artifacts)).default_service(web::to(na)))
        .service(web::resource("/jobs/{id}/artifacts/{name}").route(web::get().to(files::download)).default_service(web::to(na)))
        .service(web::resource("/drain").route(web::post().to(drain::post)).default_service(web::to(na)))
        .service(web::resource("/blobs/{sha256}").route(web::put().to(files::put_blob)).default_service(web::to(na)))
        .service(web::resource("/metrics").route(web::get().to(metrics::metrics)).default_service(web::to(na)))
        .default_service(web::to(handlers::not_found));
}
