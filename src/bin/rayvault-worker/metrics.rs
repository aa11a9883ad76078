//! `GET /metrics` (signed, like every route but `/health`): the worker's
//! counters from [`rayvault::metrics::worker`], with the gauges only known
//! at scrape time (jobs running and queued per step, free disk space).

use crate::handlers::Data;
use actix_web::{web, HttpResponse};
use rayvault::actors::executor::Load;
use rayvault::metrics::{Exposition, WorkerGauges, CONTENT_TYPE};

/// The worker's metrics in the Prometheus text format.
pub async fn metrics(st: Data) -> HttpResponse {
    let mut steps: Vec<_> = st.executors.iter().collect();
    steps.sort_by_key(|(s, _)| s.as_str());
    let mut load = Vec::with_capacity(steps.len());
    for (step, addr) in steps {
        // A restarting executor answers nothing; its step is left out of
        // this scrape rather than reported as idle.
        if let Ok((queued, running)) = addr.send(Load).await {
            load.push((step.as_str(), running as u64, queued as u64));
        }
    }
    let env = st.env.clone();
    let disk_free_bytes = web::block(move || env.paths.free_bytes()).await.ok().flatten();
    let mut out = Exposition::new();
    rayvault::metrics::worker().render(&mut out, &WorkerGauges { load, disk_free_bytes, store_commits: st.env.store.commit_stats() });
    HttpResponse::Ok().content_type(CONTENT_TYPE).body(out.finish())
}
