//! NodeProbe: knows the nodes of `nodes.json` and how each one is doing.
//!
//! It re-reads `nodes.json` when the file changes (checked every second, so
//! a running daemon notices edits without a restart), probes every enabled
//! node's `/health` and `/caps` on `controller.probe_interval_s` and on
//! demand, caches the caps with their age, marks nodes up or down with a
//! human-readable reason, and detects whether a node speaks the current
//! contract or the legacy v0.5 one.

use super::crash_guard::catch;
pub use super::messages::NodeDirectory;
use super::messages::{Compat, DrainedBy, GetNodes, NodeCaps, NodeHealth, NodeLost, NodeSnapshot, ProbeFailure, ProbeNow, ReportedLoad, StepReport, Stop};
use crate::client::probe::{self, ProbeResult};
use crate::auth::Keyring;
use crate::config::Settings;
pub use crate::nodes::NodeHandle;
use crate::nodes::{self, NodeConfig};
use crate::protocol;
use crate::steps::StepName;
use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Describes every node for `health`, `caps` and `status`.
#[derive(Message)]
#[rtype(result = "NodesReport")]
pub struct DescribeNodes;

/// What `health`, `caps` and `status` print about the nodes.
#[derive(Debug, Clone, Serialize)]
pub struct NodesReport {
    pub nodes_file: String,
    /// Problem with nodes.json (None when fine or absent).
    pub nodes_error: Option<String>,
    pub nodes: Vec<NodeReport>,
}

/// One node's state, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node_id: String,
    pub host: String,
    pub port: u16,
    pub enabled: bool,
    /// `"drain": true` in nodes.json.
    pub drain: bool,
    /// `up`, `down`, `disabled`, `unprobed`, `misconfigured`, `degraded`,
    /// `draining`, or `drained` (draining with no job of this controller
    /// left there; see [`NodesReport::settle_drains`]).
    pub status: String,
    /// True when `status` is `draining` (for [`NodesReport::settle_drains`]).
    #[serde(skip)]
    pub draining: bool,
    pub reason: Option<String>,
    pub contract: Option<String>,
    pub compat_mode: Option<String>,
    pub health: Option<Value>,
    /// The node's `/caps` (with `_compat_mode` added for a legacy node).
    pub caps: Option<Value>,
    pub caps_age_s: Option<f64>,
    /// The normalised `os` and `ram_gb` the scheduler uses (None until probed).
    pub os: Option<String>,
    pub ram_gb: Option<f64>,
}

/// One node's probe, run on the actor's arbiter.
/// A probe in flight; it answers with the moment it started and its result.
type ProbeFuture = std::pin::Pin<Box<dyn std::future::Future<Output = (Instant, ProbeResult)>>>;

struct NodeEntry {
    config: NodeConfig,
    health: NodeHealth,
    caps: Option<NodeCaps>,
    raw_health: Option<Value>,
    raw_caps: Option<Value>,
    /// The node's own load at the last good probe.
    reported: Option<Arc<ReportedLoad>>,
    probed_at: Option<Instant>,
}

impl NodeEntry {
    fn new(config: NodeConfig) -> Self {
        let health = if config.enabled { NodeHealth::Unprobed } else { NodeHealth::Disabled };
        NodeEntry { config, health, caps: None, raw_health: None, raw_caps: None, reported: None, probed_at: None }
    }

    /// The health the scheduler sees: an enabled node drained in nodes.json
    /// is draining whatever its probe said (it is still probed, so that
    /// `status` shows its health and it is ready the moment it is undrained).
    fn effective_health(&self) -> NodeHealth {
        if self.config.enabled && self.config.drain {
            NodeHealth::Draining(DrainedBy::NodesJson)
        } else {
            self.health.clone()
        }
    }
}

/// The NodeProbe actor.
pub struct NodeProbe {
    settings: Arc<Settings>,
    keyring: Option<Arc<Keyring>>,
    path: PathBuf,
    /// The file's modification time and length when last read, to notice edits.
    file_stamp: Option<(SystemTime, u64)>,
    file_error: Option<String>,
    entries: Vec<NodeEntry>,
    /// The latest probe started of each node, until it ends: what a
    /// [`ProbeNow`] with `since` may wait for instead of probing again.
    probing: std::collections::HashMap<String, Probing>,
}

/// A probe in flight, and the [`ProbeNow`] requests waiting for it.
struct Probing {
    config: NodeConfig,
    started: Instant,
    waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// What a look at `nodes.json` found: its stamp and, when it changed, its
/// contents (or why they are unusable).
struct FileRead {
    stamp: Option<(SystemTime, u64)>,
    loaded: Result<Option<Vec<NodeConfig>>, nodes::NodesError>,
}

/// Stats `path` and reads it only if its stamp differs from `last`.
/// Blocking: run it with `spawn_blocking` from the actor.
fn read_if_changed(path: &Path, last: Option<(SystemTime, u64)>) -> Option<FileRead> {
    let stamp = std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
    if stamp == last {
        return None;
    }
    Some(FileRead { stamp, loaded: nodes::load(path) })
}

impl NodeProbe {
    /// Reads `nodes.json` once (before the actor runs, so reading here
    /// blocks no actor); a malformed file leaves no nodes and the error is
    /// reported by `health`, `status` and the daemon log.
    pub fn new(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>) -> Self {
        let path = nodes::nodes_path(&settings.cluster_dir());
        let mut p = NodeProbe { settings, keyring, path, file_stamp: None, file_error: None, entries: Vec::new(), probing: Default::default() };
        if let Some(read) = read_if_changed(&p.path, None) {
            p.apply_file(read);
        }
        p
    }

    /// A future that looks at the file off the actor thread.
    fn look_at_file(&self) -> impl std::future::Future<Output = Option<FileRead>> {
        let (path, last) = (self.path.clone(), self.file_stamp);
        async move { tokio::task::spawn_blocking(move || read_if_changed(&path, last)).await.ok().flatten() }
    }

    /// Applies a changed file; true when the node list changed.
    fn apply_file(&mut self, read: FileRead) -> bool {
        self.file_stamp = read.stamp;
        let loaded = match read.loaded {
            Ok(v) => {
                self.file_error = None;
                v.unwrap_or_default()
            }
            Err(e) => {
                tracing::error!("{e}");
                self.file_error = Some(e.to_string());
                // Keep the last good list: a half-saved edit must not take
                // every worker away from running jobs.
                return false;
            }
        };
        let mut next = Vec::with_capacity(loaded.len());
        for cfg in loaded {
            // A node whose address and switch are unchanged keeps its probe
            // state (draining or undraining it changes neither); anything
            // else starts over.
            let same = |c: &NodeConfig| NodeConfig { drain: cfg.drain, ..c.clone() } == cfg;
            match self.entries.iter().position(|e| same(&e.config)) {
                Some(i) => {
                    let mut entry = self.entries.swap_remove(i);
                    entry.config.drain = cfg.drain;
                    next.push(entry);
                }
                None => next.push(NodeEntry::new(cfg)),
            }
        }
        let changed = !self.entries.is_empty() || next.iter().any(|e| e.probed_at.is_none());
        self.entries = next;
        tracing::info!(nodes = self.entries.len(), "nodes.json loaded from {}", self.path.display());
        changed
    }

    fn snapshot(&self) -> Vec<NodeSnapshot> {
        self.entries
            .iter()
            .map(|e| NodeSnapshot {
                node_id: e.config.node_id.as_str().into(),
                health: e.effective_health(),
                caps: e.caps.clone(),
                reported: e.reported.clone(),
                load: Default::default(),
                probed_at: e.probed_at,
            })
            .collect()
    }

    /// A future probing the given enabled nodes; results are applied by the
    /// caller on the actor.
    fn probe_futures(&self, only: Option<&str>) -> Vec<(NodeConfig, ProbeFuture)> {
        let timeout = Duration::from_secs(self.settings.controller.probe_timeout_s.max(1));
        let allow_plain = self.settings.controller.auth_mode == crate::config::AuthMode::AllowPlain;
        self.entries
            .iter()
            .filter(|e| e.config.enabled && only.map_or(true, |id| id == e.config.node_id))
            .map(|e| {
                let cfg = e.config.clone();
                let probe = probe::probe(cfg.clone(), self.keyring.clone(), timeout, allow_plain);
                // A probe parses whatever a node answers; should that code
                // panic on a bug, the node is reported down with the reason
                // instead of the panic taking the NodeProbe down with it.
                let started = Instant::now();
                let fut = async move {
                    let r = catch("NodeProbe", "probing a node", probe).await.unwrap_or_else(|p| ProbeResult {
                        health: None,
                        outcome: Err(ProbeFailure::Down(format!("probing it hit a controller bug ({})", p.message))),
                    });
                    (started, r)
                };
                (cfg, Box::pin(fut) as ProbeFuture)
            })
            .collect()
    }

    /// Records a probe's result. Probes overlap (a slow one may still run
    /// when the next starts), so a result older than the one recorded is
    /// dropped: it would replace a node's current load with a past one.
    /// `probed_at` is when the probe started: the node's figures describe it
    /// no earlier than that.
    fn apply(&mut self, cfg: &NodeConfig, (started, r): (Instant, ProbeResult)) {
        let Some(e) = self.entries.iter_mut().find(|e| NodeConfig { drain: cfg.drain, ..e.config.clone() } == *cfg) else { return };
        if e.probed_at.is_some_and(|last| last > started) {
            return;
        }
        e.probed_at = Some(started);
        e.raw_health = r.health;
        e.reported = None;
        match r.outcome {
            Ok((caps, raw)) => {
                if e.health != NodeHealth::Up {
                    tracing::info!(node = %cfg.node_id, "node is up");
                }
                e.health = NodeHealth::Up;
                e.reported = Some(Arc::new(reported_load(e.raw_health.as_ref(), &raw)));
                e.caps = Some(caps);
                e.raw_caps = Some(raw);
            }
            Err(failure) => {
                let health = NodeHealth::from(failure);
                if e.health != health {
                    tracing::warn!(node = %cfg.node_id, "node is {}: {}", health.word(), failure_text(&health));
                }
                e.health = health;
            }
        }
    }

    fn probe_all(&mut self, ctx: &mut Context<Self>) {
        for (cfg, fut) in self.probe_futures(None) {
            self.spawn_probe(ctx, cfg, fut);
        }
    }

    /// Runs one probe on the actor: records it as the node's latest in
    /// flight, and when it ends applies its result and answers whoever
    /// waits for it (and for any earlier probe of the node it replaced).
    fn spawn_probe(&mut self, ctx: &mut Context<Self>, cfg: NodeConfig, fut: ProbeFuture) -> tokio::sync::oneshot::Receiver<()> {
        let started = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut waiters = vec![tx];
        if let Some(earlier) = self.probing.remove(&cfg.node_id) {
            waiters.extend(earlier.waiters);
        }
        self.probing.insert(cfg.node_id.clone(), Probing { config: cfg.clone(), started, waiters });
        ctx.spawn(fut.into_actor(self).map(move |r, act, _| {
            act.apply(&cfg, r);
            // Unless a later probe of the node replaced this one (it took
            // over the waiters).
            if act.probing.get(&cfg.node_id).is_some_and(|p| p.started == started) {
                for w in act.probing.remove(&cfg.node_id).into_iter().flat_map(|p| p.waiters) {
                    let _ = w.send(());
                }
            }
        }));
        rx
    }

    /// What a probe of `cfg` that started at or after `since` leaves to
    /// wait for: nothing when one has ended already (its result is
    /// recorded), the one in flight otherwise; `None` when there is none.
    fn join_probe(&mut self, cfg: &NodeConfig, since: Instant) -> Option<Option<tokio::sync::oneshot::Receiver<()>>> {
        if let Some(p) = self.probing.get_mut(&cfg.node_id).filter(|p| p.started >= since && p.config == *cfg) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            p.waiters.push(tx);
            return Some(Some(rx));
        }
        let recorded = self.entries.iter().any(|e| e.config == *cfg && e.probed_at.is_some_and(|at| at >= since));
        recorded.then_some(None)
    }
}

impl Actor for NodeProbe {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.probe_all(ctx);
        let every = Duration::from_secs(self.settings.controller.probe_interval_s.max(1));
        ctx.run_interval(every, |act, ctx| act.probe_all(ctx));
        // Edits to nodes.json are noticed within a second; only new or
        // changed nodes need a probe, but probing all is cheap and simple.
        ctx.run_interval(Duration::from_secs(1), |act, ctx| {
            ctx.spawn(act.look_at_file().into_actor(act).map(|read, act, ctx| {
                if read.is_some_and(|r| act.apply_file(r)) {
                    act.probe_all(ctx);
                }
            }));
        });
    }
}

/// A restarted NodeProbe keeps the nodes it knows and their last probe
/// results (a job placed meanwhile still sees them); `started` runs again,
/// which re-arms the timers and probes every node at once. Probes and
/// `ProbeNow` requests in flight were dropped by the restart: their callers
/// get an error.
impl actix::Supervised for NodeProbe {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!("NodeProbe restarted");
        // Their futures are gone: nothing could join them any more.
        self.probing.clear();
    }
}

/// Stops the NodeProbe, which is then restarted (see [`Stop`]).
impl Handler<Stop> for NodeProbe {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Answers with the current view of every node.
impl Handler<GetNodes> for NodeProbe {
    type Result = MessageResult<GetNodes>;
    fn handle(&mut self, _: GetNodes, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.snapshot())
    }
}

/// Probes now (all nodes or one) and answers when every probe has finished
/// and its result is recorded. A node whose probe in flight started at or
/// after `since` is not probed again: the request waits for that probe.
impl Handler<ProbeNow> for NodeProbe {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: ProbeNow, _: &mut Context<Self>) -> Self::Result {
        Box::pin(self.look_at_file().into_actor(self).then(move |read, act, ctx| {
            if let Some(r) = read {
                act.apply_file(r);
            }
            let mut waits = Vec::new();
            for (cfg, fut) in act.probe_futures(msg.node_id.as_deref()) {
                // A future not spawned is dropped unpolled: nothing is sent.
                match msg.since.and_then(|since| act.join_probe(&cfg, since)) {
                    Some(Some(wait)) => waits.push(wait),
                    Some(None) => {}
                    None => waits.push(act.spawn_probe(ctx, cfg, fut)),
                }
            }
            // A wait whose probe was dropped (a restart) ends too.
            let all = futures_util::future::join_all(waits);
            async move {
                all.await;
            }
            .into_actor(act)
        }))
    }
}

/// Marks a node down after it failed mid-job, until the next good probe.
impl Handler<NodeLost> for NodeProbe {
    type Result = ();
    fn handle(&mut self, msg: NodeLost, _: &mut Context<Self>) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.config.node_id == msg.node_id) {
            e.health = NodeHealth::Down(msg.reason.into());
        }
    }
}

/// A node's own load from its `/health` `load` (jobs in flight and
/// concurrency per step, [`protocol::StepLoad`]), with the concurrency of
/// its `/caps` for a worker whose `/health` has no `load`. A malformed
/// `load` counts as absent.
fn reported_load(health: Option<&Value>, caps: &Value) -> ReportedLoad {
    fn field<T: serde::de::DeserializeOwned>(v: Option<&Value>, key: &str) -> BTreeMap<String, T> {
        v.and_then(|v| v.get(key)).and_then(|m| serde_json::from_value(m.clone()).ok()).unwrap_or_default()
    }
    let load: BTreeMap<String, protocol::StepLoad> = field(health, "load");
    let concurrency: BTreeMap<String, u64> = field(Some(caps), "concurrency");
    let count = |n: u64| n.min(u32::MAX as u64) as u32;
    let steps = StepName::ALL
        .iter()
        .filter_map(|&step| {
            let here = load.get(step.as_str());
            let report = StepReport {
                in_flight: here.map(|l| count(l.running.saturating_add(l.queued))),
                concurrency: here.map(|l| l.concurrency).or_else(|| concurrency.get(step.as_str()).copied()).map(count),
            };
            (report != StepReport::default()).then_some((step, report))
        })
        .collect();
    ReportedLoad { steps }
}

/// The reason carried by a down, misconfigured or degraded node.
fn failure_text(h: &NodeHealth) -> &str {
    match h {
        NodeHealth::Down(r) | NodeHealth::Misconfigured(_, r) | NodeHealth::Degraded(r) => r,
        NodeHealth::Draining(by) => by.reason(),
        _ => "",
    }
}

/// Answers with how to reach one node.
impl Handler<NodeDirectory> for NodeProbe {
    type Result = Option<NodeHandle>;
    fn handle(&mut self, msg: NodeDirectory, _: &mut Context<Self>) -> Self::Result {
        let e = self.entries.iter().find(|e| e.config.node_id == msg.node_id)?;
        Some(NodeHandle {
            config: e.config.clone(),
            compat: e.caps.as_ref().map_or(Compat::Current, |c| c.compat),
            probed: e.caps.is_some(),
            inline_blob_bytes: e.caps.as_ref().map_or(0, |c| c.inline_blob_bytes),
            submit_stream: e.caps.as_ref().is_some_and(|c| c.submit_stream),
        })
    }
}

/// Answers with a printable report of every node.
impl Handler<DescribeNodes> for NodeProbe {
    type Result = MessageResult<DescribeNodes>;
    fn handle(&mut self, _: DescribeNodes, _: &mut Context<Self>) -> Self::Result {
        let nodes = self
            .entries
            .iter()
            .map(|e| {
                let compat = e.caps.as_ref().map(|c| c.compat);
                let mut caps = e.raw_caps.clone();
                if let (Some(Value::Object(m)), Some(mode)) = (&mut caps, compat.and_then(Compat::mode_name)) {
                    m.insert("_compat_mode".into(), Value::String(mode.into()));
                }
                let health = e.effective_health();
                let (status, reason) = match &health {
                    NodeHealth::Up => ("up", None),
                    NodeHealth::Disabled => ("disabled", Some("disabled in nodes.json".to_string())),
                    NodeHealth::Unprobed => ("unprobed", None),
                    h => (h.word(), Some(failure_text(h).to_string())),
                };
                NodeReport {
                    node_id: e.config.node_id.clone(),
                    host: e.config.host.clone(),
                    port: e.config.port,
                    enabled: e.config.enabled,
                    drain: e.config.drain,
                    status: status.into(),
                    draining: matches!(health, NodeHealth::Draining(_)),
                    reason,
                    contract: e.raw_health.as_ref().and_then(|h| h.get("contract")).and_then(Value::as_str).map(str::to_string).or_else(|| compat.filter(|c| c.is_legacy()).map(|_| "v0.5".to_string())),
                    compat_mode: compat.and_then(Compat::mode_name).map(str::to_string),
                    health: e.raw_health.clone(),
                    caps,
                    caps_age_s: e.probed_at.filter(|_| e.raw_caps.is_some()).map(|t| (t.elapsed().as_secs_f64() * 10.0).round() / 10.0),
                    os: e.caps.as_ref().map(|c| c.os.clone()),
                    ram_gb: e.caps.as_ref().map(|c| c.ram_gb),
                }
            })
            .collect();
        MessageResult(NodesReport { nodes_file: self.path.display().to_string(), nodes_error: self.file_error.clone(), nodes })
    }
}

impl NodesReport {
    /// Turns `draining` into `drained` for each node where no job of this
    /// controller is in flight any more (`in_flight` counts them per node
    /// id), and says how many still run on the others.
    pub fn settle_drains(&mut self, in_flight: impl Fn(&str) -> usize) {
        for n in self.nodes.iter_mut().filter(|n| n.draining) {
            let reason = n.reason.take().unwrap_or_default();
            match in_flight(&n.node_id) {
                0 => {
                    n.status = "drained".into();
                    n.reason = Some(format!("{reason}; no job of this controller runs there"));
                }
                k => n.reason = Some(format!("{reason}; {k} job(s) still running there")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A node that answers every request 503 and counts its `/health`
    /// requests; a probe of it fails at once, after one request.
    fn counting_node() -> (u16, Arc<AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let health = Arc::new(AtomicUsize::new(0));
        let count = health.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                if buf[..n].starts_with(b"GET /health") {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        (port, health)
    }

    #[actix_rt::test]
    async fn a_probe_now_since_the_start_waits_for_the_start_up_probe() {
        let dir = tempfile::tempdir().unwrap();
        let env = [("RAYVAULT_STATE_DIR".to_string(), dir.path().to_str().unwrap().to_string())];
        let settings = Arc::new(Settings::load_from(None, &env).unwrap());
        let (port, health) = counting_node();
        let cluster = settings.cluster_dir();
        std::fs::create_dir_all(&cluster).unwrap();
        let nodes = json!({"nodes": [{"node_id": "n1", "host": "127.0.0.1", "port": port, "enabled": true}]});
        std::fs::write(nodes::nodes_path(&cluster), nodes.to_string()).unwrap();
        let since = Instant::now();
        let keyring = Arc::new(Keyring::from_secrets("probe-test-secret", None).unwrap());
        let probe = NodeProbe::new(settings, Some(keyring)).start();
        probe.send(ProbeNow { node_id: None, since: Some(since) }).await.unwrap();
        assert_eq!(health.load(Ordering::SeqCst), 1, "one probe: the start-up one, waited for");
        let nodes = probe.send(GetNodes).await.unwrap();
        assert!(nodes[0].probed_at.is_some_and(|at| at >= since), "its result is recorded before the answer");
        // Without `since` (after a node failed mid-job), a new probe.
        probe.send(ProbeNow { node_id: Some("n1".into()), since: None }).await.unwrap();
        assert_eq!(health.load(Ordering::SeqCst), 2);
        // With `since` after every probe in flight, a new one too.
        probe.send(ProbeNow { node_id: None, since: Some(Instant::now()) }).await.unwrap();
        assert_eq!(health.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn reported_load_reads_health_and_falls_back_to_caps_concurrency() {
        let health = json!({"load": {"FFMPEG_PROBE": {"running": 2, "queued": 1, "concurrency": 2}}});
        let caps = json!({"concurrency": {"FFMPEG_PROBE": 4, "FRAME_SAMPLING": 3}});
        let r = reported_load(Some(&health), &caps);
        assert_eq!(r.get(StepName::FfmpegProbe), StepReport { in_flight: Some(3), concurrency: Some(2) });
        assert_eq!(r.get(StepName::FrameSampling), StepReport { in_flight: None, concurrency: Some(3) });
        assert_eq!(r.get(StepName::AudioPostcheck), StepReport::default());
        // A worker older than `load`, or a malformed one: only the caps'
        // concurrency is known.
        for health in [json!({"status": "ok"}), json!({"load": {"FFMPEG_PROBE": {"running": "x"}}})] {
            let r = reported_load(Some(&health), &caps);
            assert_eq!(r.get(StepName::FfmpegProbe), StepReport { in_flight: None, concurrency: Some(4) });
        }
    }
}
