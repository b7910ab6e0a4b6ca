//! Publishing revocations: the CRLs (one per X.509 authority) and the signed
//! revocation list of owners (`workload_api::revocation`), derived from the
//! store and re-signed whenever what is revoked, or the CA, changes, and
//! before they go stale. Agents receive them on their entry stream; relying
//! parties fetch them over HTTP.
//!
//! Each replica can sign CRLs only for its own authorities, so it stores
//! them for the others and serves theirs beside its own.

use std::time::Duration;

use tokio::sync::watch;
use workload_api::id::trust_domain_id;
use workload_api::revocation::{RevocationClaims, RevokedOwner};

use crate::ca::{RevokedCounters, SignedCrl};
use crate::clock::{from_unix_secs, unix_secs};
use crate::published::Published;
use crate::state::IssuerState;
use crate::store::StoredCrl;

/// How long a CRL or revocation list is valid. Verifiers refuse owner-bound
/// tokens once their list is older than this, so it bounds how long a
/// withheld update can go unnoticed.
pub const VALIDITY: Duration = Duration::from_secs(3600);

/// Re-signed this long before they would go stale.
const RESIGN_BEFORE: Duration = Duration::from_secs(1800);

/// How often revoked reservations no CRL needs are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Why publishing failed; the previous publication stays until it works.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
}

/// Re-derives the revocations and publishes them if anything changed or
/// the current ones are due for re-signing. Returns whether it published.
pub async fn refresh(state: &IssuerState) -> Result<bool, PublishError> {
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
    let owners: Vec<RevokedOwner> = state
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
        .collect();
    let authorities: Vec<String> = state
        .ca
        .valid_x509_authorities(now)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let held = state.revocations.current();
    let others_crls: Vec<SignedCrl> = match state
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
            held.others_crls.clone()
        }
    };
    let due = held.expires_at - (RESIGN_BEFORE.as_secs() as i64) <= now_secs;
    if !due && held.revoked == revoked && held.owners == owners && held.authorities == authorities {
        if held.others_crls == others_crls {
            return Ok(false);
        }
        state.revocations.publish(Published {
            crls: held.own_crls.iter().chain(&others_crls).cloned().collect(),
            others_crls,
            ..(*held).clone()
        });
        return Ok(true);
    }
    let seq = (now_secs.max(0) as u64).max(held.seq + 1);
    let expires_at = now_secs + VALIDITY.as_secs() as i64;
    let crls = state
        .ca
        .sign_crls(&revoked, seq, now, from_unix_secs(expires_at))?;
    let list = state.ca.sign_revocation_list(&RevocationClaims {
        iss: trust_domain_id(&state.config.trust_domain),
        seq,
        iat: now_secs.max(0) as u64,
        exp: expires_at.max(0) as u64,
        owners: owners.clone(),
    })?;
    if held.owners != owners || held.revoked != revoked {
        tracing::info!(
            seq,
            revoked_owners = owners.len(),
            revoked_entries = revoked.len(),
            "revocations published"
        );
    }
    let event = state
        .events
        .event(workload_api::events::EventKind::CrlPublished, now)
        .detail("seq", seq)
        .detail("authorities", authorities.clone())
        .detail("revoked_entries", revoked.len() as u64)
        .detail(
            "revoked_owners",
            owners.iter().map(|o| o.id.clone()).collect::<Vec<_>>(),
        )
        .detail("next_update", expires_at);
    // Revocation must not wait on the log: publish even if it is down.
    if let Err(error) = state.events.append(&[event]).await {
        tracing::error!(%error, seq, "the event log could not record a CRL publication");
    }
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
        tracing::error!(%error, seq, "storing this replica's CRLs for the others failed");
    }
    state.revocations.publish(Published {
        seq,
        crls: crls.iter().chain(&others_crls).cloned().collect(),
        list,
        expires_at,
        revoked,
        owners,
        authorities,
        own_crls: crls,
        others_crls,
    });
    Ok(true)
}

/// Keeps the publication current: after every store or bundle change, and
/// before it goes stale. Expired records of revoked SVIDs are pruned on
/// the way, by the one replica that holds `pruning`.
pub async fn publish_loop(
    state: IssuerState,
    pruning: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut store_changes = state.store.subscribe_revoking();
    let mut bundle_changes = state.ca.subscribe_bundle();
    let mut replicas_crls = state.store.subscribe_revocations();
    let mut pruned_at = i64::MIN;
    loop {
        store_changes.mark_unchanged();
        bundle_changes.mark_unchanged();
        replicas_crls.mark_unchanged();
        if let Err(error) = refresh(&state).await {
            tracing::error!(%error, "publishing revocations failed; retrying");
        }
        let now = unix_secs(state.clock.now());
        if *pruning.borrow() && now.saturating_sub(pruned_at) >= PRUNE_EVERY.as_secs() as i64 {
            // Revoked before every authority valid now, this replica's and
            // the others' (in the shared bundle): nothing they name can
            // still be valid.
            let others = state
                .ca
                .bundle()
                .x509_authorities()
                .iter()
                .filter_map(|der| crate::ca::x509::not_before(der).ok())
                .map(unix_secs)
                .collect::<Vec<_>>();
            let oldest = state
                .ca
                .valid_x509_authorities(state.clock.now())
                .into_iter()
                .map(|(_, not_before)| not_before)
                .chain(others)
                .min();
            match state.store.prune_reservations(oldest.unwrap_or(now)).await {
                Ok(_) => pruned_at = now,
                Err(error) => tracing::warn!(%error, "pruning revoked serial reservations failed"),
            }
        }
        // Overdue means now; otherwise wake when the re-sign falls due.
        let resign_at = state.revocations.current().expires_at - RESIGN_BEFORE.as_secs() as i64;
        let wait = Duration::from_secs((resign_at - now).clamp(1, 60) as u64);
        tokio::select! {
            changed = store_changes.changed() => if changed.is_err() { return },
            changed = bundle_changes.changed() => if changed.is_err() { return },
            changed = replicas_crls.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
