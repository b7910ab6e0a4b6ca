//! The receiving side: validates the WIT (cached), then the WPT, against
//! this service's configuration: audiences (never taken from `Host` or
//! `X-Forwarded-Host`), clock skew, WPT lifetime bound, the tokens it
//! understands in `oth`, and a per-sender replay window.
//!
//! Owner-bound WITs are also held to the issuer's revocation list
//! ([`crate::revocation`]), on every request (cached WITs included), once
//! the proof holds: a WIT whose owner the list revokes is refused
//! ([`WimseError::OwnerRevoked`]). A verifier that
//! [requires revocations](Verifier::require_revocations) (one that follows
//! the issuer's list, see [`super::revocations`]) also refuses owner-bound
//! WITs while it holds no current list for their trust domain
//! ([`WimseError::RevocationsUnavailable`]): it never accepts what might be
//! revoked. WITs without an owner are not affected.

use std::collections::HashMap;

use base64::Engine;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::httpsig::{self, CheckedSignature, RequestView, ResponseView, TimePolicy};
use super::replay::{Admission, ReplayLimits, ReplayWindow};
use super::wit::{self, ValidatedWit};
use super::wpt::{self, Policy, RequestContext, ValidatedWpt};
use super::{Profile, Token, WimseError, WptForm};
use crate::bundle::Bundle;
use crate::id::{SpiffeId, TrustDomain};
use crate::owner::OwnerBinding;
use crate::revocation::{self, RevocationError, RevocationList};

/// How a service checks the proofs it receives.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// What `aud` may be. An origin (`https://svc.example.com`, no path)
    /// also accepts itself followed by the request's path.
    pub audiences: Vec<String>,
    pub profile: Profile,
    /// Tolerated clock difference, seconds.
    pub skew_secs: u64,
    /// How far ahead a WPT's `exp` may lie, seconds.
    pub max_wpt_lifetime_secs: u64,
    /// Header names (any case) this service binds through `oth`.
    pub other_tokens: Vec<String>,
    /// Validated WITs kept; a WIT is looked up by its SHA-256.
    pub wit_cache_capacity: usize,
    pub replay: ReplayLimits,
}

impl VerifierConfig {
    pub fn new(audiences: Vec<String>) -> Self {
        VerifierConfig {
            audiences,
            profile: Profile::Spiffe,
            skew_secs: 30,
            max_wpt_lifetime_secs: 300,
            other_tokens: Vec::new(),
            wit_cache_capacity: 10_000,
            replay: ReplayLimits::default(),
        }
    }
}

/// What one request presents.
#[derive(Clone, Copy)]
pub struct Presented<'a> {
    pub wit: &'a str,
    pub wpt: &'a str,
    /// The request's path, without query (for origin audiences).
    pub path: Option<&'a str>,
    /// The whole `Authorization` header value.
    pub authorization: Option<&'a str>,
    pub txn_token: Option<&'a str>,
    /// Looks a request header up by lower-case name (for `oth`).
    pub header: &'a dyn Fn(&str) -> Option<String>,
}

impl std::fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Proofs stay out of logs: an unused WPT could still be replayed.
        f.debug_struct("Presented")
            .field("path", &self.path)
            .field("wit_len", &self.wit.len())
            .field("wpt_len", &self.wpt.len())
            .field("authorization", &self.authorization.map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

/// A request whose proof held: who sent it and how it proved it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub wit: Arc<ValidatedWit>,
    pub proof: Proof,
}

/// The proof of possession a request carried.
#[derive(Debug, Clone, PartialEq)]
pub enum Proof {
    /// A Workload Proof Token.
    Wpt(ValidatedWpt),
    /// An HTTP Message Signature.
    HttpSignature(CheckedSignature),
}

/// A request signed with HTTP Message Signatures, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub wit: &'a str,
    pub request: RequestView<'a>,
    /// The request content, checked against Content-Digest.
    pub content: &'a [u8],
}

impl Verified {
    /// The sender's workload identifier.
    pub fn subject(&self) -> &str {
        &self.wit.subject
    }

    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        self.wit.spiffe_id.as_ref()
    }

    /// Who answers for the sender, when its WIT carries an owner binding.
    pub fn owner(&self) -> Option<&OwnerBinding> {
        self.wit.owner.as_ref()
    }
}

/// Verifies WIT + WPT pairs. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Verifier {
    config: VerifierConfig,
    audiences: AudienceSet,
    other_tokens: Vec<String>,
    bundles: RwLock<HashMap<TrustDomain, Arc<Bundle>>>,
    wits: Mutex<HashMap<[u8; 32], Arc<ValidatedWit>>>,
    replay: ReplayWindow,
    /// The newest revocation list held per trust domain.
    revocations: RwLock<HashMap<TrustDomain, Arc<RevocationList>>>,
    /// Whether owner-bound WITs need a current list (fail closed).
    revocations_required: AtomicBool,
}

fn unix(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Verifier {
    pub fn new(config: VerifierConfig) -> Self {
        Verifier {
            audiences: AudienceSet::new(&config.audiences),
            other_tokens: config
                .other_tokens
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            replay: ReplayWindow::new(config.replay),
            config,
            bundles: RwLock::new(HashMap::new()),
            wits: Mutex::new(HashMap::new()),
            revocations: RwLock::new(HashMap::new()),
            revocations_required: AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Trusts `bundle`'s WIT keys for its trust domain, replacing what was
    /// trusted there. Cached WITs are validated afresh afterwards, so a
    /// key dropped from the bundle stops being accepted at once.
    pub fn set_bundle(&self, bundle: Bundle) {
        let td = bundle.trust_domain().clone();
        self.bundles
            .write()
            .expect("bundles")
            .insert(td, Arc::new(bundle));
        self.wits.lock().expect("WIT cache").clear();
    }

    /// Trusts exactly `bundles`, one per trust domain: a trust domain not
    /// among them (a federation that ended) is trusted no longer. This is
    /// what a FetchWITBundles message, which carries every bundle the
    /// caller may trust, calls for.
    pub fn set_bundles(&self, bundles: impl IntoIterator<Item = Bundle>) {
        let bundles: HashMap<TrustDomain, Arc<Bundle>> = bundles
            .into_iter()
            .map(|b| (b.trust_domain().clone(), Arc::new(b)))
            .collect();
        *self.bundles.write().expect("bundles") = bundles;
        self.wits.lock().expect("WIT cache").clear();
    }

    fn bundle_for(&self, td: &TrustDomain) -> Option<Arc<Bundle>> {
        self.bundles.read().expect("bundles").get(td).cloned()
    }

    /// Takes a revocation list (compact JWS, see [`crate::revocation`]): it
    /// must verify against the bundle trusted for WITs of the trust domain
    /// it names in `iss`, and be at least as new as the list held for that
    /// trust domain. Returns its `seq`. A refused list changes nothing: the
    /// one held stays. Takes effect at once, for cached WITs too.
    pub fn set_revocations(&self, jws: &str) -> Result<u64, RevocationError> {
        let td = revocations_trust_domain(jws)?;
        let bundle = self
            .bundle_for(&td)
            .ok_or_else(|| RevocationError::UnknownKey {
                kid: crate::jws::parse(jws)
                    .ok()
                    .and_then(|t| t.header.kid)
                    .unwrap_or_default(),
                trust_domain: td.to_string(),
            })?;
        let list = revocation::verify(jws, &bundle)?;
        let mut held = self.revocations.write().expect("revocations");
        let list = revocation::newer(held.get(&td).map(|l| &**l), list)?;
        let seq = list.seq;
        held.insert(td, Arc::new(list));
        Ok(seq)
    }

    /// The revocation list held for `td`, if any (current or stale).
    pub fn revocations(&self, td: &TrustDomain) -> Option<Arc<RevocationList>> {
        self.revocations
            .read()
            .expect("revocations")
            .get(td)
            .cloned()
    }

    /// From now on, refuses owner-bound WITs while no current revocation
    /// list is held for their trust domain (none yet, or a stale one).
    /// [`super::revocations::follow`] sets this; it cannot be undone.
    pub fn require_revocations(&self) {
        self.revocations_required.store(true, Ordering::SeqCst);
    }

    /// Whether [`Verifier::require_revocations`] was called.
    pub fn requires_revocations(&self) -> bool {
        self.revocations_required.load(Ordering::SeqCst)
    }

    /// Whether `wit`'s owner may be served at `now` (Unix seconds): not when
    /// the list held for its trust domain revokes it, nor, when
    /// revocations are [required](Verifier::require_revocations), when no
    /// current list is held. A WIT without an owner always may. A stale
    /// list still revokes what it names.
    pub fn check_owner(&self, wit: &ValidatedWit, now: u64) -> Result<(), WimseError> {
        let Some(owner) = &wit.owner else {
            return Ok(());
        };
        let list = self.revocations(&wit.trust_domain);
        if let Some(list) = &list {
            if list.revokes(owner) {
                return Err(WimseError::OwnerRevoked {
                    owner: owner.owner_id.clone(),
                });
            }
        }
        let current = list.is_some_and(|l| !l.is_stale(now));
        if !current && self.requires_revocations() {
            return Err(WimseError::RevocationsUnavailable {
                trust_domain: wit.trust_domain.to_string(),
            });
        }
        Ok(())
    }

    /// Validates a WIT, from the cache when this exact token passed before,
    /// and checks its owner against the revocations
    /// ([`Verifier::check_owner`]) every time.
    pub fn validate_wit(&self, token: &str, now: u64) -> Result<Arc<ValidatedWit>, WimseError> {
        let wit = self.validate_wit_with_digest(token, &sha256(token), now)?;
        self.check_owner(&wit, now)?;
        Ok(wit)
    }

    /// [`Verifier::validate_wit`] for a token whose SHA-256 is known.
    fn validate_wit_with_digest(
        &self,
        token: &str,
        digest: &[u8; 32],
        now: u64,
    ) -> Result<Arc<ValidatedWit>, WimseError> {
        let cached = self.wits.lock().expect("WIT cache").get(digest).cloned();
        if let Some(wit) = cached {
            if now >= wit.exp.saturating_add(self.config.skew_secs) {
                return Err(WimseError::Expired {
                    token: Token::Wit,
                    exp: wit.exp,
                    now,
                });
            }
            return Ok(wit);
        }
        let wit = Arc::new(wit::validate(
            token,
            self.config.profile,
            |td| self.bundle_for(td),
            now,
            self.config.skew_secs,
        )?);
        let mut cache = self.wits.lock().expect("WIT cache");
        if cache.len() >= self.config.wit_cache_capacity {
            let skew = self.config.skew_secs;
            cache.retain(|_, w| now < w.exp.saturating_add(skew));
            if cache.len() >= self.config.wit_cache_capacity {
                cache.clear();
            }
        }
        cache.insert(*digest, wit.clone());
        Ok(wit)
    }

    /// Validates the WIT, then a WPT sent in the header form
    /// (draft-ietf-wimse-wpt-01), at `now`; see [`Verifier::verify_as`].
    pub fn verify(
        &self,
        presented: &Presented<'_>,
        now: SystemTime,
    ) -> Result<Verified, WimseError> {
        self.verify_as(presented, WptForm::Header, now)
    }

    /// Validates the WIT, then the WPT as sent in `form`, at `now`. In the
    /// header form an `Authorization` access token is bound by `ath`. In the
    /// Authorization form that field held the WPT itself, so
    /// `presented.authorization` must be `None` and `ath` plays no part:
    /// draft-ietf-wimse-wpt-02 removed it, and a claim the recipient does
    /// not understand is ignored (its section 2.3).
    pub fn verify_as(
        &self,
        presented: &Presented<'_>,
        form: WptForm,
        now: SystemTime,
    ) -> Result<Verified, WimseError> {
        if form == WptForm::Authorization && presented.authorization.is_some() {
            return Err(WimseError::OtherCredential);
        }
        let now = unix(now);
        // One digest serves as the cache key and, encoded, as the `wth`.
        let digest = sha256(presented.wit);
        let wit = self.validate_wit_with_digest(presented.wit, &digest, now)?;
        let wth = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        let accepts = |aud: &str| self.audiences.accepts(aud, presented.path);
        let request = RequestContext {
            wth: &wth,
            accepts: &accepts,
            authorization: presented.authorization,
            bind_access_token: form == WptForm::Header,
            txn_token: presented.txn_token,
            understood: &self.other_tokens,
            header: presented.header,
        };
        let policy = Policy {
            profile: self.config.profile,
            skew: self.config.skew_secs,
            max_lifetime: self.config.max_wpt_lifetime_secs,
        };
        let wpt = wpt::validate(presented.wpt, &wit, &request, &self.replay, policy, now)?;
        // After the proof: only a sender who proved its WIT learns that its
        // owner is refused.
        self.check_owner(&wit, now)?;
        Ok(Verified {
            wit,
            proof: Proof::Wpt(wpt),
        })
    }

    /// Validates the WIT, then the request's HTTP Message Signature with the
    /// WIT's key, its Content-Digest, and that its nonce is new.
    pub fn verify_signed(
        &self,
        signed: &SignedRequest<'_>,
        now: SystemTime,
    ) -> Result<Verified, WimseError> {
        let now = unix(now);
        let wit = self.validate_wit_with_digest(signed.wit, &sha256(signed.wit), now)?;
        let path = signed.request.target.split('?').next();
        let accepts = |aud: &str| self.audiences.accepts(aud, path);
        let time = TimePolicy {
            now,
            skew: self.config.skew_secs,
            max_lifetime: self.config.max_wpt_lifetime_secs,
        };
        let checked =
            httpsig::verify_request(&signed.request, &wit.cnf, wit.cnf_alg, accepts, time)?;
        httpsig::check_content_digest(signed.request.headers, signed.content)?;
        let expires = checked.expires.saturating_add(self.config.skew_secs);
        match self
            .replay
            .admit(&wit.subject, &checked.nonce, expires, now)
        {
            Admission::Fresh => {}
            Admission::Replayed => {
                return Err(WimseError::ReplayedNonce {
                    nonce: checked.nonce,
                    sender: wit.subject.clone(),
                })
            }
            Admission::Full => {
                return Err(WimseError::ReplayWindowFull {
                    sender: wit.subject.clone(),
                })
            }
        }
        self.check_owner(&wit, now)?;
        Ok(Verified {
            wit,
            proof: Proof::HttpSignature(checked),
        })
    }

    /// Validates a signed response's WIT, its signature and Content-Digest,
    /// and that it answers the request whose signature had `request_nonce`.
    /// Returns the responder's validated WIT.
    pub fn verify_signed_response(
        &self,
        wit: &str,
        response: &ResponseView<'_>,
        content: &[u8],
        request_nonce: &str,
        now: SystemTime,
    ) -> Result<Arc<ValidatedWit>, WimseError> {
        let now = unix(now);
        let wit = self.validate_wit_with_digest(wit, &sha256(wit), now)?;
        let time = TimePolicy {
            now,
            skew: self.config.skew_secs,
            max_lifetime: self.config.max_wpt_lifetime_secs,
        };
        httpsig::verify_response(response, &wit.cnf, wit.cnf_alg, request_nonce, time)?;
        httpsig::check_content_digest(response.headers, content)?;
        self.check_owner(&wit, now)?;
        Ok(wit)
    }
}

/// The trust domain a revocation list names in `iss`, read before it is
/// verified (to pick the bundle to verify it with).
fn revocations_trust_domain(jws: &str) -> Result<TrustDomain, RevocationError> {
    if jws.len() > revocation::MAX_REVOCATIONS_BYTES {
        return Err(RevocationError::TooLarge { len: jws.len() });
    }
    let token = crate::jws::parse(jws)?;
    let iss = token
        .str_claim("iss")
        .ok_or_else(|| RevocationError::Claims("iss is missing".into()))?;
    iss.strip_prefix("spiffe://")
        .and_then(|td| TrustDomain::new(td).ok())
        .filter(|td| crate::id::trust_domain_id(td) == iss)
        .ok_or_else(|| RevocationError::Claims(format!("iss {iss:?} is not a trust domain ID")))
}

fn sha256(text: &str) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The audiences a service accepts: each configured value, and each
/// configured origin (no path) joined with the request's path. Matching
/// allocates nothing.
#[derive(Debug, Clone)]
struct AudienceSet {
    exact: Vec<String>,
    origins: Vec<String>,
}

impl AudienceSet {
    fn new(configured: &[String]) -> Self {
        let origins = configured
            .iter()
            .filter(|a| {
                let after_scheme = a.split_once("://").map_or("", |(_, rest)| rest);
                !after_scheme.is_empty() && !after_scheme.trim_end_matches('/').contains('/')
            })
            .map(|a| a.trim_end_matches('/').to_owned())
            .collect();
        AudienceSet {
            exact: configured.to_vec(),
            origins,
        }
    }

    fn accepts(&self, aud: &str, path: Option<&str>) -> bool {
        if self.exact.iter().any(|a| a == aud) {
            return true;
        }
        let Some(path) = path.map(|p| p.split(['?', '#']).next().unwrap_or_default()) else {
            return false;
        };
        self.origins
            .iter()
            .any(|origin| aud.strip_prefix(origin.as_str()) == Some(path))
    }
}
