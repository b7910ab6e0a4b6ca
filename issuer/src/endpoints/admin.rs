//! The admin API: registration entries, join tokens, agents, the bundle and
//! health. Served only on a local unix socket in a 0700 directory, so access is
//! governed by the file system. Every argument is checked against
//! [`crate::registration`] and [`crate::limits`] before the store sees it;
//! a refusal is `INVALID_ARGUMENT` naming the field, and writes nothing.

use std::sync::Arc;

use proto::admin as pb;
use proto::admin::admin_server::Admin;
use proto::issuer::Entry as EntryMessage;
use tonic::{Request, Response, Status};

use super::convert::{agent_to_proto, entry_to_proto, fields_from_proto, owner_to_proto, Reader};
use super::federation::FederationAdmin;
use super::store_status;
use crate::attestation;
use crate::clock::unix_secs;
use crate::eventlog::witnessed;
use crate::federation::poller::Poller;
use crate::owners::{self, ConsentRefusal};
use crate::registration::{
    check_entry_id, check_entry_spiffe_id, check_id_filter, check_join_token_ttl, check_member,
    validate_entry, FieldError,
};
use crate::state::IssuerState;
use crate::store::{EntryFields, Selector, StoreError};
use workload_api::events::EventKind;

/// The admin API service.
#[derive(Debug, Clone)]
pub struct AdminService {
    state: IssuerState,
    federation: FederationAdmin,
}

impl AdminService {
    pub fn new(state: IssuerState, poller: Arc<Poller>) -> Self {
        let federation = FederationAdmin {
            state: state.clone(),
            poller,
        };
        AdminService { state, federation }
    }

    fn now(&self) -> i64 {
        unix_secs(self.state.clock.now())
    }

    /// The entry's fields, checked, and bound to their owner when the
    /// request names one: its consent must be valid now and cover exactly
    /// this entry. Checked again on every update.
    async fn checked_fields(
        &self,
        fields: Option<&pb::EntryFields>,
    ) -> Result<EntryFields, Status> {
        let message = fields.ok_or(FieldError::Missing { field: "entry" })?;
        let mut fields = fields_from_proto(message);
        validate_entry(&fields, &self.state.config.trust_domain)?;
        match (message.owner_id.as_str(), message.consent.as_str()) {
            ("", "") => {}
            ("", _) => return Err(refused(ConsentRefusal::NoOwner)),
            (_, "") => return Err(refused(ConsentRefusal::Missing)),
            (owner_id, consent) => {
                checked_owner_id("owner_id", owner_id)?;
                let owner = match self.state.store.get_owner(owner_id).await {
                    Ok(owner) => owner,
                    Err(StoreError::OwnerNotFound(_)) => {
                        return Err(Status::failed_precondition(format!(
                            "owner_id: owner {} is not registered",
                            crate::registration::shown(owner_id)
                        )))
                    }
                    Err(e) => return Err(store_status(e)),
                };
                if owner.revoked_at != 0 {
                    return Err(store_status(StoreError::OwnerRevoked {
                        id: owner.id,
                        revoked_at: owner.revoked_at,
                    }));
                }
                owners::bind_entry(&mut fields, &owner, consent, self.now()).map_err(refused)?;
            }
        }
        Ok(fields)
    }

    /// Records what an operator changed. The change is already committed,
    /// so a log failure is reported, naming that it was applied.
    async fn log(&self, events: Vec<workload_api::events::Event>) -> Result<(), Status> {
        self.state.events.append(&events).await.map_err(|e| {
            tracing::error!(error = %e, "event log append failed after a change was applied");
            Status::unavailable(format!("the change was applied, but {e}"))
        })
    }

    fn agent_id(&self, id: &str) -> Result<String, Status> {
        Ok(check_member("spiffe_id", id, &self.state.config.trust_domain)?.to_string())
    }
}

/// FAILED_PRECONDITION for a hand edit of an entry an identity rule keeps,
/// which the rule would undo.
fn refuse_managed(entry: &crate::store::Entry) -> Result<(), Status> {
    if entry.fields.managed_by.is_empty() {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "entry {} is kept by an identity rule ({}); change the rule in the issuer configuration instead",
        entry.id, entry.fields.managed_by
    )))
}

/// INVALID_ARGUMENT naming what in the consent was wrong.
fn refused(refusal: ConsentRefusal) -> Status {
    Status::invalid_argument(refusal.to_string())
}

impl From<FieldError> for Status {
    fn from(error: FieldError) -> Self {
        Status::invalid_argument(error.to_string())
    }
}

/// An owner id from a request's `field`, checked before it reaches the store.
fn checked_owner_id<'a>(field: &str, id: &'a str) -> Result<&'a str, Status> {
    workload_api::owner::check_owner_id(id)
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
    Ok(id)
}

/// The entry that gives the agent of join token `token_id` the SPIFFE ID
/// `alias`: parented by the agent and selecting it by its ID.
fn node_alias(alias: String, td: &workload_api::id::TrustDomain, token_id: &str) -> EntryFields {
    let agent_id = attestation::join_token_agent_id(td, token_id).to_string();
    EntryFields {
        spiffe_id: alias,
        parent_id: agent_id.clone(),
        selectors: vec![Selector {
            kind: "spiffe_id".into(),
            value: agent_id,
        }],
        ..EntryFields::default()
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_entry(
        &self,
        request: Request<pb::CreateEntryRequest>,
    ) -> Result<Response<EntryMessage>, Status> {
        let fields = self
            .checked_fields(request.get_ref().entry.as_ref())
            .await?;
        let entry = self
            .state
            .store
            .create_entry(&fields, self.now())
            .await
            .map_err(store_status)?;
        tracing::info!(entry_id = %entry.id, spiffe_id = %entry.fields.spiffe_id, "entry created");
        let at = self.state.clock.now();
        let log = &self.state.events;
        let mut events = vec![witnessed::entry(log, EventKind::EntryCreated, &entry, at)];
        events.extend(witnessed::consent(log, &entry, at));
        self.log(events).await?;
        Ok(Response::new(entry_to_proto(&entry, Reader::Operator)))
    }

    async fn update_entry(
        &self,
        request: Request<pb::UpdateEntryRequest>,
    ) -> Result<Response<EntryMessage>, Status> {
        let request = request.into_inner();
        check_entry_id(&request.id)?;
        let current = self
            .state
            .store
            .get_entry(&request.id)
            .await
            .map_err(store_status)?;
        refuse_managed(&current)?;
        let fields = self.checked_fields(request.entry.as_ref()).await?;
        let entry = self
            .state
            .store
            .update_entry(&request.id, &fields, request.revision, self.now())
            .await
            .map_err(store_status)?;
        tracing::info!(entry_id = %entry.id, revision = entry.revision, "entry updated");
        let at = self.state.clock.now();
        let log = &self.state.events;
        let mut events = vec![witnessed::entry(log, EventKind::EntryUpdated, &entry, at)];
        events.extend(witnessed::consent(log, &entry, at));
        self.log(events).await?;
        Ok(Response::new(entry_to_proto(&entry, Reader::Operator)))
    }

    async fn delete_entry(
        &self,
        request: Request<pb::EntryId>,
    ) -> Result<Response<pb::DeleteEntryResponse>, Status> {
        let id = &request.get_ref().id;
        check_entry_id(id)?;
        let entry = self.state.store.get_entry(id).await.map_err(store_status)?;
        refuse_managed(&entry)?;
        let deleted = self
            .state
            .delete_entry(id, self.now())
            .await
            .map_err(store_status)?;
        tracing::info!(entry_id = %id, "entry deleted");
        let events =
            witnessed::deleted(&self.state.events, &entry, &deleted, self.state.clock.now());
        self.log(events).await?;
        Ok(Response::new(pb::DeleteEntryResponse {}))
    }

    async fn get_entry(
        &self,
        request: Request<pb::EntryId>,
    ) -> Result<Response<EntryMessage>, Status> {
        let id = &request.get_ref().id;
        check_entry_id(id)?;
        let entry = self.state.store.get_entry(id).await.map_err(store_status)?;
        Ok(Response::new(entry_to_proto(&entry, Reader::Operator)))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let r = request.get_ref();
        check_id_filter("spiffe_id", &r.spiffe_id)?;
        check_id_filter("parent_id", &r.parent_id)?;
        let filter = |s: &String| (!s.is_empty()).then(|| s.clone());
        let entries = self
            .state
            .store
            .list_entries(
                filter(&r.spiffe_id).as_deref(),
                filter(&r.parent_id).as_deref(),
            )
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListEntriesResponse {
            entries: entries
                .iter()
                .map(|e| entry_to_proto(e, Reader::Operator))
                .collect(),
        }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        let request = request.into_inner();
        let td = &self.state.config.trust_domain;
        check_join_token_ttl(request.ttl)?;
        // The alias entry is checked in full before the token is written, so
        // a refusal leaves nothing behind. Every join token agent ID has the
        // same form, so a stand-in token id checks the same rules.
        let alias = (!request.spiffe_id.is_empty())
            .then(|| {
                let alias = check_entry_spiffe_id("spiffe_id", &request.spiffe_id, td)?;
                let fields = node_alias(alias.to_string(), td, "0000000000000000");
                validate_entry(&fields, td)?;
                Ok::<_, FieldError>(alias)
            })
            .transpose()?;
        let ttl = match request.ttl {
            0 => self.state.config.join_token_ttl,
            secs => std::time::Duration::from_secs(secs.unsigned_abs()),
        };
        let now = self.state.clock.now();
        let token = attestation::generate_join_token(&self.state.store, ttl, now)
            .await
            .map_err(store_status)?;
        if let Some(alias) = alias {
            let fields = node_alias(alias.to_string(), td, &token.id);
            self.state
                .store
                .create_entry(&fields, unix_secs(now))
                .await
                .map_err(store_status)?;
        }
        tracing::info!(token_id = %token.id, "join token generated");
        Ok(Response::new(pb::JoinToken {
            token: token.secret.clone(),
            expires_at: unix_secs(token.expires_at),
        }))
    }

    async fn list_agents(
        &self,
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let agents = self.state.store.list_agents().await.map_err(store_status)?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.iter().map(agent_to_proto).collect(),
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::AgentId>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = self.agent_id(&request.get_ref().spiffe_id)?;
        let agent = self
            .state
            .store
            .get_agent(&id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(agent_to_proto(&agent)))
    }

    async fn evict_agent(
        &self,
        request: Request<pb::AgentId>,
    ) -> Result<Response<pb::Empty>, Status> {
        let id = self.agent_id(&request.get_ref().spiffe_id)?;
        self.state
            .store
            .delete_agent(&id)
            .await
            .map_err(store_status)?;
        tracing::info!(agent_id = %id, "agent evicted");
        let event = witnessed::agent(
            &self.state.events,
            EventKind::AgentEvicted,
            &id,
            self.state.clock.now(),
        );
        self.log(vec![event]).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn ban_agent(
        &self,
        request: Request<pb::AgentId>,
    ) -> Result<Response<pb::Empty>, Status> {
        let id = self.agent_id(&request.get_ref().spiffe_id)?;
        self.state
            .store
            .ban_agent(&id, self.now())
            .await
            .map_err(store_status)?;
        tracing::info!(agent_id = %id, "agent banned");
        let event = witnessed::agent(
            &self.state.events,
            EventKind::AgentBanned,
            &id,
            self.state.clock.now(),
        );
        self.log(vec![event]).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn get_bundle(
        &self,
        _request: Request<pb::BundleRequest>,
    ) -> Result<Response<pb::BundleResponse>, Status> {
        let bundle = self.state.ca.bundle();
        Ok(Response::new(pb::BundleResponse {
            trust_domain: bundle.trust_domain().to_string(),
            jwks: bundle.to_jwks_json(),
            pem: bundle.x509_pem(),
        }))
    }

    async fn create_federation(
        &self,
        request: Request<pb::FederationRequest>,
    ) -> Result<Response<pb::Federation>, Status> {
        Ok(Response::new(
            self.federation.create(request.into_inner()).await?,
        ))
    }

    async fn update_federation(
        &self,
        request: Request<pb::FederationRequest>,
    ) -> Result<Response<pb::Federation>, Status> {
        Ok(Response::new(
            self.federation.update(request.into_inner()).await?,
        ))
    }

    async fn delete_federation(
        &self,
        request: Request<pb::TrustDomainRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.federation
            .delete(&request.get_ref().trust_domain)
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn get_federation(
        &self,
        request: Request<pb::TrustDomainRequest>,
    ) -> Result<Response<pb::Federation>, Status> {
        Ok(Response::new(
            self.federation.get(&request.get_ref().trust_domain).await?,
        ))
    }

    async fn list_federations(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::ListFederationsResponse>, Status> {
        Ok(Response::new(pb::ListFederationsResponse {
            federations: self.federation.list().await?,
        }))
    }

    async fn refresh_federation(
        &self,
        request: Request<pb::TrustDomainRequest>,
    ) -> Result<Response<pb::Federation>, Status> {
        Ok(Response::new(
            self.federation
                .refresh(&request.get_ref().trust_domain)
                .await?,
        ))
    }

    async fn set_foreign_bundle(
        &self,
        request: Request<pb::SetBundleRequest>,
    ) -> Result<Response<pb::ForeignBundle>, Status> {
        Ok(Response::new(
            self.federation.set_bundle(request.into_inner()).await?,
        ))
    }

    async fn get_foreign_bundle(
        &self,
        request: Request<pb::TrustDomainRequest>,
    ) -> Result<Response<pb::ForeignBundle>, Status> {
        Ok(Response::new(
            self.federation
                .get_bundle(&request.get_ref().trust_domain)
                .await?,
        ))
    }

    async fn list_foreign_bundles(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::ListForeignBundlesResponse>, Status> {
        Ok(Response::new(pb::ListForeignBundlesResponse {
            bundles: self.federation.list_bundles().await?,
        }))
    }

    async fn delete_foreign_bundle(
        &self,
        request: Request<pb::TrustDomainRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.federation
            .delete_bundle(&request.get_ref().trust_domain)
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn register_owner(
        &self,
        request: Request<pb::RegisterOwnerRequest>,
    ) -> Result<Response<pb::Owner>, Status> {
        let request = request.get_ref();
        let owner = owners::new_owner(&request.id, &request.public_key, self.now())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let owner = self
            .state
            .store
            .register_owner(&owner)
            .await
            .map_err(store_status)?;
        tracing::info!(owner = %owner.id, thumbprint = %owner.thumbprint, "owner registered");
        let event = witnessed::owner(
            &self.state.events,
            EventKind::OwnerRegistered,
            &owner,
            self.state.clock.now(),
        );
        self.log(vec![event]).await?;
        Ok(Response::new(owner_to_proto(&owner)))
    }

    async fn get_owner(
        &self,
        request: Request<pb::OwnerId>,
    ) -> Result<Response<pb::Owner>, Status> {
        let id = checked_owner_id("id", &request.get_ref().id)?;
        let owner = self.state.store.get_owner(id).await.map_err(store_status)?;
        Ok(Response::new(owner_to_proto(&owner)))
    }

    async fn list_owners(
        &self,
        _request: Request<pb::ListOwnersRequest>,
    ) -> Result<Response<pb::ListOwnersResponse>, Status> {
        let owners = self.state.store.list_owners().await.map_err(store_status)?;
        Ok(Response::new(pb::ListOwnersResponse {
            owners: owners.iter().map(owner_to_proto).collect(),
        }))
    }

    async fn revoke_owner(
        &self,
        request: Request<pb::OwnerId>,
    ) -> Result<Response<pb::Owner>, Status> {
        let id = checked_owner_id("id", &request.get_ref().id)?;
        let owner = self
            .state
            .store
            .revoke_owner(id, self.now())
            .await
            .map_err(store_status)?;
        tracing::warn!(owner = %owner.id, "owner revoked: every credential under it stops");
        let event = witnessed::owner(
            &self.state.events,
            EventKind::OwnerRevoked,
            &owner,
            self.state.clock.now(),
        );
        self.log(vec![event]).await?;
        Ok(Response::new(owner_to_proto(&owner)))
    }

    async fn health(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        self.state
            .store
            .count(crate::store::Table::Agents)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::HealthResponse {
            trust_domain: self.state.config.trust_domain.to_string(),
            status: "serving".into(),
        }))
    }
}
