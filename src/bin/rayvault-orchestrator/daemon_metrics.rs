//! The daemon's `GET /metrics`: the controller's counters
//! ([`rayvault::metrics::controller`]), each node's state and jobs in
//! flight, and every worker's own metrics collected at scrape time through
//! its signed `GET /metrics` (all at once, each bounded by
//! `controller.probe_timeout_s`) with a `node` label added, so that one
//! scrape on the controller sees the whole cluster.
//!
//! The route is not signed (see [`crate::daemon`]'s `UNSIGNED_ROUTES`): the
//! API listens on loopback only, so anyone logged in on the controller's
//! machine can read it, and nothing in it is a secret: label values are
//! step names, states, node ids and fixed words.

use actix::Addr;
use actix_web::{web, HttpResponse};
use rayvault::actors::messages::{Compat, GetNodes, NodeHealth, NodeSnapshot};
use rayvault::actors::node_probe::{NodeDirectory, NodeProbe};
use rayvault::auth::Keyring;
use rayvault::client::WorkerClient;
use rayvault::config::Settings;
use rayvault::controller_store::ControllerStore;
use rayvault::metrics::{Exposition, NodeSample, NodeState, Reexport, CONTENT_TYPE, CONTROLLER_PREFIXES};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What a scrape needs: the node view, the job store and the key to sign
/// the requests to the workers with.
pub struct Scrape {
    pub settings: Arc<Settings>,
    /// None when no secret is set: workers are then not asked.
    pub keyring: Option<Arc<Keyring>>,
    pub probe: Addr<NodeProbe>,
    pub store: Arc<ControllerStore>,
    /// Ends not yet committed to the store: those jobs are no longer in flight.
    pub recording: Arc<crate::daemon::Recording>,
}

/// Registers `GET /metrics` with its state.
pub fn routes(cfg: &mut web::ServiceConfig, scrape: web::Data<Scrape>) {
    cfg.app_data(scrape).route("/metrics", web::get().to(metrics));
}

async fn metrics(s: web::Data<Scrape>) -> HttpResponse {
    let nodes = s.probe.send(GetNodes).await.unwrap_or_default();
    let (store, ending) = (s.store.clone(), s.recording.snapshot());
    let mut in_flight: HashMap<String, u64> = HashMap::new();
    if let Ok(Ok(jobs)) = web::block(move || store.unfinished()).await {
        for r in jobs.iter().filter(|j| !ending.contains_key(&j.spec.key())).filter_map(|j| j.remote.as_ref()) {
            *in_flight.entry(r.node_id.clone()).or_default() += 1;
        }
    }
    let texts = futures_util::future::join_all(nodes.iter().map(|n| scrape_node(&s, n))).await;
    let mut reexport = Reexport::default();
    let mut samples = Vec::with_capacity(nodes.len());
    for (n, text) in nodes.iter().zip(texts) {
        let asked = !matches!(n.health, NodeHealth::Disabled);
        if let Some(text) = &text {
            reexport.add("node", &n.node_id, text, "rayvault_", &CONTROLLER_PREFIXES);
        }
        samples.push(NodeSample {
            node_id: n.node_id.to_string(),
            state: state_of(&n.health),
            in_flight: in_flight.get(n.node_id.as_ref()).copied().unwrap_or(0),
            scraped: asked.then_some(text.is_some()),
        });
    }
    let mut out = Exposition::new();
    rayvault::metrics::controller().render(&mut out, &samples);
    out.reexport(&reexport);
    HttpResponse::Ok().content_type(CONTENT_TYPE).body(out.finish())
}

fn state_of(h: &NodeHealth) -> NodeState {
    match h {
        NodeHealth::Up => NodeState::Up,
        NodeHealth::Down(_) => NodeState::Down,
        NodeHealth::Degraded(_) => NodeState::Degraded,
        NodeHealth::Misconfigured(..) => NodeState::Misconfigured,
        NodeHealth::Disabled => NodeState::Disabled,
        NodeHealth::Unprobed => NodeState::Unprobed,
        NodeHealth::Draining(_) => NodeState::Draining,
    }
}

/// One worker's `/metrics` text, or None when it did not answer in time
/// (or is disabled, is a v0.5 worker without metrics, or no secret is set).
async fn scrape_node(s: &Scrape, node: &NodeSnapshot) -> Option<String> {
    if matches!(node.health, NodeHealth::Disabled) {
        return None;
    }
    let keyring = s.keyring.clone()?;
    let handle = s.probe.send(NodeDirectory { node_id: node.node_id.to_string() }).await.ok()??;
    let timeout = Duration::from_secs(s.settings.controller.probe_timeout_s.max(1));
    let http = rayvault::client::ClientPool::shared().http(&handle.config.node_id, &handle.config.base_url());
    let client = WorkerClient::new(&handle.config.base_url(), &handle.config.node_id, keyring).with_http(http).with_timeout(timeout);
    let client = match handle.compat {
        Compat::Current => client,
        Compat::CurrentPlainToken => client.with_plain_token(),
        Compat::LegacyHmacV05 | Compat::LegacyPlainToken => return None,
    };
    let call = client.send_raw(awc::http::Method::GET, "/metrics", bytes::Bytes::new());
    let raw = tokio::time::timeout(timeout, call).await.ok()?.ok()?;
    if raw.status == 401 {
        let code = raw.error_body().map(|e| e.code).unwrap_or_default();
        rayvault::metrics::controller().remote_auth_refusal(&code);
    }
    (raw.status == 200).then(|| String::from_utf8_lossy(&raw.body).into_owned())
}
