//! The dashboard's drain button: sets `"drain": true` for a node in
//! `nodes.json` with the same edit as `rayvault-orchestrator nodes drain`
//! (`rayvault::nodes::edit`: checked, atomic, serialised by a lock file).
//! The daemon notices the edit within a second (NodeProbe re-reads the file
//! when it changes).

use rayvault::nodes::edit::{self, EditError};
use std::path::Path;

/// Why nodes.json was not changed.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("no node {0} in nodes.json")]
    UnknownNode(String),
    /// The edit was refused (another edit holds the file, ...): the
    /// message says what to do.
    #[error("{0}")]
    Refused(String),
    /// The file is malformed or cannot be read or written; the message
    /// names the file and what to fix.
    #[error("{0}")]
    NodesFile(String),
}

/// Sets `"drain": true` for `node_id` in the nodes.json at `path`; true
/// when that changed the node (false: it was draining already). Blocking.
pub fn drain(path: &Path, node_id: &str) -> Result<bool, DrainError> {
    match rayvault::nodes::load(path) {
        Ok(Some(nodes)) if nodes.iter().any(|n| n.node_id == node_id) => {}
        Ok(_) => return Err(DrainError::UnknownNode(node_id.to_string())),
        Err(e) => return Err(DrainError::NodesFile(e.to_string())),
    }
    edit::edit(path, |f| f.set_drain(node_id, true)).map_err(|e| match e {
        EditError::Refused(why) => DrainError::Refused(why),
        other @ (EditError::File(_) | EditError::Io { .. }) => DrainError::NodesFile(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_sets_the_flag_of_one_node_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.json");
        std::fs::write(&path, r#"{"nodes": [{"node_id": "w1", "host": "127.0.0.1", "port": 8787, "enabled": true}, {"node_id": "w2", "host": "127.0.0.1", "port": 8790, "enabled": false}]}"#).unwrap();
        assert!(drain(&path, "w2").unwrap());
        assert!(!drain(&path, "w2").unwrap(), "draining already");
        let nodes = rayvault::nodes::load(&path).unwrap().unwrap();
        assert_eq!(nodes.iter().map(|n| (n.node_id.as_str(), n.enabled, n.drain)).collect::<Vec<_>>(), [("w1", true, false), ("w2", false, true)]);
        assert!(matches!(drain(&path, "w3"), Err(DrainError::UnknownNode(_))));
    }

    #[test]
    fn a_malformed_or_missing_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.json");
        assert!(matches!(drain(&path, "w1"), Err(DrainError::UnknownNode(_))));
        assert!(!path.exists());
        std::fs::write(&path, "{\"nodes\": [").unwrap();
        assert!(matches!(drain(&path, "w1"), Err(DrainError::NodesFile(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"nodes\": [");
    }
}
