//! `POST /jobs`: checking a submission and its inline inputs, reserving an
//! executor slot, the commit that accepts the job, and the answer (at once,
//! held for a short job with `wait_ms`, or in two lines with `stream=1`).

use super::{now_ms, wait_for_job, Data, INLINE_WORK_BYTES};
use crate::apierror::ApiError;
use crate::state::AppState;
use actix::Addr;
use actix_web::{web, HttpResponse};
use rayvault::actors::executor::{Enqueue, Reserve, StartEarly, StartReserved, StepExecutor, Unreserve};
use rayvault::protocol::{self, ApiCode, InlineBlob, JobView, JsonRefusal, SubmitJob, Submitted};
use rayvault::steps::StepName;
use rayvault::store::{JobRecord, NewJob, Submission};
use futures_util::future::Either;
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Query of `POST /jobs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    /// Answer when the job has ended, if it ends within this many
    /// milliseconds (capped by [`MAX_SUBMIT_WAIT_MS`] and half the job's
    /// lease); otherwise with its state then. A short job then needs no
    /// long-poll of its own.
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// `1`: answer in two lines (`application/x-ndjson`): the acceptance
    /// ([`Submitted`]) as soon as the job is durable, then the job's view
    /// ([`JobView`]) once it ends or `wait_ms` passes. The submitter learns
    /// the job's id at once (an answer cut off during the wait loses
    /// nothing: it follows the job by id) and a short job needs no
    /// long-poll.
    #[serde(default)]
    pub stream: Option<u8>,
}

/// How long the acceptance of a job started early waits for the job's end
/// to share its commit (see `submit`): a short check (a fraction of a
/// millisecond) is then accepted and recorded ended with one sync instead
/// of two; a longer one is accepted alone when this passes, so its
/// submitter learns of the acceptance at most this much later.
const EARLY_PATIENCE: Duration = Duration::from_millis(2);

/// The longest `POST /jobs?wait_ms=` wait: a submitter renews its lease
/// only with its own calls, so the answer must come well within the lease.
pub const MAX_SUBMIT_WAIT_MS: u64 = 2000;

/// `POST /jobs`: validates, computes `inputs_hash`, and queues the job
/// unless the same step + inputs is already queued, running or succeeded.
pub async fn submit(st: Data, http: actix_web::HttpRequest, q: web::Query<SubmitQuery>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    if st.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiError::new(ApiCode::ShuttingDown, "the worker is shutting down; submit again after it restarts"));
    }
    if st.drain.is_on() {
        return Err(ApiError::new(ApiCode::Draining, crate::drain::DRAINING_MESSAGE));
    }
    let stream = match q.stream {
        None | Some(0) => false,
        Some(1) => true,
        Some(n) => return Err(ApiError::bad_request(format!("stream={n}: use stream=1 for a two-line answer, or leave it out"))),
    };
    let (req, inline) = parse_submission(&body)?;
    let step = StepName::parse(&req.step_name).map_err(|e| ApiError::new(ApiCode::StepUnknown, e.message))?;
    if !req.payload.is_object() {
        return Err(ApiError::bad_request("payload must be a JSON object"));
    }
    if let Some(label) = &req.label {
        if label.chars().count() > 200 || label.chars().any(char::is_control) {
            return Err(ApiError::bad_request("label must be at most 200 characters without control characters"));
        }
    }
    let digests = protocol::blob_refs(&req.payload).map_err(ApiError::bad_request)?;
    check_inline(&inline, &digests, inline_blob_bytes(st.limits.max_body_bytes))?;
    let (hash, missing, pending) = if digests.is_empty() && body.len() <= INLINE_WORK_BYTES {
        // No file to look at and a small payload to hash: microseconds,
        // done here rather than on the blocking pool.
        (protocol::inputs_hash(step.as_str(), &req.payload), Vec::new(), Vec::new())
    } else if body.len() <= QUICK_SUBMISSION_BYTES && digests.len() <= QUICK_SUBMISSION_BLOBS {
        // A few small inputs: one small file written and a few `stat`s,
        // quicker here than a trip to a blocking thread and back.
        stage_inputs(&st.env.paths, &st.spares, inline, digests, step.as_str(), &req.payload)?
    } else {
        let paths = st.env.paths.clone();
        let spares = st.spares.clone();
        let payload = req.payload.clone();
        let step_name = step.as_str().to_string();
        web::block(move || stage_inputs(&paths, &spares, inline, digests, &step_name, &payload)).await??
    };
    if let Some(d) = missing.first() {
        return Err(ApiError::new(ApiCode::BlobNotFound, format!("the payload names blob {d}, which is not staged here; upload it first with PUT /blobs/{d}")));
    }
    if let Some(client_hash) = &req.inputs_hash {
        if client_hash != &hash {
            return Err(ApiError::new(
                ApiCode::InputsHashMismatch,
                format!("inputs_hash {client_hash:?} does not match the worker's {hash} for this step and payload; compute it as docs/protocol.md says, or omit it"),
            ));
        }
    }
    let lease_s = match req.lease_s {
        Some(l) if !(1..=protocol::MAX_LEASE_S).contains(&l) => {
            return Err(ApiError::bad_request(format!("lease_s must be 1 to {} seconds", protocol::MAX_LEASE_S)));
        }
        other => other,
    };
    let new = NewJob { step_name: step.as_str().to_string(), inputs_hash: hash, payload: req.payload, label: req.label, lease_s };
    let now = now_ms();
    let max = st.limits.max_jobs_in_flight;
    // When the step's executor has a free slot (and nothing waits), the job
    // is accepted and marked running in one commit, so it starts without a
    // second sync; otherwise it is queued. Answered once the record is
    // durable (the store's group commit).
    let executor = st.executors.get(&step).cloned();
    let mut reservation = match &executor {
        Some(addr) => Reservation::take(addr).await,
        None => None,
    };
    // The request's nonce goes into the same transaction (see
    // `guard::NonceSlot`); after a failed write the guard records it.
    let slot = actix_web::HttpMessage::extensions(&http).get::<crate::guard::NonceSlot>().cloned();
    let nonce = slot.as_ref().and_then(|s| s.take());
    let started = reservation.as_ref().map(|r| r.job_id.clone());
    // A step that allows it starts now, while the job and its inline
    // inputs are made durable (see `StepName::starts_before_acceptance`);
    // it reads its inline inputs from their temporary files, and its end
    // is recorded only after the acceptance. Not when this worker knows
    // the job already (a duplicate is answered from the existing job) or
    // is starting it early for another submission right now: two copies
    // of a job never run at once. Otherwise the job starts (or queues)
    // once both are done.
    //
    // The acceptance of a job started early is queued before the job
    // starts, so that its end is queued after it, and waits up to
    // EARLY_PATIENCE for company: a step that ends by then has its end
    // recorded in the same commit and sync as its acceptance.
    let early_key = (step, new.inputs_hash.clone());
    let (early, commit) = match reservation.take() {
        Some(r)
            if step.starts_before_acceptance()
                && !st.env.store.knows_inputs(step.as_str(), &new.inputs_hash).unwrap_or(true)
                && st.early.insert(early_key.clone()) =>
        {
            let record = r.record_for(&new, now);
            let patience = std::time::Instant::now() + EARLY_PATIENCE;
            let commit = st.env.store.submit_started_early(new, r.job_id.clone(), nonce.clone(), now, max, patience);
            (Some(r.start_early(&st, record, &pending)), Either::Left(commit))
        }
        other => {
            reservation = other;
            let store = st.env.store.clone();
            let nonce = nonce.clone();
            let started = started.clone();
            (None, Either::Right(async move { store.submit_async(new, started, nonce, now, max).await }))
        }
    };
    // The inline inputs' sync overlaps the job's commit.
    let keep_temp = early.is_some();
    let stored = (!pending.is_empty()).then(|| web::block(move || crate::files::finish_inline(pending, keep_temp)));
    let (accepting_id, accepting_st) = (started.clone(), st.clone());
    let accept = async move {
        let committed = commit.await;
        let Some(tx) = early else {
            wait_stored(stored).await;
            return committed;
        };
        let accepted = match &committed {
            Ok(Submission::Created(rec)) if Some(&rec.job_id) == accepting_id.as_ref() => Some(rec.clone()),
            _ => None,
        };
        // The store answers for the job from now on.
        accepting_st.early.remove(&early_key);
        // Its lease starts before the job learns of its acceptance: the job
        // may have ended already, and releases the lease once recorded.
        if let Some((id, Some(l))) = accepted.as_ref().map(|rec| (&rec.job_id, rec.lease_s)) {
            accepting_st.env.leases.grant(id, Duration::from_secs(l));
        }
        // The job learns of its acceptance once its inputs are in place
        // (it then removes their temporary names), and the answer waits
        // for them too: an input sent inline is stored before its job is
        // acknowledged, so that a later job may name it by digest alone.
        wait_stored(stored).await;
        let _ = tx.send(accepted);
        committed
    };
    // A job started early learns of its acceptance from a task of its own,
    // so that it is told even if this request is dropped meanwhile.
    let committed = if keep_temp {
        match actix_web::rt::spawn(accept).await {
            Ok(committed) => committed,
            Err(e) => return Err(ApiError::internal("accepting the job", e.to_string())),
        }
    } else {
        accept.await
    };
    let outcome = match committed {
        Ok(outcome) => outcome,
        Err(e) => {
            if let (Some(s), Some(n)) = (&slot, nonce) {
                s.put_back(n);
            }
            return Err(e.into());
        }
    };
    match outcome {
        Submission::Created(rec) => {
            // A job started early has its lease already.
            if let (Some(l), false) = (rec.lease_s, keep_temp) {
                st.env.leases.grant(&rec.job_id, Duration::from_secs(l));
            }
            // The log starts in memory: no file or folder for a short job.
            // A job started early has it already.
            if !keep_temp {
                let line = format!("job {} queued: step {} inputs_hash {}", rec.job_id, rec.step_name, rec.inputs_hash);
                st.env.new_log(&rec.job_id).line("worker", &line);
            }
            match (reservation, &executor) {
                // Running since before its commit.
                _ if keep_temp => {}
                (Some(r), _) if r.job_id == rec.job_id => r.start(rec.clone()),
                (_, Some(addr)) => addr.do_send(Enqueue { job_id: rec.job_id.clone() }),
                (_, None) => {}
            }
            st.env.notify_job(&rec.job_id);
            tracing::info!(job_id = %rec.job_id, step = %rec.step_name, "job accepted");
            if stream {
                return Ok(streamed(st.clone(), actix_web::http::StatusCode::CREATED, false, rec, q.wait_ms));
            }
            let job = view_after(&st, &rec, q.wait_ms).await?;
            Ok(HttpResponse::Created().json(Submitted { cached: false, job }))
        }
        Submission::Existing(rec) => {
            // The new submitter now watches the job: its lease is renewed
            // (or, for a job that had none, granted).
            if let (Some(l), false) = (lease_s, rec.state.is_terminal()) {
                if st.env.leases.renew(&rec.job_id) == rayvault::lease::Renewal::NoLease {
                    st.env.leases.grant(&rec.job_id, Duration::from_secs(l));
                }
            }
            tracing::info!(job_id = %rec.job_id, step = %rec.step_name, "duplicate submission: returning the existing job");
            if stream {
                return Ok(streamed(st.clone(), actix_web::http::StatusCode::OK, true, rec, q.wait_ms));
            }
            let job = view_after(&st, &rec, q.wait_ms).await?;
            Ok(HttpResponse::Ok().json(Submitted { cached: true, job }))
        }
        Submission::Full => Err(ApiError::new(
            ApiCode::TooManyJobs,
            format!("{max} jobs are already queued or running (worker.max_jobs_in_flight); retry later"),
        )),
    }
}

/// Waits for a submission's inline inputs to be synced and in place (see
/// `files::finish_inline`); a failure is logged: the job that names them
/// fails for its missing input if it runs again.
async fn wait_stored(stored: Option<impl std::future::Future<Output = Result<std::io::Result<()>, actix_web::error::BlockingError>>>) {
    if let Some(stored) = stored {
        match stored.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "an inline input could not be stored; the job that names it fails when it runs"),
            Err(e) => tracing::error!(error = %e, "storing an inline input stopped; the job that names it fails when it runs"),
        }
    }
}

/// Submissions up to this size with at most [`QUICK_SUBMISSION_BLOBS`] blob
/// references stage their inputs on the request's own thread
/// ([`stage_inputs`]); larger ones on the blocking pool. Twice
/// [`rayvault::artifacts::INLINE_IO_BYTES`]: base64 and the JSON around it
/// make 64 KiB of inputs about 86 KiB of body.
const QUICK_SUBMISSION_BYTES: usize = 2 * rayvault::artifacts::INLINE_IO_BYTES;

/// See [`QUICK_SUBMISSION_BYTES`].
const QUICK_SUBMISSION_BLOBS: usize = 4;

/// The inputs of a submission that names blobs: those sent inline are
/// checked and written to temporary files (spare files made ahead where
/// one is ready, [`crate::spares`]; synced and renamed into place
/// while the job is committed, [`crate::files::finish_inline`]), the
/// others must be stored already (and are touched, so that the blob
/// pruner keeps them). Answers the job's `inputs_hash`, the digests
/// missing here and the inline inputs pending. Blocking, briefly.
fn stage_inputs(
    paths: &rayvault::store::WorkerPaths,
    spares: &std::sync::Arc<crate::spares::Spares>,
    inline: Vec<protocol::InlineBlob>,
    digests: Vec<String>,
    step_name: &str,
    payload: &serde_json::Value,
) -> Result<(String, Vec<String>, Vec<crate::files::PendingBlob>), ApiError> {
    let pending = crate::files::prepare_inline(paths, spares, inline)?;
    let inline_digest = |d: &String| pending.iter().any(|p| &p.sha256 == d);
    let missing: Vec<String> = digests.iter().filter(|d| !inline_digest(d) && !paths.blob_path(d).is_file()).cloned().collect();
    if missing.is_empty() {
        for d in digests.iter().filter(|d| !inline_digest(d)) {
            crate::files::touch(&paths.blob_path(d));
        }
    }
    Ok((protocol::inputs_hash(step_name, payload), missing, pending))
}

/// The answer of `POST /jobs?stream=1` ([`SubmitQuery::stream`]): the
/// acceptance as the first line, sent at once, and the job's view after
/// [`view_after`] as the second. If the job cannot be read back for the
/// second line, the answer ends after the first: the submitter then asks
/// for the job by its id.
fn streamed(st: Data, status: actix_web::http::StatusCode, cached: bool, rec: JobRecord, wait_ms: Option<u64>) -> HttpResponse {
    use futures_util::StreamExt;
    let first = json_line(&Submitted { cached, job: rec.view() });
    let second = futures_util::stream::once(async move {
        match view_after(&st, &rec, wait_ms).await {
            Ok(view) => json_line(&view),
            Err(e) => {
                tracing::warn!(job_id = %rec.job_id, "the second line of a streamed submission could not be read: {e}");
                None
            }
        }
    })
    .filter_map(std::future::ready);
    let body = futures_util::stream::iter(first).chain(second).map(Ok::<_, actix_web::Error>);
    HttpResponse::build(status).content_type("application/x-ndjson").streaming(body)
}

/// `value` as one line of JSON (serde_json's compact form has no newline).
fn json_line<T: serde::Serialize>(value: &T) -> Option<web::Bytes> {
    let mut line = serde_json::to_vec(value).ok()?;
    line.push(b'\n');
    Some(web::Bytes::from(line))
}

/// The submitted job's view: at once, or (`wait_ms`) once it has ended if
/// it ends within the wait ([`SubmitQuery::wait_ms`]).
async fn view_after(st: &AppState, rec: &JobRecord, wait_ms: Option<u64>) -> Result<JobView, ApiError> {
    let lease_cap = rec.lease_s.map_or(u64::MAX, |l| l * 1000 / 2);
    let wait = wait_ms.unwrap_or(0).min(MAX_SUBMIT_WAIT_MS).min(lease_cap);
    if wait == 0 || rec.state.is_terminal() {
        return Ok(rec.view());
    }
    wait_for_job(st, &rec.job_id, Duration::from_millis(wait)).await
}

/// A slot of a step's executor held for a job about to be submitted (see
/// `executor::Reserve`). Dropped unused (a duplicate submission, a full
/// worker, a store error), it gives the slot back.
struct Reservation {
    job_id: String,
    addr: Option<Addr<StepExecutor>>,
}

impl Reservation {
    /// A new job id with a slot for it, if the executor has one free.
    async fn take(addr: &Addr<StepExecutor>) -> Option<Reservation> {
        let job_id = rayvault::store::new_job_id();
        match addr.send(Reserve { job_id: job_id.clone() }).await {
            Ok(true) => Some(Reservation { job_id, addr: Some(addr.clone()) }),
            _ => None,
        }
    }

    /// Hands the job, recorded `running`, to its executor.
    fn start(mut self, record: JobRecord) {
        if let Some(addr) = self.addr.take() {
            addr.do_send(StartReserved { record });
        }
    }

    /// The record the commit that accepts the reserved job writes.
    fn record_for(&self, new: &NewJob, now: u64) -> JobRecord {
        JobRecord {
            job_id: self.job_id.clone(),
            step_name: new.step_name.clone(),
            state: protocol::JobState::Running,
            inputs_hash: new.inputs_hash.clone(),
            label: new.label.clone(),
            payload: new.payload.clone(),
            created_at_ms: now,
            started_at_ms: Some(now),
            finished_at_ms: None,
            attempt: 1,
            result: None,
            error: None,
            artifacts: Vec::new(),
            seq: 0,
            lease_s: new.lease_s,
            log: None,
        }
    }

    /// Hands the job to its executor before the commit that accepts it
    /// (`executor::StartEarly`), with the record that commit writes
    /// ([`Reservation::record_for`]) and the temporary files of its
    /// inline inputs; its log starts here. The answer is the sender of the
    /// acceptance: the job's record once it is durable, or `None` (then
    /// the run is discarded). The slot is the job's from now on, accepted
    /// or not, until its run ends.
    fn start_early(mut self, st: &AppState, record: JobRecord, pending: &[crate::files::PendingBlob]) -> tokio::sync::oneshot::Sender<Option<JobRecord>> {
        let (tx, accepted) = tokio::sync::oneshot::channel();
        let line = format!("job {} queued: step {} inputs_hash {}; started while its acceptance is made durable", record.job_id, record.step_name, record.inputs_hash);
        st.env.new_log(&record.job_id).line("worker", &line);
        let inputs = pending.iter().map(|p| (p.sha256.clone(), p.temp_path().to_path_buf())).collect();
        if let Some(addr) = self.addr.take() {
            addr.do_send(StartEarly { record, inputs, accepted });
        }
        tx
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(addr) = self.addr.take() {
            addr.do_send(Unreserve { job_id: self.job_id.clone() });
        }
    }
}

/// Parses a `POST /jobs` body. A key given twice in any object of it is
/// refused (`DUPLICATE_KEY`): the worker and a client that keep different
/// copies of it would hash different payloads.
///
/// The body's `blobs` list (small inputs sent inline, see
/// [`protocol::InlineBlob`]) is returned beside the job.
fn parse_submission(body: &[u8]) -> Result<(SubmitJob, Vec<InlineBlob>), ApiError> {
    let mut doc = protocol::parse_json_unique_keys(body).map_err(|e| match e {
        JsonRefusal::DuplicateKey(m) => {
            ApiError::new(ApiCode::DuplicateKey, format!("the job body names a key twice: {m}; send each key once per object"))
        }
        JsonRefusal::Malformed(m) => ApiError::bad_request(format!("the job body is not valid JSON: {m}")),
    })?;
    let inline = match doc.as_object_mut().and_then(|m| m.remove(protocol::INLINE_BLOBS_KEY)) {
        None => Vec::new(),
        Some(list) => serde_json::from_value(list).map_err(|e| {
            ApiError::bad_request(format!("the job body's \"blobs\" must be a list of {{\"sha256\", \"data_b64\"}} objects: {e}"))
        })?,
    };
    let job = serde_json::from_value(doc).map_err(|e| ApiError::bad_request(format!("the job body is not valid: {e}")))?;
    Ok((job, inline))
}

/// The most input bytes a `POST /jobs` may carry inline (advertised in
/// `/caps` as `inline_blob_bytes`): what fits base64-encoded (4 bytes per
/// 3) in a body of `max_body` bytes with 64 KiB left for the rest of the
/// job, and never more than [`protocol::INLINE_BLOB_MAX`].
pub fn inline_blob_bytes(max_body: usize) -> u64 {
    let room = max_body.saturating_sub(64 * 1024) as u64 / 4 * 3;
    room.min(protocol::INLINE_BLOB_MAX)
}

/// Checks the shape of the inline inputs before anything is decoded: each
/// names a blob the payload refers to, once, and their encoded size fits
/// `limit` (their digests are checked when they are stored).
fn check_inline(inline: &[InlineBlob], referenced: &[String], limit: u64) -> Result<(), ApiError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut encoded = 0u64;
    for b in inline {
        if !protocol::is_sha256_hex(&b.sha256) {
            return Err(ApiError::bad_request("each inline blob's sha256 must be 64 lower-case hex digits"));
        }
        if !referenced.iter().any(|d| d == &b.sha256) {
            return Err(ApiError::bad_request(format!(
                "inline blob {} is not named by the payload; send only the inputs the payload refers to as blob:sha256:<hex>",
                b.sha256
            )));
        }
        if !seen.insert(b.sha256.as_str()) {
            return Err(ApiError::new(ApiCode::DuplicateKey, format!("inline blob {} is sent twice; send each input once", b.sha256)));
        }
        encoded += b.data_b64.len() as u64;
    }
    if encoded / 4 * 3 > limit {
        return Err(ApiError::new(
            ApiCode::PayloadTooLarge,
            format!("the inline inputs exceed this worker's {limit} bytes (inline_blob_bytes in /caps); upload larger inputs with PUT /blobs/<sha256>"),
        ));
    }
    Ok(())
}
