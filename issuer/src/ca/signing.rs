//! Signing SVIDs with the active key of a slot: X509-SVIDs (X509-SVID.md
//! sections 2-4), JWT-SVIDs (JWT-SVID.md sections 2-3) and WIT-SVIDs
//! (draft-ietf-wimse-workload-creds, "The Workload Identity Token"; SPIFFE
//! WIT-SVID.md). No credential outlives the key that signs it, so every
//! lifetime is capped to its signer's.

use std::time::{Duration, SystemTime};

use workload_api::id::SpiffeId;
use workload_api::jwk::Jwk;
use workload_api::jwtsvid::{self, Audience, Claims};
use workload_api::owner::OwnerBinding;
use workload_api::wimse::wit::{self, Confirmation, WitClaims};

use super::error::CaError;
use super::owner_extension;
use super::rotation;
use super::serials::{SerialCounter, SerialKey};
use super::slots::{self, JwtKey, X509Authority};
use super::upstream::Upstream;
use super::x509;
use crate::clock::{from_unix_secs, unix_secs};
use crate::csr::SubjectKey;

/// An X509-SVID the CA signed.
#[derive(Debug, Clone)]
pub struct SignedX509 {
    /// Leaf first, then the CA certificate(s) up to (not including) the root.
    pub chain: Vec<Vec<u8>>,
    pub serial_hex: String,
    pub not_after: SystemTime,
    pub shortened: bool,
    /// The journal id of the X.509 authority that signed it: CRLs are per
    /// authority.
    pub authority_id: String,
}

/// A JWT-SVID (or WIT-SVID) the CA signed.
#[derive(Debug, Clone)]
pub struct SignedJwt {
    pub token: String,
    /// The token's `jti`, by which the event log names it.
    pub jti: String,
    pub expires_at: SystemTime,
    pub shortened: bool,
}

/// Whom an X509-SVID is for: the key it certifies, the SPIFFE ID and DNS
/// names it names, the owner binding it carries, if any, and, for an
/// owner-bound entry, the counter its serial is derived from (otherwise
/// the serial is random).
#[derive(Debug, Clone, Copy)]
pub struct SvidSubject<'a> {
    pub key: &'a SubjectKey,
    pub spiffe_id: &'a SpiffeId,
    pub dns_names: &'a [String],
    pub owner: Option<&'a OwnerBinding>,
    pub counter: Option<SerialCounter<'a>>,
}

/// Signs an X509-SVID for `subject` with the active authority of
/// `authorities`.
pub(super) fn x509_svid(
    authorities: &[X509Authority],
    upstream: Option<&Upstream>,
    serial_key: &SerialKey,
    subject: SvidSubject<'_>,
    ttl: Duration,
    now: SystemTime,
) -> Result<SignedX509, CaError> {
    let SvidSubject {
        key: subject_key,
        spiffe_id,
        dns_names,
        owner,
        counter,
    } = subject;
    let authority = slots::active(authorities).ok_or(CaError::NoActiveAuthority("x509"))?;
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
    let serial = match counter {
        Some(counter) => serial_key.serial(&authority.record.id, counter),
        None => crate::ids::serial_number(),
    };
    let params = x509::svid_params(spiffe_id, dns_names, owner, &serial, now, not_after)?;
    let cert = params.signed_by(subject_key, &authority.issuer)?;
    let mut leaf = cert.der().to_vec();
    if owner.is_some() {
        owner_extension::swap_into_certificate(&mut leaf);
    }
    let mut chain = vec![leaf];
    // A self-signed CA is the root the bundle holds; under an upstream CA,
    // verifiers need every intermediate up to the upstream roots.
    if let Some(upstream) = upstream {
        chain.push(authority.cert_der.clone());
        chain.extend(upstream.chain.iter().cloned());
    }
    Ok(SignedX509 {
        chain,
        serial_hex: hex::encode(serial),
        not_after,
        shortened,
        authority_id: authority.record.id.clone(),
    })
}

/// Signs a JWT-SVID with the active key of `keys`.
pub(super) fn jwt_svid(
    keys: &[JwtKey],
    issuer: Option<&str>,
    spiffe_id: &SpiffeId,
    audience: &[String],
    owner: Option<&OwnerBinding>,
    ttl: Duration,
    now: SystemTime,
) -> Result<SignedJwt, CaError> {
    let (key, expires_at, shortened) = active_key(keys, "JWT-SVID", spiffe_id, ttl, now)?;
    // JWT-SVID.md leaves `jti` optional; Sigil sets one so a token's uses
    // can be matched to its issuance in the event log.
    let jti = base64_url(&crate::ids::random_bytes::<16>());
    let claims = Claims {
        sub: spiffe_id.to_string(),
        aud: Audience::Many(audience.to_vec()),
        exp: unix_secs(expires_at) as u64,
        iat: Some(unix_secs(now) as u64),
        owner: owner.cloned(),
        // The OIDC issuer, so relying parties that trust it by discovery
        // find the keys.
        extra: issuer
            .map(|iss| ("iss".to_owned(), serde_json::Value::from(iss)))
            .into_iter()
            .chain([("jti".to_owned(), serde_json::Value::from(jti.clone()))])
            .collect(),
    };
    let token = jwtsvid::sign(
        &claims,
        &key.record.id,
        key.key.key_type().jws_algorithm(),
        key.key.jws_key(),
    )?;
    Ok(SignedJwt {
        token,
        jti,
        expires_at,
        shortened,
    })
}

/// Signs a WIT-SVID with the active key of `keys`, binding `cnf_jwk` (the
/// workload's public key, with the `alg` its proofs use) to `spiffe_id`.
pub(super) fn wit_svid(
    keys: &[JwtKey],
    issuer: Option<String>,
    spiffe_id: &SpiffeId,
    cnf_jwk: Jwk,
    owner: Option<&OwnerBinding>,
    ttl: Duration,
    now: SystemTime,
) -> Result<SignedJwt, CaError> {
    let (key, expires_at, shortened) = active_key(keys, "WIT-SVID", spiffe_id, ttl, now)?;
    let jti = base64_url(&crate::ids::random_bytes::<16>());
    let claims = WitClaims {
        sub: spiffe_id.to_string(),
        iss: issuer,
        iat: unix_secs(now) as u64,
        nbf: Some(unix_secs(now) as u64),
        exp: unix_secs(expires_at) as u64,
        jti: jti.clone(),
        cnf: Confirmation { jwk: cnf_jwk },
        owner: owner.cloned(),
    };
    let token = wit::sign(
        &claims,
        &key.record.id,
        key.key.key_type().jws_algorithm(),
        key.key.jws_key(),
    )
    .map_err(CaError::Wit)?;
    Ok(SignedJwt {
        token,
        jti,
        expires_at,
        shortened,
    })
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
    let key = slots::active(keys).ok_or(CaError::NoActiveAuthority(what))?;
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

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
