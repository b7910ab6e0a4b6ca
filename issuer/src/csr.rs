//! PKCS#10 certificate signing requests (RFC 2986): parsing, proof-of-possession
//! check, and the requested SPIFFE ID.

use der::{Decode, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::request::CertReq;

use workload_api::jwk::{Curve, PublicKey};

const OID_EXTENSION_REQUEST: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");
const OID_SAN: der::oid::ObjectIdentifier = der::oid::ObjectIdentifier::new_unwrap("2.5.29.17");
const OID_ECDSA_SHA256: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_RSA_SHA256: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_RSA_SHA384: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const OID_RSA_SHA512: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("CSR is not valid DER PKCS#10: {0}")]
    Malformed(String),
    #[error("CSR public key is not supported: {0}")]
    UnsupportedKey(String),
    #[error("CSR signature algorithm {0} is not supported")]
    UnsupportedSignatureAlgorithm(String),
    #[error("CSR signature does not verify with its own public key")]
    BadSignature,
}

/// A CSR whose signature was checked against its own key.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    pub public_key: PublicKey,
    /// URI SANs requested in the extensionRequest attribute.
    pub uris: Vec<String>,
}

/// Parses a DER CSR and verifies its self-signature (proof of possession).
pub fn verify(der: &[u8]) -> Result<VerifiedCsr, CsrError> {
    let req = CertReq::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    let spki = req
        .info
        .public_key
        .to_der()
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let public_key =
        PublicKey::from_spki_der(&spki).map_err(|e| CsrError::UnsupportedKey(e.to_string()))?;
    let message = req
        .info
        .to_der()
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let signature = req
        .signature
        .as_bytes()
        .ok_or_else(|| CsrError::Malformed("unaligned signature".into()))?;
    let raw_key = req
        .info
        .public_key
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| CsrError::Malformed("unaligned public key".into()))?;
    verify_signature(
        &req.algorithm.oid,
        &public_key,
        raw_key,
        &message,
        signature,
    )?;
    Ok(VerifiedCsr {
        public_key,
        uris: requested_uris(&req)?,
    })
}

fn verify_signature(
    algorithm: &der::oid::ObjectIdentifier,
    key: &PublicKey,
    raw_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), CsrError> {
    use ring::signature as sig;
    let verification: &dyn sig::VerificationAlgorithm = match (*algorithm, key) {
        (
            OID_ECDSA_SHA256,
            PublicKey::Ec {
                curve: Curve::P256, ..
            },
        ) => &sig::ECDSA_P256_SHA256_ASN1,
        (
            OID_ECDSA_SHA384,
            PublicKey::Ec {
                curve: Curve::P384, ..
            },
        ) => &sig::ECDSA_P384_SHA384_ASN1,
        (
            OID_ECDSA_SHA256,
            PublicKey::Ec {
                curve: Curve::P384, ..
            },
        ) => &sig::ECDSA_P384_SHA256_ASN1,
        (
            OID_ECDSA_SHA384,
            PublicKey::Ec {
                curve: Curve::P256, ..
            },
        ) => &sig::ECDSA_P256_SHA384_ASN1,
        (OID_RSA_SHA256, PublicKey::Rsa { .. }) => &sig::RSA_PKCS1_2048_8192_SHA256,
        (OID_RSA_SHA384, PublicKey::Rsa { .. }) => &sig::RSA_PKCS1_2048_8192_SHA384,
        (OID_RSA_SHA512, PublicKey::Rsa { .. }) => &sig::RSA_PKCS1_2048_8192_SHA512,
        (other, _) => return Err(CsrError::UnsupportedSignatureAlgorithm(other.to_string())),
    };
    sig::UnparsedPublicKey::new(verification, raw_key)
        .verify(message, signature)
        .map_err(|_| CsrError::BadSignature)
}

fn requested_uris(req: &CertReq) -> Result<Vec<String>, CsrError> {
    let mut uris = Vec::new();
    for attribute in req.info.attributes.iter() {
        if attribute.oid != OID_EXTENSION_REQUEST {
            continue;
        }
        for value in attribute.values.iter() {
            let extensions: x509_cert::ext::Extensions = value
                .decode_as()
                .map_err(|e| CsrError::Malformed(format!("extensionRequest: {e}")))?;
            for ext in extensions.iter().filter(|e| e.extn_id == OID_SAN) {
                let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| CsrError::Malformed(format!("subjectAltName: {e}")))?;
                for name in san.0 {
                    if let GeneralName::UniformResourceIdentifier(uri) = name {
                        uris.push(uri.as_str().to_owned());
                    }
                }
            }
        }
    }
    Ok(uris)
}

/// The subject key as rcgen needs it to build a certificate around it.
#[derive(Debug, Clone)]
pub struct SubjectKey {
    raw: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
}

impl SubjectKey {
    pub fn new(key: &PublicKey) -> Self {
        match key {
            PublicKey::Ec { curve, x, y } => {
                let mut raw = Vec::with_capacity(1 + x.len() + y.len());
                raw.push(0x04);
                raw.extend_from_slice(x);
                raw.extend_from_slice(y);
                let algorithm = match curve {
                    Curve::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
                    Curve::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
                };
                SubjectKey { raw, algorithm }
            }
            PublicKey::Rsa { .. } => {
                // rcgen wants the bit string contents: the PKCS#1 RSAPublicKey.
                let spki = key.to_spki_der();
                let parsed =
                    spki::SubjectPublicKeyInfoRef::from_der(&spki).expect("own SPKI parses");
                SubjectKey {
                    raw: parsed.subject_public_key.raw_bytes().to_vec(),
                    algorithm: &rcgen::PKCS_RSA_SHA256,
                }
            }
            PublicKey::Ed25519 { x } => SubjectKey {
                raw: x.clone(),
                algorithm: &rcgen::PKCS_ED25519,
            },
        }
    }
}

impl rcgen::PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(uri: Option<&str>) -> (rcgen::KeyPair, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        if let Some(uri) = uri {
            params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        }
        let der = params.serialize_request(&key).unwrap().der().to_vec();
        (key, der)
    }

    #[test]
    fn verifies_and_reads_uri() {
        let (_key, der) = csr(Some("spiffe://example.org/web"));
        let verified = verify(&der).unwrap();
        assert_eq!(verified.uris, ["spiffe://example.org/web"]);
        assert!(verify(&csr(None).1).unwrap().uris.is_empty());
    }

    #[test]
    fn rejects_tampering_and_garbage() {
        let (_key, mut der) = csr(Some("spiffe://example.org/web"));
        // Flip a byte inside the URI: the info no longer matches the signature.
        let at = der.windows(3).position(|w| w == b"web").unwrap();
        der[at] = b'x';
        assert_eq!(verify(&der).unwrap_err(), CsrError::BadSignature);
        assert!(matches!(
            verify(b"\x30\x03abc"),
            Err(CsrError::Malformed(_))
        ));
        assert!(matches!(verify(&[]), Err(CsrError::Malformed(_))));
    }
}
