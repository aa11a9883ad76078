//! The request and answer bodies of the worker's endpoints (health, caps,
//! drain, jobs, logs, artifacts, blobs), the job states and the limits and
//! labels that go with them.

use crate::artifacts::ArtifactEntry;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Largest chunk `GET /jobs/{id}/log` returns at once.
pub const MAX_LOG_CHUNK: u64 = 256 * 1024;

/// A job log of at most this many bytes is kept in memory while the job
/// runs and in the job's record once it ended (no file), and a finished
/// job's `GET /jobs/{id}` carries it whole (`log`, `log_bytes`).
pub const MAX_INLINE_LOG: usize = 64 * 1024;

/// `GET /health` (no auth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `degraded` while the worker is short of disk space or its
    /// job store is failing (it still answers, but new work may fail).
    pub status: String,
    pub worker_id: String,
    pub contract: String,
    pub version: String,
    /// Why the status is `degraded`; absent when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_reason: Option<String>,
    /// Free bytes on the disk holding the worker's state folder (absent if
    /// it could not be measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// True while the worker drains (`POST /drain`): it takes no new jobs.
    /// Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// Per step name: the jobs this worker holds now (from every
    /// controller) and the step's concurrency, so that a controller can rank
    /// nodes by their real load. Absent from workers older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<BTreeMap<String, StepLoad>>,
}

/// One step's jobs on a worker at the moment of a `/health` answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepLoad {
    /// Jobs of the step running now.
    pub running: u64,
    /// Jobs of the step waiting for a free slot.
    pub queued: u64,
    /// Jobs of the step the worker runs at once (`steps.<name>.concurrency`).
    pub concurrency: u64,
}

/// `POST /drain` body: start (`true`) or stop (`false`) draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub drain: bool,
}

/// `POST /drain` answer: the drain state now, and how many jobs are still
/// queued or running (they finish; the worker is idle at 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainState {
    pub worker_id: String,
    pub draining: bool,
    pub active_jobs: u64,
}

/// `GET /caps`: the host capability keys (`os`, `cpu`, `ram_gb`,
/// `gpu_model`, `vram_gb`, `python_version`, `ffmpeg_version`,
/// `davinci_available`, and whatever else the probe reports) plus the steps
/// this worker runs, their concurrency and the contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Caps {
    #[serde(flatten)]
    pub host: serde_json::Map<String, Value>,
    pub worker_id: String,
    pub steps: Vec<String>,
    pub concurrency: BTreeMap<String, usize>,
    pub contract: String,
    /// The most input bytes this worker takes inside `POST /jobs` (the
    /// body's `blobs` list, [`InlineBlob`]); 0 or absent: upload every
    /// input with `PUT /blobs/{sha256}` first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inline_blob_bytes: u64,
    /// True when this worker answers `POST /jobs?wait_ms=N&stream=1` in two
    /// lines: the acceptance at once, the job's view when it ends (see
    /// docs/protocol.md). Absent: submit, then long-poll.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub submit_stream: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The key of `POST /jobs` that carries small inputs inline.
pub const INLINE_BLOBS_KEY: &str = "blobs";

/// Inputs larger than this are never sent inline, whatever a worker
/// allows: a larger file is cheaper to stream with `PUT /blobs` than to
/// hold base64-encoded in a JSON body.
pub const INLINE_BLOB_MAX: u64 = 512 * 1024;

/// One input file carried inside `POST /jobs` (in the body's `blobs` list)
/// instead of a separate `PUT /blobs/{sha256}`: the worker checks the
/// digest and stores it as a blob before it accepts the job, so a small
/// input costs no extra request and no extra commit. The payload names it
/// as usual (`blob:sha256:<hex>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineBlob {
    pub sha256: String,
    /// The file's bytes, standard base64 with padding.
    pub data_b64: String,
}

/// `POST /jobs` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    pub step_name: String,
    pub payload: Value,
    /// Optional: if given it must equal the worker's [`inputs_hash`](super::inputs_hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_hash: Option<String>,
    /// Optional free label (e.g. the controller's run/job id), echoed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Optional lease in seconds (see `crate::lease`): the submitter renews
    /// it with status calls and long-polls; once it expires the worker stops
    /// the job and records it `abandoned` (`LEASE_EXPIRED`). Without it the
    /// job runs to its end whoever watches. 1 to [`MAX_LEASE_S`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_s: Option<u64>,
}

/// The longest lease a submitter may ask for, seconds.
pub const MAX_LEASE_S: u64 = 3600;

/// Milliseconds since the Unix epoch on the wall clock: the one clock of
/// every `*_at_ms` field (jobs, leases, the daemon's store).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// A job's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The submitter's lease expired: the worker stopped the job (or never
    /// started it) and will not serve its result; error `LEASE_EXPIRED`.
    Abandoned,
}

impl JobState {
    /// The state as the protocol spells it (`queued`, `running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Abandoned => "abandoned",
        }
    }

    /// Succeeded, failed, cancelled and abandoned jobs never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Abandoned)
    }
}

/// A failed job's error: a stable code (see [`crate::error::ErrorCode`]) and
/// a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// A job as the worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub job_id: String,
    pub step_name: String,
    pub state: JobState,
    pub inputs_hash: String,
    #[serde(default)]
    pub label: Option<String>,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    /// How many times the job was started (more than 1 after a rerun).
    pub attempt: u32,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<JobError>,
    #[serde(default)]
    pub artifacts: Vec<ArtifactEntry>,
    /// The whole job log, in `GET /jobs/{id}` once the job has ended, when
    /// it is at most [`MAX_INLINE_LOG`] bytes; absent otherwise (read it
    /// with `GET /jobs/{id}/log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// The length of `log` in bytes, when `log` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<u64>,
}

/// `POST /jobs` response: the job, and whether it is an existing one
/// returned for the same `step_name` + `inputs_hash` (status 200) rather
/// than a new one (status 201).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub cached: bool,
    pub job: JobView,
}

/// The label the controller gives the job it submits for `run_id`/`job_id`;
/// `GET /jobs?run_id=R&job_id=J` finds the jobs labelled so.
pub fn job_label(run_id: &str, job_id: &str) -> String {
    format!("{run_id}/{job_id}")
}

/// Most jobs `GET /jobs` returns when no `limit` is given.
pub const FIND_JOBS_DEFAULT_LIMIT: usize = 20;

/// Most jobs `GET /jobs` returns whatever `limit` says.
pub const FIND_JOBS_MAX_LIMIT: usize = 100;

/// `GET /jobs?run_id=R&job_id=J[&limit=N]` response: the jobs labelled
/// [`job_label`]`(R, J)`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoundJobs {
    pub jobs: Vec<JobView>,
    /// True when more jobs matched than were returned.
    pub truncated: bool,
}

/// `GET /jobs/{id}/log?offset=N` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub job_id: String,
    pub offset: u64,
    /// Pass this as `offset` next time.
    pub next_offset: u64,
    /// The log's size when read.
    pub size: u64,
    /// The bytes read, as UTF-8 (invalid sequences replaced).
    pub data: String,
    /// True when the job is finished and `next_offset == size`.
    pub complete: bool,
}

/// `GET /jobs/{id}/artifacts` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactManifest {
    pub job_id: String,
    pub state: JobState,
    pub artifacts: Vec<ArtifactEntry>,
}

/// `PUT /blobs/{sha256}` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStored {
    pub sha256: String,
    pub size: u64,
    /// False when the blob was already there (the upload was discarded).
    pub created: bool,
}
