//! `submit`: through the daemon when one is running, otherwise in-process.
//! Waits for the end by default, shows progress on stderr and prints the
//! receipt JSON on stdout. Through the daemon, a daemon that stops
//! answering is retried for `controller.daemon_lost_after_s`; then `submit`
//! exits 2 saying that the job goes on in the daemon and how to follow it.

use crate::cli::SubmitArgs;
use crate::daemon_client::DaemonClient;
use actix::prelude::*;
use anyhow::{bail, Context as _};
use rayvault::actors::job_runner::{CancelJob, SubmitJob};
use rayvault::actors::messages::{JobProgress, ProbeNow};
use rayvault::actors::supervisor::{ControllerOptions, ControllerSupervisor};
use rayvault::auth::Keyring;
use rayvault::config::Settings;
use rayvault::receipt::{JobRequirements, JobSpec, Receipt};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Builds and checks the job spec from the flags (errors mean exit 2).
pub fn spec_from(args: &SubmitArgs) -> anyhow::Result<JobSpec> {
    let payload: serde_json::Value = serde_json::from_str(&args.payload_json)
        .map_err(|e| anyhow::anyhow!("--payload-json is not valid JSON: {e}"))?;
    let requirements = match &args.requirements_json {
        Some(t) => JobRequirements::parse(t).map_err(anyhow::Error::msg)?,
        None => JobRequirements::default(),
    };
    let spec = JobSpec {
        run_id: args.run_id.clone(),
        job_id: args.job_id.clone(),
        step_name: args.step_name.clone(),
        payload,
        requirements,
        no_fallback: args.no_fallback,
        fallback: match &args.fallback {
            Some(f) => Some(rayvault::receipt::FallbackMode::parse(f).map_err(|e| anyhow::anyhow!("--fallback: {e}"))?),
            None => None,
        },
        timeout_s: args.timeout,
    };
    spec.validate().map_err(anyhow::Error::msg)?;
    if args.timeout == Some(0) {
        bail!("--timeout must be at least 1 second");
    }
    Ok(spec)
}

/// Runs `submit`.
pub fn run(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>, args: SubmitArgs) -> anyhow::Result<u8> {
    let spec = spec_from(&args)?;
    // A malformed nodes.json is a configuration error (exit 2), not a
    // reason to silently run everything locally.
    rayvault::nodes::load(&rayvault::nodes::nodes_path(&settings.cluster_dir()))?;
    System::new().block_on(async move {
        if let Some(k) = &keyring {
            if let Some(client) = DaemonClient::connect(&settings, k.clone()).await? {
                return via_daemon(&settings, client, spec, args.no_wait).await;
            }
        }
        if args.no_wait {
            bail!("--no-wait needs a running daemon (start one with `rayvault-orchestrator daemon`); without it, submit runs the job in this process and must wait");
        }
        in_process(settings, keyring, spec).await
    })
}

fn print_receipt(receipt: &Receipt) -> anyhow::Result<u8> {
    // One plain line for every local fallback, whatever else is shown.
    if let (Some("local"), Some(reason)) = (receipt.executed_on.as_deref(), &receipt.fallback_reason) {
        eprintln!("ran locally: {reason}");
    }
    println!("{}", serde_json::to_string_pretty(receipt)?);
    Ok(receipt.exit_code() as u8)
}

/// Prints job progress lines on stderr.
pub struct StderrProgress;

impl Actor for StderrProgress {
    type Context = Context<Self>;
}

/// Writes one progress line.
impl Handler<JobProgress> for StderrProgress {
    type Result = ();
    fn handle(&mut self, msg: JobProgress, _: &mut Context<Self>) {
        eprintln!("[{}] {}", msg.key, msg.line);
    }
}

async fn in_process(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>, spec: JobSpec) -> anyhow::Result<u8> {
    let progress = StderrProgress.start();
    let controller = ControllerSupervisor::start(ControllerOptions {
        settings,
        keyring,
        store: None,
        progress: Some(progress.recipient()),
    });
    // One probe round first, so the placement sees fresh caps.
    controller.probe.send(ProbeNow { node_id: None }).await.context("node probe stopped")?;
    let key = spec.key();
    let job = controller.runner.send(SubmitJob { spec, resume: None, submitted_at: SystemTime::now() });
    let runner = controller.runner.clone();
    // Ctrl-C cancels the job (on the worker too) and still prints a receipt.
    actix::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("[{key}] cancelling (Ctrl-C)");
            let _ = runner.send(CancelJob { key }).await;
        }
    });
    let receipt = job.await.context("job runner stopped")?;
    let code = print_receipt(&receipt)?;
    keep_until_written().await;
    Ok(code)
}

/// A receipt that could not be written because the disk is full is kept in
/// memory; this one-shot process waits (a while) for space to be freed so
/// it can write it, and says what to do meanwhile.
async fn keep_until_written() {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut told = false;
    loop {
        let left = tokio::task::spawn_blocking(rayvault::receipt::write_pending).await.unwrap_or(0);
        if left == 0 {
            if told {
                eprintln!("the receipt is written now");
            }
            return;
        }
        if Instant::now() >= deadline {
            for dir in rayvault::receipt::pending_dirs() {
                eprintln!("DISK_FULL: the receipt for {} was never written: the disk stayed full. It is printed above; save it as {}", dir.display(), dir.join(rayvault::receipt::RECEIPT_FILE).display());
            }
            return;
        }
        if !told {
            for dir in rayvault::receipt::pending_dirs() {
                eprintln!("DISK_FULL: no space to write the receipt into {}; free some space there and it is written at once (waiting up to 2 minutes)", dir.display());
            }
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn via_daemon(settings: &Settings, client: DaemonClient, spec: JobSpec, no_wait: bool) -> anyhow::Result<u8> {
    let key = spec.key();
    let accepted = client.submit(&spec).await?;
    if no_wait {
        println!("{}", serde_json::to_string_pretty(&accepted)?);
        return Ok(0);
    }
    eprintln!("[{key}] handed to the daemon at {}", client.base());
    let give_up_after = Duration::from_secs(settings.controller.daemon_lost_after_s.max(1));
    let mut from = 0usize;
    // Since when the daemon has not answered, while it does not.
    let mut silent_since: Option<Instant> = None;
    let mut retries = 0u32;
    loop {
        // Long-polls are kept short enough, and once the daemon stopped
        // answering it is only asked briefly, so that a daemon that hangs is
        // given up on not much later than one that is gone.
        let (wait_s, slack) = if silent_since.is_some() { (0, Duration::from_secs(2)) } else { (10, Duration::from_secs(5)) };
        let sent = Instant::now();
        match client.wait(&key, wait_s, from, slack).await {
            Ok(view) => {
                if silent_since.take().is_some() {
                    eprintln!("[{key}] the daemon answers again");
                }
                retries = 0;
                for line in &view.progress {
                    eprintln!("[{key}] {line}");
                }
                from = view.progress_next;
                if let Some(r) = view.receipt {
                    return print_receipt(&r);
                }
            }
            Err(e) if crate::daemon_client::is_unreachable(&e) => {
                // A long-poll's answer is due `wait_s` after it was sent at
                // the latest: silence counts from then, or from the failure
                // if that came sooner (nobody listening).
                let due = (sent + Duration::from_secs(wait_s)).min(Instant::now());
                let since = *silent_since.get_or_insert(due);
                if since.elapsed() >= give_up_after {
                    return Err(anyhow::anyhow!("{}", lost_daemon_message(settings, &client, &spec, since.elapsed())));
                }
                retries += 1;
                eprintln!("[{key}] the daemon is not answering ({e}); retrying");
                let pause = Duration::from_millis(250 * retries as u64).min(Duration::from_secs(2));
                tokio::time::sleep(pause.min(give_up_after.saturating_sub(since.elapsed()))).await;
            }
            // The daemon answered with an error (say, it no longer knows the
            // job): waiting longer would not change that.
            Err(e) => return Err(e.context(format!("the daemon refused to report on {key}"))),
        }
    }
}

/// What `submit` says when it stops waiting on a daemon that does not
/// answer: the job was handed over and goes on there, and how to follow it.
fn lost_daemon_message(settings: &Settings, client: &DaemonClient, spec: &JobSpec, silent: Duration) -> String {
    let receipt = rayvault::receipt::receipt_dir(&settings.cluster_dir(), &spec.run_id, &spec.job_id).join(rayvault::receipt::RECEIPT_FILE);
    format!(
        "stopped waiting for {key}: the daemon at {base} has not answered for {secs} s. The job was handed to the daemon \
         and goes on there (if the daemon was stopped, it resumes the job when it starts again); this submit only stopped \
         watching it. Follow it with `rayvault-orchestrator status`; its receipt will be written to {receipt}",
        key = spec.key(),
        base = client.base(),
        secs = silent.as_secs(),
        receipt = std::path::absolute(&receipt).unwrap_or(receipt).display(),
    )
}
