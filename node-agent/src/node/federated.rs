//! The bundles of foreign trust domains this node holds: received on the
//! entry stream, each checked and bounded, kept on disk (so a restarted
//! agent serves them before it reaches its issuer), and published to the
//! Workload API. Each stays the bundle of its own trust domain: none is
//! merged with another or with the local one (SPIFFE_Federation.md 4.2).

use std::collections::BTreeMap;
use std::sync::Arc;

use workload_api::id::{parse_trust_domain, TrustDomain};
use workload_api::Bundle;

use super::identity::{IdentityDir, IdentityError};

/// The most foreign bundles a node holds.
pub const MAX_FEDERATED_BUNDLES: usize = 1024;
/// The largest foreign bundle (JWK Set JSON) a node accepts.
pub const MAX_FEDERATED_BUNDLE_BYTES: usize = 1024 * 1024;

/// Foreign bundles by trust domain.
pub type Federated = BTreeMap<TrustDomain, Arc<Bundle>>;

/// What the issuer sent about foreign bundles in one step.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FederatedChange {
    /// JWK Set JSON by trust domain name: new or changed bundles.
    pub upserted: BTreeMap<String, Vec<u8>>,
    /// Trust domain names whose bundles are gone.
    pub removed: Vec<String>,
    /// The change holds every bundle: those not named are gone.
    pub complete: bool,
}

impl FederatedChange {
    /// A change that replaces every bundle held.
    pub fn complete() -> Self {
        FederatedChange {
            complete: true,
            ..Default::default()
        }
    }

    /// Adds bundles as they arrive, within the bounds: a bundle too large
    /// is dropped with an error naming its domain, and the one held for that
    /// domain goes too; one beyond the most a node holds is dropped.
    pub fn add(&mut self, bundles: impl IntoIterator<Item = (String, Vec<u8>)>) {
        for (name, json) in bundles {
            if json.len() > MAX_FEDERATED_BUNDLE_BYTES {
                tracing::error!(
                    trust_domain = %name,
                    bytes = json.len(),
                    "foreign bundle dropped: larger than {MAX_FEDERATED_BUNDLE_BYTES} bytes"
                );
                self.upserted.remove(&name);
                self.removed.push(name);
            } else if !self.upserted.contains_key(&name)
                && self.upserted.len() >= MAX_FEDERATED_BUNDLES
            {
                tracing::error!(
                    trust_domain = %name,
                    "foreign bundle dropped: a node holds at most {MAX_FEDERATED_BUNDLES}"
                );
            } else {
                self.upserted.insert(name, json);
            }
        }
    }
}

/// `held` with `change` applied. A bundle that does not parse, names the
/// local trust domain or exceeds the bounds is dropped with an error naming
/// its domain, and so is a held one of that domain: an unusable update
/// leaves no stale keys trusted. Unchanged bundles keep their `Arc`, so
/// consumers tell what changed cheaply.
pub fn apply(held: &Federated, change: FederatedChange, local: &TrustDomain) -> Federated {
    let mut next = if change.complete {
        Federated::new()
    } else {
        held.clone()
    };
    for name in &change.removed {
        if let Ok(td) = parse_trust_domain(name) {
            next.remove(&td);
        }
    }
    for (name, json) in change.upserted {
        let bundle = match accept(&name, &json, local) {
            Ok(bundle) => bundle,
            Err(reason) => {
                tracing::error!(trust_domain = %name, %reason, "foreign bundle refused");
                if let Ok(td) = parse_trust_domain(&name) {
                    next.remove(&td);
                }
                continue;
            }
        };
        let td = bundle.trust_domain().clone();
        if !next.contains_key(&td) && next.len() >= MAX_FEDERATED_BUNDLES {
            tracing::error!(
                trust_domain = %name,
                "foreign bundle dropped: a node holds at most {MAX_FEDERATED_BUNDLES}"
            );
            continue;
        }
        let bundle = match held.get(&td) {
            Some(old) if **old == bundle => old.clone(),
            _ => Arc::new(bundle),
        };
        next.insert(td, bundle);
    }
    next
}

/// Parses one foreign bundle within the bounds.
fn accept(name: &str, json: &[u8], local: &TrustDomain) -> Result<Bundle, String> {
    let td = parse_trust_domain(name).map_err(|e| e.to_string())?;
    if td == *local {
        return Err("it names this node's own trust domain".into());
    }
    if json.len() > MAX_FEDERATED_BUNDLE_BYTES {
        return Err(format!(
            "{} bytes; at most {MAX_FEDERATED_BUNDLE_BYTES}",
            json.len()
        ));
    }
    Bundle::from_jwks_json(td, json).map_err(|e| e.to_string())
}

/// Stores `federated` (0600) as a JSON object of JWK Sets by trust domain.
pub fn save(dir: &IdentityDir, federated: &Federated) -> Result<(), IdentityError> {
    let stored: serde_json::Map<String, serde_json::Value> = federated
        .iter()
        .map(|(td, bundle)| {
            let jwks = serde_json::from_slice(&bundle.to_jwks_json()).expect("JWK Set is JSON");
            (td.to_string(), jwks)
        })
        .collect();
    let path = dir.federated_bundles_path();
    let json = serde_json::to_vec(&stored).expect("bundles serialize");
    workload_api::files::write_private(&path, &json).map_err(IdentityError::io(&path))
}

/// The stored foreign bundles, checked as if the issuer sent them; none if
/// the file is missing or unreadable (the issuer sends them again).
pub fn load(dir: &IdentityDir, local: &TrustDomain) -> Federated {
    let path = dir.federated_bundles_path();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Federated::new(),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring stored foreign bundles; the issuer sends them again");
            return Federated::new();
        }
    };
    let stored: BTreeMap<String, serde_json::Value> = match serde_json::from_slice(&bytes) {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring stored foreign bundles; the issuer sends them again");
            return Federated::new();
        }
    };
    let mut change = FederatedChange::complete();
    change.add(
        stored
            .into_iter()
            .map(|(td, jwks)| (td, jwks.to_string().into_bytes())),
    );
    apply(&Federated::new(), change, local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(name: &str) -> TrustDomain {
        parse_trust_domain(name).unwrap()
    }

    fn jwks(name: &str, sequence: u64) -> Vec<u8> {
        let mut bundle = Bundle::new(td(name));
        bundle.set_sequence(sequence);
        bundle.to_jwks_json()
    }

    fn change(upserted: &[(&str, Vec<u8>)], removed: &[&str], complete: bool) -> FederatedChange {
        let mut change = FederatedChange {
            removed: removed.iter().map(|s| s.to_string()).collect(),
            complete,
            ..Default::default()
        };
        change.add(
            upserted
                .iter()
                .map(|(name, json)| (name.to_string(), json.clone())),
        );
        change
    }

    #[test]
    fn bundles_are_added_replaced_and_removed_each_under_its_own_domain() {
        let local = td("example.org");
        let held = apply(
            &Federated::new(),
            change(
                &[("a.org", jwks("a.org", 1)), ("b.org", jwks("b.org", 1))],
                &[],
                true,
            ),
            &local,
        );
        assert_eq!(held.len(), 2);
        assert_eq!(held[&td("a.org")].trust_domain(), &td("a.org"));

        let next = apply(
            &held,
            change(&[("a.org", jwks("a.org", 2))], &["b.org"], false),
            &local,
        );
        assert_eq!(next.keys().collect::<Vec<_>>(), [&td("a.org")]);
        assert_eq!(next[&td("a.org")].sequence(), 2);

        // An unchanged bundle keeps its Arc; a snapshot drops what it omits.
        let again = apply(
            &next,
            change(&[("a.org", jwks("a.org", 2))], &[], true),
            &local,
        );
        assert!(Arc::ptr_eq(&again[&td("a.org")], &next[&td("a.org")]));
        assert!(apply(&again, change(&[], &[], true), &local).is_empty());
    }

    #[test]
    fn unusable_bundles_are_refused_and_replace_a_held_one() {
        let local = td("example.org");
        let held = apply(
            &Federated::new(),
            change(
                &[("a.org", jwks("a.org", 1)), ("b.org", jwks("b.org", 1))],
                &[],
                true,
            ),
            &local,
        );
        let next = apply(
            &held,
            change(
                &[
                    ("a.org", b"{not json".to_vec()),
                    ("example.org", jwks("example.org", 1)),
                    ("Bad Name", jwks("a.org", 1)),
                ],
                &[],
                false,
            ),
            &local,
        );
        assert_eq!(next.keys().collect::<Vec<_>>(), [&td("b.org")]);
        assert!(Arc::ptr_eq(&next[&td("b.org")], &held[&td("b.org")]));

        // Too large: not even kept for applying, and the held one goes.
        let mut oversized = FederatedChange::default();
        oversized.add([(
            "b.org".to_string(),
            vec![b' '; MAX_FEDERATED_BUNDLE_BYTES + 1],
        )]);
        assert!(oversized.upserted.is_empty());
        assert!(apply(&next, oversized, &local).is_empty());
    }

    #[test]
    fn at_most_the_bound_of_bundles_is_held() {
        let local = td("example.org");
        let many: Vec<(String, Vec<u8>)> = (0..=MAX_FEDERATED_BUNDLES)
            .map(|i| {
                let name = format!("d{i:05}.org");
                let json = jwks(&name, 1);
                (name, json)
            })
            .collect();
        let mut change = FederatedChange::complete();
        change.add(many);
        assert_eq!(change.upserted.len(), MAX_FEDERATED_BUNDLES);
        let held = apply(&Federated::new(), change, &local);
        assert_eq!(held.len(), MAX_FEDERATED_BUNDLES);
        assert!(!held.contains_key(&td(&format!("d{MAX_FEDERATED_BUNDLES:05}.org"))));
    }

    #[test]
    fn stored_bundles_are_read_back_and_a_bad_file_is_ignored() {
        let data = tempfile::tempdir().unwrap();
        let dir = IdentityDir::new(data.path()).unwrap();
        let local = td("example.org");
        assert!(load(&dir, &local).is_empty());

        let held = apply(
            &Federated::new(),
            change(&[("a.org", jwks("a.org", 7))], &[], true),
            &local,
        );
        save(&dir, &held).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.federated_bundles_path())
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(&dir, &local), held);

        std::fs::write(dir.federated_bundles_path(), "[]").unwrap();
        assert!(load(&dir, &local).is_empty());
    }
}
