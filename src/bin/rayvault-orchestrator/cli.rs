//! The command line: the seed's subcommands and flags, exactly.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// RayVault controller: runs pipeline steps on a suitable worker, or locally.
#[derive(Debug, Parser)]
#[command(name = "rayvault-orchestrator", version, about)]
pub struct Cli {
    /// A local configuration file layered over config/default.toml.
    #[arg(long, global = true)]
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
    /// Run one job somewhere suitable and print its receipt.
    Submit(SubmitArgs),
    /// Probe every node's /health and report up/down with reasons.
    Health(ViewArgs),
    /// Probe every node and print its capabilities (JSON).
    Caps,
    /// Jobs and nodes at a glance.
    Status(ViewArgs),
    /// Cancel a job the daemon is running.
    Cancel(JobRef),
    /// Download (again) a remote job's artifacts into its receipt folder.
    SyncArtifacts(SyncArgs),
    /// Install, remove, inspect or print the daemon's service definition.
    Service(crate::service::ServiceArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    #[arg(long)]
    pub run_id: String,
    #[arg(long)]
    pub job_id: String,
    #[arg(long)]
    pub step_name: String,
    /// The step's payload, a JSON object.
    #[arg(long)]
    pub payload_json: String,
    /// {"os_in": [...], "min_ram_gb": n, "min_vram_gb": n, "gpu_required": bool}; none means any node.
    #[arg(long)]
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
    /// Return once the daemon accepted the job (needs a running daemon).
    #[arg(long)]
    pub no_wait: bool,
    /// Give up (and cancel the job) after this many seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
}

/// How `health` and `status` print.
#[derive(Debug, Clone, Args)]
pub struct ViewArgs {
    /// Print JSON (for scripts) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct JobRef {
    #[arg(long)]
    pub run_id: String,
    #[arg(long)]
    pub job_id: String,
}

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    #[arg(long)]
    pub run_id: String,
    #[arg(long)]
    pub job_id: String,
    #[arg(long)]
    pub node_id: String,
}
