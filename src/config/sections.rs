//! The settings of each section of the configuration (`[worker]`,
//! `[controller]`, `[tools]`, `[steps.<name>]`, `[tts]`, `[postcheck]`,
//! `[frames]`, `[openclaw]`) and the enums their string choices parse into.
//! Loading, layering and the checks of key names are in the parent module.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub skew_s: u64,
    pub allow_plain_token: bool,
    pub allow_any_bind: bool,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub max_blob_bytes: u64,
    pub max_jobs_in_flight: usize,
    pub max_wait_s: u64,
    /// Longest wait for a request body once its header passed the checks
    /// that need no body (a body that never arrives must not hold a connection).
    pub body_timeout_s: u64,
    pub retention_days: u64,
    /// What a restarted worker does with a job its previous run left
    /// running: `fail` it (`INTERRUPTED`) or `rerun` it.
    pub on_interrupted: OnInterrupted,
    pub shutdown_grace_s: u64,
    pub http_workers: usize,
    /// Most threads in each tokio blocking pool of the worker (the main
    /// runtime's and each HTTP worker's): a burst would otherwise grow them
    /// to dozens of threads whose memory stays after it.
    pub max_blocking_threads: usize,
    /// Below this many free bytes on the disk of the state folder, `/health`
    /// answers `degraded` (the worker is short of space for blobs, logs,
    /// artifacts and its store).
    pub min_free_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ControllerSettings {
    pub api_host: String,
    pub api_port: u16,
    pub probe_interval_s: u64,
    pub probe_timeout_s: u64,
    pub wait_poll_s: u64,
    /// The lease held on each remote job, seconds (see `crate::lease`).
    pub lease_s: u64,
    /// Added to `lease_s` before a silent node's job moves elsewhere.
    pub lease_margin_ms: u64,
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
    pub local_concurrency: usize,
    /// `hmac_strict`, or `allow_plain` (`RAYVAULT_ALLOW_PLAIN_FALLBACK=1`).
    pub auth_mode: AuthMode,
    pub controller_only_steps: Vec<String>,
    /// How long `submit` keeps retrying a daemon that does not answer before
    /// it gives up (the job goes on in the daemon).
    pub daemon_lost_after_s: u64,
    /// When a job may run on the controller: `unavailable`, `always`, `never`.
    pub fallback: crate::receipt::FallbackMode,
    /// HTTP worker threads of the daemon's API (each with its own runtime).
    pub http_workers: usize,
    /// Most threads in each tokio blocking pool of the daemon (the main
    /// runtime's, where the controller's actors run, and each HTTP
    /// worker's): a burst would otherwise grow them to dozens of threads
    /// whose memory stays after it.
    pub max_blocking_threads: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ToolSettings {
    pub ffmpeg: String,
    pub ffprobe: String,
    pub espeak: String,
    pub say: String,
    pub powershell: String,
    pub piper: String,
    pub python: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StepSettings {
    pub concurrency: usize,
    pub timeout_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TtsSettings {
    /// The engine used when a payload names none.
    pub engine: TtsEngineChoice,
    pub voice: String,
    pub rate: i32,
    pub parallel_chunks: usize,
    pub max_chars: usize,
    pub piper_model: String,
    pub command_template: String,
    pub chunk_timeout_s: u64,
    /// The loudness each rendered chunk is normalised to (`"target"`,
    /// `"off"` or a number of LUFS).
    pub normalize_lufs: NormalizeLufs,
}

/// `[worker] on_interrupted`: what a restarted worker does with a job its
/// previous run left running. A value outside these is refused with the
/// allowed ones named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum OnInterrupted {
    /// Mark it failed with `INTERRUPTED` (the default).
    Fail,
    /// Queue it again (it waits for a controller to renew its lease).
    Rerun,
}

impl OnInterrupted {
    const ALL: [(&'static str, OnInterrupted); 2] = [("fail", OnInterrupted::Fail), ("rerun", OnInterrupted::Rerun)];

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, v)| *v == self).map_or("fail", |(n, _)| n)
    }
}

impl TryFrom<String> for OnInterrupted {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        choice("on_interrupted", &s, &OnInterrupted::ALL)
    }
}

/// `[controller] auth_mode`: how the controller authenticates to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AuthMode {
    /// HMAC-signed requests only (the default).
    HmacStrict,
    /// HMAC first; the plain token for a worker that rejects HMAC.
    AllowPlain,
}

impl TryFrom<String> for AuthMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        choice("auth_mode", &s, &[("hmac_strict", AuthMode::HmacStrict), ("allow_plain", AuthMode::AllowPlain)])
    }
}

/// `[tts] engine`: the text-to-speech engine used when a payload names
/// none. `""` is the platform default (espeak-ng on Linux, SAPI on Windows,
/// say on macOS); `espeak` is another spelling of `espeak-ng`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum TtsEngineChoice {
    PlatformDefault,
    EspeakNg,
    Sapi,
    Say,
    Piper,
    Command,
}

impl TtsEngineChoice {
    const ALL: [(&'static str, TtsEngineChoice); 7] = [
        ("", TtsEngineChoice::PlatformDefault),
        ("espeak-ng", TtsEngineChoice::EspeakNg),
        ("espeak", TtsEngineChoice::EspeakNg),
        ("sapi", TtsEngineChoice::Sapi),
        ("say", TtsEngineChoice::Say),
        ("piper", TtsEngineChoice::Piper),
        ("command", TtsEngineChoice::Command),
    ];

    /// Parses a spelling of the setting (surrounding spaces ignored).
    pub fn parse(s: &str) -> Result<TtsEngineChoice, String> {
        choice("tts.engine", s.trim(), &Self::ALL)
    }

    /// The engine's name as payloads spell it; `""` for the platform default.
    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, v)| *v == self).map_or("", |(n, _)| n)
    }
}

impl TryFrom<String> for TtsEngineChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        TtsEngineChoice::parse(&s)
    }
}

/// The value named `s` among `options` (spelled as in the TOML), or an
/// error naming the setting and every allowed value.
pub fn choice<T: Copy>(setting: &str, s: &str, options: &[(&str, T)]) -> Result<T, String> {
    options.iter().find(|(name, _)| *name == s).map(|(_, v)| *v).ok_or_else(|| {
        let allowed: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
        format!("{setting} must be {}, not {s:?}", allowed.join(" or "))
    })
}

/// `[tts] normalize_lufs`: what loudness TTS_RENDER_CHUNKS gives each chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormalizeLufs {
    /// `"target"`: the QC's own target, `[postcheck] target_lufs`, so that
    /// the rendered chunks pass the default AUDIO_POSTCHECK.
    Target,
    /// `"off"`: chunks are kept as the engine wrote them.
    Off,
    /// A loudness in LUFS.
    Lufs(f64),
}

/// Loudness targets accepted for `normalize_lufs`, LUFS.
pub const NORMALIZE_LUFS_RANGE: std::ops::RangeInclusive<f64> = -40.0..=-5.0;

impl NormalizeLufs {
    /// The loudness to normalise to, or `None` when normalisation is off.
    pub fn resolve(self, postcheck: &PostcheckThresholds) -> Option<f64> {
        match self {
            NormalizeLufs::Target => Some(postcheck.target_lufs),
            NormalizeLufs::Off => None,
            NormalizeLufs::Lufs(l) => Some(l),
        }
    }

    fn from_number(l: f64) -> Result<Self, String> {
        if NORMALIZE_LUFS_RANGE.contains(&l) {
            Ok(NormalizeLufs::Lufs(l))
        } else {
            Err(format!(
                "tts.normalize_lufs {l} is outside {} to {} LUFS; use a number in that range, \"target\" or \"off\"",
                NORMALIZE_LUFS_RANGE.start(),
                NORMALIZE_LUFS_RANGE.end()
            ))
        }
    }
}

impl<'de> Deserialize<'de> for NormalizeLufs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A number from TOML, or text (environment variables that do not
        /// parse as numbers, and the two keywords).
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        let parsed = match Raw::deserialize(d)? {
            Raw::Number(l) => NormalizeLufs::from_number(l),
            Raw::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                "target" => Ok(NormalizeLufs::Target),
                "off" => Ok(NormalizeLufs::Off),
                other => match other.parse::<f64>() {
                    Ok(l) => NormalizeLufs::from_number(l),
                    Err(_) => Err(format!(
                        "tts.normalize_lufs {t:?} is not understood; use \"target\" (the postcheck target), \"off\" or a number of LUFS"
                    )),
                },
            },
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

/// AUDIO_POSTCHECK thresholds; a payload's `thresholds` object overrides any
/// of these field by field.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostcheckThresholds {
    /// Integrated loudness aimed for, LUFS (default -16: spoken voice-over
    /// for online video, between podcast practice and platform targets).
    pub target_lufs: f64,
    /// Allowed distance from `target_lufs`, LU (default 2).
    pub lufs_tolerance: f64,
    /// Highest true peak allowed, dBTP (default -1: headroom for lossy
    /// encoding).
    pub max_true_peak_dbtp: f64,
    /// Longest silence before the first sound, seconds (default 1.0).
    pub max_leading_silence_s: f64,
    /// Longest silence after the last sound, seconds (default 1.5).
    pub max_trailing_silence_s: f64,
    /// Longest pause between sounds, seconds (default 2.0).
    pub max_internal_silence_s: f64,
    /// A 10 ms window whose RMS is below this is silent, dBFS (default -50).
    pub silence_threshold_dbfs: f64,
    /// Required sample rate in Hz; 0 (the default) accepts any.
    pub expected_sample_rate: u32,
    /// Shortest acceptable file, seconds (default 0.5).
    pub min_duration_s: f64,
    /// Files measured at once within one job (default 2). A worker setting:
    /// payloads cannot override it.
    pub parallel_files: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FrameSettings {
    pub seek_cost_s: f64,
    pub decode_cost_per_media_s: f64,
    pub jpeg_quality: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OpenclawSettings {
    pub command: String,
}
