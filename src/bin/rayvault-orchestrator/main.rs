//! `rayvault-orchestrator`: the controller. Runs a pipeline step on a
//! suitable worker (or locally) and returns a receipt.
//!
//! `main` only parses, loads settings and the keyring, dispatches one
//! function per subcommand and maps the outcome to an exit code. For a job
//! (`submit`, `wait`, `result`) it is the receipt's `Receipt::exit_code`
//! (0 succeeded, 1 failed, 2 configuration error, 3 failed verdict); for
//! `health`/`caps`, 0 when every enabled node is up and 1 otherwise; 2 for
//! bad usage or configuration, and 2 when `submit` stopped waiting on a
//! daemon that no longer answers (no receipt to judge by: the job goes on in
//! the daemon, and the message says how to follow it).
//!
//! Modules: `cli` (flags), `submit` (in-process or through the daemon),
//! `daemon` (the long-running controller and its loopback API),
//! `daemon_client` (the signed client of that API), `daemon_metrics`
//! (its unsigned `GET /metrics`), `dashboard` (the daemon's web dashboard
//! and the `dashboard` subcommand), `commands` (health,
//! caps, status, cancel, sync-artifacts), `jobs` (logs, wait, result),
//! `running` (jobs run by in-process submits), `progress` (progress on
//! stderr), `render` (tables and receipt summaries), `service`
//! (`service install|uninstall|status|print`).

mod cli;
mod commands;
mod daemon;
mod daemon_client;
mod daemon_metrics;
mod dashboard;
mod init;
mod jobs;
mod nodes_cmd;
mod progress;
mod render;
mod running;
mod service;
mod submit;

use clap::{CommandFactory, FromArgMatches};
use cli::{Cli, Command};
use rayvault::auth::Keyring;
use rayvault::config::Settings;
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    // Before any other thread: see rayvault::memory for why.
    rayvault::memory::tune_malloc(rayvault::memory::CONTROLLER_ARENAS);
    let cli = parse();
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
        Command::Caps(view) => commands::health(settings, keyring(), commands::NodesView::Caps { json: view.json }),
        Command::Status(view) => commands::status(settings, keyring(), view.json),
        Command::Cancel(args) => commands::cancel(settings, keyring(), args),
        Command::SyncArtifacts(args) => commands::sync_artifacts(settings, keyring(), args),
        Command::Logs(args) => jobs::logs(settings, keyring(), args),
        Command::Wait(args) => jobs::wait(settings, keyring(), args),
        Command::Result(args) => jobs::result(settings, args),
        Command::Init(args) => init::run(settings, args),
        Command::Nodes(args) => nodes_cmd::run(settings, keyring(), args),
        Command::Dashboard(args) => dashboard::command(settings, keyring(), args),
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

/// Parses the command line; `submit --help` lists the step names.
fn parse() -> Cli {
    let command = Cli::command().mut_subcommand("submit", |c| c.after_help(cli::submit_after_help()));
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Logs on stderr. The daemon logs at `info` with timestamps and fields. A
/// one-shot command only shows warnings and errors, and as sentences
/// (`rayvault-orchestrator: warning: ...`, without fields or debug dumps),
/// unless `RUST_LOG` asks for more, which gives the full format.
fn init_tracing(daemon: bool, log_file: Option<&std::path::Path>) {
    use std::io::IsTerminal;
    if daemon {
        return init_daemon_tracing(log_file);
    }
    let from_env = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").ok();
    let verbose = daemon || from_env.is_some();
    let filter = from_env.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(if daemon { "info" } else { "warn" }));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| progress::StderrBelowSpinner).with_ansi(std::io::stderr().is_terminal());
    if verbose {
        builder.init();
    } else {
        builder.event_format(Sentences).init();
    }
}

/// A log event as one sentence: its level and message, nothing else.
struct Sentences;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Sentences
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut message = Message::default();
        event.record(&mut message);
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            _ => "note",
        };
        if message.context.is_empty() {
            writeln!(writer, "rayvault-orchestrator: {level}: {}", message.text)
        } else {
            writeln!(writer, "rayvault-orchestrator: {level}: {} ({})", message.text, message.context.join(", "))
        }
    }
}

/// An event's `message`, plus its short plain fields (`node w1`); a field
/// that reads like a data structure is left out.
#[derive(Default)]
struct Message {
    text: String,
    context: Vec<String>,
}

impl Message {
    fn field(&mut self, name: &str, value: String) {
        if name == "message" {
            self.text = value;
        } else if value.len() <= 80 && !value.contains(['{', '[', '(']) {
            self.context.push(format!("{name} {value}"));
        }
    }
}

impl tracing::field::Visit for Message {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.field(field.name(), value.to_string());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.field(field.name(), format!("{value:?}"));
    }
}

/// The daemon logs to a file (`--log-file`, else rayvault-orchestrator.log
/// in the platform's log folder), and to stderr unless `--log-file` was
/// given and stderr is not a terminal (a service: its file is enough).
fn init_daemon_tracing(log_file: Option<&std::path::Path>) {
    use rayvault::logfile::{RotatingFile, DEFAULT_FILES, DEFAULT_MAX_BYTES};
    use rayvault::service::{Platform, Program, UserDirs};
    use std::io::IsTerminal;
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
