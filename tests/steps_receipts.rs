//! A step timeout on a real worker reaches the controller's receipt as
//! `TIMEOUT`, through `rayvault-orchestrator submit`.

mod controller_support;

use controller_support::*;
use serde_json::json;

#[test]
fn a_worker_step_timeout_is_timeout_in_the_receipt() {
    let w = World::new();
    // The worker's TTS engine sleeps far past the step's 1 s timeout.
    let env = [
        ("RAYVAULT_CLUSTER_SECRET", SECRET),
        ("RAYVAULT_TTS__ENGINE", "command"),
        ("RAYVAULT_TTS__COMMAND_TEMPLATE", "python3 -c \"import time; time.sleep(30)\" {text_file} {out_wav}"),
        ("RAYVAULT_STEPS__TTS_RENDER_CHUNKS__TIMEOUT_S", "1"),
    ];
    let (_w1, p1) = worker(&w, "w1", &env);
    w.write_nodes(&[("w1", p1, true)]);
    let started = std::time::Instant::now();
    let (code, r, err) = w.submit("slow", "tts", "TTS_RENDER_CHUNKS", json!({"text": "Hello there."}), &[]);
    assert_ne!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "w1", "{r}\n{err}");
    assert_eq!(r["error"]["code"], "TIMEOUT", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("timeout_s"), "{r}");
    assert!(started.elapsed() < std::time::Duration::from_secs(25));
}
