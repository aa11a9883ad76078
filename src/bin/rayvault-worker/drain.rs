//! Draining: the worker takes no new jobs while its running and queued jobs
//! finish, so that its owner can take the machine back (to play a game, say)
//! without killing work in progress.
//!
//! The flag is set by a signed `POST /drain` (`{"drain": true|false}`),
//! which `rayvault-worker drain --on|--off` sends to the worker's own
//! address. While it is set, `POST /jobs` answers `503 DRAINING` and
//! `/health` says `"draining": true` (the controller then places nothing
//! there). It is kept as the file `drain.json` in the worker's state folder,
//! so a restarted worker is still draining.

use crate::apierror::ApiError;
use crate::handlers::{now_ms, Data};
use actix_web::{web, HttpResponse};
use anyhow::Context as _;
use rayvault::protocol::{DrainRequest, DrainState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The message of `503 DRAINING`.
pub const DRAINING_MESSAGE: &str = "this worker is draining: it takes no new jobs while its running ones finish; \
     run `rayvault-worker drain --off` on it (or send POST /drain {\"drain\": false}) to take jobs again, or use another node";

/// Whether the worker drains, and the file that keeps it across restarts.
#[derive(Debug)]
pub struct DrainFlag {
    on: AtomicBool,
    /// `<state>/worker/drain.json`: present while draining.
    path: PathBuf,
    /// Held while the file and the flag change, so that two requests at
    /// once cannot leave the file saying one thing and the flag another.
    changing: Mutex<()>,
}

impl DrainFlag {
    /// Reads the flag from `<worker state folder>/drain.json`.
    pub fn load(worker_dir: &Path) -> Arc<DrainFlag> {
        let path = worker_dir.join("drain.json");
        let on = path.is_file();
        if on {
            tracing::warn!("draining (since before this start, per {}): no new jobs are taken; `rayvault-worker drain --off` ends it", path.display());
        }
        Arc::new(DrainFlag { on: AtomicBool::new(on), path, changing: Mutex::new(()) })
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    /// Sets the flag and its file (written atomically, or removed).
    /// Blocking: call it from a blocking task.
    fn set(&self, on: bool) -> std::io::Result<()> {
        let _changing = self.changing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if on {
            let text = format!("{{\"draining\": true, \"since_ms\": {}}}\n", now_ms());
            rayvault::artifacts::write_atomic(&self.path, text.as_bytes())?;
        } else {
            match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.on.store(on, Ordering::SeqCst);
        Ok(())
    }
}

/// `POST /drain`: starts or stops draining; answers the state and how many
/// jobs are still queued or running.
pub async fn post(st: Data, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: DrainRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body must be {{\"drain\": true}} or {{\"drain\": false}} ({e})")))?;
    let flag = st.drain.clone();
    let store = st.env.store.clone();
    let active_jobs = web::block(move || -> Result<u64, ApiError> {
        flag.set(req.drain).map_err(|e| ApiError::io("saving the drain flag", e))?;
        Ok(store.in_flight()?)
    })
    .await??;
    if req.drain {
        tracing::warn!(active_jobs, "draining: no new jobs are taken; running and queued jobs finish");
    } else {
        tracing::info!("drain ended: taking new jobs again");
    }
    Ok(HttpResponse::Ok().json(DrainState { worker_id: st.worker_id.clone(), draining: req.drain, active_jobs }))
}

/// `rayvault-worker drain`: run on the worker's machine.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("switch").required(true))]
pub struct DrainArgs {
    /// Start draining: no new jobs; running and queued jobs finish.
    #[arg(long, group = "switch")]
    on: bool,
    /// Stop draining: take new jobs again.
    #[arg(long, group = "switch")]
    off: bool,
    /// With --on: wait until no job is queued or running, then exit.
    #[arg(long, requires = "on")]
    wait: bool,
    /// The worker's address, if not `worker.host` from the configuration.
    #[arg(long)]
    host: Option<String>,
    /// The worker's port, if not `worker.port` from the configuration.
    #[arg(long)]
    port: Option<u16>,
}

/// Sends `POST /drain` to this machine's worker, signed with the local
/// `RAYVAULT_CLUSTER_SECRET` for the local `RAYVAULT_WORKER_ID`. The address
/// is `--host`/`--port` (given after `drain` or before it, as when serving),
/// else `worker.host`/`worker.port` from the configuration.
pub fn cli(args: DrainArgs, config: Option<&Path>, host: Option<String>, port: Option<u16>) -> anyhow::Result<()> {
    let settings = rayvault::config::Settings::load(config)?;
    let keyring = Arc::new(rayvault::auth::Keyring::from_env()?);
    let host = args.host.or(host).unwrap_or(settings.worker.host.clone());
    let port = args.port.or(port).unwrap_or(settings.worker.port);
    let base = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("http://[{ip}]:{port}"),
        _ => format!("http://{host}:{port}"),
    };
    let client = rayvault::client::WorkerClient::new(&base, &settings.worker.id, keyring).with_timeout(std::time::Duration::from_secs(10));
    actix_rt::System::new().block_on(async move {
        let mut state = client.drain(args.on).await.with_context(|| {
            format!("the worker {} at {base} did not take the request (is it running there, with this RAYVAULT_WORKER_ID and secret?)", settings.worker.id)
        })?;
        if !state.draining {
            println!("{} at {base} takes new jobs again", state.worker_id);
            return Ok(());
        }
        println!("{} at {base} is draining: no new jobs; {} job(s) still queued or running finish there", state.worker_id, state.active_jobs);
        while args.wait && state.active_jobs > 0 {
            actix_rt::time::sleep(std::time::Duration::from_secs(1)).await;
            state = client.drain(true).await?;
        }
        if args.wait {
            println!("{} is idle: no job is queued or running; `rayvault-worker drain --off` takes jobs again", state.worker_id);
        }
        Ok(())
    })
}
