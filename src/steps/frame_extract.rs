//! The two ways FRAME_SAMPLING gets frames out of ffmpeg, both writing into a
//! scratch folder that the step later commits from:
//!
//! - [`extract_by_seeking`]: one `ffmpeg -ss T -i in -frames:v 1` per target
//!   time, a couple at once. Each run decodes only from the keyframe before
//!   `T`, so the cost grows with the number of frames, not the duration.
//! - [`extract_single_pass`]: one decode of the whole stream through a
//!   `select` filter that keeps the first frame at or after each target. The
//!   cost grows with the duration, not the number of frames. A `metadata`
//!   filter writes each kept frame's timestamp to a file, so every target can
//!   be matched to its frame even when two targets fall on the same frame.
//!
//! Target times are seconds from the start of the media: ffmpeg shifts
//! timestamps so that the input starts at zero, both for `-ss` and inside
//! filters, so no start offset is needed here.
//!
//! Needs ffmpeg 5.1 or later (`-fps_mode`); an older one fails with
//! `FFMPEG_FAILED` and "Unrecognized option" in the message.

use super::probe::media_input_arg;
use crate::error::{ErrorCode, StepError, NO_SPACE_TEXT};
use crate::joblog::JobLog;
use crate::process::{run_tool, Tool};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Seeking runs started at once. Each ffmpeg decodes with its own threads,
/// so two keep a small machine busy without thrashing it.
pub const SEEK_PARALLELISM: usize = 2;

/// Targets are lowered by this much inside the select filter, so a frame
/// whose timestamp equals a target despite float rounding is still taken.
const SELECT_EPSILON_S: f64 = 1e-4;

/// When a seek lands past the last decodable frame (durations in headers are
/// approximate), the seek is retried this much earlier.
const SEEK_RETRY_BACKOFF_S: f64 = 1.0;

/// File the `metadata` filter writes kept frames' timestamps into.
const TIMES_FILE: &str = "frames.txt";

/// Everything both strategies need to run ffmpeg.
#[derive(Debug, Clone)]
pub struct Extraction<'a> {
    pub ffmpeg: &'a str,
    pub input: &'a Path,
    /// Absolute index of the video stream to sample.
    pub stream_index: u64,
    /// `jpg` or `png`.
    pub ext: &'static str,
    pub jpeg_quality: u32,
    pub max_width: Option<u32>,
    /// Stream time base (seconds per tick), to read timestamps exactly.
    pub time_base: Option<f64>,
    pub scratch: &'a Path,
    pub timeout: Duration,
    pub log: &'a JobLog,
    pub cancel: &'a CancellationToken,
}

/// How single-pass selection is described to ffmpeg.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// A regular grid `first + k * step` (count and interval requests), which
    /// the filter evaluates in constant time per frame.
    pub grid: Option<(f64, f64)>,
    /// Individual times, looked up per decoded frame by a binary search
    /// written into the expression (see [`select_expression`]).
    pub times: Vec<f64>,
}

impl Extraction<'_> {
    fn tool(&self, label: &str) -> Tool {
        let mut tool = Tool::new(self.ffmpeg, label)
            .args(["-hide_banner", "-nostdin", "-v", "error", "-y"])
            .timeout(self.timeout)
            .codes(ErrorCode::FfmpegUnavailable, ErrorCode::FfmpegFailed);
        // Outputs are named relative to the scratch folder, so its path never
        // meets ffmpeg's filename patterns or filter-argument escaping.
        tool.cwd = Some(self.scratch.to_path_buf());
        tool
    }

    /// The scale filter for `max_width`: never upscales, keeps the aspect
    /// ratio and rounds the height to an even number.
    fn scale_filter(&self) -> Option<String> {
        self.max_width.map(|w| format!("scale=w=min(iw\\,{w}):h=-2"))
    }

    fn encoder_args(&self) -> Vec<OsString> {
        if self.ext == "jpg" {
            vec!["-q:v".into(), self.jpeg_quality.to_string().into()]
        } else {
            Vec::new()
        }
    }

    async fn run_ffmpeg(&self, tool: Tool, what: &str) -> Result<(), StepError> {
        let out = run_tool(&tool, self.log, self.cancel).await?;
        if out.success() {
            return Ok(());
        }
        let tail = out.stderr_tail.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        if out.stderr_tail.contains(NO_SPACE_TEXT) {
            // The scratch folder lives inside the job's output folder.
            let folder = self.scratch.parent().unwrap_or(self.scratch);
            return Err(StepError::disk_full(folder, format!("ffmpeg failed while {what}: {tail}")));
        }
        Err(StepError::new(
            ErrorCode::FfmpegFailed,
            format!("ffmpeg failed while {what} ({}): {tail}; see the job log", out.status),
        ))
    }
}

/// Takes one frame per target by seeking; returns one file per target, in
/// the order of `targets`.
pub async fn extract_by_seeking(x: &Extraction<'_>, targets: &[f64]) -> Result<Vec<PathBuf>, StepError> {
    let total = targets.len();
    stream::iter(targets.iter().copied().enumerate())
        .map(|(k, t)| seek_one(x, k, t))
        .buffered(SEEK_PARALLELISM)
        .enumerate()
        .map(|(done, frame)| {
            if frame.is_ok() {
                x.log.progress("frame", done + 1, total);
            }
            frame
        })
        .try_collect()
        .await
}

async fn seek_one(x: &Extraction<'_>, k: usize, target: f64) -> Result<PathBuf, StepError> {
    let name = format!("seek_{:06}.{}", k + 1, x.ext);
    let path = x.scratch.join(&name);
    let mut at = target;
    loop {
        let mut tool = x
            .tool("ffmpeg")
            .args(["-ss".to_string(), format!("{at:.6}"), "-i".to_string()])
            .arg(media_input_arg(x.input))
            .args(["-map".to_string(), format!("0:{}", x.stream_index), "-frames:v".into(), "1".into()]);
        if let Some(scale) = x.scale_filter() {
            tool = tool.args(["-vf".to_string(), scale]);
        }
        tool = tool.args(x.encoder_args()).args(["-f", "image2", "-update", "1"]).arg(&name);
        x.run_ffmpeg(tool, &format!("taking the frame at {at:.3} s")).await?;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        // ffmpeg exits cleanly without a frame when the seek lands after the
        // last frame; step back once before giving up.
        if at <= 0.0 || at < target - SEEK_RETRY_BACKOFF_S / 2.0 {
            return Err(StepError::new(
                ErrorCode::FfmpegFailed,
                format!("ffmpeg returned no frame at {target:.3} s; the file may be truncated"),
            ));
        }
        at = (target - SEEK_RETRY_BACKOFF_S).max(0.0);
    }
}

/// Takes every frame in one decoding pass; returns one file per target, in
/// the order of `targets` (targets falling on the same frame share a file).
pub async fn extract_single_pass(
    x: &Extraction<'_>,
    selection: &Selection,
    targets: &[f64],
) -> Result<Vec<PathBuf>, StepError> {
    let mut graph = vec![
        format!("select='{}'", select_expression(selection)),
        "metadata=mode=add:key=rayvault_kept:value=1".to_string(),
        format!("metadata=mode=print:file={TIMES_FILE}"),
    ];
    graph.extend(x.scale_filter());
    let pattern = format!("pass_%06d.{}", x.ext);
    let tool = x
        .tool("ffmpeg")
        .arg("-i")
        .arg(media_input_arg(x.input))
        .args(["-map".to_string(), format!("0:{}", x.stream_index), "-vf".into(), graph.join(",")])
        // Without passthrough the image2 muxer would duplicate frames to
        // fill a constant rate between the selected ones.
        .args(["-fps_mode", "passthrough"])
        .args(x.encoder_args())
        .args(["-f", "image2", "-start_number", "1"])
        .arg(&pattern);
    x.run_ffmpeg(tool, "decoding the video in one pass").await?;

    let text = tokio::fs::read_to_string(x.scratch.join(TIMES_FILE))
        .await
        .map_err(|e| StepError::new(ErrorCode::FfmpegFailed, format!("ffmpeg wrote no frame timestamps: {e}")))?;
    let times = parse_kept_times(&text, x.time_base);
    if times.is_empty() {
        return Err(StepError::new(ErrorCode::FfmpegFailed, "ffmpeg kept no frame; the video stream may be empty"));
    }
    let files: Vec<PathBuf> = (1..=times.len()).map(|j| x.scratch.join(format!("pass_{j:06}.{}", x.ext))).collect();
    Ok(match_targets(targets, &times).into_iter().map(|j| files[j].clone()).collect())
}

/// The `select` expression: keep a frame when some target lies after the
/// previously kept frame and at or before this one. Register 0 holds the
/// previous kept time (NaN before the first, replaced by a huge negative).
///
/// Individual times are not written as one term each: ffmpeg's expression
/// parser gives up on a long sum ("Error while parsing expression ...
/// Cannot allocate memory" from about a hundred terms). Instead the
/// expression holds a balanced binary search over the sorted times that
/// yields the first time after the previous kept frame, and the frame is
/// kept when it is at or after that time. Nesting grows with the logarithm
/// of the count (9 levels for 500 times), and each frame costs that many
/// comparisons rather than one term per time.
pub fn select_expression(selection: &Selection) -> String {
    let mut terms = Vec::new();
    if let Some((first, step)) = selection.grid {
        let first = first - SELECT_EPSILON_S;
        // Parenthesised so that a negative `first` never reads as `t--0.1`.
        terms.push(format!(
            "gte(t,{first:.6})*gt(floor((t-({first:.6}))/{step:.6}),floor((ld(0)-({first:.6}))/{step:.6}))"
        ));
    }
    // Written out once, so that comparisons and results use the very same
    // numbers and times that print alike count once.
    let mut times: Vec<String> = {
        let mut sorted = selection.times.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.iter().map(|t| format!("{:.6}", t - SELECT_EPSILON_S)).collect()
    };
    times.dedup();
    if !times.is_empty() {
        terms.push(format!("gte(t,{})", next_time_after_previous(&times, 0, times.len())));
    }
    if terms.is_empty() {
        terms.push("0".into());
    }
    format!("st(0,if(isnan(prev_selected_t),-1e12,prev_selected_t));gt({},0)", terms.join("+"))
}

/// Beyond any media time: "no time left to take".
const NO_MORE_TIMES: &str = "1e12";

/// An expression for the first of `times[lo..]` that is above register 0
/// (the previous kept time), knowing that it is one of `times[lo..=hi]`
/// (`hi == times.len()` standing for none). `times` is sorted ascending.
fn next_time_after_previous(times: &[String], lo: usize, hi: usize) -> String {
    if lo == hi {
        return times.get(lo).cloned().unwrap_or_else(|| NO_MORE_TIMES.to_string());
    }
    let mid = lo + (hi - lo) / 2;
    format!(
        "if(lt(ld(0),{}),{},{})",
        times[mid],
        next_time_after_previous(times, lo, mid),
        next_time_after_previous(times, mid + 1, hi)
    )
}

/// Reads the kept frames' times (seconds) from the `metadata` filter's
/// output: `frame:N pts:P pts_time:T` header lines.
pub fn parse_kept_times(text: &str, time_base: Option<f64>) -> Vec<f64> {
    text.lines()
        .filter(|l| l.starts_with("frame:"))
        .filter_map(|l| {
            let field = |name: &str| {
                l.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| v.parse::<f64>().ok())
            };
            let printed = field("pts_time:")?;
            // pts_time is printed with six significant digits only; the raw
            // pts times the stream time base is exact when it agrees.
            let exact = field("pts:").zip(time_base).map(|(p, tb)| p * tb);
            Some(match exact {
                Some(e) if (e - printed).abs() <= 1e-3 * printed.abs().max(1.0) => e,
                _ => printed,
            })
            .filter(|t| t.is_finite())
        })
        .collect()
}

/// For each target, the index of the first kept frame at or after it (the
/// last frame when none is). `kept` is in decoding order, hence ascending.
pub fn match_targets(targets: &[f64], kept: &[f64]) -> Vec<usize> {
    targets
        .iter()
        .map(|&t| {
            kept.iter()
                .position(|&k| k >= t - 2.0 * SELECT_EPSILON_S)
                .unwrap_or(kept.len().saturating_sub(1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expression_for_times_and_grids() {
        let e = select_expression(&Selection { grid: None, times: vec![2.0, 0.5, 2.0] });
        assert_eq!(
            e,
            "st(0,if(isnan(prev_selected_t),-1e12,prev_selected_t));\
             gt(gte(t,if(lt(ld(0),1.999900),if(lt(ld(0),0.499900),0.499900,1.999900),1e12)),0)"
        );
        let g = select_expression(&Selection { grid: Some((0.5, 1.0)), times: vec![] });
        assert!(g.contains("floor((t-(0.499900))/1.000000)"), "{g}");
        // No comma may appear outside the quoted expression's functions in a
        // way that would split the filter graph: the caller quotes it whole.
        assert!(!g.contains('\''));
    }

    /// Evaluates the binary search the way ffmpeg would, for a previous
    /// kept time `prev`.
    fn next_after(times: &[f64], prev: f64) -> f64 {
        let printed: Vec<String> = times.iter().map(|t| format!("{t:.6}")).collect();
        let mut expr = next_time_after_previous(&printed, 0, printed.len());
        // Walk the nested if(lt(ld(0),X),A,B) by hand.
        loop {
            let Some(rest) = expr.strip_prefix("if(lt(ld(0),") else { return expr.parse().unwrap() };
            let (x, rest) = rest.split_once("),").unwrap();
            let x: f64 = x.parse().unwrap();
            // Split the two branches at the top-level comma.
            let body = &rest[..rest.len() - 1];
            let mut depth = 0;
            let cut = body
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    c == ',' && depth == 0
                })
                .unwrap()
                .0;
            expr = if prev < x { body[..cut].to_string() } else { body[cut + 1..].to_string() };
        }
    }

    #[test]
    fn the_search_finds_the_next_time_and_stays_shallow() {
        let times: Vec<f64> = (0..500).map(|k| k as f64 * 0.25).collect();
        for prev in [-1e12, 0.0, 0.1, 0.25, 61.3, 124.75, 200.0] {
            let expected = times.iter().copied().find(|&t| t > prev).unwrap_or(1e12);
            assert_eq!(next_after(&times, prev), expected, "after {prev}");
        }
        // 500 times a day apart nest 9 deep and fit a Windows command line
        // (32,767 characters) with room to spare.
        let far: Vec<f64> = (0..500).map(|k| 86_000.0 + k as f64 * 0.8).collect();
        let e = select_expression(&Selection { grid: Some((0.5, 1.0)), times: far });
        assert!(e.len() < 24_000, "{} characters", e.len());
        assert_eq!(e.matches("if(lt(").count(), 500);
        let mut depth = 0usize;
        let deepest = e.chars().fold(0usize, |m, c| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            m.max(depth)
        });
        assert!(deepest < 40, "nesting {deepest}");
    }

    #[test]
    fn kept_times_prefer_exact_pts() {
        let text = "frame:0    pts:6656    pts_time:0.52\nrayvault_kept=1\nframe:1    pts:25600   pts_time:2\n";
        assert_eq!(parse_kept_times(text, Some(1.0 / 12800.0)), vec![0.52, 2.0]);
        // A time base that disagrees with the printed time is ignored.
        assert_eq!(parse_kept_times(text, Some(1.0)), vec![0.52, 2.0]);
        assert_eq!(parse_kept_times("garbage\nframe:x\n", None), Vec::<f64>::new());
    }

    #[test]
    fn targets_map_to_the_first_frame_at_or_after_them() {
        let kept = [0.52, 2.0, 3.96];
        assert_eq!(match_targets(&[0.5, 0.51, 2.0, 1.0, 3.96, 9.0], &kept), vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(match_targets(&[1.0], &[]), vec![0]);
    }
}
