//! The agent API: node attestation, agent SVID renewal, the entry stream
//! (with revocations), and the signing calls for workload X509-SVIDs,
//! JWT-SVIDs and WIT-SVIDs of authorised entries ([`super::signing`] signs;
//! [`super::delegation`] registers children). The credentials follow
//! X509-SVID.md, JWT-SVID.md and draft-ietf-wimse-workload-creds with SPIFFE
//! WIT-SVID.md (`cnf.jwk` with its `alg`); the API itself is Sigil's own.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use proto::issuer as pb;
use proto::issuer::agent_api_server::AgentApi;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status};
use workload_api::events::{Event, EventKind};
use workload_api::id::{parse_trust_domain, SpiffeId, TrustDomain};
use workload_api::{x509svid, Bundle};

use super::convert::{entry_to_proto, Reader};
use super::store_status;
use crate::attestation;
use crate::ca::SvidSubject;
use crate::clock::unix_secs;
use crate::csr::{self, SubjectKey};
use crate::k8s::Clusters;
use crate::state::IssuerState;
use crate::store::{Agent, Entry, ForeignBundle};

/// Entries per message of the entry stream: far below gRPC's 4 MB default.
pub const SYNC_CHUNK: usize = 500;
/// The largest batch of CSRs one call may carry.
pub const MAX_BATCH: usize = 1000;
/// The largest foreign bundle sent to agents; agents refuse larger ones.
pub const MAX_FOREIGN_BUNDLE_BYTES: usize = 1024 * 1024;
/// Bytes of foreign bundles per message of the entry stream, so that a
/// message stays well below gRPC's 4 MB default however many there are.
const FOREIGN_BUNDLE_CHUNK_BYTES: usize = 2 * 1024 * 1024;

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
            bundle: self.state.ca.bundle().to_jwks_json(),
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
        let service = self.clone();
        tokio::spawn(async move { service.stream_entries(agent, tx).await });
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
            bundle: self.state.ca.bundle().to_jwks_json(),
        }))
    }
}

/// How long a new stream waits for the registrations to catch up with the
/// store before it is refused UNAVAILABLE (the database is unreachable).
const VIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl AgentService {
    /// Sends the agent's authorised entries and the foreign trust domains'
    /// bundles: a chunked snapshot, then only what changed, whenever the
    /// store or the bundle changes. Ends when the agent hangs up or loses its
    /// standing.
    async fn stream_entries(
        &self,
        agent: AuthenticatedAgent,
        tx: mpsc::Sender<Result<pb::SyncEntriesResponse, Status>>,
    ) {
        let _connected = crate::metrics::ConnectedAgent::start();
        let mut views = self.state.registrations.subscribe();
        let mut bundle_changes = self.state.ca.subscribe_bundle();
        let mut revocation_changes = self.state.revocations.subscribe();
        let mut sent: HashMap<String, i64> = HashMap::new();
        let mut sent_bundle_sequence = None;
        let mut sent_revocations_seq = None;
        let mut foreign = ForeignBundles::default();
        let mut seen_foreign_version = None;
        let mut first = true;
        let agent_id = agent.id.to_string();
        let issuer_id = crate::store::issuer_of(&agent_id);
        // The first snapshot holds every change committed before the
        // stream opened (the agent's own attestation among them).
        let Ok(mut view) =
            tokio::time::timeout(VIEW_WAIT, self.state.registrations.current()).await
        else {
            let _ = tx
                .send(Err(Status::unavailable(
                    "the registrations could not be read in time; retry",
                )))
                .await;
            return;
        };
        loop {
            let bundle = bundle_changes.borrow_and_update().clone();
            let revocations = revocation_changes.borrow_and_update().clone();
            let standing = match view.agents.get(&agent_id) {
                Some(found) if !found.banned => Ok(found.selectors.clone()),
                // Not in this view, or banned in it: the store decides, as
                // the view may trail a change made through another replica.
                _ => match self.state.store.get_agent(&agent_id).await {
                    Ok(a) if !a.banned => Ok(a.selectors),
                    Ok(_) => Err(banned(&agent_id)),
                    Err(crate::store::StoreError::AgentNotFound(_)) => Err(evicted(&agent_id)),
                    Err(e) => Err(store_status(e)),
                },
            };
            let selectors = match standing {
                Ok(selectors) => selectors,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let entries: HashMap<String, &Entry> = view
                .entries
                .authorized(
                    &agent_id,
                    issuer_id.as_deref(),
                    &selectors,
                    unix_secs(self.now()),
                )
                .into_iter()
                .map(|e| (e.id.clone(), e))
                .collect();
            // Foreign bundles are compared again only when they changed:
            // most changes are entries and agents.
            let mut foreign_update = (seen_foreign_version != Some(view.foreign_version))
                .then(|| foreign.update(&view.foreign_bundles, &self.state.config.trust_domain));
            seen_foreign_version = Some(view.foreign_version);
            let mut upserted: Vec<pb::Entry> = entries
                .values()
                .filter(|e| sent.get(&e.id) != Some(&e.revision))
                .map(|e| entry_to_proto(e, Reader::Agent))
                .collect();
            upserted.sort_by_key(|e| e.sequence);
            let removed: Vec<String> = sent
                .keys()
                .filter(|id| !entries.contains_key(*id))
                .cloned()
                .collect();
            let bundle_bytes = if sent_bundle_sequence != Some(bundle.sequence()) {
                bundle.to_jwks_json()
            } else {
                Vec::new()
            };
            let new_revocations = (sent_revocations_seq != Some(revocations.seq)
                && !revocations.list.is_empty())
            .then_some(&*revocations);
            if first
                || !upserted.is_empty()
                || !removed.is_empty()
                || !bundle_bytes.is_empty()
                || new_revocations.is_some()
                || foreign_update
                    .as_ref()
                    .is_some_and(ForeignUpdate::has_changes)
            {
                let mut messages = chunk(
                    Update {
                        upserted,
                        removed_ids: removed,
                        bundle: bundle_bytes,
                        foreign: foreign_update
                            .as_mut()
                            .map(|u| std::mem::take(&mut u.changed))
                            .unwrap_or_default(),
                        removed_foreign: foreign_update
                            .as_mut()
                            .map(|u| std::mem::take(&mut u.removed))
                            .unwrap_or_default(),
                    },
                    first,
                );
                if let Some(published) = new_revocations {
                    // With the last message: an agent applies revocations
                    // after the entries that go with them.
                    let last = messages.last_mut().expect("at least one message");
                    last.crls = published.crls.iter().map(|c| c.der.clone()).collect();
                    last.revocation_list = published.list.clone();
                }
                for message in messages {
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                sent = entries
                    .values()
                    .map(|e| (e.id.clone(), e.revision))
                    .collect();
                sent_bundle_sequence = Some(bundle.sequence());
                sent_revocations_seq = Some(revocations.seq);
                if let Some(update) = foreign_update {
                    foreign.sent(update.current);
                }
                first = false;
            }
            tokio::select! {
                changed = views.changed() => if changed.is_err() { return },
                changed = bundle_changes.changed() => if changed.is_err() { return },
                changed = revocation_changes.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
            view = views.borrow_and_update().clone();
        }
    }
}

/// What one round of the entry stream sends.
struct Update {
    upserted: Vec<pb::Entry>,
    removed_ids: Vec<String>,
    /// The local bundle (JWK Set JSON); empty when unchanged.
    bundle: Vec<u8>,
    /// Foreign bundles (JWK Set JSON) new or changed, by trust domain.
    foreign: Vec<(String, Vec<u8>)>,
    removed_foreign: Vec<String>,
}

/// Splits one update into messages of at most [`SYNC_CHUNK`] entries, and
/// foreign bundles of at most [`FOREIGN_BUNDLE_CHUNK_BYTES`] each (or a
/// single one). Removals come with the last message.
fn chunk(update: Update, snapshot: bool) -> Vec<pb::SyncEntriesResponse> {
    let mut messages: Vec<pb::SyncEntriesResponse> = update
        .upserted
        .chunks(SYNC_CHUNK)
        .map(|c| pb::SyncEntriesResponse {
            upserted: c.to_vec(),
            snapshot,
            ..Default::default()
        })
        .collect();
    for bundles in foreign_chunks(update.foreign) {
        messages.push(pb::SyncEntriesResponse {
            federated_bundles: bundles,
            snapshot,
            ..Default::default()
        });
    }
    if messages.is_empty() {
        messages.push(pb::SyncEntriesResponse {
            snapshot,
            ..Default::default()
        });
    }
    messages[0].bundle = update.bundle;
    let last = messages.last_mut().expect("at least one message");
    last.removed_ids = update.removed_ids;
    last.removed_federated_bundles = update.removed_foreign;
    last.snapshot_complete = snapshot;
    messages
}

/// Groups foreign bundles into maps of at most
/// [`FOREIGN_BUNDLE_CHUNK_BYTES`]; a larger bundle travels alone.
fn foreign_chunks(bundles: Vec<(String, Vec<u8>)>) -> Vec<HashMap<String, Vec<u8>>> {
    let mut chunks: Vec<HashMap<String, Vec<u8>>> = Vec::new();
    let mut size = 0;
    for (trust_domain, json) in bundles {
        let bytes = trust_domain.len() + json.len();
        if chunks.is_empty() || size + bytes > FOREIGN_BUNDLE_CHUNK_BYTES {
            chunks.push(HashMap::new());
            size = 0;
        }
        size += bytes;
        chunks
            .last_mut()
            .expect("pushed above")
            .insert(trust_domain, json);
    }
    chunks
}

/// The foreign bundles one entry stream has sent, by trust domain, as
/// SHA-256 digests of their JSON, so that a stream holds no copy of them.
#[derive(Debug, Default)]
struct ForeignBundles {
    sent: BTreeMap<String, [u8; 32]>,
    /// Stored bundles found unusable, not sent: logged once per content.
    refused: BTreeMap<String, [u8; 32]>,
}

/// The foreign bundles to send now, against those sent before.
#[derive(Debug)]
struct ForeignUpdate {
    /// Every usable foreign bundle's digest.
    current: BTreeMap<String, [u8; 32]>,
    changed: Vec<(String, Vec<u8>)>,
    removed: Vec<String>,
}

impl ForeignUpdate {
    fn has_changes(&self) -> bool {
        !self.changed.is_empty() || !self.removed.is_empty()
    }
}

impl ForeignBundles {
    /// Compares the stored bundles with those sent. A bundle that is not a
    /// valid SPIFFE bundle of a foreign trust domain, or is too large, is
    /// never sent: agents drop one they held, as if it were deleted.
    /// `stored` is shared by every stream of the replica: only what this
    /// stream sends is copied out of it.
    fn update(&mut self, stored: &[ForeignBundle], local: &TrustDomain) -> ForeignUpdate {
        let mut current = BTreeMap::new();
        let mut changed = Vec::new();
        for foreign in stored {
            let digest = sha256(foreign.bundle.as_bytes());
            if self.sent.get(&foreign.trust_domain) == Some(&digest) {
                current.insert(foreign.trust_domain.clone(), digest);
                continue;
            }
            if let Err(reason) = usable_foreign_bundle(foreign, local) {
                if self.refused.get(&foreign.trust_domain) != Some(&digest) {
                    tracing::error!(
                        trust_domain = %foreign.trust_domain,
                        %reason,
                        "the stored foreign bundle is unusable; not sent to agents"
                    );
                    self.refused.insert(foreign.trust_domain.clone(), digest);
                }
                continue;
            }
            self.refused.remove(&foreign.trust_domain);
            current.insert(foreign.trust_domain.clone(), digest);
            changed.push((
                foreign.trust_domain.clone(),
                foreign.bundle.clone().into_bytes(),
            ));
        }
        let removed = self
            .sent
            .keys()
            .filter(|td| !current.contains_key(*td))
            .cloned()
            .collect();
        ForeignUpdate {
            current,
            changed,
            removed,
        }
    }

    /// Records the digests of an update's `current` bundles as sent.
    fn sent(&mut self, current: BTreeMap<String, [u8; 32]>) {
        self.sent = current;
    }
}

/// Whether a stored foreign bundle may go to agents: a SPIFFE bundle of a
/// trust domain other than this one, within the size agents accept.
fn usable_foreign_bundle(foreign: &ForeignBundle, local: &TrustDomain) -> Result<(), String> {
    let trust_domain = parse_trust_domain(&foreign.trust_domain).map_err(|e| e.to_string())?;
    if trust_domain == *local {
        return Err("it names this issuer's own trust domain".into());
    }
    if foreign.bundle.len() > MAX_FOREIGN_BUNDLE_BYTES {
        return Err(format!(
            "{} bytes; at most {MAX_FOREIGN_BUNDLE_BYTES}",
            foreign.bundle.len()
        ));
    }
    Bundle::from_jwks_json(trust_domain, foreign.bundle.as_bytes())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 digests are 32 bytes")
}

/// PERMISSION_DENIED for an agent that lost its standing, saying why to
/// people (the message) and to the agent (the standing metadata).
fn refused(standing: &'static str, message: String) -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        proto::AGENT_STANDING_KEY,
        tonic::metadata::MetadataValue::from_static(standing),
    );
    Status::with_metadata(tonic::Code::PermissionDenied, message, metadata)
}

fn banned(agent_id: &str) -> Status {
    refused("banned", format!("agent {agent_id} is banned"))
}

fn evicted(agent_id: &str) -> Status {
    refused(
        "evicted",
        format!("agent {agent_id} is not attested (it may have been evicted); attest again"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BundleOrigin;

    fn td(name: &str) -> TrustDomain {
        parse_trust_domain(name).unwrap()
    }

    fn stored(name: &str, bundle: &str) -> ForeignBundle {
        ForeignBundle {
            trust_domain: name.into(),
            bundle: bundle.into(),
            sequence: 0,
            origin: BundleOrigin::Operator,
            updated_at: 1,
        }
    }

    fn jwks(name: &str, sequence: u64) -> String {
        let mut bundle = Bundle::new(td(name));
        bundle.set_sequence(sequence);
        String::from_utf8(bundle.to_jwks_json()).unwrap()
    }

    fn names(changed: &[(String, Vec<u8>)]) -> Vec<&str> {
        changed.iter().map(|(name, _)| name.as_str()).collect()
    }

    #[test]
    fn foreign_bundles_are_sent_all_then_only_what_changed() {
        let local = td("example.org");
        let mut foreign = ForeignBundles::default();
        let first = foreign.update(
            &[
                stored("a.org", &jwks("a.org", 1)),
                stored("b.org", &jwks("b.org", 1)),
            ],
            &local,
        );
        assert_eq!(names(&first.changed), ["a.org", "b.org"]);
        assert!(first.removed.is_empty());
        foreign.sent(first.current);

        let same = foreign.update(
            &[
                stored("a.org", &jwks("a.org", 1)),
                stored("b.org", &jwks("b.org", 1)),
            ],
            &local,
        );
        assert!(!same.has_changes());

        let next = foreign.update(&[stored("a.org", &jwks("a.org", 2))], &local);
        assert_eq!(names(&next.changed), ["a.org"]);
        assert_eq!(next.removed, ["b.org"]);
        foreign.sent(next.current);
        assert!(!foreign
            .update(&[stored("a.org", &jwks("a.org", 2))], &local)
            .has_changes());
    }

    #[test]
    fn unusable_foreign_bundles_are_never_sent() {
        let local = td("example.org");
        let mut foreign = ForeignBundles::default();
        let big = format!(
            "{{\"keys\": [], \"pad\": \"{}\"}}",
            "x".repeat(MAX_FOREIGN_BUNDLE_BYTES)
        );
        let update = foreign.update(
            &[
                stored("a.org", "{not json"),
                stored("example.org", &jwks("example.org", 1)),
                stored("Bad Name", &jwks("a.org", 1)),
                stored("big.org", &big),
                stored("c.org", &jwks("c.org", 1)),
            ],
            &local,
        );
        assert_eq!(names(&update.changed), ["c.org"]);
        foreign.sent(update.current);
        // A sent bundle that turns unusable is taken back.
        let update = foreign.update(&[stored("c.org", "[]")], &local);
        assert!(update.changed.is_empty());
        assert_eq!(update.removed, ["c.org"]);
    }

    #[test]
    fn foreign_bundles_travel_in_bounded_messages_before_the_last() {
        let half = vec![b'x'; FOREIGN_BUNDLE_CHUNK_BYTES / 2];
        let update = Update {
            upserted: Vec::new(),
            removed_ids: vec!["gone".into()],
            bundle: b"local".to_vec(),
            foreign: (0..3)
                .map(|i| (format!("d{i}.org"), half.clone()))
                .collect(),
            removed_foreign: vec!["old.org".into()],
        };
        let messages = chunk(update, true);
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages
                .iter()
                .map(|m| m.federated_bundles.len())
                .collect::<Vec<_>>(),
            [1, 1, 1]
        );
        assert!(messages.iter().all(|m| m.snapshot));
        assert_eq!(messages[0].bundle, b"local");
        let last = messages.last().unwrap();
        assert!(last.snapshot_complete);
        assert_eq!(last.removed_ids, ["gone"]);
        assert_eq!(last.removed_federated_bundles, ["old.org"]);
        assert!(messages[..2]
            .iter()
            .all(|m| !m.snapshot_complete && m.removed_federated_bundles.is_empty()));
    }
}
