//! The job store's error: what failed (a full disk, other I/O, anything
//! else), the code a caller reports for it, and whether redb must be
//! re-opened after it (see `Store::run`).

use crate::error::ErrorCode;

/// A store failure (database or record encoding).
#[derive(Debug, thiserror::Error)]
#[error("job store: {message}")]
pub struct StoreError {
    pub(super) kind: StoreErrorKind,
    pub(super) message: String,
    /// The error is redb's "previous I/O error" state (or a closed handle),
    /// not a failure of this call's own I/O.
    pub(super) closed: bool,
}

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// A write failed because the disk is full (ENOSPC).
    DiskFull,
    /// Another I/O failure, or the database is closed after one.
    Io,
    /// Anything else (a corrupt record, a bug).
    Other,
}

impl StoreError {
    pub(super) fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError { kind, message: message.into(), closed: false }
    }

    pub(super) fn closed() -> Self {
        StoreError { kind: StoreErrorKind::Io, message: "the database is closed after an I/O error".into(), closed: true }
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// True when the cause is a full disk.
    pub fn is_disk_full(&self) -> bool {
        self.kind == StoreErrorKind::DiskFull
    }

    /// The error code a caller reports: `DISK_FULL`, `IO_ERROR` or `INTERNAL`.
    pub fn code(&self) -> ErrorCode {
        match self.kind {
            StoreErrorKind::DiskFull => ErrorCode::DiskFull,
            StoreErrorKind::Io => ErrorCode::IoError,
            StoreErrorKind::Other => ErrorCode::Internal,
        }
    }

    /// True for the failures after which redb must be closed and re-opened.
    pub(super) fn needs_reopen(&self) -> bool {
        self.kind != StoreErrorKind::Other
    }
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        match e.into() {
            redb::Error::Io(io) => {
                let kind = if crate::error::is_disk_full(&io) { StoreErrorKind::DiskFull } else { StoreErrorKind::Io };
                StoreError::new(kind, io.to_string())
            }
            redb::Error::PreviousIo => StoreError::closed(),
            other => StoreError::new(StoreErrorKind::Other, other.to_string()),
        }
    }
}

pub(super) fn codec(e: serde_json::Error) -> StoreError {
    StoreError::new(StoreErrorKind::Other, format!("corrupt job record: {e}"))
}
