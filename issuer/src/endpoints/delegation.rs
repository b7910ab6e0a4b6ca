//! The agent API's delegation calls: an agent relays a workload's request
//! to register or delete a child under the workload's own entry. The agent
//! says which entry the workload holds; the issuer checks that the entry is
//! one this agent may serve and applies every rule of
//! [`crate::delegation`] itself.

use proto::issuer as pb;
use tonic::Status;

use super::agent::{AgentService, AuthenticatedAgent};
use super::convert::{entry_to_proto, selector_from_proto, Reader};
use super::store_status;
use crate::clock::unix_secs;
use crate::delegation::{child_fields, ChildRequest, DefaultTtls};
use crate::registration::validate_entry;
use crate::store::Entry;

impl AgentService {
    /// The entry `id`, if this agent may serve it.
    async fn served_entry(&self, agent: &AuthenticatedAgent, id: &str) -> Result<Entry, Status> {
        self.authorized(agent).await?.remove(id).ok_or_else(|| {
            Status::permission_denied(format!(
                "entry {id:?} does not exist or is not authorized for this agent"
            ))
        })
    }

    pub(super) async fn register_child_for(
        &self,
        agent: &AuthenticatedAgent,
        request: &pb::RegisterChildRequest,
    ) -> Result<pb::Entry, Status> {
        let parent = self.served_entry(agent, &request.parent_entry_id).await?;
        let owner_id = parent
            .fields
            .owner
            .as_ref()
            .map(|o| o.owner_id.clone())
            .unwrap_or_default();
        let owner = if owner_id.is_empty() {
            None
        } else {
            Some(
                self.state
                    .store
                    .get_owner(&owner_id)
                    .await
                    .map_err(store_status)?,
            )
        };
        let defaults = DefaultTtls {
            x509: self.state.config.default_x509_svid_ttl,
            jwt: self.state.config.default_jwt_svid_ttl,
        };
        let child = ChildRequest {
            spiffe_id: request.spiffe_id.clone(),
            selectors: request.selectors.iter().map(selector_from_proto).collect(),
            x509_svid_ttl: request.x509_svid_ttl,
            jwt_svid_ttl: request.jwt_svid_ttl,
        };
        let now = unix_secs(self.state.clock.now());
        let (fields, max_children) = match &owner {
            Some(owner) => child_fields(&parent, owner, &child, defaults, now),
            None => Err(crate::delegation::DelegationRefusal::Unbound(
                parent.id.clone(),
            )),
        }
        .map_err(|refusal| {
            tracing::warn!(agent_id = %agent.id, parent = %parent.id, %refusal, "child registration refused");
            Status::permission_denied(refusal.to_string())
        })?;
        // The limits every entry is held to (ID form, selector types, TTL range).
        validate_entry(&fields, &self.state.config.trust_domain)?;
        let entry = self
            .state
            .store
            .create_child_entry(&fields, max_children, now)
            .await
            .map_err(store_status)?;
        tracing::info!(
            parent = %parent.id,
            entry_id = %entry.id,
            spiffe_id = %entry.fields.spiffe_id,
            "child entry registered by delegation"
        );
        let event = crate::eventlog::witnessed::entry(
            &self.state.events,
            workload_api::events::EventKind::DelegatedEntryRegistered,
            &entry,
            self.state.clock.now(),
        )
        .detail("agent", agent.id.to_string());
        self.record(&[event]).await?;
        Ok(entry_to_proto(&entry, Reader::Agent))
    }

    pub(super) async fn delete_child_for(
        &self,
        agent: &AuthenticatedAgent,
        request: &pb::DeleteChildRequest,
    ) -> Result<pb::DeleteChildResponse, Status> {
        let parent = self.served_entry(agent, &request.parent_entry_id).await?;
        let child = self.served_entry(agent, &request.child_entry_id).await?;
        let delegated_from = child
            .fields
            .owner
            .as_ref()
            .map(|o| o.delegated_from.as_str());
        if delegated_from != Some(parent.id.as_str()) {
            return Err(Status::permission_denied(format!(
                "entry {} was not registered by entry {}",
                child.id, parent.id
            )));
        }
        let now = unix_secs(self.state.clock.now());
        let deleted_ids = self
            .state
            .delete_entry(&child.id, now)
            .await
            .map_err(store_status)?;
        tracing::info!(parent = %parent.id, deleted = ?deleted_ids, "child entries deleted by delegation");
        let events = crate::eventlog::witnessed::deleted(
            &self.state.events,
            &child,
            &deleted_ids,
            self.state.clock.now(),
        );
        self.record(&events).await?;
        Ok(pb::DeleteChildResponse { deleted_ids })
    }
}
