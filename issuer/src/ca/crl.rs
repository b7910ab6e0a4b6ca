//! Certificate revocation lists (RFC 5280 section 5): one per X.509
//! authority that may still have valid SVIDs out, signed by that authority,
//! listing the revoked serials it signed. Revocation here means an owner
//! was revoked (reason privilegeWithdrawn) or a delegating entry was
//! deleted.

use std::time::SystemTime;

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};

use super::error::CaError;
use super::slots::X509Authority;
use crate::clock::{from_unix_secs, unix_secs};

/// A revoked X509-SVID: its serial (hex), the id of the authority that
/// signed it, and when it was revoked (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSerial {
    pub serial_hex: String,
    pub authority_id: String,
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
    revoked: &[RevokedSerial],
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
                .filter(|r| r.authority_id == authority.record.id)
                .map(revoked_cert)
                .collect::<Result<Vec<_>, _>>()?;
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

fn revoked_cert(revoked: &RevokedSerial) -> Result<RevokedCertParams, CaError> {
    let serial = hex::decode(&revoked.serial_hex).map_err(|_| CaError::CorruptSerial {
        serial: revoked.serial_hex.clone(),
    })?;
    Ok(RevokedCertParams {
        serial_number: SerialNumber::from_slice(&serial),
        revocation_time: from_unix_secs(revoked.revoked_at).into(),
        reason_code: Some(RevocationReason::PrivilegeWithdrawn),
        invalidity_date: None,
    })
}
