//! Owner consent: a compact JWS (RFC 7515) an owner signs offline with its
//! own key, saying which workload identities it answers for. It is the
//! owner pre-signed model of draft-ni-wimse-ai-agent-identity; the format
//! is Sigil's:
//!
//! - header: `alg` (`EdDSA` or `ES256`, fitting the owner key), `typ`
//!   [`CONSENT_TYP`], `kid` the owner key's RFC 7638 thumbprint;
//! - claims: `iss` (the owner id), exactly one of `spiffe_id` or
//!   `spiffe_id_prefix` (ending in `/`), `selectors` (sorted, distinct
//!   `type:value` strings), `iat`, `nbf`, `exp`, `jti`, and optionally
//!   `delegation` (`max_depth`, `max_children`): how far workloads under a
//!   prefix may register children of their own.
//!
//! The issuer never holds the owner's private key: it verifies the JWS
//! against the registered public key and keeps the JWS.

use serde::{Deserialize, Serialize};

use crate::jwk::PublicKey;
use crate::keypair::KeyPair;
use crate::owner::{algorithm_for, check_owner_id, OwnerIdError};

/// The consent JWS's `typ`.
pub const CONSENT_TYP: &str = "sigil-consent+jwt";

/// The largest consent JWS accepted.
pub const MAX_CONSENT_BYTES: usize = 16 * 1024;

/// The deepest delegation a consent may allow.
pub const MAX_DELEGATION_DEPTH: u32 = 8;

/// The most children per delegating workload a consent may allow.
pub const MAX_CHILDREN: u32 = 1000;

/// What the owner consents to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentClaims {
    /// The owner's id.
    pub iss: String,
    /// The one SPIFFE ID consented to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// A path prefix (ending in `/`): every SPIFFE ID under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id_prefix: Option<String>,
    /// The selectors the workload is chosen by, as `type:value`, sorted.
    pub selectors: Vec<String>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<Delegation>,
}

/// How far workloads under a prefix consent may register children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delegation {
    /// Levels of children below the registered workload (1: children only).
    pub max_depth: u32,
    /// Children each workload may register.
    pub max_children: u32,
}

/// Why a consent was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsentError {
    #[error("consent is {len} bytes; at most {MAX_CONSENT_BYTES}")]
    TooLarge { len: usize },
    #[error("consent is not a compact JWS: {0}")]
    Malformed(#[from] crate::jws::JwsError),
    #[error("consent typ is {0:?}, not \"{CONSENT_TYP}\"")]
    WrongType(Option<String>),
    #[error("consent alg is {found:?}; the owner key signs with {expected}")]
    WrongAlgorithm {
        found: Option<String>,
        expected: &'static str,
    },
    #[error("consent was signed by another key: kid {found:?}, the owner's key is {expected}")]
    AnotherKey {
        found: Option<String>,
        expected: String,
    },
    #[error("consent signature does not verify with the owner's key")]
    BadSignature,
    #[error("consent claims are malformed: {0}")]
    Claims(String),
    #[error("consent: {0}")]
    OwnerId(#[from] OwnerIdError),
    #[error("consent is not valid before {}", rfc3339(*.nbf))]
    NotYetValid { nbf: u64 },
    #[error("consent expired at {}", rfc3339(*.exp))]
    Expired { exp: u64 },
    #[error("consent cannot be signed: {0}")]
    Signing(#[from] crate::owner::OwnerKeyError),
}

/// Seconds since the epoch as RFC 3339 (UTC), for messages.
fn rfc3339(secs: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(time).to_string()
}

impl ConsentClaims {
    /// Whether the consent covers `spiffe_id`: equal to `spiffe_id`, or
    /// under `spiffe_id_prefix`.
    pub fn covers(&self, spiffe_id: &str) -> bool {
        match (&self.spiffe_id, &self.spiffe_id_prefix) {
            (Some(exact), _) => exact == spiffe_id,
            (None, Some(prefix)) => {
                spiffe_id.len() > prefix.len() && spiffe_id.starts_with(prefix.as_str())
            }
            (None, None) => false,
        }
    }

    /// The selectors as the claim carries them: `type:value`, sorted, distinct.
    pub fn canonical_selectors<'a>(selectors: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut out: Vec<String> = selectors.into_iter().map(str::to_owned).collect();
        out.sort();
        out.dedup();
        out
    }

    fn check(&self) -> Result<(), ConsentError> {
        check_owner_id(&self.iss)?;
        let claims = |reason: &str| Err(ConsentError::Claims(reason.into()));
        match (&self.spiffe_id, &self.spiffe_id_prefix) {
            (Some(id), None) => {
                crate::id::parse_spiffe_id(id)
                    .map_err(|e| ConsentError::Claims(format!("spiffe_id: {e}")))?;
            }
            (None, Some(prefix)) => {
                let Some(base) = prefix.strip_suffix('/') else {
                    return claims("spiffe_id_prefix must end with '/'");
                };
                crate::id::parse_spiffe_id(base)
                    .map_err(|e| ConsentError::Claims(format!("spiffe_id_prefix: {e}")))?;
            }
            _ => return claims("exactly one of spiffe_id and spiffe_id_prefix is required"),
        }
        if self.delegation.is_some() && self.spiffe_id_prefix.is_none() {
            return claims("delegation needs a spiffe_id_prefix");
        }
        if let Some(d) = self.delegation {
            if d.max_depth == 0 || d.max_depth > MAX_DELEGATION_DEPTH {
                return Err(ConsentError::Claims(format!(
                    "delegation.max_depth is {}; must be from 1 to {MAX_DELEGATION_DEPTH}",
                    d.max_depth
                )));
            }
            if d.max_children == 0 || d.max_children > MAX_CHILDREN {
                return Err(ConsentError::Claims(format!(
                    "delegation.max_children is {}; must be from 1 to {MAX_CHILDREN}",
                    d.max_children
                )));
            }
        }
        if self.selectors.is_empty() {
            return claims("selectors: at least one is required");
        }
        if self.selectors.iter().any(|s| !s.contains(':')) {
            return claims("selectors: each is type:value");
        }
        if Self::canonical_selectors(self.selectors.iter().map(String::as_str)) != self.selectors {
            return claims("selectors must be sorted and distinct");
        }
        if self.exp <= self.nbf {
            return claims("exp must be after nbf");
        }
        if self.jti.is_empty() {
            return claims("jti is required");
        }
        Ok(())
    }
}

/// Signs `claims` with the owner's key.
pub fn sign(claims: &ConsentClaims, key: &KeyPair) -> Result<String, ConsentError> {
    claims.check()?;
    let alg = algorithm_for(key.public_key())?;
    let header = serde_json::json!({
        "alg": alg.name(),
        "typ": CONSENT_TYP,
        "kid": key.public_key().thumbprint(),
    });
    Ok(key.sign_jws(&header, claims))
}

/// Verifies a consent JWS against the owner's registered key at `now`
/// (Unix seconds). The claims are checked for form and validity window;
/// whether they cover an entry is the caller's question.
pub fn verify(jws: &str, owner_key: &PublicKey, now: u64) -> Result<ConsentClaims, ConsentError> {
    let claims = verify_ignoring_time(jws, owner_key)?;
    if now < claims.nbf {
        return Err(ConsentError::NotYetValid { nbf: claims.nbf });
    }
    if now >= claims.exp {
        return Err(ConsentError::Expired { exp: claims.exp });
    }
    Ok(claims)
}

/// Verifies a consent's signature and form, not its validity window: for
/// showing a stored consent.
pub fn verify_ignoring_time(
    jws: &str,
    owner_key: &PublicKey,
) -> Result<ConsentClaims, ConsentError> {
    if jws.len() > MAX_CONSENT_BYTES {
        return Err(ConsentError::TooLarge { len: jws.len() });
    }
    let token = crate::jws::parse(jws)?;
    if token.header.typ.as_deref() != Some(CONSENT_TYP) {
        return Err(ConsentError::WrongType(token.header.typ.clone()));
    }
    let expected_alg = algorithm_for(owner_key)?;
    if token.header.alg.as_deref() != Some(expected_alg.name()) {
        return Err(ConsentError::WrongAlgorithm {
            found: token.header.alg.clone(),
            expected: expected_alg.name(),
        });
    }
    let thumbprint = owner_key.thumbprint();
    if token.header.kid.as_deref() != Some(thumbprint.as_str()) {
        return Err(ConsentError::AnotherKey {
            found: token.header.kid.clone(),
            expected: thumbprint,
        });
    }
    if !token.verifies(expected_alg, owner_key) {
        return Err(ConsentError::BadSignature);
    }
    let claims: ConsentClaims = serde_json::from_value(serde_json::Value::Object(token.claims))
        .map_err(|e| ConsentError::Claims(e.to_string()))?;
    claims.check()?;
    Ok(claims)
}

/// The owner a consent names, read without verifying it: to find the key
/// to verify it with.
pub fn claimed_owner(jws: &str) -> Result<String, ConsentError> {
    if jws.len() > MAX_CONSENT_BYTES {
        return Err(ConsentError::TooLarge { len: jws.len() });
    }
    let token = crate::jws::parse(jws)?;
    token
        .str_claim("iss")
        .map(str::to_owned)
        .ok_or_else(|| ConsentError::Claims("iss (the owner id) is missing".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwk::Algorithm;

    fn claims() -> ConsentClaims {
        ConsentClaims {
            iss: "mailto:alice@example.org".into(),
            spiffe_id: Some("spiffe://td/agents/alice/bot".into()),
            spiffe_id_prefix: None,
            selectors: vec!["unix:uid:1000".into()],
            iat: 100,
            nbf: 100,
            exp: 200,
            jti: "j1".into(),
            delegation: None,
        }
    }

    #[test]
    fn signed_consent_verifies_only_with_its_key_and_window() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256] {
            let key = KeyPair::generate(alg).unwrap();
            let jws = sign(&claims(), &key).unwrap();
            assert_eq!(verify(&jws, key.public_key(), 150).unwrap(), claims());
            assert_eq!(claimed_owner(&jws).unwrap(), "mailto:alice@example.org");
            assert_eq!(
                verify(&jws, key.public_key(), 200).unwrap_err(),
                ConsentError::Expired { exp: 200 }
            );
            assert_eq!(
                verify(&jws, key.public_key(), 99).unwrap_err(),
                ConsentError::NotYetValid { nbf: 100 }
            );
            let other = KeyPair::generate(alg).unwrap();
            assert!(matches!(
                verify(&jws, other.public_key(), 150),
                Err(ConsentError::AnotherKey { .. })
            ));
        }
    }

    #[test]
    fn a_forged_signature_and_a_wrong_typ_are_refused() {
        let key = KeyPair::generate(Algorithm::EdDSA).unwrap();
        let jws = sign(&claims(), &key).unwrap();
        // A character well inside the signature: the last one may only
        // carry padding bits.
        let at = jws.len() - 10;
        let flipped = if &jws[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{flipped}{}", &jws[..at], &jws[at + 1..]);
        assert_eq!(
            verify(&forged, key.public_key(), 150).unwrap_err(),
            ConsentError::BadSignature
        );
        let header =
            serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": key.public_key().thumbprint()});
        let wrong = key.sign_jws(&header, &claims());
        assert_eq!(
            verify(&wrong, key.public_key(), 150).unwrap_err(),
            ConsentError::WrongType(Some("JWT".into()))
        );
    }

    #[test]
    fn claims_are_checked_for_form() {
        let key = KeyPair::generate(Algorithm::EdDSA).unwrap();
        let refused = |c: ConsentClaims| sign(&c, &key).unwrap_err().to_string();
        let mut both = claims();
        both.spiffe_id_prefix = Some("spiffe://td/agents/".into());
        assert!(refused(both).contains("exactly one of"));
        let mut no_slash = claims();
        no_slash.spiffe_id = None;
        no_slash.spiffe_id_prefix = Some("spiffe://td/agents".into());
        assert!(refused(no_slash).contains("must end with '/'"));
        let mut unsorted = claims();
        unsorted.selectors = vec!["unix:uid:1000".into(), "unix:gid:5".into()];
        assert!(refused(unsorted).contains("sorted and distinct"));
        let mut exact_delegation = claims();
        exact_delegation.delegation = Some(Delegation {
            max_depth: 1,
            max_children: 1,
        });
        assert!(refused(exact_delegation).contains("needs a spiffe_id_prefix"));
    }

    #[test]
    fn prefix_consent_covers_ids_under_it_only() {
        let mut c = claims();
        c.spiffe_id = None;
        c.spiffe_id_prefix = Some("spiffe://td/agents/alice/".into());
        assert!(c.covers("spiffe://td/agents/alice/bot"));
        assert!(!c.covers("spiffe://td/agents/alice/"));
        assert!(!c.covers("spiffe://td/agents/alicebot"));
        assert!(claims().covers("spiffe://td/agents/alice/bot"));
        assert!(!claims().covers("spiffe://td/agents/alice/bot2"));
    }

    #[test]
    fn times_render_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_600), "2027-01-01T00:00:00Z");
    }
}
