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
//! When anything in a batch fails, the transaction is dropped (nothing of
//! it is written) and each write of the batch is run again in a
//! transaction of its own, so that one failing write fails only its own
//! caller, with its own error.

use super::{Db, StoreError, StoreErrorKind};
use redb::{Durability, WriteTransaction};
use std::sync::mpsc;
use std::sync::Arc;

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
trait Pending: Send {
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
        self.push(Box::new(Write { op, sync, value: None, reply: Reply::Blocking(tx) }))?;
        rx.recv().unwrap_or_else(|_| Err(StoreError::closed()))
    }

    /// Queues `op`; the future resolves after its commit, without holding a
    /// thread while it waits.
    pub(super) fn write_async<T, F>(&self, sync: Flush, op: F) -> impl std::future::Future<Output = Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = self.push(Box::new(Write { op, sync, value: None, reply: Reply::Async(tx) }));
        async move {
            queued?;
            rx.await.unwrap_or_else(|_| Err(StoreError::closed()))
        }
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

/// The next batch of a commit queue: waits for the first write, then takes
/// every other one already queued, up to [`MAX_BATCH`]. `None` once every
/// sender is gone. The worker's and the daemon's stores both batch this way.
pub(crate) fn next_batch<T>(rx: &mpsc::Receiver<T>) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().ok()?];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
    Some(batch)
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
