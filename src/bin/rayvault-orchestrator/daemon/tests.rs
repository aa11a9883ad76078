//! The daemon's tests that need its actors running: a job dropped when the
//! JobRunner restarts under it is picked up again and ends.

use super::dispatch::dispatch;
use super::*;
use rayvault::actors::messages::Stop;
use rayvault::controller_store::{Phase, StoredJob};
use rayvault::protocol::now_ms;
use rayvault::receipt::{JobSpec, JobStatus};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Waits (without blocking the arbiter) until `cond` holds, or panics.
async fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_job_dropped_by_a_job_runner_restart_is_picked_up_again() {
    let dir = tempfile::tempdir().unwrap();
    // A speech engine that hangs on its first run (until it is killed)
    // and renders a short tone on the next.
    let engine = dir.path().join("engine.py");
    let marker = dir.path().join("first-run");
    std::fs::write(
        &engine,
        format!(
            "import math, os, sys, time, wave\n\
             if not os.path.exists({marker:?}):\n    open({marker:?}, 'w').close()\n    time.sleep(60)\n\
             w = wave.open(sys.argv[2], 'wb'); w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050)\n\
             w.writeframes(b''.join(int(8000 * math.sin(i * 0.125)).to_bytes(2, 'little', signed=True) for i in range(11025)))\n\
             w.close()\n",
            marker = marker.to_str().unwrap()
        ),
    )
    .unwrap();
    let env: Vec<(String, String)> = [
        ("RAYVAULT_STATE_DIR", dir.path().join("state").to_str().unwrap().to_string()),
        ("RAYVAULT_TTS__ENGINE", "command".to_string()),
        ("RAYVAULT_TTS__COMMAND_TEMPLATE", format!("python3 {} {{text_file}} {{out_wav}}", engine.display())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let settings = Arc::new(Settings::load_from(None, &env).unwrap());
    std::fs::create_dir_all(settings.cluster_dir()).unwrap();
    let store = Arc::new(ControllerStore::open(&ControllerStore::default_path(&settings.cluster_dir())).unwrap().keeping_receipts());
    let keyring = Keyring::from_secrets("daemon-test-secret-0123456789abcdef", None).unwrap();
    actix::System::new().block_on(async move {
        let controller = ControllerSupervisor::start(ControllerOptions { settings: settings.clone(), keyring: None, store: Some(store.clone()), progress: None });
        let state = web::Data::new(ApiState {
            settings: settings.clone(),
            verifier: Verifier::new(keyring, DAEMON_ID.into(), 300, false),
            store: store.clone(),
            controller: controller.clone(),
            live: Arc::new(Live::default()),
        });
        let spec = JobSpec {
            run_id: "r".into(),
            job_id: "tts".into(),
            step_name: "TTS_RENDER_CHUNKS".into(),
            payload: serde_json::json!({"text": "Hello there."}),
            requirements: Default::default(),
            no_fallback: false,
            fallback: None,
            timeout_s: None,
        };
        let submitted_ms = now_ms();
        store.put(&StoredJob { spec: spec.clone(), phase: Phase::Queued, submitted_at_ms: submitted_ms, remote: None, receipt: None }).unwrap();
        dispatch(state.clone(), spec, None, false, UNIX_EPOCH + Duration::from_millis(submitted_ms));
        wait_for("the first run to start", 20, || marker.exists()).await;
        controller.runner.send(Stop).await.unwrap();
        let finished = || store.get("r/tts").unwrap().is_some_and(|j| j.phase == Phase::Finished);
        wait_for("the job to end after the restart", 30, finished).await;
        let job = store.get("r/tts").unwrap().unwrap();
        let receipt = job.receipt.unwrap();
        assert_eq!(receipt.status, JobStatus::Succeeded, "{:?}", receipt.error);
        assert_eq!(receipt.executed_on.as_deref(), Some("local"));
    });
}
