//! Which entries an agent may mint for: those parented by the agent and,
//! transitively, those parented by an entry already in the set (SPIRE's
//! node aliasing), plus node aliases by attested selectors. One index of
//! entries by parent serves every agent, so finding one agent's entries
//! costs what it finds, not the size of the table.

use std::collections::{BTreeSet, HashMap};

use super::{Entry, Selector};

/// Entries indexed for authorization.
#[derive(Debug, Default)]
pub struct EntryGraph {
    /// Entries whose owner (if any) is in good standing, by sequence.
    entries: Vec<Entry>,
    /// Indexes into `entries`, by parent ID, in sequence order.
    by_parent: HashMap<String, Vec<usize>>,
}

impl EntryGraph {
    /// Indexes `entries`, which must already leave out entries of revoked
    /// owners and be in registration order.
    pub fn new(entries: Vec<Entry>) -> Self {
        let mut by_parent: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            by_parent
                .entry(entry.fields.parent_id.clone())
                .or_default()
                .push(index);
        }
        EntryGraph { entries, by_parent }
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
    ) -> Vec<&Entry> {
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
        let mut included: BTreeSet<usize> = BTreeSet::new();
        while let Some(parent) = parents.pop() {
            for &index in self.by_parent.get(&parent).into_iter().flatten() {
                let entry = &self.entries[index];
                if !live(entry) || !included.insert(index) {
                    continue;
                }
                if seen_parents.insert(entry.fields.spiffe_id.clone()) {
                    parents.push(entry.fields.spiffe_id.clone());
                }
            }
        }
        // Indexes follow registration order.
        included.into_iter().map(|i| &self.entries[i]).collect()
    }

    fn children(&self, parent: &str) -> impl Iterator<Item = &Entry> {
        self.by_parent
            .get(parent)
            .into_iter()
            .flatten()
            .map(|&i| &self.entries[i])
    }
}
