//! The one retry policy: an exponential series from `retry_backoff_ms`
//! (the first pause is the base, each next one twice the last, capped at 64
//! times the base), and at most `max_attempts` tries in a row.
//!
//! Every retry in the controller uses it: a transient submit or upload
//! failure, a failed poll of a followed job (whose quick first retry after a
//! connection failure is [`QUICK_RETRY`]), an artifact download, and
//! `submit`'s wait for a daemon that does not answer.

use std::future::Future;
use std::time::Duration;

/// The pause before the one quick retry after a connection failure: long
/// enough for a worker that is restarting its listener, short enough that
/// a dead node is given up well within a second.
pub const QUICK_RETRY: Duration = Duration::from_millis(150);

/// The exponent cap: no pause is longer than 64 times the base.
const MAX_DOUBLINGS: u32 = 6;

/// A retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max_attempts: u32,
    /// No pause is longer than this (None: only the exponent cap).
    ceiling: Option<Duration>,
}

impl Backoff {
    /// Pauses from `base`, at most `max_attempts` tries (at least one).
    pub const fn new(base: Duration, max_attempts: u32) -> Backoff {
        let max_attempts = if max_attempts == 0 { 1 } else { max_attempts };
        Backoff { base, max_attempts, ceiling: None }
    }

    /// The controller's configured policy (`retry_backoff_ms`, `max_attempts`).
    pub fn from_settings(c: &crate::config::ControllerSettings) -> Backoff {
        Backoff::new(Duration::from_millis(c.retry_backoff_ms), c.max_attempts)
    }

    /// The same policy, with `extra` more tries.
    pub fn with_extra_attempts(self, extra: u32) -> Backoff {
        Backoff { max_attempts: self.max_attempts + extra, ..self }
    }

    /// The same policy, with no pause longer than `ceiling`.
    pub const fn capped_at(self, ceiling: Duration) -> Backoff {
        Backoff { base: self.base, max_attempts: self.max_attempts, ceiling: Some(ceiling) }
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The pause after the `failures`-th failure in a row (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let d = self.base * 2u32.pow(failures.saturating_sub(1).min(MAX_DOUBLINGS));
        self.ceiling.map_or(d, |c| d.min(c))
    }

    /// True when `failures` failures in a row used up every try.
    pub fn exhausted(&self, failures: u32) -> bool {
        failures >= self.max_attempts
    }

    /// Calls `f` until it succeeds, fails with an error `retry` refuses, or
    /// the tries are used up, pausing [`Backoff::delay`] between tries;
    /// answers the last result.
    pub async fn retry<T, E, F, Fut>(&self, mut f: F, retry: impl Fn(&E) -> bool) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut failures = 0;
        loop {
            match f().await {
                Err(e) if retry(&e) && !self.exhausted(failures + 1) => {
                    failures += 1;
                    tokio::time::sleep(self.delay(failures)).await;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_doubles_from_the_base_and_is_capped() {
        let b = Backoff::new(Duration::from_millis(250), 3);
        let ms = |n| b.delay(n).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(7), ms(30)], [250, 500, 1000, 16_000, 16_000]);
        assert!(!b.exhausted(2) && b.exhausted(3));
        assert_eq!(b.capped_at(Duration::from_millis(600)).delay(3), Duration::from_millis(600));
        assert_eq!(Backoff::new(Duration::ZERO, 0).max_attempts(), 1);
        assert_eq!(b.with_extra_attempts(1).max_attempts(), 4);
    }

    #[actix_rt::test]
    async fn retry_stops_at_the_last_try_or_a_final_error() {
        let b = Backoff::new(Duration::from_millis(10), 3);
        let calls = std::cell::Cell::new(0);
        let r: Result<(), &str> = b.retry(|| async { calls.set(calls.get() + 1); Err("busy") }, |_| true).await;
        assert_eq!((r, calls.get()), (Err("busy"), 3));
        calls.set(0);
        let r: Result<(), &str> = b.retry(|| async { calls.set(calls.get() + 1); Err("final") }, |_| false).await;
        assert_eq!((r, calls.get()), (Err("final"), 1));
    }
}
