//! `rayvault-orchestrator service install | uninstall | status | print`:
//! the controller daemon as a LaunchAgent (macOS, the controller's home)
//! or a systemd user unit (Linux). The definitions are rendered by
//! `rayvault::service`; docs/operations.md explains them.

use clap::{Args, Subcommand};
use rayvault::service::manage::{self, Action, Request};
use rayvault::service::{Platform, Program};
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    action: ServiceAction,
}

#[derive(Debug, Clone, Subcommand)]
enum ServiceAction {
    /// Write the service definition (with RAYVAULT_CLUSTER_SECRET* from this
    /// shell, where only you can read it), register and start the daemon.
    Install(ServiceOpts),
    /// Stop and unregister the daemon; remove its definition and
    /// environment file (the logs stay).
    Uninstall(ServiceOpts),
    /// Is it installed, and what does the service manager say?
    Status(ServiceOpts),
    /// Print what `install` would write (secrets hidden) for review.
    Print(ServiceOpts),
}

#[derive(Debug, Clone, Args)]
struct ServiceOpts {
    /// macos or linux (default: this machine's); windows is not supported.
    #[arg(long, value_parser = Platform::parse)]
    platform: Option<Platform>,
    /// The state folder (default: the `state_dir` setting, made absolute);
    /// also the daemon's working directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The daemon's log file (default: the platform's log folder).
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// The binary the service runs (default: this one).
    #[arg(long)]
    exe: Option<PathBuf>,
}

/// Runs a `service` subcommand with the global `--config`; returns the
/// exit code.
pub fn run(config: Option<PathBuf>, args: ServiceArgs) -> anyhow::Result<u8> {
    let (action, opts) = match args.action {
        ServiceAction::Install(o) => (Action::Install, o),
        ServiceAction::Uninstall(o) => (Action::Uninstall, o),
        ServiceAction::Status(o) => (Action::Status, o),
        ServiceAction::Print(o) => (Action::Print, o),
    };
    let platform = opts.platform.unwrap_or_else(Platform::current);
    if platform == Platform::Windows {
        anyhow::bail!(
            "the controller daemon runs on macOS (or Linux); a Windows service for it is not supported. \
             On Windows install the worker: `rayvault-worker service install`"
        );
    }
    let request = Request {
        program: Program::Orchestrator,
        platform: Some(platform),
        headless: false,
        exe: opts.exe,
        state_dir: opts.state_dir,
        config,
        log_file: opts.log_file,
        args: Vec::new(),
        trailing: vec!["daemon".to_string()],
    };
    // The daemon runs without a secret (every job then runs locally).
    Ok(manage::run(action, request, false))
}
