//! The admin API's federation calls: relationships (create, update, delete,
//! show, list, refresh) and the bundles held for foreign trust domains (set,
//! show, list, delete). Every request is checked before anything is written,
//! and every change is an event in the signed log.

use std::sync::Arc;

use proto::admin as pb;
use tonic::Status;
use workload_api::events::EventKind;
use workload_api::id::{SpiffeId, TrustDomain};
use workload_api::Bundle;

use super::store_status;
use crate::clock::unix_secs;
use crate::federation::fetch;
use crate::federation::poller::{bundle_event, trust_domain_id, Poller};
use crate::state::IssuerState;
use crate::store::{BundleOrigin, Federation, FederationPoll, ForeignBundle, StoreError};

/// The largest bundle an operator may hand over.
pub const MAX_BUNDLE_BYTES: usize = 1 << 20;
/// The longest bundle endpoint URL.
pub const MAX_URL_BYTES: usize = 2048;

/// The federation calls, with what they need.
#[derive(Debug, Clone)]
pub struct FederationAdmin {
    pub state: IssuerState,
    pub poller: Arc<Poller>,
}

impl FederationAdmin {
    pub async fn create(&self, request: pb::FederationRequest) -> Result<pb::Federation, Status> {
        let (federation, bootstrap) = self.checked(&request, true)?;
        if let Some(bundle) = &bootstrap {
            self.put_bootstrap(&federation, bundle).await?;
        } else if federation.profile == "https_spiffe" && self.needs_bootstrap(&federation).await? {
            return Err(Status::invalid_argument(format!(
                "bootstrap_bundle: required for an https_spiffe endpoint of {} itself until a \
                 bundle of {} is held",
                federation.trust_domain, federation.trust_domain
            )));
        }
        self.state
            .store
            .create_federation(&federation)
            .await
            .map_err(store_status)?;
        self.written(EventKind::FederationCreated, &federation)
            .await
    }

    pub async fn update(&self, request: pb::FederationRequest) -> Result<pb::Federation, Status> {
        let (mut federation, bootstrap) = self.checked(&request, false)?;
        let held = self
            .state
            .store
            .get_federation(&federation.trust_domain)
            .await
            .map_err(store_status)?;
        federation.created_at = held.created_at;
        if let Some(bundle) = &bootstrap {
            self.put_bootstrap(&federation, bundle).await?;
        }
        self.state
            .store
            .update_federation(&federation)
            .await
            .map_err(store_status)?;
        self.written(EventKind::FederationUpdated, &federation)
            .await
    }

    /// After a relationship was created or updated: logs it, has it polled
    /// at once, and answers with it as now held.
    async fn written(
        &self,
        kind: EventKind,
        federation: &Federation,
    ) -> Result<pb::Federation, Status> {
        tracing::info!(trust_domain = %federation.trust_domain, url = %federation.bundle_endpoint_url, profile = %federation.profile, event = %kind.name(), "federation relationship written");
        self.log(federation_event(&self.state, kind, federation))
            .await;
        self.poller.wake();
        self.get(&federation.trust_domain).await
    }

    pub async fn delete(&self, trust_domain: &str) -> Result<(), Status> {
        let trust_domain = checked_trust_domain(trust_domain)?;
        let federation = self
            .state
            .store
            .get_federation(&trust_domain)
            .await
            .map_err(store_status)?;
        let had_bundle = self
            .state
            .store
            .delete_federation(&trust_domain)
            .await
            .map_err(store_status)?;
        tracing::info!(%trust_domain, "federation relationship deleted");
        self.log(
            federation_event(&self.state, EventKind::FederationDeleted, &federation)
                .detail("bundle_deleted", had_bundle),
        )
        .await;
        self.poller.wake();
        Ok(())
    }

    pub async fn get(&self, trust_domain: &str) -> Result<pb::Federation, Status> {
        let trust_domain = checked_trust_domain(trust_domain)?;
        let federation = self
            .state
            .store
            .get_federation(&trust_domain)
            .await
            .map_err(store_status)?;
        self.with_bundle(federation).await
    }

    pub async fn list(&self) -> Result<Vec<pb::Federation>, Status> {
        let federations = self
            .state
            .store
            .list_federations()
            .await
            .map_err(store_status)?;
        let mut out = Vec::with_capacity(federations.len());
        for federation in federations {
            out.push(self.with_bundle(federation).await?);
        }
        Ok(out)
    }

    /// Fetches the bundle now; a failed fetch is UNAVAILABLE naming why.
    pub async fn refresh(&self, trust_domain: &str) -> Result<pb::Federation, Status> {
        let trust_domain = checked_trust_domain(trust_domain)?;
        match self.poller.refresh(&trust_domain).await {
            Ok(_) => self.get(&trust_domain).await,
            Err(crate::federation::poller::RefreshError::Store(e)) => Err(store_status(e)),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    pub async fn set_bundle(
        &self,
        request: pb::SetBundleRequest,
    ) -> Result<pb::ForeignBundle, Status> {
        let trust_domain = checked_trust_domain(&request.trust_domain)?;
        let bundle = parse_bundle("bundle", &trust_domain, &request.bundle)?;
        let held = ForeignBundle {
            trust_domain: trust_domain.clone(),
            bundle: String::from_utf8(bundle.to_jwks_json()).expect("JSON is UTF-8"),
            sequence: bundle.sequence().min(i64::MAX as u64) as i64,
            origin: BundleOrigin::Operator,
            updated_at: unix_secs(self.state.clock.now()),
        };
        self.put(&held).await?;
        self.get_bundle(&trust_domain).await
    }

    pub async fn get_bundle(&self, trust_domain: &str) -> Result<pb::ForeignBundle, Status> {
        let trust_domain = checked_trust_domain(trust_domain)?;
        let held = self
            .state
            .store
            .get_foreign_bundle(&trust_domain)
            .await
            .map_err(store_status)?;
        Ok(bundle_to_proto(&held))
    }

    pub async fn list_bundles(&self) -> Result<Vec<pb::ForeignBundle>, Status> {
        let held = self
            .state
            .store
            .list_foreign_bundles()
            .await
            .map_err(store_status)?;
        Ok(held.iter().map(bundle_to_proto).collect())
    }

    pub async fn delete_bundle(&self, trust_domain: &str) -> Result<(), Status> {
        let trust_domain = checked_trust_domain(trust_domain)?;
        self.state
            .store
            .delete_foreign_bundle(&trust_domain)
            .await
            .map_err(store_status)?;
        tracing::info!(%trust_domain, "foreign bundle deleted");
        let at = self.state.clock.now();
        let event = self
            .state
            .events
            .event(EventKind::ForeignBundleDeleted, at)
            .subject(trust_domain_id(&trust_domain));
        self.log(event).await;
        Ok(())
    }

    /// The request's relationship, checked field by field, and its
    /// bootstrap bundle if one came.
    fn checked(
        &self,
        request: &pb::FederationRequest,
        creating: bool,
    ) -> Result<(Federation, Option<Bundle>), Status> {
        let given = request
            .federation
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("federation: required"))?;
        let trust_domain = checked_trust_domain(&given.trust_domain)?;
        if trust_domain == self.state.config.trust_domain.as_str() {
            return Err(Status::invalid_argument(format!(
                "trust_domain: {trust_domain} is this issuer's own trust domain"
            )));
        }
        let url = &given.bundle_endpoint_url;
        if url.len() > MAX_URL_BYTES {
            return Err(Status::invalid_argument(format!(
                "bundle_endpoint_url: {} bytes; at most {MAX_URL_BYTES}",
                url.len()
            )));
        }
        fetch::check_url(url)
            .map_err(|e| Status::invalid_argument(format!("bundle_endpoint_url: {e}")))?;
        let endpoint_id = match given.profile.as_str() {
            "https_web" => {
                if !given.endpoint_spiffe_id.is_empty() {
                    return Err(Status::invalid_argument(
                        "endpoint_spiffe_id: only with the https_spiffe profile",
                    ));
                }
                None
            }
            "https_spiffe" => Some(SpiffeId::new(&given.endpoint_spiffe_id).map_err(|e| {
                Status::invalid_argument(format!(
                    "endpoint_spiffe_id: {:?}: {e} (required with https_spiffe)",
                    workload_api::display::shown(&given.endpoint_spiffe_id)
                ))
            })?),
            other => {
                return Err(Status::invalid_argument(format!(
                    "profile: {:?} is not https_web or https_spiffe",
                    workload_api::display::shown(other)
                )))
            }
        };
        let bootstrap = if request.bootstrap_bundle.is_empty() {
            None
        } else {
            let Some(endpoint_id) = &endpoint_id else {
                return Err(Status::invalid_argument(
                    "bootstrap_bundle: only with the https_spiffe profile",
                ));
            };
            if endpoint_id.trust_domain().as_str() != trust_domain {
                return Err(Status::invalid_argument(format!(
                    "bootstrap_bundle: the endpoint {endpoint_id} is not in {trust_domain}; the \
                     bundle of its trust domain comes from its own relationship or `bundle set`"
                )));
            }
            Some(parse_bundle(
                "bootstrap_bundle",
                &trust_domain,
                &request.bootstrap_bundle,
            )?)
        };
        let now = unix_secs(self.state.clock.now());
        Ok((
            Federation {
                trust_domain,
                bundle_endpoint_url: url.clone(),
                profile: given.profile.clone(),
                endpoint_spiffe_id: endpoint_id.map(|id| id.to_string()).unwrap_or_default(),
                created_at: if creating { now } else { 0 },
                updated_at: now,
            },
            bootstrap,
        ))
    }

    /// Whether a self-serving https_spiffe endpoint has nothing to be
    /// authenticated by yet.
    async fn needs_bootstrap(&self, federation: &Federation) -> Result<bool, Status> {
        let endpoint_td = federation
            .endpoint_spiffe_id
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        if endpoint_td != federation.trust_domain {
            return Ok(false);
        }
        match self.state.store.get_foreign_bundle(endpoint_td).await {
            Ok(_) => Ok(false),
            Err(StoreError::BundleNotFound(_)) => Ok(true),
            Err(e) => Err(store_status(e)),
        }
    }

    async fn put_bootstrap(&self, federation: &Federation, bundle: &Bundle) -> Result<(), Status> {
        self.put(&ForeignBundle {
            trust_domain: federation.trust_domain.clone(),
            bundle: String::from_utf8(bundle.to_jwks_json()).expect("JSON is UTF-8"),
            sequence: bundle.sequence().min(i64::MAX as u64) as i64,
            origin: BundleOrigin::Bootstrap,
            updated_at: federation.updated_at,
        })
        .await
    }

    /// Stores an operator's or bootstrap bundle and logs the change.
    async fn put(&self, held: &ForeignBundle) -> Result<(), Status> {
        let write = self
            .state
            .store
            .put_foreign_bundle(held, false)
            .await
            .map_err(store_status)?;
        if write == crate::store::BundleWrite::Stored {
            tracing::info!(trust_domain = %held.trust_domain, origin = held.origin.as_str(), "foreign bundle set");
            let at = self.state.clock.now();
            self.log(bundle_event(
                &self.state.events,
                EventKind::ForeignBundleUpdated,
                held,
                at,
            ))
            .await;
        }
        Ok(())
    }

    async fn with_bundle(&self, federation: Federation) -> Result<pb::Federation, Status> {
        let bundle = match self
            .state
            .store
            .get_foreign_bundle(&federation.trust_domain)
            .await
        {
            Ok(held) => Some(bundle_to_proto(&held)),
            Err(StoreError::BundleNotFound(_)) => None,
            Err(e) => return Err(store_status(e)),
        };
        let polls = self
            .state
            .store
            .federation_poll(&federation.trust_domain)
            .await
            .map_err(store_status)?
            .unwrap_or(FederationPoll {
                polled_at: 0,
                failures: 0,
                last_error: String::new(),
                replica: String::new(),
            });
        Ok(pb::Federation {
            last_error: polls.last_error,
            last_polled_at: polls.polled_at,
            failed_polls: polls.failures,
            trust_domain: federation.trust_domain,
            bundle_endpoint_url: federation.bundle_endpoint_url,
            profile: federation.profile,
            endpoint_spiffe_id: federation.endpoint_spiffe_id,
            created_at: federation.created_at,
            updated_at: federation.updated_at,
            bundle,
        })
    }

    /// Records a change already committed; a failure is logged, as for
    /// other operator changes, and the change stands.
    async fn log(&self, event: workload_api::events::Event) {
        if let Err(error) = self.state.events.append(&[event]).await {
            tracing::error!(%error, "event log append failed after a federation change was applied");
        }
    }
}

fn federation_event(
    state: &IssuerState,
    kind: EventKind,
    federation: &Federation,
) -> workload_api::events::Event {
    let mut event = state
        .events
        .event(kind, state.clock.now())
        .subject(trust_domain_id(&federation.trust_domain))
        .detail(
            "bundle_endpoint_url",
            federation.bundle_endpoint_url.clone(),
        )
        .detail("profile", federation.profile.clone());
    if !federation.endpoint_spiffe_id.is_empty() {
        event = event.detail("endpoint_spiffe_id", federation.endpoint_spiffe_id.clone());
    }
    event
}

/// A trust domain name (or `spiffe://` ID), as stored: the bare name.
fn checked_trust_domain(value: &str) -> Result<String, Status> {
    let name = value.strip_prefix("spiffe://").unwrap_or(value);
    TrustDomain::new(name)
        .map(|td| td.to_string())
        .map_err(|e| {
            Status::invalid_argument(format!(
                "trust_domain: {:?}: {e}",
                workload_api::display::shown(value)
            ))
        })
}

/// An operator's bundle: bounded, a JWK Set or PEM certificates.
fn parse_bundle(field: &str, trust_domain: &str, bytes: &[u8]) -> Result<Bundle, Status> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(Status::invalid_argument(format!(
            "{field}: {} bytes; at most {MAX_BUNDLE_BYTES}",
            bytes.len()
        )));
    }
    let td = TrustDomain::new(trust_domain).expect("checked before");
    Bundle::from_jwks_or_pem(td, bytes)
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn bundle_to_proto(held: &ForeignBundle) -> pb::ForeignBundle {
    let pem = TrustDomain::new(&held.trust_domain)
        .ok()
        .and_then(|td| Bundle::from_jwks_json(td, held.bundle.as_bytes()).ok())
        .map(|b| b.x509_pem())
        .unwrap_or_default();
    pb::ForeignBundle {
        trust_domain: held.trust_domain.clone(),
        jwks: held.bundle.clone().into_bytes(),
        sequence: held.sequence,
        origin: held.origin.as_str().into(),
        updated_at: held.updated_at,
        pem,
    }
}
