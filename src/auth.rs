//! Request authentication: the keyring (from `RAYVAULT_CLUSTER_SECRET*`),
//! signing, verification and the replay cache.
//!
//! The design is docs/protocol.md section 1: HMAC-SHA256 over the raw request
//! (see [`crate::protocol::string_to_sign`]) with a key derived from the
//! secret, a key id derived separately, constant-time comparison, a skew
//! window checked both ways, a nonce cache filled only after a MAC verified,
//! and a plain-token fallback that exists only when the operator enables it.
//!
//! Architecture Invariant: secrets live only in `secrecy` wrappers inside
//! [`Keyring`]; no `Debug`, `Display` or log line here can print one.

use crate::protocol::{self, HmacHeader, SignedParts};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

mod nonce_cache;
pub use nonce_cache::{nonce_key, NonceCache, NonceKey};

type HmacSha256 = Hmac<Sha256>;

/// The variables a secret is read from, in priority order.
pub const SECRET_VARS: [&str; 2] = ["RAYVAULT_CLUSTER_SECRET", "RAYVAULT_CLUSTER_SECRET_CURRENT"];

/// The variable holding the previous secret during a rotation.
pub const PREVIOUS_SECRET_VAR: &str = "RAYVAULT_CLUSTER_SECRET_PREVIOUS";

/// Raw HMAC-SHA256 (used for derivation and for the RFC 4231 checks).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// One secret, kept only in derived and wrapped forms.
pub struct Key {
    /// HMAC(secret, "rayvault-request-v1"): the key requests are signed with.
    request_key: SecretBox<[u8; 32]>,
    /// The secret itself, kept only for the opt-in plain-token comparison.
    plain: SecretString,
    /// Public key id: hex of the first 8 bytes of SHA-256(HMAC(secret, "rayvault-kid-v1")).
    kid: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl Key {
    /// Derives the request key and key id from a secret.
    pub fn from_secret(secret: &str) -> Key {
        let request_key = hmac_sha256(secret.as_bytes(), protocol::REQUEST_KEY_LABEL.as_bytes());
        let kid_mac = hmac_sha256(secret.as_bytes(), protocol::KID_LABEL.as_bytes());
        let kid = hex::encode(&Sha256::digest(kid_mac)[..8]);
        Key { request_key: SecretBox::new(Box::new(request_key)), plain: SecretString::from(secret), kid }
    }

    /// The key id (safe to log).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    fn mac_for(&self, sts: &str) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(self.request_key.expose_secret())
            .unwrap_or_else(|_| unreachable!());
        mac.update(sts.as_bytes());
        mac
    }

    /// Lower-case hex signature of a string to sign.
    pub fn sign(&self, sts: &str) -> String {
        hex::encode(self.mac_for(sts).finalize().into_bytes())
    }

    /// Constant-time check of a signature (already known to be hex).
    fn verify(&self, sts: &str, sig_hex: &str) -> bool {
        match hex::decode(sig_hex) {
            Ok(sig) => self.mac_for(sts).verify_slice(&sig).is_ok(),
            Err(_) => false,
        }
    }

    /// The bare secret, only for the opt-in plain-token fallback (sent in a
    /// header to a worker that cannot verify HMAC; never logged or stored).
    pub fn plain_token(&self) -> &str {
        self.plain.expose_secret()
    }

    /// Constant-time comparison with a presented plain token. `ct_eq` on
    /// slices returns early when the lengths differ, which would tell a
    /// prober the secret's length; comparing fixed-size digests does not.
    fn plain_matches(&self, token: &str) -> bool {
        let want = Sha256::digest(self.plain.expose_secret().as_bytes());
        let got = Sha256::digest(token.as_bytes());
        bool::from(want.as_slice().ct_eq(got.as_slice()))
    }
}

/// Why no keyring could be built.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("no cluster secret: set RAYVAULT_CLUSTER_SECRET (or RAYVAULT_CLUSTER_SECRET_CURRENT) to the secret shared by the controller and its workers")]
    Missing,
}

/// The current key (used to sign) and an optional previous key (accepted
/// during a rotation).
#[derive(Debug)]
pub struct Keyring {
    pub current: Key,
    pub previous: Option<Key>,
}

impl Keyring {
    /// Builds a keyring from explicit secrets; empty strings count as unset.
    pub fn from_secrets(current: &str, previous: Option<&str>) -> Result<Keyring, KeyringError> {
        if current.is_empty() {
            return Err(KeyringError::Missing);
        }
        let previous = previous.filter(|p| !p.is_empty() && *p != current).map(Key::from_secret);
        Ok(Keyring { current: Key::from_secret(current), previous })
    }

    /// Reads `RAYVAULT_CLUSTER_SECRET`, else `RAYVAULT_CLUSTER_SECRET_CURRENT`,
    /// plus `RAYVAULT_CLUSTER_SECRET_PREVIOUS`, from the process environment.
    pub fn from_env() -> Result<Keyring, KeyringError> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let current = SECRET_VARS.iter().find_map(|v| get(v)).map(SecretString::from).ok_or(KeyringError::Missing)?;
        let previous = get(PREVIOUS_SECRET_VAR).map(SecretString::from);
        Keyring::from_secrets(current.expose_secret(), previous.as_ref().map(|p| p.expose_secret()))
    }

    /// The `Authorization` value for a request, signed with the current key
    /// at time `ts` with `nonce`.
    pub fn authorization_at(&self, parts: &RequestTarget<'_>, ts: u64, nonce: &str) -> String {
        let ts_s = ts.to_string();
        let sts = protocol::string_to_sign(&SignedParts {
            method: parts.method,
            path: parts.path,
            query: parts.query,
            ts: &ts_s,
            nonce,
            worker_id: parts.worker_id,
            body_sha256: parts.body_sha256,
        });
        HmacHeader::format(self.current.kid(), ts, nonce, &self.current.sign(&sts))
    }

    /// The `Authorization` value for a request, with the current time and a
    /// fresh random nonce.
    pub fn authorization(&self, parts: &RequestTarget<'_>) -> String {
        self.authorization_at(parts, unix_now(), &fresh_nonce())
    }
}

/// What a request is, for signing or verifying (everything but ts/nonce).
#[derive(Debug, Clone, Copy)]
pub struct RequestTarget<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub worker_id: &'a str,
    pub body_sha256: &'a str,
}

/// A 32-character random nonce (16 random bytes as hex).
pub fn fresh_nonce() -> String {
    let mut b = [0u8; 16];
    // getrandom only fails when the OS has no entropy source at all; fall
    // back to time and a counter, which still never repeats in one process.
    if getrandom::getrandom(&mut b).is_err() {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        b[..8].copy_from_slice(&t.to_le_bytes());
        b[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    hex::encode(b)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// How a request proved itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// A valid HMAC signature; `previous` when the previous key matched.
    /// The nonce is now in the cache until `nonce_expires` (Unix seconds);
    /// a server that must survive restarts persists that pair too (see
    /// [`Verifier::preload_nonces`]).
    Hmac { kid: String, previous: bool, nonce: String, nonce_expires: u64 },
    /// The opt-in plain token.
    Plain,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Any bad credential (`401 auth_token invalid`); the reason is for the
    /// server log only and never contains a secret.
    Invalid(&'static str),
    /// A valid signature with a timestamp outside the window.
    Skew { server_time: u64 },
}

/// A credential that passed the checks needing no body.
enum Presented<'a> {
    /// A well-formed HMAC header naming one of our keys.
    Hmac { header: HmacHeader, key: &'a Key, previous: bool },
    /// The right plain token, where the fallback is enabled.
    Plain,
}

/// How far ahead a refused request may be dated for its nonce to be
/// remembered (see [`Verifier::future_nonce`]): one day.
pub const FUTURE_NONCE_HORIZON_S: u64 = 86_400;

/// Checks requests against a keyring for one worker id.
#[derive(Debug)]
pub struct Verifier {
    keyring: Keyring,
    worker_id: String,
    skew_s: u64,
    allow_plain: bool,
    nonces: NonceCache,
}

impl Verifier {
    pub fn new(keyring: Keyring, worker_id: String, skew_s: u64, allow_plain: bool) -> Self {
        Verifier { keyring, worker_id, skew_s, allow_plain, nonces: NonceCache::new(100_000) }
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Loads nonces seen before a restart (with their expiry), so that a
    /// request captured before the restart cannot be replayed after it.
    pub fn preload_nonces(&self, nonces: impl IntoIterator<Item = (String, u64)>, now: u64) {
        for (nonce, expires) in nonces {
            if expires > now {
                self.nonces.insert(&nonce, expires, now);
            }
        }
    }

    /// Verifies one request. `authorization` holds every `Authorization`
    /// header value as received; exactly one must be present.
    pub fn verify(
        &self,
        authorization: &[&[u8]],
        method: &str,
        path: &str,
        query: &str,
        body_sha256: &str,
        now: u64,
    ) -> Result<Verified, AuthError> {
        let (h, key, previous) = match self.presented(authorization)? {
            Presented::Hmac { header, key, previous } => (header, key, previous),
            Presented::Plain => return Ok(Verified::Plain),
        };
        let sts = protocol::string_to_sign(&SignedParts {
            method,
            path,
            query,
            ts: &h.ts_raw,
            nonce: &h.nonce,
            worker_id: &self.worker_id,
            body_sha256,
        });
        if !key.verify(&sts, &h.sig) {
            return Err(AuthError::Invalid("signature mismatch"));
        }
        // The MAC covers ts, so a skew error is only ever told to a holder
        // of the key: strangers learn nothing about our clock.
        if h.ts.abs_diff(now) > self.skew_s {
            // A request dated ahead of the window enters it later; its
            // nonce is kept until it has left the window for good, so a
            // copy cannot be replayed then. (One dated behind never comes
            // back into the window.) A server that persists nonces stores
            // the pair from [`Verifier::future_nonce`].
            if let Some(expires) = self.future_expiry(h.ts, now) {
                self.nonces.insert(&h.nonce, expires, now);
            }
            return Err(AuthError::Skew { server_time: now });
        }
        // Kept for twice the window: long after a replay would fail the
        // skew check anyway.
        let expires = now.saturating_add(self.skew_s.saturating_mul(2));
        if !self.nonces.insert(&h.nonce, expires, now) {
            return Err(AuthError::Invalid("nonce replayed"));
        }
        Ok(Verified::Hmac { kid: key.kid().to_string(), previous, nonce: h.nonce, nonce_expires: expires })
    }

    /// For a header refused with [`AuthError::Skew`] because it is dated
    /// ahead of the window: its nonce and how long it must be remembered
    /// (see [`Verifier::verify`]), for a server that persists nonces.
    pub fn future_nonce(&self, authorization: &[&[u8]], now: u64) -> Option<(String, u64)> {
        let [one] = authorization else { return None };
        let h = HmacHeader::parse(std::str::from_utf8(one).ok()?).ok()?;
        Some((h.nonce, self.future_expiry(h.ts, now)?))
    }

    /// Until when the nonce of a request dated `ts`, ahead of the window,
    /// is remembered; `None` past [`FUTURE_NONCE_HORIZON_S`]. The bound
    /// keeps a controller whose clock is years ahead (say, a dead RTC
    /// battery), retrying all day, from filling the cache with nonces that
    /// never expire, which would lock every client out; a request dated
    /// further ahead could only be replayed after waiting that long.
    fn future_expiry(&self, ts: u64, now: u64) -> Option<u64> {
        (ts > now && ts - now <= FUTURE_NONCE_HORIZON_S).then(|| ts.saturating_add(self.skew_s))
    }

    /// Everything that can be checked without the body: one header, its
    /// syntax, a known key id (or the right plain token where allowed).
    /// A server calls this before it reads a body, so that a peer without a
    /// usable credential cannot make it wait for or buffer one; the answer
    /// is the same `Invalid` that [`Verifier::verify`] would give.
    pub fn precheck(&self, authorization: &[&[u8]]) -> Result<(), AuthError> {
        self.presented(authorization).map(|_| ())
    }

    fn presented(&self, authorization: &[&[u8]]) -> Result<Presented<'_>, AuthError> {
        let value = match authorization {
            [one] => std::str::from_utf8(one).map_err(|_| AuthError::Invalid("header is not UTF-8"))?,
            [] => return Err(AuthError::Invalid("no Authorization header")),
            _ => return Err(AuthError::Invalid("several Authorization headers")),
        };
        if value.starts_with(protocol::AUTH_SCHEME) {
            // A broken HMAC header never falls back to the plain token.
            let header = HmacHeader::parse(value).map_err(AuthError::Invalid)?;
            let (key, previous) = if header.kid == self.keyring.current.kid() {
                (&self.keyring.current, false)
            } else {
                match &self.keyring.previous {
                    Some(k) if header.kid == k.kid() => (k, true),
                    _ => return Err(AuthError::Invalid("unknown or retired key id")),
                }
            };
            return Ok(Presented::Hmac { header, key, previous });
        }
        if let Some(token) = value.strip_prefix(protocol::PLAIN_SCHEME).and_then(|t| t.strip_prefix(' ')) {
            if !self.allow_plain {
                return Err(AuthError::Invalid("plain token presented but the fallback is disabled"));
            }
            let current = self.keyring.current.plain_matches(token);
            let previous = self.keyring.previous.as_ref().is_some_and(|k| k.plain_matches(token));
            return if current | previous { Ok(Presented::Plain) } else { Err(AuthError::Invalid("wrong plain token")) };
        }
        Err(AuthError::Invalid("unknown Authorization scheme"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EMPTY_SHA256;

    #[test]
    fn rfc4231_vectors() {
        let check = |key: &[u8], data: &[u8], expected: &str| assert_eq!(hex::encode(hmac_sha256(key, data)), expected);
        check(&[0x0b; 20], b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        check(b"Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        check(&[0xaa; 20], &[0xdd; 50], "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
        check(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        );
    }

    /// The golden vector of docs/protocol.md.
    pub const GOLDEN_SECRET: &str = "rayvault-golden-secret";
    pub const GOLDEN_BODY: &str = r#"{"step_name":"FFMPEG_PROBE","payload":{"media_path":"/tmp/a.mp4"}}"#;

    #[test]
    fn golden_vector() {
        let ring = Keyring::from_secrets(GOLDEN_SECRET, None).unwrap();
        let body_sha = protocol::sha256_hex(GOLDEN_BODY.as_bytes());
        assert_eq!(body_sha, GOLDEN_BODY_SHA256);
        assert_eq!(hex::encode(hmac_sha256(GOLDEN_SECRET.as_bytes(), b"rayvault-request-v1")), GOLDEN_REQUEST_KEY);
        assert_eq!(ring.current.kid(), GOLDEN_KID);
        let target = RequestTarget { method: "POST", path: "/jobs", query: "", worker_id: "worker-golden", body_sha256: &body_sha };
        let header = ring.authorization_at(&target, 1_700_000_000, "00112233445566778899aabbccddeeff");
        assert_eq!(header, format!("RAYVAULT-HMAC-SHA256 kid={GOLDEN_KID}, ts=1700000000, nonce=00112233445566778899aabbccddeeff, sig={GOLDEN_SIG}"));
    }

    const GOLDEN_BODY_SHA256: &str = "3c17eed13804ae719b5a70168c94564748d6e8dc096b50f0c90d4003194e78cb";
    const GOLDEN_REQUEST_KEY: &str = "ed2aa4c8ff2f02f308939e10e984cd8c8add52cc9431ee6b13ae96fe01daba97";
    const GOLDEN_KID: &str = "2f295f4aefa1ecc8";
    const GOLDEN_SIG: &str = "c5319d98255de3ab93efd47034addcf804e4052b142ce6fdd8d3e39fa547e42d";

    fn verifier(current: &str, previous: Option<&str>, plain: bool) -> Verifier {
        Verifier::new(Keyring::from_secrets(current, previous).unwrap(), "w1".into(), 300, plain)
    }

    fn signed(ring: &Keyring, ts: u64, nonce: &str, worker: &str) -> String {
        ring.authorization_at(
            &RequestTarget { method: "GET", path: "/caps", query: "", worker_id: worker, body_sha256: EMPTY_SHA256 },
            ts,
            nonce,
        )
    }

    #[test]
    fn verify_rotation_skew_replay_and_target() {
        let now = 1_800_000_000;
        let v = verifier("new-secret", Some("old-secret"), false);
        let check = |h: &str| v.verify(&[h.as_bytes()], "GET", "/caps", "", EMPTY_SHA256, now);
        let cur = Keyring::from_secrets("new-secret", None).unwrap();
        let old = Keyring::from_secrets("old-secret", None).unwrap();
        let retired = Keyring::from_secrets("retired-secret", None).unwrap();
        assert!(matches!(check(&signed(&cur, now, "nonce-aaaaaaaaaaaa", "w1")), Ok(Verified::Hmac { previous: false, .. })));
        assert!(matches!(check(&signed(&old, now, "nonce-bbbbbbbbbbbb", "w1")), Ok(Verified::Hmac { previous: true, .. })));
        assert!(matches!(check(&signed(&retired, now, "nonce-cccccccccccc", "w1")), Err(AuthError::Invalid(_))));
        // Replay of the first request.
        assert!(matches!(check(&signed(&cur, now, "nonce-aaaaaaaaaaaa", "w1")), Err(AuthError::Invalid("nonce replayed"))));
        // Another worker's signature.
        assert!(matches!(check(&signed(&cur, now, "nonce-dddddddddddd", "w2")), Err(AuthError::Invalid(_))));
        // Skew both ways: 300 s passes, 301 s fails.
        assert!(check(&signed(&cur, now - 300, "nonce-eeeeeeeeeeee", "w1")).is_ok());
        assert_eq!(check(&signed(&cur, now + 301, "nonce-ffffffffffff", "w1")), Err(AuthError::Skew { server_time: now }));
        assert_eq!(check(&signed(&cur, now - 301, "nonce-gggggggggggg", "w1")), Err(AuthError::Skew { server_time: now }));
        // A request dated behind the window never comes back into it, so
        // its nonce is not kept: the same nonce with a good ts works.
        assert!(check(&signed(&cur, now, "nonce-gggggggggggg", "w1")).is_ok());
        // One dated ahead enters the window later: a copy is a replay then.
        let ahead = signed(&cur, now + 301, "nonce-hhhhhhhhhhhh", "w1");
        assert_eq!(check(&ahead), Err(AuthError::Skew { server_time: now }));
        let later = v.verify(&[ahead.as_bytes()], "GET", "/caps", "", EMPTY_SHA256, now + 10);
        assert_eq!(later, Err(AuthError::Invalid("nonce replayed")));
        assert_eq!(v.future_nonce(&[ahead.as_bytes()], now), Some(("nonce-hhhhhhhhhhhh".to_string(), now + 601)));
        // Dated beyond the horizon (a clock years ahead): not remembered,
        // so such a client cannot fill the cache with nonces for years.
        let far = signed(&cur, now + FUTURE_NONCE_HORIZON_S + 1, "nonce-iiiiiiiiiiii", "w1");
        assert_eq!(check(&far), Err(AuthError::Skew { server_time: now }));
        assert_eq!(v.future_nonce(&[far.as_bytes()], now), None);
        let before = v.nonces.len();
        assert_eq!(check(&signed(&cur, now + 10 * 365 * 86_400, "nonce-jjjjjjjjjjjj", "w1")), Err(AuthError::Skew { server_time: now }));
        assert_eq!(v.nonces.len(), before);
    }

    #[test]
    fn plain_token_only_when_enabled_and_never_as_fallback() {
        let now = unix_now();
        let strict = verifier("s3cret-value", None, false);
        let lax = verifier("s3cret-value", None, true);
        let bearer = "Bearer s3cret-value";
        assert!(strict.verify(&[bearer.as_bytes()], "GET", "/caps", "", EMPTY_SHA256, now).is_err());
        assert_eq!(lax.verify(&[bearer.as_bytes()], "GET", "/caps", "", EMPTY_SHA256, now), Ok(Verified::Plain));
        assert!(lax.verify(&[b"Bearer wrong"], "GET", "/caps", "", EMPTY_SHA256, now).is_err());
        for near in ["Bearer s3cret-valu", "Bearer s3cret-value ", "Bearer s3cret-valuE", "Bearer "] {
            assert!(lax.verify(&[near.as_bytes()], "GET", "/caps", "", EMPTY_SHA256, now).is_err(), "{near:?}");
        }
        // A broken HMAC header with the plain token beside it: refused.
        let broken = "RAYVAULT-HMAC-SHA256 kid=zz";
        assert!(lax.verify(&[broken.as_bytes(), bearer.as_bytes()], "GET", "/caps", "", EMPTY_SHA256, now).is_err());
        assert!(lax.verify(&[broken.as_bytes()], "GET", "/caps", "", EMPTY_SHA256, now).is_err());
        assert!(lax.verify(&[], "GET", "/caps", "", EMPTY_SHA256, now).is_err());
    }

    #[test]
    fn preloaded_nonces_are_replays() {
        let now = 1_800_000_000;
        let v = verifier("k", None, false);
        let ring = Keyring::from_secrets("k", None).unwrap();
        v.preload_nonces([("nonce-seen-before-restart".to_string(), now + 600)], now);
        let h = signed(&ring, now, "nonce-seen-before-restart", "w1");
        assert_eq!(v.verify(&[h.as_bytes()], "GET", "/caps", "", EMPTY_SHA256, now), Err(AuthError::Invalid("nonce replayed")));
    }

    #[test]
    fn keys_never_print() {
        let ring = Keyring::from_secrets("very-secret-value", Some("older-secret-value")).unwrap();
        let dbg = format!("{ring:?}");
        assert!(!dbg.contains("very-secret-value") && !dbg.contains("older-secret-value"), "{dbg}");
        assert!(Keyring::from_secrets("", None).is_err());
    }
}
