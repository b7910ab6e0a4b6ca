//! The owner `up` registers for the invoking user: an Ed25519 key kept in
//! `<data-dir>/owner/owner.jwk` (0600, in a 0700 directory), registered at
//! the embedded issuer as `spiffe://<td>/owner/<user>`, and the consent it
//! signs so the user's entry, and so every credential of it, is bound to
//! that owner. The private key never leaves the file and this process.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::admin::admin_client::AdminClient;
use proto::admin::{EntryFields, OwnerId, RegisterOwnerRequest};
use proto::issuer::EntryOwner;
use tonic::transport::Channel;
use workload_api::consent::{self, ConsentClaims};
use workload_api::jwk::Algorithm;
use workload_api::keypair::KeyPair;

use super::UpError;

/// How long a consent `up` signs is valid.
pub(super) const CONSENT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// A consent that expires sooner than this is replaced.
pub(super) const RENEW_BEFORE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The key file, relative to the data directory.
const KEY_FILE: &str = "owner/owner.jwk";

/// The local user's owner: its id, and the key that signs its consent.
pub(super) struct LocalOwner {
    pub(super) id: String,
    pub(super) key_path: PathBuf,
    thumbprint: String,
    key: KeyPair,
}

/// What to do with an entry's current binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Binding {
    /// Bound by this owner's key, consent good for a while yet.
    Current,
    /// Unbound, or its consent is for something else or lapses soon: sign anew.
    Renew,
    /// Bound to another owner by an operator: not `up`'s to change.
    OtherOwner,
}

/// Seconds since the epoch.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The owner id of `user` in `trust_domain`.
pub(super) fn owner_id(trust_domain: &str, user: &str) -> String {
    format!("spiffe://{trust_domain}/owner/{user}")
}

impl LocalOwner {
    /// Loads the key in `data_dir`, or makes one, and makes sure the
    /// issuer knows it as `id`'s: registered if new, refused if the issuer
    /// holds another key for `id` or has revoked it.
    pub(super) async fn ensure(
        admin: &mut AdminClient<Channel>,
        data_dir: &Path,
        id: String,
    ) -> Result<Self, UpError> {
        let key_path = data_dir.join(KEY_FILE);
        let key = load_or_generate(&key_path)?;
        let thumbprint = key.public_key().thumbprint();
        let owner = LocalOwner {
            id,
            key_path,
            thumbprint,
            key,
        };
        owner.register(admin).await?;
        Ok(owner)
    }

    async fn register(&self, admin: &mut AdminClient<Channel>) -> Result<(), UpError> {
        let id = OwnerId {
            id: self.id.clone(),
        };
        let registered = match admin.get_owner(id).await {
            Ok(registered) => registered.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                let public_key = serde_json::to_string(&self.key.public_key().to_jwk())
                    .expect("a JWK serializes");
                admin
                    .register_owner(RegisterOwnerRequest {
                        id: self.id.clone(),
                        public_key,
                    })
                    .await
                    .map_err(|status| UpError::Admin {
                        action: "registering the owner",
                        status,
                    })?;
                tracing::info!(owner = %self.id, thumbprint = %self.thumbprint, "owner registered");
                return Ok(());
            }
            Err(status) => {
                return Err(UpError::Admin {
                    action: "reading the owner",
                    status,
                })
            }
        };
        if registered.revoked_at != 0 {
            return Err(UpError::OwnerRevoked {
                id: self.id.clone(),
                revoked_at: sigil_issuer::clock::rfc3339(registered.revoked_at),
            });
        }
        if registered.thumbprint != self.thumbprint {
            return Err(UpError::OwnerKeyMismatch {
                id: self.id.clone(),
                path: self.key_path.clone(),
                registered: registered.thumbprint,
                local: self.thumbprint.clone(),
            });
        }
        Ok(())
    }

    /// Whether `bound`, an entry's binding, is this owner's current
    /// consent for exactly `fields` at `now`.
    pub(super) fn binding(
        &self,
        fields: &EntryFields,
        bound: Option<&EntryOwner>,
        now: u64,
    ) -> Binding {
        let Some(bound) = bound else {
            return Binding::Renew;
        };
        if bound.id != self.id {
            return Binding::OtherOwner;
        }
        if bound.key_thumbprint != self.thumbprint {
            return Binding::Renew;
        }
        match consent::verify_ignoring_time(&bound.consent, self.key.public_key()) {
            Ok(claims) => {
                let covers = claims.spiffe_id.as_deref() == Some(fields.spiffe_id.as_str())
                    && claims.selectors == canonical_selectors(fields);
                if covers && claims.exp > now.saturating_add(RENEW_BEFORE.as_secs()) {
                    Binding::Current
                } else {
                    Binding::Renew
                }
            }
            Err(_) => Binding::Renew,
        }
    }

    /// Binds `fields` to this owner with a fresh consent for exactly their
    /// SPIFFE ID and selectors, valid [`CONSENT_VALIDITY`] from `now`.
    pub(super) fn bind(&self, fields: &mut EntryFields, now: u64) -> Result<(), UpError> {
        let claims = ConsentClaims {
            iss: self.id.clone(),
            spiffe_id: Some(fields.spiffe_id.clone()),
            spiffe_id_prefix: None,
            selectors: canonical_selectors(fields),
            iat: now,
            nbf: now,
            exp: now.saturating_add(CONSENT_VALIDITY.as_secs()),
            jti: hex::encode(sigil_issuer::ids::random_bytes::<16>()),
            delegation: None,
        };
        fields.consent = consent::sign(&claims, &self.key).map_err(|e| UpError::OwnerKey {
            path: self.key_path.clone(),
            reason: e.to_string(),
        })?;
        fields.owner_id = self.id.clone();
        Ok(())
    }
}

/// The entry's selectors as a consent lists them.
fn canonical_selectors(fields: &EntryFields) -> Vec<String> {
    let strings: Vec<String> = fields
        .selectors
        .iter()
        .map(|s| workload_api::selector::Selector::new(&s.r#type, &s.value).to_string())
        .collect();
    ConsentClaims::canonical_selectors(strings.iter().map(String::as_str))
}

/// The owner key at `path`, made (Ed25519, written 0600 in a 0700
/// directory) if there is none yet.
fn load_or_generate(path: &Path) -> Result<KeyPair, UpError> {
    let key_error = |reason: String| UpError::OwnerKey {
        path: path.to_owned(),
        reason,
    };
    let dir = path.parent().expect("the key file is inside a directory");
    workload_api::files::create_private_dir(dir).map_err(|e| key_error(e.to_string()))?;
    let uid = workload_api::files::current_uid().map_err(|e| key_error(e.to_string()))?;
    workload_api::files::check_private_dir(dir, uid).map_err(|e| key_error(e.to_string()))?;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = zeroize::Zeroizing::new(text);
            workload_api::owner::load_signing_key(&text).map_err(|e| key_error(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate(Algorithm::EdDSA).map_err(|e| key_error(e.to_string()))?;
            workload_api::files::write_private(path, key.to_jwk_json().as_bytes())
                .map_err(|e| key_error(e.to_string()))?;
            tracing::info!(path = %path.display(), "owner key generated");
            Ok(key)
        }
        Err(e) => Err(key_error(e.to_string())),
    }
}
