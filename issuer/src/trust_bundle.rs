//! The trust domain's one bundle, when issuer replicas share a database.
//!
//! Every replica keeps its own CA and JWT/WIT keys and never copies them.
//! It publishes their public halves to the store whenever they change, and
//! the bundle it serves (to agents, relying parties, federated domains and
//! its own TLS checks) is every replica's keys together. A change by one
//! replica reaches the others at commit (see `store::notify`), so an agent
//! holding an SVID from one replica is trusted by all of them.

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;
use workload_api::bundle::Bundle;

use crate::clock::unix_secs;
use crate::state::IssuerState;
use crate::store::{StoreError, TrustKey};

/// Why the shared bundle could not be brought up to date.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    #[error("reading this replica's keys: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the replicas' keys do not form a bundle: {0}")]
    Bundle(#[from] workload_api::bundle::BundleError),
    #[error("replica id file {path}: {source}")]
    ReplicaId {
        path: String,
        source: std::io::Error,
    },
}

/// This replica's name among those sharing the database: made once, kept
/// in the data directory beside the CA keys it stands for.
pub fn replica_id(data_dir: &Path) -> Result<String, SyncError> {
    let path = data_dir.join("replica_id");
    let failed = |source| SyncError::ReplicaId {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(failed(error)),
    }
    let id = crate::ids::uuid_v4();
    workload_api::files::write_private(&path, id.as_bytes()).map_err(failed)?;
    Ok(id)
}

/// Publishes this replica's keys, then serves the bundle of all of them.
pub async fn publish(state: &IssuerState) -> Result<(), SyncError> {
    let local = state.ca.local_bundle();
    let keys: Vec<TrustKey> = state
        .ca
        .published_authorities()?
        .into_iter()
        .map(|a| TrustKey {
            kind: a.kind.to_owned(),
            id: a.id,
            not_after: a.not_after,
            jwk: a.jwk,
        })
        .collect();
    state
        .store
        .publish_trust_keys(
            &state.replica,
            &keys,
            local.sequence(),
            unix_secs(state.clock.now()),
        )
        .await?;
    refresh(state).await
}

/// Serves the bundle of every replica's keys as the store holds them.
pub async fn refresh(state: &IssuerState) -> Result<(), SyncError> {
    let shared = state.store.shared_bundle_keys().await?;
    let keys: Vec<serde_json::Value> = shared
        .keys
        .iter()
        .filter_map(|jwk| serde_json::from_str(jwk).ok())
        .collect();
    let set = serde_json::json!({ "keys": keys });
    let mut bundle = Bundle::from_jwks_json(
        state.config.trust_domain.clone(),
        set.to_string().as_bytes(),
    )?;
    bundle.set_sequence(shared.sequence);
    bundle.set_refresh_hint_secs(Some(state.config.bundle_refresh_hint.as_secs()));
    state.ca.set_published_bundle(bundle);
    Ok(())
}

/// How long a failed publication waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Keeps the shared bundle current until shutdown: publishes this
/// replica's keys when they change, and reads every replica's when another
/// changed them.
pub async fn run(state: IssuerState, mut shutdown: watch::Receiver<bool>) {
    let mut local = state.ca.subscribe_local_bundle();
    let mut others = state.store.subscribe_trust_bundle();
    local.mark_unchanged();
    others.mark_unchanged();
    // Set when a publication failed and is owed.
    let mut owed = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            changed = local.changed() => {
                if changed.is_err() { return; }
                owed = true;
            }
            changed = others.changed() => {
                if changed.is_err() { return; }
                if !owed {
                    if let Err(error) = refresh(&state).await {
                        tracing::warn!(error = %workload_api::display::error_chain(&error),
                            "reading the replicas' keys failed; retrying");
                        owed = true;
                    }
                    continue;
                }
            }
            () = tokio::time::sleep(RETRY), if owed => {}
        }
        if owed {
            match publish(&state).await {
                Ok(()) => owed = false,
                Err(error) => tracing::warn!(
                    error = %workload_api::display::error_chain(&error),
                    "publishing this replica's keys failed; retrying"
                ),
            }
        }
    }
}
