//! Owners and their consent: registering an owner's public key, checking
//! that a consent JWS binds an entry to its owner, and the binding an
//! owner-bound entry's credentials carry. Formats: `workload_api::owner`
//! and `workload_api::consent`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use workload_api::consent::{self, ConsentClaims, ConsentError};
use workload_api::jwk::{Jwk, PublicKey};
use workload_api::owner::{self, OwnerBinding, OwnerIdError, OwnerKeyError};

use crate::store::{EntryFields, EntryOwner, Owner};

/// Why an owner could not be registered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OwnerError {
    #[error("id: {0}")]
    Id(#[from] OwnerIdError),
    #[error("public_key: {0}")]
    Key(#[from] OwnerKeyError),
}

/// The owner row for `id` and a public key given as PEM or JWK text.
pub fn new_owner(id: &str, public_key: &str, now: i64) -> Result<Owner, OwnerError> {
    owner::check_owner_id(id)?;
    let key = owner::parse_public_key(public_key)?;
    Ok(Owner {
        id: id.to_owned(),
        public_key: serde_json::to_string(&key.to_jwk()).expect("a JWK serializes"),
        thumbprint: key.thumbprint(),
        created_at: now,
        revoked_at: 0,
    })
}

/// The public key of a stored owner.
pub fn owner_key(owner: &Owner) -> Result<PublicKey, OwnerKeyError> {
    let jwk: Jwk = serde_json::from_str(&owner.public_key)
        .map_err(|e| OwnerKeyError::Key(format!("stored key: {e}")))?;
    PublicKey::from_jwk(&jwk).map_err(|e| OwnerKeyError::Key(format!("stored key: {e}")))
}

/// Why a consent does not bind an entry to its owner. `Display` starts
/// with the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsentRefusal {
    #[error("consent: required for an entry with an owner")]
    Missing,
    #[error("owner_id: required with a consent")]
    NoOwner,
    #[error("{0}")]
    Invalid(#[from] ConsentError),
    #[error("consent: signed for owner {claimed}, not {owner}")]
    AnotherOwner { claimed: String, owner: String },
    #[error("consent: covers {scope}, not {spiffe_id}")]
    AnotherSpiffeId { scope: String, spiffe_id: String },
    #[error("consent: its selectors [{consented}] differ from the entry's [{entry}]")]
    SelectorsDiffer { consented: String, entry: String },
    #[error("consent: its selectors [{consented}] are not all among the entry's [{entry}]")]
    SelectorsMissing { consented: String, entry: String },
    #[error("owner_id: the owner's stored key is unusable: {0}")]
    StoredKey(OwnerKeyError),
}

/// Checks that `consent` is `owner`'s valid consent for exactly this entry
/// (its SPIFFE ID and selectors) at `now`, and returns the binding to
/// store. The entry's expiry is capped to the consent's: an entry stops
/// matching when its consent lapses.
pub fn bind_entry(
    fields: &mut EntryFields,
    owner: &Owner,
    consent_jws: &str,
    now: i64,
) -> Result<ConsentClaims, ConsentRefusal> {
    bind(fields, owner, consent_jws, now, SelectorScope::Exactly)
}

/// How a consent's selectors must relate to its entry's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SelectorScope {
    /// An entry an operator makes lists exactly the consented selectors.
    Exactly,
    /// An entry an identity rule makes for a pod carries every consented
    /// selector and the pod's own (its uid), which only narrows whom the
    /// entry selects: one consent covers the rule's pods.
    AtLeast,
}

/// As [`bind_entry`], for an entry an identity rule makes: the consent's
/// selectors must all be among the entry's ([`SelectorScope::AtLeast`]).
pub fn bind_rule_entry(
    fields: &mut EntryFields,
    owner: &Owner,
    consent_jws: &str,
    now: i64,
) -> Result<ConsentClaims, ConsentRefusal> {
    bind(fields, owner, consent_jws, now, SelectorScope::AtLeast)
}

fn bind(
    fields: &mut EntryFields,
    owner: &Owner,
    consent_jws: &str,
    now: i64,
    scope: SelectorScope,
) -> Result<ConsentClaims, ConsentRefusal> {
    let claimed = consent::claimed_owner(consent_jws)?;
    if claimed != owner.id {
        return Err(ConsentRefusal::AnotherOwner {
            claimed,
            owner: owner.id.clone(),
        });
    }
    let key = owner_key(owner).map_err(ConsentRefusal::StoredKey)?;
    let claims = consent::verify(consent_jws, &key, now.max(0) as u64)?;
    if !claims.covers(&fields.spiffe_id) {
        return Err(ConsentRefusal::AnotherSpiffeId {
            scope: scope_of(&claims),
            spiffe_id: fields.spiffe_id.clone(),
        });
    }
    let entry_selectors = selector_strings(fields);
    match scope {
        SelectorScope::Exactly if entry_selectors != claims.selectors => {
            return Err(ConsentRefusal::SelectorsDiffer {
                consented: claims.selectors.join(", "),
                entry: entry_selectors.join(", "),
            });
        }
        SelectorScope::AtLeast if !claims.selectors.iter().all(|s| entry_selectors.contains(s)) => {
            return Err(ConsentRefusal::SelectorsMissing {
                consented: claims.selectors.join(", "),
                entry: entry_selectors.join(", "),
            });
        }
        _ => {}
    }
    let consent_expiry = i64::try_from(claims.exp).unwrap_or(i64::MAX);
    if fields.expires_at == 0 || fields.expires_at > consent_expiry {
        fields.expires_at = consent_expiry;
    }
    fields.owner = Some(EntryOwner {
        owner_id: owner.id.clone(),
        key_thumbprint: owner.thumbprint.clone(),
        consent: consent_jws.to_owned(),
        delegated_from: String::new(),
        actors: Vec::new(),
    });
    Ok(claims)
}

/// What a consent covers, for messages.
fn scope_of(claims: &ConsentClaims) -> String {
    match (&claims.spiffe_id, &claims.spiffe_id_prefix) {
        (Some(id), _) => id.clone(),
        (None, Some(prefix)) => format!("{prefix}*"),
        (None, None) => "nothing".into(),
    }
}

/// An entry's selectors as a consent lists them.
fn selector_strings(fields: &EntryFields) -> Vec<String> {
    let strings: Vec<String> = fields.selectors.iter().map(|s| s.to_string()).collect();
    ConsentClaims::canonical_selectors(strings.iter().map(String::as_str))
}

/// The binding the credentials of an owner-bound entry carry.
pub fn binding(owner: &EntryOwner) -> Result<OwnerBinding, BindingCorrupt> {
    let thumbprint = B64URL
        .decode(&owner.key_thumbprint)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or(BindingCorrupt)?;
    Ok(OwnerBinding {
        owner_id: owner.owner_id.clone(),
        key_thumbprint: thumbprint,
        consent_sha256: owner::consent_sha256(&owner.consent),
        actors: owner.actors.clone(),
    })
}

/// A stored owner thumbprint that is not 32 base64url bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stored owner key thumbprint is corrupt")]
pub struct BindingCorrupt;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Selector;
    use workload_api::jwk::Algorithm;
    use workload_api::keypair::KeyPair;

    const NOW: i64 = 1_000;

    fn owner_and_key() -> (Owner, KeyPair) {
        let key = KeyPair::generate(Algorithm::EdDSA).unwrap();
        let jwk = serde_json::to_string(&key.public_key().to_jwk()).unwrap();
        (
            new_owner("mailto:alice@example.org", &jwk, NOW).unwrap(),
            key,
        )
    }

    fn fields() -> EntryFields {
        EntryFields {
            spiffe_id: "spiffe://td/agents/alice/bot".into(),
            parent_id: "spiffe://td/agent/x".into(),
            selectors: vec![Selector::parse("unix:uid:1000").unwrap()],
            ..EntryFields::default()
        }
    }

    fn consent(key: &KeyPair, edit: impl FnOnce(&mut ConsentClaims)) -> String {
        let mut claims = ConsentClaims {
            iss: "mailto:alice@example.org".into(),
            spiffe_id: Some("spiffe://td/agents/alice/bot".into()),
            spiffe_id_prefix: None,
            selectors: vec!["unix:uid:1000".into()],
            iat: NOW as u64,
            nbf: NOW as u64,
            exp: NOW as u64 + 3600,
            jti: "j".into(),
            delegation: None,
        };
        edit(&mut claims);
        consent::sign(&claims, key).unwrap()
    }

    #[test]
    fn valid_consent_binds_and_caps_the_expiry() {
        let (owner, key) = owner_and_key();
        let jws = consent(&key, |_| {});
        let mut entry = fields();
        bind_entry(&mut entry, &owner, &jws, NOW).unwrap();
        assert_eq!(entry.expires_at, NOW + 3600);
        let bound = entry.owner.clone().unwrap();
        assert_eq!(bound.owner_id, "mailto:alice@example.org");
        let carried = binding(&bound).unwrap();
        assert_eq!(carried.consent_sha256, owner::consent_sha256(&jws));
        assert_eq!(carried.key_thumbprint_b64(), key.public_key().thumbprint());
    }

    #[test]
    fn every_mismatch_is_named() {
        let (owner, key) = owner_and_key();
        let refuse = |jws: &str| {
            bind_entry(&mut fields(), &owner, jws, NOW)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refuse(&consent(&key, |c| c.spiffe_id = Some("spiffe://td/other".into()))),
            "consent: covers spiffe://td/other, not spiffe://td/agents/alice/bot"
        );
        assert_eq!(
            refuse(&consent(&key, |c| c.selectors = vec!["unix:uid:0".into()])),
            "consent: its selectors [unix:uid:0] differ from the entry's [unix:uid:1000]"
        );
        let expired = consent(&key, |c| {
            c.nbf = NOW as u64 - 100;
            c.exp = NOW as u64;
        });
        assert!(refuse(&expired).starts_with("consent expired at "));
        let other = KeyPair::generate(Algorithm::EdDSA).unwrap();
        assert!(refuse(&consent(&other, |_| {})).starts_with("consent was signed by another key"));
        assert_eq!(
            refuse(&consent(&key, |c| c.iss = "mailto:bob@example.org".into())),
            "consent: signed for owner mailto:bob@example.org, not mailto:alice@example.org"
        );
        assert!(refuse("not.a.jws").starts_with("consent is not a compact JWS"));
    }

    #[test]
    fn a_rules_entry_may_add_selectors_to_its_consents_but_not_drop_any() {
        let (owner, key) = owner_and_key();
        let jws = consent(&key, |_| {});
        let mut narrower = fields();
        narrower
            .selectors
            .push(Selector::parse("k8s:pod-uid:0b6f").unwrap());
        // An operator's entry lists exactly the consented selectors.
        assert!(matches!(
            bind_entry(&mut narrower.clone(), &owner, &jws, NOW),
            Err(ConsentRefusal::SelectorsDiffer { .. })
        ));
        bind_rule_entry(&mut narrower, &owner, &jws, NOW).unwrap();
        assert!(narrower.owner.is_some());
        let mut wider = fields();
        wider.selectors = vec![Selector::parse("k8s:pod-uid:0b6f").unwrap()];
        assert_eq!(
            bind_rule_entry(&mut wider, &owner, &jws, NOW)
                .unwrap_err()
                .to_string(),
            "consent: its selectors [unix:uid:1000] are not all among the entry's [k8s:pod-uid:0b6f]"
        );
    }

    #[test]
    fn owners_need_a_uri_and_an_owner_key() {
        let rsa = KeyPair::generate(Algorithm::RS256).unwrap();
        let jwk = serde_json::to_string(&rsa.public_key().to_jwk()).unwrap();
        assert_eq!(
            new_owner("mailto:a@example.org", &jwk, NOW)
                .unwrap_err()
                .to_string(),
            "public_key: owner keys are Ed25519 or P-256, not RSA"
        );
        assert_eq!(
            new_owner("alice", &jwk, NOW).unwrap_err().to_string(),
            "id: owner id must be a mailto:, https: or spiffe: URI"
        );
    }
}
