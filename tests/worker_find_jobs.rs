//! `GET /jobs?run_id=R&job_id=J`: finding the jobs a controller submitted
//! for one of its jobs (labelled `R/J`) on the real worker binary, through
//! the signed client and raw requests.

mod common;
mod worker_harness;

use rayvault::protocol::{JobState, SubmitJob};
use serde_json::json;
use worker_harness::{Opts, Worker};

fn labelled(task: &str, label: Option<&str>) -> SubmitJob {
    SubmitJob { step_name: "OPENCLAW_TASK".into(), payload: json!({ "task": task }), inputs_hash: None, lease_s: None, label: label.map(String::from) }
}

#[actix_rt::test]
async fn jobs_are_found_by_run_and_job_id_newest_first() {
    let w = Worker::start(Opts::default());
    let c = w.client();
    let first = c.submit(&labelled("first", Some("run-1/probe"))).await.unwrap().job;
    let first = c.wait(&first.job_id, std::time::Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(first.state, JobState::Succeeded, "{first:?}");
    let second = c.submit(&labelled("second", Some("run-1/probe"))).await.unwrap().job;
    let second = c.wait(&second.job_id, std::time::Duration::from_secs(30), 10).await.unwrap();
    c.submit(&labelled("other job", Some("run-1/probe-2"))).await.unwrap();
    c.submit(&labelled("other run", Some("run-10/probe"))).await.unwrap();
    c.submit(&labelled("no label", None)).await.unwrap();

    let found = c.find_jobs("run-1", "probe").await.unwrap();
    assert!(!found.truncated);
    let ids: Vec<&str> = found.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, vec![second.job_id.as_str(), first.job_id.as_str()], "newest first, exact label only");
    // Each is the job view: state, times, hash, result, artifacts.
    assert_eq!(found.jobs[1], first);
    assert_eq!(found.jobs[0].artifacts.len(), 1);
    assert!(found.jobs[0].finished_at_ms.is_some());

    assert!(c.find_jobs("run-1", "nothing").await.unwrap().jobs.is_empty());

    // Bounded: limit=1 returns the newest and says more matched.
    let r = w.signed("GET", "/jobs?run_id=run-1&job_id=probe&limit=1", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(r.json()["jobs"][0]["job_id"], second.job_id.as_str());
    assert_eq!(r.json()["truncated"], true);

    // Values needing percent-encoding are signed as sent and decoded.
    let odd = c.submit(&labelled("odd ids", Some("run one&x=1/j\u{e9}b"))).await.unwrap().job;
    let found = c.find_jobs("run one&x=1", "j\u{e9}b").await.unwrap();
    assert_eq!(found.jobs.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>(), vec![odd.job_id]);
}

#[test]
fn find_refuses_bad_queries_and_unsigned_requests() {
    let w = Worker::start(Opts::default());
    for target in ["/jobs?run_id=r", "/jobs?job_id=j", "/jobs", "/jobs?run_id=r&job_id=j&extra=1", "/jobs?run_id=&job_id=j", "/jobs?run_id=r&job_id=j&limit=x"] {
        let r = w.signed("GET", target, b"");
        assert_eq!((r.status, r.code().as_str()), (400, "BAD_REQUEST"), "{target}: {}", r.text());
    }
    let r = w.request("GET", "/jobs?run_id=r&job_id=j", &[], b"");
    assert_eq!((r.status, r.code().as_str()), (401, "AUTH_INVALID"));
    let r = w.signed("DELETE", "/jobs?run_id=r&job_id=j", b"");
    assert_eq!((r.status, r.code().as_str()), (405, "METHOD_NOT_ALLOWED"));
}
