//! `submit`: through the daemon when one is running, otherwise in-process.
//! Waits for the end by default, shows progress on stderr and prints the
//! receipt JSON on stdout.

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
use std::time::{Duration, SystemTime};

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
                return via_daemon(client, spec, args.no_wait).await;
            }
        }
        if args.no_wait {
            bail!("--no-wait needs a running daemon (start one with `rayvault-orchestrator daemon`); without it, submit runs the job in this process and must wait");
        }
        in_process(settings, keyring, spec).await
    })
}

fn print_receipt(receipt: &Receipt) -> anyhow::Result<u8> {
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
    print_receipt(&receipt)
}

async fn via_daemon(client: DaemonClient, spec: JobSpec, no_wait: bool) -> anyhow::Result<u8> {
    let key = spec.key();
    let accepted = client.submit(&spec).await?;
    if no_wait {
        println!("{}", serde_json::to_string_pretty(&accepted)?);
        return Ok(0);
    }
    eprintln!("[{key}] handed to the daemon at {}", client.base());
    let mut from = 0usize;
    let mut failures = 0u32;
    loop {
        match client.wait(&key, 20, from).await {
            Ok(view) => {
                failures = 0;
                for line in &view.progress {
                    eprintln!("[{key}] {line}");
                }
                from = view.progress_next;
                if let Some(r) = view.receipt {
                    return print_receipt(&r);
                }
            }
            Err(e) => {
                failures += 1;
                if failures > 5 {
                    return Err(e.context("lost contact with the daemon; the job continues there, see `rayvault-orchestrator status`"));
                }
                eprintln!("[{key}] daemon not answering ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500 * failures as u64)).await;
            }
        }
    }
}
