//! Leases: fencing by time for remote jobs (the worker's side).
//!
//! A controller that submits a job with `lease_s` holds a lease on it: the
//! worker runs the job only while the lease is valid, and every status call
//! or long-poll on the job renews it for another `lease_s`. A controller
//! that stops renewing (it gave the job up, it died, or the link was cut)
//! loses the job: once the lease has expired the worker
//!
//! - stops the job, killing its process tree, and records it `abandoned`
//!   with code `LEASE_EXPIRED`;
//! - never starts it if it was still queued;
//! - never serves its result as `cached` to a later submission.
//!
//! The controller, for its part, falls back from a silent node only once
//! that node's lease has surely expired: `lease_s` plus a margin after the
//! last renewal it sent, on its own monotonic clock. The two rules together
//! mean that two copies of a job never run at once. This is lease-based
//! fencing as in Chubby, and the same idea as Nomad's
//! `disconnect.stop_on_client_after`.
//!
//! After a worker restart, a leased job that was queued (or running, with
//! `on_interrupted = "rerun"`) is parked: it starts only when a controller
//! re-attaches (renews it) within `lease_s` of the restart, and is
//! abandoned otherwise. A renewal that reaches the worker proves that the
//! controller has not given the job up, because the controller counts its
//! fence from the last renewal it sent.
//!
//! The book lives in memory and uses the monotonic clock only; what survives
//! a restart is each job's `lease_s`, in its store record.

use dashmap::DashMap;
use std::time::{Duration, Instant};

/// One job's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    length: Duration,
    expires: Instant,
    /// Set for a job recovered after a restart: it may not start until a
    /// controller renews its lease.
    parked: bool,
}

/// The leases of the jobs on this worker, by job id. Jobs without an entry
/// have no lease (submitted without `lease_s`) and are never fenced.
#[derive(Debug, Default)]
pub struct LeaseBook {
    leases: DashMap<String, Lease>,
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The job has no lease here.
    NoLease,
    /// Renewed.
    Renewed,
    /// Renewed, and the job was parked after a restart: hand it to its
    /// executor now.
    Unparked,
    /// Too late: the lease had expired; the job is (being) abandoned.
    Expired,
}

impl LeaseBook {
    pub fn new() -> LeaseBook {
        LeaseBook::default()
    }

    /// Grants a lease of `length` on a job, starting now.
    pub fn grant(&self, job_id: &str, length: Duration) {
        self.leases.insert(job_id.to_string(), Lease { length, expires: Instant::now() + length, parked: false });
    }

    /// Parks a job recovered after a restart: it waits for a controller to
    /// renew its lease, at most `length` from now.
    pub fn park(&self, job_id: &str, length: Duration) {
        self.leases.insert(job_id.to_string(), Lease { length, expires: Instant::now() + length, parked: true });
    }

    /// Renews a job's lease for another lease length, unless it expired.
    pub fn renew(&self, job_id: &str) -> Renewal {
        let Some(mut lease) = self.leases.get_mut(job_id) else { return Renewal::NoLease };
        let now = Instant::now();
        if lease.expires <= now {
            return Renewal::Expired;
        }
        lease.expires = now + lease.length;
        if lease.parked {
            lease.parked = false;
            Renewal::Unparked
        } else {
            Renewal::Renewed
        }
    }

    /// True when the job has a lease and it has expired.
    pub fn expired(&self, job_id: &str) -> bool {
        self.leases.get(job_id).is_some_and(|l| l.expires <= Instant::now())
    }

    /// True while the job waits for a controller to re-attach.
    pub fn parked(&self, job_id: &str) -> bool {
        self.leases.get(job_id).is_some_and(|l| l.parked)
    }

    /// The jobs whose lease has expired, for the monitor to stop.
    pub fn expired_jobs(&self) -> Vec<String> {
        let now = Instant::now();
        self.leases.iter().filter(|l| l.expires <= now).map(|l| l.key().clone()).collect()
    }

    /// Forgets a job's lease (the job ended).
    pub fn release(&self, job_id: &str) {
        self.leases.remove(job_id);
    }

    /// How many jobs hold a lease.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_renewed_until_it_expires_and_never_after() {
        let book = LeaseBook::new();
        assert_eq!(book.renew("j1"), Renewal::NoLease);
        book.grant("j1", Duration::from_millis(80));
        assert!(!book.expired("j1"));
        assert_eq!(book.renew("j1"), Renewal::Renewed);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !book.expired("j1") {
            assert!(Instant::now() < deadline, "the lease never expired");
            std::thread::yield_now();
        }
        assert_eq!(book.expired_jobs(), vec!["j1".to_string()]);
        assert_eq!(book.renew("j1"), Renewal::Expired, "an expired lease is never revived");
        book.release("j1");
        assert!(book.is_empty());
    }

    #[test]
    fn a_parked_job_is_unparked_by_the_first_renewal() {
        let book = LeaseBook::new();
        book.park("j2", Duration::from_secs(60));
        assert!(book.parked("j2"));
        assert_eq!(book.renew("j2"), Renewal::Unparked);
        assert!(!book.parked("j2"));
        assert_eq!(book.renew("j2"), Renewal::Renewed);
    }
}
