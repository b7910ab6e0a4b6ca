//! k8s_psat node attestation: an agent presents its pod's projected service
//! account token. The cluster's API server vouches for it (TokenReview, with
//! the configured audience), the service account must be on the cluster's
//! allow-list, and the pod the token is bound to must still exist on a
//! node. The agent becomes `spiffe://<td>/agent/k8s_psat/<cluster>/<node uid>`,
//! so an agent attesting again on the same node replaces its old self, as
//! SPIRE's k8s_psat does.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use tonic::Status;
use workload_api::display::shown;
use workload_api::id::{SpiffeId, TrustDomain};
use workload_api::selector::Selector;

use super::client::{ApiError, ClusterClient, Clusters};

/// The largest token accepted; projected tokens are about 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The `user.extra` keys kube-apiserver sets for a pod-bound token.
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// An attested agent: its SPIFFE ID and what attestation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedNode {
    pub agent_id: SpiffeId,
    pub selectors: Vec<Selector>,
}

/// Why a token was refused; each says what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum PsatError {
    #[error("cluster {0:?} is not configured on this issuer (k8s_clusters)")]
    UnknownCluster(String),
    #[error("the token is empty")]
    EmptyToken,
    #[error("the token is {0} bytes, more than {MAX_TOKEN_BYTES}")]
    TokenTooLarge(usize),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("the API server of cluster {cluster:?} did not authenticate the token: {reason}")]
    NotAuthenticated { cluster: String, reason: String },
    #[error("the token is not for audience {expected:?} (it is for {got:?})")]
    WrongAudience { expected: String, got: Vec<String> },
    #[error("{0:?} is not a service account")]
    NotServiceAccount(String),
    #[error(
        "service account {namespace}:{service_account} is not on the allow-list of cluster {cluster:?}"
    )]
    NotAllowed {
        cluster: String,
        namespace: String,
        service_account: String,
    },
    #[error("the token is not bound to a pod; mount a projected service account token")]
    NotBoundToPod,
    #[error("pod {namespace}/{name} does not exist")]
    PodNotFound { namespace: String, name: String },
    #[error("pod {namespace}/{name} has uid {actual}, not the token's {expected}")]
    PodReplaced {
        namespace: String,
        name: String,
        expected: String,
        actual: String,
    },
    #[error("pod {namespace}/{name} is not scheduled to a node")]
    PodNotScheduled { namespace: String, name: String },
    #[error("node {0} does not exist")]
    NodeNotFound(String),
    #[error("node {0} has no uid")]
    NodeWithoutUid(String),
    #[error("{0}")]
    BadSegment(String),
}

impl PsatError {
    /// The gRPC status: an API server that cannot be reached (or refuses the
    /// issuer itself) is UNAVAILABLE so the agent retries; a bad request is
    /// INVALID_ARGUMENT; everything about the token's identity is
    /// PERMISSION_DENIED.
    pub fn status(&self) -> Status {
        let message = self.to_string();
        match self {
            PsatError::Api(_) => Status::unavailable(message),
            PsatError::UnknownCluster(_) | PsatError::EmptyToken | PsatError::TokenTooLarge(_) => {
                Status::invalid_argument(message)
            }
            _ => Status::permission_denied(message),
        }
    }
}

/// Attests an agent of `cluster` by its token.
pub async fn attest(
    clusters: &Clusters,
    trust_domain: &TrustDomain,
    cluster: &str,
    token: &str,
) -> Result<AttestedNode, PsatError> {
    let client = clusters
        .get(cluster)
        .ok_or_else(|| PsatError::UnknownCluster(shown(cluster)))?;
    if token.is_empty() {
        return Err(PsatError::EmptyToken);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(PsatError::TokenTooLarge(token.len()));
    }
    let status = review(client, token).await?;
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| PsatError::NotServiceAccount(shown(&username)))?;
    let name = &client.cluster.name;
    if !client.cluster.allows(namespace, service_account) {
        return Err(PsatError::NotAllowed {
            cluster: name.clone(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        });
    }
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| extra.get(key).and_then(|values| values.first()).cloned();
    let (Some(pod_name), Some(pod_uid)) = (first(EXTRA_POD_NAME), first(EXTRA_POD_UID)) else {
        return Err(PsatError::NotBoundToPod);
    };
    let pods: Api<Pod> = Api::namespaced(client.client.clone(), namespace);
    let pod =
        client
            .call(pods.get_opt(&pod_name))
            .await?
            .ok_or_else(|| PsatError::PodNotFound {
                namespace: namespace.to_owned(),
                name: pod_name.clone(),
            })?;
    let actual_uid = pod.metadata.uid.clone().unwrap_or_default();
    if actual_uid != pod_uid {
        // The token outlived its pod and a new one took the name.
        return Err(PsatError::PodReplaced {
            namespace: namespace.to_owned(),
            name: pod_name,
            expected: pod_uid,
            actual: actual_uid,
        });
    }
    let node_name = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.node_name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| PsatError::PodNotScheduled {
            namespace: namespace.to_owned(),
            name: pod_name.clone(),
        })?;
    let nodes: Api<Node> = Api::all(client.client.clone());
    let node = client
        .call(nodes.get_opt(&node_name))
        .await?
        .ok_or_else(|| PsatError::NodeNotFound(node_name.clone()))?;
    let node_uid = node
        .metadata
        .uid
        .clone()
        .filter(|uid| !uid.is_empty())
        .ok_or_else(|| PsatError::NodeWithoutUid(node_name.clone()))?;
    let agent_id = agent_id(trust_domain, name, &node_uid)?;
    let mut selectors = vec![
        Selector::new("k8s_psat", format!("cluster:{name}")),
        Selector::new("k8s_psat", format!("agent_ns:{namespace}")),
        Selector::new("k8s_psat", format!("agent_sa:{service_account}")),
        Selector::new("k8s_psat", format!("agent_pod_name:{pod_name}")),
        Selector::new("k8s_psat", format!("agent_pod_uid:{pod_uid}")),
        Selector::new("k8s_psat", format!("agent_node_name:{node_name}")),
        Selector::new("k8s_psat", format!("agent_node_uid:{node_uid}")),
    ];
    for (key, value) in node.metadata.labels.unwrap_or_default() {
        selectors.push(Selector::new(
            "k8s_psat",
            format!("agent_node_label:{key}:{value}"),
        ));
    }
    Ok(AttestedNode {
        agent_id,
        selectors,
    })
}

/// The agent ID of the node with `node_uid` in `cluster`.
pub fn agent_id(
    trust_domain: &TrustDomain,
    cluster: &str,
    node_uid: &str,
) -> Result<SpiffeId, PsatError> {
    SpiffeId::from_segments(
        trust_domain.clone(),
        &["agent", "k8s_psat", cluster, node_uid],
    )
    .map_err(|e| {
        PsatError::BadSegment(format!(
            "node uid {} cannot be a SPIFFE ID segment: {e}",
            shown(node_uid)
        ))
    })
}

/// Asks the API server who the token belongs to, for the cluster's audience.
async fn review(client: &ClusterClient, token: &str) -> Result<TokenReviewStatus, PsatError> {
    let audience = &client.cluster.audience;
    let reviews: Api<TokenReview> = Api::all(client.client.clone());
    let request = TokenReview {
        metadata: Default::default(),
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.clone()]),
        },
        status: None,
    };
    let reviewed = client
        .call(reviews.create(&PostParams::default(), &request))
        .await?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(PsatError::NotAuthenticated {
            cluster: client.cluster.name.clone(),
            reason: status
                .error
                .clone()
                .unwrap_or_else(|| "no reason given".into()),
        });
    }
    // The API server only authenticates a token for an audience it carries;
    // checked again so a server ignoring spec.audiences cannot pass one.
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(PsatError::WrongAudience {
            expected: audience.clone(),
            got: audiences,
        });
    }
    Ok(status)
}
