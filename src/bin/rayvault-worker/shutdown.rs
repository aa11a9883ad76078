//! Graceful shutdown, in one place: on Ctrl-C or SIGTERM new submissions are
//! refused (503), the executors stop starting queued jobs (those stay queued
//! in the store and run after the next start), running jobs get
//! `worker.shutdown_grace_s` to finish, and any still running afterwards are
//! recorded as failed with `INTERRUPTED` and cancelled (their process trees
//! killed). Then the HTTP server stops.

use crate::handlers::now_ms;
use crate::state::AppState;
use actix_web::dev::Server;
use actix_web::web;
use rayvault::actors::executor::{Drain, TakeRunning};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Resolves on Ctrl-C, or SIGTERM on Unix (Ctrl-Break/close on Windows).
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(windows)]
    {
        use tokio::signal::windows;
        match (windows::ctrl_break(), windows::ctrl_close()) {
            (Ok(mut brk), Ok(mut close)) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = brk.recv() => {}
                    _ = close.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Serves until a signal, then shuts down as the module doc says.
pub async fn run_until_signal(server: Server, state: web::Data<AppState>, grace: Duration) -> anyhow::Result<()> {
    let handle = server.handle();
    let mut serving = actix_rt::spawn(server);
    tokio::select! {
        ended = &mut serving => {
            return match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::anyhow!("the HTTP server failed: {e}")),
                Err(e) => Err(anyhow::anyhow!("the HTTP server task failed: {e}")),
            };
        }
        _ = signal() => {}
    }
    tracing::info!(grace_s = grace.as_secs(), "shutdown requested: refusing new jobs, waiting for running ones");
    state.shutting_down.store(true, Ordering::SeqCst);
    let mut counts = Vec::new();
    for addr in state.executors.values() {
        if let Ok(rx) = addr.send(Drain).await {
            counts.push(rx);
        }
    }
    let all_idle = |mut rxs: Vec<tokio::sync::watch::Receiver<usize>>| async move {
        for rx in rxs.iter_mut() {
            let _ = rx.wait_for(|n| *n == 0).await;
        }
    };
    if tokio::time::timeout(grace, all_idle(counts.clone())).await.is_err() {
        interrupt_running(&state).await;
        // Give cancelled steps a moment to kill their process trees.
        let _ = tokio::time::timeout(Duration::from_secs(5), all_idle(counts)).await;
    }
    handle.stop(true).await;
    tracing::info!("rayvault-worker stopped");
    Ok(())
}

/// Records every still-running job as interrupted, then cancels it. The
/// record comes first, so the step's own (cancelled) outcome cannot
/// overwrite it.
async fn interrupt_running(state: &web::Data<AppState>) {
    for addr in state.executors.values() {
        let Ok(running) = addr.send(TakeRunning).await else { continue };
        for (job_id, token) in running {
            let store = state.env.store.clone();
            let log_path = state.env.paths.log_path(&job_id);
            let live = state.env.live_log(&job_id);
            let id = job_id.clone();
            let recorded = web::block(move || {
                let line = "worker shut down before the job finished; marked failed with code INTERRUPTED";
                match &live {
                    Some(log) => log.line("worker", line),
                    None => {
                        if let Ok(log) = rayvault::joblog::JobLog::open(&log_path) {
                            log.line("worker", line);
                        }
                    }
                }
                store.interrupt(&id, "the worker shut down before this job finished; submit it again to re-run it", now_ms())?;
                // A log still in memory is kept in the job's record.
                match live.and_then(|l| l.in_memory()) {
                    Some(bytes) => store.keep_log(&id, String::from_utf8_lossy(&bytes).into_owned()),
                    None => Ok(()),
                }
            })
            .await;
            if !matches!(recorded, Ok(Ok(()))) {
                tracing::error!(%job_id, "could not record the job as interrupted");
            }
            token.cancel();
            tracing::warn!(%job_id, "job interrupted by shutdown");
        }
    }
    state.env.notify();
}
