//! Large artifact downloads sent by the kernel (`sendfile`), on Linux.
//!
//! actix-web sends a streamed body by copying each chunk into its
//! connection's write buffer and from there into the socket: with the read
//! from the page cache, three copies of every byte in this process (0.5-0.6
//! s of CPU per GiB here, as much as the receiver's SHA-256). `sendfile`
//! hands the page cache's pages to the socket without any copy in user
//! space.
//!
//! actix-web gives a handler no access to its socket, so the server records
//! each connection's descriptor when it accepts it ([`remember`]). A
//! download that qualifies ([`wanted`]: a large body, asked for with
//! `Connection: close` as the controller's downloader does, the first
//! request on its connection) is then sent
//! whole by a thread of its own on a duplicate of that descriptor: the
//! answer head, the bytes with `sendfile`, and a shutdown of the sending
//! side. The handler waits for that thread and returns an empty answer,
//! which actix-web then cannot write (the sending side is shut): it closes
//! the connection, which the request asked for anyway. The client sees one
//! ordinary answer: head, `Content-Length` bytes, end of stream.
//!
//! The duplicate keeps the socket open while the thread uses it, even if
//! actix-web drops the connection meanwhile (the client went away): the
//! thread then fails on its next write and stops. A client that stops
//! reading is given up after [`STALL`].

use crate::apierror::ApiError;
use actix_web::dev::Extensions;
use actix_web::http::header::{HeaderName, HttpDate, CONNECTION};
use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use std::any::Any;
use std::cell::Cell;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Bodies at least this large go out with `sendfile`; smaller ones are not
/// worth a thread and a connection of their own.
pub const MIN_BYTES: u64 = 4 << 20;

/// Bytes per `sendfile` call.
const SEND_AT_ONCE: usize = 8 << 20;

/// The longest a send waits for room in the socket before it gives up.
const STALL: Duration = Duration::from_secs(60);

/// An accepted connection's socket, in the connection's extensions: its
/// descriptor (valid while the connection's requests are being handled)
/// and how many requests arrived on it so far.
#[derive(Debug)]
pub struct ConnSocket {
    fd: RawFd,
    requests: Cell<u32>,
}

/// `HttpServer::on_connect`: records the socket of each TCP connection.
pub fn remember(conn: &dyn Any, ext: &mut Extensions) {
    if let Some(stream) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        ext.insert(ConnSocket { fd: stream.as_raw_fd(), requests: Cell::new(0) });
    }
}

/// Counts a request on its connection (the guard calls it for every one).
pub fn count_request(req: &HttpRequest) {
    if let Some(c) = req.conn_data::<ConnSocket>() {
        c.requests.set(c.requests.get().saturating_add(1));
    }
}

/// The socket to send `len` bytes on directly, when the request qualifies:
/// HTTP/1.1 asking for `Connection: close`, a body of at least
/// [`MIN_BYTES`], the first request on a connection [`remember`] recorded
/// (an earlier answer may still be in actix-web's write buffer), and a
/// request whose nonce, if it has one, the handler records itself (see
/// `guard::NonceAfterHandler`).
pub fn wanted(req: &HttpRequest, len: u64) -> Option<RawFd> {
    if len < MIN_BYTES || req.version() != actix_web::http::Version::HTTP_11 {
        return None;
    }
    if req.extensions().contains::<crate::guard::NonceAfterHandler>() {
        return None;
    }
    let close = req
        .headers()
        .get_all(CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"));
    if !close {
        return None;
    }
    req.conn_data::<ConnSocket>().filter(|c| c.requests.get() == 1).map(|c| c.fd)
}

/// A send started by [`start`]: its outcome, once the thread is done.
pub type Sending = tokio::sync::oneshot::Receiver<std::io::Result<u64>>;

/// Starts sending `head` (the answer's status line and headers, ending with
/// the blank line) and `len` bytes of `file` from `from` on the socket
/// `sock`, then shutting its sending side. An error here means nothing was
/// sent (the caller answers the usual way); once started, the outcome is
/// the body bytes sent, or an error after which the client sees a short
/// body, as with any broken download, and resumes with `Range`.
pub fn start(sock: RawFd, head: Vec<u8>, file: File, from: u64, len: u64) -> std::io::Result<Sending> {
    // Duplicated now, while the connection certainly owns the descriptor
    // (this runs inside its handler): the number may name another socket
    // once the connection is gone.
    // SAFETY: `dup` of a descriptor this process holds open; the result is
    // owned below.
    let fd = unsafe { libc::fcntl(sock, libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("artifact-sender".into()).spawn(move || {
        let sent = send_blocking(&fd, &head, &file, from, len);
        // SAFETY: shutting down a socket this thread's descriptor names.
        unsafe {
            libc::shutdown(fd.as_raw_fd(), if sent.is_ok() { libc::SHUT_WR } else { libc::SHUT_RDWR });
        }
        let _ = tx.send(sent);
    })?;
    rayvault::metrics::worker().artifact_sent_by_kernel();
    Ok(rx)
}

/// `files::download` by the kernel: the request's nonce is recorded first
/// (nothing is answered before it is durable), then the answer, `status`
/// and `headers` with `Content-Length`, `Date` and `Connection: close`,
/// goes out on the connection's socket. Gives the file back when the send
/// could not start (nothing was sent).
#[allow(clippy::too_many_arguments)]
pub async fn send_download(
    st: &crate::handlers::Data,
    req: &HttpRequest,
    sock: RawFd,
    status: StatusCode,
    headers: &[(HeaderName, String)],
    file: File,
    from: u64,
    len: u64,
) -> Result<Result<HttpResponse, File>, ApiError> {
    let slot = req.extensions().get::<crate::guard::NonceSlot>().cloned();
    if let Some(slot) = slot {
        slot.record_now(&st.env.store).await?;
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or(""));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {len}\r\ndate: {}\r\nconnection: close\r\n\r\n", HttpDate::from(std::time::SystemTime::now())));
    let reopened = file.try_clone();
    let sending = match start(sock, head.into_bytes(), file, from, len) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not start sending an artifact with sendfile; streaming it");
            return reopened.map(Err).map_err(|e| ApiError::internal("opening the artifact", e));
        }
    };
    match sending.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "an artifact download broke off"),
        Err(_) => tracing::warn!("the artifact sender stopped"),
    }
    // The answer went out on the socket, whose sending side is now shut:
    // actix-web cannot write this one and closes the connection.
    Ok(Ok(HttpResponse::Ok().insert_header((CONNECTION, "close")).finish()))
}

fn send_blocking(fd: &OwnedFd, head: &[u8], file: &File, start: u64, len: u64) -> std::io::Result<u64> {
    let mut at = 0;
    while at < head.len() {
        // SAFETY: writing from a live slice to an open descriptor.
        let n = unsafe { libc::send(fd.as_raw_fd(), head[at..].as_ptr().cast(), head.len() - at, libc::MSG_NOSIGNAL | libc::MSG_MORE) };
        if n < 0 {
            wait_or_fail(fd)?;
            continue;
        }
        at += n as usize;
    }
    let mut offset = start as libc::off_t;
    let end = start + len;
    let mut sent = 0u64;
    while (offset as u64) < end {
        let want = (end - offset as u64).min(SEND_AT_ONCE as u64) as usize;
        // SAFETY: both descriptors are open; `offset` is ours to update.
        let n = unsafe { libc::sendfile(fd.as_raw_fd(), file.as_raw_fd(), &mut offset, want) };
        if n < 0 {
            wait_or_fail(fd)?;
            continue;
        }
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the artifact shrank while it was being sent"));
        }
        sent += n as u64;
        rayvault::metrics::worker().artifact_bytes_served(n as u64);
    }
    Ok(sent)
}

/// After a failed call: waits for room in the socket when the failure was
/// only "would block" (the socket is non-blocking) or an interruption, up
/// to [`STALL`]; any other error is returned.
fn wait_or_fail(fd: &OwnedFd) -> std::io::Result<()> {
    let e = std::io::Error::last_os_error();
    match e.kind() {
        std::io::ErrorKind::Interrupted => Ok(()),
        std::io::ErrorKind::WouldBlock => {
            let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, STALL.as_millis() as libc::c_int) };
            if r == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client read nothing for 60 s"));
            }
            let e = std::io::Error::last_os_error();
            if r < 0 && e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            Ok(())
        }
        _ => Err(e),
    }
}
