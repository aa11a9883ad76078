//! The lease monitor: stops the jobs whose submitter's lease has expired
//! (see `rayvault::lease` for the rule). Queued (or parked) jobs are
//! recorded `abandoned` at once; a running job is cancelled through its
//! executor, which kills its process tree and records it `abandoned` with
//! code `LEASE_EXPIRED`.

use crate::handlers::now_ms;
use crate::state::AppState;
use actix_web::web;
use rayvault::actors::executor::CancelRunning;
use rayvault::protocol::JobState;
use rayvault::steps::StepName;
use std::time::Duration;
use tracing::Instrument;

/// How often leases are checked: a small part of the shortest useful lease
/// (1 s), so a job is stopped well within the controller's safety margin.
const CHECK_EVERY: Duration = Duration::from_millis(100);

pub fn spawn_monitor(state: web::Data<AppState>) {
    actix_rt::spawn(
        async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for job_id in state.env.leases.expired_jobs() {
                    stop(&state, job_id).await;
                }
            }
        }
        .instrument(tracing::info_span!("lease_monitor")),
    );
}

/// Stops one job whose lease expired.
async fn stop(state: &AppState, job_id: String) {
    let store = state.env.store.clone();
    let id = job_id.clone();
    let rec = match web::block(move || store.get(&id)).await {
        Ok(Ok(Some(rec))) => rec,
        Ok(Ok(None)) => {
            state.env.leases.release(&job_id);
            return;
        }
        _ => return, // The store is failing: try again at the next tick.
    };
    match rec.state {
        JobState::Queued => {
            let store = state.env.store.clone();
            let id = job_id.clone();
            let message = "the controller's lease on this job expired before it started (the controller gave it up, or the link was cut); it will not run";
            if let Ok(Ok(Some(rec))) = web::block(move || store.abandon_queued(&id, message, now_ms())).await {
                rayvault::metrics::worker().record_job(&rec);
                tracing::warn!(job_id = %job_id, "lease expired: queued job abandoned");
                log_line(state, &job_id, message).await;
                state.env.leases.release(&job_id);
                state.env.notify_job(&job_id);
            }
        }
        JobState::Running => {
            // Repeated at every tick until the executor has recorded the end.
            if let Some(addr) = StepName::parse(&rec.step_name).ok().and_then(|s| state.executors.get(&s)) {
                if addr.send(CancelRunning { job_id: job_id.clone() }).await == Ok(true) {
                    tracing::warn!(job_id = %job_id, "lease expired: stopping the running job");
                }
            }
        }
        _ => state.env.leases.release(&job_id),
    }
}

/// Adds a line to the log of a job that ended while queued; a log still in
/// memory is then kept in the job's record.
async fn log_line(state: &AppState, job_id: &str, line: &str) {
    match state.env.live_log(job_id) {
        Some(log) => {
            log.line("worker", line);
            crate::handlers::keep_queued_log(state, job_id).await;
        }
        None => {
            if let Ok(log) = rayvault::joblog::JobLog::open(&state.env.paths.log_path(job_id)) {
                log.line("worker", line);
            }
        }
    }
}
