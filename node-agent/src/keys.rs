//! Keys the agent generates: its own and every workload's. They never leave
//! the node; only CSRs do.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use zeroize::Zeroizing;

/// A fresh P-256 key (PKCS#8 DER) and a CSR for it, with `uri` as URI SAN.
pub fn new_key_and_csr(uri: Option<&str>) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), String> {
    let rng = SystemRandom::new();
    let pkcs8 = Zeroizing::new(
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| "key generation failed".to_owned())?
            .as_ref()
            .to_vec(),
    );
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )
    .map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    if let Some(uri) = uri {
        let uri = uri.try_into().map_err(|e: rcgen::Error| e.to_string())?;
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    }
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    Ok((pkcs8, csr.der().to_vec()))
}
