//! `sync-artifacts` against a real worker: the node taken from the receipt,
//! one stderr line per artifact (downloaded, verified, repaired), and a
//! receipt rebuilt from the worker's record (`GET /jobs?run_id=&job_id=`)
//! when the local one was deleted or the controller never had it.

mod controller_support;

use controller_support::*;
use serde_json::{json, Value};
use std::path::Path;

fn sync(w: &World, extra: &[&str]) -> (i32, Value, String) {
    let out = w.orch().env("RUST_LOG", "warn").args(["sync-artifacts", "--run-id", "sync", "--job-id", "probe"]).args(extra).output().unwrap();
    parse_output(&out)
}

#[test]
fn sync_verifies_repairs_and_rebuilds_a_lost_receipt() {
    let w = World::new();
    let (_w1, p1) = worker(&w, "w1", &[]);
    w.write_nodes(&[("w1", p1, true)]);
    let clip = video(&w);
    let (code, original, err) = w.submit("sync", "probe", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(original["executed_on"], "w1");
    let dir = w.receipt_dir("sync", "probe");
    let artifact = dir.join("ffprobe.json");
    let expected = sha256(&artifact);

    // Without --node-id the node is the receipt's; the copy is verified.
    let (code, synced, err) = sync(&w, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("verified ffprobe.json (already present, sha256 {expected})")), "{err}");
    assert_eq!(synced["remote_job_id"], original["remote_job_id"]);

    // A damaged copy is replaced, and said so.
    std::fs::write(&artifact, b"{\"damaged\": true}").unwrap();
    let damaged = sha256(&artifact);
    let (code, _, err) = sync(&w, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("repaired ffprobe.json (had sha256 {damaged}")), "{err}");
    assert_eq!(sha256(&artifact), expected);

    // The receipt deleted: without --node-id there is nothing to go on.
    std::fs::remove_dir_all(&dir).unwrap();
    let (code, _, err) = sync(&w, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pass --node-id"), "{err}");

    // With --node-id the job is found by run and job id and the receipt rebuilt.
    let (code, rebuilt, err) = sync(&w, &["--node-id", "w1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("downloaded ffprobe.json ({} bytes, sha256 {expected})", std::fs::metadata(&artifact).unwrap().len())), "{err}");
    check_rebuilt(&rebuilt, &original, &dir);
    let written: Value = serde_json::from_slice(&std::fs::read(dir.join("job_receipt.json")).unwrap()).unwrap();
    assert_eq!(written, rebuilt, "the rebuilt receipt is written");
    assert!(std::fs::read_to_string(dir.join("worker.log")).unwrap().contains("FFMPEG_PROBE"));
}

/// The fields a rebuilt receipt takes from the worker's record.
fn check_rebuilt(rebuilt: &Value, original: &Value, dir: &Path) {
    for key in ["run_id", "job_id", "step_name", "inputs_hash", "status", "executed_on", "remote_job_id"] {
        assert_eq!(rebuilt[key], original[key], "{key}: {rebuilt}");
    }
    assert_eq!(rebuilt["result"]["format"], original["result"]["format"], "the worker's result");
    assert_eq!(rebuilt["placement"], json!([]));
    assert_eq!(rebuilt["attempts"].as_array().unwrap().len(), 1);
    assert!(rebuilt["attempts"][0]["detail"].as_str().unwrap().contains("rebuilt"), "{rebuilt}");
    let art = &rebuilt["artifacts"][0];
    assert_eq!(art["sha256"], original["artifacts"][0]["sha256"]);
    assert_eq!(sha256(Path::new(art["path"].as_str().unwrap())), art["sha256"].as_str().unwrap());
    assert!(Path::new(art["path"].as_str().unwrap()).starts_with(dir));
}

#[test]
fn another_controller_rebuilds_the_receipt_from_the_worker() {
    let w = World::new();
    let (_w1, p1) = worker(&w, "w1", &[]);
    w.write_nodes(&[("w1", p1, true)]);
    let clip = video(&w);
    let (code, original, err) = w.submit("sync", "probe", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0, "{err}");

    // A second controller (its own state folder) that never ran the job.
    let other = World::new();
    other.write_nodes(&[("w1", p1, true)]);
    let (code, rebuilt, err) = sync(&other, &["--node-id", "w1"]);
    assert_eq!(code, 0, "{err}");
    check_rebuilt(&rebuilt, &original, &other.receipt_dir("sync", "probe"));

    // A job the worker never saw.
    let out = other.orch().env("RUST_LOG", "warn").args(["sync-artifacts", "--run-id", "sync", "--job-id", "never", "--node-id", "w1"]).output().unwrap();
    let (code, _, err) = parse_output(&out);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("holds no job labelled sync/never"), "{err}");
}
