//! Compatibility with v0.5 workers, against the double in
//! `tests/legacy_worker_v05.py` that follows docs/protocol.md.

mod controller_support;

use controller_support::*;
use serde_json::json;

#[test]
fn legacy_hmac_node_shows_compat_mode_and_runs_mapped_steps() {
    let w = World::new();
    let (_leg, pl) = legacy(&w, "windows-worker-1", &["--steps", "ffprobe_analyze,audio_postcheck"]);
    w.write_nodes(&[("windows-worker-1", pl, true)]);

    let out = w.orch().args(["caps", "--json"]).output().unwrap();
    let (code, caps, err) = parse_output(&out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(caps["nodes"][0]["caps"]["_compat_mode"], "legacy_hmac_v05");
    assert_eq!(caps["nodes"][0]["caps"]["capabilities"], json!(["ffprobe_analyze", "audio_postcheck"]));

    let clip = video(&w);
    let (code, r, err) = w.submit("legacy", "probe", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "windows-worker-1");
    assert_eq!(r["compat_mode"], "legacy_hmac_v05");
    assert_eq!(r["result"]["legacy"], true, "the v0.5 worker ran ffprobe_analyze: {r}");
    let art = &r["artifacts"][0];
    assert_eq!(sha256(std::path::Path::new(art["path"].as_str().unwrap())), art["sha256"].as_str().unwrap());
    assert!(std::fs::read_to_string(w.receipt_dir("legacy", "probe").join("worker.log")).unwrap().contains("ffprobe_analyze"));

    let (code, again, _) = w.submit("legacy", "probe", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0);
    assert_eq!(again["cached"], true);
    assert_eq!(again["remote_job_id"], r["remote_job_id"]);

    // A step the v0.5 node does not list runs locally, with that reason.
    let (code, r, err) = w.submit("legacy", "frames", "FRAME_SAMPLING", json!({"media_path": clip, "count": 2}), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "local");
    assert_eq!(r["fallback_reason"], "windows-worker-1: legacy v0.5 worker does not list frame_sampling (for FRAME_SAMPLING)");
}

#[test]
fn plain_token_fallback_only_when_allowed() {
    let mut w = World::new();
    let (_leg, pl) = legacy(&w, "old-win", &["--plain-only"]);
    w.write_nodes(&[("old-win", pl, true)]);
    let clip = video(&w);

    let (code, r, _) = w.submit("plain", "strict", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 2, "a refused credential is a configuration error");
    assert_eq!(r["executed_on"], serde_json::Value::Null, "hmac_strict never sends the plain secret");
    assert_eq!(r["error"]["code"], "AUTH_REJECTED");
    let reason = reason_for(&r, "old-win");
    assert!(reason.starts_with("refused our credentials: 401 auth_token invalid: secrets differ between Mac and Windows"), "{reason}");
    assert!(!reason.contains("skew"), "a refused credential is not blamed on the clock: {reason}");
    assert!(reason.contains("RAYVAULT_ALLOW_PLAIN_FALLBACK=1"), "{reason}");

    w.set_env("RAYVAULT_ALLOW_PLAIN_FALLBACK", "1");
    let out = w.orch().env("RUST_LOG", "warn").args(["caps", "--json"]).output().unwrap();
    let (code, caps, err) = parse_output(&out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(caps["nodes"][0]["caps"]["_compat_mode"], "legacy_plain_token");
    assert!(err.contains("using the plain token"), "a warning is printed: {err}");
    let (code, r, err) = w.submit("plain", "allowed", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "old-win");
    assert_eq!(r["compat_mode"], "legacy_plain_token");
    assert!(!serde_json::to_string(&r).unwrap().contains(SECRET), "the secret never reaches the receipt");
}

#[test]
fn a_remote_failure_a_local_run_would_not_have_falls_back_locally() {
    let w = World::new();
    // The double lists audio_postcheck but cannot run it: STEP_UNAVAILABLE.
    let (_leg, pl) = legacy(&w, "half-broken", &["--steps", "ffprobe_analyze,audio_postcheck"]);
    w.write_nodes(&[("half-broken", pl, true)]);
    let wav = common::make_sine_wav(w.dir.path(), "tone.wav", 2.0, 48_000, 1, -20.0);
    // A 2 s sine at -20 dBFS is far from the -16 LUFS target: the check
    // runs (status succeeded) and its verdict fails (exit 3).
    let (code, r, err) = w.submit("env", "post", "AUDIO_POSTCHECK", json!({"audio_paths": [wav]}), &[]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(r["verdict"], "failed", "{r}");
    assert_eq!(r["verdict_failures"][0]["file"], json!(wav), "{r}");
    assert_eq!(r["executed_on"], "local", "{r}");
    assert_eq!(r["status"], "succeeded", "the local run did the work: {r}");
    assert_eq!(r["result"]["files"][0]["duration_s"], 2.0);
    let reason = r["fallback_reason"].as_str().unwrap();
    assert!(reason.contains("half-broken failed the job with STEP_UNAVAILABLE"), "{reason}");
    assert_eq!(r["attempts"][0]["outcome"], "abandoned");
    assert_eq!(r["attempts"][1]["executed_on"], "local");

    // With --no-fallback the same situation is a failure naming the reason.
    // The code is the step's own, and the receipt says nothing ran.
    let (code, r, _) = w.submit("env", "post-strict", "AUDIO_POSTCHECK", json!({"audio_paths": [wav]}), &["--no-fallback"]);
    assert_eq!(code, 1);
    assert_eq!(r["error"]["code"], "STEP_UNAVAILABLE", "{r}");
    assert_eq!(r["executed_on"], serde_json::Value::Null, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("half-broken failed the job with STEP_UNAVAILABLE"), "{r}");
}

#[test]
fn a_timeout_cancels_the_job_on_the_worker() {
    let w = World::new();
    let (_leg, pl) = legacy(&w, "slow", &["--job-delay", "60"]);
    w.write_nodes(&[("slow", pl, true)]);
    let clip = video(&w);
    let started = std::time::Instant::now();
    let (code, r, err) = w.submit("timeout", "j", "FFMPEG_PROBE", json!({"media_path": clip}), &["--timeout", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(r["error"]["code"], "TIMEOUT", "{r}");
    assert_eq!(r["executed_on"], "slow");
    assert_eq!(r["attempts"][0]["outcome"], "cancelled");
    let log = std::fs::read_to_string(w.receipt_dir("timeout", "j").join("worker.log")).unwrap();
    assert!(log.contains("job cancelled by the controller"), "the cancel reached the worker: {log}");
}
