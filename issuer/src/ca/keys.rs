//! Signing keys: generation, storage on disk (0600), and the views the signers
//! need (rcgen for certificates, jsonwebtoken for JWS, the public JWK).
//! The key types sign with ES256, ES384 and RS256, all among the algorithms
//! JWT-SVID.md section 2.1 allows.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING,
};
use serde::{Deserialize, Serialize};
use workload_api::jwk::{Algorithm, PublicKey};
use zeroize::Zeroizing;

/// Key algorithms the issuer can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyType {
    #[serde(rename = "ec-p256")]
    EcP256,
    #[serde(rename = "ec-p384")]
    EcP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

impl KeyType {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ec-p256" => Some(KeyType::EcP256),
            "ec-p384" => Some(KeyType::EcP384),
            "rsa-2048" => Some(KeyType::Rsa2048),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Rsa2048 => "rsa-2048",
        }
    }

    /// The JWS algorithm this key signs JWTs with.
    pub fn jws_algorithm(self) -> Algorithm {
        match self {
            KeyType::EcP256 => Algorithm::ES256,
            KeyType::EcP384 => Algorithm::ES384,
            KeyType::Rsa2048 => Algorithm::RS256,
        }
    }

    fn rcgen_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("generating a {0} key failed")]
    Generate(&'static str),
    #[error("key {} could not be read or written: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a valid {key_type} PKCS#8 key")]
    Rejected { key_type: &'static str },
    #[error("key {} is not a valid {key_type} PKCS#8 key", .path.display())]
    Invalid {
        path: PathBuf,
        key_type: &'static str,
    },
}

/// A private key with everything needed to sign. `Debug` never shows the key.
pub struct SigningKey {
    key_type: KeyType,
    pkcs8: Zeroizing<Vec<u8>>,
    rcgen: rcgen::KeyPair,
    jws: jsonwebtoken::EncodingKey,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_type", &self.key_type)
            .field(
                "pkcs8",
                &format_args!("[{} bytes redacted]", self.pkcs8.len()),
            )
            .finish()
    }
}

impl SigningKey {
    pub fn generate(key_type: KeyType) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match key_type {
            KeyType::EcP256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .map_err(|_| KeyError::Generate("ec-p256"))?
                .as_ref()
                .to_vec(),
            KeyType::EcP384 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &rng)
                .map_err(|_| KeyError::Generate("ec-p384"))?
                .as_ref()
                .to_vec(),
            KeyType::Rsa2048 => workload_api::keypair::rsa_2048_pkcs8()
                .map_err(|_| KeyError::Generate("rsa-2048"))?
                .to_vec(),
        };
        Self::from_pkcs8(key_type, Zeroizing::new(pkcs8))
            .map_err(|_| KeyError::Generate(key_type.name()))
    }

    /// Builds a signing key from PKCS#8 DER.
    pub fn from_pkcs8(key_type: KeyType, pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, KeyError> {
        let rejected = || KeyError::Rejected {
            key_type: key_type.name(),
        };
        let rcgen = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
            key_type.rcgen_algorithm(),
        )
        .map_err(|_| rejected())?;
        let public =
            PublicKey::from_spki_der(&rcgen::PublicKeyData::subject_public_key_info(&rcgen))
                .map_err(|_| rejected())?;
        let jws = match key_type {
            KeyType::EcP256 | KeyType::EcP384 => jsonwebtoken::EncodingKey::from_ec_der(&pkcs8),
            KeyType::Rsa2048 => {
                let pkcs1 = pkcs1_from_pkcs8(&pkcs8).ok_or_else(rejected)?;
                jsonwebtoken::EncodingKey::from_rsa_der(&pkcs1)
            }
        };
        Ok(SigningKey {
            key_type,
            pkcs8,
            rcgen,
            jws,
            public,
        })
    }

    /// Detects the type of a PKCS#8 key.
    pub fn from_pkcs8_any(pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, KeyError> {
        for key_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            if let Ok(key) = Self::from_pkcs8(key_type, pkcs8.clone()) {
                return Ok(key);
            }
        }
        Err(KeyError::Rejected {
            key_type: "ec-p256, ec-p384 or rsa-2048",
        })
    }

    pub fn load(path: &Path, key_type: KeyType) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?);
        Self::from_pkcs8(key_type, bytes).map_err(|_| KeyError::Invalid {
            path: path.to_path_buf(),
            key_type: key_type.name(),
        })
    }

    /// Writes the key as PKCS#8 DER, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        workload_api::files::write_private(path, &self.pkcs8).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }
    pub fn rcgen(&self) -> &rcgen::KeyPair {
        &self.rcgen
    }
    pub fn jws_key(&self) -> &jsonwebtoken::EncodingKey {
        &self.jws
    }
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
    /// The PKCS#8 DER of the private key; handle as a secret.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }
}

/// Extracts the PKCS#1 RSAPrivateKey from a PKCS#8 wrapper.
fn pkcs1_from_pkcs8(pkcs8: &[u8]) -> Option<Vec<u8>> {
    use der::Decode;
    let info = pkcs8::PrivateKeyInfo::from_der(pkcs8).ok()?;
    Some(info.private_key.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_material() {
        for key_type in [KeyType::EcP256, KeyType::EcP384] {
            let key = SigningKey::generate(key_type).unwrap();
            let shown = format!("{key:?}");
            assert!(shown.contains("redacted"), "{shown}");
            let hex_key = hex::encode(key.pkcs8_der());
            assert!(!shown.contains(&hex_key[hex_key.len() - 16..]));
            assert!(!shown.contains(&format!("{:?}", &key.pkcs8_der()[..8])));
        }
    }

    #[test]
    fn pkcs8_round_trip_and_rejection() {
        let key = SigningKey::generate(KeyType::EcP256).unwrap();
        let again = SigningKey::from_pkcs8_any(Zeroizing::new(key.pkcs8_der().to_vec())).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let err = SigningKey::from_pkcs8(KeyType::EcP384, Zeroizing::new(key.pkcs8_der().to_vec()))
            .unwrap_err();
        assert_eq!(err.to_string(), "not a valid ec-p384 PKCS#8 key");
    }
}
