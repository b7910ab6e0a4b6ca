//! Where the registration store lives: a SQLite file (the default, in the
//! data directory) or a PostgreSQL server shared by several replicas.
//!
//! A PostgreSQL URL may carry a password, so the URL is only ever shown
//! with its password replaced, in `Debug` and `Display` alike.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

/// A database URL as given in the file, a flag or the environment, not yet
/// checked. It is checked in [`crate::config::Config::from_file`] rather
/// than while parsing, because parsers echo a value they refuse, and this
/// one may hold a password.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrlText(Zeroizing<String>);

impl std::str::FromStr for DatabaseUrlText {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseUrlText(Zeroizing::new(text.to_owned())))
    }
}

impl std::fmt::Debug for DatabaseUrlText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrlText(***)")
    }
}

impl DatabaseUrlText {
    pub fn parse(&self) -> Result<DatabaseUrl, DatabaseUrlError> {
        DatabaseUrl::parse(&self.0)
    }
}

/// The database the issuer's store uses.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL server.
    Postgres(PostgresUrl),
}

/// A `postgres://` URL, kept whole for connecting and shown redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(Zeroizing<String>);

impl PostgresUrl {
    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresUrl({self})")
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            DatabaseUrl::Postgres(url) => url.fmt(f),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Why a database URL was refused. Never holds the URL's password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseUrlError {
    #[error("is empty")]
    Empty,
    #[error("has the scheme {0:?}; use a SQLite path, sqlite:PATH or postgres://")]
    UnknownScheme(String),
    #[error("is not a valid postgres:// URL: {0}")]
    BadPostgresUrl(String),
    #[error("sqlite: URLs take no query or fragment; give the file's path")]
    SqliteQuery,
}

/// The longest URL accepted: far beyond any real one, and a bound on input.
const MAX_URL_BYTES: usize = 4096;

impl DatabaseUrl {
    /// The default: `sigil.db` in the data directory.
    pub fn default_in(data_dir: &Path) -> Self {
        DatabaseUrl::Sqlite(data_dir.join("sigil.db"))
    }

    pub fn parse(text: &str) -> Result<Self, DatabaseUrlError> {
        if text.trim().is_empty() {
            return Err(DatabaseUrlError::Empty);
        }
        if text.len() > MAX_URL_BYTES {
            return Err(DatabaseUrlError::BadPostgresUrl(format!(
                "{} bytes; at most {MAX_URL_BYTES}",
                text.len()
            )));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let url = url::Url::parse(text)
                .map_err(|e| DatabaseUrlError::BadPostgresUrl(e.to_string()))?;
            if url.fragment().is_some() {
                return Err(DatabaseUrlError::BadPostgresUrl("it has a fragment".into()));
            }
            return Ok(DatabaseUrl::Postgres(PostgresUrl(Zeroizing::new(
                text.to_owned(),
            ))));
        }
        if let Some(rest) = text.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.contains(['?', '#']) {
                return Err(DatabaseUrlError::SqliteQuery);
            }
            if path.is_empty() {
                return Err(DatabaseUrlError::Empty);
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            // Only the scheme is named: the rest may hold a password.
            return Err(DatabaseUrlError::UnknownScheme(
                scheme.chars().take(32).collect(),
            ));
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(text)))
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, DatabaseUrl::Postgres(_))
    }
}

/// `url` with its password, and any `password` query parameter, replaced
/// by `***`.
fn redact(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "postgres://(unparsable URL)".into();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_sqlite_urls_are_sqlite() {
        for text in [
            "/var/lib/sigil/db",
            "sqlite:/var/lib/sigil/db",
            "sqlite:///var/lib/sigil/db",
        ] {
            assert_eq!(
                DatabaseUrl::parse(text).unwrap(),
                DatabaseUrl::Sqlite("/var/lib/sigil/db".into()),
                "{text}"
            );
        }
        assert_eq!(
            DatabaseUrl::parse("relative.db").unwrap(),
            DatabaseUrl::Sqlite("relative.db".into())
        );
    }

    #[test]
    fn postgres_urls_never_show_their_password() {
        let url = DatabaseUrl::parse(
            "postgres://sigil:hunter2@db.example:5432/sigil?sslmode=require&password=hunter3",
        )
        .unwrap();
        assert!(url.is_postgres());
        for shown in [url.to_string(), format!("{url:?}")] {
            assert!(!shown.contains("hunter"), "{shown}");
            assert!(shown.contains("sigil:***@db.example:5432/sigil"), "{shown}");
            assert!(shown.contains("sslmode=require"), "{shown}");
        }
        let DatabaseUrl::Postgres(pg) = &url else {
            unreachable!()
        };
        assert!(pg.expose().contains("hunter2"));
        assert!(
            DatabaseUrl::parse("postgresql:///sigil?host=/run/postgresql")
                .unwrap()
                .is_postgres()
        );
    }

    #[test]
    fn unchecked_text_is_never_shown() {
        let text: DatabaseUrlText = "postgres://u:hunter2@h/db".parse().unwrap();
        assert_eq!(format!("{text:?}"), "DatabaseUrlText(***)");
        assert!(text.parse().unwrap().is_postgres());
    }

    #[test]
    fn bad_urls_are_named_without_their_secrets() {
        let error = DatabaseUrl::parse("mysql://root:hunter2@db/sigil").unwrap_err();
        assert_eq!(error, DatabaseUrlError::UnknownScheme("mysql".into()));
        assert!(!error.to_string().contains("hunter2"));
        assert!(matches!(
            DatabaseUrl::parse("postgres://h:99999/db"),
            Err(DatabaseUrlError::BadPostgresUrl(_))
        ));
        assert_eq!(DatabaseUrl::parse(" "), Err(DatabaseUrlError::Empty));
        assert_eq!(
            DatabaseUrl::parse("sqlite:/x.db?mode=ro"),
            Err(DatabaseUrlError::SqliteQuery)
        );
        let huge = format!("postgres://h/{}", "a".repeat(5000));
        assert!(DatabaseUrl::parse(&huge)
            .unwrap_err()
            .to_string()
            .contains("at most 4096"));
    }
}
