//! The registration store: entries, agents and join tokens in SQL.
//!
//! SQLite (one WAL file in the data directory) is the embedded default. Every
//! statement is portable SQL with `$n` placeholders so a PostgreSQL backend can
//! run the same queries. Writers bump a change counter that entry streams watch,
//! so agents learn of changes by push rather than by polling.
//!
//! This module holds the pool, the migrations, the errors and the change
//! counter; `entries`, `agents`, `tokens`, `owners`, `serials`, `log`,
//! `leases`, `crls`, `revocation_list` and the others each add the
//! [`Store`] methods of their tables. No SPIFFE standard covers
//! registration; the model follows SPIRE's.

mod agents;
mod authorized;
mod backend;
mod crls;
mod entries;
mod federation;
mod graph;
mod leases;
mod log;
mod model;
mod notify;
mod owners;
mod revocation_list;
mod serials;
mod tokens;
mod trust_keys;

use std::path::Path;
use std::sync::Arc;

use sqlx::AnyPool;
use tokio::sync::watch;

use crate::config::database::DatabaseUrl;
use notify::Changes;

pub use backend::Backend;

pub use crls::StoredCrl;
pub use entries::issuer_of;
pub use federation::BundleWrite;
pub use graph::{Authorized, EntryGraph};
pub use log::{LogHead, Sequencing};
pub use model::{
    Agent, BundleOrigin, Entry, EntryFields, EntryOwner, Federation, FederationPoll, ForeignBundle,
    JoinTokenRecord, Owner, Selector, SerialReservation,
};
pub use notify::{Change, Noted};
pub use revocation_list::StoredList;
pub use trust_keys::{SharedBundleKeys, TrustKey};

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

impl StoreError {
    /// The database could not be reached, or is restarting: worth a retry,
    /// unlike a refusal or corrupt data.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_),
            ) => true,
            // SQLSTATE classes 08 (connection exception) and 57P
            // (operator intervention: shutdown, restart, cannot connect now).
            StoreError::Database(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
            _ => false,
        }
    }
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
        Migration::new(
            6,
            Cow::Borrowed("replicas"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0006_replicas.sql")),
            false,
        ),
        Migration::new(
            7,
            Cow::Borrowed("federation polls"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0007_federation_polls.sql")),
            false,
        ),
        Migration::new(
            8,
            Cow::Borrowed("revocation list"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0008_revocation_list.sql")),
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
/// the write lock at once, so the next writer is not held up or, on
/// SQLite, refused with "database is locked". A failed rollback leaves the
/// original error to report.
async fn finish<T>(
    tx: sqlx::Transaction<'_, sqlx::Any>,
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
    pool: AnyPool,
    backend: Backend,
    changes: Arc<Changes>,
}

impl Store {
    /// Connects to the database `url` names (creating a SQLite file if
    /// needed), migrates it and, on PostgreSQL, starts listening for the
    /// changes other replicas make.
    pub async fn open(url: &DatabaseUrl) -> Result<Self, StoreError> {
        let (pool, backend) = backend::connect(url).await?;
        migrator().run(&pool).await?;
        let changes = Arc::new(Changes::new());
        if let DatabaseUrl::Postgres(url) = url {
            changes.listen(url.clone()).await?;
        }
        Ok(Store {
            pool,
            backend,
            changes,
        })
    }

    /// Opens (creating if needed) the SQLite database at `path`.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        Self::open(&DatabaseUrl::Sqlite(path.to_owned())).await
    }

    /// Starts a write transaction. Writers run one at a time, as SQLite
    /// has them, on either backend: every invariant the store keeps across
    /// rows (one sequence per entry, children counted before a child is
    /// added, the log's tree) holds because no other writer runs between
    /// its reads and its writes.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        backend::begin_write(&self.pool, self.backend).await
    }

    /// Commits a write that changed what entry streams serve, and tells
    /// every replica what `change` says of the written value. On
    /// PostgreSQL the notification is part of the transaction: it is
    /// delivered if and only if the change commits.
    async fn commit_change<T>(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
        result: Result<T, StoreError>,
        change: impl FnOnce(&T) -> Change,
    ) -> Result<T, StoreError> {
        let (result, change) = match result {
            Ok(value) => {
                let change = change(&value);
                let announced = match self.backend {
                    Backend::Postgres => {
                        notify::announce(&mut tx, &change, self.changes.replica()).await
                    }
                    Backend::Sqlite => Ok(()),
                };
                (announced.map(|()| value), Some(change))
            }
            Err(error) => (Err(error), None),
        };
        let value = finish(tx, result).await?;
        if let Some(change) = change {
            self.changes.note(change);
        }
        Ok(value)
    }

    /// Runs one statement that changes what streams serve, in its own write
    /// transaction, as a change (see [`Store::commit_change`]). `missing`
    /// is the error when it matched no row; then nothing is announced.
    async fn change_row<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        change: Change,
        missing: impl FnOnce() -> StoreError,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let result = match query.execute(&mut *tx).await {
            Ok(done) if done.rows_affected() == 0 => Err(missing()),
            Ok(_) => Ok(()),
            Err(error) => Err(error.into()),
        };
        self.commit_change(tx, result, |_| change).await
    }

    /// A receiver that sees a new value after every committed change to
    /// entries, agents, owners or foreign bundles, made by this replica or
    /// another.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// How many changes [`Store::subscribe`] has counted so far.
    pub fn change_count(&self) -> u64 {
        *self.changes.subscribe().borrow()
    }

    /// What each change counted by [`Store::subscribe`] was, from now on.
    /// A receiver that falls too far behind is told it lagged, and must
    /// take anything as changed.
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<Noted> {
        self.changes.subscribe_noted()
    }

    /// A receiver that sees a new value after every committed change that
    /// may have revoked SVIDs or owners, by any replica.
    pub fn subscribe_revoking(&self) -> watch::Receiver<u64> {
        self.changes.subscribe_revoking()
    }

    /// A receiver that sees a new value after every committed change to
    /// federation relationships, by any replica.
    pub fn subscribe_federations(&self) -> watch::Receiver<u64> {
        self.changes.subscribe_federations()
    }

    /// A receiver that sees a new value after every committed change to
    /// the keys replicas publish in the trust bundle, by any replica.
    pub fn subscribe_trust_bundle(&self) -> watch::Receiver<u64> {
        self.changes.subscribe_trust_bundle()
    }

    /// A receiver that sees a new value after any replica published CRLs.
    pub fn subscribe_revocations(&self) -> watch::Receiver<u64> {
        self.changes.subscribe_revocations()
    }

    /// Grows with every change to the foreign bundles. Read it before
    /// listing them: a change after the read shows as a newer version.
    pub fn foreign_bundles_version(&self) -> u64 {
        self.changes.foreign_bundles_version()
    }

    /// Which database this store is on.
    pub fn backend(&self) -> Backend {
        self.backend
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

/// The most ids one `IN (...)` query binds: well under SQLite's 32,766
/// parameters and PostgreSQL's 65,535.
const MAX_IDS_PER_QUERY: usize = 500;

impl Store {
    /// The rows `select` finds for `ids`, read with `read`. `select` makes
    /// the query from the placeholders of an `IN (...)` list; it runs once
    /// per [`MAX_IDS_PER_QUERY`] ids.
    async fn fetch_by_ids<T>(
        &self,
        select: impl Fn(&str) -> String,
        ids: &[String],
        read: impl Fn(&sqlx::any::AnyRow) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for ids in ids.chunks(MAX_IDS_PER_QUERY) {
            let placeholders = (1..=ids.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = select(&placeholders);
            let rows = ids
                .iter()
                .fold(sqlx::query(&sql), |query, id| query.bind(id))
                .fetch_all(&self.pool)
                .await?;
            for row in &rows {
                found.push(read(row)?);
            }
        }
        Ok(found)
    }
}

/// Reads a BOOLEAN column selected as `CAST(column AS INTEGER) AS column`:
/// sqlx's Any driver cannot read a column SQLite declares BOOLEAN, and a
/// number reads the same from both backends.
fn bool_column(row: &sqlx::any::AnyRow, column: &str) -> Result<bool, StoreError> {
    use sqlx::Row;
    Ok(row.try_get::<i64, _>(column)? != 0)
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

/// A fresh store: SQLite in a temporary directory, or, when
/// `SIGIL_TEST_POSTGRES_URL` names a PostgreSQL server (as the test script
/// sets it for the store's second run), a new database on that server.
#[cfg(test)]
pub(crate) async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = match std::env::var("SIGIL_TEST_POSTGRES_URL") {
        Ok(server) => fresh_postgres_database(&server).await,
        Err(_) => DatabaseUrl::Sqlite(dir.path().join("sigil.db")),
    };
    let store = Store::open(&url).await.unwrap();
    (dir, store)
}

/// A seeded generator of numbers below `n` (xorshift): random-looking
/// test inputs that are the same on every run.
#[cfg(test)]
pub(crate) fn seeded(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed.max(1);
    move |n: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}

/// Creates a database with a new name on the PostgreSQL server `server`.
#[cfg(test)]
async fn fresh_postgres_database(server: &str) -> DatabaseUrl {
    use sqlx::Connection;
    let name = format!("sigil_{}", crate::ids::uuid_v4().replace('-', ""));
    let mut admin = sqlx::postgres::PgConnection::connect(server)
        .await
        .unwrap_or_else(|e| panic!("SIGIL_TEST_POSTGRES_URL: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let mut url = url::Url::parse(server).unwrap();
    url.set_path(&name);
    DatabaseUrl::parse(url.as_str()).unwrap()
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
