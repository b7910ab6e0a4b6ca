//! Registration entries: create, update with revision checks, delete, list,
//! and the entries an agent is authorized for (SPIRE's node aliasing). The
//! uniqueness of (SPIFFE ID, parent ID, selectors) is the database's job, so
//! concurrent writers cannot both win. An entry may be bound to an owner: it is
//! written only while the owner is in good standing, and stops being
//! authorized once the owner is revoked.

use sqlx::Row;

use super::notify::Change;
use super::{DuplicateEntry, Entry, EntryFields, EntryOwner, Selector, Store, StoreError};

/// The columns an [`Entry`] is read from.
const ENTRY_COLUMNS: [&str; 21] = [
    "id",
    "spiffe_id",
    "parent_id",
    "selectors",
    "x509_svid_ttl",
    "jwt_svid_ttl",
    "dns_names",
    "hint",
    "federates_with",
    "admin",
    "downstream",
    "expires_at",
    "revision",
    "sequence",
    "created_at",
    "owner_id",
    "owner_thumbprint",
    "consent",
    "delegated_from",
    "actors",
    "managed_by",
];

/// The BOOLEAN columns among them, read as numbers (see [`super::bool_column`]).
const ENTRY_BOOL_COLUMNS: [&str; 2] = ["admin", "downstream"];

/// The select list of [`ENTRY_COLUMNS`] from the table aliased `table`.
pub(super) fn entry_columns(table: &str) -> String {
    ENTRY_COLUMNS
        .iter()
        .map(|column| {
            if ENTRY_BOOL_COLUMNS.contains(column) {
                format!("CAST({table}.{column} AS INTEGER) AS {column}")
            } else {
                format!("{table}.{column} AS {column}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Creates an entry. An entry bound to an owner is written only if the
    /// owner exists and is not revoked, and, for a delegated entry, only if
    /// its parent entry still exists.
    pub async fn create_entry(&self, fields: &EntryFields, now: i64) -> Result<Entry, StoreError> {
        self.insert_entry(fields, None, now).await
    }

    /// Creates an entry a workload registered under its own identity
    /// (delegation): as [`Store::create_entry`], and only while the parent
    /// has fewer than `max_children` children. They are counted inside the
    /// write lock, so two registrations at once cannot both take the last place.
    pub async fn create_child_entry(
        &self,
        fields: &EntryFields,
        max_children: i64,
        now: i64,
    ) -> Result<Entry, StoreError> {
        self.insert_entry(fields, Some(max_children), now).await
    }

    /// Inserts an entry in one transaction; with `max_children`, only while
    /// its parent has fewer children.
    async fn insert_entry(
        &self,
        fields: &EntryFields,
        max_children: Option<i64>,
        now: i64,
    ) -> Result<Entry, StoreError> {
        let id = crate::ids::uuid_v4();
        let mut tx = self.write_tx().await?;
        let result = async {
            if let Some(max) = max_children {
                check_room_for_child(&mut tx, fields, max).await?;
            }
            write_create(&mut tx, &id, fields, now).await
        }
        .await;
        self.commit_change(tx, result, |_| Change::Entries {
            ids: vec![id.clone()],
            revoking: false,
        })
        .await?;
        self.get_entry(&id).await
    }

    /// Replaces an entry's fields, its owner binding included. A non-zero
    /// `expected_revision` must match. An owner is checked as on creation.
    pub async fn update_entry(
        &self,
        id: &str,
        fields: &EntryFields,
        expected_revision: i64,
        now: i64,
    ) -> Result<Entry, StoreError> {
        let mut tx = self.write_tx().await?;
        let result = write_update(&mut tx, id, fields, expected_revision, now).await;
        self.commit_change(tx, result, |_| Change::Entries {
            ids: vec![id.to_owned()],
            revoking: false,
        })
        .await?;
        self.get_entry(id).await
    }

    /// Deletes an entry and every entry delegated below it, transitively, and
    /// revokes their bound SVIDs still valid at `now` so the serials reach the
    /// CRLs. Returns the ids deleted, `id` first.
    pub async fn delete_entry(&self, id: &str, now: i64) -> Result<Vec<String>, StoreError> {
        let mut tx = self.write_tx().await?;
        let result = delete_tree(&mut tx, id, now).await;
        self.commit_change(tx, result, |deleted| Change::Entries {
            ids: deleted.clone(),
            revoking: true,
        })
        .await
    }

    /// How many entries were registered by delegation under `parent_entry_id`.
    pub async fn count_children(&self, parent_entry_id: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM entries WHERE delegated_from = $1")
                .bind(parent_entry_id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn get_entry(&self, id: &str) -> Result<Entry, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM entries WHERE id = $1",
            entry_columns("entries")
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::EntryNotFound(id.to_owned()))?;
        entry_from_row(&row)
    }

    /// Lists entries, optionally filtered by SPIFFE ID and parent ID, oldest first.
    pub async fn list_entries(
        &self,
        spiffe_id: Option<&str>,
        parent_id: Option<&str>,
    ) -> Result<Vec<Entry>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM entries \
             WHERE ($1 IS NULL OR spiffe_id = $1) AND ($2 IS NULL OR parent_id = $2) \
             ORDER BY sequence",
            entry_columns("entries")
        ))
        .bind(spiffe_id)
        .bind(parent_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// The entries whose `managed_by` starts with `prefix`, oldest first.
    pub async fn list_managed_entries(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM entries \
             WHERE managed_by <> '' AND substr(managed_by, 1, length($1)) = $1 ORDER BY sequence",
            entry_columns("entries")
        ))
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Every entry whose owner, if it has one, is in good standing, in
    /// registration order: what agents may be authorized for. Entries of
    /// revoked owners, and so everything delegated below them (which shares
    /// their owner), are left out, as are entries whose owner row is missing.
    pub async fn live_entries(&self) -> Result<Vec<Entry>, StoreError> {
        let columns = entry_columns("e");
        let rows = sqlx::query(&format!(
            "SELECT {columns} FROM entries e LEFT JOIN owners o ON o.id = e.owner_id \
             WHERE e.owner_id = '' OR o.revoked_at = 0 ORDER BY e.sequence"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// The live entries among `ids` (see [`Store::live_entries`]): an id
    /// not returned was deleted, or its owner revoked.
    pub async fn live_entries_with_ids(&self, ids: &[String]) -> Result<Vec<Entry>, StoreError> {
        let columns = entry_columns("e");
        let select = |placeholders: &str| {
            format!(
                "SELECT {columns} FROM entries e LEFT JOIN owners o ON o.id = e.owner_id \
                 WHERE e.id IN ({placeholders}) AND (e.owner_id = '' OR o.revoked_at = 0)"
            )
        };
        self.fetch_by_ids(select, ids, entry_from_row).await
    }
}

/// The issuer's SPIFFE ID in an agent's trust domain: the parent of node
/// aliases by selectors. None for an agent ID that does not parse.
pub fn issuer_of(agent_id: &str) -> Option<String> {
    workload_api::id::SpiffeId::new(agent_id)
        .ok()
        .map(|id| crate::ids::issuer_id(id.trust_domain()).to_string())
}

/// The writes of [`Store::create_entry`], inside its transaction.
async fn write_create(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    fields: &EntryFields,
    now: i64,
) -> Result<(), StoreError> {
    if let Some(owner) = &fields.owner {
        lock_owner(&mut *conn, owner).await?;
    }
    let columns = EntryColumns::from_fields(fields);
    // The next sequence number is taken in the insert itself; the unique
    // index refuses a concurrent duplicate rather than misordering.
    let query = sqlx::query(
        "INSERT INTO entries (id, spiffe_id, parent_id, selectors, selectors_key, x509_svid_ttl, \
         jwt_svid_ttl, dns_names, hint, federates_with, admin, downstream, expires_at, revision, \
         sequence, created_at, updated_at, owner_id, owner_thumbprint, consent, delegated_from, \
         actors, managed_by) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1, \
         COALESCE(MAX(sequence), 0) + 1, $14, $14, $15, $16, $17, $18, $19, $20 FROM entries",
    );
    let result = bind_entry_columns(query.bind(id), fields, &columns, now)
        .execute(&mut *conn)
        .await;
    map_unique(result, fields)
}

/// Refuses a delegated entry whose parent already has `max` children,
/// counted after taking the write lock (through the owner row).
async fn check_room_for_child(
    conn: &mut sqlx::AnyConnection,
    fields: &EntryFields,
    max: i64,
) -> Result<(), StoreError> {
    let owner = fields
        .owner
        .as_ref()
        .filter(|o| !o.delegated_from.is_empty())
        .ok_or_else(|| StoreError::ParentEntryGone("(none given)".into()))?;
    lock_owner(&mut *conn, owner).await?;
    let children: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM entries WHERE delegated_from = $1")
            .bind(&owner.delegated_from)
            .fetch_one(&mut *conn)
            .await?;
    if children >= max {
        return Err(StoreError::TooManyChildren {
            parent: owner.delegated_from.clone(),
            max,
        });
    }
    Ok(())
}

/// The writes of [`Store::update_entry`], inside its transaction.
async fn write_update(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    fields: &EntryFields,
    expected_revision: i64,
    now: i64,
) -> Result<(), StoreError> {
    if let Some(owner) = &fields.owner {
        lock_owner(&mut *conn, owner).await?;
    }
    let current: Option<i64> = sqlx::query_scalar("SELECT revision FROM entries WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let current = current.ok_or_else(|| StoreError::EntryNotFound(id.to_owned()))?;
    if expected_revision != 0 && expected_revision != current {
        return Err(StoreError::RevisionMismatch {
            id: id.to_owned(),
            expected: expected_revision,
            actual: current,
        });
    }
    let columns = EntryColumns::from_fields(fields);
    let query = sqlx::query(
        "UPDATE entries SET spiffe_id = $2, parent_id = $3, selectors = $4, selectors_key = $5, \
         x509_svid_ttl = $6, jwt_svid_ttl = $7, dns_names = $8, hint = $9, federates_with = $10, \
         admin = $11, downstream = $12, expires_at = $13, revision = revision + 1, updated_at = $14, \
         owner_id = $15, owner_thumbprint = $16, consent = $17, delegated_from = $18, actors = $19, \
         managed_by = $20 WHERE id = $1",
    );
    let result = bind_entry_columns(query.bind(id), fields, &columns, now)
        .execute(&mut *conn)
        .await;
    map_unique(result, fields)
}

/// The writes of [`Store::delete_entry`], inside its transaction.
async fn delete_tree(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut deleted = Vec::new();
    let mut pending = std::collections::VecDeque::from([id.to_owned()]);
    // Each id is deleted before its children are looked up, so a child
    // written concurrently either commits first (PostgreSQL: it holds the
    // parent's row lock) and is found, or finds its parent gone. Only ids
    // of rows still present are queued and each row is deleted once, so
    // the walk ends within the table's size even if delegation loops.
    while let Some(next) = pending.pop_front() {
        let done = sqlx::query("DELETE FROM entries WHERE id = $1")
            .bind(&next)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() == 0 {
            if deleted.is_empty() {
                return Err(StoreError::EntryNotFound(id.to_owned()));
            }
            continue;
        }
        sqlx::query(
            "UPDATE bound_serials SET revoked_at = $2 WHERE entry_id = $1 AND revoked_at = 0",
        )
        .bind(&next)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        let children: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM entries WHERE delegated_from = $1 ORDER BY sequence",
        )
        .bind(&next)
        .fetch_all(&mut *conn)
        .await?;
        pending.extend(children);
        deleted.push(next);
    }
    Ok(deleted)
}

type EntryQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds an entry's fields as `$2`..`$13`, `now` as `$14`, the owner
/// columns as `$15`..`$19` and `managed_by` as `$20`, the order both the
/// insert and the update use.
fn bind_entry_columns<'q>(
    query: EntryQuery<'q>,
    fields: &'q EntryFields,
    columns: &'q EntryColumns,
    now: i64,
) -> EntryQuery<'q> {
    query
        .bind(&fields.spiffe_id)
        .bind(&fields.parent_id)
        .bind(&columns.selectors)
        .bind(&columns.selectors_key)
        .bind(fields.x509_svid_ttl)
        .bind(fields.jwt_svid_ttl)
        .bind(&columns.dns_names)
        .bind(&fields.hint)
        .bind(&columns.federates_with)
        .bind(fields.admin)
        .bind(fields.downstream)
        .bind(fields.expires_at)
        .bind(now)
        .bind(&columns.owner.owner_id)
        .bind(&columns.owner.key_thumbprint)
        .bind(&columns.owner.consent)
        .bind(&columns.owner.delegated_from)
        .bind(&columns.actors)
        .bind(&fields.managed_by)
}

/// Takes the lock that keeps `owner` in good standing until the transaction
/// ends, and, for a delegated entry, the lock that keeps its parent entry.
///
/// The no-op UPDATEs are the portable way to lock: on SQLite the first write
/// takes the database's write lock before anything is read, and on PostgreSQL
/// they hold the row until commit, so a concurrent revocation or parent
/// deletion either waits for this write or has already committed and is seen.
async fn lock_owner(conn: &mut sqlx::AnyConnection, owner: &EntryOwner) -> Result<(), StoreError> {
    let locked =
        sqlx::query("UPDATE owners SET revoked_at = revoked_at WHERE id = $1 AND revoked_at = 0")
            .bind(&owner.owner_id)
            .execute(&mut *conn)
            .await?;
    if locked.rows_affected() == 0 {
        let revoked_at: Option<i64> =
            sqlx::query_scalar("SELECT revoked_at FROM owners WHERE id = $1")
                .bind(&owner.owner_id)
                .fetch_optional(&mut *conn)
                .await?;
        return Err(match revoked_at {
            Some(revoked_at) => StoreError::OwnerRevoked {
                id: owner.owner_id.clone(),
                revoked_at,
            },
            None => StoreError::OwnerNotFound(owner.owner_id.clone()),
        });
    }
    if !owner.delegated_from.is_empty() {
        let parent = sqlx::query("UPDATE entries SET revision = revision WHERE id = $1")
            .bind(&owner.delegated_from)
            .execute(&mut *conn)
            .await?;
        if parent.rows_affected() == 0 {
            return Err(StoreError::ParentEntryGone(owner.delegated_from.clone()));
        }
    }
    Ok(())
}

struct EntryColumns {
    selectors: String,
    selectors_key: String,
    dns_names: String,
    federates_with: String,
    /// The owner columns; all empty for an unbound entry.
    owner: EntryOwner,
    actors: String,
}

impl EntryColumns {
    fn from_fields(fields: &EntryFields) -> Self {
        let mut selectors = fields.selectors.clone();
        selectors.sort();
        selectors.dedup();
        let key = selectors
            .iter()
            .map(Selector::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        let owner = fields.owner.clone().unwrap_or_default();
        EntryColumns {
            selectors: serde_json::to_string(&selectors).expect("selectors serialize"),
            selectors_key: key,
            dns_names: serde_json::to_string(&fields.dns_names).expect("names serialize"),
            federates_with: serde_json::to_string(&fields.federates_with).expect("ids serialize"),
            actors: serde_json::to_string(&owner.actors).expect("ids serialize"),
            owner,
        }
    }
}

fn map_unique(
    result: Result<sqlx::any::AnyQueryResult, sqlx::Error>,
    fields: &EntryFields,
) -> Result<(), StoreError> {
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(StoreError::EntryExists(DuplicateEntry {
                spiffe_id: fields.spiffe_id.clone(),
                parent_id: fields.parent_id.clone(),
            }))
        }
        Err(e) => Err(e.into()),
    }
}

fn json_column<T: serde::de::DeserializeOwned>(
    row: &sqlx::any::AnyRow,
    column: &'static str,
) -> Result<T, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|source| StoreError::Corrupt { column, source })
}

pub(super) fn entry_from_row(row: &sqlx::any::AnyRow) -> Result<Entry, StoreError> {
    let owner_id: String = row.try_get("owner_id")?;
    // Parsed even for an unbound entry, so corruption shows wherever it is.
    let actors: Vec<String> = json_column(row, "actors")?;
    let owner = if owner_id.is_empty() {
        None
    } else {
        Some(EntryOwner {
            owner_id,
            key_thumbprint: row.try_get("owner_thumbprint")?,
            consent: row.try_get("consent")?,
            delegated_from: row.try_get("delegated_from")?,
            actors,
        })
    };
    Ok(Entry {
        id: row.try_get("id")?,
        fields: EntryFields {
            spiffe_id: row.try_get("spiffe_id")?,
            parent_id: row.try_get("parent_id")?,
            selectors: json_column(row, "selectors")?,
            x509_svid_ttl: row.try_get("x509_svid_ttl")?,
            jwt_svid_ttl: row.try_get("jwt_svid_ttl")?,
            dns_names: json_column(row, "dns_names")?,
            hint: row.try_get("hint")?,
            federates_with: json_column(row, "federates_with")?,
            admin: super::bool_column(row, "admin")?,
            downstream: super::bool_column(row, "downstream")?,
            expires_at: row.try_get("expires_at")?,
            owner,
            managed_by: row.try_get("managed_by")?,
        },
        revision: row.try_get("revision")?,
        sequence: row.try_get("sequence")?,
        created_at: row.try_get("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::owners::tests::owner;
    use super::super::{temp_store as store, Agent, Table};
    use super::*;

    const AGENT: &str = "spiffe://td/agent/x";

    /// An entry bound to `owner_id`, delegated from `parent` when it is non-empty.
    fn owned(id: &str, owner_id: &str, parent: &str) -> EntryFields {
        let mut entry = fields(id, AGENT);
        entry.owner = Some(EntryOwner {
            owner_id: owner_id.into(),
            key_thumbprint: format!("tp-{owner_id}"),
            consent: format!("consent-for-{id}"),
            delegated_from: parent.into(),
            actors: if parent.is_empty() {
                Vec::new()
            } else {
                vec!["spiffe://td/outer".into(), format!("{id}/actor")]
            },
        });
        entry
    }

    fn fields(id: &str, parent: &str) -> EntryFields {
        EntryFields {
            spiffe_id: id.into(),
            parent_id: parent.into(),
            selectors: vec![Selector::parse("unix:uid:1000").unwrap()],
            ..EntryFields::default()
        }
    }

    #[tokio::test]
    async fn entry_lifecycle_and_revisions() {
        let (_dir, store) = store().await;
        let mut changes = store.subscribe();
        let created = store
            .create_entry(&fields("spiffe://td/a", "spiffe://td/agent/x"), 10)
            .await
            .unwrap();
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert_eq!(created.revision, 1);
        assert_eq!(created.fields.selectors[0].value, "uid:1000");
        let dup = store
            .create_entry(&fields("spiffe://td/a", "spiffe://td/agent/x"), 11)
            .await
            .unwrap_err();
        assert!(matches!(dup, StoreError::EntryExists(_)), "{dup}");
        assert!(!changes.has_changed().unwrap());

        let mut changed = created.fields.clone();
        changed.hint = "internal".into();
        let updated = store
            .update_entry(&created.id, &changed, 1, 12)
            .await
            .unwrap();
        assert_eq!(updated.revision, 2);
        let stale = store
            .update_entry(&created.id, &changed, 1, 13)
            .await
            .unwrap_err();
        assert!(matches!(
            stale,
            StoreError::RevisionMismatch { actual: 2, .. }
        ));
        assert_eq!(
            store.delete_entry(&created.id, 14).await.unwrap(),
            vec![created.id.clone()]
        );
        assert!(matches!(
            store.delete_entry(&created.id, 15).await,
            Err(StoreError::EntryNotFound(id)) if id == created.id
        ));
        assert!(matches!(
            store.get_entry(&created.id).await,
            Err(StoreError::EntryNotFound(_))
        ));
    }

    #[tokio::test]
    async fn authorization_follows_node_aliases() {
        let (_dir, store) = store().await;
        let agent = "spiffe://td/agent/join_token/t1";
        let mut alias = fields("spiffe://td/node/n1", agent);
        alias.selectors = vec![Selector::parse(&format!("spiffe_id:{agent}")).unwrap()];
        store.create_entry(&alias, 1).await.unwrap();
        store
            .create_entry(&fields("spiffe://td/w1", "spiffe://td/node/n1"), 2)
            .await
            .unwrap();
        store
            .create_entry(&fields("spiffe://td/w2", agent), 3)
            .await
            .unwrap();
        store
            .create_entry(
                &fields("spiffe://td/other", "spiffe://td/agent/join_token/t2"),
                4,
            )
            .await
            .unwrap();
        let mut expired = fields("spiffe://td/old", agent);
        expired.expires_at = 5;
        store.create_entry(&expired, 4).await.unwrap();
        let ids: Vec<String> = store
            .authorized_entries(agent, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.fields.spiffe_id)
            .collect();
        assert_eq!(
            ids,
            ["spiffe://td/node/n1", "spiffe://td/w1", "spiffe://td/w2"]
        );
    }

    #[tokio::test]
    async fn agents_with_all_an_issuer_parented_aliass_selectors_get_its_children() {
        let (_dir, store) = store().await;
        let issuer = "spiffe://td/sigil/issuer";
        let node = |id: &str, selectors: &[&str]| Agent {
            spiffe_id: id.into(),
            attestation_type: "k8s_psat".into(),
            serial: "01".into(),
            new_serial: String::new(),
            expires_at: 100,
            banned: false,
            attested_at: 1,
            selectors: selectors
                .iter()
                .map(|s| Selector::parse(s).unwrap())
                .collect(),
        };
        let demo_sigil = ["k8s_psat:cluster:demo", "k8s_psat:agent_ns:sigil"];
        let in_demo = "spiffe://td/agent/k8s_psat/demo/n1";
        let elsewhere = "spiffe://td/agent/k8s_psat/prod/n2";
        store
            .upsert_agent(&node(in_demo, &demo_sigil), 1)
            .await
            .unwrap();
        store
            .upsert_agent(&node(elsewhere, &["k8s_psat:cluster:prod"]), 1)
            .await
            .unwrap();
        let mut alias = fields("spiffe://td/k8s/demo", issuer);
        alias.selectors = vec![Selector::parse("k8s_psat:cluster:demo").unwrap()];
        store.create_entry(&alias, 1).await.unwrap();
        let mut expired = fields("spiffe://td/k8s/old", issuer);
        expired.selectors = alias.selectors.clone();
        expired.expires_at = 5;
        store.create_entry(&expired, 1).await.unwrap();
        store
            .create_entry(&fields("spiffe://td/w1", "spiffe://td/k8s/demo"), 2)
            .await
            .unwrap();
        store
            .create_entry(&fields("spiffe://td/w-old", "spiffe://td/k8s/old"), 2)
            .await
            .unwrap();
        let ids = |agent: &'static str| {
            let store = store.clone();
            async move {
                store
                    .authorized_entries(agent, 10)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.fields.spiffe_id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(ids(in_demo).await, ["spiffe://td/w1"]);
        assert!(ids(elsewhere).await.is_empty());
        // A banned node attesting again stays banned.
        store.ban_agent(in_demo, 3).await.unwrap();
        assert!(matches!(
            store.upsert_agent(&node(in_demo, &demo_sigil), 4).await,
            Err(StoreError::AgentBanned(_))
        ));
    }

    #[tokio::test]
    async fn clashes_and_corruption_carry_their_values() {
        let (_dir, store) = store().await;
        let entry = fields("spiffe://td/a", "spiffe://td/agent/x");
        let created = store.create_entry(&entry, 1).await.unwrap();
        let StoreError::EntryExists(clash) = store.create_entry(&entry, 2).await.unwrap_err()
        else {
            panic!("a duplicate entry must clash");
        };
        assert_eq!(clash.spiffe_id, "spiffe://td/a");
        assert_eq!(
            StoreError::EntryExists(clash).to_string(),
            "an entry with the same SPIFFE ID, parent ID and selectors already exists: \
             spiffe://td/a (parent spiffe://td/agent/x)"
        );
        sqlx::query("UPDATE entries SET dns_names = 'not json'")
            .execute(&store.pool)
            .await
            .unwrap();
        let error = store.get_entry(&created.id).await.unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Corrupt {
                    column: "dns_names",
                    ..
                }
            ),
            "{error}"
        );
        assert!(error
            .to_string()
            .starts_with("stored data is corrupt: dns_names: "));
    }

    #[tokio::test]
    async fn every_owner_column_round_trips() {
        let (_dir, store) = store().await;
        let a = owner("mailto:a@example.com", 1);
        store.register_owner(&a).await.unwrap();
        let parent = store
            .create_entry(&owned("spiffe://td/p", &a.id, ""), 2)
            .await
            .unwrap();
        let child_fields = owned("spiffe://td/c", &a.id, &parent.id);
        let child = store.create_entry(&child_fields, 3).await.unwrap();
        assert_eq!(child.fields, child_fields);
        assert_eq!(
            child.fields.owner,
            Some(EntryOwner {
                owner_id: "mailto:a@example.com".into(),
                key_thumbprint: "tp-mailto:a@example.com".into(),
                consent: "consent-for-spiffe://td/c".into(),
                delegated_from: parent.id.clone(),
                actors: vec!["spiffe://td/outer".into(), "spiffe://td/c/actor".into()],
            })
        );
        assert_eq!(store.get_entry(&child.id).await.unwrap(), child);
        let raw: (String, String, String, String, String) = sqlx::query_as(
            "SELECT owner_id, owner_thumbprint, consent, delegated_from, actors \
             FROM entries WHERE id = $1",
        )
        .bind(&child.id)
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(
            raw,
            (
                "mailto:a@example.com".into(),
                "tp-mailto:a@example.com".into(),
                "consent-for-spiffe://td/c".into(),
                parent.id.clone(),
                r#"["spiffe://td/outer","spiffe://td/c/actor"]"#.into()
            )
        );
        assert_eq!(store.count_children(&parent.id).await.unwrap(), 1);
        assert_eq!(store.count_children(&child.id).await.unwrap(), 0);

        // Updating to no owner empties the columns.
        let mut unbound = child_fields.clone();
        unbound.owner = None;
        let updated = store.update_entry(&child.id, &unbound, 1, 4).await.unwrap();
        assert_eq!(updated.fields.owner, None);
        let raw: (String, String, String, String, String) = sqlx::query_as(
            "SELECT owner_id, owner_thumbprint, consent, delegated_from, actors \
             FROM entries WHERE id = $1",
        )
        .bind(&child.id)
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(
            raw,
            (
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                "[]".into()
            )
        );
        assert_eq!(store.count_children(&parent.id).await.unwrap(), 0);
        // And binding it again writes them back.
        let rebound = store
            .update_entry(&child.id, &child_fields, 2, 5)
            .await
            .unwrap();
        assert_eq!(rebound.fields, child_fields);
        assert_eq!(store.list_entries(None, None).await.unwrap()[1], rebound);
    }

    #[tokio::test]
    async fn an_unknown_owner_writes_nothing() {
        let (_dir, store) = store().await;
        let changes = store.subscribe();
        let error = store
            .create_entry(&owned("spiffe://td/a", "mailto:nobody@example.com", ""), 1)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, StoreError::OwnerNotFound(id) if id == "mailto:nobody@example.com"),
            "{error}"
        );
        assert_eq!(store.count(Table::Entries).await.unwrap(), 0);
        assert!(!changes.has_changed().unwrap());

        let unbound = store
            .create_entry(&fields("spiffe://td/a", AGENT), 2)
            .await
            .unwrap();
        let error = store
            .update_entry(
                &unbound.id,
                &owned("spiffe://td/a", "mailto:nobody@example.com", ""),
                0,
                3,
            )
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::OwnerNotFound(_)), "{error}");
        assert_eq!(store.get_entry(&unbound.id).await.unwrap(), unbound);
    }

    #[tokio::test]
    async fn a_revoked_owner_writes_nothing() {
        let (_dir, store) = store().await;
        let a = owner("mailto:a@example.com", 1);
        store.register_owner(&a).await.unwrap();
        let bound = store
            .create_entry(&owned("spiffe://td/a", &a.id, ""), 2)
            .await
            .unwrap();
        store.revoke_owner(&a.id, 50).await.unwrap();
        let error = store
            .create_entry(&owned("spiffe://td/b", &a.id, ""), 60)
            .await
            .unwrap_err();
        assert!(
            matches!(
                &error,
                StoreError::OwnerRevoked { id, revoked_at: 50 } if id == "mailto:a@example.com"
            ),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "owner mailto:a@example.com was revoked at 1970-01-01T00:00:50Z"
        );
        assert_eq!(store.count(Table::Entries).await.unwrap(), 1);
        let mut changed = bound.fields.clone();
        changed.hint = "new".into();
        let error = store
            .update_entry(&bound.id, &changed, 1, 61)
            .await
            .unwrap_err();
        assert!(
            matches!(error, StoreError::OwnerRevoked { revoked_at: 50, .. }),
            "{error}"
        );
        assert_eq!(store.get_entry(&bound.id).await.unwrap(), bound);
    }

    #[tokio::test]
    async fn a_delegated_entry_needs_its_parent() {
        let (_dir, store) = store().await;
        let a = owner("mailto:a@example.com", 1);
        store.register_owner(&a).await.unwrap();
        let error = store
            .create_entry(&owned("spiffe://td/c", &a.id, "gone-entry"), 2)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, StoreError::ParentEntryGone(id) if id == "gone-entry"),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "parent entry gone-entry no longer exists"
        );
        assert_eq!(store.count(Table::Entries).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn authorization_drops_revoked_owners_entries() {
        let (_dir, store) = store().await;
        let a = owner("mailto:a@example.com", 1);
        let b = owner("mailto:b@example.com", 1);
        store.register_owner(&a).await.unwrap();
        store.register_owner(&b).await.unwrap();
        let a_parent = store
            .create_entry(&owned("spiffe://td/a", &a.id, ""), 2)
            .await
            .unwrap();
        store
            .create_entry(&owned("spiffe://td/a/child", &a.id, &a_parent.id), 3)
            .await
            .unwrap();
        store
            .create_entry(&owned("spiffe://td/b", &b.id, ""), 4)
            .await
            .unwrap();
        store
            .create_entry(&fields("spiffe://td/unbound", AGENT), 5)
            .await
            .unwrap();
        let authorized = |store: Store| async move {
            store
                .authorized_entries(AGENT, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.fields.spiffe_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            authorized(store.clone()).await,
            [
                "spiffe://td/a",
                "spiffe://td/a/child",
                "spiffe://td/b",
                "spiffe://td/unbound"
            ]
        );
        store.revoke_owner(&a.id, 6).await.unwrap();
        assert_eq!(
            authorized(store.clone()).await,
            ["spiffe://td/b", "spiffe://td/unbound"]
        );
        // An entry whose owner row is missing is not authorized either.
        sqlx::query("DELETE FROM owners WHERE id = $1")
            .bind(&b.id)
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(authorized(store.clone()).await, ["spiffe://td/unbound"]);
    }

    #[tokio::test]
    async fn deleting_an_entry_deletes_its_delegation_tree() {
        let (_dir, store) = store().await;
        let a = owner("mailto:a@example.com", 1);
        store.register_owner(&a).await.unwrap();
        let root = store
            .create_entry(&owned("spiffe://td/r", &a.id, ""), 2)
            .await
            .unwrap();
        let child = store
            .create_entry(&owned("spiffe://td/r/c", &a.id, &root.id), 3)
            .await
            .unwrap();
        let grandchild = store
            .create_entry(&owned("spiffe://td/r/c/g", &a.id, &child.id), 4)
            .await
            .unwrap();
        let sibling = store
            .create_entry(&owned("spiffe://td/s", &a.id, ""), 5)
            .await
            .unwrap();
        // Child has signed nothing yet: it has no reservation.
        for (entry, reserved) in [(&root, 64), (&grandchild, 128), (&sibling, 64)] {
            store
                .reserve_serials(&entry.id, &a.id, reserved, 6)
                .await
                .unwrap();
        }
        let changes = store.subscribe();
        let deleted = store.delete_entry(&root.id, 100).await.unwrap();
        assert_eq!(deleted, [root.id.clone(), child.id, grandchild.id.clone()]);
        assert!(changes.has_changed().unwrap());
        let left: Vec<String> = store
            .list_entries(None, None)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(left, std::slice::from_ref(&sibling.id));
        let mut expected = vec![
            (root.id.clone(), 100),
            (grandchild.id.clone(), 100),
            (sibling.id.clone(), 0),
        ];
        expected.sort();
        assert_eq!(
            super::super::reservations_revoked_at(&store).await,
            expected
        );
        let revoked: Vec<u64> = store
            .revoked_reservations()
            .await
            .unwrap()
            .iter()
            .map(|r| r.reserved)
            .collect();
        assert_eq!(revoked.iter().sum::<u64>(), 64 + 128);
        assert!(matches!(
            store.delete_entry(&grandchild.id, 101).await,
            Err(StoreError::EntryNotFound(id)) if id == grandchild.id
        ));
    }

    #[tokio::test]
    async fn corrupt_actors_are_reported() {
        let (_dir, store) = store().await;
        let a = owner("mailto:a@example.com", 1);
        store.register_owner(&a).await.unwrap();
        let created = store
            .create_entry(&owned("spiffe://td/a", &a.id, ""), 2)
            .await
            .unwrap();
        sqlx::query("UPDATE entries SET actors = '[\"unterminated'")
            .execute(&store.pool)
            .await
            .unwrap();
        let error = store.get_entry(&created.id).await.unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Corrupt {
                    column: "actors",
                    ..
                }
            ),
            "{error}"
        );
        assert!(error
            .to_string()
            .starts_with("stored data is corrupt: actors: "));
    }
}
