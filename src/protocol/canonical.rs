//! Canonical JSON (RFC 8785) and the `inputs_hash` built on it, the JSON
//! parser that refuses repeated keys, and the blob references a payload
//! holds.

use super::{is_sha256_hex, sha256_hex};
use serde::Deserialize;
use serde_json::Value;

/// Prefix of a payload string that names a staged blob by digest.
pub const BLOB_REF_PREFIX: &str = "blob:sha256:";

/// Canonical JSON as RFC 8785 (JSON Canonicalization Scheme) defines it:
/// no whitespace; object keys sorted by their UTF-16 code units; strings
/// with only `"`, `\` and the control characters escaped (`\b \t \n \f
/// \r` in short form, the others as `\u00xx` in lower-case hex);
/// every number written as ECMAScript's `Number.prototype.toString` writes
/// the IEEE 754 double it denotes (so `1e21` is `1e+21`, `1e-7` is `1e-7`,
/// `100.0` is `100`, `-0` is `0`, and an integer above 2^53 is first
/// rounded to the nearest double, as every JCS implementation does).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_jcs_string(k, out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(s) => write_jcs_string(s, out),
        Value::Number(n) => write_jcs_number(n, out),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
    }
}

/// A string as RFC 8785 section 3.2.2.2 writes it.
fn write_jcs_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A number as RFC 8785 section 3.2.2.3 writes it: the double it denotes,
/// in ECMAScript's shortest round-trip form. A JSON number parsed by
/// serde_json is always finite, and `u64`/`i64` to `f64` rounds to the
/// nearest double, which is what parsing the same digits as a double gives.
fn write_jcs_number(n: &serde_json::Number, out: &mut String) {
    let f = match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => u as f64,
        (None, Some(i)) => i as f64,
        _ => n.as_f64().unwrap_or(0.0),
    };
    out.push_str(ryu_js::Buffer::new().format_finite(f));
}

/// The idempotency hash of a job: lower-case hex SHA-256 of the canonical
/// JSON of `{"payload": payload, "step_name": step_name}`. Staged inputs
/// appear in the payload as `blob:sha256:<digest>`, so the hash covers their
/// content, never a local path.
pub fn inputs_hash(step_name: &str, payload: &Value) -> String {
    let doc = serde_json::json!({ "step_name": step_name, "payload": payload });
    sha256_hex(canonical_json(&doc).as_bytes())
}

/// Why JSON text was refused by [`parse_json_unique_keys`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonRefusal {
    /// Not JSON at all (or a number outside the range of a double).
    #[error("{0}")]
    Malformed(String),
    /// Valid JSON, but an object names the same key twice.
    #[error("{0}")]
    DuplicateKey(String),
}

/// Parses JSON text, refusing any object (at any depth) that names a key
/// twice. Plain parsing keeps the last of two equal keys while another
/// language's parser may keep the first, so the same bytes would be two
/// different payloads, with two different `inputs_hash` values.
pub fn parse_json_unique_keys(bytes: &[u8]) -> Result<Value, JsonRefusal> {
    match serde_json::from_slice::<UniqueKeys>(bytes) {
        Ok(UniqueKeys(v)) => Ok(v),
        // Plain parsing differs from the strict one only in accepting a
        // repeated key, so what plain parsing accepts was refused for that.
        Err(e) if serde_json::from_slice::<Value>(bytes).is_ok() => Err(JsonRefusal::DuplicateKey(e.to_string())),
        Err(e) => Err(JsonRefusal::Malformed(e.to_string())),
    }
}

/// A JSON value deserialised with a check that no object repeats a key.
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map(Value::Number).unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("the key {key:?} appears twice in one object")));
            }
            let UniqueKeys(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Every blob digest a payload refers to (`"blob:sha256:<64 hex>"` string
/// values anywhere in the JSON), or the first malformed reference.
pub fn blob_refs(payload: &Value) -> Result<Vec<String>, String> {
    fn walk(v: &Value, out: &mut Vec<String>) -> Result<(), String> {
        match v {
            Value::String(s) => {
                if let Some(d) = s.strip_prefix(BLOB_REF_PREFIX) {
                    if !is_sha256_hex(d) {
                        return Err(format!("{s:?} is not blob:sha256: followed by 64 lower-case hex digits"));
                    }
                    out.push(d.to_string());
                }
                Ok(())
            }
            Value::Array(items) => items.iter().try_for_each(|i| walk(i, out)),
            Value::Object(map) => map.values().try_for_each(|i| walk(i, out)),
            _ => Ok(()),
        }
    }
    let mut out = Vec::new();
    walk(payload, &mut out)?;
    out.sort();
    out.dedup();
    Ok(out)
}
