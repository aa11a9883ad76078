//! The controller keeps one connection pool per node: the probe, staging,
//! submit, the long-poll and the artifact and log downloads of several jobs
//! in a row share the same keep-alive connections instead of opening new
//! ones for every job.

mod controller_support;

use controller_support::common;
use controller_support::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A loopback TCP proxy in front of `target` that counts the connections it
/// accepts; each one is relayed byte for byte in both directions.
fn counting_proxy(target: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else { continue };
            relay(client.try_clone().unwrap(), upstream.try_clone().unwrap());
            relay(upstream, client);
        }
    });
    (port, accepted)
}

fn relay(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[test]
fn sequential_jobs_to_one_worker_reuse_its_connections() {
    let mut w = World::new();
    // No periodic probe during the test: only the jobs' own traffic counts.
    w.set_env("RAYVAULT_CONTROLLER__PROBE_INTERVAL_S", "3600");
    let (_worker, port) = worker(&w, "w1", &[]);
    let (proxy, accepted) = counting_proxy(port);
    w.write_nodes(&[("w1", proxy, true)]);
    let _daemon = w.daemon();
    // Different inputs, so each job really runs (no idempotent reuse).
    let jobs = 6;
    for i in 0..jobs {
        let wav = common::make_sine_wav(w.dir.path(), &format!("tone{i}.wav"), 0.6, 16000, 1, -20.0 - i as f64);
        let payload = json!({"audio_paths": [wav], "thresholds": {"target_lufs": -20, "lufs_tolerance": 30, "max_true_peak_dbtp": 0}});
        let (code, r, err) = w.submit("ka", &format!("j{i}"), "AUDIO_POSTCHECK", payload, &[]);
        assert_eq!(r["executed_on"], "w1", "job {i} ran elsewhere (exit {code}): {err}\n{r}");
        assert_eq!(r["status"], "succeeded", "{r}");
    }
    // Each job staged its input, submitted, long-polled and fetched its
    // log. With a fresh HTTP client per job (or per call) that is at least
    // two new connections a job; with one keep-alive pool per node the
    // probe's connection carries it all (a second one may open while a
    // request is in flight beside another).
    let n = accepted.load(Ordering::SeqCst);
    eprintln!("{jobs} sequential jobs, {n} TCP connections accepted by the proxy");
    assert!(n <= 3, "{jobs} sequential jobs opened {n} TCP connections to the worker; one keep-alive pool per node should reuse them");
}
