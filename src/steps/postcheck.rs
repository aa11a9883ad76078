//! AUDIO_POSTCHECK: measures rendered voice-over files natively (symphonia
//! decoding, `ebur128` loudness, our own silence and peak scanners; no
//! ffmpeg) and judges them against thresholds.
//!
//! Payload: `{"audio_paths": [...], "thresholds": {...}}`. The thresholds
//! default to `[postcheck]` in `config/default.toml`
//! ([`PostcheckThresholds`]); the payload's object overrides any subset of
//! them, and an unknown key is rejected with `INPUT_INVALID` naming it.
//!
//! Failure codes: a missing file is `INPUT_NOT_FOUND`; a file that is not
//! decodable audio is `AUDIO_DECODE_FAILED` (the whole step fails, naming
//! the file, since a report that silently skipped a chunk would pass a
//! broken render). Everything measurable is reported, with `null` where a
//! value does not exist (the loudness of silence, of a clip under 400 ms).
//!
//! Result: `{"passed", "thresholds", "files": [{"path", "duration_s",
//! "sample_rate", "channels", "integrated_lufs", "lra_lu", "true_peak_dbtp",
//! "sample_peak_dbfs", "clipped_samples", "leading_silence_s",
//! "trailing_silence_s", "longest_silence_s", "passed", "problems": [{"code",
//! "message"}]}]}`, also written as the artifact `postcheck_report.json` when the payload
//! asks for it with `"report_artifact": true`.
//! Problem codes are listed in [`Problem`] and in `docs/steps.md`.

use super::loudness::{analyze_file, Measurements};
use super::{parse_payload, require_input_file, StepContext, StepName, StepOutput};
use crate::artifacts;
use crate::config::PostcheckThresholds;
use crate::error::{ErrorCode, StepError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The report's artifact name.
pub const REPORT_NAME: &str = "postcheck_report.json";

/// Most files one job may check; a larger batch should be split into jobs.
pub const MAX_FILES: usize = 4096;

/// Integrated loudness needs at least one 400 ms gating block.
const MIN_LOUDNESS_S: f64 = 0.4;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    audio_paths: Vec<String>,
    #[serde(default)]
    thresholds: Option<Value>,
    /// Also write the result as the artifact `postcheck_report.json`. Off
    /// by default: the result itself carries the same JSON, and a job
    /// without artifacts creates no files on the worker.
    #[serde(default)]
    report_artifact: bool,
}

/// One finding about a file: a stable SCREAMING_SNAKE_CASE code and a
/// message saying what is wrong and what to do.
///
/// Codes: `TOO_SHORT`, `SILENT`, `TOO_SHORT_FOR_LOUDNESS`,
/// `LOUDNESS_UNMEASURABLE`, `LOUDNESS_OUT_OF_RANGE`, `TRUE_PEAK_TOO_HIGH`,
/// `CLIPPING`, `LEADING_SILENCE_TOO_LONG`, `TRAILING_SILENCE_TOO_LONG`,
/// `INTERNAL_SILENCE_TOO_LONG`, `SAMPLE_RATE_MISMATCH`, `CORRUPT_PACKETS`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub code: &'static str,
    pub message: String,
}

fn problem(code: &'static str, message: String) -> Problem {
    Problem { code, message }
}

/// Runs the step.
pub async fn run(payload: &Value, ctx: &StepContext) -> Result<StepOutput, StepError> {
    let p: Payload = parse_payload(StepName::AudioPostcheck, payload)?;
    let thresholds = effective_thresholds(&ctx.settings.postcheck, p.thresholds.as_ref())?;
    if p.audio_paths.is_empty() {
        return Err(StepError::invalid("audio_paths is empty; list at least one audio file to check"));
    }
    if p.audio_paths.len() > MAX_FILES {
        return Err(StepError::invalid(format!(
            "audio_paths lists {} files; at most {MAX_FILES} fit in one job, so split the batch",
            p.audio_paths.len()
        )));
    }
    let parallel = ctx.settings.postcheck.parallel_files.max(1);
    let (paths, measured) = if let [only] = p.audio_paths.as_slice() {
        one_file(only, thresholds.silence_threshold_dbfs, parallel, ctx).await?
    } else {
        // Checking thousands of paths touches the disk: keep it off the executor.
        let given = p.audio_paths.clone();
        let paths = tokio::task::spawn_blocking(move || {
            given.iter().map(|s| require_input_file(s)).collect::<Result<Vec<PathBuf>, _>>()
        })
        .await
        .map_err(|e| StepError::new(ErrorCode::Internal, format!("checking the input paths failed: {e}")))??;
        ctx.log.line("postcheck", &format!("checking {} file(s), {parallel} at a time", paths.len()));
        let measured = measure_all(paths.clone(), thresholds.silence_threshold_dbfs, parallel, ctx).await?;
        (paths, measured)
    };
    let mut files = Vec::with_capacity(measured.len());
    let mut all_passed = true;
    for ((given, path), m) in p.audio_paths.iter().zip(&paths).zip(&measured) {
        let problems = judge(m, &thresholds);
        all_passed &= problems.is_empty();
        ctx.log.line(
            "postcheck",
            &format!("{}: {}", path.display(), if problems.is_empty() { "passed".to_string() } else {
                problems.iter().map(|p| p.code).collect::<Vec<_>>().join(", ")
            }),
        );
        files.push(file_report(given, m, &problems));
    }
    let mut shown = serde_json::to_value(&thresholds)
        .map_err(|e| StepError::new(ErrorCode::Internal, format!("serialising the thresholds: {e}")))?;
    // A worker setting, not a threshold (and not accepted as one).
    if let Some(o) = shown.as_object_mut() {
        o.remove("parallel_files");
    }
    let result = json!({
        "passed": all_passed,
        "thresholds": shown,
        "files": files,
    });
    if !p.report_artifact {
        return Ok(StepOutput { result, artifacts: Vec::new() });
    }
    ctx.create_out_dir()?;
    let out_dir = ctx.out_dir.clone();
    let bytes = serde_json::to_vec_pretty(&result)
        .map_err(|e| StepError::new(ErrorCode::Internal, format!("serialising the report: {e}")))?;
    let entry = tokio::task::spawn_blocking(move || {
        artifacts::write_atomic(&out_dir.join(REPORT_NAME), &bytes)
            .map_err(|e| StepError::io(format!("writing {REPORT_NAME}"), e))?;
        artifacts::entry_for(&out_dir, REPORT_NAME)
    })
    .await
    .map_err(|e| StepError::new(ErrorCode::Internal, format!("report writer failed: {e}")))??;
    Ok(StepOutput { result, artifacts: vec![entry] })
}

/// One file: its check and its measurement share one trip to a blocking
/// thread (a short file's whole job takes about a millisecond, and each
/// trip costs two thread switches). Same log lines and errors as several.
async fn one_file(given: &str, silence_dbfs: f64, parallel: usize, ctx: &StepContext) -> Result<(Vec<PathBuf>, Vec<Measurements>), StepError> {
    let (given, log, cancel) = (given.to_string(), ctx.log.clone(), ctx.cancel.child_token());
    let (path, m) = tokio::task::spawn_blocking(move || {
        let path = require_input_file(&given)?;
        log.line("postcheck", &format!("checking 1 file(s), {parallel} at a time"));
        let m = analyze_file(&path, silence_dbfs, &cancel)?;
        log.progress("file", 1, 1);
        Ok::<_, StepError>((path, m))
    })
    .await
    .map_err(|e| StepError::new(ErrorCode::Internal, format!("an analysis thread failed: {e}")))??;
    if ctx.cancel.is_cancelled() {
        return Err(StepError::new(ErrorCode::Cancelled, "the job was cancelled during the audio check"));
    }
    Ok((vec![path], vec![m]))
}

/// Measures every file, at most `parallel` at once, each on a blocking
/// thread. The first failure cancels the rest and is returned.
async fn measure_all(
    paths: Vec<PathBuf>,
    silence_dbfs: f64,
    parallel: usize,
    ctx: &StepContext,
) -> Result<Vec<Measurements>, StepError> {
    let permits = Arc::new(Semaphore::new(parallel));
    // A child token: cancelling it on one file's failure stops the others
    // without cancelling the job itself.
    let cancel = ctx.cancel.child_token();
    let mut set = JoinSet::new();
    for (i, path) in paths.into_iter().enumerate() {
        let permits = Arc::clone(&permits);
        let cancel = cancel.clone();
        set.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| StepError::new(ErrorCode::Internal, "the postcheck limiter closed"))?;
            if cancel.is_cancelled() {
                return Err(StepError::new(ErrorCode::Cancelled, "the audio check was cancelled"));
            }
            tokio::task::spawn_blocking(move || analyze_file(&path, silence_dbfs, &cancel).map(|m| (i, m)))
                .await
                .map_err(|e| StepError::new(ErrorCode::Internal, format!("an analysis thread failed: {e}")))?
        });
    }
    let n = set.len();
    let measured = super::join_indexed(set, n, &cancel, "a file's analysis", Some((&ctx.log, "file"))).await?;
    if ctx.cancel.is_cancelled() {
        return Err(StepError::new(ErrorCode::Cancelled, "the job was cancelled during the audio check"));
    }
    Ok(measured)
}

/// The defaults with the payload's overrides merged over them.
pub fn effective_thresholds(
    defaults: &PostcheckThresholds,
    overrides: Option<&Value>,
) -> Result<PostcheckThresholds, StepError> {
    let mut merged = serde_json::to_value(defaults)
        .map_err(|e| StepError::new(ErrorCode::Internal, format!("thresholds: {e}")))?;
    if let Some(o) = overrides {
        let Value::Object(o) = o else {
            return Err(StepError::invalid("thresholds must be a JSON object of threshold names to values"));
        };
        let base: &mut Map<String, Value> = merged
            .as_object_mut()
            .ok_or_else(|| StepError::new(ErrorCode::Internal, "thresholds did not serialise to an object"))?;
        let known = base.keys().filter(|k| *k != "parallel_files").cloned().collect::<Vec<_>>().join(", ");
        for (key, value) in o {
            if key == "parallel_files" {
                return Err(StepError::invalid(
                    "thresholds.parallel_files is a worker setting, not a threshold; set postcheck.parallel_files in the worker's config",
                ));
            }
            match base.get_mut(key) {
                Some(slot) => *slot = value.clone(),
                None => {
                    return Err(StepError::invalid(format!("unknown threshold {key:?}; known thresholds: {known}")))
                }
            }
        }
    }
    let t: PostcheckThresholds =
        serde_json::from_value(merged).map_err(|e| StepError::invalid(format!("thresholds: {e}")))?;
    validate_thresholds(&t)?;
    Ok(t)
}

fn validate_thresholds(t: &PostcheckThresholds) -> Result<(), StepError> {
    let ranges: [(&str, f64, f64, f64); 8] = [
        ("target_lufs", t.target_lufs, -70.0, 0.0),
        ("lufs_tolerance", t.lufs_tolerance, 0.0, 70.0),
        ("max_true_peak_dbtp", t.max_true_peak_dbtp, -70.0, 20.0),
        ("max_leading_silence_s", t.max_leading_silence_s, 0.0, 86_400.0),
        ("max_trailing_silence_s", t.max_trailing_silence_s, 0.0, 86_400.0),
        ("max_internal_silence_s", t.max_internal_silence_s, 0.0, 86_400.0),
        ("silence_threshold_dbfs", t.silence_threshold_dbfs, -150.0, 0.0),
        ("min_duration_s", t.min_duration_s, 0.0, 86_400.0),
    ];
    for (name, value, lo, hi) in ranges {
        if !(lo..=hi).contains(&value) {
            return Err(StepError::invalid(format!("thresholds.{name} = {value} is outside {lo} ..= {hi}")));
        }
    }
    if t.expected_sample_rate > 768_000 {
        return Err(StepError::invalid("thresholds.expected_sample_rate must be 0 (any) or a rate up to 768000 Hz"));
    }
    Ok(())
}

/// Judges one file's measurements against the thresholds.
pub fn judge(m: &Measurements, t: &PostcheckThresholds) -> Vec<Problem> {
    let mut out = Vec::new();
    let duration = m.duration_s();
    let silent = m.silence.all_silent;
    if duration < t.min_duration_s {
        out.push(problem(
            "TOO_SHORT",
            format!("{duration:.3} s is shorter than the minimum {:.3} s; check the render was not cut off", t.min_duration_s),
        ));
    }
    if silent {
        out.push(problem(
            "SILENT",
            format!(
                "no 10 ms window rises above {} dBFS: the file is silent; re-render the chunk",
                t.silence_threshold_dbfs
            ),
        ));
    }
    match m.integrated_lufs {
        None if silent => {}
        None if duration < MIN_LOUDNESS_S => out.push(problem(
            "TOO_SHORT_FOR_LOUDNESS",
            format!("{duration:.3} s is under the 400 ms that integrated loudness needs; no loudness was measured"),
        )),
        None => out.push(problem(
            "LOUDNESS_UNMEASURABLE",
            "every 400 ms block is below the -70 LUFS absolute gate; the audio is far too quiet".to_string(),
        )),
        Some(i) if (i - t.target_lufs).abs() > t.lufs_tolerance => out.push(problem(
            "LOUDNESS_OUT_OF_RANGE",
            format!(
                "integrated loudness {i:.1} LUFS is outside {:.1} ± {:.1} LUFS; normalise the voice-over to the target",
                t.target_lufs, t.lufs_tolerance
            ),
        )),
        Some(_) => {}
    }
    if let Some(tp) = m.true_peak_dbtp {
        if tp > t.max_true_peak_dbtp {
            out.push(problem(
                "TRUE_PEAK_TOO_HIGH",
                format!("true peak {tp:.2} dBTP exceeds {:.2} dBTP; lower the gain or use a true-peak limiter", t.max_true_peak_dbtp),
            ));
        }
    }
    if m.clipped_samples > 0 {
        out.push(problem(
            "CLIPPING",
            format!("{} sample(s) at or beyond full scale; re-render with more headroom", m.clipped_samples),
        ));
    }
    if !silent {
        let s = &m.silence;
        for (code, what, value, max) in [
            ("LEADING_SILENCE_TOO_LONG", "leading silence", s.leading_s, t.max_leading_silence_s),
            ("TRAILING_SILENCE_TOO_LONG", "trailing silence", s.trailing_s, t.max_trailing_silence_s),
            ("INTERNAL_SILENCE_TOO_LONG", "longest internal silence", s.longest_internal_s, t.max_internal_silence_s),
        ] {
            if value > max {
                out.push(problem(code, format!("{what} of {value:.2} s exceeds {max:.2} s; trim or tighten the pause")));
            }
        }
    }
    if t.expected_sample_rate != 0 && m.sample_rate != t.expected_sample_rate {
        out.push(problem(
            "SAMPLE_RATE_MISMATCH",
            format!("sample rate is {} Hz, expected {} Hz; resample the file", m.sample_rate, t.expected_sample_rate),
        ));
    }
    if m.skipped_packets > 0 {
        out.push(problem(
            "CORRUPT_PACKETS",
            format!("{} damaged packet(s) were skipped while decoding; the file is partly corrupt", m.skipped_packets),
        ));
    }
    out
}

/// Rounds for the report: a thousandth of a dB or a millisecond is far
/// below anything a threshold can distinguish.
fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn file_report(path: &str, m: &Measurements, problems: &[Problem]) -> Value {
    json!({
        "path": path,
        "duration_s": r3(m.duration_s()),
        "sample_rate": m.sample_rate,
        "channels": m.channels,
        "integrated_lufs": m.integrated_lufs.map(r3),
        "lra_lu": m.lra_lu.map(r3),
        "true_peak_dbtp": m.true_peak_dbtp.map(r3),
        "sample_peak_dbfs": m.sample_peak_dbfs.map(r3),
        "clipped_samples": m.clipped_samples,
        "leading_silence_s": r3(m.silence.leading_s),
        "trailing_silence_s": r3(m.silence.trailing_s),
        "longest_silence_s": r3(m.silence.longest_internal_s),
        "passed": problems.is_empty(),
        "problems": problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn defaults() -> PostcheckThresholds {
        Settings::load_from(None, &[]).unwrap().postcheck
    }

    #[test]
    fn overrides_merge_over_defaults() {
        let t = effective_thresholds(&defaults(), Some(&json!({"target_lufs": -23, "max_true_peak_dbtp": -2.0}))).unwrap();
        assert_eq!(t.target_lufs, -23.0);
        assert_eq!(t.max_true_peak_dbtp, -2.0);
        assert_eq!(t.lufs_tolerance, defaults().lufs_tolerance);
    }

    #[test]
    fn bad_overrides_are_rejected_by_name() {
        for (over, needle) in [
            (json!({"target_lufz": -23}), "target_lufz"),
            (json!({"parallel_files": 9}), "parallel_files"),
            (json!({"target_lufs": "loud"}), "thresholds"),
            (json!({"lufs_tolerance": -1}), "lufs_tolerance"),
            (json!([1, 2]), "object"),
        ] {
            let err = effective_thresholds(&defaults(), Some(&over)).unwrap_err();
            assert_eq!(err.code, ErrorCode::InputInvalid);
            assert!(err.message.contains(needle), "{over}: {}", err.message);
        }
    }
}
