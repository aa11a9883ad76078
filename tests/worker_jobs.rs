//! Job endpoints of the real worker, driven with the signed client:
//! lifecycle, long-poll, log tailing, artifact manifest and Range resume,
//! blob staging, idempotency (including concurrent duplicates and a wrong
//! client hash), cancel, per-step concurrency, and hostile artifact names.
//!
//! OPENCLAW_TASK with a configured plain command (`cat`, or a shell that
//! sleeps) is the deterministic step: its output is the task text.

mod common;
mod worker_harness;

use rayvault::client::ClientError;
use rayvault::protocol::{self, JobState, SubmitJob};
use serde_json::json;
use std::time::{Duration, Instant};
use worker_harness::{wait_until_async, Opts, Worker};

fn openclaw(task: &str) -> SubmitJob {
    SubmitJob { step_name: "OPENCLAW_TASK".into(), payload: json!({ "task": task }), inputs_hash: None, label: None, lease_s: None }
}

/// A worker whose OPENCLAW_TASK sleeps `secs` (reading the task first).
fn sleepy_worker(secs: u32) -> Worker {
    Worker::start(Opts {
        env: vec![("RAYVAULT_OPENCLAW__COMMAND".into(), format!("sh -c 'cat >/dev/null; sleep {secs}'"))],
        ..Opts::default()
    })
}

#[actix_rt::test]
async fn lifecycle_long_poll_log_and_artifacts() {
    let w = Worker::start(Opts::default());
    let c = w.client();
    assert_eq!(c.health().await.unwrap().worker_id, "worker-test");
    let caps = c.caps().await.unwrap();
    assert_eq!(caps.contract, protocol::CONTRACT);

    // A task big enough that the artifact spans several download chunks.
    let task: String = (0..6000).map(|i| format!("line {i} of the task text\n")).collect();
    let sub = c.submit(&SubmitJob { label: Some("run-1/job-1".into()), ..openclaw(&task) }).await.unwrap();
    assert!(!sub.cached);
    assert_eq!(sub.job.inputs_hash, protocol::inputs_hash("OPENCLAW_TASK", &json!({ "task": task })));
    assert_eq!(sub.job.label.as_deref(), Some("run-1/job-1"));

    // The long-poll answers when the job finishes, well before wait_s.
    let t0 = Instant::now();
    let done = c.job(&sub.job.job_id, 30).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_eq!(done.attempt, 1);

    // The log: lifecycle lines plus the step's own lines, tailable by offset.
    let log = c.full_log(&done.job_id).await.unwrap();
    assert!(log.contains("queued") && log.contains("started (attempt 1)") && log.contains("succeeded"), "{log}");
    let tail = c.log(&done.job_id, 10).await.unwrap();
    assert_eq!(tail.offset, 10);
    assert!(tail.complete);
    assert_eq!(&log.as_bytes()[10..10 + tail.data.len()], tail.data.as_bytes());

    // Manifest with digests; whole download matches.
    let manifest = c.artifacts(&done.job_id).await.unwrap();
    assert_eq!(manifest.artifacts.len(), 1);
    let entry = manifest.artifacts[0].clone();
    assert_eq!(entry.name, "openclaw_output.txt");
    let dir = common::tempdir();
    let dest = dir.path().join("out.txt");
    let n = c.download_artifact(&done.job_id, &entry, &dest).await.unwrap();
    assert_eq!(n, entry.size);
    let bytes = std::fs::read(&dest).unwrap();
    assert_eq!(protocol::sha256_hex(&bytes), entry.sha256);
    assert!(String::from_utf8_lossy(&bytes).contains("line 5999 of the task text"));

    // Range resume: a partial file from an interrupted download is
    // continued, not restarted, and the result still matches the digest.
    let dest2 = dir.path().join("again.txt");
    let cut = entry.size as usize / 3;
    std::fs::write(dir.path().join("again.txt.part"), &bytes[..cut]).unwrap();
    let n = c.download_artifact(&done.job_id, &entry, &dest2).await.unwrap();
    assert_eq!(n, entry.size - cut as u64, "only the missing tail is transferred");
    assert_eq!(std::fs::read(&dest2).unwrap(), bytes);
    // A corrupt partial file is caught by the digest check.
    let dest3 = dir.path().join("bad.txt");
    std::fs::write(dir.path().join("bad.txt.part"), vec![b'#'; cut]).unwrap();
    let err = c.download_artifact(&done.job_id, &entry, &dest3).await.unwrap_err();
    assert!(matches!(err, ClientError::Digest { .. }), "{err}");
    assert!(!dest3.exists());

    // Raw Range answers.
    let path = format!("/jobs/{}/artifacts/{}", done.job_id, entry.name);
    let auth = w.sign("GET", &path, "", b"");
    let r = w.request("GET", &path, &[("Authorization", auth), ("Range", "bytes=10-19".into())], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some(format!("bytes 10-19/{}", entry.size).as_str()));
    assert_eq!(r.body, bytes[10..20]);
    let auth = w.sign("GET", &path, "", b"");
    let r = w.request("GET", &path, &[("Authorization", auth), ("Range", format!("bytes={}-", entry.size))], b"");
    assert_eq!((r.status, r.code().as_str()), (416, "RANGE_NOT_SATISFIABLE"));
}

#[actix_rt::test]
async fn idempotency_and_inputs_hash() {
    let w = Worker::start(Opts::default());
    let c = w.client();
    let first = c.submit(&openclaw("same task")).await.unwrap();
    let again = c.submit(&openclaw("same task")).await.unwrap();
    assert!(again.cached);
    assert_eq!(again.job.job_id, first.job.job_id);
    let done = c.wait(&first.job.job_id, Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    let after = c.submit(&openclaw("same task")).await.unwrap();
    assert!(after.cached, "a succeeded job is returned, not re-run");
    assert_eq!(after.job.job_id, first.job.job_id);

    // The label limit is 200 characters, as documented, not 200 bytes.
    let accented = "é".repeat(200);
    let labelled = c.submit(&SubmitJob { label: Some(accented.clone()), ..openclaw("labelled task") }).await.unwrap();
    assert_eq!(labelled.job.label.as_deref(), Some(accented.as_str()));
    let too_long = SubmitJob { label: Some("é".repeat(201)), ..openclaw("labelled task 2") };
    assert_eq!(c.submit(&too_long).await.unwrap_err().code(), Some("BAD_REQUEST"));

    // The client's hash must agree with the worker's.
    let good = SubmitJob { inputs_hash: Some(first.job.inputs_hash.clone()), ..openclaw("same task") };
    assert_eq!(c.submit(&good).await.unwrap().job.job_id, first.job.job_id);
    let bad = SubmitJob { inputs_hash: Some("0".repeat(64)), ..openclaw("same task") };
    let err = c.submit(&bad).await.unwrap_err();
    assert_eq!(err.code(), Some("INPUTS_HASH_MISMATCH"), "{err}");
    // The same claimed hash with another body is refused too.
    let other = SubmitJob { inputs_hash: Some(first.job.inputs_hash.clone()), ..openclaw("another task") };
    assert_eq!(c.submit(&other).await.unwrap_err().code(), Some("INPUTS_HASH_MISMATCH"));

    // A failed job runs anew on resubmission.
    let probe = SubmitJob { step_name: "FFMPEG_PROBE".into(), payload: json!({"media_path": "/definitely/not/here.mp4"}), inputs_hash: None, label: None, lease_s: None };
    let f1 = c.submit(&probe).await.unwrap();
    let f1 = c.wait(&f1.job.job_id, Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(f1.state, JobState::Failed);
    assert_eq!(f1.error.as_ref().unwrap().code, "INPUT_NOT_FOUND");
    let f2 = c.submit(&probe).await.unwrap();
    assert!(!f2.cached);
    assert_ne!(f2.job.job_id, f1.job_id);
}

#[actix_rt::test]
async fn concurrent_duplicates_run_once() {
    let w = sleepy_worker(1);
    let c = std::rc::Rc::new(w.client());
    let futures: Vec<_> = (0..12)
        .map(|_| {
            let c = c.clone();
            async move { c.submit(&openclaw("concurrent duplicate")).await.unwrap() }
        })
        .collect();
    let results = futures_util::future::join_all(futures).await;
    let created: Vec<_> = results.iter().filter(|r| !r.cached).collect();
    assert_eq!(created.len(), 1, "exactly one submission creates the job");
    assert!(results.iter().all(|r| r.job.job_id == created[0].job.job_id));
    let done = c.wait(&created[0].job.job_id, Duration::from_secs(30), 10).await.unwrap();
    assert_eq!((done.state, done.attempt), (JobState::Succeeded, 1));
    let log = c.full_log(&done.job_id).await.unwrap();
    assert_eq!(log.matches("started (attempt").count(), 1, "{log}");
}

#[actix_rt::test]
async fn blob_staging_by_digest() {
    let w = Worker::start(Opts::default());
    let c = w.client();
    let dir = common::tempdir();
    let video = common::make_video(dir.path(), "in.mp4", 1.0, 160, 120, 10);
    let stored = c.upload_file(&video).await.unwrap();
    assert!(stored.created);
    let (sha, size) = rayvault::artifacts::sha256_file(&video).unwrap();
    assert_eq!((stored.sha256.clone(), stored.size), (sha.clone(), size));
    assert!(!c.upload_file(&video).await.unwrap().created, "stored once");

    let job = SubmitJob { step_name: "FFMPEG_PROBE".into(), payload: json!({"media_path": format!("blob:sha256:{sha}")}), inputs_hash: None, label: None, lease_s: None };
    let sub = c.submit(&job).await.unwrap();
    let done = c.wait(&sub.job.job_id, Duration::from_secs(60), 10).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert!(done.artifacts.iter().any(|a| a.name == "ffprobe.json"));

    // Bytes that do not hash to the path's digest are discarded.
    let wrong = "ab".repeat(32);
    let path = format!("/blobs/{wrong}");
    let r = w.request("PUT", &path, &[("Authorization", w.sign("PUT", &path, "", b"hello"))], b"hello");
    assert_eq!(r.status, 401, "the signature covers the digest named in the path, not the bytes");
    let ring = w.keyring();
    let target = rayvault::auth::RequestTarget { method: "PUT", path: &path, query: "", worker_id: "worker-test", body_sha256: &wrong };
    let r = w.request("PUT", &path, &[("Authorization", ring.authorization(&target))], b"hello");
    assert_eq!((r.status, r.code().as_str()), (422, "DIGEST_MISMATCH"));
    assert!(!w.state_dir.join("worker/blobs").join(&wrong).exists());
    // A payload naming a blob never uploaded.
    let missing = SubmitJob { step_name: "FFMPEG_PROBE".into(), payload: json!({"media_path": format!("blob:sha256:{wrong}")}), inputs_hash: None, label: None, lease_s: None };
    assert_eq!(c.submit(&missing).await.unwrap_err().code(), Some("BLOB_NOT_FOUND"));
    let malformed = SubmitJob { step_name: "FFMPEG_PROBE".into(), payload: json!({"media_path": "blob:sha256:../../etc/passwd"}), inputs_hash: None, label: None, lease_s: None };
    assert_eq!(c.submit(&malformed).await.unwrap_err().code(), Some("BAD_REQUEST"));
}

#[actix_rt::test]
async fn cancel_queue_and_concurrency() {
    let w = sleepy_worker(30);
    let c = w.client();
    // OPENCLAW_TASK runs one job at a time (steps.openclaw_task.concurrency = 1).
    let a = c.submit(&openclaw("first")).await.unwrap().job;
    let b = c.submit(&openclaw("second")).await.unwrap().job;
    wait_until_async("first job running", Duration::from_secs(20), || async {
        c.job(&a.job_id, 0).await.unwrap().state == JobState::Running
    })
    .await;
    assert_eq!(c.job(&b.job_id, 0).await.unwrap().state, JobState::Queued, "second waits for the slot");

    // Cancel the queued one: immediate.
    let b2 = c.cancel(&b.job_id).await.unwrap();
    assert_eq!(b2.state, JobState::Cancelled);
    // Cancel the running one: its process is stopped.
    let t0 = Instant::now();
    let a2 = c.cancel(&a.job_id).await.unwrap();
    assert_eq!(a2.state, JobState::Cancelled, "{a2:?}");
    assert_eq!(a2.error.as_ref().unwrap().code, "CANCELLED");
    assert!(t0.elapsed() < Duration::from_secs(15));
    // Cancelling a finished job is a conflict; a cancelled job runs anew.
    assert_eq!(c.cancel(&a.job_id).await.unwrap_err().code(), Some("JOB_CONFLICT"));
    let again = c.submit(&openclaw("first")).await.unwrap();
    assert!(!again.cached);
    c.cancel(&again.job.job_id).await.unwrap();
}

#[actix_rt::test]
async fn hostile_artifact_names() {
    let w = Worker::start(Opts::default());
    let c = w.client();
    let sub = c.submit(&openclaw("artifact names")).await.unwrap();
    let id = c.wait(&sub.job.job_id, Duration::from_secs(30), 10).await.unwrap().job_id;
    let long = "a".repeat(300);
    for name in ["..", "%2e%2e", "..%2Fworker.log", "..%2F..%2Fworker.redb", "a%5Cb", "C:x", "C%3A%5Cwindows", "x%00y", ".hidden", long.as_str()] {
        let r = w.signed("GET", &format!("/jobs/{id}/artifacts/{name}"), b"");
        assert_eq!((r.status, r.code().as_str()), (400, "ARTIFACT_NAME_INVALID"), "{name}");
    }
    for target in [format!("/jobs/{id}/artifacts/../worker.log"), format!("/jobs/{id}/artifacts/a/b")] {
        let r = w.signed("GET", &target, b"");
        assert_eq!(r.status, 404, "{target}");
    }
    let r = w.signed("GET", &format!("/jobs/{id}/artifacts/worker.log"), b"");
    assert_eq!((r.status, r.code().as_str()), (404, "ARTIFACT_NOT_FOUND"));
}

#[actix_rt::test]
async fn jobs_in_flight_are_limited() {
    let w = Worker::start(Opts {
        env: vec![
            ("RAYVAULT_OPENCLAW__COMMAND".into(), "sh -c 'cat >/dev/null; sleep 30'".into()),
            ("RAYVAULT_WORKER__MAX_JOBS_IN_FLIGHT".into(), "2".into()),
        ],
        ..Opts::default()
    });
    let c = w.client();
    let a = c.submit(&openclaw("one")).await.unwrap().job;
    c.submit(&openclaw("two")).await.unwrap();
    let err = c.submit(&openclaw("three")).await.unwrap_err();
    assert_eq!(err.code(), Some("TOO_MANY_JOBS"), "{err}");
    assert!(err.is_transient(), "429 is worth retrying later");
    // A duplicate of an in-flight job is still answered from the index.
    assert!(c.submit(&openclaw("one")).await.unwrap().cached);
    // Freeing a slot lets the next submission in.
    c.cancel(&a.job_id).await.unwrap();
    assert!(!c.submit(&openclaw("three")).await.unwrap().cached);
}

#[actix_rt::test]
async fn steps_never_see_the_secret() {
    let w = Worker::start(Opts {
        previous: Some("previous-secret-for-env-test".into()),
        env: vec![("RAYVAULT_OPENCLAW__COMMAND".into(), "sh -c 'cat >/dev/null; env'".into())],
        ..Opts::default()
    });
    let c = w.client();
    let sub = c.submit(&openclaw("print the environment")).await.unwrap();
    let done = c.wait(&sub.job.job_id, Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let dir = common::tempdir();
    let dest = dir.path().join("env.txt");
    c.download_artifact(&done.job_id, &done.artifacts[0], &dest).await.unwrap();
    let env_dump = std::fs::read_to_string(&dest).unwrap();
    assert!(env_dump.contains("PATH="), "the dump is real: {env_dump}");
    for needle in [w.opts.secret.as_str(), "previous-secret-for-env-test", "RAYVAULT_CLUSTER_SECRET"] {
        assert!(!env_dump.contains(needle), "{needle} reached the step's environment");
    }
    let everything = format!("{}{}{:?}", c.full_log(&done.job_id).await.unwrap(), w.stderr(), done);
    assert!(!everything.contains(&w.opts.secret));
}

/// Names of upload temporaries (`.<digest>.<id>.part`) left in the blob folder.
fn blob_temporaries(w: &Worker) -> Vec<String> {
    std::fs::read_dir(w.state_dir.join("worker/blobs"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".part")).collect())
        .unwrap_or_default()
}

#[test]
fn a_broken_blob_upload_leaves_no_partial_file() {
    use std::io::Write;
    let w = Worker::start(Opts::default());
    // The client announces 8 MiB, sends 3 MiB, then the connection drops.
    let digest = "cd".repeat(32);
    let path = format!("/blobs/{digest}");
    let ring = w.keyring();
    let target = rayvault::auth::RequestTarget { method: "PUT", path: &path, query: "", worker_id: "worker-test", body_sha256: &digest };
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        ring.authorization(&target),
        8 << 20
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&vec![7u8; 3 << 20]).unwrap();
    common::wait_until("the upload reaches a temporary file", Duration::from_secs(20), || !blob_temporaries(&w).is_empty());
    drop(s);
    common::wait_until("the partial upload is removed", Duration::from_secs(20), || blob_temporaries(&w).is_empty());
    assert!(!w.state_dir.join("worker/blobs").join(&digest).exists());
    // The worker is fine afterwards.
    assert_eq!(w.request("GET", "/health", &[], b"").status, 200);
}

#[actix_rt::test]
async fn log_chunks_never_split_a_character() {
    let w = Worker::start(Opts {
        env: vec![("RAYVAULT_OPENCLAW__COMMAND".into(), "sh -c 'cat >/dev/null; echo \"é€😀 done\"; exit 3'".into())],
        ..Opts::default()
    });
    let c = w.client();
    let sub = c.submit(&openclaw("unicode in the log")).await.unwrap();
    let done = c.wait(&sub.job.job_id, Duration::from_secs(30), 10).await.unwrap();
    // A failing OpenClaw command has its output copied into the job log.
    assert_eq!(done.state, JobState::Failed, "{done:?}");
    let full = c.full_log(&done.job_id).await.unwrap();
    assert!(full.contains("é€😀 done"), "{full}");
    // Read with every small chunk size: the pieces must join to the log,
    // with no replacement character from a split sequence.
    for max in 1..=5u64 {
        let (mut offset, mut joined) = (0u64, String::new());
        loop {
            let target = format!("/jobs/{}/log?offset={offset}&max_bytes={max}", done.job_id);
            let r = w.signed("GET", &target, b"");
            assert_eq!(r.status, 200, "{}", r.text());
            let chunk: protocol::LogChunk = serde_json::from_slice(&r.body).unwrap();
            assert!(chunk.next_offset > offset || chunk.complete, "max_bytes={max}: no progress at {offset}");
            joined.push_str(&chunk.data);
            offset = chunk.next_offset;
            if chunk.complete {
                break;
            }
        }
        assert!(!joined.contains('\u{FFFD}'), "max_bytes={max}: split a character");
        assert_eq!(joined, full, "max_bytes={max}");
    }
}

/// An artifact of several MiB is served in blocks of a MiB: whole, resumed
/// from a point inside a block, and as a raw range across a block boundary,
/// it always arrives intact.
#[actix_rt::test]
async fn a_multi_block_artifact_arrives_whole_resumed_and_by_range() {
    // The step writes the task text and about 3.5 MB of numbers.
    let w = Worker::start(Opts {
        env: vec![("RAYVAULT_OPENCLAW__COMMAND".into(), "sh -c 'cat; seq 1 500000'".into())],
        ..Opts::default()
    });
    let c = w.client();
    let sub = c.submit(&openclaw("many blocks\n")).await.unwrap();
    let done = c.job(&sub.job.job_id, 30).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let entry = c.artifacts(&done.job_id).await.unwrap().artifacts[0].clone();
    assert!(entry.size > 3 << 20, "the artifact spans several blocks: {} bytes", entry.size);
    let dir = common::tempdir();
    let whole = dir.path().join("whole.txt");
    assert_eq!(c.download_artifact(&done.job_id, &entry, &whole).await.unwrap(), entry.size);
    let bytes = std::fs::read(&whole).unwrap();
    assert_eq!(protocol::sha256_hex(&bytes), entry.sha256);

    let cut = (1 << 20) + 12_345;
    std::fs::write(dir.path().join("resumed.txt.part"), &bytes[..cut]).unwrap();
    let resumed = dir.path().join("resumed.txt");
    assert_eq!(c.download_artifact(&done.job_id, &entry, &resumed).await.unwrap(), entry.size - cut as u64);
    assert_eq!(std::fs::read(&resumed).unwrap(), bytes);

    let path = format!("/jobs/{}/artifacts/{}", done.job_id, entry.name);
    let (a, b) = ((2 << 20) - 100, (2 << 20) + 99);
    let r = w.request("GET", &path, &[("Authorization", w.sign("GET", &path, "", b"")), ("Range", format!("bytes={a}-{b}"))], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, bytes[a..=b]);
}

/// A download from a worker that sends more than the manifest says (here:
/// endlessly) stops at the manifest's size instead of filling the disk.
#[actix_rt::test]
async fn a_download_stops_at_the_manifest_size() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
            let chunk = [b'z'; 65536];
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(&chunk);
            framed.extend_from_slice(b"\r\n");
            while s.write_all(&framed).is_ok() {}
        }
    });
    let ring = std::sync::Arc::new(rayvault::auth::Keyring::from_secrets("endless-secret", None).unwrap());
    let c = rayvault::client::WorkerClient::new(&format!("http://127.0.0.1:{port}"), "endless", ring);
    let entry = rayvault::artifacts::ArtifactEntry { name: "a.bin".into(), size: 1000, sha256: "00".repeat(32) };
    let dir = common::tempdir();
    let dest = dir.path().join("a.bin");
    let job_id = format!("j{}", "1".repeat(32));
    let res = tokio::time::timeout(Duration::from_secs(20), c.download_artifact(&job_id, &entry, &dest)).await;
    let err = res.expect("the download must end, not follow an endless body").unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    assert!(!dest.exists() && !dir.path().join("a.bin.part").exists());
}

/// A job recorded as queued always reaches an executor: a failure to write
/// its first log line (here: the jobs folder replaced by a file) must not
/// leave it queued forever, with resubmissions answered from the index.
#[actix_rt::test]
async fn a_recorded_job_is_never_left_stranded_in_the_queue() {
    let w = Worker::start(Opts::default());
    let c = w.client();
    let jobs = w.state_dir.join("worker/jobs");
    std::fs::remove_dir_all(&jobs).unwrap();
    std::fs::write(&jobs, b"not a folder").unwrap();
    let id = match c.submit(&openclaw("no log folder")).await {
        Ok(sub) => sub.job.job_id,
        // Even if the first answer is an error, the job was recorded; the
        // retry finds it.
        Err(_) => c.submit(&openclaw("no log folder")).await.unwrap().job.job_id,
    };
    let view = c.wait(&id, Duration::from_secs(20), 5).await.unwrap();
    assert!(view.state.is_terminal(), "stranded in state {:?}", view.state);
    assert_eq!(view.state, JobState::Failed, "{view:?}");
    assert_eq!(view.error.as_ref().unwrap().code, "IO_ERROR", "{view:?}");
}

/// Uploading a large blob the worker already has: the worker answers 200
/// without reading the body, and the client must see that answer, not a
/// broken connection.
#[actix_rt::test]
async fn a_large_blob_already_staged_is_answered_not_broken() {
    let w = Worker::start(Opts::default());
    let c = w.client();
    let dir = common::tempdir();
    let big = dir.path().join("big.bin");
    let data: Vec<u8> = (0..48u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, &data).unwrap();
    assert!(c.upload_file(&big).await.unwrap().created);
    for attempt in 0..3 {
        let again = c.upload_file(&big).await.unwrap_or_else(|e| panic!("re-upload {attempt}: {e}"));
        assert!(!again.created);
        assert_eq!(again.size, data.len() as u64);
    }
}

/// A short job's log travels in the final poll answer (`log`, `log_bytes`),
/// is the same as `GET /jobs/{id}/log` serves (also from an offset), and a
/// job that fails before writing an artifact leaves no folder behind: its
/// log lived in memory and then in its record.
#[actix_rt::test]
async fn a_short_job_has_its_log_inline_and_no_folder() {
    let w = Worker::start(Opts::default());
    let c = w.client();
    let missing = w.state_dir.join("no-such-media.wav");
    let sub = c
        .submit(&SubmitJob {
            step_name: "FFMPEG_PROBE".into(),
            payload: json!({ "media_path": missing.to_string_lossy() }),
            inputs_hash: None,
            label: None,
            lease_s: None,
        })
        .await
        .unwrap();
    assert!(sub.job.log.is_none(), "no log in the submission answer");
    let done = c.job(&sub.job.job_id, 30).await.unwrap();
    assert_eq!(done.state, JobState::Failed, "{done:?}");
    let inline = done.log.clone().expect("the final poll carries the log");
    assert_eq!(done.log_bytes, Some(inline.len() as u64));
    assert!(inline.contains("queued") && inline.contains("started (attempt 1)") && inline.contains("failed"), "{inline}");
    assert_eq!(c.full_log(&done.job_id).await.unwrap(), inline);
    let tail = c.log(&done.job_id, 10).await.unwrap();
    assert_eq!((tail.offset, tail.size, tail.complete), (10, inline.len() as u64, true));
    assert_eq!(tail.data.as_bytes(), &inline.as_bytes()[10..]);
    let job_dir = w.state_dir.join("worker/jobs").join(&done.job_id);
    assert!(!job_dir.exists(), "{} was created for a job without artifacts", job_dir.display());
}

/// A running job's log is read from memory, by offset, while the job runs,
/// and what it held is the start of the finished job's log.
#[actix_rt::test]
async fn a_running_jobs_log_is_tailable_from_memory() {
    let w = sleepy_worker(2);
    let c = w.client();
    let id = c.submit(&openclaw("tail me")).await.unwrap().job.job_id;
    wait_until_async("job running", Duration::from_secs(20), || async { c.job(&id, 0).await.unwrap().state == JobState::Running }).await;
    // `running` is recorded before the executor writes its first line.
    wait_until_async("the start is logged", Duration::from_secs(20), || async { c.log(&id, 0).await.unwrap().data.contains("started (attempt 1)") }).await;
    let running = c.log(&id, 0).await.unwrap();
    assert!(!running.complete);
    assert!(running.data.contains("queued") && running.data.contains("started (attempt 1)"), "{}", running.data);
    let part = c.log(&id, 5).await.unwrap();
    // The log only grows: what the first read held from offset 5 on is
    // where the second read starts.
    assert!(part.data.as_bytes().starts_with(&running.data.as_bytes()[5..]), "{:?} then {:?}", running.data, part.data);
    let done = c.job(&id, 30).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let full = c.full_log(&id).await.unwrap();
    assert!(full.starts_with(&running.data), "{full}");
    assert_eq!(done.log.as_deref(), Some(full.as_str()));
    assert!(!w.state_dir.join("worker/jobs").join(&id).join("worker.log").exists(), "a short log has no file");
}
