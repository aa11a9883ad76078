//! The worker's authentication and HTTP hardening, against the real binary
//! on loopback: every hostile input that concerns credentials, headers and
//! bodies. Job-level hostile inputs (idempotency,
//! artifact names) are in worker_jobs.rs; bind refusal in worker_restart.rs.

mod common;
mod worker_harness;

use rayvault::auth::Keyring;
use rayvault::protocol::{self, HmacHeader};
use worker_harness::{Opts, RawHttp, Worker};

fn assert_refused(r: &RawHttp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(r.code(), "AUTH_INVALID", "{what}");
    assert_eq!(r.json()["error"], "auth_token invalid", "{what}");
}

/// A header for GET /caps with the given ts and sig, the other fields valid.
fn header_with(w: &Worker, ts: &str, sig: &str) -> String {
    let good = HmacHeader::parse(&w.sign("GET", "/caps", "", b"")).unwrap();
    format!("RAYVAULT-HMAC-SHA256 kid={}, ts={ts}, nonce={}, sig={sig}", good.kid, rayvault::auth::fresh_nonce())
}

#[test]
fn health_is_open_and_caps_needs_a_signature() {
    let w = Worker::start(Opts::default());
    let h = w.request("GET", "/health", &[], b"");
    assert_eq!(h.status, 200);
    let body = h.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["worker_id"], "worker-test");
    assert_eq!(body["contract"], protocol::CONTRACT);
    assert!(!h.text().contains(&w.opts.secret));

    assert_refused(&w.request("GET", "/caps", &[], b""), "no Authorization");
    // A forged X-Forwarded-For or loopback origin gives no exemption.
    assert_refused(&w.request("GET", "/caps", &[("X-Forwarded-For", "127.0.0.1".into())], b""), "forged XFF");

    let caps = w.signed("GET", "/caps", b"");
    assert_eq!(caps.status, 200, "{}", caps.text());
    let c = caps.json();
    for key in ["os", "cpu", "ram_gb", "gpu_model", "vram_gb", "python_version", "ffmpeg_version", "davinci_available", "steps", "concurrency", "contract"] {
        assert!(c.get(key).is_some(), "caps lacks {key}: {c}");
    }
    assert_eq!(c["contract"], protocol::CONTRACT);
    let steps: Vec<&str> = c["steps"].as_array().unwrap().iter().filter_map(|s| s.as_str()).collect();
    assert!(steps.contains(&"FFMPEG_PROBE"), "ffmpeg is installed here: {c}");
    assert!(steps.iter().all(|s| rayvault::steps::StepName::parse(s).is_ok()));
    assert!(c["unavailable_steps"].is_object(), "{c}");
    assert_eq!(c["concurrency"]["FFMPEG_PROBE"], 4);
}

#[test]
fn replay_skew_and_malformed_timestamps() {
    let w = Worker::start(Opts::default());
    let auth = w.sign("GET", "/caps", "", b"");
    assert_eq!(w.request("GET", "/caps", &[("Authorization", auth.clone())], b"").status, 200);
    assert_refused(&w.request("GET", "/caps", &[("Authorization", auth)], b""), "replayed nonce");

    let ring = w.keyring();
    let now = rayvault::auth::unix_now();
    let at = |ts: u64| {
        let target = rayvault::auth::RequestTarget { method: "GET", path: "/caps", query: "", worker_id: "worker-test", body_sha256: protocol::EMPTY_SHA256 };
        ring.authorization_at(&target, ts, &rayvault::auth::fresh_nonce())
    };
    for (ts, what) in [(now + 301, "301 s ahead"), (now - 301, "301 s behind")] {
        let r = w.request("GET", "/caps", &[("Authorization", at(ts))], b"");
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(r.code(), "AUTH_SKEW", "{what}");
        assert!(r.json()["error"].as_str().unwrap().contains("timestamp outside allowed skew"));
        let server_time = r.json()["server_time"].as_u64().expect("server_time");
        assert!(server_time.abs_diff(now) < 30);
    }
    assert_eq!(w.request("GET", "/caps", &[("Authorization", at(now + 250))], b"").status, 200, "inside the window ahead");
    assert_eq!(w.request("GET", "/caps", &[("Authorization", at(now - 250))], b"").status, 200, "inside the window behind");

    let sig = "0".repeat(64);
    for ts in ["abc", "-5", "1.5", "99999999999999999999", "", "1e9", "0x10"] {
        assert_refused(&w.request("GET", "/caps", &[("Authorization", header_with(&w, ts, &sig))], b""), &format!("ts {ts:?}"));
    }
}

#[test]
fn signatures_must_cover_exact_bytes() {
    let w = Worker::start(Opts::default());
    let body = br#"{"step_name":"FFMPEG_PROBE","payload":{"media_path":"/nope"}}"#;
    // Body changed by one byte after signing, and the same JSON re-serialised.
    let auth = w.sign("POST", "/jobs", "", body);
    let mut changed = body.to_vec();
    changed[body.len() - 3] = b'X';
    assert_refused(&w.request("POST", "/jobs", &[("Authorization", auth)], &changed), "body changed");
    let auth = w.sign("POST", "/jobs", "", body);
    let reserialised = br#"{"step_name": "FFMPEG_PROBE", "payload": {"media_path": "/nope"}}"#;
    assert_refused(&w.request("POST", "/jobs", &[("Authorization", auth)], reserialised), "re-serialised body");

    // Signed for /caps, sent to path variants.
    for variant in ["//caps", "/caps/", "/CAPS", "/%63aps", "/caps%2F"] {
        let auth = w.sign("GET", "/caps", "", b"");
        assert_refused(&w.request("GET", variant, &[("Authorization", auth)], b""), variant);
    }
    // A variant signed as itself is authentic but names no endpoint.
    for variant in ["//caps", "/CAPS", "/caps%2F"] {
        let r = w.signed("GET", variant, b"");
        assert_eq!(r.status, 404, "{variant}: {}", r.text());
        assert_eq!(r.code(), "NOT_FOUND");
    }
    // Query reordered or extended after signing.
    let id = "j".to_string() + &"0".repeat(32);
    let auth = w.sign("GET", &format!("/jobs/{id}"), "wait_s=0&x=1", b"");
    assert_refused(&w.request("GET", &format!("/jobs/{id}?x=1&wait_s=0"), &[("Authorization", auth)], b""), "query reordered");
    let auth = w.sign("GET", &format!("/jobs/{id}"), "wait_s=0", b"");
    assert_refused(&w.request("GET", &format!("/jobs/{id}?wait_s=0&wait_s=1"), &[("Authorization", auth)], b""), "query extended");
    // Method changed.
    let auth = w.sign("GET", "/jobs", "", b"");
    assert_refused(&w.request("POST", "/jobs", &[("Authorization", auth)], b""), "method changed");
}

/// A signed request dated just past the window ahead, refused with
/// AUTH_SKEW, and a copy of it sent again once its time is inside the window.
fn future_request_then_replay(w: &Worker) -> (RawHttp, RawHttp) {
    let ring = w.keyring();
    let ts = rayvault::auth::unix_now() + 302;
    let target = rayvault::auth::RequestTarget { method: "GET", path: "/caps", query: "", worker_id: "worker-test", body_sha256: protocol::EMPTY_SHA256 };
    let auth = ring.authorization_at(&target, ts, &rayvault::auth::fresh_nonce());
    let first = w.request("GET", "/caps", &[("Authorization", auth.clone())], b"");
    common::wait_until("the request's time enters the window", std::time::Duration::from_secs(10), || rayvault::auth::unix_now() + 300 > ts);
    let replay = w.request("GET", "/caps", &[("Authorization", auth)], b"");
    (first, replay)
}

#[test]
fn a_request_refused_as_early_cannot_be_replayed_later() {
    let w = Worker::start(Opts::default());
    let (first, replay) = future_request_then_replay(&w);
    assert_eq!((first.status, first.code().as_str()), (401, "AUTH_SKEW"), "{}", first.text());
    assert_refused(&replay, "a copy of a request refused as early, sent once it is inside the window");
    // Fresh requests are unaffected.
    assert_eq!(w.signed("GET", "/caps", b"").status, 200);
}

#[test]
fn malformed_signatures_and_headers() {
    let w = Worker::start(Opts::default());
    let good = w.sign("GET", "/caps", "", b"");
    let parsed = HmacHeader::parse(&good).unwrap();
    let with_sig = |sig: &str| good.replace(&parsed.sig, sig);
    for (sig, what) in [
        (parsed.sig[..63].to_string(), "truncated"),
        (parsed.sig.to_uppercase(), "upper-case"),
        ("z".repeat(64), "non-hex"),
        (String::new(), "empty"),
        (format!("{}, sig={}", parsed.sig, parsed.sig), "given twice"),
    ] {
        assert_refused(&w.request("GET", "/caps", &[("Authorization", with_sig(&sig))], b""), what);
    }
    // Two Authorization headers, both individually valid.
    let a = w.sign("GET", "/caps", "", b"");
    let b = w.sign("GET", "/caps", "", b"");
    assert_refused(&w.request("GET", "/caps", &[("Authorization", a), ("Authorization", b)], b""), "two headers");
    // Wrong scheme, lower-case scheme, garbage.
    for v in ["Basic dXNlcjpwYXNz", "rayvault-hmac-sha256 kid=1", "RAYVAULT-HMAC-SHA256", "Bearer", "Bearer ünïcödé"] {
        assert_refused(&w.request("GET", "/caps", &[("Authorization", v.to_string())], b""), v);
    }
    // A control character is refused by the HTTP parser itself.
    assert_eq!(w.request("GET", "/caps", &[("Authorization", "\u{1}".into())], b"").status, 400);
}

#[test]
fn a_signature_for_another_worker_is_refused() {
    let a = Worker::start(Opts::default());
    let b = Worker::start(Opts { worker_id: "worker-other".into(), secret: a.opts.secret.clone(), ..Opts::default() });
    // Signed for b (same secret), replayed to a.
    let for_b = b.sign("GET", "/caps", "", b"");
    assert_refused(&a.request("GET", "/caps", &[("Authorization", for_b.clone())], b""), "signed for another worker");
    assert_eq!(b.request("GET", "/caps", &[("Authorization", for_b)], b"").status, 200);
}

#[test]
fn rotation_current_previous_retired() {
    let w = Worker::start(Opts { secret: "rotation-new-secret".into(), previous: Some("rotation-old-secret".into()), ..Opts::default() });
    let current = Keyring::from_secrets("rotation-new-secret", None).unwrap();
    let previous = Keyring::from_secrets("rotation-old-secret", None).unwrap();
    let retired = Keyring::from_secrets("rotation-retired-secret", None).unwrap();
    let call = |ring: &Keyring| w.request("GET", "/caps", &[("Authorization", w.sign_with(ring, "GET", "/caps", "", b""))], b"");
    assert_eq!(call(&current).status, 200);
    assert_eq!(call(&previous).status, 200);
    assert_refused(&call(&retired), "retired key");
    let log = w.stderr();
    assert!(log.contains("PREVIOUS") && log.contains(previous.current.kid()), "warning naming the previous kid: {log}");
    for secret in ["rotation-new-secret", "rotation-old-secret"] {
        assert!(!log.contains(secret), "secret leaked into the log");
    }
}

#[test]
fn plain_token_is_opt_in_and_never_a_fallback() {
    let strict = Worker::start(Opts::default());
    let bearer = format!("Bearer {}", strict.opts.secret);
    assert_refused(&strict.request("GET", "/caps", &[("Authorization", bearer.clone())], b""), "plain token in strict mode");
    // The secret in the query string: refused, and never logged.
    let r = strict.request("GET", &format!("/caps?token={}", strict.opts.secret), &[], b"");
    assert_refused(&r, "?token=");
    let signed_with_token = strict.signed("GET", &format!("/caps?token={}", strict.opts.secret), b"");
    assert_refused(&signed_with_token, "signed but with ?token=");

    let lax = Worker::start(Opts { args: vec!["--allow-plain-token".into()], ..Opts::default() });
    let bearer = format!("Bearer {}", lax.opts.secret);
    assert_eq!(lax.request("GET", "/caps", &[("Authorization", bearer.clone())], b"").status, 200);
    assert_refused(&lax.request("GET", "/caps", &[("Authorization", "Bearer wrong".into())], b""), "wrong plain token");
    // A broken HMAC header never falls back, alone or beside a valid token.
    let broken = "RAYVAULT-HMAC-SHA256 kid=0011223344556677, ts=1, nonce=short, sig=00".to_string();
    assert_refused(&lax.request("GET", "/caps", &[("Authorization", broken.clone())], b""), "broken HMAC");
    assert_refused(&lax.request("GET", "/caps", &[("Authorization", broken), ("Authorization", bearer)], b""), "broken HMAC + plain");
    let log = lax.stderr();
    assert!(log.contains("plain-token fallback"), "plain use is warned: {log}");

    for w in [&strict, &lax] {
        let log = w.stderr();
        assert!(!log.contains(&w.opts.secret), "secret leaked into the worker log:\n{log}");
    }
}

#[test]
fn header_and_body_limits() {
    let w = Worker::start(Opts { env: vec![("RAYVAULT_WORKER__MAX_BODY_BYTES".into(), "4096".into())], ..Opts::default() });
    // An 8 KiB+ header.
    let r = w.request("GET", "/caps", &[("X-Pad", "a".repeat(9000)), ("Authorization", w.sign("GET", "/caps", "", b""))], b"");
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.code(), "HEADERS_TOO_LARGE");
    // An oversized body announced by Content-Length.
    let big = vec![b'x'; 5000];
    let r = w.request("POST", "/jobs", &[("Authorization", w.sign("POST", "/jobs", "", &big))], &big);
    assert_eq!((r.status, r.code().as_str()), (413, "PAYLOAD_TOO_LARGE"));
    // An oversized chunked body (no Content-Length).
    let mut req = format!("POST /jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nAuthorization: {}\r\n\r\n", w.sign("POST", "/jobs", "", &big)).into_bytes();
    for chunk in big.chunks(1000) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = w.raw(&req);
    assert_eq!((r.status, r.code().as_str()), (413, "PAYLOAD_TOO_LARGE"), "chunked");
    // Malformed requests get a 4xx with a code, never a crash.
    let r = w.signed("POST", "/jobs", b"{not json");
    assert_eq!((r.status, r.code().as_str()), (400, "BAD_REQUEST"));
    let r = w.signed("POST", "/jobs", br#"{"step_name":"NOPE","payload":{}}"#);
    assert_eq!((r.status, r.code().as_str()), (400, "STEP_UNKNOWN"));
    let r = w.signed("POST", "/jobs", br#"{"step_name":"FFMPEG_PROBE","payload":{},"extra":1}"#);
    assert_eq!((r.status, r.code().as_str()), (400, "BAD_REQUEST"));
    let r = w.signed("DELETE", "/caps", b"");
    assert_eq!((r.status, r.code().as_str()), (405, "METHOD_NOT_ALLOWED"));
    let r = w.signed("GET", "/jobs/jnotanid", b"");
    assert_eq!((r.status, r.code().as_str()), (404, "JOB_NOT_FOUND"));
    let r = w.signed("GET", &format!("/jobs/j{}?wait_s=abc", "0".repeat(32)), b"");
    assert_eq!((r.status, r.code().as_str()), (400, "BAD_REQUEST"));
    // The worker is still healthy after all of it.
    assert_eq!(w.request("GET", "/health", &[], b"").status, 200);
}

#[test]
fn a_bad_credential_is_refused_before_the_body_is_read() {
    let w = Worker::start(Opts::default());
    let kid = HmacHeader::parse(&w.sign("GET", "/caps", "", b"")).unwrap().kid;
    let unknown_kid = format!("RAYVAULT-HMAC-SHA256 kid=0123456789abcdef, ts=1700000000, nonce={}, sig={}", "n".repeat(20), "0".repeat(64));
    let malformed = format!("RAYVAULT-HMAC-SHA256 kid={kid}, ts=soon, nonce={}, sig={}", "n".repeat(20), "0".repeat(64));
    // Each request announces a body it never sends: a peer without a usable
    // credential must not make the worker wait for (or buffer) a body.
    for auth in [None, Some("Basic Zm9vOmJhcg==".to_string()), Some(format!("Bearer {}", w.opts.secret)), Some(unknown_kid), Some(malformed)] {
        let mut head = "POST /jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1000000\r\n".to_string();
        if let Some(a) = &auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        head.push_str("\r\n");
        let t0 = std::time::Instant::now();
        let r = w.raw(head.as_bytes());
        assert_refused(&r, &format!("{auth:?} without its body"));
        assert!(t0.elapsed() < std::time::Duration::from_secs(5), "{auth:?}: answered only after {:?}", t0.elapsed());
    }
}

#[test]
fn an_unread_body_is_never_parsed_as_a_request() {
    let w = Worker::start(Opts::default());
    // Refused before its body is read, on a keep-alive connection: the body
    // (itself a request) must not be answered as a second request.
    let inner = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let req = format!("POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Basic eDp5\r\nContent-Length: {}\r\n\r\n{inner}", inner.len());
    let r = w.raw(req.as_bytes());
    assert_refused(&r, "smuggling attempt");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(!r.text().contains("\"status\":\"ok\""), "the body was answered as a request: {}", r.text());
}

#[test]
fn a_body_that_never_arrives_is_given_up() {
    let w = Worker::start(Opts { env: vec![("RAYVAULT_WORKER__BODY_TIMEOUT_S".into(), "1".into())], ..Opts::default() });
    // A header good enough for the pre-check (the right kid), and a body
    // announced but never sent: the connection is not held forever.
    let auth = w.sign("POST", "/jobs", "", b"{}");
    let head = format!("POST /jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\nAuthorization: {auth}\r\n\r\n");
    let t0 = std::time::Instant::now();
    let r = w.raw(head.as_bytes());
    assert_eq!((r.status, r.code().as_str()), (400, "BAD_REQUEST"), "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("body_timeout_s"), "{}", r.text());
    assert!(t0.elapsed() < std::time::Duration::from_secs(10), "{:?}", t0.elapsed());
    // A body that does arrive in time still works.
    assert_eq!(w.signed("POST", "/jobs", br#"{"step_name":"NOPE","payload":{}}"#).code(), "STEP_UNKNOWN");
}

#[test]
fn protocol_doc_carries_the_golden_vector() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    let body = br#"{"step_name":"FFMPEG_PROBE","payload":{"media_path":"/tmp/a.mp4"}}"#;
    let ring = Keyring::from_secrets("rayvault-golden-secret", None).unwrap();
    let sha = protocol::sha256_hex(body);
    let target = rayvault::auth::RequestTarget { method: "POST", path: "/jobs", query: "", worker_id: "worker-golden", body_sha256: &sha };
    let header = ring.authorization_at(&target, 1_700_000_000, "00112233445566778899aabbccddeeff");
    assert!(doc.contains(&format!("Authorization: {header}")), "docs/protocol.md golden vector is stale: {header}");
    assert!(doc.contains(&format!("body_sha256 = {sha}")));
    assert!(doc.contains(&format!("kid         = {}", ring.current.kid())));
    assert!(doc.contains(protocol::CONTRACT));
    // Every wire error code is documented.
    for code in ["AUTH_INVALID", "AUTH_SKEW", "BAD_REQUEST", "STEP_UNKNOWN", "NOT_FOUND", "JOB_NOT_FOUND", "ARTIFACT_NOT_FOUND", "ARTIFACT_NAME_INVALID", "BLOB_NOT_FOUND", "DIGEST_MISMATCH", "INPUTS_HASH_MISMATCH", "METHOD_NOT_ALLOWED", "JOB_CONFLICT", "PAYLOAD_TOO_LARGE", "RANGE_NOT_SATISFIABLE", "HEADERS_TOO_LARGE", "TOO_MANY_JOBS", "SHUTTING_DOWN", "INTERNAL"] {
        assert!(doc.contains(&format!("`{code}`")), "{code} undocumented");
    }
}
