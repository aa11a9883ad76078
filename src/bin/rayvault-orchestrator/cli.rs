//! The command line: the documented subcommands and flags, plus `logs`, `wait`
//! and `result`. Every flag has help text (`--help` on each subcommand).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// RayVault controller: runs pipeline steps on a suitable worker, or locally.
///
/// Exit codes: 0 the job succeeded (or every node is healthy), 1 the job
/// failed (or a node is down), 2 bad usage or configuration, 3 the job ran
/// but its verdict failed (AUDIO_POSTCHECK).
#[derive(Debug, Parser)]
#[command(name = "rayvault-orchestrator", version, about, long_about)]
pub struct Cli {
    /// A local configuration file layered over config/default.toml (default:
    /// $RAYVAULT_CONFIG, else config/local.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The daemon's log file, rotated at 10 MiB with 5 files kept (default:
    /// rayvault-orchestrator.log in the platform's log folder).
    #[arg(long, global = true)]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the long-lived controller with its local API on loopback.
    Daemon,
    /// Run one job somewhere suitable and print what happened.
    Submit(SubmitArgs),
    /// Probe every node's /health and report up/down with reasons.
    Health(ViewArgs),
    /// Probe every node and print its capabilities.
    Caps(ViewArgs),
    /// Jobs and nodes at a glance.
    Status(ViewArgs),
    /// Cancel a running job (in the daemon, or in a `submit` on this machine).
    Cancel(CancelArgs),
    /// Download (again) a remote job's artifacts into its receipt folder.
    SyncArtifacts(SyncArgs),
    /// Print a job's log (worker.log), running or finished.
    Logs(LogsArgs),
    /// Block until a job ends and exit with its exit code.
    Wait(ReceiptArgs),
    /// Print a finished job's receipt and exit with its exit code.
    Result(ReceiptArgs),
    /// First-time setup: the cluster secret, nodes.json, the worker's command.
    Init(crate::init::InitArgs),
    /// Edit the worker list (nodes.json): add, remove, enable, disable, drain, list.
    Nodes(crate::nodes_cmd::NodesArgs),
    /// Log a browser in to the daemon's web dashboard (prints a one-time link).
    Dashboard(crate::dashboard::DashboardArgs),
    /// Install, remove, inspect or print the daemon's service definition.
    Service(crate::service::ServiceArgs),
}

/// The steps `submit --step-name` accepts, for `submit --help`.
pub fn submit_after_help() -> String {
    let steps: Vec<&str> = rayvault::steps::StepName::ALL.iter().map(|s| s.as_str()).collect();
    format!(
        "Steps: {}.\nEach step's payload and result are described in docs/steps.md.\n\n\
         Exit codes: 0 succeeded, 1 failed, 2 bad usage or configuration, 3 the job ran but its verdict failed.",
        steps.join(", ")
    )
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The pipeline run this job belongs to (a folder name: letters, digits, '_', '-', '.').
    #[arg(long)]
    pub run_id: String,
    /// The job's id within the run (a folder name); run_id/job_id names the job.
    #[arg(long)]
    pub job_id: String,
    /// The step to run (see the list below).
    #[arg(long, value_name = "STEP")]
    pub step_name: String,
    /// The step's payload, a JSON object (see docs/steps.md).
    #[arg(long, value_name = "JSON")]
    pub payload_json: String,
    /// {"os_in": [...], "min_ram_gb": n, "min_vram_gb": n, "gpu_required": bool}; none means any node.
    #[arg(long, value_name = "JSON")]
    pub requirements_json: Option<String>,
    /// Same as `--fallback never`.
    #[arg(long, conflicts_with = "fallback")]
    pub no_fallback: bool,
    /// When the controller may run the job itself: `unavailable` (only when
    /// no worker can be reached or take it; the default, from
    /// `[controller] fallback`), `always` (also when a worker is
    /// misconfigured), `never`.
    #[arg(long, value_name = "MODE", value_parser = ["unavailable", "always", "never"])]
    pub fallback: Option<String>,
    /// Return once the daemon accepted the job (needs a running daemon); follow it with `wait`.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up (and cancel the job) after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Print the receipt as JSON on stdout instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// No progress; print only the receipt JSON on stdout (a local fallback
    /// still prints one `ran locally: <reason>` line on stderr).
    #[arg(long)]
    pub quiet: bool,
}

/// How `health`, `caps` and `status` print.
#[derive(Debug, Clone, Args)]
pub struct ViewArgs {
    /// Print JSON (for scripts) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One job, by its ids.
#[derive(Debug, Clone, Args)]
pub struct JobRef {
    /// The job's run id (as given to `submit`).
    #[arg(long)]
    pub run_id: String,
    /// The job's id (as given to `submit`).
    #[arg(long)]
    pub job_id: String,
}

#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub job: JobRef,
    /// Print the answer as JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// `wait` and `result`: a job, and how to print its receipt.
#[derive(Debug, Clone, Args)]
pub struct ReceiptArgs {
    #[command(flatten)]
    pub job: JobRef,
    /// Print the receipt as JSON on stdout instead of a summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub job: JobRef,
    /// Keep printing new lines until the job ends.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// The job's run id.
    #[arg(long)]
    pub run_id: String,
    /// The job's id.
    #[arg(long)]
    pub job_id: String,
    /// The node to sync from; default: the receipt's `executed_on`. Given
    /// without a local receipt, the job is looked up on that node by run
    /// and job id and its receipt rebuilt.
    #[arg(long)]
    pub node_id: Option<String>,
}
