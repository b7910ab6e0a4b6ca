//! Identifiers: random ones, and the issuer's own SPIFFE ID.

use ring::rand::{SecureRandom, SystemRandom};

/// Fills `N` random bytes from the system RNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system RNG is available");
    bytes
}

/// A random RFC 9562 version 4 UUID in its lowercase text form.
pub fn uuid_v4() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A positive 128-bit certificate serial number (RFC 5280 section 4.1.2.2).
pub fn serial_number() -> [u8; 16] {
    let mut b = random_bytes::<16>();
    b[0] &= 0x7f;
    if b[0] == 0 {
        b[0] = 0x01;
    }
    b
}

/// The issuer's SPIFFE ID: what its TLS certificate names, the actor of the
/// events it witnesses, and the parent of node aliases by attested selectors.
pub fn issuer_id(trust_domain: &workload_api::id::TrustDomain) -> String {
    format!("spiffe://{trust_domain}/sigil/issuer")
}
