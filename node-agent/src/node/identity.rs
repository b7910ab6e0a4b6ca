//! The agent's own identity on disk: its X509-SVID chain, its private key
//! (0600) and the trust bundle it last received, in `<data_dir>/agent/`
//! (beside the foreign bundles and revocations it last received).
//! A restarted agent reuses them instead of attesting again.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use workload_api::bundle::split_der_concat;
use workload_api::id::SpiffeId;
use workload_api::x509svid::{self, X509SvidError};
use workload_api::{Bundle, BundleError};
use zeroize::Zeroizing;

use crate::issuer_client::ClientIdentity;

/// Why the identity directory could not be read or written. Each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Bundle { path: PathBuf, source: BundleError },
}

impl IdentityError {
    /// For `map_err`: an I/O error on `path`.
    pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The agent's SVID and key. `Debug` hides the key.
#[derive(Clone)]
pub struct AgentSvid {
    pub spiffe_id: SpiffeId,
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When the agent received it. notBefore is backdated for clock skew, so
    /// this is the honest start of its life for renewal.
    pub received: SystemTime,
}

impl std::fmt::Debug for AgentSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSvid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pkcs8", &"[redacted]")
            .finish()
    }
}

impl AgentSvid {
    /// Builds from a chain and key, checking the chain against `bundle`.
    pub fn new(
        chain: Vec<Vec<u8>>,
        key_pkcs8: Zeroizing<Vec<u8>>,
        bundle: &Bundle,
        now: SystemTime,
    ) -> Result<Self, X509SvidError> {
        let leaf = x509svid::verify_chain(
            &chain,
            |td| (td == bundle.trust_domain()).then_some(bundle),
            now,
        )?;
        Ok(AgentSvid {
            spiffe_id: leaf.spiffe_id,
            chain,
            key_pkcs8,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            received: now.max(leaf.not_before),
        })
    }

    pub fn client_identity(&self) -> ClientIdentity {
        ClientIdentity {
            chain: self.chain.clone(),
            pkcs8: std::sync::Arc::new(self.key_pkcs8.to_vec()),
        }
    }

    /// When the SVID should be renewed: half way through the life it had
    /// when it arrived.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.received)
            .unwrap_or_default();
        self.received + life / 2
    }
}

/// Where the agent keeps its identity.
#[derive(Debug, Clone)]
pub struct IdentityDir(PathBuf);

impl IdentityDir {
    pub fn new(data_dir: &Path) -> Result<Self, IdentityError> {
        let dir = data_dir.join("agent");
        workload_api::files::create_private_dir(&dir).map_err(IdentityError::io(&dir))?;
        Ok(IdentityDir(dir))
    }

    fn svid_path(&self) -> PathBuf {
        self.0.join("svid.der")
    }
    fn key_path(&self) -> PathBuf {
        self.0.join("svid.key")
    }
    /// The issuer's revocations as last received.
    pub fn revocations_path(&self) -> PathBuf {
        self.0.join("revocations.json")
    }

    /// The bundles of foreign trust domains as last received.
    pub fn federated_bundles_path(&self) -> PathBuf {
        self.0.join("federated_bundles.json")
    }

    /// The stored trust bundle; removing it is how an agent re-bootstraps.
    pub fn bundle_path(&self) -> PathBuf {
        self.0.join("bundle.json")
    }

    /// The stored bundle, if any.
    pub fn load_bundle(
        &self,
        trust_domain: &workload_api::TrustDomain,
    ) -> Result<Option<Bundle>, IdentityError> {
        let path = self.bundle_path();
        match std::fs::read(&path) {
            Ok(bytes) => match Bundle::from_jwks_json(trust_domain.clone(), &bytes) {
                Ok(bundle) => Ok(Some(bundle)),
                Err(source) => Err(IdentityError::Bundle { path, source }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IdentityError::Io { path, source }),
        }
    }

    pub fn save_bundle(&self, bundle: &Bundle) -> Result<(), IdentityError> {
        let path = self.bundle_path();
        workload_api::files::write_private(&path, &bundle.to_jwks_json())
            .map_err(IdentityError::io(&path))
    }

    /// The stored SVID, if present and still valid against `bundle`.
    pub fn load_svid(&self, bundle: &Bundle, now: SystemTime) -> Option<AgentSvid> {
        let chain = std::fs::read(self.svid_path()).ok()?;
        let key = Zeroizing::new(std::fs::read(self.key_path()).ok()?);
        let chain = split_der_concat(&chain).ok()?;
        // The file was written when the SVID arrived.
        let received = std::fs::metadata(self.svid_path())
            .and_then(|m| m.modified())
            .unwrap_or(now);
        match AgentSvid::new(chain, key, bundle, now) {
            Ok(svid) => Some(AgentSvid {
                received: received.max(svid.not_before).min(now),
                ..svid
            }),
            Err(reason) => {
                tracing::warn!(%reason, "stored agent SVID is no longer usable");
                None
            }
        }
    }

    /// Stores the SVID and key (key first, both 0600, each replaced atomically).
    pub fn save_svid(&self, svid: &AgentSvid) -> Result<(), IdentityError> {
        let (key_path, svid_path) = (self.key_path(), self.svid_path());
        workload_api::files::write_private(&key_path, &svid.key_pkcs8)
            .map_err(IdentityError::io(&key_path))?;
        workload_api::files::write_private(&svid_path, &svid.chain.concat())
            .map_err(IdentityError::io(&svid_path))
    }

    /// Forgets the SVID, so the next start attests again.
    pub fn remove_svid(&self) {
        let _ = std::fs::remove_file(self.svid_path());
        let _ = std::fs::remove_file(self.key_path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_bundle_that_does_not_parse_is_named() {
        let data = tempfile::tempdir().unwrap();
        let dir = IdentityDir::new(data.path()).unwrap();
        let td = workload_api::TrustDomain::new("example.org").unwrap();
        assert!(dir.load_bundle(&td).unwrap().is_none());

        std::fs::write(dir.bundle_path(), "[]").unwrap();
        let error = dir.load_bundle(&td).unwrap_err();
        assert!(
            matches!(&error, IdentityError::Bundle { path, source: BundleError::Json(_) }
                if *path == dir.bundle_path()),
            "{error:?}"
        );
        assert!(error.to_string().starts_with(&format!(
            "{}: bundle is not a JSON object",
            dir.bundle_path().display()
        )));

        let bundle = Bundle::new(td.clone());
        dir.save_bundle(&bundle).unwrap();
        assert_eq!(dir.load_bundle(&td).unwrap(), Some(bundle));
    }
}
