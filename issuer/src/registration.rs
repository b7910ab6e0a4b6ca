//! Validation of registration entry fields before they are stored. Each
//! refusal names the field and the value at fault.

use workload_api::id::{parse_member, parse_spiffe_id, parse_trust_domain, TrustDomain};

use crate::store::EntryFields;

/// Hints longer than this are refused (SPIFFE Workload API section 8).
const MAX_HINT_BYTES: usize = 1024;
/// SPIFFE IDs longer than this are not generated (SPIFFE-ID.md section 2.3).
const MAX_ID_BYTES: usize = 2048;

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

fn field(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field,
        reason: reason.into(),
    }
}

/// Checks an entry's fields for the issuer of `trust_domain`.
pub fn validate_entry(fields: &EntryFields, trust_domain: &TrustDomain) -> Result<(), FieldError> {
    if fields.spiffe_id.len() > MAX_ID_BYTES {
        return Err(field(
            "spiffe_id",
            format!("longer than {MAX_ID_BYTES} bytes"),
        ));
    }
    let id = parse_member(&fields.spiffe_id, trust_domain)
        .map_err(|e| field("spiffe_id", e.to_string()))?;
    if id.path().is_empty() {
        return Err(field("spiffe_id", "a workload SPIFFE ID needs a path"));
    }
    if id.path().starts_with("/agent/") {
        return Err(field(
            "spiffe_id",
            "the /agent/ path is reserved for agent identities",
        ));
    }
    parse_spiffe_id(&fields.parent_id).map_err(|e| field("parent_id", e.to_string()))?;
    if fields.selectors.is_empty() {
        return Err(field("selectors", "at least one selector is required"));
    }
    for selector in &fields.selectors {
        if selector.kind.is_empty() || selector.value.is_empty() {
            return Err(field("selectors", format!("{selector} is not TYPE:VALUE")));
        }
        if selector.kind.contains(':') || selector.kind.chars().any(char::is_whitespace) {
            return Err(field(
                "selectors",
                format!("selector type {:?} is malformed", selector.kind),
            ));
        }
    }
    if fields.x509_svid_ttl < 0 {
        return Err(field("x509_svid_ttl", "must not be negative"));
    }
    if fields.jwt_svid_ttl < 0 {
        return Err(field("jwt_svid_ttl", "must not be negative"));
    }
    for name in &fields.dns_names {
        validate_dns_name(name).map_err(|reason| field("dns_names", reason))?;
    }
    if fields.hint.len() > MAX_HINT_BYTES {
        return Err(field("hint", format!("longer than {MAX_HINT_BYTES} bytes")));
    }
    for td in &fields.federates_with {
        let parsed = parse_trust_domain(td).map_err(|e| field("federates_with", e.to_string()))?;
        if &parsed == trust_domain {
            return Err(field(
                "federates_with",
                format!("{td} is this issuer's own trust domain"),
            ));
        }
    }
    if fields.expires_at < 0 {
        return Err(field("expires_at", "must not be negative"));
    }
    Ok(())
}

fn validate_dns_name(name: &str) -> Result<(), String> {
    let ok_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let labels: Vec<&str> = name.split('.').collect();
    let valid = !name.is_empty()
        && name.len() <= 253
        && labels
            .iter()
            .enumerate()
            .all(|(i, l)| (i == 0 && *l == "*") || ok_label(l));
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a DNS name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Selector;

    #[test]
    fn field_table() {
        let td = TrustDomain::new("example.org").unwrap();
        let good = EntryFields {
            spiffe_id: "spiffe://example.org/web".into(),
            parent_id: "spiffe://example.org/agent/join_token/abc".into(),
            selectors: vec![Selector::parse("unix:uid:1000").unwrap()],
            dns_names: vec!["web.example.org".into(), "*.web.example.org".into()],
            ..EntryFields::default()
        };
        assert_eq!(validate_entry(&good, &td), Ok(()));
        type Mutate = fn(&mut EntryFields);
        let cases: Vec<(Mutate, &str)> = vec![
            (
                |f| f.spiffe_id = "spiffe://other.org/web".into(),
                "spiffe_id",
            ),
            (|f| f.spiffe_id = "spiffe://example.org".into(), "spiffe_id"),
            (
                |f| f.spiffe_id = "spiffe://example.org/agent/x".into(),
                "spiffe_id",
            ),
            (|f| f.parent_id = "not an id".into(), "parent_id"),
            (|f| f.selectors.clear(), "selectors"),
            (|f| f.x509_svid_ttl = -1, "x509_svid_ttl"),
            (|f| f.jwt_svid_ttl = -5, "jwt_svid_ttl"),
            (|f| f.dns_names = vec!["bad name".into()], "dns_names"),
            (|f| f.dns_names = vec!["-x.org".into()], "dns_names"),
            (|f| f.hint = "h".repeat(1025), "hint"),
            (|f| f.federates_with = vec!["Bad".into()], "federates_with"),
            (
                |f| f.federates_with = vec!["example.org".into()],
                "federates_with",
            ),
        ];
        for (mutate, expected) in cases {
            let mut fields = good.clone();
            mutate(&mut fields);
            let err = validate_entry(&fields, &td).unwrap_err();
            assert_eq!(err.field, expected, "{err}");
        }
    }
}
