//! Errors that cross a boundary: a step's failure, a wire error.
//!
//! Every failure a user can see carries a stable machine code (the
//! [`ErrorCode`] enum, serialised in SCREAMING_SNAKE_CASE) beside a message
//! that says what to do about it. Codes are part of the public contract and
//! are listed in `docs/protocol.md`; never rename one.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable machine codes for step and job failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The payload is malformed or a field has the wrong type or value.
    InputInvalid,
    /// A file named by the payload does not exist or cannot be read.
    InputNotFound,
    /// ffmpeg or ffprobe is not installed or not runnable.
    FfmpegUnavailable,
    /// ffmpeg or ffprobe ran but failed.
    FfmpegFailed,
    /// No text-to-speech engine could be found for the request.
    TtsUnavailable,
    /// The text-to-speech engine ran but failed.
    TtsFailed,
    /// An audio file could not be decoded.
    AudioDecodeFailed,
    /// `OPENCLAW_TASK` needs an interactive desktop session and none is active.
    UiSessionRequired,
    /// No OpenClaw command is configured or installed.
    OpenclawUnavailable,
    /// The OpenClaw command ran but failed.
    OpenclawFailed,
    /// The step did not finish within its timeout.
    Timeout,
    /// The job was cancelled.
    Cancelled,
    /// The step name is not one this build knows.
    StepUnknown,
    /// The host cannot run this step (a required tool is missing).
    StepUnavailable,
    /// The process running the job died before it finished (crash, kill -9).
    Interrupted,
    /// Reading or writing local files failed.
    IoError,
    /// A bug: please report it with the job log.
    Internal,
    /// The controller found no worker for the job and `--no-fallback` forbade
    /// running it locally.
    NoEligibleNode,
    /// A remote job's artifacts could not be downloaded or failed their
    /// SHA-256 check; `sync-artifacts` retries.
    ArtifactSyncFailed,
    /// The worker running the job became unreachable and no other node or
    /// local fallback could take over.
    WorkerLost,
    /// A write failed because the disk (or quota) is full (ENOSPC). The cause
    /// is the machine, not the job: another node or a local run may succeed.
    DiskFull,
    /// The controller stopped renewing the job's lease (it gave the job up,
    /// or the link was cut); the worker stopped the job and will not serve
    /// its result.
    LeaseExpired,
    /// A worker refused the controller's credentials (secrets differ, or the
    /// clocks are too far apart): a configuration error, not unavailability.
    AuthRejected,
    /// The worker at a node's address answered with another worker id: fix
    /// `node_id` in nodes.json or the worker's RAYVAULT_WORKER_ID.
    NodeIdMismatch,
    /// Enabled nodes are configured but no RAYVAULT_CLUSTER_SECRET* is set in
    /// the controller's environment.
    SecretMissing,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 25] = [
        ErrorCode::InputInvalid,
        ErrorCode::InputNotFound,
        ErrorCode::FfmpegUnavailable,
        ErrorCode::FfmpegFailed,
        ErrorCode::TtsUnavailable,
        ErrorCode::TtsFailed,
        ErrorCode::AudioDecodeFailed,
        ErrorCode::UiSessionRequired,
        ErrorCode::OpenclawUnavailable,
        ErrorCode::OpenclawFailed,
        ErrorCode::Timeout,
        ErrorCode::Cancelled,
        ErrorCode::StepUnknown,
        ErrorCode::StepUnavailable,
        ErrorCode::Interrupted,
        ErrorCode::IoError,
        ErrorCode::Internal,
        ErrorCode::NoEligibleNode,
        ErrorCode::ArtifactSyncFailed,
        ErrorCode::WorkerLost,
        ErrorCode::DiskFull,
        ErrorCode::LeaseExpired,
        ErrorCode::AuthRejected,
        ErrorCode::NodeIdMismatch,
        ErrorCode::SecretMissing,
    ];

    /// The code for its wire spelling (`INPUT_NOT_FOUND`), if it is one.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InputInvalid => "INPUT_INVALID",
            ErrorCode::InputNotFound => "INPUT_NOT_FOUND",
            ErrorCode::FfmpegUnavailable => "FFMPEG_UNAVAILABLE",
            ErrorCode::FfmpegFailed => "FFMPEG_FAILED",
            ErrorCode::TtsUnavailable => "TTS_UNAVAILABLE",
            ErrorCode::TtsFailed => "TTS_FAILED",
            ErrorCode::AudioDecodeFailed => "AUDIO_DECODE_FAILED",
            ErrorCode::UiSessionRequired => "UI_SESSION_REQUIRED",
            ErrorCode::OpenclawUnavailable => "OPENCLAW_UNAVAILABLE",
            ErrorCode::OpenclawFailed => "OPENCLAW_FAILED",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::StepUnknown => "STEP_UNKNOWN",
            ErrorCode::StepUnavailable => "STEP_UNAVAILABLE",
            ErrorCode::Interrupted => "INTERRUPTED",
            ErrorCode::IoError => "IO_ERROR",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::NoEligibleNode => "NO_ELIGIBLE_NODE",
            ErrorCode::ArtifactSyncFailed => "ARTIFACT_SYNC_FAILED",
            ErrorCode::WorkerLost => "WORKER_LOST",
            ErrorCode::DiskFull => "DISK_FULL",
            ErrorCode::LeaseExpired => "LEASE_EXPIRED",
            ErrorCode::AuthRejected => "AUTH_REJECTED",
            ErrorCode::NodeIdMismatch => "NODE_ID_MISMATCH",
            ErrorCode::SecretMissing => "SECRET_MISSING",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step failure: a stable code and a message that tells the user what to fix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct StepError {
    pub code: ErrorCode,
    pub message: String,
}

impl StepError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        StepError { code, message: message.into() }
    }

    /// Shorthand for a payload validation failure.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InputInvalid, message)
    }

    /// Wraps a local I/O failure, naming what was being done. A full disk
    /// is `DISK_FULL` (see [`is_disk_full`]), anything else `IO_ERROR`.
    pub fn io(what: impl fmt::Display, err: std::io::Error) -> Self {
        if is_disk_full(&err) {
            Self::new(
                ErrorCode::DiskFull,
                format!("{what}: {err}; the disk is full: free space on it (or move state_dir to a larger disk) and retry"),
            )
        } else {
            Self::new(ErrorCode::IoError, format!("{what}: {err}"))
        }
    }

    /// Like [`StepError::io`], for a failure while writing into `folder`:
    /// a full disk's message names the folder.
    pub fn io_in(what: impl fmt::Display, folder: &std::path::Path, err: std::io::Error) -> Self {
        if is_disk_full(&err) {
            Self::disk_full(folder, format!("{what}: {err}"))
        } else {
            Self::new(ErrorCode::IoError, format!("{what}: {err}"))
        }
    }

    /// `DISK_FULL` for `folder`, with what was found (`detail`) and what to do.
    pub fn disk_full(folder: &std::path::Path, detail: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::DiskFull,
            format!(
                "the disk holding {} is full ({detail}); free space on it, or move the state folder (state_dir) \
                 to a larger disk, then retry",
                folder.display()
            ),
        )
    }
}

/// The text ffmpeg and espeak-ng print when a write fails for lack of
/// space (strerror(ENOSPC)). Their exit status does not say why they
/// failed, so their stderr is the only place the cause shows.
pub const NO_SPACE_TEXT: &str = "No space left on device";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disks_are_told_apart_from_other_io_errors() {
        #[cfg(unix)]
        {
            let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
            let e = StepError::io("writing chunk_0001.wav", full);
            assert_eq!(e.code, ErrorCode::DiskFull);
            assert!(e.message.contains("free space"), "{e}");
            let e = StepError::io_in("writing", std::path::Path::new("/data/jobs/j1"), std::io::Error::from_raw_os_error(libc::ENOSPC));
            assert_eq!(e.code, ErrorCode::DiskFull);
            assert!(e.message.contains("/data/jobs/j1") && e.message.contains("state_dir"), "{e}");
        }
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(StepError::io("writing", denied).code, ErrorCode::IoError);
    }
}

/// True when `err` says the disk (or the user's quota) is full: ENOSPC and
/// EDQUOT on Unix, ERROR_DISK_FULL (112) and ERROR_HANDLE_DISK_FULL (39) on
/// Windows, also when wrapped in another `io::Error`. Such a failure is the
/// machine's, not the job's.
pub fn is_disk_full(err: &std::io::Error) -> bool {
    // By the OS's codes: `ErrorKind::StorageFull` is newer than the crate's
    // minimum Rust version.
    if let Some(inner) = err.get_ref().and_then(|e| e.downcast_ref::<std::io::Error>()) {
        return is_disk_full(inner);
    }
    match err.raw_os_error() {
        #[cfg(unix)]
        Some(code) => code == libc::ENOSPC || code == libc::EDQUOT,
        #[cfg(windows)]
        Some(code) => code == 112 || code == 39,
        #[cfg(not(any(unix, windows)))]
        Some(_) => false,
        None => false,
    }
}

#[cfg(test)]
mod disk_full_tests {
    use super::*;

    #[test]
    fn enospc_is_disk_full_and_other_errors_are_not() {
        assert!(!is_disk_full(&std::io::Error::from(std::io::ErrorKind::NotFound)));
        #[cfg(unix)]
        {
            assert!(is_disk_full(&std::io::Error::from_raw_os_error(libc::ENOSPC)));
            assert!(!is_disk_full(&std::io::Error::from_raw_os_error(libc::EACCES)));
            let wrapped = std::io::Error::other(std::io::Error::from_raw_os_error(libc::ENOSPC));
            assert!(is_disk_full(&wrapped));
        }
        #[cfg(unix)]
        assert_eq!(StepError::io("writing x", std::io::Error::from_raw_os_error(libc::ENOSPC)).code, ErrorCode::DiskFull);
        #[cfg(windows)]
        assert_eq!(StepError::io("writing x", std::io::Error::from_raw_os_error(112)).code, ErrorCode::DiskFull);
        assert_eq!(StepError::io("reading x", std::io::Error::from(std::io::ErrorKind::NotFound)).code, ErrorCode::IoError);
    }

    /// A real ENOSPC from the kernel: /dev/full refuses every write with it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_write_to_dev_full_is_disk_full() {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let e = f.write_all(b"x").and_then(|()| f.flush()).unwrap_err();
        assert!(is_disk_full(&e), "{e:?}");
    }
}
