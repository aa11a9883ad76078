//! [`CallError`]: why a call to a worker failed, as a kind (an enum built
//! from typed sources: awc's connect and send errors, `std::io::ErrorKind`,
//! the HTTP status and the worker's stable error `code`) plus the message
//! people read. Callers decide on the kind, never on the message text.

use super::legacy_v05::LegacyFailure;
use super::ClientError;
use crate::protocol;
use awc::error::{ConnectError, PayloadError, SendRequestError};

/// What kind of failure a call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallErrorKind {
    /// The worker's host refused the connection: nothing listens on the
    /// port (the worker process died or was killed).
    Refused,
    /// No connection, or no answer, within the time allowed.
    TimedOut,
    /// The connection broke: reset, aborted, or closed mid-answer.
    Reset,
    /// Any other failure to reach the worker (name resolution, ...).
    Unreachable,
    /// 401: the worker refused our credentials.
    Auth,
    /// 5xx or 429 (but not `DRAINING`): the worker or its proxy is there
    /// and cannot serve now.
    Busy { status: u16 },
    /// Any other refusal (4xx, or a draining worker's 503).
    Http { status: u16 },
    /// A local write failed because this machine's disk is full (ENOSPC):
    /// a download's `.part` could not grow.
    DiskFull,
    /// A local file could not be read or written (other than a full disk).
    Local,
    /// An answer that does not follow the contract (or a digest mismatch).
    Protocol,
}

impl CallErrorKind {
    /// The worker could not be reached, or the connection broke.
    pub fn is_connection(self) -> bool {
        matches!(self, CallErrorKind::Refused | CallErrorKind::TimedOut | CallErrorKind::Reset | CallErrorKind::Unreachable)
    }
}

/// Why a call to a worker failed, classified for retry decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    pub kind: CallErrorKind,
    /// The worker's stable error code when it answered with one (empty
    /// otherwise).
    pub code: String,
    /// What people read: for a connection failure the short reason
    /// (`connection refused`, `timed out`, ...); for a 401 the worker's
    /// message with the troubleshooting hint.
    pub message: String,
}

impl CallError {
    pub fn new(kind: CallErrorKind, message: impl Into<String>) -> CallError {
        CallError { kind, code: String::new(), message: message.into() }
    }

    /// An answer that does not follow the contract, or a failure of this
    /// controller's own (no secret, no such node).
    pub fn protocol(message: impl Into<String>) -> CallError {
        CallError::new(CallErrorKind::Protocol, message)
    }

    /// Worth trying again on the same node.
    pub fn is_transient(&self) -> bool {
        self.kind.is_connection() || matches!(self.kind, CallErrorKind::Busy { .. })
    }

    /// The worker could not be reached, or the connection broke.
    pub fn is_connection(&self) -> bool {
        self.kind.is_connection()
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.message;
        match self.kind {
            k if k.is_connection() => write!(f, "unreachable ({m})"),
            CallErrorKind::Busy { status } => write!(f, "HTTP {status}: {m}"),
            CallErrorKind::Http { status } => write!(f, "HTTP {status} {}: {m}", self.code),
            CallErrorKind::DiskFull => write!(f, "the disk is full: {m}"),
            _ => f.write_str(m),
        }
    }
}

/// The kind and short reason of an I/O failure on a connection.
pub fn io_failure(e: &std::io::Error) -> (CallErrorKind, String) {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => (CallErrorKind::Refused, "connection refused".into()),
        K::TimedOut | K::WouldBlock => (CallErrorKind::TimedOut, "timed out".into()),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof | K::NotConnected => {
            (CallErrorKind::Reset, "connection reset".into())
        }
        _ => (CallErrorKind::Unreachable, e.to_string()),
    }
}

/// The kind and short reason of a request that could not be sent or got
/// no answer head, from awc's error variants.
pub fn send_failure(e: &SendRequestError) -> (CallErrorKind, String) {
    match e {
        SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => (CallErrorKind::TimedOut, "timed out".into()),
        SendRequestError::Connect(ConnectError::Io(io)) | SendRequestError::Send(io) => io_failure(io),
        SendRequestError::Connect(ConnectError::Disconnected) => (CallErrorKind::Reset, "connection reset".into()),
        other => (CallErrorKind::Unreachable, other.to_string()),
    }
}

/// The kind and reason of an answer body that broke off.
pub fn payload_failure(e: &PayloadError) -> (CallErrorKind, String) {
    match e {
        PayloadError::Io(io) => io_failure(io),
        PayloadError::Incomplete(_) => (CallErrorKind::Reset, "connection reset".into()),
        other => (CallErrorKind::Unreachable, other.to_string()),
    }
}

/// The hint for a refused credential. A clock difference is never the
/// cause: a worker tells a caller whose signature verified that its
/// timestamp is off ([`skew_reason`]), so this is a secret mismatch.
const SECRETS_HINT: &str = "secrets differ between Mac and Windows";

/// The hint for a timestamp outside the worker's window.
const CLOCK_HINT: &str = "sync system clocks (NTP)";

/// A 401 as the controller reports it, from the message alone: for a
/// peer whose answers carry no machine code (a v0.5 worker, the daemon).
/// The skew message is rebuilt from [`skew_reason`], so its hint appears
/// once whatever the peer's own text already says.
pub fn auth_reason(message: &str, server_time: Option<u64>) -> String {
    if message.starts_with(protocol::SKEW_MESSAGE) {
        skew_reason(server_time)
    } else {
        format!("401 {message}: {SECRETS_HINT}")
    }
}

/// `401 timestamp outside allowed skew`, with the worker's clock offset
/// when it was told, and the hint once.
pub fn skew_reason(server_time: Option<u64>) -> String {
    let offset = server_time
        .map(|t| {
            let d = t as i64 - crate::auth::unix_now() as i64;
            format!(" (worker clock differs from ours by {d:+} s)")
        })
        .unwrap_or_default();
    format!("401 {}{offset}: {CLOCK_HINT}", protocol::SKEW_MESSAGE)
}

impl From<LegacyFailure> for CallError {
    fn from(f: LegacyFailure) -> Self {
        match f {
            LegacyFailure::Unreachable(kind, m) => CallError::new(kind, m),
            LegacyFailure::Auth(m) => CallError::new(CallErrorKind::Auth, auth_reason(&m, None)),
            LegacyFailure::Status(status, m) if status >= 500 || status == 429 => CallError::new(CallErrorKind::Busy { status }, m),
            LegacyFailure::Status(status, m) => CallError::new(CallErrorKind::Http { status }, m),
            LegacyFailure::Protocol(m) => CallError::protocol(m),
        }
    }
}

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> Self {
        if let ClientError::Api { status: 401, code, .. } = &e {
            crate::metrics::controller().remote_auth_refusal(code);
        }
        match e {
            ClientError::Unreachable { kind, message, .. } => CallError::new(kind, message),
            ClientError::Api { status: 401, code, server_time, .. } if code == protocol::ApiCode::AuthSkew.as_str() => {
                CallError { kind: CallErrorKind::Auth, code, message: skew_reason(server_time) }
            }
            ClientError::Api { status: 401, code, message, .. } => CallError { kind: CallErrorKind::Auth, code, message: format!("401 {message}: {SECRETS_HINT}") },
            // A draining worker is not busy: asking it again soon is no use.
            ClientError::Api { status, code, message, .. } if code == protocol::ApiCode::Draining.as_str() => {
                CallError { kind: CallErrorKind::Http { status }, code, message }
            }
            ClientError::Api { status, code, message, .. } if status >= 500 || status == 429 => CallError { kind: CallErrorKind::Busy { status }, code, message },
            ClientError::Api { status, code, message, .. } => CallError { kind: CallErrorKind::Http { status }, code, message },
            ClientError::DiskFull(m) => CallError::new(CallErrorKind::DiskFull, m),
            e @ ClientError::Io(_) => CallError::new(CallErrorKind::Local, e.to_string()),
            other => CallError::protocol(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(e: ClientError, kind: CallErrorKind, text: &str) {
        let c = CallError::from(e);
        assert_eq!((c.kind, c.to_string().as_str()), (kind, text));
    }

    #[test]
    fn worker_errors_are_classified_with_the_documented_hints() {
        check(
            ClientError::Api { status: 401, code: "AUTH_INVALID".into(), message: "auth_token invalid".into(), server_time: None },
            CallErrorKind::Auth,
            "401 auth_token invalid: secrets differ between Mac and Windows",
        );
        let now = crate::auth::unix_now();
        // The worker's own message carries a hint already; it is said once.
        let message = format!("timestamp outside allowed skew (server time {}); sync the system clocks (NTP)", now + 3600);
        let skew = CallError::from(ClientError::Api { status: 401, code: "AUTH_SKEW".into(), message, server_time: Some(now + 3600) });
        assert_eq!(skew.kind, CallErrorKind::Auth);
        let text = skew.message;
        assert!(text.starts_with("401 timestamp outside allowed skew (worker clock differs from ours by +3"), "{text}");
        assert!(text.ends_with(": sync system clocks (NTP)"), "{text}");
        assert_eq!(text.matches("NTP").count(), 1, "{text}");
        // The message-only form (v0.5 workers, the daemon) says it once too.
        assert_eq!(auth_reason("timestamp outside allowed skew; sync the clocks (NTP)", None), "401 timestamp outside allowed skew: sync system clocks (NTP)");
        assert!(!auth_reason("auth_token invalid", None).contains("skew"));
        check(
            ClientError::Api { status: 503, code: "SHUTTING_DOWN".into(), message: "bye".into(), server_time: None },
            CallErrorKind::Busy { status: 503 },
            "HTTP 503: bye",
        );
        check(
            ClientError::Api { status: 503, code: "DRAINING".into(), message: "draining".into(), server_time: None },
            CallErrorKind::Http { status: 503 },
            "HTTP 503 DRAINING: draining",
        );
        check(
            ClientError::Unreachable { url: "http://127.0.0.1:1".into(), kind: CallErrorKind::Refused, message: "connection refused".into() },
            CallErrorKind::Refused,
            "unreachable (connection refused)",
        );
        check(
            ClientError::Api { status: 404, code: "JOB_NOT_FOUND".into(), message: "no job".into(), server_time: None },
            CallErrorKind::Http { status: 404 },
            "HTTP 404 JOB_NOT_FOUND: no job",
        );
        assert!(CallError::new(CallErrorKind::Busy { status: 500 }, "").is_transient());
        assert!(!CallError::new(CallErrorKind::Auth, "").is_transient());
    }

    #[test]
    fn io_kinds_not_text_decide_the_kind() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "whatever the platform says");
        assert_eq!(io_failure(&refused), (CallErrorKind::Refused, "connection refused".to_string()));
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "x");
        assert_eq!(io_failure(&reset).0, CallErrorKind::Reset);
        // A message that merely mentions a refusal is not one.
        let other = std::io::Error::other("connection refused by policy");
        assert_eq!(io_failure(&other).0, CallErrorKind::Unreachable);
        assert_eq!(send_failure(&SendRequestError::Timeout).0, CallErrorKind::TimedOut);
    }

    #[actix_rt::test]
    async fn a_closed_port_is_refused() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let e = awc::Client::new().get(format!("http://127.0.0.1:{port}/")).send().await.unwrap_err();
        assert_eq!(send_failure(&e).0, CallErrorKind::Refused, "{e:?}");
    }
}
