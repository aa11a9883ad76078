//! A step that only reads its inputs and writes into its own job folder
//! (`AUDIO_POSTCHECK`, `FFMPEG_PROBE`, `FRAME_SAMPLING`) starts while the
//! worker makes the job's acceptance durable, reading its inline inputs
//! from their temporary files. Its end is recorded only after the
//! acceptance; a run whose job was not accepted (here: a duplicate
//! submission) is discarded without a trace; and the folder of a job the
//! store never accepted (the worker died before that commit) is removed
//! at the next start.

mod common;
mod worker_harness;

use base64::Engine;
use rayvault::protocol::JobState;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use worker_harness::{Opts, Worker};

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// An AUDIO_POSTCHECK job on `wav`, sent inline, writing its report as an
/// artifact (so that its run makes a job folder).
fn postcheck(wav: &[u8]) -> Vec<u8> {
    let digest = sha(wav);
    serde_json::to_vec(&json!({
        "step_name": "AUDIO_POSTCHECK",
        "payload": { "audio_paths": [format!("blob:sha256:{digest}")], "report_artifact": true },
        "blobs": [{ "sha256": digest, "data_b64": base64::engine::general_purpose::STANDARD.encode(wav) }],
    }))
    .unwrap()
}

fn worker_dir(w: &Worker) -> PathBuf {
    w.state_dir.join("worker")
}

/// The files of the blob folder that hold bytes (spare files made ahead
/// for inline inputs are empty).
fn full_blob_files(w: &Worker) -> Vec<PathBuf> {
    std::fs::read_dir(worker_dir(w).join("blobs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
        .collect()
}

fn job_folders(w: &Worker) -> Vec<String> {
    match std::fs::read_dir(worker_dir(w).join("jobs")) {
        Ok(entries) => {
            let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            names
        }
        Err(_) => Vec::new(),
    }
}

fn wav(dir: &Path, name: &str, seconds: f64) -> Vec<u8> {
    std::fs::read(common::make_sine_wav(dir, name, seconds, 48_000, 1, -20.0)).unwrap()
}

#[actix_rt::test]
async fn a_check_runs_on_its_inline_input_and_leaves_only_the_blob_behind() {
    let dir = common::tempdir();
    let w = Worker::start(Opts::default());
    let data = wav(dir.path(), "tone.wav", 0.5);
    let r = w.signed("POST", "/jobs?wait_ms=2000", &postcheck(&data));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["job"]["job_id"].as_str().unwrap().to_string();
    let done = w.client().job(&id, 30).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(done.attempt, 1);
    let duration = done.result.as_ref().and_then(|r| r.pointer("/files/0/duration_s")).and_then(Value::as_f64);
    assert!(duration.is_some_and(|d| (d - 0.5).abs() < 0.05), "the job ran on other bytes: {:?}", done.result);
    assert_eq!(done.artifacts.len(), 1, "{done:?}");
    // The log says how it started. The result and the log name the input
    // by its blob's path (which the controller maps back to the
    // submitter's file), not by the temporary file the step read.
    let log = done.log.clone().unwrap_or_default();
    assert!(log.contains("started while its acceptance is made durable"), "{log}");
    let blob_path = worker_dir(&w).join("blobs").join(sha(&data));
    assert_eq!(done.result.as_ref().and_then(|r| r.pointer("/files/0/path")), Some(&json!(blob_path.to_string_lossy())), "{:?}", done.result);
    assert!(!log.contains(".spare.") && !serde_json::to_string(&done.result).unwrap().contains(".spare."), "{log}");
    // The input is in place under its digest, and its temporary name is
    // gone once the job has ended (the end is recorded first, then the
    // name goes: wait for it briefly).
    let blob = worker_dir(&w).join("blobs").join(sha(&data));
    assert_eq!(std::fs::read(&blob).unwrap(), data);
    worker_harness::wait_until_async("the temporary name of the input to go", std::time::Duration::from_secs(10), || {
        let n = full_blob_files(&w).len();
        async move { n == 1 }
    })
    .await;
    assert_eq!(full_blob_files(&w), vec![blob]);
}

#[actix_rt::test]
async fn a_check_started_early_whose_job_is_refused_is_discarded() {
    let dir = common::tempdir();
    let w = Worker::start(Opts {
        env: vec![
            ("RAYVAULT_OPENCLAW__COMMAND".into(), "sh -c 'cat >/dev/null; sleep 30'".into()),
            ("RAYVAULT_WORKER__MAX_JOBS_IN_FLIGHT".into(), "1".into()),
        ],
        ..Opts::default()
    });
    let c = w.client();
    let task = rayvault::protocol::SubmitJob { step_name: "OPENCLAW_TASK".into(), payload: json!({ "task": "hold the only place" }), inputs_hash: None, label: None, lease_s: None };
    let busy = c.submit(&task).await.unwrap().job;

    // The check's executor has a free slot, so its run starts before the
    // commit, which then finds the worker full: the submitter is refused,
    // and nothing of that run stays (no record, no folder, no log).
    let data = wav(dir.path(), "tone.wav", 0.5);
    let r = w.signed("POST", "/jobs?wait_ms=2000", &postcheck(&data));
    assert_eq!((r.status, r.code().as_str()), (429, "TOO_MANY_JOBS"), "{}", r.text());
    worker_harness::wait_until_async("the early run to end and be discarded", std::time::Duration::from_secs(10), || {
        let discarded = w.stderr().contains("the run started ahead of its acceptance is discarded");
        async move { discarded }
    })
    .await;
    let stray: Vec<String> = job_folders(&w).into_iter().filter(|f| f != &busy.job_id).collect();
    assert!(stray.is_empty(), "{stray:?}");
    let metrics = w.signed("GET", "/metrics", b"").text();
    assert!(!metrics.lines().any(|l| l.starts_with("rayvault_jobs_total") && l.contains("AUDIO_POSTCHECK")), "{metrics}");
    assert!(metrics.lines().any(|l| l == r#"rayvault_jobs_in_flight{step="AUDIO_POSTCHECK"} 0"#), "{metrics}");

    // Its slot is free again: once there is room, the check runs.
    c.cancel(&busy.job_id).await.unwrap();
    let r = w.signed("POST", "/jobs?wait_ms=2000", &postcheck(&data));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["job"]["job_id"].as_str().unwrap().to_string();
    assert_eq!(c.job(&id, 30).await.unwrap().state, JobState::Succeeded);
    // Submitted again, it is the existing job (and is not run again).
    let again = w.signed("POST", "/jobs?wait_ms=2000", &postcheck(&data));
    assert_eq!((again.status, again.json()["cached"].clone()), (200, json!(true)), "{}", again.text());
    assert_eq!(again.json()["job"]["job_id"].as_str(), Some(id.as_str()));
}

#[actix_rt::test]
async fn the_folder_of_a_job_never_accepted_is_removed_at_the_next_start() {
    let dir = common::tempdir();
    let state = common::tempdir();
    let opts = Opts { state_dir: Some(state.path().to_path_buf()), ..Opts::default() };
    let mut w = Worker::start(opts.clone());
    let data = wav(dir.path(), "tone.wav", 0.5);
    let r = w.signed("POST", "/jobs?wait_ms=2000", &postcheck(&data));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["job"]["job_id"].as_str().unwrap().to_string();
    assert_eq!(w.client().job(&id, 30).await.unwrap().state, JobState::Succeeded);
    w.kill9();

    // What a run started ahead of a commit that never happened leaves.
    let orphan = format!("j{}", "0123456789abcdef".repeat(2));
    let artifacts = worker_dir(&w).join("jobs").join(&orphan).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("postcheck_report.json"), b"{}").unwrap();
    // A folder that is no job's is not touched.
    std::fs::create_dir_all(worker_dir(&w).join("jobs").join("not-a-job")).unwrap();

    let w = Worker::start(opts);
    assert_eq!(job_folders(&w), vec![id.clone(), "not-a-job".to_string()]);
    assert!(w.stderr().contains("never accepted"), "{}", w.stderr());
    let kept = w.client().job(&id, 0).await.unwrap();
    assert_eq!((kept.state, kept.artifacts.len()), (JobState::Succeeded, 1));
}
