//! The registration store: entries, agents and join tokens in SQL.
//!
//! SQLite (one WAL file in the data directory) is the embedded default. Every
//! statement is portable SQL with `$n` placeholders so a PostgreSQL backend can
//! run the same queries. Writers bump a change counter that entry streams watch,
//! so agents learn of changes by push rather than by polling.

mod model;

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::watch;

pub use model::{Agent, Entry, EntryFields, JoinTokenRecord, Selector};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("entry {0} not found")]
    EntryNotFound(String),
    #[error("an entry with the same SPIFFE ID, parent ID and selectors already exists: {0}")]
    EntryExists(String),
    #[error("entry {id} is at revision {actual}, not {expected}")]
    RevisionMismatch {
        id: String,
        expected: i64,
        actual: i64,
    },
    #[error("agent {0} not found")]
    AgentNotFound(String),
    #[error("join token is unknown")]
    TokenUnknown,
    #[error("join token was already used")]
    TokenUsed,
    #[error("join token expired at {expires_at}")]
    TokenExpired { expires_at: i64 },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The embedded migrations, in order.
fn migrator() -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    use std::borrow::Cow;
    let migrations = vec![Migration::new(
        1,
        Cow::Borrowed("initial"),
        MigrationType::Simple,
        Cow::Borrowed(include_str!("../../migrations/0001_initial.sql")),
        false,
    )];
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// The registration store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    changes: watch::Sender<u64>,
}

const ENTRY_COLUMNS: &str = "id, spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl, \
    dns_names, hint, federates_with, admin, downstream, expires_at, revision, sequence, created_at";

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        migrator().run(&pool).await?;
        let (changes, _) = watch::channel(0);
        Ok(Store { pool, changes })
    }

    /// A receiver that sees a new value after every committed change to
    /// entries or agents.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

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

    /// Records a join token by the hash of its secret.
    pub async fn create_join_token(
        &self,
        id: &str,
        secret_hash: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO join_tokens (id, secret_hash, expires_at, used_at, created_at) \
             VALUES ($1, $2, $3, NULL, $4)",
        )
        .bind(id)
        .bind(secret_hash)
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a join token used, exactly once. Returns its id.
    pub async fn consume_join_token(
        &self,
        secret_hash: &str,
        now: i64,
    ) -> Result<JoinTokenRecord, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row =
            sqlx::query("SELECT id, expires_at, used_at FROM join_tokens WHERE secret_hash = $1")
                .bind(secret_hash)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::TokenUnknown)?;
        let record = JoinTokenRecord {
            id: row.try_get("id")?,
            expires_at: row.try_get("expires_at")?,
            used_at: row.try_get("used_at")?,
        };
        if record.used_at.is_some() {
            return Err(StoreError::TokenUsed);
        }
        if record.expires_at <= now {
            return Err(StoreError::TokenExpired {
                expires_at: record.expires_at,
            });
        }
        // The guard on used_at makes the claim atomic even across replicas.
        let claimed =
            sqlx::query("UPDATE join_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL")
                .bind(&record.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        if claimed.rows_affected() != 1 {
            return Err(StoreError::TokenUsed);
        }
        tx.commit().await?;
        Ok(JoinTokenRecord {
            used_at: Some(now),
            ..record
        })
    }

    /// Un-claims a token whose attestation failed after the claim, so a
    /// rejected attempt leaves nothing written.
    pub async fn release_join_token(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE join_tokens SET used_at = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn upsert_agent(&self, agent: &Agent, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agents (spiffe_id, attestation_type, serial, new_serial, expires_at, banned, \
             attested_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (spiffe_id) DO UPDATE SET attestation_type = $2, serial = $3, \
             new_serial = $4, expires_at = $5, banned = $6, attested_at = $7, updated_at = $8",
        )
        .bind(&agent.spiffe_id)
        .bind(&agent.attestation_type)
        .bind(&agent.serial)
        .bind(&agent.new_serial)
        .bind(agent.expires_at)
        .bind(agent.banned)
        .bind(agent.attested_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.changed();
        Ok(())
    }

    /// Records the serial of a renewed agent SVID as the next accepted one.
    pub async fn set_agent_new_serial(
        &self,
        spiffe_id: &str,
        new_serial: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE agents SET new_serial = $2, expires_at = $3, updated_at = $4 WHERE spiffe_id = $1",
        )
        .bind(spiffe_id)
        .bind(new_serial)
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AgentNotFound(spiffe_id.to_owned()));
        }
        Ok(())
    }

    /// Promotes the renewed serial once the agent has used it.
    pub async fn promote_agent_serial(&self, spiffe_id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE agents SET serial = new_serial, new_serial = '', updated_at = $2 \
             WHERE spiffe_id = $1 AND new_serial <> ''",
        )
        .bind(spiffe_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_agent(&self, spiffe_id: &str) -> Result<Agent, StoreError> {
        let row = sqlx::query(
            "SELECT spiffe_id, attestation_type, serial, new_serial, expires_at, banned, attested_at \
             FROM agents WHERE spiffe_id = $1",
        )
        .bind(spiffe_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::AgentNotFound(spiffe_id.to_owned()))?;
        agent_from_row(&row)
    }

    pub async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query(
            "SELECT spiffe_id, attestation_type, serial, new_serial, expires_at, banned, attested_at \
             FROM agents ORDER BY attested_at, spiffe_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// Forgets an agent: it must attest again.
    pub async fn delete_agent(&self, spiffe_id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM agents WHERE spiffe_id = $1")
            .bind(spiffe_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AgentNotFound(spiffe_id.to_owned()));
        }
        self.changed();
        Ok(())
    }

    /// Bans an agent: it is refused until the ban is lifted by eviction.
    pub async fn ban_agent(&self, spiffe_id: &str, now: i64) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE agents SET banned = $2, serial = '', new_serial = '', updated_at = $3 \
             WHERE spiffe_id = $1",
        )
        .bind(spiffe_id)
        .bind(true)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AgentNotFound(spiffe_id.to_owned()));
        }
        self.changed();
        Ok(())
    }

    /// Counts rows, for tests that check nothing was written.
    pub async fn count(&self, table: Table) -> Result<i64, StoreError> {
        let sql = match table {
            Table::Entries => "SELECT COUNT(*) FROM entries",
            Table::Agents => "SELECT COUNT(*) FROM agents",
            Table::UsedJoinTokens => "SELECT COUNT(*) FROM join_tokens WHERE used_at IS NOT NULL",
        };
        Ok(sqlx::query_scalar(sql).fetch_one(&self.pool).await?)
    }
}

/// Tables whose size tests inspect.
#[derive(Debug, Clone, Copy)]
pub enum Table {
    Entries,
    Agents,
    UsedJoinTokens,
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
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::EntryExists(
            format!("{} (parent {})", fields.spiffe_id, fields.parent_id),
        )),
        Err(e) => Err(e.into()),
    }
}

fn json_column<T: serde::de::DeserializeOwned>(
    row: &sqlx::sqlite::SqliteRow,
    name: &str,
) -> Result<T, StoreError> {
    let text: String = row.try_get(name)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
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

fn agent_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Agent, StoreError> {
    Ok(Agent {
        spiffe_id: row.try_get("spiffe_id")?,
        attestation_type: row.try_get("attestation_type")?,
        serial: row.try_get("serial")?,
        new_serial: row.try_get("new_serial")?,
        expires_at: row.try_get("expires_at")?,
        banned: row.try_get("banned")?,
        attested_at: row.try_get("attested_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("sigil.db"))
            .await
            .unwrap();
        (dir, store)
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
    async fn join_tokens_are_single_use_and_expire() {
        let (_dir, store) = store().await;
        store
            .create_join_token("id1", "hash1", 100, 0)
            .await
            .unwrap();
        store
            .create_join_token("id2", "hash2", 100, 0)
            .await
            .unwrap();
        assert_eq!(
            store.consume_join_token("hash1", 50).await.unwrap().id,
            "id1"
        );
        assert!(matches!(
            store.consume_join_token("hash1", 51).await,
            Err(StoreError::TokenUsed)
        ));
        assert!(matches!(
            store.consume_join_token("hash2", 100).await,
            Err(StoreError::TokenExpired { expires_at: 100 })
        ));
        assert!(matches!(
            store.consume_join_token("nope", 1).await,
            Err(StoreError::TokenUnknown)
        ));
        assert_eq!(store.count(Table::UsedJoinTokens).await.unwrap(), 1);
    }
}
