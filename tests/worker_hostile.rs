//! Defects found by hostile testing of the real worker binary, each pinned
//! by the test that found it: a credential in the query string of the one
//! unauthenticated route, and HTTP/1.1 pipelining (two requests written in
//! one `write` on a raw TcpStream).

mod common;
mod worker_harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use worker_harness::{Opts, Worker};

/// `GET /health` is open, but a credential in its query string is refused
/// like on every other route: URLs end up in logs, and a client that puts
/// the secret there must hear about it on its first request.
#[test]
fn a_credential_in_the_query_is_refused_on_every_route_health_included() {
    let w = Worker::start(Opts::default());
    let secret = w.opts.secret.clone();
    for target in [
        format!("/health?token={secret}"),
        format!("/health?auth_token={secret}"),
        format!("/health?x=1&%74oken={secret}"),
        format!("/caps?access_token={secret}"),
        format!("/no-such-route?secret={secret}"),
    ] {
        let r = w.request("GET", &target, &[], b"");
        assert_eq!(r.status, 401, "{target}: {}", r.text());
        assert_eq!(r.code(), "AUTH_INVALID", "{target}");
        assert!(!r.text().contains(&secret), "{target}: the answer echoes the secret");
    }
    // A signed request with a credential parameter is refused too.
    let r = w.signed("GET", "/caps?token=x", b"");
    assert_eq!((r.status, r.code().as_str()), (401, "AUTH_INVALID"), "{}", r.text());
    // Other query strings on /health are ignored, as before.
    assert_eq!(w.request("GET", "/health?verbose=1", &[], b"").status, 200);
    assert!(!w.stderr().contains(&secret), "the worker logged the secret");
}

/// How long pipelined answers (and the close after `Connection: close`) may
/// take: generous for a loaded machine, and still below the 5 s keep-alive
/// timeout that a stuck pipeline would end in.
const ANSWER_WITHIN: Duration = Duration::from_secs(4);

/// Reads from `s` until `n` complete responses (by Content-Length) have
/// arrived, EOF, or `deadline`; returns the status codes seen and whether
/// the server closed the connection.
fn read_responses(s: &mut TcpStream, n: usize, deadline: Instant) -> (Vec<u16>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let statuses = complete_responses(&buf);
        if statuses.len() >= n {
            return (statuses, false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (statuses, false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return (complete_responses(&buf), true),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return (complete_responses(&buf), false)
            }
            Err(_) => return (complete_responses(&buf), true),
        }
    }
}

/// The status codes of the complete responses at the start of `buf`
/// (every worker answer carries a Content-Length).
fn complete_responses(mut buf: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() < end + 4 + len {
            break;
        }
        out.push(status);
        buf = &buf[end + 4 + len..];
    }
    out
}

fn signed_head(w: &Worker, method: &str, target: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let auth = w.sign(method, path, query, body);
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n{extra}");
    if !body.is_empty() {
        r.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Two requests in one write: both are answered, in order, well within the
/// keep-alive timeout, whatever the first one is (open, signed with a body,
/// refused before its body was read, refused by the router).
#[test]
fn pipelined_requests_are_all_answered_at_once() {
    let w = Worker::start(Opts::default());
    let health = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec();
    let submit = br#"{"step_name":"OPENCLAW_TASK","payload":{"task":"pipelined"}}"#;
    let cases: Vec<(&str, Vec<u8>, Vec<u16>)> = vec![
        ("two /health", [health.clone(), health.clone()].concat(), vec![200, 200]),
        ("signed /caps, /health", [signed_head(&w, "GET", "/caps", b"", ""), health.clone()].concat(), vec![200, 200]),
        ("signed POST with a body, /health", [signed_head(&w, "POST", "/jobs", submit, ""), health.clone()].concat(), vec![201, 200]),
        (
            "unsigned POST with an unread body, /health",
            [b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec(), health.clone()].concat(),
            vec![401, 200],
        ),
        ("signed 404, signed /caps", [signed_head(&w, "GET", "/nope", b"", ""), signed_head(&w, "GET", "/caps", b"", "")].concat(), vec![404, 200]),
        ("/health?token=, /health", [b"GET /health?token=x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), health.clone()].concat(), vec![401, 200]),
    ];
    for (what, bytes, expected) in cases {
        let mut s = TcpStream::connect(("127.0.0.1", w.port)).unwrap();
        s.set_nodelay(true).unwrap();
        let started = Instant::now();
        s.write_all(&bytes).unwrap();
        let (statuses, _) = read_responses(&mut s, expected.len(), started + ANSWER_WITHIN);
        assert_eq!(statuses, expected, "{what}: answers after {:?}\n{}", started.elapsed(), w.stderr());
    }
}

/// When the last pipelined request says `Connection: close`, the worker
/// answers everything before it and closes at once, rather than leaving the
/// client waiting for the keep-alive timeout.
#[test]
fn pipelined_requests_ending_in_close_are_answered_then_closed() {
    let w = Worker::start(Opts::default());
    let mut bytes = signed_head(&w, "GET", "/caps", b"", "");
    bytes.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut s = TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    let started = Instant::now();
    s.write_all(&bytes).unwrap();
    let (statuses, _) = read_responses(&mut s, 2, started + ANSWER_WITHIN);
    assert_eq!(statuses, vec![200, 200]);
    let (_, closed) = read_responses(&mut s, 3, started + ANSWER_WITHIN);
    assert!(closed, "the connection stayed open after Connection: close ({:?})", started.elapsed());
}

/// Pipelining behind a streamed answer (an artifact download spanning
/// several chunks), a streamed upload (a blob) and a log read.
#[test]
fn pipelined_requests_behind_streamed_bodies_are_answered() {
    let w = Worker::start(Opts::default());
    let task: String = (0..6000).map(|i| format!("line {i} of a pipelined task\n")).collect();
    let body = serde_json::to_vec(&serde_json::json!({"step_name": "OPENCLAW_TASK", "payload": {"task": task}})).unwrap();
    let sub = w.signed("POST", "/jobs", &body);
    assert_eq!(sub.status, 201, "{}", sub.text());
    let id = sub.json()["job"]["job_id"].as_str().unwrap().to_string();
    let done = w.signed("GET", &format!("/jobs/{id}?wait_s=30"), b"");
    assert_eq!(done.json()["state"], "succeeded", "{}", done.text());
    let name = done.json()["artifacts"][0]["name"].as_str().unwrap().to_string();
    let blob = vec![7u8; 300_000];
    let digest = rayvault::protocol::sha256_hex(&blob);
    let health = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec();
    let put = {
        let auth = w.sign("PUT", &format!("/blobs/{digest}"), "", &blob);
        let mut r = format!("PUT /blobs/{digest} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n", blob.len()).into_bytes();
        r.extend_from_slice(&blob);
        r
    };
    let cases: Vec<(&str, Vec<u8>, Vec<u16>)> = vec![
        ("artifact download, /health", [signed_head(&w, "GET", &format!("/jobs/{id}/artifacts/{name}"), b"", ""), health.clone()].concat(), vec![200, 200]),
        ("log, /health", [signed_head(&w, "GET", &format!("/jobs/{id}/log?offset=0"), b"", ""), health.clone()].concat(), vec![200, 200]),
        ("blob upload, /health", [put, health.clone()].concat(), vec![201, 200]),
    ];
    for (what, bytes, expected) in cases {
        let mut s = TcpStream::connect(("127.0.0.1", w.port)).unwrap();
        let started = Instant::now();
        s.write_all(&bytes).unwrap();
        let (statuses, _) = read_responses(&mut s, expected.len(), started + ANSWER_WITHIN);
        assert_eq!(statuses, expected, "{what}: answers after {:?}\n{}", started.elapsed(), w.stderr());
    }
}
