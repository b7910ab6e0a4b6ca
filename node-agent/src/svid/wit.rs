//! WIT-SVIDs for every workload entry: a key generated here per WIT (its
//! private half leaves the agent only to the workload, as a JWK), signed by
//! the issuer in batches, rotated between 40% and 50% of its life (the
//! timetable is [`super::schedule`]'s).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::issuer as pb;
use workload_api::jwk::Algorithm;
use workload_api::keypair::{KeyPair, KeyPairError};
use workload_api::source::WitMaterial;

use super::schedule::Held;
use super::MintError;
use crate::node::Node;

/// A WIT in the cache.
#[derive(Debug)]
pub struct MintedWit {
    pub revision: i64,
    pub material: Arc<WitMaterial>,
    pub rotate_at: SystemTime,
}

impl MintedWit {
    /// Its timing, for the schedule.
    pub fn held(&self) -> Held {
        Held {
            revision: self.revision,
            rotate_at: self.rotate_at,
            expires_at: self.material.expires_at(),
        }
    }
}

/// A fresh workload key for `alg`. RSA keys take a while to make: callers
/// run this off the async threads.
fn new_key(alg: Algorithm) -> Result<KeyPair, KeyPairError> {
    KeyPair::generate(alg)
}

/// Signs one batch of WITs: a fresh key per entry, one call to the issuer.
pub async fn mint(
    node: &Node,
    entries: &[&pb::Entry],
    minted: &mut HashMap<String, MintedWit>,
) -> Result<(), MintError> {
    const WHAT: &str = "WIT-SVIDs";
    let alg = node.config.wit_key_alg;
    let wanted: Vec<(String, i64)> = entries.iter().map(|e| (e.id.clone(), e.revision)).collect();
    let count = wanted.len();
    let keys = tokio::task::spawn_blocking(move || {
        (0..count)
            .map(|_| new_key(alg))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| MintError::Key {
        what: WHAT,
        reason: "key generation panicked".to_owned(),
    })?
    .map_err(|e| MintError::Key {
        what: WHAT,
        reason: e.to_string(),
    })?;
    let mut pending = HashMap::new();
    let mut params = Vec::with_capacity(count);
    for ((entry_id, revision), key) in wanted.into_iter().zip(keys) {
        params.push(pb::WitSvidParams {
            entry_id: entry_id.clone(),
            public_jwk: serde_json::to_string(&key.public_jwk()).expect("a JWK serializes"),
        });
        pending.insert(entry_id, (key, revision));
    }
    let results = node
        .client()
        .batch_sign_wit_svids(pb::BatchSignWitSvidsRequest { params })
        .await
        .map_err(|s| MintError::call(WHAT, &s))?
        .into_inner()
        .results;
    let received = SystemTime::now();
    super::settle(WHAT, pending, results, |result, key, revision| {
        let expires_at = expiry(&result.token).ok_or("issuer returned an invalid WIT")?;
        tracing::debug!(entry_id = %result.entry_id, "WIT-SVID minted");
        crate::metrics::minted("wit", 1);
        minted.insert(
            result.entry_id,
            MintedWit {
                revision,
                rotate_at: super::rotate_at(received, UNIX_EPOCH + Duration::from_secs(expires_at)),
                material: Arc::new(WitMaterial::new(
                    result.token,
                    key.to_jwk_json(),
                    expires_at as i64,
                )),
            },
        );
        Ok(())
    })
}

/// The `exp` of a WIT the issuer returned, if it is a well-formed WIT.
fn expiry(token: &str) -> Option<u64> {
    let jws = workload_api::jws::parse(token).ok()?;
    (jws.header.typ.as_deref() == Some(workload_api::wimse::wit::WIT_TYP))
        .then(|| jws.numeric_date("exp").ok().flatten())
        .flatten()
}
