//! The worker's wire format: endpoints, headers, request and response bodies,
//! error codes, the string that is signed and the `inputs_hash` definition.
//!
//! Architecture Invariant: this is the only module that knows the wire
//! format. The worker's HTTP handlers, the signed client and the controller
//! convert between these types and their own at the boundary. Everything
//! here is described for other-language clients in `docs/protocol.md`; a
//! change here is a change of [`CONTRACT`].

use crate::artifacts::ArtifactEntry;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The contract version, named by `/health` and `/caps`.
pub const CONTRACT: &str = "rayvault-worker/1";

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

/// Prefix of a payload string that names a staged blob by digest.
pub const BLOB_REF_PREFIX: &str = "blob:sha256:";

/// Largest chunk `GET /jobs/{id}/log` returns at once.
pub const MAX_LOG_CHUNK: u64 = 256 * 1024;

/// A job log of at most this many bytes is kept in memory while the job
/// runs and in the job's record once it ended (no file), and a finished
/// job's `GET /jobs/{id}` carries it whole (`log`, `log_bytes`).
pub const MAX_INLINE_LOG: usize = 64 * 1024;

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

/// True for a non-empty string of lower-case hex digits.
pub fn is_lower_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// True for a SHA-256 digest as written on the wire: 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

/// Lower-case hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Canonical JSON as RFC 8785 (JSON Canonicalization Scheme) defines it:
/// no whitespace; object keys sorted by their UTF-16 code units; strings
/// with only `"`, `\` and the control characters escaped (`\b \t \n \f
/// \r` in short form, the others as `\u00xx` in lower-case hex);
/// every number written as ECMAScript's `Number.prototype.toString` writes
/// the IEEE 754 double it denotes (so `1e21` is `1e+21`, `1e-7` is `1e-7`,
/// `100.0` is `100`, `-0` is `0`, and an integer above 2^53 is first
/// rounded to the nearest double, as every JCS implementation does).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_jcs_string(k, out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(s) => write_jcs_string(s, out),
        Value::Number(n) => write_jcs_number(n, out),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
    }
}

/// A string as RFC 8785 section 3.2.2.2 writes it.
fn write_jcs_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A number as RFC 8785 section 3.2.2.3 writes it: the double it denotes,
/// in ECMAScript's shortest round-trip form. A JSON number parsed by
/// serde_json is always finite, and `u64`/`i64` to `f64` rounds to the
/// nearest double, which is what parsing the same digits as a double gives.
fn write_jcs_number(n: &serde_json::Number, out: &mut String) {
    let f = match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => u as f64,
        (None, Some(i)) => i as f64,
        _ => n.as_f64().unwrap_or(0.0),
    };
    out.push_str(ryu_js::Buffer::new().format_finite(f));
}

/// The idempotency hash of a job: lower-case hex SHA-256 of the canonical
/// JSON of `{"payload": payload, "step_name": step_name}`. Staged inputs
/// appear in the payload as `blob:sha256:<digest>`, so the hash covers their
/// content, never a local path.
pub fn inputs_hash(step_name: &str, payload: &Value) -> String {
    let doc = serde_json::json!({ "step_name": step_name, "payload": payload });
    sha256_hex(canonical_json(&doc).as_bytes())
}

/// Why JSON text was refused by [`parse_json_unique_keys`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonRefusal {
    /// Not JSON at all (or a number outside the range of a double).
    #[error("{0}")]
    Malformed(String),
    /// Valid JSON, but an object names the same key twice.
    #[error("{0}")]
    DuplicateKey(String),
}

/// Parses JSON text, refusing any object (at any depth) that names a key
/// twice. Plain parsing keeps the last of two equal keys while another
/// language's parser may keep the first, so the same bytes would be two
/// different payloads, with two different `inputs_hash` values.
pub fn parse_json_unique_keys(bytes: &[u8]) -> Result<Value, JsonRefusal> {
    match serde_json::from_slice::<UniqueKeys>(bytes) {
        Ok(UniqueKeys(v)) => Ok(v),
        // Plain parsing differs from the strict one only in accepting a
        // repeated key, so what plain parsing accepts was refused for that.
        Err(e) if serde_json::from_slice::<Value>(bytes).is_ok() => Err(JsonRefusal::DuplicateKey(e.to_string())),
        Err(e) => Err(JsonRefusal::Malformed(e.to_string())),
    }
}

/// A JSON value deserialised with a check that no object repeats a key.
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map(Value::Number).unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("the key {key:?} appears twice in one object")));
            }
            let UniqueKeys(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Every blob digest a payload refers to (`"blob:sha256:<64 hex>"` string
/// values anywhere in the JSON), or the first malformed reference.
pub fn blob_refs(payload: &Value) -> Result<Vec<String>, String> {
    fn walk(v: &Value, out: &mut Vec<String>) -> Result<(), String> {
        match v {
            Value::String(s) => {
                if let Some(d) = s.strip_prefix(BLOB_REF_PREFIX) {
                    if !is_sha256_hex(d) {
                        return Err(format!("{s:?} is not blob:sha256: followed by 64 lower-case hex digits"));
                    }
                    out.push(d.to_string());
                }
                Ok(())
            }
            Value::Array(items) => items.iter().try_for_each(|i| walk(i, out)),
            Value::Object(map) => map.values().try_for_each(|i| walk(i, out)),
            _ => Ok(()),
        }
    }
    let mut out = Vec::new();
    walk(payload, &mut out)?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// Stable machine codes of HTTP-level errors (the `code` of an error body).
/// Job failures use [`crate::error::ErrorCode`] inside a job's `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApiCode {
    /// 401: missing, malformed, wrong, replayed or retired credential.
    AuthInvalid,
    /// 401: the signed timestamp is outside the allowed skew.
    AuthSkew,
    /// 400: malformed request (bad JSON, bad query, bad header).
    BadRequest,
    /// 400: unknown step name.
    StepUnknown,
    /// 400: a JSON object in the body names the same key twice.
    DuplicateKey,
    /// 404: no such route.
    NotFound,
    /// 404: no such job.
    JobNotFound,
    /// 404: no such artifact in the job's manifest.
    ArtifactNotFound,
    /// 400: an artifact name that could escape its folder.
    ArtifactNameInvalid,
    /// 422: a payload names a blob that was never uploaded.
    BlobNotFound,
    /// 422: uploaded bytes do not hash to the digest in the path.
    DigestMismatch,
    /// 422: the client's `inputs_hash` differs from the worker's.
    InputsHashMismatch,
    /// 405: method not allowed on this route.
    MethodNotAllowed,
    /// 409: the job is already finished (cancel) or not finished yet.
    JobConflict,
    /// 413: body or blob larger than the configured limit.
    PayloadTooLarge,
    /// 416: a Range outside the artifact.
    RangeNotSatisfiable,
    /// 431: request headers larger than the configured limit.
    HeadersTooLarge,
    /// 429: too many jobs queued or running.
    TooManyJobs,
    /// 503: the worker is shutting down.
    ShuttingDown,
    /// 503: the worker is draining (`POST /drain`): it takes no new jobs,
    /// and its running and queued jobs finish.
    Draining,
    /// 507: the worker's disk is full; free space there (it recovers by
    /// itself) or use another node.
    DiskFull,
    /// 500: a bug or a local I/O failure; see the worker log.
    Internal,
}

impl ApiCode {
    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            ApiCode::AuthInvalid | ApiCode::AuthSkew => 401,
            ApiCode::BadRequest | ApiCode::StepUnknown | ApiCode::DuplicateKey | ApiCode::ArtifactNameInvalid => 400,
            ApiCode::NotFound | ApiCode::JobNotFound | ApiCode::ArtifactNotFound => 404,
            ApiCode::MethodNotAllowed => 405,
            ApiCode::JobConflict => 409,
            ApiCode::PayloadTooLarge => 413,
            ApiCode::RangeNotSatisfiable => 416,
            ApiCode::BlobNotFound | ApiCode::DigestMismatch | ApiCode::InputsHashMismatch => 422,
            ApiCode::TooManyJobs => 429,
            ApiCode::HeadersTooLarge => 431,
            ApiCode::Internal => 500,
            ApiCode::ShuttingDown | ApiCode::Draining => 503,
            ApiCode::DiskFull => 507,
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiCode::AuthInvalid => "AUTH_INVALID",
            ApiCode::AuthSkew => "AUTH_SKEW",
            ApiCode::BadRequest => "BAD_REQUEST",
            ApiCode::StepUnknown => "STEP_UNKNOWN",
            ApiCode::DuplicateKey => "DUPLICATE_KEY",
            ApiCode::NotFound => "NOT_FOUND",
            ApiCode::JobNotFound => "JOB_NOT_FOUND",
            ApiCode::ArtifactNotFound => "ARTIFACT_NOT_FOUND",
            ApiCode::ArtifactNameInvalid => "ARTIFACT_NAME_INVALID",
            ApiCode::BlobNotFound => "BLOB_NOT_FOUND",
            ApiCode::DigestMismatch => "DIGEST_MISMATCH",
            ApiCode::InputsHashMismatch => "INPUTS_HASH_MISMATCH",
            ApiCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiCode::JobConflict => "JOB_CONFLICT",
            ApiCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ApiCode::RangeNotSatisfiable => "RANGE_NOT_SATISFIABLE",
            ApiCode::HeadersTooLarge => "HEADERS_TOO_LARGE",
            ApiCode::TooManyJobs => "TOO_MANY_JOBS",
            ApiCode::ShuttingDown => "SHUTTING_DOWN",
            ApiCode::Draining => "DRAINING",
            ApiCode::DiskFull => "DISK_FULL",
            ApiCode::Internal => "INTERNAL",
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: String,
    /// Only on `AUTH_SKEW`: the worker's clock, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time: Option<u64>,
}

/// `GET /health` (no auth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `degraded` while the worker is short of disk space or its
    /// job store is failing (it still answers, but new work may fail).
    pub status: String,
    pub worker_id: String,
    pub contract: String,
    pub version: String,
    /// Why the status is `degraded`; absent when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_reason: Option<String>,
    /// Free bytes on the disk holding the worker's state folder (absent if
    /// it could not be measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// True while the worker drains (`POST /drain`): it takes no new jobs.
    /// Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// Per step name: the jobs this worker holds now (from every
    /// controller) and the step's concurrency, so that a controller can rank
    /// nodes by their real load. Absent from workers older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<BTreeMap<String, StepLoad>>,
}

/// One step's jobs on a worker at the moment of a `/health` answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepLoad {
    /// Jobs of the step running now.
    pub running: u64,
    /// Jobs of the step waiting for a free slot.
    pub queued: u64,
    /// Jobs of the step the worker runs at once (`steps.<name>.concurrency`).
    pub concurrency: u64,
}

/// `POST /drain` body: start (`true`) or stop (`false`) draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub drain: bool,
}

/// `POST /drain` answer: the drain state now, and how many jobs are still
/// queued or running (they finish; the worker is idle at 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainState {
    pub worker_id: String,
    pub draining: bool,
    pub active_jobs: u64,
}

/// `GET /caps`: the host capability keys (`os`, `cpu`, `ram_gb`,
/// `gpu_model`, `vram_gb`, `python_version`, `ffmpeg_version`,
/// `davinci_available`, and whatever else the probe reports) plus the steps
/// this worker runs, their concurrency and the contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Caps {
    #[serde(flatten)]
    pub host: serde_json::Map<String, Value>,
    pub worker_id: String,
    pub steps: Vec<String>,
    pub concurrency: BTreeMap<String, usize>,
    pub contract: String,
    /// The most input bytes this worker takes inside `POST /jobs` (the
    /// body's `blobs` list, [`InlineBlob`]); 0 or absent: upload every
    /// input with `PUT /blobs/{sha256}` first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inline_blob_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The key of `POST /jobs` that carries small inputs inline.
pub const INLINE_BLOBS_KEY: &str = "blobs";

/// Inputs larger than this are never sent inline, whatever a worker
/// allows: a larger file is cheaper to stream with `PUT /blobs` than to
/// hold base64-encoded in a JSON body.
pub const INLINE_BLOB_MAX: u64 = 512 * 1024;

/// One input file carried inside `POST /jobs` (in the body's `blobs` list)
/// instead of a separate `PUT /blobs/{sha256}`: the worker checks the
/// digest and stores it as a blob before it accepts the job, so a small
/// input costs no extra request and no extra commit. The payload names it
/// as usual (`blob:sha256:<hex>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineBlob {
    pub sha256: String,
    /// The file's bytes, standard base64 with padding.
    pub data_b64: String,
}

/// `POST /jobs` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    pub step_name: String,
    pub payload: Value,
    /// Optional: if given it must equal the worker's [`inputs_hash`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_hash: Option<String>,
    /// Optional free label (e.g. the controller's run/job id), echoed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Optional lease in seconds (see `crate::lease`): the submitter renews
    /// it with status calls and long-polls; once it expires the worker stops
    /// the job and records it `abandoned` (`LEASE_EXPIRED`). Without it the
    /// job runs to its end whoever watches. 1 to [`MAX_LEASE_S`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_s: Option<u64>,
}

/// The longest lease a submitter may ask for, seconds.
pub const MAX_LEASE_S: u64 = 3600;

/// Milliseconds since the Unix epoch on the wall clock: the one clock of
/// every `*_at_ms` field (jobs, leases, the daemon's store).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// A job's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The submitter's lease expired: the worker stopped the job (or never
    /// started it) and will not serve its result; error `LEASE_EXPIRED`.
    Abandoned,
}

impl JobState {
    /// The state as the protocol spells it (`queued`, `running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Abandoned => "abandoned",
        }
    }

    /// Succeeded, failed, cancelled and abandoned jobs never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Abandoned)
    }
}

/// A failed job's error: a stable code (see [`crate::error::ErrorCode`]) and
/// a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// A job as the worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub job_id: String,
    pub step_name: String,
    pub state: JobState,
    pub inputs_hash: String,
    #[serde(default)]
    pub label: Option<String>,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    /// How many times the job was started (more than 1 after a rerun).
    pub attempt: u32,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<JobError>,
    #[serde(default)]
    pub artifacts: Vec<ArtifactEntry>,
    /// The whole job log, in `GET /jobs/{id}` once the job has ended, when
    /// it is at most [`MAX_INLINE_LOG`] bytes; absent otherwise (read it
    /// with `GET /jobs/{id}/log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// The length of `log` in bytes, when `log` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<u64>,
}

/// `POST /jobs` response: the job, and whether it is an existing one
/// returned for the same `step_name` + `inputs_hash` (status 200) rather
/// than a new one (status 201).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub cached: bool,
    pub job: JobView,
}

/// The label the controller gives the job it submits for `run_id`/`job_id`;
/// `GET /jobs?run_id=R&job_id=J` finds the jobs labelled so.
pub fn job_label(run_id: &str, job_id: &str) -> String {
    format!("{run_id}/{job_id}")
}

/// Most jobs `GET /jobs` returns when no `limit` is given.
pub const FIND_JOBS_DEFAULT_LIMIT: usize = 20;

/// Most jobs `GET /jobs` returns whatever `limit` says.
pub const FIND_JOBS_MAX_LIMIT: usize = 100;

/// `GET /jobs?run_id=R&job_id=J[&limit=N]` response: the jobs labelled
/// [`job_label`]`(R, J)`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoundJobs {
    pub jobs: Vec<JobView>,
    /// True when more jobs matched than were returned.
    pub truncated: bool,
}

/// `GET /jobs/{id}/log?offset=N` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub job_id: String,
    pub offset: u64,
    /// Pass this as `offset` next time.
    pub next_offset: u64,
    /// The log's size when read.
    pub size: u64,
    /// The bytes read, as UTF-8 (invalid sequences replaced).
    pub data: String,
    /// True when the job is finished and `next_offset == size`.
    pub complete: bool,
}

/// `GET /jobs/{id}/artifacts` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactManifest {
    pub job_id: String,
    pub state: JobState,
    pub artifacts: Vec<ArtifactEntry>,
}

/// `PUT /blobs/{sha256}` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStored {
    pub sha256: String,
    pub size: u64,
    /// False when the blob was already there (the upload was discarded).
    pub created: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 8785 number serialisation of IEEE 754 bit patterns; expected
    /// strings computed independently with the `jcs` package from PyPI.
    #[test]
    fn jcs_numbers_from_bit_patterns() {
        let check = |bits: u64, expected: &str| {
            let n = serde_json::Number::from_f64(f64::from_bits(bits)).unwrap();
            assert_eq!(canonical_json(&Value::Number(n)), expected, "{bits:016x}");
        };
        for (bits, expected) in [
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0xc43211ede4974a35, "-333333333333333300000"),
            (0x3e7ad7f29abcaf48, "1e-7"),
        ] {
            check(bits, expected);
        }
    }

    /// The test vectors of docs/protocol.md (`inputs_hash` test vectors):
    /// JSON text as a client sends it, its canonical form and the hash,
    /// computed independently with the `jcs` package from PyPI.
    #[test]
    fn jcs_inputs_hash_vectors() {
        let check = |payload: &str, canonical: &str, hash: &str| {
            let p = parse_json_unique_keys(payload.as_bytes()).unwrap();
            let doc = serde_json::json!({"step_name": "OPENCLAW_TASK", "payload": p});
            assert_eq!(canonical_json(&doc), canonical, "{payload}");
            assert_eq!(inputs_hash("OPENCLAW_TASK", &p), hash, "{payload}");
        };
        check(
            r#"{"task": "small", "x": 1e-7}"#,
            r#"{"payload":{"task":"small","x":1e-7},"step_name":"OPENCLAW_TASK"}"#,
            "ba816bbf42444f011530f78cab25f863215fc8c68b8395c6552f36eea6674416",
        );
        check(
            r#"{"task": "large", "x": 1e21}"#,
            r#"{"payload":{"task":"large","x":1e+21},"step_name":"OPENCLAW_TASK"}"#,
            "4c5076ebb5156ceda596edcb45e81efcae3f03d94f0a8864e2118a956695621a",
        );
        check(
            r#"{"task": "above 2^53", "x": 9007199254740993}"#,
            r#"{"payload":{"task":"above 2^53","x":9007199254740992},"step_name":"OPENCLAW_TASK"}"#,
            "67164dd2e025d1aa5bb4435202052000b7382308831d15646a05522c3aa2d997",
        );
        check(
            r#"{"task": "mixed", "n": [100.0, -0.0, 0.1, 1e23, 5e-324, 18446744073709551616, -1.5E-10], "\ue000": 1, "\ud83d\ude00": 2, "s": "tab\t nul\u0000 del\u007f \u00e9 /"}"#,
            "{\"payload\":{\"n\":[100,0,0.1,1e+23,5e-324,18446744073709552000,-1.5e-10],\"s\":\"tab\\t nul\\u0000 del\u{7f} \u{e9} /\",\"task\":\"mixed\",\"\u{1f600}\":2,\"\u{e000}\":1},\"step_name\":\"OPENCLAW_TASK\"}",
            "a93564f1d5848ee20ddabe038211f9b08daa7f6a3a49b719b88f29789c060917",
        );
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(matches!(parse_json_unique_keys(br#"{"a":1,"a":2}"#), Err(JsonRefusal::DuplicateKey(_))));
        let nested = br#"{"step_name":"X","payload":{"p":[{"k":1,"k":1}]}}"#;
        match parse_json_unique_keys(nested) {
            Err(JsonRefusal::DuplicateKey(m)) => assert!(m.contains("\"k\""), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_json_unique_keys(b"{\"a\":"), Err(JsonRefusal::Malformed(_))));
        assert!(matches!(parse_json_unique_keys(b"[1e400]"), Err(JsonRefusal::Malformed(_))));
        let ok = parse_json_unique_keys(br#"{"a":{"a":1},"b":[{"a":2},{"a":3}]}"#).unwrap();
        assert_eq!(ok, serde_json::json!({"a":{"a":1},"b":[{"a":2},{"a":3}]}));
    }

    #[test]
    fn canonical_json_sorts_and_strips() {
        let v = json!({"b": [1, {"z": null, "a": "x\"y"}], "a": true, "é": 1.5});
        assert_eq!(canonical_json(&v), r#"{"a":true,"b":[1,{"a":"x\"y","z":null}],"é":1.5}"#);
    }

    #[test]
    fn inputs_hash_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"media_path": "/a.mp4", "x": {"q":1,"p":2}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"x":{"p":2,"q":1},"media_path":"/a.mp4"}"#).unwrap();
        assert_eq!(inputs_hash("FFMPEG_PROBE", &a), inputs_hash("FFMPEG_PROBE", &b));
        assert_ne!(inputs_hash("FFMPEG_PROBE", &a), inputs_hash("FRAME_SAMPLING", &a));
        // The documented example in docs/protocol.md.
        let p = json!({"media_path": "blob:sha256:".to_string() + &"ab".repeat(32)});
        assert_eq!(
            canonical_json(&json!({"step_name": "FFMPEG_PROBE", "payload": p})),
            format!(r#"{{"payload":{{"media_path":"blob:sha256:{}"}},"step_name":"FFMPEG_PROBE"}}"#, "ab".repeat(32))
        );
    }

    #[test]
    fn blob_refs_found_and_checked() {
        let d = "0f".repeat(32);
        let v = json!({"a": [format!("blob:sha256:{d}"), "plain"], "b": {"c": format!("blob:sha256:{d}")}});
        assert_eq!(blob_refs(&v).unwrap(), vec![d]);
        assert!(blob_refs(&json!({"a": "blob:sha256:XYZ"})).is_err());
        assert!(blob_refs(&json!({"a": format!("blob:sha256:{}", "AB".repeat(32))})).is_err());
    }

    #[test]
    fn header_round_trip_and_strictness() {
        let sig = "a".repeat(64);
        let h = HmacHeader::format("0123456789abcdef", 1_700_000_000, "n0nce-n0nce-n0nce", &sig);
        let p = HmacHeader::parse(&h).unwrap();
        assert_eq!((p.kid.as_str(), p.ts, p.nonce.as_str()), ("0123456789abcdef", 1_700_000_000, "n0nce-n0nce-n0nce"));
        let base = "RAYVAULT-HMAC-SHA256 kid=0123456789abcdef, nonce=n0nce-n0nce-n0nce";
        for bad_tail in [
            format!("ts=abc, sig={sig}"),
            format!("ts=-5, sig={sig}"),
            format!("ts=1.5, sig={sig}"),
            format!("ts=99999999999999999999, sig={sig}"),
            format!("ts=1, sig={}", &sig[..63]),
            format!("ts=1, sig={}", "A".repeat(64)),
            format!("ts=1, sig={}", "g".repeat(64)),
            "ts=1, sig=".to_string(),
            format!("ts=1, sig={sig}, sig={sig}"),
            format!("ts=1, sig={sig}, extra=1"),
            "ts=1".to_string(),
        ] {
            let v = format!("{base}, {bad_tail}");
            assert!(HmacHeader::parse(&v).is_err(), "{v}");
        }
        assert!(HmacHeader::parse(&format!("{base}, ts=1, sig={sig}")).is_ok());
        assert!(HmacHeader::parse(&format!("rayvault-hmac-sha256 kid=0123456789abcdef, ts=1, nonce=n0nce-n0nce-n0nce, sig={sig}")).is_err());
    }

    #[test]
    fn codes_match_serde_and_status() {
        for c in [ApiCode::AuthInvalid, ApiCode::InputsHashMismatch, ApiCode::HeadersTooLarge, ApiCode::Internal] {
            assert_eq!(serde_json::to_value(c).unwrap(), Value::String(c.as_str().into()));
        }
        assert_eq!(ApiCode::AuthSkew.status(), 401);
        assert_eq!(ApiCode::InputsHashMismatch.status(), 422);
    }

    #[test]
    fn empty_sha_constant() {
        assert_eq!(sha256_hex(b""), EMPTY_SHA256);
    }
}
