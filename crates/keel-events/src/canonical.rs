//! Canonical JSON (RFC 8785-like): object keys sorted by their UTF-16 code units at every depth,
//! no insignificant whitespace, strings and numbers as `serde_json` writes them.
//!
//! Keys are sorted here explicitly rather than relying on `serde_json::Map` being a `BTreeMap`:
//! another crate in the build enabling serde_json's `preserve_order` feature would otherwise
//! silently change every digest.

use serde_json::Value;

/// The canonical bytes of `value`. Equal JSON values (whatever their key order) give equal bytes.
pub fn to_canonical_bytes(value: &Value) -> Vec<u8> {
    let mut out = String::new();
    write(value, &mut out);
    out.into_bytes()
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write(item, out);
            }
            out.push('}');
        }
        // Scalars: `Display` for `Value` is compact JSON and cannot fail.
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push_str(&Value::String(s.to_owned()).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: &Value) -> String {
        String::from_utf8(to_canonical_bytes(v)).expect("canonical JSON is UTF-8")
    }

    #[test]
    fn sorts_keys_recursively_without_whitespace() {
        let v = json!({"b": [ {"z": 1, "a": null} ], "a": {"y": true, "x": "s p"}});
        assert_eq!(canon(&v), r#"{"a":{"x":"s p","y":true},"b":[{"a":null,"z":1}]}"#);
    }

    #[test]
    fn key_order_of_the_input_does_not_matter() {
        let a: Value = serde_json::from_str(r#"{"k":1,"j":{"q":2,"p":[3,{"n":4,"m":5}]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "j" : {"p":[3,{"m":5,"n":4}],"q":2}, "k":1 }"#).unwrap();
        assert_eq!(to_canonical_bytes(&a), to_canonical_bytes(&b));
    }

    #[test]
    fn escapes_strings_and_sorts_by_utf16() {
        let v = json!({"\u{e9}": 1, "\u{1F600}": 2, "\u{FF61}": 3, "q\"\n": "\u{1}"});
        // U+1F600 is the surrogate pair D83D DE00, which sorts before U+FF61 in UTF-16.
        assert_eq!(
            canon(&v),
            "{\"q\\\"\\n\":\"\\u0001\",\"\u{e9}\":1,\"\u{1F600}\":2,\"\u{FF61}\":3}"
        );
    }

    #[test]
    fn scalars() {
        assert_eq!(
            canon(&json!([1, -2, 1.5, "x", false, null])),
            r#"[1,-2,1.5,"x",false,null]"#
        );
        assert_eq!(canon(&json!({})), "{}");
        assert_eq!(canon(&json!([])), "[]");
    }
}
