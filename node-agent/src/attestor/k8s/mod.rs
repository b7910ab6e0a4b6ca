//! The Kubernetes workload attestor: `k8s` selectors for a caller that runs
//! in a pod on this node. Its container id comes from its cgroup
//! ([`cgroup`]), its pod and container status from the kubelet's pod list
//! ([`kubelet`], [`pods`]). A caller outside any container gets no `k8s`
//! selectors; one in a container the kubelet does not list (after a few
//! tries, since a starting container's status shows late) is refused.
//!
//! The cgroup is read between two reads of the process's start time, as the
//! unix attestor reads its files; a pid taken by another process between
//! the two attestors' reads (the caller exiting and its pid coming round
//! again within one call) is not detected.

pub mod cgroup;
pub mod kubelet;
pub mod pods;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use workload_api::selector::Selector;

use self::cgroup::{CgroupError, Container, ContainerId, MAX_CGROUP_BYTES};
use self::kubelet::{KubeletClient, KubeletError, KubeletTrust};
use self::pods::PodList;
use super::unix::{parse_start_time, ProcError};

pub const DEFAULT_KUBELET_ADDRESS: &str = "https://127.0.0.1:10250";
pub const DEFAULT_KUBELET_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
pub const DEFAULT_KUBELET_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const DEFAULT_POD_RETRIES: u32 = 10;
pub const DEFAULT_POD_RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// How long a pod list answers calls: a burst of calls is one request.
pub const DEFAULT_POD_LIST_TTL: Duration = Duration::from_secs(1);
pub const DEFAULT_KUBELET_TIMEOUT: Duration = Duration::from_secs(10);

/// The attestor's validated configuration.
#[derive(Debug, Clone)]
pub struct K8sConfig {
    /// `https://host:port` of the kubelet.
    pub kubelet_address: hyper::Uri,
    pub kubelet_trust: KubeletTrust,
    pub token_path: PathBuf,
    /// How many times the pod list is read for a container before refusing.
    pub pod_retries: u32,
    pub pod_retry_interval: Duration,
    pub pod_list_ttl: Duration,
    pub kubelet_timeout: Duration,
    /// Where `<pid>/cgroup` is read: `/proc`, or a fake tree in tests.
    pub proc_root: PathBuf,
}

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum K8sError {
    #[error("caller process {pid}: {reason}")]
    Proc { pid: i32, reason: ProcError },
    #[error("caller process {pid}: {source}")]
    Cgroup { pid: i32, source: CgroupError },
    #[error("caller process {pid} changed while it was attested (pid reused)")]
    PidReused { pid: i32 },
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
    #[error("container {id} not found in the kubelet's pod list after {attempts} attempts")]
    ContainerNotFound { id: ContainerId, attempts: u32 },
}

/// A pod list and when it was read.
#[derive(Debug)]
struct Fetched {
    at: Instant,
    pods: Arc<PodList>,
}

/// The attestor: a kubelet client and its last pod list.
#[derive(Debug)]
pub struct K8sAttestor {
    config: K8sConfig,
    kubelet: KubeletClient,
    /// Held while the kubelet is asked, so concurrent callers wait for that
    /// one answer instead of asking again.
    last: tokio::sync::Mutex<Option<Fetched>>,
}

impl K8sAttestor {
    pub fn new(config: K8sConfig) -> Self {
        if matches!(
            config.kubelet_trust,
            KubeletTrust::DangerousSkipVerification
        ) {
            tracing::warn!(
                kubelet = %config.kubelet_address,
                "kubelet_skip_verification_dangerous is set: the kubelet's certificate is not verified, so whoever answers for it chooses every pod's k8s selectors"
            );
        }
        let kubelet = KubeletClient::new(
            &config.kubelet_address,
            &config.kubelet_trust,
            config.token_path.clone(),
            config.kubelet_timeout,
        );
        K8sAttestor {
            config,
            kubelet,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The `k8s` selectors of process `pid`: none when it is not in a
    /// container.
    pub async fn attest(&self, pid: i32) -> Result<Vec<Selector>, K8sError> {
        let Some(container) = self.container_of(pid).await? else {
            return Ok(Vec::new());
        };
        let attempts = self.config.pod_retries.max(1);
        let mut seen_at = None;
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(self.config.pod_retry_interval).await;
            }
            let (at, pods) = self.pods(seen_at).await?;
            if let Some((pod, status)) =
                pods::find(&pods, &container.id, container.pod_uid.as_ref())
            {
                return Ok(pods::selectors(pod, status));
            }
            tracing::debug!(
                container = %container.id,
                attempt,
                "container not in the pod list yet"
            );
            seen_at = Some(at);
        }
        Err(K8sError::ContainerNotFound {
            id: container.id,
            attempts,
        })
    }

    /// The container of `pid` from `<proc_root>/<pid>/cgroup`, read between
    /// two reads of the process's start time so a recycled pid is noticed.
    async fn container_of(&self, pid: i32) -> Result<Option<Container>, K8sError> {
        use tokio::io::AsyncReadExt;
        let dir = self.config.proc_root.join(pid.to_string());
        let unreadable = |file: &'static str| {
            move |e: std::io::Error| K8sError::Proc {
                pid,
                reason: ProcError::Read {
                    file,
                    kind: e.kind(),
                },
            }
        };
        let start_time = || async {
            let stat = tokio::fs::read_to_string(dir.join("stat"))
                .await
                .map_err(unreadable("stat"))?;
            parse_start_time(&stat).map_err(|reason| K8sError::Proc { pid, reason })
        };
        let started = start_time().await?;
        let file = tokio::fs::File::open(dir.join("cgroup"))
            .await
            .map_err(unreadable("cgroup"))?;
        let mut bytes = Vec::new();
        file.take(MAX_CGROUP_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(unreadable("cgroup"))?;
        if start_time().await? != started {
            return Err(K8sError::PidReused { pid });
        }
        let text = String::from_utf8(bytes).map_err(|_| K8sError::Proc {
            pid,
            reason: ProcError::Malformed { file: "cgroup" },
        })?;
        cgroup::parse(&text).map_err(|source| K8sError::Cgroup { pid, source })
    }

    /// A pod list read less than the TTL ago and, when `newer_than` is
    /// given, after that instant (a retry wants a list it has not seen).
    async fn pods(
        &self,
        newer_than: Option<Instant>,
    ) -> Result<(Instant, Arc<PodList>), KubeletError> {
        let mut last = self.last.lock().await;
        if let Some(fetched) = last.as_ref() {
            let fresh = fetched.at.elapsed() < self.config.pod_list_ttl;
            if fresh && newer_than.is_none_or(|seen| fetched.at > seen) {
                return Ok((fetched.at, fetched.pods.clone()));
            }
        }
        let pods = Arc::new(self.kubelet.pods().await?);
        let at = Instant::now();
        *last = Some(Fetched {
            at,
            pods: pods.clone(),
        });
        Ok((at, pods))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";

    /// An attestor over a fake /proc whose kubelet cannot be reached: any
    /// call that gets as far as the kubelet fails.
    fn attestor(proc_root: PathBuf) -> K8sAttestor {
        K8sAttestor::new(K8sConfig {
            kubelet_address: "https://127.0.0.1:1".parse().unwrap(),
            kubelet_trust: KubeletTrust::DangerousSkipVerification,
            token_path: proc_root.join("token"),
            pod_retries: 3,
            pod_retry_interval: Duration::from_millis(10),
            pod_list_ttl: DEFAULT_POD_LIST_TTL,
            kubelet_timeout: Duration::from_secs(2),
            proc_root,
        })
    }

    fn fake_process(root: &std::path::Path, pid: i32, cgroup: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("stat"),
            format!("{pid} (app) S 1 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 4242 0 0\n"),
        )
        .unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
    }

    #[tokio::test]
    async fn outside_a_container_the_kubelet_is_not_asked() {
        let root = tempfile::tempdir().unwrap();
        fake_process(
            root.path(),
            7,
            "0::/user.slice/user-1000.slice/session-2.scope\n",
        );
        let attestor = attestor(root.path().to_owned());
        assert_eq!(attestor.attest(7).await.unwrap(), Vec::new());
    }

    #[tokio::test]
    async fn refusals_name_the_cause() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("token"), "t0ken").unwrap();
        let attestor = attestor(root.path().to_owned());

        let err = attestor.attest(8).await.unwrap_err().to_string();
        assert!(err.contains("caller process 8: stat:"), "{err}");

        fake_process(
            root.path(),
            9,
            &format!("0::/docker/{ID}\n0::/docker/{}\n", "1".repeat(64)),
        );
        let err = attestor.attest(9).await.unwrap_err().to_string();
        assert!(err.contains("names two containers"), "{err}");

        fake_process(root.path(), 10, &"0::/x\n".repeat(20_000));
        let err = attestor.attest(10).await.unwrap_err().to_string();
        assert!(err.contains("over 65536 bytes"), "{err}");

        // In a container: the kubelet is asked, and its absence is the error.
        fake_process(
            root.path(),
            11,
            &format!("0::/system.slice/docker-{ID}.scope\n"),
        );
        let err = attestor.attest(11).await.unwrap_err();
        assert!(
            matches!(err, K8sError::Kubelet(KubeletError::Request { .. })),
            "{err}"
        );
        assert!(
            err.to_string().contains("https://127.0.0.1:1/pods"),
            "{err}"
        );
    }
}
