//! The JobRunner's policy after a failed poll of a followed job: retry
//! (after which pause) or give the node up. The watchdog that notices a
//! silent worker, and the lease fence, are client logic
//! ([`crate::client::liveness`]).
//!
//! Without this policy, a refused worker held a job for the whole back-off
//! series (1.5 s with the defaults).

use crate::backoff::{Backoff, QUICK_RETRY};
use crate::client::{CallError, CallErrorKind};
use std::time::Duration;

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
///   worker shutting down) keeps the back-off series of `backoff`, one step
///   in (the `failures`-th pause is [`Backoff::delay`] of `failures + 1`):
///   the worker or its proxy is there and may recover.
/// - After `max_attempts` consecutive failures of any kind the node is lost.
///
/// A worker that simply stops answering is the watchdog's
/// ([`crate::client::liveness::watch`]) to find; the poll itself is bounded
/// by `wait_poll_s + probe_timeout_s`.
pub fn after_failure(e: &CallError, previous: Option<&CallError>, failures: u32, backoff: &Backoff) -> AfterFailure {
    let previous_unreachable = previous.is_some_and(CallError::is_connection);
    if backoff.exhausted(failures) || (e.kind == CallErrorKind::Refused && previous.is_some()) {
        return AfterFailure::Lost;
    }
    if e.is_connection() && !previous_unreachable {
        return AfterFailure::RetryIn(QUICK_RETRY);
    }
    AfterFailure::RetryIn(backoff.delay(failures + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable(kind: CallErrorKind) -> CallError {
        CallError::new(kind, "")
    }

    fn policy() -> Backoff {
        Backoff::new(Duration::from_millis(250), 3)
    }

    #[test]
    fn a_refused_node_is_lost_after_one_quick_retry() {
        let b = policy();
        let refused = unreachable(CallErrorKind::Refused);
        assert_eq!(after_failure(&refused, None, 1, &b), AfterFailure::RetryIn(QUICK_RETRY));
        assert_eq!(after_failure(&refused, Some(&refused), 2, &b), AfterFailure::Lost);
        // A worker killed mid-poll: the poll breaks, then the retry is refused.
        let reset = unreachable(CallErrorKind::Reset);
        assert_eq!(after_failure(&reset, None, 1, &b), AfterFailure::RetryIn(QUICK_RETRY));
        assert_eq!(after_failure(&refused, Some(&reset), 2, &b), AfterFailure::Lost);
    }

    #[test]
    fn busy_answers_keep_the_backoff_series() {
        let b = policy();
        let busy = CallError::new(CallErrorKind::Busy { status: 503 }, "shutting down");
        assert_eq!(after_failure(&busy, None, 1, &b), AfterFailure::RetryIn(Duration::from_millis(500)));
        assert_eq!(after_failure(&busy, Some(&busy), 2, &b), AfterFailure::RetryIn(Duration::from_millis(1000)));
        assert_eq!(after_failure(&busy, Some(&busy), 3, &b), AfterFailure::Lost);
        // A reset after another reset is no longer a one-off.
        let reset = unreachable(CallErrorKind::Reset);
        assert_eq!(after_failure(&reset, Some(&reset), 2, &b), AfterFailure::RetryIn(Duration::from_millis(1000)));
        // A refused connection after a busy answer: the worker went away.
        assert_eq!(after_failure(&unreachable(CallErrorKind::Refused), Some(&busy), 2, &b), AfterFailure::Lost);
    }
}
