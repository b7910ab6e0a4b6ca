//! Public keys as JSON Web Keys (RFC 7517, RFC 7518 section 6) and the signature
//! algorithms Sigil signs and verifies with.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use spki::SubjectPublicKeyInfoRef;

const OID_EC_PUBLIC_KEY: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_RSA: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_ED25519: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.3.101.112");

/// Why a key could not be read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwkError {
    #[error("malformed SubjectPublicKeyInfo: {0}")]
    MalformedSpki(String),
    #[error("unsupported key algorithm {0}")]
    UnsupportedKeyAlgorithm(String),
    #[error("unsupported elliptic curve {0}")]
    UnsupportedCurve(String),
    #[error("JWK member {member:?} is missing or malformed")]
    BadMember { member: &'static str },
    #[error("unsupported JWK key type {0:?}")]
    UnsupportedKeyType(String),
}

/// A public key in the shapes SPIFFE bundles carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Uncompressed point, `x` and `y` each the curve's field size.
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    /// Big-endian modulus and exponent, without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An Ed25519 public key (RFC 8037 `OKP`), 32 bytes.
    Ed25519 { x: Vec<u8> },
}

/// The NIST curves Sigil uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    pub fn jwk_name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
        }
    }

    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// JWS algorithms (RFC 7518 section 3.1, RFC 8037) Sigil verifies. SPIFFE
/// admits all but `EdDSA` for SVIDs; see [`Algorithm::is_spiffe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    ES256,
    ES384,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    EdDSA,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// Whether SPIFFE (JWT-SVID, WIT-SVID) admits this algorithm.
    pub fn is_spiffe(self) -> bool {
        self != Algorithm::EdDSA
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "PS384" => Algorithm::PS384,
            "PS512" => Algorithm::PS512,
            "EdDSA" => Algorithm::EdDSA,
            _ => return None,
        })
    }

    /// Whether a key of this shape can verify signatures of this algorithm.
    pub fn fits(self, key: &PublicKey) -> bool {
        match (self, key) {
            (Algorithm::ES256, PublicKey::Ec { curve, .. }) => *curve == Curve::P256,
            (Algorithm::ES384, PublicKey::Ec { curve, .. }) => *curve == Curve::P384,
            (
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
                PublicKey::Rsa { .. },
            ) => true,
            (Algorithm::EdDSA, PublicKey::Ed25519 { .. }) => true,
            _ => false,
        }
    }

    pub fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::ES384 => jsonwebtoken::Algorithm::ES384,
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::RS384 => jsonwebtoken::Algorithm::RS384,
            Algorithm::RS512 => jsonwebtoken::Algorithm::RS512,
            Algorithm::PS256 => jsonwebtoken::Algorithm::PS256,
            Algorithm::PS384 => jsonwebtoken::Algorithm::PS384,
            Algorithm::PS512 => jsonwebtoken::Algorithm::PS512,
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }

    /// The ring verification algorithm for EC and Ed25519 keys (called once
    /// [`Algorithm::fits`] holds, so only ES256, ES384 and EdDSA reach it).
    fn ring_verification(self) -> &'static dyn ring::signature::VerificationAlgorithm {
        use ring::signature as sig;
        match self {
            Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
            Algorithm::EdDSA => &sig::ED25519,
            _ => &sig::ECDSA_P256_SHA256_FIXED,
        }
    }

    /// The ring RSA parameters (2048 to 8192-bit moduli), for RSA algorithms.
    fn rsa_parameters(self) -> Option<&'static ring::signature::RsaParameters> {
        use ring::signature as sig;
        Some(match self {
            Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
            Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
            Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

impl PublicKey {
    /// Reads a DER SubjectPublicKeyInfo (RFC 5280 section 4.1.2.7).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, JwkError> {
        let spki = SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| JwkError::MalformedSpki(e.to_string()))?;
        let key_bytes = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| JwkError::MalformedSpki("unaligned key bit string".into()))?;
        match spki.algorithm.oid {
            OID_EC_PUBLIC_KEY => {
                let curve_oid = spki
                    .algorithm
                    .parameters_oid()
                    .map_err(|e| JwkError::MalformedSpki(e.to_string()))?;
                let curve = match curve_oid {
                    OID_P256 => Curve::P256,
                    OID_P384 => Curve::P384,
                    other => return Err(JwkError::UnsupportedCurve(other.to_string())),
                };
                let len = curve.coordinate_len();
                if key_bytes.len() != 1 + 2 * len || key_bytes[0] != 0x04 {
                    return Err(JwkError::MalformedSpki(
                        "EC point is not uncompressed or has the wrong size".into(),
                    ));
                }
                Ok(PublicKey::Ec {
                    curve,
                    x: key_bytes[1..1 + len].to_vec(),
                    y: key_bytes[1 + len..].to_vec(),
                })
            }
            OID_RSA => {
                let rsa = pkcs1::RsaPublicKey::from_der(key_bytes)
                    .map_err(|e| JwkError::MalformedSpki(e.to_string()))?;
                Ok(PublicKey::Rsa {
                    n: rsa.modulus.as_bytes().to_vec(),
                    e: rsa.public_exponent.as_bytes().to_vec(),
                })
            }
            OID_ED25519 if key_bytes.len() == 32 => Ok(PublicKey::Ed25519 {
                x: key_bytes.to_vec(),
            }),
            OID_ED25519 => Err(JwkError::MalformedSpki(
                "Ed25519 key is not 32 bytes".into(),
            )),
            other => Err(JwkError::UnsupportedKeyAlgorithm(other.to_string())),
        }
    }

    /// Verifies a JWS signature (`signature` as the raw bytes RFC 7518 puts
    /// in the third part) over `message`. False when `alg` does not fit
    /// this key.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        if !alg.fits(self) {
            return false;
        }
        match self {
            PublicKey::Ec { x, y, .. } => {
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                ring::signature::UnparsedPublicKey::new(alg.ring_verification(), point)
                    .verify(message, signature)
                    .is_ok()
            }
            PublicKey::Rsa { n, e } => alg.rsa_parameters().is_some_and(|params| {
                ring::signature::RsaPublicKeyComponents { n, e }
                    .verify(params, message, signature)
                    .is_ok()
            }),
            PublicKey::Ed25519 { x } => {
                ring::signature::UnparsedPublicKey::new(alg.ring_verification(), x)
                    .verify(message, signature)
                    .is_ok()
            }
        }
    }

    /// The key as a DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Vec<u8> {
        use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
        let (algorithm, key) = match self {
            PublicKey::Ec { curve, x, y } => {
                let curve_oid = match curve {
                    Curve::P256 => OID_P256,
                    Curve::P384 => OID_P384,
                };
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                (
                    AlgorithmIdentifierOwned {
                        oid: OID_EC_PUBLIC_KEY,
                        parameters: Some(der::Any::from(&curve_oid)),
                    },
                    point,
                )
            }
            PublicKey::Rsa { n, e } => {
                let key = pkcs1::RsaPublicKey {
                    modulus: der::asn1::UintRef::new(n).expect("modulus fits"),
                    public_exponent: der::asn1::UintRef::new(e).expect("exponent fits"),
                };
                (
                    AlgorithmIdentifierOwned {
                        oid: OID_RSA,
                        parameters: Some(der::Any::null()),
                    },
                    key.to_der().expect("RSA key encodes"),
                )
            }
            PublicKey::Ed25519 { x } => (
                AlgorithmIdentifierOwned {
                    oid: OID_ED25519,
                    parameters: None,
                },
                x.clone(),
            ),
        };
        SubjectPublicKeyInfoOwned {
            algorithm,
            subject_public_key: der::asn1::BitString::from_bytes(&key).expect("bit string"),
        }
        .to_der()
        .expect("SPKI encodes")
    }

    /// The key's members as a JSON object (`kty` and its parameters only).
    pub fn to_jwk(&self) -> Jwk {
        match self {
            PublicKey::Ec { curve, x, y } => Jwk {
                kty: "EC".into(),
                crv: Some(curve.jwk_name().into()),
                x: Some(B64URL.encode(x)),
                y: Some(B64URL.encode(y)),
                ..Jwk::default()
            },
            PublicKey::Rsa { n, e } => Jwk {
                kty: "RSA".into(),
                n: Some(B64URL.encode(n)),
                e: Some(B64URL.encode(e)),
                ..Jwk::default()
            },
            PublicKey::Ed25519 { x } => Jwk {
                kty: "OKP".into(),
                crv: Some("Ed25519".into()),
                x: Some(B64URL.encode(x)),
                ..Jwk::default()
            },
        }
    }

    /// Reads the key members of a JWK.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, JwkError> {
        let decode = |member: &'static str, value: &Option<String>| {
            value
                .as_deref()
                .and_then(|v| B64URL.decode(v).ok())
                .ok_or(JwkError::BadMember { member })
        };
        match jwk.kty.as_str() {
            "EC" => {
                let curve = match jwk.crv.as_deref() {
                    Some("P-256") => Curve::P256,
                    Some("P-384") => Curve::P384,
                    Some(other) => return Err(JwkError::UnsupportedCurve(other.into())),
                    None => return Err(JwkError::BadMember { member: "crv" }),
                };
                let x = decode("x", &jwk.x)?;
                let y = decode("y", &jwk.y)?;
                if x.len() != curve.coordinate_len() {
                    return Err(JwkError::BadMember { member: "x" });
                }
                if y.len() != curve.coordinate_len() {
                    return Err(JwkError::BadMember { member: "y" });
                }
                Ok(PublicKey::Ec { curve, x, y })
            }
            "RSA" => Ok(PublicKey::Rsa {
                n: decode("n", &jwk.n)?,
                e: decode("e", &jwk.e)?,
            }),
            "OKP" => match jwk.crv.as_deref() {
                Some("Ed25519") => {
                    let x = decode("x", &jwk.x)?;
                    if x.len() != 32 {
                        return Err(JwkError::BadMember { member: "x" });
                    }
                    Ok(PublicKey::Ed25519 { x })
                }
                // Ed448 and the X curves are other key types in effect:
                // bundles skip them as they skip unknown `kty`s.
                Some(other) => Err(JwkError::UnsupportedKeyType(format!("OKP {other}"))),
                None => Err(JwkError::BadMember { member: "crv" }),
            },
            other => Err(JwkError::UnsupportedKeyType(other.into())),
        }
    }

    fn is_rsa(&self) -> bool {
        matches!(self, PublicKey::Rsa { .. })
    }

    /// RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order.
    pub fn thumbprint(&self) -> String {
        let canonical = match self.to_jwk() {
            Jwk {
                crv: Some(crv),
                x: Some(x),
                y: Some(y),
                ..
            } => format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#),
            Jwk {
                n: Some(n),
                e: Some(e),
                ..
            } if self.is_rsa() => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
            Jwk {
                crv: Some(crv),
                x: Some(x),
                ..
            } => format!(r#"{{"crv":"{crv}","kty":"OKP","x":"{x}"}}"#),
            _ => unreachable!("to_jwk always sets the members of its key type"),
        };
        B64URL.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ))
    }
}

/// A JWK as it appears in a SPIFFE bundle. Unknown members are kept out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 7638 section 3.1.
        let jwk = Jwk {
            kty: "RSA".into(),
            n: Some("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into()),
            e: Some("AQAB".into()),
            ..Jwk::default()
        };
        let key = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn spki_round_trip_ec() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let parsed = PublicKey::from_spki_der(&spki).unwrap();
        assert!(matches!(
            parsed,
            PublicKey::Ec {
                curve: Curve::P384,
                ..
            }
        ));
        assert_eq!(parsed.to_spki_der(), spki);
        assert_eq!(PublicKey::from_jwk(&parsed.to_jwk()).unwrap(), parsed);
    }

    #[test]
    fn jwk_rejects_bad_members() {
        let mut jwk = PublicKey::Ec {
            curve: Curve::P256,
            x: vec![1; 32],
            y: vec![2; 32],
        }
        .to_jwk();
        jwk.x = Some("AAAA".into());
        assert_eq!(
            PublicKey::from_jwk(&jwk),
            Err(JwkError::BadMember { member: "x" })
        );
        jwk.kty = "oct".into();
        assert!(matches!(
            PublicKey::from_jwk(&jwk),
            Err(JwkError::UnsupportedKeyType(_))
        ));
    }
}
