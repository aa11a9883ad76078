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
//! caps, status, cancel, sync-artifacts), `render` (their tables).

mod cli;
mod commands;
mod daemon;
mod daemon_client;
mod render;
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
    init_tracing(matches!(cli.command, Command::Daemon));
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

fn init_tracing(daemon: bool) {
    use std::io::IsTerminal;
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
