//! Automatic registration: watches a cluster's pods and nodes and keeps one
//! entry per (identity rule, selected pod), removing it when the pod goes.
//!
//! Level-triggered: every change marks the cluster dirty, and a pass at most
//! [`DEBOUNCE`] later recomputes the whole desired set from the watched
//! state and brings the store to it. A missed or repeated event, a restart,
//! or an entry edited away are all mended by the next pass; a pass also
//! runs every [`RESYNC`]. Nothing is written before both the pod and node
//! lists are complete, so a partial list never deletes entries.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use workload_api::events::EventKind;

use super::client::{ClusterClient, Clusters};
use super::rules;
use crate::clock::unix_secs;
use crate::config::template::PodFacts;
use crate::eventlog::witnessed;
use crate::owners;
use crate::state::IssuerState;
use crate::store::{EntryFields, StoreError};

/// How long after a change the pass runs, so a burst is one pass.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often a pass runs without changes.
pub const RESYNC: Duration = Duration::from_secs(300);
/// The pause after a pass failed (the store was unavailable).
const RETRY: Duration = Duration::from_secs(2);
/// The most pods tracked per cluster; past it new pods get no entries
/// until others go, and an error says so.
pub const MAX_PODS: usize = 100_000;

/// A registrar for each cluster with identity rules, to be spawned.
pub fn tasks(state: &IssuerState, clusters: &Clusters) -> Vec<super::Task> {
    clusters
        .iter()
        .filter(|c| !c.cluster.identity_rules.is_empty())
        .map(|client| -> super::Task {
            Box::pin(Registrar::new(state.clone(), client.clone()).run())
        })
        .collect()
}

/// Deletes the entries of clusters that are no longer configured, whose
/// registrars will never run to remove them.
pub async fn remove_unconfigured(
    state: &IssuerState,
    clusters: &Clusters,
) -> Result<usize, StoreError> {
    let managed = state.store.list_managed_entries("k8s/").await?;
    let configured: Vec<String> = clusters
        .iter()
        .filter(|c| !c.cluster.identity_rules.is_empty())
        .map(|c| rules::managed_prefix(&c.cluster.name))
        .collect();
    let mut removed = 0;
    for entry in managed {
        if !configured
            .iter()
            .any(|prefix| entry.fields.managed_by.starts_with(prefix))
        {
            delete(state, &entry).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// One watch event. Boxed: pods and nodes are kilobytes each.
enum Change {
    Pod(Box<Event<Pod>>),
    Node(Box<Event<Node>>),
    Failed(watcher::Error),
}

impl Change {
    fn pod(event: Result<Event<Pod>, watcher::Error>) -> Self {
        event.map_or_else(Change::Failed, |e| Change::Pod(Box::new(e)))
    }

    fn node(event: Result<Event<Node>, watcher::Error>) -> Self {
        event.map_or_else(Change::Failed, |e| Change::Node(Box::new(e)))
    }
}

struct Registrar {
    state: IssuerState,
    client: ClusterClient,
    /// Pods some rule could select, by uid.
    pods: BTreeMap<String, PodFacts>,
    /// Node uids by node name.
    nodes: BTreeMap<String, String>,
    /// A relist in progress, replacing `pods` or `nodes` when done.
    relisting_pods: Option<BTreeMap<String, PodFacts>>,
    relisting_nodes: Option<BTreeMap<String, String>>,
    pods_listed: bool,
    nodes_listed: bool,
    /// The errors of the last pass, so each is logged once, not every pass.
    reported: Vec<String>,
}

impl Registrar {
    fn new(state: IssuerState, client: ClusterClient) -> Self {
        Registrar {
            state,
            client,
            pods: BTreeMap::new(),
            nodes: BTreeMap::new(),
            relisting_pods: None,
            relisting_nodes: None,
            pods_listed: false,
            nodes_listed: false,
            reported: Vec::new(),
        }
    }

    async fn run(mut self) {
        let client = self.client.client.clone();
        let pods = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .map(Change::pod);
        let nodes = watcher(Api::<Node>::all(client), watcher::Config::default())
            .default_backoff()
            .map(Change::node);
        let mut changes = std::pin::pin!(pods.merge(nodes));
        let mut pass_at: Option<Instant> = None;
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            tokio::select! {
                change = changes.next() => {
                    let Some(change) = change else { return };
                    if self.apply(change) && pass_at.is_none() {
                        pass_at = Some(Instant::now() + DEBOUNCE);
                    }
                }
                _ = resync.tick() => {
                    pass_at.get_or_insert_with(Instant::now);
                }
                _ = tokio::time::sleep_until(pass_at.unwrap_or_else(Instant::now)), if pass_at.is_some() => {
                    if !(self.pods_listed && self.nodes_listed) {
                        pass_at = None;
                        continue;
                    }
                    match self.pass().await {
                        Ok(()) => pass_at = None,
                        Err(error) => {
                            tracing::warn!(cluster = %self.client.cluster.name, %error, "identity rules could not be applied; retrying");
                            pass_at = Some(Instant::now() + RETRY);
                        }
                    }
                }
            }
        }
    }

    /// Folds one watch event into the state; says whether anything changed.
    fn apply(&mut self, change: Change) -> bool {
        let cluster = self.client.cluster.name.clone();
        match change {
            Change::Failed(error) => {
                tracing::warn!(%cluster, %error, "watching the Kubernetes API failed; retrying with backoff");
                false
            }
            Change::Pod(event) => match *event {
                Event::Init => {
                    self.relisting_pods = Some(BTreeMap::new());
                    false
                }
                Event::InitApply(pod) => {
                    if let Some(facts) = self.facts(&pod) {
                        let relist = self.relisting_pods.get_or_insert_with(BTreeMap::new);
                        if relist.len() < MAX_PODS {
                            relist.insert(facts.pod_uid.clone(), facts);
                        }
                    }
                    false
                }
                Event::InitDone => {
                    self.pods = self.relisting_pods.take().unwrap_or_default();
                    self.pods_listed = true;
                    true
                }
                Event::Apply(pod) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    match self.facts(&pod) {
                        Some(facts) => {
                            if self.pods.get(&uid) == Some(&facts) {
                                return false;
                            }
                            if self.pods.len() >= MAX_PODS && !self.pods.contains_key(&uid) {
                                tracing::error!(%cluster, max = MAX_PODS, pod = %facts.pod_name, "too many pods selected by identity rules; this one gets no entry");
                                return false;
                            }
                            self.pods.insert(uid, facts);
                            true
                        }
                        None => self.pods.remove(&uid).is_some(),
                    }
                }
                Event::Delete(pod) => self.pods.remove(&pod_uid(&pod)).is_some(),
            },
            Change::Node(event) => match *event {
                Event::Init => {
                    self.relisting_nodes = Some(BTreeMap::new());
                    false
                }
                Event::InitApply(node) => {
                    if let Some((name, uid)) = node_uid(&node) {
                        self.relisting_nodes
                            .get_or_insert_with(BTreeMap::new)
                            .insert(name, uid);
                    }
                    false
                }
                Event::InitDone => {
                    self.nodes = self.relisting_nodes.take().unwrap_or_default();
                    self.nodes_listed = true;
                    true
                }
                Event::Apply(node) => match node_uid(&node) {
                    Some((name, uid)) => self.nodes.insert(name, uid.clone()) != Some(uid),
                    None => false,
                },
                Event::Delete(node) => match node_uid(&node) {
                    Some((name, _)) => self.nodes.remove(&name).is_some(),
                    None => false,
                },
            },
        }
    }

    /// A pod's facts if some rule of the cluster selects it.
    fn facts(&self, pod: &Pod) -> Option<PodFacts> {
        let cluster = &self.client.cluster;
        let facts = rules::pod_facts(pod, &self.state.config.trust_domain, &cluster.name)?;
        cluster
            .identity_rules
            .iter()
            .any(|rule| rules::selects(rule, &facts))
            .then_some(facts)
    }

    /// Brings the cluster's managed entries to what the rules want now.
    async fn pass(&mut self) -> Result<(), StoreError> {
        let cluster = &self.client.cluster;
        let (mut desired, mut errors) = rules::desired_entries(
            cluster,
            &self.state.config.trust_domain,
            self.pods.values(),
            &self.nodes,
        );
        self.bind_owners(&mut desired, &mut errors).await?;
        for error in errors.iter().filter(|e| !self.reported.contains(e)) {
            tracing::warn!(cluster = %cluster.name, %error, "pod gets no entry");
        }
        self.reported = errors;
        let existing = self
            .state
            .store
            .list_managed_entries(&rules::managed_prefix(&cluster.name))
            .await?;
        let (mut created, mut updated, mut deleted) = (0, 0, 0);
        for entry in existing {
            match desired.remove(&entry.fields.managed_by) {
                None => {
                    delete(&self.state, &entry).await?;
                    deleted += 1;
                }
                Some((_, fields)) if fields != entry.fields => {
                    self.write(Some(&entry.id), &fields).await?;
                    updated += 1;
                }
                Some(_) => {}
            }
        }
        for (_, fields) in desired.values() {
            self.write(None, fields).await?;
            created += 1;
        }
        if created + updated + deleted > 0 {
            tracing::info!(cluster = %cluster.name, created, updated, deleted, "identity rules applied");
        }
        Ok(())
    }

    /// Binds the entries of rules with an owner to it, by the rule's
    /// consent. An entry the consent does not cover, or whose owner is
    /// unknown or revoked, is left out, with the reason in `errors`.
    async fn bind_owners(
        &self,
        desired: &mut BTreeMap<String, (String, EntryFields)>,
        errors: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let mut owners = BTreeMap::new();
        for rule in &self.client.cluster.identity_rules {
            let Some((owner_id, _)) = &rule.owner else {
                continue;
            };
            let owner = match self.state.store.get_owner(owner_id).await {
                Ok(owner) if owner.revoked_at != 0 => Err(format!("owner {owner_id} is revoked")),
                Ok(owner) => Ok(owner),
                Err(StoreError::OwnerNotFound(_)) => {
                    Err(format!("owner {owner_id} is not registered"))
                }
                Err(e) => return Err(e),
            };
            owners.insert(rule.name.clone(), owner);
        }
        let now = unix_secs(self.state.clock.now());
        desired.retain(|_, (rule_name, fields)| {
            let Some(owner) = owners.get(rule_name.as_str()) else {
                return true;
            };
            let consent = self
                .client
                .cluster
                .identity_rules
                .iter()
                .find(|r| r.name == *rule_name)
                .and_then(|r| r.owner.as_ref())
                .map(|(_, consent)| consent.as_str())
                .unwrap_or_default();
            let bound = owner.as_ref().map_err(Clone::clone).and_then(|owner| {
                owners::bind_rule_entry(fields, owner, consent, now).map_err(|e| e.to_string())
            });
            match bound {
                Ok(_) => true,
                Err(reason) => {
                    errors.push(format!(
                        "identity rule {rule_name:?} cannot bind {} to its owner: {reason}",
                        fields.spiffe_id
                    ));
                    false
                }
            }
        });
        Ok(())
    }

    /// Creates (`id` None) or updates an entry and logs it.
    async fn write(&self, id: Option<&str>, fields: &EntryFields) -> Result<(), StoreError> {
        let now = unix_secs(self.state.clock.now());
        let (entry, kind) = match id {
            None => (
                self.state.store.create_entry(fields, now).await?,
                EventKind::EntryCreated,
            ),
            Some(id) => (
                self.state.store.update_entry(id, fields, 0, now).await?,
                EventKind::EntryUpdated,
            ),
        };
        tracing::info!(entry_id = %entry.id, spiffe_id = %entry.fields.spiffe_id, managed_by = %entry.fields.managed_by, "entry kept by an identity rule");
        let at = self.state.clock.now();
        let mut events = vec![witnessed::entry(&self.state.events, kind, &entry, at)];
        events.extend(witnessed::consent(&self.state.events, &entry, at));
        log(&self.state, events).await;
        Ok(())
    }
}

/// Deletes a managed entry and logs it.
async fn delete(state: &IssuerState, entry: &crate::store::Entry) -> Result<(), StoreError> {
    let deleted = match state
        .delete_entry(&entry.id, unix_secs(state.clock.now()))
        .await
    {
        Ok(deleted) => deleted,
        // Gone already, as wanted.
        Err(StoreError::EntryNotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    tracing::info!(entry_id = %entry.id, managed_by = %entry.fields.managed_by, "entry of a pod that is gone deleted");
    log(
        state,
        witnessed::deleted(&state.events, entry, &deleted, state.clock.now()),
    )
    .await;
    Ok(())
}

/// Records a change already committed; a failure is logged, as for
/// operator changes, and the change stands.
async fn log(state: &IssuerState, events: Vec<workload_api::events::Event>) {
    if let Err(error) = state.events.append(&events).await {
        tracing::error!(%error, "event log append failed after an identity rule change was applied");
    }
}

fn pod_uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn node_uid(node: &Node) -> Option<(String, String)> {
    let name = node.metadata.name.clone()?;
    let uid = node.metadata.uid.clone().filter(|u| !u.is_empty())?;
    Some((name, uid))
}
