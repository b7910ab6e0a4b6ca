//! The JWT-SVID cache: one token per (entry, audiences), refreshed once past
//! half its life. While the issuer is unreachable, a cached token is served
//! until it expires, so workloads keep working through short outages; an
//! expired token is never served. Decisions are pure functions of the token
//! and the time passed in; an overdue refresh is due now.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use proto::issuer as pb;
use tonic::Status;
use workload_api::source::{unix_time, JwtSvid};

use super::lru::Lru;
use crate::issuer_health::IssuerHealth;
use crate::node::Node;

/// The bytes of tokens and their keys the cache keeps at most; least
/// recently used tokens go first. Audiences come from workloads, so the
/// cache is bounded by what they weigh, not by how many there are.
pub const CACHE_BUDGET_BYTES: usize = 4 * 1024 * 1024;
/// What a cached token costs beyond its bytes (map slots, times, order).
const ENTRY_OVERHEAD_BYTES: usize = 128;

#[derive(Debug, Clone)]
struct Cached {
    /// Shared, so a cache hit copies a pointer, not the token.
    token: Arc<str>,
    /// Read once from the token, for the event log.
    jti: Arc<str>,
    refresh_at: SystemTime,
    expires_at: SystemTime,
}

impl Cached {
    /// A token signed at `issued_at`, refreshed at half its life.
    fn new(token: String, issued_at: SystemTime, expires_at: SystemTime) -> Self {
        let life = expires_at.duration_since(issued_at).unwrap_or_default();
        Cached {
            jti: workload_api::source::token_jti(&token).into(),
            token: token.into(),
            refresh_at: issued_at + life / 2,
            expires_at,
        }
    }

    /// Valid at `now`: strictly before `exp` (RFC 7519 section 4.1.4).
    fn valid_at(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }

    fn svid(&self) -> JwtSvid {
        JwtSvid {
            token: self.token.to_string(),
            expires_at: self.expires_at,
            jti: self.jti.clone(),
        }
    }
}

/// What to do with the cached token at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Serve it: it is young.
    Serve,
    /// Sign a new one; serve the cached one if signing fails.
    Refresh,
    /// Sign a new one; nothing usable is cached.
    Sign,
}

fn decide(cached: Option<&Cached>, now: SystemTime) -> Use {
    match cached {
        Some(c) if now < c.refresh_at && c.valid_at(now) => Use::Serve,
        Some(c) if c.valid_at(now) => Use::Refresh,
        _ => Use::Sign,
    }
}

/// Whether a signing failure says the issuer is failing rather than
/// refusing this one request on its merits (no such entry, bad audience).
fn is_outage(code: tonic::Code) -> bool {
    !matches!(
        code,
        tonic::Code::PermissionDenied | tonic::Code::InvalidArgument | tonic::Code::NotFound
    )
}

type Key = (String, Vec<String>);

/// The JWT-SVID cache.
#[derive(Debug)]
pub struct JwtCache {
    tokens: Mutex<Lru<Key, Cached>>,
}

impl Default for JwtCache {
    fn default() -> Self {
        JwtCache {
            tokens: Mutex::new(Lru::new(CACHE_BUDGET_BYTES)),
        }
    }
}

impl JwtCache {
    /// A token for `entry_id` and `audience` valid at `now`, cached or
    /// freshly signed. Signing outcomes are reported to `health`.
    pub async fn fetch(
        &self,
        node: &Node,
        health: &IssuerHealth,
        entry_id: &str,
        audience: &[String],
        now: SystemTime,
    ) -> Result<JwtSvid, Status> {
        let key = cache_key(entry_id, audience);
        let cached = self.tokens.lock().expect("jwt cache").get(&key).cloned();
        let usable = match decide(cached.as_ref(), now) {
            Use::Serve => return Ok(cached.expect("decided on a cached token").svid()),
            Use::Refresh => cached,
            Use::Sign => None,
        };
        let signed = node
            .client()
            .sign_jwt_svid(pb::SignJwtSvidRequest {
                entry_id: entry_id.to_owned(),
                audience: audience.to_vec(),
            })
            .await;
        match signed {
            Ok(response) => {
                health.succeeded();
                let response = response.into_inner();
                let fresh = Cached::new(response.token, now, unix_time(response.expires_at));
                self.store(key, fresh.clone());
                if fresh.valid_at(now) {
                    Ok(fresh.svid())
                } else {
                    // The issuer's clock is behind ours by more than the TTL.
                    Err(Status::unavailable(
                        "the issuer signed a JWT-SVID that has already expired; check the clocks",
                    ))
                }
            }
            Err(status) => {
                if is_outage(status.code()) {
                    health.failed(
                        now,
                        &format!("JWT-SVID: {:?}: {}", status.code(), status.message()),
                    );
                }
                match usable {
                    Some(c) if c.valid_at(now) => {
                        tracing::warn!(error = %status.message(), "issuer unavailable; serving a cached JWT-SVID");
                        Ok(c.svid())
                    }
                    _ if !is_outage(status.code()) => Err(status),
                    _ => Err(Status::unavailable(format!(
                        "JWT-SVID cannot be signed right now: {}",
                        status.message()
                    ))),
                }
            }
        }
    }

    fn store(&self, key: Key, token: Cached) {
        let weight = ENTRY_OVERHEAD_BYTES
            + key.0.len()
            + key.1.iter().map(String::len).sum::<usize>()
            + token.token.len();
        self.tokens
            .lock()
            .expect("jwt cache")
            .insert(key, token, weight);
    }

    /// Bytes the cache holds, by its own accounting.
    pub fn bytes(&self) -> usize {
        self.tokens.lock().expect("jwt cache").bytes()
    }
}

/// Tokens are cached per entry and set of audiences, in any order.
fn cache_key(entry_id: &str, audience: &[String]) -> Key {
    let mut sorted = audience.to_vec();
    sorted.sort();
    sorted.dedup();
    (entry_id.to_owned(), sorted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn a_token_is_served_until_half_life_then_refreshed_until_expiry() {
        let token = Cached::new("t".into(), at(0), at(300));
        assert_eq!(token.refresh_at, at(150));
        assert_eq!(decide(Some(&token), at(0)), Use::Serve);
        assert_eq!(decide(Some(&token), at(149)), Use::Serve);
        assert_eq!(decide(Some(&token), at(150)), Use::Refresh, "equal: due");
        assert_eq!(decide(Some(&token), at(299)), Use::Refresh);
        assert_eq!(decide(Some(&token), at(300)), Use::Sign, "expired at exp");
        assert_eq!(decide(Some(&token), at(86_400)), Use::Sign, "long overdue");
        assert_eq!(decide(None, at(0)), Use::Sign);
    }

    #[test]
    fn a_clock_step_forward_never_serves_the_old_token() {
        let token = Cached::new("t".into(), at(0), at(60));
        assert_eq!(decide(Some(&token), at(10)), Use::Serve);
        assert_eq!(decide(Some(&token), at(10 + 3600)), Use::Sign);
    }

    #[test]
    fn a_token_signed_already_expired_is_not_usable() {
        // exp before our clock's issue time: refresh now, never serve.
        let token = Cached::new("t".into(), at(100), at(90));
        assert_eq!(token.refresh_at, at(100));
        assert!(!token.valid_at(at(100)));
        assert_eq!(decide(Some(&token), at(100)), Use::Sign);
    }

    #[test]
    fn refusals_on_the_merits_are_not_outages() {
        assert!(!is_outage(tonic::Code::PermissionDenied));
        assert!(!is_outage(tonic::Code::InvalidArgument));
        assert!(is_outage(tonic::Code::Unavailable));
        assert!(is_outage(tonic::Code::DeadlineExceeded));
        assert!(is_outage(tonic::Code::Internal));
    }

    #[test]
    fn the_cache_key_ignores_audience_order_and_repeats() {
        let a = cache_key("e", &["b".into(), "a".into(), "b".into()]);
        let b = cache_key("e", &["a".into(), "b".into()]);
        assert_eq!(a, b);
        assert_ne!(a, cache_key("f", &["a".into(), "b".into()]));
    }

    #[test]
    fn the_cache_is_bounded_in_bytes_whatever_the_audiences() {
        let cache = JwtCache::default();
        let audience = "a".repeat(2048);
        for i in 0..4000 {
            cache.store(
                cache_key(&i.to_string(), std::slice::from_ref(&audience)),
                Cached::new("t".repeat(3000), at(0), at(5000)),
            );
            assert!(cache.bytes() <= CACHE_BUDGET_BYTES);
        }
        let held = cache.tokens.lock().unwrap().len();
        assert!(held > 100 && held < 4000, "{held} tokens held");
        let newest = cache_key("3999", std::slice::from_ref(&audience));
        assert!(cache.tokens.lock().unwrap().get(&newest).is_some());
        let oldest = cache_key("0", std::slice::from_ref(&audience));
        assert!(cache.tokens.lock().unwrap().get(&oldest).is_none());
    }
}
