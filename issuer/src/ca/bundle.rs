//! The trust bundle the CA publishes, derived from its key slots
//! (SPIFFE_Trust_Domain_and_Bundle.md section 4; X509-SVID.md section 6.1,
//! JWT-SVID and WIT-SVID keys with their `kid`). Prepared and retired keys are
//! published too: verifiers learn a key before it signs and keep it until
//! everything it signed has expired.

use workload_api::bundle::{Bundle, JwtAuthority};

use super::config::CaConfig;
use super::error::CaError;
use super::slots::{JwtKey, Slots};
use super::upstream::Upstream;

/// One key of this CA's bundle, as replicas share it: every replica's keys
/// together make the trust domain's one bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedAuthority {
    /// `x509`, `jwt` or `wit`.
    pub kind: &'static str,
    /// The JWT or WIT key's `kid`; for an X.509 authority, the SHA-256 of
    /// its certificate (hex), so replicas publishing the same upstream root
    /// name it alike.
    pub id: String,
    /// Unix seconds after which nothing it signed is valid.
    pub not_after: i64,
    /// The key as the bundle's JWK Set carries it (JSON).
    pub jwk: String,
}

/// The keys of [`derive`]'s bundle, each with its id and expiry.
pub(super) fn authorities(
    config: &CaConfig,
    upstream: Option<&Upstream>,
    slots: &Slots,
) -> Result<Vec<PublishedAuthority>, CaError> {
    let mut out = Vec::new();
    let x509_roots: Vec<&Vec<u8>> = match upstream {
        Some(upstream) => upstream.roots.iter().collect(),
        None => slots.x509.iter().map(|a| &a.cert_der).collect(),
    };
    for der in x509_roots {
        let mut one = Bundle::new(config.trust_domain.clone());
        one.add_x509_authority(der.clone());
        out.push(PublishedAuthority {
            kind: "x509",
            id: hex::encode(ring::digest::digest(&ring::digest::SHA256, der)),
            not_after: crate::clock::unix_secs(super::x509::not_after(der)?),
            jwk: only_key(&one),
        });
    }
    for (kind, keys) in [("jwt", &slots.jwt), ("wit", &slots.wit)] {
        for key in keys {
            let mut one = Bundle::new(config.trust_domain.clone());
            let authority = JwtAuthority {
                kid: key.record.id.clone(),
                key: key.key.public_key().clone(),
            };
            if kind == "jwt" {
                one.add_jwt_authority(authority);
            } else {
                one.add_wit_authority(authority);
            }
            out.push(PublishedAuthority {
                kind,
                id: key.record.id.clone(),
                not_after: key.record.not_after,
                jwk: only_key(&one),
            });
        }
    }
    Ok(out)
}

/// The one key of a one-key bundle, as JWK JSON.
fn only_key(bundle: &Bundle) -> String {
    let set: serde_json::Value =
        serde_json::from_slice(&bundle.to_jwks_json()).expect("a bundle serializes to JSON");
    set["keys"][0].to_string()
}

/// The bundle for `slots`. Under an upstream CA the upstream roots are the
/// X.509 authorities, since Sigil's own CA certificates are intermediates.
pub(super) fn derive(config: &CaConfig, upstream: Option<&Upstream>, slots: &Slots) -> Bundle {
    let mut bundle = Bundle::new(config.trust_domain.clone());
    match upstream {
        Some(upstream) => upstream
            .roots
            .iter()
            .for_each(|root| bundle.add_x509_authority(root.clone())),
        None => slots
            .x509
            .iter()
            .for_each(|a| bundle.add_x509_authority(a.cert_der.clone())),
    }
    let authority = |key: &JwtKey| JwtAuthority {
        kid: key.record.id.clone(),
        key: key.key.public_key().clone(),
    };
    slots
        .jwt
        .iter()
        .for_each(|key| bundle.add_jwt_authority(authority(key)));
    slots
        .wit
        .iter()
        .for_each(|key| bundle.add_wit_authority(authority(key)));
    bundle.set_sequence(slots.sequence);
    bundle.set_refresh_hint_secs(Some(config.refresh_hint.as_secs()));
    bundle
}
