//! The controller with no workers: zero configuration runs everything
//! locally, exit codes, receipts on stdout and on disk, usage errors.

mod controller_support;

use controller_support::*;
use serde_json::json;

#[test]
fn zero_configuration_runs_locally_and_writes_the_receipt() {
    let w = World::bare();
    let clip = video(&w);
    let (code, r, err) = w.submit("run1", "probe1", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["executed_on"], "local");
    assert_eq!(r["cached"], false);
    assert!(r["fallback_reason"].as_str().unwrap().contains("no worker nodes configured"), "{r}");
    assert_eq!(r["inputs_hash"].as_str().unwrap().len(), 64);
    assert!(r["error"].is_null());
    let dir = w.receipt_dir("run1", "probe1");
    let on_disk: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("job_receipt.json")).unwrap()).unwrap();
    assert_eq!(on_disk, r, "stdout and job_receipt.json agree");
    assert!(dir.join("worker.log").is_file());
    let art = &r["artifacts"][0];
    assert_eq!(art["name"], "ffprobe.json");
    assert_eq!(sha256(std::path::Path::new(art["path"].as_str().unwrap())), art["sha256"].as_str().unwrap());
    assert!(err.contains("ran locally: no worker nodes configured"), "the fallback is said on stderr: {err}");
    // No secret ever reaches a receipt.
    assert!(!std::fs::read_to_string(dir.join("job_receipt.json")).unwrap().contains(SECRET));
}

#[test]
fn a_failed_step_exits_1_with_its_error_code() {
    let w = World::bare();
    let (code, r, _) = w.submit("run1", "missing", "FFMPEG_PROBE", json!({"media_path": "/nonexistent/clip.mp4"}), &[]);
    assert_eq!(code, 1);
    assert_eq!(r["status"], "failed");
    assert_eq!(r["error"]["code"], "INPUT_NOT_FOUND");
}

#[test]
fn bad_usage_and_configuration_exit_2() {
    let w = World::bare();
    let (code, _, err) = w.submit("r", "j", "FFMPEG_PROBE", json!({}), &["--requirements-json", r#"{"os":"windows"}"#]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown field `os`"), "{err}");
    let out = w.orch().args(["submit", "--run-id", "r", "--job-id", "j", "--step-name", "FFMPEG_PROBE", "--payload-json", "{not json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let (code, _, err) = w.submit("r", "j", "FFMPEG_PROOBE", json!({}), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown step \"FFMPEG_PROOBE\""), "{err}");
    let (code, _, err) = w.submit("../escape", "j", "FFMPEG_PROBE", json!({}), &[]);
    assert_eq!(code, 2, "{err}");
    let out = w.orch().args(["submit", "--run-id", "r"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "missing flags");
    let (code, _, err) = w.submit("r", "j", "FFMPEG_PROBE", json!({}), &["--no-wait"]);
    assert_eq!(code, 2, "--no-wait without a daemon: {err}");
}

#[test]
fn a_malformed_nodes_file_names_the_line_and_field() {
    let w = World::bare();
    std::fs::create_dir_all(w.cluster()).unwrap();
    std::fs::write(w.cluster().join("nodes.json"), "{\"nodes\": [\n  {\"node_id\": \"w1\",\n   \"host\": \"127.0.0.1\",\n   \"port\": \"eighty\", \"enabled\": true}\n]}\n").unwrap();
    let (code, _, err) = w.submit("r", "j", "FFMPEG_PROBE", json!({"media_path": "/x"}), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("line 4") && err.contains("nodes[0].port"), "{err}");
    let out = w.orch().arg("health").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nodes[0].port"));
}

#[test]
fn disabled_nodes_fall_back_and_no_fallback_fails() {
    let w = World::new();
    w.write_nodes(&[("windows-worker-1", 9, false)]);
    let clip = video(&w);
    let (code, r, _) = w.submit("r", "j1", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0);
    assert_eq!(r["fallback_reason"], "windows-worker-1: disabled in nodes.json");
    let (code, r, _) = w.submit("r", "j2", "FFMPEG_PROBE", json!({"media_path": clip}), &["--no-fallback"]);
    assert_eq!(code, 1);
    assert_eq!(r["error"]["code"], "NO_ELIGIBLE_NODE");
    assert!(r["error"]["message"].as_str().unwrap().contains("windows-worker-1: disabled in nodes.json"), "{r}");
    let out = w.orch().arg("health").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "no enabled node is healthy enough");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("windows-worker-1") && l.ends_with("disabled in nodes.json")), "{text}");
    assert!(text.contains("note: no enabled node in nodes.json"), "{text}");
}

#[test]
fn timeout_fails_the_job_with_timeout() {
    let mut w = World::bare();
    // A "speech engine" that takes 30 s, so that only the deadline ends it.
    w.set_env("RAYVAULT_TTS__ENGINE", "command");
    w.set_env("RAYVAULT_TTS__COMMAND_TEMPLATE", "python3 -c \"import time; time.sleep(30)\" {text_file} {out_wav}");
    let started = std::time::Instant::now();
    let (code, r, err) = w.submit("r", "tts", "TTS_RENDER_CHUNKS", json!({"text": "Hello there."}), &["--timeout", "1"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(r["error"]["code"], "TIMEOUT", "{r}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the slow engine was stopped: {:?}", started.elapsed());
}

#[test]
fn the_start_script_runs_the_controller() {
    let w = World::bare();
    let clip = video(&w);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/start_controller.sh");
    let out = clean_command("bash", w.dir.path())
        .env("RAYVAULT_ORCHESTRATOR_BIN", env!("CARGO_BIN_EXE_rayvault-orchestrator"))
        .env("RAYVAULT_STATE_DIR", w.state())
        .arg(&script)
        .args(["submit", "--run-id", "script", "--job-id", "j", "--step-name", "FFMPEG_PROBE", "--payload-json", &json!({"media_path": clip}).to_string(), "--json"])
        .output()
        .unwrap();
    let (code, r, err) = parse_output(&out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "local");
    assert!(w.receipt_dir("script", "j").join("job_receipt.json").is_file());
    let out = clean_command("bash", w.dir.path()).arg(&script).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no subcommand is a usage error");
}
