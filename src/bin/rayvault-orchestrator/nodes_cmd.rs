//! `nodes add|remove|enable|disable|drain|undrain|list`: edits nodes.json
//! through `rayvault::nodes::edit` (checked by the one parser, written
//! atomically, comments and unknown top-level keys kept). A running daemon
//! notices the change within a second. Every refusal exits with code 2.
//!
//! Also here: [`settle_drains`], which tells `draining` from `drained` for
//! `status` and `health` by the jobs still in flight on each node.

use anyhow::{anyhow, Context as _};
use clap::{Args, Subcommand};
use rayvault::actors::node_probe::NodesReport;
use rayvault::auth::Keyring;
use rayvault::config::Settings;
use rayvault::nodes::{self, edit, NodeConfig};
use serde_json::{json, Value};
use std::sync::Arc;

/// `rayvault-orchestrator nodes ...`.
#[derive(Debug, Clone, Args)]
pub struct NodesArgs {
    #[command(subcommand)]
    pub action: NodesAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum NodesAction {
    /// Add a worker (enabled) at HOST[:PORT] (default port 8787).
    Add {
        /// The worker's id: its RAYVAULT_WORKER_ID.
        id: String,
        /// Its Tailscale IP or name, with an optional :PORT ([v6]:PORT for IPv6).
        host: String,
        /// Add it disabled (`nodes enable ID` later).
        #[arg(long)]
        disabled: bool,
    },
    /// Remove a worker from the list.
    Remove { id: String },
    /// Let the scheduler use a worker.
    Enable { id: String },
    /// Stop using a worker (jobs running there go on).
    Disable { id: String },
    /// No new jobs on this worker; the ones running there finish.
    Drain {
        id: String,
        /// Also ask the worker itself to drain (signed POST /drain), so that
        /// other controllers stop sending it jobs too.
        #[arg(long)]
        remote: bool,
    },
    /// Take the worker back into use after `drain`.
    Undrain {
        id: String,
        /// Also ask the worker itself to stop draining (signed POST /drain).
        #[arg(long)]
        remote: bool,
    },
    /// Print the workers in nodes.json.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `nodes` action.
pub fn run(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>, args: NodesArgs) -> anyhow::Result<u8> {
    let path = nodes::nodes_path(&settings.cluster_dir());
    let shown = path.display().to_string();
    let picked_up = "a running daemon uses it within a second";
    match args.action {
        NodesAction::Add { id, host, disabled } => {
            let (h, port) = edit::parse_host_port(&host, 8787).map_err(anyhow::Error::msg)?;
            if let Some(w) = edit::host_warning(&h) {
                eprintln!("rayvault-orchestrator: warning: {w}");
            }
            edit::edit(&path, |f| {
                f.add(&id, &h, port)?;
                if disabled {
                    f.set_enabled(&id, false)?;
                }
                Ok(())
            })?;
            let state = if disabled { "disabled" } else { "enabled" };
            println!("added {id} at {} ({state}) to {shown}; {picked_up}; `rayvault-orchestrator health` probes it", address(&h, port));
        }
        NodesAction::Remove { id } => {
            edit::edit(&path, |f| f.remove(&id))?;
            println!("removed {id} from {shown}; {picked_up} (jobs running there go on)");
        }
        NodesAction::Enable { id } => switch(&path, &id, "enabled", |f| f.set_enabled(&id, true))?,
        NodesAction::Disable { id } => switch(&path, &id, "disabled (jobs running there go on)", |f| f.set_enabled(&id, false))?,
        NodesAction::Drain { id, remote } => {
            switch(&path, &id, "draining: no new jobs go there and the ones running there finish; `status` says drained once none is left", |f| f.set_drain(&id, true))?;
            if remote {
                tell_worker(&settings, keyring, &path, &id, true)?;
            }
        }
        NodesAction::Undrain { id, remote } => {
            switch(&path, &id, "taking new jobs again", |f| f.set_drain(&id, false))?;
            if remote {
                tell_worker(&settings, keyring, &path, &id, false)?;
            }
        }
        NodesAction::List { json } => list(&path, json)?,
    }
    Ok(0)
}

/// One edit that switches a node's state, and the sentence saying so.
fn switch(path: &std::path::Path, id: &str, now: &str, change: impl FnOnce(&mut edit::NodesFile) -> Result<bool, edit::EditError>) -> anyhow::Result<()> {
    let changed = edit::edit(path, change)?;
    let how = if changed { "is now" } else { "was already" };
    println!("{id} {how} {now} ({})", path.display());
    Ok(())
}

fn address(host: &str, port: u16) -> String {
    NodeConfig { node_id: String::new(), host: host.into(), port, enabled: true, drain: false }.base_url().trim_start_matches("http://").to_string()
}

/// `nodes list`: the file as it is (live health is `status`).
fn list(path: &std::path::Path, as_json: bool) -> anyhow::Result<()> {
    let found = nodes::load(path).map_err(anyhow::Error::msg)?;
    let list = found.clone().unwrap_or_default();
    if as_json {
        let v = json!({"nodes_file": path.display().to_string(), "exists": found.is_some(), "nodes": list});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("nodes.json: {}", path.display());
    if found.is_none() {
        println!("{}", nodes::missing_note(path));
        return Ok(());
    }
    if list.is_empty() {
        println!("no nodes: every step runs locally; add one with `rayvault-orchestrator nodes add ID HOST[:PORT]`");
        return Ok(());
    }
    let rows: Vec<[String; 3]> = list
        .iter()
        .map(|n| {
            let state = match (n.enabled, n.drain) {
                (false, _) => "disabled",
                (true, true) => "draining",
                (true, false) => "enabled",
            };
            [n.node_id.clone(), address(&n.host, n.port), state.to_string()]
        })
        .collect();
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0).max(4);
    let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0).max(7);
    println!("{:w0$}  {:w1$}  STATE", "NODE", "ADDRESS");
    for r in rows {
        println!("{:w0$}  {:w1$}  {}", r[0], r[1], r[2]);
    }
    Ok(())
}

/// Sends the signed `POST /drain` to the node's worker.
fn tell_worker(settings: &Settings, keyring: Option<Arc<Keyring>>, path: &std::path::Path, id: &str, drain: bool) -> anyhow::Result<()> {
    let keyring = keyring.ok_or_else(|| anyhow!("--remote talks to the worker, which needs RAYVAULT_CLUSTER_SECRET (the worker's secret) in this environment"))?;
    let node = nodes::load(path)
        .map_err(anyhow::Error::msg)?
        .unwrap_or_default()
        .into_iter()
        .find(|n| n.node_id == id)
        .ok_or_else(|| anyhow!("no node {id:?} in {}", path.display()))?;
    let timeout = std::time::Duration::from_secs(settings.controller.probe_timeout_s.max(1) * 3);
    let client = rayvault::client::WorkerClient::new(&node.base_url(), &node.node_id, keyring).with_timeout(timeout);
    let state = actix_rt::System::new()
        .block_on(client.drain(drain))
        .with_context(|| format!("nodes.json is updated, but the worker {id} at {} did not take the drain request", node.base_url()))?;
    if state.draining {
        println!("the worker {id} drains too: {} job(s) still queued or running there finish", state.active_jobs);
    } else {
        println!("the worker {id} takes new jobs again");
    }
    Ok(())
}

/// Tells `draining` from `drained` in `report` by the unfinished jobs among
/// `jobs` (lines as `commands::job_line` makes them) that run on each node.
pub fn settle_drains(report: &mut NodesReport, jobs: &[Value]) {
    report.settle_drains(|node_id| {
        jobs.iter()
            .filter(|j| j["phase"].as_str() != Some("finished") && j["remote"]["node_id"].as_str() == Some(node_id))
            .count()
    });
}
