//! The web dashboard, served by the daemon on its loopback API port, and
//! (in `command`) the `dashboard` subcommand that logs a browser in.
//!
//! Routes (all but the first authenticated by a browser session instead of
//! the API's HMAC signature; see `sessions` for the login):
//! - `POST /v1/dashboard/login` (signed like the rest of `/v1`): a one-time
//!   login token, valid for 60 s;
//! - `GET /login?t=<token>`: burns the token, sets the session cookie and
//!   redirects (303) to `/`;
//! - `GET /` (the page, with the session's CSRF token in a meta tag),
//!   `GET /static/{app.js,style.css,favicon.svg}`;
//! - `GET /api/state` (nodes and jobs), `GET /api/jobs/{run_id}/{job_id}`
//!   (one job with its receipt and files), `GET
//!   /api/jobs/{run_id}/{job_id}/log?offset=N` (its log from byte N);
//! - `POST /api/jobs/{run_id}/{job_id}/cancel`, `POST
//!   /api/nodes/{node_id}/drain`, `POST /logout`: these also need the
//!   `X-CSRF-Token` header;
//! - `GET /files/{run_id}/{job_id}/{name}`: a file of the receipt folder.
//!
//! The page is plain HTML, CSS and JavaScript from the repository's
//! `dashboard/` folder, compiled into the binary. Every answer carries a
//! Content-Security-Policy that allows only same-origin resources (so no
//! inline script runs), `nosniff`, and refuses framing.

mod command;
mod drain;
mod files;
mod sessions;

pub use command::{command, DashboardArgs};

use crate::daemon::DAEMON_ID;
use actix_web::http::header;
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpRequest, HttpResponse};
use anyhow::anyhow;
use dashmap::DashMap;
use rayvault::actors::job_runner::CancelJob;
use rayvault::actors::node_probe::DescribeNodes;
use rayvault::actors::supervisor::Controller;
use rayvault::auth::{AuthError, Keyring, Verifier};
use rayvault::config::Settings;
use rayvault::controller_store::{ControllerStore, Phase, StoredJob};
use rayvault::protocol;
use rayvault::receipt::{receipt_dir, LOG_FILE};
use serde::Deserialize;
use serde_json::{json, Value};
use sessions::Sessions;
use std::sync::Arc;
use std::time::Instant;

/// The name of the session cookie.
const SESSION_COOKIE: &str = "rayvault_session";

/// The header that carries the CSRF token on state-changing requests.
const CSRF_HEADER: &str = "x-csrf-token";

/// The policy every dashboard answer carries: same-origin resources only,
/// no inline script or style, no plugins, never inside a frame.
const CSP: &str = "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The jobs `/api/state` lists, newest first.
const MAX_LISTED_JOBS: usize = 200;

/// The most log bytes one `/api/.../log` answer carries.
const MAX_LOG_CHUNK: u64 = 256 * 1024;

const INDEX_HTML: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard/index.html"));
const LOGIN_HTML: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard/login.html"));
const APP_JS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard/app.js"));
const STYLE_CSS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard/style.css"));
const FAVICON_SVG: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard/favicon.svg"));

/// True for the paths the dashboard serves with a browser session rather
/// than the API's signature; the daemon's signature precheck lets them
/// through. Everything under `/v1/` stays signed.
pub fn is_session_path(path: &str) -> bool {
    matches!(path, "/" | "/login" | "/logout") || ["/api/", "/static/", "/files/"].iter().any(|p| path.starts_with(p))
}

/// What the dashboard's routes share.
pub struct Dashboard {
    settings: Arc<Settings>,
    store: Arc<ControllerStore>,
    controller: Controller,
    /// The daemon's progress lines per job, for the latest line of a job.
    progress: Arc<DashMap<String, Vec<String>>>,
    /// The daemon's ends not yet committed to the store: a job there has
    /// finished.
    recording: Arc<crate::daemon::Recording>,
    /// Checks the signed login-token request (its own nonce cache: a
    /// signature covers method and path, so no other route's request can be
    /// replayed here anyway).
    verifier: Verifier,
    /// Signs the requests for a remote job's log.
    keyring: Arc<Keyring>,
    sessions: Sessions,
}

impl Dashboard {
    pub fn new(settings: Arc<Settings>, store: Arc<ControllerStore>, controller: Controller, progress: Arc<DashMap<String, Vec<String>>>, recording: Arc<crate::daemon::Recording>) -> anyhow::Result<Dashboard> {
        let keyring = Keyring::from_env().map_err(|e| anyhow!("the dashboard's login needs the cluster secret: {e}"))?;
        let verifier = Verifier::new(Keyring::from_env()?, DAEMON_ID.into(), settings.worker.skew_s, false);
        Ok(Dashboard {
            settings,
            store,
            controller,
            progress,
            recording,
            verifier,
            keyring: Arc::new(keyring),
            sessions: Sessions::new(sessions::LOGIN_TOKEN_TTL, sessions::SESSION_IDLE),
        })
    }
}

type Data = web::Data<Dashboard>;

/// Adds the dashboard's routes to the daemon's route table.
pub fn routes(cfg: &mut web::ServiceConfig, dashboard: Data) {
    cfg.app_data(dashboard)
        .route("/v1/dashboard/login", web::post().to(issue_login))
        .service(web::resource("/").wrap(hardened()).route(web::get().to(index)))
        .service(web::resource("/login").wrap(hardened()).route(web::get().to(login)))
        .service(web::resource("/logout").wrap(hardened()).route(web::post().to(logout)))
        .service(web::resource("/static/{name}").wrap(hardened()).route(web::get().to(asset)))
        .service(
            web::scope("/api")
                .wrap(hardened())
                .route("/state", web::get().to(state))
                .route("/jobs/{run_id}/{job_id}", web::get().to(job))
                .route("/jobs/{run_id}/{job_id}/log", web::get().to(log))
                .route("/jobs/{run_id}/{job_id}/cancel", web::post().to(cancel))
                .route("/nodes/{node_id}/drain", web::post().to(drain)),
        )
        .service(web::scope("/files").wrap(hardened()).route("/{run_id}/{job_id}/{name}", web::get().to(files::serve)));
}

/// The headers every dashboard answer carries.
fn hardened() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((header::CONTENT_SECURITY_POLICY, CSP))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::REFERRER_POLICY, "no-referrer"))
        .add((header::CACHE_CONTROL, "no-store"))
}

fn error(status: u16, code: &str, message: impl Into<String>) -> HttpResponse {
    let body = protocol::ErrorBody { error: message.into(), code: code.into(), server_time: None };
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR)).json(body)
}

/// True when the request names this machine in its Host header (an IP
/// loopback address or `localhost`): a page of another site that had its
/// name resolve to 127.0.0.1 (DNS rebinding) is refused.
fn host_is_loopback(req: &HttpRequest) -> bool {
    let Some(host) = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The value of one cookie of the request.
fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

/// Why a request gets no access.
enum Refused {
    Host,
    NoSession,
    Csrf,
}

impl Refused {
    fn response(&self) -> HttpResponse {
        match self {
            Refused::Host => error(421, "HOST_INVALID", "the dashboard answers only requests for 127.0.0.1, [::1] or localhost"),
            Refused::NoSession => error(401, "SESSION_REQUIRED", "no dashboard session: log in with `rayvault-orchestrator dashboard`"),
            Refused::Csrf => error(403, "CSRF_INVALID", "missing or wrong X-CSRF-Token header: reload the dashboard page"),
        }
    }
}

impl Dashboard {
    /// The session's CSRF token when the request has a live session.
    fn session(&self, req: &HttpRequest) -> Result<String, Refused> {
        if !host_is_loopback(req) {
            return Err(Refused::Host);
        }
        let id = cookie(req, SESSION_COOKIE).ok_or(Refused::NoSession)?;
        self.sessions.touch(&id, Instant::now()).ok_or(Refused::NoSession)
    }

    /// A live session and its CSRF token in the header, for requests that
    /// change something.
    fn session_with_csrf(&self, req: &HttpRequest) -> Result<(), Refused> {
        let expected = self.session(req)?;
        let presented = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        if sessions::csrf_matches(&expected, presented) {
            Ok(())
        } else {
            Err(Refused::Csrf)
        }
    }
}

/// `POST /v1/dashboard/login`: a one-time login token, for a caller holding
/// the cluster secret (the `dashboard` subcommand).
async fn issue_login(dash: Data, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let auth: Vec<&[u8]> = req.headers().get_all(header::AUTHORIZATION).map(|v| v.as_bytes()).collect();
    let sha = protocol::sha256_hex(&body);
    let query = req.uri().query().unwrap_or("");
    match dash.verifier.verify(&auth, req.method().as_str(), req.uri().path(), query, &sha, rayvault::auth::unix_now()) {
        Ok(_) => {}
        Err(AuthError::Skew { server_time }) => {
            rayvault::metrics::controller().auth_refusal(protocol::SKEW_MESSAGE);
            let body = protocol::ErrorBody { error: protocol::SKEW_MESSAGE.into(), code: "AUTH_SKEW".into(), server_time: Some(server_time) };
            return HttpResponse::Unauthorized().json(body);
        }
        Err(AuthError::Invalid(why)) => {
            tracing::warn!("refused a dashboard login request: {why}");
            rayvault::metrics::controller().auth_refusal(why);
            return error(401, "AUTH_INVALID", protocol::AUTH_INVALID_MESSAGE);
        }
    }
    let token = dash.sessions.issue_login(Instant::now());
    tracing::info!("issued a dashboard login link (valid once, for {} s)", sessions::LOGIN_TOKEN_TTL.as_secs());
    HttpResponse::Ok().json(json!({"token": token, "expires_in_s": sessions::LOGIN_TOKEN_TTL.as_secs()}))
}

#[derive(Deserialize)]
struct LoginQuery {
    #[serde(default)]
    t: String,
}

/// `GET /login?t=`: redeems the token and redirects to the page, so that
/// the token leaves the address bar (and the history holds a dead link).
async fn login(dash: Data, req: HttpRequest, q: web::Query<LoginQuery>) -> HttpResponse {
    if !host_is_loopback(&req) {
        return Refused::Host.response();
    }
    match dash.sessions.redeem_login(&q.t, Instant::now()) {
        Some(session) => {
            tracing::info!("a browser logged in to the dashboard");
            HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/"))
                .insert_header((header::SET_COOKIE, format!("{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", session.id)))
                .finish()
        }
        None => {
            tracing::warn!("refused a dashboard login link: unknown, used already, or expired");
            login_page("This login link was used already or has expired: each link works once, within 60 seconds.")
        }
    }
}

/// The page shown without a session (401).
fn login_page(why: &str) -> HttpResponse {
    let html = LOGIN_HTML.replace("{{REASON}}", &html_escape(why));
    HttpResponse::Unauthorized().content_type("text/html; charset=utf-8").body(html)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// `POST /logout`: ends the session and clears the cookie.
async fn logout(dash: Data, req: HttpRequest) -> HttpResponse {
    if let Err(r) = dash.session_with_csrf(&req) {
        return r.response();
    }
    if let Some(id) = cookie(&req, SESSION_COOKIE) {
        dash.sessions.end(&id);
    }
    HttpResponse::Ok().insert_header((header::SET_COOKIE, format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"))).json(json!({"logged_out": true}))
}

/// `GET /`: the page, with the session's CSRF token.
async fn index(dash: Data, req: HttpRequest) -> HttpResponse {
    match dash.session(&req) {
        Ok(csrf) => HttpResponse::Ok().content_type("text/html; charset=utf-8").body(INDEX_HTML.replace("{{CSRF}}", &csrf)),
        Err(Refused::Host) => Refused::Host.response(),
        Err(_) => login_page("You are not logged in, or your session has expired."),
    }
}

/// `GET /static/{name}`: the page's script and style sheet. They hold no
/// data (the same bytes are in the repository), so they need no session:
/// the login page uses the style sheet too.
async fn asset(req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    if !host_is_loopback(&req) {
        return Refused::Host.response();
    }
    match name.as_str() {
        "app.js" => HttpResponse::Ok().content_type("text/javascript; charset=utf-8").body(APP_JS),
        "style.css" => HttpResponse::Ok().content_type("text/css; charset=utf-8").body(STYLE_CSS),
        "favicon.svg" => HttpResponse::Ok().content_type("image/svg+xml").body(FAVICON_SVG),
        _ => error(404, "NOT_FOUND", "no such file"),
    }
}

fn internal(e: impl std::fmt::Display) -> HttpResponse {
    error(500, "INTERNAL", e.to_string())
}

/// What a job is doing or how it ended, in one word.
fn job_state(j: &StoredJob) -> Value {
    match (&j.receipt, j.phase) {
        (Some(r), _) => json!(r.status),
        (None, phase) => json!(phase),
    }
}

/// Where a job runs or ran: the receipt's node, else its remote node.
fn job_node(j: &StoredJob) -> Option<String> {
    match &j.receipt {
        Some(r) => r.executed_on.clone(),
        None => j.remote.as_ref().map(|r| r.node_id.clone()),
    }
}

/// One job's line in `/api/state`.
fn job_summary(dash: &Dashboard, j: &StoredJob) -> Value {
    let key = j.spec.key();
    let last_progress = dash.progress.get(&key).and_then(|l| l.last().cloned());
    json!({
        "key": key,
        "run_id": j.spec.run_id,
        "job_id": j.spec.job_id,
        "step_name": j.spec.step_name,
        "phase": j.phase,
        "state": job_state(j),
        "node": job_node(j),
        "submitted_at_ms": j.submitted_at_ms,
        "total_ms": j.receipt.as_ref().map(|r| r.timings.total_ms),
        "error_code": j.receipt.as_ref().and_then(|r| r.error.as_ref()).map(|e| e.code.clone()),
        "fallback_reason": j.receipt.as_ref().and_then(|r| r.fallback_reason.clone()),
        "last_progress": last_progress,
    })
}

/// `GET /api/state`: the nodes with their load, the controller's own load,
/// and the latest jobs.
async fn state(dash: Data, req: HttpRequest) -> HttpResponse {
    if let Err(r) = dash.session(&req) {
        return r.response();
    }
    let (store, ending) = (dash.store.clone(), dash.recording.snapshot());
    let mut jobs = match web::block(move || store.all()).await {
        Ok(Ok(j)) => j,
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    crate::daemon::Recording::apply_all(&mut jobs, ending);
    let mut report = match dash.controller.probe.send(DescribeNodes).await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let in_flight = |node: Option<&str>| {
        jobs.iter().filter(|j| j.phase != Phase::Finished && j.remote.as_ref().map(|r| r.node_id.as_str()) == node).count()
    };
    // A draining node with none of our jobs left is `drained`, as in `status`.
    report.settle_drains(|node_id| in_flight(Some(node_id)));
    let nodes: Vec<Value> = report
        .nodes
        .iter()
        .map(|n| {
            let caps = n.caps.as_ref();
            let cap = |k: &str| caps.and_then(|c| c.get(k)).cloned().unwrap_or(Value::Null);
            json!({
                "node_id": n.node_id,
                "host": n.host,
                "port": n.port,
                "enabled": n.enabled,
                "status": n.status,
                "reason": n.reason,
                "compat_mode": n.compat_mode,
                "os": n.os,
                "ram_gb": n.ram_gb,
                "gpu_model": cap("gpu_model"),
                "vram_gb": cap("vram_gb"),
                "steps": cap("steps"),
                "caps_age_s": n.caps_age_s,
                "in_flight": in_flight(Some(&n.node_id)),
            })
        })
        .collect();
    let local_in_flight = in_flight(None);
    jobs.sort_by_key(|j| std::cmp::Reverse(j.submitted_at_ms));
    let listed: Vec<Value> = jobs.iter().take(MAX_LISTED_JOBS).map(|j| job_summary(&dash, j)).collect();
    HttpResponse::Ok().json(json!({
        "daemon": {"pid": std::process::id(), "now_ms": crate::dashboard::now_ms()},
        "nodes_file": report.nodes_file,
        "nodes_error": report.nodes_error,
        "nodes": nodes,
        "local": {"in_flight": local_in_flight},
        "jobs": listed,
        "jobs_total": jobs.len(),
    }))
}

use rayvault::protocol::now_ms;

/// Reads a stored job (off the arbiter); a 404 when the daemon has none.
async fn stored_job(dash: &Dashboard, run_id: &str, job_id: &str) -> Result<StoredJob, HttpResponse> {
    let (store, key) = (dash.store.clone(), format!("{run_id}/{job_id}"));
    let ending = dash.recording.get(&key);
    match web::block(move || store.get(&key)).await {
        Ok(Ok(Some(mut j))) => {
            crate::daemon::Recording::apply(&mut j, ending);
            Ok(j)
        }
        Ok(Ok(None)) => Err(error(404, "JOB_NOT_FOUND", format!("no job {run_id}/{job_id} in this daemon"))),
        Ok(Err(e)) => Err(internal(e)),
        Err(e) => Err(internal(e)),
    }
}

/// `GET /api/jobs/{run_id}/{job_id}`: the job, its receipt once it ended,
/// and the files of its receipt folder the page can show.
async fn job(dash: Data, req: HttpRequest, path: web::Path<(String, String)>) -> HttpResponse {
    if let Err(r) = dash.session(&req) {
        return r.response();
    }
    let (run_id, job_id) = path.into_inner();
    let stored = match stored_job(&dash, &run_id, &job_id).await {
        Ok(j) => j,
        Err(r) => return r,
    };
    let dir = receipt_dir(&dash.settings.cluster_dir(), &run_id, &job_id);
    let receipt = stored.receipt.clone();
    let listed = web::block(move || files::listing(&dir, receipt.as_ref())).await.unwrap_or_default();
    let progress: Vec<String> = dash.progress.get(&stored.spec.key()).map(|l| l.iter().rev().take(20).rev().cloned().collect()).unwrap_or_default();
    HttpResponse::Ok().json(json!({
        "key": stored.spec.key(),
        "run_id": run_id,
        "job_id": job_id,
        "step_name": stored.spec.step_name,
        "phase": stored.phase,
        "state": job_state(&stored),
        "node": job_node(&stored),
        "submitted_at_ms": stored.submitted_at_ms,
        "requirements": stored.spec.requirements,
        "remote": stored.remote,
        "receipt": stored.receipt,
        "progress": progress,
        "files": listed,
    }))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    offset: u64,
}

/// `GET /api/jobs/{run_id}/{job_id}/log?offset=N`: the job's log from byte
/// N. A job running on a worker is read from the worker's log endpoint
/// (signed, like `logs --follow`); otherwise from `worker.log` in the
/// receipt folder, where a local job writes as it runs and where a remote
/// job's log is copied when it ends. `complete` tells the page to stop
/// polling.
async fn log(dash: Data, req: HttpRequest, path: web::Path<(String, String)>, q: web::Query<LogQuery>) -> HttpResponse {
    if let Err(r) = dash.session(&req) {
        return r.response();
    }
    let (run_id, job_id) = path.into_inner();
    let stored = match stored_job(&dash, &run_id, &job_id).await {
        Ok(j) => j,
        Err(r) => return r,
    };
    let offset = q.offset;
    if let (Some(remote), false) = (&stored.remote, stored.phase == Phase::Finished) {
        let nodes_file = rayvault::nodes::nodes_path(&dash.settings.cluster_dir());
        let node = web::block(move || rayvault::nodes::load(&nodes_file)).await.ok().and_then(Result::ok).flatten().and_then(|nodes| nodes.into_iter().find(|n| n.node_id == remote.node_id));
        let Some(node) = node else {
            let note = format!("{} is no longer in nodes.json; the log arrives in the receipt folder when the job ends", remote.node_id);
            return HttpResponse::Ok().json(json!({"data": "", "next_offset": offset, "complete": false, "source": remote.node_id, "note": note}));
        };
        let client = rayvault::client::WorkerClient::new(&node.base_url(), &node.node_id, dash.keyring.clone());
        return match client.log(&remote.remote_job_id, offset).await {
            Ok(chunk) => HttpResponse::Ok().json(json!({"data": chunk.data, "next_offset": chunk.next_offset, "complete": false, "source": remote.node_id})),
            Err(e) => {
                let note = format!("cannot read the log on {}: {e}", remote.node_id);
                HttpResponse::Ok().json(json!({"data": "", "next_offset": offset, "complete": false, "source": remote.node_id, "note": note}))
            }
        };
    }
    let file = receipt_dir(&dash.settings.cluster_dir(), &run_id, &job_id).join(LOG_FILE);
    let finished = stored.phase == Phase::Finished;
    match web::block(move || files::read_from(&file, offset, MAX_LOG_CHUNK)).await {
        Ok(Ok((data, next, size))) => {
            HttpResponse::Ok().json(json!({"data": data, "next_offset": next, "complete": finished && next >= size, "source": "receipt folder"}))
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// `POST /api/jobs/{run_id}/{job_id}/cancel`.
async fn cancel(dash: Data, req: HttpRequest, path: web::Path<(String, String)>) -> HttpResponse {
    if let Err(r) = dash.session_with_csrf(&req) {
        return r.response();
    }
    let key = format!("{}/{}", path.0, path.1);
    match dash.controller.runner.send(CancelJob { key: key.clone() }).await {
        Ok(true) => {
            tracing::info!(job = %key, "cancel requested from the dashboard");
            HttpResponse::Ok().json(json!({"key": key, "cancelling": true}))
        }
        Ok(false) => error(409, "JOB_CONFLICT", format!("{key} is not running in this daemon")),
        Err(e) => internal(e),
    }
}

/// `POST /api/nodes/{node_id}/drain`: no new job goes to the node; jobs in
/// flight there finish.
async fn drain(dash: Data, req: HttpRequest, node_id: web::Path<String>) -> HttpResponse {
    if let Err(r) = dash.session_with_csrf(&req) {
        return r.response();
    }
    let node_id = node_id.into_inner();
    let nodes_file = rayvault::nodes::nodes_path(&dash.settings.cluster_dir());
    let id = node_id.clone();
    match web::block(move || drain::drain(&nodes_file, &id)).await {
        Ok(Ok(changed)) => {
            if changed {
                tracing::info!(node = %node_id, "node set to drain from the dashboard");
            }
            HttpResponse::Ok().json(json!({"node_id": node_id, "drain": true, "changed": changed}))
        }
        Ok(Err(e @ drain::DrainError::UnknownNode(_))) => error(404, "NODE_NOT_FOUND", e.to_string()),
        Ok(Err(e @ drain::DrainError::Refused(_))) => error(409, "NODES_REFUSED", e.to_string()),
        Ok(Err(e @ drain::DrainError::NodesFile(_))) => error(409, "NODES_INVALID", e.to_string()),
        Err(e) => internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_paths_never_include_the_signed_api() {
        for p in ["/", "/login", "/logout", "/api/state", "/static/app.js", "/files/r/j/frame_0001.jpg"] {
            assert!(is_session_path(p), "{p}");
        }
        for p in ["/v1/health", "/v1/jobs", "/v1/status", "/v1/dashboard/login", "/apifoo", "/files", "/index.html", "//api/state"] {
            assert!(!is_session_path(p), "{p}");
        }
    }

    fn request(host: Option<&str>, cookie_header: Option<&str>) -> HttpRequest {
        let mut t = actix_web::test::TestRequest::default();
        if let Some(h) = host {
            t = t.insert_header((header::HOST, h));
        }
        if let Some(c) = cookie_header {
            t = t.insert_header((header::COOKIE, c));
        }
        t.to_http_request()
    }

    #[test]
    fn only_loopback_hosts_are_served() {
        for h in ["127.0.0.1:8788", "127.0.0.1", "localhost:8788", "LOCALHOST", "[::1]:8788", "127.0.0.2:1"] {
            assert!(host_is_loopback(&request(Some(h), None)), "{h}");
        }
        for h in ["evil.example:8788", "10.0.0.1:8788", "[::2]:8788", "localhost.evil.example", ""] {
            assert!(!host_is_loopback(&request(Some(h), None)), "{h}");
        }
        assert!(!host_is_loopback(&request(None, None)));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let req = request(Some("127.0.0.1"), Some("a=1; rayvault_session=abc; b=2"));
        assert_eq!(cookie(&req, SESSION_COOKIE).as_deref(), Some("abc"));
        let req = request(Some("127.0.0.1"), Some("xrayvault_session=abc"));
        assert_eq!(cookie(&req, SESSION_COOKIE), None);
    }
}
