//! The agent as the Workload API's identity source: attests callers with the
//! unix attestor (and the Kubernetes one, when configured), signs JWT-SVIDs
//! through the cache, and reports the issuer outage the SVID cache and the
//! JWT-SVID cache have seen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tonic::Status;
use workload_api::selector::Selectors;
use workload_api::source::{
    Caller, Delivery, Identity, IdentitySource, IssuerOutage, JwtSvid, Snapshot,
};

use crate::attestor::{K8sAttestor, UnixAttestor};
use crate::events::AgentEvents;
use crate::issuer_health::IssuerHealth;
use crate::node::Node;
use crate::svid::jwt::JwtCache;

/// Counters shown in the agent's status.
#[derive(Debug, Default)]
pub struct Served {
    pub calls: AtomicU64,
    pub jwt_svids: AtomicU64,
}

/// The agent's identity source.
#[derive(Debug)]
pub struct AgentSource {
    node: Arc<Node>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    attestor: Arc<UnixAttestor>,
    k8s: Option<K8sAttestor>,
    jwt: JwtCache,
    /// Where deliveries are recorded for the event log.
    events: Arc<AgentEvents>,
    health: Arc<IssuerHealth>,
    pub served: Arc<Served>,
}

impl AgentSource {
    /// A source serving `snapshots`; `health` is shared with the SVID cache.
    /// The Kubernetes attestor runs when the node's configuration has it.
    pub fn new(
        node: Arc<Node>,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        health: Arc<IssuerHealth>,
        events: Arc<AgentEvents>,
    ) -> Self {
        let k8s = node.config.k8s.clone().map(K8sAttestor::new);
        AgentSource {
            node,
            snapshots,
            attestor: Arc::new(UnixAttestor::default()),
            k8s,
            jwt: JwtCache::default(),
            events,
            health,
            served: Arc::default(),
        }
    }

    async fn attest_unix(&self, caller: Caller) -> Result<Selectors, Status> {
        let refused = |e: crate::attestor::AttestError| {
            Status::permission_denied(format!("workload attestation failed: {e}"))
        };
        // Reading a few /proc files is quick enough to do in place; hashing a
        // binary seen for the first time is not, so that goes to a thread.
        if let Some(result) = self.attestor.attest_cached(&caller) {
            return result.map_err(refused);
        }
        let attestor = self.attestor.clone();
        tokio::task::spawn_blocking(move || attestor.attest(&caller))
            .await
            .map_err(|_| Status::internal("workload attestation panicked"))?
            .map_err(refused)
    }
}

#[tonic::async_trait]
impl IdentitySource for AgentSource {
    fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    async fn attest(&self, caller: Caller) -> Result<Selectors, Status> {
        self.served.calls.fetch_add(1, Ordering::Relaxed);
        let pid = caller.pid.filter(|p| *p > 0);
        let unix = self.attest_unix(caller).await?;
        let (Some(k8s), Some(pid)) = (&self.k8s, pid) else {
            return Ok(unix);
        };
        let found = k8s.attest(pid).await.map_err(|error| {
            tracing::warn!(pid, %error, "kubernetes workload attestation failed");
            Status::permission_denied(format!("kubernetes workload attestation failed: {error}"))
        })?;
        if found.is_empty() {
            return Ok(unix);
        }
        Ok(unix.iter().cloned().chain(found).collect())
    }

    async fn fetch_jwt_svid(
        &self,
        identity: &Identity,
        audience: &[String],
        now: SystemTime,
    ) -> Result<JwtSvid, Status> {
        let svid = self
            .jwt
            .fetch(&self.node, &self.health, &identity.entry_id, audience, now)
            .await?;
        self.served.jwt_svids.fetch_add(1, Ordering::Relaxed);
        Ok(svid)
    }

    fn issuer_outage(&self) -> Option<IssuerOutage> {
        self.health.outage()
    }

    fn delivered(&self, delivery: Delivery<'_>) {
        let agent_id = self.node.svid().spiffe_id.to_string();
        self.events.delivered(&agent_id, &delivery);
    }
}
