//! ControllerSupervisor: starts the controller's actors, has them restarted
//! when one stops, and owns shutdown.
//!
//! Not to be confused with [`actix::Supervisor`], the actix helper that
//! restarts one actor: the ControllerSupervisor uses `actix::Supervisor` for
//! each child it starts (each child implements [`actix::Supervised`]), and
//! adds the wiring between them and a single place to shut down.
//!
//! # What is restarted, and what happens to work in flight
//!
//! Every child (NodeProbe, Scheduler, JobRunner, ArtifactSync, LocalRunner)
//! is restarted in place when it stops: same address (so the wiring stays
//! valid), messages already queued kept, `Supervised::restarting` called,
//! then `started` again. A child stops when a handler's work panics (a bug):
//! [`super::crash_guard`] catches the panic, answers the caller with an
//! error and stops the child. It also stops on [`super::messages::Stop`].
//! A panic that escaped would end the child for good (actix does not restart
//! an actor whose task unwound), which is why fallible work runs guarded.
//!
//! On a restart, actix drops the futures the child had spawned into its own
//! context; their callers get an error. Per child:
//! - NodeProbe keeps its nodes and last results and probes again at once.
//! - Scheduler keeps its per-node load counts.
//! - JobRunner drops its jobs in flight: a local step of one is cancelled
//!   (its process tree killed), a remote job runs on on its worker. The
//!   daemon picks each such job up again at once from its store, as a
//!   daemon restart would (re-attaching to the remote job, running a local
//!   one again); a one-shot `submit` reports the error (exit 2). A panic
//!   inside one job's run does not restart the JobRunner: it fails that job
//!   alone, with an `INTERNAL` receipt.
//! - LocalRunner and ArtifactSync run each request in a task of its own, so
//!   a restart leaves requests in flight running; a panic inside one fails
//!   that request with an error.
//!
//! Shutdown ([`Shutdown`]) stops the whole actix system; jobs in flight on
//! workers keep running there.

use super::artifact_sync::ArtifactSync;
use super::job_runner::{JobDeps, JobRunner};
use super::local_runner::LocalRunner;
use super::messages::JobProgress;
use super::node_probe::NodeProbe;
use super::scheduler::Scheduler;
use crate::auth::Keyring;
use crate::config::Settings;
use crate::controller_store::ControllerStore;
use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;

/// Stops every actor and then the actix system.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The addresses of the running controller actors.
#[derive(Clone)]
pub struct Controller {
    pub supervisor: Addr<ControllerSupervisor>,
    pub probe: Addr<NodeProbe>,
    pub scheduler: Addr<Scheduler>,
    pub local: Addr<LocalRunner>,
    pub sync: Addr<ArtifactSync>,
    pub runner: Addr<JobRunner>,
    /// When the actors were started. The NodeProbe probes every node as it
    /// starts, so a one-shot command's `ProbeNow { since: Some(started) }`
    /// waits for those probes instead of probing each node again.
    pub started: std::time::Instant,
}

/// What the controller needs from its caller.
pub struct ControllerOptions {
    pub settings: Arc<Settings>,
    /// None when no secret is set: everything then runs locally.
    pub keyring: Option<Arc<Keyring>>,
    /// The daemon's store (None for one-shot commands).
    pub store: Option<Arc<ControllerStore>>,
    /// Where job progress lines go (submit's stderr, the daemon's log).
    pub progress: Option<Recipient<JobProgress>>,
}

/// The top of the controller's actor tree. See the module docs for how it
/// differs from `actix::Supervisor`.
pub struct ControllerSupervisor;

impl Actor for ControllerSupervisor {
    type Context = Context<Self>;
}

impl ControllerSupervisor {
    /// Starts every actor on the current arbiter and wires them together.
    /// Must be called inside a running actix system.
    pub fn start(opts: ControllerOptions) -> Controller {
        let ControllerOptions { settings, keyring, store, progress } = opts;
        let started = std::time::Instant::now();
        let c = &settings.controller;
        let probe = {
            let (s, k) = (settings.clone(), keyring.clone());
            actix::Supervisor::start(move |_| NodeProbe::new(s.clone(), k.clone()))
        };
        let scheduler = {
            let only = c.controller_only_steps.clone();
            actix::Supervisor::start(move |_| Scheduler::new(only.clone()))
        };
        let local = {
            let s = settings.clone();
            let registry = store.clone().map(|st| st as Arc<dyn crate::process::ChildRegistry>);
            actix::Supervisor::start(move |_| LocalRunner::new(s.clone()).recording_children(registry.clone()))
        };
        let sync = {
            let k = keyring.clone();
            let timeout = Duration::from_secs(c.probe_timeout_s.max(1) * 3);
            // One try more than a poll gets: each retry resumes the download.
            let backoff = crate::backoff::Backoff::from_settings(c).with_extra_attempts(1);
            actix::Supervisor::start(move |_| ArtifactSync::new(k.clone(), timeout, backoff))
        };
        let deps = JobDeps {
            settings: settings.clone(),
            nodes: probe.clone().recipient(),
            node_lost: probe.clone().recipient(),
            directory: probe.clone().recipient(),
            probe_now: probe.clone().recipient(),
            place: scheduler.clone().recipient(),
            load: scheduler.clone().recipient(),
            local: local.clone().recipient(),
            sync: sync.clone().recipient(),
            progress,
            keyring,
            store,
        };
        let runner = actix::Supervisor::start(move |_| JobRunner::new(deps.clone()));
        let supervisor = ControllerSupervisor.start();
        Controller { supervisor, probe, scheduler, local, sync, runner, started }
    }
}

/// Stops the system; jobs in flight on workers keep running there, and the
/// daemon's store lets the next start re-attach to them.
impl Handler<Shutdown> for ControllerSupervisor {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        tracing::info!("controller shutting down");
        ctx.stop();
        System::current().stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::artifact_sync::SyncArtifacts;
    use crate::actors::job_runner::SubmitJob;
    use crate::actors::messages::{GetNodes, Stop};
    use crate::actors::node_probe::NodeHandle;
    use crate::actors::scheduler::PlaceJob;
    use crate::receipt::{JobSpec, JobStatus};
    use std::path::Path;
    use std::time::SystemTime;

    fn settings(state: &Path) -> Arc<Settings> {
        let env = [
            ("RAYVAULT_STATE_DIR", state.to_str().unwrap()),
            ("RAYVAULT_CONTROLLER__LOCAL_CONCURRENCY", "1"),
            // A "speech engine" that takes 30 s, so that a TTS job stays in
            // flight until something stops it.
            ("RAYVAULT_TTS__ENGINE", "command"),
            ("RAYVAULT_TTS__COMMAND_TEMPLATE", "python3 -c \"import time; time.sleep(30)\" {text_file} {out_wav}"),
        ];
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Arc::new(Settings::load_from(None, &env).unwrap())
    }

    /// One second of a 440 Hz tone, 16-bit mono PCM WAV.
    fn tone_wav(path: &Path) {
        let rate = 48_000u32;
        let samples: Vec<i16> = (0..rate).map(|i| ((i as f64 * 440.0 * std::f64::consts::TAU / rate as f64).sin() * 3000.0) as i16).collect();
        let data_len = (samples.len() * 2) as u32;
        let mut b = Vec::with_capacity(44 + data_len as usize);
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data_len).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * 2).to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data_len.to_le_bytes());
        for s in samples {
            b.extend_from_slice(&s.to_le_bytes());
        }
        std::fs::write(path, b).unwrap();
    }

    fn job(job_id: &str, step: &str, payload: serde_json::Value) -> SubmitJob {
        let spec = JobSpec {
            run_id: "restart".into(),
            job_id: job_id.into(),
            step_name: step.into(),
            payload,
            requirements: Default::default(),
            no_fallback: false,
            fallback: None,
            timeout_s: None,
        };
        SubmitJob { spec, resume: None, recovered: false, submitted_at: SystemTime::now(), probed_at: None, admission: None }
    }

    /// Waits (without blocking the arbiter) until `cond` holds, or panics.
    async fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn stopped_children_are_restarted_and_the_controller_keeps_serving_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let wav = dir.path().join("tone.wav");
        tone_wav(&wav);
        let postcheck = serde_json::json!({"audio_paths": [wav]});
        actix::System::new().block_on(async move {
            let c = ControllerSupervisor::start(ControllerOptions { settings: settings.clone(), keyring: None, store: None, progress: None });
            let first = c.runner.send(job("before", "AUDIO_POSTCHECK", postcheck.clone())).await.unwrap();
            assert_eq!(first.status, JobStatus::Succeeded, "{:?}", first.error);

            // A job in flight on the only local slot when the JobRunner stops.
            let in_flight = actix::spawn(c.runner.send(job("in-flight", "TTS_RENDER_CHUNKS", serde_json::json!({"text": "Hello there."}))));
            let log = settings.cluster_dir().join("receipts/restart/in-flight/worker.log");
            wait_for("the slow step to start", 20, || std::fs::read_to_string(&log).unwrap_or_default().contains("running TTS_RENDER_CHUNKS locally")).await;
            let stops: [Recipient<Stop>; 5] = [c.runner.clone().recipient(), c.probe.clone().recipient(), c.scheduler.clone().recipient(), c.local.clone().recipient(), c.sync.clone().recipient()];
            for stop in stops {
                stop.send(Stop).await.expect("the child takes the Stop");
            }
            // Its caller is told, rather than left waiting.
            let dropped = tokio::time::timeout(Duration::from_secs(5), in_flight).await.expect("the caller gets an answer").unwrap();
            assert!(dropped.is_err(), "the in-flight job was dropped with its JobRunner");

            // Every child answers again at the same address.
            assert!(c.probe.send(GetNodes).await.unwrap().is_empty());
            let placed = c.scheduler.send(PlaceJob { step_name: "FFMPEG_PROBE".into(), requirements: Default::default(), nodes: Vec::new() }).await;
            assert!(placed.unwrap().unwrap().ranked.is_empty());
            let node = NodeHandle {
                config: crate::nodes::NodeConfig { node_id: "w".into(), host: "127.0.0.1".into(), port: 9, enabled: true, drain: false },
                compat: crate::actors::messages::Compat::Current,
                probed: false,
                inline_blob_bytes: 0,
                submit_stream: false,
            };
            let synced = c.sync.send(SyncArtifacts { node, remote_job_id: "x".into(), artifacts: None, dest: dir.path().join("sync"), log: None }).await.unwrap();
            assert!(synced.unwrap_err().message.contains("no cluster secret"));

            // A new job runs through all of them. It needs the only local
            // slot, so it also shows the dropped job's step was cancelled:
            // left running, it would hold the slot for 30 s.
            let t0 = std::time::Instant::now();
            let after = c.runner.send(job("after", "AUDIO_POSTCHECK", postcheck)).await.unwrap();
            assert_eq!(after.status, JobStatus::Succeeded, "{:?}", after.error);
            assert_eq!(after.executed_on.as_deref(), Some("local"));
            assert!(t0.elapsed() < Duration::from_secs(15), "the slot was freed at once: {:?}", t0.elapsed());
        });
    }
}
