//! The CA's three key slots (X.509 authorities, JWT-SVID keys, WIT-SVID keys):
//! loading them from the journal, taking each through the lifecycle that
//! [`super::rotation`] decides, and dropping keys once they expire. Every
//! change is journaled before it is published, so a crash never publishes a
//! key that a restart would not find.

use std::path::Path;
use std::time::SystemTime;

use super::config::CaConfig;
use super::error::CaError;
use super::journal::{self, Journal, Record, Status};
use super::keys::{KeyType, SigningKey};
use super::rotation::{self, Step};
use super::upstream::Upstream;
use super::x509;
use crate::clock::unix_secs;

/// An X.509 CA certificate and the issuer that signs with its key.
pub(super) struct X509Authority {
    pub(super) record: Record,
    pub(super) cert_der: Vec<u8>,
    pub(super) issuer: rcgen::Issuer<'static, super::owner_extension::OidSwappingKey>,
}

/// A JWT-SVID or WIT-SVID signing key.
pub(super) struct JwtKey {
    pub(super) record: Record,
    pub(super) key: SigningKey,
}

/// Every key the CA holds, and the bundle sequence they were published under.
pub(super) struct Slots {
    pub(super) sequence: u64,
    pub(super) x509: Vec<X509Authority>,
    pub(super) jwt: Vec<JwtKey>,
    pub(super) wit: Vec<JwtKey>,
}

impl Slots {
    /// Loads the keys that `journal` lists from their files in `dir`.
    pub(super) fn load(journal: Journal, dir: &Path) -> Result<Self, CaError> {
        let mut slots = Slots {
            sequence: journal.sequence,
            x509: Vec::new(),
            jwt: Vec::new(),
            wit: Vec::new(),
        };
        for record in journal.x509 {
            let key =
                SigningKey::load(&journal::key_path(dir, "x509", &record.id), record.key_type)?;
            let cert_der = record
                .certificate_der()
                .ok_or_else(|| CaError::MissingCertificate {
                    path: journal::journal_path(dir),
                    id: record.id.clone(),
                })?;
            let issuer = x509::issuer_for(&cert_der, &key)?;
            slots.x509.push(X509Authority {
                record,
                cert_der,
                issuer,
            });
        }
        for (kind, records, keys) in [
            ("jwt", journal.jwt, &mut slots.jwt),
            ("wit", journal.wit, &mut slots.wit),
        ] {
            for record in records {
                let key =
                    SigningKey::load(&journal::key_path(dir, kind, &record.id), record.key_type)?;
                keys.push(JwtKey { record, key });
            }
        }
        Ok(slots)
    }

    /// Moves every key through its lifecycle for `now`; when anything changed,
    /// bumps the sequence and writes the journal. Returns whether it changed.
    pub(super) fn rotate(
        &mut self,
        config: &CaConfig,
        upstream: Option<&Upstream>,
        now: SystemTime,
    ) -> Result<bool, CaError> {
        let mut changed = rotate_slot(&mut self.x509, "x509", now, |status| {
            new_x509_authority(config, upstream, now, status)
        })?;
        for (kind, keys, key_type) in [
            ("jwt", &mut self.jwt, config.jwt_key_type),
            ("wit", &mut self.wit, config.wit_key_type),
        ] {
            changed |= rotate_slot(keys, kind, now, |status| {
                new_jwt_key(config, kind, key_type, now, status)
            })?;
        }
        // Each prune runs, whatever the others did.
        let pruned = [
            prune_slot(&mut self.x509, &config.dir, "x509", now),
            prune_slot(&mut self.jwt, &config.dir, "jwt", now),
            prune_slot(&mut self.wit, &config.dir, "wit", now),
        ];
        changed |= pruned.contains(&true);
        if changed {
            self.sequence += 1;
            journal::write(&config.dir, &self.journal())?;
        }
        Ok(changed)
    }

    fn journal(&self) -> Journal {
        Journal {
            sequence: self.sequence,
            x509: self.x509.iter().map(|a| a.record.clone()).collect(),
            jwt: self.jwt.iter().map(|k| k.record.clone()).collect(),
            wit: self.wit.iter().map(|k| k.record.clone()).collect(),
        }
    }

    /// The next moment at which [`Slots::rotate`] has something to do.
    pub(super) fn next_rotation_at(&self) -> Option<SystemTime> {
        [
            next_change(&self.x509),
            next_change(&self.jwt),
            next_change(&self.wit),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// A journaled key: an X.509 authority or a JWT key.
pub(super) trait Journaled {
    fn record(&self) -> &Record;
    fn record_mut(&mut self) -> &mut Record;
}

impl Journaled for X509Authority {
    fn record(&self) -> &Record {
        &self.record
    }
    fn record_mut(&mut self) -> &mut Record {
        &mut self.record
    }
}

impl Journaled for JwtKey {
    fn record(&self) -> &Record {
        &self.record
    }
    fn record_mut(&mut self) -> &mut Record {
        &mut self.record
    }
}

/// The key of a slot that signs now.
pub(super) fn active<T: Journaled>(slot: &[T]) -> Option<&T> {
    slot.iter().find(|k| k.record().status == Status::Active)
}

/// Takes one slot one step through its lifecycle; `create` makes a new key
/// with the given status. Returns whether anything changed.
fn rotate_slot<T: Journaled>(
    slot: &mut Vec<T>,
    kind: &'static str,
    now: SystemTime,
    create: impl FnOnce(Status) -> Result<T, CaError>,
) -> Result<bool, CaError> {
    let find = |status| {
        slot.iter()
            .find(|k| k.record().status == status)
            .map(|k| k.record().lifetime())
    };
    let step = rotation::next_step(
        now,
        find(Status::Active).as_ref(),
        find(Status::Prepared).as_ref(),
    );
    match step {
        Step::Idle => return Ok(false),
        Step::Bootstrap => {
            retire(slot.iter_mut().map(|k| k.record_mut()));
            let key = create(Status::Active)?;
            tracing::info!(kind, id = %key.record().id, not_after = %crate::clock::rfc3339(key.record().not_after), "key created and active");
            slot.push(key);
        }
        Step::Prepare => {
            let key = create(Status::Prepared)?;
            tracing::info!(kind, id = %key.record().id, not_after = %crate::clock::rfc3339(key.record().not_after), "key prepared and published");
            slot.push(key);
        }
        Step::Activate => {
            retire(slot.iter_mut().map(|k| k.record_mut()));
            let next = slot
                .iter_mut()
                .find(|k| k.record().status == Status::Prepared)
                .expect("activate only with a prepared key");
            next.record_mut().status = Status::Active;
            tracing::info!(kind, id = %next.record().id, "key activated");
        }
    }
    Ok(true)
}

/// Removes a slot's expired keys, and their key files: nothing they signed
/// is still valid, because nothing outlives its signer.
fn prune_slot<T: Journaled>(
    slot: &mut Vec<T>,
    dir: &Path,
    kind: &'static str,
    now: SystemTime,
) -> bool {
    let before = slot.len();
    slot.retain(|k| {
        let keep = !k.record().lifetime().expired(now);
        if !keep {
            tracing::info!(kind, id = %k.record().id, "expired key removed from the bundle");
            let _ = std::fs::remove_file(journal::key_path(dir, kind, &k.record().id));
        }
        keep
    });
    before != slot.len()
}

fn retire<'a>(records: impl Iterator<Item = &'a mut Record>) {
    for record in records {
        if record.status == Status::Active {
            record.status = Status::Retired;
        }
    }
}

/// When a slot next needs a step: its successor's preparation or activation,
/// or a key's expiry.
fn next_change<T: Journaled>(slot: &[T]) -> Option<SystemTime> {
    let records = || slot.iter().map(Journaled::record);
    let prepared = records().any(|r| r.status == Status::Prepared);
    let step = active(slot).map(|active| {
        let life = active.record().lifetime();
        if prepared {
            rotation::activate_at(&life)
        } else {
            rotation::prepare_at(&life)
        }
    });
    step.into_iter()
        .chain(records().map(|r| r.lifetime().not_after))
        .min()
}

/// A new CA certificate, self-signed or signed by `upstream`, whose lifetime
/// never outlasts the upstream CA's.
fn new_x509_authority(
    config: &CaConfig,
    upstream: Option<&Upstream>,
    now: SystemTime,
    status: Status,
) -> Result<X509Authority, CaError> {
    let key_type = config.x509_key_type;
    let key = SigningKey::generate(key_type)?;
    let id = hex::encode(crate::ids::random_bytes::<8>());
    let mut not_after = now + config.ca_ttl;
    if let Some(upstream) = upstream {
        if not_after > upstream.not_after {
            tracing::warn!(
                requested = unix_secs(not_after),
                granted = unix_secs(upstream.not_after),
                "CA lifetime shortened to the upstream CA's expiry"
            );
            not_after = upstream.not_after;
        }
    }
    let params = x509::ca_params(&config.trust_domain, now, not_after)?;
    let cert = match upstream {
        Some(upstream) => params.signed_by(key.rcgen(), &upstream.issuer),
        None => params.self_signed(key.rcgen()),
    }?;
    let cert_der = cert.der().to_vec();
    key.save(&journal::key_path(&config.dir, "x509", &id))?;
    let issuer = x509::issuer_for(&cert_der, &key)?;
    Ok(X509Authority {
        record: Record {
            id,
            status,
            key_type,
            not_before: unix_secs(now),
            not_after: unix_secs(not_after),
            certificate: Some(Record::encode_certificate(&cert_der)),
        },
        cert_der,
        issuer,
    })
}

/// A new JWT-SVID or WIT-SVID signing key (`kind` names its file).
fn new_jwt_key(
    config: &CaConfig,
    kind: &'static str,
    key_type: KeyType,
    now: SystemTime,
    status: Status,
) -> Result<JwtKey, CaError> {
    let key = SigningKey::generate(key_type)?;
    let record = Record {
        id: hex::encode(crate::ids::random_bytes::<16>()),
        status,
        key_type,
        not_before: unix_secs(now),
        not_after: unix_secs(now + config.ca_ttl),
        certificate: None,
    };
    key.save(&journal::key_path(&config.dir, kind, &record.id))?;
    Ok(JwtKey { record, key })
}
