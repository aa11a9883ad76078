//! What the HTTP handlers share: the job store and paths (through the
//! executors' environment), the verifier, the executor addresses and the
//! limits.

use actix::Addr;
use rayvault::actors::executor::{ExecutorEnv, StepExecutor};
use rayvault::auth::Verifier;
use rayvault::steps::StepName;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Request limits from `[worker]` in the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub max_blob_bytes: u64,
    pub max_jobs_in_flight: u64,
    pub max_wait_s: u64,
    /// Longest wait for a JSON body (`worker.body_timeout_s`).
    pub body_timeout: std::time::Duration,
}

/// Shared by every handler (inside `web::Data`).
pub struct AppState {
    pub worker_id: String,
    pub env: Arc<ExecutorEnv>,
    pub verifier: Arc<Verifier>,
    pub executors: HashMap<StepName, Addr<StepExecutor>>,
    pub limits: Limits,
    /// The latest host capability probe (`None` until the first one ends),
    /// refreshed in the background so that `/caps` never runs tools itself.
    pub host_caps: tokio::sync::watch::Sender<Option<rayvault::caps::HostCaps>>,
    /// Set once shutdown starts: new jobs are refused with 503.
    pub shutting_down: Arc<AtomicBool>,
    /// Set while draining (`POST /drain`): new jobs are refused with 503
    /// `DRAINING`; kept in the state folder across restarts.
    pub drain: Arc<crate::drain::DrainFlag>,
    /// Empty files made ahead of time for inline inputs
    /// ([`crate::spares`]).
    pub spares: Arc<crate::spares::Spares>,
    /// The step and inputs of the jobs started ahead of their acceptance
    /// whose commit has not returned yet: a second submission of the same
    /// job meanwhile is not started early, so two copies never run at once.
    pub early: dashmap::DashSet<(StepName, String)>,
}
