//! Human views of `status` and `health`: aligned tables on stdout. Scripts
//! use `--json`, which prints the same data as JSON; this module only reads
//! that JSON, so both views always show the same facts.

use serde_json::Value;

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

fn text(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

/// A duration for people: `42s`, `5m 03s`, `2h 10m`, `3d 4h`.
pub fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// What a node speaks: its contract, and the compatibility mode if any.
fn contract(n: &Value) -> String {
    match (text(&n["contract"]), text(&n["compat_mode"])) {
        (Some(c), Some(m)) => format!("{c} ({m})"),
        (Some(c), None) => c.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => "-".to_string(),
    }
}

fn ram(n: &Value) -> String {
    match n["ram_gb"].as_f64() {
        Some(gb) if gb.fract() == 0.0 => format!("{gb:.0} GB"),
        Some(gb) => format!("{gb:.1} GB"),
        None => "-".to_string(),
    }
}

/// The lines above a node table: the file, and its error if any.
fn nodes_header(nodes: &Value) -> String {
    let mut out = format!("nodes.json: {}\n", text(&nodes["nodes_file"]).unwrap_or("-"));
    if let Some(e) = text(&nodes["nodes_error"]) {
        out.push_str(&format!("nodes.json problem (the last good list is used): {e}\n"));
    }
    out
}

/// `status` as tables: the daemon, the nodes, then the jobs. `v` is what
/// `status --json` prints; `now_ms` is the current Unix time in ms.
pub fn status(v: &Value, now_ms: u64) -> String {
    let mut out = match v["daemon"]["pid"].as_u64() {
        Some(pid) => format!("daemon: running (pid {pid})\n"),
        None => "daemon: not running (jobs from its store, nodes probed just now)\n".to_string(),
    };
    let jobs = v["jobs"].as_array().map(Vec::as_slice).unwrap_or_default();
    let unfinished = |j: &&Value| j["phase"] != "finished";
    out.push_str(&nodes_header(&v["nodes"]));
    let nodes = v["nodes"]["nodes"].as_array().map(Vec::as_slice).unwrap_or_default();
    if nodes.is_empty() {
        out.push_str("no nodes configured: every step runs locally on this controller\n");
    } else {
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                let id = n["node_id"].as_str().unwrap_or("?");
                let in_flight = jobs.iter().filter(unfinished).filter(|j| j["remote"]["node_id"] == id).count();
                vec![
                    id.to_string(),
                    n["status"].as_str().unwrap_or("?").to_string(),
                    contract(n),
                    text(&n["os"]).unwrap_or("-").to_string(),
                    ram(n),
                    n["caps_age_s"].as_f64().map_or("-".to_string(), age),
                    in_flight.to_string(),
                    text(&n["reason"]).unwrap_or("").to_string(),
                ]
            })
            .collect();
        out.push_str(&table(&["NODE", "STATUS", "CONTRACT", "OS", "RAM", "CAPS AGE", "JOBS", "REASON"], &rows));
    }
    out.push('\n');
    if jobs.is_empty() {
        out.push_str("no jobs recorded\n");
        return out;
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let state = text(&j["status"]).or_else(|| text(&j["phase"])).unwrap_or("?");
            let place = text(&j["executed_on"]).or_else(|| text(&j["remote"]["node_id"])).unwrap_or("-");
            let age_s = j["submitted_at_ms"].as_u64().map(|t| now_ms.saturating_sub(t) as f64 / 1000.0);
            let given_up: Vec<&str> = j["given_up"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            vec![
                j["key"].as_str().unwrap_or("?").to_string(),
                j["step_name"].as_str().unwrap_or("?").to_string(),
                state.to_string(),
                place.to_string(),
                age_s.map_or("-".to_string(), age),
                if given_up.is_empty() { "-".to_string() } else { given_up.join(", ") },
            ]
        })
        .collect();
    out.push_str(&table(&["JOB (run_id/job_id)", "STEP", "STATE", "WHERE", "AGE", "GIVEN-UP COPIES"], &rows));
    out
}

/// `health` as one line per node. `v` is what `health --json` prints.
pub fn health(v: &Value) -> String {
    let mut out = nodes_header(v);
    let nodes = v["nodes"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !nodes.is_empty() {
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                let detail = match n["status"].as_str() {
                    Some("up") => contract(n),
                    _ => text(&n["reason"]).unwrap_or("").to_string(),
                };
                vec![
                    n["node_id"].as_str().unwrap_or("?").to_string(),
                    n["status"].as_str().unwrap_or("?").to_string(),
                    format!("{}:{}", n["host"].as_str().unwrap_or("?"), n["port"]),
                    detail,
                ]
            })
            .collect();
        out.push_str(&table(&["NODE", "STATUS", "ADDRESS", "CONTRACT / REASON"], &rows));
    }
    if let Some(note) = text(&v["note"]) {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

/// `caps` as a table: one line per node with what it offers, then, per
/// node, the steps it cannot run and why. `v` is what `caps --json` prints.
pub fn caps(v: &Value) -> String {
    let mut out = nodes_header(v);
    let nodes = v["nodes"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !nodes.is_empty() {
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                let c = &n["caps"];
                let gpu = match (text(&c["gpu_model"]), c["vram_gb"].as_f64()) {
                    (Some(m), Some(v)) if v > 0.0 => format!("{m} ({})", gb(v)),
                    (Some(m), _) => m.to_string(),
                    _ => "-".to_string(),
                };
                let steps = c["steps"].as_array().map(|s| s.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "));
                // `caps --json` has the contract inside the caps only.
                let mut with_contract = n.clone();
                if text(&n["contract"]).is_none() {
                    with_contract["contract"] = c["contract"].clone();
                }
                vec![
                    n["node_id"].as_str().unwrap_or("?").to_string(),
                    n["status"].as_str().unwrap_or("?").to_string(),
                    contract(&with_contract),
                    text(&c["os"]).unwrap_or("-").to_string(),
                    c["ram_gb"].as_f64().map_or("-".to_string(), gb),
                    gpu,
                    n["caps_age_s"].as_f64().map_or("-".to_string(), age),
                    steps.filter(|s| !s.is_empty()).unwrap_or_else(|| text(&n["reason"]).unwrap_or("-").to_string()),
                ]
            })
            .collect();
        out.push_str(&table(&["NODE", "STATUS", "CONTRACT", "OS", "RAM", "GPU", "CAPS AGE", "STEPS"], &rows));
        for n in nodes {
            if let Some(missing) = n["caps"]["unavailable_steps"].as_object() {
                for (step, why) in missing {
                    out.push_str(&format!("{}: {step} unavailable: {}\n", n["node_id"].as_str().unwrap_or("?"), why.as_str().unwrap_or("")));
                }
            }
        }
    }
    if let Some(note) = text(&v["note"]) {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

fn gb(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0} GB")
    } else {
        format!("{v:.1} GB")
    }
}

/// The file name of a path, for short listings.
fn file_name(p: &str) -> &str {
    p.rsplit(['/', '\\']).next().unwrap_or(p)
}

/// The verdict lines of a receipt that has a top-level `verdict`: the
/// verdict, then each failing file with its problem codes (from the
/// receipt's `verdict_failures`, else from the AUDIO_POSTCHECK result).
fn verdict_lines(r: &Value) -> Vec<String> {
    let v = &r["verdict"];
    let word = match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "passed".into(),
        Value::Bool(false) => "failed".into(),
        _ => return Vec::new(),
    };
    let mut lines = vec![format!("verdict: {word}")];
    let failures = r["verdict_failures"].as_array().filter(|f| !f.is_empty());
    let files = failures.or(r["result"]["files"].as_array()).map(Vec::as_slice).unwrap_or_default();
    for f in files {
        let problems: Vec<String> = f["problems"]
            .as_array()
            .map(|p| p.iter().map(|p| p["code"].as_str().or(p.as_str()).unwrap_or("?").to_string()).collect())
            .unwrap_or_default();
        if failures.is_some() || f["passed"] == false || !problems.is_empty() {
            // `verdict_failures` entries name the file as `file`; the
            // result's own entries as `path`.
            let name = f["file"].as_str().or(f["path"].as_str()).map(file_name).unwrap_or("?");
            lines.push(format!("  {name}: {}", if problems.is_empty() { "failed".to_string() } else { problems.join(", ") }));
        }
    }
    lines
}

/// A receipt for people: status, where it ran (and why, on a fallback), the
/// verdict, the error, the artifacts and where the receipt is. `r` is the
/// receipt as JSON; `receipt_path` is its file.
pub fn receipt_summary(r: &Value, receipt_path: &std::path::Path) -> String {
    let mut out = format!(
        "{} {}/{} ({}): {}\n",
        "job",
        r["run_id"].as_str().unwrap_or("?"),
        r["job_id"].as_str().unwrap_or("?"),
        r["step_name"].as_str().unwrap_or("?"),
        r["status"].as_str().unwrap_or("?"),
    );
    let place = text(&r["executed_on"]).unwrap_or("nowhere (it did not start)");
    let mut ran = format!("ran on: {place}");
    if r["cached"] == true {
        ran.push_str(" (the worker's existing result for the same inputs)");
    }
    if let Some(mode) = text(&r["compat_mode"]) {
        ran.push_str(&format!(" [compatibility mode {mode}]"));
    }
    out.push_str(&ran);
    out.push('\n');
    if let Some(why) = text(&r["fallback_reason"]) {
        out.push_str(&format!("why: {why}\n"));
    }
    for a in r["attempts"].as_array().map(Vec::as_slice).unwrap_or_default().iter().filter(|a| a["outcome"] == "abandoned") {
        let fate = match text(&a["fate"]).unwrap_or("unknown") {
            "stopped_by_lease" => "stopped by its worker when the lease expired".to_string(),
            "finished_ignored" => format!("finished after all; its result was not used (sha256 {})", text(&a["ignored_result_sha256"]).unwrap_or("?")),
            "never_started" => "never started".to_string(),
            "unknown" => "unknown (its worker did not answer)".to_string(),
            other => other.replace('_', " "),
        };
        out.push_str(&format!("gave up on {}: {}; that copy: {fate}\n", text(&a["executed_on"]).unwrap_or("?"), text(&a["detail"]).unwrap_or("")));
    }
    for line in verdict_lines(r) {
        out.push_str(&line);
        out.push('\n');
    }
    if let Some(code) = text(&r["error"]["code"]) {
        out.push_str(&format!("error: {code}: {}\n", r["error"]["message"].as_str().unwrap_or("")));
    }
    let artifacts = r["artifacts"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !artifacts.is_empty() {
        out.push_str(&format!("artifacts ({}):\n", artifacts.len()));
        for a in artifacts {
            out.push_str(&format!("  {}  {} bytes\n", a["path"].as_str().or(a["name"].as_str()).unwrap_or("?"), a["size"]));
        }
    }
    out.push_str(&format!("receipt: {}\n", receipt_path.display()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ages_read_like_durations() {
        for (s, want) in [(0.4, "0s"), (42.0, "42s"), (303.0, "5m 03s"), (7_800.0, "2h 10m"), (273_600.0, "3d 4h"), (-5.0, "0s")] {
            assert_eq!(age(s), want, "{s}");
        }
    }

    #[test]
    fn status_shows_nodes_and_jobs_as_tables() {
        let v = json!({
            "daemon": {"pid": 4242},
            "nodes": {"nodes_file": "/s/cluster/nodes.json", "nodes_error": null, "nodes": [
                {"node_id": "w1", "status": "up", "contract": "rayvault-worker/1", "compat_mode": null, "os": "windows", "ram_gb": 32.0, "caps_age_s": 2.5, "reason": null},
                {"node_id": "old", "status": "up", "contract": "v0.5", "compat_mode": "legacy_hmac_v05", "os": "linux", "ram_gb": 7.5, "caps_age_s": 75.0, "reason": null},
                {"node_id": "w2", "status": "down", "contract": null, "compat_mode": null, "os": null, "ram_gb": null, "caps_age_s": null, "reason": "unreachable (connection refused)"}
            ]},
            "jobs": [
                {"key": "run/a", "step_name": "FFMPEG_PROBE", "phase": "finished", "status": "succeeded", "executed_on": "w1", "remote": {"node_id": "w1"}, "submitted_at_ms": 1_000, "given_up": ["w2: stopped_by_lease"]},
                {"key": "run/b", "step_name": "FRAME_SAMPLING", "phase": "running", "status": null, "executed_on": null, "remote": {"node_id": "old"}, "submitted_at_ms": 58_000},
                {"key": "run/c", "step_name": "AUDIO_POSTCHECK", "phase": "queued", "status": null, "executed_on": null, "remote": null, "submitted_at_ms": null}
            ]
        });
        let out = status(&v, 61_000);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "daemon: running (pid 4242)");
        assert_eq!(lines[1], "nodes.json: /s/cluster/nodes.json");
        assert_eq!(lines[2], "NODE  STATUS  CONTRACT                OS       RAM     CAPS AGE  JOBS  REASON");
        assert_eq!(lines[3], "w1    up      rayvault-worker/1       windows  32 GB   2s        0");
        assert_eq!(lines[4], "old   up      v0.5 (legacy_hmac_v05)  linux    7.5 GB  1m 15s    1");
        assert_eq!(lines[5], "w2    down    -                       -        -       -         0     unreachable (connection refused)");
        assert_eq!(lines[6], "");
        assert_eq!(lines[7], "JOB (run_id/job_id)  STEP             STATE      WHERE  AGE     GIVEN-UP COPIES");
        assert_eq!(lines[8], "run/a                FFMPEG_PROBE     succeeded  w1     1m 00s  w2: stopped_by_lease");
        assert_eq!(lines[9], "run/b                FRAME_SAMPLING   running    old    3s      -");
        assert_eq!(lines[10], "run/c                AUDIO_POSTCHECK  queued     -      -       -");
    }

    #[test]
    fn status_without_daemon_nodes_or_jobs_says_so() {
        let v = json!({"daemon": null, "jobs": [], "nodes": {"nodes_file": "/n.json", "nodes_error": "line 3: nodes[0].port: expected u16", "nodes": []}});
        let out = status(&v, 0);
        assert!(out.starts_with("daemon: not running"), "{out}");
        assert!(out.contains("nodes.json problem (the last good list is used): line 3: nodes[0].port"), "{out}");
        assert!(out.contains("no nodes configured"), "{out}");
        assert!(out.ends_with("no jobs recorded\n"), "{out}");
    }

    #[test]
    fn health_is_one_line_per_node() {
        let v = json!({"nodes_file": "/n.json", "note": null, "nodes": [
            {"node_id": "w1", "host": "127.0.0.1", "port": 8787, "status": "up", "contract": "rayvault-worker/1", "compat_mode": null, "reason": null},
            {"node_id": "w2", "host": "100.64.0.2", "port": 8787, "status": "disabled", "contract": null, "compat_mode": null, "reason": "disabled in nodes.json"}
        ]});
        assert_eq!(
            health(&v),
            "nodes.json: /n.json\n\
             NODE  STATUS    ADDRESS          CONTRACT / REASON\n\
             w1    up        127.0.0.1:8787   rayvault-worker/1\n\
             w2    disabled  100.64.0.2:8787  disabled in nodes.json\n"
        );
        let none = json!({"nodes_file": "/n.json", "note": "no enabled node", "nodes": []});
        assert_eq!(health(&none), "nodes.json: /n.json\nnote: no enabled node\n");
    }

    #[test]
    fn caps_is_a_table_with_unavailable_steps_below() {
        let v = json!({"nodes_file": "/n.json", "note": null, "nodes": [
            {"node_id": "w1", "status": "up", "contract": "rayvault-worker/1", "compat_mode": null, "caps_age_s": 3.0, "reason": null,
             "caps": {"os": "windows", "ram_gb": 32.0, "gpu_model": "RTX 3060", "vram_gb": 12.0, "steps": ["FFMPEG_PROBE", "AUDIO_POSTCHECK"],
                      "unavailable_steps": {"OPENCLAW_TASK": "no desktop session"}}},
            {"node_id": "w2", "status": "down", "contract": null, "compat_mode": null, "caps_age_s": null, "reason": "unreachable (connection refused)", "caps": null}
        ]});
        let out = caps(&v);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "nodes.json: /n.json");
        assert_eq!(lines[1], "NODE  STATUS  CONTRACT           OS       RAM    GPU               CAPS AGE  STEPS");
        assert_eq!(lines[2], "w1    up      rayvault-worker/1  windows  32 GB  RTX 3060 (12 GB)  3s        FFMPEG_PROBE, AUDIO_POSTCHECK");
        assert_eq!(lines[3], "w2    down    -                  -        -      -                 -         unreachable (connection refused)");
        assert_eq!(lines[4], "w1: OPENCLAW_TASK unavailable: no desktop session");
    }

    #[test]
    fn a_receipt_summary_says_what_where_why_and_the_verdict() {
        let r = json!({"run_id": "r", "job_id": "qc", "step_name": "AUDIO_POSTCHECK", "status": "failed", "executed_on": "local",
            "fallback_reason": "windows-worker-1 unreachable (connection refused)", "cached": false, "compat_mode": null,
            "verdict": "failed", "verdict_failures": [{"file": "/a/chunk_0002.wav", "problems": [{"code": "LOUDNESS_OUT_OF_RANGE"}, {"code": "CLIPPING"}]}],
            "error": {"code": "QC_FAILED", "message": "1 of 2 files failed"},
            "result": {"passed": false, "files": [
                {"path": "/a/chunk_0001.wav", "passed": true, "problems": []},
                {"path": "/a/chunk_0002.wav", "passed": false, "problems": [{"code": "LOUDNESS_OUT_OF_RANGE"}, {"code": "CLIPPING"}]}]},
            "artifacts": [{"name": "postcheck_report.json", "size": 812, "path": "/s/r/qc/postcheck_report.json"}]});
        let out = receipt_summary(&r, std::path::Path::new("/s/r/qc/job_receipt.json"));
        assert_eq!(
            out,
            "job r/qc (AUDIO_POSTCHECK): failed\n\
             ran on: local\n\
             why: windows-worker-1 unreachable (connection refused)\n\
             verdict: failed\n\
             \x20 chunk_0002.wav: LOUDNESS_OUT_OF_RANGE, CLIPPING\n\
             error: QC_FAILED: 1 of 2 files failed\n\
             artifacts (1):\n\
             \x20 /s/r/qc/postcheck_report.json  812 bytes\n\
             receipt: /s/r/qc/job_receipt.json\n"
        );
        let ok = json!({"run_id": "r", "job_id": "p", "step_name": "FFMPEG_PROBE", "status": "succeeded", "executed_on": "w1", "fallback_reason": null, "cached": true, "artifacts": [],
            "attempts": [{"executed_on": "w9", "outcome": "abandoned", "detail": "went silent mid-job", "fate": "stopped_by_lease"}, {"executed_on": "w1", "outcome": "succeeded"}]});
        let out = receipt_summary(&ok, std::path::Path::new("/x"));
        assert!(out.contains("ran on: w1 (the worker's existing result") && !out.contains("why:") && !out.contains("verdict"), "{out}");
        assert!(out.contains("gave up on w9: went silent mid-job; that copy: stopped by its worker when the lease expired"), "{out}");
    }
}
