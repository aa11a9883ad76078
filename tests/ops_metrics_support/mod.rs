//! Reads a Prometheus exposition with a real parser: the Python
//! `prometheus_client` package's `text_string_to_metric_families`, from a
//! venv under the target folder (created and filled from PyPI on first use;
//! `scripts/install_deps.sh` creates the same one).
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// One sample as the parser read it.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The family's name as the parser reports it (a counter's without `_total`).
    pub family: String,
    pub kind: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The parsed samples of one exposition.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    /// The value of the sample `name` whose labels include all of `labels`
    /// (exactly one must match).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.matching(name, labels);
        assert_eq!(found.len(), 1, "{} sample(s) {name}{labels:?} in\n{}", found.len(), self.text);
        found[0].value
    }

    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v)))
            .collect()
    }

    /// The type the parser gave to the family.
    pub fn kind(&self, family: &str) -> String {
        self.samples.iter().find(|s| s.family == family).map(|s| s.kind.clone()).unwrap_or_default()
    }
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        out.append({"family": f.name, "kind": f.type, "name": s.name, "labels": sorted(s.labels.items()), "value": repr(float(s.value))})
print(json.dumps(out))
"#;

static VENV: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);

/// The venv's python with `prometheus_client`, or why there is none (only
/// when `python3 -m venv` itself is unavailable).
fn python() -> Result<PathBuf, String> {
    let mut slot = VENV.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = &*slot {
        return r.clone();
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("metrics-venv");
    let py = venv.join("bin/python");
    let has_parser = |py: &PathBuf| Command::new(py).args(["-c", "import prometheus_client.parser"]).status().is_ok_and(|s| s.success());
    let result = if py.exists() && has_parser(&py) {
        Ok(py)
    } else {
        let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).output();
        match made {
            Ok(o) if o.status.success() => {
                let pip = Command::new(&py).args(["-m", "pip", "install", "--quiet", "prometheus_client"]).output().expect("run pip");
                assert!(pip.status.success(), "pip install prometheus_client failed: {}", String::from_utf8_lossy(&pip.stderr));
                assert!(has_parser(&py), "prometheus_client is not importable after pip install");
                Ok(py)
            }
            Ok(o) => Err(format!("python3 -m venv is unavailable: {}", String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => Err(format!("python3 is unavailable: {e}")),
        }
    };
    *slot = Some(result.clone());
    result
}

/// Parses `text`; None (after printing why) only when no venv can be made.
pub fn parse(text: &str) -> Option<Metrics> {
    let py = match python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED: the Prometheus text parser is unavailable: {why}");
            return None;
        }
    };
    let mut child = Command::new(py).args(["-c", PARSE]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the Prometheus parser refused the exposition: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let samples = rows
        .iter()
        .map(|r| Sample {
            family: r["family"].as_str().unwrap().to_string(),
            kind: r["kind"].as_str().unwrap().to_string(),
            name: r["name"].as_str().unwrap().to_string(),
            labels: r["labels"].as_array().unwrap().iter().map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string())).collect(),
            value: r["value"].as_str().unwrap().parse().unwrap(),
        })
        .collect();
    Some(Metrics { samples, text: text.to_string() })
}

/// A plain HTTP GET on loopback without any credential: (status, content
/// type, body).
pub fn unsigned_get(port: u16, path: &str) -> (u16, String, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (status, ctype, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}
