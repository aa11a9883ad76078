//! Secrets against real workers: rotation with CURRENT/PREVIOUS, and a
//! clock skew reported with the documented words (the controller runs under
//! faketime, an hour behind).

mod controller_support;

use controller_support::*;
use serde_json::json;

const OLD: &str = "old-secret-before-rotation-0001";
const NEW: &str = "new-secret-after-rotation-0002";

#[test]
fn rotation_with_current_and_previous() {
    let mut w = World::new();
    // The worker already rolled: it signs nothing, verifies NEW then OLD.
    let (_w1, p1) = worker(&w, "w1", &[("RAYVAULT_CLUSTER_SECRET_CURRENT", NEW), ("RAYVAULT_CLUSTER_SECRET_PREVIOUS", OLD)]);
    w.write_nodes(&[("w1", p1, true)]);
    let clip = video(&w);

    // A controller still on the old secret keeps working in the grace period.
    w.env.clear();
    w.set_env("RAYVAULT_CLUSTER_SECRET", OLD);
    let (code, r, err) = w.submit("rot", "old", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "w1", "{r}");

    // A controller configured with CURRENT signs with it.
    w.env.clear();
    w.set_env("RAYVAULT_CLUSTER_SECRET_CURRENT", NEW);
    w.set_env("RAYVAULT_CLUSTER_SECRET_PREVIOUS", OLD);
    let (code, r, err) = w.submit("rot", "new", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "w1", "{r}");

    // RAYVAULT_CLUSTER_SECRET wins over CURRENT when both are set. A wrong
    // secret is a configuration error: nothing runs anywhere, exit 2.
    w.set_env("RAYVAULT_CLUSTER_SECRET", "some-unrelated-secret-000");
    let (code, r, err) = w.submit("rot", "wrong", "FFMPEG_PROBE", json!({"media_path": clip}), &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["executed_on"], serde_json::Value::Null, "{r}");
    assert_eq!(r["error"]["code"], "AUTH_REJECTED", "{r}");
    assert!(r["attempts"].as_array().unwrap().is_empty(), "nothing ran: {r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("w1") && msg.contains("401 auth_token invalid") && msg.contains("--fallback always"), "{msg}");
    assert!(!msg.contains("clock"), "a refused signature is not blamed on the clock: {msg}");
    // --fallback always runs it locally anyway, with the reason on record.
    let (code, r, err) = w.submit("rot", "wrong-always", "FFMPEG_PROBE", json!({"media_path": clip}), &["--fallback", "always"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "local");
    let reason = r["fallback_reason"].as_str().unwrap();
    assert!(reason.starts_with("w1 refused our credentials: 401 auth_token invalid"), "{reason}");
    assert!(err.contains(&format!("ran locally: {reason}")), "{err}");
}

/// `rayvault-orchestrator submit` run an hour in the past (wall clock only).
fn submit_an_hour_behind(w: &World, job: &str, clip: &std::path::Path, extra_env: &[(&str, &str)]) -> (i32, serde_json::Value, String) {
    let orch = w.orch();
    let mut c = clean_command("faketime", w.dir.path());
    c.arg("-f").arg("-1h").arg(orch.get_program());
    for (k, v) in orch.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    // Only wall-clock time is shifted; timers keep working.
    c.env("FAKETIME_DONT_FAKE_MONOTONIC", "1").env("RUST_LOG", "warn");
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let out = c
        .args(["submit", "--run-id", "skew", "--job-id", job, "--step-name", "FFMPEG_PROBE", "--payload-json", &json!({"media_path": clip}).to_string(), "--json"])
        .output()
        .unwrap();
    parse_output(&out)
}

#[test]
fn clock_skew_is_reported_with_the_documented_words() {
    let w = World::new();
    let (_w1, p1) = worker(&w, "w1", &[]);
    w.write_nodes(&[("w1", p1, true)]);
    let clip = video(&w);
    let (code, r, err) = submit_an_hour_behind(&w, "j", &clip, &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(r["executed_on"], serde_json::Value::Null);
    assert_eq!(r["error"]["code"], "AUTH_REJECTED", "{r}");
    let reason = reason_for(&r, "w1");
    assert!(reason.starts_with("refused our credentials: 401 timestamp outside allowed skew"), "{reason}");
    assert!(reason.ends_with("sync system clocks (NTP)"), "{reason}");
    assert_eq!(reason.matches("NTP").count(), 1, "the hint is given once: {reason}");
    assert!(reason.contains("+36"), "the offset is reported: {reason}");
    assert_eq!(reason.matches("NTP").count(), 1, "the hint is stated once: {reason}");
}

#[test]
fn the_plain_token_works_around_a_rejected_hmac_only_when_allowed() {
    let w = World::new();
    let (_w1, p1) = worker(&w, "w1", &[("RAYVAULT_CLUSTER_SECRET", SECRET), ("RAYVAULT_WORKER__ALLOW_PLAIN_TOKEN", "true")]);
    w.write_nodes(&[("w1", p1, true)]);
    let clip = video(&w);
    // Strict (the default): the skewed HMAC is refused and nothing else is tried.
    let (code, r, _) = submit_an_hour_behind(&w, "strict", &clip, &[]);
    assert_eq!(code, 2);
    assert_eq!(r["executed_on"], serde_json::Value::Null);
    assert_eq!(r["error"]["code"], "AUTH_REJECTED");
    // Allowed: the plain token gets through, with a warning and the mode on record.
    let (code, r, err) = submit_an_hour_behind(&w, "plain", &clip, &[("RAYVAULT_ALLOW_PLAIN_FALLBACK", "1")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "w1", "{r}");
    assert_eq!(r["compat_mode"], "plain_token");
    assert!(err.contains("using the plain token"), "{err}");
    assert!(!serde_json::to_string(&r).unwrap().contains(SECRET));
}
