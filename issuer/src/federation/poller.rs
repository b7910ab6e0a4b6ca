//! Keeps each foreign trust domain's bundle fresh (SPIFFE_Federation.md
//! sections 4.1, 4.2 and 6.2): every relationship's bundle endpoint is
//! fetched at the refresh hint of the bundle it last served, with a little
//! jitter so issuers do not poll in step. A failed fetch is retried after a
//! backoff that starts at [`FIRST_RETRY`] and doubles, never later than the
//! refresh hint: the peer publishes keys several hints before it uses them,
//! so a missed poll or two costs nothing, and nobody needs to refresh by hand
//! after a rotation.
//!
//! A fetched bundle older than the held one (a lower `spiffe_sequence`) is
//! refused and logged; every change of a foreign bundle is an event in the
//! signed log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use workload_api::events::EventKind;
use workload_api::id::{SpiffeId, TrustDomain};
use workload_api::Bundle;

use super::fetch::{self, EndpointParams, FetchTrust, Profile};
use crate::clock::unix_secs;
use crate::state::IssuerState;
use crate::store::{BundleOrigin, BundleWrite, Federation, ForeignBundle, StoreError};

/// The refresh hint assumed when a bundle gives none (section 4.1).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// The bounds put on a peer's refresh hint.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// The first retry after a failed fetch.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// How often the relationships are listed again without a wake-up.
const RELIST: Duration = Duration::from_secs(60);

/// Why a refresh failed; each says what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    #[error("the relationship with {trust_domain} is stored wrongly: {reason}")]
    Corrupt {
        trust_domain: String,
        reason: String,
    },
    #[error(
        "no bundle of {0} is held to authenticate its endpoint: create the relationship with a \
         bootstrap bundle, or set one with `sigil-issuer bundle set`"
    )]
    NoEndpointTrust(String),
}

/// What a refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    pub write: BundleWrite,
    /// When the next poll is due, from the bundle's refresh hint.
    pub refresh: Duration,
}

/// When a relationship is polled next, and how many polls in a row failed.
/// How the polls went is in the store, the same for every replica.
#[derive(Debug, Clone)]
struct Due {
    at: Instant,
    failures: u32,
}

/// The poller of every relationship.
#[derive(Debug)]
pub struct Poller {
    state: IssuerState,
    schedule: Mutex<BTreeMap<String, Due>>,
    wake: Notify,
}

impl Poller {
    pub fn new(state: IssuerState) -> Arc<Self> {
        Arc::new(Poller {
            state,
            schedule: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
        })
    }

    /// Says the relationships changed: they are listed again at once, and a
    /// new one is fetched at once.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Fetches `trust_domain`'s bundle now and stores it, whatever the
    /// schedule says; the schedule then follows the result, and the store
    /// records how it went.
    pub async fn refresh(&self, trust_domain: &str) -> Result<Refreshed, RefreshError> {
        let result = self.fetch_and_store(trust_domain).await;
        self.reschedule(trust_domain, &result);
        let last_error = match &result {
            // A refused older bundle is no failure to fetch, but the
            // operator should see why the held bundle did not change.
            Ok(Refreshed {
                write: BundleWrite::Older { held, fetched },
                ..
            }) => format!(
                "the endpoint served sequence {fetched}, older than the held {held}; \
                 the held bundle is kept"
            ),
            Ok(_) => String::new(),
            Err(error) => error.to_string(),
        };
        let polled_at = unix_secs(self.state.clock.now());
        if let Err(error) = self
            .state
            .store
            .record_federation_poll(
                trust_domain,
                &self.state.replica,
                polled_at,
                result.is_err(),
                &last_error,
            )
            .await
        {
            tracing::warn!(trust_domain, %error, "recording how a federation poll went failed");
        }
        result
    }

    async fn fetch_and_store(&self, trust_domain: &str) -> Result<Refreshed, RefreshError> {
        let federation = self.state.store.get_federation(trust_domain).await?;
        let (params, endpoint_td) = endpoint_params(&federation)?;
        let trust = match &params.profile {
            Profile::HttpsWeb => FetchTrust::system().map_err(RefreshError::Fetch)?,
            Profile::HttpsSpiffe { .. } => {
                FetchTrust::spiffe(self.endpoint_bundle(&endpoint_td).await?)
            }
        };
        let fetched = fetch::fetch(&params, &trust).await?;
        let now = self.state.clock.now();
        let bundle = ForeignBundle {
            trust_domain: trust_domain.to_owned(),
            bundle: fetched.json.clone(),
            sequence: fetched
                .sequence
                .map_or(0, |s| s.min(i64::MAX as u64) as i64),
            origin: BundleOrigin::Endpoint,
            updated_at: unix_secs(now),
        };
        // Without a sequence the latest fetch is the freshest (section 4.2).
        let write = self
            .state
            .store
            .put_foreign_bundle(&bundle, fetched.sequence.is_some())
            .await?;
        let events = &self.state.events;
        let event = match &write {
            BundleWrite::Stored => {
                tracing::info!(trust_domain, sequence = bundle.sequence, url = %federation.bundle_endpoint_url, "foreign bundle updated");
                Some(
                    bundle_event(events, EventKind::ForeignBundleUpdated, &bundle, now).detail(
                        "bundle_endpoint_url",
                        federation.bundle_endpoint_url.clone(),
                    ),
                )
            }
            BundleWrite::Older { held, fetched } => {
                tracing::warn!(trust_domain, held, fetched, url = %federation.bundle_endpoint_url, "fetched foreign bundle is older than the one held; refused");
                Some(
                    events
                        .event(EventKind::ForeignBundleRefused, now)
                        .subject(trust_domain_id(trust_domain))
                        .detail("held_sequence", *held)
                        .detail("fetched_sequence", *fetched)
                        .detail(
                            "bundle_endpoint_url",
                            federation.bundle_endpoint_url.clone(),
                        ),
                )
            }
            BundleWrite::Unchanged => None,
        };
        if let Some(event) = event {
            if let Err(error) = events.append(&[event]).await {
                tracing::error!(%error, "event log append failed after a foreign bundle change");
            }
        }
        let refresh = fetched
            .refresh_hint
            .unwrap_or(DEFAULT_REFRESH)
            .clamp(MIN_REFRESH, MAX_REFRESH);
        Ok(Refreshed { write, refresh })
    }

    /// The bundle that authenticates an https_spiffe endpoint whose SPIFFE
    /// ID is in `endpoint_td`: this issuer's own, or the latest held for it
    /// (the bootstrap bundle before the first fetch of a self-serving one).
    async fn endpoint_bundle(&self, endpoint_td: &TrustDomain) -> Result<Bundle, RefreshError> {
        if *endpoint_td == self.state.config.trust_domain {
            return Ok(self.state.ca.bundle().as_ref().clone());
        }
        let held = match self
            .state
            .store
            .get_foreign_bundle(endpoint_td.as_str())
            .await
        {
            Ok(held) => held,
            Err(StoreError::BundleNotFound(_)) => {
                return Err(RefreshError::NoEndpointTrust(endpoint_td.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        Bundle::from_jwks_json(endpoint_td.clone(), held.bundle.as_bytes()).map_err(|e| {
            RefreshError::Corrupt {
                trust_domain: endpoint_td.to_string(),
                reason: format!("held bundle: {e}"),
            }
        })
    }

    /// Sets when `trust_domain` is polled next after a refresh.
    fn reschedule(&self, trust_domain: &str, result: &Result<Refreshed, RefreshError>) {
        let mut schedule = self.schedule.lock().expect("schedule lock");
        let due = schedule.entry(trust_domain.to_owned()).or_insert(Due {
            at: Instant::now(),
            failures: 0,
        });
        match result {
            Ok(refreshed) => {
                due.failures = 0;
                due.at = Instant::now() + jittered(refreshed.refresh);
            }
            Err(_) => {
                due.failures = due.failures.saturating_add(1);
                let backoff =
                    FIRST_RETRY.saturating_mul(1 << due.failures.min(16).saturating_sub(1));
                due.at = Instant::now() + jittered(backoff.min(DEFAULT_REFRESH));
            }
        }
    }

    /// Polls every relationship when due, until the issuer stops.
    pub async fn run(self: Arc<Self>) {
        // Relationships created, changed or deleted through any replica.
        let mut relationships = self.state.store.subscribe_federations();
        loop {
            relationships.mark_unchanged();
            match self.state.store.list_federations().await {
                Ok(federations) => self.sync_schedule(&federations),
                Err(error) => tracing::warn!(%error, "listing federation relationships failed"),
            }
            let due: Vec<String> = {
                let now = Instant::now();
                let schedule = self.schedule.lock().expect("schedule lock");
                schedule
                    .iter()
                    .filter(|(_, due)| due.at <= now)
                    .map(|(td, _)| td.clone())
                    .collect()
            };
            let mut fetches = tokio::task::JoinSet::new();
            for trust_domain in due {
                let poller = self.clone();
                fetches.spawn(async move {
                    if let Err(error) = poller.refresh(&trust_domain).await {
                        tracing::warn!(trust_domain, %error, "fetching a foreign bundle failed; retrying");
                    }
                });
            }
            while fetches.join_next().await.is_some() {}
            let next = {
                let schedule = self.schedule.lock().expect("schedule lock");
                schedule
                    .values()
                    .map(|due| due.at)
                    .min()
                    .unwrap_or_else(|| Instant::now() + RELIST)
                    .min(Instant::now() + RELIST)
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.wake.notified() => {}
                changed = relationships.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Adds new relationships (due at once) and forgets deleted ones.
    fn sync_schedule(&self, federations: &[Federation]) {
        let mut schedule = self.schedule.lock().expect("schedule lock");
        schedule.retain(|td, _| federations.iter().any(|f| f.trust_domain == *td));
        for federation in federations {
            schedule
                .entry(federation.trust_domain.clone())
                .or_insert(Due {
                    at: Instant::now(),
                    failures: 0,
                });
        }
    }
}

/// The fetch parameters of a stored relationship, and the trust domain of
/// its endpoint's SPIFFE ID (https_spiffe) or its own (https_web).
fn endpoint_params(federation: &Federation) -> Result<(EndpointParams, TrustDomain), RefreshError> {
    let corrupt = |reason: String| RefreshError::Corrupt {
        trust_domain: federation.trust_domain.clone(),
        reason,
    };
    let trust_domain =
        TrustDomain::new(&federation.trust_domain).map_err(|e| corrupt(e.to_string()))?;
    let (profile, endpoint_td) = match federation.profile.as_str() {
        "https_web" => (Profile::HttpsWeb, trust_domain.clone()),
        "https_spiffe" => {
            let endpoint_id = SpiffeId::new(&federation.endpoint_spiffe_id)
                .map_err(|e| corrupt(format!("endpoint SPIFFE ID: {e}")))?;
            let endpoint_td = endpoint_id.trust_domain().clone();
            (Profile::HttpsSpiffe { endpoint_id }, endpoint_td)
        }
        other => return Err(corrupt(format!("unknown profile {other:?}"))),
    };
    Ok((
        EndpointParams {
            trust_domain,
            url: federation.bundle_endpoint_url.clone(),
            profile,
        },
        endpoint_td,
    ))
}

/// `spiffe://<td>`: the subject of events about a trust domain.
pub fn trust_domain_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}")
}

/// The event recording that `bundle` is now held.
pub fn bundle_event(
    events: &crate::eventlog::EventLog,
    kind: EventKind,
    bundle: &ForeignBundle,
    at: std::time::SystemTime,
) -> workload_api::events::Event {
    events
        .event(kind, at)
        .subject(trust_domain_id(&bundle.trust_domain))
        .detail("sequence", bundle.sequence)
        .detail("origin", bundle.origin.as_str())
        .detail(
            "bundle_sha256",
            hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                bundle.bundle.as_bytes(),
            )),
        )
}

/// `base` plus or minus up to a tenth, so peers do not poll in step.
fn jittered(base: Duration) -> Duration {
    let [byte] = crate::ids::random_bytes::<1>();
    let tenth = base / 10;
    base - tenth + tenth * 2 * u32::from(byte) / 255
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_tenth() {
        for _ in 0..200 {
            let d = jittered(Duration::from_secs(100));
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
    }

    #[test]
    fn stored_relationships_become_fetch_parameters() {
        let mut federation = Federation {
            trust_domain: "partner.org".into(),
            bundle_endpoint_url: "https://partner.org/bundle".into(),
            profile: "https_spiffe".into(),
            endpoint_spiffe_id: "spiffe://hub.org/bundle-server".into(),
            created_at: 1,
            updated_at: 1,
        };
        let (params, endpoint_td) = endpoint_params(&federation).unwrap();
        assert_eq!(endpoint_td.as_str(), "hub.org");
        assert!(matches!(params.profile, Profile::HttpsSpiffe { .. }));
        federation.profile = "ftp".into();
        assert!(endpoint_params(&federation)
            .unwrap_err()
            .to_string()
            .contains("unknown profile \"ftp\""));
    }
}
