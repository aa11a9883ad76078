//! The controller never lets a user believe a job ran where it did not, or
//! passed when it failed: a restarted worker is used at once (no stale
//! fallback), errors name the user's files, a step failure is reported with
//! the step's own code and `executed_on: null` when nothing ran, and a
//! reused job id replaces its receipt folder whole.

mod controller_support;

use controller_support::*;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;

/// Starts a real worker on a chosen port (to restart it on the same one).
fn worker_on(w: &World, id: &str, port: u16) -> Proc {
    let mut c = clean_command(env!("CARGO_BIN_EXE_rayvault-worker"), w.dir.path());
    c.env("RAYVAULT_WORKER_ID", id)
        .env("RAYVAULT_WORKER_PORT", port.to_string())
        .env("RAYVAULT_STATE_DIR", w.dir.path().join(format!("worker-{id}")))
        .env("RAYVAULT_CLUSTER_SECRET", SECRET);
    let child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let p = Proc { child, name: id.into() };
    common::wait_until(&format!("worker {id} answers /health"), Duration::from_secs(30), || health_ok(port));
    p
}

#[test]
fn a_restarted_worker_is_used_at_once_by_a_running_daemon() {
    let w = World::new();
    let port = common::free_port();
    w.write_nodes(&[("w1", port, true)]);
    // The daemon probes every 15 s: it first sees w1 down.
    let _daemon = w.daemon();
    let clip = video(&w);
    common::wait_until("the daemon saw w1 down", Duration::from_secs(20), || {
        let out = w.orch().args(["status", "--json"]).output().unwrap();
        let (_, s, _) = parse_output(&out);
        s["nodes"]["nodes"].as_array().is_some_and(|a| a.iter().any(|n| n["node_id"] == "w1" && n["status"] == "down"))
    });
    // The worker comes (back) up; the next job goes to it, not to the
    // controller with a reason from the cached view.
    let _w1 = worker_on(&w, "w1", port);
    let (code, r, err) = w.submit("restart", "j", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "w1", "{r}");
    assert_eq!(r["fallback_reason"], Value::Null, "{r}");
    assert!(!err.contains("ran locally"), "{err}");
}

#[test]
fn remote_errors_name_the_users_files_and_the_failing_one() {
    let w = World::new();
    let (_w1, p1) = worker(&w, "w1", &[]);
    w.write_nodes(&[("w1", p1, true)]);
    let good = common::make_sine_wav(w.dir.path(), "good.wav", 1.0, 48_000, 1, -16.0);
    let bad = w.dir.path().join("broken take.wav");
    std::fs::write(&bad, b"RIFF\x24\x00\x00\x00WAVEnot really a wave file at all").unwrap();
    let (code, r, err) = w.submit("paths", "post", "AUDIO_POSTCHECK", json!({"audio_paths": [good, bad]}), &["--no-fallback"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(r["executed_on"], "w1", "the step ran there and failed: {r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&bad.display().to_string()), "names the failing file as given: {msg}");
    assert!(!msg.contains(&good.display().to_string()), "and only that one: {msg}");
    assert!(!msg.contains("blobs") && !msg.contains(&sha256(&bad)), "no worker blob path: {msg}");
    let text = serde_json::to_string(&r).unwrap();
    assert!(!text.contains("/blobs/"), "no blob path anywhere in the receipt: {text}");
}

#[test]
fn nothing_ran_means_executed_on_null_and_the_steps_own_code() {
    let w = World::new();
    let (_w1, p1) = worker(&w, "w1", &[]);
    w.write_nodes(&[("w1", p1, true)]);

    // A folder as media_path is refused before anything runs.
    let folder = w.dir.path().join("a-folder");
    std::fs::create_dir_all(&folder).unwrap();
    let (code, r, _) = w.submit("none", "dir", "FFMPEG_PROBE", json!({"media_path": folder}), &["--no-fallback"]);
    assert_eq!(code, 1);
    assert_eq!(r["status"], "failed");
    assert_eq!(r["executed_on"], Value::Null, "{r}");
    assert_eq!(r["error"]["code"], "INPUT_INVALID", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("a-folder"), "{r}");

    // A file on neither machine: the worker says INPUT_NOT_FOUND, and with
    // --no-fallback that is the receipt's code (not WORKER_LOST), with
    // nothing claimed to have run locally.
    let missing = w.dir.path().join("not-here.mp4");
    let (code, r, err) = w.submit("none", "missing", "FFMPEG_PROBE", json!({"media_path": missing}), &["--no-fallback"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(r["executed_on"], Value::Null, "{r}");
    assert_eq!(r["error"]["code"], "INPUT_NOT_FOUND", "{r}");
    assert_eq!(r["attempts"][0]["executed_on"], "w1");
    assert!(!err.contains("ran locally"), "{err}");
}

#[test]
fn a_reused_job_id_replaces_the_receipt_folder_whole() {
    let w = World::bare();
    let long = json!({"text": "One sentence here. Two sentences here. Three sentences here. Four sentences here.", "max_chars": 20});
    let (code, r, err) = w.submit("reuse", "tts", "TTS_RENDER_CHUNKS", long, &[]);
    assert!(code == 0, "{err} {r}");
    let many = r["artifacts"].as_array().unwrap().len();
    assert!(many > 2, "{r}");
    let first_hash = r["inputs_hash"].as_str().unwrap().to_string();
    let dir = w.receipt_dir("reuse", "tts");
    std::fs::write(dir.join("stray.txt"), b"left from another run").unwrap();

    let (code, r, err) = w.submit("reuse", "tts", "TTS_RENDER_CHUNKS", json!({"text": "Just one."}), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["replaced_inputs_hash"], first_hash.as_str(), "{r}");
    let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let listed: Vec<&str> = r["artifacts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    for n in &names {
        assert!(n == "job_receipt.json" || n == "worker.log" || listed.contains(&n.as_str()), "stale file {n} in {names:?}");
    }
}

#[test]
fn progress_counts_chunks_of_a_remote_and_a_local_run() {
    let mut w = World::new();
    // Every progress line as a log line (plain progress keeps one a second).
    w.set_env("RUST_LOG", "info");
    let wav = common::make_sine_wav(w.dir.path(), "voice.wav", 1.0, 22_050, 1, -18.0);
    let template = format!("python3 -c \"import shutil, sys, time; time.sleep(1.3); shutil.copy('{}', sys.argv[2])\" {{text_file}} {{out_wav}}", wav.display());
    let env = [
        ("RAYVAULT_CLUSTER_SECRET", SECRET),
        ("RAYVAULT_TTS__ENGINE", "command"),
        ("RAYVAULT_TTS__COMMAND_TEMPLATE", template.as_str()),
        ("RAYVAULT_TTS__PARALLEL_CHUNKS", "1"),
        ("RAYVAULT_TTS__NORMALIZE_LUFS", "off"),
    ];
    let (_w1, p1) = worker(&w, "w1", &env);
    w.write_nodes(&[("w1", p1, true)]);
    let text = json!({"text": "One sentence here. Two sentences here.", "max_chars": 20});
    let (code, r, err) = w.submit("progress", "remote", "TTS_RENDER_CHUNKS", text.clone(), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "w1");
    // The worker's log says how far the step is; the controller relays it.
    assert!(err.contains("w1: chunk 1/2"), "{err}");

    for (k, v) in &env[1..] {
        w.set_env(k, v);
    }
    w.write_nodes(&[]);
    let (code, r, err) = w.submit("progress", "local", "TTS_RENDER_CHUNKS", text, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "local");
    assert!(err.contains("local: chunk 1/2") && err.contains("local: chunk 2/2"), "{err}");
}
