//! The agent's own identity on disk: its X509-SVID chain, its private key
//! (0600) and the trust bundle it last received, in `<data_dir>/agent/`.
//! A restarted agent reuses them instead of attesting again.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use workload_api::bundle::split_der_concat;
use workload_api::id::SpiffeId;
use workload_api::x509svid;
use workload_api::Bundle;
use zeroize::Zeroizing;

use crate::issuer_client::ClientIdentity;

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
    ) -> Result<Self, String> {
        let leaf = x509svid::verify_chain(
            &chain,
            |td| (td == bundle.trust_domain()).then_some(bundle),
            now,
        )
        .map_err(|e| e.to_string())?;
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
    pub fn new(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("agent");
        workload_api::files::create_private_dir(&dir)?;
        Ok(IdentityDir(dir))
    }

    fn svid_path(&self) -> PathBuf {
        self.0.join("svid.der")
    }
    fn key_path(&self) -> PathBuf {
        self.0.join("svid.key")
    }
    /// The stored trust bundle; removing it is how an agent re-bootstraps.
    pub fn bundle_path(&self) -> PathBuf {
        self.0.join("bundle.json")
    }

    /// The stored bundle, if any.
    pub fn load_bundle(
        &self,
        trust_domain: &workload_api::TrustDomain,
    ) -> Result<Option<Bundle>, String> {
        match std::fs::read(self.bundle_path()) {
            Ok(bytes) => Bundle::from_jwks_json(trust_domain.clone(), &bytes)
                .map(Some)
                .map_err(|e| format!("{}: {e}", self.bundle_path().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.bundle_path().display())),
        }
    }

    pub fn save_bundle(&self, bundle: &Bundle) -> std::io::Result<()> {
        workload_api::files::write_private(&self.bundle_path(), &bundle.to_jwks_json())
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
    pub fn save_svid(&self, svid: &AgentSvid) -> std::io::Result<()> {
        workload_api::files::write_private(&self.key_path(), &svid.key_pkcs8)?;
        workload_api::files::write_private(&self.svid_path(), &svid.chain.concat())
    }

    /// Forgets the SVID, so the next start attests again.
    pub fn remove_svid(&self) {
        let _ = std::fs::remove_file(self.svid_path());
        let _ = std::fs::remove_file(self.key_path());
    }
}
