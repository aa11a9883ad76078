//! Unit tests of the wire format: canonical JSON and `inputs_hash`
//! vectors, strict JSON parsing, blob references, the `Authorization`
//! header and the error codes.

use super::*;
use serde_json::{json, Value};

/// RFC 8785 number serialisation of IEEE 754 bit patterns; expected
/// strings computed independently with the `jcs` package from PyPI.
#[test]
fn jcs_numbers_from_bit_patterns() {
    let check = |bits: u64, expected: &str| {
        let n = serde_json::Number::from_f64(f64::from_bits(bits)).unwrap();
        assert_eq!(canonical_json(&Value::Number(n)), expected, "{bits:016x}");
    };
    for (bits, expected) in [
        (0x0000000000000000, "0"),
        (0x8000000000000000, "0"),
        (0x0000000000000001, "5e-324"),
        (0x8000000000000001, "-5e-324"),
        (0x7fefffffffffffff, "1.7976931348623157e+308"),
        (0x4340000000000000, "9007199254740992"),
        (0x4430000000000000, "295147905179352830000"),
        (0x44b52d02c7e14af5, "9.999999999999997e+22"),
        (0x44b52d02c7e14af6, "1e+23"),
        (0x3eb0c6f7a0b5ed8d, "0.000001"),
        (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
        (0x41b3de4355555555, "333333333.3333333"),
        (0x444b1ae4d6e2ef50, "1e+21"),
        (0x444b1ae4d6e2ef4f, "999999999999999900000"),
        (0xc43211ede4974a35, "-333333333333333300000"),
        (0x3e7ad7f29abcaf48, "1e-7"),
    ] {
        check(bits, expected);
    }
}

/// The test vectors of docs/protocol.md (`inputs_hash` test vectors):
/// JSON text as a client sends it, its canonical form and the hash,
/// computed independently with the `jcs` package from PyPI.
#[test]
fn jcs_inputs_hash_vectors() {
    let check = |payload: &str, canonical: &str, hash: &str| {
        let p = parse_json_unique_keys(payload.as_bytes()).unwrap();
        let doc = serde_json::json!({"step_name": "OPENCLAW_TASK", "payload": p});
        assert_eq!(canonical_json(&doc), canonical, "{payload}");
        assert_eq!(inputs_hash("OPENCLAW_TASK", &p), hash, "{payload}");
    };
    check(
        r#"{"task": "small", "x": 1e-7}"#,
        r#"{"payload":{"task":"small","x":1e-7},"step_name":"OPENCLAW_TASK"}"#,
        "ba816bbf42444f011530f78cab25f863215fc8c68b8395c6552f36eea6674416",
    );
    check(
        r#"{"task": "large", "x": 1e21}"#,
        r#"{"payload":{"task":"large","x":1e+21},"step_name":"OPENCLAW_TASK"}"#,
        "4c5076ebb5156ceda596edcb45e81efcae3f03d94f0a8864e2118a956695621a",
    );
    check(
        r#"{"task": "above 2^53", "x": 9007199254740993}"#,
        r#"{"payload":{"task":"above 2^53","x":9007199254740992},"step_name":"OPENCLAW_TASK"}"#,
        "67164dd2e025d1aa5bb4435202052000b7382308831d15646a05522c3aa2d997",
    );
    check(
        r#"{"task": "mixed", "n": [100.0, -0.0, 0.1, 1e23, 5e-324, 18446744073709551616, -1.5E-10], "\ue000": 1, "\ud83d\ude00": 2, "s": "tab\t nul\u0000 del\u007f \u00e9 /"}"#,
        "{\"payload\":{\"n\":[100,0,0.1,1e+23,5e-324,18446744073709552000,-1.5e-10],\"s\":\"tab\\t nul\\u0000 del\u{7f} \u{e9} /\",\"task\":\"mixed\",\"\u{1f600}\":2,\"\u{e000}\":1},\"step_name\":\"OPENCLAW_TASK\"}",
        "a93564f1d5848ee20ddabe038211f9b08daa7f6a3a49b719b88f29789c060917",
    );
}

#[test]
fn duplicate_keys_are_refused_at_any_depth() {
    assert!(matches!(parse_json_unique_keys(br#"{"a":1,"a":2}"#), Err(JsonRefusal::DuplicateKey(_))));
    let nested = br#"{"step_name":"X","payload":{"p":[{"k":1,"k":1}]}}"#;
    match parse_json_unique_keys(nested) {
        Err(JsonRefusal::DuplicateKey(m)) => assert!(m.contains("\"k\""), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(parse_json_unique_keys(b"{\"a\":"), Err(JsonRefusal::Malformed(_))));
    assert!(matches!(parse_json_unique_keys(b"[1e400]"), Err(JsonRefusal::Malformed(_))));
    let ok = parse_json_unique_keys(br#"{"a":{"a":1},"b":[{"a":2},{"a":3}]}"#).unwrap();
    assert_eq!(ok, serde_json::json!({"a":{"a":1},"b":[{"a":2},{"a":3}]}));
}

#[test]
fn canonical_json_sorts_and_strips() {
    let v = json!({"b": [1, {"z": null, "a": "x\"y"}], "a": true, "é": 1.5});
    assert_eq!(canonical_json(&v), r#"{"a":true,"b":[1,{"a":"x\"y","z":null}],"é":1.5}"#);
}

#[test]
fn inputs_hash_ignores_key_order_and_whitespace() {
    let a: Value = serde_json::from_str(r#"{"media_path": "/a.mp4", "x": {"q":1,"p":2}}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"x":{"p":2,"q":1},"media_path":"/a.mp4"}"#).unwrap();
    assert_eq!(inputs_hash("FFMPEG_PROBE", &a), inputs_hash("FFMPEG_PROBE", &b));
    assert_ne!(inputs_hash("FFMPEG_PROBE", &a), inputs_hash("FRAME_SAMPLING", &a));
    // The documented example in docs/protocol.md.
    let p = json!({"media_path": "blob:sha256:".to_string() + &"ab".repeat(32)});
    assert_eq!(
        canonical_json(&json!({"step_name": "FFMPEG_PROBE", "payload": p})),
        format!(r#"{{"payload":{{"media_path":"blob:sha256:{}"}},"step_name":"FFMPEG_PROBE"}}"#, "ab".repeat(32))
    );
}

#[test]
fn blob_refs_found_and_checked() {
    let d = "0f".repeat(32);
    let v = json!({"a": [format!("blob:sha256:{d}"), "plain"], "b": {"c": format!("blob:sha256:{d}")}});
    assert_eq!(blob_refs(&v).unwrap(), vec![d]);
    assert!(blob_refs(&json!({"a": "blob:sha256:XYZ"})).is_err());
    assert!(blob_refs(&json!({"a": format!("blob:sha256:{}", "AB".repeat(32))})).is_err());
}

#[test]
fn header_round_trip_and_strictness() {
    let sig = "a".repeat(64);
    let h = HmacHeader::format("0123456789abcdef", 1_700_000_000, "n0nce-n0nce-n0nce", &sig);
    let p = HmacHeader::parse(&h).unwrap();
    assert_eq!((p.kid.as_str(), p.ts, p.nonce.as_str()), ("0123456789abcdef", 1_700_000_000, "n0nce-n0nce-n0nce"));
    let base = "RAYVAULT-HMAC-SHA256 kid=0123456789abcdef, nonce=n0nce-n0nce-n0nce";
    for bad_tail in [
        format!("ts=abc, sig={sig}"),
        format!("ts=-5, sig={sig}"),
        format!("ts=1.5, sig={sig}"),
        format!("ts=99999999999999999999, sig={sig}"),
        format!("ts=1, sig={}", &sig[..63]),
        format!("ts=1, sig={}", "A".repeat(64)),
        format!("ts=1, sig={}", "g".repeat(64)),
        "ts=1, sig=".to_string(),
        format!("ts=1, sig={sig}, sig={sig}"),
        format!("ts=1, sig={sig}, extra=1"),
        "ts=1".to_string(),
    ] {
        let v = format!("{base}, {bad_tail}");
        assert!(HmacHeader::parse(&v).is_err(), "{v}");
    }
    assert!(HmacHeader::parse(&format!("{base}, ts=1, sig={sig}")).is_ok());
    assert!(HmacHeader::parse(&format!("rayvault-hmac-sha256 kid=0123456789abcdef, ts=1, nonce=n0nce-n0nce-n0nce, sig={sig}")).is_err());
}

#[test]
fn codes_match_serde_and_status() {
    for c in [ApiCode::AuthInvalid, ApiCode::InputsHashMismatch, ApiCode::HeadersTooLarge, ApiCode::Internal] {
        assert_eq!(serde_json::to_value(c).unwrap(), Value::String(c.as_str().into()));
    }
    assert_eq!(ApiCode::AuthSkew.status(), 401);
    assert_eq!(ApiCode::InputsHashMismatch.status(), 422);
}

#[test]
fn empty_sha_constant() {
    assert_eq!(sha256_hex(b""), EMPTY_SHA256);
}
