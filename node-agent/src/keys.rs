//! Keys the agent generates: its own and every workload's. They never leave
//! the node; only CSRs do.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use zeroize::Zeroizing;

/// Why a key or its CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("P-256 key generation failed")]
    Generate,
    #[error("the new P-256 key cannot sign a CSR: {0}")]
    Key(#[source] rcgen::Error),
    #[error("URI SAN {uri:?} is invalid: {source}")]
    Uri { uri: String, source: rcgen::Error },
    #[error("the CSR could not be made: {0}")]
    Csr(#[source] rcgen::Error),
}

/// A fresh P-256 key (PKCS#8 DER) and a CSR for it, with `uri` as URI SAN.
pub fn new_key_and_csr(uri: Option<&str>) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), KeyError> {
    let rng = SystemRandom::new();
    let pkcs8 = Zeroizing::new(
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| KeyError::Generate)?
            .as_ref()
            .to_vec(),
    );
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )
    .map_err(KeyError::Key)?;
    let mut params = rcgen::CertificateParams::default();
    if let Some(uri) = uri {
        let san = uri.try_into().map_err(|source| KeyError::Uri {
            uri: uri.to_owned(),
            source,
        })?;
        params.subject_alt_names = vec![rcgen::SanType::URI(san)];
    }
    let csr = params.serialize_request(&key).map_err(KeyError::Csr)?;
    Ok((pkcs8, csr.der().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_and_a_csr_naming_the_uri() {
        let (key, csr) = new_key_and_csr(Some("spiffe://example.org/web")).unwrap();
        assert!(!key.is_empty() && !csr.is_empty());
        new_key_and_csr(None).unwrap();
    }
}
