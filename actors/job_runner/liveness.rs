//! How the JobRunner tells, while it follows a job on a worker, that the
//! worker is gone: a `/health` watchdog beside the long-poll (for a worker
//! that stops answering without closing anything), and the classification
//! of a failed poll (for a worker whose connections are refused).
//!
//! Without these, a silent worker held a job for up to `max_attempts`
//! long-polls of `wait_poll_s` plus the client timeout each (88 s with the
//! defaults), and a refused one for the whole back-off series (1.5 s).

use super::node_client::{CallError, CurrentClient};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the watchdog asks the worker whether it is alive. One small
/// unauthenticated GET a second per followed job is cheap for the worker
/// and bounds the detection of a silent node to this plus the probe timeout.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The pause before the one quick retry after a connection failure: long
/// enough for a worker that is restarting its listener, short enough that
/// a dead node is given up well within a second.
pub const QUICK_RETRY: Duration = Duration::from_millis(150);

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
            Ok(Err(CallError::Unreachable(m))) if m == "timed out" => {
                return format!("went silent mid-job: no answer to {what} within {} s", timeout.as_secs_f64());
            }
            Ok(Err(CallError::Unreachable(m))) => return format!("was lost mid-job ({what}: {m})"),
            Ok(_) => {}
        }
    }
}

/// A connection the worker's host refused: nothing listens on the port any
/// more (the worker process died or was killed).
pub fn is_refused(e: &CallError) -> bool {
    matches!(e, CallError::Unreachable(m) if m == "connection refused")
}

/// What to do after a poll of a followed job failed with a transient error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Poll again after this pause.
    RetryIn(Duration),
    /// Give the node up now.
    Lost,
}

/// Decides after the `failures`-th consecutive failed poll (counting this
/// one); `previous` is the failure before it, if the one before also failed.
///
/// The classification:
/// - A refused connection is not transient for long: nothing listens any
///   more. It gets one quick retry ([`QUICK_RETRY`]) in case the listener
///   was restarting; refused after any failed poll, the node is lost.
/// - Any other connection failure (a reset or a broken long-poll, which is
///   also what a worker killed mid-poll looks like first) gets one quick
///   retry too: a fresh connection tells at once whether the worker is
///   still there. Repeated ones go on the back-off series.
/// - An answer saying "busy" (5xx or 429, e.g. 502/503 from a proxy or a
///   worker shutting down) keeps the exponential back-off from
///   `retry_backoff_ms`: the worker or its proxy is there and may recover.
/// - After `max_attempts` consecutive failures of any kind the node is lost.
///
/// A worker that simply stops answering is the watchdog's ([`watch`]) to
/// find; the poll itself is bounded by `wait_poll_s + probe_timeout_s`.
pub fn after_failure(e: &CallError, previous: Option<&CallError>, failures: u32, max_attempts: u32, backoff_ms: u64) -> AfterFailure {
    let previous_unreachable = matches!(previous, Some(CallError::Unreachable(_)));
    if failures >= max_attempts.max(1) || (is_refused(e) && previous.is_some()) {
        return AfterFailure::Lost;
    }
    if matches!(e, CallError::Unreachable(_)) && !previous_unreachable {
        return AfterFailure::RetryIn(QUICK_RETRY);
    }
    AfterFailure::RetryIn(Duration::from_millis(backoff_ms) * 2u32.pow(failures.min(6)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable(m: &str) -> CallError {
        CallError::Unreachable(m.into())
    }

    #[test]
    fn a_refused_node_is_lost_after_one_quick_retry() {
        let refused = unreachable("connection refused");
        assert_eq!(after_failure(&refused, None, 1, 3, 250), AfterFailure::RetryIn(QUICK_RETRY));
        assert_eq!(after_failure(&refused, Some(&refused), 2, 3, 250), AfterFailure::Lost);
        // A worker killed mid-poll: the poll breaks, then the retry is refused.
        let reset = unreachable("connection reset");
        assert_eq!(after_failure(&reset, None, 1, 3, 250), AfterFailure::RetryIn(QUICK_RETRY));
        assert_eq!(after_failure(&refused, Some(&reset), 2, 3, 250), AfterFailure::Lost);
    }

    #[test]
    fn busy_answers_keep_the_backoff_series() {
        let busy = CallError::Busy(503, "shutting down".into());
        assert_eq!(after_failure(&busy, None, 1, 3, 250), AfterFailure::RetryIn(Duration::from_millis(500)));
        assert_eq!(after_failure(&busy, Some(&busy), 2, 3, 250), AfterFailure::RetryIn(Duration::from_millis(1000)));
        assert_eq!(after_failure(&busy, Some(&busy), 3, 3, 250), AfterFailure::Lost);
        // A reset after another reset is no longer a one-off.
        let reset = unreachable("connection reset");
        assert_eq!(after_failure(&reset, Some(&reset), 2, 3, 250), AfterFailure::RetryIn(Duration::from_millis(1000)));
        // A refused connection after a busy answer: the worker went away.
        assert_eq!(after_failure(&unreachable("connection refused"), Some(&busy), 2, 3, 250), AfterFailure::Lost);
    }

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
