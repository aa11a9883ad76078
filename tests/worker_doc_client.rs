//! docs/protocol.md is enough to write a client: `worker_doc_client.py`, a
//! Python client written from the document alone (standard library only,
//! nothing from this crate), talks to the real worker binary. It signs
//! requests, stages a blob, computes `inputs_hash`, long-polls, tails the
//! log and resumes a download with `Range`, checks the documented
//! refusals (replay, skew, wrong `inputs_hash`, a key given twice), and
//! computes `inputs_hash` with its own RFC 8785 code for the document's
//! test vectors (`1e-7`, `1e21`, integers above 2^53) and for 2000 random
//! doubles, which the worker must hash the same way.

mod common;
mod worker_harness;

use std::process::Command;
use worker_harness::{Opts, Worker};

#[test]
fn a_client_written_from_the_protocol_document_works() {
    let w = Worker::start(Opts::default());
    let dir = common::tempdir();
    let video = common::make_video(dir.path(), "doc-client.mp4", 1.0, 160, 120, 10);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/worker_doc_client.py");
    let out = Command::new("python3")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("WORKER_URL", w.base_url())
        // The secret goes by environment, never on a command line.
        .env("WORKER_SECRET", &w.opts.secret)
        .env("VIDEO_PATH", &video)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "the document-only client failed ({}):\n{stdout}\n{stderr}\nworker log:\n{}",
        out.status,
        w.stderr()
    );
}
