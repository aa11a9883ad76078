//! Leases on the real worker: a job whose lease is not renewed is stopped
//! (its process tree killed) and recorded `abandoned` with `LEASE_EXPIRED`;
//! a queued job whose lease expired never starts; an abandoned job's result
//! is never served as `cached`; renewals by status calls keep a job alive;
//! after a restart a leased job waits for its controller to re-attach.

mod common;
mod worker_harness;

use rayvault::protocol::{JobState, SubmitJob};
use serde_json::json;
use std::time::{Duration, Instant};
use worker_harness::{wait_until_async, Opts, Worker};

/// OPENCLAW_TASK runs `RAYVAULT_OPENCLAW__COMMAND` with the task on stdin:
/// this one records its pid, then sleeps, so the test can count executions
/// and see whether the process is still alive.
fn slow_env(dir: &std::path::Path) -> Vec<(String, String)> {
    let script = dir.join("slow.sh");
    std::fs::write(&script, "#!/bin/sh\ncat > /dev/null\necho $$ >> \"$LEDGER\"\nsleep 30\n").unwrap();
    vec![
        ("RAYVAULT_OPENCLAW__COMMAND".into(), format!("sh {}", script.display())),
        ("LEDGER".into(), dir.join("ledger").display().to_string()),
        ("RAYVAULT_STEPS__OPENCLAW_TASK__CONCURRENCY".into(), "1".into()),
    ]
}

fn leased(text: &str, lease_s: u64) -> SubmitJob {
    SubmitJob { step_name: "OPENCLAW_TASK".into(), payload: json!({ "task": text }), inputs_hash: None, label: None, lease_s: Some(lease_s) }
}

fn ledger_pids(dir: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("ledger")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks for existence; a zombie has already exited.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

#[actix_rt::test]
async fn an_unrenewed_lease_stops_the_job_and_its_result_is_never_cached() {
    let dir = common::tempdir();
    let w = Worker::start(Opts { env: slow_env(dir.path()), ..Opts::default() });
    let c = w.client();
    let id = c.submit(&leased("fenced job", 2)).await.unwrap().job.job_id;
    // Renew by status calls for a while: the job keeps running past its
    // 2 s lease. Keep renewing until the step has written its pid too (it
    // does so after reading its input, a moment after the job is running).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) || ledger_pids(dir.path()).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "the step never wrote its pid");
        assert!(!c.job(&id, 0).await.unwrap().state.is_terminal(), "renewed, the job keeps running");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let pid = ledger_pids(dir.path())[0];
    assert!(alive(pid));
    // Stop renewing: within the lease (plus the monitor's tick) the job is
    // abandoned and its process is gone. Reading the state here renews it
    // once, so look at the store through a raw signed GET after the fact.
    let stopped_by = Instant::now();
    common::wait_until("the step process is killed", Duration::from_secs(6), || !alive(pid));
    assert!(stopped_by.elapsed() < Duration::from_secs(4), "stopped {:?} after the last renewal", stopped_by.elapsed());
    // The executor records the end after the kill, through the store's
    // commit queue: wait for it rather than race it.
    wait_until_async("the job is recorded as ended", Duration::from_secs(10), || async { c.job(&id, 0).await.unwrap().state.is_terminal() }).await;
    let view = c.job(&id, 0).await.unwrap();
    assert_eq!(view.state, JobState::Abandoned, "{view:?}");
    assert_eq!(view.error.as_ref().unwrap().code, "LEASE_EXPIRED");
    assert!(view.result.is_none() && view.artifacts.is_empty());

    // The same inputs again: a fresh job, not the abandoned one as cached.
    let again = c.submit(&leased("fenced job", 30)).await.unwrap();
    assert!(!again.cached, "an abandoned job is never served as cached");
    assert_ne!(again.job.job_id, id);
    c.cancel(&again.job.job_id).await.unwrap();
}

#[actix_rt::test]
async fn a_queued_job_whose_lease_expired_never_starts() {
    let dir = common::tempdir();
    let w = Worker::start(Opts { env: slow_env(dir.path()), ..Opts::default() });
    let c = w.client();
    // Concurrency 1: the first job holds the only slot (renewed by us), the
    // second waits in the queue with a 1 s lease nobody renews.
    let first = c.submit(&leased("holder", 30)).await.unwrap().job.job_id;
    wait_until_async("the first job runs", Duration::from_secs(20), || async { c.job(&first, 0).await.unwrap().state == JobState::Running }).await;
    // Running is recorded before the step has read its input and written its
    // pid: wait for the pid, so that the count at the end is exact.
    common::wait_until("the holder writes its pid", Duration::from_secs(20), || ledger_pids(dir.path()).len() == 1);
    let second = c.submit(&leased("waiter", 1)).await.unwrap().job.job_id;
    // Not renewing is the point: watch the job with peeks (a peek never
    // renews a lease) until the monitor has abandoned it.
    wait_until_async("the queued job is abandoned", Duration::from_secs(10), || async { c.peek_job(&second).await.unwrap().state.is_terminal() }).await;
    let v = c.peek_job(&second).await.unwrap();
    assert_eq!(v.state, JobState::Abandoned, "{v:?}");
    assert_eq!(v.error.as_ref().unwrap().code, "LEASE_EXPIRED");
    assert!(v.started_at_ms.is_none(), "it never started: {v:?}");
    c.cancel(&first).await.unwrap();
    wait_until_async("the holder ends", Duration::from_secs(10), || async { c.job(&first, 0).await.unwrap().state.is_terminal() }).await;
    assert_eq!(ledger_pids(dir.path()).len(), 1, "only the holder ever ran");
}

#[actix_rt::test]
async fn after_a_restart_a_leased_job_runs_only_if_its_controller_reattaches() {
    let dir = common::tempdir();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut env = slow_env(dir.path());
    env.push(("RAYVAULT_WORKER__ON_INTERRUPTED".into(), "rerun".into()));
    let opts = Opts { env, state_dir: Some(state.clone()), ..Opts::default() };
    let mut w = Worker::start(opts.clone());
    let c = w.client();
    let kept = c.submit(&leased("kept", 3)).await.unwrap().job.job_id;
    wait_until_async("the job runs", Duration::from_secs(20), || async { c.job(&kept, 0).await.unwrap().state == JobState::Running }).await;
    // Running is recorded before the step has read its input and written its
    // pid: wait for the pid of this first execution before the kill, or the
    // count at the end would miss it (renewing the 3 s lease while waiting).
    wait_until_async("the first execution writes its pid", Duration::from_secs(20), || async {
        c.job(&kept, 0).await.unwrap();
        ledger_pids(dir.path()).len() == 1
    })
    .await;
    let lost = c.submit(&leased("lost", 3)).await.unwrap().job.job_id;
    w.kill9();
    drop(c);

    let w2 = Worker::start(Opts { port: Some(w.port), ..opts });
    let c2 = w2.client();
    // `kept` is re-attached at once (this status call renews it); `lost`
    // is never asked about and is abandoned once its lease has passed.
    let t0 = Instant::now();
    wait_until_async("the re-attached job runs again", Duration::from_secs(20), || async { c2.job(&kept, 0).await.unwrap().state == JobState::Running }).await;
    while t0.elapsed() < Duration::from_secs(4) {
        c2.job(&kept, 0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_until_async("the lost job is abandoned", Duration::from_secs(10), || async { c2.peek_job(&lost).await.unwrap().state.is_terminal() }).await;
    let v = c2.peek_job(&lost).await.unwrap();
    assert_eq!(v.state, JobState::Abandoned, "{v:?}");
    assert_eq!(v.error.as_ref().unwrap().code, "LEASE_EXPIRED");
    // The re-run's step writes its pid once it has read its input.
    common::wait_until("the re-run step starts", Duration::from_secs(20), || ledger_pids(dir.path()).len() >= 2);
    assert_eq!(ledger_pids(dir.path()).len(), 2, "kept ran twice (once per worker life), lost never: {:?}", ledger_pids(dir.path()));
    c2.cancel(&kept).await.unwrap();
}
