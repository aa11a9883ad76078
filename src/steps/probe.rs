//! FFMPEG_PROBE: runs ffprobe on one media file, keeps its raw JSON as the
//! artifact `ffprobe.json` and returns a normalised summary.
//!
//! ffprobe's JSON is awkward to consume: numbers arrive as strings, Matroska
//! and WebM streams carry no `duration` (only `tags.DURATION` such as
//! `"00:00:05.000000000"`), audio streams report a frame rate of `"0/0"`,
//! variable frame rate shows only as `r_frame_rate != avg_frame_rate`, and
//! `nb_frames` is often missing. [`summarize`] turns all of that into plain
//! numbers, or `null` when a value is unknown, never NaN or infinity.
//!
//! FRAME_SAMPLING reuses [`probe_media`] to learn the duration and the video
//! stream it samples from.

use super::{parse_payload, require_input_file, StepContext, StepName, StepOutput};
use crate::artifacts;
use crate::error::{ErrorCode, StepError};
use crate::process::{run_tool, Tool};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the artifact holding ffprobe's raw output.
pub const FFPROBE_ARTIFACT: &str = "ffprobe.json";

/// Two frame rates closer than this (relative) count as equal: constant
/// frame rate files often report an average that differs from the nominal
/// rate in the last digits (`2997/100` against `30000/1001`).
const VFR_RELATIVE_TOLERANCE: f64 = 0.005;

/// The FFMPEG_PROBE payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbePayload {
    media_path: String,
}

/// A normalised view of one media file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MediaSummary {
    /// Container duration, falling back to the longest stream.
    pub duration_s: Option<f64>,
    /// The container's first timestamp; `-ss` positions are relative to it.
    pub start_time_s: Option<f64>,
    pub format_name: Option<String>,
    pub size_bytes: Option<u64>,
    pub bit_rate: Option<u64>,
    pub streams: Vec<StreamSummary>,
}

/// A normalised view of one stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamSummary {
    pub index: Option<u64>,
    pub codec_type: Option<String>,
    pub codec_name: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Frames per second from `avg_frame_rate` (the nominal rate when the
    /// average is unknown); null for audio and cover art.
    pub fps: Option<f64>,
    /// Variable frame rate: true when the nominal and average rates differ.
    /// Null for streams that are not video or when a rate is unknown.
    pub vfr: Option<bool>,
    pub sample_rate: Option<u32>,
    pub channels: Option<u32>,
    /// The stream's own duration, then its `DURATION` tag, then the
    /// container's duration.
    pub duration_s: Option<f64>,
    pub nb_frames: Option<u64>,
    /// A cover picture stored as a video stream (not something to sample).
    pub attached_pic: bool,
    /// The stream time base as a number of seconds per tick, used to turn
    /// filter timestamps back into seconds exactly. Not part of the result.
    #[serde(skip)]
    pub time_base: Option<f64>,
}

impl MediaSummary {
    /// The first real video stream (cover pictures excluded).
    pub fn main_video(&self) -> Option<&StreamSummary> {
        self.streams.iter().find(|s| s.codec_type.as_deref() == Some("video") && !s.attached_pic)
    }
}

/// What [`probe_media`] learned: ffprobe's raw JSON and its summary.
#[derive(Debug)]
pub struct Probed {
    pub raw_json: Vec<u8>,
    pub summary: MediaSummary,
}

/// Runs the FFMPEG_PROBE step.
pub async fn run(payload: &Value, ctx: &StepContext) -> Result<StepOutput, StepError> {
    let p: ProbePayload = parse_payload(StepName::FfmpegProbe, payload)?;
    let path = require_media_path(&p.media_path)?;
    let probed = probe_media(&path, ctx).await?;

    ctx.create_out_dir()?;
    let out_dir = ctx.out_dir.clone();
    let raw = probed.raw_json;
    // Writing and hashing touch the disk, so they stay off the async threads.
    let entry = tokio::task::spawn_blocking(move || {
        artifacts::write_atomic(&out_dir.join(FFPROBE_ARTIFACT), &raw)
            .map_err(|e| StepError::io(format!("writing {FFPROBE_ARTIFACT}"), e))?;
        artifacts::entry_for(&out_dir, FFPROBE_ARTIFACT)
    })
    .await
    .map_err(|e| StepError::new(ErrorCode::Internal, format!("artifact writer panicked: {e}")))??;

    let mut result = serde_json::to_value(&probed.summary)
        .map_err(|e| StepError::new(ErrorCode::Internal, format!("serialising the summary: {e}")))?;
    if let Value::Object(map) = &mut result {
        map.insert("media_path".into(), Value::String(p.media_path));
    }
    Ok(StepOutput { result, artifacts: vec![entry] })
}

/// Validates a payload's media path: not empty, an existing readable file.
/// Returns it made absolute, so tools may run in another working directory.
pub fn require_media_path(media_path: &str) -> Result<PathBuf, StepError> {
    if media_path.trim().is_empty() {
        return Err(StepError::invalid("media_path is empty; give the path of a media file"));
    }
    let path = require_input_file(media_path)?;
    std::path::absolute(&path)
        .map_err(|e| StepError::new(ErrorCode::InputNotFound, format!("{media_path} cannot be resolved: {e}")))
}

/// The input argument for ffmpeg/ffprobe. The `file:` prefix makes the tools
/// treat the path as a local file even when its name looks like an option
/// (`-x.mp4`) or another protocol (`concat:...`, `http:...`).
pub fn media_input_arg(path: &Path) -> OsString {
    let mut arg = OsString::from("file:");
    arg.push(path.as_os_str());
    arg
}

/// Runs ffprobe on `path` and summarises its output.
///
/// Errors: `FFMPEG_UNAVAILABLE` when ffprobe cannot be started,
/// `INPUT_INVALID` when it cannot read the file or finds no stream,
/// `FFMPEG_FAILED` when it crashes or prints something that is not JSON.
pub async fn probe_media(path: &Path, ctx: &StepContext) -> Result<Probed, StepError> {
    let timeout = Duration::from_secs(ctx.settings.step(StepName::FfmpegProbe.as_str()).timeout_s);
    let tool = Tool::new(&ctx.settings.tools.ffprobe, "ffprobe")
        .args(["-v", "error", "-show_format", "-show_streams", "-of", "json"])
        .arg(media_input_arg(path))
        .timeout(timeout)
        .capture_stdout()
        .codes(ErrorCode::FfmpegUnavailable, ErrorCode::FfmpegFailed);
    let out = run_tool(&tool, &ctx.log, &ctx.cancel).await?;
    let shown = path.display();
    if !out.success() {
        // A normal non-zero exit means ffprobe could not make sense of the
        // file; death by a signal is a tool failure, not the input's fault.
        if out.status.code().is_some() {
            return Err(StepError::invalid(format!(
                "{shown} is not a media file ffprobe can read ({}); check the file",
                one_line(&out.stderr_tail)
            )));
        }
        return Err(StepError::new(
            ErrorCode::FfmpegFailed,
            format!("ffprobe died on {shown} ({}): {}", out.status, one_line(&out.stderr_tail)),
        ));
    }
    let json: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        StepError::new(ErrorCode::FfmpegFailed, format!("ffprobe printed invalid JSON for {shown}: {e}"))
    })?;
    let summary = summarize(&json);
    if summary.streams.is_empty() {
        return Err(StepError::invalid(format!("{shown} contains no audio or video stream; check the file")));
    }
    Ok(Probed { raw_json: out.stdout, summary })
}

/// Joins ffprobe's last stderr lines for an error message.
fn one_line(stderr_tail: &str) -> String {
    let s = stderr_tail.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    if s.is_empty() {
        "no error message".into()
    } else {
        s
    }
}

/// Normalises ffprobe's `-show_format -show_streams` JSON.
pub fn summarize(json: &Value) -> MediaSummary {
    let empty = Map::new();
    let format = json.get("format").and_then(Value::as_object).unwrap_or(&empty);
    let format_duration = number(format.get("duration")).filter(|d| *d >= 0.0);
    let streams: Vec<StreamSummary> = json
        .get("streams")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_object).map(|s| summarize_stream(s, format_duration)).collect())
        .unwrap_or_default();
    let duration_s = format_duration.or_else(|| {
        streams.iter().filter_map(|s| s.duration_s).fold(None, |acc: Option<f64>, d| Some(acc.map_or(d, |a| a.max(d))))
    });
    MediaSummary {
        duration_s,
        start_time_s: number(format.get("start_time")),
        format_name: format.get("format_name").and_then(Value::as_str).map(str::to_string),
        size_bytes: unsigned(format.get("size")),
        bit_rate: unsigned(format.get("bit_rate")),
        streams,
    }
}

fn summarize_stream(s: &Map<String, Value>, format_duration: Option<f64>) -> StreamSummary {
    let codec_type = s.get("codec_type").and_then(Value::as_str).map(str::to_string);
    let is_video = codec_type.as_deref() == Some("video");
    let attached_pic = s
        .get("disposition")
        .and_then(|d| d.get("attached_pic"))
        .and_then(|v| unsigned(Some(v)))
        .is_some_and(|v| v == 1);
    let nominal = s.get("r_frame_rate").and_then(Value::as_str).and_then(rate);
    let average = s.get("avg_frame_rate").and_then(Value::as_str).and_then(rate);
    let (fps, vfr) = if is_video && !attached_pic {
        let vfr = match (nominal, average) {
            (Some(r), Some(a)) => Some((r - a).abs() > VFR_RELATIVE_TOLERANCE * r.max(a)),
            _ => None,
        };
        (average.or(nominal), vfr)
    } else {
        (None, None)
    };
    let duration_s = number(s.get("duration"))
        .filter(|d| *d >= 0.0)
        .or_else(|| s.get("tags").and_then(Value::as_object).and_then(tag_duration))
        .or(format_duration);
    StreamSummary {
        index: unsigned(s.get("index")),
        codec_type,
        codec_name: s.get("codec_name").and_then(Value::as_str).map(str::to_string),
        width: unsigned(s.get("width")).and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0),
        height: unsigned(s.get("height")).and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0),
        fps,
        vfr,
        sample_rate: unsigned(s.get("sample_rate")).and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0),
        channels: unsigned(s.get("channels")).and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0),
        duration_s,
        nb_frames: unsigned(s.get("nb_frames")),
        attached_pic,
        time_base: s.get("time_base").and_then(Value::as_str).and_then(rate),
    }
}

/// A finite number from a JSON number or a numeric string (`"N/A"` and
/// friends give `None`).
fn number(v: Option<&Value>) -> Option<f64> {
    let x = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

/// A non-negative integer from a JSON number or a numeric string.
fn unsigned(v: Option<&Value>) -> Option<u64> {
    if let Some(n) = v.and_then(Value::as_u64) {
        return Some(n);
    }
    if let Some(Value::String(s)) = v {
        if let Ok(n) = s.trim().parse::<u64>() {
            return Some(n);
        }
    }
    // Some fields arrive as "44100.000000"-like strings; accept whole values.
    let x = number(v)?;
    (x >= 0.0 && x.fract() == 0.0 && x < u64::MAX as f64).then_some(x as u64)
}

/// A positive, finite rate from `"num/den"` (or a plain number); `"0/0"`
/// and anything else unusable give `None`.
fn rate(s: &str) -> Option<f64> {
    let x = match s.split_once('/') {
        Some((n, d)) => {
            let (n, d) = (n.trim().parse::<f64>().ok()?, d.trim().parse::<f64>().ok()?);
            if d == 0.0 {
                return None;
            }
            n / d
        }
        None => s.trim().parse::<f64>().ok()?,
    };
    (x.is_finite() && x > 0.0).then_some(x)
}

/// The duration of a Matroska/WebM stream from its `DURATION` tag (the tag
/// may carry a language suffix, as in `DURATION-eng`).
fn tag_duration(tags: &Map<String, Value>) -> Option<f64> {
    tags.iter()
        .filter(|(k, _)| k.to_ascii_uppercase().starts_with("DURATION"))
        .find_map(|(_, v)| v.as_str().and_then(parse_clock))
}

/// Parses `HH:MM:SS.fraction` (also `MM:SS.f` and plain seconds).
pub fn parse_clock(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() > 3 {
        return None;
    }
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let v: f64 = if last {
            part.parse().ok()?
        } else {
            part.parse::<u64>().ok()? as f64
        };
        if !v.is_finite() || v < 0.0 || (!last && i > 0 && v >= 60.0) {
            return None;
        }
        total = total * 60.0 + v;
    }
    total.is_finite().then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clock_strings() {
        for (input, expected) in [
            ("00:00:05.000000000", Some(5.0)),
            ("01:02:03.5", Some(3723.5)),
            ("02:03.25", Some(123.25)),
            ("7.5", Some(7.5)),
            ("00:61:00", None),
            ("N/A", None),
            ("", None),
            ("1:2:3:4", None),
        ] {
            assert_eq!(parse_clock(input), expected, "{input:?}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(rate("25/1"), Some(25.0));
        assert_eq!(rate("0/0"), None);
        assert_eq!(rate("30000/1001").map(|r| (r * 1000.0).round()), Some(29970.0));
        assert_eq!(rate("bogus"), None);
        assert_eq!(rate("1/0"), None);
    }

    #[test]
    fn matroska_stream_durations_come_from_tags() {
        let j = json!({
            "format": {"duration": "5.100000", "format_name": "matroska,webm", "size": "1234", "bit_rate": "9000"},
            "streams": [
                {"index": 0, "codec_type": "video", "codec_name": "vp9", "width": 320, "height": 240,
                 "r_frame_rate": "25/1", "avg_frame_rate": "25/1", "tags": {"DURATION": "00:00:05.000000000"}},
                {"index": 1, "codec_type": "audio", "codec_name": "opus", "sample_rate": "48000", "channels": 2,
                 "r_frame_rate": "0/0", "avg_frame_rate": "0/0", "tags": {"DURATION-eng": "00:00:05.010000000"}},
                {"index": 2, "codec_type": "subtitle", "codec_name": "ass"}
            ]
        });
        let s = summarize(&j);
        assert_eq!(s.duration_s, Some(5.1));
        assert_eq!(s.size_bytes, Some(1234));
        assert_eq!(s.bit_rate, Some(9000));
        assert_eq!(s.streams[0].duration_s, Some(5.0));
        assert_eq!(s.streams[0].fps, Some(25.0));
        assert_eq!(s.streams[0].vfr, Some(false));
        assert_eq!(s.streams[1].duration_s, Some(5.01));
        assert_eq!(s.streams[1].fps, None);
        assert_eq!(s.streams[1].vfr, None);
        assert_eq!(s.streams[1].sample_rate, Some(48000));
        // Nothing else known: the container's duration stands in.
        assert_eq!(s.streams[2].duration_s, Some(5.1));
        assert_eq!(s.streams[2].nb_frames, None);
    }

    #[test]
    fn variable_frame_rate_uses_the_average() {
        let j = json!({"format": {}, "streams": [
            {"index": 0, "codec_type": "video", "r_frame_rate": "25/1", "avg_frame_rate": "625/74",
             "duration": "11.84", "nb_frames": "100"}
        ]});
        let v = &summarize(&j).streams[0];
        assert_eq!(v.vfr, Some(true));
        assert!((v.fps.unwrap() - 625.0 / 74.0).abs() < 1e-9);
        assert_eq!(v.nb_frames, Some(100));
        assert_eq!(v.duration_s, Some(11.84));
    }

    #[test]
    fn near_equal_rates_are_not_vfr_and_garbage_is_null() {
        let j = json!({"format": {"duration": "N/A", "size": "x"}, "streams": [
            {"index": 0, "codec_type": "video", "r_frame_rate": "30000/1001", "avg_frame_rate": "2997/100",
             "width": 0, "duration": "nan"},
            {"index": 1, "codec_type": "video", "r_frame_rate": "90000/1", "avg_frame_rate": "0/0",
             "disposition": {"attached_pic": 1}}
        ]});
        let s = summarize(&j);
        assert_eq!(s.duration_s, None);
        assert_eq!(s.size_bytes, None);
        assert_eq!(s.streams[0].vfr, Some(false));
        assert_eq!(s.streams[0].width, None);
        assert_eq!(s.streams[0].duration_s, None);
        assert!(s.streams[1].attached_pic);
        assert_eq!(s.streams[1].fps, None);
        assert_eq!(s.main_video().and_then(|v| v.index), Some(0));
        // Serialised, unknown numbers are null and never NaN.
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"duration_s\":null") && !text.contains("NaN"), "{text}");
        assert!(!text.contains("time_base"), "{text}");
    }

    #[test]
    fn input_arg_is_always_a_local_file() {
        assert_eq!(media_input_arg(Path::new("/tmp/-x.mp4")), OsString::from("file:/tmp/-x.mp4"));
    }
}
