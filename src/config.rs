//! Layered configuration: `config/default.toml` (compiled in, so a binary
//! copied alone to another machine still has every default), an optional
//! local file, `RAYVAULT_*` environment variables, then flags.
//!
//! Architecture Invariant: secrets are never part of [`Settings`]; they come
//! from `RAYVAULT_CLUSTER_SECRET*` through [`crate::auth::Keyring`] only.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The committed defaults, embedded at compile time.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub worker: WorkerSettings,
    pub controller: ControllerSettings,
    pub tools: ToolSettings,
    pub steps: BTreeMap<String, StepSettings>,
    pub tts: TtsSettings,
    pub postcheck: PostcheckThresholds,
    pub frames: FrameSettings,
    pub openclaw: OpenclawSettings,
}

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

/// A configuration problem, reported with what to change.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// Every key path of the defaults (`worker`, `worker.port`, `steps`, ...).
fn known_keys() -> Result<BTreeSet<String>, ConfigError> {
    let tree = toml_tree(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml), "config/default.toml")?;
    let mut keys = BTreeSet::new();
    collect_keys(&tree, "", &mut keys);
    Ok(keys)
}

/// A TOML source as a JSON tree (tables become objects).
fn toml_tree<S: config::Source + Send + Sync + 'static>(source: S, name: &str) -> Result<serde_json::Value, ConfigError> {
    config::Config::builder()
        .add_source(source)
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>())
        .map_err(|e| ConfigError(format!("{name}: {e}")))
}

fn collect_keys(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(table) = v.as_object() {
        for (k, child) in table {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            collect_keys(child, &path, out);
            out.insert(path);
        }
    }
}

/// Whether `path` (lower case, dot-separated) is a setting. `[steps.<name>]`
/// tables may name any known step, with the keys of the other step tables.
fn is_known(path: &str, known: &BTreeSet<String>) -> bool {
    if known.contains(path) {
        return true;
    }
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        ["steps", step] | ["steps", step, _] if !crate::steps::StepName::ALL.iter().any(|s| s.as_str().eq_ignore_ascii_case(step)) => false,
        ["steps", _] => true,
        ["steps", _, key] => known.iter().any(|k| k.starts_with("steps.") && k.ends_with(&format!(".{key}")) && k.split('.').count() == 3),
        _ => false,
    }
}

/// What to say about an unknown key: the keys its table does have.
fn unknown_key_hint(path: &str, known: &BTreeSet<String>) -> String {
    let (table, _) = path.rsplit_once('.').unwrap_or(("", path));
    if table == "steps" || (table.starts_with("steps.") && table.split('.').count() == 2 && !is_known(table, known)) {
        let steps: Vec<String> = crate::steps::StepName::ALL.iter().map(|s| s.as_str().to_ascii_lowercase()).collect();
        return format!("[steps.<name>] tables are named after steps: {}", steps.join(", "));
    }
    let siblings: Vec<&str> = known
        .iter()
        .filter_map(|k| {
            let (t, leaf) = k.rsplit_once('.').unwrap_or(("", k.as_str()));
            (t == table).then_some(leaf)
        })
        .collect();
    let table = if table.is_empty() { "the top level".to_string() } else { format!("[{table}]") };
    format!("the keys of {table} are: {}", siblings.join(", "))
}

/// Refuses a key in a config file that is not a setting (a typo such as
/// `prot = 8797` must not silently leave the port at its default).
fn check_file_keys(path: &Path, known: &BTreeSet<String>) -> Result<(), ConfigError> {
    let name = path.display().to_string();
    let tree = toml_tree(config::File::from(path).format(config::FileFormat::Toml), &name)?;
    let mut keys = BTreeSet::new();
    collect_keys(&tree, "", &mut keys);
    // The config crate lower-cases keys; so does the check.
    match keys.iter().find(|k| !is_known(&k.to_ascii_lowercase(), known)) {
        Some(k) => Err(ConfigError(format!("unknown key `{k}` in {name}; {}", unknown_key_hint(&k.to_ascii_lowercase(), known)))),
        None => Ok(()),
    }
}

/// Refuses a `RAYVAULT_<SECTION>__<KEY>` variable that names no setting.
fn check_env_key(var: &str, known: &BTreeSet<String>) -> Result<(), ConfigError> {
    let path = var.trim_start_matches("RAYVAULT_").to_ascii_lowercase().replace("__", ".");
    if is_known(&path, known) {
        return Ok(());
    }
    Err(ConfigError(format!(
        "unknown setting in the environment: {var} (key `{path}`); {}; unset it or fix its name",
        unknown_key_hint(&path, known)
    )))
}

impl Settings {
    /// Loads defaults, then `local_file` (or `RAYVAULT_CONFIG`, or
    /// `config/local.toml` if present), then the environment.
    pub fn load(local_file: Option<&Path>) -> Result<Settings, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(local_file, &vars)
    }

    /// Like [`Settings::load`] with an explicit environment (for tests).
    pub fn load_from(local_file: Option<&Path>, env: &[(String, String)]) -> Result<Settings, ConfigError> {
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut b = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        let local = local_file
            .map(Path::to_path_buf)
            .or_else(|| get("RAYVAULT_CONFIG").map(PathBuf::from));
        let known = known_keys()?;
        match local {
            Some(p) => {
                if !p.exists() {
                    return Err(ConfigError(format!("config file {} does not exist", p.display())));
                }
                check_file_keys(&p, &known)?;
                b = b.add_source(config::File::from(p).format(config::FileFormat::Toml));
            }
            None => {
                let p = Path::new("config/local.toml");
                if p.exists() {
                    check_file_keys(p, &known)?;
                }
                b = b.add_source(config::File::with_name("config/local.toml").required(false));
            }
        }
        // Nested keys: RAYVAULT_SECTION__KEY. Secrets are filtered out so they
        // never enter the configuration tree.
        let nested: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("RAYVAULT_") && k.contains("__") && !k.contains("SECRET"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for var in nested.keys() {
            check_env_key(var, &known)?;
        }
        b = b.add_source(
            config::Environment::with_prefix("RAYVAULT")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(nested)),
        );
        // The documented variable names (README).
        for (var, key) in [
            ("RAYVAULT_WORKER_ID", "worker.id"),
            ("RAYVAULT_WORKER_HOST", "worker.host"),
            ("RAYVAULT_WORKER_PORT", "worker.port"),
            ("RAYVAULT_STATE_DIR", "state_dir"),
        ] {
            b = b.set_override_option(key, get(var)).map_err(|e| ConfigError(e.to_string()))?;
        }
        if get("RAYVAULT_ALLOW_PLAIN_FALLBACK").as_deref() == Some("1") {
            b = b.set_override("controller.auth_mode", "allow_plain").map_err(|e| ConfigError(e.to_string()))?;
        }
        let cfg = b.build().map_err(|e| ConfigError(e.to_string()))?;
        let mut s: Settings = cfg.try_deserialize().map_err(|e| ConfigError(e.to_string()))?;
        // Environment keys arrive lower-case, so step tables are keyed in
        // lower case everywhere (`[steps.ffmpeg_probe]`).
        s.steps = s.steps.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, st) in &self.steps {
            if st.concurrency == 0 {
                return Err(ConfigError(format!("steps.{name}.concurrency must be at least 1")));
            }
        }
        Ok(())
    }

    /// Settings of one step, falling back to a conservative default.
    pub fn step(&self, step_name: &str) -> StepSettings {
        self.steps
            .get(&step_name.to_ascii_lowercase())
            .cloned()
            .unwrap_or(StepSettings { concurrency: 1, timeout_s: 600 })
    }

    /// `$state_dir/worker`.
    pub fn worker_dir(&self) -> PathBuf {
        self.state_dir.join("worker")
    }

    /// `$state_dir/cluster`.
    pub fn cluster_dir(&self) -> PathBuf {
        self.state_dir.join("cluster")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load_from(None, &[]).unwrap();
        assert_eq!(s.worker.port, 8787);
        assert_eq!(s.step("FFMPEG_PROBE").concurrency, 4);
        assert_eq!(s.worker.skew_s, 300);
        assert_eq!((s.controller.http_workers, s.controller.max_blocking_threads), (1, 8));
    }

    #[test]
    fn the_daemon_s_thread_caps_are_read() {
        let s = Settings::load_from(None, &env(&[("RAYVAULT_CONTROLLER__HTTP_WORKERS", "3"), ("RAYVAULT_CONTROLLER__MAX_BLOCKING_THREADS", "2")])).unwrap();
        assert_eq!((s.controller.http_workers, s.controller.max_blocking_threads), (3, 2));
    }

    #[test]
    fn env_layers_override() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("RAYVAULT_WORKER_PORT", "9999"),
                ("RAYVAULT_WORKER_ID", "win-1"),
                ("RAYVAULT_STATE_DIR", "/tmp/x"),
                ("RAYVAULT_STEPS__FFMPEG_PROBE__CONCURRENCY", "7"),
                ("RAYVAULT_POSTCHECK__TARGET_LUFS", "-23"),
                ("RAYVAULT_CLUSTER_SECRET", "must-not-matter"),
            ]),
        )
        .unwrap();
        assert_eq!(s.worker.port, 9999);
        assert_eq!(s.worker.id, "win-1");
        assert_eq!(s.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.step("FFMPEG_PROBE").concurrency, 7);
        assert_eq!(s.postcheck.target_lufs, -23.0);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("local.toml");
        std::fs::write(&file, "[worker]\nprot = 8797\n").unwrap();
        let err = Settings::load_from(Some(&file), &[]).unwrap_err().to_string();
        assert!(err.contains("unknown key `worker.prot`") && err.contains("port"), "{err}");
        std::fs::write(&file, "stat_dir = \"x\"\n").unwrap();
        let err = Settings::load_from(Some(&file), &[]).unwrap_err().to_string();
        assert!(err.contains("`stat_dir`"), "{err}");
        std::fs::write(&file, "[steps.ffmpeg_prob]\nconcurrency = 2\n").unwrap();
        let err = Settings::load_from(Some(&file), &[]).unwrap_err().to_string();
        assert!(err.contains("steps.ffmpeg_prob") && err.contains("ffmpeg_probe"), "{err}");
        std::fs::write(&file, "[steps.ffmpeg_probe]\nconcurency = 2\n").unwrap();
        let err = Settings::load_from(Some(&file), &[]).unwrap_err().to_string();
        assert!(err.contains("steps.ffmpeg_probe.concurency"), "{err}");
        std::fs::write(&file, "[worker]\nport = 8797\n[steps.openclaw_task]\ntimeout_s = 5\n").unwrap();
        let s = Settings::load_from(Some(&file), &[]).unwrap();
        assert_eq!(s.worker.port, 8797);
        let err = Settings::load_from(None, &env(&[("RAYVAULT_WORKER__PROT", "8797")])).unwrap_err().to_string();
        assert!(err.contains("RAYVAULT_WORKER__PROT") && err.contains("worker.prot"), "{err}");
        let err = Settings::load_from(None, &env(&[("RAYVAULT_STEPS__NOPE__CONCURRENCY", "1")])).unwrap_err().to_string();
        assert!(err.contains("RAYVAULT_STEPS__NOPE__CONCURRENCY"), "{err}");
        // Variables that are not `SECTION__KEY` settings are not checked.
        let ok = env(&[("RAYVAULT_WORKER_ID", "w"), ("RAYVAULT_CLUSTER_SECRET__X", "s"), ("RAYVAULT_ALLOW_PLAIN_FALLBACK", "1"), ("RAYVAULT_ORCHESTRATOR_BIN", "/x")]);
        assert!(Settings::load_from(None, &ok).is_ok());
    }

    #[test]
    fn tts_normalisation_follows_the_postcheck_target_unless_set() {
        let load = |pairs: &[(&str, &str)]| Settings::load_from(None, &env(pairs));
        let s = load(&[]).unwrap();
        assert_eq!(s.tts.normalize_lufs, NormalizeLufs::Target);
        assert_eq!(s.tts.normalize_lufs.resolve(&s.postcheck), Some(-16.0));
        let s = load(&[("RAYVAULT_POSTCHECK__TARGET_LUFS", "-23")]).unwrap();
        assert_eq!(s.tts.normalize_lufs.resolve(&s.postcheck), Some(-23.0));
        for (value, expected) in [
            ("off", NormalizeLufs::Off),
            ("OFF", NormalizeLufs::Off),
            ("-18", NormalizeLufs::Lufs(-18.0)),
            ("-14.5", NormalizeLufs::Lufs(-14.5)),
            ("target", NormalizeLufs::Target),
        ] {
            let s = load(&[("RAYVAULT_TTS__NORMALIZE_LUFS", value)]).unwrap();
            assert_eq!(s.tts.normalize_lufs, expected, "{value}");
        }
        assert_eq!(load(&[("RAYVAULT_TTS__NORMALIZE_LUFS", "off")]).unwrap().tts.normalize_lufs.resolve(&s.postcheck), None);
        for bad in ["loud", "3", "-80"] {
            let err = load(&[("RAYVAULT_TTS__NORMALIZE_LUFS", bad)]).unwrap_err();
            assert!(err.to_string().contains("normalize_lufs"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_values_are_reported() {
        let err = Settings::load_from(None, &env(&[("RAYVAULT_WORKER_PORT", "notaport")])).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn string_choices_are_enums_that_name_the_allowed_values() {
        let s = Settings::load_from(None, &[]).unwrap();
        assert_eq!((s.worker.on_interrupted, s.controller.auth_mode), (OnInterrupted::Fail, AuthMode::HmacStrict));
        let s = Settings::load_from(None, &env(&[("RAYVAULT_WORKER__ON_INTERRUPTED", "rerun"), ("RAYVAULT_CONTROLLER__FALLBACK", "never")])).unwrap();
        assert_eq!((s.worker.on_interrupted, s.controller.fallback), (OnInterrupted::Rerun, crate::receipt::FallbackMode::Never));
        let s = Settings::load_from(None, &env(&[("RAYVAULT_ALLOW_PLAIN_FALLBACK", "1"), ("RAYVAULT_TTS__ENGINE", "espeak")])).unwrap();
        assert_eq!((s.controller.auth_mode, s.tts.engine), (AuthMode::AllowPlain, TtsEngineChoice::EspeakNg));
        assert_eq!(Settings::load_from(None, &[]).unwrap().tts.engine, TtsEngineChoice::PlatformDefault);
        for (var, value, allowed) in [
            ("RAYVAULT_WORKER__ON_INTERRUPTED", "retry", ["fail", "rerun"].as_slice()),
            ("RAYVAULT_CONTROLLER__AUTH_MODE", "plain", ["hmac_strict", "allow_plain"].as_slice()),
            ("RAYVAULT_CONTROLLER__FALLBACK", "sometimes", ["unavailable", "always", "never"].as_slice()),
            ("RAYVAULT_TTS__ENGINE", "festival", ["espeak-ng", "sapi", "say", "piper", "command"].as_slice()),
        ] {
            let err = Settings::load_from(None, &env(&[(var, value)])).unwrap_err().to_string();
            assert!(err.contains(value) && allowed.iter().all(|a| err.contains(a)), "{var}={value}: {err}");
        }
    }
}
