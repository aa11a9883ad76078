//! Messages and plain data types that several controller actors share.
//!
//! Each actor's own messages sit at the top of its file; what lives here is
//! what crosses between actors: node snapshots and node look-ups
//! (NodeProbe -> Scheduler and JobRunner), placements and load counts
//! (Scheduler <-> JobRunner), local runs (JobRunner -> LocalRunner),
//! artifact syncs (JobRunner -> ArtifactSync), and job progress. Actors
//! import one another only through this module (`tests/architecture.rs`
//! checks it). These are plain Rust types; nothing here knows the wire
//! format.

use super::crash_guard::Panicked;
use crate::artifacts::ArtifactEntry;
use crate::error::{ErrorCode, StepError};
use crate::joblog::JobLog;
use crate::nodes::NodeHandle;
use crate::receipt::{JobRequirements, NodeExplanation, ReceiptArtifact};
use crate::steps::{StepName, StepOutput};
use actix::prelude::*;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use crate::client::probe::ProbeFailure;
pub use crate::nodes::{Compat, NodeCaps, StepSet};

/// Whether a node can be scheduled on right now.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeHealth {
    /// `enabled: false` in nodes.json.
    Disabled,
    /// Enabled but not probed yet.
    Unprobed,
    Up,
    /// The reason the last probe failed, e.g. `unreachable (connection refused)`.
    Down(Arc<str>),
    /// The node answers but cannot be used until someone fixes the
    /// configuration: it refused our credentials (`AUTH_REJECTED`), it is
    /// another worker (`NODE_ID_MISMATCH`), or this controller has no
    /// secret (`SECRET_MISSING`). Not unavailability: a job that finds no
    /// other node fails instead of running locally (unless `fallback =
    /// "always"`).
    Misconfigured(ErrorCode, Arc<str>),
    /// The worker answers `/health` with `"status": "degraded"` (short of
    /// disk space, or its store failed): no new jobs go there.
    Degraded(Arc<str>),
    /// Draining: no new jobs go there, and the jobs already running there
    /// finish. Unavailability, like a down node: `fallback =
    /// "unavailable"` may run a job locally.
    Draining(DrainedBy),
}

/// Who asked a node to drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainedBy {
    /// `"drain": true` in nodes.json (`rayvault-orchestrator nodes drain`).
    NodesJson,
    /// The worker itself (`POST /drain`, `rayvault-worker drain --on`): its
    /// `/health` says `"draining": true`.
    Worker,
}

impl DrainedBy {
    /// Why the node takes no new jobs, as a placement reason.
    pub fn reason(self) -> &'static str {
        match self {
            DrainedBy::NodesJson => "draining (nodes.json)",
            DrainedBy::Worker => "draining (the worker was asked to; `rayvault-worker drain --off` on it takes jobs again)",
        }
    }
}

impl NodeHealth {
    /// The probe outcome as the status word `health` and `status` print.
    pub fn word(&self) -> &'static str {
        match self {
            NodeHealth::Disabled => "disabled",
            NodeHealth::Unprobed => "unprobed",
            NodeHealth::Up => "up",
            NodeHealth::Down(_) => "down",
            NodeHealth::Misconfigured(..) => "misconfigured",
            NodeHealth::Degraded(_) => "degraded",
            NodeHealth::Draining(_) => "draining",
        }
    }
}

/// A failed probe's verdict as the node's health.
impl From<ProbeFailure> for NodeHealth {
    fn from(f: ProbeFailure) -> NodeHealth {
        match f {
            ProbeFailure::Down(r) => NodeHealth::Down(r.into()),
            ProbeFailure::Misconfigured(c, r) => NodeHealth::Misconfigured(c, r.into()),
            ProbeFailure::Degraded(r) => NodeHealth::Degraded(r.into()),
            ProbeFailure::Draining => NodeHealth::Draining(DrainedBy::Worker),
        }
    }
}

/// What a worker said about one step at the last probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Jobs of the step it held (running and queued), from every
    /// controller; None from a worker that does not report it.
    pub in_flight: Option<u32>,
    /// The step's concurrency there; None when the worker did not say.
    pub concurrency: Option<u32>,
}

/// What a worker said about its own load at the last probe (its `/health`
/// `load`, with the concurrency of `/caps` for a worker that has no
/// `load`), per step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportedLoad {
    pub steps: Vec<(StepName, StepReport)>,
}

impl ReportedLoad {
    /// The report for one step (all None when the worker said nothing of it).
    pub fn get(&self, step: StepName) -> StepReport {
        self.steps.iter().find(|(s, _)| *s == step).map(|(_, r)| *r).unwrap_or_default()
    }
}

/// How busy a node is for the step being placed, as the Scheduler reckons
/// it when it places a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slots {
    /// Jobs of the step in flight there: this controller's reservations
    /// plus `others`.
    pub busy: u32,
    /// Of `busy`, the jobs of other controllers: what the worker reported
    /// at the last probe minus this controller's jobs there at that moment
    /// (never below 0).
    pub others: u32,
    /// The step's concurrency there; 0 when unknown, which ranks like 1.
    pub of: u32,
}

impl Slots {
    /// The concurrency used for ranking (an unknown one counts as 1).
    pub fn capacity(self) -> u32 {
        self.of.max(1)
    }

    /// True while a job of the step would start at once there.
    pub fn free(self) -> bool {
        self.busy < self.capacity()
    }
}

/// One node as the scheduler sees it at a moment.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    pub node_id: Arc<str>,
    pub health: NodeHealth,
    pub caps: Option<NodeCaps>,
    /// The node's own report of its load at the last probe (None before a
    /// successful probe).
    pub reported: Option<Arc<ReportedLoad>>,
    /// Filled by the Scheduler for the step it places (NodeProbe leaves
    /// the default).
    pub load: Slots,
    /// When the node was last probed (None: never).
    pub probed_at: Option<std::time::Instant>,
}

/// The scheduler's decision for one job.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementReport {
    /// Eligible node ids, best first.
    pub ranked: Vec<Arc<str>>,
    /// Per node: eligible or why not.
    pub explanations: Vec<NodeExplanation>,
    /// The step may only run on the controller (never placed remotely).
    pub controller_only: bool,
    /// The first ranked node, whose in-flight count the Scheduler raised by
    /// one when it placed the job (so that placements made at the same
    /// moment spread out). The JobRunner owns that slot: it releases it
    /// with a [`NodeLoad`] of -1 when the job leaves the
    /// node, or at once if it does not use the node.
    pub reserved: Option<Arc<str>>,
}

impl PlacementReport {
    /// The human-readable reason no node was used: each rejected node and its
    /// reason, joined with "; " (e.g. `w1: os linux not in [windows]; w2:
    /// unreachable (connection refused)`).
    pub fn fallback_reason(&self) -> String {
        if self.controller_only {
            return "step runs only on the controller (architecture rule: the Mac owns it)".to_string();
        }
        if self.explanations.is_empty() {
            return "no worker nodes configured (no enabled node in nodes.json)".to_string();
        }
        self.explanations
            .iter()
            .filter(|e| !e.eligible)
            .map(|e| format!("{}: {}", e.node_id, e.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Asks NodeProbe for the current snapshot of every configured node.
#[derive(Message)]
#[rtype(result = "Vec<NodeSnapshot>")]
pub struct GetNodes;

/// Asks NodeProbe to probe now (one node or all), answering once done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ProbeNow {
    pub node_id: Option<String>,
    /// A probe of the same node (and configuration) already in flight that
    /// started at or after this moment answers instead of a new one: a
    /// one-shot command passes the moment it started its controller, whose
    /// NodeProbe probes every node at once, and so waits for those probes
    /// rather than sending each node a second pair of requests. None: a
    /// new probe, whatever is in flight (after a node failed mid-job, a
    /// probe started before the failure says nothing about it).
    pub since: Option<std::time::Instant>,
}

/// Tells NodeProbe that a node failed mid-job, so it is marked down until
/// the next successful probe.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NodeLost {
    pub node_id: String,
    pub reason: String,
}

/// A line of progress about one job, for `submit`'s stderr and the daemon log.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct JobProgress {
    pub key: String,
    pub line: String,
}

/// Stops a controller actor the way a failure does (a caught panic calls the
/// same `ctx.stop()`). The ControllerSupervisor starts every child under
/// `actix::Supervisor`, so the child is restarted in place: same address,
/// queued messages kept, futures it had in flight dropped (see the
/// supervisor module for what that means per actor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Looks up how to reach one node (for the JobRunner and ArtifactSync).
#[derive(Message)]
#[rtype(result = "Option<NodeHandle>")]
pub struct NodeDirectory {
    pub node_id: String,
}

/// Asks the Scheduler where a job should run, given a fresh node snapshot.
/// An error only when the decision hit a bug (the Scheduler is then
/// restarted).
#[derive(Message)]
#[rtype(result = "Result<PlacementReport, Panicked>")]
pub struct PlaceJob {
    pub step_name: String,
    pub requirements: JobRequirements,
    pub nodes: Vec<NodeSnapshot>,
}

/// Tells the Scheduler a job of `step_name` started (+1) or ended (-1) on
/// a node, so that ranking prefers the least busy node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NodeLoad {
    pub node_id: String,
    pub step_name: String,
    pub delta: i32,
}

/// Runs one step locally; answers when it ends (or is cancelled).
#[derive(Message)]
#[rtype(result = "Result<StepOutput, StepError>")]
pub struct RunLocal {
    pub job_key: String,
    pub step: StepName,
    pub payload: Value,
    /// Where artifacts are written: the job's receipt folder.
    pub out_dir: PathBuf,
    /// The job's `worker.log` in the receipt folder.
    pub log: JobLog,
    pub cancel: CancellationToken,
}

/// Downloads and verifies a remote job's artifacts and log into `dest`.
#[derive(Message)]
#[rtype(result = "Result<Vec<ReceiptArtifact>, SyncError>")]
pub struct SyncArtifacts {
    pub node: NodeHandle,
    pub remote_job_id: String,
    /// The manifest; None asks the worker for it first.
    pub artifacts: Option<Vec<ArtifactEntry>>,
    pub dest: PathBuf,
    /// The job's whole log when the worker's final answer carried it
    /// (`JobView.log`); None downloads it.
    pub log: Option<String>,
}

/// Why a sync failed: the message, and whether this machine's full disk
/// was the cause (`DISK_FULL` rather than `ARTIFACT_SYNC_FAILED`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncError {
    pub disk_full: bool,
    pub message: String,
}

impl SyncError {
    pub fn other(message: impl Into<String>) -> SyncError {
        SyncError { disk_full: false, message: message.into() }
    }
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

