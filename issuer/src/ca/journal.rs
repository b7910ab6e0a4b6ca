//! The CA's state on disk, in `<data_dir>/ca/`: one PKCS#8 file per key
//! (0600) and `journal.json`, which records each key's status and lifetime so
//! a restarted issuer resumes rotation exactly where it stopped.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::CaError;
use super::keys::KeyType;
use super::rotation::Lifetime;
use crate::clock::from_unix_secs;

/// Where a key stands in its lifecycle (see [`super::rotation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Status {
    /// Published in the bundle, not yet signing.
    Prepared,
    Active,
    /// No longer signing; published until it expires.
    Retired,
}

/// One key as the journal records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) id: String,
    pub(super) status: Status,
    pub(super) key_type: KeyType,
    pub(super) not_before: i64,
    pub(super) not_after: i64,
    /// The CA certificate, for X.509 authorities (base64 DER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) certificate: Option<String>,
}

impl Record {
    pub(super) fn lifetime(&self) -> Lifetime {
        Lifetime {
            not_before: from_unix_secs(self.not_before),
            not_after: from_unix_secs(self.not_after),
        }
    }

    /// The X.509 CA certificate's DER, if the record holds a readable one.
    pub(super) fn certificate_der(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        let text = self.certificate.as_deref()?;
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    }

    pub(super) fn encode_certificate(der: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(der)
    }
}

/// The whole journal file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Journal {
    /// The bundle's `spiffe_sequence`, kept so it never goes back after a restart.
    pub(super) sequence: u64,
    pub(super) x509: Vec<Record>,
    pub(super) jwt: Vec<Record>,
    /// WIT signing keys; absent from journals written before WITs existed.
    #[serde(default)]
    pub(super) wit: Vec<Record>,
}

/// Creates the CA directory, private to the issuer's user.
pub(super) fn create_dir(dir: &Path) -> Result<(), CaError> {
    workload_api::files::create_private_dir(dir).map_err(|source| CaError::Directory {
        path: dir.to_path_buf(),
        source,
    })
}

pub(super) fn journal_path(dir: &Path) -> PathBuf {
    dir.join("journal.json")
}

/// The file of the key `id` of one kind (`x509`, `jwt` or `wit`).
pub(super) fn key_path(dir: &Path, kind: &str, id: &str) -> PathBuf {
    dir.join(format!("{kind}-{id}.key"))
}

/// Reads the journal; a CA that has never run has an empty one.
pub(super) fn read(dir: &Path) -> Result<Journal, CaError> {
    let path = journal_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| CaError::JournalFormat { path, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
        Err(source) => Err(CaError::JournalIo { path, source }),
    }
}

/// Replaces the journal atomically, readable by the owner only.
pub(super) fn write(dir: &Path, journal: &Journal) -> Result<(), CaError> {
    let path = journal_path(dir);
    let bytes = serde_json::to_vec_pretty(journal).expect("journal serializes");
    workload_api::files::write_private(&path, &bytes)
        .map_err(|source| CaError::JournalIo { path, source })
}
