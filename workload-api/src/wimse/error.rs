//! Why a WIT or WPT was refused: one variant per check, each naming itself
//! so a service can answer with exactly what failed.

/// Which of the two tokens a check concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Wit,
    Wpt,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Token::Wit => "WIT",
            Token::Wpt => "WPT",
        })
    }
}

/// A failed check. [`WimseError::check`] names it for machines; `Display`
/// explains it for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WimseError {
    #[error("the {header} header is missing")]
    MissingHeader { header: &'static str },
    #[error("the {header} header appears more than once")]
    DuplicateHeader { header: &'static str },
    #[error("the {header} header is not visible ASCII")]
    BadHeader { header: &'static str },
    /// draft-ietf-wimse-wpt-02 replaced the header with the Authorization
    /// form; a request uses one or the other, never both.
    #[error("the request carries a WPT both in Authorization and in Workload-Proof-Token")]
    BothForms,
    /// draft-ietf-wimse-wpt-02 section 2: "There is exactly one
    /// Authorization header field in the request and it uses the WPT
    /// authentication scheme"; section 2.2: a request that presents a WPT
    /// "cannot present a token with any other authentication scheme".
    #[error("the request presents another credential beside the WPT in Authorization (exactly one Authorization field, with the WPT scheme, is allowed)")]
    OtherCredential,
    #[error("this service does not accept the WPT in the {form} form")]
    FormNotAccepted { form: super::http::WptForm },
    #[error("request URI {uri:?} is not absolute, so it cannot be a WPT audience")]
    NotAbsoluteUri { uri: String },
    #[error("{token} is not a JWS compact serialization of three base64url parts")]
    Malformed { token: Token },
    #[error("{token} {part} is not a JSON object: {reason}")]
    BadJson {
        token: Token,
        part: &'static str,
        reason: String,
    },
    #[error("{token} typ must be {expected:?}, got {actual:?}")]
    WrongType {
        token: Token,
        expected: &'static str,
        actual: Option<String>,
    },
    #[error("{token} alg {alg:?} is not allowed under the {profile} profile")]
    AlgorithmNotAllowed {
        token: Token,
        alg: String,
        profile: &'static str,
    },
    #[error("WIT has no kid header (the SPIFFE WIT-SVID profile requires one)")]
    MissingKid,
    #[error("{token} claim {claim:?} is missing or malformed")]
    MissingClaim { token: Token, claim: &'static str },
    #[error("WIT sub {sub:?} is not a {expected}: {reason}")]
    BadSubject {
        sub: String,
        expected: &'static str,
        reason: String,
    },
    #[error("no trust bundle for trust domain {trust_domain:?}")]
    UnknownTrustDomain { trust_domain: String },
    #[error("WIT signing key {kid:?} is not in the WIT bundle of {trust_domain:?}")]
    UnknownKey { kid: String, trust_domain: String },
    #[error("{token} signature does not verify")]
    BadSignature { token: Token },
    #[error("{token} expired at {exp} (now {now})")]
    Expired { token: Token, exp: u64, now: u64 },
    #[error("WIT is not valid before {nbf} (now {now})")]
    NotYetValid { nbf: u64, now: u64 },
    #[error("WIT cnf.jwk is unusable: {reason}")]
    BadConfirmationKey { reason: String },
    #[error("WPT alg {wpt:?} does not equal the WIT's cnf.jwk.alg {cnf:?}")]
    AlgorithmMismatch { wpt: String, cnf: String },
    #[error("WPT aud {actual:?} is not an audience of this service")]
    WrongAudience { actual: Vec<String> },
    #[error("WPT exp {exp} is more than {max_secs} s ahead (now {now})")]
    ExpiresTooLate { exp: u64, now: u64, max_secs: u64 },
    #[error("WPT wth does not match the hash of the presented WIT")]
    WthMismatch,
    #[error("WPT jti {jti:?} was already used by {sender}")]
    Replayed { jti: String, sender: String },
    #[error("too many unexpired WPTs from {sender}; retry later")]
    ReplayWindowFull { sender: String },
    #[error("an Authorization header is present but the WPT has no ath claim")]
    MissingAth,
    #[error("WPT ath does not match the hash of the Authorization header's token")]
    AthMismatch,
    #[error("a Txn-Token header is present but the WPT has no tth claim")]
    MissingTth,
    #[error("WPT tth does not match the hash of the Txn-Token header")]
    TthMismatch,
    #[error("WPT oth entry {name:?} names a token this service does not understand")]
    UnknownOth { name: String },
    #[error("the {name} header is present but the WPT's oth claim does not bind it")]
    MissingOth { name: String },
    #[error("WPT oth hash for {name:?} does not match that header")]
    OthMismatch { name: String },
    #[error(transparent)]
    HttpSignature(#[from] super::httpsig::HttpSigError),
    #[error("HTTP signature nonce {nonce:?} was already used by {sender}")]
    ReplayedNonce { nonce: String, sender: String },
    /// The WIT's `owner` claim (see [`crate::owner`]) could not be read.
    #[error("WIT owner claim is refused: {reason}")]
    BadOwner { reason: String },
    /// The issuer's revocation list (see [`crate::revocation`]) names the
    /// WIT's owner, by id or by key.
    #[error("the WIT's owner {owner} is revoked")]
    OwnerRevoked { owner: String },
    /// The verifier follows revocations but holds no current list for the
    /// WIT's trust domain (none yet, or past its `exp`), so it cannot tell
    /// whether the owner is revoked: it fails closed.
    #[error("no current revocation list from {trust_domain}; owner-bound WITs are refused until one arrives")]
    RevocationsUnavailable { trust_domain: String },
}

impl WimseError {
    /// A stable name for the failed check, e.g. `wpt.aud` or `wit.signature`.
    pub fn check(&self) -> &'static str {
        use WimseError::*;
        let by_token = |token: &Token, wit: &'static str, wpt: &'static str| match token {
            Token::Wit => wit,
            Token::Wpt => wpt,
        };
        match self {
            MissingHeader { .. } => "header.missing",
            DuplicateHeader { .. } => "header.duplicate",
            BadHeader { .. } => "header.malformed",
            NotAbsoluteUri { .. } => "request.uri",
            BothForms => "request.both_forms",
            OtherCredential => "wpt.authorization",
            FormNotAccepted { .. } => "wpt.form",
            Malformed { token } => by_token(token, "wit.malformed", "wpt.malformed"),
            BadJson { token, .. } => by_token(token, "wit.malformed", "wpt.malformed"),
            WrongType { token, .. } => by_token(token, "wit.typ", "wpt.typ"),
            AlgorithmNotAllowed { token, .. } => by_token(token, "wit.alg", "wpt.alg"),
            MissingKid => "wit.kid",
            MissingClaim { token, .. } => by_token(token, "wit.claims", "wpt.claims"),
            BadSubject { .. } => "wit.sub",
            UnknownTrustDomain { .. } => "wit.trust_domain",
            UnknownKey { .. } => "wit.key",
            BadSignature { token } => by_token(token, "wit.signature", "wpt.signature"),
            Expired { token, .. } => by_token(token, "wit.exp", "wpt.exp"),
            NotYetValid { .. } => "wit.nbf",
            BadConfirmationKey { .. } => "wit.cnf",
            AlgorithmMismatch { .. } => "wpt.alg",
            WrongAudience { .. } => "wpt.aud",
            ExpiresTooLate { .. } => "wpt.exp",
            WthMismatch => "wpt.wth",
            Replayed { .. } => "wpt.jti",
            ReplayWindowFull { .. } => "wpt.jti",
            MissingAth | AthMismatch => "wpt.ath",
            MissingTth | TthMismatch => "wpt.tth",
            UnknownOth { .. } | MissingOth { .. } | OthMismatch { .. } => "wpt.oth",
            HttpSignature(error) => error.check(),
            ReplayedNonce { .. } => "httpsig.nonce",
            BadOwner { .. } => "owner",
            OwnerRevoked { .. } => "wit.owner_revoked",
            RevocationsUnavailable { .. } => "revocations",
        }
    }

    /// Whether the refusal concerns the WIT's owner once the proof held
    /// (revoked, or no current revocation list to tell): the layer answers
    /// these 403, like a route's owner list, whatever the WPT form.
    pub fn is_owner_refusal(&self) -> bool {
        matches!(
            self,
            WimseError::OwnerRevoked { .. } | WimseError::RevocationsUnavailable { .. }
        )
    }

    pub(crate) fn from_jws(token: Token, error: crate::jws::JwsError) -> Self {
        match error {
            crate::jws::JwsError::BadJson { part, reason } => WimseError::BadJson {
                token,
                part,
                reason,
            },
            _ => WimseError::Malformed { token },
        }
    }
}
