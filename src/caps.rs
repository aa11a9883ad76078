//! The host capability probe behind the worker's `/caps`.
//!
//! It reports the documented normalised keys exactly (`os`, `cpu`, `ram_gb`,
//! `gpu_model`, `vram_gb`, `python_version`, `ffmpeg_version`,
//! `davinci_available`), with `null` wherever a value is unknown, plus
//! `cpu_cores`, `cpu_threads`, `hostname`, the steps this host can run and,
//! for each step it cannot, the reason.
//!
//! The probe runs a handful of tools (`ffmpeg -version`, `ffprobe -version`,
//! `python3 --version`, `nvidia-smi`) concurrently through
//! [`crate::process`] with short timeouts, and reads memory and CPU facts with
//! `sysinfo` on a blocking thread, so it takes well under a second on a
//! normal host and the worker can call it once at start and cache it.

use crate::config::Settings;
use crate::joblog::JobLog;
use crate::process::{run_tool, Tool};
use crate::steps::tts_engines::Engine;
use crate::steps::StepName;
use crate::ui_session::SessionProbe;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long any single probing tool may take before it counts as missing.
/// nvidia-smi is the slowest (about a second while the driver wakes up).
const PROBE_TOOL_TIMEOUT: Duration = Duration::from_secs(8);

/// Set once by the worker's Windows service entry point (`--headless`):
/// the process runs in session 0, where `OPENCLAW_TASK` can never run.
static RUNNING_AS_WINDOWS_SERVICE: AtomicBool = AtomicBool::new(false);

/// Why `OPENCLAW_TASK` is unavailable in a worker installed with
/// `service install --headless`.
pub const HEADLESS_SERVICE_REASON: &str = "runs as a Windows service in session 0, which has no desktop; install with \
     `service install` without --headless to run UI tasks";

/// Records that this process is a Windows service (see
/// [`HEADLESS_SERVICE_REASON`]); the capability probe reads it.
pub fn mark_running_as_windows_service() {
    RUNNING_AS_WINDOWS_SERVICE.store(true, Ordering::SeqCst);
}

/// Whether [`mark_running_as_windows_service`] was called.
pub fn running_as_windows_service() -> bool {
    RUNNING_AS_WINDOWS_SERVICE.load(Ordering::SeqCst)
}

/// `OPENCLAW_TASK`'s availability: never in a Windows service, else the
/// step's own rule (a desktop session and the OpenClaw command).
fn openclaw_status(settings: &Settings, windows_service: bool) -> Result<(), String> {
    if windows_service {
        return Err(HEADLESS_SERVICE_REASON.to_string());
    }
    crate::steps::openclaw::availability(settings, &SessionProbe::Host, None)
}

/// What `/caps` reports about the host. The field names are the wire keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostCaps {
    /// `"windows"`, `"macos"` or `"linux"` (another OS reports its Rust name).
    pub os: String,
    /// CPU model string.
    pub cpu: Option<String>,
    /// Installed memory in GiB, one decimal.
    pub ram_gb: Option<f64>,
    /// The first NVIDIA GPU's name, from nvidia-smi.
    pub gpu_model: Option<String>,
    /// That GPU's memory in GiB, one decimal.
    pub vram_gb: Option<f64>,
    /// e.g. `"3.11.4"`.
    pub python_version: Option<String>,
    /// The version word of `ffmpeg -version`, e.g. `"5.1.6-0+deb12u1"`.
    pub ffmpeg_version: Option<String>,
    /// DaVinci Resolve is installed at its standard location.
    pub davinci_available: bool,
    /// Physical cores (logical CPUs where the physical count is unknown).
    pub cpu_cores: Option<usize>,
    /// Logical CPUs.
    pub cpu_threads: Option<usize>,
    pub hostname: Option<String>,
    /// Steps this host can run, in [`StepName::ALL`] order.
    pub steps: Vec<StepName>,
    /// Steps this host cannot run, each with the reason and what to do.
    pub unavailable_steps: BTreeMap<StepName, String>,
}

impl HostCaps {
    /// Whether `step` is runnable here.
    pub fn can_run(&self, step: StepName) -> bool {
        self.steps.contains(&step)
    }

    /// Every key except `steps`, as a JSON object: the host part of the
    /// worker's `/caps` answer, whose own `steps` field lists the steps.
    /// Putting this object beside that field never duplicates a key.
    pub fn host_keys(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut map = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        map.remove("steps");
        map
    }
}

/// Probes the host. Never fails: anything that cannot be determined is
/// reported as unknown (`null`) or, for a step, as unavailable with a reason.
pub async fn probe(settings: &Settings) -> HostCaps {
    // sysinfo, the DaVinci check and the PATH searches touch the file
    // system, so they run on a blocking thread.
    let owned = settings.clone();
    let (system, tts, openclaw, log) = tokio::task::spawn_blocking(move || {
        let tts = tts_engine_status(&owned, None);
        let openclaw = openclaw_status(&owned, running_as_windows_service());
        (system_facts(), tts, openclaw, probe_log(&owned))
    })
    .await
    .unwrap_or_else(|e| {
        let why = format!("the capability probe thread failed: {e}");
        (SystemFacts::default(), Err(why.clone()), Err(why), None)
    });
    let cancel = CancellationToken::new();
    let (ffmpeg, ffprobe, python, gpu) = tokio::join!(
        ffmpeg_version(&settings.tools.ffmpeg, &log, &cancel),
        tool_runs(&settings.tools.ffprobe, "ffprobe", &log, &cancel),
        python_version(&settings.tools.python, &log, &cancel),
        nvidia_gpu(&log, &cancel),
    );
    let facts = ToolFacts {
        ffmpeg: ffmpeg.clone().map(|_| ()),
        ffprobe,
        tts,
        openclaw,
    };
    let (steps, unavailable_steps) = step_availability(&facts);
    HostCaps {
        os: os_name().to_string(),
        cpu: system.cpu,
        ram_gb: system.ram_gb,
        gpu_model: gpu.as_ref().map(|g| g.0.clone()),
        vram_gb: gpu.and_then(|g| g.1),
        python_version: python,
        ffmpeg_version: ffmpeg.ok(),
        davinci_available: system.davinci_available,
        cpu_cores: system.cpu_cores,
        cpu_threads: system.cpu_threads,
        hostname: system.hostname,
        steps,
        unavailable_steps,
    }
}

/// The documented name for the running OS (`windows`, `macos`, `linux`).
pub fn os_name() -> &'static str {
    match std::env::consts::OS {
        "windows" => "windows",
        "macos" => "macos",
        "linux" => "linux",
        other => other,
    }
}

/// Whether each tool a step depends on is usable; `Err` holds the reason.
#[derive(Debug, Clone)]
pub struct ToolFacts {
    pub ffmpeg: Result<(), String>,
    pub ffprobe: Result<(), String>,
    pub tts: Result<(), String>,
    pub openclaw: Result<(), String>,
}

/// Splits the steps into runnable ones and unavailable ones with reasons.
pub fn step_availability(facts: &ToolFacts) -> (Vec<StepName>, BTreeMap<StepName, String>) {
    let mut steps = Vec::new();
    let mut unavailable = BTreeMap::new();
    for step in StepName::ALL {
        let need: Result<(), String> = match step {
            StepName::FfmpegProbe => facts.ffprobe.clone(),
            // Frame sampling reads the duration with ffprobe, then extracts
            // frames with ffmpeg.
            StepName::FrameSampling => facts.ffprobe.clone().and(facts.ffmpeg.clone()),
            StepName::TtsRenderChunks => facts.tts.clone(),
            // Decoding and loudness are done in-process.
            StepName::AudioPostcheck => Ok(()),
            StepName::OpenclawTask => facts.openclaw.clone(),
        };
        match need {
            Ok(()) => steps.push(step),
            Err(reason) => {
                unavailable.insert(step, reason);
            }
        }
    }
    (steps, unavailable)
}

/// Facts read through sysinfo and the file system (blocking calls).
#[derive(Debug, Default)]
struct SystemFacts {
    cpu: Option<String>,
    cpu_cores: Option<usize>,
    cpu_threads: Option<usize>,
    ram_gb: Option<f64>,
    hostname: Option<String>,
    davinci_available: bool,
}

fn system_facts() -> SystemFacts {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    let cpu = sys.cpus().first().map(|c| c.brand().trim().to_string()).filter(|b| !b.is_empty());
    let threads = Some(sys.cpus().len()).filter(|n| *n > 0);
    let ram = sys.total_memory();
    SystemFacts {
        cpu,
        cpu_cores: sys.physical_core_count().or(threads),
        cpu_threads: threads,
        ram_gb: (ram > 0).then(|| gib(ram as f64)),
        hostname: sysinfo::System::host_name(),
        davinci_available: davinci_path().is_some_and(|p| p.exists()),
    }
}

/// Bytes to GiB, rounded to one decimal.
fn gib(bytes: f64) -> f64 {
    (bytes / (1u64 << 30) as f64 * 10.0).round() / 10.0
}

/// Where DaVinci Resolve installs itself on this OS.
pub fn davinci_path() -> Option<&'static Path> {
    let p = match os_name() {
        "macos" => "/Applications/DaVinci Resolve/DaVinci Resolve.app",
        "windows" => r"C:\Program Files\Blackmagic Design\DaVinci Resolve\Resolve.exe",
        "linux" => "/opt/resolve/bin/resolve",
        _ => return None,
    };
    Some(Path::new(p))
}

/// A log for the probe's tool runs: `worker/caps.log` under the state dir,
/// so that "why is this step unavailable" can be answered afterwards. If the
/// state dir is not writable the output goes nowhere rather than failing.
fn probe_log(settings: &Settings) -> Option<JobLog> {
    let null = if cfg!(windows) { "NUL" } else { "/dev/null" };
    JobLog::open(&settings.worker_dir().join("caps.log")).or_else(|_| JobLog::open(Path::new(null))).ok()
}

/// Runs `program args` and returns its stdout (stderr if stdout is empty),
/// or why it could not.
async fn tool_text(
    program: &str,
    args: &[&str],
    label: &str,
    log: &Option<JobLog>,
    cancel: &CancellationToken,
) -> Result<String, String> {
    let Some(log) = log else {
        return Err("no log could be opened to run tools".into());
    };
    let tool = Tool::new(program, label).args(args.iter().copied()).timeout(PROBE_TOOL_TIMEOUT).capture_stdout();
    let out = run_tool(&tool, log, cancel).await.map_err(|e| e.message)?;
    if !out.success() {
        return Err(format!("`{program} {}` failed with {}", args.join(" "), out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(if stdout.is_empty() { out.stderr_tail.trim().to_string() } else { stdout })
}

async fn tool_runs(program: &str, label: &str, log: &Option<JobLog>, cancel: &CancellationToken) -> Result<(), String> {
    tool_text(program, &["-version"], label, log, cancel).await.map(|_| ())
}

async fn ffmpeg_version(program: &str, log: &Option<JobLog>, cancel: &CancellationToken) -> Result<String, String> {
    let text = tool_text(program, &["-version"], "ffmpeg", log, cancel).await?;
    parse_ffmpeg_version(&text).ok_or_else(|| format!("`{program} -version` did not print an ffmpeg version line"))
}

/// `"ffmpeg version 5.1.6-0+deb12u1 Copyright ..."` -> `"5.1.6-0+deb12u1"`.
pub fn parse_ffmpeg_version(text: &str) -> Option<String> {
    let first = text.lines().next()?;
    let mut words = first.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(_), Some("version"), Some(v)) => Some(v.to_string()),
        _ => None,
    }
}

/// The configured interpreter first, then the platform's usual launcher.
async fn python_version(configured: &str, log: &Option<JobLog>, cancel: &CancellationToken) -> Option<String> {
    let mut candidates: Vec<(&str, Vec<&str>)> = Vec::new();
    if !configured.trim().is_empty() {
        candidates.push((configured.trim(), vec!["--version"]));
    }
    if cfg!(windows) {
        // `python3` on Windows may be the Microsoft Store alias, which opens
        // the Store instead of answering; the `py` launcher never does.
        candidates.push(("py", vec!["-3", "--version"]));
    } else {
        candidates.push(("python3", vec!["--version"]));
    }
    for (program, args) in candidates {
        if let Ok(text) = tool_text(program, &args, "python", log, cancel).await {
            if let Some(v) = parse_python_version(&text) {
                return Some(v);
            }
        }
    }
    None
}

/// `"Python 3.11.4"` -> `"3.11.4"`.
pub fn parse_python_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.trim_start().starts_with("Python "))?;
    let v = line.trim_start().trim_start_matches("Python ").trim();
    v.chars().next().is_some_and(|c| c.is_ascii_digit()).then(|| v.to_string())
}

/// The first NVIDIA GPU's name and memory, if nvidia-smi is present.
async fn nvidia_gpu(log: &Option<JobLog>, cancel: &CancellationToken) -> Option<(String, Option<f64>)> {
    let args = ["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"];
    let text = tool_text("nvidia-smi", &args, "nvidia-smi", log, cancel).await.ok()?;
    parse_nvidia_smi(&text)
}

/// `"NVIDIA GeForce RTX 3080, 10240"` (MiB) -> `("NVIDIA GeForce RTX 3080", 10.0)`.
pub fn parse_nvidia_smi(text: &str) -> Option<(String, Option<f64>)> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let (name, mem) = match line.rsplit_once(',') {
        Some((name, mem)) => (name.trim(), mem.trim().parse::<f64>().ok()),
        None => (line, None),
    };
    let mem = mem.filter(|m| m.is_finite() && *m > 0.0).map(|mib| gib(mib * 1024.0 * 1024.0));
    (!name.is_empty()).then(|| (name.to_string(), mem))
}

/// Whether the text-to-speech engine `TTS_RENDER_CHUNKS` would use by
/// default (the step's own resolution: `tts.engine`, else the platform
/// default) is installed. `path` overrides `PATH` (for tests).
pub fn tts_engine_status(settings: &Settings, path: Option<&OsStr>) -> Result<(), String> {
    let engine = Engine::resolve(None, settings).map_err(|e| e.message)?;
    let name = engine.name();
    let need = |program: &str, key: &str| {
        find_program(program, path).map(|_| ()).ok_or_else(|| {
            format!("the {name} text-to-speech engine needs {program}, which was not found; install it or set {key}")
        })
    };
    let t = &settings.tools;
    match &engine {
        Engine::EspeakNg => need(&t.espeak, "tools.espeak"),
        Engine::Say => need(&t.say, "tools.say"),
        Engine::Sapi => need(&t.powershell, "tools.powershell"),
        Engine::Piper { model } => {
            need(&t.piper, "tools.piper")?;
            if !Path::new(model).is_file() {
                return Err(format!("tts.piper_model {model:?} is not a file; download a piper voice and set its path"));
            }
            Ok(())
        }
        Engine::Command { words } => need(words.first().map(String::as_str).unwrap_or(""), "tts.command_template"),
    }
}

/// Finds an executable the way a shell would: a name containing a path
/// separator is checked as given; a bare name is searched in `path` (or
/// `PATH`), trying `PATHEXT` extensions on Windows.
pub fn find_program(program: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    let given = Path::new(program);
    if given.components().count() > 1 || given.is_absolute() {
        return with_extensions(given).into_iter().find(|p| is_executable(p));
    }
    let path_var = match path {
        Some(p) => p.to_os_string(),
        None => std::env::var_os("PATH")?,
    };
    std::env::split_paths(&path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .flat_map(|dir| with_extensions(&dir.join(program)))
        .find(|p| is_executable(p))
}

fn with_extensions(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if cfg!(windows) && p.extension().is_none() {
        let exts = std::env::var("PATHEXT").unwrap_or_else(|_| ".COM;.EXE;.BAT;.CMD".into());
        out.extend(exts.split(';').filter(|e| !e.is_empty()).map(|e| {
            let mut s = p.as_os_str().to_os_string();
            s.push(e);
            PathBuf::from(s)
        }));
    }
    out
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tool_versions() {
        let ff = "ffmpeg version 5.1.6-0+deb12u1 Copyright (c) 2000-2024 the FFmpeg developers\nbuilt with gcc";
        assert_eq!(parse_ffmpeg_version(ff).as_deref(), Some("5.1.6-0+deb12u1"));
        assert_eq!(parse_ffmpeg_version("ffmpeg version n7.0 Copyright").as_deref(), Some("n7.0"));
        assert_eq!(parse_ffmpeg_version("garbage"), None);
        assert_eq!(parse_ffmpeg_version(""), None);
        assert_eq!(parse_python_version("Python 3.11.2\n").as_deref(), Some("3.11.2"));
        assert_eq!(parse_python_version("Python was not found; run without arguments"), None);
    }

    #[test]
    fn parses_nvidia_smi() {
        let (name, vram) = parse_nvidia_smi("NVIDIA GeForce RTX 3080, 10240\nNVIDIA T4, 15360\n").unwrap();
        assert_eq!(name, "NVIDIA GeForce RTX 3080");
        assert_eq!(vram, Some(10.0));
        assert_eq!(parse_nvidia_smi("Tesla, T4, [N/A]").unwrap(), ("Tesla, T4".to_string(), None));
        assert_eq!(parse_nvidia_smi("\n"), None);
    }

    #[test]
    fn rounds_to_a_tenth_of_a_gib() {
        assert_eq!(gib(16.0 * (1u64 << 30) as f64), 16.0);
        assert_eq!(gib(1.26 * (1u64 << 30) as f64), 1.3);
    }

    #[test]
    fn a_windows_service_never_offers_openclaw() {
        let settings = Settings::load_from(None, &[]).unwrap();
        let before = openclaw_status(&settings, false);
        assert_ne!(before.as_ref().err().map(String::as_str), Some(HEADLESS_SERVICE_REASON));
        assert_eq!(openclaw_status(&settings, true), Err(HEADLESS_SERVICE_REASON.to_string()));
    }

    #[test]
    fn availability_follows_the_tools() {
        let ok = ToolFacts { ffmpeg: Ok(()), ffprobe: Ok(()), tts: Ok(()), openclaw: Err("no session".into()) };
        let (steps, missing) = step_availability(&ok);
        assert_eq!(steps.len(), 4);
        assert_eq!(missing.get(&StepName::OpenclawTask).map(String::as_str), Some("no session"));
        let no_ffmpeg = ToolFacts { ffmpeg: Err("no ffmpeg".into()), ..ok };
        let (steps, missing) = step_availability(&no_ffmpeg);
        assert!(steps.contains(&StepName::FfmpegProbe));
        assert_eq!(missing.get(&StepName::FrameSampling).map(String::as_str), Some("no ffmpeg"));
        assert!(steps.contains(&StepName::AudioPostcheck));
    }
}
