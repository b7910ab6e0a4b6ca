//! Connections to each configured cluster's API server: from a kubeconfig
//! file when one is named, else the in-cluster service account (the token
//! and CA Kubernetes mounts into the issuer's pod). Every call the issuer
//! makes is bounded by [`API_TIMEOUT`], so an API server that hangs is
//! reported as unreachable rather than stalling an attestation.

use std::future::Future;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use workload_api::display::error_chain;

use crate::config::k8s::K8sCluster;

/// The most one API call may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to a cluster's API server failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the Kubernetes API server of cluster {cluster:?} is unreachable: {reason}")]
    Unreachable { cluster: String, reason: String },
    #[error("the Kubernetes API server of cluster {cluster:?} answered {code}: {message}")]
    Refused {
        cluster: String,
        code: u16,
        message: String,
    },
}

impl ApiError {
    /// The HTTP status the API server answered with, if it answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Refused { code, .. } => Some(*code),
            ApiError::Unreachable { .. } => None,
        }
    }
}

/// Why a cluster's client could not be built at start.
#[derive(Debug, thiserror::Error)]
#[error("k8s_clusters {cluster:?}: {reason}")]
pub struct ClientSetupError {
    cluster: String,
    reason: String,
}

/// A cluster's configuration with its API client.
#[derive(Clone)]
pub struct ClusterClient {
    pub cluster: K8sCluster,
    pub client: kube::Client,
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("cluster", &self.cluster.name)
            .finish_non_exhaustive()
    }
}

impl ClusterClient {
    /// Builds the client; nothing is contacted until the first call.
    pub async fn new(cluster: K8sCluster) -> Result<Self, ClientSetupError> {
        let setup = |reason: String| ClientSetupError {
            cluster: cluster.name.clone(),
            reason,
        };
        let mut config = match &cluster.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| setup(format!("kubeconfig {}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| setup(format!("kubeconfig {}: {e}", path.display())))?
            }
            None => kube::Config::incluster().map_err(|e| {
                setup(format!(
                    "no kubeconfig is set and this is not a pod with a service account: {e}"
                ))
            })?,
        };
        config.connect_timeout = Some(API_TIMEOUT);
        let client = kube::Client::try_from(config).map_err(|e| setup(e.to_string()))?;
        Ok(ClusterClient { cluster, client })
    }

    /// Runs one API call within [`API_TIMEOUT`], naming the cluster in errors.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ApiError> {
        let cluster = self.cluster.name.clone();
        match tokio::time::timeout(API_TIMEOUT, call).await {
            Err(_) => Err(ApiError::Unreachable {
                cluster,
                reason: format!("no answer within {}s", API_TIMEOUT.as_secs()),
            }),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(kube::Error::Api(status))) => Err(ApiError::Refused {
                cluster,
                code: status.code,
                message: status.message.clone(),
            }),
            Ok(Err(other)) => Err(ApiError::Unreachable {
                cluster,
                reason: error_chain(&other),
            }),
        }
    }
}

/// Every configured cluster's client.
#[derive(Debug, Clone, Default)]
pub struct Clusters {
    clusters: Vec<ClusterClient>,
}

impl Clusters {
    pub async fn connect(clusters: &[K8sCluster]) -> Result<Self, ClientSetupError> {
        let mut clients = Vec::with_capacity(clusters.len());
        for cluster in clusters {
            clients.push(ClusterClient::new(cluster.clone()).await?);
        }
        Ok(Clusters { clusters: clients })
    }

    pub fn get(&self, name: &str) -> Option<&ClusterClient> {
        self.clusters.iter().find(|c| c.cluster.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ClusterClient> {
        self.clusters.iter()
    }
}
