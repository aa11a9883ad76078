//! `nodes.json`: the controller's list of workers.
//!
//! The file lives at `$RAYVAULT_STATE_DIR/cluster/nodes.json` and has the
//! documented shape: `{"nodes": [{"node_id", "host", "port", "enabled"}]}`,
//! plus an optional `"drain": true` per node (no new jobs go there; see
//! docs/operations.md). Keys starting with `_` (`"_comment"`) are comments,
//! kept untouched by `rayvault-orchestrator nodes`, which edits the file
//! through [`edit`].
//! A missing file is not an error: it means "no workers", so every step runs
//! locally and zero configuration works. A malformed file is an error whose
//! message names the line and the field to fix.

use serde_json::Value;
use std::path::{Path, PathBuf};

pub mod edit;
pub mod handle;

pub use handle::{Compat, NodeCaps, NodeHandle, StepSet};

/// One worker as configured by the operator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeConfig {
    pub node_id: String,
    pub host: String,
    pub port: u16,
    pub enabled: bool,
    /// `"drain": true`: the scheduler places no new job on the node, and
    /// the jobs already running there finish.
    #[serde(default)]
    pub drain: bool,
}

impl NodeConfig {
    /// `http://host:port`, with IPv6 literals bracketed.
    pub fn base_url(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

/// A `nodes.json` that could not be used, with where and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct NodesError {
    pub path: String,
    pub message: String,
}

/// `$state_dir/cluster/nodes.json`.
pub fn nodes_path(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("nodes.json")
}

/// What to say when `path` (the nodes.json looked for) does not exist.
pub fn missing_note(path: &Path) -> String {
    format!(
        "no nodes.json at {}: every step runs locally on this controller; list your workers there \
         ({{\"nodes\": [{{\"node_id\": ..., \"host\": ..., \"port\": 8787, \"enabled\": true}}]}})",
        path.display()
    )
}

/// Reads `path`. `Ok(None)` when the file does not exist.
pub fn load(path: &Path) -> Result<Option<Vec<NodeConfig>>, NodesError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(NodesError { path: path.display().to_string(), message: format!("cannot be read: {e}") })
        }
    };
    parse(&text)
        .map(Some)
        .map_err(|message| NodesError { path: path.display().to_string(), message })
}

/// Parses the text of a `nodes.json`; the error names the line and field.
pub fn parse(text: &str) -> Result<Vec<NodeConfig>, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| {
        format!("line {} column {}: not valid JSON ({e}); fix the syntax there", e.line(), e.column())
    })?;
    let nodes = root
        .get("nodes")
        .ok_or_else(|| "line 1: field \"nodes\" is missing; the file must be {\"nodes\": [...]}".to_string())?
        .as_array()
        .ok_or_else(|| format!("line {}: field \"nodes\" must be a list", line_of(text, "\"nodes\"", 0)))?;
    let mut out: Vec<NodeConfig> = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let cfg = parse_node(text, i, node)?;
        if out.iter().any(|n| n.node_id == cfg.node_id) {
            return Err(format!(
                "line {}: nodes[{i}].node_id {:?} is used twice; node ids must be unique",
                line_of(text, "\"node_id\"", i),
                cfg.node_id
            ));
        }
        out.push(cfg);
    }
    Ok(out)
}

fn parse_node(text: &str, i: usize, node: &Value) -> Result<NodeConfig, String> {
    let obj = node.as_object().ok_or_else(|| format!("nodes[{i}] must be an object with node_id, host, port, enabled"))?;
    // Each field error reports the line of that field within the i-th node
    // (or of the node's first field when the field is missing).
    let field_err = |field: &str, what: &str| {
        let line = if obj.contains_key(field) {
            line_of(text, &format!("\"{field}\""), i)
        } else {
            line_of(text, "\"node_id\"", i)
        };
        format!("line {line}: nodes[{i}].{field} {what}")
    };
    for key in obj.keys() {
        // A key starting with `_` is a comment; any other unknown key is
        // most likely a typo, which must not silently change nothing.
        if !matches!(key.as_str(), "node_id" | "host" | "port" | "enabled" | "drain") && !key.starts_with('_') {
            return Err(field_err(key, "is not a known field; use node_id, host, port, enabled, drain (or a \"_comment\" key)"));
        }
    }
    let string_field = |field: &str| -> Result<String, String> {
        match obj.get(field) {
            None => Err(field_err(field, "is missing")),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Some(_) => Err(field_err(field, "must be a non-empty string")),
        }
    };
    let node_id = string_field("node_id")?;
    let host = string_field("host")?;
    let port = match obj.get("port") {
        None => return Err(field_err("port", "is missing")),
        Some(v) => match v.as_u64() {
            Some(p) if (1..=65535).contains(&p) => p as u16,
            _ => return Err(field_err("port", "must be a whole number from 1 to 65535")),
        },
    };
    let enabled = match obj.get("enabled") {
        // A node without "enabled" is taken as disabled: the operator turns
        // a worker on deliberately, as the README's setup steps describe.
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(field_err("enabled", "must be true or false")),
    };
    let drain = match obj.get("drain") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(field_err("drain", "must be true or false")),
    };
    Ok(NodeConfig { node_id, host, port, enabled, drain })
}

/// The 1-based line of the `nth` (0-based) occurrence of `needle`, or of the
/// last occurrence when there are fewer (good enough to point at the node).
fn line_of(text: &str, needle: &str, nth: usize) -> usize {
    let mut found = None;
    for (k, (pos, _)) in text.match_indices(needle).enumerate() {
        found = Some(pos);
        if k == nth {
            break;
        }
    }
    found.map(|pos| text[..pos].matches('\n').count() + 1).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shape() {
        let nodes = parse(r#"{"nodes":[{"node_id":"w1","host":"127.0.0.1","port":8787,"enabled":true}]}"#).unwrap();
        assert_eq!(nodes[0].base_url(), "http://127.0.0.1:8787");
        assert!(nodes[0].enabled);
    }

    fn check_err(text: &str, expected: &[&str]) {
        let err = parse(text).unwrap_err();
        for e in expected {
            assert!(err.contains(e), "{err:?} should contain {e:?}");
        }
    }

    #[test]
    fn errors_name_line_and_field() {
        check_err("{\"nodes\": [\n {\"node_id\": \"a\",\n \"host\": \"h\",\n \"port\": \"x\", \"enabled\": true}]}", &["line 4", "nodes[0].port"]);
        check_err("{\"nodes\": [\n {\"node_id\": \"a\", \"host\": \"h\", \"port\": 1},\n {\"node_id\": \"b\",\n \"host\": 3, \"port\": 2}]}", &["line 4", "nodes[1].host"]);
        check_err("{\"nodes\": [\n {\"node_id\": \"a\"\n \"host\": \"h\"}]}", &["line 3", "not valid JSON"]);
        check_err("{\"nodes\": [{\"node_id\": \"a\", \"host\": \"h\", \"port\": 1, \"enabeld\": true}]}", &["nodes[0].enabeld", "not a known field"]);
        check_err("{\"nodes\": [{\"node_id\": \"a\", \"host\": \"h\"}]}", &["nodes[0].port is missing"]);
        check_err("{\"nodes\": [\n{\"node_id\": \"a\", \"host\": \"h\", \"port\": 1},\n{\"node_id\": \"a\", \"host\": \"h\", \"port\": 2}]}", &["line 3", "used twice"]);
        check_err("{}", &["\"nodes\" is missing"]);
    }

    #[test]
    fn missing_file_means_no_nodes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(&dir.path().join("nodes.json")).unwrap(), None);
    }
}
