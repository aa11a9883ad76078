//! `POST /jobs?wait_ms=N&stream=1` on the real worker: the acceptance (with
//! the job's id) comes as the answer's first line at once, the job's view
//! as its second line once the job ends or the wait is over; a duplicate
//! is answered the same way; `/caps` advertises it; bad values are refused.

mod common;
mod worker_harness;

use rayvault::protocol::{JobState, SubmitJob};
use serde_json::json;
use std::time::{Duration, Instant};
use worker_harness::{Opts, Worker};

/// OPENCLAW_TASK runs `RAYVAULT_OPENCLAW__COMMAND` with the task on stdin:
/// this one sleeps for the number of seconds the task names, then prints.
fn sleeper_env(dir: &std::path::Path) -> Vec<(String, String)> {
    let script = dir.join("sleeper.sh");
    std::fs::write(&script, "#!/bin/sh\nread secs\nsleep \"$secs\"\necho slept\n").unwrap();
    vec![("RAYVAULT_OPENCLAW__COMMAND".into(), format!("sh {}", script.display()))]
}

fn sleep_job(secs: &str, lease_s: Option<u64>) -> SubmitJob {
    SubmitJob { step_name: "OPENCLAW_TASK".into(), payload: json!({ "task": secs }), inputs_hash: None, label: None, lease_s }
}

#[actix_rt::test]
async fn the_acceptance_comes_first_and_the_end_second() {
    let dir = common::tempdir();
    let w = Worker::start(Opts { env: sleeper_env(dir.path()), ..Opts::default() });
    let c = w.client();
    let caps = c.caps().await.unwrap();
    assert!(caps.submit_stream, "/caps advertises the streamed answer");

    // A job of about a second, held up to 2 s: the id comes long before
    // the end, and the second line is the ended job.
    let t0 = Instant::now();
    let (accepted, end) = c.submit_streamed(&sleep_job("1", Some(10)), &[], Duration::from_secs(2)).await.unwrap();
    let first_at = t0.elapsed();
    assert!(!accepted.cached);
    assert!(!accepted.job.state.is_terminal(), "{:?}", accepted.job.state);
    assert!(first_at < Duration::from_millis(800), "the acceptance took {first_at:?}: it must not wait for the job");
    let ended = end.await.unwrap();
    let second_at = t0.elapsed();
    assert_eq!(ended.job_id, accepted.job.job_id);
    assert_eq!(ended.state, JobState::Succeeded, "{ended:?}");
    assert!(ended.log.as_deref().unwrap_or("").contains("succeeded"), "the ended view carries the log: {ended:?}");
    assert!(second_at >= Duration::from_millis(900), "the end came after {second_at:?}, before the job could end");

    // The same job again: an existing job, already ended, both lines at once.
    let (again, end) = c.submit_streamed(&sleep_job("1", Some(10)), &[], Duration::from_secs(2)).await.unwrap();
    assert!(again.cached);
    assert_eq!(again.job.job_id, accepted.job.job_id);
    assert_eq!(end.await.unwrap().state, JobState::Succeeded);

    // Longer than the wait: the second line says it still runs, after the
    // wait (capped at half the lease: 1 s here).
    let t0 = Instant::now();
    let (long, end) = c.submit_streamed(&sleep_job("20", Some(2)), &[], Duration::from_secs(2)).await.unwrap();
    let view = end.await.unwrap();
    let waited = t0.elapsed();
    assert_eq!(view.job_id, long.job.job_id);
    assert_eq!(view.state, JobState::Running, "{view:?}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "answered after {waited:?}, not at half the 2 s lease");
    c.cancel(&long.job.job_id).await.unwrap();
}

#[actix_rt::test]
async fn a_bad_stream_value_is_refused_before_anything_is_stored() {
    let dir = common::tempdir();
    let w = Worker::start(Opts { env: sleeper_env(dir.path()), ..Opts::default() });
    let body = serde_json::to_vec(&sleep_job("0", None)).unwrap();
    for (query, needle) in [("wait_ms=100&stream=2", "stream=1"), ("wait_ms=100&stream=yes", "query")] {
        let r = w.signed("POST", &format!("/jobs?{query}"), &body);
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        assert_eq!(r.code(), "BAD_REQUEST", "{query}: {}", r.text());
        assert!(r.text().contains(needle), "{query}: {}", r.text());
    }
    let found = w.client().find_jobs("any", "any").await.unwrap();
    assert!(found.jobs.is_empty());
    // Without `stream` the answer is one JSON document, as before.
    let r = w.signed("POST", "/jobs?wait_ms=100", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["job"]["step_name"], "OPENCLAW_TASK");
}
