//! One replica's view of what its entry streams serve: every live entry
//! indexed by parent, every agent's standing and attested selectors, and
//! the foreign bundles, checked once. It follows the store change by
//! change: a change names the entries or the agent it wrote, and only
//! those rows are read again; only an owner's revocation, a lost
//! notification or a backlog reads everything.
//!
//! Each stream says which parent IDs decided its entries (its agent's ID
//! among them), and is woken only by a change under one of them. An entry
//! created for one agent wakes that agent's stream, not ten thousand.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, watch, Notify};
use workload_api::id::{parse_trust_domain, TrustDomain};
use workload_api::Bundle;

use crate::store::{Change, EntryGraph, ForeignBundle, Noted, Selector, Store, StoreError};

/// The largest foreign bundle sent to agents; agents refuse larger ones.
pub const MAX_FOREIGN_BUNDLE_BYTES: usize = 1024 * 1024;

/// How many named rows one refresh reads one by one; past this, reading
/// everything is cheaper.
const MOST_NAMED_ROWS: usize = 2000;

/// How long a failed read waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// An agent as its stream needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    pub banned: bool,
    pub selectors: Vec<Selector>,
}

/// A stored foreign bundle, checked once for every stream.
#[derive(Debug)]
pub struct HeldForeignBundle {
    pub stored: ForeignBundle,
    /// SHA-256 of its JSON, which streams remember instead of the JSON.
    pub digest: [u8; 32],
    /// Why it may not go to agents, if it may not.
    pub unusable: Option<String>,
}

impl HeldForeignBundle {
    /// Checks `stored` for an issuer of the trust domain `local`.
    pub fn check(stored: ForeignBundle, local: &TrustDomain) -> Self {
        HeldForeignBundle {
            digest: sha256(stored.bundle.as_bytes()),
            unusable: usable_foreign_bundle(&stored, local).err(),
            stored,
        }
    }
}

/// What the store held as of the view's version.
#[derive(Debug, Default)]
pub struct View {
    pub entries: EntryGraph,
    pub agents: HashMap<String, AgentView>,
    pub foreign_bundles: Arc<Vec<HeldForeignBundle>>,
    /// Moves when the foreign bundles changed, so streams compare them
    /// only then.
    pub foreign_version: u64,
}

/// The view, kept up to date with the store, and who follows what in it.
#[derive(Debug)]
pub struct Registrations {
    store: Store,
    local: TrustDomain,
    view: RwLock<View>,
    /// The store's change count the view holds every change up to. Moved
    /// while the view is still locked for writing, so a reader sees the
    /// version of what it reads.
    applied: watch::Sender<u64>,
    watchers: Mutex<Watchers>,
    /// The changes the refresher reads, subscribed before the first read
    /// so none falls between.
    changes: Mutex<Option<broadcast::Receiver<Noted>>>,
}

/// The streams following the view, by the IDs they follow.
#[derive(Debug, Default)]
struct Watchers {
    next_id: u64,
    by_key: HashMap<String, HashSet<u64>>,
    signals: HashMap<u64, Arc<Notify>>,
}

impl Watchers {
    fn signal_all(&self) {
        for signal in self.signals.values() {
            signal.notify_one();
        }
    }

    fn signal(&self, keys: &BTreeSet<String>) {
        let woken: HashSet<u64> = keys
            .iter()
            .filter_map(|key| self.by_key.get(key))
            .flatten()
            .copied()
            .collect();
        for id in woken {
            self.signals[&id].notify_one();
        }
    }
}

/// One stream's place among the watchers: it is signalled when a change
/// may concern the IDs it follows. Dropping it leaves.
#[derive(Debug)]
pub struct Interest {
    registrations: Arc<Registrations>,
    id: u64,
    keys: BTreeSet<String>,
    signal: Arc<Notify>,
}

impl Interest {
    /// Follows `keys`, as read from the view at `version`: a change the
    /// view took in after `version` signals at once, as it may have been
    /// missed while the keys were being worked out.
    pub fn follow(&mut self, keys: BTreeSet<String>, version: u64) {
        let mut watchers = self.registrations.watchers.lock().expect("watchers lock");
        for gone in self.keys.difference(&keys) {
            if let Some(ids) = watchers.by_key.get_mut(gone) {
                ids.remove(&self.id);
                if ids.is_empty() {
                    watchers.by_key.remove(gone);
                }
            }
        }
        for new in keys.difference(&self.keys) {
            watchers
                .by_key
                .entry(new.clone())
                .or_default()
                .insert(self.id);
        }
        self.keys = keys;
        if *self.registrations.applied.borrow() > version {
            self.signal.notify_one();
        }
    }

    /// Waits for a change that may concern the keys followed.
    pub async fn changed(&self) {
        self.signal.notified().await;
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        self.follow(BTreeSet::new(), u64::MAX);
        let mut watchers = self.registrations.watchers.lock().expect("watchers lock");
        watchers.signals.remove(&self.id);
    }
}

/// What one refresh reads: the rows changes named, or everything.
#[derive(Debug, Default)]
struct Pending {
    /// The highest change count among them.
    count: u64,
    entries: BTreeSet<String>,
    agents: BTreeSet<String>,
    foreign_bundles: bool,
    everything: bool,
}

impl Pending {
    fn add(&mut self, noted: &Noted) {
        self.count = self.count.max(noted.count);
        match &*noted.change {
            Change::Entries { ids, .. } => self.entries.extend(ids.iter().cloned()),
            Change::Agent(id) => {
                self.agents.insert(id.clone());
            }
            Change::ForeignBundles | Change::Federations => self.foreign_bundles = true,
            Change::Registrations => self.everything = true,
            // Not counted among these changes; nothing to read.
            Change::TrustBundle | Change::Revocations => {}
        }
        if self.entries.len() + self.agents.len() > MOST_NAMED_ROWS {
            self.everything = true;
        }
    }

    fn is_empty(&self) -> bool {
        self.count == 0 && !self.everything
    }
}

impl Registrations {
    /// Reads the first view. `local` is the issuer's trust domain, whose
    /// bundle no foreign bundle may claim to be.
    pub async fn load(store: Store, local: TrustDomain) -> Result<Arc<Self>, StoreError> {
        let changes = store.subscribe_changes();
        let registrations = Arc::new(Registrations {
            store,
            local,
            view: RwLock::new(View::default()),
            applied: watch::channel(0).0,
            watchers: Mutex::new(Watchers::default()),
            changes: Mutex::new(Some(changes)),
        });
        registrations.reload_everything().await?;
        Ok(registrations)
    }

    /// Joins the watchers, following nothing yet.
    pub fn watch(self: &Arc<Self>) -> Interest {
        let signal = Arc::new(Notify::new());
        let mut watchers = self.watchers.lock().expect("watchers lock");
        watchers.next_id += 1;
        let id = watchers.next_id;
        watchers.signals.insert(id, signal.clone());
        Interest {
            registrations: self.clone(),
            id,
            keys: BTreeSet::new(),
            signal,
        }
    }

    /// Runs `read` on the view and its version. Keep it short and
    /// synchronous: the refresher waits for it.
    pub fn read<T>(&self, read: impl FnOnce(&View, u64) -> T) -> T {
        let view = self.view.read().expect("view lock");
        let version = *self.applied.borrow();
        read(&view, version)
    }

    /// Waits until the view holds every change committed before now.
    pub async fn caught_up(&self) {
        let wanted = self.store.change_count();
        let mut applied = self.applied.subscribe();
        // Fails only when the refresher is gone, at shutdown.
        let _ = applied.wait_for(|version| *version >= wanted).await;
    }

    /// Follows the store's changes until shutdown. A failed read is
    /// tried again with whatever changed meanwhile.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(mut changes) = self.changes.lock().expect("changes lock").take() else {
            tracing::error!("the registrations' refresher was started twice");
            return;
        };
        let mut pending = Pending::default();
        loop {
            if pending.is_empty() {
                tokio::select! {
                    noted = changes.recv() => match noted {
                        Ok(noted) => pending.add(&noted),
                        Err(broadcast::error::RecvError::Lagged(_)) => pending.everything = true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
            loop {
                match changes.try_recv() {
                    Ok(noted) => pending.add(&noted),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => pending.everything = true,
                    Err(_) => break,
                }
            }
            match self.apply(&pending).await {
                Ok(()) => pending = Pending::default(),
                Err(error) => {
                    tracing::warn!(%error, "reading registrations for the entry streams failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                }
            }
        }
    }

    /// Reads what `pending` names and takes it into the view.
    async fn apply(&self, pending: &Pending) -> Result<(), StoreError> {
        if pending.everything {
            return self.reload_everything().await;
        }
        let entry_ids: Vec<String> = pending.entries.iter().cloned().collect();
        let agent_ids: Vec<String> = pending.agents.iter().cloned().collect();
        let mut entries = self.store.live_entries_with_ids(&entry_ids).await?;
        let agents = self.store.agents_with_ids(&agent_ids).await?;
        let foreign = match pending.foreign_bundles {
            true => Some(self.read_foreign_bundles().await?),
            false => None,
        };
        let mut touched: BTreeSet<String> = pending.agents.clone();
        {
            let mut view = self.view.write().expect("view lock");
            for id in &pending.entries {
                let found = entries
                    .iter()
                    .position(|e| e.id == *id)
                    .map(|at| entries.swap_remove(at));
                let replaced = match found {
                    Some(entry) => {
                        touched.insert(entry.fields.parent_id.clone());
                        view.entries.upsert(entry)
                    }
                    None => view.entries.remove(id),
                };
                touched.extend(replaced.map(|e| e.fields.parent_id));
            }
            for id in &pending.agents {
                view.agents.remove(id);
            }
            for agent in agents {
                view.agents
                    .insert(agent.spiffe_id, agent_view(agent.banned, agent.selectors));
            }
            if let Some(foreign) = foreign {
                view.foreign_bundles = Arc::new(foreign);
                view.foreign_version += 1;
            }
            self.applied.send_modify(|v| *v = (*v).max(pending.count));
        }
        let watchers = self.watchers.lock().expect("watchers lock");
        match pending.foreign_bundles {
            true => watchers.signal_all(),
            false => watchers.signal(&touched),
        }
        Ok(())
    }

    /// Reads the whole view again, and wakes every stream.
    async fn reload_everything(&self) -> Result<(), StoreError> {
        // Counted before reading: a change after this shows as newer.
        let version = self.store.change_count();
        let entries = EntryGraph::new(self.store.live_entries().await?);
        let agents = self
            .store
            .list_agents()
            .await?
            .into_iter()
            .map(|a| (a.spiffe_id, agent_view(a.banned, a.selectors)))
            .collect();
        let foreign_bundles = Arc::new(self.read_foreign_bundles().await?);
        {
            let mut view = self.view.write().expect("view lock");
            let foreign_version = view.foreign_version + 1;
            *view = View {
                entries,
                agents,
                foreign_bundles,
                foreign_version,
            };
            self.applied.send_modify(|v| *v = (*v).max(version));
        }
        self.watchers.lock().expect("watchers lock").signal_all();
        Ok(())
    }

    /// The stored foreign bundles, each checked once.
    async fn read_foreign_bundles(&self) -> Result<Vec<HeldForeignBundle>, StoreError> {
        Ok(self
            .store
            .list_foreign_bundles()
            .await?
            .into_iter()
            .map(|stored| HeldForeignBundle::check(stored, &self.local))
            .collect())
    }
}

fn agent_view(banned: bool, selectors: Vec<Selector>) -> AgentView {
    AgentView { banned, selectors }
}

/// Whether a stored foreign bundle may go to agents: a SPIFFE bundle of a
/// trust domain other than this one, within the size agents accept.
fn usable_foreign_bundle(foreign: &ForeignBundle, local: &TrustDomain) -> Result<(), String> {
    let trust_domain = parse_trust_domain(&foreign.trust_domain).map_err(|e| e.to_string())?;
    if trust_domain == *local {
        return Err("it names this issuer's own trust domain".into());
    }
    if foreign.bundle.len() > MAX_FOREIGN_BUNDLE_BYTES {
        return Err(format!(
            "{} bytes; at most {MAX_FOREIGN_BUNDLE_BYTES}",
            foreign.bundle.len()
        ));
    }
    Bundle::from_jwks_json(trust_domain, foreign.bundle.as_bytes())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 digests are 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{temp_store, Agent, EntryFields, EntryOwner, Owner};

    const TD: &str = "td";
    const A: &str = "spiffe://td/agent/join_token/a";
    const B: &str = "spiffe://td/agent/join_token/b";

    fn agent(id: &str) -> Agent {
        Agent {
            spiffe_id: id.into(),
            attestation_type: "join_token".into(),
            serial: "01".into(),
            new_serial: String::new(),
            expires_at: i64::MAX,
            banned: false,
            attested_at: 1,
            selectors: vec![Selector::parse(&format!("spiffe_id:{id}")).unwrap()],
        }
    }

    fn entry(spiffe_id: &str, parent: &str) -> EntryFields {
        EntryFields {
            spiffe_id: spiffe_id.into(),
            parent_id: parent.into(),
            selectors: vec![Selector::parse("unix:uid:1000").unwrap()],
            ..EntryFields::default()
        }
    }

    /// A stream's view of `agent_id`: its entries' SPIFFE IDs, following
    /// what decided them.
    fn follow(
        registrations: &Registrations,
        interest: &mut Interest,
        agent_id: &str,
    ) -> Vec<String> {
        let issuer = crate::store::issuer_of(agent_id);
        let (ids, parents, version) = registrations.read(|view, version| {
            let selectors = view
                .agents
                .get(agent_id)
                .map(|a| a.selectors.clone())
                .unwrap_or_default();
            let authorized = view
                .entries
                .authorized(agent_id, issuer.as_deref(), &selectors, 0);
            let ids = authorized
                .entries
                .iter()
                .map(|e| e.fields.spiffe_id.clone())
                .collect::<Vec<_>>();
            (ids, authorized.parents, version)
        });
        interest.follow(parents, version);
        ids
    }

    async fn signalled(interest: &Interest) -> bool {
        tokio::time::timeout(Duration::from_millis(300), interest.changed())
            .await
            .is_ok()
    }

    async fn started() -> (
        tempfile::TempDir,
        Store,
        Arc<Registrations>,
        watch::Sender<bool>,
    ) {
        let (dir, store) = temp_store().await;
        store.upsert_agent(&agent(A), 1).await.unwrap();
        store.upsert_agent(&agent(B), 1).await.unwrap();
        let registrations = Registrations::load(store.clone(), parse_trust_domain(TD).unwrap())
            .await
            .unwrap();
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(registrations.clone().run(shutdown));
        (dir, store, registrations, stop)
    }

    #[tokio::test]
    async fn an_entry_wakes_only_the_stream_it_concerns() {
        let (_dir, store, registrations, _stop) = started().await;
        let mut a = registrations.watch();
        let mut b = registrations.watch();
        assert!(follow(&registrations, &mut a, A).is_empty());
        assert!(follow(&registrations, &mut b, B).is_empty());

        let node = store
            .create_entry(&entry("spiffe://td/node", A), 2)
            .await
            .unwrap();
        assert!(signalled(&a).await);
        assert!(!signalled(&b).await, "B's stream was woken by A's entry");
        assert_eq!(follow(&registrations, &mut a, A), ["spiffe://td/node"]);

        // A's stream now follows the node's ID too: an entry under it
        // concerns A.
        store
            .create_entry(&entry("spiffe://td/workload", "spiffe://td/node"), 3)
            .await
            .unwrap();
        assert!(signalled(&a).await);
        assert!(!signalled(&b).await);
        assert_eq!(
            follow(&registrations, &mut a, A),
            ["spiffe://td/node", "spiffe://td/workload"]
        );

        // Deleting the node takes its subtree out of A's entries.
        store.delete_entry(&node.id, 4).await.unwrap();
        assert!(signalled(&a).await);
        assert!(!signalled(&b).await);
        assert!(follow(&registrations, &mut a, A).is_empty());
    }

    #[tokio::test]
    async fn an_agents_change_wakes_its_stream_and_a_node_alias_wakes_all() {
        let (_dir, store, registrations, _stop) = started().await;
        let mut a = registrations.watch();
        let mut b = registrations.watch();
        follow(&registrations, &mut a, A);
        follow(&registrations, &mut b, B);

        store.ban_agent(B, 2).await.unwrap();
        assert!(signalled(&b).await);
        assert!(!signalled(&a).await, "A's stream was woken by B's ban");
        assert!(registrations.read(|view, _| view.agents[B].banned));

        // A node alias by selectors hangs under the issuer's ID, which
        // every stream follows: whom it matches is for each to say.
        let mut alias = entry("spiffe://td/alias", "spiffe://td/sigil/issuer");
        alias.selectors = vec![Selector::parse(&format!("spiffe_id:{A}")).unwrap()];
        store.create_entry(&alias, 3).await.unwrap();
        assert!(signalled(&a).await);
        assert!(signalled(&b).await);
        assert!(follow(&registrations, &mut a, A).is_empty());
        follow(&registrations, &mut b, B);
        // A matches the alias, so A follows it: what it parents is A's.
        store
            .create_entry(&entry("spiffe://td/w", "spiffe://td/alias"), 4)
            .await
            .unwrap();
        assert!(signalled(&a).await);
        assert!(!signalled(&b).await, "B does not match the alias");
        assert_eq!(follow(&registrations, &mut a, A), ["spiffe://td/w"]);

        store.delete_agent(A).await.unwrap();
        assert!(signalled(&a).await);
        assert!(registrations.read(|view, _| !view.agents.contains_key(A)));
    }

    #[tokio::test]
    async fn an_owners_revocation_reads_everything_again() {
        let (_dir, store, registrations, _stop) = started().await;
        let owner = Owner {
            id: "mailto:ops@example.com".into(),
            public_key: r#"{"kty":"OKP","crv":"Ed25519","x":"k"}"#.into(),
            thumbprint: "tp".into(),
            created_at: 1,
            revoked_at: 0,
        };
        store.register_owner(&owner).await.unwrap();
        let mut owned = entry("spiffe://td/owned", A);
        owned.owner = Some(EntryOwner {
            owner_id: owner.id.clone(),
            key_thumbprint: "tp".into(),
            consent: "consent".into(),
            delegated_from: String::new(),
            actors: Vec::new(),
        });
        store.create_entry(&owned, 2).await.unwrap();
        let mut a = registrations.watch();
        let mut b = registrations.watch();
        registrations.caught_up().await;
        assert_eq!(follow(&registrations, &mut a, A), ["spiffe://td/owned"]);
        follow(&registrations, &mut b, B);

        store.revoke_owner(&owner.id, 3).await.unwrap();
        assert!(signalled(&a).await);
        assert!(signalled(&b).await, "a full read wakes every stream");
        assert!(follow(&registrations, &mut a, A).is_empty());
    }

    #[tokio::test]
    async fn following_from_a_stale_version_signals_at_once() {
        let (_dir, store, registrations, _stop) = started().await;
        let mut a = registrations.watch();
        let version = registrations.read(|_, version| version);
        store
            .create_entry(&entry("spiffe://td/w", B), 2)
            .await
            .unwrap();
        registrations.caught_up().await;
        // Keys worked out from the older version: the change may concern
        // them, so the stream looks again.
        a.follow(BTreeSet::from([A.to_owned()]), version);
        assert!(signalled(&a).await);
    }

    #[test]
    fn too_many_named_rows_read_everything() {
        let mut pending = Pending::default();
        for count in 1..=MOST_NAMED_ROWS as u64 {
            pending.add(&Noted {
                count,
                change: Arc::new(Change::Agent(format!("spiffe://td/agent/{count}"))),
            });
        }
        assert!(!pending.everything);
        pending.add(&Noted {
            count: MOST_NAMED_ROWS as u64 + 1,
            change: Arc::new(Change::Entries {
                ids: vec!["e".into()],
                revoking: false,
            }),
        });
        assert!(pending.everything);
        assert_eq!(pending.count, MOST_NAMED_ROWS as u64 + 1);
    }
}
