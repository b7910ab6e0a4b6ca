//! The owner binding extension in X509-SVIDs (format: `workload_api::owner`).
//!
//! Its OID sits under 2.25 with a 128-bit arc, and rcgen writes arcs as
//! 64-bit numbers. So rcgen writes a placeholder OID whose encoding has the
//! same length, [`OidSwappingKey`] swaps the real OID into the to-be-signed
//! bytes before signing them, and [`swap_into_certificate`] makes the same
//! swap in the finished certificate. Equal lengths mean no length octet
//! anywhere changes, so the signature covers exactly the certificate's TBS.

use std::sync::LazyLock;

use workload_api::owner::{OwnerBinding, OWNER_BINDING_OID_DER};

/// Arcs of the placeholder: 2.25, then a 10-byte and a 9-byte arc, which
/// encode to the 20 content bytes of the real OID. Never leaves this module.
const PLACEHOLDER_ARCS: [u64; 4] = [2, 25, 0x8000_0000_0000_5167, 0x0100_0000_0000_5167];

/// The placeholder's full DER (tag, length, content).
static PLACEHOLDER_TLV: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut content = vec![40 * PLACEHOLDER_ARCS[0] as u8 + PLACEHOLDER_ARCS[1] as u8];
    for &arc in &PLACEHOLDER_ARCS[2..] {
        content.extend(base128(arc));
    }
    assert_eq!(content.len(), OWNER_BINDING_OID_DER.len());
    tlv(&content)
});

/// The real OID's full DER.
static OWNER_OID_TLV: LazyLock<Vec<u8>> = LazyLock::new(|| tlv(&OWNER_BINDING_OID_DER));

/// Finds the placeholder. Every certificate is searched (the signer cannot
/// tell which carry it), so the search must cost next to nothing.
static PLACEHOLDER_FINDER: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(PLACEHOLDER_TLV.as_slice()).into_owned());

fn tlv(content: &[u8]) -> Vec<u8> {
    let mut out = vec![0x06, content.len() as u8];
    out.extend_from_slice(content);
    out
}

fn base128(mut n: u64) -> Vec<u8> {
    let mut out = vec![(n & 0x7f) as u8];
    n >>= 7;
    while n > 0 {
        out.insert(0, (n & 0x7f) as u8 | 0x80);
        n >>= 7;
    }
    out
}

/// The extension rcgen writes for `binding` (placeholder OID, non-critical).
pub fn extension(binding: &OwnerBinding) -> rcgen::CustomExtension {
    rcgen::CustomExtension::from_oid_content(&PLACEHOLDER_ARCS, binding.to_der())
}

/// Where the placeholder OID sits in `der`, if it does.
fn placeholder_at(der: &[u8]) -> Option<usize> {
    PLACEHOLDER_FINDER.find(der)
}

/// Replaces the placeholder OID with the owner binding OID in place.
/// Returns whether there was one.
pub fn swap_into_certificate(der: &mut [u8]) -> bool {
    match placeholder_at(der) {
        Some(at) => {
            der[at..at + OWNER_OID_TLV.len()].copy_from_slice(&OWNER_OID_TLV);
            true
        }
        None => false,
    }
}

/// A CA key that signs what rcgen hands it with the owner binding OID in
/// place of the placeholder.
#[derive(Debug)]
pub struct OidSwappingKey(pub rcgen::KeyPair);

impl rcgen::PublicKeyData for OidSwappingKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen::PublicKeyData::algorithm(&self.0)
    }
}

impl rcgen::SigningKey for OidSwappingKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        if placeholder_at(msg).is_none() {
            return self.0.sign(msg);
        }
        let mut swapped = msg.to_vec();
        swap_into_certificate(&mut swapped);
        self.0.sign(&swapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rcgen_writes_the_placeholder_that_is_searched_for() {
        assert_eq!(PLACEHOLDER_TLV.len(), OWNER_OID_TLV.len());
        let binding = OwnerBinding {
            owner_id: "mailto:alice@example.org".into(),
            key_thumbprint: [1; 32],
            consent_sha256: [2; 32],
            actors: Vec::new(),
        };
        let mut params = rcgen::CertificateParams::default();
        params.custom_extensions.push(extension(&binding));
        let key = OidSwappingKey(rcgen::KeyPair::generate().unwrap());
        let cert = params.self_signed(&key).unwrap();
        let mut der = cert.der().to_vec();
        assert!(swap_into_certificate(&mut der));
        // The swapped certificate's signature verifies: it covers the real OID.
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        parsed.verify_signature(None).unwrap();
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.as_bytes() == OWNER_BINDING_OID_DER)
            .unwrap();
        assert!(!ext.critical);
        assert_eq!(OwnerBinding::from_der(ext.value).unwrap(), binding);
    }

    #[test]
    fn swapping_leaves_other_bytes_alone() {
        let mut der = vec![1, 2, 3];
        der.extend_from_slice(&PLACEHOLDER_TLV);
        der.extend_from_slice(&[4, 5]);
        assert!(swap_into_certificate(&mut der));
        assert_eq!(&der[..3], &[1, 2, 3]);
        assert_eq!(&der[3..25], OWNER_OID_TLV.as_slice());
        assert_eq!(&der[25..], &[4, 5]);
        assert!(!swap_into_certificate(&mut der));
    }
}
