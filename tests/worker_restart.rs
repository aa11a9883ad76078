//! Durability and process-level behaviour of the real worker: kill -9 in the
//! middle of a job and restart (both `on_interrupted` policies), graceful
//! SIGTERM, jobs and the idempotency index surviving restarts, retention
//! pruning, start-up refusals (bind address, missing secret), idle memory.

mod common;
mod worker_harness;

use rayvault::protocol::{JobState, SubmitJob};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use worker_harness::{base_command, wait_until_async, Opts, Worker};

fn task(text: &str) -> SubmitJob {
    SubmitJob { step_name: "OPENCLAW_TASK".into(), payload: json!({ "task": text }), inputs_hash: None, label: None, lease_s: None }
}

fn opts_in(state: &std::path::Path, secret: &str, env: &[(&str, &str)]) -> Opts {
    Opts {
        state_dir: Some(state.to_path_buf()),
        secret: secret.into(),
        env: env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        ..Opts::default()
    }
}

const SLOW: &str = "sh -c 'cat >/dev/null; sleep 3'";

/// Starts a slow job, waits until it is running, kills the worker with
/// SIGKILL, restarts it with `policy`, and returns the job as seen after.
async fn kill_mid_job(policy: &str) -> (rayvault::protocol::JobView, String) {
    let dir = common::tempdir();
    let secret = "restart-secret-value";
    let env = [("RAYVAULT_OPENCLAW__COMMAND", SLOW), ("RAYVAULT_WORKER__ON_INTERRUPTED", policy)];
    let mut w = Worker::start(opts_in(dir.path(), secret, &env));
    let c = w.client();
    let id = c.submit(&task("long job")).await.unwrap().job.job_id;
    wait_until_async("job running", Duration::from_secs(20), || async { c.job(&id, 0).await.unwrap().state == JobState::Running }).await;
    w.kill9();
    drop(c);

    let w2 = Worker::start(opts_in(dir.path(), secret, &env));
    let c2 = w2.client();
    let view = c2.wait(&id, Duration::from_secs(30), 10).await.unwrap();
    let log = c2.full_log(&id).await.unwrap();
    (view, log)
}

#[actix_rt::test]
async fn kill9_mid_job_fails_it_as_interrupted_by_default() {
    let (view, log) = kill_mid_job("fail").await;
    assert_eq!(view.state, JobState::Failed, "{view:?}");
    assert_eq!(view.error.as_ref().unwrap().code, "INTERRUPTED");
    assert!(view.result.is_none() && view.artifacts.is_empty(), "never reported as succeeded");
    assert!(log.contains("INTERRUPTED"), "{log}");
}

#[actix_rt::test]
async fn kill9_mid_job_reruns_it_with_the_rerun_policy() {
    let (view, log) = kill_mid_job("rerun").await;
    assert_eq!(view.state, JobState::Succeeded, "{view:?}");
    assert_eq!(view.attempt, 2);
    assert!(log.contains("started (attempt 2)"), "{log}");
}

#[actix_rt::test]
async fn jobs_and_idempotency_survive_a_restart_and_retention_prunes() {
    let dir = common::tempdir();
    let secret = "durable-secret-value";
    let mut w = Worker::start(opts_in(dir.path(), secret, &[]));
    let c = w.client();
    let sub = c.submit(&task("durable")).await.unwrap();
    let done = c.wait(&sub.job.job_id, Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    w.kill9();

    let mut w2 = Worker::start(opts_in(dir.path(), secret, &[]));
    let c2 = w2.client();
    assert_eq!(c2.job(&done.job_id, 0).await.unwrap(), done, "same record after restart");
    let again = c2.submit(&task("durable")).await.unwrap();
    assert!(again.cached && again.job.job_id == done.job_id, "idempotency index survived");
    assert_eq!(c2.artifacts(&done.job_id).await.unwrap().artifacts, done.artifacts);
    w2.kill9();

    // Retention 0 days: the finished job, its folder and its log go.
    let w3 = Worker::start(opts_in(dir.path(), secret, &[("RAYVAULT_WORKER__RETENTION_DAYS", "0")]));
    let c3 = w3.client();
    let job_dir: PathBuf = dir.path().join("worker/jobs").join(&done.job_id);
    wait_until_async("job pruned", Duration::from_secs(20), || async { !job_dir.exists() }).await;
    assert_eq!(c3.job(&done.job_id, 0).await.unwrap_err().code(), Some("JOB_NOT_FOUND"));
}

#[test]
fn a_request_cannot_be_replayed_after_a_restart() {
    let dir = common::tempdir();
    let secret = "replay-restart-secret";
    let mut w = Worker::start(opts_in(dir.path(), secret, &[]));
    let auth = w.sign("GET", "/caps", "", b"");
    assert_eq!(w.request("GET", "/caps", &[("Authorization", auth.clone())], b"").status, 200);
    w.kill9();
    let w2 = Worker::start(opts_in(dir.path(), secret, &[]));
    let r = w2.request("GET", "/caps", &[("Authorization", auth)], b"");
    assert_eq!((r.status, r.code().as_str()), (401, "AUTH_INVALID"), "replayed after kill -9 and restart");
    assert_eq!(w2.signed("GET", "/caps", b"").status, 200, "fresh requests still pass");
}

#[test]
fn a_request_refused_as_early_cannot_be_replayed_after_a_restart() {
    let dir = common::tempdir();
    let secret = "early-replay-secret";
    let mut w = Worker::start(opts_in(dir.path(), secret, &[]));
    let ts = rayvault::auth::unix_now() + 302;
    let target = rayvault::auth::RequestTarget { method: "GET", path: "/caps", query: "", worker_id: "worker-test", body_sha256: rayvault::protocol::EMPTY_SHA256 };
    let auth = w.keyring().authorization_at(&target, ts, &rayvault::auth::fresh_nonce());
    let first = w.request("GET", "/caps", &[("Authorization", auth.clone())], b"");
    assert_eq!((first.status, first.code().as_str()), (401, "AUTH_SKEW"));
    w.kill9();
    let w2 = Worker::start(opts_in(dir.path(), secret, &[]));
    common::wait_until("the request's time enters the window", Duration::from_secs(10), || rayvault::auth::unix_now() + 300 > ts);
    let r = w2.request("GET", "/caps", &[("Authorization", auth)], b"");
    assert_eq!((r.status, r.code().as_str()), (401, "AUTH_INVALID"), "replayed after a restart once inside the window");
}

#[cfg(unix)]
#[actix_rt::test]
async fn sigterm_records_running_jobs_as_interrupted_after_the_grace() {
    let dir = common::tempdir();
    let secret = "graceful-secret-value";
    let env = [("RAYVAULT_OPENCLAW__COMMAND", "sh -c 'cat >/dev/null; sleep 60'"), ("RAYVAULT_WORKER__SHUTDOWN_GRACE_S", "1")];
    let mut w = Worker::start(opts_in(dir.path(), secret, &env));
    let c = w.client();
    let id = c.submit(&task("will be interrupted")).await.unwrap().job.job_id;
    wait_until_async("job running", Duration::from_secs(20), || async { c.job(&id, 0).await.unwrap().state == JobState::Running }).await;
    let status = w.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful exit: {status} {}", w.stderr());
    assert!(w.stderr().contains("job interrupted by shutdown"));

    let w2 = Worker::start(opts_in(dir.path(), secret, &[]));
    let view = w2.client().job(&id, 0).await.unwrap();
    assert_eq!(view.state, JobState::Failed);
    assert_eq!(view.error.unwrap().code, "INTERRUPTED");
}

#[cfg(unix)]
#[actix_rt::test]
async fn sigterm_lets_a_running_job_finish_within_the_grace() {
    let dir = common::tempdir();
    let secret = "graceful-finish-secret";
    let env = [("RAYVAULT_OPENCLAW__COMMAND", "sh -c 'cat; sleep 2'"), ("RAYVAULT_WORKER__SHUTDOWN_GRACE_S", "30")];
    let mut w = Worker::start(opts_in(dir.path(), secret, &env));
    let c = w.client();
    let id = c.submit(&task("finishes during shutdown")).await.unwrap().job.job_id;
    wait_until_async("job running", Duration::from_secs(20), || async { c.job(&id, 0).await.unwrap().state == JobState::Running }).await;
    let status = w.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}");

    let w2 = Worker::start(opts_in(dir.path(), secret, &[]));
    let view = w2.client().job(&id, 0).await.unwrap();
    assert_eq!(view.state, JobState::Succeeded, "{view:?}");
}

fn refused_start(opts: Opts, args: &[&str]) -> (i32, String) {
    let dir = common::tempdir();
    let out = base_command(dir.path(), common::free_port(), &opts).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn refuses_unsafe_binds_and_missing_secrets() {
    for host in ["0.0.0.0", "::", "192.0.2.10", "100.115.92.1"] {
        let (code, err) = refused_start(Opts::default(), &["--host", host]);
        assert_eq!(code, 2, "{host}: {err}");
        assert!(err.contains("refusing to bind") && err.contains("--allow-any-bind"), "{host}: {err}");
    }
    let (code, err) = refused_start(Opts { secret: String::new(), ..Opts::default() }, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("RAYVAULT_CLUSTER_SECRET"), "{err}");
    let (code, err) = refused_start(Opts::default(), &["--host", "not-an-ip"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn a_tailnet_address_this_host_lacks_fails_cleanly() {
    // Inside the allowed ranges, but no interface here has it: the bind
    // guard refuses, with a message that says what to check.
    for host in ["100.64.0.1", "fd7a:115c:a1e0::1"] {
        let (code, err) = refused_start(Opts::default(), &["--host", host]);
        assert_eq!(code, 2, "{host}: {err}");
        assert!(err.contains(&format!("{host} is not an address of this host")) && err.contains("tailscale ip -4"), "{host}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_restart_waits_briefly_for_the_old_process_to_let_go_of_the_store() {
    // Right after a crash the old process's lock can outlive it for a
    // moment (seen here after kill -9 under load): the new worker waits a
    // little instead of refusing to start.
    let dir = common::tempdir();
    std::fs::create_dir_all(dir.path().join("worker")).unwrap();
    let held = rayvault::store::Store::open(&dir.path().join("worker/worker.redb")).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        drop(held);
    });
    let w = Worker::start(opts_in(dir.path(), "lock-wait-secret", &[]));
    release.join().unwrap();
    assert_eq!(w.request("GET", "/health", &[], b"").status, 200);
}

#[test]
fn two_workers_cannot_share_a_state_folder() {
    let dir = common::tempdir();
    let _w = Worker::start(opts_in(dir.path(), "shared-state-secret", &[]));
    let out = base_command(dir.path(), common::free_port(), &opts_in(dir.path(), "shared-state-secret", &[])).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another worker"));
}

#[test]
fn idle_memory_is_small() {
    let w = Worker::start(Opts::default());
    if let Some(kib) = w.rss_kib() {
        eprintln!("idle worker RSS: {kib} KiB");
        assert!(kib <= 20 * 1024, "idle RSS {kib} KiB exceeds the 20 MiB target");
    }
}

/// Temporaries of blob uploads (`.<digest>.<id>.part`) in a state folder.
fn blob_temporaries(state: &std::path::Path) -> usize {
    std::fs::read_dir(state.join("worker/blobs"))
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".part")).count())
        .unwrap_or(0)
}

#[test]
fn kill9_mid_upload_leaves_no_partial_blob_after_restart() {
    use std::io::Write;
    let dir = common::tempdir();
    let secret = "upload-restart-secret";
    let mut w = Worker::start(opts_in(dir.path(), secret, &[]));
    let digest = "ef".repeat(32);
    let path = format!("/blobs/{digest}");
    let target = rayvault::auth::RequestTarget { method: "PUT", path: &path, query: "", worker_id: "worker-test", body_sha256: &digest };
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        w.keyring().authorization(&target),
        8 << 20
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&vec![1u8; 3 << 20]).unwrap();
    common::wait_until("the upload reaches a temporary file", Duration::from_secs(20), || blob_temporaries(dir.path()) > 0);
    w.kill9();
    drop(s);
    assert!(blob_temporaries(dir.path()) > 0, "kill -9 left the partial upload behind");
    let _w2 = Worker::start(opts_in(dir.path(), secret, &[]));
    assert_eq!(blob_temporaries(dir.path()), 0, "the restarted worker removed the partial upload");
    assert!(!dir.path().join("worker/blobs").join(&digest).exists(), "never stored under its digest");
}

/// Sets a file's modification time `days` into the past.
fn age(path: &std::path::Path, days: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(days * 86_400)).unwrap();
}

#[actix_rt::test]
async fn a_blob_in_use_again_is_not_pruned_as_old() {
    let dir = common::tempdir();
    let secret = "blob-retention-secret";
    let mut w = Worker::start(opts_in(dir.path(), secret, &[]));
    let c = w.client();
    let data = bytes::Bytes::from_static(b"an input staged long ago");
    let stored = c.upload_bytes(data.clone()).await.unwrap();
    let blob = dir.path().join("worker/blobs").join(&stored.sha256);
    let other = c.upload_bytes(bytes::Bytes::from_static(b"an input nobody uses again")).await.unwrap();
    let other_blob = dir.path().join("worker/blobs").join(&other.sha256);
    // Both older than the 14-day retention; one is announced again and
    // named by a new job, the other is not.
    age(&blob, 30);
    age(&other_blob, 30);
    assert!(!c.upload_bytes(data).await.unwrap().created, "already there");
    let job = SubmitJob { step_name: "FFMPEG_PROBE".into(), payload: json!({"media_path": format!("blob:sha256:{}", stored.sha256)}), inputs_hash: None, label: None, lease_s: None };
    c.submit(&job).await.unwrap();
    w.kill9();
    // Pruning runs at start.
    let _w2 = Worker::start(opts_in(dir.path(), secret, &[]));
    common::wait_until("the unused old blob is pruned", Duration::from_secs(20), || !other_blob.exists());
    assert!(blob.exists(), "a blob in use again was pruned as old");
}

#[actix_rt::test]
async fn kill9_mid_artifact_write_leaves_nothing_under_the_final_name() {
    let dir = common::tempdir();
    let secret = "artifact-kill-secret";
    // Output trickles into the artifact's temporary file for ~10 s.
    let env = [("RAYVAULT_OPENCLAW__COMMAND", "sh -c 'cat >/dev/null; i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); sleep 0.05; done'")];
    let mut w = Worker::start(opts_in(dir.path(), secret, &env));
    let c = w.client();
    let id = c.submit(&task("writes slowly")).await.unwrap().job.job_id;
    let artifacts = dir.path().join("worker/jobs").join(&id).join("artifacts");
    let partial_written = || {
        std::fs::read_dir(&artifacts)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".part") && e.metadata().map(|m| m.len() > 0).unwrap_or(false)))
            .unwrap_or(false)
    };
    common::wait_until("the artifact is half written", Duration::from_secs(20), partial_written);
    w.kill9();
    drop(c);
    assert!(!artifacts.join("openclaw_output.txt").exists(), "a half-written artifact under its final name");

    let w2 = Worker::start(opts_in(dir.path(), secret, &[]));
    let c2 = w2.client();
    let view = c2.job(&id, 0).await.unwrap();
    assert_eq!((view.state, view.error.as_ref().map(|e| e.code.as_str())), (JobState::Failed, Some("INTERRUPTED")), "{view:?}");
    assert!(view.artifacts.is_empty() && c2.artifacts(&id).await.unwrap().artifacts.is_empty());
    let r = w2.signed("GET", &format!("/jobs/{id}/artifacts/openclaw_output.txt"), b"");
    assert_eq!((r.status, r.code().as_str()), (404, "ARTIFACT_NOT_FOUND"));
}

/// Submissions that arrive together share a commit in the worker's store,
/// and none is answered before its record is on disk: a kill -9 right after
/// the last answer loses none of the acknowledged jobs.
#[actix_rt::test]
async fn a_burst_of_acknowledged_submissions_survives_a_kill9() {
    let dir = common::tempdir();
    let secret = "group-commit-secret";
    let env = [("RAYVAULT_OPENCLAW__COMMAND", "sh -c 'cat >/dev/null; sleep 30'")];
    let mut w = Worker::start(opts_in(dir.path(), secret, &env));
    let c = w.client();
    let tasks: Vec<SubmitJob> = (0..24).map(|i| task(&format!("burst {i}"))).collect();
    let answers = futures_util::future::join_all(tasks.iter().map(|t| c.submit(t))).await;
    w.kill9();
    let ids: Vec<String> = answers.into_iter().map(|a| a.expect("acknowledged").job.job_id).collect();
    drop(c);

    let w2 = Worker::start(opts_in(dir.path(), secret, &env));
    let c2 = w2.client();
    for (id, t) in ids.iter().zip(&tasks) {
        let view = c2.job(id, 0).await.unwrap_or_else(|e| panic!("acknowledged job {id} lost by kill -9: {e}"));
        assert_eq!(view.inputs_hash, rayvault::protocol::inputs_hash(&t.step_name, &t.payload));
    }
}
