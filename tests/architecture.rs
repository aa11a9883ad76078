//! Checks the architecture invariants that a grep can check.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Core modules (everything in `src/` but `lib.rs` and the binaries) never
/// depend on the actors: the direction is core <- actors <- binaries.
#[test]
fn core_does_not_depend_on_actors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let offenders: Vec<_> = files
        .iter()
        .filter(|p| !p.ends_with("src/lib.rs") && !p.starts_with(root.join("src/bin")))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            text.contains("crate::actors") || text.contains("rayvault::actors")
        })
        .collect();
    assert!(offenders.is_empty(), "core modules that use actors: {offenders:?}");
}

/// Only `src/process.rs` starts child processes.
#[test]
fn only_process_module_spawns_children() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("actors"), &mut files);
    let offenders: Vec<_> = files
        .iter()
        .filter(|p| !p.ends_with("src/process.rs"))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            text.contains("process::Command") || text.contains("Command::new(")
        })
        .collect();
    assert!(offenders.is_empty(), "files that start processes directly: {offenders:?}");
}

/// Every stable error code, and every exit code of `submit`, is documented
/// where a user looks for it (docs/protocol.md or docs/steps.md).
#[test]
fn every_code_and_exit_code_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = ["docs/protocol.md", "docs/steps.md"].map(|d| std::fs::read_to_string(root.join(d)).unwrap()).join("\n");
    let missing: Vec<&str> =
        rayvault::error::ErrorCode::ALL.iter().map(|c| c.as_str()).filter(|c| !docs.contains(&format!("`{c}`"))).collect();
    assert!(missing.is_empty(), "codes missing from the docs: {missing:?}");
    for exit in ["| 0 |", "| 1 |", "| 2 |", "| 3 |"] {
        assert!(docs.contains(exit), "exit code row {exit} missing from docs/steps.md");
    }
}
