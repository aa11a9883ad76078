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

/// Only `src/process.rs` and its submodules in `src/process/` start child
/// processes.
#[test]
fn only_process_module_spawns_children() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("actors"), &mut files);
    let offenders: Vec<_> = files
        .iter()
        .filter(|p| !p.ends_with("src/process.rs") && !p.starts_with(root.join("src/process")))
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

/// A token of Rust source, as far as module paths need: identifiers
/// (keywords included), `::`, and single punctuation characters. Comments,
/// string and character literals are skipped.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

fn tokens(text: &str) -> Vec<Tok> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            i += 2;
            while i + 1 < c.len() && !(c[i] == '*' && c[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if ch == 'r' && (next == Some('"') || (next == Some('#') && matches!(c.get(i + 2), Some('"') | Some('#')))) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            j += 1;
            while j < c.len() && !(c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#'))) {
                j += 1;
            }
            i = j + 1 + hashes;
        } else if ch == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if ch == '\'' {
            // A character literal ('x', '\n', '{'); otherwise a lifetime.
            if c.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else if ch == ':' && next == Some(':') {
            out.push(Tok::PathSep);
            i += 2;
        } else {
            if !ch.is_whitespace() {
                out.push(Tok::Punct(ch));
            }
            i += 1;
        }
    }
    out
}

/// The module path of a file of the `actors` tree or of `src/`, from the
/// crate root: `actors/job_runner/remote.rs` is `actors::job_runner::remote`,
/// `src/client/mod.rs` is `client`.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let (base, mut path) = match file.strip_prefix(root.join("actors")) {
        Ok(rel) => (vec!["actors".to_string()], rel.to_path_buf()),
        Err(_) => (Vec::new(), file.strip_prefix(root.join("src")).unwrap().to_path_buf()),
    };
    if path.file_name().is_some_and(|n| n == "mod.rs") {
        path.pop();
    } else {
        path.set_extension("");
    }
    base.into_iter().chain(path.iter().map(|s| s.to_string_lossy().into_owned())).collect()
}

/// Every module path the file names, resolved from the crate root:
/// `crate::a::b`, `super::...` chains (from the file's module, and from
/// inside inline modules such as `mod tests`), `self::...`, and each item
/// of a `{...}` group (`use super::super::{messages::X, scheduler::Y}`).
/// A path's segments stop at the first non-identifier; a glob is `*`.
fn references(module: &[String], text: &str) -> Vec<Vec<String>> {
    let toks = tokens(text);
    let mut out = Vec::new();
    // Inline modules: (name, brace depth inside them).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(k) if k == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Punct('{'))) = (toks.get(i + 1), toks.get(i + 2)) {
                    inline.push((name.clone(), depth + 1));
                }
            }
            Tok::Ident(k) if (k == "crate" || k == "super" || k == "self") && !(i > 0 && toks[i - 1] == Tok::PathSep) => {
                let mut here: Vec<String> = module.iter().cloned().chain(inline.iter().map(|(n, _)| n.clone())).collect();
                let mut j = i;
                match k.as_str() {
                    "crate" => {
                        here.clear();
                        j += 1;
                    }
                    "self" => j += 1,
                    _ => {
                        while toks.get(j) == Some(&Tok::Ident("super".into())) {
                            here.pop();
                            j += 1;
                            if toks.get(j) == Some(&Tok::PathSep) && toks.get(j + 1) == Some(&Tok::Ident("super".into())) {
                                j += 1;
                            }
                        }
                    }
                }
                if toks.get(j) == Some(&Tok::PathSep) {
                    path_from(&toks, j + 1, here, &mut out);
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Follows a path from `toks[j]` (just after a `::`), pushing every
/// resolved path: groups fan out.
fn path_from(toks: &[Tok], mut j: usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        match toks.get(j) {
            Some(Tok::Ident(s)) => {
                prefix.push(s.clone());
                if toks.get(j + 1) == Some(&Tok::PathSep) {
                    j += 2;
                } else {
                    out.push(prefix);
                    return;
                }
            }
            Some(Tok::Punct('*')) => {
                prefix.push("*".into());
                out.push(prefix);
                return;
            }
            Some(Tok::Punct('{')) => {
                // Each item of the group starts after `{` or a top-level `,`.
                let mut level = 0;
                let mut k = j;
                let mut starts = vec![j + 1];
                while k < toks.len() {
                    match toks[k] {
                        Tok::Punct('{') => level += 1,
                        Tok::Punct('}') => {
                            level -= 1;
                            if level == 0 {
                                break;
                            }
                        }
                        Tok::Punct(',') if level == 1 => starts.push(k + 1),
                        _ => {}
                    }
                    k += 1;
                }
                for s in starts {
                    if toks.get(s) == Some(&Tok::Ident("self".into())) {
                        out.push(prefix.clone());
                    } else if !matches!(toks.get(s), Some(Tok::Punct('}')) | None) {
                        path_from(toks, s, prefix.clone(), out);
                    }
                }
                return;
            }
            _ => {
                out.push(prefix);
                return;
            }
        }
    }
}

/// Modules under `actors/` that are not controller actors, and may be used
/// by any actor:
/// - `messages`: the messages and plain data the actors share; this is the
///   one way actors know of each other.
/// - `crash_guard`: the helpers that catch a panic in an actor's work and
///   stop the actor (no actor of its own).
const SHARED_ACTOR_MODULES: [&str; 2] = ["messages", "crash_guard"];

/// Files under `actors/` that may name other actors:
/// - `supervisor`: the ControllerSupervisor is the composition root; it
///   starts every actor and hands each the addresses of the others.
/// - `executor`: the worker's per-step executors, not a controller actor.
/// - `mod.rs`: the module list itself.
const ACTOR_CHECK_EXEMPT: [&str; 3] = ["supervisor", "executor", "mod"];

/// The references from one actor file (`module`, e.g. `actors::job_runner::
/// remote`) to another actor's module.
fn actor_offences(module: &[String], text: &str) -> Vec<String> {
    let Some(own) = module.get(1).filter(|m| !ACTOR_CHECK_EXEMPT.contains(&m.as_str())) else { return Vec::new() };
    if module.len() == 1 {
        return Vec::new();
    }
    references(module, text)
        .into_iter()
        .filter(|p| p.first().is_some_and(|s| s == "actors"))
        .filter(|p| match p.get(1) {
            None => true,
            Some(t) => t == "*" || (t != own && !SHARED_ACTOR_MODULES.contains(&t.as_str())),
        })
        .map(|p| p.join("::"))
        .collect()
}

/// The references from a client file to the actors.
fn client_offences(module: &[String], text: &str) -> Vec<String> {
    let mut found: Vec<String> =
        references(module, text).into_iter().filter(|p| p.first().is_some_and(|s| s == "actors")).map(|p| p.join("::")).collect();
    if text.contains("rayvault::actors") {
        found.push("rayvault::actors".into());
    }
    found
}

fn offences_under(dir: &str, check: fn(&[String], &str) -> Vec<String>) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join(dir), &mut files);
    assert!(!files.is_empty(), "no Rust files under {dir}");
    files
        .iter()
        .flat_map(|f| {
            let module = module_of(root, f);
            let text = std::fs::read_to_string(f).unwrap();
            check(&module, &text).into_iter().map(move |o| format!("{}: {o}", f.strip_prefix(root).unwrap().display()))
        })
        .collect()
}

/// The controller's actors know each other only through `actors/messages.rs`:
/// no actor file names another actor's module (see
/// [`SHARED_ACTOR_MODULES`] and [`ACTOR_CHECK_EXEMPT`] for the exceptions).
#[test]
fn actors_import_each_other_only_through_messages() {
    let offences = offences_under("actors", actor_offences);
    assert!(offences.is_empty(), "actor files naming another actor (move the shared type to actors/messages.rs or to core): {offences:#?}");
}

/// The client layer is core: nothing under `src/client/` names the actors,
/// so there can be no cycle between the client and the actors.
#[test]
fn the_client_never_refers_to_the_actors() {
    let offences = offences_under("src/client", client_offences);
    assert!(offences.is_empty(), "client files naming the actors: {offences:#?}");
}

/// The checks above see every form a reference takes, so each can fail.
#[test]
fn the_import_checks_catch_every_path_form() {
    let remote = ["actors", "job_runner", "remote"].map(String::from);
    let probe = ["actors", "node_probe"].map(String::from);
    for bad in [
        "use super::super::scheduler::NodeLoad;",
        "use crate::actors::artifact_sync::SyncArtifacts;",
        "use super::super::{messages::Stop, node_probe::NodeDirectory};",
        "use super::super::{\n    messages::Stop,\n    local_runner::RunLocal,\n};",
        "fn f() { let _ = super::super::artifact_sync::SyncError::other(\"x\"); }",
        "use super::super::*;",
    ] {
        assert!(!actor_offences(&remote, bad).is_empty(), "not caught: {bad}");
    }
    assert!(!actor_offences(&probe, "use super::job_runner::remote::probe;").is_empty());
    for fine in [
        "use super::super::messages::{NodeLoad, Stop};",
        "use super::staging::Staged;\nuse super::{Ending, JobDeps};",
        "use crate::actors::crash_guard::catch;\nuse crate::client::NodeClient;",
        "// use super::super::scheduler::NodeLoad;\nlet s = \"super::super::scheduler\";",
        "#[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::liveness;\n}",
    ] {
        assert_eq!(actor_offences(&remote, fine), Vec::<String>::new(), "wrongly caught: {fine}");
    }
    let client = ["client", "node"].map(String::from);
    assert!(!client_offences(&client, "use crate::actors::messages::Compat;").is_empty());
    assert!(!client_offences(&client, "use super::super::actors::messages::Compat;").is_empty());
    assert!(client_offences(&client, "use super::super::nodes::NodeHandle;\nuse super::CallError;").is_empty());
}
