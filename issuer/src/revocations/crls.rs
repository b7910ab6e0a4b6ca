//! The CRLs: each replica signs those of its own X.509 authorities (a CRL
//! must be signed by the CA that issued what it revokes, and no CA key
//! leaves its replica), stores them for the others and serves theirs
//! beside its own.

use workload_api::events::EventKind;

use super::{PublishError, RESIGN_BEFORE, VALIDITY};
use crate::ca::{RevokedCounters, SignedCrl};
use crate::clock::{from_unix_secs, unix_secs};
use crate::published::OwnCrls;
use crate::state::IssuerState;
use crate::store::StoredCrl;

/// This replica's CRLs, re-signed if what they revoke or the authorities
/// changed, or they fall due; `held` otherwise.
pub(super) async fn own(state: &IssuerState, held: &OwnCrls) -> Result<OwnCrls, PublishError> {
    let now = state.clock.now();
    let now_secs = unix_secs(now);
    let revoked: Vec<RevokedCounters> = state
        .store
        .revoked_reservations()
        .await?
        .into_iter()
        .map(|r| RevokedCounters {
            entry_id: r.entry_id,
            reserved: r.reserved,
            revoked_at: r.revoked_at,
        })
        .collect();
    let authorities: Vec<String> = state
        .ca
        .valid_x509_authorities(now)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let due = held.expires_at - RESIGN_BEFORE.as_secs() as i64 <= now_secs;
    if !due && held.revoked == revoked && held.authorities == authorities {
        return Ok(held.clone());
    }
    let number = (now_secs.max(0) as u64).max(held.number + 1);
    let expires_at = now_secs + VALIDITY.as_secs() as i64;
    let crls = state
        .ca
        .sign_crls(&revoked, number, now, from_unix_secs(expires_at))?;
    if held.revoked != revoked {
        tracing::info!(number, revoked_entries = revoked.len(), "CRLs published");
    }
    let event = state
        .events
        .event(EventKind::CrlPublished, now)
        .detail("seq", number)
        .detail("authorities", authorities.clone())
        .detail("revoked_entries", revoked.len() as u64)
        .detail("next_update", expires_at);
    super::record(state, event, number).await;
    let stored: Vec<StoredCrl> = crls
        .iter()
        .map(|c| StoredCrl {
            authority_id: c.authority_id.clone(),
            der: c.der.clone(),
        })
        .collect();
    // The other replicas serve these once stored; this replica serves
    // them at once, stored or not.
    if let Err(error) = state
        .store
        .put_replica_crls(&state.replica, expires_at, &stored)
        .await
    {
        tracing::error!(%error, number, "storing this replica's CRLs for the others failed");
    }
    Ok(OwnCrls {
        number,
        expires_at,
        revoked,
        authorities,
        crls,
    })
}

/// The CRLs other replicas stored and that are still fresh; `held` when
/// they cannot be read.
pub(super) async fn others(state: &IssuerState, held: &[SignedCrl]) -> Vec<SignedCrl> {
    let now_secs = unix_secs(state.clock.now());
    match state
        .store
        .other_replicas_crls(&state.replica, now_secs)
        .await
    {
        Ok(crls) => crls
            .into_iter()
            .map(|c| SignedCrl {
                authority_id: c.authority_id,
                der: c.der,
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "reading other replicas' CRLs failed; serving the last read");
            held.to_vec()
        }
    }
}
