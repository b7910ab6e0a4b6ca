//! Why the CA could not do what was asked: one enum for every CA module, so
//! the issuer's callers match on one type.

use std::path::PathBuf;

use workload_api::jws::JwsError;
use workload_api::jwtsvid::JwtSvidError;

use super::keys::KeyError;

/// Why the CA could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("CA directory {}: {source}", .path.display())]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA journal {}: {source}", .path.display())]
    JournalIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA journal {}: {source}", .path.display())]
    JournalFormat {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("CA journal {}: x509 authority {id} has no certificate", .path.display())]
    MissingCertificate { path: PathBuf, id: String },
    #[error("upstream CA: {}: {source}", .path.display())]
    UpstreamRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("upstream CA: {} has no certificate", .path.display())]
    UpstreamNoCertificate { path: PathBuf },
    #[error("upstream CA: {} has no PKCS#8 \"PRIVATE KEY\" block", .path.display())]
    UpstreamNoKey { path: PathBuf },
    #[error("upstream CA: {} is not a supported key", .path.display())]
    UpstreamKey { path: PathBuf, source: KeyError },
    #[error("certificate could not be built: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("certificate could not be parsed: {0}")]
    CertificateParse(#[from] der::Error),
    #[error("no active {0} authority")]
    NoActiveAuthority(&'static str),
    #[error("JWT signing failed: {0}")]
    Jwt(#[from] JwtSvidError),
    #[error("WIT signing failed: {0}")]
    Wit(#[source] JwsError),
    #[error("revocation list signing failed: {0}")]
    Revocations(#[source] JwsError),
}
