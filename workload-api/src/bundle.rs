//! SPIFFE trust bundles as JWK Sets (SPIFFE_Trust_Domain_and_Bundle.md section 4).
//!
//! X.509 authorities are `use: "x509-svid"` keys with exactly one `x5c` certificate
//! and no `kid`; JWT and WIT authorities are `use: "jwt-svid"` / `"wit-svid"` keys
//! with a required `kid`. Entries of unknown `use` or `kty` are ignored, as the
//! standard asks, so newer bundles stay readable.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::id::TrustDomain;
use crate::jwk::{Jwk, JwkError, PublicKey};

pub const USE_X509_SVID: &str = "x509-svid";
pub const USE_JWT_SVID: &str = "jwt-svid";
pub const USE_WIT_SVID: &str = "wit-svid";

/// Why bytes are not a SPIFFE bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("bundle is not a JSON object: {0}")]
    Json(String),
    #[error("bundle has no \"keys\" member")]
    MissingKeys,
    #[error("bundle key {index}: x509-svid keys carry exactly one x5c certificate, found {count}")]
    X5cCount { index: usize, count: usize },
    #[error("bundle key {index}: x5c is not base64 DER")]
    X5cEncoding { index: usize },
    #[error("bundle key {index}: x5c certificate does not parse: {source}")]
    X5cCertificate { index: usize, source: der::Error },
    #[error("bundle key {index}: x5c certificate key is unusable: {source}")]
    X5cKey { index: usize, source: JwkError },
    #[error("bundle key {index}: {use_} keys require a non-empty kid")]
    MissingKid { index: usize, use_: &'static str },
    #[error("bundle key {index}: duplicate kid {kid:?}")]
    DuplicateKid { index: usize, kid: String },
    #[error("bundle key {index}: {source}")]
    Key { index: usize, source: JwkError },
    /// Bootstrap bundles may be PEM text instead of a JWK Set.
    #[error("bundle is neither JSON nor PEM text")]
    NotPem,
    #[error("bundle has no CERTIFICATE blocks")]
    NoCertificates,
    #[error("certificate does not parse: {0}")]
    Certificate(#[source] der::Error),
    #[error("certificate key is unusable: {0}")]
    CertificateKey(#[source] JwkError),
    /// Concatenated DER (as the Workload API carries chains and bundles).
    #[error("certificate {index} of the concatenated DER does not parse: {source}")]
    ConcatenatedDer { index: usize, source: der::Error },
    #[error("certificate {index} of the concatenated DER is truncated: {length} bytes announced, {remaining} left")]
    Truncated {
        index: usize,
        length: usize,
        remaining: usize,
    },
}

impl BundleError {
    /// A [`certificate_public_key`] error as one of bundle key `index`.
    fn at_key(self, index: usize) -> Self {
        match self {
            BundleError::Certificate(source) => BundleError::X5cCertificate { index, source },
            BundleError::CertificateKey(source) => BundleError::X5cKey { index, source },
            other => other,
        }
    }
}

/// A JWT or WIT signing authority: a public key under its key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    pub kid: String,
    pub key: PublicKey,
}

/// The trust bundle of one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<Vec<u8>>,
    jwt_authorities: Vec<JwtAuthority>,
    wit_authorities: Vec<JwtAuthority>,
    sequence: u64,
    refresh_hint_secs: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct JwkSet {
    keys: Option<Vec<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

impl Bundle {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Bundle {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            wit_authorities: Vec::new(),
            sequence: 0,
            refresh_hint_secs: None,
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }
    pub fn x509_authorities(&self) -> &[Vec<u8>] {
        &self.x509_authorities
    }
    pub fn jwt_authorities(&self) -> &[JwtAuthority] {
        &self.jwt_authorities
    }
    pub fn wit_authorities(&self) -> &[JwtAuthority] {
        &self.wit_authorities
    }
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
    pub fn refresh_hint_secs(&self) -> Option<u64> {
        self.refresh_hint_secs
    }

    pub fn set_sequence(&mut self, sequence: u64) {
        self.sequence = sequence;
    }
    pub fn set_refresh_hint_secs(&mut self, secs: Option<u64>) {
        self.refresh_hint_secs = secs;
    }

    /// Adds a CA certificate (DER) unless it is already present.
    pub fn add_x509_authority(&mut self, der: Vec<u8>) {
        if !self.x509_authorities.contains(&der) {
            self.x509_authorities.push(der);
        }
    }

    /// Adds a JWT-SVID key; a key with the same id is replaced.
    pub fn add_jwt_authority(&mut self, authority: JwtAuthority) {
        upsert(&mut self.jwt_authorities, authority);
    }

    /// Adds a WIT-SVID key; a key with the same id is replaced.
    pub fn add_wit_authority(&mut self, authority: JwtAuthority) {
        upsert(&mut self.wit_authorities, authority);
    }

    pub fn jwt_authority(&self, kid: &str) -> Option<&PublicKey> {
        self.jwt_authorities
            .iter()
            .find(|a| a.kid == kid)
            .map(|a| &a.key)
    }

    pub fn wit_authority(&self, kid: &str) -> Option<&PublicKey> {
        self.wit_authorities
            .iter()
            .find(|a| a.kid == kid)
            .map(|a| &a.key)
    }

    /// The X.509 authorities as concatenated DER, as the Workload API carries them.
    pub fn x509_der_concat(&self) -> Vec<u8> {
        self.x509_authorities.concat()
    }

    /// The X.509 authorities as PEM.
    pub fn x509_pem(&self) -> String {
        self.x509_authorities
            .iter()
            .map(|der| crate::pem::certificate(der))
            .collect()
    }

    /// A bundle as operators hand it over: a SPIFFE bundle (JWK Set) or PEM
    /// CA certificates (X.509 authorities only).
    pub fn from_jwks_or_pem(trust_domain: TrustDomain, bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.trim_ascii_start().starts_with(b"{") {
            return Bundle::from_jwks_json(trust_domain, bytes);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| BundleError::NotPem)?;
        let certs = crate::pem::blocks(text, "CERTIFICATE");
        if certs.is_empty() {
            return Err(BundleError::NoCertificates);
        }
        let mut bundle = Bundle::new(trust_domain);
        certs.into_iter().for_each(|c| bundle.add_x509_authority(c));
        Ok(bundle)
    }

    /// The bundle as a SPIFFE JWK Set.
    pub fn to_jwks_json(&self) -> Vec<u8> {
        let mut keys = Vec::new();
        for der in &self.x509_authorities {
            let mut jwk = certificate_public_key(der)
                .map(|k| k.to_jwk())
                .unwrap_or_default();
            jwk.use_ = Some(USE_X509_SVID.into());
            jwk.x5c = Some(vec![B64.encode(der)]);
            keys.push(serde_json::to_value(jwk).expect("JWK serializes"));
        }
        for (use_, authorities) in [
            (USE_JWT_SVID, &self.jwt_authorities),
            (USE_WIT_SVID, &self.wit_authorities),
        ] {
            for authority in authorities {
                let mut jwk = authority.key.to_jwk();
                jwk.use_ = Some(use_.into());
                jwk.kid = Some(authority.kid.clone());
                keys.push(serde_json::to_value(jwk).expect("JWK serializes"));
            }
        }
        serde_json::to_vec_pretty(&JwkSet {
            keys: Some(keys),
            spiffe_sequence: Some(self.sequence),
            spiffe_refresh_hint: self.refresh_hint_secs,
        })
        .expect("bundle serializes")
    }

    /// A JWK Set holding only the JWT-SVID keys, as FetchJWTBundles serves it.
    pub fn jwt_only_jwks_json(&self) -> Vec<u8> {
        let mut only = self.without_keys();
        only.jwt_authorities = self.jwt_authorities.clone();
        only.to_jwks_json()
    }

    /// A JWK Set holding only the WIT-SVID keys, as FetchWITBundles serves it.
    pub fn wit_only_jwks_json(&self) -> Vec<u8> {
        let mut only = self.without_keys();
        only.wit_authorities = self.wit_authorities.clone();
        only.to_jwks_json()
    }

    /// This bundle's trust domain, sequence and refresh hint, with no keys.
    fn without_keys(&self) -> Bundle {
        let mut empty = Bundle::new(self.trust_domain.clone());
        empty.sequence = self.sequence;
        empty.refresh_hint_secs = self.refresh_hint_secs;
        empty
    }

    /// Reads a SPIFFE JWK Set for `trust_domain`.
    pub fn from_jwks_json(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let keys = set.keys.ok_or(BundleError::MissingKeys)?;
        let mut bundle = Bundle::new(trust_domain);
        bundle.sequence = set.spiffe_sequence.unwrap_or(0);
        bundle.refresh_hint_secs = set.spiffe_refresh_hint;
        for (index, value) in keys.into_iter().enumerate() {
            // An entry that is not even a JWK object of a known shape is someone
            // else's extension: skip it rather than reject the bundle.
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            match jwk.use_.as_deref() {
                Some(USE_X509_SVID) => {
                    let certs = jwk.x5c.as_deref().unwrap_or_default();
                    if certs.len() != 1 {
                        return Err(BundleError::X5cCount {
                            index,
                            count: certs.len(),
                        });
                    }
                    let der = B64
                        .decode(&certs[0])
                        .map_err(|_| BundleError::X5cEncoding { index })?;
                    certificate_public_key(&der).map_err(|e| e.at_key(index))?;
                    bundle.add_x509_authority(der);
                }
                Some(USE_JWT_SVID) => {
                    let authority = read_keyed(index, USE_JWT_SVID, &jwk)?;
                    if let Some(authority) = authority {
                        push_unique(&mut bundle.jwt_authorities, index, authority)?;
                    }
                }
                Some(USE_WIT_SVID) => {
                    let authority = read_keyed(index, USE_WIT_SVID, &jwk)?;
                    if let Some(authority) = authority {
                        push_unique(&mut bundle.wit_authorities, index, authority)?;
                    }
                }
                _ => continue,
            }
        }
        Ok(bundle)
    }
}

fn upsert(list: &mut Vec<JwtAuthority>, authority: JwtAuthority) {
    match list.iter_mut().find(|a| a.kid == authority.kid) {
        Some(existing) => *existing = authority,
        None => list.push(authority),
    }
}

fn push_unique(
    list: &mut Vec<JwtAuthority>,
    index: usize,
    authority: JwtAuthority,
) -> Result<(), BundleError> {
    if list.iter().any(|a| a.kid == authority.kid) {
        return Err(BundleError::DuplicateKid {
            index,
            kid: authority.kid,
        });
    }
    list.push(authority);
    Ok(())
}

/// Reads a `kid`-addressed key; `None` when its `kty` is one we do not know.
fn read_keyed(
    index: usize,
    use_: &'static str,
    jwk: &Jwk,
) -> Result<Option<JwtAuthority>, BundleError> {
    let kid = match jwk.kid.as_deref() {
        Some(kid) if !kid.is_empty() => kid.to_owned(),
        _ => return Err(BundleError::MissingKid { index, use_ }),
    };
    match PublicKey::from_jwk(jwk) {
        Ok(key) => Ok(Some(JwtAuthority { kid, key })),
        Err(JwkError::UnsupportedKeyType(_)) => Ok(None),
        Err(source) => Err(BundleError::Key { index, source }),
    }
}

/// The public key of a DER certificate: [`BundleError::Certificate`] or
/// [`BundleError::CertificateKey`] when there is none Sigil can use.
pub fn certificate_public_key(der: &[u8]) -> Result<PublicKey, BundleError> {
    use der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(der).map_err(BundleError::Certificate)?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(BundleError::Certificate)?;
    PublicKey::from_spki_der(&spki).map_err(BundleError::CertificateKey)
}

/// Splits concatenated DER certificates (as the Workload API carries them).
/// Only the outer DER header of each is read.
pub fn split_der_concat(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, BundleError> {
    use der::{Decode, Reader, SliceReader};
    let mut certs = Vec::new();
    while !bytes.is_empty() {
        let index = certs.len();
        let failed = |source| BundleError::ConcatenatedDer { index, source };
        let mut reader = SliceReader::new(bytes).map_err(failed)?;
        let header = der::Header::decode(&mut reader).map_err(failed)?;
        let total = (reader.position() + header.length).map_err(failed)?;
        let total = usize::try_from(total).map_err(failed)?;
        if total > bytes.len() {
            return Err(BundleError::Truncated {
                index,
                length: total,
                remaining: bytes.len(),
            });
        }
        certs.push(bytes[..total].to_vec());
        bytes = &bytes[total..];
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwk::Curve;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn ca_der() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn ec_key() -> PublicKey {
        PublicKey::Ec {
            curve: Curve::P256,
            x: vec![7; 32],
            y: vec![9; 32],
        }
    }

    #[test]
    fn round_trip() {
        let mut bundle = Bundle::new(td());
        bundle.add_x509_authority(ca_der());
        bundle.add_jwt_authority(JwtAuthority {
            kid: "k1".into(),
            key: ec_key(),
        });
        bundle.set_sequence(42);
        bundle.set_refresh_hint_secs(Some(300));
        let json = bundle.to_jwks_json();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["spiffe_sequence"], 42);
        assert_eq!(value["spiffe_refresh_hint"], 300);
        assert_eq!(value["keys"][0]["use"], "x509-svid");
        assert!(value["keys"][0].get("kid").is_none());
        assert_eq!(value["keys"][0]["x5c"].as_array().unwrap().len(), 1);
        assert_eq!(value["keys"][1]["use"], "jwt-svid");
        assert_eq!(value["keys"][1]["kid"], "k1");
        assert_eq!(Bundle::from_jwks_json(td(), &json).unwrap(), bundle);
    }

    #[test]
    fn accept_and_reject_table() {
        let cert = B64.encode(ca_der());
        let ec = serde_json::to_value(ec_key().to_jwk()).unwrap();
        let with = |extra: serde_json::Value| {
            let mut v = ec.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        type Case<'a> = (&'a str, serde_json::Value, Result<(usize, usize), &'a str>);
        let cases: Vec<Case> = vec![
            ("empty keys", serde_json::json!({"keys": []}), Ok((0, 0))),
            (
                "missing keys",
                serde_json::json!({"spiffe_sequence": 1}),
                Err("no \"keys\""),
            ),
            (
                "not an object",
                serde_json::json!([1, 2]),
                Err("not a JSON object"),
            ),
            (
                "x509 authority",
                serde_json::json!({"keys": [with(serde_json::json!({"use": "x509-svid", "x5c": [cert]}))]}),
                Ok((1, 0)),
            ),
            (
                "x509 without x5c",
                serde_json::json!({"keys": [with(serde_json::json!({"use": "x509-svid"}))]}),
                Err("exactly one x5c"),
            ),
            (
                "x509 with two x5c",
                serde_json::json!({"keys": [with(serde_json::json!({"use": "x509-svid", "x5c": [cert, cert]}))]}),
                Err("exactly one x5c"),
            ),
            (
                "x509 with garbage x5c",
                serde_json::json!({"keys": [with(serde_json::json!({"use": "x509-svid", "x5c": ["AAAA"]}))]}),
                Err("does not parse"),
            ),
            (
                "jwt authority",
                serde_json::json!({"keys": [with(serde_json::json!({"use": "jwt-svid", "kid": "a"}))]}),
                Ok((0, 1)),
            ),
            (
                "jwt without kid",
                serde_json::json!({"keys": [with(serde_json::json!({"use": "jwt-svid"}))]}),
                Err("require a non-empty kid"),
            ),
            (
                "jwt with empty kid",
                serde_json::json!({"keys": [with(serde_json::json!({"use": "jwt-svid", "kid": ""}))]}),
                Err("require a non-empty kid"),
            ),
            (
                "duplicate kid",
                serde_json::json!({"keys": [
                    with(serde_json::json!({"use": "jwt-svid", "kid": "a"})),
                    with(serde_json::json!({"use": "jwt-svid", "kid": "a"}))]}),
                Err("duplicate kid"),
            ),
            (
                "unknown use ignored",
                serde_json::json!({"keys": [with(serde_json::json!({"use": "something-else"}))]}),
                Ok((0, 0)),
            ),
            (
                "unknown kty ignored",
                serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed448", "use": "jwt-svid", "kid": "z"}]}),
                Ok((0, 0)),
            ),
            (
                "bad curve point rejected",
                serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "use": "jwt-svid", "kid": "z"}]}),
                Err("\"x\" is missing or malformed"),
            ),
        ];
        for (name, json, expected) in cases {
            let result = Bundle::from_jwks_json(td(), json.to_string().as_bytes());
            match (result, expected) {
                (Ok(b), Ok((x509, jwt))) => {
                    assert_eq!(b.x509_authorities().len(), x509, "{name}");
                    assert_eq!(b.jwt_authorities().len(), jwt, "{name}");
                }
                (Err(e), Err(needle)) => {
                    assert!(e.to_string().contains(needle), "{name}: {e}")
                }
                (other, expected) => panic!("{name}: got {other:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn jwt_only_view_drops_x509() {
        let mut bundle = Bundle::new(td());
        bundle.add_x509_authority(ca_der());
        bundle.add_jwt_authority(JwtAuthority {
            kid: "k".into(),
            key: ec_key(),
        });
        let jwt = Bundle::from_jwks_json(td(), &bundle.jwt_only_jwks_json()).unwrap();
        assert!(jwt.x509_authorities().is_empty());
        assert_eq!(jwt.jwt_authorities().len(), 1);
    }

    #[test]
    fn der_concat_splits() {
        let (a, b) = (ca_der(), ca_der());
        let joined = [a.clone(), b.clone()].concat();
        assert_eq!(split_der_concat(&joined).unwrap(), vec![a.clone(), b]);
        let truncated = [a.clone(), a[..a.len() - 1].to_vec()].concat();
        assert_eq!(
            split_der_concat(&truncated).unwrap_err(),
            BundleError::Truncated {
                index: 1,
                length: a.len(),
                remaining: a.len() - 1
            }
        );
        assert!(matches!(
            split_der_concat(&[0x30, 0x84, 0xff]).unwrap_err(),
            BundleError::ConcatenatedDer { index: 0, .. }
        ));
    }
}
