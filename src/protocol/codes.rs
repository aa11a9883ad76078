//! The stable machine codes of HTTP-level errors, with their HTTP status
//! and wire spelling, and the body of every error response.

use serde::{Deserialize, Serialize};

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
