//! The daemon's `GET /metrics` on a real cluster: jobs run through the
//! daemon on a real worker and locally, then one unsigned scrape on the
//! controller's loopback API, read with a real Prometheus text parser,
//! shows the controller's counters, the node gauges and the worker's own
//! counters re-exported with a `node` label. The other routes stay signed.

mod controller_support;
mod ops_metrics_support;

use controller_support::*;
use ops_metrics_support::{parse, unsigned_get};
use serde_json::{json, Value};

fn artifact_bytes(receipt: &Value) -> f64 {
    receipt["artifacts"].as_array().unwrap().iter().map(|a| a["size"].as_u64().unwrap()).sum::<u64>() as f64
}

#[test]
fn one_unsigned_scrape_on_the_controller_sees_the_whole_cluster() {
    let w = World::new();
    let (_w1, p1) = worker(&w, "w1", &[]);
    let gone = common::free_port();
    w.write_nodes(&[("w1", p1, true), ("gone", gone, true)]);
    let _daemon = w.daemon();

    // The exemption is for /metrics only: a signed route still refuses a
    // request without a credential (and counts it).
    let (status, _, body) = unsigned_get(w.api_port, "/v1/status");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("AUTH_INVALID"), "{body}");

    let a = common::make_video(w.dir.path(), "a.mp4", 1.0, 160, 120, 10);
    let b = common::make_video(w.dir.path(), "b.mp4", 1.5, 160, 120, 10);
    let mut synced = 0.0;
    for (job, clip) in [("p1", &a), ("p2", &b)] {
        let (code, r, err) = w.submit("m", job, "FFMPEG_PROBE", json!({"media_path": clip}), &["--requirements-json", r#"{"os_in":["linux"]}"#]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("handed to the daemon"), "{err}");
        assert_eq!(r["executed_on"], "w1", "{r}");
        synced += artifact_bytes(&r);
    }
    assert!(synced > 0.0, "the probe jobs made artifacts");
    // No node fits windows-only, and one node is down: a local fallback of
    // class `unavailable`.
    let (code, r, err) = w.submit("m", "local", "FFMPEG_PROBE", json!({"media_path": a}), &["--requirements-json", r#"{"os_in":["windows"]}"#]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "local", "{r}");
    assert!(r["fallback_reason"].is_string(), "{r}");

    let (status, ctype, text) = unsigned_get(w.api_port, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let Some(m) = parse(&text) else { return };

    let jobs = |on: &str| m.get("rayvault_controller_jobs_total", &[("step", "FFMPEG_PROBE"), ("status", "succeeded"), ("executed_on", on)]);
    assert_eq!(jobs("w1"), 2.0);
    assert_eq!(jobs("local"), 1.0);
    assert_eq!(m.kind("rayvault_controller_jobs"), "counter");
    assert_eq!(m.kind("rayvault_controller_job_duration_seconds"), "histogram");
    assert_eq!(m.get("rayvault_controller_job_duration_seconds_count", &[("step", "FFMPEG_PROBE")]), 3.0);
    assert_eq!(m.get("rayvault_controller_job_duration_seconds_bucket", &[("step", "FFMPEG_PROBE"), ("le", "+Inf")]), 3.0);
    for (class, n) in [("unavailable", 1.0), ("misconfigured", 0.0), ("controller_only", 0.0), ("no_eligible_node", 0.0)] {
        assert_eq!(m.get("rayvault_controller_fallbacks_total", &[("reason", class)]), n, "{class}");
    }
    assert_eq!(m.get("rayvault_controller_artifact_bytes_synced_total", &[]), synced);
    assert_eq!(m.get("rayvault_controller_auth_refusals_total", &[("reason", "no_authorization_header")]), 1.0);

    assert_eq!(m.get("rayvault_node_up", &[("node", "w1")]), 1.0);
    assert_eq!(m.get("rayvault_node_up", &[("node", "gone")]), 0.0);
    assert_eq!(m.get("rayvault_node_state", &[("node", "gone"), ("state", "down")]), 1.0);
    assert_eq!(m.matching("rayvault_node_state", &[("node", "w1")]).iter().filter(|s| s.value == 1.0).count(), 1);
    assert_eq!(m.get("rayvault_node_state", &[("node", "w1"), ("state", "up")]), 1.0);
    assert_eq!(m.get("rayvault_node_jobs_in_flight", &[("node", "w1")]), 0.0);
    assert_eq!(m.get("rayvault_node_scrape_up", &[("node", "w1")]), 1.0);
    assert_eq!(m.get("rayvault_node_scrape_up", &[("node", "gone")]), 0.0);

    // The worker's own counters, re-exported with its node id.
    assert_eq!(m.get("rayvault_jobs_total", &[("node", "w1"), ("step", "FFMPEG_PROBE"), ("state", "succeeded")]), 2.0);
    assert_eq!(m.get("rayvault_job_duration_seconds_count", &[("node", "w1"), ("step", "FFMPEG_PROBE")]), 2.0);
    assert_eq!(m.get("rayvault_artifact_bytes_served_total", &[("node", "w1")]), synced);
    assert!(m.get("rayvault_disk_free_bytes", &[("node", "w1")]) > 0.0);
    assert!(m.matching("rayvault_jobs_total", &[("node", "gone")]).is_empty());
    // Nothing in the exposition names a file.
    assert!(!text.contains(w.dir.path().to_str().unwrap()), "{text}");
}

/// Scrapes the daemon of `w` and parses the answer.
fn scrape(w: &World) -> Option<ops_metrics_support::Metrics> {
    let (status, _, text) = unsigned_get(w.api_port, "/metrics");
    assert_eq!(status, 200, "{text}");
    parse(&text)
}

#[test]
fn a_misconfigured_worker_is_a_fallback_class_and_its_refusals_are_counted() {
    let w = World::new();
    let (_bad, pb) = worker(&w, "bad", &[("RAYVAULT_CLUSTER_SECRET", "another-secret-0123456789abcdef")]);
    w.write_nodes(&[("bad", pb, true)]);
    let _daemon = w.daemon();
    let clip = video(&w);
    // The worker refuses our credentials: without `--fallback always` the
    // job fails, with it the job runs locally.
    let (code, r, err) = w.submit("m", "always", "FFMPEG_PROBE", json!({"media_path": clip}), &["--fallback", "always"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "local", "{r}");
    let Some(m) = scrape(&w) else { return };
    assert_eq!(m.get("rayvault_controller_fallbacks_total", &[("reason", "misconfigured")]), 1.0);
    assert_eq!(m.get("rayvault_controller_fallbacks_total", &[("reason", "unavailable")]), 0.0);
    assert_eq!(m.get("rayvault_node_state", &[("node", "bad"), ("state", "misconfigured")]), 1.0);
    assert_eq!(m.get("rayvault_node_up", &[("node", "bad")]), 0.0);
    // The worker refused the scrape too: no re-exported counters from it.
    assert_eq!(m.get("rayvault_node_scrape_up", &[("node", "bad")]), 0.0);
    assert!(m.matching("rayvault_jobs_total", &[("node", "bad")]).is_empty());
    assert!(m.get("rayvault_controller_remote_auth_refusals_total", &[("code", "AUTH_INVALID")]) >= 1.0);
}

#[test]
fn no_eligible_node_and_controller_only_fallbacks_and_verdicts() {
    let w = World::new();
    let (_w1, p1) = worker(&w, "w1", &[]);
    w.write_nodes(&[("w1", p1, true)]);
    // The world's folder is the commands' working directory.
    std::fs::create_dir_all(w.dir.path().join("config")).unwrap();
    std::fs::write(w.dir.path().join("config/local.toml"), "[controller]\ncontroller_only_steps = [\"AUDIO_POSTCHECK\"]\n").unwrap();
    let _daemon = w.daemon();
    let clip = video(&w);
    let (code, r, err) = w.submit("m", "win", "FFMPEG_PROBE", json!({"media_path": clip}), &["--requirements-json", r#"{"os_in":["windows"]}"#]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "local", "{r}");
    // A 2 s sine at -20 dBFS misses the loudness target: a failed verdict.
    let wav = common::make_sine_wav(w.dir.path(), "tone.wav", 2.0, 48_000, 1, -20.0);
    let (code, r, err) = w.submit("m", "post", "AUDIO_POSTCHECK", json!({"audio_paths": [wav]}), &[]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(r["executed_on"], "local", "{r}");
    let Some(m) = scrape(&w) else { return };
    assert_eq!(m.get("rayvault_controller_fallbacks_total", &[("reason", "no_eligible_node")]), 1.0);
    assert_eq!(m.get("rayvault_controller_fallbacks_total", &[("reason", "controller_only")]), 1.0);
    assert_eq!(m.get("rayvault_controller_fallbacks_total", &[("reason", "unavailable")]), 0.0);
    assert_eq!(m.get("rayvault_controller_verdicts_total", &[("step", "AUDIO_POSTCHECK"), ("verdict", "failed")]), 1.0);
    assert_eq!(m.get("rayvault_controller_jobs_total", &[("step", "AUDIO_POSTCHECK"), ("status", "succeeded"), ("executed_on", "local")]), 1.0);
    // The worker answered its scrape, with no job of its own yet.
    assert_eq!(m.get("rayvault_node_scrape_up", &[("node", "w1")]), 1.0);
    assert!(m.matching("rayvault_jobs_total", &[("node", "w1")]).is_empty());
}

#[test]
fn the_daemon_refuses_to_listen_outside_loopback() {
    let w = World::new();
    let out = w.orch().arg("daemon").env("RAYVAULT_CONTROLLER__API_HOST", "0.0.0.0").output().unwrap();
    let (code, _, err) = parse_output(&out);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("is not a loopback address"), "{err}");
}

#[test]
fn silent_workers_cost_one_probe_timeout_per_scrape_not_one_each() {
    // Two "workers" that accept connections and never answer.
    let silent: Vec<std::net::TcpListener> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = silent.iter().map(|l| l.local_addr().unwrap().port()).collect();
    let w = World::new();
    w.write_nodes(&[("s1", ports[0], true), ("s2", ports[1], true)]);
    let _daemon = w.daemon();
    // World sets controller.probe_timeout_s to 2: asked one after the
    // other, the two would take 4 s.
    let t0 = std::time::Instant::now();
    let Some(m) = scrape(&w) else { return };
    let took = t0.elapsed();
    // It did ask them (and waited for the timeout), at the same time: one
    // after the other would take at least 4 s, so anything below 3.9 s
    // proves it, and leaves a loaded machine room for the rest of the call.
    assert!(took >= std::time::Duration::from_millis(1900), "the scrape took {took:?}");
    assert!(took < std::time::Duration::from_millis(3900), "the scrape took {took:?}");
    assert_eq!(m.get("rayvault_node_scrape_up", &[("node", "s1")]), 0.0);
    assert_eq!(m.get("rayvault_node_scrape_up", &[("node", "s2")]), 0.0);
    drop(silent);
}
