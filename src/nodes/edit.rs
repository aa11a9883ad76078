//! Safe edits of `nodes.json` for `rayvault-orchestrator nodes`.
//!
//! An edit reads the file, checks it with the one parser ([`super::parse`]),
//! changes the document, checks the result with the same parser, and writes
//! it atomically (temporary file, fsync, rename), so a running daemon, which
//! re-reads the file every second, never sees half a file. The document is
//! kept as ordered JSON ([`Doc`]): keys the editor does not touch (top-level
//! keys other than `nodes`, `_comment`-style keys in a node) keep their
//! place and value. `serde_json`'s own map sorts keys (the crate is built
//! without `preserve_order`, which would change key order everywhere else),
//! hence the small ordered type here.

use super::{NodeConfig, NodesError};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;
use std::net::IpAddr;
use std::path::Path;

/// A JSON value whose objects keep their key order.
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    /// null, a boolean, a number or a string.
    Scalar(Value),
    Array(Vec<Doc>),
    Object(Vec<(String, Doc)>),
}

impl Doc {
    fn get_mut(&mut self, key: &str) -> Option<&mut Doc> {
        match self {
            Doc::Object(m) => m.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn get(&self, key: &str) -> Option<&Doc> {
        match self {
            Doc::Object(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key` in an object: in place when present, else at the end.
    fn set(&mut self, key: &str, value: Doc) {
        if let Doc::Object(m) = self {
            match m.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => m.push((key.to_string(), value)),
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Doc::Object(m) = self {
            m.retain(|(k, _)| k != key);
        }
    }
}

impl serde::Serialize for Doc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Scalar(v) => v.serialize(s),
            Doc::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Doc::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::from(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::String(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::String(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Doc::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
        let mut entries: Vec<(String, Doc)> = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Doc>()? {
            if entries.iter().any(|(e, _)| *e == k) {
                return Err(de::Error::custom(format!("the key {k:?} appears twice in one object; keep one")));
            }
            entries.push((k, v));
        }
        Ok(Doc::Object(entries))
    }
}

/// Why an edit was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The request itself is wrong (unknown or duplicate id, bad host or
    /// port): the message says what to change. Exit code 2.
    #[error("{0}")]
    Refused(String),
    /// The file is malformed; nothing was written.
    #[error("{0}; nothing was changed (fix the file by hand first)")]
    File(NodesError),
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// `nodes.json` as an ordered document plus its parsed node list.
#[derive(Debug, Clone)]
pub struct NodesFile {
    root: Doc,
}

impl NodesFile {
    /// `{"nodes": []}`.
    pub fn empty() -> Self {
        NodesFile { root: Doc::Object(vec![("nodes".into(), Doc::Array(Vec::new()))]) }
    }

    /// Parses and checks `text` with [`super::parse`].
    pub fn parse(text: &str) -> Result<Self, String> {
        super::parse(text)?;
        let root: Doc = serde_json::from_str(text).map_err(|e| format!("line {}: {e}", e.line()))?;
        Ok(NodesFile { root })
    }

    /// The nodes, as the daemon reads them.
    pub fn nodes(&self) -> Vec<NodeConfig> {
        super::parse(&self.to_text()).unwrap_or_default()
    }

    /// The file's text: two-space indentation and a final newline.
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.root).unwrap_or_else(|_| "{\"nodes\": []}".into());
        text.push('\n');
        text
    }

    fn list_mut(&mut self) -> &mut Vec<Doc> {
        if !matches!(self.root.get("nodes"), Some(Doc::Array(_))) {
            self.root.set("nodes", Doc::Array(Vec::new()));
        }
        match self.root.get_mut("nodes") {
            Some(Doc::Array(list)) => list,
            _ => unreachable!("the nodes list was just set"),
        }
    }

    fn node_mut(&mut self, id: &str) -> Result<&mut Doc, EditError> {
        let known: Vec<String> = self.nodes().into_iter().map(|n| n.node_id).collect();
        self.list_mut()
            .iter_mut()
            .find(|n| matches!(n.get("node_id"), Some(Doc::Scalar(Value::String(s))) if s.trim() == id))
            .ok_or_else(|| unknown_node(id, &known))
    }

    /// Adds a node at the end of the list (`enabled: true`).
    pub fn add(&mut self, node_id: &str, host: &str, port: u16) -> Result<(), EditError> {
        check_node_id(node_id).map_err(EditError::Refused)?;
        if let Some(n) = self.nodes().into_iter().find(|n| n.node_id == node_id) {
            return Err(EditError::Refused(format!(
                "node {node_id:?} is already in nodes.json (at {}:{}); pick another id, or `nodes remove {node_id}` first",
                n.host, n.port
            )));
        }
        self.list_mut().push(Doc::Object(vec![
            ("node_id".into(), Doc::Scalar(Value::String(node_id.into()))),
            ("host".into(), Doc::Scalar(Value::String(host.into()))),
            ("port".into(), Doc::Scalar(Value::from(port))),
            ("enabled".into(), Doc::Scalar(Value::Bool(true))),
        ]));
        Ok(())
    }

    /// Removes a node; its comments go with it.
    pub fn remove(&mut self, node_id: &str) -> Result<(), EditError> {
        self.node_mut(node_id)?;
        self.list_mut()
            .retain(|n| !matches!(n.get("node_id"), Some(Doc::Scalar(Value::String(s))) if s.trim() == node_id));
        Ok(())
    }

    /// Sets `enabled`. True when it changed.
    pub fn set_enabled(&mut self, node_id: &str, enabled: bool) -> Result<bool, EditError> {
        let node = self.node_mut(node_id)?;
        let before = node.get("enabled").cloned();
        node.set("enabled", Doc::Scalar(Value::Bool(enabled)));
        Ok(before != Some(Doc::Scalar(Value::Bool(enabled))))
    }

    /// Sets `"drain": true`, or removes the key to undrain. True when the
    /// node's drain state changed.
    pub fn set_drain(&mut self, node_id: &str, drain: bool) -> Result<bool, EditError> {
        let node = self.node_mut(node_id)?;
        let before = matches!(node.get("drain"), Some(Doc::Scalar(Value::Bool(true))));
        if drain {
            node.set("drain", Doc::Scalar(Value::Bool(true)));
        } else {
            node.remove("drain");
        }
        Ok(before != drain)
    }
}

fn unknown_node(id: &str, known: &[String]) -> EditError {
    let list = if known.is_empty() { "none".to_string() } else { known.join(", ") };
    EditError::Refused(format!("no node {id:?} in nodes.json (nodes: {list}); `rayvault-orchestrator nodes list` shows them"))
}

/// Reads `path` (a missing file is an empty list), applies `change`, checks
/// the result with the one parser and writes it atomically. Nothing is
/// written when `change` fails. Edits are serialised by a lock file beside
/// `path`, so that two edits at once cannot lose one of them.
pub fn edit<T>(path: &Path, change: impl FnOnce(&mut NodesFile) -> Result<T, EditError>) -> Result<T, EditError> {
    let _lock = EditLock::take(path)?;
    let shown = path.display().to_string();
    let mut file = match std::fs::read_to_string(path) {
        Ok(text) => NodesFile::parse(&text).map_err(|message| EditError::File(NodesError { path: shown.clone(), message }))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NodesFile::empty(),
        Err(source) => return Err(EditError::Io { path: shown, source }),
    };
    let out = change(&mut file)?;
    let text = file.to_text();
    // The edited document must still be one the daemon accepts.
    super::parse(&text).map_err(|message| EditError::Refused(format!("the edit would make nodes.json invalid ({message}); nothing was changed")))?;
    write(path, &text)?;
    Ok(out)
}

/// `nodes.json.lock`, created exclusively for the time of one edit and
/// removed when dropped. A lock older than [`EditLock::STALE`] was left by
/// an edit that died, and is taken over.
struct EditLock(std::path::PathBuf);

impl EditLock {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(10);
    const STALE: std::time::Duration = std::time::Duration::from_secs(30);

    fn take(path: &Path) -> Result<EditLock, EditError> {
        let lock = path.with_extension("json.lock");
        let io = |source| EditError::Io { path: lock.display().to_string(), source };
        if let Some(dir) = lock.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let deadline = std::time::Instant::now() + Self::WAIT;
        loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(_) => return Ok(EditLock(lock)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = std::fs::metadata(&lock).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                    if age.is_some_and(|a| a > Self::STALE) {
                        let _ = std::fs::remove_file(&lock);
                        continue;
                    }
                    if std::time::Instant::now() > deadline {
                        return Err(EditError::Refused(format!(
                            "another edit of nodes.json holds {} (for over {} s); try again, or delete that file if no `nodes` command runs",
                            lock.display(),
                            Self::WAIT.as_secs()
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(io(e)),
            }
        }
    }
}

impl Drop for EditLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `text` to `path` atomically, creating the folder if needed.
pub fn write(path: &Path, text: &str) -> Result<(), EditError> {
    let io = |source| EditError::Io { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    crate::artifacts::write_atomic(path, text.as_bytes()).map_err(io)
}

/// A node id: 1 to 64 ASCII letters, digits, `-`, `_` or `.`, starting with
/// a letter or digit (it is also the worker's `RAYVAULT_WORKER_ID`).
pub fn check_node_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad node id {id:?}: use 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit (the worker's RAYVAULT_WORKER_ID, e.g. windows-worker-1)"
        ))
    }
}

/// Splits `HOST[:PORT]` (IPv6 as `[addr]:port`, or a bare IPv6 address)
/// into a host and a port (`default_port` when none is given), checking
/// that the host is an IP address or a DNS name and the port is 1 to 65535.
pub fn parse_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad_port = |p: &str| format!("bad port {p:?} in {s:?}: use a whole number from 1 to 65535 (the worker's port, 8787 by default)");
    let port_of = |p: &str| p.parse::<u16>().ok().filter(|&n| n > 0).ok_or_else(|| bad_port(p));
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(|| format!("bad address {s:?}: an IPv6 address with a port is written [addr]:port"))?;
        let port = match after {
            "" => default_port,
            _ => port_of(after.strip_prefix(':').ok_or_else(|| bad_port(after))?)?,
        };
        (ip.to_string(), port)
    } else if s.matches(':').count() > 1 {
        (s.to_string(), default_port)
    } else if let Some((h, p)) = s.split_once(':') {
        (h.to_string(), port_of(p)?)
    } else {
        (s.to_string(), default_port)
    };
    if host.parse::<IpAddr>().is_err() && !is_dns_name(&host) {
        return Err(format!(
            "bad host {host:?}: give the worker's IP address (its Tailscale address from `tailscale ip -4`, e.g. 100.64.0.10) or its DNS name"
        ));
    }
    Ok((host, port))
}

fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        // A string of digits and dots is a mistyped IPv4 address, not a name.
        && !s.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// A warning when `host` is neither loopback nor a Tailscale address
/// (100.64.0.0/10, fd7a:115c:a1e0::/48): the worker's API should only be
/// reachable over loopback or the tailnet.
pub fn host_warning(host: &str) -> Option<String> {
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() || is_tailscale_range(ip) => None,
        Ok(ip) => Some(format!(
            "{ip} is neither loopback nor a Tailscale address (100.64.0.0/10): the worker binds only to those unless started with --allow-any-bind; use its address from `tailscale ip -4`"
        )),
        Err(_) if host.eq_ignore_ascii_case("localhost") => None,
        Err(_) => Some(format!(
            "{host} is a name: make sure it resolves to the worker's Tailscale address (a MagicDNS name such as box.tailnet.ts.net does), not a LAN address"
        )),
    }
}

fn is_tailscale_range(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 100 && (64..128).contains(&o[1])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0xfd7a && s[1] == 0x115c && s[2] == 0xa1e0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMENTED: &str = r#"{
  "_comment": "workers of the studio",
  "nodes": [
    {
      "_note": "the gaming PC",
      "node_id": "w1",
      "host": "100.64.0.10",
      "port": 8787,
      "enabled": false
    }
  ],
  "zz_kept": {
    "b": 1,
    "a": [
      2.5,
      null
    ]
  }
}
"#;

    #[test]
    fn edits_keep_comments_and_order() {
        let mut f = NodesFile::parse(COMMENTED).unwrap();
        assert_eq!(f.to_text(), COMMENTED, "an untouched file round-trips byte for byte");
        f.add("w2", "127.0.0.1", 9000).unwrap();
        assert!(f.set_enabled("w1", true).unwrap());
        assert!(f.set_drain("w1", true).unwrap());
        let text = f.to_text();
        let order: Vec<usize> = ["_comment", "_note", "\"node_id\": \"w1\"", "\"enabled\": true", "\"drain\": true", "\"w2\"", "zz_kept", "\"b\"", "\"a\""]
            .iter()
            .map(|k| text.find(k).unwrap_or_else(|| panic!("{k} missing from {text}")))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(f.set_drain("w1", false).unwrap());
        f.remove("w2").unwrap();
        f.set_enabled("w1", false).unwrap();
        assert_eq!(f.to_text(), COMMENTED);
    }

    #[test]
    fn refusals_say_what_to_do() {
        let mut f = NodesFile::parse(COMMENTED).unwrap();
        let dup = f.add("w1", "127.0.0.1", 1).unwrap_err().to_string();
        assert!(dup.contains("already in nodes.json") && dup.contains("nodes remove w1"), "{dup}");
        let unknown = f.set_drain("nope", true).unwrap_err().to_string();
        assert!(unknown.contains("no node \"nope\"") && unknown.contains("nodes: w1"), "{unknown}");
        assert!(f.add("-bad", "127.0.0.1", 1).unwrap_err().to_string().contains("bad node id"));
        assert!(f.add("a b", "127.0.0.1", 1).is_err());
    }

    #[test]
    fn host_and_port() {
        let ok = |s: &str, h: &str, p: u16| assert_eq!(parse_host_port(s, 8787).unwrap(), (h.to_string(), p), "{s}");
        ok("100.64.0.10", "100.64.0.10", 8787);
        ok("100.64.0.10:9000", "100.64.0.10", 9000);
        ok("[fd7a:115c:a1e0::1]:9000", "fd7a:115c:a1e0::1", 9000);
        ok("fd7a:115c:a1e0::1", "fd7a:115c:a1e0::1", 8787);
        ok("box.tailnet.ts.net", "box.tailnet.ts.net", 8787);
        for bad in ["100.64.0.10:0", "100.64.0.10:70000", "100.64.0.10:x", "300.1.1.1", "bad_host", "", "[::1", "h:"] {
            assert!(parse_host_port(bad, 8787).is_err(), "{bad} should be refused");
        }
        assert_eq!(host_warning("127.0.0.1"), None);
        assert_eq!(host_warning("100.127.1.1"), None);
        assert!(host_warning("192.168.1.5").unwrap().contains("neither loopback nor a Tailscale address"));
        assert!(host_warning("box.lan").unwrap().contains("is a name"));
    }

    #[test]
    fn concurrent_edits_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster").join("nodes.json");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        edit(&path, |f| f.add(&format!("w{t}-{i}"), "127.0.0.1", 8787)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(super::super::load(&path).unwrap().unwrap().len(), 100);
        assert!(!path.with_extension("json.lock").exists(), "the lock is removed after each edit");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        assert!(NodesFile::parse(r#"{"nodes": [], "nodes": []}"#).unwrap_err().contains("twice"));
    }
}
