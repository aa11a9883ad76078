//! LocalRunner: runs steps on the controller itself, through the same step
//! library the workers use, with its own concurrency limit
//! (`controller.local_concurrency`). This is the documented fallback rule: "If worker
//! is unavailable, controller falls back to local execution."

use super::crash_guard::catch;
pub use super::messages::RunLocal;
use super::messages::Stop;
use crate::config::Settings;
use crate::error::StepError;
use crate::process::{ChildRegistry, ChildTracker};
use crate::steps::{self, StepContext, StepOutput};
use actix::prelude::*;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The LocalRunner actor.
pub struct LocalRunner {
    settings: Arc<Settings>,
    /// Bounds how many steps run on the controller at once, so that a burst
    /// of fallbacks cannot starve the machine that also owns the final render.
    slots: Arc<Semaphore>,
    /// Where the process groups of running steps' tools are recorded (the
    /// daemon's store), so that a daemon started after a crash kills them.
    children: Option<Arc<dyn ChildRegistry>>,
}

impl LocalRunner {
    pub fn new(settings: Arc<Settings>) -> Self {
        let n = settings.controller.local_concurrency.max(1);
        LocalRunner { settings, slots: Arc::new(Semaphore::new(n)), children: None }
    }

    /// Records the child process groups of local steps in `registry`.
    pub fn recording_children(mut self, registry: Option<Arc<dyn ChildRegistry>>) -> Self {
        self.children = registry;
        self
    }
}

impl Actor for LocalRunner {
    type Context = Context<Self>;
}

/// A restarted LocalRunner keeps its slots: steps in flight run in tasks of
/// their own (a `ResponseFuture`), so they are not dropped by a restart and
/// still hold and release their slot.
impl actix::Supervised for LocalRunner {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!("LocalRunner restarted");
    }
}

/// Stops the LocalRunner, which is then restarted (see [`Stop`]).
impl Handler<Stop> for LocalRunner {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Waits for a free slot, then runs the step under its timeout.
impl Handler<RunLocal> for LocalRunner {
    type Result = ResponseFuture<Result<StepOutput, StepError>>;

    fn handle(&mut self, msg: RunLocal, _: &mut Context<Self>) -> Self::Result {
        let slots = self.slots.clone();
        let settings = self.settings.clone();
        let children = self.children.clone();
        Box::pin(async move {
            let _permit = tokio::select! {
                p = slots.acquire_owned() => p.map_err(|_| StepError::new(crate::error::ErrorCode::Cancelled, "the controller is shutting down"))?,
                _ = msg.cancel.cancelled() => return Err(StepError::new(crate::error::ErrorCode::Cancelled, "cancelled before it started")),
            };
            msg.log.line("controller", &format!("running {} locally on the controller", msg.step));
            let log = match children {
                Some(registry) => msg.log.clone().tracking_children(ChildTracker::new(msg.job_key.clone(), registry)),
                None => msg.log.clone(),
            };
            let ctx = StepContext {
                job_id: msg.job_key.clone(),
                out_dir: msg.out_dir.clone(),
                log,
                cancel: msg.cancel.clone(),
                settings,
            };
            // A panic in a step would end this task silently and reach the
            // caller as a closed mailbox; caught, it is a failed step.
            let out = catch("LocalRunner", "running a step", steps::run_step(msg.step, &msg.payload, &ctx))
                .await
                .unwrap_or_else(|p| Err(StepError::new(crate::error::ErrorCode::Internal, p.to_string())));
            if msg.cancel.is_cancelled() {
                if let Ok(o) = &out {
                    // A step that finished just as it was cancelled still
                    // succeeded; keep its result rather than lying.
                    return Ok(o.clone());
                }
                return Err(StepError::new(crate::error::ErrorCode::Cancelled, "the job was cancelled"));
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::joblog::JobLog;
    use crate::steps::StepName;
    use tokio_util::sync::CancellationToken;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn a_step_timeout_is_reported_as_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::load_from(
            None,
            &env(&[
                ("RAYVAULT_STEPS__TTS_RENDER_CHUNKS__TIMEOUT_S", "1"),
                ("RAYVAULT_TTS__ENGINE", "command"),
                ("RAYVAULT_TTS__COMMAND_TEMPLATE", "python3 -c \"import time; time.sleep(30)\" {text_file} {out_wav}"),
            ]),
        )
        .unwrap();
        actix::System::new().block_on(async move {
            let runner = LocalRunner::new(Arc::new(settings)).start();
            let started = std::time::Instant::now();
            let err = runner
                .send(RunLocal {
                    job_key: "slow".into(),
                    step: StepName::TtsRenderChunks,
                    payload: serde_json::json!({"text": "Hello there."}),
                    out_dir: dir.path().join("slow"),
                    log: JobLog::open(&dir.path().join("slow.log")).unwrap(),
                    cancel: CancellationToken::new(),
                })
                .await
                .unwrap()
                .unwrap_err();
            assert_eq!(err.code, crate::error::ErrorCode::Timeout, "{err}");
            assert!(started.elapsed() < std::time::Duration::from_secs(20));
        });
    }

    #[test]
    fn jobs_wait_for_a_free_slot() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::load_from(
            None,
            &env(&[
                ("RAYVAULT_CONTROLLER__LOCAL_CONCURRENCY", "1"),
                ("RAYVAULT_TTS__ENGINE", "command"),
                ("RAYVAULT_TTS__COMMAND_TEMPLATE", "python3 -c \"import time; time.sleep(30)\" {text_file} {out_wav}"),
            ]),
        )
        .unwrap();
        actix::System::new().block_on(async move {
            let runner = LocalRunner::new(Arc::new(settings)).start();
            let job = |name: &str, cancel: &CancellationToken| RunLocal {
                job_key: name.into(),
                step: StepName::TtsRenderChunks,
                payload: serde_json::json!({"text": "Hello there."}),
                out_dir: dir.path().join(name),
                log: JobLog::open(&dir.path().join(format!("{name}.log"))).unwrap(),
                cancel: cancel.clone(),
            };
            let (first_cancel, second_cancel) = (CancellationToken::new(), CancellationToken::new());
            let first = runner.send(job("first", &first_cancel));
            let first = actix::spawn(first);
            // The first job holds the only slot; the second must wait for it.
            let second = runner.send(job("second", &second_cancel));
            let second = actix::spawn(second);
            let log = dir.path().join("first.log");
            let started = async {
                while !std::fs::read_to_string(&log).unwrap_or_default().contains("running TTS_RENDER_CHUNKS locally") {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(20), started).await.expect("the first job starts");
            second_cancel.cancel();
            let err = second.await.unwrap().unwrap().unwrap_err();
            assert_eq!(err.message, "cancelled before it started");
            first_cancel.cancel();
            let err = first.await.unwrap().unwrap().unwrap_err();
            assert_eq!(err.code, crate::error::ErrorCode::Cancelled, "{err}");
        });
    }
}
