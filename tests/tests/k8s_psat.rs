//! Kubernetes end to end, against fakes that speak the real wire formats
//! (a kube-apiserver and a kubelet cannot run here): agents attest by
//! projected service account token (k8s_psat, TokenReview), identity rules
//! give pods entries and take them away with the pods, the bundle ConfigMap
//! is kept, and a process in a pod's container fetches its SVID with the
//! Python `spiffe` package.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::issuer as pb;
use sigil_agent::config::{AgentConfig, FileConfig};
use sigil_issuer::clock::SystemClock;
use sigil_tests::fake_apiserver::{ApiContainer, ApiNode, ApiPod, FakeApiServer, TokenIdentity};
use sigil_tests::fake_kubelet::{
    serving_certificate, FakeContainer, FakeKubelet, FakePod, ServingCertificate,
};
use sigil_tests::{new_key_and_csr, python, workspace_root, TestIssuer, TRUST_DOMAIN};
use tonic::Code;

/// The issuer's own credential for the API server.
const ISSUER_TOKEN: &str = "issuer-service-account-token";
/// The agent pod's projected token (audience sigil-issuer).
const AGENT_TOKEN: &str = "agent-projected-token";
/// The agent's token for the kubelet.
const KUBELET_TOKEN: &str = "agent-kubelet-token";
const NODE: &str = "node-1";
const NODE_UID: &str = "6f1c1e5a-3b59-4d1e-9a0b-1b2f3c4d5e6f";
const AGENT_POD: &str = "sigil-agent-x7k2p";
const AGENT_POD_UID: &str = "0d4e4d77-2f4b-4c3e-8d6a-7a1b2c3d4e5f";
const WEB_POD: &str = "web-6d9f7c5b8-q2w4e";
const WEB_POD_UID: &str = "8a2b9c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const WEB_CONTAINER: &str = "3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c";

/// A fake API server knowing the node, the agent's pod and its token.
async fn api_server() -> FakeApiServer {
    let api = FakeApiServer::start(ISSUER_TOKEN).await;
    api.add_node(ApiNode {
        name: NODE.into(),
        uid: NODE_UID.into(),
        labels: vec![("topology.kubernetes.io/zone".into(), "eu-1a".into())],
    });
    api.add_pod(ApiPod {
        name: AGENT_POD.into(),
        namespace: "sigil".into(),
        uid: AGENT_POD_UID.into(),
        service_account: "sigil-agent".into(),
        node_name: NODE.into(),
        ..ApiPod::default()
    });
    api.add_token(AGENT_TOKEN, agent_identity(&["sigil-issuer"]));
    api
}

fn agent_identity(audiences: &[&str]) -> TokenIdentity {
    TokenIdentity {
        namespace: "sigil".into(),
        service_account: "sigil-agent".into(),
        service_account_uid: "1e2d3c4b-5a69-4788-96a5-b4c3d2e1f000".into(),
        pod_name: AGENT_POD.into(),
        pod_uid: AGENT_POD_UID.into(),
        node_name: NODE.into(),
        node_uid: NODE_UID.into(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
    }
}

/// The web pod, as the API server and the kubelet both list it.
fn web_pod() -> ApiPod {
    ApiPod {
        name: WEB_POD.into(),
        namespace: "shop".into(),
        uid: WEB_POD_UID.into(),
        service_account: "web".into(),
        node_name: NODE.into(),
        labels: vec![("app".into(), "web".into())],
        containers: vec![ApiContainer::new("web", WEB_CONTAINER)],
        ..ApiPod::default()
    }
}

/// The issuer's `[[k8s_clusters]]` for the fake, through its own parser.
fn clusters(
    api: &FakeApiServer,
    dir: &Path,
    extra: &str,
) -> Vec<sigil_issuer::config::k8s::K8sCluster> {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let text = format!(
        "trust_domain = \"{TRUST_DOMAIN}\"\ndata_dir = \"/unused\"\n\
         [[k8s_clusters]]\nname = \"demo\"\nkubeconfig = \"{}\"\n\
         service_account_allow_list = [\"sigil:sigil-agent\"]\n{extra}",
        kubeconfig.display()
    );
    let file = sigil_issuer::config::FileConfig::parse(&text).unwrap();
    sigil_issuer::config::Config::from_file(file)
        .unwrap()
        .k8s_clusters
}

async fn issuer_for(api: &FakeApiServer, extra: &str) -> TestIssuer {
    let dir = tempfile::tempdir().unwrap();
    let clusters = clusters(api, dir.path(), extra);
    TestIssuer::start_with(Arc::new(SystemClock), move |config| {
        config.k8s_clusters = clusters;
    })
    .await
}

/// AttestAgent with a k8s_psat token, straight to the issuer.
async fn attest(issuer: &TestIssuer, cluster: &str, token: &str) -> Result<String, tonic::Status> {
    let (_, csr) = new_key_and_csr(None);
    let answer = issuer
        .anonymous_client()
        .await
        .attest_agent(pb::AttestAgentRequest {
            method: Some(pb::attest_agent_request::Method::K8sPsat(
                pb::K8sPsatAttestation {
                    cluster: cluster.into(),
                    token: token.into(),
                },
            )),
            csr,
        })
        .await?;
    Ok(answer.into_inner().svid.unwrap().spiffe_id)
}

fn agent_id() -> String {
    format!("spiffe://{TRUST_DOMAIN}/agent/k8s_psat/demo/{NODE_UID}")
}

#[tokio::test]
async fn an_agent_attests_by_its_pods_token_and_gets_its_nodes_selectors() {
    let api = api_server().await;
    let issuer = issuer_for(&api, "").await;
    assert_eq!(
        attest(&issuer, "demo", AGENT_TOKEN).await.unwrap(),
        agent_id()
    );
    // The review asked for the configured audience.
    let review = api.last_token_review().unwrap();
    assert_eq!(
        review["spec"]["audiences"],
        serde_json::json!(["sigil-issuer"])
    );
    let agents = issuer
        .admin()
        .await
        .list_agents(proto::admin::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    let agent = agents.iter().find(|a| a.spiffe_id == agent_id()).unwrap();
    assert_eq!(agent.attestation_type, "k8s_psat");
    let selectors: Vec<String> = agent
        .selectors
        .iter()
        .map(|s| format!("{}:{}", s.r#type, s.value))
        .collect();
    for expected in [
        "k8s_psat:cluster:demo".to_string(),
        "k8s_psat:agent_ns:sigil".into(),
        "k8s_psat:agent_sa:sigil-agent".into(),
        format!("k8s_psat:agent_pod_name:{AGENT_POD}"),
        format!("k8s_psat:agent_pod_uid:{AGENT_POD_UID}"),
        format!("k8s_psat:agent_node_name:{NODE}"),
        format!("k8s_psat:agent_node_uid:{NODE_UID}"),
        "k8s_psat:agent_node_label:topology.kubernetes.io/zone:eu-1a".into(),
    ] {
        assert!(selectors.contains(&expected), "{expected} in {selectors:?}");
    }
    // The same node attesting again replaces its old agent: same ID, one row.
    assert_eq!(
        attest(&issuer, "demo", AGENT_TOKEN).await.unwrap(),
        agent_id()
    );
    let agents = issuer
        .admin()
        .await
        .list_agents(proto::admin::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(
        agents.iter().filter(|a| a.spiffe_id == agent_id()).count(),
        1
    );
    // A banned node stays banned when it attests again.
    issuer
        .admin()
        .await
        .ban_agent(proto::admin::AgentId {
            spiffe_id: agent_id(),
        })
        .await
        .unwrap();
    let banned = attest(&issuer, "demo", AGENT_TOKEN).await.unwrap_err();
    assert_eq!(banned.code(), Code::PermissionDenied, "{banned:?}");
    assert!(banned.message().contains("banned"), "{banned:?}");
}

#[tokio::test]
async fn each_refusal_names_its_cause() {
    let api = api_server().await;
    let issuer = issuer_for(&api, "").await;
    let refused = |status: tonic::Status, code: Code, needle: &str| {
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(needle), "{needle} in {status:?}");
        // The token never comes back.
        assert!(!status.message().contains("token-"), "{status:?}");
    };

    api.add_token("wrong-audience-token-", agent_identity(&["vault"]));
    refused(
        attest(&issuer, "demo", "wrong-audience-token-")
            .await
            .unwrap_err(),
        Code::PermissionDenied,
        "did not authenticate the token",
    );
    let mut other_sa = agent_identity(&["sigil-issuer"]);
    other_sa.service_account = "default".into();
    api.add_token("unlisted-token-", other_sa);
    refused(
        attest(&issuer, "demo", "unlisted-token-")
            .await
            .unwrap_err(),
        Code::PermissionDenied,
        "service account sigil:default is not on the allow-list of cluster \"demo\"",
    );
    let mut gone = agent_identity(&["sigil-issuer"]);
    gone.pod_name = "sigil-agent-gone1".into();
    api.add_token("no-pod-token-", gone);
    refused(
        attest(&issuer, "demo", "no-pod-token-").await.unwrap_err(),
        Code::PermissionDenied,
        "pod sigil/sigil-agent-gone1 does not exist",
    );
    refused(
        attest(&issuer, "demo", "unknown-token-").await.unwrap_err(),
        Code::PermissionDenied,
        "did not authenticate the token",
    );
    refused(
        attest(&issuer, "prod", AGENT_TOKEN).await.unwrap_err(),
        Code::InvalidArgument,
        "cluster \"prod\" is not configured",
    );
    refused(
        attest(&issuer, "demo", "").await.unwrap_err(),
        Code::InvalidArgument,
        "the token is empty",
    );
    // The issuer's own credential refused: the agent should retry later.
    api.set_token("rotated-issuer-token");
    refused(
        attest(&issuer, "demo", AGENT_TOKEN).await.unwrap_err(),
        Code::Unavailable,
        "answered 401",
    );
    api.stop().await;
    refused(
        attest(&issuer, "demo", AGENT_TOKEN).await.unwrap_err(),
        Code::Unavailable,
        "is unreachable",
    );
}

/// A proc root where `pid`'s cgroup is the web container's, with its real stat.
fn fake_proc(dir: &Path, pid: u32) -> PathBuf {
    let root = dir.join("proc");
    let own = root.join(pid.to_string());
    std::fs::create_dir_all(&own).unwrap();
    std::fs::copy(format!("/proc/{pid}/stat"), own.join("stat")).unwrap();
    std::fs::write(
        own.join("cgroup"),
        format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{WEB_CONTAINER}.scope\n",
            WEB_POD_UID.replace('-', "_")
        ),
    )
    .unwrap();
    root
}

async fn kubelet() -> (FakeKubelet, ServingCertificate) {
    let cert = serving_certificate();
    let acceptor = cert.acceptor(&[]);
    let kubelet = FakeKubelet::start(KUBELET_TOKEN, move |tcp| {
        let acceptor = acceptor.clone();
        async move { acceptor.accept(tcp).await }
    })
    .await;
    kubelet.add_pod(FakePod {
        name: WEB_POD.into(),
        namespace: "shop".into(),
        uid: WEB_POD_UID.into(),
        service_account: "web".into(),
        labels: vec![("app".into(), "web".into())],
        containers: vec![FakeContainer::new("web", WEB_CONTAINER)],
    });
    (kubelet, cert)
}

/// Waits for `done` to hold, polling every 50 ms for up to 20 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn managed_entries(issuer: &TestIssuer) -> Vec<pb::Entry> {
    issuer
        .admin()
        .await
        .list_entries(proto::admin::ListEntriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .filter(|e| !e.managed_by.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gets_its_identity_by_rule_and_loses_it_with_the_pod() {
    let api = api_server().await;
    api.add_pod(web_pod());
    // A pod no rule selects.
    api.add_pod(ApiPod {
        name: "db-0".into(),
        namespace: "shop".into(),
        uid: "5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f".into(),
        service_account: "db".into(),
        node_name: NODE.into(),
        labels: vec![("app".into(), "db".into())],
        ..ApiPod::default()
    });
    let issuer = issuer_for(
        &api,
        "bundle_config_map = \"sigil/sigil-bundle\"\n\
         [[k8s_clusters.identity_rules]]\nname = \"web\"\n\
         spiffe_id = \"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}\"\n\
         namespaces = [\"shop\"]\npod_labels = { app = \"web\" }\n\
         dns_names = [\"{pod_name}.{namespace}.svc\"]\n",
    )
    .await;

    // The bundle reaches its ConfigMap, and the agent bootstraps from it.
    let dir = tempfile::tempdir().unwrap();
    let bundle_path = dir.path().join("bundle.crt");
    eventually("the bundle ConfigMap", || {
        let data = api.config_map("sigil", "sigil-bundle");
        let bundle_path = bundle_path.clone();
        async move {
            let Some(pem) = data
                .as_ref()
                .and_then(|cm| cm["data"]["bundle.crt"].as_str())
            else {
                return false;
            };
            std::fs::write(&bundle_path, pem).unwrap();
            true
        }
    })
    .await;
    let spiffe = api.config_map("sigil", "sigil-bundle").unwrap()["data"]["bundle.spiffe"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(spiffe.contains("\"x509-svid\""), "{spiffe}");

    // The identity rule gave the web pod an entry on its node's agent.
    eventually("the pod's entry", || async {
        managed_entries(&issuer).await.len() == 1
    })
    .await;
    let entry = managed_entries(&issuer).await.remove(0);
    assert_eq!(entry.spiffe_id, "spiffe://example.org/ns/shop/sa/web");
    assert_eq!(entry.parent_id, agent_id());
    assert_eq!(entry.dns_names, [format!("{WEB_POD}.shop.svc")]);
    assert_eq!(entry.managed_by, format!("k8s/demo/web/{WEB_POD_UID}"));
    // Kept by the rule: not edited by hand.
    let refused = issuer
        .admin()
        .await
        .delete_entry(proto::admin::EntryId {
            id: entry.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // An agent attests by k8s_psat and serves the pod's container.
    let token_path = dir.path().join("psat-token");
    std::fs::write(&token_path, format!("{AGENT_TOKEN}\n")).unwrap();
    let kubelet_token = dir.path().join("kubelet-token");
    std::fs::write(&kubelet_token, KUBELET_TOKEN).unwrap();
    let (kubelet, kubelet_cert) = kubelet().await;
    let kubelet_ca = dir.path().join("kubelet-ca.crt");
    std::fs::write(&kubelet_ca, &kubelet_cert.ca_pem).unwrap();
    let socket = dir.path().join("public/api.sock");
    let python_client = Command::new(python())
        .arg(workspace_root().join("tests/python/k8s_workload_client.py"))
        .arg(format!("unix://{}", socket.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut python_client = python_client;
    let mut lines = BufReader::new(python_client.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    let pid: u32 = ready.strip_prefix("ready ").unwrap().parse().unwrap();
    let proc_root = fake_proc(dir.path(), pid);
    let mut config = AgentConfig::from_file(FileConfig {
        trust_domain: Some(TRUST_DOMAIN.into()),
        issuer_address: Some(issuer.running.agent_api_address.to_string()),
        data_dir: Some(dir.path().join("agent")),
        socket_path: Some(socket.clone()),
        trust_bundle_path: Some(bundle_path),
        node_attestor: Some("k8s_psat".into()),
        k8s_psat_cluster: Some("demo".into()),
        k8s_psat_token_path: Some(token_path),
        k8s_workload_attestor: Some(true),
        kubelet_address: Some(kubelet.address.clone()),
        kubelet_ca_path: Some(kubelet_ca),
        kubelet_token_path: Some(kubelet_token),
        ..FileConfig::default()
    })
    .unwrap();
    config.k8s.as_mut().unwrap().proc_root = proc_root;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = sigil_agent::agent::start(config).await.unwrap();
    assert_eq!(agent.node.svid().spiffe_id.to_string(), agent_id());
    let mut snapshots = agent.snapshots.clone();
    tokio::time::timeout(
        Duration::from_secs(20),
        snapshots.wait_for(|s| {
            s.identities
                .iter()
                .any(|i| i.entry_id == entry.id && i.x509.is_some())
        }),
    )
    .await
    .expect("the pod's SVID was minted in time")
    .unwrap();

    writeln!(python_client.stdin.as_mut().unwrap()).unwrap();
    let fetched = tokio::task::spawn_blocking(move || {
        let id = lines.next().map(|l| l.unwrap());
        let out = python_client.wait_with_output().unwrap();
        (
            id,
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(fetched.1, "the Python client failed: {}", fetched.2);
    assert_eq!(
        fetched.0.as_deref(),
        Some("spiffe://example.org/ns/shop/sa/web")
    );

    // The pod goes: its entry goes, and the agent stops serving its SVID.
    api.delete_pod("shop", WEB_POD);
    eventually("the entry's removal", || async {
        managed_entries(&issuer).await.is_empty()
    })
    .await;
    tokio::time::timeout(
        Duration::from_secs(20),
        snapshots.wait_for(|s| s.identities.iter().all(|i| i.entry_id != entry.id)),
    )
    .await
    .expect("the agent dropped the pod's SVID")
    .unwrap();
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_binds_its_entries_to_an_owner_and_unconfigured_rules_leave_nothing() {
    use sigil_tests::owners::{openssl_key, register_owner, run_blocking};
    let api = api_server().await;
    api.add_pod(web_pod());
    let issuer = issuer_for(&api, "").await;
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = openssl_key(dir.path(), "shop-team", false).await;
    let owner = "mailto:shop-team@example.org";
    register_owner(&issuer, owner, &public).await;
    // One consent, signed offline, for every pod of the namespace.
    let mut consent = Command::new(sigil_tests::binary("sigil-issuer"));
    consent
        .args(["owner", "consent", "--id", owner, "--key"])
        .arg(&private)
        .args([
            "--spiffe-id-prefix",
            "spiffe://example.org/ns/shop/",
            "--selector",
            "k8s:ns:shop",
            "--valid-for",
            "1h",
        ]);
    let (ok, jws, err) = run_blocking(consent).await;
    assert!(ok, "owner consent: {err}");
    let consent_path = dir.path().join("shop.jws");
    std::fs::write(&consent_path, jws).unwrap();
    let rule = format!(
        "[[k8s_clusters.identity_rules]]\nname = \"shop\"\n\
         spiffe_id = \"spiffe://{{trust_domain}}/ns/{{namespace}}/sa/{{service_account}}\"\n\
         namespaces = [\"shop\"]\nowner = \"{owner}\"\nconsent_file = \"{}\"\n",
        consent_path.display()
    );
    let clusters = clusters(&api, dir.path(), &rule);
    let issuer = issuer
        .restart_with(move |config| config.k8s_clusters = clusters)
        .await;
    eventually("the owner-bound entry", || async {
        managed_entries(&issuer).await.len() == 1
    })
    .await;
    let entry = managed_entries(&issuer).await.remove(0);
    assert_eq!(entry.spiffe_id, "spiffe://example.org/ns/shop/sa/web");
    assert_eq!(entry.owner.as_ref().unwrap().id, owner);
    // The consent caps the entry's life.
    assert!(entry.expires_at > 0);

    // The cluster's rules gone from the configuration: their entries go too.
    let issuer = issuer
        .restart_with(|config| config.k8s_clusters.clear())
        .await;
    assert!(managed_entries(&issuer).await.is_empty());
}
