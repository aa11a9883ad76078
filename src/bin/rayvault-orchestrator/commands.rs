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
    c.probe.send(ProbeNow { node_id: None, since: Some(c.started) }).await.context("node probe stopped")?;
    c.probe.send(DescribeNodes).await.context("node probe stopped")
}

/// What `health` and `caps` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodesView {
    /// `health`: one line per node, or JSON with `--json`.
    Health { json: bool },
    /// `caps`: a table, or JSON with `--json` (the README shows
    /// `"_compat_mode"` in a legacy node's caps).
    Caps { json: bool },
}

/// `health` or `caps`: 0 when every enabled node is up, 1 when one is down,
/// 2 when nodes.json is malformed.
pub fn health(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>, view: NodesView) -> anyhow::Result<u8> {
    let caps = matches!(view, NodesView::Caps { .. });
    let report = System::new().block_on(async move {
        let jobs = job_lines(&settings, keyring.clone()).await;
        let mut report = probe_all(settings, keyring).await?;
        crate::nodes_cmd::settle_drains(&mut report, &jobs);
        anyhow::Ok(report)
    })?;
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
    // A draining or drained node was set so on purpose, like a disabled one.
    let down = report.nodes.iter().any(|n| n.enabled && !matches!(n.status.as_str(), "up" | "draining" | "drained"));
    Ok(if down { 1 } else { 0 })
}

/// The controller's job lines: from the daemon when one runs, else from its
/// store; none when neither can be read (then a draining node with jobs
/// still running is shown as drained by `health`).
async fn job_lines(settings: &Settings, keyring: Option<Arc<Keyring>>) -> Vec<Value> {
    if let Some(k) = keyring {
        if let Ok(Some(client)) = DaemonClient::connect(settings, k).await {
            if let Ok(v) = client.status().await {
                return v["jobs"].as_array().cloned().unwrap_or_default();
            }
        }
    }
    let path = ControllerStore::default_path(&settings.cluster_dir());
    if !path.exists() {
        return Vec::new();
    }
    match tokio::task::spawn_blocking(move || ControllerStore::open(&path).and_then(|s| s.all())).await {
        Ok(Ok(jobs)) => jobs.iter().map(job_line).collect(),
        _ => Vec::new(),
    }
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
        // What became of each copy the controller gave up (see the receipt's
        // attempts): e.g. "w1: stopped_by_lease".
        "given_up": j.receipt.as_ref().map(|r| r
            .attempts
            .iter()
            .filter(|a| a.outcome == rayvault::receipt::AttemptOutcome::Abandoned)
            .map(|a| format!("{}: {}", a.executed_on, a.fate.as_deref().unwrap_or("unknown")))
            .collect::<Vec<_>>()),
        "submitted_at_ms": j.submitted_at_ms,
    })
}

/// Prints `status` as tables, or as JSON with `--json`.
fn print_status(v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        let now_ms = rayvault::protocol::now_ms();
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
        let mut nodes = probe_all(settings, keyring).await?;
        crate::nodes_cmd::settle_drains(&mut nodes, &jobs);
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
///
/// The node is the receipt's `executed_on`, or `--node-id`. With
/// `--node-id` and no local receipt (deleted, or written by another
/// controller), the job is found on that worker by its run and job ids
/// (`GET /jobs?run_id=R&job_id=J`, the label every submission carries) and
/// the receipt is rebuilt from the worker's record and written. Each
/// artifact gets one line on stderr: downloaded, verified (already present
/// with the manifest's digest) or repaired (present with another digest,
/// replaced).
pub fn sync_artifacts(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>, args: SyncArgs) -> anyhow::Result<u8> {
    let dir = receipt_dir(&settings.cluster_dir(), &args.run_id, &args.job_id);
    let local = match Receipt::read(&dir) {
        Ok(r) => Some(r),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("the receipt in {} is unreadable ({e}); move it away and pass --node-id to rebuild it from the worker", dir.display()),
    };
    let node_id = match (&local, args.node_id) {
        (Some(r), None) if r.executed_on.as_deref() == Some("local") => bail!("the receipt in {} says the job ran locally; there is nothing to sync", dir.display()),
        (Some(r), None) => match r.executed_on.clone() {
            Some(n) => n,
            None => bail!("the receipt in {} says the job ran nowhere; there is nothing to sync", dir.display()),
        },
        (Some(r), Some(n)) if r.executed_on.as_deref() != Some(n.as_str()) => {
            bail!("the receipt in {} says the job ran on {:?}, not on {n}; nothing to sync from there", dir.display(), r.executed_on)
        }
        (_, Some(n)) => n,
        (None, None) => bail!(
            "no receipt in {}; pass --node-id <node> to find the job on that worker by its run and job ids and rebuild the receipt",
            dir.display()
        ),
    };
    let keyring = keyring.ok_or_else(|| anyhow!("sync-artifacts talks to the worker, which needs RAYVAULT_CLUSTER_SECRET"))?;
    let timeout = std::time::Duration::from_secs(settings.controller.probe_timeout_s.max(1) * 3);
    let (run_id, job_id) = (args.run_id, args.job_id);
    System::new().block_on(async move {
        let c = start(settings, Some(keyring.clone()));
        c.probe.send(ProbeNow { node_id: Some(node_id.clone()), since: Some(c.started) }).await?;
        let handle = c.probe.send(NodeDirectory { node_id: node_id.clone() }).await?.ok_or_else(|| anyhow!("{node_id} is not in nodes.json"))?;
        let mut receipt = match local {
            Some(r) => r,
            None => {
                let r = rebuild_receipt(&handle, keyring.clone(), timeout, &run_id, &job_id).await?;
                eprintln!("rebuilt the receipt of {run_id}/{job_id} from {node_id}'s record of job {}", r.remote_job_id.as_deref().unwrap_or("?"));
                r
            }
        };
        let Some(remote_job_id) = receipt.remote_job_id.clone() else {
            bail!("the receipt in {} has no remote_job_id; move it away and pass --node-id to find the job on the worker", dir.display());
        };
        let client = rayvault::client::NodeClient::new(&handle, keyring, timeout);
        let manifest = client.manifest(&remote_job_id).await.map_err(|e| anyhow!("asking {node_id} for the artifacts of job {remote_job_id}: {e}"))?;
        let found = present_copies(&dir, &manifest).await?;
        let began = std::time::Instant::now();
        let synced = c.sync.send(SyncArtifacts { node: handle, remote_job_id, artifacts: Some(manifest.clone()), dest: dir.clone(), log: None }).await?;
        match synced {
            Ok(artifacts) => {
                for (entry, copy) in manifest.iter().zip(found) {
                    eprintln!("{}", copy.describe(entry));
                }
                receipt.artifacts = artifacts;
                receipt.timings.sync_ms = began.elapsed().as_millis() as u64;
                // A sync failure (or a full disk during the sync) is what
                // this command repairs; the step itself had succeeded.
                let sync_codes = [ErrorCode::ArtifactSyncFailed.as_str(), ErrorCode::DiskFull.as_str()];
                if receipt.error.as_ref().is_some_and(|e| sync_codes.contains(&e.code.as_str())) && receipt.remote_job_id.is_some() {
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

/// What was under an artifact's name in the receipt folder before a sync.
enum PresentCopy {
    /// Nothing: the sync downloads it.
    Missing,
    /// A file with the manifest's digest: kept as it is.
    Verified,
    /// A file with another digest: removed here, so the sync replaces it.
    Wrong { sha256: String },
}

impl PresentCopy {
    /// The line `sync-artifacts` prints for the artifact after the sync.
    fn describe(&self, entry: &rayvault::artifacts::ArtifactEntry) -> String {
        let (name, size, sha) = (&entry.name, entry.size, &entry.sha256);
        match self {
            PresentCopy::Missing => format!("downloaded {name} ({size} bytes, sha256 {sha})"),
            PresentCopy::Verified => format!("verified {name} (already present, sha256 {sha})"),
            PresentCopy::Wrong { sha256 } => format!("repaired {name} (had sha256 {sha256}; replaced by the worker's copy, sha256 {sha})"),
        }
    }
}

/// Checks the copy of every artifact already in `dir` against the manifest,
/// and removes the copies whose digest differs so that the sync downloads
/// them again. Names that are not plain file names are left to the sync,
/// which refuses them.
async fn present_copies(dir: &std::path::Path, manifest: &[rayvault::artifacts::ArtifactEntry]) -> anyhow::Result<Vec<PresentCopy>> {
    let mut out = Vec::with_capacity(manifest.len());
    for entry in manifest {
        let path = dir.join(&entry.name);
        if !rayvault::artifacts::is_safe_name(&entry.name) || !path.is_file() {
            out.push(PresentCopy::Missing);
            continue;
        }
        let p = path.clone();
        let (sha256, _) = tokio::task::spawn_blocking(move || rayvault::artifacts::sha256_file(&p))
            .await?
            .with_context(|| format!("reading {}", path.display()))?;
        if sha256 == entry.sha256 {
            out.push(PresentCopy::Verified);
        } else {
            tokio::fs::remove_file(&path).await.with_context(|| format!("removing the damaged copy {}", path.display()))?;
            out.push(PresentCopy::Wrong { sha256 });
        }
    }
    Ok(out)
}

/// Finds the job of `run_id`/`job_id` on the node by its label and builds
/// a receipt from the worker's record: the newest succeeded job, else the
/// newest finished one. Placement is empty (it is not known any more), and
/// the one attempt says the receipt was rebuilt. `result` is the worker's
/// own, with the worker's paths.
async fn rebuild_receipt(
    node: &rayvault::actors::node_probe::NodeHandle,
    keyring: Arc<Keyring>,
    timeout: std::time::Duration,
    run_id: &str,
    job_id: &str,
) -> anyhow::Result<Receipt> {
    use rayvault::actors::messages::Compat;
    use rayvault::protocol::JobState;
    use rayvault::receipt::{Attempt, ReceiptError, Timings};
    let node_id = &node.config.node_id;
    let mut client = rayvault::client::WorkerClient::new(&node.config.base_url(), node_id, keyring).with_timeout(timeout);
    match node.compat {
        Compat::Current => {}
        Compat::CurrentPlainToken => client = client.with_plain_token(),
        Compat::LegacyHmacV05 | Compat::LegacyPlainToken => {
            bail!("{node_id} is a legacy v0.5 worker, which cannot look jobs up by run and job id; the local receipt is needed to sync from it")
        }
    }
    let found = client.find_jobs(run_id, job_id).await.map_err(|e| anyhow!("asking {node_id} for the jobs of {run_id}/{job_id}: {e}"))?;
    let newest_succeeded = found.jobs.iter().find(|j| j.state == JobState::Succeeded);
    let Some(job) = newest_succeeded.or_else(|| found.jobs.iter().find(|j| j.state.is_terminal())) else {
        match found.jobs.first() {
            Some(j) => bail!("job {} for {run_id}/{job_id} on {node_id} is still {:?}; sync again once it has finished", j.job_id, j.state),
            None => bail!("{node_id} holds no job labelled {run_id}/{job_id} (never submitted there, or pruned after its retention time)"),
        }
    };
    let status = match job.state {
        JobState::Succeeded => JobStatus::Succeeded,
        JobState::Cancelled => JobStatus::Cancelled,
        _ => JobStatus::Failed,
    };
    let utc = |ms: u64| rayvault::joblog::format_utc(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
    let finished_ms = job.finished_at_ms.unwrap_or(job.created_at_ms);
    let started_ms = job.started_at_ms.unwrap_or(finished_ms);
    let outcome = rayvault::receipt::AttemptOutcome::of_state(job.state);
    let verdict = match (&job.result, status, job.step_name.as_str()) {
        (Some(result), JobStatus::Succeeded, "AUDIO_POSTCHECK") => Receipt::verdict_of(result),
        _ => None,
    };
    let (verdict, verdict_failures) = match verdict {
        Some((v, f)) => (Some(v), f),
        None => (None, Vec::new()),
    };
    Ok(Receipt {
        run_id: run_id.to_string(),
        job_id: job_id.to_string(),
        step_name: job.step_name.clone(),
        inputs_hash: job.inputs_hash.clone(),
        status,
        executed_on: Some(node_id.clone()),
        verdict,
        verdict_failures,
        fallback_reason: None,
        remote_job_id: Some(job.job_id.clone()),
        cached: false,
        compat_mode: node.compat.mode_name().map(String::from),
        error: job.error.as_ref().map(|e| ReceiptError { code: e.code.clone(), message: e.message.clone() }),
        result: job.result.clone(),
        artifacts: Vec::new(),
        timings: Timings {
            submitted_at: utc(job.created_at_ms),
            started_at: job.started_at_ms.map(utc),
            finished_at: utc(finished_ms),
            queue_ms: started_ms.saturating_sub(job.created_at_ms),
            run_ms: finished_ms.saturating_sub(started_ms),
            sync_ms: 0,
            total_ms: finished_ms.saturating_sub(job.created_at_ms),
        },
        attempts: vec![Attempt {
            executed_on: node_id.clone(),
            remote_job_id: Some(job.job_id.clone()),
            outcome,
            detail: Some(format!(
                "receipt rebuilt by sync-artifacts from {node_id}'s record of the job (GET /jobs?run_id=..&job_id=..); the local receipt was missing"
            )),
            started_at: utc(started_ms),
            ended_at: utc(finished_ms),
            fate: None,
            ignored_result_sha256: None,
        }],
        placement: Vec::new(),
        requirements: Default::default(),
        replaced_inputs_hash: None,
    })
}
