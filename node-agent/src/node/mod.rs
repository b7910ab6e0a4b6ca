//! The agent's standing with the issuer: bootstrap (trust bundle, then a stored
//! SVID or a join token attestation), the mTLS connection, and renewal of the
//! agent SVID at half its lifetime.
//!
//! Re-bootstrap: if the issuer's CA was replaced (its data lost, say), the
//! stored bundle no longer authenticates it and the agent says so. Remove
//! `<data_dir>/agent/bundle.json` and start the agent with the new trust bundle
//! (`trust_bundle_path`) or `insecure_bootstrap`, and a new join token.

pub mod bundle_url;
pub mod identity;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use proto::issuer as pb;
use proto::issuer::agent_api_client::AgentApiClient;
use tokio::sync::watch;
use tonic::transport::Channel;
use workload_api::bundle::split_der_concat;
use workload_api::Bundle;
use zeroize::Zeroizing;

use crate::config::AgentConfig;
use crate::issuer_client::{self, ServerTrust};
use crate::keys::new_key_and_csr;
use identity::{AgentSvid, IdentityDir};

/// Why the agent could not establish itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("agent data directory: {0}")]
    DataDir(String),
    #[error(
        "no trust bundle: set trust_bundle_path (--trust-bundle) or, knowingly, insecure_bootstrap"
    )]
    NoTrustBundle,
    #[error("trust bundle {path}: {reason}")]
    TrustBundle { path: String, reason: String },
    #[error("the agent has no usable SVID and no join token: pass --join-token (sigil-issuer token generate)")]
    NeedJoinToken,
    #[error("attestation refused by the issuer: {0}")]
    AttestationRefused(String),
    #[error(
        "cannot reach the issuer at {address}: {reason}. If the issuer's CA was replaced, \
         re-bootstrap: remove {bundle} and start with a new trust bundle and join token"
    )]
    Unreachable {
        address: String,
        reason: String,
        bundle: String,
    },
    #[error("the issuer's answer was invalid: {0}")]
    BadResponse(String),
}

/// The agent's current SVID, bundle and issuer connection.
#[derive(Debug)]
pub struct Node {
    pub config: Arc<AgentConfig>,
    pub dir: IdentityDir,
    svid: watch::Sender<Arc<AgentSvid>>,
    bundle: watch::Sender<Arc<Bundle>>,
    client: RwLock<AgentApiClient<Channel>>,
}

/// Reads a trust bundle file: a SPIFFE bundle (JWK Set) or PEM CA certificates.
pub fn read_trust_bundle(
    path: &std::path::Path,
    trust_domain: &workload_api::TrustDomain,
) -> Result<Bundle, NodeError> {
    let bytes = std::fs::read(path).map_err(|e| NodeError::TrustBundle {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_trust_bundle(&bytes, trust_domain).map_err(|reason| NodeError::TrustBundle {
        path: path.display().to_string(),
        reason,
    })
}

/// Parses a bootstrap bundle: a SPIFFE bundle (JWK Set) or PEM CA certificates.
pub fn parse_trust_bundle(
    bytes: &[u8],
    trust_domain: &workload_api::TrustDomain,
) -> Result<Bundle, String> {
    if bytes.trim_ascii_start().starts_with(b"{") {
        return Bundle::from_jwks_json(trust_domain.clone(), bytes).map_err(|e| e.to_string());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "neither JSON nor PEM".to_owned())?;
    let certs = sigil_issuer::ca::pem_blocks(text, "CERTIFICATE");
    if certs.is_empty() {
        return Err("no CERTIFICATE blocks".into());
    }
    let mut bundle = Bundle::new(trust_domain.clone());
    certs.into_iter().for_each(|c| bundle.add_x509_authority(c));
    Ok(bundle)
}

impl Node {
    /// Loads or obtains the agent's identity and connects to the issuer.
    pub async fn bootstrap(config: Arc<AgentConfig>) -> Result<Arc<Node>, NodeError> {
        let dir =
            IdentityDir::new(&config.data_dir).map_err(|e| NodeError::DataDir(e.to_string()))?;
        let td = &config.trust_domain;
        let mut bundle = dir.load_bundle(td).map_err(NodeError::DataDir)?;
        if bundle.is_none() {
            if let Some(path) = &config.trust_bundle_path {
                bundle = Some(read_trust_bundle(path, td)?);
            } else if let Some(url) = &config.trust_bundle_url {
                let bytes =
                    bundle_url::fetch(url)
                        .await
                        .map_err(|reason| NodeError::TrustBundle {
                            path: url.clone(),
                            reason,
                        })?;
                let fetched =
                    parse_trust_bundle(&bytes, td).map_err(|reason| NodeError::TrustBundle {
                        path: url.clone(),
                        reason,
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
                let token = config
                    .join_token
                    .as_deref()
                    .ok_or(NodeError::NeedJoinToken)?;
                attest(&config, &dir, trust, token).await?
            }
        };
        dir.save_bundle(&bundle)
            .map_err(|e| NodeError::DataDir(e.to_string()))?;
        let client = connect(&config, &dir, &bundle, &svid).await?;
        let (svid, _) = watch::channel(Arc::new(svid));
        let (bundle, _) = watch::channel(Arc::new(bundle));
        Ok(Arc::new(Node {
            config,
            dir,
            svid,
            bundle,
            client: RwLock::new(client),
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

    pub fn subscribe_bundle(&self) -> watch::Receiver<Arc<Bundle>> {
        self.bundle.subscribe()
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
        match connect(&self.config, &self.dir, &self.bundle(), &self.svid()).await {
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
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
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
        let (key, csr) = new_key_and_csr(None).map_err(tonic::Status::internal)?;
        let response = self
            .client()
            .renew_agent(pb::RenewAgentRequest { csr })
            .await?
            .into_inner();
        let svid = response
            .svid
            .ok_or_else(|| tonic::Status::internal("renewal carried no SVID"))?;
        let chain = split_der_concat(&svid.cert_chain).map_err(tonic::Status::internal)?;
        let svid = AgentSvid::new(chain, key, &self.bundle(), SystemTime::now())
            .map_err(tonic::Status::internal)?;
        self.dir
            .save_svid(&svid)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        tracing::info!(agent_id = %svid.spiffe_id, not_after = ?svid.not_after, "agent SVID renewed");
        self.svid.send_replace(Arc::new(svid));
        self.reconnect().await;
        Ok(())
    }

    /// Says what is needed when renewal fails, and re-attests where possible.
    async fn cannot_renew(&self, status: &tonic::Status) {
        let expired = SystemTime::now() >= self.svid().not_after;
        if status.code() != tonic::Code::PermissionDenied && !expired {
            tracing::warn!(error = %status.message(), "agent SVID renewal failed; retrying");
            return;
        }
        if let Some(token) = self.config.join_token.as_deref() {
            let bundle = self.bundle();
            match attest(&self.config, &self.dir, ServerTrust::Bundle(&bundle), token).await {
                Ok((svid, bundle)) => {
                    tracing::info!(agent_id = %svid.spiffe_id, "agent re-attested");
                    self.svid.send_replace(Arc::new(svid));
                    self.bundle.send_replace(Arc::new(bundle));
                    self.reconnect().await;
                    return;
                }
                Err(error) => tracing::error!(%error, "re-attestation failed"),
            }
        }
        tracing::error!(
            error = %status.message(),
            "the agent SVID can no longer be renewed; a new join token is needed: \
             sigil-issuer token generate, then restart the agent with --join-token"
        );
    }
}

async fn attest(
    config: &AgentConfig,
    dir: &IdentityDir,
    trust: ServerTrust<'_>,
    token: &str,
) -> Result<(AgentSvid, Bundle), NodeError> {
    let unreachable = |reason: String| NodeError::Unreachable {
        address: config.issuer_address.clone(),
        reason,
        bundle: config
            .data_dir
            .join("agent/bundle.json")
            .display()
            .to_string(),
    };
    let (key, csr): (Zeroizing<Vec<u8>>, Vec<u8>) =
        new_key_and_csr(None).map_err(NodeError::BadResponse)?;
    let mut client = issuer_client::connect_with(&config.issuer_address, trust, None)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let response = client
        .attest_agent(pb::AttestAgentRequest {
            method: Some(pb::attest_agent_request::Method::JoinToken(
                pb::JoinTokenAttestation {
                    token: token.to_owned(),
                },
            )),
            csr,
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => {
                unreachable(status.message().to_owned())
            }
            _ => NodeError::AttestationRefused(status.message().to_owned()),
        })?
        .into_inner();
    let bundle = Bundle::from_jwks_json(config.trust_domain.clone(), &response.bundle)
        .map_err(|e| NodeError::BadResponse(format!("bundle: {e}")))?;
    let svid = response
        .svid
        .ok_or_else(|| NodeError::BadResponse("no SVID".into()))?;
    let chain = split_der_concat(&svid.cert_chain).map_err(NodeError::BadResponse)?;
    let svid =
        AgentSvid::new(chain, key, &bundle, SystemTime::now()).map_err(NodeError::BadResponse)?;
    dir.save_svid(&svid)
        .map_err(|e| NodeError::DataDir(e.to_string()))?;
    tracing::info!(agent_id = %svid.spiffe_id, "agent attested with a join token");
    Ok((svid, bundle))
}

async fn connect(
    config: &AgentConfig,
    dir: &IdentityDir,
    bundle: &Bundle,
    svid: &AgentSvid,
) -> Result<AgentApiClient<Channel>, NodeError> {
    let _ = dir;
    issuer_client::connect(
        &config.issuer_address,
        bundle,
        Some(&svid.client_identity()),
    )
    .await
    .map_err(|e| NodeError::Unreachable {
        address: config.issuer_address.clone(),
        reason: e.to_string(),
        bundle: config
            .data_dir
            .join("agent/bundle.json")
            .display()
            .to_string(),
    })
}
