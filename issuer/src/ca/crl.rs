//! Certificate revocation lists (RFC 5280 section 5): one per X.509
//! authority that may still have valid SVIDs out, signed by that authority,
//! listing the serials of revoked owner-bound entries under it: every
//! counter below each entry's reservation ([`super::serials`]). Revocation
//! here means an owner was revoked (reason privilegeWithdrawn) or an entry
//! bound to one was deleted.

use std::time::SystemTime;

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};

use super::error::CaError;
use super::serials::{SerialCounter, SerialKey};
use super::slots::X509Authority;
use crate::clock::{from_unix_secs, unix_secs};

/// A revoked owner-bound entry: every serial derived for it below
/// `reserved` is revoked, as of `revoked_at` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCounters {
    pub entry_id: String,
    pub reserved: u64,
    pub revoked_at: i64,
}

/// A CRL and the authority that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCrl {
    pub authority_id: String,
    pub der: Vec<u8>,
}

/// Signs a CRL with every authority still valid at `now`, numbered
/// `number` and valid until `next_update`.
pub(super) fn sign(
    authorities: &[X509Authority],
    serial_key: &SerialKey,
    revoked: &[RevokedCounters],
    number: u64,
    now: SystemTime,
    next_update: SystemTime,
) -> Result<Vec<SignedCrl>, CaError> {
    let now_secs = unix_secs(now);
    authorities
        .iter()
        .filter(|a| a.record.not_after > now_secs)
        .map(|authority| {
            let revoked_certs = revoked
                .iter()
                .flat_map(|r| {
                    (0..r.reserved).map(move |counter| {
                        let serial = serial_key.serial(
                            &authority.record.id,
                            SerialCounter {
                                entry_id: &r.entry_id,
                                counter,
                            },
                        );
                        revoked_cert(&serial, r.revoked_at)
                    })
                })
                .collect();
            let params = CertificateRevocationListParams {
                this_update: now.into(),
                next_update: next_update.into(),
                crl_number: SerialNumber::from(number),
                issuing_distribution_point: None,
                revoked_certs,
                key_identifier_method: KeyIdMethod::Sha256,
            };
            let crl = params.signed_by(&authority.issuer)?;
            Ok(SignedCrl {
                authority_id: authority.record.id.clone(),
                der: crl.der().to_vec(),
            })
        })
        .collect()
}

fn revoked_cert(serial: &[u8], revoked_at: i64) -> RevokedCertParams {
    RevokedCertParams {
        serial_number: SerialNumber::from_slice(serial),
        revocation_time: from_unix_secs(revoked_at).into(),
        reason_code: Some(RevocationReason::PrivilegeWithdrawn),
        invalidity_date: None,
    }
}
