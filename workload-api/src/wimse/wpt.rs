//! Workload Proof Tokens (draft-ietf-wimse-wpt): minting by the sending
//! workload and the receiver's checks, in the draft's order.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;

use super::replay::{Admission, ReplayWindow};
use super::wit::{allowed_alg, typ_is, ValidatedWit};
use super::{Profile, Token, WimseError};
use crate::jws::{self, token_hash};
use crate::keypair::KeyPair;

/// The media type a WPT is explicitly typed with.
pub const WPT_TYP: &str = "wpt+jwt";

/// Other tokens riding in the request that the WPT binds.
#[derive(Debug, Clone, Default)]
pub struct BoundTokens<'a> {
    /// The access token of the `Authorization` header (without its scheme):
    /// bound by `ath`. Header form (draft-ietf-wimse-wpt-01) only: in the
    /// Authorization form of -02 that field carries the WPT, and `ath` is
    /// gone.
    pub access_token: Option<&'a str>,
    /// The `Txn-Token` header: bound by `tth`.
    pub txn_token: Option<&'a str>,
    /// Other headers `(name, value)`: bound by `oth`, keyed by the
    /// lower-cased name.
    pub other: Vec<(&'a str, &'a str)>,
}

/// Mints a WPT for one request to `audience` (the target URI without query
/// or fragment), valid for `lifetime_secs` from `now`.
pub fn mint(
    wit: &str,
    key: &KeyPair,
    audience: &str,
    lifetime_secs: u64,
    bound: &BoundTokens<'_>,
    now: u64,
) -> String {
    let mut jti = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jti)
        .expect("the system RNG works");
    let mut claims = serde_json::Map::new();
    claims.insert("aud".into(), audience.into());
    claims.insert("exp".into(), (now + lifetime_secs).into());
    claims.insert("jti".into(), B64URL.encode(jti).into());
    claims.insert("wth".into(), token_hash(wit).into());
    if let Some(token) = bound.access_token {
        claims.insert("ath".into(), token_hash(token).into());
    }
    if let Some(token) = bound.txn_token {
        claims.insert("tth".into(), token_hash(token).into());
    }
    if !bound.other.is_empty() {
        let oth: serde_json::Map<_, _> = bound
            .other
            .iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), token_hash(value.trim()).into()))
            .collect();
        claims.insert("oth".into(), oth.into());
    }
    let header = serde_json::json!({"alg": key.algorithm().name(), "typ": WPT_TYP});
    key.sign_jws(&header, &claims)
}

/// What the receiver knows of the request a WPT came with.
#[derive(Clone, Copy)]
pub struct RequestContext<'a> {
    /// base64url(SHA-256) of the WIT as presented: what `wth` must be.
    pub wth: &'a str,
    /// Whether `aud` may take a value for this request (from configuration).
    pub accepts: &'a dyn Fn(&str) -> bool,
    /// The whole `Authorization` header value, if present.
    pub authorization: Option<&'a str>,
    /// Whether `ath` binds `authorization` (the header form of
    /// draft-ietf-wimse-wpt-01). draft-ietf-wimse-wpt-02 removed `ath`.
    pub bind_access_token: bool,
    pub txn_token: Option<&'a str>,
    /// Header names this service understands in `oth` (lower case).
    pub understood: &'a [String],
    /// Looks a header up by lower-case name.
    pub header: &'a dyn Fn(&str) -> Option<String>,
}

impl std::fmt::Debug for RequestContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestContext")
            .field("authorization", &self.authorization.map(|_| "[redacted]"))
            .field("txn_token", &self.txn_token.map(|_| "[redacted]"))
            .field("understood", &self.understood)
            .finish_non_exhaustive()
    }
}

/// The receiver's policy for WPTs.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub profile: Profile,
    /// Tolerated clock difference, seconds.
    pub skew: u64,
    /// How far ahead `exp` may lie, seconds.
    pub max_lifetime: u64,
}

/// A WPT that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedWpt {
    pub jti: String,
    pub exp: u64,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Checks a WPT against an already validated WIT, in the order of
/// draft-ietf-wimse-wpt-02 section 2: well-formed; `alg` allowed and equal
/// to `cnf.jwk.alg`; signature by the `cnf` key; `typ`; `aud`; `exp` not
/// passed and not too far ahead; `wth`; `jti` unseen from this sender;
/// `tth`, `oth`; and, in the header form of -01 only, `ath`.
pub fn validate(
    wpt: &str,
    wit: &ValidatedWit,
    request: &RequestContext<'_>,
    replay: &ReplayWindow,
    policy: Policy,
    now: u64,
) -> Result<ValidatedWpt, WimseError> {
    let mut jws = jws::parse(wpt).map_err(|e| WimseError::from_jws(Token::Wpt, e))?;
    let alg = allowed_alg(Token::Wpt, jws.header.alg.as_deref(), policy.profile)?;
    if alg != wit.cnf_alg {
        return Err(WimseError::AlgorithmMismatch {
            wpt: alg.name().into(),
            cnf: wit.cnf_alg.name().into(),
        });
    }
    if !jws.verifies(alg, &wit.cnf) {
        return Err(WimseError::BadSignature { token: Token::Wpt });
    }
    if !typ_is(jws.header.typ.as_deref(), WPT_TYP) {
        return Err(WimseError::WrongType {
            token: Token::Wpt,
            expected: WPT_TYP,
            actual: jws.header.typ.clone(),
        });
    }
    let missing = |claim| WimseError::MissingClaim {
        token: Token::Wpt,
        claim,
    };

    // `aud` is one string or an array of them (RFC 7519 4.1.3).
    let aud: Vec<&str> = match jws.claims.get("aud") {
        Some(serde_json::Value::String(one)) => vec![one.as_str()],
        Some(serde_json::Value::Array(many)) => many
            .iter()
            .map(|v| v.as_str().ok_or_else(|| missing("aud")))
            .collect::<Result<_, _>>()?,
        _ => return Err(missing("aud")),
    };
    let matches = aud.iter().any(|a| {
        let without_query = a.split(['?', '#']).next().unwrap_or_default();
        (request.accepts)(without_query)
    });
    if !matches {
        return Err(WimseError::WrongAudience {
            actual: aud.iter().map(|a| a.to_string()).collect(),
        });
    }

    let exp = jws
        .numeric_date("exp")
        .map_err(|_| missing("exp"))?
        .ok_or_else(|| missing("exp"))?;
    if now >= exp.saturating_add(policy.skew) {
        return Err(WimseError::Expired {
            token: Token::Wpt,
            exp,
            now,
        });
    }
    if exp > now + policy.max_lifetime + policy.skew {
        return Err(WimseError::ExpiresTooLate {
            exp,
            now,
            max_secs: policy.max_lifetime,
        });
    }

    let wth = jws.str_claim("wth").ok_or_else(|| missing("wth"))?;
    if wth != request.wth {
        return Err(WimseError::WthMismatch);
    }

    let jti = jws
        .str_claim("jti")
        .filter(|j| !j.is_empty())
        .ok_or_else(|| missing("jti"))?;
    match replay.admit(&wit.subject, jti, exp.saturating_add(policy.skew), now) {
        Admission::Fresh => {}
        Admission::Replayed => {
            return Err(WimseError::Replayed {
                jti: jti.to_owned(),
                sender: wit.subject.clone(),
            })
        }
        Admission::Full => {
            return Err(WimseError::ReplayWindowFull {
                sender: wit.subject.clone(),
            })
        }
    }

    let jti = jti.to_owned();
    check_bound(&jws, request)?;
    Ok(ValidatedWpt {
        jti,
        exp,
        claims: std::mem::take(&mut jws.claims),
    })
}

/// `ath`, `tth` and `oth`: each token in the request is bound, and each
/// binding matches a token in the request.
fn check_bound(jws: &jws::Compact<'_>, request: &RequestContext<'_>) -> Result<(), WimseError> {
    let ath = jws.str_claim("ath").filter(|_| request.bind_access_token);
    match (request.authorization, ath) {
        (Some(header), Some(ath)) => {
            // The hash covers the token, not the scheme (RFC 9449 4.2).
            let token = header
                .trim()
                .split_once(' ')
                .map_or(header.trim(), |(_, t)| t.trim());
            if ath != token_hash(token) {
                return Err(WimseError::AthMismatch);
            }
        }
        (Some(_), None) if request.bind_access_token => return Err(WimseError::MissingAth),
        (Some(_), None) => return Err(WimseError::OtherCredential),
        (None, Some(_)) => return Err(WimseError::AthMismatch),
        (None, None) => {}
    }
    match (request.txn_token, jws.str_claim("tth")) {
        (Some(token), Some(tth)) if tth == token_hash(token) => {}
        (Some(_), Some(_)) | (None, Some(_)) => return Err(WimseError::TthMismatch),
        (Some(_), None) => return Err(WimseError::MissingTth),
        (None, None) => {}
    }
    let oth = match jws.claims.get("oth") {
        None => serde_json::Map::new(),
        Some(serde_json::Value::Object(map)) => map.clone(),
        Some(_) => {
            return Err(WimseError::MissingClaim {
                token: Token::Wpt,
                claim: "oth",
            })
        }
    };
    for (name, hash) in &oth {
        if !request.understood.iter().any(|u| u == name) {
            return Err(WimseError::UnknownOth { name: name.clone() });
        }
        let present = (request.header)(name);
        match (present.as_deref(), hash.as_str()) {
            (Some(value), Some(hash)) if hash == token_hash(value.trim()) => {}
            _ => return Err(WimseError::OthMismatch { name: name.clone() }),
        }
    }
    for name in request.understood {
        if (request.header)(name).is_some() && !oth.contains_key(name) {
            return Err(WimseError::MissingOth { name: name.clone() });
        }
    }
    Ok(())
}
