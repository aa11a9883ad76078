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
//!
//! While the thread sends, the connection's own event loop is told to stop
//! watching the socket for room to write ([`QuietWrites`]): every time the
//! client reads, the kernel frees room in the socket and wakes each epoll
//! that watches it for that, and the loop's thread woke for nothing about
//! 500 times per GiB, each time taking the CPU from whatever ran there (on
//! a machine that also receives the download, often its hasher).

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
    let quiet = QuietWrites::new(sock);
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
    drop(quiet);
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

/// The connection's epoll registrations of a socket with "room to write"
/// (`EPOLLOUT`) taken out, while another thread sends on the socket; the
/// drop puts them back as they were.
///
/// actix-web's event loop (tokio, over mio) registers each connection's
/// socket with its epoll for reading and writing, edge-triggered. The
/// epoll and the token it uses are mio's and out of reach from a handler,
/// so they are found the way the kernel lists them: each epoll descriptor's
/// `/proc/self/fdinfo` entry has a line `tfd: <fd> events: <hex> data:
/// <hex>` per watched descriptor. Only registrations of this very socket
/// are changed: `EPOLL_CTL_MOD` finds a registration by the descriptor
/// number *and* the open file behind it, so a stale line left by an
/// earlier socket with the same number matches nothing. The token stays
/// the same, so mio sees nothing but fewer wake-ups. Anything unexpected (no procfs, a
/// format not understood, a refused change) leaves the registrations as
/// they are: the send works the same, only with the extra wake-ups.
pub struct QuietWrites {
    sock: RawFd,
    changed: Vec<(OwnedFd, libc::epoll_event)>,
}

impl QuietWrites {
    pub fn new(sock: RawFd) -> QuietWrites {
        let mut quiet = QuietWrites { sock, changed: Vec::new() };
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return quiet;
        };
        for entry in entries.flatten() {
            let Some(epfd) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
                continue;
            };
            let is_epoll = std::fs::read_link(entry.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:[eventpoll]");
            if !is_epoll {
                continue;
            }
            let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{epfd}")) else {
                continue;
            };
            for (events, data) in watched(&info, sock) {
                if events & libc::EPOLLOUT as u32 == 0 {
                    continue;
                }
                // Our own descriptor of the epoll: the number read above
                // could be closed and reused while we hold it otherwise.
                // SAFETY: duplicating a descriptor number; a failure is -1.
                let own = unsafe { libc::fcntl(epfd, libc::F_DUPFD_CLOEXEC, 0) };
                if own < 0 {
                    continue;
                }
                // SAFETY: `own` is a fresh descriptor nobody else owns.
                let own = unsafe { OwnedFd::from_raw_fd(own) };
                let mut ev = libc::epoll_event { events: events & !(libc::EPOLLOUT as u32), u64: data };
                // SAFETY: a valid epoll descriptor, socket and event.
                if unsafe { libc::epoll_ctl(own.as_raw_fd(), libc::EPOLL_CTL_MOD, sock, &mut ev) } == 0 {
                    quiet.changed.push((own, libc::epoll_event { events, u64: data }));
                }
            }
        }
        quiet
    }
}

impl Drop for QuietWrites {
    fn drop(&mut self) {
        for (epfd, ev) in &mut self.changed {
            // SAFETY: as in `new`; the socket may be gone already, which
            // the kernel refuses harmlessly.
            unsafe {
                libc::epoll_ctl(epfd.as_raw_fd(), libc::EPOLL_CTL_MOD, self.sock, ev);
            }
        }
    }
}

/// The `(events, data)` of each registration of descriptor `fd` in an
/// epoll's fdinfo text: lines `tfd: <fd> events: <hex> data: <hex> ...`.
fn watched(info: &str, fd: RawFd) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    for line in info.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("tfd:") || words.next().and_then(|n| n.parse::<RawFd>().ok()) != Some(fd) {
            continue;
        }
        let (mut events, mut data) = (None, None);
        while let Some(w) = words.next() {
            match w {
                "events:" => events = words.next().and_then(|v| u32::from_str_radix(v, 16).ok()),
                "data:" => data = words.next().and_then(|v| u64::from_str_radix(v, 16).ok()),
                _ => {}
            }
        }
        if let (Some(e), Some(d)) = (events, data) {
            out.push((e, d));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn fdinfo_lines_are_read_for_the_descriptor_asked() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
                    tfd:       12 events: 8000201d data:     7f3a00000010  pos:0 ino:2a3f sdev:8\n\
                    tfd:        9 events:       19 data:                1  pos:0 ino:2a40 sdev:8\n";
        assert_eq!(watched(info, 12), vec![(0x8000_201d, 0x7f3a_0000_0010)]);
        assert_eq!(watched(info, 9), vec![(0x19, 1)]);
        assert!(watched(info, 1).is_empty());
        assert!(watched("tfd: 12 events: zz data: 1\n", 12).is_empty());
    }

    /// An epoll watching a socket edge-triggered for reading and writing,
    /// as mio does: with the writes quieted, a socket that gains room to
    /// write does not wake it; afterwards it does again.
    #[test]
    fn quieted_writes_do_not_wake_the_loop_and_come_back_after() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        // SAFETY: plain epoll calls on descriptors this test owns.
        let ep = unsafe { OwnedFd::from_raw_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC)) };
        let fd = server.as_raw_fd();
        let interest = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        let mut ev = libc::epoll_event { events: interest, u64: 77 };
        assert_eq!(unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) }, 0);
        let wait = || {
            let mut got = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: a valid epoll and a buffer of four events.
            let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), got.as_mut_ptr(), 4, 0) };
            got[..n.max(0) as usize].iter().map(|e| (e.events, e.u64)).collect::<Vec<_>>()
        };
        // The first readiness edge (writable from the start).
        assert!(!wait().is_empty());
        let fill_then_drain = || {
            // Fill the socket until it refuses, then let the client read
            // everything: room to write comes back.
            let chunk = vec![7u8; 1 << 16];
            let mut queued = 0usize;
            loop {
                // SAFETY: writing from a live buffer to an open socket.
                let n = unsafe { libc::send(fd, chunk.as_ptr().cast(), chunk.len(), libc::MSG_NOSIGNAL) };
                if n <= 0 {
                    break;
                }
                queued += n as usize;
            }
            let mut c = &client;
            let mut buf = vec![0u8; 1 << 16];
            while queued > 0 {
                queued -= std::io::Read::read(&mut c, &mut buf).unwrap();
            }
            // Room to write is back once poll says so (at most 5 s).
            let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
            // SAFETY: one valid pollfd.
            assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1, "the socket has room to write again");
        };
        {
            let quiet = QuietWrites::new(fd);
            assert_eq!(quiet.changed.len(), 1, "the test's epoll is found in /proc/self/fdinfo");
            fill_then_drain();
            assert!(wait().iter().all(|(e, _)| e & libc::EPOLLOUT as u32 == 0), "no wake-up for room to write");
        }
        fill_then_drain();
        let after = wait();
        assert!(after.iter().any(|&(e, d)| e & libc::EPOLLOUT as u32 != 0 && d == 77), "{after:?}");
    }
}
