//! The five RayVault steps, as a library that both the worker's executor
//! actors and the controller's LocalRunner call.
//!
//! A step takes a JSON payload and a [`StepContext`] (output folder, job log,
//! cancellation, settings) and returns a [`StepOutput`]: result JSON plus the
//! manifest of the artifacts it wrote into `ctx.out_dir`. Steps validate their
//! payload first and fail with a [`StepError`] carrying a stable code.
//!
//! To add a step type: add a variant to [`StepName`] (with its legacy v0.5
//! name), a module here with `pub async fn run(payload, ctx)`, a branch in
//! [`run_step`], its defaults under `[steps.NAME]` in `config/default.toml`,
//! and its availability check in [`crate::caps`].

pub mod audio_io;
pub mod disk;
pub mod frame_extract;
pub mod frames;
pub mod image_header;
pub mod loudness;
pub mod normalize;
pub mod openclaw;
pub mod postcheck;
pub mod probe;
pub mod silence;
pub mod text_chunks;
pub mod true_peak;
pub mod tts;
pub mod tts_engines;

use crate::artifacts::ArtifactEntry;
use crate::config::Settings;
use crate::error::{ErrorCode, StepError};
use crate::joblog::JobLog;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The step types this build can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StepName {
    #[serde(rename = "TTS_RENDER_CHUNKS")]
    TtsRenderChunks,
    #[serde(rename = "AUDIO_POSTCHECK")]
    AudioPostcheck,
    #[serde(rename = "FFMPEG_PROBE")]
    FfmpegProbe,
    #[serde(rename = "FRAME_SAMPLING")]
    FrameSampling,
    #[serde(rename = "OPENCLAW_TASK")]
    OpenclawTask,
}

impl StepName {
    pub const ALL: [StepName; 5] = [
        StepName::TtsRenderChunks,
        StepName::AudioPostcheck,
        StepName::FfmpegProbe,
        StepName::FrameSampling,
        StepName::OpenclawTask,
    ];

    /// The name on the wire and in receipts.
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::TtsRenderChunks => "TTS_RENDER_CHUNKS",
            StepName::AudioPostcheck => "AUDIO_POSTCHECK",
            StepName::FfmpegProbe => "FFMPEG_PROBE",
            StepName::FrameSampling => "FRAME_SAMPLING",
            StepName::OpenclawTask => "OPENCLAW_TASK",
        }
    }

    /// The lower-case name a v0.5 worker lists (the mapping the README documents).
    pub fn legacy_name(self) -> &'static str {
        match self {
            StepName::TtsRenderChunks => "tts_render_chunks",
            StepName::AudioPostcheck => "audio_postcheck",
            StepName::FfmpegProbe => "ffprobe_analyze",
            StepName::FrameSampling => "frame_sampling",
            StepName::OpenclawTask => "openclaw_task",
        }
    }

    /// The payload fields that name input files, as the step reads them.
    /// The controller uploads each existing local file named there and
    /// replaces its path with a blob reference (staging); a new step
    /// declares its own fields here.
    pub fn input_file_fields(self) -> &'static [InputFileField] {
        match self {
            StepName::FfmpegProbe | StepName::FrameSampling => &[InputFileField::One("media_path")],
            StepName::AudioPostcheck => &[InputFileField::List("audio_paths")],
            StepName::TtsRenderChunks | StepName::OpenclawTask => &[],
        }
    }

    /// Whether a job of this step may start while the commit that accepts
    /// it is still being made durable on the worker, instead of after it.
    /// True for the steps that only read their inputs and write nothing
    /// but files in their own job folder (no engine or task of the user's
    /// that could act on the world): if the job then turns out not to be
    /// accepted (the commit failed, or it was a duplicate) or the worker
    /// dies before the commit, nothing of that run is reported, recorded
    /// or kept, and nothing outside the worker saw it. A short check then
    /// costs its submitter one sync less in time.
    pub fn starts_before_acceptance(self) -> bool {
        matches!(self, StepName::AudioPostcheck | StepName::FfmpegProbe | StepName::FrameSampling)
    }

    pub fn parse(name: &str) -> Result<StepName, StepError> {
        StepName::ALL.into_iter().find(|s| s.as_str() == name).ok_or_else(|| {
            StepError::new(
                ErrorCode::StepUnknown,
                format!(
                    "unknown step {name:?}; use one of {}",
                    StepName::ALL.map(|s| s.as_str()).join(", ")
                ),
            )
        })
    }
}

/// A payload field that names input files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFileField {
    /// The field holds one file path.
    One(&'static str),
    /// The field holds a list of file paths.
    List(&'static str),
}

impl std::fmt::Display for StepName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a step needs besides its payload.
#[derive(Clone, Debug)]
pub struct StepContext {
    /// The job's id, for log lines.
    pub job_id: String,
    /// Artifacts are written here (created before the step starts).
    pub out_dir: PathBuf,
    pub log: JobLog,
    /// Cancelled on job cancel, step timeout or shutdown; tools honour it.
    pub cancel: CancellationToken,
    pub settings: Arc<Settings>,
}

impl StepContext {
    /// Creates the job's output folder. Steps call it just before they
    /// write their first artifact, so a job that fails before that (or
    /// writes none) leaves no folder behind.
    pub fn create_out_dir(&self) -> Result<(), StepError> {
        std::fs::create_dir_all(&self.out_dir).map_err(|e| StepError::io_in("creating the job's output folder", &self.out_dir, e))
    }
}

/// What a successful step returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepOutput {
    pub result: Value,
    pub artifacts: Vec<ArtifactEntry>,
}

/// Runs one step under its configured timeout.
pub async fn run_step(step: StepName, payload: &Value, ctx: &StepContext) -> Result<StepOutput, StepError> {
    let timeout = Duration::from_secs(ctx.settings.step(step.as_str()).timeout_s);
    ctx.log.line("job", &format!("step {step} started"));
    // The step runs under a child of the job's token: a timeout stops the
    // step's tools through the child, while the job's own token stays
    // uncancelled, so callers that check it (the executor, the LocalRunner)
    // report TIMEOUT rather than mistaking the timeout for a cancellation.
    let step_ctx = StepContext { cancel: ctx.cancel.child_token(), ..ctx.clone() };
    let fut = async {
        let ctx = &step_ctx;
        match step {
            StepName::FfmpegProbe => probe::run(payload, ctx).await,
            StepName::FrameSampling => frames::run(payload, ctx).await,
            StepName::TtsRenderChunks => tts::run(payload, ctx).await,
            StepName::AudioPostcheck => postcheck::run(payload, ctx).await,
            StepName::OpenclawTask => openclaw::run(payload, ctx).await,
        }
    };
    let outcome = tokio::select! {
        r = fut => r,
        _ = tokio::time::sleep(timeout) => {
            step_ctx.cancel.cancel();
            Err(StepError::new(
                ErrorCode::Timeout,
                format!("{step} did not finish within {} s; raise steps.{}.timeout_s or split the work", timeout.as_secs(), step.as_str().to_ascii_lowercase()),
            ))
        }
    };
    match &outcome {
        Ok(out) => ctx.log.line("job", &format!("step {step} succeeded with {} artifact(s)", out.artifacts.len())),
        Err(e) => ctx.log.line("job", &format!("step {step} failed: {e}")),
    }
    outcome
}

/// Parses a payload into a step's typed form, turning serde's complaint into
/// an `INPUT_INVALID` error that names the step.
pub fn parse_payload<T: DeserializeOwned>(step: StepName, payload: &Value) -> Result<T, StepError> {
    serde_json::from_value(payload.clone())
        .map_err(|e| StepError::invalid(format!("{step} payload is invalid: {e}")))
}

/// Checks that an input file exists and is a readable regular file.
pub fn require_input_file(path: &str) -> Result<PathBuf, StepError> {
    let p = PathBuf::from(path);
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => match std::fs::File::open(&p) {
            Ok(_) => Ok(p),
            Err(e) => Err(StepError::new(ErrorCode::InputNotFound, format!("{path} cannot be read: {e}"))),
        },
        Ok(_) => Err(StepError::new(ErrorCode::InputNotFound, format!("{path} is not a regular file"))),
        Err(e) => Err(StepError::new(
            ErrorCode::InputNotFound,
            format!("{path} does not exist or cannot be read ({e}); check the path on the machine running the step"),
        )),
    }
}

/// Replaces non-finite numbers (from -inf loudness and the like) with null,
/// since JSON has no representation for them.
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Collects the results of `n` parallel tasks that each answer with their
/// index, in index order. The first failure cancels the others through
/// `cancel`, and the error returned is the root cause rather than the
/// cancellations it triggered. `what` names one task in error messages
/// ("a chunk", "a file").
pub async fn join_indexed<T: Send + 'static>(
    mut set: tokio::task::JoinSet<Result<(usize, T), StepError>>,
    n: usize,
    cancel: &CancellationToken,
    what: &str,
    progress: Option<(&crate::joblog::JobLog, &str)>,
) -> Result<Vec<T>, StepError> {
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut first_error: Option<StepError> = None;
    let mut done = 0;
    while let Some(joined) = set.join_next().await {
        let outcome = joined.map_err(|e| StepError::new(ErrorCode::Internal, format!("{what} task failed: {e}")));
        match outcome.and_then(|r| r) {
            Ok((i, v)) if i < n => {
                slots[i] = Some(v);
                done += 1;
                if let Some((log, item)) = progress {
                    log.progress(item, done, n);
                }
            }
            Ok((i, _)) => {
                first_error.get_or_insert(StepError::new(ErrorCode::Internal, format!("{what} task {i} is out of range")));
            }
            Err(e) => {
                cancel.cancel();
                if first_error.as_ref().map_or(true, |f| f.code == ErrorCode::Cancelled) {
                    first_error = Some(e);
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    slots
        .into_iter()
        .map(|s| s.ok_or_else(|| StepError::new(ErrorCode::Internal, format!("{what} did not finish"))))
        .collect()
}
