//! Publishing revocations: the CRLs (one per X.509 authority, signed by
//! each replica for its own, see [`crls`]) and the signed revocation list
//! of owners (`workload_api::revocation`, signed by one replica at a time,
//! see [`list`]), derived from the store and re-signed whenever what is
//! revoked, or the CA, changes, and before they go stale. Agents receive
//! them on their entry stream; relying parties fetch them over HTTP.

mod crls;
mod list;

use std::time::Duration;

use tokio::sync::watch;

use crate::clock::unix_secs;
use crate::published::Published;
use crate::state::IssuerState;

/// How long a CRL or revocation list is valid. Verifiers refuse owner-bound
/// tokens once their list is older than this, so it bounds how long a
/// withheld update can go unnoticed.
pub const VALIDITY: Duration = Duration::from_secs(3600);

/// Re-signed this long before they would go stale.
const RESIGN_BEFORE: Duration = Duration::from_secs(1800);

/// How often revoked reservations no CRL needs are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The lease whose holder signs the owners' list and prunes.
pub const LEASE: &str = "revocations";

/// Why publishing failed; the previous publication stays until it works.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
}

/// Re-derives the revocations and publishes them if anything changed.
/// `holds_lease`: whether this replica holds [`LEASE`] (see [`list`]).
/// Returns whether it published.
pub async fn refresh(state: &IssuerState, holds_lease: bool) -> Result<bool, PublishError> {
    let held = state.revocations.current();
    let own = crls::own(state, &held.own).await?;
    let others_crls = crls::others(state, &held.others_crls).await;
    let list = list::current(state, held.list.as_ref(), holds_lease).await?;
    let next = Published::of(own, others_crls, list);
    if next.own == held.own && next.others_crls == held.others_crls && next.list == held.list {
        return Ok(false);
    }
    state.revocations.publish(next);
    Ok(true)
}

/// Appends `event` to the log. Revocation must not wait on the log:
/// publishing goes on even if it is down.
async fn record(state: &IssuerState, event: workload_api::events::Event, seq: u64) {
    if let Err(error) = state.events.append(&[event]).await {
        tracing::error!(%error, seq, "the event log could not record a revocation publication");
    }
}

/// Keeps the publication current: after every store or bundle change, and
/// before it goes stale. `lease` says whether this replica holds [`LEASE`]:
/// its holder signs the owners' list and prunes expired records of revoked
/// SVIDs on the way.
pub async fn publish_loop(
    state: IssuerState,
    mut lease: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut store_changes = state.store.subscribe_revoking();
    let mut bundle_changes = state.ca.subscribe_bundle();
    let mut stored_revocations = state.store.subscribe_revocations();
    let mut pruned_at = i64::MIN;
    loop {
        store_changes.mark_unchanged();
        bundle_changes.mark_unchanged();
        stored_revocations.mark_unchanged();
        let holds_lease = *lease.borrow_and_update();
        if let Err(error) = refresh(&state, holds_lease).await {
            tracing::error!(%error, "publishing revocations failed; retrying");
        }
        let now = unix_secs(state.clock.now());
        if holds_lease && now.saturating_sub(pruned_at) >= PRUNE_EVERY.as_secs() as i64 {
            match prune(&state, now).await {
                Ok(()) => pruned_at = now,
                Err(error) => tracing::warn!(%error, "pruning revoked serial reservations failed"),
            }
        }
        let wait = Duration::from_secs(
            (next_due(&state.revocations.current(), holds_lease) - now).clamp(1, 60) as u64,
        );
        tokio::select! {
            changed = store_changes.changed() => if changed.is_err() { return },
            changed = bundle_changes.changed() => if changed.is_err() { return },
            changed = stored_revocations.changed() => if changed.is_err() { return },
            changed = lease.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// When something published next falls due (Unix seconds): this replica's
/// CRLs, and the list, which the lease holder re-signs and the others
/// replace only once it has gone stale. Overdue means now.
fn next_due(published: &Published, holds_lease: bool) -> i64 {
    let resign = |expires_at: i64| expires_at - RESIGN_BEFORE.as_secs() as i64;
    let list_due = published.list.as_ref().map_or(i64::MIN, |list| {
        if holds_lease {
            resign(list.expires_at)
        } else {
            list.expires_at
        }
    });
    resign(published.own.expires_at).min(list_due)
}

/// Prunes revoked reservations no CRL needs: revoked before every authority
/// valid now, this replica's and the others' (in the shared bundle), so
/// nothing they name can still be valid.
async fn prune(state: &IssuerState, now: i64) -> Result<(), crate::store::StoreError> {
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
    state
        .store
        .prune_reservations(oldest.unwrap_or(now))
        .await
        .map(drop)
}
