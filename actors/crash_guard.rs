//! Turns a panic inside a controller actor into an error for the caller and,
//! where the actor's own state may be damaged, into a restart.
//!
//! Why this exists: with actix 0.13 on actix-rt 2, each actor runs as one
//! task on its arbiter. A panic in a handler (or in a future the actor
//! spawned into its context) unwinds out of that task; tokio catches it at
//! the task boundary, so the arbiter thread survives, but the actor and the
//! `actix::Supervisor` wrapped around it are dropped with it. Nothing
//! restarts it: every later message to its address fails with "Mailbox has
//! closed", and a daemon would go on accepting jobs it can no longer place.
//!
//! So fallible work runs under [`guard`] (synchronous handler bodies) or
//! [`catch`] (futures): the panic is caught and logged, the caller gets a
//! [`Panicked`] error instead of a dropped reply, and [`guard`] stops the
//! actor, which `actix::Supervisor` then restarts in place (same address,
//! same mailbox, `Supervised::restarting` called, then `started` again).

use actix::prelude::*;
use futures_util::FutureExt;
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// A panic caught in an actor: which actor, doing what, and the panic text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked {
    pub actor: &'static str,
    pub work: &'static str,
    pub message: String,
}

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} hit a bug while {} ({}); the controller keeps running; retry, and report the bug \
             with the controller's log if it happens again",
            self.actor, self.work, self.message
        )
    }
}

impl std::error::Error for Panicked {}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

fn caught(actor: &'static str, work: &'static str, payload: &(dyn Any + Send)) -> Panicked {
    let p = Panicked { actor, work, message: payload_text(payload) };
    tracing::error!(actor, work, "caught a panic: {}", p.message);
    p
}

/// Runs a handler's synchronous work; on a panic, logs it, stops the actor
/// (so that `actix::Supervisor` restarts it with its `restarting` reset) and
/// returns the error for the caller.
pub fn guard<A, T>(actor: &'static str, work: &'static str, ctx: &mut Context<A>, f: impl FnOnce() -> T) -> Result<T, Panicked>
where
    A: Actor<Context = Context<A>>,
{
    // AssertUnwindSafe: after a panic the actor is stopped and restarted,
    // and `restarting` puts back whatever the interrupted work may have
    // left half-changed, so no broken invariant is observed afterwards.
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        ctx.stop();
        caught(actor, work, payload.as_ref())
    })
}

/// Runs a future, turning a panic while polling it into an error. The actor
/// is not stopped: a future that owns its data cannot damage the actor's
/// state, and stopping would drop the actor's other futures in flight.
pub async fn catch<F: Future>(actor: &'static str, work: &'static str, fut: F) -> Result<F::Output, Panicked> {
    AssertUnwindSafe(fut).catch_unwind().await.map_err(|payload| caught(actor, work, payload.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// A supervised actor whose handler has a bug on one input, as a
    /// stand-in for any controller actor's handler.
    struct Buggy {
        restarts: Arc<AtomicU32>,
        /// State the restart must reset.
        seen: u32,
    }

    impl Actor for Buggy {
        type Context = Context<Self>;
    }

    impl actix::Supervised for Buggy {
        fn restarting(&mut self, _: &mut Context<Self>) {
            self.restarts.fetch_add(1, Ordering::SeqCst);
            self.seen = 0;
        }
    }

    #[derive(Message)]
    #[rtype(result = "Result<u32, Panicked>")]
    struct Work(u32);

    impl Handler<Work> for Buggy {
        type Result = Result<u32, Panicked>;
        fn handle(&mut self, msg: Work, ctx: &mut Context<Self>) -> Self::Result {
            let seen = &mut self.seen;
            guard("Buggy", "handling work", ctx, || {
                *seen += 1;
                if msg.0 == 0 {
                    panic!("divide by zero");
                }
                100 / msg.0 + *seen * 1000
            })
        }
    }

    #[test]
    fn a_panicking_handler_answers_an_error_and_the_actor_is_restarted() {
        actix::System::new().block_on(async {
            let restarts = Arc::new(AtomicU32::new(0));
            let r = restarts.clone();
            let addr = actix::Supervisor::start(move |_| Buggy { restarts: r, seen: 0 });
            assert_eq!(addr.send(Work(50)).await.unwrap(), Ok(1002));
            let err = addr.send(Work(0)).await.expect("the reply is an error, not a dropped mailbox").unwrap_err();
            assert_eq!(err.message, "divide by zero");
            assert!(err.to_string().contains("Buggy hit a bug while handling work"), "{err}");
            // The same address answers, from a restarted (reset) actor.
            assert_eq!(addr.send(Work(50)).await.unwrap(), Ok(1002));
            assert_eq!(restarts.load(Ordering::SeqCst), 1);
        });
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Unguarded;

    impl Handler<Unguarded> for Buggy {
        type Result = ();
        fn handle(&mut self, _: Unguarded, _: &mut Context<Self>) {
            panic!("unguarded bug");
        }
    }

    /// Why the guard exists: without it, actix::Supervisor does not restart
    /// a panicking actor; its address is dead from then on.
    #[test]
    fn without_the_guard_a_panic_kills_the_actor_for_good() {
        actix::System::new().block_on(async {
            let restarts = Arc::new(AtomicU32::new(0));
            let r = restarts.clone();
            let addr = actix::Supervisor::start(move |_| Buggy { restarts: r, seen: 0 });
            assert!(addr.send(Unguarded).await.is_err());
            assert!(addr.send(Work(50)).await.is_err(), "the actor is gone");
            assert_eq!(restarts.load(Ordering::SeqCst), 0);
        });
    }

    #[test]
    fn a_panicking_future_becomes_an_error() {
        actix::System::new().block_on(async {
            let ok = catch("T", "testing", async { 7 }).await;
            assert_eq!(ok, Ok(7));
            let err = catch("T", "testing", async { panic!("boom {}", 1) }).await.unwrap_err();
            assert_eq!(err.message, "boom 1");
        });
    }
}
