//! The dashboard's one-time login tokens and browser sessions, in memory.
//!
//! `rayvault-orchestrator dashboard` asks the daemon (with a signed request)
//! for a login token; the browser redeems it once at `GET /login?t=`, which
//! burns it and opens a session. A session is a random cookie value plus a
//! random CSRF token that the page sends back in `X-CSRF-Token` on every
//! state-changing request. Sessions end after [`Sessions::idle`] without a
//! request, or when the daemon stops.
//!
//! Tokens and session ids are kept only as SHA-256 digests and looked up by
//! digest, so neither a lookup's timing nor a dump of this memory gives a
//! usable value away; CSRF tokens are compared in constant time.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// How long a login token can be redeemed.
pub const LOGIN_TOKEN_TTL: Duration = Duration::from_secs(60);

/// How long a session lasts without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);

/// At most this many login tokens wait to be redeemed; asking for more
/// drops the oldest, so a caller looping on the signed API cannot grow the
/// daemon.
const MAX_PENDING_LOGINS: usize = 16;

/// At most this many sessions live at once; a new one beyond that ends the
/// least recently used.
const MAX_SESSIONS: usize = 64;

/// A session opened by a redeemed login token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The cookie value (64 hex digits).
    pub id: String,
    /// The CSRF token the page must send back (64 hex digits).
    pub csrf: String,
}

struct Session {
    csrf: String,
    last_seen: Instant,
}

#[derive(Default)]
struct Inner {
    /// Digest of a pending login token -> when it expires.
    logins: HashMap<[u8; 32], Instant>,
    /// Digest of a session id -> the session.
    sessions: HashMap<[u8; 32], Session>,
}

/// The login tokens and sessions of one daemon.
pub struct Sessions {
    token_ttl: Duration,
    idle: Duration,
    inner: Mutex<Inner>,
}

/// 32 random bytes as 64 lower-case hex digits.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    // The operating system's generator does not fail on the platforms we
    // build for; if it ever did, handing out a predictable token would be
    // worse than stopping.
    getrandom::getrandom(&mut bytes).expect("the operating system's random generator failed");
    hex::encode(bytes)
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

impl Sessions {
    pub fn new(token_ttl: Duration, idle: Duration) -> Sessions {
        Sessions { token_ttl, idle, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock, so a poisoned lock still
        // holds consistent maps.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new one-time login token, valid until `now + token_ttl`.
    pub fn issue_login(&self, now: Instant) -> String {
        let token = random_hex();
        let mut inner = self.lock();
        inner.logins.retain(|_, expires| *expires > now);
        while inner.logins.len() >= MAX_PENDING_LOGINS {
            let oldest = inner.logins.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k);
            match oldest {
                Some(k) => inner.logins.remove(&k),
                None => break,
            };
        }
        inner.logins.insert(digest(&token), now + self.token_ttl);
        token
    }

    /// Redeems a login token: burns it and opens a session, or answers
    /// None when the token is unknown, used already, or expired.
    pub fn redeem_login(&self, token: &str, now: Instant) -> Option<NewSession> {
        let mut inner = self.lock();
        let expires = inner.logins.remove(&digest(token))?;
        if expires <= now {
            return None;
        }
        inner.sessions.retain(|_, s| now.saturating_duration_since(s.last_seen) < self.idle);
        while inner.sessions.len() >= MAX_SESSIONS {
            let oldest = inner.sessions.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k);
            match oldest {
                Some(k) => inner.sessions.remove(&k),
                None => break,
            };
        }
        let session = NewSession { id: random_hex(), csrf: random_hex() };
        inner.sessions.insert(digest(&session.id), Session { csrf: session.csrf.clone(), last_seen: now });
        Some(session)
    }

    /// The CSRF token of a live session, which this request keeps alive;
    /// None when there is no such session or it idled out (then it is gone).
    pub fn touch(&self, id: &str, now: Instant) -> Option<String> {
        let mut inner = self.lock();
        let key = digest(id);
        let session = inner.sessions.get_mut(&key)?;
        if now.saturating_duration_since(session.last_seen) >= self.idle {
            inner.sessions.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(session.csrf.clone())
    }

    /// Ends a session (logout).
    pub fn end(&self, id: &str) {
        self.lock().sessions.remove(&digest(id));
    }
}

/// Compares a presented CSRF token with the session's, in constant time.
pub fn csrf_matches(expected: &str, presented: &str) -> bool {
    expected.len() == presented.len() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(Duration::from_secs(60), Duration::from_secs(600))
    }

    #[test]
    fn a_login_token_works_once() {
        let s = sessions();
        let now = Instant::now();
        let token = s.issue_login(now);
        assert_eq!(token.len(), 64);
        let session = s.redeem_login(&token, now).expect("first use opens a session");
        assert_eq!(s.touch(&session.id, now).as_deref(), Some(session.csrf.as_str()));
        assert_eq!(s.redeem_login(&token, now), None, "the token is burnt");
        assert_eq!(s.redeem_login("not-a-token", now), None);
    }

    #[test]
    fn a_login_token_expires() {
        let s = sessions();
        let now = Instant::now();
        let token = s.issue_login(now);
        assert_eq!(s.redeem_login(&token, now + Duration::from_secs(60)), None);
        let token = s.issue_login(now);
        assert!(s.redeem_login(&token, now + Duration::from_secs(59)).is_some());
    }

    #[test]
    fn a_session_idles_out_and_each_request_keeps_it_alive() {
        let s = sessions();
        let now = Instant::now();
        let session = s.redeem_login(&s.issue_login(now), now).unwrap();
        let later = now + Duration::from_secs(500);
        assert!(s.touch(&session.id, later).is_some());
        assert!(s.touch(&session.id, later + Duration::from_secs(500)).is_some(), "the request at +500 s kept it alive");
        assert_eq!(s.touch(&session.id, later + Duration::from_secs(1200)), None);
        assert_eq!(s.touch(&session.id, later + Duration::from_secs(1201)), None, "an idled-out session stays gone");
    }

    #[test]
    fn logout_ends_the_session() {
        let s = sessions();
        let now = Instant::now();
        let session = s.redeem_login(&s.issue_login(now), now).unwrap();
        s.end(&session.id);
        assert_eq!(s.touch(&session.id, now), None);
    }

    #[test]
    fn pending_tokens_and_sessions_are_bounded() {
        let s = sessions();
        let now = Instant::now();
        let first = s.issue_login(now);
        let tokens: Vec<String> = (1..=MAX_PENDING_LOGINS as u64).map(|i| s.issue_login(now + Duration::from_millis(i))).collect();
        assert_eq!(s.redeem_login(&first, now), None, "the oldest pending token was dropped");
        assert!(s.redeem_login(&tokens[0], now).is_some());
        let mut ids = Vec::new();
        for i in 0..MAX_SESSIONS as u64 + 1 {
            let at = now + Duration::from_millis(100 + i);
            ids.push(s.redeem_login(&s.issue_login(at), at).unwrap().id);
        }
        assert_eq!(s.lock().sessions.len(), MAX_SESSIONS);
    }

    #[test]
    fn csrf_comparison() {
        assert!(csrf_matches("abc", "abc"));
        assert!(!csrf_matches("abc", "abd"));
        assert!(!csrf_matches("abc", "ab"));
        assert!(!csrf_matches("abc", ""));
    }
}
