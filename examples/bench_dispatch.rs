//! Benchmark driver for scenario 1 (see docs/benchmarks.md): dispatch
//! overhead and throughput of small jobs.
//!
//! The payloads come from a file with one JSON payload per line, written by
//! bench/ours.py (each names a distinct WAV, so no job hits the idempotency
//! cache). The shared secret comes from `RAYVAULT_CLUSTER_SECRET`, as for
//! the real binaries. Prints JSON on stdout.
//!
//! ```text
//! bench_dispatch step STEP PAYLOADS N
//!     runs the step in-process N times: the executor's own run time
//!     -> {"step_s": [..]}
//! bench_dispatch worker BASE_URL WORKER_ID STEP PAYLOADS N_SEQ N_RATE CONCURRENCY
//!     submits through the worker API (POST /jobs + long-poll GET /jobs/{id})
//!     -> {"seq_e2e_s": [..], "seq_step_ms": [..], "rate_per_s": x, "rate_jobs": n}
//! bench_dispatch daemon BASE_URL RUN_ID STEP PAYLOADS N_SEQ N_RATE CONCURRENCY
//!     submits through the daemon's local API (POST /v1/jobs?wait_s=20, which
//!     answers when the job ends, then if need be long-polls
//!     GET /v1/jobs/{run_id}/{job_id}) with no_fallback, so every job runs
//!     on a worker; first waits (bounded) until the daemon places jobs there
//!     -> {"seq_e2e_s": [..], "seq_step_ms": [..], "rate_per_s": x, "executed_on": {..}}
//! ```

use futures_util::future::join_all;
use rayvault::auth::{Keyring, RequestTarget};
use rayvault::client::WorkerClient;
use rayvault::config::Settings;
use rayvault::joblog::JobLog;
use rayvault::protocol::{JobState, SubmitJob};
use rayvault::steps::{run_step, StepContext, StepName};
use serde_json::{json, Value};
use std::cell::Cell;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long one job may take before the driver gives up on it.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

fn read_payloads(path: &str) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("bad payload line in {path}: {e}")))
        .collect()
}

/// Reads every file the payload names (any string that is the path of a
/// regular file), so that the job finds its inputs in the page cache, as
/// the in-process run that measures the step's own time does. Called
/// outside the timed window. On the benchmark VM the host's memory
/// manager (DAMON, `pageout` of file pages idle for about a minute) evicts
/// input files between their creation and their job; the read from disk
/// that follows is the inputs' I/O, not the dispatch overhead this
/// scenario measures, and a no-op peer task reads no input at all.
fn warm_inputs(payload: &Value) {
    match payload {
        Value::String(s) if std::path::Path::new(s).is_file() => {
            let _ = std::fs::read(s);
        }
        Value::Array(items) => items.iter().for_each(warm_inputs),
        Value::Object(map) => map.values().for_each(warm_inputs),
        _ => {}
    }
}

/// Runs the step in this process, the way the worker's executor does, and
/// times each run.
async fn step_times(step: StepName, payloads: &[Value], n: usize) -> Result<Value, String> {
    let settings = Arc::new(Settings::load(None).map_err(|e| e.to_string())?);
    let scratch = std::env::temp_dir().join(format!("rayvault-bench-step-{}", std::process::id()));
    let mut out = Vec::with_capacity(n);
    for (i, payload) in payloads.iter().cycle().take(n).enumerate() {
        let out_dir = scratch.join(format!("job-{i}"));
        std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
        let log = JobLog::open(&scratch.join(format!("job-{i}.log"))).map_err(|e| e.to_string())?;
        let ctx = StepContext {
            job_id: format!("bench-{i}"),
            out_dir,
            log,
            cancel: CancellationToken::new(),
            settings: settings.clone(),
        };
        let t0 = Instant::now();
        run_step(step, payload, &ctx).await.map_err(|e| format!("{step} failed in-process: {e}"))?;
        out.push(t0.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(json!({ "step_s": out }))
}

/// Submits one job and long-polls it to the end; returns the end-to-end
/// time and the run time the worker recorded (milliseconds).
async fn one_job(client: &WorkerClient, step: &str, payload: Value) -> Result<(f64, Option<u64>), String> {
    let t0 = Instant::now();
    let job = SubmitJob { step_name: step.to_string(), payload, inputs_hash: None, label: None, lease_s: None };
    let submitted = client.submit(&job).await.map_err(|e| e.to_string())?;
    if submitted.cached {
        return Err("a job hit the idempotency cache; the harness must give distinct payloads".into());
    }
    let view = if submitted.job.state.is_terminal() {
        submitted.job
    } else {
        client.wait(&submitted.job.job_id, JOB_TIMEOUT, 20).await.map_err(|e| e.to_string())?
    };
    let e2e = t0.elapsed().as_secs_f64();
    if view.state != JobState::Succeeded {
        return Err(format!("job {} ended {:?}: {:?}", view.job_id, view.state, view.error));
    }
    let ran = match (view.started_at_ms, view.finished_at_ms) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok((e2e, ran))
}

async fn worker(args: &DispatchArgs, payloads: Vec<Value>) -> Result<Value, String> {
    let keyring = Keyring::from_env().map_err(|e| e.to_string())?;
    let client = Rc::new(WorkerClient::new(&args.base, &args.id, Arc::new(keyring)));
    if payloads.len() < args.n_seq + args.n_rate {
        return Err(format!("need {} payloads, got {}", args.n_seq + args.n_rate, payloads.len()));
    }
    let (seq, rest) = payloads.split_at(args.n_seq);
    let mut e2e = Vec::with_capacity(seq.len());
    let mut ran = Vec::with_capacity(seq.len());
    for p in seq {
        warm_inputs(p);
        let (t, r) = one_job(&client, &args.step, p.clone()).await?;
        e2e.push(t);
        ran.extend(r);
    }

    // Concurrency: a fixed number of loops, each taking the next payload.
    let rate_payloads = Rc::new(rest[..args.n_rate].to_vec());
    rate_payloads.iter().for_each(warm_inputs);
    let next = Rc::new(Cell::new(0usize));
    let t0 = Instant::now();
    let loops = (0..args.concurrency).map(|_| {
        let (client, payloads, next, step) = (client.clone(), rate_payloads.clone(), next.clone(), args.step.clone());
        async move {
            loop {
                let i = next.get();
                if i >= payloads.len() {
                    return Ok::<(), String>(());
                }
                next.set(i + 1);
                one_job(&client, &step, payloads[i].clone()).await?;
            }
        }
    });
    for r in join_all(loops).await {
        r?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    Ok(json!({
        "seq_e2e_s": e2e,
        "seq_step_ms": ran,
        "rate_per_s": args.n_rate as f64 / elapsed,
        "rate_jobs": args.n_rate,
    }))
}

/// The daemon's loopback API, signed like the workers' with target id
/// `controller` (see src/bin/rayvault-orchestrator/daemon.rs).
struct DaemonApi {
    base: String,
    http: awc::Client,
    keyring: Arc<Keyring>,
}

impl DaemonApi {
    async fn call(&self, method: &str, path: &str, query: &str, body: Vec<u8>) -> Result<Value, String> {
        let sha = rayvault::protocol::sha256_hex(&body);
        let target = RequestTarget { method, path, query, worker_id: "controller", body_sha256: &sha };
        let auth = self.keyring.authorization(&target);
        let url = if query.is_empty() { format!("{}{path}", self.base) } else { format!("{}{path}?{query}", self.base) };
        let m = awc::http::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut resp = self
            .http
            .request(m, url)
            .insert_header(("Authorization", auth))
            .insert_header(("Content-Type", "application/json"))
            .send_body(body)
            .await
            .map_err(|e| format!("daemon unreachable: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.body().limit(64 * 1024 * 1024).await.map_err(|e| e.to_string())?;
        if !(200..300).contains(&status) {
            return Err(format!("daemon answered {status}: {}", String::from_utf8_lossy(&bytes)));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("daemon answered non-JSON: {e}"))
    }

    /// Submits one job and long-polls until its receipt; returns the
    /// end-to-end time and the receipt.
    async fn job(&self, run_id: &str, job_id: &str, step: &str, payload: Value) -> Result<(f64, Value), String> {
        let t0 = Instant::now();
        let spec = json!({
            "run_id": run_id, "job_id": job_id, "step_name": step, "payload": payload, "no_fallback": true,
        });
        let body = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
        // The submission's answer is held until the job ends (up to 20 s):
        // a short job needs no long-poll of its own.
        let accepted = self.call("POST", "/v1/jobs", "wait_s=20", body).await?;
        if accepted.get("already_running").and_then(Value::as_bool) == Some(true) {
            return Err(format!("job {run_id}/{job_id} was already running; ids must be fresh"));
        }
        if let Some(receipt) = accepted.pointer("/job/receipt").filter(|r| !r.is_null()) {
            return Ok((t0.elapsed().as_secs_f64(), receipt.clone()));
        }
        let path = format!("/v1/jobs/{run_id}/{job_id}");
        let deadline = Instant::now() + JOB_TIMEOUT;
        let mut from = accepted.pointer("/job/progress_next").and_then(Value::as_u64).unwrap_or(0);
        while Instant::now() < deadline {
            let view = self.call("GET", &path, &format!("wait_s=20&progress_from={from}"), Vec::new()).await?;
            from = view.get("progress_next").and_then(Value::as_u64).unwrap_or(from);
            if let Some(receipt) = view.get("receipt").filter(|r| !r.is_null()) {
                return Ok((t0.elapsed().as_secs_f64(), receipt.clone()));
            }
        }
        Err(format!("job {run_id}/{job_id} did not end within {JOB_TIMEOUT:?}"))
    }
}

fn receipt_ok(receipt: &Value) -> Result<(String, Option<u64>), String> {
    if receipt.get("status").and_then(Value::as_str) != Some("succeeded") {
        return Err(format!("job failed: {}", receipt.get("error").unwrap_or(&Value::Null)));
    }
    if receipt.get("cached").and_then(Value::as_bool) == Some(true) {
        return Err("a job hit the worker's idempotency cache; the harness must give distinct inputs".into());
    }
    let on = receipt.get("executed_on").and_then(Value::as_str).unwrap_or("?").to_string();
    let run_ms = receipt.pointer("/timings/run_ms").and_then(Value::as_u64);
    Ok((on, run_ms))
}

async fn daemon(args: &DispatchArgs, payloads: Vec<Value>) -> Result<Value, String> {
    let keyring = Arc::new(Keyring::from_env().map_err(|e| e.to_string())?);
    let api = Rc::new(DaemonApi { base: args.base.clone(), http: awc::Client::builder().disable_timeout().finish(), keyring });
    let run_id = args.id.clone();
    if payloads.len() < args.n_seq + args.n_rate + 1 {
        return Err(format!("need {} payloads, got {}", args.n_seq + args.n_rate + 1, payloads.len()));
    }
    // Until the daemon has probed the worker, a no_fallback job fails; retry
    // (bounded) until one runs there. The warm-up payload is the last one.
    let warm = payloads[payloads.len() - 1].clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = api.job(&run_id, &format!("warmup-{attempt}"), &args.step, warm.clone()).await;
        // A retried warm-up may find its first try cached on the worker:
        // that still shows the daemon places jobs there.
        let placed = r.map(|(_, rec)| {
            (rec.get("status").and_then(Value::as_str) == Some("succeeded"))
                .then(|| rec.get("executed_on").and_then(Value::as_str).unwrap_or("local").to_string())
        });
        match placed {
            Ok(Some(on)) if on != "local" => break,
            other if Instant::now() > deadline => {
                return Err(format!("the daemon never placed a job on the worker within 60 s: {other:?}"))
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let mut executed_on: std::collections::BTreeMap<String, u64> = Default::default();
    let mut e2e = Vec::with_capacity(args.n_seq);
    let mut ran = Vec::with_capacity(args.n_seq);
    for (i, p) in payloads[..args.n_seq].iter().enumerate() {
        warm_inputs(p);
        let (t, receipt) = api.job(&run_id, &format!("seq-{i}"), &args.step, p.clone()).await?;
        let (on, run_ms) = receipt_ok(&receipt)?;
        *executed_on.entry(on).or_default() += 1;
        e2e.push(t);
        ran.extend(run_ms);
    }
    let rate_payloads = Rc::new(payloads[args.n_seq..args.n_seq + args.n_rate].to_vec());
    rate_payloads.iter().for_each(warm_inputs);
    let next = Rc::new(Cell::new(0usize));
    let on_counts = Rc::new(std::cell::RefCell::new(executed_on));
    let t0 = Instant::now();
    let loops = (0..args.concurrency).map(|_| {
        let (api, payloads, next, step, run_id, counts) =
            (api.clone(), rate_payloads.clone(), next.clone(), args.step.clone(), run_id.clone(), on_counts.clone());
        async move {
            loop {
                let i = next.get();
                if i >= payloads.len() {
                    return Ok::<(), String>(());
                }
                next.set(i + 1);
                let (_, receipt) = api.job(&run_id, &format!("rate-{i}"), &step, payloads[i].clone()).await?;
                let (on, _) = receipt_ok(&receipt)?;
                *counts.borrow_mut().entry(on).or_default() += 1;
            }
        }
    });
    for r in join_all(loops).await {
        r?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let counts = on_counts.borrow().clone();
    Ok(json!({
        "seq_e2e_s": e2e,
        "seq_step_ms": ran,
        "rate_per_s": args.n_rate as f64 / elapsed,
        "rate_jobs": args.n_rate,
        "executed_on": counts,
    }))
}

/// Arguments shared by the `worker` and `daemon` modes.
struct DispatchArgs {
    base: String,
    /// The worker's id (worker mode) or the run id (daemon mode).
    id: String,
    step: String,
    n_seq: usize,
    n_rate: usize,
    concurrency: usize,
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args.get(i).and_then(|s| s.parse().ok()).ok_or_else(|| format!("argument {i} ({what}) is missing or invalid"))
}

fn run(args: &[String]) -> Result<Value, String> {
    let system = actix_rt::System::new();
    match args.get(1).map(String::as_str) {
        Some("step") => {
            let step = StepName::parse(&arg::<String>(args, 2, "STEP")?).map_err(|e| e.to_string())?;
            let payloads = read_payloads(&arg::<String>(args, 3, "PAYLOADS")?)?;
            let n = arg(args, 4, "N")?;
            system.block_on(step_times(step, &payloads, n))
        }
        Some("worker") => {
            let wa = DispatchArgs {
                base: arg(args, 2, "BASE_URL")?,
                id: arg(args, 3, "WORKER_ID")?,
                step: arg(args, 4, "STEP")?,
                n_seq: arg(args, 6, "N_SEQ")?,
                n_rate: arg(args, 7, "N_RATE")?,
                concurrency: arg(args, 8, "CONCURRENCY")?,
            };
            let payloads = read_payloads(&arg::<String>(args, 5, "PAYLOADS")?)?;
            system.block_on(worker(&wa, payloads))
        }
        Some("daemon") => {
            let wa = DispatchArgs {
                base: arg(args, 2, "BASE_URL")?,
                id: arg(args, 3, "RUN_ID")?,
                step: arg(args, 4, "STEP")?,
                n_seq: arg(args, 6, "N_SEQ")?,
                n_rate: arg(args, 7, "N_RATE")?,
                concurrency: arg(args, 8, "CONCURRENCY")?,
            };
            let payloads = read_payloads(&arg::<String>(args, 5, "PAYLOADS")?)?;
            system.block_on(daemon(&wa, payloads))
        }
        _ => Err("usage: bench_dispatch step STEP PAYLOADS N | worker BASE_URL WORKER_ID STEP PAYLOADS N_SEQ N_RATE CONCURRENCY | daemon BASE_URL RUN_ID STEP PAYLOADS N_SEQ N_RATE CONCURRENCY".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench_dispatch: {e}");
            ExitCode::FAILURE
        }
    }
}
