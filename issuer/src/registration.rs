//! Validation of what the admin API stores or looks up: registration entry
//! fields, checked against the limits in [`crate::limits`] and the selector
//! types Sigil's attestors produce, and the ids other admin RPCs take. Every
//! refusal names the field and the limit or rule it broke.
//!
//! Refusals quote at most [`SHOWN_BYTES`] of a value: the message travels in
//! a gRPC header, and a refused 100 KiB value must not come back in it.

use std::fmt;

use workload_api::id::{
    parse_member, parse_spiffe_id, parse_trust_domain, IdError, SpiffeId, TrustDomain,
};

use crate::limits::{
    MAX_DNS_LABEL_BYTES, MAX_DNS_NAMES_PER_ENTRY, MAX_DNS_NAME_BYTES, MAX_ENTRY_ID_BYTES,
    MAX_EXPIRES_AT, MAX_FEDERATES_WITH_PER_ENTRY, MAX_HINT_BYTES, MAX_JOIN_TOKEN_TTL_SECS,
    MAX_SELECTORS_PER_ENTRY, MAX_SELECTOR_VALUE_BYTES, MAX_SPIFFE_ID_BYTES, MAX_SVID_TTL_SECS,
    MAX_TRUST_DOMAIN_BYTES,
};
use crate::store::{EntryFields, Selector};

pub use workload_api::display::{shown, SHOWN_BYTES};

/// A field the admin API refused. `Display` starts with the field's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    #[error("{field}: required")]
    Missing { field: &'static str },
    #[error("{field}: {len} bytes; at most {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field}: {count} {noun}; at most {max} per entry")]
    TooMany {
        field: &'static str,
        noun: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{field}: {value}; must be from 0 to {max}{unit}")]
    OutOfRange {
        field: &'static str,
        value: i64,
        max: i64,
        unit: &'static str,
    },
    #[error("{field}: {shown}: {reason}")]
    Invalid {
        field: &'static str,
        /// The value, cut to [`SHOWN_BYTES`] and escaped.
        shown: String,
        reason: String,
    },
    #[error("{field}: {reason}")]
    Rule { field: &'static str, reason: String },
    #[error("selectors: unknown selector type {kind:?}; known types: {known}")]
    UnknownSelectorType {
        /// The type as given, cut to [`SHOWN_BYTES`].
        kind: String,
        known: String,
    },
}

impl FieldError {
    /// The field at fault, as named in the API (`spiffe_id`, `selectors`).
    pub fn field(&self) -> &'static str {
        match self {
            FieldError::Missing { field }
            | FieldError::TooLong { field, .. }
            | FieldError::TooMany { field, .. }
            | FieldError::OutOfRange { field, .. }
            | FieldError::Invalid { field, .. }
            | FieldError::Rule { field, .. } => field,
            FieldError::UnknownSelectorType { .. } => "selectors",
        }
    }
}

fn invalid(field: &'static str, value: &str, reason: impl Into<String>) -> FieldError {
    FieldError::Invalid {
        field,
        shown: shown(value),
        reason: reason.into(),
    }
}

fn rule(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError::Rule {
        field,
        reason: reason.into(),
    }
}

fn at_most_bytes(field: &'static str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

fn at_most_items<T>(
    field: &'static str,
    noun: &'static str,
    items: &[T],
    max: usize,
) -> Result<(), FieldError> {
    if items.len() > max {
        return Err(FieldError::TooMany {
            field,
            noun,
            count: items.len(),
            max,
        });
    }
    Ok(())
}

fn in_range(
    field: &'static str,
    value: i64,
    max: i64,
    unit: &'static str,
) -> Result<(), FieldError> {
    if !(0..=max).contains(&value) {
        return Err(FieldError::OutOfRange {
            field,
            value,
            max,
            unit,
        });
    }
    Ok(())
}

/// Why an id did not parse, without the input [`IdError`] quotes in full.
fn id_reason(error: &IdError) -> String {
    match error {
        IdError::Invalid { reason, .. } => format!("not a SPIFFE ID: {reason}"),
        IdError::SchemeNotLowercase { .. } => {
            "not a SPIFFE ID: the scheme must be exactly \"spiffe://\"".to_owned()
        }
        IdError::TrustDomainNotLowercase { .. } => {
            "trust domain names are lowercase (SPIFFE-ID.md section 2.1)".to_owned()
        }
        IdError::InvalidTrustDomain { reason, .. } => format!("not a trust domain: {reason}"),
        IdError::WrongTrustDomain {
            expected, actual, ..
        } => format!(
            "in trust domain \"{}\"; this issuer serves \"{expected}\"",
            shown(actual)
        ),
        IdError::UnexpectedPath { .. } => "a trust domain has no path".to_owned(),
        _ => "not a SPIFFE ID".to_owned(),
    }
}

/// A SPIFFE ID of any trust domain, at most [`MAX_SPIFFE_ID_BYTES`].
pub fn check_spiffe_id(field: &'static str, value: &str) -> Result<SpiffeId, FieldError> {
    at_most_bytes(field, value, MAX_SPIFFE_ID_BYTES)?;
    parse_spiffe_id(value).map_err(|e| invalid(field, value, id_reason(&e)))
}

/// A SPIFFE ID of `trust_domain`, at most [`MAX_SPIFFE_ID_BYTES`].
pub fn check_member(
    field: &'static str,
    value: &str,
    trust_domain: &TrustDomain,
) -> Result<SpiffeId, FieldError> {
    at_most_bytes(field, value, MAX_SPIFFE_ID_BYTES)?;
    parse_member(value, trust_domain).map_err(|e| invalid(field, value, id_reason(&e)))
}

/// The SPIFFE ID a workload entry (or node alias) gives: in this trust
/// domain, with a path outside `/agent/`, which agents' own IDs use.
pub fn check_entry_spiffe_id(
    field: &'static str,
    value: &str,
    trust_domain: &TrustDomain,
) -> Result<SpiffeId, FieldError> {
    let id = check_member(field, value, trust_domain)?;
    if id.path().is_empty() {
        return Err(invalid(field, value, "an entry's SPIFFE ID needs a path"));
    }
    if id.path().starts_with("/agent/") {
        return Err(invalid(
            field,
            value,
            "the /agent/ path is reserved for agent identities",
        ));
    }
    Ok(id)
}

/// An entry ID an RPC names: present and at most [`MAX_ENTRY_ID_BYTES`].
/// Its form is not checked: an unknown ID is simply not found.
pub fn check_entry_id(value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::Missing { field: "id" });
    }
    at_most_bytes("id", value, MAX_ENTRY_ID_BYTES)
}

/// A list filter: empty (no filter) or a SPIFFE ID.
pub fn check_id_filter(field: &'static str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Ok(());
    }
    check_spiffe_id(field, value).map(drop)
}

/// A join token TTL in seconds; 0 means the configured default.
pub fn check_join_token_ttl(ttl: i64) -> Result<(), FieldError> {
    in_range("ttl", ttl, MAX_JOIN_TOKEN_TTL_SECS, " seconds")
}

/// What a selector value must look like, by what the attestor that
/// produces it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueRule {
    /// A numeric uid or gid, in decimal as the kernel reports it: 0 to
    /// 4294967295, no sign, no leading zeros (values are matched as text).
    Number,
    /// A user or group name as in /etc/passwd and /etc/group: no colon,
    /// whitespace or control character.
    Name,
    /// An absolute, normalized path, as the kernel reports an executable's.
    AbsolutePath,
    /// A SHA-256 digest in 64 lowercase hex digits.
    Sha256,
    /// An agent's SPIFFE ID: this trust domain, under `/agent/`.
    AgentId,
    /// Text that may hold colons: a label `key:value`, an image reference.
    Text,
}

/// A selector type some attestor produces: the stored selector `kind`, and
/// for attestors with several types the name that starts the value (`unix`
/// and `uid` for `unix:uid:1000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectorType {
    pub kind: &'static str,
    pub name: Option<&'static str>,
    pub rule: ValueRule,
}

impl SelectorType {
    const fn named(kind: &'static str, name: &'static str, rule: ValueRule) -> Self {
        SelectorType {
            kind,
            name: Some(name),
            rule,
        }
    }

    const fn whole(kind: &'static str, rule: ValueRule) -> Self {
        SelectorType {
            kind,
            name: None,
            rule,
        }
    }

    /// The most bytes a stored value of this type may have.
    pub fn max_value_bytes(&self) -> usize {
        match self.rule {
            ValueRule::AgentId => MAX_SPIFFE_ID_BYTES,
            _ => MAX_SELECTOR_VALUE_BYTES,
        }
    }
}

impl fmt::Display for SelectorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name {
            Some(name) => write!(f, "{}:{name}", self.kind),
            None => f.write_str(self.kind),
        }
    }
}

/// Every selector type an entry may require: one line per type an attestor
/// produces, so a new attestor (Kubernetes: `k8s:ns`, `k8s_psat:cluster`, ...)
/// adds its lines here and nothing else. A type no attestor produces could
/// never match, so it is refused.
pub const SELECTOR_TYPES: &[SelectorType] = &[
    // The unix workload attestor (node-agent/src/attestor/unix.rs).
    SelectorType::named("unix", "uid", ValueRule::Number),
    SelectorType::named("unix", "gid", ValueRule::Number),
    SelectorType::named("unix", "user", ValueRule::Name),
    SelectorType::named("unix", "group", ValueRule::Name),
    SelectorType::named("unix", "supplementary_gid", ValueRule::Number),
    SelectorType::named("unix", "path", ValueRule::AbsolutePath),
    SelectorType::named("unix", "sha256", ValueRule::Sha256),
    SelectorType::named("k8s", "ns", ValueRule::Name),
    SelectorType::named("k8s", "sa", ValueRule::Name),
    SelectorType::named("k8s", "pod-name", ValueRule::Name),
    SelectorType::named("k8s", "pod-uid", ValueRule::Name),
    SelectorType::named("k8s", "pod-label", ValueRule::Text),
    SelectorType::named("k8s", "container-name", ValueRule::Name),
    SelectorType::named("k8s", "container-image", ValueRule::Text),
    SelectorType::named("k8s", "node-name", ValueRule::Name),
    // Node aliases: entries that select agents by their SPIFFE ID.
    SelectorType::whole("spiffe_id", ValueRule::AgentId),
    // Node aliases by what k8s_psat attestation found (issuer/src/k8s/psat.rs).
    SelectorType::named(NODE_SELECTOR_KIND, "cluster", ValueRule::Name),
    SelectorType::named(NODE_SELECTOR_KIND, "agent_ns", ValueRule::Name),
    SelectorType::named(NODE_SELECTOR_KIND, "agent_sa", ValueRule::Name),
    SelectorType::named(NODE_SELECTOR_KIND, "agent_pod_name", ValueRule::Name),
    SelectorType::named(NODE_SELECTOR_KIND, "agent_pod_uid", ValueRule::Name),
    SelectorType::named(NODE_SELECTOR_KIND, "agent_node_name", ValueRule::Name),
    SelectorType::named(NODE_SELECTOR_KIND, "agent_node_uid", ValueRule::Name),
    SelectorType::named(NODE_SELECTOR_KIND, "agent_node_label", ValueRule::Text),
];

/// The selector kind node attestation gives agents; entries with it are
/// node aliases parented by the issuer.
pub const NODE_SELECTOR_KIND: &str = "k8s_psat";

/// The known selector types, for error messages.
pub fn known_selector_types() -> String {
    SELECTOR_TYPES
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The type of `selector` and the part of its value the type's rule checks.
fn selector_type(selector: &Selector) -> Result<(&'static SelectorType, &str), FieldError> {
    let unknown = |kind: &str| FieldError::UnknownSelectorType {
        kind: shown(kind),
        known: known_selector_types(),
    };
    let mut of_kind = SELECTOR_TYPES
        .iter()
        .filter(|t| t.kind == selector.kind)
        .peekable();
    let first = *of_kind.peek().ok_or_else(|| unknown(&selector.kind))?;
    if first.name.is_none() {
        return Ok((first, &selector.value));
    }
    let (name, rest) = match selector.value.split_once(':') {
        Some((name, rest)) => (name, Some(rest)),
        None => (selector.value.as_str(), None),
    };
    let found = of_kind
        .find(|t| t.name == Some(name))
        .ok_or_else(|| unknown(&format!("{}:{name}", selector.kind)))?;
    let rest = rest.ok_or_else(|| {
        invalid(
            "selectors",
            &selector.to_string(),
            format!("no value; expected {found}:VALUE"),
        )
    })?;
    Ok((found, rest))
}

/// Checks one selector against the attestors' types and value rules.
pub fn check_selector(selector: &Selector, trust_domain: &TrustDomain) -> Result<(), FieldError> {
    let (kind, value) = selector_type(selector)?;
    let whole = selector.to_string();
    let max = kind.max_value_bytes();
    if selector.value.len() > max {
        return Err(invalid(
            "selectors",
            &whole,
            format!(
                "value is {} bytes; at most {max} per value",
                selector.value.len()
            ),
        ));
    }
    let name = kind.name.unwrap_or(kind.kind);
    let reason = match kind.rule {
        ValueRule::Number => (!is_canonical_u32(value)).then(|| {
            format!("{name} must be a number from 0 to 4294967295, without sign or leading zeros")
        }),
        ValueRule::Name => {
            let bad = value.is_empty()
                || value
                    .chars()
                    .any(|c| c == ':' || c.is_whitespace() || c.is_control());
            bad.then(|| {
                format!("{name} must be a name without colon, whitespace or control characters")
            })
        }
        ValueRule::Text => (value.is_empty()
            || value.chars().any(|c| c.is_whitespace() || c.is_control()))
        .then(|| format!("{name} must be text without whitespace or control characters")),
        ValueRule::AbsolutePath => (!is_normalized_absolute_path(value)).then(|| {
            format!(
                "{name} must be an absolute path without empty, . or .. segments or a trailing /"
            )
        }),
        ValueRule::Sha256 => {
            let hex = value.len() == 64
                && value
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            (!hex).then(|| format!("{name} must be 64 lowercase hex digits"))
        }
        ValueRule::AgentId => match parse_member(value, trust_domain) {
            Err(e) => Some(id_reason(&e)),
            Ok(id) if !id.path().starts_with("/agent/") => Some(format!(
                "a node alias selects an agent: spiffe://{trust_domain}/agent/..."
            )),
            Ok(_) => None,
        },
    };
    match reason {
        Some(reason) => Err(invalid("selectors", &whole, reason)),
        None => Ok(()),
    }
}

fn is_canonical_u32(value: &str) -> bool {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    digits && (value == "0" || !value.starts_with('0')) && value.parse::<u32>().is_ok()
}

/// `/` followed by non-empty segments other than `.` and `..`, no NUL: the
/// form readlink(2) gives for /proc/<pid>/exe, the only form that can match.
fn is_normalized_absolute_path(value: &str) -> bool {
    let Some(rest) = value.strip_prefix('/') else {
        return false;
    };
    !rest.is_empty()
        && !value.contains('\0')
        && rest
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

/// Checks an entry's fields for the issuer of `trust_domain`, field by
/// field in the order of the API, counts before contents.
pub fn validate_entry(fields: &EntryFields, trust_domain: &TrustDomain) -> Result<(), FieldError> {
    check_entry_spiffe_id("spiffe_id", &fields.spiffe_id, trust_domain)?;
    check_spiffe_id("parent_id", &fields.parent_id)?;

    if fields.selectors.is_empty() {
        return Err(rule("selectors", "at least one selector is required"));
    }
    at_most_items(
        "selectors",
        "selectors",
        &fields.selectors,
        MAX_SELECTORS_PER_ENTRY,
    )?;
    for selector in &fields.selectors {
        check_selector(selector, trust_domain)?;
    }
    check_alias_selectors(fields, trust_domain)?;

    in_range(
        "x509_svid_ttl",
        fields.x509_svid_ttl,
        MAX_SVID_TTL_SECS,
        " seconds",
    )?;
    in_range(
        "jwt_svid_ttl",
        fields.jwt_svid_ttl,
        MAX_SVID_TTL_SECS,
        " seconds",
    )?;

    at_most_items(
        "dns_names",
        "DNS names",
        &fields.dns_names,
        MAX_DNS_NAMES_PER_ENTRY,
    )?;
    for name in &fields.dns_names {
        check_dns_name(name)?;
    }

    at_most_bytes("hint", &fields.hint, MAX_HINT_BYTES)?;

    at_most_items(
        "federates_with",
        "trust domains",
        &fields.federates_with,
        MAX_FEDERATES_WITH_PER_ENTRY,
    )?;
    for td in &fields.federates_with {
        check_federated_trust_domain(td, trust_domain)?;
    }

    in_range(
        "expires_at",
        fields.expires_at,
        MAX_EXPIRES_AT,
        " (unix seconds; 0 is never)",
    )
}

/// An entry parented by the issuer is a node alias for every agent whose
/// attested selectors include the entry's, so it takes node selectors
/// only; node selectors anywhere else could never match a workload.
fn check_alias_selectors(
    fields: &EntryFields,
    trust_domain: &TrustDomain,
) -> Result<(), FieldError> {
    let issuer = crate::ids::issuer_id(trust_domain);
    let by_issuer = fields.parent_id == issuer;
    match fields
        .selectors
        .iter()
        .find(|s| (s.kind == NODE_SELECTOR_KIND) != by_issuer)
    {
        None => Ok(()),
        Some(selector) if by_issuer => Err(invalid(
            "selectors",
            &selector.to_string(),
            format!(
                "an entry parented by the issuer ({issuer}) selects agents: only \
                 {NODE_SELECTOR_KIND}:... selectors"
            ),
        )),
        Some(selector) => Err(invalid(
            "selectors",
            &selector.to_string(),
            format!(
                "{NODE_SELECTOR_KIND} selectors select agents, not workloads: parent the \
                 entry on {issuer} to make a node alias"
            ),
        )),
    }
}

/// A trust domain name or ID (`other.org`, `spiffe://other.org`), not ours.
fn check_federated_trust_domain(value: &str, ours: &TrustDomain) -> Result<(), FieldError> {
    const FIELD: &str = "federates_with";
    let name = value.strip_prefix("spiffe://").unwrap_or(value);
    if name.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(invalid(
            FIELD,
            value,
            format!(
                "trust domain name is {} bytes; at most {MAX_TRUST_DOMAIN_BYTES}",
                name.len()
            ),
        ));
    }
    let parsed = parse_trust_domain(value).map_err(|e| invalid(FIELD, value, id_reason(&e)))?;
    if &parsed == ours {
        return Err(invalid(FIELD, value, "this issuer's own trust domain"));
    }
    Ok(())
}

/// A DNS name for an X.509 DNS SAN: LDH labels of at most
/// [`MAX_DNS_LABEL_BYTES`], optionally a leading `*` label, at most
/// [`MAX_DNS_NAME_BYTES`] in all.
fn check_dns_name(name: &str) -> Result<(), FieldError> {
    const FIELD: &str = "dns_names";
    if name.len() > MAX_DNS_NAME_BYTES {
        return Err(invalid(
            FIELD,
            name,
            format!("{} bytes; at most {MAX_DNS_NAME_BYTES}", name.len()),
        ));
    }
    let ok_label = |label: &str| {
        !label.is_empty()
            && label.len() <= MAX_DNS_LABEL_BYTES
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let labels: Vec<&str> = name.split('.').collect();
    let (first, rest) = labels.split_first().expect("split yields one item");
    let wildcard = *first == "*";
    let valid = (ok_label(first) || (wildcard && !rest.is_empty()))
        && rest.iter().all(|label| ok_label(label));
    if valid {
        Ok(())
    } else {
        Err(invalid(
            FIELD,
            name,
            format!("not a DNS name (letters, digits and hyphens in labels of at most {MAX_DNS_LABEL_BYTES} bytes; * only as the first label)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn good() -> EntryFields {
        EntryFields {
            spiffe_id: "spiffe://example.org/web".into(),
            parent_id: "spiffe://example.org/agent/join_token/abc".into(),
            selectors: vec![Selector::parse("unix:uid:1000").unwrap()],
            dns_names: vec!["web.example.org".into(), "*.web.example.org".into()],
            ..EntryFields::default()
        }
    }

    fn with(mutate: impl FnOnce(&mut EntryFields)) -> Result<(), FieldError> {
        let mut fields = good();
        mutate(&mut fields);
        validate_entry(&fields, &td())
    }

    #[test]
    fn field_table() {
        assert_eq!(validate_entry(&good(), &td()), Ok(()));
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
            (
                |f| f.spiffe_id = format!("spiffe://example.org/{}", "a".repeat(2048)),
                "spiffe_id",
            ),
            (|f| f.parent_id = "not an id".into(), "parent_id"),
            (|f| f.parent_id = String::new(), "parent_id"),
            (|f| f.selectors.clear(), "selectors"),
            (|f| f.x509_svid_ttl = -1, "x509_svid_ttl"),
            (|f| f.x509_svid_ttl = MAX_SVID_TTL_SECS + 1, "x509_svid_ttl"),
            (|f| f.jwt_svid_ttl = -5, "jwt_svid_ttl"),
            (|f| f.jwt_svid_ttl = i64::MAX, "jwt_svid_ttl"),
            (|f| f.dns_names = vec!["bad name".into()], "dns_names"),
            (|f| f.dns_names = vec!["-x.org".into()], "dns_names"),
            (|f| f.dns_names = vec!["*".into()], "dns_names"),
            (|f| f.dns_names = vec!["a.*.org".into()], "dns_names"),
            (|f| f.dns_names = vec!["x.org.".into()], "dns_names"),
            (|f| f.dns_names = vec![String::new()], "dns_names"),
            (
                |f| f.dns_names = vec![format!("{}.org", "a".repeat(64))],
                "dns_names",
            ),
            (|f| f.dns_names = vec!["web.org".into(); 65], "dns_names"),
            (|f| f.hint = "h".repeat(1025), "hint"),
            (|f| f.federates_with = vec!["Bad".into()], "federates_with"),
            (
                |f| f.federates_with = vec!["example.org".into()],
                "federates_with",
            ),
            (
                |f| f.federates_with = vec!["spiffe://example.org".into()],
                "federates_with",
            ),
            (
                |f| f.federates_with = vec![format!("{}.org", "a".repeat(252))],
                "federates_with",
            ),
            (
                |f| f.federates_with = vec!["other.org".into(); 65],
                "federates_with",
            ),
            (|f| f.expires_at = -1, "expires_at"),
            (|f| f.expires_at = MAX_EXPIRES_AT + 1, "expires_at"),
        ];
        for (mutate, expected) in cases {
            let mut fields = good();
            mutate(&mut fields);
            let err = validate_entry(&fields, &td()).unwrap_err();
            assert_eq!(err.field(), expected, "{err}");
            assert!(
                err.to_string().starts_with(&format!("{expected}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn limits_themselves_are_accepted() {
        let longest_id = format!("spiffe://example.org/{}", "a".repeat(2048 - 21));
        assert_eq!(longest_id.len(), MAX_SPIFFE_ID_BYTES);
        let label = "a".repeat(MAX_DNS_LABEL_BYTES);
        let longest_name = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(longest_name.len(), MAX_DNS_NAME_BYTES);
        let longest_td = format!("{}.org", "t".repeat(MAX_TRUST_DOMAIN_BYTES - 4));
        let result = with(|f| {
            f.spiffe_id = longest_id.clone();
            f.parent_id = format!("spiffe://other.org/{}", "b".repeat(2048 - 19));
            f.selectors = (0..MAX_SELECTORS_PER_ENTRY)
                .map(|i| Selector::new("unix", format!("supplementary_gid:{i}")))
                .collect();
            f.x509_svid_ttl = MAX_SVID_TTL_SECS;
            f.jwt_svid_ttl = MAX_SVID_TTL_SECS;
            f.dns_names = vec![longest_name.clone(); MAX_DNS_NAMES_PER_ENTRY];
            f.hint = "é".repeat(MAX_HINT_BYTES / 2);
            f.federates_with = vec![longest_td.clone(); MAX_FEDERATES_WITH_PER_ENTRY];
            f.expires_at = MAX_EXPIRES_AT;
        });
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn the_reported_defects_are_refused_with_the_limit() {
        let cases: Vec<(EntryFields, &str)> = vec![
            (
                EntryFields {
                    selectors: vec![Selector::parse("unix:uid:abc").unwrap()],
                    ..good()
                },
                "selectors: unix:uid:abc: uid must be a number",
            ),
            (
                EntryFields {
                    selectors: vec![Selector::parse("unx:uid").unwrap()],
                    ..good()
                },
                "selectors: unknown selector type \"unx\"; known types: unix:uid, unix:gid, \
                 unix:user, unix:group, unix:supplementary_gid, unix:path, unix:sha256, k8s:ns, \
                 k8s:sa, k8s:pod-name, k8s:pod-uid, k8s:pod-label, k8s:container-name, \
                 k8s:container-image, k8s:node-name, spiffe_id",
            ),
            (
                EntryFields {
                    parent_id: format!("spiffe://example.org/{}", "p".repeat(100 * 1024)),
                    ..good()
                },
                "parent_id: 102421 bytes; at most 2048",
            ),
            (
                EntryFields {
                    selectors: vec![Selector::parse("unix:uid:1").unwrap(); 3000],
                    ..good()
                },
                "selectors: 3000 selectors; at most 64 per entry",
            ),
        ];
        for (fields, expected) in cases {
            let message = validate_entry(&fields, &td()).unwrap_err().to_string();
            assert!(message.starts_with(expected), "{message}");
        }
    }

    #[test]
    fn selector_table() {
        let uid = |s: &str| Selector::new("unix", s);
        let agent = "spiffe://example.org/agent/join_token/0123abcd";
        let hash = "0123456789abcdef".repeat(4);
        let accepted = [
            uid("uid:0"),
            uid("uid:4294967295"),
            uid("gid:100"),
            uid("supplementary_gid:27"),
            uid("user:alice"),
            uid("user:machine$"),
            uid("group:docker-users"),
            uid("user:jürgen"),
            uid("path:/usr/bin/web"),
            uid("path:/opt/my app/bin"),
            uid(&format!(
                "path:/{}",
                "p".repeat(MAX_SELECTOR_VALUE_BYTES - 6)
            )),
            uid(&format!("sha256:{hash}")),
            Selector::new("spiffe_id", agent),
            Selector::new("k8s", "ns:default"),
            Selector::new("k8s", "pod-label:app:web"),
            Selector::new("k8s", "container-image:ghcr.io/acme/web@sha256:abc"),
        ];
        for selector in &accepted {
            assert_eq!(check_selector(selector, &td()), Ok(()), "{selector}");
        }
        let refused: Vec<(Selector, &str)> = vec![
            (uid("uid:abc"), "uid must be a number"),
            (uid("uid:-1"), "uid must be a number"),
            (uid("uid:+1"), "uid must be a number"),
            (uid("uid:01"), "leading zeros"),
            (uid("uid:4294967296"), "4294967295"),
            (uid("uid: 1"), "uid must be a number"),
            (uid("uid:"), "uid must be a number"),
            (uid("uid"), "no value; expected unix:uid:VALUE"),
            (uid("gid:1.0"), "gid must be a number"),
            (uid("supplementary_gid:x"), "supplementary_gid must be"),
            (uid("user:a:b"), "without colon"),
            (uid("user:a b"), "whitespace"),
            (uid("group:"), "group must be a name"),
            (uid("path:usr/bin/web"), "absolute path"),
            (uid("path:/"), "absolute path"),
            (uid("path:/usr/../bin"), "absolute path"),
            (uid("path:/usr//bin"), "absolute path"),
            (uid("path:/usr/bin/"), "absolute path"),
            (
                uid(&format!("path:/{}", "p".repeat(MAX_SELECTOR_VALUE_BYTES))),
                "at most 1024 per value",
            ),
            (
                uid(&format!("sha256:{}", hash.to_uppercase())),
                "64 lowercase hex",
            ),
            (uid(&format!("sha256:{}", &hash[1..])), "64 lowercase hex"),
            (uid(&format!("sha256:{hash}0")), "64 lowercase hex"),
            (uid("sha256:xyz"), "64 lowercase hex"),
            (uid("foo:1"), "unknown selector type \"unix:foo\""),
            (uid("UID:1"), "unknown selector type \"unix:UID\""),
            (
                Selector::new("UNIX", "uid:1"),
                "unknown selector type \"UNIX\"",
            ),
            (
                Selector::new("unx", "uid:1"),
                "unknown selector type \"unx\"",
            ),
            (Selector::new("k8s", "colour:blue"), "unknown selector type"),
            (
                Selector::new("k8s", "pod-label:app:my web"),
                "without whitespace",
            ),
            (Selector::new("", "x"), "unknown selector type \"\""),
            (Selector::new("spiffe_id", "not an id"), "not a SPIFFE ID"),
            (
                Selector::new("spiffe_id", "spiffe://other.org/agent/x"),
                "this issuer serves",
            ),
            (
                Selector::new("spiffe_id", "spiffe://example.org/web"),
                "selects an agent",
            ),
            (
                Selector::new("spiffe_id", format!("{agent}/{}", "a".repeat(2048))),
                "at most 2048 per value",
            ),
        ];
        for (selector, expected) in refused {
            let err = check_selector(&selector, &td()).unwrap_err();
            assert_eq!(err.field(), "selectors");
            assert!(err.to_string().contains(expected), "{selector}: {err}");
        }
    }

    #[test]
    fn node_selectors_belong_to_entries_the_issuer_parents() {
        let alias = |selectors: &[&str]| {
            with(|f| {
                f.parent_id = "spiffe://example.org/sigil/issuer".into();
                f.dns_names.clear();
                f.selectors = selectors
                    .iter()
                    .map(|s| Selector::parse(s).unwrap())
                    .collect();
            })
        };
        assert_eq!(
            alias(&[
                "k8s_psat:cluster:demo",
                "k8s_psat:agent_node_label:topology.kubernetes.io/zone:eu-1"
            ]),
            Ok(())
        );
        let err = alias(&["k8s_psat:cluster:demo", "unix:uid:0"]).unwrap_err();
        assert!(
            err.to_string().contains("only k8s_psat:... selectors"),
            "{err}"
        );
        let err = with(|f| f.selectors = vec![Selector::parse("k8s_psat:cluster:demo").unwrap()])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("parent the entry on spiffe://example.org/sigil/issuer"),
            "{err}"
        );
    }

    #[test]
    fn messages_quote_only_a_prefix() {
        let huge = "é".repeat(50_000);
        let cases = [
            with(|f| f.selectors = vec![Selector::new(huge.clone(), "x")]),
            with(|f| f.selectors = vec![Selector::new("unix", huge.clone())]),
            with(|f| f.selectors = vec![Selector::new("unix", format!("uid:{huge}"))]),
            with(|f| f.spiffe_id = format!("spiffe://example.org/{}", "\u{1}".repeat(2000))),
            with(|f| f.dns_names = vec![huge.clone()]),
            with(|f| f.federates_with = vec![huge.clone()]),
            with(|f| f.federates_with = vec![format!("spiffe://{}", "\u{7}".repeat(250))]),
        ];
        for result in cases {
            let message = result.unwrap_err().to_string();
            assert!(message.len() < 600, "{} bytes: {message}", message.len());
        }
    }

    #[test]
    fn admin_arguments() {
        assert_eq!(check_entry_id("").unwrap_err().field(), "id");
        assert_eq!(
            check_entry_id(&"x".repeat(256)).unwrap_err().to_string(),
            "id: 256 bytes; at most 255"
        );
        assert_eq!(check_entry_id(&crate::ids::uuid_v4()), Ok(()));
        assert_eq!(check_id_filter("parent_id", ""), Ok(()));
        assert_eq!(check_id_filter("parent_id", "spiffe://x.org/a"), Ok(()));
        assert_eq!(
            check_id_filter("parent_id", "nope").unwrap_err().field(),
            "parent_id"
        );
        assert_eq!(
            check_join_token_ttl(MAX_JOIN_TOKEN_TTL_SECS + 1)
                .unwrap_err()
                .to_string(),
            "ttl: 31536001; must be from 0 to 31536000 seconds"
        );
        assert_eq!(check_join_token_ttl(0), Ok(()));
        assert!(check_join_token_ttl(-1).is_err());
    }

    #[test]
    fn shown_cuts_on_a_char_boundary() {
        assert_eq!(shown("short"), "short");
        assert_eq!(shown("a\nb"), "a\\nb");
        let cut = shown(&"é".repeat(100));
        assert!(cut.ends_with('…') && cut.len() <= SHOWN_BYTES + '…'.len_utf8());
    }
}
