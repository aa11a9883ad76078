//! The host capability probe on this (Linux) host, and OPENCLAW_TASK with
//! injected session probes and real child processes.
#![cfg(unix)]

mod common;

use rayvault::caps::{probe, tts_engine_status, HostCaps};
use rayvault::config::Settings;
use rayvault::error::ErrorCode;
use rayvault::joblog::JobLog;
use rayvault::steps::openclaw::{run_with, OpenclawHost, OUTPUT_ARTIFACT};
use rayvault::steps::{run_step, StepContext, StepName};
use rayvault::ui_session::SessionProbe;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn settings(state: &Path) -> Settings {
    let env = vec![("RAYVAULT_STATE_DIR".to_string(), state.display().to_string())];
    Settings::load_from(None, &env).expect("default settings load")
}

fn context(dir: &Path, settings: Settings) -> StepContext {
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    StepContext {
        job_id: "job-test".into(),
        log: JobLog::open(&dir.join("worker.log")).unwrap(),
        out_dir,
        cancel: CancellationToken::new(),
        settings: Arc::new(settings),
    }
}

fn with_display() -> SessionProbe {
    SessionProbe::from_env([("DISPLAY", ":0")])
}

fn host(session: SessionProbe, search_path: &Path) -> OpenclawHost {
    OpenclawHost { session, search_path: Some(search_path.as_os_str().to_os_string()) }
}

/// A shell script run as `/bin/sh script ARGS` (not exec'd itself, so a
/// concurrent fork in another test thread can never make it "text file busy").
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn job_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("worker.log")).unwrap()
}

#[tokio::test]
async fn caps_on_this_host() {
    let dir = common::tempdir();
    let started = Instant::now();
    let caps = probe(&settings(dir.path())).await;
    let took = started.elapsed();
    eprintln!("probe took {took:?}: {caps:?}");
    assert!(took < Duration::from_secs(10), "the probe must be cheap enough to run at worker start: {took:?}");
    assert_eq!(caps.os, "linux");
    assert!(caps.ram_gb.is_some_and(|r| r > 0.0), "ram_gb {:?}", caps.ram_gb);
    assert!(caps.ffmpeg_version.as_deref().is_some_and(|v| v.chars().any(|c| c.is_ascii_digit())));
    assert!(caps.cpu_threads.is_some_and(|n| n > 0));
    assert!(caps.can_run(StepName::FfmpegProbe), "{:?}", caps.unavailable_steps);
    assert!(caps.can_run(StepName::FrameSampling), "{:?}", caps.unavailable_steps);
    assert!(caps.can_run(StepName::AudioPostcheck));
    // espeak-ng is installed here and is the Linux default engine.
    assert!(caps.can_run(StepName::TtsRenderChunks), "{:?}", caps.unavailable_steps);
    // Every step is either runnable or unavailable with a reason, never both.
    for step in StepName::ALL {
        let listed = caps.steps.contains(&step);
        let reason = caps.unavailable_steps.get(&step);
        assert!(listed != reason.is_some(), "{step}: listed {listed}, reason {reason:?}");
        assert!(reason.map_or(true, |r| !r.is_empty()));
    }

    let json = serde_json::to_value(&caps).unwrap();
    let obj = json.as_object().unwrap();
    for key in ["os", "cpu", "ram_gb", "gpu_model", "vram_gb", "python_version", "ffmpeg_version", "davinci_available"] {
        assert!(obj.contains_key(key), "documented caps key {key} missing from {json}");
    }
    assert!(json["davinci_available"].is_boolean());
    assert!(json["steps"].as_array().unwrap().contains(&json!("FFMPEG_PROBE")));
    assert_eq!(serde_json::from_value::<HostCaps>(json).unwrap(), caps, "round trip");
    // python3 is installed here.
    assert!(caps.python_version.as_deref().is_some_and(|v| v.starts_with('3')), "{:?}", caps.python_version);
}

#[tokio::test]
async fn caps_report_missing_ffmpeg_as_unavailable_steps() {
    let dir = common::tempdir();
    let mut s = settings(dir.path());
    s.tools.ffmpeg = dir.path().join("no-such-ffmpeg").display().to_string();
    s.tools.ffprobe = "rayvault-no-such-ffprobe".into();
    let caps = probe(&s).await;
    assert_eq!(caps.ffmpeg_version, None);
    for step in [StepName::FfmpegProbe, StepName::FrameSampling] {
        assert!(!caps.can_run(step));
        let reason = caps.unavailable_steps.get(&step).unwrap_or_else(|| panic!("{step} has no reason"));
        assert!(reason.contains("no-such-ff"), "{step}: {reason}");
    }
    assert!(caps.can_run(StepName::AudioPostcheck));
    let json = serde_json::to_value(&caps).unwrap();
    assert!(json["unavailable_steps"]["FFMPEG_PROBE"].is_string(), "{json}");
    assert!(json["ffmpeg_version"].is_null());
}

#[tokio::test]
async fn caps_report_a_missing_tts_engine() {
    let dir = common::tempdir();
    let mut s = settings(dir.path());
    s.tools.espeak = "rayvault-no-such-espeak".into();
    s.tts.engine = rayvault::config::TtsEngineChoice::PlatformDefault;
    let caps = probe(&s).await;
    let reason = caps.unavailable_steps.get(&StepName::TtsRenderChunks).expect("TTS listed as unavailable");
    assert!(reason.contains("rayvault-no-such-espeak"), "{reason}");
}

#[test]
fn tts_status_follows_the_configured_engine() {
    let dir = common::tempdir();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink("/bin/true", bin.join("mytts")).unwrap();
    std::os::unix::fs::symlink("/bin/true", bin.join("piper")).unwrap();
    let model = dir.path().join("voice.onnx");
    std::fs::write(&model, b"model").unwrap();
    let check = |engine: &str, template: &str, piper_model: &Path, expected: Result<(), &str>| {
        let mut s = settings(dir.path());
        s.tts.engine = rayvault::config::TtsEngineChoice::parse(engine).unwrap();
        s.tts.command_template = template.into();
        s.tts.piper_model = piper_model.display().to_string();
        let got = tts_engine_status(&s, Some(bin.as_os_str()));
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(reason), Err(part)) => assert!(reason.contains(part), "{engine}: {reason}"),
            (got, expected) => panic!("{engine} {template:?}: got {got:?}, expected {expected:?}"),
        }
    };
    check("command", "mytts --in {text_file} --out {out_wav}", &model, Ok(()));
    check("command", "othertts --in {text_file} --out {out_wav}", &model, Err("othertts"));
    check("command", "", &model, Err("command_template"));
    check("piper", "", &model, Ok(()));
    check("piper", "", &dir.path().join("missing.onnx"), Err("missing.onnx"));
    check("espeak-ng", "", &model, Err("espeak-ng"));
    // An unknown engine never gets this far: the setting is refused when
    // the configuration is loaded, naming the value and the allowed ones.
    let err = rayvault::config::TtsEngineChoice::parse("klingon").unwrap_err();
    assert!(err.contains("klingon") && err.contains("espeak-ng"), "{err}");
}

#[test]
fn host_keys_leave_steps_to_the_caps_answer() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = common::tempdir();
    let caps = rt.block_on(probe(&settings(dir.path())));
    let keys = caps.host_keys();
    assert!(!keys.contains_key("steps"));
    assert_eq!(keys.get("os"), Some(&json!("linux")));
    assert!(keys.contains_key("unavailable_steps") && keys.contains_key("davinci_available"));
}

#[tokio::test]
async fn no_session_fails_first_even_with_a_bad_payload() {
    let dir = common::tempdir();
    let mut s = settings(dir.path());
    s.openclaw.command = "/bin/cat".into();
    let ctx = context(dir.path(), s);
    let no_ui = host(SessionProbe::from_env([("HOME", "/root"), ("XDG_SESSION_TYPE", "tty")]), dir.path());
    for payload in [json!({"task": "open the editor", "timeout_s": 5}), json!({"task": "", "timeout_s": -3})] {
        let err = run_with(&payload, &ctx, &no_ui).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::UiSessionRequired, "{payload}: {err}");
        assert!(
            err.message.starts_with("OPENCLAW_TASK requested without active logged-in desktop session"),
            "{}",
            err.message
        );
        assert!(err.message.contains("desktop session"), "says what to do: {}", err.message);
    }
    // The same bad payload with a session is rejected for what it is.
    let err = run_with(&json!({"task": "", "timeout_s": -3}), &ctx, &host(with_display(), dir.path()))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InputInvalid);
    // A payload that does not even parse is reported as such.
    let err = run_with(&json!({"tsk": "x"}), &ctx, &no_ui).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InputInvalid);
}

#[tokio::test]
async fn run_step_uses_the_real_session_check() {
    let dir = common::tempdir();
    let mut s = settings(dir.path());
    s.openclaw.command = "/bin/cat".into();
    let ctx = context(dir.path(), s);
    let real = SessionProbe::Host.detect();
    let outcome = run_step(StepName::OpenclawTask, &json!({"task": "hello", "timeout_s": 10}), &ctx).await;
    if real.active {
        assert_eq!(outcome.unwrap().artifacts[0].name, OUTPUT_ARTIFACT);
    } else {
        assert_eq!(outcome.unwrap_err().code, ErrorCode::UiSessionRequired, "host: {}", real.detail);
    }
}

#[tokio::test]
async fn session_without_a_command_is_unavailable() {
    let dir = common::tempdir();
    let empty_path = dir.path().join("empty-bin");
    std::fs::create_dir_all(&empty_path).unwrap();
    let ctx = context(dir.path(), settings(dir.path()));
    let payload = json!({"task": "do it"});
    let err = run_with(&payload, &ctx, &host(with_display(), &empty_path)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::OpenclawUnavailable, "{err}");
    assert!(err.message.contains("[openclaw] command"), "{}", err.message);

    let mut s = settings(dir.path());
    s.openclaw.command = format!("{} --flag", dir.path().join("missing-openclaw").display());
    let ctx = context(dir.path(), s);
    let err = run_with(&payload, &ctx, &host(with_display(), &empty_path)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::OpenclawUnavailable, "{err}");
}

#[tokio::test]
async fn configured_command_gets_the_task_on_stdin() {
    let dir = common::tempdir();
    let argv_file = dir.path().join("argv.txt");
    let echo = script(
        dir.path(),
        "echo_task.sh",
        "printf '%s\\n' \"$0\" \"$@\" > \"$1\"\ntask=$(cat)\necho \"received: $task\"\necho 'progress on stderr' >&2\n",
    );
    let mut s = settings(dir.path());
    s.openclaw.command = format!("/bin/sh '{}' '{}'", echo.display(), argv_file.display());
    let ctx = context(dir.path(), s);
    let task = "Open DaVinci and export timeline 7 (secret-ish words)";
    let out = run_with(&json!({"task": task, "timeout_s": 20}), &ctx, &host(with_display(), dir.path()))
        .await
        .unwrap();

    assert_eq!(out.artifacts.len(), 1);
    let entry = &out.artifacts[0];
    assert_eq!(entry.name, OUTPUT_ARTIFACT);
    let artifact = ctx.out_dir.join(OUTPUT_ARTIFACT);
    let text = std::fs::read_to_string(&artifact).unwrap();
    assert!(text.contains(&format!("received: {task}")), "{text}");
    assert!(text.contains("progress on stderr"), "stderr captured too: {text}");
    let (sha, size) = rayvault::artifacts::sha256_file(&artifact).unwrap();
    assert_eq!((entry.sha256.as_str(), entry.size), (sha.as_str(), size));
    assert_eq!(out.result["exit_code"], json!(0));
    assert_eq!(out.result["timeout_s"], json!(20.0));

    let argv = std::fs::read_to_string(&argv_file).unwrap();
    assert!(argv.contains("echo_task.sh"), "the script ran: {argv}");
    assert!(!argv.contains("DaVinci"), "task text leaked into argv: {argv}");
    assert!(!job_log(dir.path()).contains("DaVinci"), "task text leaked into the job log");
    let leftovers: Vec<_> = std::fs::read_dir(&ctx.out_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only the artifact, no temp files: {leftovers:?}");
}

#[tokio::test]
async fn openclaw_is_found_on_path() {
    let dir = common::tempdir();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // `cat` copies the task from stdin to stdout, like an agent echoing it.
    std::os::unix::fs::symlink("/bin/cat", bin.join("openclaw")).unwrap();
    let ctx = context(dir.path(), settings(dir.path()));
    let out = run_with(&json!({"task": "tidy the media bin"}), &ctx, &host(with_display(), &bin)).await.unwrap();
    let text = std::fs::read_to_string(ctx.out_dir.join(OUTPUT_ARTIFACT)).unwrap();
    assert!(text.contains("tidy the media bin"), "{text}");
    // No timeout_s: the step's configured timeout applies.
    assert_eq!(out.result["timeout_s"], json!(ctx.settings.step("OPENCLAW_TASK").timeout_s as f64));
}

#[tokio::test]
async fn non_zero_exit_is_openclaw_failed() {
    let dir = common::tempdir();
    let fail = script(dir.path(), "fail.sh", "cat > /dev/null\necho 'window not found' >&2\nexit 3\n");
    let mut s = settings(dir.path());
    s.openclaw.command = format!("/bin/sh {}", fail.display());
    let ctx = context(dir.path(), s);
    let err = run_with(&json!({"task": "click OK"}), &ctx, &host(with_display(), dir.path())).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::OpenclawFailed, "{err}");
    assert!(err.message.contains("exit status: 3"), "{}", err.message);
    assert!(err.message.contains("window not found"), "{}", err.message);
    assert!(job_log(dir.path()).contains("window not found"), "output kept in the job log");
    let left: Vec<_> = std::fs::read_dir(&ctx.out_dir).unwrap().collect();
    assert!(left.is_empty(), "no artifact or temp file after a failure: {left:?}");
}

#[tokio::test]
async fn timeout_kills_the_process_tree() {
    let dir = common::tempdir();
    let pid_file = dir.path().join("sleeper.pid");
    let hang = script(dir.path(), "hang.sh", "cat > /dev/null\nsleep 30 &\necho $! > \"$1\"\nwait\n");
    let mut s = settings(dir.path());
    s.openclaw.command = format!("/bin/sh {} {}", hang.display(), pid_file.display());
    let ctx = context(dir.path(), s);
    let started = Instant::now();
    let err = run_with(&json!({"task": "wait forever", "timeout_s": 1}), &ctx, &host(with_display(), dir.path()))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    common::wait_until("the grandchild sleeper to be killed", Duration::from_secs(5), || !alive(pid));
}

/// A process exists and is not a zombie waiting to be reaped.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn payload_values_are_checked() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = common::tempdir();
    let mut s = settings(dir.path());
    s.openclaw.command = "/bin/cat".into();
    let ctx = context(dir.path(), s);
    for bad in [
        json!({"task": "x", "timeout_s": 0}),
        json!({"task": "x", "timeout_s": "ten"}),
        json!({"task": "   "}),
        json!({"task": "x", "extra": 1}),
        json!(["task"]),
        Value::Null,
    ] {
        match rt.block_on(run_with(&bad, &ctx, &host(with_display(), dir.path()))) {
            Err(err) => assert_eq!(err.code, ErrorCode::InputInvalid, "{bad}: {err}"),
            Ok(out) => panic!("{bad} was accepted: {out:?}"),
        }
    }
}
