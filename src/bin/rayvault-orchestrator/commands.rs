//! `health`, `caps`, `status`, `cancel` and `sync-artifacts` (`logs`,
//! `wait` and `result` are in `jobs`).

use crate::cli::{CancelArgs, SyncArgs};
use crate::daemon_client::DaemonClient;
use actix::prelude::*;
use anyhow::{anyhow, bail, Context as _};
use rayvault::actors::artifact_sync::SyncArtifacts;
use rayvault::actors::messages::ProbeNow;
use rayvault::actors::node_probe::{DescribeNodes, NodeDirectory, NodesReport};
use rayvault::actors::supervisor::{Controller, ControllerOptions, ControllerSupervisor};
use rayvault::auth::Keyring;
use rayvault::config::Settings;
use rayvault::controller_store::{ControllerStore, StoredJob};
use rayvault::error::ErrorCode;
use rayvault::receipt::{receipt_dir, JobStatus, Receipt};
use serde_json::{json, Value};
use std::sync::Arc;

fn start(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>) -> Controller {
    ControllerSupervisor::start(ControllerOptions { settings, keyring, store: None, progress: None })
}

/// Probes every node once and describes them.
async fn probe_all(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>) -> anyhow::Result<NodesReport> {
    let c = start(settings, keyring);
    c.probe.send(ProbeNow { node_id: None }).await.context("node probe stopped")?;
    c.probe.send(DescribeNodes).await.context("node probe stopped")
}

/// What `health` and `caps` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodesView {
    /// `health`: one line per node, or JSON with `--json`.
    Health { json: bool },
    /// `caps`: a table, or JSON with `--json` (the seed's docs show
    /// `"_compat_mode"` in a legacy node's caps).
    Caps { json: bool },
}

/// `health` or `caps`: 0 when every enabled node is up, 1 when one is down,
/// 2 when nodes.json is malformed.
pub fn health(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>, view: NodesView) -> anyhow::Result<u8> {
    let caps = matches!(view, NodesView::Caps { .. });
    let report = System::new().block_on(probe_all(settings, keyring))?;
    if let Some(e) = &report.nodes_error {
        bail!("{e}");
    }
    let nodes: Vec<Value> = report
        .nodes
        .iter()
        .map(|n| {
            if caps {
                json!({"node_id": n.node_id, "status": n.status, "reason": n.reason, "compat_mode": n.compat_mode, "caps_age_s": n.caps_age_s, "caps": n.caps})
            } else {
                json!({"node_id": n.node_id, "host": n.host, "port": n.port, "enabled": n.enabled, "status": n.status, "reason": n.reason, "contract": n.contract, "compat_mode": n.compat_mode, "health": n.health})
            }
        })
        .collect();
    let enabled = report.nodes.iter().filter(|n| n.enabled).count();
    let note = if enabled > 0 {
        None
    } else if std::path::Path::new(&report.nodes_file).exists() {
        Some(format!("no enabled node in nodes.json ({}): every step runs locally on this controller", report.nodes_file))
    } else {
        Some(rayvault::nodes::missing_note(std::path::Path::new(&report.nodes_file)))
    };
    let out = json!({"nodes_file": report.nodes_file, "note": note, "nodes": nodes});
    match view {
        NodesView::Health { json: false } => print!("{}", crate::render::health(&out)),
        NodesView::Caps { json: false } => print!("{}", crate::render::caps(&out)),
        _ => println!("{}", serde_json::to_string_pretty(&out)?),
    }
    let down = report.nodes.iter().any(|n| n.enabled && n.status != "up");
    Ok(if down { 1 } else { 0 })
}

/// One job's line in `status`.
pub fn job_line(j: &StoredJob) -> Value {
    json!({
        "key": j.spec.key(),
        "step_name": j.spec.step_name,
        "phase": j.phase,
        "remote": j.remote,
        "status": j.receipt.as_ref().map(|r| r.status),
        "executed_on": j.receipt.as_ref().map(|r| r.executed_on.clone()),
        "submitted_at_ms": j.submitted_at_ms,
    })
}

/// Prints `status` as tables, or as JSON with `--json`.
fn print_status(v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        print!("{}", crate::render::status(v, now_ms));
    }
    Ok(())
}

/// `status`: from the daemon when one runs, else from the store and a probe.
pub fn status(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>, json: bool) -> anyhow::Result<u8> {
    System::new().block_on(async move {
        if let Some(k) = &keyring {
            if let Some(client) = DaemonClient::connect(&settings, k.clone()).await? {
                let v = client.status().await?;
                print_status(&v, json)?;
                return Ok(0);
            }
        }
        let path = ControllerStore::default_path(&settings.cluster_dir());
        let jobs: Vec<Value> = if path.exists() {
            let store = tokio::task::spawn_blocking(move || ControllerStore::open(&path)).await??;
            store.all()?.iter().map(job_line).collect()
        } else {
            Vec::new()
        };
        let nodes = probe_all(settings, keyring).await?;
        print_status(&json!({"daemon": null, "jobs": jobs, "nodes": nodes}), json)?;
        Ok(0)
    })
}

/// `cancel`: cancels a job the daemon runs, or else one that a `submit` on
/// this machine runs in its own process (it is sent SIGINT, as Ctrl-C in its
/// terminal would).
pub fn cancel(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>, args: CancelArgs) -> anyhow::Result<u8> {
    let job = args.job;
    let key = format!("{}/{}", job.run_id, job.job_id);
    let cluster = settings.cluster_dir();
    System::new().block_on(async move {
        if let Some(k) = keyring {
            if let Some(client) = DaemonClient::connect(&settings, k).await? {
                match client.cancel(&key).await {
                    Ok(v) => {
                        if args.json {
                            println!("{}", serde_json::to_string_pretty(&v)?);
                        } else {
                            println!("cancelling {key} in the daemon at {}; `rayvault-orchestrator wait` shows how it ended", client.base());
                        }
                        return Ok(0);
                    }
                    // Not running in the daemon: maybe in a submit process.
                    Err(e) if crate::daemon_client::refusal_code(&e) == Some("JOB_CONFLICT") => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let Some(reg) = crate::running::find(&cluster, &job.run_id, &job.job_id) else {
            bail!(
                "{key} is not running: neither a daemon nor a submit process on this machine runs it (looked for {})",
                crate::running::path(&cluster, &job.run_id, &job.job_id).display()
            );
        };
        crate::running::interrupt(reg.pid).with_context(|| format!("cannot signal the submit process {} running {key}", reg.pid))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&json!({"key": key, "cancelling": true, "submit_pid": reg.pid}))?);
        } else {
            println!("cancelling {key}: asked the submit process {} on this machine to stop it (as Ctrl-C would)", reg.pid);
        }
        Ok(0)
    })
}

/// `sync-artifacts`: downloads a remote job's artifacts and log (again) into
/// its receipt folder and updates the receipt.
pub fn sync_artifacts(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>, args: SyncArgs) -> anyhow::Result<u8> {
    let dir = receipt_dir(&settings.cluster_dir(), &args.run_id, &args.job_id);
    let mut receipt = Receipt::read(&dir).with_context(|| format!("no readable receipt in {}; submit the job first", dir.display()))?;
    let remote_job_id = match (&receipt.remote_job_id, receipt.executed_on.as_deref() == Some(args.node_id.as_str())) {
        (Some(id), true) => id.clone(),
        _ => bail!("the receipt in {} says the job ran on {:?}, not on {}; nothing to sync from there", dir.display(), receipt.executed_on, args.node_id),
    };
    let node_id = args.node_id.clone();
    System::new().block_on(async move {
        let c = start(settings, keyring);
        c.probe.send(ProbeNow { node_id: Some(node_id.clone()) }).await?;
        let handle = c.probe.send(NodeDirectory { node_id: node_id.clone() }).await?.ok_or_else(|| anyhow!("{node_id} is not in nodes.json"))?;
        let synced = c.sync.send(SyncArtifacts { node: handle, remote_job_id, artifacts: None, dest: dir.clone() }).await?;
        match synced {
            Ok(artifacts) => {
                receipt.artifacts = artifacts;
                if receipt.error.as_ref().is_some_and(|e| e.code == ErrorCode::ArtifactSyncFailed.as_str()) {
                    receipt.error = None;
                    receipt.status = JobStatus::Succeeded;
                }
                receipt.write(&dir)?;
                println!("{}", serde_json::to_string_pretty(&receipt)?);
                Ok(receipt.exit_code() as u8)
            }
            Err(e) => {
                eprintln!("rayvault-orchestrator: sync failed: {e}");
                Ok(1)
            }
        }
    })
}
