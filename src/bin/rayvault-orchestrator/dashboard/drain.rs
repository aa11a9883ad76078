//! The dashboard's drain button: sets `"drain": true` for a node in
//! `nodes.json`. The daemon notices the edit within a second (NodeProbe
//! re-reads the file when it changes).

use std::path::Path;
use std::sync::Mutex;

/// Serialises the read-modify-write of nodes.json within this daemon.
static EDIT: Mutex<()> = Mutex::new(());

/// Why nodes.json could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("no node {0} in nodes.json")]
    UnknownNode(String),
    /// The file is missing, malformed, or cannot be written; the message
    /// names the file and what to fix.
    #[error("{0}")]
    NodesFile(String),
}

/// Sets `"drain": drain` for `node_id` in the nodes.json at `path`, keeping
/// the other nodes and fields, and writes the file atomically. The file is
/// checked (see `rayvault::nodes::parse`) before and after the change.
/// Blocking.
pub fn set_drain(path: &Path, node_id: &str, drain: bool) -> Result<(), DrainError> {
    let _guard = EDIT.lock().unwrap_or_else(|p| p.into_inner());
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| DrainError::NodesFile(format!("{shown} cannot be read: {e}")))?;
    rayvault::nodes::parse(&text).map_err(|e| DrainError::NodesFile(format!("{shown}: {e}")))?;
    let mut root: serde_json::Value = serde_json::from_str(&text).map_err(|e| DrainError::NodesFile(format!("{shown}: {e}")))?;
    let node = root["nodes"]
        .as_array_mut()
        .and_then(|nodes| nodes.iter_mut().find(|n| n["node_id"].as_str().map(str::trim) == Some(node_id)))
        .ok_or_else(|| DrainError::UnknownNode(node_id.to_string()))?;
    node["drain"] = serde_json::Value::Bool(drain);
    let mut out = serde_json::to_string_pretty(&root).map_err(|e| DrainError::NodesFile(e.to_string()))?;
    out.push('\n');
    rayvault::nodes::parse(&out).map_err(|e| DrainError::NodesFile(format!("{shown}: {e}")))?;
    rayvault::artifacts::write_atomic(path, out.as_bytes()).map_err(|e| DrainError::NodesFile(format!("{shown} cannot be written: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_sets_the_flag_of_one_node_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.json");
        std::fs::write(&path, r#"{"nodes": [{"node_id": "w1", "host": "127.0.0.1", "port": 8787, "enabled": true}, {"node_id": "w2", "host": "127.0.0.1", "port": 8790, "enabled": false}]}"#).unwrap();
        set_drain(&path, "w2", true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["nodes"][1]["drain"], true);
        assert_eq!(v["nodes"][1]["enabled"], false);
        assert!(v["nodes"][0].get("drain").is_none());
        assert_eq!(rayvault::nodes::parse(&std::fs::read_to_string(&path).unwrap()).unwrap().len(), 2);
        assert!(matches!(set_drain(&path, "w3", true), Err(DrainError::UnknownNode(_))));
    }

    #[test]
    fn a_malformed_or_missing_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.json");
        assert!(matches!(set_drain(&path, "w1", true), Err(DrainError::NodesFile(_))));
        std::fs::write(&path, "{\"nodes\": [").unwrap();
        assert!(matches!(set_drain(&path, "w1", true), Err(DrainError::NodesFile(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"nodes\": [");
    }
}
