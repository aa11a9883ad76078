//! `WorkerClient::download_artifact` against a scripted HTTP server on
//! loopback: a transfer cut short keeps its `.part` file and the next
//! attempt resumes it with a Range request (hashing the kept prefix once);
//! a resumed transfer whose kept prefix is corrupt fails the digest check,
//! deletes the `.part` file and leaves nothing under the final name.
//! The download reads the answer itself (a plain TCP stream), so error
//! answers, hostile heads, stalls and a caller giving up are covered too.

mod common;

use rayvault::artifacts::ArtifactEntry;
use rayvault::auth::Keyring;
use rayvault::client::{CallError, CallErrorKind, ClientError, WorkerClient};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// One scripted answer: the status line and headers, then the body.
struct Answer {
    head: String,
    body: Vec<u8>,
}

/// Serves `answers` one connection each, in order, and reports each
/// request's head (lower-cased) on the returned channel.
fn serve(answers: Vec<Answer>) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for answer in answers {
            let Ok((stream, _)) = listener.accept() else { return };
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line.to_ascii_lowercase());
            }
            let _ = tx.send(head);
            let mut stream = reader.into_inner();
            let _ = stream.write_all(answer.head.as_bytes());
            let _ = stream.write_all(&answer.body);
            let _ = stream.flush();
            // Dropping the stream closes the connection, whether or not
            // the body announced was all sent.
        }
    });
    (base, rx)
}

fn artifact(len: usize) -> (Vec<u8>, ArtifactEntry) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
    let entry = ArtifactEntry { name: "big.bin".into(), size: len as u64, sha256: hex::encode(Sha256::digest(&data)) };
    (data, entry)
}

fn client(base: &str) -> WorkerClient {
    let keyring = Keyring::from_secrets("a-test-secret-that-is-long-enough-0123456789", None).unwrap();
    WorkerClient::new(base, "w1", Arc::new(keyring))
}

#[actix_rt::test]
async fn a_transfer_cut_short_is_kept_and_resumed_with_range() {
    let (whole, entry) = artifact(3 * 1024 * 1024 + 4321);
    let half = whole.len() / 2;
    let (base, heads) = serve(vec![
        // The connection drops after half the bytes it announced.
        Answer {
            head: format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", whole.len()),
            body: whole[..half].to_vec(),
        },
        Answer {
            head: format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {half}-{}/{}\r\nConnection: close\r\n\r\n",
                whole.len() - half,
                whole.len() - 1,
                whole.len()
            ),
            body: whole[half..].to_vec(),
        },
    ]);
    let dir = common::tempdir();
    let dest = dir.path().join("big.bin");
    let part = dir.path().join("big.bin.part");
    let c = client(&base);

    let first = c.download_artifact("job-1", &entry, &dest).await;
    let Err(err) = first else { panic!("a short transfer was accepted") };
    assert!(err.is_transient(), "a short transfer is worth retrying: {err:?}");
    assert!(!dest.exists(), "nothing under the final name before the whole file is verified");
    let kept = std::fs::read(&part).unwrap();
    assert!(kept == whole[..half], "what arrived is kept for the resume ({} bytes of {half}; {err})", kept.len());

    let transferred = c.download_artifact("job-1", &entry, &dest).await.unwrap();
    assert_eq!(transferred, (whole.len() - half) as u64, "only the missing bytes travel");
    assert!(std::fs::read(&dest).unwrap() == whole, "the resumed file is the whole artifact");
    assert!(!part.exists());
    let _first_head = heads.recv().unwrap();
    let second_head = heads.recv().unwrap();
    assert!(second_head.contains(&format!("range: bytes={half}-")), "the resume asks for the rest: {second_head}");
}

#[actix_rt::test]
async fn a_resume_over_a_corrupt_prefix_fails_the_digest_and_discards_the_part() {
    let (whole, entry) = artifact(2 * 1024 * 1024 + 99);
    let keep = 1024 * 1024 + 5;
    let (base, _heads) = serve(vec![Answer {
        head: format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", whole.len() - keep),
        body: whole[keep..].to_vec(),
    }]);
    let dir = common::tempdir();
    let dest = dir.path().join("big.bin");
    let part = dir.path().join("big.bin.part");
    let mut corrupt = whole[..keep].to_vec();
    corrupt[keep / 2] ^= 0x55;
    std::fs::write(&part, &corrupt).unwrap();

    let outcome = client(&base).download_artifact("job-2", &entry, &dest).await;
    match outcome {
        Err(ClientError::Digest { expected, actual, .. }) => {
            assert_eq!(expected, entry.sha256);
            assert_ne!(actual, entry.sha256);
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(!part.exists(), "a mismatch deletes the partial file, so the next attempt starts over");
    assert!(!dest.exists(), "nothing unverified under the final name");
}

/// Serves one connection with `answer`, after reading the request head.
fn serve_one(answer: impl FnOnce(TcpStream) + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else { return };
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
            line.clear();
        }
        answer(reader.into_inner());
    });
    base
}

/// An error answer keeps the worker's status and code, classified like
/// any other call's; nothing is written locally.
#[actix_rt::test]
async fn an_error_answer_keeps_the_workers_status_and_code() {
    let (_, entry) = artifact(1000);
    for (status, code, kind) in [
        (404, "ARTIFACT_NOT_FOUND", CallErrorKind::Http { status: 404 }),
        (503, "SHUTTING_DOWN", CallErrorKind::Busy { status: 503 }),
    ] {
        let body = format!(r#"{{"error":"no such artifact here","code":"{code}"}}"#);
        let (base, _heads) = serve(vec![Answer {
            head: format!("HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()),
            body: body.into_bytes(),
        }]);
        let dir = common::tempdir();
        let dest = dir.path().join("big.bin");
        let err = client(&base).download_artifact("job-3", &entry, &dest).await.unwrap_err();
        assert!(matches!(&err, ClientError::Api { status: s, code: c, message, .. } if *s == status && c == code && message == "no such artifact here"), "{err:?}");
        assert_eq!(CallError::from(err).kind, kind);
        assert!(!dir.path().join("big.bin.part").exists() && !dest.exists());
    }
}

/// A worker sending an endless answer head gets a Protocol error after a
/// bounded read, not a panic or an endless wait.
#[actix_rt::test]
async fn an_oversize_answer_head_is_a_protocol_error() {
    let base = serve_one(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Junk: ");
        let junk = [b'a'; 8192];
        while s.write_all(&junk).is_ok() {}
    });
    let (_, entry) = artifact(1000);
    let dir = common::tempdir();
    let dest = dir.path().join("big.bin");
    let res = tokio::time::timeout(Duration::from_secs(20), client(&base).download_artifact("job-4", &entry, &dest)).await;
    let err = res.expect("an endless head must not be followed").unwrap_err();
    assert!(matches!(&err, ClientError::Protocol(m) if m.contains("head is larger")), "{err:?}");
    assert!(!dir.path().join("big.bin.part").exists());
}

/// A worker that stops sending mid-body times the read out: a transient
/// error, with what arrived kept in the `.part` file for the resume.
#[actix_rt::test]
async fn a_stalled_body_times_out_and_keeps_the_part() {
    let (whole, entry) = artifact(3 * 1024 * 1024);
    let half = whole.len() / 2;
    let (release, released) = mpsc::channel::<()>();
    let (sent, len) = (whole[..half].to_vec(), whole.len());
    let base = serve_one(move |mut s| {
        let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes());
        let _ = s.write_all(&sent);
        // Holds the connection open, silent, until the test ends.
        let _ = released.recv();
    });
    let dir = common::tempdir();
    let dest = dir.path().join("big.bin");
    let c = client(&base).with_timeout(Duration::from_millis(300));
    let err = c.download_artifact("job-5", &entry, &dest).await.unwrap_err();
    assert!(matches!(&err, ClientError::Unreachable { kind: CallErrorKind::TimedOut, .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(std::fs::read(dir.path().join("big.bin.part")).unwrap() == whole[..half], "what arrived is kept");
    drop(release);
}

/// A caller that gives up on a download (its future dropped) closes the
/// connection at once, though the socket's own timeout is far away, and
/// what arrived stays for a resume.
#[actix_rt::test]
async fn a_download_given_up_closes_its_connection() {
    let (whole, entry) = artifact(2 * 1024 * 1024);
    let sent = whole[..1000].to_vec();
    let (closed_tx, closed) = mpsc::channel();
    let base = serve_one(move |mut s| {
        let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 2 * 1024 * 1024).as_bytes());
        let _ = s.write_all(&sent);
        // A read returns when the client closes its end.
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
        let mut buf = [0u8; 16];
        let _ = closed_tx.send(s.read(&mut buf).map(|n| n == 0).unwrap_or(true));
    });
    let dir = common::tempdir();
    let dest = dir.path().join("big.bin");
    let part = dir.path().join("big.bin.part");
    let c = client(&base).with_timeout(Duration::from_secs(60));
    let gave_up = tokio::time::timeout(Duration::from_millis(300), c.download_artifact("job-6", &entry, &dest)).await;
    assert!(gave_up.is_err(), "the download cannot have finished: {gave_up:?}");
    let was_closed = closed.recv_timeout(Duration::from_secs(10)).expect("the connection was not closed after the caller gave up");
    assert!(was_closed);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 1000 {
        assert!(std::time::Instant::now() < deadline, "the bytes that arrived were not kept");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(std::fs::read(&part).unwrap() == whole[..1000]);
    assert!(!dest.exists());
}

/// A resume that stops a few bytes short of a 1 MiB boundary, with the
/// body sent in the same packet as the head: the first block is cut at the
/// boundary and the rest of what the head's read took carries over.
#[actix_rt::test]
async fn a_resume_just_short_of_a_block_boundary_arrives_whole() {
    let (whole, entry) = artifact(3 * 1024 * 1024 + 77);
    let keep = 1024 * 1024 - 10;
    let tail = whole[keep..].to_vec();
    let base = serve_one(move |mut s| {
        let mut answer = format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\r\n", tail.len()).into_bytes();
        answer.extend_from_slice(&tail);
        let _ = s.write_all(&answer);
    });
    let dir = common::tempdir();
    let dest = dir.path().join("big.bin");
    std::fs::write(dir.path().join("big.bin.part"), &whole[..keep]).unwrap();
    let n = client(&base).download_artifact("job-7", &entry, &dest).await.unwrap();
    assert_eq!(n, (whole.len() - keep) as u64);
    assert!(std::fs::read(&dest).unwrap() == whole);
}
