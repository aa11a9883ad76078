//! A job submitted to a free slot starts without a second sync: the worker
//! reserves the slot before it writes the submission, records the job
//! `running` (and the request's nonce) in the commit that accepts it, and
//! hands it to its executor once that commit is durable. A slot that a submission did not use (a
//! duplicate answered from the idempotency cache) is given back, and jobs
//! that find no free slot queue as before.
//!
//! The store's commit queue is observed through `GET /metrics`
//! (`rayvault_store_writes_total`): each write is counted once, however
//! the writes were batched, so the count per job is exact.

mod common;
mod worker_harness;

use rayvault::protocol::{JobState, SubmitJob};
use serde_json::json;
use std::time::Duration;
use worker_harness::{wait_until_async, Opts, Worker};

fn openclaw(task: &str) -> SubmitJob {
    SubmitJob { step_name: "OPENCLAW_TASK".into(), payload: json!({ "task": task }), inputs_hash: None, label: None, lease_s: None }
}

/// OPENCLAW_TASK runs this command with the task on stdin: it echoes the
/// task, after sleeping when the task says "slow". `slots` jobs of it run
/// at once.
fn worker_with(dir: &std::path::Path, slots: u32) -> Worker {
    let script = dir.join("task.sh");
    std::fs::write(&script, "#!/bin/sh\ntask=$(cat)\ncase \"$task\" in *slow*) sleep 30;; esac\necho \"$task\"\n").unwrap();
    Worker::start(Opts {
        env: vec![
            ("RAYVAULT_OPENCLAW__COMMAND".into(), format!("sh {}", script.display())),
            ("RAYVAULT_STEPS__OPENCLAW_TASK__CONCURRENCY".into(), slots.to_string()),
        ],
        ..Opts::default()
    })
}

fn worker(dir: &std::path::Path) -> Worker {
    worker_with(dir, 1)
}

/// Counters of the worker's `/metrics`, all from one scrape (each scrape
/// records its own nonce: one more write and one more commit).
fn counters(w: &Worker, names: &[&str]) -> Vec<f64> {
    let r = w.signed("GET", "/metrics", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    names
        .iter()
        .map(|name| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        })
        .collect()
}

#[actix_rt::test]
async fn a_job_that_finds_a_free_slot_is_accepted_and_started_in_one_write() {
    let dir = common::tempdir();
    // Two slots: the previous job's slot may still be being released when
    // the next submission arrives (the outcome is readable a moment before
    // the executor frees the slot); the other one is free.
    let w = worker_with(dir.path(), 2);
    let c = w.client();
    let names = ["rayvault_store_writes_total", "rayvault_store_commits_total"];
    let before = counters(&w, &names);
    const JOBS: usize = 5;
    for i in 0..JOBS {
        let sub = c.submit(&openclaw(&format!("quick {i}"))).await.unwrap();
        // The answer is the durable record: already running, first attempt,
        // started when it was accepted.
        assert_eq!(sub.job.state, JobState::Running, "{:?}", sub.job);
        assert_eq!(sub.job.attempt, 1);
        assert_eq!(sub.job.started_at_ms, Some(sub.job.created_at_ms));
        let done = c.job(&sub.job.job_id, 30).await.unwrap();
        assert_eq!(done.state, JobState::Succeeded, "{done:?}");
        assert_eq!(done.attempt, 1);
    }
    // Per job: the submission (with its request's nonce, and running),
    // the tool's process group recorded and forgotten (src/process.rs),
    // the long-poll's nonce and the outcome: 5 writes (7 when the nonce
    // and the start were writes of their own, 35 for the 5 jobs). The
    // scrapes add their own nonces, and a write of the start-up may still
    // be counted after the first scrape: a margin of 4, below one job's
    // saving.
    // Both read from one scrape: a second scrape would add a commit (its
    // nonce's) that the writes read before it do not count.
    let after = counters(&w, &names);
    let (writes, commits) = (after[0] - before[0], after[1] - before[1]);
    assert!(writes >= (5 * JOBS) as f64 && writes <= (5 * JOBS + 4) as f64, "{writes} store writes for {JOBS} jobs");
    assert!(commits >= 1.0 && commits <= writes, "{commits} commits for {writes} writes");
}

#[actix_rt::test]
async fn without_a_free_slot_a_job_queues_and_a_duplicate_gives_its_slot_back() {
    let dir = common::tempdir();
    let w = worker(dir.path());
    let c = w.client();
    // Concurrency 1: the slow job holds the slot; the next one queues.
    let slow = c.submit(&openclaw("slow one")).await.unwrap().job;
    assert_eq!(slow.state, JobState::Running);
    let waiting = c.submit(&openclaw("waits")).await.unwrap().job;
    assert_eq!(waiting.state, JobState::Queued, "{waiting:?}");
    assert_eq!(waiting.started_at_ms, None);
    // A duplicate of the running job is answered from the cache.
    let again = c.submit(&openclaw("slow one")).await.unwrap();
    assert!(again.cached);
    assert_eq!(again.job.job_id, slow.job_id);
    // Cancelling the slow job frees its slot: the queued job runs.
    assert_eq!(c.cancel(&slow.job_id).await.unwrap().state, JobState::Cancelled);
    let done = c.job(&waiting.job_id, 30).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");

    // The slot is free again; a duplicate of a finished job reserves it
    // for a moment and must give it back, or the next job would queue
    // behind a slot nobody holds.
    let cached = c.submit(&openclaw("waits")).await.unwrap();
    assert!(cached.cached && cached.job.state == JobState::Succeeded);
    let next = c.submit(&openclaw("after the duplicate")).await.unwrap().job;
    assert_eq!(next.state, JobState::Running, "the slot was given back: {next:?}");
    let done = c.job(&next.job_id, 30).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
}

/// Submissions refused while they are checked (a wrong `inputs_hash`, a
/// blob that is not here, a bad lease) hold no slot afterwards: the next
/// job on a worker with one slot starts at once.
#[actix_rt::test]
async fn a_refused_submission_gives_its_slot_back() {
    let dir = common::tempdir();
    let w = worker(dir.path());
    let c = w.client();
    let missing = format!("blob:sha256:{}", "ab".repeat(32));
    for i in 0..3 {
        let wrong_hash = SubmitJob { inputs_hash: Some("0".repeat(64)), ..openclaw(&format!("refused {i}")) };
        let r = w.signed("POST", "/jobs", &serde_json::to_vec(&wrong_hash).unwrap());
        assert_eq!((r.status, r.code()), (422, "INPUTS_HASH_MISMATCH".to_string()), "{}", r.text());
        let no_blob = SubmitJob { step_name: "FFMPEG_PROBE".into(), payload: json!({ "media_path": missing }), ..openclaw("x") };
        let r = w.signed("POST", "/jobs", &serde_json::to_vec(&no_blob).unwrap());
        assert_eq!(r.code(), "BLOB_NOT_FOUND", "{}", r.text());
        let bad_lease = SubmitJob { lease_s: Some(0), ..openclaw(&format!("bad lease {i}")) };
        let r = w.signed("POST", "/jobs", &serde_json::to_vec(&bad_lease).unwrap());
        assert_eq!(r.status, 400, "{}", r.text());
    }
    // Concurrency 1: the next job starts at once only if every slot came back.
    let next = c.submit(&openclaw("after the refusals")).await.unwrap().job;
    assert_eq!(next.state, JobState::Running, "the slot was given back: {next:?}");
    let done = c.job(&next.job_id, 30).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
}

#[actix_rt::test]
async fn a_job_cancelled_the_moment_it_is_accepted_ends_cancelled() {
    let dir = common::tempdir();
    let w = worker(dir.path());
    let c = w.client();
    for i in 0..5 {
        let job = c.submit(&openclaw(&format!("slow {i}"))).await.unwrap().job;
        let view = c.cancel(&job.job_id).await.unwrap();
        assert_eq!(view.state, JobState::Cancelled, "{view:?}");
        assert_eq!(view.error.as_ref().unwrap().code, "CANCELLED");
    }
    // Every slot was given back: a quick job still starts at once.
    let quick = c.submit(&openclaw("quick")).await.unwrap().job;
    assert_eq!(quick.state, JobState::Running);
    wait_until_async("the quick job ends", Duration::from_secs(30), || async { c.job(&quick.job_id, 0).await.unwrap().state.is_terminal() }).await;
    assert_eq!(c.job(&quick.job_id, 0).await.unwrap().state, JobState::Succeeded);
}

/// `POST /jobs?wait_ms=N`: a job that ends within the wait is answered
/// ended, log included, so a short job needs no long-poll; a longer one is
/// answered with its state when the wait is over, and the wait never
/// exceeds half the job's lease.
#[actix_rt::test]
async fn a_submission_may_wait_for_a_short_job_to_end() {
    let dir = common::tempdir();
    let w = worker_with(dir.path(), 2);
    let body = |task: &str, lease: Option<u64>| serde_json::to_vec(&SubmitJob { lease_s: lease, ..openclaw(task) }).unwrap();

    let r = w.signed("POST", "/jobs?wait_ms=2000", &body("quick", None));
    assert_eq!(r.status, 201, "{}", r.text());
    let job = &r.json()["job"];
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(job["log"].as_str().is_some_and(|l| l.contains("step OPENCLAW_TASK succeeded")), "the ended job's log comes with it: {job}");
    // The same submission again: the existing, ended job.
    let again = w.signed("POST", "/jobs?wait_ms=2000", &body("quick", None));
    assert_eq!((again.status, again.json()["cached"].as_bool()), (200, Some(true)), "{}", again.text());

    // A slow job: answered running once the wait is over, capped by half
    // its 1 s lease.
    let t0 = std::time::Instant::now();
    let r = w.signed("POST", "/jobs?wait_ms=2000", &body("slow one", Some(1)));
    let waited = t0.elapsed();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["job"]["state"], "running", "{}", r.text());
    assert!(waited >= Duration::from_millis(450), "answered after {waited:?}, before the wait");
    assert!(waited < Duration::from_millis(1900), "waited {waited:?}: longer than half the lease");

    let r = w.signed("POST", "/jobs?wait=5", &body("other", None));
    assert_eq!(r.status, 400, "an unknown query key is refused: {}", r.text());
}
