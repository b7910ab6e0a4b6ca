//! The Delegation service on the Workload API socket: an owner-bound
//! workload registers, lists and deletes child workloads under its own
//! SPIFFE ID.
//!
//! Why here and not an issuer API authenticated by the workload's SVID: the
//! caller is identified the way every Workload API caller is, by the kernel
//! (peer credentials and attestation), so there is no bearer credential to
//! steal or replay and a workload needs no route to the issuer. The agent
//! only says which of its entries the caller holds; the issuer, which this
//! agent may already mint for those entries, checks every delegation rule
//! again against the owner's consent.

use std::collections::BTreeSet;
use std::sync::Arc;

use proto::agent as pb;
use proto::agent::delegation_server::Delegation;
use proto::issuer as issuer_pb;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use workload_api::selector::Selector;
use workload_api::server::admit;
use workload_api::source::IdentitySource;

use crate::node::Node;
use crate::source::AgentSource;
use crate::sync::Entries;

/// The Delegation service.
#[derive(Debug, Clone)]
pub struct DelegationService {
    source: Arc<AgentSource>,
    node: Arc<Node>,
    entries: watch::Receiver<Entries>,
}

impl DelegationService {
    pub fn new(
        source: Arc<AgentSource>,
        node: Arc<Node>,
        entries: watch::Receiver<Entries>,
    ) -> Self {
        DelegationService {
            source,
            node,
            entries,
        }
    }

    /// The entries the caller holds, in order (the first is its default).
    async fn callers_entries<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Vec<(String, String)>, Status> {
        let selectors: Vec<Selector> = admit(self.source.as_ref(), request).await?.to_vec();
        let snapshot = self.source.snapshots().borrow().clone();
        let held: Vec<(String, String)> = snapshot
            .entitled(&selectors)
            .map(|i| (i.entry_id.clone(), i.spiffe_id.clone()))
            .collect();
        if held.is_empty() {
            return Err(Status::permission_denied(
                "this workload holds no identity to register children under",
            ));
        }
        Ok(held)
    }

    /// The synced entries registered by delegation under any of `parents`.
    fn children_of(&self, parents: &BTreeSet<&str>) -> Vec<issuer_pb::Entry> {
        self.entries
            .borrow()
            .iter()
            .filter(|e| {
                e.owner
                    .as_ref()
                    .is_some_and(|o| parents.contains(o.delegated_from.as_str()))
            })
            .cloned()
            .collect()
    }
}

#[tonic::async_trait]
impl Delegation for DelegationService {
    async fn register_child(
        &self,
        request: Request<pb::RegisterChildRequest>,
    ) -> Result<Response<issuer_pb::Entry>, Status> {
        let held = self.callers_entries(&request).await?;
        let request = request.into_inner();
        let parent = match request.parent_spiffe_id.as_str() {
            "" => &held[0],
            wanted => held.iter().find(|(_, id)| id == wanted).ok_or_else(|| {
                Status::permission_denied(format!(
                    "parent_spiffe_id: this workload does not hold {}",
                    workload_api::display::shown(wanted)
                ))
            })?,
        };
        let entry = self
            .node
            .client()
            .register_child(issuer_pb::RegisterChildRequest {
                parent_entry_id: parent.0.clone(),
                spiffe_id: request.spiffe_id,
                selectors: request.selectors,
                x509_svid_ttl: request.x509_svid_ttl,
                jwt_svid_ttl: request.jwt_svid_ttl,
            })
            .await?
            .into_inner();
        tracing::info!(parent = %parent.1, child = %entry.spiffe_id, "child registered");
        Ok(Response::new(entry))
    }

    async fn list_children(
        &self,
        request: Request<pb::ListChildrenRequest>,
    ) -> Result<Response<pb::ListChildrenResponse>, Status> {
        let held = self.callers_entries(&request).await?;
        let parents: BTreeSet<&str> = held.iter().map(|(entry, _)| entry.as_str()).collect();
        Ok(Response::new(pb::ListChildrenResponse {
            children: self.children_of(&parents),
        }))
    }

    async fn delete_child(
        &self,
        request: Request<pb::DeleteChildRequest>,
    ) -> Result<Response<pb::DeleteChildResponse>, Status> {
        let held = self.callers_entries(&request).await?;
        let parents: BTreeSet<&str> = held.iter().map(|(entry, _)| entry.as_str()).collect();
        let wanted = &request.get_ref().entry_id;
        let child = self
            .children_of(&parents)
            .into_iter()
            .find(|e| &e.id == wanted)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "entry_id: {} is not a child this workload registered",
                    workload_api::display::shown(wanted)
                ))
            })?;
        let parent_entry_id = child.owner.map(|o| o.delegated_from).unwrap_or_default();
        let deleted = self
            .node
            .client()
            .delete_child(issuer_pb::DeleteChildRequest {
                parent_entry_id,
                child_entry_id: child.id,
            })
            .await?
            .into_inner();
        Ok(Response::new(pb::DeleteChildResponse {
            deleted_ids: deleted.deleted_ids,
        }))
    }
}
