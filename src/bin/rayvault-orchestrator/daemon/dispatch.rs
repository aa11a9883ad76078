//! A job's run and the record of its end: [`dispatch`] hands a job to the
//! JobRunner, then records its end in the store and writes its receipt file.
//! At start-up, [`resume_unfinished`] restores missing receipt files and picks
//! up the jobs a previous daemon left unfinished.

use super::Data;
use actix_web::web;
use rayvault::actors::job_runner::SubmitJob;
use rayvault::controller_store::{ControllerStore, Phase, RemoteRef, StoredJob};
use rayvault::receipt::{JobSpec, Receipt};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The receipt of this submission of `job` if one was written already (its
/// run ended, but the end was not recorded in the store). Reads a file.
fn ended_before(cluster_dir: &std::path::Path, job: &StoredJob) -> Option<Receipt> {
    let at = UNIX_EPOCH + Duration::from_millis(job.submitted_at_ms);
    let dir = rayvault::receipt::receipt_dir(cluster_dir, &job.spec.run_id, &job.spec.job_id);
    Receipt::read(&dir).ok().filter(|r| r.timings.submitted_at == rayvault::joblog::format_utc(at))
}

/// Writes the receipt file of an ended job, without a sync to disk: the
/// store holds the durable copy, and [`rewrite_receipts`] restores a file
/// lost with the daemon. A receipt that finds the disk full is kept in
/// memory and written once space returns.
fn write_receipt_file(cluster_dir: &std::path::Path, receipt: &Receipt) {
    let dir = rayvault::receipt::receipt_dir(cluster_dir, &receipt.run_id, &receipt.job_id);
    match receipt.write_unsynced_or_keep(&dir) {
        Ok(_) => {}
        Err(e) if rayvault::error::is_disk_full(&e) => tracing::error!(
            job = %format!("{}/{}", receipt.run_id, receipt.job_id),
            "DISK_FULL: the receipt could not be written into {} ({e}); it is kept in memory and written as soon as space is freed there",
            dir.display()
        ),
        Err(e) => tracing::error!(job = %format!("{}/{}", receipt.run_id, receipt.job_id), "could not write the receipt into {}: {e}", dir.display()),
    }
}

/// Start-up: writes again the receipt file of every ended job whose file is
/// missing or differs from the receipt in the store (a daemon killed between
/// recording a job's end and writing its file, or a machine that lost the
/// file's unsynced data). Answers how many it wrote.
fn rewrite_receipts(cluster_dir: &std::path::Path, store: &ControllerStore) -> anyhow::Result<usize> {
    let mut written = 0;
    for job in store.all()? {
        let Some(receipt) = job.receipt.as_ref().filter(|_| job.phase == Phase::Finished) else { continue };
        let dir = rayvault::receipt::receipt_dir(cluster_dir, &receipt.run_id, &receipt.job_id);
        let current = std::fs::read(dir.join(rayvault::receipt::RECEIPT_FILE)).ok();
        if current.is_some_and(|bytes| receipt.file_bytes().is_ok_and(|b| b == bytes)) {
            continue;
        }
        write_receipt_file(cluster_dir, receipt);
        written += 1;
    }
    Ok(written)
}

/// Picks up the jobs a previous daemon left unfinished: re-attaching to
/// remote ones, running local ones again (they never completed). Before
/// that, restores the receipt files of the jobs that ended.
pub(super) async fn resume_unfinished(state: &Data) -> anyhow::Result<()> {
    let cluster = state.settings.cluster_dir();
    let rewritten = rewrite_receipts(&cluster, &state.store)?;
    if rewritten > 0 {
        tracing::info!("wrote {rewritten} receipt file(s) again from the store (missing or not up to date after the previous run)");
    }
    for job in state.store.unfinished()? {
        let at = UNIX_EPOCH + Duration::from_millis(job.submitted_at_ms);
        // A job whose receipt file of this submission exists ended, and
        // must not run again: earlier versions wrote the receipt before
        // recording the end, and a failed store write leaves the file as
        // the only record.
        if let Some(receipt) = ended_before(&cluster, &job) {
            tracing::info!(job = %job.spec.key(), "the job had ended before the restart; recording its receipt");
            state
                .store
                .update_async(&job.spec.key(), |j| {
                    j.phase = Phase::Finished;
                    j.receipt = Some(receipt);
                })
                .await?;
            continue;
        }
        match &job.remote {
            Some(r) => tracing::info!(job = %job.spec.key(), "resuming a job from the previous run: re-attaching to {} on {}", r.remote_job_id, r.node_id),
            None => tracing::info!(job = %job.spec.key(), "resuming a job from the previous run: it had not reached a worker, so it runs again"),
        }
        dispatch(state.clone(), job.spec, job.remote, true, at);
    }
    Ok(())
}

/// How many times one job is picked up again after the JobRunner restarted
/// under it, before it is left for the next daemon start.
const MAX_RUNNER_RESTARTS: u32 = 3;

/// Hands a job to the JobRunner and records its end: the store's record
/// (durable) and the receipt file at once, then the job's long-polls are
/// woken, so that an answer saying the job ended always finds its receipt
/// file. When the JobRunner is restarted mid-job (which drops the job's
/// run), the job is picked up again at once, the way a daemon restart
/// would: re-attached to its remote job if it had one, run again otherwise.
/// `recovered`: the job is picked up after a restart (see
/// `SubmitJob::recovered`).
pub(super) fn dispatch(state: Data, spec: JobSpec, resume: Option<RemoteRef>, recovered: bool, submitted_at: SystemTime) {
    let notify = state.live.begin(&spec.key());
    actix::spawn(run_to_end(state, spec, resume, recovered, submitted_at, notify, None));
}

/// A new job handed to the JobRunner while its acceptance commits: the
/// run stages its inputs meanwhile and waits at its gate (see
/// `SubmitJob::admission`) until [`Gate::admit`]; a gate dropped without
/// it (a duplicate, a failed commit) ends the run with nothing done or
/// recorded. The submission's commit and the run's first steps then
/// overlap instead of following each other.
pub(super) struct Gate {
    state: Data,
    key: String,
    admit: tokio::sync::oneshot::Sender<Arc<tokio::sync::Notify>>,
}

impl Gate {
    /// The job's record is durable and it is new: the run goes on. Its
    /// notify exists from here on, before the submission's answer waits on
    /// it.
    pub(super) fn admit(self) {
        let notify = self.state.live.begin(&self.key);
        let _ = self.admit.send(notify);
    }
}

/// Starts `spec`'s run behind a [`Gate`].
pub(super) fn dispatch_gated(state: Data, spec: JobSpec, submitted_at: SystemTime) -> Gate {
    let (admit, admitted) = tokio::sync::oneshot::channel::<Arc<tokio::sync::Notify>>();
    let (open, gate) = tokio::sync::oneshot::channel::<bool>();
    let key = spec.key();
    let runner = state.controller.runner.clone();
    let first = runner.send(SubmitJob { spec: spec.clone(), resume: None, recovered: false, submitted_at, probed_at: None, admission: Some(gate) });
    let st = state.clone();
    actix::spawn(async move {
        let decide = async move {
            let notify = admitted.await.ok();
            let _ = open.send(notify.is_some());
            notify
        };
        let (sent, notify) = futures_util::future::join(first, decide).await;
        if let Some(notify) = notify {
            run_to_end(st, spec, None, false, submitted_at, notify, Some(sent)).await;
        }
    });
    Gate { state, key, admit }
}

/// Runs a job to its end (again after a JobRunner restart) and records its
/// end; `first` is the answer of a run already handed over.
async fn run_to_end(
    state: Data,
    spec: JobSpec,
    mut resume: Option<RemoteRef>,
    mut recovered: bool,
    submitted_at: SystemTime,
    notify: Arc<tokio::sync::Notify>,
    mut first: Option<Result<rayvault::receipt::Receipt, actix::MailboxError>>,
) {
    let key = spec.key();
    let mut restarts = 0;
    let receipt = loop {
        let sent = match first.take() {
            Some(sent) => sent,
            None => {
                state
                    .controller
                    .runner
                    .send(SubmitJob { spec: spec.clone(), resume: resume.take(), recovered, submitted_at, probed_at: None, admission: None })
                    .await
            }
        };
        match sent {
            Ok(receipt) => break receipt,
            // Restarted in place, the JobRunner keeps its address; a
            // closed one means the daemon is shutting down.
            Err(_) if restarts < MAX_RUNNER_RESTARTS && state.controller.runner.connected() => {
                restarts += 1;
                let stored = match state.store.get(&key) {
                    Ok(Some(j)) => j,
                    other => {
                        let why = match other {
                            Err(e) => e.to_string(),
                            Ok(_) => "it is no longer in the store".to_string(),
                        };
                        tracing::error!(job = %key, "the job runner restarted mid-job and the job cannot be read back ({why}); it resumes at the next start");
                        return;
                    }
                };
                tracing::warn!(job = %key, "the job runner restarted mid-job; picking the job up again ({restarts}/{MAX_RUNNER_RESTARTS})");
                resume = stored.remote;
                recovered = true;
            }
            Err(_) => {
                tracing::error!(job = %key, "the job runner stopped before the job ended; it resumes at the next start");
                return;
            }
        }
    };
    // The end's record and the receipt file are written at once (the
    // commit's sync and the file's creation overlap), and the job's
    // long-polls are woken once both are done. A crash between the two
    // leaves either the record without the file (written again at
    // start-up, `rewrite_receipts`) or the file without the record
    // (the restart recognises the job as ended from it, `ended_before`).
    //
    // A job that ran on a worker is answered once its receipt file is
    // written, while its end commits (within `controller_store::SOON`,
    // sharing the next write's sync when one comes sooner): the worker
    // holds the job's outcome durably, so a daemon that dies before the
    // commit finds the job ended from the file (`ended_before`), or, when
    // a power cut lost the unsynced file too, re-attaches to the finished
    // job on its worker (by its recorded remote id, or by its label,
    // `remote::find_submitted`); it never runs again. A job that ran
    // here (or nowhere) is answered only once its end is durable too.
    fn report(key: &str, saved: Result<Option<StoredJob>, rayvault::controller_store::StoreError>) {
        if !matches!(saved, Ok(Some(_))) {
            let why = match saved {
                Err(e) => e.to_string(),
                Ok(_) => "it is no longer in the store".to_string(),
            };
            // The receipt file is then the only record of the end.
            tracing::error!(job = %key, "could not record the end of the job: {why}");
        }
    }
    let on_worker = receipt.executed_on.as_deref().is_some_and(|on| on != rayvault::receipt::LOCAL);
    let recorded = receipt.clone();
    let cluster = state.settings.cluster_dir();
    if on_worker {
        // Queued now, before the answer: a later submission of the same
        // key is written after it, so it finds this job finished.
        state.live.recording.insert(key.clone(), receipt.clone());
        let (live, k, kept) = (state.live.clone(), key.clone(), receipt.clone());
        state.store.update_then(
            &key,
            |j| {
                j.phase = Phase::Finished;
                j.receipt = Some(recorded);
            },
            move |saved| {
                report(&k, saved);
                live.recording.committed(&k, &kept);
            },
        );
        // One small unsynced file: written here, in less time than a
        // trip to a blocking thread and back takes.
        write_receipt_file(&cluster, &receipt);
    } else {
        let saved = state.store.update_async(&key, |j| {
            j.phase = Phase::Finished;
            j.receipt = Some(recorded);
        });
        let file = web::block(move || write_receipt_file(&cluster, &receipt));
        let (saved, _) = futures_util::future::join(saved, file).await;
        report(&key, saved);
    }
    state.live.end(&key, &notify);
}
