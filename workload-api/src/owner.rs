//! Owner binding: the principal who answers for a workload, named in every
//! credential the workload holds and bound there by the owner's own
//! signature (the consent, see [`crate::consent`]). This is the
//! dual-identity credential of draft-ni-wimse-ai-agent-identity, which
//! defines no wire format; Sigil's is:
//!
//! - X509-SVIDs carry a non-critical extension, OID [`OWNER_BINDING_OID`],
//!   whose value is the DER of
//!   ```text
//!   OwnerBinding ::= SEQUENCE {
//!       owner        UTF8String,               -- the owner's id (a URI)
//!       keyThumbprint OCTET STRING (SIZE (32)), -- RFC 7638 SHA-256 thumbprint of its key
//!       consentHash  OCTET STRING (SIZE (32)), -- SHA-256 of the consent JWS (its ASCII)
//!       actors       SEQUENCE OF UTF8String OPTIONAL -- delegation chain, outermost first
//!   }
//!   ```
//! - JWT-SVIDs and WITs carry the claim [`OWNER_CLAIM`]: an object with
//!   `id`, `jkt` (base64url thumbprint), `consent_sha256` (base64url) and,
//!   for delegated workloads, `actors`.
//!
//! Owner keys are Ed25519 or P-256, given as a PEM SubjectPublicKeyInfo or
//! a JWK.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use der::asn1::{OctetStringRef, Utf8StringRef};
use der::{Decode, Encode, Reader};
use serde::{Deserialize, Serialize};

use crate::jwk::{Algorithm, Curve, Jwk, PublicKey};
use crate::keypair::KeyPair;

/// The extension's OID: under 2.25, the arc of UUID
/// e51e7fc9-88ba-4fe3-8d3e-80901011fbcb (ITU-T X.667).
pub const OWNER_BINDING_OID: &str = "2.25.304551571773697307655795444668565683147";

/// The content octets of [`OWNER_BINDING_OID`]'s DER encoding. Its arc is
/// 128 bits wide, more than rcgen, const-oid or Go's `encoding/asn1` can
/// hold, so Sigil compares and writes these bytes itself.
pub const OWNER_BINDING_OID_DER: [u8; 20] = [
    0x69, 0x83, 0xca, 0x9e, 0xbf, 0xf2, 0xb1, 0x8b, 0xd2, 0xbf, 0xc7, 0x8d, 0x9f, 0xa0, 0x92, 0x81,
    0x80, 0xc7, 0xf7, 0x4b,
];

/// The JWT-SVID and WIT claim that carries the binding.
pub const OWNER_CLAIM: &str = "owner";

/// The longest owner id: the SPIFFE ID limit, for every scheme.
pub const MAX_OWNER_ID_BYTES: usize = crate::id::MAX_SPIFFE_ID_BYTES;

/// The longest delegation chain a credential may carry.
pub const MAX_ACTORS: usize = 16;

/// The most bytes of extension value [`OwnerBinding::from_der`] reads.
const MAX_BINDING_DER_BYTES: usize = 64 * 1024;

/// Who answers for a workload, as its credentials carry it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerBinding {
    /// The owner's id: a `mailto:`, `https:` or `spiffe:` URI.
    pub owner_id: String,
    /// RFC 7638 SHA-256 thumbprint of the owner's public key.
    pub key_thumbprint: [u8; 32],
    /// SHA-256 of the consent JWS the owner signed for this workload.
    pub consent_sha256: [u8; 32],
    /// For a workload another workload registered: the SPIFFE IDs of the
    /// delegating workloads, outermost first (owner -> agent -> sub-agent).
    pub actors: Vec<String>,
}

/// Why a carried binding could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    #[error("owner binding extension is not valid DER: {0}")]
    Der(String),
    #[error("owner claim is malformed: {0}")]
    Claim(String),
    #[error("owner binding: {member} is {len} bytes, not 32")]
    DigestLength { member: &'static str, len: usize },
    #[error("owner binding: {0}")]
    OwnerId(#[from] OwnerIdError),
    #[error("owner binding: {count} actors; at most {MAX_ACTORS}")]
    TooManyActors { count: usize },
    #[error("owner binding: actor {0}")]
    // Boxed: an id error is large, and this error travels inside others.
    Actor(Box<crate::id::IdError>),
}

impl OwnerBinding {
    /// The thumbprint as the `jkt` member carries it.
    pub fn key_thumbprint_b64(&self) -> String {
        B64URL.encode(self.key_thumbprint)
    }

    /// The extension value (DER of `OwnerBinding`).
    pub fn to_der(&self) -> Vec<u8> {
        // Every member was checked when the binding was made; UTF-8 strings
        // and 32-byte digests always encode.
        let owner = Utf8StringRef::new(&self.owner_id).expect("owner id is UTF-8");
        let thumbprint = OctetStringRef::new(&self.key_thumbprint).expect("32 bytes encode");
        let consent = OctetStringRef::new(&self.consent_sha256).expect("32 bytes encode");
        let actors: Vec<Utf8StringRef<'_>> = self
            .actors
            .iter()
            .map(|a| Utf8StringRef::new(a).expect("actor is UTF-8"))
            .collect();
        let mut body = Vec::new();
        owner.encode_to_vec(&mut body).expect("encodes");
        thumbprint.encode_to_vec(&mut body).expect("encodes");
        consent.encode_to_vec(&mut body).expect("encodes");
        if !actors.is_empty() {
            actors.encode_to_vec(&mut body).expect("encodes");
        }
        let mut out = Vec::with_capacity(body.len() + 4);
        der::Header::new(der::Tag::Sequence, body.len())
            .and_then(|h| h.encode_to_vec(&mut out))
            .expect("a length under 4 GiB encodes");
        out.extend_from_slice(&body);
        out
    }

    /// Reads an extension value. Strict DER; every member checked.
    pub fn from_der(bytes: &[u8]) -> Result<Self, BindingError> {
        if bytes.len() > MAX_BINDING_DER_BYTES {
            return Err(BindingError::Der(format!(
                "{} bytes; at most {MAX_BINDING_DER_BYTES}",
                bytes.len()
            )));
        }
        let der_error = |e: der::Error| BindingError::Der(e.to_string());
        let mut reader = der::SliceReader::new(bytes).map_err(der_error)?;
        let (owner, thumbprint, consent, actors) = reader
            .sequence(|r| {
                let owner: Utf8StringRef<'_> = r.decode()?;
                let thumbprint: OctetStringRef<'_> = r.decode()?;
                let consent: OctetStringRef<'_> = r.decode()?;
                let actors: Vec<Utf8StringRef<'_>> = if r.is_finished() {
                    Vec::new()
                } else {
                    r.decode()?
                };
                Ok((owner, thumbprint, consent, actors))
            })
            .map_err(der_error)?;
        reader.finish(()).map_err(der_error)?;
        Self::checked(
            owner.as_str(),
            thumbprint.as_bytes(),
            consent.as_bytes(),
            actors.iter().map(|a| a.as_str()),
        )
    }

    /// The `owner` claim's value.
    pub fn to_claim(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("the claim serializes")
    }

    /// Reads an `owner` claim's value.
    pub fn from_claim(value: &serde_json::Value) -> Result<Self, BindingError> {
        let claim =
            OwnerClaim::deserialize(value).map_err(|e| BindingError::Claim(e.to_string()))?;
        let decode = |member: &'static str, text: &str| {
            B64URL
                .decode(text)
                .map_err(|_| BindingError::Claim(format!("{member} is not base64url")))
        };
        let thumbprint = decode("jkt", &claim.jkt)?;
        let consent = decode("consent_sha256", &claim.consent_sha256)?;
        Self::checked(
            &claim.id,
            &thumbprint,
            &consent,
            claim.actors.iter().map(String::as_str),
        )
    }

    fn checked<'a>(
        owner_id: &str,
        thumbprint: &[u8],
        consent: &[u8],
        actors: impl ExactSizeIterator<Item = &'a str>,
    ) -> Result<Self, BindingError> {
        check_owner_id(owner_id)?;
        let digest = |member: &'static str, bytes: &[u8]| {
            <[u8; 32]>::try_from(bytes).map_err(|_| BindingError::DigestLength {
                member,
                len: bytes.len(),
            })
        };
        if actors.len() > MAX_ACTORS {
            return Err(BindingError::TooManyActors {
                count: actors.len(),
            });
        }
        let actors = actors
            .map(|a| {
                crate::id::parse_spiffe_id(a)
                    .map(|id| id.to_string())
                    .map_err(|e| BindingError::Actor(Box::new(e)))
            })
            .collect::<Result<_, _>>()?;
        Ok(OwnerBinding {
            owner_id: owner_id.to_owned(),
            key_thumbprint: digest("keyThumbprint", thumbprint)?,
            consent_sha256: digest("consentHash", consent)?,
            actors,
        })
    }
}

/// Serializes as the `owner` claim.
impl Serialize for OwnerBinding {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        OwnerClaim {
            id: self.owner_id.clone(),
            jkt: self.key_thumbprint_b64(),
            consent_sha256: B64URL.encode(self.consent_sha256),
            actors: self.actors.clone(),
        }
        .serialize(serializer)
    }
}

/// Reads an `owner` claim, checking every member.
impl<'de> Deserialize<'de> for OwnerBinding {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        OwnerBinding::from_claim(&value).map_err(serde::de::Error::custom)
    }
}

/// The `owner` claim as serialized.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerClaim {
    id: String,
    jkt: String,
    consent_sha256: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    actors: Vec<String>,
}

/// SHA-256 of a consent JWS (its compact serialization, as ASCII).
pub fn consent_sha256(consent_jws: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, consent_jws.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Why a string is not an owner id.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OwnerIdError {
    #[error("owner id is empty")]
    Empty,
    #[error("owner id is {len} bytes; at most {MAX_OWNER_ID_BYTES}")]
    TooLong { len: usize },
    #[error("owner id must be a mailto:, https: or spiffe: URI")]
    Scheme,
    #[error("owner id holds whitespace or a control character")]
    BadCharacter,
    #[error("owner id {what}")]
    Malformed { what: &'static str },
    #[error("owner id is not a SPIFFE ID: {0}")]
    SpiffeId(Box<crate::id::IdError>),
}

/// Checks an owner id: a `mailto:` address, an `https:` URL with a host, or
/// a SPIFFE ID; printable, without whitespace, at most
/// [`MAX_OWNER_ID_BYTES`].
pub fn check_owner_id(id: &str) -> Result<(), OwnerIdError> {
    if id.is_empty() {
        return Err(OwnerIdError::Empty);
    }
    if id.len() > MAX_OWNER_ID_BYTES {
        return Err(OwnerIdError::TooLong { len: id.len() });
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(OwnerIdError::BadCharacter);
    }
    if let Some(address) = id.strip_prefix("mailto:") {
        let (local, domain) = address.split_once('@').ok_or(OwnerIdError::Malformed {
            what: "is a mailto: URI without an address (local@domain)",
        })?;
        if local.is_empty() || domain.is_empty() || domain.contains(['@', '?', '/']) {
            return Err(OwnerIdError::Malformed {
                what: "is a mailto: URI whose address is not local@domain",
            });
        }
        return Ok(());
    }
    if let Some(rest) = id.strip_prefix("https://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() || host.contains('@') {
            return Err(OwnerIdError::Malformed {
                what: "is an https: URL without a host (or with user information)",
            });
        }
        return Ok(());
    }
    if id.starts_with("spiffe://") {
        return crate::id::parse_spiffe_id(id)
            .map(|_| ())
            .map_err(|e| OwnerIdError::SpiffeId(Box::new(e)));
    }
    Err(OwnerIdError::Scheme)
}

/// Why an owner key could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OwnerKeyError {
    #[error("not a PEM public key (\"PUBLIC KEY\") or a JWK")]
    Unrecognized,
    #[error("not a PEM private key (PKCS#8 \"PRIVATE KEY\") or a private JWK; convert EC keys with `openssl pkcs8 -topk8 -nocrypt`")]
    UnrecognizedPrivate,
    #[error("the JWK holds a private key (member \"d\"); give the public half")]
    PrivateJwk,
    #[error("{0}")]
    Key(String),
    #[error("owner keys are Ed25519 or P-256, not {0}")]
    Unsupported(String),
}

/// Reads an owner's public key: PEM SubjectPublicKeyInfo or a public JWK;
/// Ed25519 or P-256.
pub fn parse_public_key(text: &str) -> Result<PublicKey, OwnerKeyError> {
    let text = text.trim();
    let key = if text.starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| OwnerKeyError::Key(format!("JWK: {e}")))?;
        if value.get("d").is_some() {
            return Err(OwnerKeyError::PrivateJwk);
        }
        let jwk: Jwk =
            serde_json::from_value(value).map_err(|e| OwnerKeyError::Key(format!("JWK: {e}")))?;
        PublicKey::from_jwk(&jwk).map_err(|e| OwnerKeyError::Key(e.to_string()))?
    } else {
        let der = crate::pem::blocks(text, "PUBLIC KEY")
            .into_iter()
            .next()
            .ok_or(OwnerKeyError::Unrecognized)?;
        PublicKey::from_spki_der(&der).map_err(|e| OwnerKeyError::Key(e.to_string()))?
    };
    algorithm_for(&key)?;
    Ok(key)
}

/// The JWS algorithm an owner key signs with.
pub fn algorithm_for(key: &PublicKey) -> Result<Algorithm, OwnerKeyError> {
    match key {
        PublicKey::Ed25519 { .. } => Ok(Algorithm::EdDSA),
        PublicKey::Ec {
            curve: Curve::P256, ..
        } => Ok(Algorithm::ES256),
        PublicKey::Ec { curve, .. } => Err(OwnerKeyError::Unsupported(format!(
            "EC {}",
            curve.jwk_name()
        ))),
        PublicKey::Rsa { .. } => Err(OwnerKeyError::Unsupported("RSA".into())),
    }
}

/// Reads an owner's private key to sign consent: PEM PKCS#8 or a private
/// JWK; Ed25519 or P-256.
pub fn load_signing_key(text: &str) -> Result<KeyPair, OwnerKeyError> {
    let text = text.trim();
    let key = if text.starts_with('{') {
        let mut value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| OwnerKeyError::Key(format!("JWK: {e}")))?;
        if value.get("d").is_none() {
            return Err(OwnerKeyError::UnrecognizedPrivate);
        }
        // A JWK without `alg` signs with the one algorithm its key allows.
        if value.get("alg").is_none() {
            let jwk: Jwk = serde_json::from_value(value.clone())
                .map_err(|e| OwnerKeyError::Key(format!("JWK: {e}")))?;
            let public =
                PublicKey::from_jwk(&jwk).map_err(|e| OwnerKeyError::Key(e.to_string()))?;
            value["alg"] = algorithm_for(&public)?.name().into();
        }
        KeyPair::from_jwk_json(&value.to_string()).map_err(|e| OwnerKeyError::Key(e.to_string()))?
    } else {
        let der = crate::pem::blocks(text, "PRIVATE KEY")
            .into_iter()
            .next()
            .ok_or(OwnerKeyError::UnrecognizedPrivate)?;
        let der = zeroize::Zeroizing::new(der);
        let alg = pkcs8_algorithm(&der)?;
        KeyPair::from_pkcs8(alg, &der).map_err(|e| OwnerKeyError::Key(e.to_string()))?
    };
    let alg = algorithm_for(key.public_key())?;
    if key.algorithm() != alg {
        return Err(OwnerKeyError::Unsupported(format!(
            "a key that signs with {}",
            key.algorithm().name()
        )));
    }
    Ok(key)
}

/// The owner algorithm a PKCS#8 key is for, from its algorithm identifier.
fn pkcs8_algorithm(der: &[u8]) -> Result<Algorithm, OwnerKeyError> {
    const ED25519: der::asn1::ObjectIdentifier =
        der::asn1::ObjectIdentifier::new_unwrap("1.3.101.112");
    const EC: der::asn1::ObjectIdentifier =
        der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    const P256: der::asn1::ObjectIdentifier =
        der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    let info =
        pkcs8::PrivateKeyInfo::from_der(der).map_err(|e| OwnerKeyError::Key(e.to_string()))?;
    match info.algorithm.oid {
        ED25519 => Ok(Algorithm::EdDSA),
        EC if info.algorithm.parameters_oid().ok() == Some(P256) => Ok(Algorithm::ES256),
        EC => Err(OwnerKeyError::Unsupported(
            "an EC curve other than P-256".into(),
        )),
        other => Err(OwnerKeyError::Unsupported(format!("key algorithm {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(actors: &[&str]) -> OwnerBinding {
        OwnerBinding {
            owner_id: "mailto:alice@example.org".into(),
            key_thumbprint: [7; 32],
            consent_sha256: consent_sha256("a.b.c"),
            actors: actors.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn the_oid_bytes_encode_the_dotted_oid() {
        let (first, rest) = OWNER_BINDING_OID
            .strip_prefix("2.25.")
            .map(|arc| (2 * 40 + 25, arc.parse::<u128>().unwrap()))
            .unwrap();
        let mut arc = Vec::new();
        let mut n = rest;
        loop {
            arc.insert(0, (n & 0x7f) as u8 | if arc.is_empty() { 0 } else { 0x80 });
            n >>= 7;
            if n == 0 {
                break;
            }
        }
        let mut expected = vec![first as u8];
        expected.extend(arc);
        assert_eq!(OWNER_BINDING_OID_DER.to_vec(), expected);
    }

    #[test]
    fn der_and_claim_round_trip() {
        for b in [
            binding(&[]),
            binding(&["spiffe://td/agents/a", "spiffe://td/agents/a/b"]),
        ] {
            assert_eq!(OwnerBinding::from_der(&b.to_der()).unwrap(), b);
            assert_eq!(OwnerBinding::from_claim(&b.to_claim()).unwrap(), b);
        }
        let claim = binding(&[]).to_claim();
        let typed: OwnerBinding = serde_json::from_value(claim.clone()).unwrap();
        assert_eq!(typed, binding(&[]));
        assert_eq!(claim["id"], "mailto:alice@example.org");
        assert_eq!(claim["jkt"], B64URL.encode([7; 32]));
        assert!(claim.get("actors").is_none());
        // Fixed encoding: SEQUENCE, UTF8String, two 32-byte OCTET STRINGs.
        let der = binding(&[]).to_der();
        assert_eq!(&der[..4], &[0x30, 24 + 2 + 34 + 34, 0x0c, 24]);
    }

    #[test]
    fn malformed_bindings_are_named() {
        let mut der = binding(&[]).to_der();
        der.push(0);
        assert!(matches!(
            OwnerBinding::from_der(&der),
            Err(BindingError::Der(_))
        ));
        let mut short = binding(&[]).to_claim();
        short["jkt"] = B64URL.encode([1; 16]).into();
        assert_eq!(
            OwnerBinding::from_claim(&short).unwrap_err().to_string(),
            "owner binding: keyThumbprint is 16 bytes, not 32"
        );
        let mut extra = binding(&[]).to_claim();
        extra["role"] = "admin".into();
        assert!(matches!(
            OwnerBinding::from_claim(&extra),
            Err(BindingError::Claim(_))
        ));
        let mut bad_actor = binding(&[]).to_claim();
        bad_actor["actors"] = serde_json::json!(["https://not-spiffe"]);
        assert!(matches!(
            OwnerBinding::from_claim(&bad_actor),
            Err(BindingError::Actor(_))
        ));
    }

    #[test]
    fn owner_ids() {
        for good in [
            "mailto:alice@example.org",
            "https://example.org/people/alice",
            "spiffe://example.org/owner/alice",
        ] {
            check_owner_id(good).unwrap();
        }
        for (bad, error) in [
            ("", OwnerIdError::Empty),
            ("alice", OwnerIdError::Scheme),
            ("http://example.org/alice", OwnerIdError::Scheme),
            (
                "mailto:alice",
                OwnerIdError::Malformed {
                    what: "is a mailto: URI without an address (local@domain)",
                },
            ),
            ("mailto:al ice@example.org", OwnerIdError::BadCharacter),
            (
                "https:///alice",
                OwnerIdError::Malformed {
                    what: "is an https: URL without a host (or with user information)",
                },
            ),
        ] {
            assert_eq!(check_owner_id(bad).unwrap_err(), error, "{bad}");
        }
        assert!(matches!(
            check_owner_id("spiffe://Example.org/x"),
            Err(OwnerIdError::SpiffeId(_))
        ));
        let long = format!("mailto:{}@example.org", "a".repeat(MAX_OWNER_ID_BYTES));
        assert!(matches!(
            check_owner_id(&long),
            Err(OwnerIdError::TooLong { .. })
        ));
    }

    #[test]
    fn owner_keys_from_pem_and_jwk() {
        // RFC 8410 section 10.1.
        let pem = "-----BEGIN PUBLIC KEY-----\n\
            MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
            -----END PUBLIC KEY-----\n";
        let key = parse_public_key(pem).unwrap();
        assert_eq!(algorithm_for(&key).unwrap(), Algorithm::EdDSA);
        let jwk = serde_json::to_string(&key.to_jwk()).unwrap();
        assert_eq!(parse_public_key(&jwk).unwrap(), key);

        let p256 = KeyPair::generate(Algorithm::ES256).unwrap();
        let private_jwk = p256.to_jwk_json();
        assert_eq!(
            parse_public_key(&private_jwk).unwrap_err(),
            OwnerKeyError::PrivateJwk
        );
        let signer = load_signing_key(&private_jwk).unwrap();
        assert_eq!(signer.public_key(), p256.public_key());
        let p384 = KeyPair::generate(Algorithm::ES384).unwrap();
        assert_eq!(
            load_signing_key(&p384.to_jwk_json()).unwrap_err(),
            OwnerKeyError::Unsupported("EC P-384".into())
        );
        assert_eq!(
            parse_public_key("hello").unwrap_err(),
            OwnerKeyError::Unrecognized
        );
        let ed_pkcs8 = "-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
            -----END PRIVATE KEY-----\n";
        assert_eq!(load_signing_key(ed_pkcs8).unwrap().public_key(), &key);
    }
}
