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

/// JWS algorithms (RFC 7518 section 3.1) that SPIFFE admits for SVIDs.
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
        }
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
        }
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
            other => Err(JwkError::UnsupportedKeyAlgorithm(other.to_string())),
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
            other => Err(JwkError::UnsupportedKeyType(other.into())),
        }
    }

    /// A jsonwebtoken verification key for this public key.
    pub fn decoding_key(&self) -> jsonwebtoken::DecodingKey {
        match self {
            PublicKey::Ec { x, y, .. } => {
                jsonwebtoken::DecodingKey::from_ec_components(&B64URL.encode(x), &B64URL.encode(y))
                    .expect("base64url of our own encoding decodes")
            }
            PublicKey::Rsa { n, e } => jsonwebtoken::DecodingKey::from_rsa_raw_components(n, e),
        }
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
            } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
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
