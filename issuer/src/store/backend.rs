//! The two databases the store runs on, behind sqlx's `Any` driver: one
//! pool type and one set of statements for both. What differs is here:
//! how a connection is set up and how a writer takes the write lock.

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Transaction};

use super::StoreError;
use crate::config::database::DatabaseUrl;

/// Which database a store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How long a caller waits for a pooled connection, and so how long a
/// request fails for while the database is unreachable, before it is
/// answered UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections per replica to PostgreSQL. Entry streams read through the
/// pool, so it bounds one replica's share of the server's connections.
const POSTGRES_CONNECTIONS: u32 = 16;

/// The key of the advisory lock PostgreSQL writers take: "SIGIL" in ASCII.
/// Any number works as long as every replica uses the same.
const POSTGRES_WRITE_LOCK: i64 = 0x53_49_47_49_4c;

/// Opens a pool on the database `url` names.
pub(super) async fn connect(url: &DatabaseUrl) -> Result<(AnyPool, Backend), StoreError> {
    sqlx::any::install_default_drivers();
    match url {
        DatabaseUrl::Sqlite(path) => {
            create_private_file(path)?;
            let pool = AnyPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL lets readers run beside the one writer;
                        // FULL makes every commit durable before it returns.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 5000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                        Ok(())
                    })
                })
                .connect(&sqlite_url(path))
                .await?;
            Ok((pool, Backend::Sqlite))
        }
        DatabaseUrl::Postgres(url) => {
            let pool = AnyPoolOptions::new()
                .max_connections(POSTGRES_CONNECTIONS)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect(url.expose())
                .await?;
            Ok((pool, Backend::Postgres))
        }
    }
}

/// Starts a transaction that holds the database's one write lock until it
/// ends. SQLite's `BEGIN IMMEDIATE` takes its write lock at once, rather
/// than failing with "database is locked" when another writer commits
/// first; PostgreSQL writers take a transaction-scoped advisory lock, so
/// replicas' writers queue on it the same way.
pub(super) async fn begin_write(
    pool: &AnyPool,
    backend: Backend,
) -> Result<Transaction<'static, Any>, StoreError> {
    match backend {
        Backend::Sqlite => Ok(pool.begin_with("BEGIN IMMEDIATE").await?),
        Backend::Postgres => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS write_lock")
                .bind(POSTGRES_WRITE_LOCK)
                .execute(&mut *tx)
                .await?;
            Ok(tx)
        }
    }
}

/// Creates the SQLite file 0600 if it is missing. SQLite gives its -wal
/// and -shm files the database file's mode, so all three stay private.
fn create_private_file(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|source| StoreError::File {
            path: path.display().to_string(),
            source,
        })
}

/// `sqlite://PATH?mode=rwc`, with the path percent-encoded so that any
/// file name (spaces, `?`, `#`, `%`) survives the URL.
fn sqlite_url(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut url = String::from("sqlite://");
    for &byte in path.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            url.push(char::from(byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url.push_str("?mode=rwc");
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_are_percent_encoded() {
        assert_eq!(
            sqlite_url(std::path::Path::new("/var/lib/a b/x?#%.db")),
            "sqlite:///var/lib/a%20b/x%3F%23%25.db?mode=rwc"
        );
    }

    #[tokio::test]
    async fn a_sqlite_file_with_odd_characters_in_its_path_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a b?#%.db");
        let (pool, backend) = connect(&DatabaseUrl::Sqlite(path.clone())).await.unwrap();
        assert_eq!(backend, Backend::Sqlite);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
