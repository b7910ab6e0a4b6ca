//! A real PostgreSQL server for one test: Debian's package, a throwaway
//! cluster in a temporary directory (`scripts/throwaway-postgres`), on a
//! loopback port. A test that needs it fails, naming why, when it cannot
//! start; it never passes without one.

use std::path::PathBuf;
use std::process::Command;

use sigil_issuer::config::database::DatabaseUrl;

use crate::{free_port, run, workspace_root};

/// A running PostgreSQL server, stopped when dropped.
#[allow(missing_debug_implementations)]
pub struct Postgres {
    dir: tempfile::TempDir,
    url: String,
}

impl Postgres {
    /// Creates a cluster and starts it.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Under root the cluster's owner is the postgres user, who must
        // reach the cluster directory inside this one.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = free_port();
        let (ok, stdout, stderr) = run(Command::new(script())
            .arg("start")
            .arg(dir.path().join("cluster"))
            .arg(port.to_string()));
        assert!(
            ok,
            "PostgreSQL did not start; the replica and PostgreSQL store tests need it:\n{stderr}"
        );
        Postgres {
            dir,
            url: stdout.trim().to_owned(),
        }
    }

    /// The server's URL (its `postgres` database).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates a database named `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> DatabaseUrl {
        self.psql(&format!("CREATE DATABASE {name}"));
        DatabaseUrl::parse(&self.database_url(name)).unwrap()
    }

    /// The URL of the database `name` on this server, as text.
    pub fn database_url(&self, name: &str) -> String {
        let base = self.url.rsplit_once('/').expect("URL has a path").0;
        format!("{base}/{name}")
    }

    /// Runs one SQL command with psql and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in(&self.url, sql)
    }

    /// As [`Postgres::psql`], in the database at `url`.
    pub fn psql_in(&self, url: &str, sql: &str) -> String {
        let (ok, stdout, stderr) = run(Command::new("psql").args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            url,
            "-c",
            sql,
        ]));
        assert!(ok, "psql {sql:?}: {stderr}");
        stdout.trim().to_owned()
    }

    /// Stops the server (fast shutdown: sessions are cut) and starts it again.
    pub fn restart(&self) {
        let (ok, _, stderr) = run(Command::new(script())
            .arg("restart")
            .arg(self.cluster_dir()));
        assert!(ok, "restarting PostgreSQL: {stderr}");
    }

    fn cluster_dir(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.cluster_dir())
            .output();
    }
}

fn script() -> PathBuf {
    workspace_root().join("scripts/throwaway-postgres")
}
