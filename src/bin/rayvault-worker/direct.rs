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
//! `Connection: close`, as the controller's downloader does) is then sent
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

use actix_web::dev::Extensions;
use actix_web::HttpRequest;
use std::any::Any;
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

/// The descriptor of an accepted connection's socket, in the connection's
/// extensions. Valid while the connection's requests are being handled.
#[derive(Debug, Clone, Copy)]
pub struct ConnSocket(RawFd);

/// `HttpServer::on_connect`: records the socket of each TCP connection.
pub fn remember(conn: &dyn Any, ext: &mut Extensions) {
    if let Some(stream) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        ext.insert(ConnSocket(stream.as_raw_fd()));
    }
}

/// The socket to send `len` bytes on directly, when the request qualifies:
/// HTTP/1.1 asking for `Connection: close`, a body of at least
/// [`MIN_BYTES`], on a connection [`remember`] recorded.
pub fn wanted(req: &HttpRequest, len: u64) -> Option<ConnSocket> {
    if len < MIN_BYTES || req.version() != actix_web::http::Version::HTTP_11 {
        return None;
    }
    let close = req
        .headers()
        .get_all(actix_web::http::header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"));
    if !close {
        return None;
    }
    req.conn_data::<ConnSocket>().copied()
}

/// Sends `head` (the answer's status line and headers, ending with the
/// blank line) and `len` bytes of `file` from `start` on `sock`, then shuts
/// the sending side. Returns the body bytes sent; an error once the head
/// may be out (the client then sees a short body, as with any broken
/// download, and resumes with `Range`).
pub async fn send(sock: ConnSocket, head: Vec<u8>, file: File, start: u64, len: u64) -> std::io::Result<u64> {
    // Duplicated now, while the connection certainly owns the descriptor:
    // the number may name another socket once the connection is gone.
    // SAFETY: `dup` of a descriptor this process holds open (the
    // connection being handled owns it); the result is owned below.
    let fd = unsafe { libc::fcntl(sock.0, libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    rayvault::metrics::worker().artifact_sent_by_kernel();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("artifact-sender".into()).spawn(move || {
        let sent = send_blocking(&fd, &head, &file, start, len);
        // SAFETY: shutting down a socket this thread's descriptor names.
        unsafe {
            libc::shutdown(fd.as_raw_fd(), if sent.is_ok() { libc::SHUT_WR } else { libc::SHUT_RDWR });
        }
        let _ = tx.send(sent);
    })?;
    rx.await.unwrap_or_else(|_| Err(std::io::Error::other("the artifact sender stopped")))
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
