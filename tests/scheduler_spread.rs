//! Work spreads over the workers: eight real workers on loopback, one
//! daemon, jobs of about 1.5 s submitted at once through the daemon, and
//! each worker runs at most two of them at a time.
//!
//! - 16 jobs: every worker gets work and none more than 3.
//! - Another controller keeps both slots of four workers busy: the daemon's
//!   next 8 jobs go to the four free workers (two each, no queueing), which
//!   it only knows from the workers' own `/health` counts.

mod controller_support;

use controller_support::*;
use rayvault::auth::Keyring;
use rayvault::client::WorkerClient;
use rayvault::protocol::SubmitJob;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const WORKERS: usize = 8;
const STEP: &str = "TTS_RENDER_CHUNKS";

/// The environment of a `command` TTS engine that takes about 1.5 s, or,
/// for a text starting with `hold`, until the file `gate` exists.
fn slow_tts_env(dir: &Path) -> Vec<(String, String)> {
    let script = dir.join("tts.sh");
    let gate = dir.join("gate");
    let wav = common::make_sine_wav(dir, "tone.wav", 0.2, 22050, 1, -20.0);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$(cat \"$1\")\" in\n hold*) while [ ! -e '{}' ]; do sleep 0.05; done;;\n *) sleep 1.5;;\nesac\ncp '{}' \"$2\"\n",
            gate.display(),
            wav.display()
        ),
    )
    .unwrap();
    vec![
        ("RAYVAULT_TTS__ENGINE".into(), "command".into()),
        ("RAYVAULT_TTS__COMMAND_TEMPLATE".into(), format!("sh {} {{text_file}} {{out_wav}}", script.display())),
        ("RAYVAULT_STEPS__TTS_RENDER_CHUNKS__CONCURRENCY".into(), "2".into()),
    ]
}

fn status(w: &World) -> Value {
    let out = w.orch().args(["status", "--json"]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn node_in<'a>(status: &'a Value, node: &str) -> Option<&'a Value> {
    status["nodes"]["nodes"].as_array()?.iter().find(|n| n["node_id"] == node)
}

/// Submits `n` jobs through the daemon at once (`--no-wait`).
fn submit_burst(w: &World, run: &str, n: usize) {
    let submits: Vec<_> = (0..n)
        .map(|i| {
            let payload = json!({"text": format!("Job {i} of the {run} burst.")});
            let mut c = w.orch();
            c.args(["submit", "--run-id", run, "--job-id", &format!("j{i}"), "--step-name", STEP, "--payload-json", &payload.to_string(), "--json", "--no-wait", "--fallback", "never"]);
            c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for s in submits {
        let out = s.wait_with_output().unwrap();
        assert!(out.status.success(), "submit failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn receipt_path(w: &World, run: &str, i: usize) -> std::path::PathBuf {
    w.receipt_dir(run, &format!("j{i}")).join("job_receipt.json")
}

/// True once the `n` receipts of `run` exist, false if `within` passed first.
fn receipts_within(w: &World, run: &str, n: usize, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if (0..n).all(|i| receipt_path(w, run, i).is_file()) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The receipts of `run` (each must have succeeded) and how many ran on
/// each node.
fn receipts(w: &World, run: &str, n: usize) -> (BTreeMap<String, usize>, Vec<Value>) {
    let mut per_node = BTreeMap::new();
    let mut all = Vec::new();
    for i in 0..n {
        let r: Value = serde_json::from_slice(&std::fs::read(receipt_path(w, run, i)).unwrap()).unwrap();
        assert_eq!(r["status"], "succeeded", "{r}");
        *per_node.entry(r["executed_on"].as_str().unwrap_or("?").to_string()).or_insert(0) += 1;
        all.push(r);
    }
    (per_node, all)
}

#[test]
fn concurrent_jobs_spread_over_every_worker_by_real_capacity() {
    let mut w = World::new();
    let env = slow_tts_env(w.dir.path());
    let mut workers = Vec::new();
    let mut nodes = Vec::new();
    let ids: Vec<String> = (0..WORKERS).map(|i| format!("w{i}")).collect();
    for id in &ids {
        let (p, port) = worker_at(&w, id, "127.0.0.1", None, &w.dir.path().join(format!("state-{id}")), &env);
        workers.push(p);
        nodes.push((id.as_str(), port, true));
    }
    w.write_nodes(&nodes);
    // The jobs never fall back to the controller (`--fallback never`); it
    // probes every second so that it sees the workers' load soon.
    w.set_env("RAYVAULT_CONTROLLER__PROBE_INTERVAL_S", "1");
    // A probe slowed by a busy test machine must not mark a worker down
    // mid-burst (its jobs would then go elsewhere).
    w.set_env("RAYVAULT_CONTROLLER__PROBE_TIMEOUT_S", "10");
    let _daemon = w.daemon();
    common::wait_until("the daemon has probed every worker", Duration::from_secs(30), || {
        let s = status(&w);
        ids.iter().all(|id| node_in(&s, id).is_some_and(|n| n["status"] == "up"))
    });

    // 16 jobs for 16 slots: every worker gets work, none more than 3.
    submit_burst(&w, "spread", 16);
    assert!(receipts_within(&w, "spread", 16, Duration::from_secs(90)), "the 16 jobs did not end within 90 s");
    let (per_node, _) = receipts(&w, "spread", 16);
    assert_eq!(per_node.len(), WORKERS, "every worker gets work: {per_node:?}");
    assert!(per_node.values().all(|&k| k <= 3), "none gets more than 3: {per_node:?}");

    // The daemon's view must first show the burst's jobs gone from the
    // workers: a probe taken while they still ran would otherwise show 2
    // running on w0..w3 below, and the other controller's jobs would look
    // seen when they were not.
    common::wait_until("the daemon sees the burst's jobs gone", Duration::from_secs(20), || {
        let s = status(&w);
        ids.iter().all(|id| node_in(&s, id).is_some_and(|n| n["health"]["load"][STEP]["running"] == 0))
    });

    // Another controller fills both slots of w0..w3 with jobs that hold
    // until the gate opens.
    let ring = Arc::new(Keyring::from_secrets(SECRET, None).unwrap());
    let sys = actix::System::new();
    let busy = &nodes[..4];
    for (id, port, _) in busy {
        let client = WorkerClient::new(&format!("http://127.0.0.1:{port}"), id, ring.clone());
        for k in 0..2 {
            let job = SubmitJob { step_name: STEP.into(), payload: json!({"text": format!("hold {id} {k}")}), inputs_hash: None, label: Some("another controller".into()), lease_s: None };
            sys.block_on(client.submit(&job)).unwrap();
        }
    }
    common::wait_until("the daemon sees the other controller's jobs", Duration::from_secs(20), || {
        let s = status(&w);
        busy.iter().all(|(id, _, _)| node_in(&s, id).is_some_and(|n| n["health"]["load"][STEP]["running"] == 2))
    });

    // The next 8 go where a slot is free: two on each of w4..w7, and end
    // in a few seconds. A job placed behind the other controller's would
    // wait for the gate: it opens after 30 s at the latest, so that such a
    // job ends and the assertion below says where it ran.
    submit_burst(&w, "around", 8);
    let in_time = receipts_within(&w, "around", 8, Duration::from_secs(30));
    std::fs::write(w.dir.path().join("gate"), b"").unwrap();
    assert!(receipts_within(&w, "around", 8, Duration::from_secs(60)), "the 8 jobs did not end after the gate opened");
    let (per_node, receipts) = receipts(&w, "around", 8);
    let open = BTreeMap::from_iter(ids[4..].iter().map(|id| (id.clone(), 2)));
    let reasons: Vec<String> = receipts.iter().map(|r| reason_for(r, "w0")).collect();
    assert_eq!(per_node, open, "the daemon's jobs avoid the workers another controller keeps busy; w0 was ranked: {reasons:?}");
    assert!(reasons.iter().all(|r| r.contains("2/2 slots busy, 2 of another controller")), "{reasons:?}");
    assert!(in_time, "no job waited for the other controller's");
}
