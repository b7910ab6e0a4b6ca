//! The agent API: node attestation, agent SVID renewal, the entry stream
//! (with revocations), and the signing calls for workload X509-SVIDs,
//! JWT-SVIDs and WIT-SVIDs of authorised entries ([`super::signing`] signs;
//! [`super::delegation`] registers children). The credentials follow
//! X509-SVID.md, JWT-SVID.md and draft-ietf-wimse-workload-creds with SPIFFE
//! WIT-SVID.md (`cnf.jwk` with its `alg`); the API itself is Sigil's own.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use proto::issuer as pb;
use proto::issuer::agent_api_server::AgentApi;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status};
use workload_api::events::{Event, EventKind};
use workload_api::id::SpiffeId;
use workload_api::x509svid;

use super::standing::{banned, evicted};
use super::store_status;
use crate::attestation;
use crate::ca::SvidSubject;
use crate::clock::unix_secs;
use crate::csr::{self, SubjectKey};
use crate::k8s::Clusters;
use crate::state::IssuerState;
use crate::store::{Agent, Entry};

/// The largest batch of CSRs one call may carry.
pub const MAX_BATCH: usize = 1000;

/// The agent API service.
#[derive(Debug, Clone)]
pub struct AgentService {
    pub(super) state: IssuerState,
    /// The Kubernetes clusters whose agents attest by k8s_psat.
    k8s: Arc<Clusters>,
}

/// An agent that presented a current SVID.
#[derive(Debug, Clone)]
pub(super) struct AuthenticatedAgent {
    pub(super) id: SpiffeId,
}

impl AgentService {
    pub fn new(state: IssuerState, k8s: Arc<Clusters>) -> Self {
        AgentService { state, k8s }
    }

    pub(super) fn now(&self) -> std::time::SystemTime {
        self.state.clock.now()
    }

    /// Identifies the caller by its TLS client certificate and checks the
    /// agent is attested, not banned, and presenting its current SVID.
    async fn authenticate<T>(&self, request: &Request<T>) -> Result<AuthenticatedAgent, Status> {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .filter(|certs| !certs.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "an agent X509-SVID is required as the TLS client certificate",
                )
            })?;
        let leaf = x509svid::check_leaf(certs[0].as_ref())
            .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
        let id = leaf.spiffe_id;
        if !id.is_member_of(&self.state.config.trust_domain) || !id.path().starts_with("/agent/") {
            return Err(Status::permission_denied(format!(
                "{id} is not an agent of this trust domain"
            )));
        }
        let agent = match self.state.store.get_agent(&id.to_string()).await {
            Ok(agent) => agent,
            Err(crate::store::StoreError::AgentNotFound(_)) => {
                return Err(evicted(&id.to_string()))
            }
            Err(e) => return Err(store_status(e)),
        };
        if agent.banned {
            return Err(banned(&id.to_string()));
        }
        if leaf.serial_hex == agent.new_serial {
            self.state
                .store
                .promote_agent_serial(&agent.spiffe_id, unix_secs(self.now()))
                .await
                .map_err(store_status)?;
        } else if leaf.serial_hex != agent.serial {
            return Err(Status::permission_denied(format!(
                "agent {id} presented an SVID that is no longer current"
            )));
        }
        Ok(AuthenticatedAgent { id })
    }

    /// Signs an agent SVID, returning it with the event that records it
    /// (its key's thumbprint is how the log knows the agent's signatures).
    fn sign_agent_svid(
        &self,
        id: &SpiffeId,
        csr_der: &[u8],
    ) -> Result<(crate::ca::SignedX509, Event), Status> {
        let csr =
            csr::verify(csr_der).map_err(|e| Status::invalid_argument(format!("csr: {e}")))?;
        let signed = self
            .state
            .ca
            .sign_x509_svid(
                SvidSubject {
                    key: &SubjectKey::new(&csr.public_key),
                    spiffe_id: id,
                    dns_names: &[],
                    owner: None,
                    counter: None,
                },
                self.state.config.agent_svid_ttl,
                self.now(),
            )
            .map_err(|e| {
                tracing::error!(error = %e, "agent SVID signing failed");
                Status::internal("agent SVID signing failed")
            })?;
        let event = self
            .state
            .events
            .event(EventKind::X509SvidIssued, self.now())
            .subject(id.to_string())
            .serial(signed.serial_hex.clone())
            .jkt(csr.public_key.thumbprint())
            .detail("authority", signed.authority_id.clone())
            .detail("expires_at", unix_secs(signed.not_after));
        Ok((signed, event))
    }

    pub(super) async fn authorized(
        &self,
        agent: &AuthenticatedAgent,
    ) -> Result<HashMap<String, Entry>, Status> {
        let entries = self
            .state
            .store
            .authorized_entries(&agent.id.to_string(), unix_secs(self.now()))
            .await
            .map_err(store_status)?;
        Ok(entries.into_iter().map(|e| (e.id.clone(), e)).collect())
    }
}

/// A node that proved itself: the agent ID it gets and what was found.
struct AttestedNode {
    agent_id: SpiffeId,
    attestation_type: &'static str,
    selectors: Vec<crate::store::Selector>,
    /// The join token claimed, released again if the agent is not recorded.
    join_token_id: Option<String>,
}

impl AgentService {
    /// Checks the node's proof by its method.
    async fn attest_node(
        &self,
        method: pb::attest_agent_request::Method,
        now: std::time::SystemTime,
    ) -> Result<AttestedNode, Status> {
        let trust_domain = &self.state.config.trust_domain;
        match method {
            pb::attest_agent_request::Method::JoinToken(join) => {
                if join.token.is_empty() {
                    return Err(Status::invalid_argument("join token is empty"));
                }
                let token_id = attestation::redeem_join_token(&self.state.store, &join.token, now)
                    .await
                    .map_err(store_status)?;
                Ok(AttestedNode {
                    agent_id: attestation::join_token_agent_id(trust_domain, &token_id),
                    attestation_type: "join_token",
                    selectors: Vec::new(),
                    join_token_id: Some(token_id),
                })
            }
            pb::attest_agent_request::Method::K8sPsat(psat) => {
                let node =
                    crate::k8s::psat::attest(&self.k8s, trust_domain, &psat.cluster, &psat.token)
                        .await
                        .map_err(|e| e.status())?;
                // A banned node stays banned; refused before anything is signed.
                match self.state.store.get_agent(&node.agent_id.to_string()).await {
                    Ok(agent) if agent.banned => return Err(banned(&agent.spiffe_id)),
                    Ok(_) | Err(crate::store::StoreError::AgentNotFound(_)) => {}
                    Err(e) => return Err(store_status(e)),
                }
                Ok(AttestedNode {
                    agent_id: node.agent_id,
                    attestation_type: "k8s_psat",
                    selectors: node.selectors,
                    join_token_id: None,
                })
            }
        }
    }
}

type SyncStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SyncEntriesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AgentApi for AgentService {
    async fn attest_agent(
        &self,
        request: Request<pb::AttestAgentRequest>,
    ) -> Result<Response<pb::AttestAgentResponse>, Status> {
        let peer = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.get_ref().remote_addr());
        // Operators see every refused attestation with its cause and where
        // it came from; the token itself never reaches a log.
        let refused = |status: Status| {
            tracing::warn!(peer = ?peer, cause = %status.message(), "node attestation refused");
            status
        };
        let request = request.into_inner();
        let Some(method) = request.method else {
            return Err(refused(Status::invalid_argument(
                "attestation method is missing; send a join token or a k8s_psat token",
            )));
        };
        // Check the CSR before claiming a token so a bad request costs nothing.
        csr::verify(&request.csr)
            .map_err(|e| refused(Status::invalid_argument(format!("csr: {e}"))))?;
        let now = self.now();
        let node = self.attest_node(method, now).await.map_err(refused)?;
        let id = &node.agent_id;
        let release_token = || async {
            if let Some(token_id) = &node.join_token_id {
                let _ = self.state.store.release_join_token(token_id).await;
            }
        };
        let (signed, issued) = match self.sign_agent_svid(id, &request.csr) {
            Ok(signed) => signed,
            Err(status) => {
                release_token().await;
                return Err(status);
            }
        };
        let agent = Agent {
            spiffe_id: id.to_string(),
            attestation_type: node.attestation_type.into(),
            serial: signed.serial_hex.clone(),
            new_serial: String::new(),
            expires_at: unix_secs(signed.not_after),
            banned: false,
            attested_at: unix_secs(now),
            selectors: node.selectors.clone(),
        };
        match self.state.store.upsert_agent(&agent, unix_secs(now)).await {
            Ok(()) => {}
            Err(crate::store::StoreError::AgentBanned(_)) => {
                return Err(refused(banned(&id.to_string())))
            }
            Err(e) => {
                release_token().await;
                return Err(store_status(e));
            }
        }
        tracing::info!(agent_id = %id, attestation_type = node.attestation_type, "agent attested");
        let selectors: Vec<String> = node.selectors.iter().map(|s| s.to_string()).collect();
        let mut attested = self
            .state
            .events
            .event(EventKind::NodeAttested, now)
            .subject(id.to_string())
            .detail("attestation_type", node.attestation_type);
        if let Some(token_id) = &node.join_token_id {
            attested = attested.detail("join_token_id", token_id.clone());
        }
        if !selectors.is_empty() {
            attested = attested.bounded_list("selectors", &selectors);
        }
        self.record(&[attested, issued]).await?;
        crate::metrics::issued("x509", 1);
        Ok(Response::new(pb::AttestAgentResponse {
            svid: Some(pb::AgentSvid {
                spiffe_id: id.to_string(),
                cert_chain: signed.chain.concat(),
                expires_at: unix_secs(signed.not_after),
            }),
            bundle: self.state.ca.current_bundle_jwks().to_vec(),
        }))
    }

    async fn renew_agent(
        &self,
        request: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::RenewAgentResponse>, Status> {
        let agent = self.authenticate(&request).await?;
        let (signed, issued) = self.sign_agent_svid(&agent.id, &request.get_ref().csr)?;
        // Logged before the new serial is accepted, so the log knows every
        // agent key that can sign events.
        self.record(&[issued]).await?;
        crate::metrics::issued("x509", 1);
        self.state
            .store
            .set_agent_new_serial(
                &agent.id.to_string(),
                &signed.serial_hex,
                unix_secs(signed.not_after),
                unix_secs(self.now()),
            )
            .await
            .map_err(store_status)?;
        tracing::info!(agent_id = %agent.id, "agent SVID renewed");
        Ok(Response::new(pb::RenewAgentResponse {
            svid: Some(pb::AgentSvid {
                spiffe_id: agent.id.to_string(),
                cert_chain: signed.chain.concat(),
                expires_at: unix_secs(signed.not_after),
            }),
        }))
    }

    type SyncEntriesStream = SyncStream;

    async fn sync_entries(
        &self,
        request: Request<pb::SyncEntriesRequest>,
    ) -> Result<Response<Self::SyncEntriesStream>, Status> {
        let agent = self.authenticate(&request).await?;
        let (tx, rx) = mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(
            async move { super::entry_stream::serve(state, agent.id.to_string(), tx).await },
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn batch_sign_x509_svids(
        &self,
        request: Request<pb::BatchSignX509SvidsRequest>,
    ) -> Result<Response<pb::BatchSignX509SvidsResponse>, Status> {
        let agent = self.authenticate(&request).await?;
        let params = &request.get_ref().params;
        if params.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "batch of {} CSRs exceeds the limit of {MAX_BATCH}",
                params.len()
            )));
        }
        let entries = self.authorized(&agent).await?;
        let results = self
            .sign_x509_batch(&agent.id.to_string(), &entries, params)
            .await;
        Ok(Response::new(pb::BatchSignX509SvidsResponse { results }))
    }

    async fn batch_sign_wit_svids(
        &self,
        request: Request<pb::BatchSignWitSvidsRequest>,
    ) -> Result<Response<pb::BatchSignWitSvidsResponse>, Status> {
        let agent = self.authenticate(&request).await?;
        let params = &request.get_ref().params;
        if params.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "batch of {} WIT requests exceeds the limit of {MAX_BATCH}",
                params.len()
            )));
        }
        let entries = self.authorized(&agent).await?;
        let results = self
            .sign_wit_batch(&agent.id.to_string(), &entries, params)
            .await;
        Ok(Response::new(pb::BatchSignWitSvidsResponse { results }))
    }

    async fn sign_jwt_svid(
        &self,
        request: Request<pb::SignJwtSvidRequest>,
    ) -> Result<Response<pb::SignJwtSvidResponse>, Status> {
        let agent = self.authenticate(&request).await?;
        let request = request.into_inner();
        // The same bounds the agent's Workload API applies.
        workload_api::server::check_audiences(&request.audience)?;
        let entries = self.authorized(&agent).await?;
        let entry = entries.get(&request.entry_id).ok_or_else(|| {
            Status::permission_denied(format!(
                "entry {:?} does not exist or is not authorized for this agent",
                request.entry_id
            ))
        })?;
        Ok(Response::new(
            self.sign_jwt(&agent.id.to_string(), entry, &request.audience)
                .await?,
        ))
    }

    async fn submit_events(
        &self,
        request: Request<pb::SubmitEventsRequest>,
    ) -> Result<Response<pb::SubmitEventsResponse>, Status> {
        let agent = self.authenticate(&request).await?;
        Ok(Response::new(
            self.submit_events_for(&agent.id.to_string(), request)
                .await?,
        ))
    }

    async fn register_child(
        &self,
        request: Request<pb::RegisterChildRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let agent = self.authenticate(&request).await?;
        let entry = self.register_child_for(&agent, request.get_ref()).await?;
        Ok(Response::new(entry))
    }

    async fn delete_child(
        &self,
        request: Request<pb::DeleteChildRequest>,
    ) -> Result<Response<pb::DeleteChildResponse>, Status> {
        let agent = self.authenticate(&request).await?;
        let deleted = self.delete_child_for(&agent, request.get_ref()).await?;
        Ok(Response::new(deleted))
    }

    async fn fetch_bundle(
        &self,
        request: Request<pb::FetchBundleRequest>,
    ) -> Result<Response<pb::FetchBundleResponse>, Status> {
        self.authenticate(&request).await?;
        Ok(Response::new(pb::FetchBundleResponse {
            bundle: self.state.ca.current_bundle_jwks().to_vec(),
        }))
    }
}
