//! The in-memory replay cache of request nonces ([`NonceCache`]).

use dashmap::DashMap;
use sha2::{Digest, Sha256};

/// Seen nonces, each kept until its expiry (Unix seconds), bounded in size.
///
/// A nonce is kept as the first 16 bytes of its SHA-256 ([`NonceKey`]), so
/// an entry is a fixed 24 bytes inside the map's one table, whatever the
/// nonce's length, instead of a separate heap block per nonce (a burst of
/// thousands of requests would leave those scattered over the heap). Two
/// nonces sharing a key would need 2^64 tries to find, and the second would
/// only be refused as a replay.
#[derive(Debug)]
pub struct NonceCache {
    seen: DashMap<NonceKey, u64>,
    capacity: usize,
    /// Nonces expiring at or before this instant may have been evicted to
    /// keep the cache bounded, so a request whose nonce would expire by then
    /// is refused: it is older than anything the cache can still vouch for.
    /// Fresh requests (expiring later) are never affected, so a flood of
    /// signed traffic cannot lock honest clients out.
    floor: std::sync::atomic::AtomicU64,
    /// When (Unix seconds) expired nonces are next swept out, with the
    /// map's spare capacity: the memory of a burst goes back once its
    /// nonces expire instead of staying until the cache is full.
    next_sweep: std::sync::atomic::AtomicU64,
}

/// Seconds between two sweeps of expired nonces.
const NONCE_SWEEP_S: u64 = 60;

/// What the nonce cache keeps of a nonce: see [`NonceCache`].
pub type NonceKey = [u8; 16];

/// The first 16 bytes of the nonce's SHA-256.
pub fn nonce_key(nonce: &str) -> NonceKey {
    let digest = Sha256::digest(nonce.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

impl NonceCache {
    pub fn new(capacity: usize) -> Self {
        NonceCache { seen: DashMap::new(), capacity: capacity.max(1), floor: Default::default(), next_sweep: Default::default() }
    }

    /// Records `nonce` until `expires`; false if it was already there (a
    /// replay) or if it expires no later than the eviction floor (it could
    /// be a replay of an evicted nonce: fail closed for old requests only).
    pub fn insert(&self, nonce: &str, expires: u64, now: u64) -> bool {
        use std::sync::atomic::Ordering;
        if expires <= self.floor.load(Ordering::Acquire) {
            return false;
        }
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now >= due && self.next_sweep.compare_exchange(due, now + NONCE_SWEEP_S, Ordering::AcqRel, Ordering::Relaxed).is_ok() && due != 0 {
            self.seen.retain(|_, exp| *exp > now);
            self.seen.shrink_to_fit();
        }
        if self.seen.len() >= self.capacity {
            self.seen.retain(|_, exp| *exp > now);
            if self.seen.len() >= self.capacity {
                self.evict_oldest();
                if expires <= self.floor.load(Ordering::Acquire) {
                    return false;
                }
            }
        }
        match self.seen.entry(nonce_key(nonce)) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(v) => {
                v.insert(expires);
                true
            }
        }
    }

    /// Drops the tenth of the cache that expires first and raises the floor
    /// to the latest expiry dropped. Amortised over the inserts that refill
    /// that tenth, this costs a constant per request.
    fn evict_oldest(&self) {
        let mut expiries: Vec<u64> = self.seen.iter().map(|e| *e.value()).collect();
        if expiries.is_empty() {
            return;
        }
        let k = (expiries.len() / 10).min(expiries.len() - 1);
        let (_, cutoff, _) = expiries.select_nth_unstable(k);
        let cutoff = *cutoff;
        self.floor.fetch_max(cutoff, std::sync::atomic::Ordering::AcqRel);
        self.seen.retain(|_, exp| *exp > cutoff);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_cache_is_bounded() {
        let c = NonceCache::new(2);
        assert!(c.insert("a", 10, 0));
        assert!(!c.insert("a", 10, 0));
        assert!(c.insert("b", 12, 0));
        assert!(c.insert("c", 20, 5), "full of live nonces: the oldest is evicted");
        assert!(!c.insert("a", 10, 5), "a replay of the evicted nonce is still refused");
        assert!(!c.insert("z", 10, 5), "so is any request as old as the evicted one");
        assert!(!c.insert("b", 12, 5), "the nonces kept are still replays");
        assert!(c.insert("d", 30, 20), "expired entries are evicted");
        assert!(c.len() <= 2);
    }

    /// Expired nonces are swept out once a minute, well before the cache is
    /// full, and the live ones stay replays.
    #[test]
    fn expired_nonces_are_swept_out() {
        let c = NonceCache::new(100_000);
        for i in 0..500u64 {
            assert!(c.insert(&format!("old{i}"), 100, 10));
        }
        assert!(c.insert("live", 1_000, 30));
        assert_eq!(c.len(), 501, "no sweep within the first minute");
        assert!(c.insert("later", 1_000, 101), "a minute on");
        assert_eq!(c.len(), 2, "the expired ones are gone");
        assert!(!c.insert("live", 1_000, 102), "a live nonce is still a replay");
    }

    /// A flood of fresh signed requests far beyond the capacity never locks
    /// out the next honest request, and never lets a kept nonce through.
    #[test]
    fn a_full_nonce_cache_keeps_accepting_fresh_requests() {
        let c = NonceCache::new(1_000);
        for i in 0..20_000u64 {
            let now = 1_000 + i / 100;
            assert!(c.insert(&format!("n{i}"), now + 600, now), "fresh request {i} refused");
        }
        assert!(c.len() <= 1_000);
        assert!(!c.insert("n19999", 1_199 + 600, 1_199), "the newest nonce is still a replay");
        assert!(!c.insert("n0", 1_600, 1_199), "an evicted nonce replayed within its window is refused");
    }
}
