//! The issuer's signed revocation list: which owners are revoked, so that a
//! verifier refuses JWT-SVIDs and WITs bound to them before they expire.
//! X509-SVIDs are revoked through CRLs instead (RFC 5280); this list is for
//! the tokens, which CRLs cannot name. The format is Sigil's:
//!
//! - a compact JWS, header `alg`, `kid` (a WIT authority of the trust
//!   domain's bundle: verifiers of WITs already hold those keys), `typ`
//!   [`REVOCATIONS_TYP`];
//! - claims: `iss` (the trust domain's SPIFFE ID), `seq` (increases with
//!   every list, so an older one is never taken for news), `iat`, `exp` (a
//!   list past it is stale: verifiers then refuse owner-bound tokens rather
//!   than trust an outdated view), and `owners`: `[{id, jkt, revoked_at}]`.
//!
//! The issuer serves it at `GET /v1/revocations` (`?after=SEQ` waits up to
//! 30 s for a newer one), and agents receive it with their entries.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::bundle::Bundle;
use crate::id::{trust_domain_id, TrustDomain};
use crate::jwk::Algorithm;
use crate::owner::OwnerBinding;

/// The revocation list's `typ`.
pub const REVOCATIONS_TYP: &str = "sigil-revocations+jwt";

/// The largest revocation list accepted.
pub const MAX_REVOCATIONS_BYTES: usize = 4 * 1024 * 1024;

/// A revoked owner as the list names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedOwner {
    pub id: String,
    /// RFC 7638 thumbprint of the owner key, base64url.
    pub jkt: String,
    pub revoked_at: u64,
}

/// The list's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationClaims {
    pub iss: String,
    pub seq: u64,
    pub iat: u64,
    pub exp: u64,
    pub owners: Vec<RevokedOwner>,
}

/// A verified revocation list, ready to consult.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    pub seq: u64,
    pub issued_at: u64,
    pub expires_at: u64,
    owner_ids: HashSet<String>,
    thumbprints: HashSet<String>,
    /// The JWS as received, to pass on.
    pub jws: String,
}

/// Why a revocation list was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    #[error("revocation list is {len} bytes; at most {MAX_REVOCATIONS_BYTES}")]
    TooLarge { len: usize },
    #[error("revocation list is not a compact JWS: {0}")]
    Malformed(#[from] crate::jws::JwsError),
    #[error("revocation list typ is {0:?}, not \"{REVOCATIONS_TYP}\"")]
    WrongType(Option<String>),
    #[error("revocation list alg {0:?} is not allowed")]
    Algorithm(Option<String>),
    #[error("revocation list key {kid:?} is not a WIT authority of {trust_domain}")]
    UnknownKey { kid: String, trust_domain: String },
    #[error("revocation list signature does not verify")]
    BadSignature,
    #[error("revocation list claims are malformed: {0}")]
    Claims(String),
    #[error("revocation list is for {found}, not {expected}")]
    AnotherTrustDomain { found: String, expected: String },
    #[error("revocation list {seq} is older than the one held ({held})")]
    Older { seq: u64, held: u64 },
}

impl RevocationList {
    /// Whether `owner` is revoked: by id or by key.
    pub fn revokes(&self, owner: &OwnerBinding) -> bool {
        self.owner_ids.contains(&owner.owner_id)
            || self.thumbprints.contains(&owner.key_thumbprint_b64())
    }

    /// Whether the list is past its `exp` at `now` (Unix seconds).
    pub fn is_stale(&self, now: u64) -> bool {
        now >= self.expires_at
    }

    /// How many owners it revokes.
    pub fn revoked_owners(&self) -> usize {
        self.owner_ids.len()
    }
}

/// What a node holds of its issuer's revocations, to serve: the CRLs that
/// X.509 responses carry, and the list that token validation consults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    pub crls: Vec<Vec<u8>>,
    pub list: Option<RevocationList>,
}

impl Revocations {
    /// The list's sequence number; 0 before the first.
    pub fn seq(&self) -> u64 {
        self.list.as_ref().map_or(0, |l| l.seq)
    }

    /// Why a token bound to `owner` must be refused at `now` (Unix
    /// seconds), if it must: its owner is revoked, or no current list says
    /// it is not.
    pub fn refusal(&self, owner: &OwnerBinding, now: u64) -> Option<String> {
        let Some(list) = &self.list else {
            return Some(format!(
                "no revocation list has arrived yet, so owner {} cannot be checked",
                owner.owner_id
            ));
        };
        if list.revokes(owner) {
            return Some(format!("its owner {} is revoked", owner.owner_id));
        }
        if list.is_stale(now) {
            return Some(format!(
                "the revocation list expired at {}, so owner {} cannot be checked",
                list.expires_at, owner.owner_id
            ));
        }
        None
    }
}

/// Signs a revocation list with a WIT authority's key.
pub fn sign(
    claims: &RevocationClaims,
    kid: &str,
    alg: Algorithm,
    key: &jsonwebtoken::EncodingKey,
) -> Result<String, crate::jws::JwsError> {
    let header = serde_json::json!({"alg": alg.name(), "kid": kid, "typ": REVOCATIONS_TYP});
    crate::jws::sign_with(&header, claims, alg, key)
}

/// Verifies a revocation list against `bundle` (its WIT authorities). The
/// list must be for the bundle's trust domain; staleness is the caller's
/// question ([`RevocationList::is_stale`]), since a stale list still
/// revokes what it names.
pub fn verify(jws: &str, bundle: &Bundle) -> Result<RevocationList, RevocationError> {
    if jws.len() > MAX_REVOCATIONS_BYTES {
        return Err(RevocationError::TooLarge { len: jws.len() });
    }
    let token = crate::jws::parse(jws)?;
    if token.header.typ.as_deref() != Some(REVOCATIONS_TYP) {
        return Err(RevocationError::WrongType(token.header.typ.clone()));
    }
    let alg = token
        .header
        .alg
        .as_deref()
        .and_then(Algorithm::from_name)
        .filter(|a| a.is_spiffe())
        .ok_or_else(|| RevocationError::Algorithm(token.header.alg.clone()))?;
    let trust_domain = bundle.trust_domain();
    let kid = token.header.kid.clone().unwrap_or_default();
    let key = bundle
        .wit_authority(&kid)
        .ok_or_else(|| RevocationError::UnknownKey {
            kid: kid.clone(),
            trust_domain: trust_domain.to_string(),
        })?;
    if !token.verifies(alg, key) {
        return Err(RevocationError::BadSignature);
    }
    let claims: RevocationClaims = serde_json::from_value(serde_json::Value::Object(token.claims))
        .map_err(|e| RevocationError::Claims(e.to_string()))?;
    check_issuer(&claims, trust_domain)?;
    Ok(RevocationList {
        seq: claims.seq,
        issued_at: claims.iat,
        expires_at: claims.exp,
        owner_ids: claims.owners.iter().map(|o| o.id.clone()).collect(),
        thumbprints: claims.owners.iter().map(|o| o.jkt.clone()).collect(),
        jws: jws.to_owned(),
    })
}

fn check_issuer(
    claims: &RevocationClaims,
    trust_domain: &TrustDomain,
) -> Result<(), RevocationError> {
    let expected = trust_domain_id(trust_domain);
    if claims.iss != expected {
        return Err(RevocationError::AnotherTrustDomain {
            found: claims.iss.clone(),
            expected,
        });
    }
    Ok(())
}

/// `next` if it is at least as new as `held`: a list never goes back.
pub fn newer(
    held: Option<&RevocationList>,
    next: RevocationList,
) -> Result<RevocationList, RevocationError> {
    match held {
        Some(held) if next.seq < held.seq => Err(RevocationError::Older {
            seq: next.seq,
            held: held.seq,
        }),
        _ => Ok(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::JwtAuthority;
    use crate::keypair::KeyPair;
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    struct Issuer {
        bundle: Bundle,
        key: jsonwebtoken::EncodingKey,
    }

    fn issuer() -> Issuer {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let public = KeyPair::from_pkcs8(Algorithm::ES256, pkcs8.as_ref())
            .unwrap()
            .public_key()
            .clone();
        let mut bundle = Bundle::new(TrustDomain::new("example.org").unwrap());
        bundle.add_wit_authority(JwtAuthority {
            kid: "w1".into(),
            key: public,
        });
        Issuer {
            bundle,
            key: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
        }
    }

    fn claims(seq: u64) -> RevocationClaims {
        RevocationClaims {
            iss: "spiffe://example.org".into(),
            seq,
            iat: 100,
            exp: 200,
            owners: vec![RevokedOwner {
                id: "mailto:alice@example.org".into(),
                jkt: "a2V5".into(),
                revoked_at: 90,
            }],
        }
    }

    fn owner(id: &str, thumbprint: [u8; 32]) -> OwnerBinding {
        OwnerBinding {
            owner_id: id.into(),
            key_thumbprint: thumbprint,
            consent_sha256: [0; 32],
            actors: Vec::new(),
        }
    }

    #[test]
    fn a_signed_list_revokes_its_owners_and_goes_stale() {
        let issuer = issuer();
        let jws = sign(&claims(5), "w1", Algorithm::ES256, &issuer.key).unwrap();
        let list = verify(&jws, &issuer.bundle).unwrap();
        assert_eq!(list.seq, 5);
        assert!(list.revokes(&owner("mailto:alice@example.org", [9; 32])));
        assert!(!list.revokes(&owner("mailto:bob@example.org", [9; 32])));
        assert!(!list.is_stale(199));
        assert!(list.is_stale(200));
        let older = verify(
            &sign(&claims(4), "w1", Algorithm::ES256, &issuer.key).unwrap(),
            &issuer.bundle,
        )
        .unwrap();
        assert_eq!(
            newer(Some(&list), older).unwrap_err(),
            RevocationError::Older { seq: 4, held: 5 }
        );
    }

    #[test]
    fn forged_foreign_and_mistyped_lists_are_refused() {
        let issuer = issuer();
        let other = self::issuer();
        let forged = sign(&claims(1), "w1", Algorithm::ES256, &other.key).unwrap();
        assert_eq!(
            verify(&forged, &issuer.bundle).unwrap_err(),
            RevocationError::BadSignature
        );
        let unknown = sign(&claims(1), "w2", Algorithm::ES256, &issuer.key).unwrap();
        assert!(matches!(
            verify(&unknown, &issuer.bundle),
            Err(RevocationError::UnknownKey { .. })
        ));
        let mut foreign = claims(1);
        foreign.iss = "spiffe://other.org".into();
        let foreign = sign(&foreign, "w1", Algorithm::ES256, &issuer.key).unwrap();
        assert_eq!(
            verify(&foreign, &issuer.bundle).unwrap_err().to_string(),
            "revocation list is for spiffe://other.org, not spiffe://example.org"
        );
        let header = serde_json::json!({"alg": "ES256", "kid": "w1", "typ": "wit+jwt"});
        let mistyped =
            crate::jws::sign_with(&header, &claims(1), Algorithm::ES256, &issuer.key).unwrap();
        assert_eq!(
            verify(&mistyped, &issuer.bundle).unwrap_err(),
            RevocationError::WrongType(Some("wit+jwt".into()))
        );
    }
}
