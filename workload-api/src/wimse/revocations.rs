//! Following the issuer's revocation list (format in [`crate::revocation`])
//! so that a [`Verifier`] refuses WITs whose owner is revoked.
//!
//! [`follow`] marks the verifier as [requiring
//! revocations](Verifier::require_revocations) and spawns a task that keeps
//! its list current: `GET {url}` first, then `GET {url}?after={seq}`, which
//! the issuer answers as soon as a list newer than `seq` is published, or
//! after 30 s with the current one. Each answer goes to
//! [`Verifier::set_revocations`], which verifies it against the WIT
//! authorities of the trust domain it names and refuses one older than the
//! list held. Failures (unreachable issuer, non-200 answer, refused list)
//! are logged at `warn` and retried after a jittered delay doubling from
//! [`MIN_BACKOFF`] to [`MAX_BACKOFF`].
//!
//! Only plain `http:` URLs are followed. The list is a JWS signed by a WIT
//! authority the verifier already trusts, so the transport adds nothing to
//! its authenticity; what an attacker on the path can do is withhold news,
//! and a withheld list goes stale at its `exp`, after which owner-bound WITs
//! are refused (the verifier fails closed).

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

use super::Verifier;
use crate::revocation::{RevocationError, MAX_REVOCATIONS_BYTES};

/// How long one request may take: a little over the issuer's 30 s long
/// poll, so that a quiet issuer is not taken for a dead one.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);
/// The first delay after a failure.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest delay between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The most of an error answer's body put in a log line.
const LOGGED_BODY_CHARS: usize = 200;

/// Why revocations cannot be followed from a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FollowError {
    #[error("revocations URL {url:?} is not an absolute URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("revocations URL {url:?}: https is not supported; the list is signed, so follow it over plain http")]
    Https { url: String },
    #[error("revocations URL {url:?}: only http URLs are supported")]
    Scheme { url: String },
    #[error("revocations URL {url:?} has a query; give the endpoint alone (?after= is added)")]
    Query { url: String },
    #[error("following revocations needs a running tokio runtime, and there is none")]
    NoRuntime,
}

/// Follows the revocation list at `url` (the issuer's
/// `http://host:port/v1/revocations`) for `verifier`: requires revocations
/// of it at once ([`Verifier::require_revocations`]), then keeps its list
/// current from a task spawned on the current tokio runtime. The task holds
/// the verifier weakly and ends once nothing else holds it; the handle can
/// also abort it.
///
/// Errors, changing nothing, when `url` is not a plain `http:` URL without
/// a query, or when called outside a tokio runtime.
pub fn follow(url: &str, verifier: Arc<Verifier>) -> Result<JoinHandle<()>, FollowError> {
    let base = endpoint(url)?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| FollowError::NoRuntime)?;
    verifier.require_revocations();
    Ok(runtime.spawn(run(base, Arc::downgrade(&verifier))))
}

/// `url`, checked: absolute, `http:`, no query.
fn endpoint(url: &str) -> Result<String, FollowError> {
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| FollowError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => {
            return Err(FollowError::Https {
                url: url.to_owned(),
            })
        }
        Some(_) => {
            return Err(FollowError::Scheme {
                url: url.to_owned(),
            })
        }
        None => {
            return Err(FollowError::BadUrl {
                url: url.to_owned(),
                reason: "no scheme".into(),
            })
        }
    }
    if uri.authority().is_none() {
        return Err(FollowError::BadUrl {
            url: url.to_owned(),
            reason: "no host".into(),
        });
    }
    if uri.query().is_some() {
        return Err(FollowError::Query {
            url: url.to_owned(),
        });
    }
    Ok(uri.to_string())
}

/// Why one round failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("request failed: {0}")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("no answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error("answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("the body could not be read (limit {MAX_REVOCATIONS_BYTES} bytes): {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("the body is not UTF-8")]
    NotText,
    #[error("list refused: {0}")]
    Refused(#[source] RevocationError),
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn run(base: String, verifier: Weak<Verifier>) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut held: Option<u64> = None;
    let mut backoff = Backoff::default();
    loop {
        let uri = match held {
            Some(seq) => format!("{base}?after={seq}"),
            None => base.clone(),
        };
        let fetched = tokio::time::timeout(REQUEST_TIMEOUT, fetch(&client, &uri))
            .await
            .unwrap_or(Err(Failure::Timeout));
        let Some(verifier) = verifier.upgrade() else {
            tracing::debug!(url = %base, "the verifier is gone; no longer following revocations");
            return;
        };
        let taken =
            fetched.and_then(|jws| verifier.set_revocations(&jws).map_err(Failure::Refused));
        drop(verifier);
        match taken {
            Ok(seq) => {
                if held != Some(seq) {
                    tracing::info!(url = %base, seq, "revocation list taken");
                }
                held = Some(seq);
                backoff = Backoff::default();
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    url = %base,
                    %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "revocation list not taken"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One `GET`: the body of a 200 answer, up to [`MAX_REVOCATIONS_BYTES`].
async fn fetch(client: &HttpClient, uri: &str) -> Result<String, Failure> {
    let request = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/jwt")
        .body(Empty::new())
        .map_err(|e| Failure::Body(e.into()))?;
    let response = client.request(request).await.map_err(Failure::Request)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_REVOCATIONS_BYTES)
        .collect()
        .await
        .map_err(Failure::Body)?
        .to_bytes();
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&body);
        return Err(Failure::Status {
            status,
            body: text.chars().take(LOGGED_BODY_CHARS).collect(),
        });
    }
    String::from_utf8(body.to_vec()).map_err(|_| Failure::NotText)
}

/// Capped exponential backoff with jitter: each delay lies between half and
/// all of the current step, which doubles from [`MIN_BACKOFF`] to
/// [`MAX_BACKOFF`].
#[derive(Debug)]
struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { step: MIN_BACKOFF }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(MAX_BACKOFF);
        let half = step / 2;
        half + half.mul_f64(random_fraction())
    }
}

/// A number in [0, 1], from the system's random source (0.5 if it fails).
fn random_fraction() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_without_a_query_are_followed() {
        assert_eq!(
            endpoint("http://127.0.0.1:8082/v1/revocations").unwrap(),
            "http://127.0.0.1:8082/v1/revocations"
        );
        assert!(matches!(
            endpoint("https://issuer.example.org/v1/revocations"),
            Err(FollowError::Https { .. })
        ));
        assert!(endpoint("https://x/v1/revocations")
            .unwrap_err()
            .to_string()
            .contains("plain http"));
        assert!(matches!(
            endpoint("ftp://issuer/v1/revocations"),
            Err(FollowError::Scheme { .. })
        ));
        assert!(matches!(
            endpoint("http://issuer/v1/revocations?after=3"),
            Err(FollowError::Query { .. })
        ));
        assert!(matches!(
            endpoint("/v1/revocations"),
            Err(FollowError::BadUrl { .. })
        ));
        assert!(matches!(
            endpoint("not a url"),
            Err(FollowError::BadUrl { .. })
        ));
    }

    #[test]
    fn the_backoff_doubles_with_jitter_up_to_its_cap() {
        let mut backoff = Backoff::default();
        let mut steps = Vec::new();
        for _ in 0..8 {
            let step = backoff.step;
            let delay = backoff.next_delay();
            assert!(delay >= step / 2 && delay <= step, "{delay:?} for {step:?}");
            steps.push(step.as_secs());
        }
        assert_eq!(steps, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn following_needs_a_runtime() {
        let verifier = Arc::new(Verifier::new(super::super::VerifierConfig::new(vec![
            "https://svc.example.org".into(),
        ])));
        assert_eq!(
            follow("http://127.0.0.1:1/v1/revocations", verifier.clone()).unwrap_err(),
            FollowError::NoRuntime
        );
        // Nothing changed: the verifier does not require revocations.
        assert!(!verifier.requires_revocations());
    }
}
