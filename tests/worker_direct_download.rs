//! Large artifact downloads asked for with `Connection: close` are sent by
//! the kernel (`sendfile`, Linux): the same answer as the streamed path
//! (status, `Content-Length`, `Content-Range`, `X-Content-SHA256`, the
//! bytes), the request's nonce recorded before anything goes out, the
//! bytes counted in `/metrics`. Keep-alive requests and small bodies keep
//! the streamed path.

mod common;
mod worker_harness;

use rayvault::protocol::{self, JobState, SubmitJob};
use serde_json::json;
use std::time::Duration;
use worker_harness::{Opts, Worker};

/// A worker whose OPENCLAW_TASK writes about 6 MB of numbered lines.
fn worker(dir: &std::path::Path) -> Worker {
    let script = dir.join("task.sh");
    std::fs::write(&script, "#!/bin/sh\ncat >/dev/null\nseq 1 120000\n").unwrap();
    Worker::start(Opts { env: vec![("RAYVAULT_OPENCLAW__COMMAND".into(), format!("sh {}", script.display()))], ..Opts::default() })
}

/// (bytes served, downloads sent by the kernel) from `/metrics`.
fn served(w: &Worker) -> (f64, f64) {
    (metric(w, "rayvault_artifact_bytes_served_total"), metric(w, "rayvault_artifact_downloads_sendfile_total"))
}

fn metric(w: &Worker, name: &str) -> f64 {
    let r = w.signed("GET", "/metrics", b"");
    assert_eq!(r.status, 200);
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no bytes-served counter in {}", r.text()))
}

#[actix_rt::test]
async fn a_large_download_asked_with_connection_close_is_the_same_answer() {
    let dir = common::tempdir();
    let w = worker(dir.path());
    let c = w.client();
    let sub = c
        .submit(&SubmitJob { step_name: "OPENCLAW_TASK".into(), payload: json!({ "task": "numbers" }), inputs_hash: None, label: None, lease_s: None })
        .await
        .unwrap();
    let done = c.job(&sub.job.job_id, 30).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let entry = c.artifacts(&done.job_id).await.unwrap().artifacts[0].clone();
    assert!(entry.size > 4 << 20, "large enough for the kernel's path: {}", entry.size);
    let path = format!("/jobs/{}/artifacts/{}", done.job_id, entry.name);

    // The controller's downloader (Connection: close, resumable).
    let dest = dir.path().join("numbers.txt");
    assert_eq!(c.download_artifact(&done.job_id, &entry, &dest).await.unwrap(), entry.size);
    let expected = std::fs::read(&dest).unwrap();
    assert_eq!(protocol::sha256_hex(&expected), entry.sha256);
    assert!(expected.windows(7).any(|w| w == b"119999\n"), "the artifact holds the task's output");

    // Whole, as a raw request with Connection: close.
    let before = served(&w);
    let auth = w.sign("GET", &path, "", b"");
    let r = w.request("GET", &path, &[("Authorization", auth.clone())], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-length"), Some(entry.size.to_string().as_str()));
    assert_eq!(r.header("x-content-sha256"), Some(entry.sha256.as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.body == expected, "the body differs ({} bytes)", r.body.len());
    let after = served(&w);
    assert_eq!((after.0 - before.0, after.1 - before.1), (entry.size as f64, 1.0), "sent by the kernel");

    // The same signed request again is a replay: its nonce was recorded
    // before the bytes went out.
    let again = w.request("GET", &path, &[("Authorization", auth)], b"");
    assert_eq!((again.status, again.code().as_str()), (401, "AUTH_INVALID"), "{}", again.text());

    // A range, with Content-Range.
    let (a, b) = (1_000_001u64, entry.size - 2);
    let auth = w.sign("GET", &path, "", b"");
    let r = w.request("GET", &path, &[("Authorization", auth), ("Range", format!("bytes={a}-"))], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some(format!("bytes {a}-{}/{}", entry.size - 1, entry.size).as_str()));
    assert!(r.body[..] == expected[a as usize..], "the range differs");
    let auth = w.sign("GET", &path, "", b"");
    let r = w.request("GET", &path, &[("Authorization", auth), ("Range", format!("bytes={a}-{b}"))], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.body.len() as u64, b - a + 1);
    // A small range is streamed, even with Connection: close.
    let before = served(&w);
    let auth = w.sign("GET", &path, "", b"");
    let r = w.request("GET", &path, &[("Authorization", auth), ("Range", "bytes=100-299".into())], b"");
    assert_eq!(r.status, 206);
    assert!(r.body[..] == expected[100..300]);
    assert_eq!(served(&w).1, before.1, "a small body is not worth the kernel's path");

    // Resumed by the downloader: only the missing tail is sent.
    let cut = 3_333_333usize;
    std::fs::write(dir.path().join("resumed.txt.part"), &expected[..cut]).unwrap();
    let resumed = dir.path().join("resumed.txt");
    assert_eq!(c.download_artifact(&done.job_id, &entry, &resumed).await.unwrap(), entry.size - cut as u64);
    assert!(std::fs::read(&resumed).unwrap() == expected);

    // Keep-alive: two downloads on one connection, both whole (the
    // streamed path, which leaves the connection open).
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let before = served(&w);
    for _ in 0..2 {
        let auth = w.sign("GET", &path, "", b"");
        write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n\r\n").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        let mut len = None;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = Some(v.trim().parse::<usize>().unwrap());
            }
        }
        let mut body = vec![0u8; len.expect("a content-length")];
        reader.read_exact(&mut body).unwrap();
        assert!(body == expected);
    }
    let after = served(&w);
    assert_eq!((after.0 - before.0, after.1 - before.1), (2.0 * entry.size as f64, 0.0), "streamed");

    // A request asking to close after others on the same connection is
    // streamed too: an earlier answer may still be on its way out.
    let auth = w.sign("GET", &path, "", b"");
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&rest[..rest.len().min(200)]));
    assert!(rest.ends_with(&expected), "the whole artifact, then the end of the connection");
    assert_eq!(served(&w).1, after.1, "not sent by the kernel");

    // A path the router decodes (%6A is 'j') is a download the guard does
    // not recognise: its nonce is recorded after the handler, so the
    // handler streams its answer instead of sending it itself.
    let encoded = path.replacen("/jobs/", "/%6Aobs/", 1);
    let before = served(&w);
    let r = w.request("GET", &encoded, &[("Authorization", w.sign("GET", &encoded, "", b""))], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == expected);
    assert_eq!(served(&w).1, before.1, "streamed");
}
