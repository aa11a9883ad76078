//! The signing parts of the protocol: the HMAC scheme and its constants,
//! the request parts that are signed, the exact string to sign, and the
//! strict parser of the `Authorization` header.

use super::is_lower_hex;

/// The scheme word that starts an HMAC `Authorization` header and the first
/// line of every string to sign.
pub const AUTH_SCHEME: &str = "RAYVAULT-HMAC-SHA256";

/// The scheme of the plain-token fallback (`Authorization: Bearer <secret>`).
pub const PLAIN_SCHEME: &str = "Bearer";

/// Label of the HMAC that derives the request-signing key from a secret.
pub const REQUEST_KEY_LABEL: &str = "rayvault-request-v1";

/// Label of the HMAC from which a key id is derived.
pub const KID_LABEL: &str = "rayvault-kid-v1";

/// The message of every 401 for a bad credential (the wording the README's troubleshooting uses).
pub const AUTH_INVALID_MESSAGE: &str = "auth_token invalid";

/// The message of a 401 for a timestamp outside the allowed window.
pub const SKEW_MESSAGE: &str = "timestamp outside allowed skew";

/// SHA-256 of the empty body, the body hash of every GET.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The parts of a request that are signed, exactly as sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedParts<'a> {
    /// Upper-case method, e.g. `POST`.
    pub method: &'a str,
    /// The raw path as sent (not decoded, not normalised), e.g. `/jobs`.
    pub path: &'a str,
    /// The raw query without `?`, empty when there is none.
    pub query: &'a str,
    /// Unix seconds, the `ts` of the header, as decimal digits.
    pub ts: &'a str,
    /// The `nonce` of the header.
    pub nonce: &'a str,
    /// The id of the worker the request is meant for.
    pub worker_id: &'a str,
    /// Lower-case hex SHA-256 of the raw body bytes.
    pub body_sha256: &'a str,
}

/// The exact string that is signed: eight lines joined by `\n`, no trailing
/// newline.
pub fn string_to_sign(p: &SignedParts<'_>) -> String {
    [AUTH_SCHEME, p.method, p.path, p.query, p.ts, p.nonce, p.worker_id, p.body_sha256].join("\n")
}

/// A parsed `Authorization: RAYVAULT-HMAC-SHA256 kid=..., ts=..., nonce=..., sig=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacHeader {
    pub kid: String,
    pub ts: u64,
    pub ts_raw: String,
    pub nonce: String,
    pub sig: String,
}

impl HmacHeader {
    /// Formats the header value.
    pub fn format(kid: &str, ts: u64, nonce: &str, sig: &str) -> String {
        format!("{AUTH_SCHEME} kid={kid}, ts={ts}, nonce={nonce}, sig={sig}")
    }

    /// Parses a header value strictly: the scheme, then exactly the four
    /// fields in any order, each once, with the formats `docs/protocol.md`
    /// gives. Returns why it was refused, for the server log only.
    pub fn parse(value: &str) -> Result<HmacHeader, &'static str> {
        let rest = value
            .strip_prefix(AUTH_SCHEME)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or("not the HMAC scheme")?;
        let (mut kid, mut ts, mut nonce, mut sig) = (None, None, None, None);
        for field in rest.split(',') {
            let (k, v) = field.trim_start_matches(' ').split_once('=').ok_or("field without =")?;
            let slot = match k {
                "kid" => &mut kid,
                "ts" => &mut ts,
                "nonce" => &mut nonce,
                "sig" => &mut sig,
                _ => return Err("unknown field"),
            };
            if slot.replace(v.to_string()).is_some() {
                return Err("field given twice");
            }
        }
        let (kid, ts_raw, nonce, sig) = match (kid, ts, nonce, sig) {
            (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
            _ => return Err("missing field"),
        };
        if kid.len() != 16 || !is_lower_hex(&kid) {
            return Err("kid is not 16 lower-case hex digits");
        }
        if sig.len() != 64 || !is_lower_hex(&sig) {
            return Err("sig is not 64 lower-case hex digits");
        }
        if !(16..=64).contains(&nonce.len())
            || !nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("nonce is not 16-64 characters of [A-Za-z0-9_-]");
        }
        if ts_raw.is_empty() || ts_raw.len() > 12 || !ts_raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err("ts is not 1-12 decimal digits");
        }
        let ts = ts_raw.parse::<u64>().map_err(|_| "ts does not parse")?;
        Ok(HmacHeader { kid, ts, ts_raw, nonce, sig })
    }
}
