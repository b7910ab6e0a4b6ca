//! The agent's standing with the issuer: bootstrap (trust bundle, then a stored
//! SVID or a join token attestation), the mTLS connection, and renewal of the
//! agent SVID at half its lifetime.
//!
//! An agent with a stored SVID and bundle starts without the issuer: its
//! connection is made on first use and remade by itself, so an issuer outage
//! at start is waited out like any other.
//!
//! Re-bootstrap: if the issuer's CA was replaced (its data lost, say), the
//! stored bundle no longer authenticates it and the agent says so, and only
//! then. Remove `<data_dir>/agent/bundle.json` and start the agent with the
//! new trust bundle (`trust_bundle_path`) or `insecure_bootstrap`, and a new
//! join token.

pub mod bundle_url;
pub mod federated;
pub mod identity;
pub mod revocations;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use proto::issuer as pb;
use proto::issuer::agent_api_client::AgentApiClient;
use tokio::sync::watch;
use tonic::transport::Channel;
use workload_api::bundle::split_der_concat;
use workload_api::revocation::Revocations;
use workload_api::x509svid::X509SvidError;
use workload_api::{Bundle, BundleError};
use zeroize::Zeroizing;

use crate::attestor::k8s::token::read_token;
use crate::config::{AgentConfig, NodeAttestor};
use crate::failover::IssuerPool;
use crate::issuer_client::{self, ServerTrust};
use crate::keys::{new_key_and_csr, KeyError};
use federated::{Federated, FederatedChange};
use identity::{AgentSvid, IdentityDir, IdentityError};

/// Why the agent could not establish itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("agent data directory: {0}")]
    DataDir(#[from] IdentityError),
    #[error(
        "no trust bundle: set trust_bundle_path (--trust-bundle) or, knowingly, insecure_bootstrap"
    )]
    NoTrustBundle,
    #[error("trust bundle {}: {source}", .path.display())]
    TrustBundleRead {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("trust bundle {0}")]
    TrustBundleFetch(#[from] bundle_url::FetchError),
    /// `origin` is the file or URL the bundle came from.
    #[error("trust bundle {origin}: {source}")]
    TrustBundle { origin: String, source: BundleError },
    #[error("the agent has no usable SVID and no join token: pass --join-token (sigil-issuer token generate)")]
    NeedJoinToken,
    #[error("agent key: {0}")]
    Key(#[from] KeyError),
    #[error("k8s_psat: {0}")]
    PsatToken(#[from] crate::attestor::k8s::token::TokenError),
    #[error("attestation refused by the issuer: {}", .0.message())]
    AttestationRefused(#[source] tonic::Status),
    #[error("cannot reach the issuer at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error(
        "the issuer at {address} is not the one the trust bundle names: {reason}. If the \
         issuer's CA was replaced, re-bootstrap: remove {bundle} and start with a new trust \
         bundle and join token"
    )]
    IssuerNotTrusted {
        address: String,
        reason: String,
        bundle: String,
    },
    #[error("the issuer's answer was invalid: bundle: {0}")]
    BadBundle(#[source] BundleError),
    #[error("the issuer's answer was invalid: no SVID")]
    NoSvid,
    #[error("the issuer's answer was invalid: {0}")]
    BadChain(#[source] BundleError),
    #[error("the issuer's answer was invalid: {0}")]
    BadSvid(#[source] X509SvidError),
}

/// The agent's current SVID, bundle and issuer connection.
#[derive(Debug)]
pub struct Node {
    pub config: Arc<AgentConfig>,
    pub dir: IdentityDir,
    svid: watch::Sender<Arc<AgentSvid>>,
    bundle: watch::Sender<Arc<Bundle>>,
    /// The issuer's CRLs and revocation list, as last received.
    revocations: watch::Sender<Arc<Revocations>>,
    /// The foreign trust domains' bundles, as last received.
    federated: watch::Sender<Arc<Federated>>,
    client: RwLock<AgentApiClient<Channel>>,
    /// The issuer's replicas: every connection, this client's and those of
    /// clients made later, is made through it.
    pub issuer: Arc<IssuerPool>,
    standing: watch::Sender<Standing>,
    /// Set once the configured join token has been tried after a refusal:
    /// a token is single use, so it is not tried again.
    token_tried: AtomicBool,
}

/// Whether the issuer still accepts this agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Standing {
    #[default]
    Good,
    /// Banned, or evicted with no way to attest again: the agent serves
    /// nothing until it attests anew. `reason` says what to do.
    Refused { banned: bool, reason: String },
}

/// The longest the renewal loop sleeps before looking at the wall clock
/// again: renewal times are wall-clock times, sleeps are monotonic.
const MAX_RENEWAL_SLEEP: Duration = Duration::from_secs(5);

/// Reads a trust bundle file: a SPIFFE bundle (JWK Set) or PEM CA certificates.
pub fn read_trust_bundle(
    path: &std::path::Path,
    trust_domain: &workload_api::TrustDomain,
) -> Result<Bundle, NodeError> {
    let bytes = std::fs::read(path).map_err(|source| NodeError::TrustBundleRead {
        path: path.to_owned(),
        source,
    })?;
    parse_trust_bundle(&bytes, trust_domain).map_err(|source| NodeError::TrustBundle {
        origin: path.display().to_string(),
        source,
    })
}

/// Parses a bootstrap bundle: a SPIFFE bundle (JWK Set) or PEM CA certificates.
pub fn parse_trust_bundle(
    bytes: &[u8],
    trust_domain: &workload_api::TrustDomain,
) -> Result<Bundle, BundleError> {
    Bundle::from_jwks_or_pem(trust_domain.clone(), bytes)
}

impl Node {
    /// Loads or obtains the agent's identity and connects to the issuer.
    pub async fn bootstrap(config: Arc<AgentConfig>) -> Result<Arc<Node>, NodeError> {
        let dir = IdentityDir::new(&config.data_dir)?;
        let issuer = IssuerPool::new(config.issuer_address.clone());
        let td = &config.trust_domain;
        let mut bundle = dir.load_bundle(td)?;
        if bundle.is_none() {
            if let Some(path) = &config.trust_bundle_path {
                bundle = Some(read_trust_bundle(path, td)?);
            } else if let Some(url) = &config.trust_bundle_url {
                let bytes = bundle_url::fetch(url).await?;
                let fetched =
                    parse_trust_bundle(&bytes, td).map_err(|source| NodeError::TrustBundle {
                        origin: url.clone(),
                        source,
                    })?;
                tracing::info!(%url, "trust bundle fetched");
                bundle = Some(fetched);
            }
        }
        let now = SystemTime::now();
        let reused = bundle.as_ref().and_then(|b| dir.load_svid(b, now));
        let (svid, bundle) = match (reused, bundle) {
            (Some(svid), Some(bundle)) => {
                tracing::info!(agent_id = %svid.spiffe_id, "reusing the stored agent SVID");
                (svid, bundle)
            }
            (_, bundle) => {
                let trust = match &bundle {
                    Some(b) => ServerTrust::Bundle(b),
                    None if config.insecure_bootstrap => {
                        tracing::warn!("insecure_bootstrap: trusting the issuer's certificate unverified for attestation");
                        ServerTrust::InsecureBootstrap
                    }
                    None => return Err(NodeError::NoTrustBundle),
                };
                let method = attestation_method(&config).await?;
                attest(&config, &issuer, &dir, trust, method).await?
            }
        };
        dir.save_bundle(&bundle)?;
        let client = connect(&config, &issuer, &bundle, &svid)?;
        let stored_revocations = revocations::load(&dir, &bundle);
        let stored_federated = federated::load(&dir, td);
        let (svid, _) = watch::channel(Arc::new(svid));
        let (bundle, _) = watch::channel(Arc::new(bundle));
        Ok(Arc::new(Node {
            config,
            dir,
            svid,
            bundle,
            revocations: watch::channel(Arc::new(stored_revocations)).0,
            federated: watch::channel(Arc::new(stored_federated)).0,
            client: RwLock::new(client),
            issuer,
            standing: watch::channel(Standing::Good).0,
            token_tried: AtomicBool::new(false),
        }))
    }

    /// A client for the issuer's agent API, authenticated as this agent.
    pub fn client(&self) -> AgentApiClient<Channel> {
        self.client.read().expect("client lock").clone()
    }

    pub fn svid(&self) -> Arc<AgentSvid> {
        self.svid.borrow().clone()
    }

    pub fn bundle(&self) -> Arc<Bundle> {
        self.bundle.borrow().clone()
    }

    pub fn standing(&self) -> Standing {
        self.standing.borrow().clone()
    }

    pub fn subscribe_bundle(&self) -> watch::Receiver<Arc<Bundle>> {
        self.bundle.subscribe()
    }

    pub fn revocations(&self) -> Arc<Revocations> {
        self.revocations.borrow().clone()
    }

    pub fn subscribe_revocations(&self) -> watch::Receiver<Arc<Revocations>> {
        self.revocations.subscribe()
    }

    pub fn subscribe_federated(&self) -> watch::Receiver<Arc<Federated>> {
        self.federated.subscribe()
    }

    /// Adopts the foreign bundles the issuer pushed: stored, then
    /// published, when they change what is held.
    pub fn update_federated(&self, change: FederatedChange) {
        let held = self.federated.borrow().clone();
        let next = federated::apply(&held, change, &self.config.trust_domain);
        if next == *held {
            return;
        }
        if let Err(error) = federated::save(&self.dir, &next) {
            tracing::error!(%error, "storing the foreign bundles failed");
        }
        tracing::info!(trust_domains = next.len(), "foreign bundles updated");
        self.federated.send_replace(Arc::new(next));
    }

    /// Adopts revocations pushed by the issuer once they verify against
    /// the bundle: stored, then published.
    pub fn update_revocations(&self, crls: Vec<Vec<u8>>, list_jws: &str) {
        let held = self.revocations.borrow().clone();
        match revocations::accept(&held, crls, list_jws, &self.bundle()) {
            Ok(next) => {
                if let Err(error) = revocations::save(&self.dir, &next) {
                    tracing::error!(%error, "storing revocations failed");
                }
                tracing::debug!(seq = next.seq(), "revocations updated");
                self.revocations.send_replace(Arc::new(next));
            }
            Err(error) => {
                tracing::error!(%error, "issuer sent revocations that do not verify; keeping the current ones")
            }
        }
    }

    /// Adopts a bundle pushed by the issuer: stored, published, and used for
    /// new connections.
    pub async fn update_bundle(&self, bundle: Bundle) {
        if *self.bundle() == bundle {
            return;
        }
        if let Err(error) = self.dir.save_bundle(&bundle) {
            tracing::error!(%error, "storing the trust bundle failed");
        }
        tracing::info!(sequence = bundle.sequence(), "trust bundle updated");
        self.bundle.send_replace(Arc::new(bundle));
        self.reconnect().await;
    }

    async fn reconnect(&self) {
        match connect(&self.config, &self.issuer, &self.bundle(), &self.svid()) {
            Ok(client) => *self.client.write().expect("client lock") = client,
            Err(error) => tracing::warn!(%error, "reconnecting to the issuer failed"),
        }
    }

    /// Renews the agent SVID at half its life, until `stop` fires.
    pub async fn run_renewal(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let svid = self.svid();
            let wait = svid
                .renew_at()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait.min(MAX_RENEWAL_SLEEP)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if wait > MAX_RENEWAL_SLEEP {
                continue;
            }
            match self.renew().await {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(status) => {
                    self.cannot_renew(&status).await;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn renew(&self) -> Result<(), tonic::Status> {
        let (key, csr) =
            new_key_and_csr(None).map_err(|e| tonic::Status::internal(e.to_string()))?;
        let response = self
            .client()
            .renew_agent(pb::RenewAgentRequest { csr })
            .await?
            .into_inner();
        let svid = response
            .svid
            .ok_or_else(|| tonic::Status::internal("renewal carried no SVID"))?;
        let chain = split_der_concat(&svid.cert_chain)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let svid = AgentSvid::new(chain, key, &self.bundle(), SystemTime::now())
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        self.dir
            .save_svid(&svid)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        tracing::info!(agent_id = %svid.spiffe_id, not_after = %humantime::format_rfc3339_seconds(svid.not_after), "agent SVID renewed");
        self.svid.send_replace(Arc::new(svid));
        self.reconnect().await;
        Ok(())
    }

    /// Says what is needed when renewal fails, and re-attests where possible.
    async fn cannot_renew(&self, status: &tonic::Status) {
        let expired = SystemTime::now() >= self.svid().not_after;
        if status.code() == tonic::Code::PermissionDenied || expired {
            self.refused(status).await;
        } else if self.issuer.is_up() {
            tracing::warn!(error = %status.message(), "agent SVID renewal failed; retrying");
        } else {
            // The pool logs the outage once; each retry is detail.
            tracing::debug!(error = %status.message(), "agent SVID renewal failed; retrying");
        }
    }

    /// The issuer refused this agent (`status` is its PERMISSION_DENIED, or
    /// the SVID expired). Attests again with the configured join token where
    /// it can, once per token; otherwise records the refusal, which stops
    /// the Workload API from serving anything.
    pub async fn refused(&self, status: &tonic::Status) {
        let banned = status
            .metadata()
            .get(proto::AGENT_STANDING_KEY)
            .is_some_and(|standing| standing == "banned");
        // A join token is single-use, so it is tried once; a projected
        // service account token proves the node afresh each time.
        let may_attest = match self.config.node_attestor {
            NodeAttestor::JoinToken => {
                self.config.join_token.is_some() && !self.token_tried.swap(true, Ordering::SeqCst)
            }
            NodeAttestor::K8sPsat { .. } => true,
        };
        if may_attest {
            let bundle = self.bundle();
            let attested = match attestation_method(&self.config).await {
                Ok(method) => {
                    attest(
                        &self.config,
                        &self.issuer,
                        &self.dir,
                        ServerTrust::Bundle(&bundle),
                        method,
                    )
                    .await
                }
                Err(error) => Err(error),
            };
            match attested {
                Ok((svid, bundle)) => {
                    tracing::info!(agent_id = %svid.spiffe_id, "agent attested anew");
                    self.svid.send_replace(Arc::new(svid));
                    self.bundle.send_replace(Arc::new(bundle));
                    self.reconnect().await;
                    self.standing.send_replace(Standing::Good);
                    return;
                }
                Err(error) => tracing::warn!(%error, "attesting anew failed"),
            }
        }
        let agent_id = &self.svid().spiffe_id;
        let reason = match (&self.config.node_attestor, banned) {
            (NodeAttestor::JoinToken, true) => format!(
                "agent {agent_id} is banned by the issuer; it serves nothing. To serve again as a \
                 new agent: sigil-issuer token generate, then sigil-agent run --join-token <token>"
            ),
            (NodeAttestor::JoinToken, false) => format!(
                "agent {agent_id} is no longer accepted by the issuer ({}); a new join token is \
                 needed: sigil-issuer token generate, then sigil-agent run --join-token <token>",
                status.message()
            ),
            // The node's identity is its own: only evicting the banned agent
            // (sigil-issuer agent evict) lets this node attest again.
            (NodeAttestor::K8sPsat { .. }, true) => format!(
                "agent {agent_id} is banned by the issuer; it serves nothing until the agent is \
                 evicted (sigil-issuer agent evict --spiffe-id {agent_id})"
            ),
            (NodeAttestor::K8sPsat { .. }, false) => format!(
                "agent {agent_id} is no longer accepted by the issuer ({}); k8s_psat attestation \
                 is retried",
                status.message()
            ),
        };
        if self.standing.borrow().clone()
            != (Standing::Refused {
                banned,
                reason: reason.clone(),
            })
        {
            tracing::error!(%reason, "the issuer refused this agent");
        }
        self.standing
            .send_replace(Standing::Refused { banned, reason });
    }
}

/// The proof this node presents, read when it is needed: a projected
/// service account token is rotated by the kubelet.
async fn attestation_method(
    config: &AgentConfig,
) -> Result<pb::attest_agent_request::Method, NodeError> {
    use pb::attest_agent_request::Method;
    match &config.node_attestor {
        NodeAttestor::JoinToken => {
            let token = config
                .join_token
                .as_deref()
                .ok_or(NodeError::NeedJoinToken)?;
            Ok(Method::JoinToken(pb::JoinTokenAttestation {
                token: token.to_owned(),
            }))
        }
        NodeAttestor::K8sPsat {
            cluster,
            token_path,
        } => {
            let token = read_token(token_path).await?;
            Ok(Method::K8sPsat(pb::K8sPsatAttestation {
                cluster: cluster.clone(),
                token: token.as_str().to_owned(),
            }))
        }
    }
}

async fn attest(
    config: &AgentConfig,
    issuer: &Arc<IssuerPool>,
    dir: &IdentityDir,
    trust: ServerTrust<'_>,
    method: pb::attest_agent_request::Method,
) -> Result<(AgentSvid, Bundle), NodeError> {
    let unreachable = |error: &(dyn std::error::Error + 'static)| {
        let address = config.issuer_address.to_string();
        match issuer_client::certificate_rejected(error) {
            Some(reason) => NodeError::IssuerNotTrusted {
                address,
                reason,
                bundle: dir.bundle_path().display().to_string(),
            },
            None => NodeError::Unreachable {
                address,
                reason: error.to_string(),
            },
        }
    };
    let (key, csr): (Zeroizing<Vec<u8>>, Vec<u8>) = new_key_and_csr(None)?;
    let mut client = issuer_client::connect_through(issuer, trust, None)
        .await
        .map_err(|e| unreachable(&e))?;
    let response = client
        .attest_agent(pb::AttestAgentRequest {
            method: Some(method),
            csr,
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => unreachable(&status),
            _ => NodeError::AttestationRefused(status),
        })?
        .into_inner();
    let bundle = Bundle::from_jwks_json(config.trust_domain.clone(), &response.bundle)
        .map_err(NodeError::BadBundle)?;
    let svid = response.svid.ok_or(NodeError::NoSvid)?;
    let chain = split_der_concat(&svid.cert_chain).map_err(NodeError::BadChain)?;
    let svid =
        AgentSvid::new(chain, key, &bundle, SystemTime::now()).map_err(NodeError::BadSvid)?;
    dir.save_svid(&svid)?;
    tracing::info!(agent_id = %svid.spiffe_id, "agent attested");
    Ok((svid, bundle))
}

/// The agent's channel to the issuer, made on first use.
fn connect(
    config: &AgentConfig,
    issuer: &Arc<IssuerPool>,
    bundle: &Bundle,
    svid: &AgentSvid,
) -> Result<AgentApiClient<Channel>, NodeError> {
    issuer_client::connect_lazy(issuer, bundle, Some(&svid.client_identity())).map_err(|e| {
        NodeError::Unreachable {
            address: config.issuer_address.to_string(),
            reason: e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_bundle_files_are_jwks_or_pem() {
        let td = workload_api::TrustDomain::new("example.org").unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();

        let from_pem = parse_trust_bundle(pem.as_bytes(), &td).unwrap();
        assert_eq!(from_pem.x509_authorities().len(), 1);
        let from_jwks = parse_trust_bundle(&from_pem.to_jwks_json(), &td).unwrap();
        assert_eq!(from_jwks.x509_authorities(), from_pem.x509_authorities());

        for (bytes, expected) in [
            (&b"{\"spiffe_sequence\": 1}"[..], BundleError::MissingKeys),
            (&b"\xff\xfe"[..], BundleError::NotPem),
            (
                &b"-----BEGIN PRIVATE KEY-----\n"[..],
                BundleError::NoCertificates,
            ),
        ] {
            assert_eq!(parse_trust_bundle(bytes, &td).unwrap_err(), expected);
        }
    }

    #[test]
    fn trust_bundle_errors_name_the_file() {
        let td = workload_api::TrustDomain::new("example.org").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        let error = read_trust_bundle(&path, &td).unwrap_err();
        assert!(matches!(&error, NodeError::TrustBundleRead { path: p, .. } if *p == path));
        std::fs::write(&path, "not a bundle").unwrap();
        assert_eq!(
            read_trust_bundle(&path, &td).unwrap_err().to_string(),
            format!(
                "trust bundle {}: bundle has no CERTIFICATE blocks",
                path.display()
            )
        );
    }
}
