//! The store's commit queue (group commit): every write goes to one writer
//! thread, which takes all the writes waiting at that moment, applies them
//! in one write transaction and commits once, so that writes arriving
//! together share one sync. Each caller gets its answer only after the
//! commit that holds its write has returned.
//!
//! A batch commits with `Durability::Immediate` when any of its writes asks
//! for it, and `Eventual` otherwise (nonces and child records, which need
//! to survive a crash of the worker but not a power cut; on Linux redb
//! syncs an `Eventual` commit too).
//!
//! A write may be *patient* ([`Writer::write_async_patient`]): it accepts
//! to wait a little for company, so that it shares a commit (and its sync)
//! with the next write rather than paying for one of its own. A batch of
//! patient writes only commits when another write arrives, when the
//! earliest of their deadlines passes, or when a caller asks to *hurry*
//! ([`Writer::hurry`]: its answer is ready and only waits for the commit).
//! A request's nonce is the use: a long-poll's nonce commits with the end
//! of the job it waits for.
//!
//! When anything in a batch fails, the transaction is dropped (nothing of
//! it is written) and each write of the batch is run again in a
//! transaction of its own, so that one failing write fails only its own
//! caller, with its own error.

use super::{Db, StoreError, StoreErrorKind};
use redb::{Durability, WriteTransaction};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

/// The most writes one transaction takes; the rest wait for the next one.
const MAX_BATCH: usize = 256;

/// How soon a write is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flush {
    /// On disk when the commit returns (fsync).
    Immediate,
    /// With the operating system when the commit returns: survives a crash
    /// of the process, not a power cut.
    Eventual,
}

/// Where a write's answer goes.
enum Reply<T> {
    Blocking(mpsc::SyncSender<Result<T, StoreError>>),
    Async(tokio::sync::oneshot::Sender<Result<T, StoreError>>),
}

impl<T> Reply<T> {
    fn send(self, r: Result<T, StoreError>) {
        // A caller that stopped waiting (a dropped request) needs no answer.
        match self {
            Reply::Blocking(tx) => {
                let _ = tx.send(r);
            }
            Reply::Async(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// A write waiting in the queue, with its result type erased.
trait Pending: Send + Batched {
    fn sync(&self) -> Flush;
    /// Applies the write to `tx` and keeps its result until the commit.
    fn apply(&mut self, tx: &WriteTransaction) -> Result<(), StoreError>;
    /// Answers the caller: its kept result, or `failure`.
    fn answer(self: Box<Self>, failure: Option<StoreError>);
}

struct Write<T, F> {
    op: F,
    sync: Flush,
    value: Option<T>,
    reply: Reply<T>,
    patience: Option<Instant>,
}

/// See [`Writer::hurry`].
struct Hurry;

impl Pending for Hurry {
    fn sync(&self) -> Flush {
        Flush::Eventual
    }
    fn apply(&mut self, _: &WriteTransaction) -> Result<(), StoreError> {
        Ok(())
    }
    fn answer(self: Box<Self>, _: Option<StoreError>) {}
}

impl Batched for Hurry {
    fn patience(&self) -> Option<Instant> {
        None
    }
    fn is_hurry(&self) -> bool {
        true
    }
}

impl<T, F> Pending for Write<T, F>
where
    T: Send,
    F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send,
{
    fn sync(&self) -> Flush {
        self.sync
    }

    fn apply(&mut self, tx: &WriteTransaction) -> Result<(), StoreError> {
        self.value = Some((self.op)(tx)?);
        Ok(())
    }

    fn answer(self: Box<Self>, failure: Option<StoreError>) {
        let r = match (failure, self.value) {
            (Some(e), _) => Err(e),
            (None, Some(v)) => Ok(v),
            (None, None) => Err(StoreError::new(StoreErrorKind::Other, "a queued write was answered without running")),
        };
        self.reply.send(r);
    }
}

impl<T, F> Batched for Write<T, F> {
    fn patience(&self) -> Option<Instant> {
        self.patience
    }
}

/// The sending end of the queue and its writer thread; dropping it (with
/// the last `Store` handle) stops the thread and waits for it, so that the
/// database file is closed when the last handle is gone.
pub(super) struct Writer {
    queue: Option<mpsc::Sender<Box<dyn Pending>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub(super) fn start(db: Arc<Db>) -> Writer {
        let (tx, rx) = mpsc::channel::<Box<dyn Pending>>();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(&db, rx))
            .expect("the store's writer thread could not be started");
        Writer { queue: Some(tx), thread: Some(thread) }
    }

    fn push(&self, p: Box<dyn Pending>) -> Result<(), StoreError> {
        match &self.queue {
            Some(q) => q.send(p).map_err(|_| StoreError::closed()),
            None => Err(StoreError::closed()),
        }
    }

    /// Queues `op` and waits (blocking the thread) for its commit.
    pub(super) fn write<T, F>(&self, sync: Flush, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.push(Box::new(Write { op, sync, value: None, reply: Reply::Blocking(tx), patience: None }))?;
        rx.recv().unwrap_or_else(|_| Err(StoreError::closed()))
    }

    /// Queues `op`; the future resolves after its commit, without holding a
    /// thread while it waits.
    pub(super) fn write_async<T, F>(&self, sync: Flush, op: F) -> impl std::future::Future<Output = Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_async_patient(sync, None, op)
    }

    /// [`Writer::write_async`] for a write that may wait until `patience`
    /// for another write to share its commit (see the module doc).
    pub(super) fn write_async_patient<T, F>(&self, sync: Flush, patience: Option<Instant>, op: F) -> impl std::future::Future<Output = Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = self.push(Box::new(Write { op, sync, value: None, reply: Reply::Async(tx), patience }));
        async move {
            queued?;
            rx.await.unwrap_or_else(|_| Err(StoreError::closed()))
        }
    }

    /// Commits the patient writes waiting now without waiting for their
    /// deadline: a caller whose answer is ready asks this before it awaits
    /// its patient write. Nothing is committed for it when no write waits.
    pub(super) fn hurry(&self) {
        let _ = self.push(Box::new(Hurry));
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(db: &Db, rx: mpsc::Receiver<Box<dyn Pending>>) {
    while let Some(batch) = next_batch(&rx) {
        commit(db, batch);
    }
}

/// A write in a commit queue, as [`next_batch`] sees it.
pub(crate) trait Batched {
    /// Until when the write may wait for another one to share its commit;
    /// None: it commits as soon as the writer takes it.
    fn patience(&self) -> Option<Instant>;
    /// True for a request to commit the patient writes waiting now, which
    /// is no write itself (dropped from the batch).
    fn is_hurry(&self) -> bool {
        false
    }
}

impl<T: Batched + ?Sized> Batched for Box<T> {
    fn patience(&self) -> Option<Instant> {
        (**self).patience()
    }
    fn is_hurry(&self) -> bool {
        (**self).is_hurry()
    }
}

/// The next batch of a commit queue: waits for the first write, then takes
/// every other one already queued, up to [`MAX_BATCH`]. A batch made only
/// of patient writes waits, until the earliest of their deadlines, for one
/// more write (which then shares the commit) or a hurry. Hurries are
/// dropped from the batch; a hurry with no write to hurry is ignored.
/// `None` once every sender is gone. The worker's and the daemon's stores
/// both batch this way.
pub(crate) fn next_batch<T: Batched>(rx: &mpsc::Receiver<T>) -> Option<Vec<T>> {
    let mut batch: Vec<T> = Vec::new();
    let mut hurried = false;
    loop {
        let next = if batch.is_empty() {
            rx.recv().ok()
        } else {
            // Every write in the batch is patient here.
            let deadline = batch.iter().filter_map(Batched::patience).min().unwrap_or_else(Instant::now);
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(p) => Some(p),
                Err(mpsc::RecvTimeoutError::Timeout) => return Some(batch),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Some(batch),
            }
        };
        let Some(first) = next else {
            return (!batch.is_empty()).then_some(batch);
        };
        let mut taken = vec![first];
        while batch.len() + taken.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => taken.push(p),
                Err(_) => break,
            }
        }
        for p in taken {
            if p.is_hurry() {
                hurried = true;
            } else {
                batch.push(p);
            }
        }
        if batch.is_empty() {
            // Hurries with nothing to hurry.
            hurried = false;
            continue;
        }
        if hurried || batch.len() >= MAX_BATCH || batch.iter().any(|p| p.patience().is_none()) {
            return Some(batch);
        }
    }
}

fn durability(sync: Flush) -> Durability {
    match sync {
        Flush::Immediate => Durability::Immediate,
        Flush::Eventual => Durability::Eventual,
    }
}

/// Commits a batch in one transaction, or each write alone when that fails.
fn commit(db: &Db, mut batch: Vec<Box<dyn Pending>>) {
    db.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    db.batched_writes.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
    if batch.len() > 1 {
        let sync = if batch.iter().any(|p| p.sync() == Flush::Immediate) { Flush::Immediate } else { Flush::Eventual };
        let together = db.run(|database| {
            let mut tx = database.begin_write()?;
            tx.set_durability(durability(sync));
            for p in batch.iter_mut() {
                p.apply(&tx)?;
            }
            tx.commit()?;
            Ok(())
        });
        if together.is_ok() {
            for p in batch {
                p.answer(None);
            }
            return;
        }
    }
    for mut p in batch {
        let sync = p.sync();
        let alone = db.run(|database| {
            let mut tx = database.begin_write()?;
            tx.set_durability(durability(sync));
            p.apply(&tx)?;
            tx.commit()?;
            Ok(())
        });
        p.answer(alone.err());
    }
}

#[cfg(test)]
mod tests {
    use super::{next_batch, Batched};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// A write for [`next_batch`]: its name, and how long it may wait.
    #[derive(Debug, PartialEq)]
    enum W {
        Now(&'static str),
        Patient(&'static str, Instant),
        Hurry,
    }

    impl Batched for W {
        fn patience(&self) -> Option<Instant> {
            match self {
                W::Patient(_, until) => Some(*until),
                _ => None,
            }
        }
        fn is_hurry(&self) -> bool {
            matches!(self, W::Hurry)
        }
    }

    fn names(batch: &[W]) -> Vec<&'static str> {
        batch.iter().map(|w| match w {
            W::Now(n) | W::Patient(n, _) => *n,
            W::Hurry => "hurry",
        }).collect()
    }

    #[test]
    fn a_patient_write_waits_for_the_next_write_and_shares_its_commit() {
        let (tx, rx) = mpsc::channel();
        tx.send(W::Patient("nonce", Instant::now() + Duration::from_secs(30))).unwrap();
        let later = tx.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            later.send(W::Now("outcome")).unwrap();
        });
        let batch = next_batch(&rx).unwrap();
        assert_eq!(names(&batch), ["nonce", "outcome"]);
        sender.join().unwrap();
    }

    #[test]
    fn a_patient_write_commits_alone_at_its_deadline() {
        let (tx, rx) = mpsc::channel();
        let t0 = Instant::now();
        tx.send(W::Patient("a", t0 + Duration::from_millis(80))).unwrap();
        tx.send(W::Patient("b", t0 + Duration::from_secs(30))).unwrap();
        let batch = next_batch(&rx).unwrap();
        assert_eq!(names(&batch), ["a", "b"]);
        assert!(t0.elapsed() >= Duration::from_millis(80), "committed before the earliest deadline");
        assert!(t0.elapsed() < Duration::from_secs(20), "waited for the later deadline");
    }

    #[test]
    fn a_hurry_commits_the_patient_writes_and_is_no_write_itself() {
        let (tx, rx) = mpsc::channel();
        let t0 = Instant::now();
        // A hurry with nothing to hurry is ignored.
        tx.send(W::Hurry).unwrap();
        tx.send(W::Patient("nonce", t0 + Duration::from_secs(30))).unwrap();
        tx.send(W::Hurry).unwrap();
        let batch = next_batch(&rx).unwrap();
        assert_eq!(names(&batch), ["nonce"]);
        assert!(t0.elapsed() < Duration::from_secs(20));
        // A write that does not wait commits at once, with what is queued.
        tx.send(W::Now("submit")).unwrap();
        assert_eq!(next_batch(&rx).unwrap(), [W::Now("submit")]);
        drop(tx);
        assert!(next_batch(&rx).is_none());
    }
}
