//! `logs`, `wait` and `result`: one job, by its ids, whether the daemon, a
//! `submit` process on this machine (see `running`), or nobody runs it now.

use crate::cli::{LogsArgs, ReceiptArgs};
use crate::daemon_client::DaemonClient;
use crate::progress::Progress;
use crate::submit::{print_receipt, Output};
use actix::prelude::*;
use anyhow::{anyhow, bail, Context as _};
use rayvault::auth::Keyring;
use rayvault::config::Settings;
use rayvault::controller_store::{Phase, RemoteRef};
use rayvault::receipt::{receipt_dir, Receipt, LOG_FILE, RECEIPT_FILE};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often a followed log or a waited-for submit process is looked at.
const POLL: Duration = Duration::from_millis(250);

/// Who runs a job right now.
enum Runner {
    /// The daemon; `remote` is its worker job once there is one.
    Daemon { client: DaemonClient, remote: Option<RemoteRef> },
    /// A `submit` process on this machine.
    Submit { pid: u32, remote: Option<RemoteRef> },
    /// Nobody: the job ended (or never ran).
    Nobody,
}

impl Runner {
    fn remote(&self) -> Option<&RemoteRef> {
        match self {
            Runner::Daemon { remote, .. } | Runner::Submit { remote, .. } => remote.as_ref(),
            Runner::Nobody => None,
        }
    }
}

/// Finds who runs `run_id/job_id`: the daemon first (when a secret is set
/// and one answers), then a registered `submit` process.
async fn runner(settings: &Settings, keyring: Option<&Arc<Keyring>>, run_id: &str, job_id: &str) -> anyhow::Result<Runner> {
    if let Some(k) = keyring {
        if let Some(client) = DaemonClient::connect(settings, k.clone()).await? {
            if let Some(view) = client.job(&format!("{run_id}/{job_id}")).await? {
                if view.phase != Phase::Finished {
                    return Ok(Runner::Daemon { client, remote: view.remote });
                }
            }
        }
    }
    Ok(match crate::running::find(&settings.cluster_dir(), run_id, job_id) {
        Some(reg) => Runner::Submit { pid: reg.pid, remote: reg.remote },
        None => Runner::Nobody,
    })
}

/// True while the runner still runs the job.
async fn still_running(settings: &Settings, runner: &Runner, run_id: &str, job_id: &str) -> bool {
    match runner {
        Runner::Daemon { client, .. } => match client.job(&format!("{run_id}/{job_id}")).await {
            Ok(Some(v)) => v.phase != Phase::Finished,
            _ => false,
        },
        Runner::Submit { pid, .. } => crate::running::find(&settings.cluster_dir(), run_id, job_id).is_some_and(|r| r.pid == *pid),
        Runner::Nobody => false,
    }
}

fn receipt_file(settings: &Settings, run_id: &str, job_id: &str) -> PathBuf {
    let file = receipt_dir(&settings.cluster_dir(), run_id, job_id).join(RECEIPT_FILE);
    std::path::absolute(&file).unwrap_or(file)
}

/// `result`: prints the receipt; exit code from it, 2 when there is none.
pub fn result(settings: Arc<Settings>, args: ReceiptArgs) -> anyhow::Result<u8> {
    let (run_id, job_id) = (&args.job.run_id, &args.job.job_id);
    let file = receipt_file(&settings, run_id, job_id);
    let receipt = match Receipt::read(file.parent().unwrap_or(Path::new("."))) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no receipt for {run_id}/{job_id}: {} does not exist (the job has not ended, or was never submitted with these ids)", file.display())
        }
        Err(e) => bail!("cannot read the receipt {}: {e}", file.display()),
    };
    print_receipt(&settings, &receipt, Output { json: args.json, quiet: true, announce_fallback: false })
}

/// `wait`: blocks until the job ends and exits with its exit code.
pub fn wait(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>, args: ReceiptArgs) -> anyhow::Result<u8> {
    let (run_id, job_id) = (args.job.run_id.clone(), args.job.job_id.clone());
    let out = Output { json: args.json, quiet: false, announce_fallback: true };
    System::new().block_on(async move {
        let file = receipt_file(&settings, &run_id, &job_id);
        match runner(&settings, keyring.as_ref(), &run_id, &job_id).await? {
            Runner::Daemon { client, .. } => {
                let progress = Progress::new(&format!("{run_id}/{job_id}"), false);
                progress.spawn_ticker();
                progress.line(&format!("waiting for the daemon at {}", client.base()));
                let code = crate::submit::follow_daemon(&settings, &client, &run_id, &job_id, &progress, out).await;
                progress.finish();
                code
            }
            Runner::Submit { pid, .. } => {
                let progress = Progress::new(&format!("{run_id}/{job_id}"), false);
                progress.spawn_ticker();
                progress.line(&format!("waiting for the submit process {pid} on this machine"));
                while crate::running::find(&settings.cluster_dir(), &run_id, &job_id).is_some_and(|r| r.pid == pid) {
                    tokio::time::sleep(POLL).await;
                }
                progress.finish();
                let receipt = Receipt::read(file.parent().unwrap_or(Path::new("."))).with_context(|| {
                    format!("the submit process {pid} ended without writing {} (was it killed?)", file.display())
                })?;
                print_receipt(&settings, &receipt, out)
            }
            Runner::Nobody => match Receipt::read(file.parent().unwrap_or(Path::new("."))) {
                Ok(receipt) => print_receipt(&settings, &receipt, out),
                Err(_) => bail!(
                    "nothing to wait for: {run_id}/{job_id} is not running (no daemon or submit on this machine runs it) \
                     and it has no receipt ({} does not exist)",
                    file.display()
                ),
            },
        }
    })
}

/// `logs`: prints the job's `worker.log`; with `--follow`, keeps printing
/// until the job ends. A running remote job's log is read from its worker;
/// a local one's from the receipt folder, where it is written as it runs.
pub fn logs(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>, args: LogsArgs) -> anyhow::Result<u8> {
    let (run_id, job_id) = (args.job.run_id.clone(), args.job.job_id.clone());
    System::new().block_on(async move {
        let runner = runner(&settings, keyring.as_ref(), &run_id, &job_id).await?;
        let local_log = receipt_dir(&settings.cluster_dir(), &run_id, &job_id).join(LOG_FILE);
        if let (Some(remote), Some(k)) = (runner.remote(), keyring.as_ref()) {
            return remote_log(&settings, k.clone(), remote, args.follow).await;
        }
        if matches!(runner, Runner::Nobody) {
            return match std::fs::read(&local_log) {
                Ok(bytes) => {
                    std::io::stdout().write_all(&bytes)?;
                    Ok(0)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                    "no log for {run_id}/{job_id}: it is not running (no daemon or submit on this machine runs it) and {} does not exist",
                    std::path::absolute(&local_log).unwrap_or(local_log.clone()).display()
                ),
                Err(e) => bail!("cannot read {}: {e}", local_log.display()),
            };
        }
        // Running here, or not yet on a worker: the local log as it grows.
        let mut offset = 0u64;
        loop {
            let running = args.follow && still_running(&settings, &runner, &run_id, &job_id).await;
            offset = print_from(&local_log, offset)?;
            if !running {
                return Ok(0);
            }
            // A job that moved to a worker meanwhile is followed there.
            if let Some(k) = keyring.as_ref() {
                if let Runner::Daemon { client, .. } = &runner {
                    if let Ok(Some(view)) = client.job(&format!("{run_id}/{job_id}")).await {
                        if let Some(remote) = view.remote {
                            return remote_log(&settings, k.clone(), &remote, true).await;
                        }
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    })
}

/// Prints `path` from byte `offset` on; returns the new offset. A missing
/// file prints nothing.
fn print_from(path: &Path, offset: u64) -> anyhow::Result<u64> {
    use std::io::{Read as _, Seek as _};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(offset),
        Err(e) => return Err(anyhow!("cannot read {}: {e}", path.display())),
    };
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&buf)?;
    out.flush()?;
    Ok(offset + buf.len() as u64)
}

/// Prints a worker job's log from its worker (`GET /jobs/{id}/log`); with
/// `follow`, until the worker says the log is complete.
async fn remote_log(settings: &Settings, keyring: Arc<Keyring>, remote: &RemoteRef, follow: bool) -> anyhow::Result<u8> {
    let nodes_file = rayvault::nodes::nodes_path(&settings.cluster_dir());
    let nodes = rayvault::nodes::load(&nodes_file)?.unwrap_or_default();
    let node = nodes.iter().find(|n| n.node_id == remote.node_id).ok_or_else(|| {
        anyhow!("the job runs on {}, which is no longer in {}; its log arrives in the receipt folder when it ends", remote.node_id, nodes_file.display())
    })?;
    let client = rayvault::client::WorkerClient::new(&node.base_url(), &node.node_id, keyring);
    let mut offset = 0u64;
    loop {
        let chunk = client.log(&remote.remote_job_id, offset).await.map_err(|e| {
            anyhow!("cannot read the log of job {} on {}: {e}", remote.remote_job_id, remote.node_id)
        })?;
        {
            let mut out = std::io::stdout().lock();
            out.write_all(chunk.data.as_bytes())?;
            out.flush()?;
        }
        let nothing_new = chunk.next_offset == offset;
        offset = chunk.next_offset;
        if chunk.complete || (!follow && (nothing_new || offset >= chunk.size)) {
            return Ok(0);
        }
        if nothing_new {
            tokio::time::sleep(POLL).await;
        }
    }
}
