//! The controller daemon: submit through it, status, cancel, `nodes.json`
//! edited while it runs, and a daemon killed with SIGKILL mid-job that
//! re-attaches to the remote job after a restart.

mod controller_support;

use controller_support::*;
use serde_json::{json, Value};
use std::time::Duration;

fn status(w: &World) -> Value {
    let out = w.orch().args(["status", "--json"]).output().unwrap();
    let (code, v, err) = parse_output(&out);
    assert_eq!(code, 0, "{err}");
    v
}

/// `status` as people see it: its stdout lines.
fn status_table(w: &World) -> Vec<String> {
    let out = w.orch().arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// The table row whose first column is `first`, split into columns.
fn row(table: &[String], first: &str) -> Vec<String> {
    let line = table.iter().find(|l| l.split_whitespace().next() == Some(first)).unwrap_or_else(|| panic!("no row {first} in\n{}", table.join("\n")));
    line.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(str::to_string).collect()
}

fn job_in<'a>(status: &'a Value, key: &str) -> Option<&'a Value> {
    status["jobs"].as_array()?.iter().find(|j| j["key"] == key)
}

fn node_status(status: &Value, node: &str) -> String {
    status["nodes"]["nodes"].as_array().and_then(|a| a.iter().find(|n| n["node_id"] == node)).map(|n| n["status"].as_str().unwrap_or("").to_string()).unwrap_or_default()
}

fn receipt(w: &World, run: &str, job: &str) -> Option<Value> {
    let bytes = std::fs::read(w.receipt_dir(run, job).join("job_receipt.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[test]
fn submit_through_the_daemon_then_status_and_cancel() {
    let w = World::new();
    let (_w1, p1) = worker(&w, "w1", &[]);
    let (_slow, ps) = legacy(&w, "slow-win", &["--os", "windows", "--job-delay", "60"]);
    w.write_nodes(&[("w1", p1, true), ("slow-win", ps, true)]);
    let _daemon = w.daemon();
    let clip = video(&w);

    let (code, r, err) = w.submit("d", "probe", "FFMPEG_PROBE", json!({"media_path": clip}), &["--requirements-json", r#"{"os_in":["linux"]}"#]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("handed to the daemon"), "{err}");
    assert_eq!(r["executed_on"], "w1");
    // The receipt and the worker's log were written into the files made
    // ahead for them while the job ran: no temporary file is left.
    let mut names: Vec<String> = std::fs::read_dir(w.receipt_dir("d", "probe")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert!(names.contains(&"job_receipt.json".to_string()) && names.contains(&"worker.log".to_string()), "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    let s = status(&w);
    assert!(s["daemon"]["pid"].is_u64(), "{s}");
    assert_eq!(job_in(&s, "d/probe").unwrap()["phase"], "finished");
    assert_eq!(node_status(&s, "w1"), "up");
    let table = status_table(&w);
    assert!(table[0].starts_with("daemon: running (pid "), "{table:?}");
    assert_eq!(&row(&table, "w1")[..4], ["w1", "up", "rayvault-worker/1", "linux"], "{table:?}");
    assert_eq!(&row(&table, "d/probe")[..4], ["d/probe", "FFMPEG_PROBE", "succeeded", "w1"], "{table:?}");

    let (code, accepted, err) = w.submit("d", "slow", "FFMPEG_PROBE", json!({"media_path": clip}), &["--no-wait", "--requirements-json", r#"{"os_in":["windows"]}"#]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(accepted["accepted"], true);
    common::wait_until("the slow job is on slow-win", Duration::from_secs(20), || job_in(&status(&w), "d/slow").is_some_and(|j| !j["remote"].is_null()));
    let table = status_table(&w);
    let slow_win = row(&table, "slow-win");
    assert_eq!(slow_win[1], "up", "{table:?}");
    assert!(slow_win[2].contains("legacy_hmac_v05"), "{table:?}");
    assert_eq!(slow_win[6], "1", "one job in flight on slow-win: {table:?}");
    assert_eq!(&row(&table, "d/slow")[3..4], ["slow-win"], "{table:?}");
    let out = w.orch().args(["cancel", "--run-id", "d", "--job-id", "slow"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    common::wait_until("the cancelled receipt", Duration::from_secs(20), || receipt(&w, "d", "slow").is_some());
    let r = receipt(&w, "d", "slow").unwrap();
    assert_eq!(r["status"], "cancelled");
    assert_eq!(r["executed_on"], "slow-win");
    let out = w.orch().args(["cancel", "--run-id", "d", "--job-id", "slow"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "cancelling a finished job is refused");
}

#[test]
fn a_daemon_killed_mid_job_resumes_tracking_after_restart() {
    let w = World::new();
    let (_slow, ps) = legacy(&w, "slow", &["--os", "linux", "--job-delay", "4"]);
    w.write_nodes(&[("slow", ps, true)]);
    let clip = video(&w);
    let mut daemon = w.daemon();
    // The daemon's first probe settles before the job is placed: on a busy
    // machine a probe that timed out would send it to the local runner,
    // and this test is about the restart.
    common::wait_until("the daemon sees the worker up", Duration::from_secs(30), || node_status(&status(&w), "slow") == "up");
    let (code, _, err) = w.submit("crash", "j", "FFMPEG_PROBE", json!({"media_path": clip}), &["--no-wait"]);
    assert_eq!(code, 0, "{err}");
    let mut remote = Value::Null;
    common::wait_until("the job is on the worker", Duration::from_secs(20), || {
        remote = job_in(&status(&w), "crash/j").map(|j| j["remote"].clone()).unwrap_or(Value::Null);
        !remote.is_null()
    });
    daemon.kill();
    assert!(receipt(&w, "crash", "j").is_none(), "the job had not finished when the daemon died");
    let _daemon = w.daemon();
    common::wait_until("the resumed job's receipt", Duration::from_secs(30), || receipt(&w, "crash", "j").is_some());
    let r = receipt(&w, "crash", "j").unwrap();
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["executed_on"], "slow");
    assert_eq!(r["remote_job_id"], remote["remote_job_id"]);
    assert_eq!(r["cached"], false, "re-attached, not submitted again");
    assert!(reason_for(&r, "slow").starts_with("chosen"), "the placement survives the restart: {r}");
    assert!(w.daemon_log().contains("resuming a job from the previous run"));
    assert_eq!(job_in(&status(&w), "crash/j").unwrap()["phase"], "finished");
}

#[test]
fn nodes_json_edits_are_noticed_while_the_daemon_runs() {
    let w = World::new();
    let (_w1, p1) = worker(&w, "w1", &[]);
    w.write_nodes(&[("w1", p1, false)]);
    let _daemon = w.daemon();
    assert_eq!(node_status(&status(&w), "w1"), "disabled");
    w.write_nodes(&[("w1", p1, true)]);
    common::wait_until("w1 is enabled and probed", Duration::from_secs(20), || node_status(&status(&w), "w1") == "up");
    let clip = video(&w);
    let (code, r, err) = w.submit("edit", "j", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "w1");
    // A broken edit keeps the last good list and is reported.
    std::fs::write(w.cluster().join("nodes.json"), "{\"nodes\": [ {\"node_id\": 5} ]}").unwrap();
    common::wait_until("the broken file is reported", Duration::from_secs(20), || status(&w)["nodes"]["nodes_error"].as_str().is_some_and(|e| e.contains("nodes[0].node_id")));
    assert_eq!(node_status(&status(&w), "w1"), "up");
}

#[test]
fn the_daemon_api_is_authenticated_and_stops_gracefully() {
    let mut w = World::new();
    let daemon = w.daemon();
    w.set_env("RAYVAULT_CLUSTER_SECRET", "not-the-daemon-secret-at-all");
    let (code, _, err) = w.submit("auth", "j", "FFMPEG_PROBE", json!({"media_path": "/x"}), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("refused us: 401 auth_token invalid"), "{err}");
    let pid = daemon.child.id().to_string();
    let mut daemon = daemon;
    common::run_ok(std::process::Command::new("kill").args(["-TERM", &pid]));
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean shutdown: {status:?}");
    assert!(w.daemon_log().contains("API stopped"), "{}", w.daemon_log());
}

/// A caller without a usable credential is refused before the body is read:
/// it cannot make the daemon wait for (or buffer) a body it never sends.
#[test]
fn the_daemon_refuses_a_bad_credential_before_reading_the_body() {
    use std::io::{Read, Write};
    let w = World::new();
    let _daemon = w.daemon();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", w.api_port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Headers only: the announced megabyte of body never comes.
    let head = "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: RAYVAULT-HMAC-SHA256 kid=0000000000000000, ts=1, nonce=abcdefabcdefabcdef, sig=00\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n";
    conn.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    let mut buf = [0u8; 512];
    while !answer.contains("auth_token invalid") {
        let n = conn.read(&mut buf).expect("the daemon answers without waiting for the body");
        if n == 0 {
            break;
        }
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("auth_token invalid"), "{answer}");
}

#[test]
fn a_job_that_ended_just_before_a_crash_is_not_run_again() {
    let w = World::new();
    let clip = video(&w);
    let mut daemon = w.daemon();
    let (code, first, err) = w.submit("edge", "j", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0, "{err}");
    daemon.kill();
    // As if the daemon died after writing the receipt but before recording
    // the end in its store.
    let store = open_after_kill(&w.cluster().join("controller.redb"));
    assert!(store.update("edge/j", |j| {
        j.phase = rayvault::controller_store::Phase::Running;
        j.receipt = None;
    })
    .unwrap());
    drop(store);
    let _daemon = w.daemon();
    common::wait_until("the job is recorded as finished", Duration::from_secs(20), || job_in(&status(&w), "edge/j").is_some_and(|j| j["phase"] == "finished"));
    let after = receipt(&w, "edge", "j").unwrap();
    assert_eq!(after["timings"]["finished_at"], first["timings"]["finished_at"], "the step did not run a second time");
    assert!(w.daemon_log().contains("had ended before the restart"));
}

#[test]
fn concurrent_jobs_go_to_the_least_busy_node() {
    let w = World::new();
    let (_a, pa) = legacy(&w, "a", &["--job-delay", "8"]);
    let (_b, pb) = legacy(&w, "b", &["--job-delay", "8"]);
    w.write_nodes(&[("a", pa, true), ("b", pb, true)]);
    let _daemon = w.daemon();
    // Two different inputs, so the workers' idempotency does not merge them.
    let one = common::make_video(w.dir.path(), "one.mp4", 1.0, 160, 120, 10);
    let two = common::make_video(w.dir.path(), "two.mp4", 1.0, 176, 144, 10);
    for (job, clip) in [("one", &one), ("two", &two)] {
        let (code, _, err) = w.submit("load", job, "FFMPEG_PROBE", json!({"media_path": clip}), &["--no-wait"]);
        assert_eq!(code, 0, "{err}");
        common::wait_until("the job is placed", Duration::from_secs(20), || job_in(&status(&w), &format!("load/{job}")).is_some_and(|j| !j["remote"].is_null()));
    }
    common::wait_until("both receipts", Duration::from_secs(30), || receipt(&w, "load", "one").is_some() && receipt(&w, "load", "two").is_some());
    let (r1, r2) = (receipt(&w, "load", "one").unwrap(), receipt(&w, "load", "two").unwrap());
    assert_eq!(r1["executed_on"], "a");
    assert_eq!(r2["executed_on"], "b", "a was busy with the first job: {}", r2["placement"]);
    assert!(r2["placement"][0]["reason"].as_str().unwrap().contains("1/? slots busy"), "{}", r2["placement"]);
}

#[test]
fn submit_gives_up_on_a_silent_daemon_and_says_how_to_follow_the_job() {
    let w = World::new();
    let (_slow, ps) = legacy(&w, "slow", &["--os", "linux", "--job-delay", "4"]);
    w.write_nodes(&[("slow", ps, true)]);
    let clip = video(&w);
    let mut daemon = w.daemon();
    let running = spawn_submit(&w, "lost", "j", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    common::wait_until("the job is on the worker", Duration::from_secs(20), || job_in(&status(&w), "lost/j").is_some_and(|j| !j["remote"].is_null()));
    daemon.kill();
    let killed = std::time::Instant::now();
    let out = running.finish();
    let waited = killed.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty(), "no receipt to print");
    assert!(waited >= Duration::from_secs(6) && waited < Duration::from_secs(20), "gave up after {waited:?}");
    let receipt_path = w.receipt_dir("lost", "j").join("job_receipt.json");
    let last = err.lines().last().unwrap_or_default();
    let silent: u64 = last.split("has not answered for ").nth(1).and_then(|t| t.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{err}"));
    assert!((7..10).contains(&silent), "controller.daemon_lost_after_s is 7: {err}");
    assert!(last.contains("goes on there") && last.contains("`rayvault-orchestrator status`"), "{err}");
    assert!(last.contains(&receipt_path.display().to_string()), "{err}");
    // What the message promises: the job goes on once the daemon is back,
    // and its receipt appears where the message said.
    let _daemon = w.daemon();
    common::wait_until("the receipt named in the message", Duration::from_secs(30), || receipt(&w, "lost", "j").is_some());
    assert_eq!(receipt(&w, "lost", "j").unwrap()["status"], "succeeded");
}

#[test]
fn submit_gives_up_on_a_hung_daemon_whose_job_goes_on() {
    let w = World::new();
    let (_slow, ps) = legacy(&w, "slow", &["--os", "linux", "--job-delay", "4"]);
    w.write_nodes(&[("slow", ps, true)]);
    let clip = video(&w);
    let daemon = w.daemon();
    let running = spawn_submit(&w, "hung", "j", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    common::wait_until("the job is on the worker", Duration::from_secs(20), || job_in(&status(&w), "hung/j").is_some_and(|j| !j["remote"].is_null()));
    // Frozen, the daemon still accepts connections (the kernel does) but
    // never answers: the case a plain connection error does not show.
    let pid = daemon.child.id().to_string();
    common::run_ok(std::process::Command::new("kill").args(["-STOP", &pid]));
    let frozen = std::time::Instant::now();
    let out = running.finish();
    let waited = frozen.elapsed();
    common::run_ok(std::process::Command::new("kill").args(["-CONT", &pid]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // At most a 10 s long-poll plus 5 s of slack, then 7 s of silence.
    assert!(waited < Duration::from_secs(25), "gave up after {waited:?}: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("has not answered for") && last.contains("goes on there"), "{err}");
    // The same daemon, thawed, finishes the job.
    common::wait_until("the receipt", Duration::from_secs(30), || receipt(&w, "hung", "j").is_some());
    assert_eq!(receipt(&w, "hung", "j").unwrap()["status"], "succeeded");
    drop(daemon);
}

/// Threads of a running process, from /proc.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_daemon_killed_right_after_concurrent_accepted_submits_loses_none_and_runs_none_twice() {
    let mut w = World::new();
    let step = ledger_step_env(&w);
    let mut env = step.clone();
    env.push(("FAULT_STEP_S".into(), "0.3".into()));
    let state = w.dir.path().join("worker-w1");
    let (_w1, p1) = worker_at(&w, "w1", "127.0.0.1", None, &state, &env);
    w.write_nodes(&[("w1", p1, true)]);
    // Were a job run on the controller, the ledger would say so.
    for (k, v) in &step {
        w.set_env(k, v);
    }
    w.set_env("FAULT_NODE", "controller");
    w.set_env("FAULT_STEP_S", "0.3");
    let mut daemon = w.daemon();
    let n = 16;
    let texts: Vec<String> = (0..n).map(|i| format!("crash-{i:02}")).collect();
    let submits: Vec<Running> = texts.iter().map(|t| spawn_submit(&w, "burst", t, "TTS_RENDER_CHUNKS", json!({"text": t}), &["--no-wait"])).collect();
    for (t, s) in texts.iter().zip(submits) {
        let out = s.finish();
        assert_eq!(out.status.code(), Some(0), "{t} was not accepted: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Every submission was answered "accepted": now the daemon dies.
    daemon.kill();
    let _daemon = w.daemon();
    common::wait_until("a receipt for every accepted job", Duration::from_secs(90), || texts.iter().all(|t| receipt(&w, "burst", t).is_some()));
    for t in &texts {
        let r = receipt(&w, "burst", t).unwrap();
        assert_eq!(r["status"], "succeeded", "{t}: {r}");
    }
    // The worker keeps running what it accepted while the daemon is down, so
    // wait for its last copy to end before counting.
    common::wait_until("every copy on the worker ended", Duration::from_secs(30), || {
        let l = ledger(&w);
        l.iter().filter(|x| x.kind == "START").count() == l.iter().filter(|x| x.kind == "END").count()
    });
    let lines = ledger(&w);
    for t in &texts {
        let ends = lines.iter().filter(|l| l.kind == "END" && &l.text == t).count();
        assert_eq!(ends, 1, "{t} ran to the end {ends} times: {lines:?}");
    }
}

#[test]
fn receipt_files_missing_or_torn_after_a_crash_are_written_again_from_the_store() {
    let w = World::new();
    let clip = video(&w);
    let mut daemon = w.daemon();
    for job in ["a", "b", "c"] {
        let (code, _, err) = w.submit("restore", job, "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
        assert_eq!(code, 0, "{err}");
    }
    let file = |job: &str| w.receipt_dir("restore", job).join("job_receipt.json");
    let original: Vec<Vec<u8>> = ["a", "b", "c"].iter().map(|j| std::fs::read(file(j)).unwrap()).collect();
    daemon.kill();
    // As if the daemon died after recording the ends but before their files
    // reached the disk: one missing, one torn, one intact.
    std::fs::remove_file(file("a")).unwrap();
    std::fs::write(file("b"), &original[1][..original[1].len() / 2]).unwrap();
    let _daemon = w.daemon();
    assert_eq!(std::fs::read(file("a")).unwrap(), original[0], "the missing receipt is back, as it was, once the API listens");
    assert_eq!(std::fs::read(file("b")).unwrap(), original[1], "the torn receipt is whole again");
    assert_eq!(std::fs::read(file("c")).unwrap(), original[2]);
    assert!(w.daemon_log().contains("wrote 2 receipt file(s) again from the store"), "{}", w.daemon_log());
}

#[test]
fn the_daemon_runs_on_the_thread_counts_it_is_configured_with() {
    let mut w = World::new();
    w.set_env("RAYVAULT_CONTROLLER__HTTP_WORKERS", "1");
    w.set_env("RAYVAULT_CONTROLLER__MAX_BLOCKING_THREADS", "1");
    let daemon = w.daemon();
    let pid = daemon.child.id();
    // A burst of local jobs (no worker is listed) at once: file work and
    // steps all ask for blocking threads. Without the cap the same burst
    // grows the daemon to about 25 threads.
    let clips: Vec<_> = (0..12).map(|i| common::make_video(w.dir.path(), &format!("c{i}.mp4"), 0.5, 96 + 16 * i, 64, 10)).collect();
    let submits: Vec<Running> = clips.iter().enumerate().map(|(i, c)| spawn_submit(&w, "threads", &format!("j{i}"), "FFMPEG_PROBE", json!({"media_path": c}), &[])).collect();
    let mut most = 0;
    for s in submits {
        most = most.max(threads(pid));
        let out = s.finish();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    most = most.max(threads(pid));
    // The main thread, one HTTP worker, actix's accept loop, the store's
    // writer, the allocator trimmer, and at most one blocking thread for the
    // main runtime and one for the HTTP worker's.
    assert!(most <= 8, "{most} threads with one HTTP worker and one blocking thread per pool");
}

/// A GET to the daemon's API, signed like `submit` signs it, that waits up
/// to 70 s for the answer (long-polls).
fn daemon_get(w: &World, path: &str, query: &str) -> (u16, Value) {
    daemon_call(w, "GET", path, query, b"")
}

/// A signed request to the daemon's API that waits up to 70 s for the
/// answer.
fn daemon_call(w: &World, method: &str, path: &str, query: &str, body: &[u8]) -> (u16, Value) {
    use std::io::{Read, Write};
    let ring = rayvault::auth::Keyring::from_secrets(SECRET, None).unwrap();
    let sha = rayvault::protocol::sha256_hex(body);
    let auth = ring.authorization(&rayvault::auth::RequestTarget { method, path, query, worker_id: "controller", body_sha256: &sha });
    let mut s = std::net::TcpStream::connect(("127.0.0.1", w.api_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(70))).unwrap();
    let target = if query.is_empty() { path.to_string() } else { format!("{path}?{query}") };
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body.trim()).unwrap_or(Value::Null))
}

/// A world whose jobs run on the controller, each step taking 1.5 s and
/// leaving its start and end in the ledger.
fn slow_local_world() -> World {
    let mut w = World::new();
    for (k, v) in ledger_step_env(&w) {
        w.set_env(&k, &v);
    }
    w.set_env("FAULT_NODE", "controller");
    w.set_env("FAULT_STEP_S", "1.5");
    w
}

#[test]
fn a_held_submission_answers_when_its_job_ends_and_a_longer_job_is_answered_running() {
    let w = slow_local_world();
    let _daemon = w.daemon();
    let spec = |job: &str| serde_json::to_vec(&json!({"run_id": "held", "job_id": job, "step_name": "TTS_RENDER_CHUNKS", "payload": {"text": format!("held-{job}")}})).unwrap();
    // Held long enough: one request gives the receipt, and its file is
    // written by then.
    let (status, answer) = daemon_call(&w, "POST", "/v1/jobs", "wait_s=30", &spec("short"));
    let answered = epoch_s();
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], true, "{answer}");
    assert_eq!(answer["already_running"], false, "{answer}");
    assert_eq!(answer["key"], "held/short", "{answer}");
    assert_eq!(answer["job"]["phase"], "finished", "{answer}");
    assert_eq!(answer["job"]["receipt"]["status"], "succeeded", "{answer}");
    assert_eq!(answer["job"]["receipt"]["executed_on"], "local", "{answer}");
    assert!(w.receipt_dir("held", "short").join("job_receipt.json").is_file(), "the receipt file exists when the end is answered");
    let end = ledger(&w).iter().find(|l| l.kind == "END").map(|l| l.at).expect("the step ended");
    assert!(answered - end < 0.8, "answered {:.3} s after the step ended", answered - end);
    // Held for less than the job takes: answered with the job running, and
    // the long-poll of its key picks it up.
    let (status, answer) = daemon_call(&w, "POST", "/v1/jobs", "wait_s=1", &spec("long"));
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["job"]["receipt"], Value::Null, "{answer}");
    assert_ne!(answer["job"]["phase"], "finished", "{answer}");
    let from = answer["job"]["progress_next"].as_u64().expect("the held answer says where its progress lines end");
    let (status, view) = daemon_get(&w, "/v1/jobs/held/long", &format!("wait_s=30&progress_from={from}"));
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["receipt"]["status"], "succeeded", "{view}");
    // Without wait_s the answer is as before: no job view.
    let (status, answer) = daemon_call(&w, "POST", "/v1/jobs", "", &spec("quick"));
    assert_eq!(status, 202, "{answer}");
    assert!(answer.get("job").is_none(), "{answer}");
    // A query it does not know is refused with a stable code, before
    // anything is recorded.
    for query in ["wait_s=soon", "wait=5"] {
        let (status, answer) = daemon_call(&w, "POST", "/v1/jobs", query, &spec("refused"));
        assert_eq!(status, 400, "{query}: {answer}");
        assert_eq!(answer["code"], "BAD_REQUEST", "{query}: {answer}");
        assert!(answer["error"].as_str().unwrap_or("").contains("wait_s"), "{query}: {answer}");
    }
    let (status, view) = daemon_get(&w, "/v1/jobs/held/refused", "");
    assert_eq!(status, 404, "a refused submission records nothing: {view}");
}

#[test]
fn a_long_poll_answers_the_moment_its_job_ends_with_the_receipt_file_written() {
    let w = slow_local_world();
    let _daemon = w.daemon();
    let (code, _, err) = w.submit("poll", "j", "TTS_RENDER_CHUNKS", json!({"text": "poll-j"}), &["--no-wait"]);
    assert_eq!(code, 0, "{err}");
    // Progress lines from far ahead: only the job's end answers this poll.
    let (status, view) = daemon_get(&w, "/v1/jobs/poll/j", "wait_s=30&progress_from=100000");
    let answered = epoch_s();
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["phase"], "finished", "{view}");
    assert_eq!(view["receipt"]["status"], "succeeded", "{view}");
    assert!(w.receipt_dir("poll", "j").join("job_receipt.json").is_file(), "the receipt file exists when the end is answered");
    let end = ledger(&w).iter().find(|l| l.kind == "END").map(|l| l.at).expect("the step ended");
    assert!(answered - end < 0.8, "answered {:.3} s after the step ended", answered - end);
}

/// The daemon hands a new job to its runner while the job's acceptance is
/// still committing (the run stages its inputs, then waits for the
/// record). Submissions of one key that race each other, and those that
/// come while it runs, must still start it exactly once, and every answer
/// must say which one started it.
#[test]
fn racing_duplicate_submissions_of_one_key_start_it_once() {
    let w = slow_local_world();
    let _daemon = w.daemon();
    let spec = serde_json::to_vec(&json!({"run_id": "dup", "job_id": "j", "step_name": "TTS_RENDER_CHUNKS", "payload": {"text": "dup-j"}})).unwrap();
    let barrier = std::sync::Barrier::new(8);
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    daemon_call(&w, "POST", "/v1/jobs", "", &spec)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|(status, a)| *status == 202 && a["accepted"] == true), "{answers:?}");
    let started = answers.iter().filter(|(_, a)| a["already_running"] == false).count();
    assert_eq!(started, 1, "exactly one submission starts the job: {answers:?}");
    // While it runs, more of the same are answered as already running.
    let (status, again) = daemon_call(&w, "POST", "/v1/jobs", "", &spec);
    assert_eq!((status, &again["already_running"]), (202, &Value::Bool(true)), "{again}");
    // A long-poll also ends at each new progress line: follow them.
    let mut from = 0;
    let view = loop {
        let (status, view) = daemon_get(&w, "/v1/jobs/dup/j", &format!("wait_s=30&progress_from={from}"));
        assert_eq!(status, 200, "{view}");
        if !view["receipt"].is_null() {
            break view;
        }
        from = view["progress_next"].as_u64().expect("a view says where its progress lines end");
    };
    assert_eq!(view["receipt"]["status"], "succeeded", "{view}");
    let runs: Vec<_> = ledger(&w).into_iter().filter(|l| l.kind == "START" && l.text == "dup-j").collect();
    assert_eq!(runs.len(), 1, "the step ran once: {runs:?}");
    let receipt = receipt(&w, "dup", "j").expect("the receipt file is written");
    assert_eq!((&receipt["status"], &receipt["executed_on"]), (&json!("succeeded"), &json!("local")), "{receipt}");
    // Submitted again once it ended, it runs again (a new run of the key).
    let (status, again) = daemon_call(&w, "POST", "/v1/jobs", "wait_s=30", &spec);
    assert_eq!((status, &again["already_running"]), (202, &Value::Bool(false)), "{again}");
    assert_eq!(again["job"]["receipt"]["status"], "succeeded", "{again}");
    let runs = ledger(&w).into_iter().filter(|l| l.kind == "START" && l.text == "dup-j").count();
    assert_eq!(runs, 2, "the second submission after the end ran it again");
}
