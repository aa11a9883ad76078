//! The database behind a [`Store`](super::Store): the open redb handle,
//! and its re-opening when a call meets an I/O failure (a full disk, most
//! often), after which redb refuses every call until it is closed and
//! opened again. It is kept apart from the job operations, which only ever
//! go through [`Db::run`] and never see the re-opening.

use super::{children, nonces, StoreError, StoreErrorKind, ACTIVE, IDEMPOTENCY, JOBS, META};
use redb::Database;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Free space under which an I/O failure of the store is taken for a full
/// disk (a redb page write needs a few pages at most).
const NEARLY_FULL_BYTES: u64 = 1 << 20;

/// The database behind a [`Store`](super::Store), re-opened after an I/O
/// failure.
pub(super) struct Db {
    path: PathBuf,
    /// A generation number, bumped at every re-open, and the open database
    /// (`None` while a re-open failed; the next call tries again).
    pub(super) slot: RwLock<(u64, Option<Arc<Database>>)>,
    /// Held while re-opening, so that concurrent callers re-open once.
    reopening: Mutex<()>,
    /// The last call failed with an I/O error and no call has succeeded since.
    pub(super) failed: AtomicBool,
    /// That failure was a full disk.
    disk_full: AtomicBool,
    /// Transactions the commit queue ran, and the writes they held.
    pub(super) batches: AtomicU64,
    pub(super) batched_writes: AtomicU64,
}

impl Db {
    /// The handle on `database`, just opened at `path`.
    pub(super) fn new(path: &Path, database: Database) -> Db {
        Db {
            path: path.to_path_buf(),
            slot: RwLock::new((0, Some(Arc::new(database)))),
            reopening: Mutex::new(()),
            failed: AtomicBool::new(false),
            disk_full: AtomicBool::new(false),
            batches: AtomicU64::new(0),
            batched_writes: AtomicU64::new(0),
        }
    }

    /// See [`Store::run`](super::Store::run).
    pub(super) fn run<T>(&self, mut op: impl FnMut(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let db = self;
        let mut reopened = false;
        loop {
            let (generation, handle) = {
                let slot = db.slot.read().unwrap_or_else(|p| p.into_inner());
                (slot.0, slot.1.clone())
            };
            let result = match handle {
                // A panic inside the storage engine (seen on a full disk)
                // is one more I/O failure of this call: it re-opens the
                // database like any other, instead of failing the request
                // with no reason.
                Some(handle) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&handle))).unwrap_or_else(|p| {
                    let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                    tracing::error!("the job store's engine panicked: {what}");
                    Err(StoreError::new(StoreErrorKind::Io, format!("the storage engine failed ({what})")))
                }),
                None => Err(StoreError::closed()),
            };
            match result {
                Ok(v) => {
                    db.failed.store(false, Ordering::Release);
                    db.disk_full.store(false, Ordering::Release);
                    return Ok(v);
                }
                Err(e) if e.needs_reopen() => {
                    // Only a fresh error says what the cause was; the closed
                    // state keeps the cause of the error that closed it.
                    let fresh = !e.closed;
                    if fresh {
                        db.disk_full.store(e.is_disk_full(), Ordering::Release);
                    }
                    db.failed.store(true, Ordering::Release);
                    if reopened {
                        return Err(self.explain(e));
                    }
                    reopened = true;
                    if let Err(again) = db.reopen(generation) {
                        if again.is_disk_full() {
                            db.disk_full.store(true, Ordering::Release);
                        }
                        return Err(self.explain(again));
                    }
                    if fresh {
                        return Err(self.explain(e));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives an I/O failure its cause and a message that says what to do.
    fn explain(&self, e: StoreError) -> StoreError {
        // Not every failure on a full disk carries ENOSPC (the engine can
        // fail one step later, or panic): an I/O failure while the disk has
        // almost no room left is the full disk's.
        let nearly_full = || {
            let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
            crate::steps::disk::free_bytes(dir).is_some_and(|free| free < NEARLY_FULL_BYTES)
        };
        if e.is_disk_full() || self.disk_full.load(Ordering::Acquire) || (e.kind == StoreErrorKind::Io && nearly_full()) {
            StoreError::new(
                StoreErrorKind::DiskFull,
                format!(
                    "the disk holding {} is full ({}); free space there, the worker recovers by itself",
                    self.path.display(),
                    e.message
                ),
            )
        } else {
            StoreError::new(e.kind, format!("{} at {}", e.message, self.path.display()))
        }
    }
}

pub(super) enum OpenError {
    AlreadyOpen,
    Store(StoreError),
}

/// The database's page cache. redb's default (1 GiB) lets the cache grow
/// with the file, so the worker's memory grew with every job it kept; the
/// records a worker reads again (jobs in flight, the idempotency index) are
/// few, and other pages are read back from the operating system's file
/// cache. 256 KiB (redb keeps a tenth of it for pages being written): a
/// bigger cache only fills with pages of ended jobs, about 1 MiB that
/// stayed in memory after a burst of 2,000 jobs at 1 MiB.
const CACHE_BYTES: usize = 256 << 10;

/// Opens (creating) the database file and its tables.
pub(super) fn open_database(path: &Path) -> Result<Database, OpenError> {
    let db = match redb::Builder::new().set_cache_size(CACHE_BYTES).create(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(OpenError::AlreadyOpen),
        Err(e) => return Err(OpenError::Store(e.into())),
    };
    let create = || -> Result<(), StoreError> {
        let tx = db.begin_write()?;
        {
            tx.open_table(JOBS)?;
            tx.open_table(IDEMPOTENCY)?;
            tx.open_table(ACTIVE)?;
            tx.open_table(META)?;
            tx.open_table(nonces::NONCES)?;
            tx.open_table(children::CHILDREN)?;
        }
        tx.commit()?;
        Ok(())
    };
    create().map_err(OpenError::Store)?;
    Ok(db)
}

impl Db {
    /// Closes the database of generation `failed` and opens the file again.
    /// Does nothing if another caller re-opened it since.
    fn reopen(&self, failed: u64) -> Result<(), StoreError> {
        let _one_at_a_time = self.reopening.lock().unwrap_or_else(|p| p.into_inner());
        let old = {
            let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
            if slot.0 != failed {
                return Ok(());
            }
            slot.0 += 1;
            slot.1.take()
        };
        // The file stays locked until the last handle on the old database is
        // dropped; callers hold one only for the length of one transaction.
        if let Some(mut old) = old {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if std::time::Instant::now() < deadline => {
                        old = still_shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => {
                        return Err(StoreError::new(StoreErrorKind::Io, "the database could not be closed after an I/O error (still in use)"))
                    }
                }
            }
        }
        match open_database(&self.path) {
            Ok(db) => {
                self.slot.write().unwrap_or_else(|p| p.into_inner()).1 = Some(Arc::new(db));
                tracing::warn!(path = %self.path.display(), "re-opened the job store after an I/O error");
                Ok(())
            }
            Err(OpenError::AlreadyOpen) => {
                Err(StoreError::new(StoreErrorKind::Io, "the database could not be re-opened: its file is still locked"))
            }
            Err(OpenError::Store(e)) => Err(e),
        }
    }
}
