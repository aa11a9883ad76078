//! Durable request nonces: every accepted nonce is recorded with its expiry
//! so that the worker can reload them after a restart (or a crash) and a
//! request captured before it cannot be replayed after it.

use super::{Flush, Store, StoreError};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

pub(super) const NONCES: TableDefinition<&str, u64> = TableDefinition::new("nonces");

impl Store {
    /// Records an accepted nonce until `expires` (Unix seconds). False if
    /// it was already recorded and has not expired: a replay.
    ///
    /// The write goes through the commit queue with `Eventual` durability,
    /// so that it survives a crash or kill -9 of the worker before the
    /// request runs. On Linux redb still calls `fdatasync` for an `Eventual`
    /// commit (the flag only relaxes the sync on macOS); what keeps a nonce
    /// per request cheap is that it shares its commit, and that sync, with
    /// the other writes waiting at the same moment.
    pub fn record_nonce(&self, nonce: &str, expires: u64, now: u64) -> Result<bool, StoreError> {
        self.write(Flush::Eventual, nonce_op(nonce, expires, now))
    }

    /// [`Store::record_nonce`] for async callers.
    /// The write is queued when this is called, not when the future is
    /// first polled, so a caller can start it and await it later.
    pub fn record_nonce_async(&self, nonce: &str, expires: u64, now: u64) -> impl std::future::Future<Output = Result<bool, StoreError>> {
        self.write_async(Flush::Eventual, nonce_op(nonce, expires, now))
    }

    /// [`Store::record_nonce_async`] for a nonce that may wait up to
    /// `patience` for another write to share its commit (see the commit
    /// queue's doc in `store/queue.rs`): a long-poll's nonce then commits
    /// with the end of the job it waits for. Call [`Store::hurry`] when the
    /// answer is ready before the nonce is recorded.
    pub fn record_nonce_patient(&self, nonce: &str, expires: u64, now: u64, patience: std::time::Duration) -> impl std::future::Future<Output = Result<bool, StoreError>> {
        self.writer.write_async_patient(Flush::Eventual, Some(std::time::Instant::now() + patience), nonce_op(nonce, expires, now))
    }

    /// Commits the patient writes waiting now (no commit when none waits).
    pub fn hurry(&self) {
        self.writer.hurry();
    }

    /// Nonces that have not expired, with their expiry.
    pub fn live_nonces(&self, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(NONCES)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                if v.value() > now {
                    out.push((k.value().to_string(), v.value()));
                }
            }
            Ok(out)
        })
    }

    /// Deletes expired nonces; returns how many.
    pub fn prune_nonces(&self, now: u64) -> Result<usize, StoreError> {
        self.run(|db| {
            let tx = db.begin_write()?;
            let removed = {
                let mut t = tx.open_table(NONCES)?;
                let before = t.len()?;
                t.retain(|_, exp| exp > now)?;
                before - t.len()?
            };
            tx.commit()?;
            Ok(removed as usize)
        })
    }
}

/// The write of [`Store::record_nonce`].
fn nonce_op(nonce: &str, expires: u64, now: u64) -> impl FnMut(&WriteTransaction) -> Result<bool, StoreError> + Send + 'static {
    let nonce = RequestNonce { nonce: nonce.to_string(), expires, now };
    move |tx| nonce.record(tx)
}

/// An accepted request's nonce, to be recorded inside the write that the
/// request itself makes (a submission), so that both share one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestNonce {
    pub nonce: String,
    /// Unix seconds after which it may be forgotten.
    pub expires: u64,
    /// Unix seconds when it was accepted.
    pub now: u64,
}

impl RequestNonce {
    /// Records the nonce in `tx`; false if it was already there and live.
    pub(super) fn record(&self, tx: &WriteTransaction) -> Result<bool, StoreError> {
        let mut t = tx.open_table(NONCES)?;
        let live = t.get(self.nonce.as_str())?.is_some_and(|g| g.value() > self.now);
        if !live {
            t.insert(self.nonce.as_str(), self.expires)?;
        }
        Ok(!live)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    #[test]
    fn nonces_persist_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        {
            let s = Store::open(&path).unwrap();
            assert!(s.record_nonce("n1", 100, 10).unwrap());
            assert!(!s.record_nonce("n1", 100, 20).unwrap(), "replay");
            assert!(s.record_nonce("n2", 50, 20).unwrap());
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.live_nonces(60).unwrap(), vec![("n1".to_string(), 100)]);
        assert_eq!(s.prune_nonces(60).unwrap(), 1);
        assert!(s.record_nonce("n1", 300, 150).unwrap(), "expired entries may be reused");
    }
}
