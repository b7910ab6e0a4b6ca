//! Entry sync: follows the issuer's entry stream and keeps the authorised
//! entries in memory, and hands the bundles and revocations it carries to the
//! [`Node`]. The stream opens with a chunked snapshot and then carries only
//! changes, so nothing polls. On a broken stream the cache is kept and the
//! stream is reopened, on another replica if the issuer has several;
//! workloads keep being served meanwhile. When the connection is what
//! failed, the issuer pool's jittered backoff paces the reopening; when the
//! issuer answered with an error, this loop's own backoff does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proto::issuer as pb;
use tokio::sync::watch;
use workload_api::Bundle;

use crate::issuer_health::IssuerHealth;
use crate::node::federated::FederatedChange;
use crate::node::Node;

/// The entries an agent holds, in registration order.
pub type Entries = Arc<Vec<pb::Entry>>;

fn ordered(map: &BTreeMap<String, pb::Entry>) -> Entries {
    let mut entries: Vec<pb::Entry> = map.values().cloned().collect();
    entries.sort_by_key(|e| e.sequence);
    Arc::new(entries)
}

/// Runs entry sync until `stop` fires, publishing into `entries`.
pub async fn run(
    node: Arc<Node>,
    entries: watch::Sender<Entries>,
    health: Arc<IssuerHealth>,
    mut stop: watch::Receiver<bool>,
) {
    let mut current: BTreeMap<String, pb::Entry> = entries
        .borrow()
        .iter()
        .map(|e| (e.id.clone(), e.clone()))
        .collect();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut synced = false;
        let result = tokio::select! {
            result = follow(&node, &mut current, &entries, &health, &mut synced) => result,
            _ = stop.wait_for(|s| *s) => return,
        };
        if synced {
            // The stream worked: its end is news, not a persisting fault.
            backoff = FIRST_BACKOFF;
        }
        let connection_failed = !node.issuer.is_up();
        match result {
            Ok(()) => tracing::info!("entry stream ended; reopening"),
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                node.refused(&status).await;
                if node.standing() != crate::node::Standing::Good {
                    // A refused agent serves nothing: its entries go, and
                    // with them every SVID it holds.
                    current.clear();
                    entries.send_replace(Arc::new(Vec::new()));
                }
            }
            Err(status) => {
                health.failed(
                    std::time::SystemTime::now(),
                    &format!("{:?}: {}", status.code(), status.message()),
                );
                match crate::issuer_client::certificate_rejected(&status) {
                    Some(reason) => tracing::error!(
                        %reason,
                        bundle = %node.dir.bundle_path().display(),
                        "the issuer's certificate does not verify against the stored bundle; \
                         if its CA was replaced, re-bootstrap: remove the bundle and start \
                         with a new trust bundle and join token"
                    ),
                    // The pool logs an outage once, not at each attempt.
                    None if connection_failed => {
                        tracing::debug!(code = ?status.code(), error = %status.message(), "entry stream failed; reopening")
                    }
                    None => {
                        tracing::warn!(code = ?status.code(), error = %status.message(), "entry stream failed; reopening")
                    }
                }
            }
        }
        if connection_failed {
            // The pool's jittered delay, cut short if another call gets
            // through first; and a short pause in any case, so nothing spins.
            tokio::select! {
                _ = async {
                    tokio::time::sleep(MIN_PAUSE).await;
                    node.issuer.ready().await;
                } => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(crate::with_jitter(backoff)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The pause after the first failure the issuer answered with.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The least pause before reopening after a connection failure.
const MIN_PAUSE: Duration = Duration::from_millis(20);

async fn follow(
    node: &Node,
    current: &mut BTreeMap<String, pb::Entry>,
    entries: &watch::Sender<Entries>,
    health: &IssuerHealth,
    synced: &mut bool,
) -> Result<(), tonic::Status> {
    let mut stream = node
        .client()
        .sync_entries(pb::SyncEntriesRequest {})
        .await?
        .into_inner();
    let mut snapshot: Option<BTreeMap<String, pb::Entry>> = None;
    // A snapshot's foreign bundles replace those held once it is complete.
    let mut snapshot_federated = FederatedChange::complete();
    while let Some(message) = stream.message().await? {
        crate::metrics::synced();
        if !message.bundle.is_empty() {
            match Bundle::from_jwks_json(node.config.trust_domain.clone(), &message.bundle) {
                Ok(bundle) => node.update_bundle(bundle).await,
                Err(error) => {
                    tracing::error!(%error, "issuer sent an invalid bundle; keeping the current one")
                }
            }
        }
        if !message.revocation_list.is_empty() {
            node.update_revocations(message.crls, &message.revocation_list);
        }
        if message.snapshot {
            let building = snapshot.get_or_insert_with(BTreeMap::new);
            for entry in message.upserted {
                building.insert(entry.id.clone(), entry);
            }
            snapshot_federated.add(message.federated_bundles);
            if message.snapshot_complete {
                health.succeeded();
                *synced = true;
                *current = snapshot.take().unwrap_or_default();
                node.update_federated(std::mem::replace(
                    &mut snapshot_federated,
                    FederatedChange::complete(),
                ));
                entries.send_replace(ordered(current));
                tracing::debug!(entries = current.len(), "entry snapshot received");
            }
            continue;
        }
        for entry in message.upserted {
            current.insert(entry.id.clone(), entry);
        }
        for id in &message.removed_ids {
            current.remove(id);
        }
        if !message.federated_bundles.is_empty() || !message.removed_federated_bundles.is_empty() {
            let mut change = FederatedChange {
                removed: message.removed_federated_bundles,
                ..Default::default()
            };
            change.add(message.federated_bundles);
            node.update_federated(change);
        }
        entries.send_replace(ordered(current));
    }
    Ok(())
}
