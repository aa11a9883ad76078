//! FRAME_SAMPLING: writes still frames of a video (`frame_0001.jpg`, ...)
//! into the job's output folder.
//!
//! The payload names the frames with exactly one of `count` (evenly spread,
//! each at the middle of its share of the video), `interval_s` (at 0, I, 2I,
//! ...) or `timestamps_s` (explicit times, kept in the caller's order).
//!
//! Two strategies exist (see [`super::frame_extract`]): seeking once per
//! frame, whose cost grows with the number of frames, and one decoding pass,
//! whose cost grows with the duration. [`choose_strategy`] compares the two
//! estimates from `[frames]` in the config and picks the cheaper, so the step
//! is never much slower than the better of the two.
//!
//! Frames appear under their final names only once complete: ffmpeg writes
//! into a hidden scratch folder inside the output folder, and each finished
//! file is renamed into place. The reported width and height are read back
//! from each file's header.

use super::frame_extract::{extract_by_seeking, extract_single_pass, Extraction, Selection};
use super::image_header::image_size;
use super::disk;
use super::probe::{probe_media, require_media_path, StreamSummary};
use super::{parse_payload, StepContext, StepName, StepOutput};
use crate::artifacts::{self, ArtifactEntry};
use crate::config::FrameSettings;
use crate::error::{ErrorCode, StepError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most frames one job may ask for with `count` or `interval_s`.
pub const MAX_FRAMES: u64 = 10_000;
/// Most entries in `timestamps_s`: each one is written into the select
/// filter's expression, and the filter graph has to fit on a Windows
/// command line (500 take about 20,000 of its 32,767 characters).
pub const MAX_TIMESTAMPS: usize = 500;
/// Narrowest `max_width` accepted.
pub const MIN_MAX_WIDTH: u32 = 16;
/// Widest `max_width` accepted (beyond any real video).
pub const MAX_MAX_WIDTH: u32 = 16_384;
/// Target times are kept this many frame durations before the end of the
/// video, because the duration in a header can run past the last frame.
const END_MARGIN_FRAMES: f64 = 1.5;
/// The end margin when the frame rate is unknown.
const END_MARGIN_UNKNOWN_S: f64 = 0.1;

/// The FRAME_SAMPLING payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FramesPayload {
    media_path: String,
    count: Option<u64>,
    interval_s: Option<f64>,
    timestamps_s: Option<Vec<f64>>,
    #[serde(default)]
    format: ImageFormat,
    max_width: Option<u32>,
}

/// The image format of the written frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Jpg,
    Png,
}

impl ImageFormat {
    fn ext(self) -> &'static str {
        match self {
            ImageFormat::Jpg => "jpg",
            ImageFormat::Png => "png",
        }
    }
}

/// Which frames the caller asked for.
#[derive(Debug, Clone, PartialEq)]
enum Wanted {
    Count(u64),
    Interval(f64),
    Timestamps(Vec<f64>),
}

/// How the frames are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// One `ffmpeg -ss T` run per frame.
    Seek,
    /// One decoding pass through a select filter.
    SinglePass,
}

impl Strategy {
    /// The name used in results and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Seek => "seek",
            Strategy::SinglePass => "single_pass",
        }
    }
}

/// A strategy and the sentence explaining why it was picked.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub strategy: Strategy,
    pub reason: String,
}

/// Picks the cheaper strategy: seeking costs about `seek_cost_s` per frame,
/// one pass about `decode_cost_per_media_s` per second of media. Seeking wins
/// while `frames x seek_cost_s < duration_s x decode_cost_per_media_s`.
pub fn choose_strategy(frames: usize, duration_s: f64, cfg: &FrameSettings) -> Choice {
    let seek = frames as f64 * cfg.seek_cost_s;
    let pass = duration_s * cfg.decode_cost_per_media_s;
    let estimate = format!(
        "{frames} seek(s) x {} s = {seek:.2} s against one pass over {duration_s:.1} s of media x {} s/s = {pass:.2} s",
        cfg.seek_cost_s, cfg.decode_cost_per_media_s
    );
    if seek < pass {
        Choice { strategy: Strategy::Seek, reason: format!("seeking is cheaper: {estimate}") }
    } else {
        Choice { strategy: Strategy::SinglePass, reason: format!("one decoding pass is cheaper: {estimate}") }
    }
}

/// The target times (seconds from the start, caller's order) and how a
/// single pass should select them.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    targets: Vec<f64>,
    selection: Selection,
}

/// Checks the payload's shape; everything that needs the duration is
/// checked later by [`plan`].
fn validate(p: &FramesPayload) -> Result<Wanted, StepError> {
    if let Some(w) = p.max_width {
        if !(MIN_MAX_WIDTH..=MAX_MAX_WIDTH).contains(&w) {
            return Err(StepError::invalid(format!(
                "max_width {w} is out of range; use {MIN_MAX_WIDTH} to {MAX_MAX_WIDTH}"
            )));
        }
    }
    match (p.count, p.interval_s, &p.timestamps_s) {
        (Some(n), None, None) => {
            if n == 0 || n > MAX_FRAMES {
                return Err(StepError::invalid(format!("count {n} is out of range; use 1 to {MAX_FRAMES}")));
            }
            Ok(Wanted::Count(n))
        }
        (None, Some(i), None) => {
            if !(i.is_finite() && i > 0.0) {
                return Err(StepError::invalid(format!("interval_s {i} must be a number above 0")));
            }
            Ok(Wanted::Interval(i))
        }
        (None, None, Some(ts)) => {
            if ts.is_empty() || ts.len() > MAX_TIMESTAMPS {
                return Err(StepError::invalid(format!(
                    "timestamps_s has {} entries; give 1 to {MAX_TIMESTAMPS}",
                    ts.len()
                )));
            }
            if let Some(bad) = ts.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
                return Err(StepError::invalid(format!("timestamp {bad} is negative; times are seconds from the start")));
            }
            Ok(Wanted::Timestamps(ts.clone()))
        }
        _ => Err(StepError::invalid(
            "give exactly one of count, interval_s or timestamps_s to say which frames to take",
        )),
    }
}

/// Places the wanted frames on a video of `duration_s`, keeping every target
/// at or before `last_s` (the latest time that surely has a frame).
fn plan(wanted: &Wanted, duration_s: f64, last_s: f64) -> Result<Plan, StepError> {
    let clamp = |t: f64| t.min(last_s).max(0.0);
    let (targets, grid) = match wanted {
        Wanted::Count(n) => {
            let step = duration_s / *n as f64;
            let targets = (0..*n).map(|k| clamp((k as f64 + 0.5) * step)).collect();
            (targets, Some((step / 2.0, step)))
        }
        Wanted::Interval(i) => {
            // Frames at 0, I, 2I, ... strictly before the end.
            let n = (duration_s / i).ceil().max(1.0);
            if n > MAX_FRAMES as f64 {
                return Err(StepError::invalid(format!(
                    "interval_s {i} would take {n} frames from {duration_s:.1} s of video; the limit is {MAX_FRAMES}, use a longer interval"
                )));
            }
            let targets = (0..n as u64).map(|k| k as f64 * i).filter(|t| *t < duration_s || *t == 0.0);
            (targets.map(clamp).collect(), Some((0.0, *i)))
        }
        Wanted::Timestamps(ts) => {
            // A little slack: a caller may pass the duration ffprobe printed,
            // rounded to fewer digits than ours.
            if let Some(bad) = ts.iter().find(|t| **t > duration_s + 1e-3) {
                return Err(StepError::invalid(format!(
                    "timestamp {bad} s is past the end of the video ({duration_s:.3} s); use times within [0, {duration_s:.3}]"
                )));
            }
            (ts.iter().copied().map(clamp).collect::<Vec<f64>>(), None)
        }
    };
    // The grid alone misses targets pulled back to `last_s`; name those.
    let times = match grid {
        Some(_) => targets.iter().copied().filter(|t| *t >= last_s).take(1).collect(),
        None => targets.clone(),
    };
    Ok(Plan { selection: Selection { grid, times }, targets })
}

/// A small estimate of the bytes `frames` images take: a tenth of a byte per
/// pixel for JPEG, one byte per pixel for PNG (real frames of ordinary
/// video take more; this only catches a disk that is plainly too full).
fn estimated_bytes(frames: usize, video: &StreamSummary, max_width: Option<u32>, format: ImageFormat) -> u64 {
    let (w, h) = (video.width.unwrap_or(640) as u64, video.height.unwrap_or(360) as u64);
    let (w, h) = match max_width.map(u64::from) {
        Some(m) if m < w => (m, (h * m / w.max(1)).max(1)),
        _ => (w, h),
    };
    let per_frame = match format {
        ImageFormat::Jpg => w * h / 10,
        ImageFormat::Png => w * h,
    };
    per_frame.saturating_mul(frames as u64)
}

/// The latest time sure to have a frame: the end minus a margin.
fn last_frame_time(duration_s: f64, video: &StreamSummary) -> f64 {
    let end = video.duration_s.map_or(duration_s, |d| d.min(duration_s));
    let margin = video.fps.map_or(END_MARGIN_UNKNOWN_S, |fps| END_MARGIN_FRAMES / fps);
    (end - margin).max(0.0)
}

/// Runs the FRAME_SAMPLING step.
pub async fn run(payload: &Value, ctx: &StepContext) -> Result<StepOutput, StepError> {
    let p: FramesPayload = parse_payload(StepName::FrameSampling, payload)?;
    let wanted = validate(&p)?;
    let input = require_media_path(&p.media_path)?;
    let summary = probe_media(&input, ctx).await?.summary;
    let video = summary.main_video().cloned().ok_or_else(|| {
        StepError::invalid(format!("{} has no video stream to take frames from", p.media_path))
    })?;
    let duration_s = summary.duration_s.filter(|d| *d > 0.0).ok_or_else(|| {
        StepError::invalid(format!("the duration of {} is unknown, so frames cannot be placed", p.media_path))
    })?;
    let stream_index = video
        .index
        .ok_or_else(|| StepError::new(ErrorCode::FfmpegFailed, "ffprobe reported a video stream without an index"))?;
    let plan = plan(&wanted, duration_s, last_frame_time(duration_s, &video))?;
    let choice = choose_strategy(plan.targets.len(), duration_s, &ctx.settings.frames);
    ctx.log.line("job", &format!("{} frame(s) by {}: {}", plan.targets.len(), choice.strategy.as_str(), choice.reason));

    ctx.create_out_dir()?;
    let needed = estimated_bytes(plan.targets.len(), &video, p.max_width, p.format);
    let (out_dir, what) = (ctx.out_dir.clone(), format!("{} frame(s)", plan.targets.len()));
    tokio::task::spawn_blocking(move || disk::ensure_free(&out_dir, needed, &what))
        .await
        .map_err(|e| StepError::new(ErrorCode::Internal, format!("the free-space check failed: {e}")))??;
    let scratch = Scratch::create(&ctx.out_dir).await?;
    let x = Extraction {
        ffmpeg: &ctx.settings.tools.ffmpeg,
        input: &input,
        stream_index,
        ext: p.format.ext(),
        jpeg_quality: ctx.settings.frames.jpeg_quality,
        max_width: p.max_width,
        time_base: video.time_base,
        scratch: &scratch.0,
        timeout: Duration::from_secs(ctx.settings.step(StepName::FrameSampling.as_str()).timeout_s),
        log: &ctx.log,
        cancel: &ctx.cancel,
    };
    let sources = match choice.strategy {
        Strategy::Seek => extract_by_seeking(&x, &plan.targets).await?,
        Strategy::SinglePass => extract_single_pass(&x, &plan.selection, &plan.targets).await?,
    };
    let out_dir = ctx.out_dir.clone();
    let ext = p.format.ext();
    let committed = tokio::task::spawn_blocking(move || commit_frames(&out_dir, &sources, ext))
        .await
        .map_err(|e| StepError::new(ErrorCode::Internal, format!("frame commit panicked: {e}")))??;
    scratch.remove().await;

    let frames: Vec<Value> = committed
        .iter()
        .zip(&plan.targets)
        .map(|(f, t)| json!({"name": f.entry.name, "timestamp_s": t, "width": f.width, "height": f.height}))
        .collect();
    let result = json!({
        "media_path": p.media_path,
        "duration_s": duration_s,
        "video_stream_index": stream_index,
        "format": p.format,
        "strategy": choice.strategy,
        "reason": choice.reason,
        "frame_count": frames.len(),
        "frames": frames,
    });
    Ok(StepOutput { result, artifacts: committed.into_iter().map(|f| f.entry).collect() })
}

/// A frame under its final name.
struct Committed {
    entry: ArtifactEntry,
    width: u32,
    height: u32,
}

/// Checks each source image, moves it to `frame_NNNN.ext` (copying when a
/// later target shares it) and lists it in the manifest.
fn commit_frames(out_dir: &Path, sources: &[PathBuf], ext: &str) -> Result<Vec<Committed>, StepError> {
    let mut committed = Vec::with_capacity(sources.len());
    for (k, src) in sources.iter().enumerate() {
        let name = format!("frame_{:04}.{ext}", k + 1);
        let bytes = std::fs::read(src)
            .map_err(|e| StepError::new(ErrorCode::FfmpegFailed, format!("ffmpeg did not write {name}: {e}")))?;
        let (width, height) = image_size(&bytes).ok_or_else(|| {
            StepError::new(ErrorCode::FfmpegFailed, format!("ffmpeg wrote an unreadable image for {name}"))
        })?;
        let final_path = out_dir.join(&name);
        let shared_later = sources[k + 1..].contains(src);
        let io = |e| StepError::io_in(format!("writing {name}"), out_dir, e);
        if shared_later {
            artifacts::write_atomic(&final_path, &bytes).map_err(io)?;
        } else {
            artifacts::commit_temp(src, &final_path).map_err(io)?;
        }
        committed.push(Committed { entry: artifacts::entry_for(out_dir, &name)?, width, height });
    }
    Ok(committed)
}

/// The hidden folder ffmpeg writes into. Removed explicitly on success and,
/// as a fallback, when dropped on an error or cancellation.
struct Scratch(PathBuf);

impl Scratch {
    async fn create(out_dir: &Path) -> Result<Scratch, StepError> {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let dir = out_dir.join(format!(".frames-{}.part", &unique[..12]));
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| StepError::io_in("creating the frames scratch folder", out_dir, e))?;
        Ok(Scratch(dir))
    }

    async fn remove(mut self) {
        let dir = std::mem::take(&mut self.0);
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        let dir = std::mem::take(&mut self.0);
        // Removing a folder is blocking work; hand it to the blocking pool
        // when a runtime is around.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || std::fs::remove_dir_all(&dir));
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> FrameSettings {
        crate::config::Settings::load_from(None, &[]).unwrap().frames
    }

    #[test]
    fn seek_wins_below_break_even_and_a_pass_above() {
        let cfg = defaults();
        // 180 s of media: one pass is estimated at 180 x 0.032 = 5.76 s,
        // which 57 seeks (5.7 s, two at a time) stay below and 58 (5.8 s) exceed.
        for (frames, duration, expected) in [
            (10, 180.0, Strategy::Seek),
            (30, 180.0, Strategy::Seek),
            (57, 180.0, Strategy::Seek),
            (58, 180.0, Strategy::SinglePass),
            (300, 180.0, Strategy::SinglePass),
            (5, 60.0, Strategy::Seek),
            (5, 3.0, Strategy::SinglePass),
            (1, 3600.0, Strategy::Seek),
        ] {
            let c = choose_strategy(frames, duration, &cfg);
            assert_eq!(c.strategy, expected, "{frames} frames of {duration} s: {}", c.reason);
        }
        let c = choose_strategy(10, 180.0, &cfg);
        assert!(c.reason.contains("1.00 s") && c.reason.contains("5.76 s"), "{}", c.reason);
    }

    fn payload(v: Value) -> FramesPayload {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn payload_shapes() {
        let ok = |v: Value| validate(&payload(v)).unwrap();
        assert_eq!(ok(json!({"media_path": "a", "count": 3})), Wanted::Count(3));
        assert_eq!(ok(json!({"media_path": "a", "interval_s": 0.5})), Wanted::Interval(0.5));
        assert_eq!(ok(json!({"media_path": "a", "timestamps_s": [1.0, 0]})), Wanted::Timestamps(vec![1.0, 0.0]));
        for bad in [
            json!({"media_path": "a"}),
            json!({"media_path": "a", "count": 2, "interval_s": 1.0}),
            json!({"media_path": "a", "count": 0}),
            json!({"media_path": "a", "count": 10001}),
            json!({"media_path": "a", "interval_s": 0.0}),
            json!({"media_path": "a", "interval_s": -1.0}),
            json!({"media_path": "a", "timestamps_s": []}),
            json!({"media_path": "a", "timestamps_s": [-0.5]}),
            json!({"media_path": "a", "timestamps_s": vec![1.0; MAX_TIMESTAMPS + 1]}),
            json!({"media_path": "a", "count": 1, "max_width": 15}),
        ] {
            let err = validate(&payload(bad.clone())).unwrap_err();
            assert_eq!(err.code, ErrorCode::InputInvalid, "{bad}");
        }
    }

    /// Whatever the count or interval, a single pass selects them with a
    /// grid and at most one extra time, so the select expression stays
    /// short; explicit times at their maximum stay within bounds too.
    #[test]
    fn selections_stay_small_at_the_maxima() {
        use super::super::frame_extract::select_expression;
        for wanted in [Wanted::Count(MAX_FRAMES), Wanted::Interval(0.001)] {
            let p = plan(&wanted, 10.0, 9.94).unwrap();
            assert_eq!(p.targets.len() as u64, MAX_FRAMES);
            assert!(p.selection.times.len() <= 1, "{:?}", p.selection.times);
            assert!(select_expression(&p.selection).len() < 300);
        }
        let times: Vec<f64> = (0..MAX_TIMESTAMPS).map(|k| k as f64 * 0.019).collect();
        let p = plan(&Wanted::Timestamps(times), 10.0, 9.94).unwrap();
        assert!(select_expression(&p.selection).len() < 24_000);
    }

    #[test]
    fn plans_place_frames_inside_the_video() {
        let p = plan(&Wanted::Count(4), 8.0, 7.9).unwrap();
        assert_eq!(p.targets, vec![1.0, 3.0, 5.0, 7.0]);
        assert_eq!(p.selection, Selection { grid: Some((1.0, 2.0)), times: vec![] });

        let p = plan(&Wanted::Interval(1.0), 4.0, 3.94).unwrap();
        assert_eq!(p.targets, vec![0.0, 1.0, 2.0, 3.0]);
        let p = plan(&Wanted::Interval(10.0), 4.0, 3.94).unwrap();
        assert_eq!(p.targets, vec![0.0]);

        // The end is pulled back to the last sure frame, and a single pass
        // selects that time explicitly.
        let p = plan(&Wanted::Timestamps(vec![4.0, 0.0, 2.0]), 4.0, 3.94).unwrap();
        assert_eq!(p.targets, vec![3.94, 0.0, 2.0]);
        let p = plan(&Wanted::Count(1000), 4.0, 3.94).unwrap();
        assert_eq!(p.selection.times, vec![3.94]);

        for bad in [plan(&Wanted::Timestamps(vec![4.5]), 4.0, 3.94), plan(&Wanted::Interval(0.0001), 4.0, 3.94)] {
            assert_eq!(bad.unwrap_err().code, ErrorCode::InputInvalid);
        }
    }
}
