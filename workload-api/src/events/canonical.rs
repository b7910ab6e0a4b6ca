//! RFC 8785 JSON Canonicalization Scheme (JCS) for the values events hold.
//!
//! Events are hashed into the log and signed, so one event must have exactly
//! one byte form. Objects are written with members sorted by the UTF-16 code
//! units of their names (RFC 8785 section 3.2.3), no whitespace, and strings
//! escaped as ECMAScript's `JSON.stringify` does, which is serde_json's
//! escaping too. Numbers are limited to integers ECMAScript represents
//! exactly, so their decimal form is the canonical one; events need no
//! fractions.

use serde::Serialize;
use serde_json::Value;

/// The largest integer an IEEE 754 double holds exactly (2^53 - 1).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Why a value has no canonical form here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CanonicalError {
    #[error("{0} is not an integer; events hold integers only")]
    Fraction(String),
    #[error("{0} is beyond ±(2^53 - 1), which JSON numbers do not hold exactly")]
    TooLarge(String),
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not in canonical form (RFC 8785): members unsorted, whitespace, duplicates or escapes differ")]
    NotCanonical,
}

/// The canonical form of `value`.
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let value = serde_json::to_value(value).map_err(|e| CanonicalError::NotJson(e.to_string()))?;
    let mut out = Vec::with_capacity(256);
    write(&value, &mut out)?;
    Ok(out)
}

/// Parses `bytes` as JSON that must already be in canonical form, so that
/// one meaning has one byte form and a signature over it is unambiguous.
pub fn parse_canonical(bytes: &[u8]) -> Result<Value, CanonicalError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| CanonicalError::NotJson(e.to_string()))?;
    let mut again = Vec::with_capacity(bytes.len());
    write(&value, &mut again)?;
    if again != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    Ok(value)
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(members) => {
            let mut names: Vec<&String> = members.keys().collect();
            names.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, name) in names.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(name, out);
                out.push(b':');
                write(&members[name.as_str()], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    let magnitude = if let Some(u) = n.as_u64() {
        u
    } else if let Some(i) = n.as_i64() {
        i.unsigned_abs()
    } else {
        return Err(CanonicalError::Fraction(n.to_string()));
    };
    if magnitude > MAX_SAFE_INTEGER {
        return Err(CanonicalError::TooLarge(n.to_string()));
    }
    out.extend_from_slice(n.to_string().as_bytes());
    Ok(())
}

/// serde_json escapes exactly what RFC 8785 section 3.2.2.2 does: `"`, `\`
/// and controls (`\b \t \n \f \r` short, others `\u00xx` in lower case).
fn write_string(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canonical(value: Value) -> String {
        String::from_utf8(to_vec(&value).unwrap()).unwrap()
    }

    #[test]
    fn members_sort_by_utf16_code_units() {
        // RFC 8785 section 3.2.3's sorting example: U+1F600 (a surrogate
        // pair in UTF-16) sorts before U+FB33, though not in UTF-8.
        let text = canonical(json!({
            "\u{20ac}": 1, "\r": 2, "\u{fb33}": 3, "1": 4,
            "\u{1f600}": 5, "\u{0080}": 6, "\u{00f6}": 7
        }));
        assert_eq!(
            text,
            "{\"\\r\":2,\"1\":4,\"\u{0080}\":6,\"\u{00f6}\":7,\"\u{20ac}\":1,\"\u{1f600}\":5,\"\u{fb33}\":3}"
        );
    }

    #[test]
    fn strings_escape_as_rfc_8785_says() {
        assert_eq!(
            canonical(json!("\u{0001}\u{001f}\n\t\"\\/\u{2028}é")),
            "\"\\u0001\\u001f\\n\\t\\\"\\\\/\u{2028}é\""
        );
    }

    #[test]
    fn numbers_are_safe_integers_only() {
        assert_eq!(
            canonical(json!([0, -1, 9007199254740991_u64])),
            "[0,-1,9007199254740991]"
        );
        assert!(matches!(
            to_vec(&json!(1.5)),
            Err(CanonicalError::Fraction(_))
        ));
        assert!(matches!(
            to_vec(&json!(9007199254740992_u64)),
            Err(CanonicalError::TooLarge(_))
        ));
        assert!(matches!(
            to_vec(&json!(-9007199254740992_i64)),
            Err(CanonicalError::TooLarge(_))
        ));
    }

    #[test]
    fn only_the_canonical_form_parses() {
        assert!(parse_canonical(br#"{"a":1,"b":[true,null]}"#).is_ok());
        for other in [
            &br#"{"b":1,"a":2}"#[..],
            br#"{"a": 1}"#,
            br#"{"a":1,"a":1}"#,
            br#""\u0061""#,
            br#"1.0"#,
            b"{\"a\":1}\n",
        ] {
            assert!(
                parse_canonical(other).is_err(),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
