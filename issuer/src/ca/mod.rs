//! The certificate authority: X.509 CA certificates and JWT signing keys, their
//! rotation, and the SVIDs they sign.
//!
//! State lives in `<data_dir>/ca/`: one PKCS#8 file per key (0600) and a journal
//! (`journal.json`) recording each key's status and lifetime, so a restarted
//! issuer resumes rotation exactly where it stopped. The trust bundle is derived
//! from the journal: every prepared, active or retired key that has not expired.

pub mod keys;
pub mod rotation;
mod x509;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use workload_api::bundle::{Bundle, JwtAuthority};
use workload_api::id::{SpiffeId, TrustDomain};
use workload_api::jwk::Jwk;
use workload_api::jwtsvid::{self, Audience, Claims};
use workload_api::wimse::wit::{self, Confirmation, WitClaims};
use zeroize::Zeroizing;

use crate::clock::{from_unix_secs, unix_secs};
use crate::csr::SubjectKey;
use keys::{KeyError, KeyType, SigningKey};
use rotation::{Lifetime, Step};

/// Why the CA could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("CA journal {path}: {reason}")]
    Journal { path: String, reason: String },
    #[error("upstream CA: {0}")]
    Upstream(String),
    #[error("certificate could not be built: {0}")]
    Certificate(String),
    #[error("no active {0} authority")]
    NoActiveAuthority(&'static str),
    #[error("JWT signing failed: {0}")]
    Jwt(String),
}

/// A CA certificate and key from disk that signs Sigil's CA as an intermediate.
#[derive(Debug, Clone)]
pub struct UpstreamCa {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Roots to publish; defaults to the self-signed certificates of `cert_file`,
    /// or its last certificate.
    pub bundle_file: Option<PathBuf>,
}

/// CA settings.
#[derive(Debug, Clone)]
pub struct CaConfig {
    pub trust_domain: TrustDomain,
    pub dir: PathBuf,
    pub ca_ttl: Duration,
    pub x509_key_type: KeyType,
    pub jwt_key_type: KeyType,
    pub wit_key_type: KeyType,
    /// The `iss` claim of WIT-SVIDs.
    pub wit_issuer: Option<String>,
    pub upstream: Option<UpstreamCa>,
    pub refresh_hint: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Prepared,
    Active,
    Retired,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    status: Status,
    key_type: KeyType,
    not_before: i64,
    not_after: i64,
    /// The CA certificate, for X.509 authorities (base64 DER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate: Option<String>,
}

impl Record {
    fn lifetime(&self) -> Lifetime {
        Lifetime {
            not_before: from_unix_secs(self.not_before),
            not_after: from_unix_secs(self.not_after),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    sequence: u64,
    x509: Vec<Record>,
    jwt: Vec<Record>,
    /// WIT signing keys; absent from journals written before WITs existed.
    #[serde(default)]
    wit: Vec<Record>,
}

struct X509Authority {
    record: Record,
    cert_der: Vec<u8>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

struct JwtKey {
    record: Record,
    key: SigningKey,
}

struct State {
    sequence: u64,
    x509: Vec<X509Authority>,
    jwt: Vec<JwtKey>,
    wit: Vec<JwtKey>,
}

/// An X509-SVID the CA signed.
#[derive(Debug, Clone)]
pub struct SignedX509 {
    /// Leaf first, then the CA certificate(s) up to (not including) the root.
    pub chain: Vec<Vec<u8>>,
    pub serial_hex: String,
    pub not_after: SystemTime,
    pub shortened: bool,
}

/// A JWT-SVID the CA signed.
#[derive(Debug, Clone)]
pub struct SignedJwt {
    pub token: String,
    pub expires_at: SystemTime,
    pub shortened: bool,
}

struct Upstream {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    not_after: SystemTime,
    /// Upstream certificates to serve after Sigil's CA (intermediates only).
    chain: Vec<Vec<u8>>,
    roots: Vec<Vec<u8>>,
}

/// The certificate authority.
pub struct Ca {
    config: CaConfig,
    upstream: Option<Upstream>,
    state: RwLock<State>,
    bundle: watch::Sender<Arc<Bundle>>,
}

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
        crate::server::create_private_dir(&config.dir).map_err(|e| CaError::Journal {
            path: config.dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let upstream = config.upstream.as_ref().map(load_upstream).transpose()?;
        let journal = read_journal(&config)?;
        let mut state = State {
            sequence: journal.sequence,
            x509: Vec::new(),
            jwt: Vec::new(),
            wit: Vec::new(),
        };
        for record in journal.x509 {
            let key = SigningKey::load(&key_path(&config, "x509", &record.id), record.key_type)?;
            let cert_der = record
                .certificate
                .as_deref()
                .and_then(base64_decode)
                .ok_or_else(|| CaError::Journal {
                    path: journal_path(&config).display().to_string(),
                    reason: format!("x509 authority {} has no certificate", record.id),
                })?;
            let issuer = x509::issuer_for(&cert_der, &key)?;
            state.x509.push(X509Authority {
                record,
                cert_der,
                issuer,
            });
        }
        for (kind, records, keys) in [
            ("jwt", journal.jwt, &mut state.jwt),
            ("wit", journal.wit, &mut state.wit),
        ] {
            for record in records {
                let key = SigningKey::load(&key_path(&config, kind, &record.id), record.key_type)?;
                keys.push(JwtKey { record, key });
            }
        }
        let initial = Arc::new(Bundle::new(config.trust_domain.clone()));
        let (bundle, _) = watch::channel(initial);
        let ca = Ca {
            config,
            upstream,
            state: RwLock::new(state),
            bundle,
        };
        ca.rotate(now)?;
        ca.publish();
        Ok(ca)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Arc<Bundle> {
        self.bundle.borrow().clone()
    }

    /// Sees every new bundle.
    pub fn subscribe_bundle(&self) -> watch::Receiver<Arc<Bundle>> {
        self.bundle.subscribe()
    }

    /// Moves every key through its lifecycle for `now`. Returns whether the
    /// published bundle changed.
    pub fn rotate(&self, now: SystemTime) -> Result<bool, CaError> {
        let now = whole_seconds(now);
        let mut changed = false;
        {
            let mut state = self.state.write().expect("CA lock");
            changed |= self.rotate_x509(&mut state, now)?;
            changed |= self.rotate_keys(&mut state.jwt, "jwt", self.config.jwt_key_type, now)?;
            changed |= self.rotate_keys(&mut state.wit, "wit", self.config.wit_key_type, now)?;
            changed |= self.prune(&mut state, now);
            if changed {
                state.sequence += 1;
                self.save(&state)?;
            }
        }
        if changed {
            self.publish();
        }
        Ok(changed)
    }

    fn rotate_x509(&self, state: &mut State, now: SystemTime) -> Result<bool, CaError> {
        rotate_slots(&mut state.x509, "x509", now, |status| {
            self.new_x509_authority(now, status)
        })
    }

    /// Rotates JWT-SVID or WIT-SVID signing keys (`kind` names the key files).
    fn rotate_keys(
        &self,
        keys: &mut Vec<JwtKey>,
        kind: &'static str,
        key_type: KeyType,
        now: SystemTime,
    ) -> Result<bool, CaError> {
        rotate_slots(keys, kind, now, |status| {
            let key = SigningKey::generate(key_type)?;
            let record = Record {
                id: hex::encode(crate::ids::random_bytes::<16>()),
                status,
                key_type,
                not_before: unix_secs(now),
                not_after: unix_secs(now + self.config.ca_ttl),
                certificate: None,
            };
            key.save(&key_path(&self.config, kind, &record.id))?;
            Ok(JwtKey { record, key })
        })
    }

    /// Drops keys whose lifetime is over: nothing they signed is still valid.
    fn prune(&self, state: &mut State, now: SystemTime) -> bool {
        let x509 = prune_slots(&mut state.x509, &self.config, "x509", now);
        let jwt = prune_slots(&mut state.jwt, &self.config, "jwt", now);
        let wit = prune_slots(&mut state.wit, &self.config, "wit", now);
        x509 || jwt || wit
    }

    fn new_x509_authority(
        &self,
        now: SystemTime,
        status: Status,
    ) -> Result<X509Authority, CaError> {
        let key_type = self.config.x509_key_type;
        let key = SigningKey::generate(key_type)?;
        let id = hex::encode(crate::ids::random_bytes::<8>());
        let mut not_after = now + self.config.ca_ttl;
        if let Some(upstream) = &self.upstream {
            if not_after > upstream.not_after {
                tracing::warn!(
                    requested = unix_secs(not_after),
                    granted = unix_secs(upstream.not_after),
                    "CA lifetime shortened to the upstream CA's expiry"
                );
                not_after = upstream.not_after;
            }
        }
        let params = x509::ca_params(&self.config.trust_domain, now, not_after)?;
        let cert = match &self.upstream {
            Some(upstream) => params.signed_by(key.rcgen(), &upstream.issuer),
            None => params.self_signed(key.rcgen()),
        }
        .map_err(|e| CaError::Certificate(e.to_string()))?;
        let cert_der = cert.der().to_vec();
        key.save(&key_path(&self.config, "x509", &id))?;
        let issuer = x509::issuer_for(&cert_der, &key)?;
        Ok(X509Authority {
            record: Record {
                id,
                status,
                key_type,
                not_before: unix_secs(now),
                not_after: unix_secs(not_after),
                certificate: Some(base64_encode(&cert_der)),
            },
            cert_der,
            issuer,
        })
    }

    fn save(&self, state: &State) -> Result<(), CaError> {
        let journal = Journal {
            sequence: state.sequence,
            x509: state.x509.iter().map(|a| a.record.clone()).collect(),
            jwt: state.jwt.iter().map(|k| k.record.clone()).collect(),
            wit: state.wit.iter().map(|k| k.record.clone()).collect(),
        };
        let path = journal_path(&self.config);
        let bytes = serde_json::to_vec_pretty(&journal).expect("journal serializes");
        keys::write_private(&path, &bytes).map_err(|e| CaError::Journal {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    fn publish(&self) {
        let state = self.state.read().expect("CA lock");
        let mut bundle = Bundle::new(self.config.trust_domain.clone());
        match &self.upstream {
            Some(upstream) => upstream
                .roots
                .iter()
                .for_each(|root| bundle.add_x509_authority(root.clone())),
            None => state
                .x509
                .iter()
                .for_each(|a| bundle.add_x509_authority(a.cert_der.clone())),
        }
        let authority = |key: &JwtKey| JwtAuthority {
            kid: key.record.id.clone(),
            key: key.key.public_key().clone(),
        };
        state
            .jwt
            .iter()
            .for_each(|key| bundle.add_jwt_authority(authority(key)));
        state
            .wit
            .iter()
            .for_each(|key| bundle.add_wit_authority(authority(key)));
        bundle.set_sequence(state.sequence);
        bundle.set_refresh_hint_secs(Some(self.config.refresh_hint.as_secs()));
        self.bundle.send_if_modified(|current| {
            if **current == bundle {
                false
            } else {
                *current = Arc::new(bundle);
                true
            }
        });
    }

    /// Signs an X509-SVID for `spiffe_id` around `subject_key`.
    pub fn sign_x509_svid(
        &self,
        subject_key: &SubjectKey,
        spiffe_id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<SignedX509, CaError> {
        let now = whole_seconds(now);
        let state = self.state.read().expect("CA lock");
        let authority = state
            .x509
            .iter()
            .find(|a| a.record.status == Status::Active)
            .ok_or(CaError::NoActiveAuthority("x509"))?;
        let (not_after, shortened) =
            rotation::capped_expiry(now, ttl, from_unix_secs(authority.record.not_after));
        if shortened {
            tracing::warn!(
                spiffe_id = %spiffe_id,
                requested_ttl_secs = ttl.as_secs(),
                granted_ttl_secs = not_after.duration_since(now).unwrap_or_default().as_secs(),
                "X509-SVID lifetime shortened to the signing CA's expiry"
            );
        }
        let serial = crate::ids::serial_number();
        let params = x509::svid_params(spiffe_id, dns_names, &serial, now, not_after)?;
        let cert = params
            .signed_by(subject_key, &authority.issuer)
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        let mut chain = vec![cert.der().to_vec()];
        if let Some(upstream) = &self.upstream {
            chain.push(authority.cert_der.clone());
            chain.extend(upstream.chain.iter().cloned());
        }
        Ok(SignedX509 {
            chain,
            serial_hex: hex::encode(serial),
            not_after,
            shortened,
        })
    }

    /// Signs a JWT-SVID. `extra` claims are added beside the registered ones.
    pub fn sign_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<SignedJwt, CaError> {
        let now = whole_seconds(now);
        let state = self.state.read().expect("CA lock");
        let (key, expires_at, shortened) = active_key(&state.jwt, "JWT-SVID", spiffe_id, ttl, now)?;
        let claims = Claims {
            sub: spiffe_id.to_string(),
            aud: Audience::Many(audience.to_vec()),
            exp: unix_secs(expires_at) as u64,
            iat: Some(unix_secs(now) as u64),
            extra: Default::default(),
        };
        let token = jwtsvid::sign(
            &claims,
            &key.record.id,
            key.key.key_type().jws_algorithm(),
            key.key.jws_key(),
        )
        .map_err(|e| CaError::Jwt(e.to_string()))?;
        Ok(SignedJwt {
            token,
            expires_at,
            shortened,
        })
    }

    /// Signs a WIT-SVID binding `cnf_jwk` (the workload's public key, with
    /// the `alg` its proofs use) to `spiffe_id`.
    pub fn sign_wit_svid(
        &self,
        spiffe_id: &SpiffeId,
        cnf_jwk: Jwk,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<SignedJwt, CaError> {
        let now = whole_seconds(now);
        let state = self.state.read().expect("CA lock");
        let (key, expires_at, shortened) = active_key(&state.wit, "WIT-SVID", spiffe_id, ttl, now)?;
        let claims = WitClaims {
            sub: spiffe_id.to_string(),
            iss: self.config.wit_issuer.clone(),
            iat: unix_secs(now) as u64,
            nbf: Some(unix_secs(now) as u64),
            exp: unix_secs(expires_at) as u64,
            jti: base64_url(&crate::ids::random_bytes::<16>()),
            cnf: Confirmation { jwk: cnf_jwk },
        };
        let token = wit::sign(
            &claims,
            &key.record.id,
            key.key.key_type().jws_algorithm(),
            key.key.jws_key(),
        )
        .map_err(CaError::Jwt)?;
        Ok(SignedJwt {
            token,
            expires_at,
            shortened,
        })
    }

    /// The expiry of the active X.509 CA, if any.
    pub fn active_x509_not_after(&self) -> Option<SystemTime> {
        let state = self.state.read().expect("CA lock");
        state
            .x509
            .iter()
            .find(|a| a.record.status == Status::Active)
            .map(|a| from_unix_secs(a.record.not_after))
    }

    /// The next moment at which [`Ca::rotate`] has something to do.
    pub fn next_rotation_at(&self) -> Option<SystemTime> {
        let state = self.state.read().expect("CA lock");
        let mut times = Vec::new();
        for records in [
            state.x509.iter().map(|a| &a.record).collect::<Vec<_>>(),
            state.jwt.iter().map(|k| &k.record).collect::<Vec<_>>(),
            state.wit.iter().map(|k| &k.record).collect::<Vec<_>>(),
        ] {
            let active = records.iter().find(|r| r.status == Status::Active);
            let prepared = records.iter().any(|r| r.status == Status::Prepared);
            if let Some(active) = active {
                let life = active.lifetime();
                times.push(if prepared {
                    rotation::activate_at(&life)
                } else {
                    rotation::prepare_at(&life)
                });
            }
            times.extend(records.iter().map(|r| r.lifetime().not_after));
        }
        times.into_iter().min()
    }
}

/// The active key of `keys` and the expiry of a token it signs now for
/// `ttl`: capped to the key's own expiry, with a warning naming the SPIFFE
/// ID when it is.
fn active_key<'k>(
    keys: &'k [JwtKey],
    what: &'static str,
    spiffe_id: &SpiffeId,
    ttl: Duration,
    now: SystemTime,
) -> Result<(&'k JwtKey, SystemTime, bool), CaError> {
    let key = keys
        .iter()
        .find(|k| k.record.status == Status::Active)
        .ok_or(CaError::NoActiveAuthority(what))?;
    let (expires_at, shortened) =
        rotation::capped_expiry(now, ttl, from_unix_secs(key.record.not_after));
    if shortened {
        tracing::warn!(
            spiffe_id = %spiffe_id,
            requested_ttl_secs = ttl.as_secs(),
            "{what} lifetime shortened to the signing key's expiry"
        );
    }
    Ok((key, expires_at, shortened))
}

/// A journaled key: an X.509 authority or a JWT key.
trait Slot {
    fn record(&self) -> &Record;
    fn record_mut(&mut self) -> &mut Record;
}

impl Slot for X509Authority {
    fn record(&self) -> &Record {
        &self.record
    }
    fn record_mut(&mut self) -> &mut Record {
        &mut self.record
    }
}

impl Slot for JwtKey {
    fn record(&self) -> &Record {
        &self.record
    }
    fn record_mut(&mut self) -> &mut Record {
        &mut self.record
    }
}

/// Takes one kind of key one step through its lifecycle; `create` makes a
/// new key with the given status. Returns whether anything changed.
fn rotate_slots<T: Slot>(
    slots: &mut Vec<T>,
    kind: &'static str,
    now: SystemTime,
    create: impl FnOnce(Status) -> Result<T, CaError>,
) -> Result<bool, CaError> {
    let find = |status| {
        slots
            .iter()
            .find(|s| s.record().status == status)
            .map(|s| s.record().lifetime())
    };
    let step = rotation::next_step(
        now,
        find(Status::Active).as_ref(),
        find(Status::Prepared).as_ref(),
    );
    match step {
        Step::Idle => return Ok(false),
        Step::Bootstrap => {
            retire(slots.iter_mut().map(|s| s.record_mut()));
            let slot = create(Status::Active)?;
            tracing::info!(kind, id = %slot.record().id, not_after = slot.record().not_after, "key created and active");
            slots.push(slot);
        }
        Step::Prepare => {
            let slot = create(Status::Prepared)?;
            tracing::info!(kind, id = %slot.record().id, not_after = slot.record().not_after, "key prepared and published");
            slots.push(slot);
        }
        Step::Activate => {
            retire(slots.iter_mut().map(|s| s.record_mut()));
            let next = slots
                .iter_mut()
                .find(|s| s.record().status == Status::Prepared)
                .expect("activate only with a prepared key");
            next.record_mut().status = Status::Active;
            tracing::info!(kind, id = %next.record().id, "key activated");
        }
    }
    Ok(true)
}

/// Removes expired keys of one kind, and their key files.
fn prune_slots<T: Slot>(
    slots: &mut Vec<T>,
    config: &CaConfig,
    kind: &'static str,
    now: SystemTime,
) -> bool {
    let before = slots.len();
    slots.retain(|s| {
        let keep = !s.record().lifetime().expired(now);
        if !keep {
            tracing::info!(kind, id = %s.record().id, "expired key removed from the bundle");
            let _ = std::fs::remove_file(key_path(config, kind, &s.record().id));
        }
        keep
    });
    before != slots.len()
}

fn retire<'a>(records: impl Iterator<Item = &'a mut Record>) {
    for record in records {
        if record.status == Status::Active {
            record.status = Status::Retired;
        }
    }
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    from_unix_secs(unix_secs(t))
}

fn journal_path(config: &CaConfig) -> PathBuf {
    config.dir.join("journal.json")
}

fn key_path(config: &CaConfig, kind: &str, id: &str) -> PathBuf {
    config.dir.join(format!("{kind}-{id}.key"))
}

fn read_journal(config: &CaConfig) -> Result<Journal, CaError> {
    let path = journal_path(config);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CaError::Journal {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
        Err(e) => Err(CaError::Journal {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

fn load_upstream(upstream: &UpstreamCa) -> Result<Upstream, CaError> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path)
            .map_err(|e| CaError::Upstream(format!("{}: {e}", path.display())))
    };
    let certs = pem_blocks(&read(&upstream.cert_file)?, "CERTIFICATE");
    let signing_cert = certs
        .first()
        .ok_or_else(|| {
            CaError::Upstream(format!(
                "{} has no certificate",
                upstream.cert_file.display()
            ))
        })?
        .clone();
    let keys = pem_blocks(&read(&upstream.key_file)?, "PRIVATE KEY");
    let key_der = keys.first().ok_or_else(|| {
        CaError::Upstream(format!(
            "{} has no PKCS#8 \"PRIVATE KEY\" block",
            upstream.key_file.display()
        ))
    })?;
    let key = SigningKey::from_pkcs8_any(Zeroizing::new(key_der.clone())).map_err(|_| {
        CaError::Upstream(format!(
            "{} is not a supported key",
            upstream.key_file.display()
        ))
    })?;
    let issuer = x509::issuer_for(&signing_cert, &key)?;
    let not_after = x509::not_after(&signing_cert)?;
    let self_signed = |der: &Vec<u8>| x509::is_self_signed(der).unwrap_or(false);
    let roots = match &upstream.bundle_file {
        Some(path) => pem_blocks(&read(path)?, "CERTIFICATE"),
        None => {
            let roots: Vec<Vec<u8>> = certs.iter().filter(|c| self_signed(c)).cloned().collect();
            if roots.is_empty() {
                vec![certs.last().expect("non-empty").clone()]
            } else {
                roots
            }
        }
    };
    let chain = certs
        .iter()
        .filter(|c| !roots.contains(c))
        .cloned()
        .collect();
    Ok(Upstream {
        issuer,
        not_after,
        chain,
        roots,
    })
}

/// Every PEM block with `label` in `text`, decoded.
pub fn pem_blocks(text: &str, label: &str) -> Vec<Vec<u8>> {
    pem::parse_many(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == label)
        .map(|p| p.into_contents())
        .collect()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;
    use workload_api::{jwtsvid, x509svid};

    const HOUR: Duration = Duration::from_secs(3600);

    /// When, and the X.509 chain, JWT-SVID and WIT-SVID issued then.
    type Issued = (SystemTime, Vec<Vec<u8>>, String, String);

    fn config(dir: &std::path::Path) -> CaConfig {
        CaConfig {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            dir: dir.to_path_buf(),
            ca_ttl: 6 * HOUR,
            x509_key_type: KeyType::EcP256,
            jwt_key_type: KeyType::EcP256,
            wit_key_type: KeyType::EcP256,
            wit_issuer: None,
            upstream: None,
            refresh_hint: Duration::from_secs(300),
        }
    }

    fn svid(ca: &Ca, now: SystemTime) -> Vec<Vec<u8>> {
        let key = rcgen::KeyPair::generate().unwrap();
        let public = workload_api::jwk::PublicKey::from_spki_der(
            &rcgen::PublicKeyData::subject_public_key_info(&key),
        )
        .unwrap();
        let id = SpiffeId::new("spiffe://example.org/web").unwrap();
        ca.sign_x509_svid(&SubjectKey::new(&public), &id, &[], HOUR, now)
            .unwrap()
            .chain
    }

    fn jwt(ca: &Ca, now: SystemTime) -> String {
        let id = SpiffeId::new("spiffe://example.org/web").unwrap();
        ca.sign_jwt_svid(&id, &["db".into()], Duration::from_secs(300), now)
            .unwrap()
            .token
    }

    fn wit(ca: &Ca, now: SystemTime) -> String {
        let id = SpiffeId::new("spiffe://example.org/web").unwrap();
        let workload =
            workload_api::keypair::KeyPair::generate(workload_api::jwk::Algorithm::ES256).unwrap();
        ca.sign_wit_svid(&id, workload.public_jwk(), Duration::from_secs(300), now)
            .unwrap()
            .token
    }

    /// Every credential still within its lifetime verifies against `bundle` at `now`.
    fn assert_all_verify(issued: &[Issued], bundle: &Bundle, now: SystemTime) {
        let shared = std::sync::Arc::new(bundle.clone());
        for (at, chain, token, wit_token) in issued {
            if now < *at + Duration::from_secs(300) {
                jwtsvid::validate(token, "db", |_| Some(bundle), now)
                    .unwrap_or_else(|e| panic!("JWT from {at:?} at {now:?}: {e}"));
                workload_api::wimse::wit::validate(
                    wit_token,
                    workload_api::wimse::Profile::Spiffe,
                    |_| Some(shared.clone()),
                    unix_secs(now) as u64,
                    0,
                )
                .unwrap_or_else(|e| panic!("WIT from {at:?} at {now:?}: {e}"));
            }
            if now < *at + HOUR {
                x509svid::verify_chain(chain, |_| Some(bundle), now)
                    .unwrap_or_else(|e| panic!("SVID from {at:?} at {now:?}: {e}"));
            }
        }
    }

    #[test]
    fn rotation_with_a_jumped_clock_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = Ca::open(config(dir.path()), start).unwrap();
        let first = ca.bundle();
        assert_eq!(first.x509_authorities().len(), 1);
        assert_eq!(first.jwt_authorities().len(), 1);
        assert_eq!(first.wit_authorities().len(), 1);

        let mut issued = vec![(start, svid(&ca, start), jwt(&ca, start), wit(&ca, start))];
        // Walk the clock in 30-minute steps across two full CA lifetimes,
        // restarting the issuer from disk halfway through.
        let mut now = start;
        let mut saw = (false, false, false);
        let mut ca = ca;
        for step in 1..=24 {
            now += HOUR / 2;
            if step == 9 {
                let sequence = ca.bundle().sequence();
                drop(ca);
                ca = Ca::open(config(dir.path()), now).unwrap();
                assert!(
                    ca.bundle().sequence() >= sequence,
                    "sequence survives restart"
                );
            }
            let before = ca.bundle();
            ca.rotate(now).unwrap();
            let bundle = ca.bundle();
            let n = bundle.x509_authorities().len();
            if n == 2 && before.x509_authorities().len() == 1 {
                saw.0 = true; // prepared and published before use
            }
            if before.sequence() != bundle.sequence() {
                assert!(bundle.sequence() > before.sequence());
            }
            let first_ca = &first.x509_authorities()[0];
            if before.x509_authorities().contains(first_ca)
                && !bundle.x509_authorities().contains(first_ca)
            {
                // The retired CA leaves the bundle only once it has expired.
                assert!(
                    now >= start + 6 * HOUR,
                    "retired CA dropped early at {now:?}"
                );
                saw.2 = true;
            }
            assert!(n <= 2, "at most the active key and one other are published");
            issued.push((now, svid(&ca, now), jwt(&ca, now), wit(&ca, now)));
            // Signed after activation by a different CA than the first?
            if issued.last().unwrap().1[0] != issued[0].1[0]
                && !first
                    .x509_authorities()
                    .contains(&bundle.x509_authorities()[0])
            {
                saw.1 = true;
            }
            assert_all_verify(&issued, &bundle, now);
        }
        assert!(
            saw.0 && saw.1 && saw.2,
            "prepare/activate/retire all happened: {saw:?}"
        );
    }

    #[test]
    fn svid_lifetime_is_capped_by_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut cfg = config(dir.path());
        cfg.ca_ttl = HOUR;
        let ca = Ca::open(cfg, start).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let public = workload_api::jwk::PublicKey::from_spki_der(
            &rcgen::PublicKeyData::subject_public_key_info(&key),
        )
        .unwrap();
        let id = SpiffeId::new("spiffe://example.org/web").unwrap();
        let signed = ca
            .sign_x509_svid(&SubjectKey::new(&public), &id, &[], 2 * HOUR, start)
            .unwrap();
        assert!(signed.shortened);
        assert_eq!(Some(signed.not_after), ca.active_x509_not_after());
    }

    #[test]
    fn keys_on_disk_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let _ca = Ca::open(config(dir.path()), SystemTime::now()).unwrap();
        let mut keys = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.path().extension().is_some_and(|e| e == "key") {
                keys += 1;
                assert_eq!(
                    entry.metadata().unwrap().permissions().mode() & 0o777,
                    0o600
                );
            }
        }
        // The X.509 CA key, the JWT-SVID key and the WIT-SVID key.
        assert_eq!(keys, 3);
    }
}
