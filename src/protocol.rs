//! The worker's wire format: endpoints, headers, request and response bodies,
//! error codes, the string that is signed and the `inputs_hash` definition.
//!
//! Architecture Invariant: this module, with its parts in `src/protocol/`,
//! is the only one that knows the wire format. The worker's HTTP handlers,
//! the signed client and the controller convert between these types and
//! their own at the boundary. Everything here is described for
//! other-language clients in `docs/protocol.md`; a change here is a change
//! of [`CONTRACT`].
//!
//! The parts: `signing` (the auth scheme, the string to sign, the
//! `Authorization` header), `canonical` (canonical JSON, `inputs_hash`,
//! strict JSON parsing, blob references), `codes` (the HTTP-level error
//! codes and the error body) and `types` (the request and answer bodies).
//! Every item is re-exported here, so its path is `protocol::<item>`; the
//! digest helpers that several parts share stay in this file.

mod canonical;
mod codes;
mod signing;
#[cfg(test)]
mod tests;
mod types;

pub use canonical::{blob_refs, canonical_json, inputs_hash, parse_json_unique_keys, JsonRefusal, BLOB_REF_PREFIX};
pub use codes::{ApiCode, ErrorBody};
pub use signing::{
    string_to_sign, HmacHeader, SignedParts, AUTH_INVALID_MESSAGE, AUTH_SCHEME, EMPTY_SHA256, KID_LABEL, PLAIN_SCHEME,
    REQUEST_KEY_LABEL, SKEW_MESSAGE,
};
pub use types::{
    job_label, now_ms, ArtifactManifest, BlobStored, Caps, DrainRequest, DrainState, FoundJobs, Health, InlineBlob,
    JobError, JobState, JobView, LogChunk, StepLoad, SubmitJob, Submitted, FIND_JOBS_DEFAULT_LIMIT,
    FIND_JOBS_MAX_LIMIT, INLINE_BLOBS_KEY, INLINE_BLOB_MAX, MAX_INLINE_LOG, MAX_LEASE_S, MAX_LOG_CHUNK,
};

use sha2::{Digest, Sha256};

/// The contract version, named by `/health` and `/caps`.
pub const CONTRACT: &str = "rayvault-worker/1";

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
