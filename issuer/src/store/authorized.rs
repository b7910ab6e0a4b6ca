//! The entries an agent may mint for, as signing checks them: read from the
//! store itself (never from a replica's cached view, which trails it), but
//! only the agent's part of the entry tree, so a signing request costs what
//! the agent is entitled to and not the size of the table.
//!
//! One statement reads the agent's subtree, so it sees one snapshot on
//! both backends, and [`EntryGraph::authorized`] decides on it exactly as
//! it would on every entry: the subtree holds every live child of every
//! parent that decision looks at, and it takes only live children.

use super::entries::{entry_columns, entry_from_row, issuer_of};
use super::graph::EntryGraph;
use super::{Entry, Selector, Store, StoreError, MAX_IDS_PER_QUERY};

/// An entry counts unless its owner is revoked (as in [`Store::live_entries`]).
const OWNER_IN_GOOD_STANDING: &str = "(e.owner_id = '' OR o.revoked_at = 0)";

impl Store {
    /// Every entry `agent_id` may mint for at `now` (see [`EntryGraph`]),
    /// in registration order.
    pub async fn authorized_entries(
        &self,
        agent_id: &str,
        now: i64,
    ) -> Result<Vec<Entry>, StoreError> {
        let selectors = self.agent_selectors(agent_id).await?;
        let issuer = issuer_of(agent_id);
        let aliases = match &issuer {
            Some(issuer) => self.alias_candidates(issuer, &selectors, now).await?,
            None => Vec::new(),
        };
        let entries = if aliases.len() > MAX_IDS_PER_QUERY {
            // More node aliases than one statement binds: read everything.
            self.live_entries().await?
        } else {
            self.subtree(agent_id, issuer.as_deref().unwrap_or(""), &aliases, now)
                .await?
        };
        let graph = EntryGraph::new(entries);
        Ok(graph
            .authorized(agent_id, issuer.as_deref(), &selectors, now)
            .entries
            .into_iter()
            .cloned()
            .collect())
    }

    /// The SPIFFE IDs of the node aliases (entries parented by `issuer`)
    /// that an agent with `selectors` matches at `now`. The subtree read
    /// checks them again, in its own snapshot.
    async fn alias_candidates(
        &self,
        issuer: &str,
        selectors: &[Selector],
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let columns = entry_columns("e");
        let rows = sqlx::query(&format!(
            "SELECT {columns} FROM entries e LEFT JOIN owners o ON o.id = e.owner_id \
             WHERE e.parent_id = $1 AND {OWNER_IN_GOOD_STANDING}"
        ))
        .bind(issuer)
        .fetch_all(&self.pool)
        .await?;
        let mut matching = Vec::new();
        for row in &rows {
            let alias = entry_from_row(row)?;
            let live = alias.fields.expires_at == 0 || alias.fields.expires_at > now;
            if live && alias.fields.selectors.iter().all(|s| selectors.contains(s)) {
                matching.push(alias.fields.spiffe_id);
            }
        }
        Ok(matching)
    }

    /// In one statement, the live entries (unexpired at `now`, owner in
    /// good standing) that are: parented by `agent_id`; among `aliases` and
    /// still parented by `issuer`; or parented by one found already. Only
    /// live entries can be authorized or parent authorized ones, so the
    /// rest need not be read.
    async fn subtree(
        &self,
        agent_id: &str,
        issuer: &str,
        aliases: &[String],
        now: i64,
    ) -> Result<Vec<Entry>, StoreError> {
        let columns = entry_columns("e");
        let live = format!("{OWNER_IN_GOOD_STANDING} AND (e.expires_at = 0 OR e.expires_at > $2)");
        let aliases_found = if aliases.is_empty() {
            String::new()
        } else {
            let placeholders = (4..4 + aliases.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "UNION SELECT {columns} FROM entries e LEFT JOIN owners o ON o.id = e.owner_id \
                 WHERE e.parent_id = $3 AND e.spiffe_id IN ({placeholders}) AND {live} "
            )
        };
        // The found rows themselves are the recursion's work table, so each
        // step is an index lookup by parent on both backends. UNION (not
        // UNION ALL) keeps each row once, so a cycle of entries ends.
        let sql = format!(
            "WITH RECURSIVE found AS ( \
                 SELECT {columns} FROM entries e LEFT JOIN owners o ON o.id = e.owner_id \
                     WHERE e.parent_id = $1 AND {live} \
                 {aliases_found}\
                 UNION SELECT {columns} FROM found f \
                     JOIN entries e ON e.parent_id = f.spiffe_id \
                     LEFT JOIN owners o ON o.id = e.owner_id \
                     WHERE {live} \
             ) \
             SELECT * FROM found"
        );
        // $1 the agent, $2 now, then (with aliases) $3 the issuer and the
        // aliases: a backend refuses a bound value the statement never uses.
        let mut query = sqlx::query(&sql).bind(agent_id).bind(now);
        if !aliases.is_empty() {
            query = aliases
                .iter()
                .fold(query.bind(issuer), |query, alias| query.bind(alias));
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(entry_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::owners::tests::owner;
    use crate::store::{seeded, temp_store, Agent, EntryFields, EntryOwner, StoreError};

    const NOW: i64 = 100;
    const AGENTS: [&str; 3] = [
        "spiffe://td/agent/join_token/a0",
        "spiffe://td/agent/join_token/a1",
        "spiffe://td/agent/k8s_psat/c/a2",
    ];

    /// What every live entry decides for `agent`: the answer the subtree
    /// read must give.
    async fn from_every_entry(store: &Store, agent: &str) -> Vec<String> {
        let graph = EntryGraph::new(store.live_entries().await.unwrap());
        let selectors = store.agent_selectors(agent).await.unwrap();
        graph
            .authorized(agent, issuer_of(agent).as_deref(), &selectors, NOW)
            .entries
            .into_iter()
            .map(|e| e.id.clone())
            .collect()
    }

    /// Random entry trees (chains, cycles, node aliases, expired entries,
    /// entries of a revoked owner) grown and pruned in rounds: after each,
    /// every agent's entries read as its subtree are those read from the
    /// whole table.
    #[tokio::test]
    async fn the_subtree_authorizes_what_the_whole_table_does() {
        let (_dir, store) = temp_store().await;
        let mut next = seeded(0x005e_ed0f_7e55);
        let selector = |i: usize| Selector::parse(&format!("k8s:s{i}")).unwrap();
        for (i, agent) in AGENTS.iter().enumerate() {
            let agent = Agent {
                spiffe_id: (*agent).into(),
                attestation_type: "join_token".into(),
                serial: "01".into(),
                new_serial: String::new(),
                expires_at: 1_000,
                banned: false,
                attested_at: 1,
                // a0 has none, a1 has s0, a2 has s0 and s1.
                selectors: (0..i).map(selector).collect(),
            };
            store.upsert_agent(&agent, 1).await.unwrap();
        }
        let issuer = issuer_of(AGENTS[0]).unwrap();
        let (good, revoked) = (owner("mailto:good@td", 1), owner("mailto:gone@td", 1));
        store.register_owner(&good).await.unwrap();
        store.register_owner(&revoked).await.unwrap();
        let names: Vec<String> = (0..25).map(|i| format!("spiffe://td/w{i}")).collect();
        let mut created: Vec<String> = Vec::new();
        let mut found = 0;
        for round in 0..12 {
            for _ in 0..20 {
                let parent = match next(10) {
                    0..=2 => AGENTS[next(AGENTS.len())].to_owned(),
                    3..=4 => issuer.clone(),
                    _ => names[next(names.len())].clone(),
                };
                let mut fields = EntryFields {
                    spiffe_id: names[next(names.len())].clone(),
                    parent_id: parent,
                    selectors: (0..3).filter(|_| next(2) == 0).map(selector).collect(),
                    expires_at: [0, 0, NOW - 1, NOW + 1][next(4)],
                    ..EntryFields::default()
                };
                let owner = [None, Some(&good), Some(&revoked)][next(3)];
                fields.owner = owner.map(|o| EntryOwner {
                    owner_id: o.id.clone(),
                    key_thumbprint: o.thumbprint.clone(),
                    consent: "consent".into(),
                    delegated_from: String::new(),
                    actors: Vec::new(),
                });
                match store.create_entry(&fields, 2).await {
                    Ok(entry) => created.push(entry.id),
                    // A duplicate, or bound to the owner once revoked.
                    Err(StoreError::EntryExists(_) | StoreError::OwnerRevoked { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            for _ in 0..3 {
                let id = created.swap_remove(next(created.len()));
                store.delete_entry(&id, 3).await.unwrap();
            }
            if round == 6 {
                store.revoke_owner(&revoked.id, 4).await.unwrap();
            }
            for agent in AGENTS {
                let subtree: Vec<String> = store
                    .authorized_entries(agent, NOW)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.id)
                    .collect();
                assert_eq!(
                    subtree,
                    from_every_entry(&store, agent).await,
                    "round {round}, {agent}"
                );
                found += subtree.len();
            }
        }
        assert!(found > 100, "the trees were too sparse to test: {found}");
    }
}
