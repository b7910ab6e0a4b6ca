//! Counts the statements PostgreSQL has run for the issuers' database:
//! pg_stat_statements when it is loaded, else committed and rolled-back
//! transactions from pg_stat_database (a lower bound on statements).

use serde::Serialize;
use sqlx::{Connection, PgConnection, Row};

/// Why the database could not be counted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryCountError {
    #[error("connecting to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("reading {source_name}: {error}")]
    Read {
        source_name: &'static str,
        #[source]
        error: sqlx::Error,
    },
}

/// Where the count comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CountSource {
    PgStatStatements,
    /// xact_commit + xact_rollback: transactions, not statements.
    PgStatDatabase,
}

impl CountSource {
    pub fn name(self) -> &'static str {
        match self {
            CountSource::PgStatStatements => "pg_stat_statements",
            CountSource::PgStatDatabase => "pg_stat_database",
        }
    }
}

/// A connection to the issuers' database that reads its statement count.
#[derive(Debug)]
pub struct QueryCounter {
    connection: PgConnection,
    pub source: CountSource,
}

const STATEMENTS: &str = "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())";
const TRANSACTIONS: &str = "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database \
     WHERE datname = current_database()";

impl QueryCounter {
    /// Connects and picks the best source the server offers.
    pub async fn connect(url: &str) -> Result<Self, QueryCountError> {
        let mut connection = PgConnection::connect(url)
            .await
            .map_err(QueryCountError::Connect)?;
        // Fails harmlessly where the library is not preloaded or the user
        // may not create extensions; the fallback is then used.
        let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut connection)
            .await;
        let source = match sqlx::query(STATEMENTS).fetch_one(&mut connection).await {
            Ok(_) => CountSource::PgStatStatements,
            Err(_) => CountSource::PgStatDatabase,
        };
        Ok(QueryCounter { connection, source })
    }

    /// The count now. Cumulative: only differences mean anything.
    pub async fn count(&mut self) -> Result<i64, QueryCountError> {
        let sql = match self.source {
            CountSource::PgStatStatements => STATEMENTS,
            CountSource::PgStatDatabase => TRANSACTIONS,
        };
        let row = sqlx::query(sql)
            .fetch_one(&mut self.connection)
            .await
            .map_err(|error| QueryCountError::Read {
                source_name: self.source.name(),
                error,
            })?;
        row.try_get::<i64, _>(0)
            .map_err(|error| QueryCountError::Read {
                source_name: self.source.name(),
                error,
            })
    }
}
