//! `WorkerClient::download_artifact` against a scripted HTTP server on
//! loopback: a transfer cut short keeps its `.part` file and the next
//! attempt resumes it with a Range request (hashing the kept prefix once);
//! a resumed transfer whose kept prefix is corrupt fails the digest check,
//! deletes the `.part` file and leaves nothing under the final name.

mod common;

use rayvault::artifacts::ArtifactEntry;
use rayvault::auth::Keyring;
use rayvault::client::{ClientError, WorkerClient};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::Arc;

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
