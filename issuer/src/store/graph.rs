//! Which entries an agent may mint for: those parented by the agent and,
//! transitively, those parented by an entry already in the set (SPIRE's
//! node aliasing), plus node aliases by attested selectors. One index of
//! entries by parent serves every agent, so finding one agent's entries
//! costs what it finds, not the size of the table.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Entry, Selector};

/// Entries indexed for authorization, kept up to date one entry at a time.
#[derive(Debug, Default)]
pub struct EntryGraph {
    /// Entries whose owner (if any) is in good standing, by id.
    entries: HashMap<String, Entry>,
    /// Entry ids by parent ID, in sequence (registration) order.
    by_parent: HashMap<String, BTreeMap<i64, String>>,
}

/// An agent's entries, and what decided them.
#[derive(Debug)]
pub struct Authorized<'a> {
    /// In registration order.
    pub entries: Vec<&'a Entry>,
    /// Every parent ID whose children were looked at: only a change to an
    /// entry under one of these can change the answer.
    pub parents: BTreeSet<String>,
}

impl EntryGraph {
    /// Indexes `entries`, which must leave out entries of revoked owners.
    pub fn new(entries: Vec<Entry>) -> Self {
        let mut graph = EntryGraph::default();
        for entry in entries {
            graph.upsert(entry);
        }
        graph
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Adds `entry`, or replaces the entry with its id. Returns the one
    /// replaced.
    pub fn upsert(&mut self, entry: Entry) -> Option<Entry> {
        let replaced = self.remove(&entry.id);
        self.by_parent
            .entry(entry.fields.parent_id.clone())
            .or_default()
            .insert(entry.sequence, entry.id.clone());
        self.entries.insert(entry.id.clone(), entry);
        replaced
    }

    /// Removes the entry `id`, returning it.
    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        let parent = &entry.fields.parent_id;
        if let Some(children) = self.by_parent.get_mut(parent) {
            children.remove(&entry.sequence);
            if children.is_empty() {
                self.by_parent.remove(parent);
            }
        }
        Some(entry)
    }

    /// The entries `agent_id`, with `agent_selectors` from its attestation,
    /// may mint for at `now` (Unix seconds), in registration order.
    /// `issuer_id` parents node aliases by selectors: such an entry whose
    /// selectors the agent all has makes its SPIFFE ID one of the agent's.
    pub fn authorized(
        &self,
        agent_id: &str,
        issuer_id: Option<&str>,
        agent_selectors: &[Selector],
        now: i64,
    ) -> Authorized<'_> {
        let live = |e: &Entry| e.fields.expires_at == 0 || e.fields.expires_at > now;
        let mut parents: Vec<String> = vec![agent_id.to_owned()];
        if let Some(issuer_id) = issuer_id {
            for alias in self.children(issuer_id) {
                if live(alias)
                    && alias
                        .fields
                        .selectors
                        .iter()
                        .all(|s| agent_selectors.contains(s))
                {
                    parents.push(alias.fields.spiffe_id.clone());
                }
            }
        }
        let mut seen_parents: BTreeSet<String> = parents.iter().cloned().collect();
        let mut included: BTreeMap<i64, &Entry> = BTreeMap::new();
        while let Some(parent) = parents.pop() {
            for entry in self.children(&parent) {
                if !live(entry) || included.insert(entry.sequence, entry).is_some() {
                    continue;
                }
                if seen_parents.insert(entry.fields.spiffe_id.clone()) {
                    parents.push(entry.fields.spiffe_id.clone());
                }
            }
        }
        // The aliases were looked for under the issuer's ID.
        seen_parents.extend(issuer_id.map(str::to_owned));
        Authorized {
            entries: included.into_values().collect(),
            parents: seen_parents,
        }
    }

    fn children(&self, parent: &str) -> impl Iterator<Item = &Entry> {
        self.by_parent
            .get(parent)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter_map(|id| self.entries.get(id))
    }
}
