//! The controller CLI as a daily tool: help on every flag, the `caps` table,
//! `submit`'s summary and `--json`/`--quiet`, `logs`, `wait`, `result`,
//! `cancel` of an in-process submit, refused configuration typos, the start
//! scripts, and what reaches the terminal.

mod controller_support;

use controller_support::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(c: &mut Command) -> (i32, String, String) {
    let out: Output = c.output().unwrap();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The subcommand names listed by `rayvault-orchestrator --help`.
fn subcommands(w: &World) -> Vec<String> {
    let (code, help, err) = run(w.orch().arg("--help"));
    assert_eq!(code, 0, "{err}");
    let section = help.split("Commands:").nth(1).expect("a Commands section");
    section
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect()
}

#[test]
fn every_subcommand_help_describes_every_flag() {
    let w = World::bare();
    let subs = subcommands(&w);
    for want in ["daemon", "submit", "health", "caps", "status", "cancel", "sync-artifacts", "logs", "wait", "result"] {
        assert!(subs.iter().any(|s| s == want), "{want} missing from --help: {subs:?}");
    }
    for sub in &subs {
        let (code, help, err) = run(w.orch().args([sub.as_str(), "--help"]));
        assert_eq!(code, 0, "{sub} --help: {err}");
        let options = help.split("Options:").nth(1).unwrap_or_else(|| panic!("{sub} --help has no Options: {help}"));
        let mut flags = 0;
        for line in options.lines().filter(|l| l.trim_start().starts_with('-')) {
            flags += 1;
            // `  --flag <VALUE>  Description`: the description follows two spaces.
            let described = line.trim_start().split_once("  ").is_some_and(|(_, d)| !d.trim().is_empty());
            assert!(described, "{sub} --help: a flag without help text: {line:?}\n{help}");
        }
        assert!(flags >= 2, "{sub} --help lists its flags: {help}");
    }
    let (_, help, _) = run(w.orch().args(["submit", "--help"]));
    for step in ["TTS_RENDER_CHUNKS", "AUDIO_POSTCHECK", "FFMPEG_PROBE", "FRAME_SAMPLING", "OPENCLAW_TASK"] {
        assert!(help.contains(step), "submit --help lists {step}: {help}");
    }
    assert!(help.contains("docs/steps.md"), "{help}");
    for flag in ["--json", "--quiet", "--fallback", "--no-wait"] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
    let (_, help, _) = run(w.orch().args(["logs", "--help"]));
    assert!(help.contains("--follow"), "{help}");
}

#[test]
fn caps_prints_a_table_and_json_on_request() {
    let w = World::new();
    let (_w1, p1) = worker(&w, "w1", &[]);
    w.write_nodes(&[("w1", p1, true), ("gone", common::free_port(), true)]);
    let (code, table, err) = run(w.orch().arg("caps"));
    assert_eq!(code, 1, "a node is down: {err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("nodes.json: "), "{table}");
    assert!(lines[1].starts_with("NODE") && lines[1].contains("STEPS"), "{table}");
    let w1: Vec<&str> = lines.iter().find(|l| l.starts_with("w1 ")).unwrap_or_else(|| panic!("{table}")).split_whitespace().collect();
    assert_eq!(&w1[..3], ["w1", "up", "rayvault-worker/1"], "{table}");
    assert!(table.contains("FFMPEG_PROBE"), "{table}");
    let gone = lines.iter().find(|l| l.starts_with("gone ")).unwrap_or_else(|| panic!("{table}"));
    assert!(gone.contains("down") && gone.contains("unreachable"), "{table}");
    assert!(serde_json::from_str::<Value>(&table).is_err(), "the table is not JSON");

    let (code, out, err) = run(w.orch().args(["caps", "--json"]));
    assert_eq!(code, 1, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let node = v["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == "w1").unwrap();
    assert_eq!(node["status"], "up");
    assert!(node["caps"]["steps"].as_array().unwrap().iter().any(|s| s == "FFMPEG_PROBE"), "{v}");
    assert!(node.as_object().unwrap().contains_key("compat_mode"), "{v}");
}

#[test]
fn a_missing_nodes_file_is_named() {
    let w = World::bare();
    let (code, out, err) = run(w.orch().arg("health"));
    assert_eq!(code, 0, "{err}");
    let file = w.cluster().join("nodes.json");
    assert!(out.contains(&format!("no nodes.json at {}", file.display())), "{out}");
}

#[test]
fn submit_prints_a_summary_or_json_and_always_says_when_it_ran_locally() {
    let w = World::bare();
    let clip = video(&w);
    let payload = json!({"media_path": clip}).to_string();
    let submit = |job: &str, extra: &[&str]| {
        run(w.orch().args(["submit", "--run-id", "out", "--job-id", job, "--step-name", "FFMPEG_PROBE", "--payload-json", &payload]).args(extra))
    };
    let receipt_file = w.receipt_dir("out", "plain").join("job_receipt.json");

    let (code, out, err) = submit("plain", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(serde_json::from_str::<Value>(&out).is_err(), "plain submit prints a summary, not JSON: {out}");
    assert!(out.starts_with("job out/plain (FFMPEG_PROBE): succeeded\n"), "{out}");
    assert!(out.contains("ran on: local\n"), "{out}");
    assert!(out.contains("why: no worker nodes configured"), "{out}");
    assert!(out.contains("ffprobe.json"), "{out}");
    assert!(out.contains(&format!("receipt: {}", receipt_file.display())), "{out}");
    let ran_locally: Vec<&str> = err.lines().filter(|l| l.starts_with("ran locally: ")).collect();
    assert_eq!(ran_locally.len(), 1, "{err}");
    assert!(ran_locally[0].contains("no worker nodes configured"), "{err}");

    let (code, out, err) = submit("json", &["--json"]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["executed_on"], "local");
    assert!(err.lines().any(|l| l.starts_with("ran locally: ")), "{err}");

    let (code, out, err) = submit("quiet", &["--quiet"]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["job_id"], "quiet");
    assert_eq!(err, format!("ran locally: {}\n", r["fallback_reason"].as_str().unwrap()), "--quiet prints only the fallback line");

    // A failed job: the summary names the error; the exit code is the receipt's.
    let (code, out, _) = run(w.orch().args(["submit", "--run-id", "out", "--job-id", "bad", "--step-name", "FFMPEG_PROBE", "--payload-json", r#"{"media_path": "/nonexistent.mp4"}"#]));
    assert_eq!(code, 1);
    assert!(out.contains("error: INPUT_NOT_FOUND: "), "{out}");
}

#[test]
fn result_and_wait_exit_with_the_receipts_code() {
    let w = World::bare();
    let clip = video(&w);
    let (code, _, err) = w.submit("res", "ok", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = w.submit("res", "bad", "FFMPEG_PROBE", json!({"media_path": "/nonexistent.mp4"}), &[]);
    assert_eq!(code, 1);
    let on_disk = |job: &str| -> Value { serde_json::from_slice(&std::fs::read(w.receipt_dir("res", job).join("job_receipt.json")).unwrap()).unwrap() };

    for (cmd, job, want) in [("result", "ok", 0), ("result", "bad", 1), ("wait", "ok", 0), ("wait", "bad", 1)] {
        let (code, out, err) = run(w.orch().args([cmd, "--run-id", "res", "--job-id", job, "--json"]));
        assert_eq!(code, want, "{cmd} {job}: {err}");
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), on_disk(job), "{cmd} --json prints the receipt");
        let (code, out, _) = run(w.orch().args([cmd, "--run-id", "res", "--job-id", job]));
        assert_eq!(code, want);
        assert!(out.starts_with(&format!("job res/{job} (FFMPEG_PROBE): ")), "{out}");
    }
    let missing = w.receipt_dir("res", "never").join("job_receipt.json");
    for cmd in ["result", "wait"] {
        let (code, out, err) = run(w.orch().args([cmd, "--run-id", "res", "--job-id", "never"]));
        assert_eq!(code, 2, "{cmd}: {out}");
        assert!(err.contains(&missing.display().to_string()), "{cmd} names the path it looked for: {err}");
    }
}

#[test]
fn logs_prints_a_finished_jobs_log_and_names_the_missing_one() {
    let w = World::bare();
    let clip = video(&w);
    let (code, _, err) = w.submit("logs", "probe", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(w.orch().args(["logs", "--run-id", "logs", "--job-id", "probe"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, std::fs::read_to_string(w.receipt_dir("logs", "probe").join("worker.log")).unwrap());
    assert!(out.contains("step FFMPEG_PROBE started"), "{out}");
    let (code, _, err) = run(w.orch().args(["logs", "--run-id", "logs", "--job-id", "nope", "--follow"]));
    assert_eq!(code, 2);
    assert!(err.contains(&w.receipt_dir("logs", "nope").join("worker.log").display().to_string()), "{err}");
}

/// An OPENCLAW_TASK whose command runs for `secs` seconds: a job that stays
/// running long enough to be followed, waited for and cancelled.
fn slow_openclaw(secs: u32) -> Vec<(String, String)> {
    vec![("DISPLAY".into(), ":0".into()), ("RAYVAULT_OPENCLAW__COMMAND".into(), format!("sh -c 'cat >/dev/null; sleep {secs}; echo finished'"))]
}

#[test]
fn wait_and_logs_follow_a_daemon_job_on_a_worker() {
    let mut w = World::new();
    // The job runs until the test opens the gate, so that it is surely still
    // running on w1 while its partial log is read, however slow the machine,
    // and for at least 3 s, so that the follower below usually attaches
    // while it runs.
    let gate = w.dir.path().join("gate");
    let env = [
        ("DISPLAY".to_string(), ":0".to_string()),
        ("RAYVAULT_OPENCLAW__COMMAND".to_string(), format!("sh -c 'cat >/dev/null; sleep 3; while [ ! -e {} ]; do sleep 0.05; done; echo finished'", gate.display())),
    ];
    let mut wenv: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    wenv.push(("RAYVAULT_CLUSTER_SECRET", SECRET));
    let (_w1, p1) = worker(&w, "w1", &wenv);
    w.write_nodes(&[("w1", p1, true)]);
    // The controller itself cannot run it (no desktop session): only w1 can.
    w.set_env("DISPLAY", "");
    let _daemon = w.daemon();
    common::wait_until("the daemon has probed w1", Duration::from_secs(20), || {
        let out = w.orch().args(["status", "--json"]).output().unwrap();
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| s["nodes"]["nodes"][0]["status"] == "up")
    });
    let payload = json!({"task": "say hello", "timeout_s": 60});
    let (code, accepted, err) = w.submit("follow", "task", "OPENCLAW_TASK", payload, &["--no-wait", "--fallback", "never"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(accepted["accepted"], true, "{accepted}");

    // While it runs on w1, its log comes from the worker: the receipt
    // folder has none yet.
    common::wait_until("the job is on w1", Duration::from_secs(20), || {
        let out = w.orch().args(["status", "--json"]).output().unwrap();
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| s["jobs"].as_array().is_some_and(|j| j.iter().any(|j| j["key"] == "follow/task" && j["remote"]["node_id"] == "w1")))
    });
    let (code, partial, err) = run(w.orch().args(["logs", "--run-id", "follow", "--job-id", "task"]));
    assert_eq!(code, 0, "{err}");
    assert!(partial.contains("OPENCLAW_TASK"), "{partial}");
    assert!(!w.receipt_dir("follow", "task").join("worker.log").exists(), "a running job's log is not in its receipt folder");
    let logs = std::thread::spawn({
        let mut c = w.orch();
        c.args(["logs", "--run-id", "follow", "--job-id", "task", "--follow"]);
        move || run(&mut c)
    });
    std::fs::write(&gate, b"").unwrap();
    let (code, out, err) = run(w.orch().args(["wait", "--run-id", "follow", "--job-id", "task"]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with("job follow/task (OPENCLAW_TASK): succeeded\n") && out.contains("ran on: w1\n"), "{out}");
    let (code, log, err) = logs.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(log.contains("step OPENCLAW_TASK started") && log.contains("succeeded"), "the whole log, to the end: {log}");
    let (code, _, _) = run(w.orch().args(["result", "--run-id", "follow", "--job-id", "task"]));
    assert_eq!(code, 0);
    // No debug dump of the daemon's structs in `status`.
    let (_, status, _) = run(w.orch().arg("status"));
    assert!(!status.contains("RemoteRef") && !status.contains(" { "), "{status}");
}

#[test]
fn cancel_wait_and_logs_reach_an_in_process_submit() {
    let mut w = World::bare();
    for (k, v) in slow_openclaw(60) {
        w.set_env(&k, &v);
    }
    let submit = spawn_submit(&w, "inproc", "task", "OPENCLAW_TASK", json!({"task": "wait a minute", "timeout_s": 120}), &[]);
    let registration = w.cluster().join("running/inproc/task.json");
    common::wait_until("the submit registers the job", Duration::from_secs(20), || registration.is_file());
    common::wait_until("the step starts", Duration::from_secs(20), || {
        std::fs::read_to_string(w.receipt_dir("inproc", "task").join("worker.log")).is_ok_and(|l| l.contains("started"))
    });
    let (code, log, err) = run(w.orch().args(["logs", "--run-id", "inproc", "--job-id", "task"]));
    assert_eq!(code, 0, "{err}");
    assert!(log.contains("step OPENCLAW_TASK started"), "{log}");
    let waiter = std::thread::spawn({
        let mut c = w.orch();
        c.args(["wait", "--run-id", "inproc", "--job-id", "task", "--json"]);
        move || run(&mut c)
    });
    let (code, out, err) = run(w.orch().args(["cancel", "--run-id", "inproc", "--job-id", "task", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["cancelling"], true, "{out}");
    let out = submit.finish();
    let (code, r, err) = parse_output(&out);
    assert_eq!(r["status"], "cancelled", "{err}");
    assert_eq!(code, 1, "a cancelled job is not a success");
    let (code, out, err) = waiter.join().unwrap();
    assert_eq!(code, 1, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["status"], "cancelled");
    assert!(!registration.exists(), "the registration is removed at the end");
    let (code, _, err) = run(w.orch().args(["cancel", "--run-id", "inproc", "--job-id", "task"]));
    assert_eq!(code, 2, "nothing left to cancel: {err}");
    assert!(err.contains("is not running"), "{err}");
}

#[test]
fn configuration_typos_are_refused_by_both_binaries() {
    let w = World::bare();
    let file = w.dir.path().join("local.toml");
    std::fs::write(&file, "[worker]\nprot = 8797\n").unwrap();
    let worker_bin = env!("CARGO_BIN_EXE_rayvault-worker");
    let worker = || {
        let mut c = clean_command(worker_bin, w.dir.path());
        c.env("RAYVAULT_CLUSTER_SECRET", SECRET).env("RAYVAULT_STATE_DIR", w.state()).env("RAYVAULT_WORKER_PORT", common::free_port().to_string());
        c
    };
    let (code, _, err) = run(w.orch().arg("--config").arg(&file).arg("health"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown key `worker.prot`") && err.contains(&file.display().to_string()), "{err}");
    let (code, _, err) = run(worker().arg("--config").arg(&file));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown key `worker.prot`"), "{err}");
    let (code, _, err) = run(w.orch().env("RAYVAULT_WORKER__PROT", "8797").arg("health"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("RAYVAULT_WORKER__PROT"), "{err}");
    let (code, _, err) = run(worker().env("RAYVAULT_WORKER__PROT", "8797"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("RAYVAULT_WORKER__PROT"), "{err}");
    std::fs::write(&file, "[steps.ffmpeg_prob]\nconcurrency = 1\n").unwrap();
    let (code, _, err) = run(w.orch().arg("--config").arg(&file).arg("health"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("steps.ffmpeg_prob"), "{err}");
}

#[test]
fn the_start_scripts_keep_the_working_directory_and_help_needs_no_secret() {
    let w = World::bare();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // A relative media path, relative to the caller's directory.
    video(&w);
    let (code, out, err) = run(clean_command("bash", w.dir.path())
        .env("RAYVAULT_ORCHESTRATOR_BIN", env!("CARGO_BIN_EXE_rayvault-orchestrator"))
        .env("RAYVAULT_STATE_DIR", "state")
        .arg(root.join("scripts/start_controller.sh"))
        .args(["submit", "--run-id", "rel", "--job-id", "j", "--step-name", "FFMPEG_PROBE", "--payload-json", r#"{"media_path": "clip.mp4"}"#, "--json"]));
    assert_eq!(code, 0, "{out}\n{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["status"], "succeeded");
    assert!(w.receipt_dir("rel", "j").join("job_receipt.json").is_file(), "RAYVAULT_STATE_DIR=state is the caller's state/");
    let (code, out, err) = run(clean_command("bash", w.dir.path()).env("RAYVAULT_ORCHESTRATOR_BIN", env!("CARGO_BIN_EXE_rayvault-orchestrator")).arg(root.join("scripts/start_controller.sh")).args(["daemon", "--help"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Usage: rayvault-orchestrator daemon"), "{out}");
    let (code, out, err) = run(clean_command("bash", w.dir.path()).env("RAYVAULT_WORKER_BIN", env!("CARGO_BIN_EXE_rayvault-worker")).arg(root.join("scripts/start_worker.sh")).arg("--help"));
    assert_eq!(code, 0, "start_worker.sh --help without a secret: {err}");
    assert!(out.contains("Usage: rayvault-worker"), "{out}");
    let (code, _, err) = run(clean_command("bash", w.dir.path()).env("RAYVAULT_WORKER_BIN", env!("CARGO_BIN_EXE_rayvault-worker")).arg(root.join("scripts/start_worker.sh")));
    assert_eq!(code, 2, "without --help the secret is still required: {err}");
    assert!(err.contains("RAYVAULT_CLUSTER_SECRET"), "{err}");
}

#[test]
fn a_daemon_with_another_secret_is_explained() {
    let mut w = World::new();
    let _daemon = w.daemon();
    w.set_env("RAYVAULT_CLUSTER_SECRET", "another-secret-entirely-0123456789");
    let (code, _, err) = run(w.orch().arg("status"));
    assert_eq!(code, 2);
    assert!(err.contains("both run on this machine") && err.contains("secrets differ") && err.contains("RAYVAULT_CLUSTER_SECRET"), "{err}");
    assert!(!err.contains("another-secret-entirely"), "never the secret itself: {err}");
}

#[test]
fn one_shot_commands_print_warnings_as_sentences() {
    let w = World::new();
    // An enabled node that is not there: the job falls back, with warnings
    // from the controller's actors on the way.
    w.write_nodes(&[("windows-worker-1", common::free_port(), true)]);
    let clip = video(&w);
    let (code, out, err) = run(w.orch().args(["submit", "--run-id", "t", "--job-id", "j", "--step-name", "FFMPEG_PROBE", "--payload-json", &json!({"media_path": clip}).to_string()]));
    assert_eq!(code, 0, "{err}");
    for line in err.lines().chain(out.lines()) {
        assert!(!line.contains(" WARN ") && !line.contains(" INFO ") && !line.contains("rayvault::"), "a tracing line reached the terminal: {line}");
        assert!(!line.contains("{ ") || line.contains("{\"nodes\""), "a debug dump reached the terminal: {line}");
    }
    assert!(err.contains("ran locally: "), "{err}");
    for line in err.lines().filter(|l| l.contains("warning")) {
        assert!(line.starts_with("rayvault-orchestrator: warning: "), "a warning is a sentence: {line}");
    }
}
