//! ControllerSupervisor: starts the controller's actors, has them restarted
//! when one stops, and owns shutdown.
//!
//! Not to be confused with [`actix::Supervisor`], the actix helper that
//! restarts one actor: the ControllerSupervisor uses `actix::Supervisor` for
//! each child it starts (each child implements [`actix::Supervised`]), and
//! adds the wiring between them and a single place to shut down.

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
            actix::Supervisor::start(move |_| LocalRunner::new(s.clone()))
        };
        let sync = {
            let k = keyring.clone();
            let timeout = Duration::from_secs(c.probe_timeout_s.max(1) * 3);
            let (attempts, backoff) = (c.max_attempts.max(1) + 1, Duration::from_millis(c.retry_backoff_ms));
            actix::Supervisor::start(move |_| ArtifactSync::new(k.clone(), timeout, attempts, backoff))
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
        Controller { supervisor, probe, scheduler, local, sync, runner }
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
