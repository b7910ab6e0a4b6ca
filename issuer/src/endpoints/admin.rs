//! The admin API: registration entries, join tokens, agents, the bundle and
//! health. Served only on a local unix socket in a 0700 directory, so access is
//! governed by the file system.

use proto::admin as pb;
use proto::admin::admin_server::Admin;
use proto::issuer::Entry as EntryMessage;
use tonic::{Request, Response, Status};
use workload_api::id::parse_member;

use super::convert::{agent_to_proto, entry_to_proto, fields_from_proto};
use super::store_status;
use crate::attestation;
use crate::clock::unix_secs;
use crate::registration::validate_entry;
use crate::state::IssuerState;
use crate::store::{EntryFields, Selector};

/// The admin API service.
#[derive(Debug, Clone)]
pub struct AdminService {
    state: IssuerState,
}

impl AdminService {
    pub fn new(state: IssuerState) -> Self {
        AdminService { state }
    }

    fn now(&self) -> i64 {
        unix_secs(self.state.clock.now())
    }

    fn checked_fields(&self, fields: Option<&pb::EntryFields>) -> Result<EntryFields, Status> {
        let fields = fields.ok_or_else(|| Status::invalid_argument("entry: missing"))?;
        let fields = fields_from_proto(fields);
        validate_entry(&fields, &self.state.config.trust_domain)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(fields)
    }

    fn agent_id(&self, id: &str) -> Result<String, Status> {
        parse_member(id, &self.state.config.trust_domain)
            .map(|id| id.to_string())
            .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_entry(
        &self,
        request: Request<pb::CreateEntryRequest>,
    ) -> Result<Response<EntryMessage>, Status> {
        let fields = self.checked_fields(request.get_ref().entry.as_ref())?;
        let entry = self
            .state
            .store
            .create_entry(&fields, self.now())
            .await
            .map_err(store_status)?;
        tracing::info!(entry_id = %entry.id, spiffe_id = %entry.fields.spiffe_id, "entry created");
        Ok(Response::new(entry_to_proto(&entry)))
    }

    async fn update_entry(
        &self,
        request: Request<pb::UpdateEntryRequest>,
    ) -> Result<Response<EntryMessage>, Status> {
        let request = request.into_inner();
        let fields = self.checked_fields(request.entry.as_ref())?;
        let entry = self
            .state
            .store
            .update_entry(&request.id, &fields, request.revision, self.now())
            .await
            .map_err(store_status)?;
        tracing::info!(entry_id = %entry.id, revision = entry.revision, "entry updated");
        Ok(Response::new(entry_to_proto(&entry)))
    }

    async fn delete_entry(
        &self,
        request: Request<pb::EntryId>,
    ) -> Result<Response<pb::DeleteEntryResponse>, Status> {
        let id = &request.get_ref().id;
        self.state
            .store
            .delete_entry(id)
            .await
            .map_err(store_status)?;
        tracing::info!(entry_id = %id, "entry deleted");
        Ok(Response::new(pb::DeleteEntryResponse {}))
    }

    async fn get_entry(
        &self,
        request: Request<pb::EntryId>,
    ) -> Result<Response<EntryMessage>, Status> {
        let entry = self
            .state
            .store
            .get_entry(&request.get_ref().id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(entry_to_proto(&entry)))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let r = request.get_ref();
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
            entries: entries.iter().map(entry_to_proto).collect(),
        }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        let request = request.into_inner();
        if request.ttl < 0 {
            return Err(Status::invalid_argument("ttl: must not be negative"));
        }
        let alias = (!request.spiffe_id.is_empty())
            .then(|| {
                parse_member(&request.spiffe_id, &self.state.config.trust_domain)
                    .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))
            })
            .transpose()?;
        let ttl = match request.ttl {
            0 => self.state.config.join_token_ttl,
            secs => std::time::Duration::from_secs(secs as u64),
        };
        let now = self.state.clock.now();
        let token = attestation::generate_join_token(&self.state.store, ttl, now)
            .await
            .map_err(store_status)?;
        if let Some(alias) = alias {
            let agent_id =
                attestation::join_token_agent_id(&self.state.config.trust_domain, &token.id)
                    .to_string();
            let fields = EntryFields {
                spiffe_id: alias.to_string(),
                parent_id: agent_id.clone(),
                selectors: vec![Selector {
                    kind: "spiffe_id".into(),
                    value: agent_id,
                }],
                ..EntryFields::default()
            };
            validate_entry(&fields, &self.state.config.trust_domain)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
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
