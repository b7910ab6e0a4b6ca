//! Private keys that sign JWS: a workload's WIT key (whose private half the
//! Workload API hands over as a JWK, RFC 7517) and the keys that sign proofs.
//!
//! `Debug` never shows key material, and the private JWK comes back wrapped
//! in [`Zeroizing`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::jwk::{Algorithm, Curve, Jwk, PublicKey};

/// Why a key could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyPairError {
    #[error("generating a {alg} key failed")]
    Generate { alg: &'static str },
    #[error("the private key is not a valid {alg} key: {reason}")]
    Rejected { alg: &'static str, reason: String },
    #[error("the private JWK is malformed: {0}")]
    BadJwk(String),
}

/// A signing key and the JWS algorithm it signs with.
pub struct KeyPair {
    alg: Algorithm,
    public: PublicKey,
    private: Private,
}

enum Private {
    Ecdsa {
        pair: EcdsaKeyPair,
        d: Zeroizing<Vec<u8>>,
    },
    Rsa {
        pair: RsaKeyPair,
        parts: RsaPrivateParts,
    },
    Ed25519 {
        pair: Ed25519KeyPair,
        seed: Zeroizing<Vec<u8>>,
    },
}

/// RSA private members, big-endian (RFC 7518 section 6.3.2).
struct RsaPrivateParts {
    d: Zeroizing<Vec<u8>>,
    p: Zeroizing<Vec<u8>>,
    q: Zeroizing<Vec<u8>>,
    dp: Zeroizing<Vec<u8>>,
    dq: Zeroizing<Vec<u8>>,
    qi: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("alg", &self.alg)
            .field("public", &self.public)
            .field("private", &"[redacted]")
            .finish()
    }
}

/// A private JWK as serialized; every secret member is zeroized on drop.
#[derive(Default, Serialize, Deserialize)]
struct PrivateJwk {
    kty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    d: Option<Zeroizing<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<Zeroizing<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    q: Option<Zeroizing<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dp: Option<Zeroizing<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dq: Option<Zeroizing<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    qi: Option<Zeroizing<String>>,
}

/// id-Ed25519 (RFC 8410).
const ED25519_OID: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.101.112");

fn ecdsa_signing(alg: Algorithm) -> Option<&'static sig::EcdsaSigningAlgorithm> {
    match alg {
        Algorithm::ES256 => Some(&sig::ECDSA_P256_SHA256_FIXED_SIGNING),
        Algorithm::ES384 => Some(&sig::ECDSA_P384_SHA384_FIXED_SIGNING),
        _ => None,
    }
}

fn rsa_encoding(alg: Algorithm) -> Option<&'static dyn sig::RsaEncoding> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_SHA512,
        _ => return None,
    })
}

fn rejected(alg: Algorithm, reason: impl ToString) -> KeyPairError {
    KeyPairError::Rejected {
        alg: alg.name(),
        reason: reason.to_string(),
    }
}

/// A fresh RSA-2048 private key as PKCS#8 DER. ring cannot generate RSA
/// keys; the rsa crate does, and ring signs with them.
pub fn rsa_2048_pkcs8() -> Result<Zeroizing<Vec<u8>>, KeyPairError> {
    use rsa::pkcs8::EncodePrivateKey;
    let failed = || KeyPairError::Generate { alg: "RSA-2048" };
    let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).map_err(|_| failed())?;
    let der = key.to_pkcs8_der().map_err(|_| failed())?;
    Ok(Zeroizing::new(der.as_bytes().to_vec()))
}

impl KeyPair {
    /// A fresh key for `alg`; RSA keys are 2048 bits and take a while to
    /// make, so async callers run this off their executor's threads.
    pub fn generate(alg: Algorithm) -> Result<Self, KeyPairError> {
        let rng = SystemRandom::new();
        let failed = || KeyPairError::Generate { alg: alg.name() };
        if let Some(signing) = ecdsa_signing(alg) {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).map_err(|_| failed())?;
            return Self::from_pkcs8(alg, pkcs8.as_ref());
        }
        if alg == Algorithm::EdDSA {
            let mut seed = Zeroizing::new(vec![0u8; 32]);
            ring::rand::SecureRandom::fill(&rng, &mut seed).map_err(|_| failed())?;
            let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| failed())?;
            return Ok(KeyPair {
                alg,
                public: PublicKey::Ed25519 {
                    x: pair.public_key().as_ref().to_vec(),
                },
                private: Private::Ed25519 { pair, seed },
            });
        }
        let pkcs8 = rsa_2048_pkcs8().map_err(|_| failed())?;
        Self::from_pkcs8(alg, &pkcs8)
    }

    /// Loads a PKCS#8 DER private key (EC, RSA or Ed25519) that will sign
    /// with `alg`.
    pub fn from_pkcs8(alg: Algorithm, der: &[u8]) -> Result<Self, KeyPairError> {
        use der::Decode;
        let info = pkcs8::PrivateKeyInfo::from_der(der).map_err(|e| rejected(alg, e))?;
        if alg == Algorithm::EdDSA {
            return Self::ed25519_from_pkcs8(&info);
        }
        if let Some(signing) = ecdsa_signing(alg) {
            let ec =
                sec1::EcPrivateKey::try_from(info.private_key).map_err(|e| rejected(alg, e))?;
            let pair = EcdsaKeyPair::from_pkcs8(signing, der, &SystemRandom::new())
                .map_err(|e| rejected(alg, e))?;
            let public = ec_public(alg, pair.public_key().as_ref())?;
            return Ok(KeyPair {
                alg,
                public,
                private: Private::Ecdsa {
                    pair,
                    d: Zeroizing::new(ec.private_key.to_vec()),
                },
            });
        }
        if rsa_encoding(alg).is_some() {
            let rsa =
                pkcs1::RsaPrivateKey::from_der(info.private_key).map_err(|e| rejected(alg, e))?;
            let own = |u: pkcs1::UintRef<'_>| Zeroizing::new(u.as_bytes().to_vec());
            let parts = RsaPrivateParts {
                d: own(rsa.private_exponent),
                p: own(rsa.prime1),
                q: own(rsa.prime2),
                dp: own(rsa.exponent1),
                dq: own(rsa.exponent2),
                qi: own(rsa.coefficient),
            };
            let n = rsa.modulus.as_bytes().to_vec();
            let e = rsa.public_exponent.as_bytes().to_vec();
            return Self::rsa(alg, n, e, parts);
        }
        Err(rejected(alg, "PKCS#8 keys are EC or RSA"))
    }

    /// An Ed25519 key from PKCS#8 v1 (what `openssl genpkey` writes) or v2
    /// (RFC 8410): the private key is an OCTET STRING holding the 32-byte
    /// seed; a public key, when present, must be the seed's.
    fn ed25519_from_pkcs8(info: &pkcs8::PrivateKeyInfo<'_>) -> Result<Self, KeyPairError> {
        use der::Decode;
        let alg = Algorithm::EdDSA;
        if info.algorithm.oid != ED25519_OID {
            return Err(rejected(alg, "the PKCS#8 key is not an Ed25519 key"));
        }
        let seed =
            der::asn1::OctetStringRef::from_der(info.private_key).map_err(|e| rejected(alg, e))?;
        let seed = Zeroizing::new(seed.as_bytes().to_vec());
        if seed.len() != 32 {
            return Err(rejected(alg, "the Ed25519 seed is not 32 bytes"));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| rejected(alg, e))?;
        if let Some(public) = info.public_key {
            if public != pair.public_key().as_ref() {
                return Err(rejected(alg, "the public key does not belong to the seed"));
            }
        }
        Ok(KeyPair {
            alg,
            public: PublicKey::Ed25519 {
                x: pair.public_key().as_ref().to_vec(),
            },
            private: Private::Ed25519 { pair, seed },
        })
    }

    fn rsa(
        alg: Algorithm,
        n: Vec<u8>,
        e: Vec<u8>,
        parts: RsaPrivateParts,
    ) -> Result<Self, KeyPairError> {
        let pair = RsaKeyPair::from_components(&ring::rsa::KeyPairComponents {
            public_key: ring::rsa::PublicKeyComponents { n: &n, e: &e },
            d: parts.d.as_slice(),
            p: parts.p.as_slice(),
            q: parts.q.as_slice(),
            dP: parts.dp.as_slice(),
            dQ: parts.dq.as_slice(),
            qInv: parts.qi.as_slice(),
        })
        .map_err(|e| rejected(alg, e))?;
        Ok(KeyPair {
            alg,
            public: PublicKey::Rsa { n, e },
            private: Private::Rsa { pair, parts },
        })
    }

    /// Reads a private JWK; its `alg` member says how it signs.
    pub fn from_jwk_json(json: &str) -> Result<Self, KeyPairError> {
        let jwk: PrivateJwk =
            serde_json::from_str(json).map_err(|e| KeyPairError::BadJwk(e.to_string()))?;
        let alg_name = jwk
            .alg
            .as_deref()
            .ok_or_else(|| KeyPairError::BadJwk("member \"alg\" is missing".into()))?;
        let alg = Algorithm::from_name(alg_name)
            .ok_or_else(|| KeyPairError::BadJwk(format!("unsupported alg {alg_name:?}")))?;
        let secret = |member: &'static str, value: &Option<Zeroizing<String>>| {
            value
                .as_ref()
                .and_then(|v| B64URL.decode(v.as_bytes()).ok())
                .map(Zeroizing::new)
                .ok_or_else(|| KeyPairError::BadJwk(format!("member {member:?} is missing")))
        };
        let public = PublicKey::from_jwk(&Jwk {
            kty: jwk.kty.clone(),
            crv: jwk.crv.clone(),
            x: jwk.x.clone(),
            y: jwk.y.clone(),
            n: jwk.n.clone(),
            e: jwk.e.clone(),
            ..Jwk::default()
        })
        .map_err(|e| KeyPairError::BadJwk(e.to_string()))?;
        if !alg.fits(&public) {
            return Err(KeyPairError::BadJwk(format!(
                "alg {alg_name} does not fit a {} key",
                jwk.kty
            )));
        }
        let d = secret("d", &jwk.d)?;
        match public {
            PublicKey::Ec { .. } => {
                let signing = ecdsa_signing(alg).expect("fits an EC key");
                let point = ec_point(&public);
                let pair = EcdsaKeyPair::from_private_key_and_public_key(
                    signing,
                    &d,
                    &point,
                    &SystemRandom::new(),
                )
                .map_err(|e| rejected(alg, e))?;
                Ok(KeyPair {
                    alg,
                    public,
                    private: Private::Ecdsa { pair, d },
                })
            }
            PublicKey::Rsa { n, e } => {
                let parts = RsaPrivateParts {
                    d,
                    p: secret("p", &jwk.p)?,
                    q: secret("q", &jwk.q)?,
                    dp: secret("dp", &jwk.dp)?,
                    dq: secret("dq", &jwk.dq)?,
                    qi: secret("qi", &jwk.qi)?,
                };
                Self::rsa(alg, n, e, parts)
            }
            PublicKey::Ed25519 { ref x } => {
                let pair = Ed25519KeyPair::from_seed_and_public_key(&d, x)
                    .map_err(|e| rejected(alg, e))?;
                Ok(KeyPair {
                    alg,
                    public,
                    private: Private::Ed25519 { pair, seed: d },
                })
            }
        }
    }

    /// The private key as a JWK with `alg`: a secret.
    pub fn to_jwk_json(&self) -> Zeroizing<String> {
        let public = self.public_jwk();
        let secret = |bytes: &[u8]| Some(Zeroizing::new(B64URL.encode(bytes)));
        let mut jwk = PrivateJwk {
            kty: public.kty,
            alg: public.alg,
            crv: public.crv,
            x: public.x,
            y: public.y,
            n: public.n,
            e: public.e,
            ..PrivateJwk::default()
        };
        match &self.private {
            Private::Ecdsa { d, .. } => jwk.d = secret(d),
            Private::Ed25519 { seed, .. } => jwk.d = secret(seed),
            Private::Rsa { parts, .. } => {
                jwk.d = secret(&parts.d);
                jwk.p = secret(&parts.p);
                jwk.q = secret(&parts.q);
                jwk.dp = secret(&parts.dp);
                jwk.dq = secret(&parts.dq);
                jwk.qi = secret(&parts.qi);
            }
        }
        Zeroizing::new(serde_json::to_string(&jwk).expect("a JWK serializes"))
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The public key as a JWK carrying `alg` (what `cnf.jwk` holds).
    pub fn public_jwk(&self) -> Jwk {
        Jwk {
            alg: Some(self.alg.name().into()),
            ..self.public.to_jwk()
        }
    }

    /// The JWS signature of `message` (RFC 7518: fixed-size `r || s` for
    /// ECDSA).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.private {
            Private::Ecdsa { pair, .. } => pair
                .sign(&rng, message)
                .expect("ECDSA signing with the system RNG succeeds")
                .as_ref()
                .to_vec(),
            Private::Ed25519 { pair, .. } => pair.sign(message).as_ref().to_vec(),
            Private::Rsa { pair, .. } => {
                let encoding = rsa_encoding(self.alg).expect("RSA keys carry an RSA alg");
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(encoding, &rng, message, &mut signature)
                    .expect("RSA signing with the system RNG succeeds");
                signature
            }
        }
    }

    /// Signs `header` and `claims` as a compact JWS.
    pub fn sign_jws(&self, header: &serde_json::Value, claims: &impl Serialize) -> String {
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(serde_json::to_vec(claims).expect("claims serialize"))
        );
        let signature = self.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64URL.encode(signature))
    }
}

/// The uncompressed SEC1 point of an EC key.
fn ec_point(key: &PublicKey) -> Vec<u8> {
    match key {
        PublicKey::Ec { x, y, .. } => [&[0x04][..], x, y].concat(),
        _ => Vec::new(),
    }
}

fn ec_public(alg: Algorithm, point: &[u8]) -> Result<PublicKey, KeyPairError> {
    let curve = if alg == Algorithm::ES384 {
        Curve::P384
    } else {
        Curve::P256
    };
    let len = (point.len().saturating_sub(1)) / 2;
    if point.first() != Some(&0x04) || len == 0 {
        return Err(rejected(alg, "public point is not uncompressed"));
    }
    Ok(PublicKey::Ec {
        curve,
        x: point[1..1 + len].to_vec(),
        y: point[1 + len..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_round_trip_through_jwk() {
        for alg in [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA] {
            let key = KeyPair::generate(alg).unwrap();
            let signature = key.sign(b"message");
            assert!(key.public_key().verify(alg, b"message", &signature));
            assert!(!key.public_key().verify(alg, b"massage", &signature));
            let again = KeyPair::from_jwk_json(&key.to_jwk_json()).unwrap();
            assert_eq!(again.public_key(), key.public_key());
            assert!(key
                .public_key()
                .verify(alg, b"other", &again.sign(b"other")));
        }
        let rsa = KeyPair::generate(Algorithm::PS256).unwrap();
        assert!(rsa
            .public_key()
            .verify(Algorithm::PS256, b"message", &rsa.sign(b"message")));
    }

    #[test]
    fn ed25519_pkcs8_from_rfc8410() {
        use base64::engine::general_purpose::STANDARD;
        // RFC 8410 section 10.3 (PKCS#8 v1) and the public key of 10.1.
        let der = STANDARD
            .decode("MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC")
            .unwrap();
        let key = KeyPair::from_pkcs8(Algorithm::EdDSA, &der).unwrap();
        let spki = STANDARD
            .decode("MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=")
            .unwrap();
        assert_eq!(key.public_key(), &PublicKey::from_spki_der(&spki).unwrap());
        let p256 = EcdsaKeyPair::generate_pkcs8(
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .unwrap();
        let error = KeyPair::from_pkcs8(Algorithm::EdDSA, p256.as_ref()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the private key is not a valid EdDSA key: the PKCS#8 key is not an Ed25519 key"
        );
    }

    #[test]
    fn debug_hides_the_private_key() {
        let key = KeyPair::generate(Algorithm::ES256).unwrap();
        let jwk: serde_json::Value = serde_json::from_str(&key.to_jwk_json()).unwrap();
        let d = jwk["d"].as_str().unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted") && !shown.contains(d), "{shown}");
    }

    #[test]
    fn bad_private_jwks_are_named() {
        let cases = [
            (r#"{"kty":"EC"}"#, "member \"alg\" is missing"),
            (r#"{"kty":"EC","alg":"HS256"}"#, "unsupported alg \"HS256\""),
            (
                r#"{"kty":"OKP","crv":"Ed25519","alg":"ES256","x":"1CXXvflN_LVVsIsYXsUvB03JmlGWeCHqQVuouCF92bg","d":"sdLX8yCYKqo_XvGBLn-ZWeKT7llYeeQpgeCaXVxb5kY"}"#,
                "alg ES256 does not fit a OKP key",
            ),
            (
                r#"{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","x":"1CXXvflN_LVVsIsYXsUvB03JmlGWeCHqQVuouCF92bg"}"#,
                "member \"d\" is missing",
            ),
        ];
        for (json, expected) in cases {
            let err = KeyPair::from_jwk_json(json).unwrap_err().to_string();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }

    #[test]
    fn the_published_wimse_workload_key_loads() {
        // draft-ietf-wimse-workload-creds section 5.1: the example workload key.
        let key = KeyPair::from_jwk_json(
            r#"{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","x":"1CXXvflN_LVVsIsYXsUvB03JmlGWeCHqQVuouCF92bg","d":"sdLX8yCYKqo_XvGBLn-ZWeKT7llYeeQpgeCaXVxb5kY"}"#,
        )
        .unwrap();
        assert_eq!(key.algorithm(), Algorithm::EdDSA);
    }
}
