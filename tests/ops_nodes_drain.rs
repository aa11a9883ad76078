//! Draining, on real processes: a node drained in nodes.json takes no new
//! job while the one running there finishes (`status` shows it draining,
//! then drained); a worker drained by its own `POST /drain` refuses new jobs
//! with `503 DRAINING`, lets its running job finish, stays drained across a
//! restart, and is seen as draining by the controller.

mod controller_support;

use controller_support::*;
use rayvault::auth::Keyring;
use rayvault::client::{ClientError, WorkerClient};
use rayvault::protocol::{JobState, SubmitJob};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn run(c: &mut Command) -> (i32, String, String) {
    let out = c.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A worker environment whose OPENCLAW_TASK runs until the file `gate`
/// exists: a job that stays running exactly as long as the test wants.
fn gated_worker(w: &World, id: &str, gate: &Path) -> (Proc, u16) {
    let command = format!("sh -c 'cat >/dev/null; while [ ! -e {} ]; do sleep 0.05; done; echo finished'", gate.display());
    worker(w, id, &[("RAYVAULT_CLUSTER_SECRET", SECRET), ("DISPLAY", ":0"), ("RAYVAULT_OPENCLAW__COMMAND", &command)])
}

fn status(w: &World) -> Value {
    let out = w.orch().args(["status", "--json"]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn node<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["nodes"]["nodes"].as_array().and_then(|a| a.iter().find(|n| n["node_id"] == id)).unwrap_or(&Value::Null)
}

fn job_on(v: &Value, key: &str) -> Option<String> {
    v["jobs"].as_array()?.iter().find(|j| j["key"] == key)?["remote"]["node_id"].as_str().map(str::to_string)
}

fn task(text: &str) -> Value {
    json!({"task": text, "timeout_s": 120})
}

#[test]
fn a_drained_node_takes_no_new_job_and_its_running_job_finishes_there() {
    let mut w = World::new();
    let (gate1, gate2) = (w.dir.path().join("gate-w1"), w.dir.path().join("gate-w2"));
    std::fs::write(&gate2, "").unwrap();
    let (_w1, p1) = gated_worker(&w, "w1", &gate1);
    let (_w2, p2) = gated_worker(&w, "w2", &gate2);
    w.write_nodes(&[("w1", p1, true), ("w2", p2, true)]);
    // The controller cannot run OPENCLAW_TASK itself (no desktop session).
    w.set_env("DISPLAY", "");
    let _daemon = w.daemon();
    common::wait_until("the daemon sees both workers up", Duration::from_secs(20), || {
        let s = status(&w);
        node(&s, "w1")["status"] == "up" && node(&s, "w2")["status"] == "up"
    });

    // Ties go to the first node in nodes.json: the first job runs on w1.
    let (code, _, err) = w.submit("drain", "first", "OPENCLAW_TASK", task("first"), &["--no-wait", "--fallback", "never"]);
    assert_eq!(code, 0, "{err}");
    common::wait_until("the first job runs on w1", Duration::from_secs(20), || job_on(&status(&w), "drain/first").as_deref() == Some("w1"));

    let (code, out, err) = run(w.orch().args(["nodes", "drain", "w1"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("w1 is now draining"), "{out}");
    common::wait_until("status shows w1 draining with its job", Duration::from_secs(10), || {
        let s = status(&w);
        node(&s, "w1")["status"] == "draining" && node(&s, "w1")["reason"].as_str().is_some_and(|r| r.contains("1 job(s) still running there"))
    });

    // A new job goes to w2, and the receipt says why not w1.
    let (code, receipt, err) = w.submit("drain", "second", "OPENCLAW_TASK", task("second"), &["--fallback", "never"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(receipt["executed_on"], "w2", "{receipt}");
    assert_eq!(reason_for(&receipt, "w1"), "draining (nodes.json)");

    // The job on w1 was never moved: it finishes there once let go.
    assert!(job_on(&status(&w), "drain/first").as_deref() == Some("w1"));
    std::fs::write(&gate1, "").unwrap();
    let (code, out, err) = run(w.orch().args(["wait", "--run-id", "drain", "--job-id", "first", "--json"]));
    assert_eq!(code, 0, "{out}\n{err}");
    let first: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(first["executed_on"], "w1", "{first}");
    assert_eq!(first["status"], "succeeded", "{first}");
    common::wait_until("status shows w1 drained", Duration::from_secs(10), || node(&status(&w), "w1")["status"] == "drained");
    let (code, table, _) = run(w.orch().arg("health"));
    assert_eq!(code, 0, "a drained node is not a down node: {table}");
    assert!(table.contains("drained"), "{table}");

    // With every node draining, `fallback = "unavailable"` runs locally.
    let (code, _, err) = run(w.orch().args(["nodes", "drain", "w2"]));
    assert_eq!(code, 0, "{err}");
    common::wait_until("status shows w2 drained", Duration::from_secs(10), || node(&status(&w), "w2")["status"] == "drained");
    let clip = video(&w);
    let (code, receipt, err) = w.submit("drain", "probe", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(receipt["executed_on"], "local", "{receipt}");
    let why = receipt["fallback_reason"].as_str().unwrap_or_default();
    assert!(why.contains("w1: draining (nodes.json)") && why.contains("w2: draining (nodes.json)"), "{why}");

    // Undrained, w1 takes jobs again.
    let (code, _, err) = run(w.orch().args(["nodes", "undrain", "w1"]));
    assert_eq!(code, 0, "{err}");
    common::wait_until("status shows w1 up", Duration::from_secs(10), || node(&status(&w), "w1")["status"] == "up");
    let (code, receipt, err) = w.submit("drain", "third", "OPENCLAW_TASK", task("third"), &["--fallback", "never"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(receipt["executed_on"], "w1", "{receipt}");
}

fn worker_state(w: &World, id: &str) -> PathBuf {
    w.dir.path().join(format!("worker-{id}"))
}

/// `rayvault-worker drain ...` run "on the worker's machine": the same
/// secret, id, port and state folder as the worker.
fn worker_drain(w: &World, id: &str, port: u16, args: &[&str]) -> (i32, String, String) {
    let mut c = clean_command(env!("CARGO_BIN_EXE_rayvault-worker"), w.dir.path());
    c.env("RAYVAULT_CLUSTER_SECRET", SECRET).env("RAYVAULT_WORKER_ID", id).env("RAYVAULT_WORKER_PORT", port.to_string()).env("RAYVAULT_STATE_DIR", worker_state(w, id));
    run(c.arg("drain").args(args))
}

fn client(id: &str, port: u16) -> WorkerClient {
    WorkerClient::new(&format!("http://127.0.0.1:{port}"), id, Arc::new(Keyring::from_secrets(SECRET, None).unwrap()))
}

fn submit(c: &WorkerClient, text: &str) -> Result<String, ClientError> {
    let job = SubmitJob { step_name: "OPENCLAW_TASK".into(), payload: task(text), inputs_hash: None, label: None, lease_s: None };
    actix_rt::System::new().block_on(c.submit(&job)).map(|s| s.job.job_id)
}

fn state_of(c: &WorkerClient, job_id: &str) -> JobState {
    actix_rt::System::new().block_on(c.job(job_id, 0)).unwrap().state
}

fn draining(c: &WorkerClient) -> bool {
    let h = actix_rt::System::new().block_on(c.health()).unwrap();
    h.draining
}

#[test]
fn a_worker_drains_itself_lets_its_job_finish_and_stays_drained_after_a_restart() {
    let w = World::new();
    let gate = w.dir.path().join("gate");
    let (mut proc1, port) = gated_worker(&w, "w1", &gate);
    let c = client("w1", port);
    let running = submit(&c, "running").unwrap();
    common::wait_until("the job runs", Duration::from_secs(20), || state_of(&c, &running) == JobState::Running);
    assert!(!draining(&c));

    let (code, out, err) = worker_drain(&w, "w1", port, &["--on"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("w1 at http://127.0.0.1:") && out.contains("is draining") && out.contains("1 job(s) still queued or running"), "{out}");
    assert!(draining(&c));
    let refused = submit(&c, "new").unwrap_err();
    match &refused {
        ClientError::Api { status, code, message, .. } => {
            assert_eq!((*status, code.as_str()), (503, "DRAINING"), "{refused}");
            assert!(message.contains("rayvault-worker drain --off"), "{message}");
        }
        other => panic!("expected 503 DRAINING, got {other}"),
    }
    // The drain endpoint is signed like every other but /health.
    let unsigned = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", "{\"drain\": false}", &format!("http://127.0.0.1:{port}/drain")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&unsigned.stdout), "401");
    assert!(draining(&c), "an unsigned request changed nothing");
    for body in [&b"{\"drain\": \"no\"}"[..], b"{\"drain\": false, \"extra\": 1}", b""] {
        let bad = actix_rt::System::new().block_on(c.send_raw(awc::http::Method::POST, "/drain", bytes::Bytes::copy_from_slice(body))).unwrap();
        assert_eq!(bad.status, 400, "{:?}", String::from_utf8_lossy(&bad.body));
        let answer: Value = serde_json::from_slice(&bad.body).unwrap();
        assert_eq!(answer["code"], "BAD_REQUEST");
        assert!(answer["error"].as_str().unwrap_or_default().contains("{\"drain\": true}"), "{answer}");
    }
    assert!(draining(&c), "a refused request changed nothing");

    // The running job goes on and finishes.
    assert_eq!(state_of(&c, &running), JobState::Running);
    std::fs::write(&gate, "").unwrap();
    common::wait_until("the running job finishes", Duration::from_secs(20), || state_of(&c, &running) == JobState::Succeeded);
    let (code, out, err) = worker_drain(&w, "w1", port, &["--on", "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("w1 is idle"), "{out}");

    // A crash and a restart keep the flag.
    proc1.kill();
    let (_proc2, port) = gated_worker(&w, "w1", &gate);
    let c = client("w1", port);
    assert!(draining(&c), "the drain flag survives a restart");
    assert!(matches!(submit(&c, "after restart"), Err(ClientError::Api { status: 503, ref code, .. }) if code == "DRAINING"));

    // The controller sees a draining worker, not a down one.
    w.write_nodes(&[("w1", port, true)]);
    let (code, out, err) = run(w.orch().args(["health", "--json"]));
    assert_eq!(code, 0, "{out}{err}");
    let h: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(h["nodes"][0]["status"], "drained", "{h}");
    assert!(h["nodes"][0]["reason"].as_str().unwrap_or_default().contains("the worker was asked to"), "{h}");
    let (code, receipt, _) = w.submit("self", "job", "OPENCLAW_TASK", task("placed?"), &["--fallback", "never"]);
    assert_eq!(code, 1, "{receipt}");
    assert_eq!(receipt["error"]["code"], "NO_ELIGIBLE_NODE", "{receipt}");
    assert!(reason_for(&receipt, "w1").starts_with("draining (the worker was asked to"), "{receipt}");

    // The controller can end the worker's drain (and its own) remotely.
    let (code, out, err) = run(w.orch().args(["nodes", "undrain", "w1", "--remote"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("the worker w1 takes new jobs again"), "{out}");
    assert!(!draining(&c));
    assert!(!worker_state(&w, "w1").join("worker/drain.json").exists() && !worker_state(&w, "w1").join("drain.json").exists());
    let job = submit(&c, "after undrain").unwrap();
    common::wait_until("the new job succeeds", Duration::from_secs(20), || state_of(&c, &job) == JobState::Succeeded);
    let (code, out, err) = run(w.orch().args(["nodes", "drain", "w1", "--remote"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("the worker w1 drains too: 0 job(s)"), "{out}");
    assert!(draining(&c));
}

#[test]
fn a_worker_that_drains_after_the_last_probe_refuses_the_job_with_its_reason() {
    let mut w = World::new();
    let gate = w.dir.path().join("gate");
    let (_w1, port) = gated_worker(&w, "w1", &gate);
    w.write_nodes(&[("w1", port, true)]);
    w.set_env("DISPLAY", "");
    // The daemon probes at start and then not again during the test: its
    // view of w1 stays "up" after w1 starts draining.
    w.set_env("RAYVAULT_CONTROLLER__PROBE_INTERVAL_S", "3600");
    let _daemon = w.daemon();
    common::wait_until("the daemon sees w1 up", Duration::from_secs(20), || node(&status(&w), "w1")["status"] == "up");
    let (code, _, err) = worker_drain(&w, "w1", port, &["--on"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(node(&status(&w), "w1")["status"], "up", "the daemon has not probed again");

    let (code, receipt, err) = w.submit("race", "job", "OPENCLAW_TASK", task("too late"), &["--fallback", "never"]);
    assert_eq!(code, 1, "{receipt}\n{err}");
    assert_eq!(receipt["error"]["code"], "NO_ELIGIBLE_NODE", "{receipt}");
    let message = receipt["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("w1 is draining, so it refused the job") && message.contains("rayvault-worker drain --off"), "{message}");
}
