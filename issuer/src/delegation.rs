//! Delegated registration: an owner-bound workload registers a child under
//! its own SPIFFE ID, within what its owner's consent allows. The rules:
//!
//! - the parent is bound to an owner whose consent (still valid, checked
//!   again now) covers a path prefix and allows delegation;
//! - the child's SPIFFE ID lies under the parent's path, and the chain of
//!   delegations is no deeper than the consent's `max_depth`;
//! - the child is selected by at least the parent's selectors, lives no
//!   longer than the parent entry and gets no longer TTLs;
//! - the parent has fewer children than the consent's `max_children`
//!   (counted by the store in the same transaction as the insert).
//!
//! The child carries the parent's owner binding, with the parent's SPIFFE
//! ID appended to the actor chain (owner -> agent -> sub-agent), and is
//! deleted with its parent.

use std::time::Duration;

use workload_api::consent::{self, ConsentClaims, ConsentError};

use crate::owners::owner_key;
use crate::store::{Entry, EntryFields, EntryOwner, Owner, Selector};

/// What a workload asks for its child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRequest {
    pub spiffe_id: String,
    /// Empty: the parent's.
    pub selectors: Vec<Selector>,
    /// Seconds; 0: the parent's.
    pub x509_svid_ttl: i64,
    pub jwt_svid_ttl: i64,
}

/// The TTLs an entry's 0 stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultTtls {
    pub x509: Duration,
    pub jwt: Duration,
}

/// Why a child was refused. `Display` says which rule, with the values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DelegationRefusal {
    #[error("entry {0} is not bound to an owner; only owner-bound workloads register children")]
    Unbound(String),
    #[error("the owner's consent for entry {entry} no longer holds: {reason}")]
    Consent { entry: String, reason: ConsentError },
    #[error("the owner's consent for entry {0} allows no delegation")]
    NotDelegable(String),
    #[error("spiffe_id: {child} is not under the parent's path {parent}/")]
    OutsideParent { child: String, parent: String },
    #[error("spiffe_id: {child} is outside the consented prefix {prefix}")]
    OutsidePrefix { child: String, prefix: String },
    #[error("depth {depth} exceeds the consent's max_depth {max}")]
    TooDeep { depth: usize, max: u32 },
    #[error("selectors: the child must be selected by every selector of its parent; {missing} is missing")]
    SelectorMissing { missing: String },
    #[error("{field}: {child} s is longer than the parent's {parent} s")]
    LongerTtl {
        field: &'static str,
        child: i64,
        parent: i64,
    },
}

/// A child's entry fields under `parent` (an entry of `owner`), checked
/// against the rules at `now`, and the most children the consent allows.
pub fn child_fields(
    parent: &Entry,
    owner: &Owner,
    request: &ChildRequest,
    defaults: DefaultTtls,
    now: i64,
) -> Result<(EntryFields, i64), DelegationRefusal> {
    let bound = parent
        .fields
        .owner
        .as_ref()
        .ok_or_else(|| DelegationRefusal::Unbound(parent.id.clone()))?;
    let claims = parent_consent(parent, bound, owner, now)?;
    let (prefix, delegation) = match (&claims.spiffe_id_prefix, claims.delegation) {
        (Some(prefix), Some(delegation)) => (prefix, delegation),
        _ => return Err(DelegationRefusal::NotDelegable(parent.id.clone())),
    };
    let parent_path = format!("{}/", parent.fields.spiffe_id);
    if !request.spiffe_id.starts_with(&parent_path) || request.spiffe_id.len() == parent_path.len()
    {
        return Err(DelegationRefusal::OutsideParent {
            child: request.spiffe_id.clone(),
            parent: parent.fields.spiffe_id.clone(),
        });
    }
    if !claims.covers(&request.spiffe_id) {
        return Err(DelegationRefusal::OutsidePrefix {
            child: request.spiffe_id.clone(),
            prefix: prefix.clone(),
        });
    }
    let depth = bound.actors.len() + 1;
    if depth > delegation.max_depth as usize {
        return Err(DelegationRefusal::TooDeep {
            depth,
            max: delegation.max_depth,
        });
    }
    let selectors = if request.selectors.is_empty() {
        parent.fields.selectors.clone()
    } else {
        request.selectors.clone()
    };
    if let Some(missing) = parent
        .fields
        .selectors
        .iter()
        .find(|s| !selectors.contains(s))
    {
        return Err(DelegationRefusal::SelectorMissing {
            missing: missing.to_string(),
        });
    }
    let x509_svid_ttl = bounded_ttl(
        "x509_svid_ttl",
        request.x509_svid_ttl,
        parent.fields.x509_svid_ttl,
        defaults.x509,
    )?;
    let jwt_svid_ttl = bounded_ttl(
        "jwt_svid_ttl",
        request.jwt_svid_ttl,
        parent.fields.jwt_svid_ttl,
        defaults.jwt,
    )?;
    let mut actors = bound.actors.clone();
    actors.push(parent.fields.spiffe_id.clone());
    let fields = EntryFields {
        spiffe_id: request.spiffe_id.clone(),
        // Served by the same agents as the parent.
        parent_id: parent.fields.parent_id.clone(),
        selectors,
        x509_svid_ttl,
        jwt_svid_ttl,
        // Never outlives the parent (whose expiry the consent already caps).
        expires_at: parent.fields.expires_at,
        owner: Some(EntryOwner {
            owner_id: bound.owner_id.clone(),
            key_thumbprint: bound.key_thumbprint.clone(),
            consent: bound.consent.clone(),
            delegated_from: parent.id.clone(),
            actors,
        }),
        ..EntryFields::default()
    };
    Ok((fields, i64::from(delegation.max_children)))
}

/// The parent's consent, verified again now against the owner's key.
fn parent_consent(
    parent: &Entry,
    bound: &EntryOwner,
    owner: &Owner,
    now: i64,
) -> Result<ConsentClaims, DelegationRefusal> {
    let refused = |reason| DelegationRefusal::Consent {
        entry: parent.id.clone(),
        reason,
    };
    let key = owner_key(owner).map_err(|e| refused(ConsentError::Signing(e)))?;
    consent::verify(&bound.consent, &key, now.max(0) as u64).map_err(refused)
}

/// A child's TTL: the parent's when 0, and never longer than it.
fn bounded_ttl(
    field: &'static str,
    child: i64,
    parent: i64,
    default: Duration,
) -> Result<i64, DelegationRefusal> {
    let parent_secs = match parent {
        0 => default.as_secs() as i64,
        secs => secs,
    };
    match child {
        0 => Ok(parent_secs),
        secs if secs > parent_secs => Err(DelegationRefusal::LongerTtl {
            field,
            child: secs,
            parent: parent_secs,
        }),
        secs => Ok(secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owners::{bind_entry, new_owner};
    use workload_api::consent::Delegation;
    use workload_api::jwk::Algorithm;
    use workload_api::keypair::KeyPair;

    const NOW: i64 = 1_000;
    const PARENT: &str = "spiffe://td/agents/alice/planner";
    const DEFAULTS: DefaultTtls = DefaultTtls {
        x509: Duration::from_secs(3600),
        jwt: Duration::from_secs(300),
    };

    fn parent(delegation: Option<Delegation>) -> (Entry, Owner) {
        let key = KeyPair::generate(Algorithm::EdDSA).unwrap();
        let jwk = serde_json::to_string(&key.public_key().to_jwk()).unwrap();
        let owner = new_owner("mailto:alice@example.org", &jwk, NOW).unwrap();
        let claims = ConsentClaims {
            iss: owner.id.clone(),
            spiffe_id: None,
            spiffe_id_prefix: Some("spiffe://td/agents/alice/".into()),
            selectors: vec!["unix:uid:1000".into()],
            iat: NOW as u64,
            nbf: NOW as u64,
            exp: NOW as u64 + 3600,
            jti: "j".into(),
            delegation,
        };
        let consent = consent::sign(&claims, &key).unwrap();
        let mut fields = EntryFields {
            spiffe_id: PARENT.into(),
            parent_id: "spiffe://td/agent/x".into(),
            selectors: vec![Selector::parse("unix:uid:1000").unwrap()],
            x509_svid_ttl: 600,
            ..EntryFields::default()
        };
        bind_entry(&mut fields, &owner, &consent, NOW).unwrap();
        let entry = Entry {
            id: "p1".into(),
            fields,
            revision: 1,
            sequence: 1,
            created_at: NOW,
        };
        (entry, owner)
    }

    fn request(spiffe_id: &str) -> ChildRequest {
        ChildRequest {
            spiffe_id: spiffe_id.into(),
            selectors: Vec::new(),
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
        }
    }

    const DEPTH_ONE: Option<Delegation> = Some(Delegation {
        max_depth: 1,
        max_children: 3,
    });

    #[test]
    fn a_child_inherits_owner_parent_and_limits() {
        let (parent, owner) = parent(DEPTH_ONE);
        let (child, max) = child_fields(
            &parent,
            &owner,
            &request(&format!("{PARENT}/search")),
            DEFAULTS,
            NOW,
        )
        .unwrap();
        assert_eq!(max, 3);
        assert_eq!(child.parent_id, parent.fields.parent_id);
        assert_eq!(child.selectors, parent.fields.selectors);
        assert_eq!((child.x509_svid_ttl, child.jwt_svid_ttl), (600, 300));
        assert_eq!(child.expires_at, NOW + 3600);
        let bound = child.owner.unwrap();
        assert_eq!(bound.delegated_from, "p1");
        assert_eq!(bound.actors, [PARENT]);
        assert_eq!(bound.owner_id, owner.id);
    }

    #[test]
    fn each_rule_refuses_with_its_values() {
        let (parent, owner) = parent(DEPTH_ONE);
        let refuse = |request: ChildRequest| {
            child_fields(&parent, &owner, &request, DEFAULTS, NOW)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refuse(request("spiffe://td/agents/bob/x")),
            format!("spiffe_id: spiffe://td/agents/bob/x is not under the parent's path {PARENT}/")
        );
        assert_eq!(
            refuse(request(&format!("{PARENT}2/x"))),
            format!("spiffe_id: {PARENT}2/x is not under the parent's path {PARENT}/")
        );
        let mut longer = request(&format!("{PARENT}/search"));
        longer.x509_svid_ttl = 601;
        assert_eq!(
            refuse(longer),
            "x509_svid_ttl: 601 s is longer than the parent's 600 s"
        );
        let mut other = request(&format!("{PARENT}/search"));
        other.selectors = vec![Selector::parse("unix:uid:0").unwrap()];
        assert_eq!(
            refuse(other),
            "selectors: the child must be selected by every selector of its parent; unix:uid:1000 is missing"
        );
        // A grandchild under a depth-1 consent.
        let (child, _) = child_fields(
            &parent,
            &owner,
            &request(&format!("{PARENT}/search")),
            DEFAULTS,
            NOW,
        )
        .unwrap();
        let child = Entry {
            id: "c1".into(),
            fields: child,
            ..parent.clone()
        };
        assert_eq!(
            child_fields(
                &child,
                &owner,
                &request(&format!("{PARENT}/search/deeper")),
                DEFAULTS,
                NOW
            )
            .unwrap_err()
            .to_string(),
            "depth 2 exceeds the consent's max_depth 1"
        );
    }

    #[test]
    fn consent_without_delegation_or_expired_refuses() {
        let (parent, owner) = self::parent(None);
        assert_eq!(
            child_fields(
                &parent,
                &owner,
                &request(&format!("{PARENT}/x")),
                DEFAULTS,
                NOW
            )
            .unwrap_err(),
            DelegationRefusal::NotDelegable("p1".into())
        );
        let (parent, owner) = self::parent(DEPTH_ONE);
        let later = NOW + 3600;
        assert!(child_fields(
            &parent,
            &owner,
            &request(&format!("{PARENT}/x")),
            DEFAULTS,
            later
        )
        .unwrap_err()
        .to_string()
        .contains("no longer holds: consent expired at"));
    }
}
