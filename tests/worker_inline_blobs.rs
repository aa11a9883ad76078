//! Small inputs inside `POST /jobs`: the body's `blobs` list carries each
//! input's bytes (base64) beside the payload that names it as
//! `blob:sha256:<hex>`. The worker checks every digest and stores the
//! inputs as blobs (synced) before it accepts the job, so the job runs on
//! exactly the bytes sent, and a bad list is refused with a stable code
//! before anything is stored or accepted. `/caps` advertises how many
//! bytes it takes this way (`inline_blob_bytes`).

mod common;
mod worker_harness;

use base64::Engine;
use rayvault::protocol::JobState;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use worker_harness::{Opts, Worker};

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn blob_file(w: &Worker, digest: &str) -> std::path::PathBuf {
    w.state_dir.join("worker").join("blobs").join(digest)
}

/// An AUDIO_POSTCHECK job on `digest`, with `blobs` as the inline list.
fn postcheck(digest: &str, blobs: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "step_name": "AUDIO_POSTCHECK",
        "payload": { "audio_paths": [format!("blob:sha256:{digest}")] },
        "blobs": blobs,
    }))
    .unwrap()
}

fn code(r: &worker_harness::RawHttp) -> String {
    r.json()["code"].as_str().unwrap_or_default().to_string()
}

#[actix_rt::test]
async fn a_job_with_its_input_inline_runs_on_exactly_those_bytes() {
    let dir = common::tempdir();
    let wav = std::fs::read(common::make_sine_wav(dir.path(), "tone.wav", 0.5, 48_000, 1, -20.0)).unwrap();
    let digest = sha(&wav);
    let w = Worker::start(Opts::default());

    let caps = w.signed("GET", "/caps", b"");
    assert_eq!(caps.status, 200, "{}", caps.text());
    assert_eq!(caps.json()["inline_blob_bytes"], json!(512 * 1024), "1 MiB bodies leave room for 512 KiB of inputs");

    let r = w.signed("POST", "/jobs", &postcheck(&digest, json!([{ "sha256": digest, "data_b64": b64(&wav) }])));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["job"]["job_id"].as_str().unwrap().to_string();
    // Stored under its digest before the job was accepted.
    assert_eq!(std::fs::read(blob_file(&w, &digest)).unwrap(), wav);
    let done = w.client().job(&id, 30).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let metrics = w.signed("GET", "/metrics", b"").text();
    assert!(metrics.lines().any(|l| l == "rayvault_blobs_inline_total 1"), "{metrics}");

    // The same job again is the existing one; the blob is not written twice.
    let again = w.signed("POST", "/jobs", &postcheck(&digest, json!([{ "sha256": digest, "data_b64": b64(&wav) }])));
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["cached"], json!(true));
    assert_eq!(again.json()["job"]["job_id"].as_str(), Some(id.as_str()));
    let metrics = w.signed("GET", "/metrics", b"").text();
    assert!(metrics.lines().any(|l| l == "rayvault_blobs_inline_total 1"), "{metrics}");
}

/// A small submission's inputs are stored on the request's own thread, a
/// larger one's on the blocking pool: both check every digest the same way
/// and run the job on exactly the bytes sent.
#[actix_rt::test]
async fn small_and_large_inline_inputs_are_checked_and_stored_alike() {
    let dir = common::tempdir();
    let w = Worker::start(Opts::default());
    // 0.5 s (a 48 KB input, a body under 128 KiB) and 3 s (288 KB).
    for (name, seconds) in [("short.wav", 0.5), ("long.wav", 3.0)] {
        let wav = std::fs::read(common::make_sine_wav(dir.path(), name, seconds, 48_000, 1, -20.0)).unwrap();
        let digest = sha(&wav);
        let mut tampered = wav.clone();
        tampered[200] ^= 0xff;
        let r = w.signed("POST", "/jobs", &postcheck(&digest, json!([{ "sha256": digest, "data_b64": b64(&tampered) }])));
        assert_eq!((r.status, code(&r).as_str()), (422, "DIGEST_MISMATCH"), "{name}: {}", r.text());
        assert!(!blob_file(&w, &digest).exists(), "{name}: a mismatching input was stored");

        let r = w.signed("POST", "/jobs", &postcheck(&digest, json!([{ "sha256": digest, "data_b64": b64(&wav) }])));
        assert_eq!(r.status, 201, "{name}: {}", r.text());
        assert_eq!(std::fs::read(blob_file(&w, &digest)).unwrap(), wav, "{name}");
        let id = r.json()["job"]["job_id"].as_str().unwrap().to_string();
        let done = w.client().job(&id, 30).await.unwrap();
        assert_eq!(done.state, JobState::Succeeded, "{name}: {done:?}");
        let duration = done.result.as_ref().and_then(|r| r.pointer("/files/0/duration_s")).and_then(Value::as_f64);
        assert!(duration.is_some_and(|d| (d - seconds).abs() < 0.05), "{name}: the job ran on other bytes: {:?}", done.result);
    }
}

#[actix_rt::test]
async fn bad_inline_inputs_are_refused_before_anything_is_stored_or_accepted() {
    let dir = common::tempdir();
    let wav = std::fs::read(common::make_sine_wav(dir.path(), "tone.wav", 0.25, 48_000, 1, -20.0)).unwrap();
    let digest = sha(&wav);
    let w = Worker::start(Opts::default());

    // Bytes that do not hash to the digest the payload names.
    let mut tampered = wav.clone();
    tampered[100] ^= 0xff;
    let r = w.signed("POST", "/jobs", &postcheck(&digest, json!([{ "sha256": digest, "data_b64": b64(&tampered) }])));
    assert_eq!((r.status, code(&r).as_str()), (422, "DIGEST_MISMATCH"), "{}", r.text());
    assert!(!blob_file(&w, &digest).exists(), "a mismatching input was stored");

    // Not base64.
    let r = w.signed("POST", "/jobs", &postcheck(&digest, json!([{ "sha256": digest, "data_b64": "not base64!" }])));
    assert_eq!((r.status, code(&r).as_str()), (400, "BAD_REQUEST"), "{}", r.text());
    assert!(r.text().contains("base64"), "{}", r.text());

    // An input the payload does not name.
    let other = sha(b"other");
    let r = w.signed("POST", "/jobs", &postcheck(&digest, json!([{ "sha256": other, "data_b64": b64(b"other") }])));
    assert_eq!((r.status, code(&r).as_str()), (400, "BAD_REQUEST"), "{}", r.text());
    assert!(r.text().contains("not named by the payload"), "{}", r.text());
    assert!(!blob_file(&w, &other).exists());

    // The same input twice.
    let twice = json!([{ "sha256": digest, "data_b64": b64(&wav) }, { "sha256": digest, "data_b64": b64(&wav) }]);
    let r = w.signed("POST", "/jobs", &postcheck(&digest, twice));
    assert_eq!((r.status, code(&r).as_str()), (400, "DUPLICATE_KEY"), "{}", r.text());

    // Not a list of {sha256, data_b64}.
    let r = w.signed("POST", "/jobs", &postcheck(&digest, json!({ "sha256": digest })));
    assert_eq!((r.status, code(&r).as_str()), (400, "BAD_REQUEST"), "{}", r.text());
    let r = w.signed("POST", "/jobs", &postcheck(&digest, json!([{ "sha256": digest, "data_b64": b64(&wav), "path": "/etc/passwd" }])));
    assert_eq!((r.status, code(&r).as_str()), (400, "BAD_REQUEST"), "{}", r.text());

    // More than the worker takes inline (the body itself fits 1 MiB).
    let big = vec![7u8; 600 * 1024];
    let big_digest = sha(&big);
    let r = w.signed("POST", "/jobs", &postcheck(&big_digest, json!([{ "sha256": big_digest, "data_b64": b64(&big) }])));
    assert_eq!((r.status, code(&r).as_str()), (413, "PAYLOAD_TOO_LARGE"), "{}", r.text());
    assert!(r.text().contains("PUT /blobs"), "the message says what to do instead: {}", r.text());
    assert!(!blob_file(&w, &big_digest).exists());

    // None of these created a job, and the input the payload names is
    // still missing: without it inline the job is refused as before.
    let r = w.signed("POST", "/jobs", &postcheck(&digest, json!([])));
    assert_eq!((r.status, code(&r).as_str()), (422, "BLOB_NOT_FOUND"), "{}", r.text());
    let health = w.signed("GET", "/health", b"").json();
    let active: u64 = health["load"].as_object().map_or(0, |m| m.values().map(|s| s["running"].as_u64().unwrap_or(0) + s["queued"].as_u64().unwrap_or(0)).sum());
    assert_eq!(active, 0, "{health}");
}
