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
