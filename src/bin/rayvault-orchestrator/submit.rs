//! `submit`: through the daemon when one is running, otherwise in-process.
//! Waits for the end by default, shows progress on stderr (see `progress`)
//! and prints a summary of the receipt on stdout, or the receipt JSON with
//! `--json`/`--quiet`. Through the daemon, a daemon that stops
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
use crate::progress::Progress;
use crate::running::{Registered, Registration};
use rayvault::controller_store::{ControllerStore, Phase, StoredJob};
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
    let out = Output { json: args.json || args.quiet, quiet: args.quiet, announce_fallback: true };
    System::new().block_on(async move {
        if let Some(k) = &keyring {
            if let Some(client) = DaemonClient::connect(&settings, k.clone()).await? {
                return via_daemon(&settings, client, spec, args.no_wait, out).await;
            }
        }
        if args.no_wait {
            bail!("--no-wait needs a running daemon (start one with `rayvault-orchestrator daemon`); without it, submit runs the job in this process and must wait");
        }
        in_process(settings, keyring, spec, out).await
    })
}

/// How `submit`, `wait` and `result` print a receipt.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// The receipt JSON on stdout (else a summary for people).
    pub json: bool,
    /// No progress on stderr.
    pub quiet: bool,
    /// Say `ran locally: <reason>` on stderr for a local fallback (`submit`
    /// and `wait`; `result` only reports).
    pub announce_fallback: bool,
}

/// Prints a receipt (JSON or a summary on stdout; on stderr the one
/// `ran locally: <reason>` line of a local fallback, whatever `quiet` says)
/// and returns its exit code.
pub fn print_receipt(settings: &Settings, receipt: &Receipt, out: Output) -> anyhow::Result<u8> {
    let v = serde_json::to_value(receipt)?;
    if out.announce_fallback && v["executed_on"] == "local" {
        if let Some(reason) = v["fallback_reason"].as_str().filter(|r| !r.is_empty()) {
            eprintln!("{} {reason}", crate::progress::KEEP_PREFIX);
        }
    }
    if out.json {
        // From the struct, so that the fields keep their order.
        println!("{}", serde_json::to_string_pretty(receipt)?);
    } else {
        let file = rayvault::receipt::receipt_dir(&settings.cluster_dir(), &receipt.run_id, &receipt.job_id).join(rayvault::receipt::RECEIPT_FILE);
        let file = std::path::absolute(&file).unwrap_or(file);
        print!("{}", crate::render::receipt_summary(&v, &file));
    }
    exit_code(receipt)
}

/// The process exit code of a receipt (see [`Receipt::exit_code`]).
pub fn exit_code(receipt: &Receipt) -> anyhow::Result<u8> {
    let code = receipt.exit_code();
    u8::try_from(code).map_err(|_| anyhow::anyhow!("the receipt's exit code {code} is out of range"))
}

/// Sends job progress lines to a [`Progress`].
pub struct ProgressActor(pub Progress);

impl Actor for ProgressActor {
    type Context = Context<Self>;
}

/// Shows one progress line.
impl Handler<JobProgress> for ProgressActor {
    type Result = ();
    fn handle(&mut self, msg: JobProgress, _: &mut Context<Self>) {
        self.0.line(&msg.line);
    }
}

async fn in_process(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>, spec: JobSpec, out: Output) -> anyhow::Result<u8> {
    let key = spec.key();
    let cluster = settings.cluster_dir();
    // Registered so that `cancel`, `wait` and `logs` in another terminal
    // find this job (see crate::running).
    let registered = Arc::new(Registered::claim(&cluster, &spec.run_id, &spec.job_id)?);
    let store_path = registered.store_path();
    let store = tokio::task::spawn_blocking(move || ControllerStore::open(&store_path)).await??;
    let store = Arc::new(store);
    let submitted = SystemTime::now();
    let record = StoredJob { spec: spec.clone(), phase: Phase::Queued, submitted_at_ms: 0, remote: None, receipt: None };
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.put(&record)).await??;
    let progress = Progress::new(&key, out.quiet);
    progress.spawn_ticker();
    progress.watch_folder(rayvault::receipt::receipt_dir(&cluster, &spec.run_id, &spec.job_id));
    let sink = ProgressActor(progress.clone()).start();
    let controller = ControllerSupervisor::start(ControllerOptions {
        settings: settings.clone(),
        keyring,
        store: Some(store.clone()),
        progress: Some(sink.recipient()),
    });
    // One probe round first, so the placement sees fresh caps: the one the
    // new NodeProbe starts with, waited for (`since`).
    progress.line("probing the nodes");
    let probed_at = controller.started;
    controller.probe.send(ProbeNow { node_id: None, since: Some(probed_at) }).await.context("node probe stopped")?;
    let job = controller.runner.send(SubmitJob { spec, resume: None, recovered: false, submitted_at: submitted, probed_at: Some(probed_at), admission: None });
    let runner = controller.runner.clone();
    // Ctrl-C (or `cancel` from another terminal, which sends SIGINT) cancels
    // the job, on the worker too, and still prints a receipt.
    let (p, k) = (progress.clone(), key.clone());
    actix::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            p.note("cancelling (interrupted)");
            let _ = runner.send(CancelJob { key: k }).await;
        }
    });
    // Copies the worker job id into the registration once it exists.
    let (reg, k) = (Arc::downgrade(&registered), key.clone());
    actix::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(300));
        loop {
            every.tick().await;
            let (s, k2) = (store.clone(), k.clone());
            if let Ok(Ok(Some(j))) = tokio::task::spawn_blocking(move || s.get(&k2)).await {
                if let Some(remote) = j.remote {
                    let Some(reg) = reg.upgrade() else { return };
                    let _ = reg.write(&Registration { pid: std::process::id(), remote: Some(remote) });
                    return;
                }
            }
        }
    });
    let receipt = job.await.context("job runner stopped")?;
    progress.finish();
    drop(registered);
    let code = print_receipt(&settings, &receipt, out)?;
    keep_until_written(&receipt).await;
    Ok(code)
}
/// A receipt that could not be written because the disk is full is kept in
/// memory; this one-shot process waits (a while) for space to be freed so
/// it can write it, and says what to do meanwhile.
async fn keep_until_written(receipt: &Receipt) {
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
                eprintln!(
                    "DISK_FULL: the receipt for {} was never written: the disk stayed full. Here it is; save it as {}",
                    dir.display(),
                    dir.join(rayvault::receipt::RECEIPT_FILE).display()
                );
            }
            eprintln!("{}", serde_json::to_string_pretty(receipt).unwrap_or_default());
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

async fn via_daemon(settings: &Settings, client: DaemonClient, spec: JobSpec, no_wait: bool, out: Output) -> anyhow::Result<u8> {
    let key = spec.key();
    let accepted = client.submit(&spec).await?;
    if no_wait {
        if out.json {
            println!("{}", serde_json::to_string_pretty(&accepted)?);
        } else {
            let again = if accepted["already_running"] == true { " (it was already running there)" } else { "" };
            println!(
                "{key} handed to the daemon at {}{again}.\nWait for it: rayvault-orchestrator wait --run-id {} --job-id {}\nIts log: rayvault-orchestrator logs --run-id {} --job-id {} --follow",
                client.base(), spec.run_id, spec.job_id, spec.run_id, spec.job_id
            );
        }
        return Ok(0);
    }
    let progress = Progress::new(&key, out.quiet);
    progress.spawn_ticker();
    progress.watch_folder(rayvault::receipt::receipt_dir(&settings.cluster_dir(), &spec.run_id, &spec.job_id));
    progress.line(&format!("handed to the daemon at {}", client.base()));
    let code = follow_daemon(settings, &client, &spec.run_id, &spec.job_id, &progress, out).await;
    progress.finish();
    code
}

/// The pauses between asks of a daemon that does not answer: 250 ms,
/// doubling, at most 2 s; tries are bounded by `daemon_lost_after_s`, not
/// by a count.
const DAEMON_RETRY: rayvault::backoff::Backoff =
    rayvault::backoff::Backoff::new(Duration::from_millis(250), u32::MAX).capped_at(Duration::from_secs(2));

/// Follows a job in the daemon until it ends, then prints its receipt.
pub async fn follow_daemon(settings: &Settings, client: &DaemonClient, run_id: &str, job_id: &str, progress: &Progress, out: Output) -> anyhow::Result<u8> {
    let key = format!("{run_id}/{job_id}");
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
                    progress.note("the daemon answers again");
                }
                retries = 0;
                for line in &view.progress {
                    progress.line(line);
                }
                from = view.progress_next;
                if let Some(r) = view.receipt {
                    progress.finish();
                    return print_receipt(settings, &r, out);
                }
            }
            Err(e) if crate::daemon_client::is_unreachable(&e) => {
                // A long-poll's answer is due `wait_s` after it was sent at
                // the latest: silence counts from then, or from the failure
                // if that came sooner (nobody listening).
                let due = (sent + Duration::from_secs(wait_s)).min(Instant::now());
                let since = *silent_since.get_or_insert(due);
                if since.elapsed() >= give_up_after {
                    return Err(anyhow::anyhow!("{}", lost_daemon_message(settings, client, run_id, job_id, since.elapsed())));
                }
                retries += 1;
                progress.note(&format!("the daemon is not answering ({e}); retrying"));
                let pause = DAEMON_RETRY.delay(retries);
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
fn lost_daemon_message(settings: &Settings, client: &DaemonClient, run_id: &str, job_id: &str, silent: Duration) -> String {
    let receipt = rayvault::receipt::receipt_dir(&settings.cluster_dir(), run_id, job_id).join(rayvault::receipt::RECEIPT_FILE);
    format!(
        "stopped waiting for {run_id}/{job_id}: the daemon at {base} has not answered for {secs} s. The job was handed to the daemon \
         and goes on there (if the daemon was stopped, it resumes the job when it starts again); this submit only stopped \
         watching it. Follow it with `rayvault-orchestrator status` or `rayvault-orchestrator wait --run-id {run_id} --job-id {job_id}`; its receipt will be written to {receipt}",
        base = client.base(),
        secs = silent.as_secs(),
        receipt = std::path::absolute(&receipt).unwrap_or(receipt).display(),
    )
}
