//! Prometheus metrics: the counters each process keeps, and their text
//! exposition ([`text`]).
//!
//! Two sets live here, one per binary, each a process-wide value fed from
//! where things happen:
//! - [`controller()`]: one [`ControllerMetrics::record_receipt`] call per
//!   finished job (where the JobRunner writes the receipt), one
//!   [`ControllerMetrics::record_fallback`] where a job is sent to the local
//!   runner, artifact bytes where a download completes, and authentication
//!   refusals (the daemon API's own, and workers' refusals of ours). The
//!   daemon serves them at `GET /metrics`, with node gauges and every
//!   worker's own counters added at scrape time.
//! - [`worker()`]: one [`WorkerMetrics::record_job`] call per job that
//!   reaches a final state, blob and artifact bytes, refusals and lease
//!   expiries. The worker serves them at its signed `GET /metrics`.
//!
//! Architecture Invariant: no metric carries a secret, a path or a payload.
//! Label values are step names, job states, node ids and fixed words.

pub mod text;

use crate::protocol::JobState;
use crate::receipt::{JobStatus, Receipt, Verdict};
use crate::steps::StepName;
use crate::store::JobRecord;
pub use text::{Exposition, Histogram, Kind, Reexport, CONTENT_TYPE};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The controller's counters.
pub fn controller() -> &'static ControllerMetrics {
    static C: OnceLock<ControllerMetrics> = OnceLock::new();
    C.get_or_init(ControllerMetrics::default)
}

/// The worker's counters.
pub fn worker() -> &'static WorkerMetrics {
    static W: OnceLock<WorkerMetrics> = OnceLock::new();
    W.get_or_init(WorkerMetrics::default)
}

/// Locks a metrics mutex; a panic while it was held leaves counts that are
/// still counts, so a poisoned lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A step name as a label value: one of the known steps, or `unknown`, so
/// that the label keeps a small fixed set of values whatever was submitted.
fn step_label(name: &str) -> &'static str {
    StepName::parse(name).map(StepName::as_str).unwrap_or("unknown")
}

/// An authentication refusal reason (a fixed text from [`crate::auth`] or
/// the guards) as a snake_case label value.
fn reason_label(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    for c in reason.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

/// Why a job ran on the controller instead of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FallbackClass {
    /// A node that could have run it was down, degraded, not probed yet,
    /// full, or failed or was lost while running it.
    Unavailable,
    /// A node is misconfigured and `fallback = "always"` allowed the local run.
    Misconfigured,
    /// The step runs only on the controller.
    ControllerOnly,
    /// Every node answered and none fits the job (or there is no node).
    NoEligibleNode,
}

impl FallbackClass {
    pub const ALL: [FallbackClass; 4] =
        [FallbackClass::Unavailable, FallbackClass::Misconfigured, FallbackClass::ControllerOnly, FallbackClass::NoEligibleNode];

    pub fn as_str(self) -> &'static str {
        match self {
            FallbackClass::Unavailable => "unavailable",
            FallbackClass::Misconfigured => "misconfigured",
            FallbackClass::ControllerOnly => "controller_only",
            FallbackClass::NoEligibleNode => "no_eligible_node",
        }
    }
}

/// A node's state as the controller sees it, for `rayvault_node_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Up,
    Down,
    Degraded,
    Misconfigured,
    Draining,
    Disabled,
    Unprobed,
}

impl NodeState {
    pub const ALL: [NodeState; 7] =
        [NodeState::Up, NodeState::Down, NodeState::Degraded, NodeState::Misconfigured, NodeState::Draining, NodeState::Disabled, NodeState::Unprobed];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Degraded => "degraded",
            NodeState::Misconfigured => "misconfigured",
            NodeState::Draining => "draining",
            NodeState::Disabled => "disabled",
            NodeState::Unprobed => "unprobed",
        }
    }
}

/// What the daemon knows about one node at scrape time.
#[derive(Debug, Clone)]
pub struct NodeSample {
    pub node_id: String,
    pub state: NodeState,
    /// Jobs of this controller running on the node.
    pub in_flight: u64,
    /// Whether the node's own `/metrics` answered (None: not asked, e.g.
    /// a disabled node).
    pub scraped: Option<bool>,
}

#[derive(Debug, Default)]
struct ControllerInner {
    /// (step, status, executed_on) -> jobs.
    jobs: BTreeMap<(&'static str, &'static str, String), u64>,
    /// (step, verdict) -> jobs.
    verdicts: BTreeMap<(&'static str, &'static str), u64>,
    durations: BTreeMap<&'static str, Histogram>,
    fallbacks: BTreeMap<FallbackClass, u64>,
    artifact_bytes: u64,
    /// The daemon API's own refusals, by reason.
    auth_refusals: BTreeMap<String, u64>,
    /// Workers' refusals of this controller's requests, by error code.
    remote_refusals: BTreeMap<&'static str, u64>,
}

/// The controller's counters (see the module doc).
#[derive(Debug, Default)]
pub struct ControllerMetrics {
    inner: Mutex<ControllerInner>,
}

impl ControllerMetrics {
    /// Counts one finished job from its receipt: by step, status and where
    /// it ran; its verdict; its duration from submission to receipt.
    pub fn record_receipt(&self, r: &Receipt) {
        let step = step_label(&r.step_name);
        let status = match r.status {
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        };
        let on = r.executed_on.clone().unwrap_or_else(|| "none".to_string());
        let mut m = lock(&self.inner);
        *m.jobs.entry((step, status, on)).or_default() += 1;
        if let Some(v) = r.verdict {
            let v = match v {
                Verdict::Passed => "passed",
                Verdict::Failed => "failed",
            };
            *m.verdicts.entry((step, v)).or_default() += 1;
        }
        m.durations.entry(step).or_default().observe(r.timings.total_ms as f64 / 1000.0);
    }

    /// Counts one job sent to the local runner.
    pub fn record_fallback(&self, class: FallbackClass) {
        *lock(&self.inner).fallbacks.entry(class).or_default() += 1;
    }

    /// Counts the bytes of one artifact whose download (and verification)
    /// completed.
    pub fn artifact_bytes_synced(&self, bytes: u64) {
        lock(&self.inner).artifact_bytes += bytes;
    }

    /// Counts one request the daemon API refused; `reason` is one of the
    /// fixed texts of [`crate::auth::AuthError`].
    pub fn auth_refusal(&self, reason: &str) {
        *lock(&self.inner).auth_refusals.entry(reason_label(reason)).or_default() += 1;
    }

    /// Counts one refusal of this controller's credentials by a worker, by
    /// the error code the worker gave (`AUTH_INVALID`, `AUTH_SKEW`; anything
    /// else is counted as `other`).
    pub fn remote_auth_refusal(&self, code: &str) {
        let code = match code {
            "AUTH_INVALID" => "AUTH_INVALID",
            "AUTH_SKEW" => "AUTH_SKEW",
            _ => "other",
        };
        *lock(&self.inner).remote_refusals.entry(code).or_default() += 1;
    }

    /// Writes the controller's own families, then the node families.
    pub fn render(&self, out: &mut Exposition, nodes: &[NodeSample]) {
        let m = lock(&self.inner);
        out.family("rayvault_controller_jobs_total", Kind::Counter, "Jobs finished by this controller, by step, status and where they ran (local, a node id, or none).");
        for ((step, status, on), n) in &m.jobs {
            out.sample("rayvault_controller_jobs_total", &[("step", step), ("status", status), ("executed_on", on)], *n as f64);
        }
        out.family("rayvault_controller_verdicts_total", Kind::Counter, "Verdicts of check steps, by step and verdict.");
        for ((step, v), n) in &m.verdicts {
            out.sample("rayvault_controller_verdicts_total", &[("step", step), ("verdict", v)], *n as f64);
        }
        out.family("rayvault_controller_job_duration_seconds", Kind::Histogram, "Job duration from submission to receipt, by step.");
        for (step, h) in &m.durations {
            out.histogram("rayvault_controller_job_duration_seconds", &[("step", step)], h);
        }
        out.family("rayvault_controller_fallbacks_total", Kind::Counter, "Jobs run on the controller instead of a worker, by reason class.");
        for class in FallbackClass::ALL {
            let n = m.fallbacks.get(&class).copied().unwrap_or(0);
            out.sample("rayvault_controller_fallbacks_total", &[("reason", class.as_str())], n as f64);
        }
        out.family("rayvault_controller_artifact_bytes_synced_total", Kind::Counter, "Bytes of artifacts downloaded from workers and verified.");
        out.sample("rayvault_controller_artifact_bytes_synced_total", &[], m.artifact_bytes as f64);
        out.family("rayvault_controller_auth_refusals_total", Kind::Counter, "Requests the daemon API refused as unauthenticated, by reason.");
        for (reason, n) in &m.auth_refusals {
            out.sample("rayvault_controller_auth_refusals_total", &[("reason", reason)], *n as f64);
        }
        out.family("rayvault_controller_remote_auth_refusals_total", Kind::Counter, "Requests of this controller that workers refused as unauthenticated, by error code.");
        for (code, n) in &m.remote_refusals {
            out.sample("rayvault_controller_remote_auth_refusals_total", &[("code", code)], *n as f64);
        }
        drop(m);
        render_nodes(out, nodes);
    }
}

fn render_nodes(out: &mut Exposition, nodes: &[NodeSample]) {
    out.family("rayvault_node_up", Kind::Gauge, "1 when the node's state is up (it answered its last probe and takes jobs), else 0.");
    for n in nodes {
        out.sample("rayvault_node_up", &[("node", &n.node_id)], f64::from(u8::from(n.state == NodeState::Up)));
    }
    out.family("rayvault_node_state", Kind::Gauge, "The node's state, one-hot: 1 for its current state, 0 for the others.");
    for n in nodes {
        for s in NodeState::ALL {
            out.sample("rayvault_node_state", &[("node", &n.node_id), ("state", s.as_str())], f64::from(u8::from(n.state == s)));
        }
    }
    out.family("rayvault_node_jobs_in_flight", Kind::Gauge, "Jobs of this controller running on the node.");
    for n in nodes {
        out.sample("rayvault_node_jobs_in_flight", &[("node", &n.node_id)], n.in_flight as f64);
    }
    out.family("rayvault_node_scrape_up", Kind::Gauge, "1 when the node's own metrics were collected for this scrape, else 0.");
    for n in nodes {
        if let Some(ok) = n.scraped {
            out.sample("rayvault_node_scrape_up", &[("node", &n.node_id)], f64::from(u8::from(ok)));
        }
    }
}

/// Families the daemon writes itself; a worker's families with these
/// prefixes are not re-exported.
pub const CONTROLLER_PREFIXES: [&str; 2] = ["rayvault_controller_", "rayvault_node_"];

#[derive(Debug, Default)]
struct WorkerInner {
    /// (step, final state) -> jobs.
    jobs: BTreeMap<(&'static str, &'static str), u64>,
    durations: BTreeMap<&'static str, Histogram>,
    blob_bytes: u64,
    artifact_bytes: u64,
    /// Downloads sent with `sendfile` (see the worker's `direct` module).
    artifact_sendfile: u64,
    auth_refusals: BTreeMap<String, u64>,
    leases_expired: u64,
    blobs_inline: u64,
}

/// The worker's counters (see the module doc).
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    inner: Mutex<WorkerInner>,
}

/// What the worker knows only at scrape time.
#[derive(Debug, Clone, Default)]
pub struct WorkerGauges {
    /// (step, running, queued), one entry per step.
    pub load: Vec<(&'static str, u64, u64)>,
    /// Free bytes on the disk of the state folder, when measurable.
    pub disk_free_bytes: Option<u64>,
    /// The store's commit queue: transactions committed (each one sync)
    /// and the writes they held.
    pub store_commits: (u64, u64),
}

impl WorkerMetrics {
    /// Counts one job that reached a final state, from its stored record;
    /// a job that ran has its run time observed, and an abandoned one
    /// (its lease expired) is counted as a lease expiry too.
    pub fn record_job(&self, rec: &JobRecord) {
        let state = match rec.state {
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Abandoned => "abandoned",
            JobState::Queued | JobState::Running => return,
        };
        let step = step_label(&rec.step_name);
        let mut m = lock(&self.inner);
        *m.jobs.entry((step, state)).or_default() += 1;
        if let (Some(start), Some(end)) = (rec.started_at_ms, rec.finished_at_ms) {
            m.durations.entry(step).or_default().observe(end.saturating_sub(start) as f64 / 1000.0);
        }
        if rec.state == JobState::Abandoned {
            m.leases_expired += 1;
        }
    }

    /// Counts the bytes of a blob upload that was stored.
    pub fn blob_bytes_received(&self, bytes: u64) {
        lock(&self.inner).blob_bytes += bytes;
    }

    /// Counts one input received inside `POST /jobs` and stored as a blob
    /// (its bytes count as received blob bytes too).
    pub fn blob_inline(&self, bytes: u64) {
        let mut m = lock(&self.inner);
        m.blob_bytes += bytes;
        m.blobs_inline += 1;
    }

    /// Counts artifact bytes as they are sent.
    pub fn artifact_bytes_served(&self, bytes: u64) {
        lock(&self.inner).artifact_bytes += bytes;
    }

    /// Counts one artifact download sent by the kernel (`sendfile`).
    pub fn artifact_sent_by_kernel(&self) {
        lock(&self.inner).artifact_sendfile += 1;
    }

    /// Counts one refused request; `reason` is a fixed text (an
    /// [`crate::auth::AuthError`] reason or the guard's own).
    pub fn auth_refusal(&self, reason: &str) {
        *lock(&self.inner).auth_refusals.entry(reason_label(reason)).or_default() += 1;
    }

    pub fn render(&self, out: &mut Exposition, gauges: &WorkerGauges) {
        let m = lock(&self.inner);
        out.family("rayvault_jobs_total", Kind::Counter, "Jobs that reached a final state on this worker, by step and state.");
        for ((step, state), n) in &m.jobs {
            out.sample("rayvault_jobs_total", &[("step", step), ("state", state)], *n as f64);
        }
        out.family("rayvault_job_duration_seconds", Kind::Histogram, "Run time of jobs on this worker (start to final state), by step.");
        for (step, h) in &m.durations {
            out.histogram("rayvault_job_duration_seconds", &[("step", step)], h);
        }
        out.family("rayvault_blob_bytes_received_total", Kind::Counter, "Bytes of blob uploads stored.");
        out.sample("rayvault_blob_bytes_received_total", &[], m.blob_bytes as f64);
        out.family("rayvault_blobs_inline_total", Kind::Counter, "Inputs received inside POST /jobs and stored as blobs, without an upload of their own.");
        out.sample("rayvault_blobs_inline_total", &[], m.blobs_inline as f64);
        out.family("rayvault_artifact_bytes_served_total", Kind::Counter, "Bytes of artifacts sent to controllers.");
        out.sample("rayvault_artifact_bytes_served_total", &[], m.artifact_bytes as f64);
        out.family("rayvault_artifact_downloads_sendfile_total", Kind::Counter, "Artifact downloads sent by the kernel (sendfile: large, asked with Connection: close, Linux).");
        out.sample("rayvault_artifact_downloads_sendfile_total", &[], m.artifact_sendfile as f64);
        out.family("rayvault_auth_refusals_total", Kind::Counter, "Requests refused as unauthenticated, by reason.");
        for (reason, n) in &m.auth_refusals {
            out.sample("rayvault_auth_refusals_total", &[("reason", reason)], *n as f64);
        }
        out.family("rayvault_leases_expired_total", Kind::Counter, "Jobs abandoned because their submitter's lease expired.");
        out.sample("rayvault_leases_expired_total", &[], m.leases_expired as f64);
        drop(m);
        out.family("rayvault_jobs_in_flight", Kind::Gauge, "Jobs running on this worker, by step.");
        for (step, running, _) in &gauges.load {
            out.sample("rayvault_jobs_in_flight", &[("step", step)], *running as f64);
        }
        out.family("rayvault_jobs_queued", Kind::Gauge, "Jobs waiting for a slot on this worker, by step.");
        for (step, _, queued) in &gauges.load {
            out.sample("rayvault_jobs_queued", &[("step", step)], *queued as f64);
        }
        out.family("rayvault_store_commits_total", Kind::Counter, "Transactions the job store committed, each with one sync to disk (writes that arrive together share one).");
        out.sample("rayvault_store_commits_total", &[], gauges.store_commits.0 as f64);
        out.family("rayvault_store_writes_total", Kind::Counter, "Writes the job store committed; divided by rayvault_store_commits_total, the mean batch of a group commit.");
        out.sample("rayvault_store_writes_total", &[], gauges.store_commits.1 as f64);
        if let Some(free) = gauges.disk_free_bytes {
            out.family("rayvault_disk_free_bytes", Kind::Gauge, "Free bytes on the disk holding the worker's state folder.");
            out.sample("rayvault_disk_free_bytes", &[], free as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_are_snake_case() {
        let check = |reason: &str, want: &str| assert_eq!(reason_label(reason), want, "{reason}");
        check("no Authorization header", "no_authorization_header");
        check("header is not UTF-8", "header_is_not_utf_8");
        check("timestamp outside allowed skew", "timestamp_outside_allowed_skew");
    }

    #[test]
    fn unknown_steps_share_one_label() {
        assert_eq!(step_label("FFMPEG_PROBE"), "FFMPEG_PROBE");
        assert_eq!(step_label("made up \"step\""), "unknown");
    }

    #[test]
    fn node_states_are_one_hot() {
        let mut e = Exposition::new();
        let node = NodeSample { node_id: "w1".into(), state: NodeState::Degraded, in_flight: 2, scraped: Some(false) };
        render_nodes(&mut e, &[node]);
        let parsed = text::parse(&e.finish());
        let states = &parsed["rayvault_node_state"].samples;
        assert_eq!(states.len(), NodeState::ALL.len());
        assert_eq!(states.iter().filter(|s| s.value == 1.0).count(), 1);
        assert!(states.iter().any(|s| s.value == 1.0 && s.labels.contains(&("state".into(), "degraded".into()))));
        assert_eq!(parsed["rayvault_node_up"].samples[0].value, 0.0);
        assert_eq!(parsed["rayvault_node_jobs_in_flight"].samples[0].value, 2.0);
        assert_eq!(parsed["rayvault_node_scrape_up"].samples[0].value, 0.0);
    }
}
