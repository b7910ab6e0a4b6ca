//! The trust bundle the CA publishes, derived from its key slots
//! (SPIFFE_Trust_Domain_and_Bundle.md section 4; X509-SVID.md section 6.1,
//! JWT-SVID and WIT-SVID keys with their `kid`). Prepared and retired keys are
//! published too: verifiers learn a key before it signs and keep it until
//! everything it signed has expired.

use workload_api::bundle::{Bundle, JwtAuthority};

use super::config::CaConfig;
use super::slots::{JwtKey, Slots};
use super::upstream::Upstream;

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
