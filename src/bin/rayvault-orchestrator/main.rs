//! `rayvault-orchestrator`: the controller. Runs a pipeline step on a
//! suitable worker (or locally) and returns a receipt.
//!
//! `main` only parses, loads settings and the keyring, dispatches one
//! function per subcommand and maps the outcome to an exit code: 0 for a
//! succeeded job (or a healthy answer), 1 for a failed job (or an unhealthy
//! node), 2 for bad usage or configuration, and 2 when `submit` stopped
//! waiting on a daemon that no longer answers (no receipt to judge by: the
//! job goes on in the daemon, and the message says how to follow it).
//!
//! Modules: `cli` (flags), `submit` (in-process or through the daemon),
//! `daemon` (the long-running controller and its loopback API),
//! `daemon_client` (the signed client of that API), `commands` (health,
//! caps, status, cancel, sync-artifacts), `render` (their tables),
//! `service` (`service install|uninstall|status|print`).

mod cli;
mod commands;
mod daemon;
mod daemon_client;
mod render;
mod service;
mod submit;

use clap::Parser;
use cli::{Cli, Command};
use rayvault::auth::Keyring;
use rayvault::config::Settings;
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    // Before any other thread: see rayvault::memory for why.
    rayvault::memory::limit_malloc_arenas();
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Daemon), cli.log_file.as_deref());
    if matches!(cli.command, Command::Daemon) {
        // Only the long-running daemon: a one-shot command exits anyway.
        rayvault::memory::spawn_trimmer();
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => Arc::new(s),
        Err(e) => return usage_error(e.into()),
    };
    let outcome = match cli.command {
        Command::Daemon => daemon::run(settings),
        Command::Submit(args) => submit::run(settings, keyring(), args),
        Command::Health(view) => commands::health(settings, keyring(), commands::NodesView::Health { json: view.json }),
        Command::Caps => commands::health(settings, keyring(), commands::NodesView::Caps),
        Command::Status(view) => commands::status(settings, keyring(), view.json),
        Command::Cancel(job) => commands::cancel(settings, keyring(), job),
        Command::SyncArtifacts(args) => commands::sync_artifacts(settings, keyring(), args),
        Command::Service(args) => service::run(cli.config.clone(), args),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => usage_error(e),
    }
}

/// The keyring from `RAYVAULT_CLUSTER_SECRET*`, or None (then every job
/// runs locally and the reason says why).
fn keyring() -> Option<Arc<Keyring>> {
    Keyring::from_env().ok().map(Arc::new)
}

fn usage_error(e: anyhow::Error) -> ExitCode {
    eprintln!("rayvault-orchestrator: {e:#}");
    ExitCode::from(2)
}

/// The daemon logs to a file (`--log-file`, else rayvault-orchestrator.log
/// in the platform's log folder), and to stderr unless `--log-file` was
/// given and stderr is not a terminal (a service: its file is enough).
/// Other commands log warnings to stderr only.
fn init_tracing(daemon: bool, log_file: Option<&std::path::Path>) {
    use rayvault::logfile::{RotatingFile, DEFAULT_FILES, DEFAULT_MAX_BYTES};
    use rayvault::service::{Platform, Program, UserDirs};
    use std::io::IsTerminal;
    if !daemon {
        return rayvault::logfile::init_tracing("warn", None, true);
    }
    let path = match log_file {
        Some(p) => Ok(p.to_path_buf()),
        None => UserDirs::from_env().log_file(Platform::current(), Program::Orchestrator).map(Into::into),
    };
    let file = match path.map_err(|e| e.to_string()).and_then(|p| {
        RotatingFile::open(&p, DEFAULT_MAX_BYTES, DEFAULT_FILES).map_err(|e| format!("cannot open {}: {e}", p.display()))
    }) {
        Ok(f) => {
            eprintln!("rayvault-orchestrator: logging to {}", f.path().display());
            Some(Arc::new(f))
        }
        Err(e) => {
            eprintln!("rayvault-orchestrator: no log file ({e}); logging to stderr only");
            None
        }
    };
    let stderr = file.is_none() || log_file.is_none() || std::io::stderr().is_terminal();
    rayvault::logfile::init_tracing("info", file, stderr);
}
