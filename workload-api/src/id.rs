//! SPIFFE IDs and trust domains (SPIFFE-ID.md section 2).
//!
//! The types are the `spiffe` crate's. That crate lowercases mixed-case trust
//! domains and schemes on input; the standard (and go-spiffe) only admit
//! lowercase, so [`parse_spiffe_id`] and [`parse_trust_domain`] refuse them first.

pub use spiffe::{SpiffeId, TrustDomain};

use spiffe::SpiffeIdError;

const SCHEME_PREFIX: &str = "spiffe://";

/// The longest SPIFFE ID Sigil accepts or issues: SPIFFE-ID.md section 2.3
/// asks that implementations support 2,048 bytes and not generate longer.
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("invalid SPIFFE ID {input:?}: {reason}")]
    Invalid {
        input: String,
        reason: SpiffeIdError,
    },
    #[error("invalid SPIFFE ID {input:?}: scheme must be exactly \"spiffe://\" in lowercase")]
    SchemeNotLowercase { input: String },
    #[error("invalid trust domain in {input:?}: trust domain names are lowercase")]
    TrustDomainNotLowercase { input: String },
    #[error("invalid trust domain {input:?}: {reason}")]
    InvalidTrustDomain {
        input: String,
        reason: SpiffeIdError,
    },
    #[error("SPIFFE ID {input:?} belongs to trust domain {actual:?}, expected {expected:?}")]
    WrongTrustDomain {
        input: String,
        expected: String,
        actual: String,
    },
    #[error("SPIFFE ID {input:?} has a path; a trust domain ID has none")]
    UnexpectedPath { input: String },
}

/// Parses a SPIFFE ID exactly as SPIFFE-ID.md allows it.
pub fn parse_spiffe_id(input: &str) -> Result<SpiffeId, IdError> {
    if let Some((scheme, rest)) = input.split_once("://") {
        if scheme.eq_ignore_ascii_case("spiffe") && scheme != "spiffe" {
            return Err(IdError::SchemeNotLowercase {
                input: input.to_owned(),
            });
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(IdError::TrustDomainNotLowercase {
                input: input.to_owned(),
            });
        }
    }
    SpiffeId::new(input).map_err(|reason| IdError::Invalid {
        input: input.to_owned(),
        reason,
    })
}

/// Parses a trust domain name (`example.org`) or a trust domain ID (`spiffe://example.org`).
pub fn parse_trust_domain(input: &str) -> Result<TrustDomain, IdError> {
    if let Some(rest) = input.strip_prefix(SCHEME_PREFIX) {
        let id = parse_spiffe_id(input)?;
        if !id.path().is_empty() || rest.ends_with('/') {
            return Err(IdError::UnexpectedPath {
                input: input.to_owned(),
            });
        }
        return Ok(id.trust_domain().clone());
    }
    if input.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(IdError::TrustDomainNotLowercase {
            input: input.to_owned(),
        });
    }
    if input.contains(":/") {
        return parse_spiffe_id(input).map(|id| id.trust_domain().clone());
    }
    TrustDomain::new(input).map_err(|reason| IdError::InvalidTrustDomain {
        input: input.to_owned(),
        reason,
    })
}

/// Parses a SPIFFE ID and checks that it belongs to `trust_domain`.
pub fn parse_member(input: &str, trust_domain: &TrustDomain) -> Result<SpiffeId, IdError> {
    let id = parse_spiffe_id(input)?;
    if !id.is_member_of(trust_domain) {
        return Err(IdError::WrongTrustDomain {
            input: input.to_owned(),
            expected: trust_domain.to_string(),
            actual: id.trust_domain().to_string(),
        });
    }
    Ok(id)
}

/// The `spiffe://<td>` form used as bundle map keys in the Workload API.
pub fn trust_domain_id(td: &TrustDomain) -> String {
    td.id_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_id_table() {
        let long_path = format!("/{}", "a".repeat(2048 - "spiffe://example.org/".len()));
        let long_id = format!("spiffe://example.org{long_path}");
        assert_eq!(long_id.len(), 2048);
        let long_td = format!("spiffe://{}/x", "a".repeat(255));
        let too_long_td = format!("spiffe://{}/x", "a".repeat(256));
        let cases: Vec<(&str, bool)> = vec![
            ("spiffe://example.org", true),
            ("spiffe://example.org/", false),
            ("spiffe://example.org/a/b", true),
            ("spiffe://example.org/A-Z_a.z0-9", true),
            ("spiffe://ex-am_ple.org.0", true),
            ("spiffe://example.org/a/", false),
            ("spiffe://example.org//a", false),
            ("spiffe://example.org/./a", false),
            ("spiffe://example.org/a/..", false),
            ("spiffe://example.org/a%20b", false),
            ("spiffe://example.org/a b", false),
            ("spiffe://example.org/a?x=1", false),
            ("spiffe://example.org/a#frag", false),
            ("spiffe://user@example.org/a", false),
            ("spiffe://example.org:8080/a", false),
            ("spiffe://Example.org/a", false),
            ("SPIFFE://example.org/a", false),
            ("https://example.org/a", false),
            ("spiffe:///a", false),
            ("spiffe://", false),
            ("example.org/a", false),
            ("", false),
            ("spiffe://exa%6dple.org/a", false),
            ("spiffe://exa$mple.org/a", false),
            (long_id.as_str(), true),
            (long_td.as_str(), true),
            (too_long_td.as_str(), false),
        ];
        for (input, ok) in cases {
            assert_eq!(parse_spiffe_id(input).is_ok(), ok, "{input:?}");
        }
    }

    #[test]
    fn round_trip_is_exact() {
        let id = parse_spiffe_id("spiffe://example.org/ns/prod/sa/web").unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/ns/prod/sa/web");
        assert_eq!(id.trust_domain().as_str(), "example.org");
        assert_eq!(id.path(), "/ns/prod/sa/web");
    }

    #[test]
    fn trust_domain_table() {
        let cases = [
            ("example.org", true),
            ("spiffe://example.org", true),
            ("spiffe://example.org/", false),
            ("spiffe://example.org/path", false),
            ("Example.org", false),
            ("exa mple", false),
            ("", false),
            ("https://example.org", false),
        ];
        for (input, ok) in cases {
            assert_eq!(parse_trust_domain(input).is_ok(), ok, "{input:?}");
        }
    }

    #[test]
    fn membership() {
        let td = parse_trust_domain("example.org").unwrap();
        assert!(parse_member("spiffe://example.org/a", &td).is_ok());
        let err = parse_member("spiffe://other.org/a", &td).unwrap_err();
        assert!(err.to_string().contains("other.org"), "{err}");
    }
}
