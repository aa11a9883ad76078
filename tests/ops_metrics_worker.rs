//! The worker's signed `GET /metrics`, read with a real Prometheus text
//! parser after known work: jobs that succeeded, a job abandoned when its
//! lease expired, a blob upload, an artifact download and refused requests.

mod common;
mod ops_metrics_support;
mod worker_harness;

use ops_metrics_support::{parse, Metrics};
use rayvault::protocol::{JobState, SubmitJob};
use serde_json::json;
use std::time::{Duration, Instant};
use worker_harness::{wait_until_async, Opts, Worker};

fn scrape(w: &Worker) -> Option<Metrics> {
    let r = w.signed("GET", "/metrics", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    parse(&r.text())
}

#[actix_rt::test]
async fn the_worker_counts_its_jobs_bytes_refusals_and_expired_leases() {
    let dir = common::tempdir();
    // OPENCLAW_TASK runs this command with the task on stdin: it echoes the
    // task at once, except a task containing "slow", which sleeps first.
    let script = dir.path().join("task.sh");
    std::fs::write(&script, "#!/bin/sh\ntask=$(cat)\ncase \"$task\" in *slow*) sleep 30;; esac\necho \"$task\"\n").unwrap();
    let env = vec![("RAYVAULT_OPENCLAW__COMMAND".to_string(), format!("sh {}", script.display()))];
    let w = Worker::start(Opts { env, ..Opts::default() });
    let c = w.client();

    // Unsigned: refused and counted.
    let r = w.request("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());

    let blob = b"some staged input bytes".repeat(100);
    let digest = rayvault::protocol::sha256_hex(&blob);
    let put = w.signed("PUT", &format!("/blobs/{digest}"), &blob);
    assert_eq!(put.status, 201, "{}", put.text());

    let mut ids = Vec::new();
    for task in ["first task", "second task"] {
        let job = SubmitJob { step_name: "OPENCLAW_TASK".into(), payload: json!({ "task": task }), inputs_hash: None, label: None, lease_s: None };
        ids.push(c.submit(&job).await.unwrap().job.job_id);
    }
    for id in &ids {
        let v = c.wait(id, Duration::from_secs(30), 5).await.unwrap();
        assert_eq!(v.state, JobState::Succeeded, "{v:?}");
    }
    let view = c.job(&ids[0], 0).await.unwrap();
    let artifact = view.artifacts.first().expect("the task job has an artifact").clone();
    let got = w.signed("GET", &format!("/jobs/{}/artifacts/{}", ids[0], artifact.name), b"");
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len() as u64, artifact.size);

    // A leased job nobody renews: scraping does not renew it, so wait on
    // the counter itself. One slot: a job submitted meanwhile waits in the
    // queue, and is cancelled there.
    let slow = SubmitJob { step_name: "OPENCLAW_TASK".into(), payload: json!({ "task": "slow task" }), inputs_hash: None, label: None, lease_s: Some(2) };
    let slow_id = c.submit(&slow).await.unwrap().job.job_id;
    let waiting = SubmitJob { step_name: "OPENCLAW_TASK".into(), payload: json!({ "task": "waiting task" }), inputs_hash: None, label: None, lease_s: None };
    let waiting_id = c.submit(&waiting).await.unwrap().job.job_id;
    c.cancel(&waiting_id).await.unwrap();
    assert_eq!(c.job(&waiting_id, 0).await.unwrap().started_at_ms, None, "it was cancelled while queued");
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        let Some(m) = scrape(&w) else { return };
        if m.get("rayvault_leases_expired_total", &[]) >= 1.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "the lease never expired:\n{}", m.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(c.job(&slow_id, 0).await.unwrap().state, JobState::Abandoned);

    assert_eq!(m.kind("rayvault_jobs"), "counter");
    assert_eq!(m.get("rayvault_jobs_total", &[("step", "OPENCLAW_TASK"), ("state", "succeeded")]), 2.0);
    assert_eq!(m.get("rayvault_jobs_total", &[("step", "OPENCLAW_TASK"), ("state", "abandoned")]), 1.0);
    assert_eq!(m.get("rayvault_jobs_total", &[("step", "OPENCLAW_TASK"), ("state", "cancelled")]), 1.0);
    assert_eq!(m.get("rayvault_leases_expired_total", &[]), 1.0);
    assert_eq!(m.kind("rayvault_job_duration_seconds"), "histogram");
    assert_eq!(m.get("rayvault_job_duration_seconds_count", &[("step", "OPENCLAW_TASK")]), 3.0);
    assert_eq!(m.get("rayvault_blob_bytes_received_total", &[]), blob.len() as f64);
    assert_eq!(m.get("rayvault_artifact_bytes_served_total", &[]), artifact.size as f64);
    assert_eq!(m.get("rayvault_auth_refusals_total", &[("reason", "no_authorization_header")]), 1.0);
    assert!(m.get("rayvault_disk_free_bytes", &[]) > 0.0);
    for s in m.matching("rayvault_jobs_in_flight", &[]) {
        if !s.labels.iter().any(|(k, v)| k == "step" && v == "OPENCLAW_TASK") {
            assert_eq!(s.value, 0.0, "{:?}", s.labels);
        }
    }
    wait_until_async("the abandoned job leaves its slot", Duration::from_secs(20), || async {
        match scrape(&w) {
            Some(m) => m.get("rayvault_jobs_in_flight", &[("step", "OPENCLAW_TASK")]) == 0.0,
            None => true,
        }
    })
    .await;
}
