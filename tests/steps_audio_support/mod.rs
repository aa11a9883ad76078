//! Helpers shared by the audio step tests (`steps_audio.rs` and
//! `steps_audio_tts.rs`): the default settings, a step context in a test's
//! folder, AUDIO_POSTCHECK through `run_step`, and a number from a result.

use rayvault::config::Settings;
use rayvault::error::StepError;
use rayvault::joblog::JobLog;
use rayvault::steps::{run_step, StepContext, StepName, StepOutput};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub(crate) fn settings() -> Settings {
    Settings::load_from(None, &[]).expect("default settings")
}

pub(crate) fn context(dir: &Path, settings: Settings) -> StepContext {
    StepContext {
        job_id: "audio-test".into(),
        out_dir: dir.join("out"),
        log: JobLog::open(&dir.join("worker.log")).expect("job log"),
        cancel: CancellationToken::new(),
        settings: Arc::new(settings),
    }
}

pub(crate) async fn postcheck(dir: &Path, payload: Value) -> Result<StepOutput, StepError> {
    run_step(StepName::AudioPostcheck, &payload, &context(dir, settings())).await
}

pub(crate) fn num(entry: &Value, key: &str) -> f64 {
    entry[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number in {entry}"))
}
