//! The Kubernetes workload attestor against a fake kubelet that speaks the
//! real one's wire format (HTTPS, bearer token, `GET /pods` PodList). This
//! test process is the workload: a fake proc root gives its pid a
//! containerd cgroup, the rest of /proc is its own.
//!
//! Through the agent: an SVID for an entry with `k8s:` and `unix:` selectors,
//! refusals as PERMISSION_DENIED naming why. Through the library: the exact
//! selectors, certificate checks, bounded retries and the pod-list cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proto::workload as wl;
use sigil_agent::attestor::{K8sAttestor, K8sConfig, K8sError};
use sigil_agent::config::{AgentConfig, FileConfig};
use sigil_tests::fake_kubelet::{
    serving_certificate, FakeContainer, FakeKubelet, FakePod, ServingCertificate,
};
use sigil_tests::*;
use tokio::net::TcpStream;
use tonic::Code;
use workload_api::client::EndpointAddress;

const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.c2EtdG9rZW4.c2lnbmF0dXJl";
const CONTAINER: &str = "4c1d2a8e9f3b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";
const POD_UID: &str = "7d3f0a52-3b1e-4c8e-9d2a-6f1e0b9c8a71";
const WEB: &str = "spiffe://example.org/shop/web";

/// A fake kubelet serving `cert`, accepting `token`.
async fn kubelet(cert: &ServingCertificate, token: &str) -> FakeKubelet {
    let acceptor = cert.acceptor(&[]);
    FakeKubelet::start(token, move |tcp: TcpStream| acceptor.accept(tcp)).await
}

/// The pod this test process runs in, as far as the kubelet says.
fn web_pod(hidden_for_polls: usize) -> FakePod {
    FakePod {
        name: "web-6b7f9c5d4-x2x9k".into(),
        namespace: "shop".into(),
        uid: POD_UID.into(),
        service_account: "web".into(),
        labels: vec![
            ("app".into(), "web".into()),
            ("pod-template-hash".into(), "6b7f9c5d4".into()),
        ],
        containers: vec![
            FakeContainer {
                hidden_for_polls,
                ..FakeContainer::new("web", CONTAINER)
            },
            FakeContainer::new("envoy", &"e".repeat(64)),
        ],
    }
}

/// A proc root where this process's cgroup is `cgroup` (its stat is its own).
fn fake_proc(dir: &Path, cgroup: &str) -> PathBuf {
    let root = dir.join("proc");
    let own = root.join(std::process::id().to_string());
    std::fs::create_dir_all(&own).unwrap();
    std::fs::copy("/proc/self/stat", own.join("stat")).unwrap();
    std::fs::write(own.join("cgroup"), cgroup).unwrap();
    root
}

/// The cgroup v2 line of a containerd container in this test's pod, systemd driver.
fn pod_cgroup() -> String {
    format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CONTAINER}.scope\n",
        POD_UID.replace('-', "_")
    )
}

enum Trust<'a> {
    Ca(&'a str),
    DangerousSkip,
}

/// The attestor's configuration through the agent's own validation, with
/// the token in `dir/token` and the proc root at `proc_root`.
fn k8s_config(kubelet: &FakeKubelet, dir: &Path, trust: Trust, proc_root: &Path) -> K8sConfig {
    let token_path = dir.join("token");
    if !token_path.exists() {
        std::fs::write(&token_path, format!("{TOKEN}\n")).unwrap();
    }
    let (ca_path, skip) = match trust {
        Trust::Ca(pem) => {
            let path = dir.join("kubelet-ca.crt");
            std::fs::write(&path, pem).unwrap();
            (Some(path), None)
        }
        Trust::DangerousSkip => (None, Some(true)),
    };
    let mut k8s = AgentConfig::from_file(FileConfig {
        trust_domain: Some(TRUST_DOMAIN.into()),
        data_dir: Some(dir.join("unused")),
        k8s_workload_attestor: Some(true),
        kubelet_address: Some(kubelet.address.clone()),
        kubelet_ca_path: ca_path,
        kubelet_token_path: Some(token_path),
        kubelet_skip_verification_dangerous: skip,
        k8s_pod_retries: Some(5),
        k8s_pod_retry_interval: Some("50ms".into()),
        ..FileConfig::default()
    })
    .unwrap()
    .k8s
    .expect("the attestor is on");
    k8s.proc_root = proc_root.to_owned();
    k8s
}

/// A node whose agent runs the Kubernetes attestor with `k8s`.
async fn node_with(k8s: K8sConfig) -> TestNode {
    let mut node = TestNode::start().await;
    node.restart_agent_with(|config| config.k8s = Some(k8s))
        .await;
    node
}

/// The first X509-SVID answer for this process, or why it was refused.
async fn fetch_x509(node: &TestNode) -> Result<wl::X509svidResponse, tonic::Status> {
    let mut client = workload_api::client::connect(&EndpointAddress::Unix(node.socket.clone()))
        .await
        .unwrap();
    let mut stream = client
        .fetch_x509svid(wl::X509svidRequest {})
        .await?
        .into_inner();
    Ok(stream.message().await?.expect("a first message"))
}

fn selector(kind: &str, value: &str) -> proto::issuer::Selector {
    proto::issuer::Selector {
        r#type: kind.into(),
        value: value.into(),
    }
}

fn pid() -> i32 {
    std::process::id() as i32
}

#[tokio::test]
async fn the_agent_issues_an_svid_by_k8s_and_unix_selectors() {
    let cert = serving_certificate();
    let kubelet = kubelet(&cert, TOKEN).await;
    kubelet.add_pod(web_pod(0));
    let dir = tempfile::tempdir().unwrap();
    let proc_root = fake_proc(dir.path(), &pod_cgroup());
    let node = node_with(k8s_config(
        &kubelet,
        dir.path(),
        Trust::Ca(&cert.ca_pem),
        &proc_root,
    ))
    .await;
    let uid = format!("uid:{}", current_uid());
    let entry = create_at(
        &node.issuer.running.admin_socket_path,
        proto::admin::EntryFields {
            spiffe_id: WEB.into(),
            parent_id: node.agent_id.clone(),
            selectors: vec![
                selector("k8s", "ns:shop"),
                selector("k8s", "sa:web"),
                selector("k8s", "pod-label:app:web"),
                selector("k8s", "container-name:web"),
                selector("unix", &uid),
            ],
            ..Default::default()
        },
    )
    .await;
    // Another namespace's entry, same uid: not this workload's.
    create_at(
        &node.issuer.running.admin_socket_path,
        proto::admin::EntryFields {
            spiffe_id: "spiffe://example.org/billing/api".into(),
            parent_id: node.agent_id.clone(),
            selectors: vec![selector("k8s", "ns:billing"), selector("unix", &uid)],
            ..Default::default()
        },
    )
    .await;
    node.wait_for_entry(&entry.id).await;
    let answer = fetch_x509(&node).await.unwrap();
    let ids: Vec<&str> = answer.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, [WEB]);
    assert!(kubelet.pod_lists() >= 1);
}

#[tokio::test]
async fn outside_a_container_only_unix_selectors_count() {
    let cert = serving_certificate();
    let kubelet = kubelet(&cert, TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let proc_root = fake_proc(
        dir.path(),
        "0::/user.slice/user-1000.slice/session-3.scope\n",
    );
    let node = node_with(k8s_config(
        &kubelet,
        dir.path(),
        Trust::Ca(&cert.ca_pem),
        &proc_root,
    ))
    .await;
    let entry = node
        .register("spiffe://example.org/host-tool", 3600, "")
        .await;
    node.wait_for_entry(&entry.id).await;
    let answer = fetch_x509(&node).await.unwrap();
    assert_eq!(answer.svids[0].spiffe_id, "spiffe://example.org/host-tool");
    assert_eq!(kubelet.pod_lists(), 0, "no container, no kubelet request");
}

#[tokio::test]
async fn the_agent_refuses_when_the_kubelet_refuses_the_token_and_rereads_it() {
    let cert = serving_certificate();
    let kubelet = kubelet(&cert, "the-token-the-kubelet-expects").await;
    kubelet.add_pod(web_pod(0));
    let dir = tempfile::tempdir().unwrap();
    let proc_root = fake_proc(dir.path(), &pod_cgroup());
    let node = node_with(k8s_config(
        &kubelet,
        dir.path(),
        Trust::Ca(&cert.ca_pem),
        &proc_root,
    ))
    .await;
    let refused = fetch_x509(&node).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("kubernetes workload attestation failed")
            && refused
                .message()
                .contains("the kubelet did not accept the service account token (HTTP 401)"),
        "{}",
        refused.message()
    );
    assert!(!refused.message().contains(TOKEN));
    assert_eq!(kubelet.refused(), 1, "a refusal is not retried");
    assert_eq!(kubelet.pod_lists(), 0);

    // The projected token is rotated in place: the next call sends the new one.
    std::fs::write(dir.path().join("token"), "the-token-the-kubelet-expects").unwrap();
    let after = fetch_x509(&node).await.unwrap_err();
    assert_eq!(
        after.message(),
        "no identity issued",
        "attested now; no entry matches"
    );
    assert_eq!(kubelet.pod_lists(), 1);
}

#[tokio::test]
async fn the_agent_refuses_a_container_the_kubelet_never_lists() {
    let cert = serving_certificate();
    let kubelet = kubelet(&cert, TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let proc_root = fake_proc(dir.path(), &pod_cgroup());
    let node = node_with(k8s_config(
        &kubelet,
        dir.path(),
        Trust::Ca(&cert.ca_pem),
        &proc_root,
    ))
    .await;
    let refused = fetch_x509(&node).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().ends_with(&format!(
            "container {CONTAINER} not found in the kubelet's pod list after 5 attempts"
        )),
        "{}",
        refused.message()
    );
    assert_eq!(kubelet.pod_lists(), 5, "one fresh pod list per attempt");
}

#[tokio::test]
async fn the_attestors_selectors_for_a_pod() {
    let cert = serving_certificate();
    let kubelet = kubelet(&cert, TOKEN).await;
    kubelet.add_pod(web_pod(0));
    let dir = tempfile::tempdir().unwrap();
    let proc_root = fake_proc(dir.path(), &pod_cgroup());
    let attestor = K8sAttestor::new(k8s_config(
        &kubelet,
        dir.path(),
        Trust::Ca(&cert.ca_pem),
        &proc_root,
    ));
    let selectors: Vec<String> = attestor
        .attest(pid())
        .await
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let image_id = kubelet.pod_list_json()["items"][0]["status"]["containerStatuses"][0]["imageID"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(image_id.contains("@sha256:"), "{image_id}");
    assert_eq!(
        selectors,
        [
            "k8s:ns:shop".to_owned(),
            "k8s:sa:web".into(),
            "k8s:pod-name:web-6b7f9c5d4-x2x9k".into(),
            format!("k8s:pod-uid:{POD_UID}"),
            "k8s:pod-label:app:web".into(),
            "k8s:pod-label:pod-template-hash:6b7f9c5d4".into(),
            "k8s:container-name:web".into(),
            "k8s:container-image:registry.example.org/shop/web:1.4.2".into(),
            format!("k8s:container-image:{image_id}"),
            "k8s:node-name:node-1".into(),
        ]
    );
}

#[tokio::test]
async fn an_untrusted_kubelet_certificate_is_refused_unless_dangerously_skipped() {
    let cert = serving_certificate();
    let kubelet = kubelet(&cert, TOKEN).await;
    kubelet.add_pod(web_pod(0));
    let dir = tempfile::tempdir().unwrap();
    let proc_root = fake_proc(dir.path(), &pod_cgroup());
    let other_ca = serving_certificate().ca_pem;
    let attestor = K8sAttestor::new(k8s_config(
        &kubelet,
        dir.path(),
        Trust::Ca(&other_ca),
        &proc_root,
    ));
    let err = attestor.attest(pid()).await.unwrap_err();
    assert!(matches!(err, K8sError::Kubelet(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&kubelet.address) && text.contains("invalid peer certificate"),
        "{text}"
    );
    assert_eq!(kubelet.pod_lists(), 0);

    let attestor = K8sAttestor::new(k8s_config(
        &kubelet,
        dir.path(),
        Trust::DangerousSkip,
        &proc_root,
    ));
    let selectors = attestor.attest(pid()).await.unwrap();
    assert!(selectors.iter().any(|s| s.to_string() == "k8s:ns:shop"));
    assert_eq!(kubelet.pod_lists(), 1);
}

#[tokio::test]
async fn a_starting_container_is_attested_once_listed() {
    let cert = serving_certificate();
    let kubelet = kubelet(&cert, TOKEN).await;
    // The container's status carries no containerID in the first two lists.
    kubelet.add_pod(web_pod(2));
    let dir = tempfile::tempdir().unwrap();
    let proc_root = fake_proc(dir.path(), &pod_cgroup());
    let attestor = K8sAttestor::new(k8s_config(
        &kubelet,
        dir.path(),
        Trust::Ca(&cert.ca_pem),
        &proc_root,
    ));
    let selectors = attestor.attest(pid()).await.unwrap();
    assert!(selectors
        .iter()
        .any(|s| s.to_string() == "k8s:container-name:web"));
    assert_eq!(kubelet.pod_lists(), 3, "two polls without it, then found");
}

#[tokio::test]
async fn a_burst_of_attestations_is_one_kubelet_request() {
    let cert = serving_certificate();
    let kubelet = kubelet(&cert, TOKEN).await;
    kubelet.add_pod(web_pod(0));
    let dir = tempfile::tempdir().unwrap();
    let proc_root = fake_proc(dir.path(), &pod_cgroup());
    let attestor = Arc::new(K8sAttestor::new(k8s_config(
        &kubelet,
        dir.path(),
        Trust::Ca(&cert.ca_pem),
        &proc_root,
    )));
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let attestor = attestor.clone();
            tokio::spawn(async move { attestor.attest(pid()).await })
        })
        .collect();
    for call in calls {
        assert!(!call.await.unwrap().unwrap().is_empty());
    }
    assert_eq!(kubelet.pod_lists(), 1);
    // Once the list is older than its time to live, it is read again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    attestor.attest(pid()).await.unwrap();
    assert_eq!(kubelet.pod_lists(), 2);
}
