//! An artifact download read straight from the socket.
//!
//! The worker's download is one signed `GET` sent as HTTP/1.1 over a plain
//! [`TcpStream`] with `Connection: close`; the answer head is parsed with
//! `httparse` and the body, which must carry a `Content-Length`, is read
//! with large `read` calls straight into the [`Sink`]'s recycled buffers.
//! The HTTP client of the other calls read about 8 KiB per system call and
//! copied each chunk once more on the way; here the kernel copies the bytes
//! once, into the buffer that the hasher and the writer then share.
//!
//! Everything here blocks: it runs on a thread of its own
//! ([`super::WorkerClient::download_artifact`] starts it), and a download
//! given up by its caller is stopped through [`Cancel`], which shuts the
//! socket down under the blocked `read`.

use super::download::{self, Sink, BLOCK};
use super::error::io_failure;
use super::{decode, CallErrorKind, ClientError};
use crate::artifacts::ArtifactEntry;
use awc::http::StatusCode;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Largest answer head accepted (status line and headers).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Most headers in an answer head.
const MAX_HEADERS: usize = 64;
/// Largest error body read from an answer that is not the artifact.
const MAX_ERROR_BODY: usize = 1024 * 1024;

/// One artifact download, as the blocking side needs it.
pub(super) struct Fetch {
    /// `http://host:port` (no trailing slash), for the connection and the
    /// errors.
    pub base: String,
    /// The path and query signed and sent.
    pub path: String,
    /// The `Authorization` header's value.
    pub authorization: String,
    pub entry: ArtifactEntry,
    pub dest: PathBuf,
    pub part: PathBuf,
    /// Bytes already in the `.part` file (0 for a fresh download).
    pub have: u64,
    pub connect_timeout: Duration,
    /// The longest wait for any one read or write on the socket.
    pub io_timeout: Duration,
}

/// Stops a download in progress: set when its caller gives up on it.
#[derive(Default)]
pub(super) struct Cancel {
    stopped: AtomicBool,
    /// A second handle on the download's socket, to shut it down.
    socket: Mutex<Option<TcpStream>>,
}

impl Cancel {
    /// Stops the download: a `read` blocked on the socket returns at once,
    /// and the download ends as if the connection had broken (what arrived
    /// stays in the `.part` file for a resume).
    pub(super) fn cancel(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(s) = self.socket.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn is_cancelled(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn watch(&self, stream: &TcpStream) {
        if let Ok(s) = stream.try_clone() {
            *self.socket.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
        }
        // Cancelled between the connect and now: no read is waited for.
        if self.is_cancelled() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// The parts of an answer head a download uses.
#[derive(Debug)]
struct Head {
    status: u16,
    content_length: Option<u64>,
    /// The first byte of a `Content-Range: bytes first-last/total`.
    range_first: Option<u64>,
    transfer_encoding: Option<String>,
    /// Body bytes read together with the head.
    rest: Vec<u8>,
}

impl Fetch {
    fn unreachable(&self, kind: CallErrorKind, message: String) -> ClientError {
        ClientError::Unreachable { url: self.base.clone(), kind, message }
    }

    fn io_failed(&self, what: &str, e: &io::Error) -> ClientError {
        let (kind, reason) = io_failure(e);
        self.unreachable(kind, format!("{what}: {reason}"))
    }

    /// Runs the download; returns the bytes transferred this time.
    pub(super) fn run(&self, cancel: &Cancel) -> Result<u64, ClientError> {
        // The file is opened and the writer and hasher started while the
        // request makes its round trip; they learn from the answer how much
        // of the file to keep. A failure before that drops the sink, which
        // removes a file it created for nothing.
        let mut sink = Sink::open(self.part.clone())?;
        let mut stream = self.connect()?;
        cancel.watch(&stream);
        let request = self.request();
        stream.write_all(request.as_bytes()).map_err(|e| self.io_failed("sending the download request", &e))?;
        let head = self.read_head(&mut stream)?;
        let keep = self.check_head(&mut stream, &head)?;
        sink.begin(keep);
        sink.expect(self.entry.size.saturating_sub(keep));
        // Only for the body: the head's read asks for up to 64 KiB and
        // would wait for that much of a short answer.
        read_in_large_pieces(&stream);
        let (transferred, broke) = self.read_body(&mut stream, head.rest, keep, &mut sink, cancel);
        drop(stream);
        // What arrived stays in the .part file for a resume, so the sink is
        // finished whatever happened; the writer's own error says more than
        // the "writer stopped" of a failed hand-off.
        let received = sink.finish()?;
        if let Some(e) = broke {
            return Err(e);
        }
        if received.len < self.entry.size {
            return Err(self.unreachable(
                CallErrorKind::Reset,
                format!(
                    "the download of {} ended after {} of {} bytes; the next attempt resumes it",
                    self.entry.name, received.len, self.entry.size
                ),
            ));
        }
        match download::settle(received, &self.part, &self.dest, &self.entry.sha256) {
            Ok(Ok(())) => Ok(transferred),
            Ok(Err(actual)) => {
                Err(ClientError::Digest { name: self.entry.name.clone(), expected: self.entry.sha256.clone(), actual })
            }
            Err(e) => Err(download::local_io("moving the download into place", e)),
        }
    }

    /// Opens the connection to the worker (`http://` only: the controller
    /// talks to its nodes in plain HTTP over loopback or a private network).
    fn connect(&self) -> Result<TcpStream, ClientError> {
        let Some(authority) = self.base.strip_prefix("http://") else {
            return Err(ClientError::Protocol(format!("{} is not an http:// address; downloads need one", self.base)));
        };
        let authority = authority.split('/').next().unwrap_or(authority);
        let addrs = authority
            .to_socket_addrs()
            .map_err(|e| self.unreachable(CallErrorKind::Unreachable, format!("resolving {authority}: {e}")))?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.connect_timeout) {
                Ok(stream) => {
                    let timeout = Some(self.io_timeout.max(Duration::from_millis(1)));
                    let set = stream.set_read_timeout(timeout).and_then(|()| stream.set_write_timeout(timeout));
                    set.map_err(|e| self.io_failed("setting socket timeouts", &e))?;
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => self.io_failed("connecting", &e),
            None => self.unreachable(CallErrorKind::Unreachable, format!("{authority} resolves to no address")),
        })
    }

    /// The request head: the signed `GET`, a `Range` for a resume.
    fn request(&self) -> String {
        let host = self.base.strip_prefix("http://").unwrap_or(&self.base);
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {}\r\nConnection: close\r\n",
            self.path, self.authorization
        );
        if self.have > 0 {
            req.push_str(&format!("Range: bytes={}-\r\n", self.have));
        }
        req.push_str("\r\n");
        req
    }

    /// Reads and parses the answer head (at most [`MAX_HEAD`] bytes).
    fn read_head(&self, stream: &mut TcpStream) -> Result<Head, ClientError> {
        let mut buf = vec![0u8; MAX_HEAD];
        let mut filled = 0;
        loop {
            let n = match stream.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(self.unreachable(CallErrorKind::Reset, "the worker closed the connection before answering".into()))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_failed("reading the answer", &e)),
            };
            filled += n;
            if let Some(head) = parse_head(&buf[..filled])? {
                return Ok(head);
            }
            if filled == buf.len() {
                return Err(ClientError::Protocol(format!(
                    "the worker's answer head is larger than {} KiB; a worker sends a few hundred bytes",
                    MAX_HEAD / 1024
                )));
            }
        }
    }

    /// Checks the answer head against the request and the manifest; returns
    /// the bytes of the `.part` file the body continues (0: from the start).
    /// An error status becomes the same [`ClientError::Api`] as any other
    /// call's, from the worker's JSON error body.
    fn check_head(&self, stream: &mut TcpStream, head: &Head) -> Result<u64, ClientError> {
        let status = StatusCode::from_u16(head.status)
            .map_err(|_| ClientError::Protocol(format!("the worker answered status {}", head.status)))?;
        let keep = match status {
            StatusCode::OK => 0,
            StatusCode::PARTIAL_CONTENT if self.have > 0 => self.have,
            StatusCode::PARTIAL_CONTENT => {
                return Err(ClientError::Protocol("the worker answered 206 to a request for the whole file".into()))
            }
            _ => {
                let body = self.error_body(stream, head)?;
                return Err(decode::<serde_json::Value>(status, &body)
                    .err()
                    .unwrap_or_else(|| ClientError::Protocol(format!("artifact download answered {status}"))));
            }
        };
        if let Some(te) = &head.transfer_encoding {
            return Err(ClientError::Protocol(format!(
                "the worker sent the artifact with Transfer-Encoding {te}; a download needs a Content-Length body"
            )));
        }
        let Some(len) = head.content_length else {
            return Err(ClientError::Protocol("the worker sent the artifact without a Content-Length".into()));
        };
        if let Some(first) = head.range_first {
            if keep > 0 && first != keep {
                return Err(ClientError::Protocol(format!("the worker resumed from byte {first}, not {keep} as asked")));
            }
        }
        let expected = self.entry.size - keep;
        if len != expected {
            // The worker's file is not the manifest's: what is in the .part
            // file cannot be trusted either.
            let _ = std::fs::remove_file(&self.part);
            return Err(ClientError::Protocol(format!(
                "the worker announced {len} bytes from byte {keep} but the manifest gives {} for {}; the download was discarded",
                self.entry.size, self.entry.name
            )));
        }
        if head.rest.len() as u64 > expected {
            return Err(ClientError::Protocol(format!(
                "the worker sent more than the {} bytes the manifest gives for {}",
                self.entry.size, self.entry.name
            )));
        }
        Ok(keep)
    }

    /// The body of an error answer: its `Content-Length` bytes, or up to
    /// the close; at most [`MAX_ERROR_BODY`] bytes either way.
    fn error_body(&self, stream: &mut TcpStream, head: &Head) -> Result<Vec<u8>, ClientError> {
        let limit = head.content_length.map_or(MAX_ERROR_BODY as u64, |l| l.min(MAX_ERROR_BODY as u64)) as usize;
        let mut body = head.rest.clone();
        body.truncate(limit);
        let mut chunk = [0u8; 8192];
        while body.len() < limit {
            match stream.read(&mut chunk[..(limit - body.len()).min(8192)]) {
                Ok(0) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_failed("reading the error answer", &e)),
            }
        }
        Ok(body)
    }

    /// Reads the body, from byte `keep` of the file to the manifest's size
    /// (the first bytes already in `rest`), into the sink's buffers. Every
    /// block but the first ends at a multiple of [`BLOCK`] in the file, so
    /// that whole blocks are aligned for direct writes. Returns the bytes
    /// handed over and, when the body broke off, why.
    fn read_body(&self, stream: &mut TcpStream, rest: Vec<u8>, keep: u64, sink: &mut Sink, cancel: &Cancel) -> (u64, Option<ClientError>) {
        let expected = self.entry.size - keep;
        let mut done = 0u64;
        let mut rest_at = 0;
        while done < expected {
            let mut buf = sink.buffer();
            let to_boundary = BLOCK as u64 - (keep + done) % BLOCK as u64;
            let want = (expected - done).min(to_boundary) as usize;
            let mut filled = 0;
            // Body bytes the head's read took (`check_head` bounds them by
            // the body's length) come first, over as many blocks as needed.
            let n = (rest.len() - rest_at).min(want);
            buf[..n].copy_from_slice(&rest[rest_at..rest_at + n]);
            rest_at += n;
            filled += n;
            let mut broke = None;
            while filled < want {
                if cancel.is_cancelled() {
                    broke = Some(self.unreachable(CallErrorKind::Reset, "the download was cancelled".into()));
                    break;
                }
                match stream.read(&mut buf[filled..want]) {
                    Ok(0) => {
                        broke = Some(self.unreachable(
                            CallErrorKind::Reset,
                            format!(
                                "the worker closed the connection after {} of {} bytes of {}; the next attempt resumes it",
                                done + filled as u64,
                                expected,
                                self.entry.name
                            ),
                        ));
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        broke = Some(self.io_failed("reading the download", &e));
                        break;
                    }
                }
            }
            if let Err(e) = sink.send(buf, filled) {
                return (done, Some(e));
            }
            done += filled as u64;
            if broke.is_some() {
                return (done, broke);
            }
        }
        (done, None)
    }
}

/// Bytes a blocking `read` of the body waits for before it returns
/// ([`read_in_large_pieces`]).
#[cfg(target_os = "linux")]
const READ_AT_LEAST: libc::c_int = 256 * 1024;

/// Asks the kernel to wake the network thread only once [`READ_AT_LEAST`]
/// bytes (or all that was asked for) have arrived (`SO_RCVLOWAT`), instead
/// of at every segment: on loopback a 1 GiB download read about 380 KiB per
/// call, woken at every one. A `read` still returns what arrived when the
/// socket's timeout expires, the connection ends or fails, so a slow link
/// only gets fewer, larger reads. On the 2-core test machine (two A/B runs
/// of 1 GiB syncs, alternating, six and seven per variant) the median rose
/// by 4.6 % and 3.5 %, within this machine's noise but the same way twice.
/// Elsewhere, and where the kernel refuses, reads return as before.
fn read_in_large_pieces(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: sets an integer option on a socket this thread owns; the
        // value is read during the call.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&READ_AT_LEAST as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

/// Parses an answer head; `None` while it is incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<Head>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ClientError::Protocol(format!("the worker's answer has more than {MAX_HEADERS} headers")))
        }
        Err(e) => return Err(ClientError::Protocol(format!("the worker's answer head is malformed: {e}"))),
    };
    let status = res.code.unwrap_or(0);
    let mut head = Head { status, content_length: None, range_first: None, transfer_encoding: None, rest: bytes[len..].to_vec() };
    for h in res.headers.iter() {
        let value = std::str::from_utf8(h.value).map(str::trim);
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = value.ok().and_then(|v| v.parse::<u64>().ok());
            let Some(n) = parsed else {
                return Err(ClientError::Protocol("the worker's Content-Length is not a number".into()));
            };
            if head.content_length.is_some_and(|m| m != n) {
                return Err(ClientError::Protocol("the worker sent two different Content-Length headers".into()));
            }
            head.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.transfer_encoding = Some(value.unwrap_or("(not text)").chars().take(100).collect());
        } else if h.name.eq_ignore_ascii_case("content-range") {
            let first = value
                .ok()
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let Some(first) = first else {
                return Err(ClientError::Protocol("the worker's Content-Range is malformed".into()));
            };
            head.range_first = Some(first);
        }
    }
    Ok(Some(head))
}

/// Where `dest`'s download lives until it is verified.
pub(super) fn part_of(dest: &Path, entry: &ArtifactEntry) -> PathBuf {
    dest.with_file_name(format!(
        "{}.part",
        dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| entry.name.clone())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_parsed_once_complete() {
        let raw = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 5-14/15\r\n\r\nabc";
        assert!(parse_head(&raw[..20]).unwrap().is_none());
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!((head.status, head.content_length, head.range_first), (206, Some(10), Some(5)));
        assert_eq!(head.rest, b"abc");
    }

    /// A body that arrives in small pieces over a connection the worker
    /// keeps open completes as soon as its last byte is in: waiting for
    /// large reads (`SO_RCVLOWAT`) never waits past the body's end, and a
    /// short answer head is read at once.
    #[test]
    fn a_trickled_body_on_an_open_connection_completes_without_waiting_for_the_timeout() {
        use sha2::{Digest, Sha256};
        let body: Vec<u8> = (0..300 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
        let sha = hex::encode(Sha256::digest(&body));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = body.clone();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut b).unwrap();
                assert!(n > 0, "the client closed before its request was complete");
                req.extend_from_slice(&b[..n]);
            }
            conn.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", served.len()).as_bytes()).unwrap();
            for piece in served.chunks(100 * 1024) {
                conn.write_all(piece).unwrap();
                conn.flush().unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            // The connection stays open until the client is done with it.
            let _ = conn.read(&mut b);
        });
        let dir = tempfile::tempdir().unwrap();
        let entry = ArtifactEntry { name: "a.bin".into(), size: body.len() as u64, sha256: sha };
        let dest = dir.path().join("a.bin");
        let fetch = Fetch {
            base: format!("http://127.0.0.1:{port}"),
            path: "/jobs/x/artifacts/a.bin".into(),
            authorization: "test".into(),
            part: part_of(&dest, &entry),
            entry,
            dest: dest.clone(),
            have: 0,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(60),
        };
        let started = std::time::Instant::now();
        let got = fetch.run(&Cancel::default()).unwrap();
        assert_eq!(got, body.len() as u64);
        assert!(started.elapsed() < Duration::from_secs(30), "the download waited for the read timeout: {:?}", started.elapsed());
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        server.join().unwrap();
    }

    #[test]
    fn hostile_heads_are_protocol_errors() {
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: y\r\n")).collect();
        for raw in [
            format!("HTTP/1.1 200 OK\r\n{many}\r\n"),
            "HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n".to_string(),
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_string(),
            "HTTP/1.1 206 Partial\r\nContent-Range: bytes x-y/z\r\n\r\n".to_string(),
            "NOT HTTP AT ALL\r\n\r\n".to_string(),
        ] {
            let err = parse_head(raw.as_bytes()).unwrap_err();
            assert!(matches!(err, ClientError::Protocol(_)), "{raw:?}: {err:?}");
        }
    }
}
