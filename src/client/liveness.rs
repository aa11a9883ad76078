//! How a caller following a job on a worker tells that the worker is gone
//! without closing anything: a watchdog beside the long-poll ([`watch`]),
//! and the controller's side of the job's lease ([`Fence`]).
//!
//! Without the watchdog, a silent worker held a job for up to
//! `max_attempts` long-polls of `wait_poll_s` plus the client timeout each
//! (88 s with the defaults).

use super::{CallErrorKind, CurrentClient};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the watchdog asks the worker whether it is alive. One small
/// unauthenticated GET a second per followed job is cheap for the worker
/// and bounds the detection of a silent node to this plus the probe timeout.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The controller's side of a job's lease (see `crate::lease`): when the
/// last request that could have renewed it was sent, on this process's
/// monotonic clock. The worker's copy of the job has surely stopped once the
/// lease plus the margin has passed since then; only then may the job run
/// anywhere else.
#[derive(Debug, Clone)]
pub struct Fence {
    last_sent: Arc<Mutex<Instant>>,
    /// Lease plus margin; zero for a job without a lease (a v0.5 worker).
    hold: Duration,
}

impl Fence {
    /// A fence for a lease of `lease` plus `margin`, counted from now.
    pub fn new(lease: Duration, margin: Duration) -> Fence {
        Fence { last_sent: Arc::new(Mutex::new(Instant::now())), hold: lease + margin }
    }

    /// No lease: nothing to wait for.
    pub fn none() -> Fence {
        Fence { last_sent: Arc::new(Mutex::new(Instant::now())), hold: Duration::ZERO }
    }

    /// Records that a renewing request (submit, status call, long-poll) is
    /// being sent now.
    pub fn sent(&self) {
        if let Ok(mut t) = self.last_sent.lock() {
            *t = Instant::now();
        }
    }

    /// When the worker's lease has surely expired.
    pub fn expires_at(&self) -> Instant {
        self.last_sent.lock().map(|t| *t).unwrap_or_else(|p| *p.into_inner()) + self.hold
    }

    /// Waits until the worker's lease has surely expired.
    pub async fn wait(&self) {
        tokio::time::sleep_until(self.expires_at().into()).await;
    }
}

/// Asks the worker about the job every [`WATCH_EVERY`], each answer bounded
/// by `timeout`, and returns the reason the node is lost at the first
/// failure; while the node answers it never returns. For the current
/// contract the question is a signed status call on the job, which also
/// renews the lease (recorded in `fence`); a v0.5 worker is asked `/health`.
/// Without a client (no cluster secret, so no remote job either) it never
/// returns.
///
/// Only a missing answer counts as a failure: a timeout or a connection
/// error. An answer of any kind, even a 503 from a worker shutting down,
/// shows that the worker is there; the long-poll decides about the job.
pub async fn watch(client: Option<CurrentClient>, job_id: Option<&str>, timeout: Duration, fence: &Fence) -> String {
    let Some(client) = client else {
        return std::future::pending().await;
    };
    let what = if job_id.is_some() { "the status call" } else { "/health" };
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let asked = async {
            match job_id {
                Some(id) => {
                    fence.sent();
                    client.wait(id, 0).await.map(|_| ())
                }
                None => client.health().await.map(|_| ()),
            }
        };
        match tokio::time::timeout(timeout, asked).await {
            Err(_) => return format!("went silent mid-job: no answer to {what} within {} s", timeout.as_secs_f64()),
            Ok(Err(e)) if e.kind == CallErrorKind::TimedOut => {
                return format!("went silent mid-job: no answer to {what} within {} s", timeout.as_secs_f64());
            }
            Ok(Err(e)) if e.is_connection() => return format!("was lost mid-job ({what}: {})", e.message),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn the_watchdog_reports_a_node_that_does_not_answer() {
        // A listener that accepts connections (the kernel does it for a
        // stopped process) but never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let keyring = std::sync::Arc::new(crate::auth::Keyring::from_secrets("a-test-secret-long-enough-0123", None).unwrap());
        let client = CurrentClient::new(format!("http://127.0.0.1:{port}"), "w".into(), keyring.clone(), Duration::from_secs(5));
        let t0 = std::time::Instant::now();
        let reason = watch(Some(client), None, Duration::from_millis(500), &Fence::none()).await;
        assert!(reason.starts_with("went silent mid-job"), "{reason}");
        assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
        drop(silent);

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let client = CurrentClient::new(format!("http://127.0.0.1:{port}"), "w".into(), keyring, Duration::from_secs(5));
        let reason = watch(Some(client), None, Duration::from_millis(500), &Fence::none()).await;
        assert_eq!(reason, "was lost mid-job (/health: connection refused)");
    }
}
