//! The certificate authority: X.509 CA certificates, JWT-SVID and WIT-SVID
//! signing keys, their rotation, and the SVIDs they sign.
//!
//! [`Ca`] is the face the rest of the issuer uses; the work is done below it:
//! [`rotation`] decides when a key moves on, `slots` moves the keys,
//! `journal` keeps them on disk, `signing` signs SVIDs, `bundle` derives the
//! trust bundle and `upstream` loads an upstream CA. Nothing below imports
//! this module, so the dependencies run one way.

mod bundle;
mod config;
mod crl;
mod error;
mod journal;
pub mod keys;
mod owner_extension;
pub mod rotation;
mod serials;
mod signing;
mod slots;
mod upstream;
pub mod x509;

#[cfg(test)]
mod tests;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use workload_api::bundle::Bundle;
use workload_api::id::{SpiffeId, TrustDomain};
use workload_api::jwk::Jwk;
use workload_api::owner::OwnerBinding;

use crate::clock::{from_unix_secs, unix_secs};
use slots::Slots;
use upstream::Upstream;

pub use bundle::PublishedAuthority;
pub use config::{CaConfig, UpstreamCa};
pub use crl::{RevokedCounters, SignedCrl};
pub use error::CaError;
pub use serials::SerialCounter;
pub use signing::SvidSubject;
pub use signing::{SignedJwt, SignedX509};

/// The certificate authority.
pub struct Ca {
    config: CaConfig,
    upstream: Option<Upstream>,
    slots: RwLock<Slots>,
    /// This CA's own keys.
    local_bundle: watch::Sender<Arc<Bundle>>,
    /// The trust domain's bundle: this CA's keys and, where several issuer
    /// replicas share a database, theirs (see `crate::trust_bundle`).
    bundle: watch::Sender<Arc<Bundle>>,
    /// The JWK Set JSON of the bundle last asked for: every entry stream
    /// sends a new bundle, and it is serialized once for all of them.
    bundle_jwks: std::sync::Mutex<Option<SerializedBundle>>,
    serial_key: serials::SerialKey,
}

/// A bundle and its JWK Set JSON.
type SerializedBundle = (Arc<Bundle>, Arc<Vec<u8>>);

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.config.trust_domain.as_str())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA from its directory, creating keys where none exist yet, and
    /// brings rotation up to date for `now`.
    pub fn open(config: CaConfig, now: SystemTime) -> Result<Self, CaError> {
        journal::create_dir(&config.dir)?;
        let upstream = config.upstream.as_ref().map(upstream::load).transpose()?;
        let slots = Slots::load(journal::read(&config.dir)?, &config.dir)?;
        let serial_key = serials::SerialKey::load_or_create(&config.dir)?;
        let initial = Arc::new(Bundle::new(config.trust_domain.clone()));
        let (local_bundle, _) = watch::channel(initial.clone());
        let (bundle, _) = watch::channel(initial);
        let ca = Ca {
            config,
            upstream,
            slots: RwLock::new(slots),
            local_bundle,
            bundle,
            bundle_jwks: std::sync::Mutex::new(None),
            serial_key,
        };
        ca.rotate(now)?;
        ca.publish();
        // Until the replicas' keys are read, the bundle is this CA's own.
        ca.set_published_bundle((*ca.local_bundle()).clone());
        Ok(ca)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    /// The trust domain's current bundle, every replica's keys included:
    /// what agents, relying parties and federated domains are given.
    pub fn bundle(&self) -> Arc<Bundle> {
        self.bundle.borrow().clone()
    }

    /// `bundle` (one [`Ca::bundle`] or [`Ca::subscribe_bundle`] handed
    /// out) as JWK Set JSON, serialized once however many ask.
    pub fn bundle_jwks(&self, bundle: &Arc<Bundle>) -> Arc<Vec<u8>> {
        let mut held = self.bundle_jwks.lock().expect("bundle JWKS lock");
        match &*held {
            Some((serialized, json)) if Arc::ptr_eq(serialized, bundle) => json.clone(),
            _ => {
                let json = Arc::new(bundle.to_jwks_json());
                *held = Some((bundle.clone(), json.clone()));
                json
            }
        }
    }

    /// The current bundle as JWK Set JSON (see [`Ca::bundle_jwks`]).
    pub fn current_bundle_jwks(&self) -> Arc<Vec<u8>> {
        self.bundle_jwks(&self.bundle())
    }

    /// Sees every new bundle.
    pub fn subscribe_bundle(&self) -> watch::Receiver<Arc<Bundle>> {
        self.bundle.subscribe()
    }

    /// This CA's own keys alone.
    pub fn local_bundle(&self) -> Arc<Bundle> {
        self.local_bundle.borrow().clone()
    }

    /// Sees every change to this CA's own keys.
    pub fn subscribe_local_bundle(&self) -> watch::Receiver<Arc<Bundle>> {
        self.local_bundle.subscribe()
    }

    /// This CA's keys as the replicas' shared bundle stores them.
    pub fn published_authorities(&self) -> Result<Vec<PublishedAuthority>, CaError> {
        let slots = self.slots.read().expect("CA lock");
        bundle::authorities(&self.config, self.upstream.as_ref(), &slots)
    }

    /// Publishes the trust domain's bundle, if it changed.
    pub fn set_published_bundle(&self, bundle: Bundle) {
        self.bundle.send_if_modified(|current| {
            if **current == bundle {
                false
            } else {
                *current = Arc::new(bundle);
                true
            }
        });
    }

    /// Moves every key through its lifecycle for `now`. Returns whether the
    /// published bundle changed.
    pub fn rotate(&self, now: SystemTime) -> Result<bool, CaError> {
        let now = whole_seconds(now);
        let changed = self.slots.write().expect("CA lock").rotate(
            &self.config,
            self.upstream.as_ref(),
            now,
        )?;
        if changed {
            self.publish();
        }
        Ok(changed)
    }

    /// Every key the CA holds and where it is in its lifecycle.
    pub fn key_states(&self) -> Vec<KeyState> {
        let slots = self.slots.read().expect("CA lock");
        let of = |kind: &'static str, record: &journal::Record| KeyState {
            kind,
            id: record.id.clone(),
            status: match record.status {
                journal::Status::Prepared => KeyStatus::Prepared,
                journal::Status::Active => KeyStatus::Active,
                journal::Status::Retired => KeyStatus::Retired,
            },
            not_before: record.not_before,
            not_after: record.not_after,
        };
        slots
            .x509
            .iter()
            .map(|a| of("x509", &a.record))
            .chain(slots.jwt.iter().map(|k| of("jwt", &k.record)))
            .chain(slots.wit.iter().map(|k| of("wit", &k.record)))
            .collect()
    }

    fn publish(&self) {
        let bundle = {
            let slots = self.slots.read().expect("CA lock");
            bundle::derive(&self.config, self.upstream.as_ref(), &slots)
        };
        self.local_bundle.send_if_modified(|current| {
            if **current == bundle {
                false
            } else {
                *current = Arc::new(bundle);
                true
            }
        });
    }

    /// Signs an X509-SVID for `subject`.
    pub fn sign_x509_svid(
        &self,
        subject: SvidSubject<'_>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<SignedX509, CaError> {
        let slots = self.slots.read().expect("CA lock");
        signing::x509_svid(
            &slots.x509,
            self.upstream.as_ref(),
            &self.serial_key,
            subject,
            ttl,
            whole_seconds(now),
        )
    }

    /// Signs a JWT-SVID for `spiffe_id` and `audience`, naming `owner`
    /// when the workload has one.
    pub fn sign_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        owner: Option<&OwnerBinding>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<SignedJwt, CaError> {
        let slots = self.slots.read().expect("CA lock");
        signing::jwt_svid(
            &slots.jwt,
            self.config.jwt_issuer.as_deref(),
            spiffe_id,
            audience,
            owner,
            ttl,
            whole_seconds(now),
        )
    }

    /// Signs a WIT-SVID binding `cnf_jwk` (the workload's public key, with
    /// the `alg` its proofs use) to `spiffe_id`, naming `owner` when the
    /// workload has one.
    pub fn sign_wit_svid(
        &self,
        spiffe_id: &SpiffeId,
        cnf_jwk: Jwk,
        owner: Option<&OwnerBinding>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<SignedJwt, CaError> {
        let slots = self.slots.read().expect("CA lock");
        signing::wit_svid(
            &slots.wit,
            self.config.wit_issuer.clone(),
            spiffe_id,
            cnf_jwk,
            owner,
            ttl,
            whole_seconds(now),
        )
    }

    /// One CRL per X.509 authority still valid at `now`, listing the
    /// serials of every `revoked` counter under it, numbered `number`,
    /// valid until `next_update`.
    pub fn sign_crls(
        &self,
        revoked: &[RevokedCounters],
        number: u64,
        now: SystemTime,
        next_update: SystemTime,
    ) -> Result<Vec<SignedCrl>, CaError> {
        let slots = self.slots.read().expect("CA lock");
        crl::sign(
            &slots.x509,
            &self.serial_key,
            revoked,
            number,
            whole_seconds(now),
            whole_seconds(next_update),
        )
    }

    /// Signs the revocation list (`workload_api::revocation`) with the
    /// active WIT key, which every WIT verifier of the domain holds.
    pub fn sign_revocation_list(
        &self,
        claims: &workload_api::revocation::RevocationClaims,
    ) -> Result<String, CaError> {
        let slots = self.slots.read().expect("CA lock");
        let key = slots::active(&slots.wit).ok_or(CaError::NoActiveAuthority("WIT-SVID"))?;
        workload_api::revocation::sign(
            claims,
            &key.record.id,
            key.key.key_type().jws_algorithm(),
            key.key.jws_key(),
        )
        .map_err(CaError::Revocations)
    }

    /// The X.509 authorities still valid at `now` (those with a CRL): each
    /// one's id and when it became valid (Unix seconds).
    pub fn valid_x509_authorities(&self, now: SystemTime) -> Vec<(String, i64)> {
        let now = unix_secs(now);
        let slots = self.slots.read().expect("CA lock");
        slots
            .x509
            .iter()
            .filter(|a| a.record.not_after > now)
            .map(|a| (a.record.id.clone(), a.record.not_before))
            .collect()
    }

    /// The expiry of the active X.509 CA, if any.
    pub fn active_x509_not_after(&self) -> Option<SystemTime> {
        let slots = self.slots.read().expect("CA lock");
        slots::active(&slots.x509).map(|a| from_unix_secs(a.record.not_after))
    }

    /// The next moment at which [`Ca::rotate`] has something to do.
    pub fn next_rotation_at(&self) -> Option<SystemTime> {
        self.slots.read().expect("CA lock").next_rotation_at()
    }
}

/// Keys and credentials carry whole seconds (the journal and JWT `exp`), so
/// time is cut to them first and every comparison agrees.
fn whole_seconds(t: SystemTime) -> SystemTime {
    from_unix_secs(unix_secs(t))
}

/// A key's place in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Published in the bundle, not yet signing.
    Prepared,
    Active,
    /// No longer signing; published until it expires.
    Retired,
}

/// One CA, JWT-SVID or WIT key: `kind` is `x509`, `jwt` or `wit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    pub kind: &'static str,
    pub id: String,
    pub status: KeyStatus,
    pub not_before: i64,
    pub not_after: i64,
}
