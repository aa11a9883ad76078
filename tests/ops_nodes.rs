//! `rayvault-orchestrator init` and `nodes ...` as real processes on real
//! files: edits keep comments and unknown keys in place, refusals exit 2
//! with a message saying what to change, and `init` shows the secret once
//! and writes it nowhere.

mod controller_support;

use controller_support::*;
use serde_json::Value;
use std::process::Command;

fn run(c: &mut Command) -> (i32, String, String) {
    let out = c.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn nodes(w: &World, args: &[&str]) -> (i32, String, String) {
    run(w.orch().arg("nodes").args(args))
}

/// A nodes.json as an operator writes it, with comments and a key of their
/// own, in the layout `nodes` writes (two-space indentation).
const HAND_WRITTEN: &str = r#"{
  "_comment": "the studio's workers; see docs/operations.md",
  "nodes": [
    {
      "_note": "the gaming PC upstairs",
      "node_id": "windows-worker-1",
      "host": "100.64.0.10",
      "port": 8787,
      "enabled": false
    }
  ],
  "owner": {
    "name": "ray",
    "since": 2024
  }
}
"#;

#[test]
fn nodes_edits_round_trip_and_keep_unknown_fields() {
    let w = World::bare();
    let path = w.cluster().join("nodes.json");
    std::fs::create_dir_all(w.cluster()).unwrap();
    std::fs::write(&path, HAND_WRITTEN).unwrap();

    let (code, out, err) = nodes(&w, &["add", "w2", "127.0.0.1:9001"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("added w2 at 127.0.0.1:9001 (enabled)"), "{out}");
    assert!(err.is_empty(), "loopback needs no warning: {err}");
    for args in [["enable", "windows-worker-1"], ["drain", "windows-worker-1"], ["disable", "w2"]] {
        let (code, _, err) = nodes(&w, &args);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let at = |k: &str| text.find(k).unwrap_or_else(|| panic!("{k} missing:\n{text}"));
    assert!(at("_comment") < at("_note") && at("_note") < at("\"drain\": true") && at("\"drain\": true") < at("\"w2\"") && at("\"w2\"") < at("\"owner\""), "{text}");

    let (code, out, err) = nodes(&w, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["nodes"][0]["enabled"], true, "{v}");
    assert_eq!(v["nodes"][0]["drain"], true, "{v}");
    assert_eq!(v["nodes"][1]["node_id"], "w2");
    assert_eq!(v["nodes"][1]["enabled"], false);
    let (_, table, _) = nodes(&w, &["list"]);
    assert!(table.contains("windows-worker-1  100.64.0.10:8787  draining"), "{table}");
    assert!(table.contains("w2                127.0.0.1:9001    disabled"), "{table}");

    // Undoing every edit gives the operator's file back, byte for byte.
    for args in [["undrain", "windows-worker-1"], ["disable", "windows-worker-1"], ["remove", "w2"]] {
        let (code, _, err) = nodes(&w, &args);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), HAND_WRITTEN);
    // Repeating a switch says so and changes nothing.
    let (code, out, _) = nodes(&w, &["disable", "windows-worker-1"]);
    assert_eq!(code, 0);
    assert!(out.contains("was already disabled"), "{out}");
    assert!(!w.cluster().read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains("tmp")), "no temporary file is left behind");
}

#[test]
fn nodes_refusals_exit_2_and_change_nothing() {
    let w = World::bare();
    let path = w.cluster().join("nodes.json");
    std::fs::create_dir_all(w.cluster()).unwrap();
    std::fs::write(&path, HAND_WRITTEN).unwrap();
    let check = |args: &[&str], expected: &[&str]| {
        let (code, out, err) = nodes(&w, args);
        assert_eq!(code, 2, "{args:?} should be refused: {out}{err}");
        for e in expected {
            assert!(err.contains(e), "{args:?}: {err:?} should contain {e:?}");
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), HAND_WRITTEN, "{args:?} changed the file");
    };
    check(&["add", "windows-worker-1", "127.0.0.1"], &["already in nodes.json", "nodes remove windows-worker-1"]);
    check(&["add", "--", "-w3", "127.0.0.1"], &["bad node id"]);
    check(&["add", "w 3", "127.0.0.1"], &["bad node id"]);
    check(&["add", &"w".repeat(65), "127.0.0.1"], &["bad node id", "1 to 64"]);
    check(&["add", "w3", "127.0.0.1:0"], &["bad port", "1 to 65535"]);
    check(&["add", "w3", "127.0.0.1:99999"], &["bad port"]);
    check(&["add", "w3", "not_a_host!"], &["bad host", "tailscale ip -4"]);
    check(&["add", "w3", "300.1.2.3"], &["bad host"]);
    check(&["drain", "nope"], &["no node \"nope\"", "windows-worker-1"]);
    check(&["remove", "nope"], &["no node \"nope\""]);

    // A malformed file is reported with its line, and left alone.
    let broken = "{\"nodes\": [\n  {\"node_id\": \"a\", \"host\": \"h\", \"port\": \"x\"}\n]}\n";
    std::fs::write(&path, broken).unwrap();
    let (code, _, err) = nodes(&w, &["add", "w3", "127.0.0.1"]);
    assert_eq!(code, 2);
    assert!(err.contains("line 2") && err.contains("nodes[0].port") && err.contains("nothing was changed"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);
}

#[test]
fn nodes_add_creates_the_file_and_warns_outside_loopback_and_tailnet() {
    let w = World::bare();
    let path = w.cluster().join("nodes.json");
    let (code, out, _) = nodes(&w, &["list"]);
    assert_eq!(code, 0);
    assert!(out.contains("no nodes.json at"), "{out}");
    let (code, _, err) = nodes(&w, &["add", "lan-box", "192.168.1.20:8787"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning") && err.contains("neither loopback nor a Tailscale address"), "{err}");
    let (code, _, err) = nodes(&w, &["add", "ts-box", "100.101.1.2", "--disabled"]);
    assert_eq!(code, 0);
    assert!(err.is_empty(), "a Tailscale address needs no warning: {err}");
    let (code, _, err) = nodes(&w, &["add", "v6", "[fd7a:115c:a1e0::5]:9000"]);
    assert_eq!(code, 0, "{err}");
    let list = rayvault::nodes::load(&path).unwrap().unwrap();
    let got: Vec<(&str, &str, u16, bool)> = list.iter().map(|n| (n.node_id.as_str(), n.host.as_str(), n.port, n.enabled)).collect();
    assert_eq!(got, vec![("lan-box", "192.168.1.20", 8787, true), ("ts-box", "100.101.1.2", 8787, false), ("v6", "fd7a:115c:a1e0::5", 9000, true)]);
}

/// Every run of 64 hex digits in `text`.
fn hex64(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_hexdigit()).filter(|t| t.len() == 64).map(str::to_string).collect()
}

/// True when some file under `dir` contains `needle`.
fn any_file_contains(dir: &std::path::Path, needle: &str) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            any_file_contains(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
        }
    })
}

#[test]
fn init_prints_a_new_secret_once_and_writes_it_nowhere() {
    let w = World::bare();
    let (code, out, err) = run(w.orch().args(["init", "--worker-host", "100.64.0.7", "--worker-id", "gaming-pc"]));
    assert_eq!(code, 0, "{err}");
    let secrets = hex64(&out);
    assert_eq!(secrets.len(), 1, "one secret, printed once: {out}");
    let secret = &secrets[0];
    assert!(!any_file_contains(w.dir.path(), secret), "the secret was written to a file");
    assert!(!err.contains(secret.as_str()), "the secret reached stderr: {err}");
    for want in [
        "read -rs RAYVAULT_CLUSTER_SECRET",
        "[Environment]::SetEnvironmentVariable('RAYVAULT_CLUSTER_SECRET'",
        "'User')",
        "./scripts/start_worker.ps1 -Host 100.64.0.7 -Port 8787",
        "rayvault-worker service install --host 100.64.0.7 --port 8787",
        "[Environment]::SetEnvironmentVariable('RAYVAULT_WORKER_ID', 'gaming-pc', 'User')",
        "rayvault-orchestrator nodes add gaming-pc 100.64.0.7:8787",
    ] {
        assert!(out.contains(want), "init should print {want:?}:\n{out}");
    }
    let path = w.cluster().join("nodes.json");
    assert!(out.contains(&format!("Created {}", path.display())), "{out}");
    assert_eq!(rayvault::nodes::load(&path).unwrap(), Some(Vec::new()));

    // Each run makes a new secret; an existing nodes.json is left alone.
    std::fs::write(&path, HAND_WRITTEN).unwrap();
    let (code, again, _) = run(w.orch().arg("init"));
    assert_eq!(code, 0);
    let second = hex64(&again);
    assert_eq!(second.len(), 1, "{again}");
    assert_ne!(&second[0], secret);
    assert!(again.contains("already exists (1 node(s)); left as it is"), "{again}");
    assert!(again.contains("-Host 100.x.y.z") && again.contains("tailscale ip -4"), "{again}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), HAND_WRITTEN);
}

#[test]
fn init_keeps_a_secret_already_set_unless_asked() {
    let w = World::new();
    let (code, out, err) = run(w.orch().arg("init"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("already set in this environment") && out.contains("--new-secret"), "{out}");
    assert!(hex64(&out).is_empty(), "no new secret: {out}");
    assert!(!out.contains(SECRET), "the secret set is not echoed: {out}");
    let (code, out, _) = run(w.orch().args(["init", "--new-secret"]));
    assert_eq!(code, 0);
    assert_eq!(hex64(&out).len(), 1, "{out}");
    let (code, _, err) = run(w.orch().args(["init", "--worker-id", "bad id"]));
    assert_eq!(code, 2);
    assert!(err.contains("bad node id"), "{err}");
}
