//! `rayvault-worker service install | uninstall | status | print`, the
//! `--env-file` flag, and (Windows) the entry point of the `--headless`
//! Windows service. The definitions themselves are rendered by
//! `rayvault::service`; docs/operations.md explains them.

use clap::{Args, Subcommand};
use rayvault::service::manage::{self, Action, Request};
use rayvault::service::{Platform, Program};
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker as a service that starts at logon/boot and restarts
    /// after a crash (see docs/operations.md).
    Service(ServiceArgs),
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    action: ServiceAction,
}

#[derive(Debug, Subcommand)]
enum ServiceAction {
    /// Write the service definition and the environment file (holding
    /// RAYVAULT_CLUSTER_SECRET* from this shell), register and start it.
    Install(ServiceOpts),
    /// Stop and unregister the service; remove its definition and
    /// environment file (the logs stay).
    Uninstall(ServiceOpts),
    /// Is it installed, and what does the service manager say?
    Status(ServiceOpts),
    /// Print what `install` would write (secrets hidden) for review.
    Print(ServiceOpts),
}

#[derive(Debug, Args)]
struct ServiceOpts {
    /// windows, macos or linux (default: this machine's).
    #[arg(long, value_parser = Platform::parse)]
    platform: Option<Platform>,
    /// The address the service binds (as the worker's --host).
    #[arg(long)]
    host: Option<String>,
    /// The port the service listens on (as the worker's --port).
    #[arg(long)]
    port: Option<u16>,
    /// The state folder (default: the `state_dir` setting, made absolute);
    /// also the service's working directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// A configuration file for the service (default: the one the worker
    /// would read if started here).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The service's log file (default: the platform's log folder).
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Windows: install a Windows service (session 0, no desktop, so no
    /// OPENCLAW_TASK) instead of a logon task.
    #[arg(long)]
    headless: bool,
    /// The binary the service runs (default: this one).
    #[arg(long)]
    exe: Option<PathBuf>,
}

/// Runs a `service` subcommand; returns the exit code.
pub fn run(Command::Service(args): Command) -> u8 {
    let (action, opts) = match args.action {
        ServiceAction::Install(o) => (Action::Install, o),
        ServiceAction::Uninstall(o) => (Action::Uninstall, o),
        ServiceAction::Status(o) => (Action::Status, o),
        ServiceAction::Print(o) => (Action::Print, o),
    };
    let mut worker_args = Vec::new();
    if let Some(h) = opts.host {
        worker_args.extend(["--host".to_string(), h]);
    }
    if let Some(p) = opts.port {
        worker_args.extend(["--port".to_string(), p.to_string()]);
    }
    let request = Request {
        program: Program::Worker,
        platform: opts.platform,
        headless: opts.headless,
        exe: opts.exe,
        state_dir: opts.state_dir,
        config: opts.config,
        log_file: opts.log_file,
        args: worker_args,
        trailing: Vec::new(),
    };
    manage::run(action, request, true)
}

/// `--env-file`: sets the file's `RAYVAULT_*` variables in this process.
/// Called before any other thread starts, so nothing reads the
/// environment while it changes.
pub fn load_env_file(path: &Path) -> anyhow::Result<()> {
    let vars = rayvault::service::read_env_file(path)?;
    for (k, v) in &vars {
        std::env::set_var(k, v);
    }
    tracing::info!(file = %path.display(), variables = vars.len(), "environment file loaded");
    Ok(())
}

#[cfg(windows)]
pub use windows_entry::run_as_windows_service;

/// The `--headless` service's entry point: the service control manager
/// starts `rayvault-worker.exe ... --windows-service`, which hands the main
/// thread to the dispatcher; the worker then runs on the service thread
/// until a Stop, which reaches its graceful shutdown as a Ctrl-Break.
#[cfg(windows)]
mod windows_entry {
    use std::ffi::OsString;
    use std::process::ExitCode;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;
    use windows_service::service::{
        ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult};

    const NAME: &str = "RayVaultWorker";

    /// The parsed flags, handed from `main` to the service thread.
    static ARGS: OnceLock<Mutex<Option<crate::Args>>> = OnceLock::new();

    windows_service::define_windows_service!(ffi_service_main, service_main);

    pub fn run_as_windows_service(args: crate::Args) -> ExitCode {
        rayvault::caps::mark_running_as_windows_service();
        let _ = ARGS.set(Mutex::new(Some(args)));
        match windows_service::service_dispatcher::start(NAME, ffi_service_main) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("--windows-service is for the service control manager only ({e}); run the worker without it");
                eprintln!("rayvault-worker: --windows-service is for the service control manager only ({e})");
                ExitCode::from(2)
            }
        }
    }

    fn status(state: ServiceState, code: u32, wait: Duration) -> ServiceStatus {
        ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: if state == ServiceState::Running {
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
            } else {
                ServiceControlAccept::empty()
            },
            exit_code: ServiceExitCode::Win32(code),
            checkpoint: 0,
            wait_hint: wait,
            process_id: None,
        }
    }

    fn service_main(_arguments: Vec<OsString>) {
        use windows_sys::Win32::System::Console::{AllocConsole, GenerateConsoleCtrlEvent, CTRL_BREAK_EVENT};
        // A service has no console; a hidden one lets a Stop reach the
        // worker's Ctrl-Break handler, its one graceful-shutdown path.
        // SAFETY: no arguments; failure only means a Stop ends the process
        // less gracefully.
        unsafe { AllocConsole() };
        let handle: std::sync::Arc<OnceLock<service_control_handler::ServiceStatusHandle>> = Default::default();
        let for_handler = handle.clone();
        let handler = move |event| match event {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                if let Some(h) = for_handler.get() {
                    let _ = h.set_service_status(status(ServiceState::StopPending, 0, Duration::from_secs(60)));
                }
                // SAFETY: plain call; group 0 is this console's processes.
                unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, 0) };
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let Ok(registered) = service_control_handler::register(NAME, handler) else {
            return;
        };
        let _ = handle.set(registered);
        let _ = registered.set_service_status(status(ServiceState::Running, 0, Duration::ZERO));
        let args = ARGS.get().and_then(|m| m.lock().ok()?.take());
        let code = match args {
            Some(a) => crate::run(a),
            None => ExitCode::from(2),
        };
        // A non-zero code makes the manager apply the restart actions.
        let raw = if code == ExitCode::SUCCESS { 0 } else { 1 };
        let _ = registered.set_service_status(status(ServiceState::Stopped, raw, Duration::ZERO));
    }
}
