//! One replica's view of what its entry streams serve: every live entry
//! indexed by parent, every agent's standing and attested selectors, and
//! the foreign bundles. It is read from the store once per change, however
//! many agents are connected, and each stream finds its own entries in it
//! at the cost of what it finds. Before, each stream read the whole entry
//! table after every change: ten thousand streams, ten thousand reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::store::{EntryGraph, ForeignBundle, Selector, Store, StoreError};

/// An agent as its stream needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    pub banned: bool,
    pub selectors: Vec<Selector>,
}

/// What the store held at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The store's change count when this was read: every change counted
    /// up to it is in here.
    pub version: u64,
    pub entries: EntryGraph,
    pub agents: HashMap<String, AgentView>,
    pub foreign_bundles: Arc<Vec<ForeignBundle>>,
    /// Moves when the foreign bundles changed, so streams compare them
    /// only then.
    pub foreign_version: u64,
}

/// The current snapshot, kept up to date with the store.
#[derive(Debug)]
pub struct Registrations {
    store: Store,
    current: watch::Sender<Arc<Snapshot>>,
}

/// How long a failed read waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

impl Registrations {
    /// Reads the first snapshot.
    pub async fn load(store: Store) -> Result<Self, StoreError> {
        let registrations = Registrations {
            store,
            current: watch::channel(Arc::new(Snapshot::default())).0,
        };
        registrations.reload().await?;
        Ok(registrations)
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.current.subscribe()
    }

    /// Waits for a snapshot holding every change committed before now.
    pub async fn current(&self) -> Arc<Snapshot> {
        let wanted = self.store.change_count();
        let mut snapshots = self.current.subscribe();
        // Fails only when the refresher is gone, at shutdown.
        let _ = snapshots.wait_for(|s| s.version >= wanted).await;
        let snapshot = snapshots.borrow().clone();
        snapshot
    }

    /// Reads the store again after every change until shutdown. Changes
    /// made during a read are caught by the next one.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.store.subscribe();
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            changes.mark_unchanged();
            while let Err(error) = self.reload().await {
                tracing::warn!(%error, "reading registrations for the entry streams failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        }
    }

    async fn reload(&self) -> Result<(), StoreError> {
        // Counted before reading: a change after this shows as newer.
        let version = self.store.change_count();
        let foreign_version = self.store.foreign_bundles_version();
        let entries = EntryGraph::new(self.store.live_entries().await?);
        let agents = self
            .store
            .list_agents()
            .await?
            .into_iter()
            .map(|a| {
                let view = AgentView {
                    banned: a.banned,
                    selectors: a.selectors,
                };
                (a.spiffe_id, view)
            })
            .collect();
        let held = self.current.borrow().clone();
        let foreign_bundles = if held.foreign_version == foreign_version && held.version > 0 {
            held.foreign_bundles.clone()
        } else {
            Arc::new(self.store.list_foreign_bundles().await?)
        };
        self.current.send_replace(Arc::new(Snapshot {
            version,
            entries,
            agents,
            foreign_bundles,
            foreign_version,
        }));
        Ok(())
    }
}
