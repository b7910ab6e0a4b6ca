//! Workload Identity Tokens (draft-ietf-wimse-workload-creds section 3.1;
//! SPIFFE WIT-SVID.md): signing by the issuer, validation by receivers. A WIT
//! may carry an owner binding in the [`OWNER_CLAIM`] claim (format in
//! [`crate::owner`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Profile, Token, WimseError};
use crate::bundle::Bundle;
use crate::id::{parse_spiffe_id, SpiffeId, TrustDomain};
use crate::jwk::{Algorithm, Jwk, PublicKey};
use crate::jws;
use crate::owner::{OwnerBinding, OWNER_CLAIM};

/// The media type a WIT is explicitly typed with.
pub const WIT_TYP: &str = "wit+jwt";

/// The claims Sigil puts in a WIT-SVID. No `aud`: a WIT is not a bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitClaims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub exp: u64,
    pub jti: String,
    pub cnf: Confirmation,
    /// Who answers for the workload (the `owner` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerBinding>,
}

/// RFC 7800 confirmation: the workload's public key, with `alg`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    pub jwk: Jwk,
}

/// Signs a WIT-SVID: header `alg`, `kid`, `typ: wit+jwt`.
pub fn sign(
    claims: &WitClaims,
    kid: &str,
    alg: Algorithm,
    key: &jsonwebtoken::EncodingKey,
) -> Result<String, jws::JwsError> {
    let header = serde_json::json!({"alg": alg.name(), "kid": kid, "typ": WIT_TYP});
    jws::sign_with(&header, claims, alg, key)
}

/// A WIT that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedWit {
    /// The workload identifier (`sub`).
    pub subject: String,
    /// `sub` as a SPIFFE ID, when it is one.
    pub spiffe_id: Option<SpiffeId>,
    pub trust_domain: TrustDomain,
    /// The key the workload proves possession of, and the algorithm its
    /// proofs must use.
    pub cnf: PublicKey,
    pub cnf_alg: Algorithm,
    pub exp: u64,
    pub jti: Option<String>,
    /// Who answers for the workload, when the WIT carries a binding.
    pub owner: Option<OwnerBinding>,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Whether a JOSE `typ` names `expected`, with or without `application/`
/// (RFC 7515 section 4.1.9), case-insensitively.
pub(crate) fn typ_is(typ: Option<&str>, expected: &str) -> bool {
    typ.is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t == expected || t.strip_prefix("application/") == Some(expected)
    })
}

/// Validates a WIT against the bundle of its subject's trust domain, at
/// `now` (Unix seconds) with `skew` seconds of tolerance. Checks, in order:
/// structure, `typ`, `alg` (profile), `kid`, the required claims, `sub`,
/// bundle and key, signature, `exp` and `nbf`, `cnf.jwk` and its `alg`, and
/// the `owner` binding when there is one.
pub fn validate(
    token: &str,
    profile: Profile,
    bundle_for: impl Fn(&TrustDomain) -> Option<Arc<Bundle>>,
    now: u64,
    skew: u64,
) -> Result<ValidatedWit, WimseError> {
    let mut jws = jws::parse(token).map_err(|e| WimseError::from_jws(Token::Wit, e))?;
    if !typ_is(jws.header.typ.as_deref(), WIT_TYP) {
        return Err(WimseError::WrongType {
            token: Token::Wit,
            expected: WIT_TYP,
            actual: jws.header.typ.clone(),
        });
    }
    let alg = allowed_alg(Token::Wit, jws.header.alg.as_deref(), profile)?;
    let kid = jws.header.kid.as_deref().filter(|k| !k.is_empty());
    if kid.is_none() && profile == Profile::Spiffe {
        return Err(WimseError::MissingKid);
    }
    let missing = |claim| WimseError::MissingClaim {
        token: Token::Wit,
        claim,
    };
    let sub = jws.str_claim("sub").ok_or_else(|| missing("sub"))?;
    let exp = jws
        .numeric_date("exp")
        .map_err(|_| missing("exp"))?
        .ok_or_else(|| missing("exp"))?;
    let nbf = jws.numeric_date("nbf").map_err(|_| missing("nbf"))?;
    let cnf_jwk: Jwk = jws
        .claims
        .get("cnf")
        .and_then(|cnf| cnf.get("jwk"))
        .and_then(|jwk| serde_json::from_value(jwk.clone()).ok())
        .ok_or_else(|| missing("cnf.jwk"))?;
    let (spiffe_id, trust_domain) = subject(sub, profile)?;

    let bundle = bundle_for(&trust_domain).ok_or_else(|| WimseError::UnknownTrustDomain {
        trust_domain: trust_domain.to_string(),
    })?;
    let verified = match kid {
        Some(kid) => {
            let key = bundle
                .wit_authority(kid)
                .ok_or_else(|| WimseError::UnknownKey {
                    kid: kid.to_owned(),
                    trust_domain: trust_domain.to_string(),
                })?;
            jws.verifies(alg, key)
        }
        // Generic WIMSE WITs may omit `kid`: any of the domain's WIT keys.
        None => bundle
            .wit_authorities()
            .iter()
            .any(|authority| jws.verifies(alg, &authority.key)),
    };
    if !verified {
        return Err(WimseError::BadSignature { token: Token::Wit });
    }
    if now >= exp.saturating_add(skew) {
        return Err(WimseError::Expired {
            token: Token::Wit,
            exp,
            now,
        });
    }
    if let Some(nbf) = nbf {
        if now.saturating_add(skew) < nbf {
            return Err(WimseError::NotYetValid { nbf, now });
        }
    }

    let bad_cnf = |reason: String| WimseError::BadConfirmationKey { reason };
    let cnf = PublicKey::from_jwk(&cnf_jwk).map_err(|e| bad_cnf(e.to_string()))?;
    let cnf_alg_name = cnf_jwk
        .alg
        .as_deref()
        .ok_or_else(|| bad_cnf("member \"alg\" is missing".into()))?;
    let cnf_alg = Algorithm::from_name(cnf_alg_name)
        .filter(|a| profile.allows(*a))
        .ok_or_else(|| bad_cnf(format!("alg {cnf_alg_name:?} is not allowed")))?;
    if !cnf_alg.fits(&cnf) {
        return Err(bad_cnf(format!(
            "alg {cnf_alg_name} does not fit a {} key",
            cnf_jwk.kty
        )));
    }
    let owner = owner_claim(&jws.claims)?;
    let subject = sub.to_owned();
    let jti = jws.str_claim("jti").map(str::to_owned);
    Ok(ValidatedWit {
        subject,
        spiffe_id,
        trust_domain,
        cnf,
        cnf_alg,
        exp,
        jti,
        owner,
        claims: std::mem::take(&mut jws.claims),
    })
}

/// The `owner` claim, if present; a malformed one refuses the WIT rather
/// than being taken for no owner.
fn owner_claim(
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<OwnerBinding>, WimseError> {
    claims
        .get(OWNER_CLAIM)
        .map(OwnerBinding::from_claim)
        .transpose()
        .map_err(|e| WimseError::BadOwner {
            reason: e.to_string(),
        })
}

/// The JWS `alg` of a token, if the profile allows it. `none` and the HMAC
/// algorithms are never JWS algorithms Sigil knows.
pub(crate) fn allowed_alg(
    token: Token,
    alg: Option<&str>,
    profile: Profile,
) -> Result<Algorithm, WimseError> {
    let name = alg.unwrap_or_default();
    Algorithm::from_name(name)
        .filter(|a| profile.allows(*a))
        .ok_or_else(|| WimseError::AlgorithmNotAllowed {
            token,
            alg: name.to_owned(),
            profile: match profile {
                Profile::Spiffe => "SPIFFE WIT-SVID",
                Profile::Wimse => "WIMSE",
            },
        })
}

/// The trust domain a WIT claims to come from, read without validating it
/// (to pick the bundle to validate it with).
pub fn claimed_trust_domain(token: &str, profile: Profile) -> Result<TrustDomain, WimseError> {
    let jws = jws::parse(token).map_err(|e| WimseError::from_jws(Token::Wit, e))?;
    let sub = jws.str_claim("sub").ok_or(WimseError::MissingClaim {
        token: Token::Wit,
        claim: "sub",
    })?;
    Ok(subject(sub, profile)?.1)
}

/// The subject as a SPIFFE ID (required by the SPIFFE profile) or a WIMSE
/// workload identifier `scheme://trust-domain/path`, and its trust domain.
fn subject(sub: &str, profile: Profile) -> Result<(Option<SpiffeId>, TrustDomain), WimseError> {
    let bad = |expected, reason: String| WimseError::BadSubject {
        sub: sub.to_owned(),
        expected,
        reason,
    };
    if profile == Profile::Spiffe || sub.starts_with("spiffe://") {
        let id = parse_spiffe_id(sub).map_err(|e| bad("SPIFFE ID", e.to_string()))?;
        let td = id.trust_domain().clone();
        return Ok((Some(id), td));
    }
    let (scheme, rest) = sub
        .split_once("://")
        .ok_or_else(|| bad("workload identifier URI", "no scheme://".into()))?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Err(bad("workload identifier URI", "bad scheme".into()));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let td = TrustDomain::new(authority)
        .map_err(|e| bad("workload identifier URI", format!("trust domain: {e}")))?;
    Ok((None, td))
}
