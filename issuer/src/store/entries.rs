//! Registration entries: create, update with revision checks, delete, list,
//! and the entries an agent is authorized for (SPIRE's node aliasing). The
//! uniqueness of (SPIFFE ID, parent ID, selectors) is the database's job, so
//! concurrent writers cannot both win.

use sqlx::Row;

use super::{DuplicateEntry, Entry, EntryFields, Selector, Store, StoreError};

const ENTRY_COLUMNS: &str = "id, spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl, \
    dns_names, hint, federates_with, admin, downstream, expires_at, revision, sequence, created_at";

impl Store {
    pub async fn create_entry(&self, fields: &EntryFields, now: i64) -> Result<Entry, StoreError> {
        let id = crate::ids::uuid_v4();
        let columns = EntryColumns::from_fields(fields);
        // The next sequence number is taken in the insert itself; the unique
        // index refuses a concurrent duplicate rather than misordering.
        let query = sqlx::query(
            "INSERT INTO entries (id, spiffe_id, parent_id, selectors, selectors_key, x509_svid_ttl, \
             jwt_svid_ttl, dns_names, hint, federates_with, admin, downstream, expires_at, revision, \
             sequence, created_at, updated_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1, \
             COALESCE(MAX(sequence), 0) + 1, $14, $14 FROM entries",
        );
        let result = bind_entry_columns(query.bind(&id), fields, &columns)
            .bind(now)
            .execute(&self.pool)
            .await;
        map_unique(result, fields)?;
        self.changed();
        self.get_entry(&id).await
    }

    /// Replaces an entry's fields. A non-zero `expected_revision` must match.
    pub async fn update_entry(
        &self,
        id: &str,
        fields: &EntryFields,
        expected_revision: i64,
        now: i64,
    ) -> Result<Entry, StoreError> {
        let mut tx = self.pool.begin().await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT revision FROM entries WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
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
             admin = $11, downstream = $12, expires_at = $13, revision = revision + 1, updated_at = $14 \
             WHERE id = $1",
        );
        let result = bind_entry_columns(query.bind(id), fields, &columns)
            .bind(now)
            .execute(&mut *tx)
            .await;
        map_unique(result, fields)?;
        tx.commit().await?;
        self.changed();
        self.get_entry(id).await
    }

    pub async fn delete_entry(&self, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM entries WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::EntryNotFound(id.to_owned()));
        }
        self.changed();
        Ok(())
    }

    pub async fn get_entry(&self, id: &str) -> Result<Entry, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM entries WHERE id = $1"
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
            "SELECT {ENTRY_COLUMNS} FROM entries \
             WHERE ($1 IS NULL OR spiffe_id = $1) AND ($2 IS NULL OR parent_id = $2) \
             ORDER BY sequence"
        ))
        .bind(spiffe_id)
        .bind(parent_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Every entry an agent may mint for: those parented by the agent, and,
    /// transitively, those parented by an entry already in the set (node aliases).
    pub async fn authorized_entries(
        &self,
        agent_id: &str,
        now: i64,
    ) -> Result<Vec<Entry>, StoreError> {
        let all = self.list_entries(None, None).await?;
        let mut parents = std::collections::BTreeSet::from([agent_id.to_owned()]);
        let mut included = std::collections::BTreeSet::new();
        loop {
            let mut grew = false;
            for entry in &all {
                if entry.fields.expires_at != 0 && entry.fields.expires_at <= now {
                    continue;
                }
                if parents.contains(&entry.fields.parent_id) && included.insert(entry.id.clone()) {
                    parents.insert(entry.fields.spiffe_id.clone());
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        Ok(all
            .into_iter()
            .filter(|e| included.contains(&e.id))
            .collect())
    }
}

type EntryQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds an entry's fields as `$2`..`$13`, the order both the insert and the
/// update use.
fn bind_entry_columns<'q>(
    query: EntryQuery<'q>,
    fields: &'q EntryFields,
    columns: &'q EntryColumns,
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
}

struct EntryColumns {
    selectors: String,
    selectors_key: String,
    dns_names: String,
    federates_with: String,
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
        EntryColumns {
            selectors: serde_json::to_string(&selectors).expect("selectors serialize"),
            selectors_key: key,
            dns_names: serde_json::to_string(&fields.dns_names).expect("names serialize"),
            federates_with: serde_json::to_string(&fields.federates_with).expect("ids serialize"),
        }
    }
}

fn map_unique(
    result: Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error>,
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
    row: &sqlx::sqlite::SqliteRow,
    column: &'static str,
) -> Result<T, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|source| StoreError::Corrupt { column, source })
}

fn entry_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Entry, StoreError> {
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
            admin: row.try_get("admin")?,
            downstream: row.try_get("downstream")?,
            expires_at: row.try_get("expires_at")?,
        },
        revision: row.try_get("revision")?,
        sequence: row.try_get("sequence")?,
        created_at: row.try_get("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::temp_store as store;
    use super::*;

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
        store.delete_entry(&created.id).await.unwrap();
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
}
