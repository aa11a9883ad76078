//! How step failures reach the worker's store, on the real worker binary:
//! a step that overruns its timeout ends as `TIMEOUT` (not `CANCELLED`), and
//! a step that panics ends as `INTERNAL` while its executor keeps serving.

mod common;
mod worker_harness;

use rayvault::protocol::{JobState, SubmitJob};
use serde_json::json;
use std::time::{Duration, Instant};
use worker_harness::{Opts, Worker};

fn openclaw(task: &str) -> SubmitJob {
    SubmitJob { step_name: "OPENCLAW_TASK".into(), payload: json!({ "task": task }), inputs_hash: None, label: None, lease_s: None }
}

fn probe(media_path: &str) -> SubmitJob {
    SubmitJob {
        step_name: "FFMPEG_PROBE".into(),
        payload: json!({ "media_path": media_path }),
        inputs_hash: None,
        label: None,
        lease_s: None,
    }
}

#[actix_rt::test]
async fn a_step_timeout_is_recorded_as_timeout() {
    // OPENCLAW_TASK runs a shell that sleeps far past its 1 s timeout.
    let w = Worker::start(Opts {
        env: vec![
            ("RAYVAULT_OPENCLAW__COMMAND".into(), "sh -c 'cat >/dev/null; sleep 60'".into()),
            ("RAYVAULT_STEPS__OPENCLAW_TASK__TIMEOUT_S".into(), "1".into()),
        ],
        ..Opts::default()
    });
    let c = w.client();
    let t0 = Instant::now();
    let job = c.submit(&openclaw("sleep past the timeout")).await.unwrap().job;
    let done = c.job(&job.job_id, 30).await.unwrap();
    assert_eq!(done.state, JobState::Failed, "{done:?}");
    let err = done.error.as_ref().expect("a failed job carries its error");
    assert_eq!(err.code, "TIMEOUT", "{err:?}");
    assert!(err.message.contains("timeout_s"), "the message says which setting to raise: {err:?}");
    // The sleeping process was stopped, not waited for.
    assert!(t0.elapsed() < Duration::from_secs(20));

    // The raw answer of GET /jobs/{id} says the same.
    let r = w.signed("GET", &format!("/jobs/{}", job.job_id), b"");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["error"]["code"], "TIMEOUT", "{v}");
}

/// Debug builds only: the panic is provoked through the worker's test hook
/// (`RAYVAULT_TEST_PANIC_STEP`), which release builds do not have.
#[cfg(debug_assertions)]
#[actix_rt::test]
async fn a_panicking_step_fails_its_job_and_the_executor_keeps_serving() {
    let dir = common::tempdir();
    let media = common::make_video(dir.path(), "clip.mp4", 1.0, 160, 120, 25);
    let media = media.to_string_lossy().into_owned();
    let w = Worker::start(Opts {
        env: vec![("RAYVAULT_TEST_PANIC_STEP".into(), "FFMPEG_PROBE".into())],
        ..Opts::default()
    });
    let c = w.client();
    // FFMPEG_PROBE runs up to four jobs at once; panic in more jobs than
    // that, so that a dead executor (or lost slots) would show.
    let mut panicked = Vec::new();
    for i in 0..6 {
        let marker = format!("{media}#{}-{i}", rayvault::actors::executor::TEST_PANIC_MARKER);
        panicked.push(c.submit(&probe(&marker)).await.unwrap().job.job_id);
    }
    for id in &panicked {
        let done = c.job(id, 30).await.unwrap();
        assert_eq!(done.state, JobState::Failed, "the panicked job is not left running: {done:?}");
        let err = done.error.as_ref().unwrap();
        assert_eq!(err.code, "INTERNAL", "{err:?}");
        assert!(err.message.contains("test panic requested"), "the panic message is kept: {err:?}");
    }
    // Later jobs of the same type still run, on the same worker process.
    let job = c.submit(&probe(&media)).await.unwrap().job;
    let done = c.job(&job.job_id, 30).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let mut w = w;
    assert!(w.child.try_wait().unwrap().is_none(), "the worker is still running");
}

/// Debug builds only, like the hook: the executor actor itself panics in a
/// handler after a job ends; it is restarted in place and later jobs of its
/// type, queued or new, still run.
#[cfg(debug_assertions)]
#[actix_rt::test]
async fn an_executor_that_panics_is_restarted_and_keeps_serving() {
    let dir = common::tempdir();
    let media = common::make_video(dir.path(), "clip.mp4", 1.0, 160, 120, 25);
    let media = media.to_string_lossy().into_owned();
    let w = Worker::start(Opts {
        env: vec![
            ("RAYVAULT_TEST_PANIC_STEP".into(), "FFMPEG_PROBE".into()),
            ("RAYVAULT_STEPS__FFMPEG_PROBE__CONCURRENCY".into(), "1".into()),
        ],
        ..Opts::default()
    });
    let c = w.client();
    let marker = format!("{media}#{}", rayvault::actors::executor::TEST_EXECUTOR_PANIC_MARKER);
    let first = c.submit(&probe(&marker)).await.unwrap().job.job_id;
    // Queued behind it (one slot): these start only once the executor has
    // handled the first job's end, that is, after its restart.
    let later: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            // Distinct paths to the same file, so each is a job of its own.
            let path = format!("{}/{}clip.mp4", dir.path().display(), "./".repeat(i + 1));
            ids.push(c.submit(&probe(&path)).await.unwrap().job.job_id);
        }
        ids
    };
    let done = c.job(&first, 30).await.unwrap();
    assert_eq!(done.state, JobState::Failed, "a path with a '#' suffix does not exist: {done:?}");
    for id in &later {
        let done = c.job(id, 30).await.unwrap();
        assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    }
    let job = c.submit(&probe(&media)).await.unwrap().job;
    assert_eq!(c.job(&job.job_id, 30).await.unwrap().state, JobState::Succeeded);
    let log = w.stderr();
    assert!(log.contains("test panic in the executor") && log.contains("executor restarted"), "{log}");
}
