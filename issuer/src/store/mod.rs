//! The registration store: entries, agents and join tokens in SQL.
//!
//! SQLite (one WAL file in the data directory) is the embedded default. Every
//! statement is portable SQL with `$n` placeholders so a PostgreSQL backend can
//! run the same queries. Writers bump a change counter that entry streams watch,
//! so agents learn of changes by push rather than by polling.
//!
//! This module holds the pool, the migrations, the errors and the change
//! counter; `entries`, `agents`, `tokens`, `owners`, `serials`, `log` and
//! `leases` each add the [`Store`] methods of their tables. No SPIFFE standard covers registration; the model follows SPIRE's.

mod agents;
mod entries;
mod federation;
mod leases;
mod log;
mod model;
mod owners;
mod serials;
mod tokens;

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use tokio::sync::watch;

pub use federation::BundleWrite;
pub use log::{LogHead, Sequencing};
pub use model::{
    Agent, BundleOrigin, Entry, EntryFields, EntryOwner, Federation, ForeignBundle,
    JoinTokenRecord, Owner, Selector, SerialReservation,
};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("entry {0} not found")]
    EntryNotFound(String),
    #[error("an entry with the same SPIFFE ID, parent ID and selectors already exists: {0}")]
    EntryExists(DuplicateEntry),
    #[error("entry {id} is at revision {actual}, not {expected}")]
    RevisionMismatch {
        id: String,
        expected: i64,
        actual: i64,
    },
    #[error("agent {0} not found")]
    AgentNotFound(String),
    #[error("agent {0} is banned; evict it before it can attest again")]
    AgentBanned(String),
    #[error("no federation relationship with {0}")]
    FederationNotFound(String),
    #[error("a federation relationship with {0} already exists")]
    FederationExists(String),
    #[error("no bundle is held for {0}")]
    BundleNotFound(String),
    #[error("join token is unknown")]
    TokenUnknown,
    #[error("join token was already used")]
    TokenUsed,
    #[error("join token expired at {}", crate::clock::rfc3339(*.expires_at))]
    TokenExpired { expires_at: i64 },
    #[error("owner {0} not found")]
    OwnerNotFound(String),
    #[error("owner {0} is already registered")]
    OwnerExists(String),
    #[error("the key {thumbprint} already belongs to owner {owner}")]
    OwnerKeyInUse { thumbprint: String, owner: String },
    #[error("owner {id} was revoked at {}", crate::clock::rfc3339(*.revoked_at))]
    OwnerRevoked { id: String, revoked_at: i64 },
    /// A delegated entry's parent was deleted before the child was written.
    #[error("parent entry {0} no longer exists")]
    ParentEntryGone(String),
    #[error("entry {parent} already has {max} children, the most its owner's consent allows")]
    TooManyChildren { parent: String, max: i64 },
    #[error("event seq {got} does not follow the last one held; expected {expected}")]
    EventGap { expected: u64, got: u64 },
    #[error("stored data is corrupt: {column}: {source}")]
    Corrupt {
        column: &'static str,
        source: serde_json::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

/// The entry that an insert or update clashed with: one with the same SPIFFE
/// ID, parent ID and selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateEntry {
    pub spiffe_id: String,
    pub parent_id: String,
}

impl std::fmt::Display for DuplicateEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (parent {})", self.spiffe_id, self.parent_id)
    }
}

/// The embedded migrations, in order.
fn migrator() -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    use std::borrow::Cow;
    let migrations = vec![
        Migration::new(
            1,
            Cow::Borrowed("initial"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0001_initial.sql")),
            false,
        ),
        Migration::new(
            2,
            Cow::Borrowed("owners"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0002_owners.sql")),
            false,
        ),
        Migration::new(
            3,
            Cow::Borrowed("event log"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0003_event_log.sql")),
            false,
        ),
        Migration::new(
            4,
            Cow::Borrowed("kubernetes"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0004_kubernetes.sql")),
            false,
        ),
        Migration::new(
            5,
            Cow::Borrowed("federation"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0005_federation.sql")),
            false,
        ),
    ];
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// Ends a transaction: commits it if `result` is Ok, else rolls it back and
/// returns the error. Rolling back here, rather than through sqlx's rollback
/// on drop (which runs only when the connection is next used), releases
/// SQLite's write lock at once, so the next writer is not refused with
/// "database is locked". A failed rollback leaves the original error to report.
async fn finish<T>(
    tx: sqlx::Transaction<'_, sqlx::Sqlite>,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(error) => {
            let _ = tx.rollback().await;
            Err(error)
        }
    }
}

/// The registration store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    changes: watch::Sender<u64>,
    /// Counts changes to foreign bundles alone, so the many entry streams
    /// read them again only when they changed.
    foreign_changes: watch::Sender<u64>,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        // SQLite gives its -wal and -shm files the database file's mode, so
        // creating the database 0600 keeps all three private.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| StoreError::File {
                    path: path.display().to_string(),
                    source,
                })?;
        }
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
        let (foreign_changes, _) = watch::channel(0);
        Ok(Store {
            pool,
            changes,
            foreign_changes,
        })
    }

    /// Starts a write transaction. SQLite's default (deferred) transaction
    /// reads from a snapshot and fails at once with "database is locked"
    /// if another writer committed before its first write; taking the
    /// write lock at BEGIN makes concurrent writers (admin calls, the event
    /// log's writer and sequencer) queue on the busy timeout instead.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A receiver that sees a new value after every committed change to
    /// entries or agents.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// A foreign bundle was stored or deleted: a store change too.
    fn foreign_bundles_changed(&self) {
        self.foreign_changes.send_modify(|n| *n += 1);
        self.changed();
    }

    /// Grows with every change to the foreign bundles. Read it before
    /// listing them: a change after the read shows as a newer version.
    pub fn foreign_bundles_version(&self) -> u64 {
        *self.foreign_changes.borrow()
    }

    /// Counts rows, for tests that check nothing was written.
    pub async fn count(&self, table: Table) -> Result<i64, StoreError> {
        let sql = match table {
            Table::Entries => "SELECT COUNT(*) FROM entries",
            Table::Agents => "SELECT COUNT(*) FROM agents",
            Table::UsedJoinTokens => "SELECT COUNT(*) FROM join_tokens WHERE used_at IS NOT NULL",
            Table::Owners => "SELECT COUNT(*) FROM owners",
            Table::BoundSerials => "SELECT COUNT(*) FROM bound_serials",
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
    Owners,
    BoundSerials,
}

/// A store in a fresh temporary directory.
#[cfg(test)]
async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("sigil.db"))
        .await
        .unwrap();
    (dir, store)
}

/// Every reservation's entry and revocation time (0: not revoked), by
/// entry: what tests check revocation marked.
#[cfg(test)]
async fn reservations_revoked_at(store: &Store) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT entry_id, revoked_at FROM bound_serials ORDER BY entry_id")
        .fetch_all(&store.pool)
        .await
        .unwrap()
}
