//! JWS compact serialization (RFC 7515 section 7.1): the parsing and signing
//! JWT-SVIDs, WITs and WPTs share. What each token requires of its header
//! and claims is checked by its own module.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::jwk::Algorithm;

/// Why a token is not a well-formed compact JWS, or could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    #[error("not a JWS compact serialization of three base64url parts")]
    Malformed,
    #[error("{part} is not a JSON object: {reason}")]
    BadJson { part: &'static str, reason: String },
    /// The claims do not serialize as JSON. jsonwebtoken's error carries the
    /// `serde_json` one and, unlike it, keeps this enum `Clone` and `Eq`.
    #[error("claims do not serialize: {source}")]
    Claims { source: jsonwebtoken::errors::Error },
    /// The key cannot sign with `alg` (a key of another type), or signing failed.
    #[error("cannot sign with {}: {source}", .alg.name())]
    Signing {
        alg: Algorithm,
        source: jsonwebtoken::errors::Error,
    },
}

/// A date claim that is not a non-negative number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadNumericDate;

/// The JOSE header members Sigil reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Header {
    pub alg: Option<String>,
    pub typ: Option<String>,
    pub kid: Option<String>,
}

/// A parsed, not yet verified, compact JWS.
#[derive(Debug, Clone)]
pub struct Compact<'a> {
    pub header: Header,
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// `BASE64URL(header) '.' BASE64URL(payload)`: what the signature covers.
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

impl Compact<'_> {
    /// Whether `key` verifies the signature with `alg`.
    pub fn verifies(&self, alg: Algorithm, key: &crate::jwk::PublicKey) -> bool {
        key.verify(alg, self.signing_input.as_bytes(), &self.signature)
    }

    /// A string claim.
    pub fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(|v| v.as_str())
    }

    /// A NumericDate claim (RFC 7519 section 2): `Ok(None)` when absent, an
    /// error when present but not a non-negative number.
    pub fn numeric_date(&self, name: &str) -> Result<Option<u64>, BadNumericDate> {
        match self.claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or(BadNumericDate),
        }
    }
}

/// Splits and decodes a compact JWS. Exactly three parts, each base64url
/// without padding; header and payload JSON objects.
pub fn parse(token: &str) -> Result<Compact<'_>, JwsError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed);
    };
    let decode = |part: &str| B64URL.decode(part).map_err(|_| JwsError::Malformed);
    let header_bytes = decode(header_b64)?;
    let claims_bytes = decode(claims_b64)?;
    let header = serde_json::from_slice(&header_bytes).map_err(|e| JwsError::BadJson {
        part: "header",
        reason: e.to_string(),
    })?;
    let claims = serde_json::from_slice(&claims_bytes).map_err(|e| JwsError::BadJson {
        part: "claims",
        reason: e.to_string(),
    })?;
    let signature = decode(signature_b64)?;
    Ok(Compact {
        header,
        claims,
        signing_input: &token[..header_b64.len() + 1 + claims_b64.len()],
        signature,
    })
}

/// Signs `header` and `claims` with a jsonwebtoken key (the issuer's keys).
pub fn sign_with(
    header: &serde_json::Value,
    claims: &impl Serialize,
    alg: Algorithm,
    key: &jsonwebtoken::EncodingKey,
) -> Result<String, JwsError> {
    let claims = serde_json::to_vec(claims).map_err(|e| JwsError::Claims { source: e.into() })?;
    let signing_input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims)
    );
    let signature =
        jsonwebtoken::crypto::sign(signing_input.as_bytes(), key, alg.to_jsonwebtoken())
            .map_err(|source| JwsError::Signing { alg, source })?;
    Ok(format!("{signing_input}.{signature}"))
}

/// base64url(SHA-256(ASCII(token))): `wth`, `ath`, `tth` and `oth` values.
pub fn token_hash(token: &str) -> String {
    B64URL.encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_is_checked() {
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "e30.e30.!!",
            "e30.e30=.AA",
            "e30.e30.x",
        ] {
            assert_eq!(parse(bad).unwrap_err(), JwsError::Malformed, "{bad}");
        }
        // `[]` is JSON but not an object.
        assert!(matches!(
            parse("W10.e30.AA").unwrap_err(),
            JwsError::BadJson { part: "header", .. }
        ));
        let ok = parse("e30.eyJhIjoxfQ.AA").unwrap();
        assert_eq!(ok.signing_input, "e30.eyJhIjoxfQ");
        assert_eq!(ok.numeric_date("a"), Ok(Some(1)));
    }

    #[test]
    fn signing_failures_name_the_algorithm() {
        let not_an_ec_key = jsonwebtoken::EncodingKey::from_secret(b"secret");
        let error = sign_with(
            &serde_json::json!({"alg": "ES256"}),
            &serde_json::json!({"sub": "x"}),
            Algorithm::ES256,
            &not_an_ec_key,
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                JwsError::Signing {
                    alg: Algorithm::ES256,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(
            error.to_string().starts_with("cannot sign with ES256: "),
            "{error}"
        );
    }

    #[test]
    fn token_hash_matches_the_published_ath() {
        // vectors/wimse-draft-examples.md: the example request's access token.
        assert_eq!(
            token_hash("16_mAd0GiwaZokU26_0902100"),
            "CL4wjfpRmNf-bdYIbYLnV9d5rMARGwKYE10wUwzC0jI"
        );
    }
}
