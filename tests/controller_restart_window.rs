//! A daemon killed between a worker's acceptance of a job and the commit of
//! its remote job id restarts with the job on record as not yet placed.
//! Placing it again on another node would run it twice; the restarted
//! daemon asks the nodes for it first (by its label and inputs) and
//! re-attaches to the copy it finds. A node that cannot be asked may hold
//! the job under a lease nobody renews: the job runs elsewhere only once
//! that lease has surely expired.
//!
//! The window is made wide on purpose: the daemon is killed while the job
//! runs, and its store is set back to "accepted, not placed" as if the
//! remote id's commit had never happened. The step is the fault suite's
//! ledger step, which appends a START line per execution.

mod controller_support;

use controller_support::*;
use rayvault::controller_store::Phase;
use serde_json::{json, Value};
use std::time::Duration;

fn receipt(w: &World, run: &str, job: &str) -> Option<Value> {
    let bytes = std::fs::read(w.receipt_dir(run, job).join("job_receipt.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn status(w: &World) -> Value {
    let out = w.orch().args(["status", "--json"]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn remote_node(w: &World, key: &str) -> Option<String> {
    status(w)["jobs"].as_array()?.iter().find(|j| j["key"] == key)?["remote"]["node_id"].as_str().map(str::to_string)
}

/// A worker running the ledger step, which takes `step_s` seconds.
fn ledger_worker(w: &World, id: &str, step_s: &str) -> (Proc, u16) {
    let mut env: Vec<(String, String)> = ledger_step_env(w);
    env.push(("RAYVAULT_CLUSTER_SECRET".into(), SECRET.into()));
    env.push(("FAULT_NODE".into(), id.into()));
    env.push(("FAULT_STEP_S".into(), step_s.into()));
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    worker(w, id, &pairs)
}

/// nodes.json with `draining` nodes kept out of new placements.
fn write_nodes_draining(w: &World, nodes: &[(&str, u16, bool)]) {
    let list: Vec<Value> = nodes.iter().map(|(id, port, drain)| json!({"node_id": id, "host": "127.0.0.1", "port": port, "enabled": true, "drain": drain})).collect();
    let tmp = w.cluster().join(".nodes.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&json!({ "nodes": list })).unwrap()).unwrap();
    std::fs::rename(tmp, w.cluster().join("nodes.json")).unwrap();
}

/// Submits the job through a fresh daemon, waits until the step started on
/// w1, kills the daemon and sets the job back to "not placed".
fn job_on_w1_then_crash(w: &World, key: &str) {
    let mut daemon = w.daemon();
    let (run, job) = key.split_once('/').unwrap();
    let (code, _, err) = w.submit(run, job, "TTS_RENDER_CHUNKS", json!({"chunks": [{"id": 1, "text": job}]}), &["--no-wait", "--fallback", "never"]);
    assert_eq!(code, 0, "{err}");
    common::wait_until("the step starts on w1", Duration::from_secs(30), || ledger(w).iter().any(|l| l.kind == "START" && l.node == "w1"));
    // The remote id is recorded soon after the worker's acceptance (it may
    // wait a moment to share a commit).
    common::wait_until("the remote id is recorded", Duration::from_secs(10), || remote_node(w, key).as_deref() == Some("w1"));
    daemon.kill();
    let store = open_after_kill(&w.cluster().join("controller.redb"));
    assert!(store
        .update(key, |j| {
            j.phase = Phase::Queued;
            j.remote = None;
        })
        .unwrap());
    drop(store);
}

#[test]
fn a_job_accepted_just_before_a_crash_is_found_again_not_run_twice() {
    let mut w = World::new();
    // The lease outlives the test's restart: the copy on w1 keeps running
    // while no daemon renews it.
    w.set_env("RAYVAULT_CONTROLLER__LEASE_S", "60");
    w.set_env("RUST_LOG", "info");
    let (_w1, p1) = ledger_worker(&w, "w1", "4");
    let (_w2, p2) = ledger_worker(&w, "w2", "0");
    w.write_nodes(&[("w1", p1, true)]);
    job_on_w1_then_crash(&w, "window/once");

    // Now only w2 takes new jobs: a placement from scratch would pick it.
    write_nodes_draining(&w, &[("w1", p1, true), ("w2", p2, false)]);
    let _daemon = w.daemon();
    common::wait_until("the job's receipt", Duration::from_secs(60), || receipt(&w, "window", "once").is_some());
    let r = receipt(&w, "window", "once").unwrap();
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["executed_on"], "w1", "{r}");
    let starts: Vec<String> = ledger(&w).into_iter().filter(|l| l.kind == "START").map(|l| l.node).collect();
    assert_eq!(starts, ["w1"], "the step ran exactly once, on w1");
    assert!(w.daemon_log().contains("found it on w1"), "{}", w.daemon_log());
    assert!(reason_for(&r, "w1").starts_with("chosen before a restart"), "the receipt says how w1 was chosen: {r}");
}

#[test]
fn a_node_that_cannot_be_asked_is_waited_out_before_the_job_runs_elsewhere() {
    let mut w = World::new();
    w.set_env("RAYVAULT_CONTROLLER__LEASE_S", "2");
    w.set_env("RUST_LOG", "info");
    let (mut w1, p1) = ledger_worker(&w, "w1", "30");
    let (_w2, p2) = ledger_worker(&w, "w2", "0");
    w.write_nodes(&[("w1", p1, true)]);
    job_on_w1_then_crash(&w, "window/fenced");
    // w1 is gone (its step with it): nobody can say whether it held the job.
    w1.kill();

    w.write_nodes(&[("w1", p1, true), ("w2", p2, true)]);
    let restarted = std::time::Instant::now();
    let _daemon = w.daemon();
    common::wait_until("the job's receipt", Duration::from_secs(60), || receipt(&w, "window", "fenced").is_some());
    let r = receipt(&w, "window", "fenced").unwrap();
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["executed_on"], "w2", "{r}");
    let on_w2 = ledger(&w).into_iter().find(|l| l.kind == "START" && l.node == "w2").expect("a START on w2");
    // Not before the 2 s lease (plus margin) counted from the restart.
    let waited = on_w2.at - (epoch_s() - restarted.elapsed().as_secs_f64());
    assert!(waited >= 2.0, "the job started on w2 {waited:.2} s after the restart, inside w1's lease");
    let log = w.daemon_log();
    assert!(log.contains("could not ask w1 whether the job reached it before the restart"), "{log}");
}
