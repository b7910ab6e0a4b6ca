//! The owners' revocation list: one signer, every replica serving it.
//!
//! The replica holding the `revocations` lease signs a new list when the
//! revoked owners change, when the stored one falls due, or when another
//! replica signed the stored one (a new holder re-signs at once, so no
//! list outlives its signer's keys by long). It stores the list only over
//! the one it numbered it after, so `seq` rises across replicas and a
//! verifier moving between them never goes back. Every replica serves the
//! stored list and reads it again whenever one is stored.
//!
//! A replica that does not hold the lease signs only when no stored list
//! is valid at all (the very first start, or a store nobody has signed in
//! for a whole validity period), so a list is served from the first
//! request on.

use workload_api::events::EventKind;
use workload_api::id::trust_domain_id;
use workload_api::revocation::{RevocationClaims, RevokedOwner};

use super::{PublishError, RESIGN_BEFORE, VALIDITY};
use crate::clock::unix_secs;
use crate::published::PublishedList;
use crate::state::IssuerState;
use crate::store::StoredList;

/// The list to serve: the stored one, or a new one if this replica must
/// sign (see the module's documentation). `held` is the one served now.
pub(super) async fn current(
    state: &IssuerState,
    held: Option<&PublishedList>,
    holds_lease: bool,
) -> Result<Option<PublishedList>, PublishError> {
    let now_secs = unix_secs(state.clock.now());
    let stored = state.store.revocation_list().await?;
    let previous = stored.as_ref().map(|s| s.seq);
    let readable = match stored {
        // Unchanged since it was read: no need to parse it again.
        Some(stored) if held.is_some_and(|h| h.seq == stored.seq && h.jws == stored.jws) => {
            held.cloned()
        }
        Some(stored) => with_owners(stored),
        None => None,
    };
    // The owners revoked now, when the holder needs them to decide.
    let mut owners = None;
    let signs = if holds_lease {
        match &readable {
            None => true,
            Some(list) if list.signer != *state.replica => true,
            Some(list) if list.expires_at - RESIGN_BEFORE.as_secs() as i64 <= now_secs => true,
            Some(list) => list.owners != *owners.insert(revoked_owners(state).await?),
        }
    } else {
        readable
            .as_ref()
            .is_none_or(|list| list.expires_at <= now_secs)
    };
    let served = if signs {
        let after = previous.into_iter().chain(held.map(|h| h.seq)).max();
        let owners = match owners {
            Some(owners) => owners,
            None => revoked_owners(state).await?,
        };
        match sign(state, owners, previous, after).await? {
            Some(signed) => Some(signed),
            // Another replica stored one first: serve that.
            None => state.store.revocation_list().await?.and_then(with_owners),
        }
    } else {
        readable
    };
    Ok(match (served, held) {
        (Some(served), Some(held)) if served.seq < held.seq => {
            tracing::warn!(
                stored = served.seq,
                held = held.seq,
                "the stored revocation list is older than the one served; keeping that"
            );
            Some(held.clone())
        }
        (None, held) => held.cloned(),
        (served, _) => served,
    })
}

/// The owners revoked now, as a list names them.
async fn revoked_owners(state: &IssuerState) -> Result<Vec<RevokedOwner>, PublishError> {
    Ok(state
        .store
        .list_owners()
        .await?
        .into_iter()
        .filter(|o| o.revoked_at != 0)
        .map(|o| RevokedOwner {
            id: o.id,
            jkt: o.thumbprint,
            revoked_at: o.revoked_at.max(0) as u64,
        })
        .collect())
}

/// Signs a list of `owners` numbered past `after` and stores it over
/// `previous`. `None` when another replica stored a list since `previous`
/// was read.
async fn sign(
    state: &IssuerState,
    owners: Vec<RevokedOwner>,
    previous: Option<u64>,
    after: Option<u64>,
) -> Result<Option<PublishedList>, PublishError> {
    let now = state.clock.now();
    let now_secs = unix_secs(now).max(0) as u64;
    let seq = after.map_or(now_secs, |after| now_secs.max(after + 1));
    let expires_at = now_secs + VALIDITY.as_secs();
    let jws = state.ca.sign_revocation_list(&RevocationClaims {
        iss: trust_domain_id(&state.config.trust_domain),
        seq,
        iat: now_secs,
        exp: expires_at,
        owners: owners.clone(),
    })?;
    let list = StoredList {
        seq,
        jws,
        expires_at: expires_at as i64,
        replica: state.replica.to_string(),
    };
    if !state.store.replace_revocation_list(previous, &list).await? {
        tracing::info!(seq, "another replica stored a revocation list first");
        return Ok(None);
    }
    tracing::info!(
        seq,
        revoked_owners = owners.len(),
        "revocation list published"
    );
    let event = state
        .events
        .event(EventKind::RevocationsPublished, now)
        .detail("seq", seq)
        .detail(
            "revoked_owners",
            owners.iter().map(|o| o.id.clone()).collect::<Vec<_>>(),
        )
        .detail("next_update", list.expires_at);
    super::record(state, event, seq).await;
    Ok(Some(PublishedList {
        seq,
        jws: list.jws,
        expires_at: list.expires_at,
        signer: list.replica,
        owners,
    }))
}

/// The stored list with the owners it names; `None` (logged) if its claims
/// cannot be read, which its signer's successor then replaces.
fn with_owners(stored: StoredList) -> Option<PublishedList> {
    let claims = workload_api::jws::parse(&stored.jws)
        .map_err(|e| e.to_string())
        .and_then(|token| {
            serde_json::from_value::<RevocationClaims>(serde_json::Value::Object(token.claims))
                .map_err(|e| e.to_string())
        });
    match claims {
        Ok(claims) => Some(PublishedList {
            seq: stored.seq,
            jws: stored.jws,
            expires_at: stored.expires_at,
            signer: stored.replica,
            owners: claims.owners,
        }),
        Err(error) => {
            tracing::error!(%error, seq = stored.seq, "the stored revocation list cannot be read");
            None
        }
    }
}
