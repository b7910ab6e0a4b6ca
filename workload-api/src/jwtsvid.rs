//! JWT-SVIDs (JWT-SVID.md): signing, and validation against the bundle of the
//! subject's trust domain. Time is always passed in. A token may carry an
//! owner binding in the [`OWNER_CLAIM`] claim (format in [`crate::owner`]).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bundle::Bundle;
use crate::id::{parse_spiffe_id, IdError, SpiffeId, TrustDomain};
use crate::jwk::Algorithm;
use crate::owner::{BindingError, OwnerBinding, OWNER_CLAIM};

/// Why a token is not a valid JWT-SVID for the caller.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtSvidError {
    #[error("token is not a JWS compact serialization of three base64url parts")]
    Malformed,
    #[error("token {part} is not valid JSON: {reason}")]
    BadJson { part: &'static str, reason: String },
    #[error("token alg {alg:?} is not allowed; JWT-SVIDs use RS, ES or PS with SHA-256/384/512 (JWT-SVID 3)")]
    AlgorithmNotAllowed { alg: String },
    #[error("token typ {typ:?} is not allowed; it must be absent, JWT or JOSE (JWT-SVID 3)")]
    TypeNotAllowed { typ: String },
    #[error("token header has no kid")]
    MissingKid,
    #[error("token has no {claim} claim (JWT-SVID 3)")]
    MissingClaim { claim: &'static str },
    #[error("token sub is not a SPIFFE ID: {0}")]
    InvalidSubject(IdError),
    #[error("no JWT bundle for trust domain {0}")]
    NoBundle(String),
    #[error("no key {kid:?} in the {trust_domain} bundle")]
    UnknownKey { kid: String, trust_domain: String },
    #[error("key {kid:?} cannot verify {alg} signatures")]
    KeyAlgorithmMismatch { kid: String, alg: &'static str },
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("token is not valid before {nbf} (now {now})")]
    NotYetValid { nbf: u64, now: u64 },
    #[error("no audience was given to validate against")]
    NoExpectedAudience,
    #[error("token audience {actual:?} does not contain {expected:?}")]
    AudienceMismatch {
        expected: String,
        actual: Vec<String>,
    },
    #[error("signing failed: {0}")]
    Signing(#[source] crate::jws::JwsError),
    #[error("owner claim: {0}")]
    OwnerBinding(BindingError),
}

/// `aud` as a single string or an array (RFC 7519 section 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn values(&self) -> Vec<String> {
        match self {
            Audience::One(a) => vec![a.clone()],
            Audience::Many(a) => a.clone(),
        }
    }
}

/// The claims Sigil puts in a JWT-SVID, plus any extra members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub aud: Audience,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Who answers for the workload (the `owner` claim). A named field, so
    /// `extra` never holds it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerBinding>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl JwtSvidError {
    /// A short, stable name of the failed check, as WIMSE problems have:
    /// what verification reports and the event log name.
    pub fn check(&self) -> &'static str {
        match self {
            JwtSvidError::Malformed | JwtSvidError::BadJson { .. } => "jwt_svid.malformed",
            JwtSvidError::AlgorithmNotAllowed { .. } => "jwt_svid.alg",
            JwtSvidError::TypeNotAllowed { .. } => "jwt_svid.typ",
            JwtSvidError::MissingKid => "jwt_svid.kid",
            JwtSvidError::MissingClaim { .. } => "jwt_svid.claim",
            JwtSvidError::InvalidSubject(_) => "jwt_svid.sub",
            JwtSvidError::NoBundle(_) => "jwt_svid.trust_domain",
            JwtSvidError::UnknownKey { .. } | JwtSvidError::KeyAlgorithmMismatch { .. } => {
                "jwt_svid.key"
            }
            JwtSvidError::BadSignature => "jwt_svid.signature",
            JwtSvidError::Expired { .. } => "jwt_svid.exp",
            JwtSvidError::NotYetValid { .. } => "jwt_svid.nbf",
            JwtSvidError::NoExpectedAudience | JwtSvidError::AudienceMismatch { .. } => {
                "jwt_svid.aud"
            }
            JwtSvidError::Signing(_) => "jwt_svid.signing",
            JwtSvidError::OwnerBinding(_) => "jwt_svid.owner",
        }
    }
}

/// A JWT-SVID that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwtSvid {
    pub spiffe_id: SpiffeId,
    pub audience: Vec<String>,
    pub expiry: u64,
    /// Who answers for the workload, when the token carries a binding.
    pub owner: Option<OwnerBinding>,
    /// Every claim of the token, as JSON.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

fn unix(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Signs `claims` as a JWT-SVID (`typ: JWT`) with `kid`.
pub fn sign(
    claims: &Claims,
    kid: &str,
    alg: Algorithm,
    key: &jsonwebtoken::EncodingKey,
) -> Result<String, JwtSvidError> {
    let header = serde_json::json!({"alg": alg.name(), "kid": kid, "typ": "JWT"});
    crate::jws::sign_with(&header, claims, alg, key).map_err(JwtSvidError::Signing)
}

/// Validates a JWT-SVID for `audience` against the bundle of its subject's
/// trust domain. Checks, in order: structure, header (alg, typ, kid), claims
/// present, subject, key, signature, expiry and not-before, audience, and
/// the owner binding when there is one.
pub fn validate<'b>(
    token: &str,
    audience: &str,
    bundle_for: impl Fn(&TrustDomain) -> Option<&'b Bundle>,
    now: SystemTime,
) -> Result<ValidatedJwtSvid, JwtSvidError> {
    if audience.is_empty() {
        return Err(JwtSvidError::NoExpectedAudience);
    }
    let jws = crate::jws::parse(token).map_err(|e| match e {
        crate::jws::JwsError::BadJson { part, reason } => JwtSvidError::BadJson { part, reason },
        _ => JwtSvidError::Malformed,
    })?;
    let header = jws.header.clone();
    let alg_name = header.alg.unwrap_or_default();
    let alg = Algorithm::from_name(&alg_name)
        .filter(|alg| alg.is_spiffe())
        .ok_or(JwtSvidError::AlgorithmNotAllowed { alg: alg_name })?;
    if let Some(typ) = header.typ {
        if typ != "JWT" && typ != "JOSE" {
            return Err(JwtSvidError::TypeNotAllowed { typ });
        }
    }
    let kid = header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or(JwtSvidError::MissingKid)?;

    let claims = &jws.claims;
    let sub = claims
        .get("sub")
        .and_then(|v| v.as_str())
        .ok_or(JwtSvidError::MissingClaim { claim: "sub" })?;
    let aud: Audience = claims
        .get("aud")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or(JwtSvidError::MissingClaim { claim: "aud" })?;
    let date = |name: &'static str| {
        jws.numeric_date(name)
            .map_err(|_| JwtSvidError::MissingClaim { claim: name })
    };
    let exp = date("exp")?.ok_or(JwtSvidError::MissingClaim { claim: "exp" })?;
    let nbf = date("nbf")?;
    let spiffe_id = parse_spiffe_id(sub).map_err(JwtSvidError::InvalidSubject)?;

    let trust_domain = spiffe_id.trust_domain();
    let bundle =
        bundle_for(trust_domain).ok_or_else(|| JwtSvidError::NoBundle(trust_domain.to_string()))?;
    let key = bundle
        .jwt_authority(&kid)
        .ok_or_else(|| JwtSvidError::UnknownKey {
            kid: kid.clone(),
            trust_domain: trust_domain.to_string(),
        })?;
    if !alg.fits(key) {
        return Err(JwtSvidError::KeyAlgorithmMismatch {
            kid,
            alg: alg.name(),
        });
    }
    if !jws.verifies(alg, key) {
        return Err(JwtSvidError::BadSignature);
    }

    let now = unix(now);
    if now >= exp {
        return Err(JwtSvidError::Expired { exp, now });
    }
    if let Some(nbf) = nbf {
        if now < nbf {
            return Err(JwtSvidError::NotYetValid { nbf, now });
        }
    }
    let audiences = aud.values();
    if !audiences.iter().any(|a| a == audience) {
        return Err(JwtSvidError::AudienceMismatch {
            expected: audience.to_owned(),
            actual: audiences,
        });
    }
    let owner = owner_claim(&jws.claims)?;
    Ok(ValidatedJwtSvid {
        spiffe_id,
        audience: audiences,
        expiry: exp,
        owner,
        claims: jws.claims.clone(),
    })
}

/// The `owner` claim, if present; a malformed one refuses the token rather
/// than being taken for no owner.
fn owner_claim(
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<OwnerBinding>, JwtSvidError> {
    claims
        .get(OWNER_CLAIM)
        .map(OwnerBinding::from_claim)
        .transpose()
        .map_err(JwtSvidError::OwnerBinding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::JwtAuthority;
    use crate::jwk::PublicKey;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use base64::Engine;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use std::time::Duration;

    struct Signer {
        pkcs8: Vec<u8>,
        public: PublicKey,
    }

    fn signer() -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).unwrap();
        let point = pair.public_key().as_ref();
        let public = PublicKey::Ec {
            curve: crate::jwk::Curve::P256,
            x: point[1..33].to_vec(),
            y: point[33..].to_vec(),
        };
        Signer { pkcs8, public }
    }

    const NOW: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn claims() -> Claims {
        Claims {
            sub: "spiffe://example.org/web".into(),
            aud: Audience::Many(vec!["db".into()]),
            exp: NOW + 300,
            iat: Some(NOW),
            owner: None,
            extra: BTreeMap::new(),
        }
    }

    fn setup() -> (Signer, Bundle) {
        let s = signer();
        let mut bundle = Bundle::new(TrustDomain::new("example.org").unwrap());
        bundle.add_jwt_authority(JwtAuthority {
            kid: "k1".into(),
            key: s.public.clone(),
        });
        (s, bundle)
    }

    fn token_with(header: serde_json::Value, claims: serde_json::Value, s: &Signer) -> String {
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let key = jsonwebtoken::EncodingKey::from_ec_der(&s.pkcs8);
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::ES256)
                .unwrap();
        format!("{input}.{sig}")
    }

    #[test]
    fn sign_and_validate() {
        let (s, bundle) = setup();
        let key = jsonwebtoken::EncodingKey::from_ec_der(&s.pkcs8);
        let token = sign(&claims(), "k1", Algorithm::ES256, &key).unwrap();
        let ok = validate(&token, "db", |_| Some(&bundle), at(NOW)).unwrap();
        assert_eq!(ok.spiffe_id.to_string(), "spiffe://example.org/web");
        assert_eq!(ok.expiry, NOW + 300);
        assert_eq!(ok.claims["iat"], NOW);
    }

    #[test]
    fn reject_table() {
        let (s, bundle) = setup();
        let good_header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
        let good_claims = serde_json::to_value(claims()).unwrap();
        let with = |base: &serde_json::Value, key: &str, value: serde_json::Value| {
            let mut v = base.clone();
            if value.is_null() {
                v.as_object_mut().unwrap().remove(key);
            } else {
                v[key] = value;
            }
            v
        };
        let h = |k, v| with(&good_header, k, v);
        let c = |k, v| with(&good_claims, k, v);
        use serde_json::json;
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "alg none",
                token_with(h("alg", json!("none")), good_claims.clone(), &s),
                "alg \"none\"",
            ),
            (
                "alg HS256",
                token_with(h("alg", json!("HS256")), good_claims.clone(), &s),
                "alg \"HS256\"",
            ),
            (
                "alg EdDSA",
                token_with(h("alg", json!("EdDSA")), good_claims.clone(), &s),
                "alg \"EdDSA\"",
            ),
            (
                "alg absent",
                token_with(h("alg", json!(null)), good_claims.clone(), &s),
                "alg \"\"",
            ),
            (
                "typ other",
                token_with(h("typ", json!("wit+jwt")), good_claims.clone(), &s),
                "typ \"wit+jwt\"",
            ),
            (
                "kid absent",
                token_with(h("kid", json!(null)), good_claims.clone(), &s),
                "no kid",
            ),
            (
                "kid unknown",
                token_with(h("kid", json!("k9")), good_claims.clone(), &s),
                "no key \"k9\"",
            ),
            (
                "alg vs key",
                token_with(h("alg", json!("RS256")), good_claims.clone(), &s),
                "cannot verify RS256",
            ),
            (
                "no sub",
                token_with(good_header.clone(), c("sub", json!(null)), &s),
                "no sub claim",
            ),
            (
                "no aud",
                token_with(good_header.clone(), c("aud", json!(null)), &s),
                "no aud claim",
            ),
            (
                "no exp",
                token_with(good_header.clone(), c("exp", json!(null)), &s),
                "no exp claim",
            ),
            (
                "bad sub",
                token_with(good_header.clone(), c("sub", json!("https://x")), &s),
                "not a SPIFFE ID",
            ),
            (
                "foreign td",
                token_with(
                    good_header.clone(),
                    c("sub", json!("spiffe://other.org/x")),
                    &s,
                ),
                "no JWT bundle for trust domain other.org",
            ),
            (
                "expired",
                token_with(good_header.clone(), c("exp", json!(NOW - 1)), &s),
                "expired",
            ),
            (
                "exactly at exp",
                token_with(good_header.clone(), c("exp", json!(NOW)), &s),
                "expired",
            ),
            (
                "not yet valid",
                token_with(good_header.clone(), c("nbf", json!(NOW + 10)), &s),
                "not valid before",
            ),
            (
                "wrong aud",
                token_with(good_header.clone(), c("aud", json!("other")), &s),
                "does not contain \"db\"",
            ),
            ("two parts", "a.b".into(), "JWS compact"),
            ("four parts", "a.b.c.d".into(), "JWS compact"),
            (
                "header not json",
                format!("{}.{}.x", B64URL.encode("nope"), B64URL.encode("{}")),
                "header is not valid JSON",
            ),
        ];
        for (name, token, needle) in cases {
            let err = validate(
                &token,
                "db",
                |td| (td.as_str() == "example.org").then_some(&bundle),
                at(NOW),
            )
            .expect_err(name)
            .to_string();
            assert!(err.contains(needle), "{name}: {err}");
        }
        // A valid token with one flipped signature byte fails the signature check.
        let good = token_with(good_header.clone(), good_claims.clone(), &s);
        let mut bytes = good.into_bytes();
        let last = bytes.len() - 5;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            validate(&tampered, "db", |_| Some(&bundle), at(NOW)),
            Err(JwtSvidError::BadSignature)
        );
        assert_eq!(
            validate("x", "", |_| Some(&bundle), at(NOW)),
            Err(JwtSvidError::NoExpectedAudience)
        );
    }

    #[test]
    fn audience_string_or_array() {
        let (s, bundle) = setup();
        let header = serde_json::json!({"alg": "ES256", "kid": "k1"});
        let mut c = serde_json::to_value(claims()).unwrap();
        c["aud"] = serde_json::json!("db");
        let token = token_with(header, c, &s);
        assert!(validate(&token, "db", |_| Some(&bundle), at(NOW)).is_ok());
    }

    fn owner() -> OwnerBinding {
        OwnerBinding {
            owner_id: "mailto:alice@example.org".into(),
            key_thumbprint: [7; 32],
            consent_sha256: crate::owner::consent_sha256("a.b.c"),
            actors: vec!["spiffe://example.org/agents/alice".into()],
        }
    }

    #[test]
    fn an_owner_claim_is_signed_and_validated() {
        let (s, bundle) = setup();
        let key = jsonwebtoken::EncodingKey::from_ec_der(&s.pkcs8);
        let with_owner = Claims {
            owner: Some(owner()),
            ..claims()
        };
        let token = sign(&with_owner, "k1", Algorithm::ES256, &key).unwrap();
        let ok = validate(&token, "db", |_| Some(&bundle), at(NOW)).unwrap();
        assert_eq!(ok.owner, Some(owner()));
        assert_eq!(ok.claims[OWNER_CLAIM]["id"], "mailto:alice@example.org");
        // The typed claims read it back into the field, not into `extra`.
        let parsed: Claims = serde_json::from_value(serde_json::Value::Object(ok.claims)).unwrap();
        assert_eq!(parsed.owner, Some(owner()));
        assert!(
            !parsed.extra.contains_key(OWNER_CLAIM),
            "{:?}",
            parsed.extra
        );
    }

    #[test]
    fn without_an_owner_claim_there_is_no_owner() {
        let (s, bundle) = setup();
        let key = jsonwebtoken::EncodingKey::from_ec_der(&s.pkcs8);
        let token = sign(&claims(), "k1", Algorithm::ES256, &key).unwrap();
        let ok = validate(&token, "db", |_| Some(&bundle), at(NOW)).unwrap();
        assert_eq!(ok.owner, None);
        assert!(!ok.claims.contains_key(OWNER_CLAIM));
    }

    #[test]
    fn a_malformed_owner_claim_is_refused() {
        let (s, bundle) = setup();
        let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
        let good = serde_json::to_value(Claims {
            owner: Some(owner()),
            ..claims()
        })
        .unwrap();
        let mut short_jkt = good.clone();
        short_jkt[OWNER_CLAIM]["jkt"] = B64URL.encode([1; 16]).into();
        let mut unknown_member = good.clone();
        unknown_member[OWNER_CLAIM]["role"] = "admin".into();
        let mut not_an_object = good;
        not_an_object[OWNER_CLAIM] = "mailto:alice@example.org".into();
        for (name, claims, needle) in [
            ("jkt of 16 bytes", short_jkt, "keyThumbprint is 16 bytes"),
            ("unknown member", unknown_member, "role"),
            ("a string", not_an_object, "owner claim is malformed"),
        ] {
            let token = token_with(header.clone(), claims, &s);
            let err = validate(&token, "db", |_| Some(&bundle), at(NOW)).expect_err(name);
            assert!(
                matches!(err, JwtSvidError::OwnerBinding(_)),
                "{name}: {err}"
            );
            let text = err.to_string();
            assert!(text.starts_with("owner claim: "), "{name}: {text}");
            assert!(text.contains(needle), "{name}: {text}");
        }
    }
}
