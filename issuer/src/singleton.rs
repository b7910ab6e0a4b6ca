//! Jobs that must run on one replica at a time (pruning, and whatever else
//! replicas would otherwise do twice): a database lease, renewed often so
//! that another replica takes over within seconds of its holder's death.

use std::time::Duration;

use tokio::sync::watch;

use crate::store::Store;

/// How long a lease lasts unless renewed.
const LEASE_TTL: Duration = Duration::from_secs(6);
/// How often the holder renews it, and how often others try to take it:
/// a dead holder's job moves within `LEASE_TTL + RENEW_EVERY`.
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Holds the lease `name` for `holder` whenever it can, until shutdown.
/// The receiver says whether this process holds it now.
pub fn hold(
    store: Store,
    name: &'static str,
    holder: String,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (holds, receiver) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let now_ms = crate::clock::unix_millis_now();
            let held = match store
                .hold_lease(name, &holder, now_ms, now_ms + LEASE_TTL.as_millis() as i64)
                .await
            {
                Ok(held) => held,
                Err(error) => {
                    tracing::warn!(%error, lease = name, "cannot renew a lease; giving up the job");
                    false
                }
            };
            holds.send_if_modified(|current| {
                let changed = *current != held;
                if changed {
                    tracing::info!(lease = name, holds = held, "singleton lease");
                }
                *current = held;
                changed
            });
            let stop = tokio::select! {
                _ = tokio::time::sleep(RENEW_EVERY) => false,
                _ = shutdown.wait_for(|stop| *stop) => true,
            };
            if stop {
                let held = *holds.borrow();
                if held {
                    let _ = store.release_lease(name, &holder).await;
                }
                return;
            }
        }
    });
    receiver
}
