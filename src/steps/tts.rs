//! TTS_RENDER_CHUNKS: renders narration chunks to WAV files with a local
//! text-to-speech engine ([`super::tts_engines`]).
//!
//! Payload: either `{"chunks": [{"id", "text"}, ...]}` or `{"text",
//! "max_chars"}` (cut at sentence ends by [`super::text_chunks`]), plus the
//! optional `"voice"`, `"rate"` (words per minute, 80-450) and `"engine"`.
//! Missing values come from `[tts]` in the config.
//!
//! Chunks render in parallel, at most `tts.parallel_chunks` at once, each
//! under `tts.chunk_timeout_s`. Each engine writes into a private work
//! folder; the finished file is checked by decoding it, then renamed to
//! `chunk_0001.wav`, `chunk_0002.wav`, ... in the output folder, so no
//! half-written chunk is ever visible under its final name.
//!
//! Each chunk is then normalised to `tts.normalize_lufs` (by default the
//! QC's `postcheck.target_lufs`) with its true peak held below
//! `postcheck.max_true_peak_dbtp` ([`super::normalize`]), so the chunks
//! pass the default AUDIO_POSTCHECK.
//!
//! Result: `{"engine", "voice", "rate", "normalize": {"target_lufs",
//! "ceiling_dbtp"} | null, "chunks": [{"id", "artifact", "text_chars",
//! "duration_s", "sample_rate", "loudness": {"before_lufs", "after_lufs",
//! "true_peak_before_dbtp", "true_peak_after_dbtp", "gain_db", "limited"} |
//! null}], "total_duration_s"}`; chunks cut from `"text"` also carry their
//! `"text"` and get ids 1, 2, ...

use super::audio_io;
use super::disk;
use super::normalize::{normalize_wav, Normalized, Target, TRUE_PEAK_MARGIN_DB};
use super::text_chunks::split_text;
use super::tts_engines::{build_tool, Engine, RenderSpec, RATE_RANGE};
use super::{parse_payload, StepContext, StepName, StepOutput};
use crate::artifacts::{self, ArtifactEntry};
use crate::error::{ErrorCode, StepError, NO_SPACE_TEXT};
use crate::process::run_tool;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Most chunks one job may render.
pub const MAX_CHUNKS: usize = 1000;
/// Longest text of one chunk, in characters.
pub const MAX_CHUNK_CHARS: usize = 5000;
/// Longest text of a whole job, in characters.
pub const MAX_TOTAL_CHARS: usize = 500_000;
/// A small estimate of the WAV bytes one character of text becomes: the
/// engines write 22,050 Hz 16-bit mono (44,100 bytes a second) and speak
/// about 15 characters a second.
const BYTES_PER_CHAR: u64 = 2_900;
/// Allowed `max_chars` for the `text` form.
pub const MAX_CHARS_RANGE: std::ops::RangeInclusive<usize> = 20..=MAX_CHUNK_CHARS;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(default)]
    chunks: Option<Vec<ChunkIn>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    max_chars: Option<usize>,
    #[serde(default)]
    voice: Option<String>,
    /// Signed so that a negative rate gets our message, not serde's.
    #[serde(default)]
    rate: Option<i64>,
    #[serde(default)]
    engine: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunkIn {
    id: Value,
    text: String,
}

/// A validated chunk to render.
#[derive(Debug, Clone)]
struct Chunk {
    id: Value,
    text: String,
    /// Set when the chunk was cut from `"text"`: echo the text back.
    generated: bool,
}

/// What rendering one chunk produced.
struct Rendered {
    entry: ArtifactEntry,
    summary: audio_io::AudioSummary,
    /// What loudness normalisation did (`None` when it is off).
    normalized: Option<Normalized>,
}

/// Runs the step.
pub async fn run(payload: &Value, ctx: &StepContext) -> Result<StepOutput, StepError> {
    let p: Payload = parse_payload(StepName::TtsRenderChunks, payload)?;
    let tts = &ctx.settings.tts;
    let chunks = validate_chunks(&p, tts.max_chars)?;
    let voice = validate_voice(p.voice.as_deref().unwrap_or(&tts.voice))?;
    let rate = validate_rate(p.rate, tts.rate)?;
    let engine = Engine::resolve(p.engine.as_deref(), &ctx.settings)?;
    let parallel = tts.parallel_chunks.max(1);
    let postcheck = &ctx.settings.postcheck;
    let target = tts
        .normalize_lufs
        .resolve(postcheck)
        .map(|lufs| Target { lufs, ceiling_dbtp: postcheck.max_true_peak_dbtp - TRUE_PEAK_MARGIN_DB });
    ctx.log.line(
        "tts",
        &format!("rendering {} chunk(s) with {}, {parallel} at a time", chunks.len(), engine.name()),
    );

    ctx.create_out_dir()?;
    let work = ctx.out_dir.join(format!(".tts-work-{}", uuid::Uuid::new_v4().simple()));
    let needed = chunks.iter().map(|c| c.text.chars().count() as u64).sum::<u64>() * BYTES_PER_CHAR;
    let (out_dir, what) = (ctx.out_dir.clone(), format!("{} chunk(s) of speech", chunks.len()));
    blocking(move || disk::ensure_free(&out_dir, needed, &what)).await?;
    tokio::fs::create_dir_all(&work)
        .await
        .map_err(|e| StepError::io_in("creating the TTS work folder", &ctx.out_dir, e))?;
    let outcome = render_all(&chunks, &engine, &voice, rate, target, &work, ctx).await;
    // The work folder only ever holds inputs and unfinished files.
    let _ = tokio::fs::remove_dir_all(&work).await;
    let rendered = outcome?;

    let mut listed = Vec::with_capacity(chunks.len());
    let mut artifacts_out = Vec::with_capacity(chunks.len());
    let mut total = 0.0;
    for (chunk, r) in chunks.iter().zip(rendered) {
        let duration = r.summary.duration_s();
        total += duration;
        let mut item = json!({
            "id": chunk.id,
            "artifact": r.entry.name,
            "text_chars": chunk.text.chars().count(),
            "duration_s": round_ms(duration),
            "sample_rate": r.summary.sample_rate,
            "loudness": r.normalized,
        });
        if chunk.generated {
            item["text"] = Value::String(chunk.text.clone());
        }
        listed.push(item);
        artifacts_out.push(r.entry);
    }
    let result = json!({
        "engine": engine.name(),
        "voice": if voice.is_empty() { Value::Null } else { Value::String(voice) },
        "rate": rate,
        "normalize": target.map(|t| json!({"target_lufs": t.lufs, "ceiling_dbtp": t.ceiling_dbtp})),
        "chunks": listed,
        "total_duration_s": round_ms(total),
    });
    Ok(StepOutput { result, artifacts: artifacts_out })
}

fn round_ms(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The chunks to render, from either payload form.
fn validate_chunks(p: &Payload, default_max_chars: usize) -> Result<Vec<Chunk>, StepError> {
    let chunks = match (&p.chunks, &p.text) {
        (Some(_), Some(_)) => {
            return Err(StepError::invalid("give either \"chunks\" or \"text\" (with \"max_chars\"), not both"))
        }
        (None, None) => {
            return Err(StepError::invalid(
                "nothing to render: give \"chunks\": [{\"id\", \"text\"}] or \"text\" with an optional \"max_chars\"",
            ))
        }
        (Some(_), None) if p.max_chars.is_some() => {
            return Err(StepError::invalid("\"max_chars\" applies to the \"text\" form only"))
        }
        (Some(given), None) => from_given(given)?,
        (None, Some(text)) => from_text(text, p.max_chars.unwrap_or(default_max_chars))?,
    };
    if chunks.len() > MAX_CHUNKS {
        return Err(StepError::invalid(format!(
            "{} chunks exceed the limit of {MAX_CHUNKS} per job; split the narration over several jobs",
            chunks.len()
        )));
    }
    let total: usize = chunks.iter().map(|c| c.text.chars().count()).sum();
    if total > MAX_TOTAL_CHARS {
        return Err(StepError::invalid(format!(
            "the text totals {total} characters, over the limit of {MAX_TOTAL_CHARS} per job; split it over several jobs"
        )));
    }
    Ok(chunks)
}

fn from_given(given: &[ChunkIn]) -> Result<Vec<Chunk>, StepError> {
    if given.is_empty() {
        return Err(StepError::invalid("\"chunks\" is empty; give at least one {\"id\", \"text\"}"));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(given.len());
    for (i, c) in given.iter().enumerate() {
        let key = match &c.id {
            Value::String(s) if !s.trim().is_empty() && s.chars().count() <= 200 => s.clone(),
            Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
            other => {
                return Err(StepError::invalid(format!(
                    "chunks[{i}].id {other} must be a non-empty string (up to 200 characters) or an integer"
                )))
            }
        };
        if !seen.insert(key.clone()) {
            return Err(StepError::invalid(format!("chunk id {key:?} appears more than once; ids must be unique")));
        }
        let text = c.text.trim();
        if text.is_empty() {
            return Err(StepError::invalid(format!("chunk {key:?} has empty text; remove it or give it words")));
        }
        let chars = text.chars().count();
        if chars > MAX_CHUNK_CHARS {
            return Err(StepError::invalid(format!(
                "chunk {key:?} has {chars} characters, over the limit of {MAX_CHUNK_CHARS}; split it or use the \"text\" form"
            )));
        }
        out.push(Chunk { id: c.id.clone(), text: text.to_string(), generated: false });
    }
    Ok(out)
}

fn from_text(text: &str, max_chars: usize) -> Result<Vec<Chunk>, StepError> {
    if !MAX_CHARS_RANGE.contains(&max_chars) {
        return Err(StepError::invalid(format!(
            "max_chars {max_chars} is outside {}..={}; 200-300 suits most engines",
            MAX_CHARS_RANGE.start(),
            MAX_CHARS_RANGE.end()
        )));
    }
    let chars = text.chars().count();
    if chars > MAX_TOTAL_CHARS {
        return Err(StepError::invalid(format!(
            "the text has {chars} characters, over the limit of {MAX_TOTAL_CHARS} per job; split it over several jobs"
        )));
    }
    let pieces = split_text(text, max_chars);
    if pieces.is_empty() {
        return Err(StepError::invalid("\"text\" is empty; give the narration to render"));
    }
    Ok(pieces
        .into_iter()
        .enumerate()
        .map(|(i, t)| Chunk { id: json!(i + 1), text: t, generated: true })
        .collect())
}

/// Voice names go on a command line or into a PowerShell literal, so only
/// the characters real voice names use are allowed.
fn validate_voice(voice: &str) -> Result<String, StepError> {
    let voice = voice.trim();
    let ok = voice.chars().count() <= 100
        && voice.chars().all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '+' | '.' | '(' | ')'));
    if !ok || voice.starts_with('-') {
        return Err(StepError::invalid(format!(
            "voice {voice:?} is not a voice name; use letters, digits, spaces and - _ + . ( ), at most 100 characters"
        )));
    }
    Ok(voice.to_string())
}

/// The speaking rate in words per minute, or `None` for the engine's own.
fn validate_rate(requested: Option<i64>, configured: i32) -> Result<Option<u32>, StepError> {
    let (rate, source) = match requested {
        Some(r) if r != 0 => (r, "rate"),
        _ => (configured as i64, "tts.rate in the config"),
    };
    if rate == 0 {
        return Ok(None);
    }
    if rate < *RATE_RANGE.start() as i64 || rate > *RATE_RANGE.end() as i64 {
        return Err(StepError::invalid(format!(
            "{source} {rate} is outside {}..={} words per minute (0 = the engine's default)",
            RATE_RANGE.start(),
            RATE_RANGE.end()
        )));
    }
    Ok(Some(rate as u32))
}

/// Renders every chunk, at most `tts.parallel_chunks` at once, and
/// normalises each to `target`. The first failure cancels the others and
/// is returned.
async fn render_all(
    chunks: &[Chunk],
    engine: &Engine,
    voice: &str,
    rate: Option<u32>,
    target: Option<Target>,
    work: &Path,
    ctx: &StepContext,
) -> Result<Vec<Rendered>, StepError> {
    let permits = Arc::new(Semaphore::new(ctx.settings.tts.parallel_chunks.max(1)));
    let cancel = ctx.cancel.child_token();
    let timeout = Duration::from_secs(ctx.settings.tts.chunk_timeout_s.max(1));
    let mut set = JoinSet::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let job = ChunkJob {
            index: i,
            text: chunk.text.clone(),
            engine: engine.clone(),
            voice: voice.to_string(),
            rate,
            target,
            timeout,
            work: work.to_path_buf(),
            ctx: ctx.clone(),
            cancel: cancel.clone(),
            permits: Arc::clone(&permits),
        };
        set.spawn(async move { job.render().await.map(|r| (i, r)) });
    }
    super::join_indexed(set, chunks.len(), &cancel, "a chunk's render", Some((&ctx.log, "chunk"))).await
}

/// Everything one chunk's render task owns.
struct ChunkJob {
    index: usize,
    text: String,
    engine: Engine,
    voice: String,
    rate: Option<u32>,
    target: Option<Target>,
    timeout: Duration,
    work: PathBuf,
    ctx: StepContext,
    cancel: tokio_util::sync::CancellationToken,
    /// Limits engines running at once; held only while the engine runs, so
    /// checking and hashing a finished chunk overlaps the next render.
    permits: Arc<Semaphore>,
}

impl ChunkJob {
    async fn render(self) -> Result<Rendered, StepError> {
        let name = format!("chunk_{:04}.wav", self.index + 1);
        let text_file = self.work.join(format!("chunk_{:04}.txt", self.index + 1));
        let tmp_wav = self.work.join(&name);
        let settings = Arc::clone(&self.ctx.settings);
        let (engine, voice, rate, timeout, work) = (self.engine.clone(), self.voice.clone(), self.rate, self.timeout, self.work.clone());
        let (tf, tw) = (text_file.clone(), tmp_wav.clone());
        let text = self.text.clone();
        let out_dir = self.ctx.out_dir.clone();
        let tool = blocking(move || {
            std::fs::write(&tf, text.as_bytes())
                .map_err(|e| StepError::io_in("writing the chunk text file", &out_dir, e))?;
            let spec = RenderSpec { text_file: &tf, out_wav: &tw, work_dir: &work, voice: &voice, rate, timeout };
            build_tool(&engine, &spec, &settings)
        })
        .await?;
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StepError::new(ErrorCode::Internal, "the TTS limiter closed"))?;
        if self.cancel.is_cancelled() {
            return Err(StepError::new(ErrorCode::Cancelled, "rendering was cancelled"));
        }
        let out = run_tool(&tool, &self.ctx.log, &self.cancel).await;
        drop(permit);
        let out = out?;
        if out.stderr_tail.contains(NO_SPACE_TEXT) {
            return Err(StepError::disk_full(
                &self.ctx.out_dir,
                format!("{} failed on chunk {}: {}", self.engine.name(), self.index + 1, out.stderr_tail.trim()),
            ));
        }
        if !out.success() {
            return Err(StepError::new(
                ErrorCode::TtsFailed,
                format!(
                    "{} failed on chunk {} ({}): {}",
                    self.engine.name(),
                    self.index + 1,
                    out.status,
                    if out.stderr_tail.is_empty() { "no error output; see the job log" } else { &out.stderr_tail }
                ),
            ));
        }
        let out_dir = self.ctx.out_dir.clone();
        let engine_name = self.engine.name();
        let (target, cancel, work) = (self.target, self.cancel.clone(), self.work.clone());
        blocking(move || {
            // espeak-ng exits 0 after a write cut short by a full disk, so
            // its file cannot be trusted when the disk is (nearly) full.
            if disk::is_nearly_full(&work) {
                return Err(StepError::disk_full(
                    &out_dir,
                    format!("{engine_name} may have been cut short writing {name}: under {} free", disk::human(disk::NEARLY_FULL_BYTES)),
                ));
            }
            // The artifact is named .wav, so it must be one (a "command"
            // engine could write MP3 or raw samples by mistake).
            if !audio_io::is_riff_wave(&tmp_wav) {
                return Err(StepError::new(
                    ErrorCode::TtsFailed,
                    format!("{engine_name} did not write a usable WAV for {name}: no RIFF/WAVE file at the output path"),
                ));
            }
            let summary = audio_io::summarize_rendered(&tmp_wav).map_err(|e| {
                StepError::new(
                    ErrorCode::TtsFailed,
                    format!("{engine_name} did not write a usable WAV for {name}: {}", e.message),
                )
            })?;
            if summary.frames == 0 {
                return Err(StepError::new(ErrorCode::TtsFailed, format!("{engine_name} rendered no audio for {name}")));
            }
            let normalized = target.map(|t| normalize_wav(&tmp_wav, t, &cancel)).transpose()?;
            artifacts::commit_temp(&tmp_wav, &out_dir.join(&name))
                .map_err(|e| StepError::io(format!("moving {name} into place"), e))?;
            let entry = artifacts::entry_for(&out_dir, &name)?;
            Ok(Rendered { entry, summary, normalized })
        })
        .await
    }
}

/// Runs blocking file work off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StepError> + Send + 'static,
) -> Result<T, StepError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StepError::new(ErrorCode::Internal, format!("a blocking task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(v: Value) -> Payload {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn chunk_validation() {
        let ok = validate_chunks(&payload(json!({"chunks": [{"id": "a", "text": " Hi. "}, {"id": 2, "text": "Yo"}]})), 250).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].text, "Hi.");
        let bad = [
            (json!({}), "nothing to render"),
            (json!({"chunks": []}), "empty"),
            (json!({"chunks": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}), "more than once"),
            (json!({"chunks": [{"id": 1, "text": "x"}, {"id": "1", "text": "y"}]}), "more than once"),
            (json!({"chunks": [{"id": "a", "text": "   "}]}), "empty text"),
            (json!({"chunks": [{"id": "", "text": "x"}]}), "id"),
            (json!({"chunks": [{"id": 1.5, "text": "x"}]}), "id"),
            (json!({"chunks": [{"id": "a", "text": "x".repeat(MAX_CHUNK_CHARS + 1)}]}), "over the limit"),
            (json!({"chunks": [{"id": "a", "text": "x"}], "text": "y"}), "not both"),
            (json!({"chunks": [{"id": "a", "text": "x"}], "max_chars": 100}), "max_chars"),
            (json!({"text": "Hello there.", "max_chars": 5}), "max_chars"),
            (json!({"text": "  "}), "empty"),
        ];
        for (p, needle) in bad {
            let err = validate_chunks(&payload(p.clone()), 250).unwrap_err();
            assert_eq!(err.code, ErrorCode::InputInvalid);
            assert!(err.message.contains(needle), "{p}: {}", err.message);
        }
        let many: Vec<Value> = (0..=MAX_CHUNKS).map(|i| json!({"id": i, "text": "x"})).collect();
        assert!(validate_chunks(&payload(json!({"chunks": many})), 250).unwrap_err().message.contains("limit"));
    }

    #[test]
    fn text_form_numbers_chunks() {
        let c = validate_chunks(&payload(json!({"text": "One. Two. Three.", "max_chars": 20})), 250).unwrap();
        let texts: Vec<&str> = c.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["One. Two. Three."]);
        assert_eq!(c[0].id, json!(1));
        assert!(c[0].generated);
    }

    #[test]
    fn voice_and_rate_validation() {
        assert_eq!(validate_voice(" en-us+f3 ").unwrap(), "en-us+f3");
        assert_eq!(validate_voice("Microsoft David Desktop").unwrap(), "Microsoft David Desktop");
        for bad in ["--help", "a;b", "x'y", "$(rm)", &"v".repeat(101)] {
            assert_eq!(validate_voice(bad).unwrap_err().code, ErrorCode::InputInvalid, "{bad}");
        }
        assert_eq!(validate_rate(None, 0).unwrap(), None);
        assert_eq!(validate_rate(Some(0), 0).unwrap(), None);
        assert_eq!(validate_rate(Some(160), 0).unwrap(), Some(160));
        assert_eq!(validate_rate(None, 200).unwrap(), Some(200));
        assert!(validate_rate(Some(79), 0).is_err());
        assert!(validate_rate(Some(451), 0).is_err());
        assert!(validate_rate(Some(-160), 0).unwrap_err().message.contains("rate -160"));
        assert!(validate_rate(None, -5).unwrap_err().message.contains("tts.rate"));
    }
}
