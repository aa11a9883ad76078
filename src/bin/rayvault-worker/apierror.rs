//! The worker's HTTP error: a stable [`ApiCode`], a message that says what
//! to do, rendered as the protocol's error body.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use rayvault::protocol::{ApiCode, ErrorBody};
use std::fmt;

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    pub code: ApiCode,
    pub message: String,
    /// Set only for `AUTH_SKEW`.
    pub server_time: Option<u64>,
}

impl ApiError {
    pub fn new(code: ApiCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), server_time: None }
    }

    /// The one answer to every bad credential.
    pub fn auth_invalid() -> Self {
        Self::new(ApiCode::AuthInvalid, rayvault::protocol::AUTH_INVALID_MESSAGE)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ApiCode::BadRequest, message)
    }

    /// A local failure; the details go to the log, not to the client.
    pub fn internal(what: &str, err: impl fmt::Display) -> Self {
        tracing::error!(error = %err, "{what}");
        Self::new(ApiCode::Internal, format!("{what} failed on the worker; see the worker's log"))
    }
}

impl ApiError {
    /// A local file failure: `DISK_FULL` (507) when the disk is full, else
    /// an internal error with the details in the log.
    pub fn io(what: &str, err: std::io::Error) -> Self {
        if rayvault::error::is_disk_full(&err) {
            tracing::warn!(error = %err, "{what}: the disk is full");
            return Self::new(ApiCode::DiskFull, format!("{what} failed: the worker's disk is full; free space on it or use another node"));
        }
        Self::internal(what, err)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ErrorBody {
            error: self.message.clone(),
            code: self.code.as_str().to_string(),
            server_time: self.server_time,
        })
    }
}

impl From<rayvault::store::StoreError> for ApiError {
    fn from(e: rayvault::store::StoreError) -> Self {
        if e.is_disk_full() {
            tracing::warn!(error = %e, "the job store's disk is full");
            return ApiError::new(ApiCode::DiskFull, "the worker's disk is full, so the job store cannot be written; free space on it (the worker recovers by itself) or use another node");
        }
        ApiError::internal("the job store", e)
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::internal("a background task", e)
    }
}
