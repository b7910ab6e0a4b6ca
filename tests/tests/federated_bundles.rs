//! Foreign trust domains' bundles, from the issuer's store to workloads: a
//! real issuer and agent for example.org, and real issuers for the foreign
//! domains whose bundles and JWT-SVIDs they hand over. The bundles reach
//! only callers whose identities federate with their domains, as the `spiffe`
//! crate and the Python `spiffe` package see it, and ValidateJWTSVID accepts
//! a foreign JWT-SVID only for such a caller.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use proto::admin::EntryFields;
use proto::issuer as pb;
use sigil_issuer::clock::SystemClock;
use sigil_issuer::store::{BundleOrigin, ForeignBundle};
use sigil_tests::*;
use spiffe::bundle::BundleSource;
use spiffe::{TrustDomain as SpiffeTd, WorkloadApiClient, X509Source};
use workload_api::id::TrustDomain;
use workload_api::source::Snapshot;
use workload_api::Bundle;

const FEDERATED: &str = "example-federated.org";
/// A foreign domain whose bundle the issuer holds but no identity here
/// federates with.
const OTHER: &str = "example-other.org";
const AUDIENCE: &str = "spiffe://example.org/db";

/// An issuer for a foreign trust domain.
async fn foreign_issuer(trust_domain: &str) -> TestIssuer {
    TestIssuer::start_with(Arc::new(SystemClock), |config| {
        config.trust_domain = TrustDomain::new(trust_domain).unwrap();
    })
    .await
}

/// A JWT-SVID for AUDIENCE minted by `issuer`, through its agent API as one
/// of its agents gets them.
async fn foreign_jwt(issuer: &TestIssuer) -> String {
    let mut agent = issuer.attest().await;
    let td = issuer.bundle().trust_domain().to_string();
    let entry = create_at(
        &issuer.running.admin_socket_path,
        EntryFields {
            spiffe_id: format!("spiffe://{td}/client"),
            parent_id: agent.id.clone(),
            selectors: vec![selector("uid:1000")],
            ..Default::default()
        },
    )
    .await;
    agent
        .client
        .sign_jwt_svid(pb::SignJwtSvidRequest {
            entry_id: entry.id,
            audience: vec![AUDIENCE.into()],
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

fn selector(value: &str) -> pb::Selector {
    pb::Selector {
        r#type: "unix".into(),
        value: value.into(),
    }
}

/// Stores `bundle` in the node's issuer as an operator would.
async fn put_foreign_bundle(node: &TestNode, bundle: &Bundle) {
    let updated_at = now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    node.issuer
        .running
        .state
        .store
        .put_foreign_bundle(
            &ForeignBundle {
                trust_domain: bundle.trust_domain().to_string(),
                bundle: String::from_utf8(bundle.to_jwks_json()).unwrap(),
                sequence: bundle.sequence() as i64,
                origin: BundleOrigin::Operator,
                updated_at,
            },
            false,
        )
        .await
        .unwrap();
}

/// Registers `spiffe_id` for this uid under the node's agent, for processes
/// running `exe` when given, federating with `federates_with`.
async fn register(
    node: &TestNode,
    spiffe_id: &str,
    exe: Option<&Path>,
    federates_with: &[&str],
) -> pb::Entry {
    let mut selectors = vec![selector(&format!("uid:{}", current_uid()))];
    if let Some(exe) = exe {
        selectors.push(selector(&format!("path:{}", exe.display())));
    }
    let entry = create_at(
        &node.issuer.running.admin_socket_path,
        EntryFields {
            spiffe_id: spiffe_id.into(),
            parent_id: node.agent_id.clone(),
            selectors,
            federates_with: federates_with.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
    .await;
    node.wait_for_entry(&entry.id).await;
    entry
}

/// Waits until the agent holds foreign bundles for which `done` holds.
async fn wait_for_federated(node: &TestNode, what: &str, done: impl Fn(&Snapshot) -> bool) {
    let mut snapshots = node.agent.as_ref().unwrap().snapshots.clone();
    tokio::time::timeout(Duration::from_secs(20), snapshots.wait_for(|s| done(s)))
        .await
        .unwrap_or_else(|_| panic!("{what} never reached the agent"))
        .unwrap();
}

fn holds(snapshot: &Snapshot, bundle: &Bundle) -> bool {
    snapshot
        .federated
        .get(bundle.trust_domain())
        .is_some_and(|held| **held == *bundle)
}

/// The Python interpreter's executable, as the agent sees a process of it.
fn python_exe() -> std::path::PathBuf {
    std::fs::canonicalize(python()).unwrap()
}

/// Runs tests/python/federated_bundles_client.py; panics with its output if
/// a check fails.
async fn python_client(node: &TestNode, mode: &str, authorities: usize, token: &str) {
    let script = workspace_root().join("tests/python/federated_bundles_client.py");
    let (endpoint, mode, token) = (node.endpoint(), mode.to_owned(), token.to_owned());
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run(Command::new(python())
            .arg(script)
            .arg(endpoint)
            .arg(mode)
            .arg(FEDERATED)
            .arg(authorities.to_string())
            .arg(token)
            .arg(AUDIENCE))
    })
    .await
    .unwrap();
    assert!(ok, "python client failed:\n{stdout}\n{stderr}");
}

#[tokio::test]
async fn foreign_bundles_reach_only_identities_that_federate_with_their_domain() {
    let node = TestNode::start().await;
    let federated = foreign_issuer(FEDERATED).await;
    let other = foreign_issuer(OTHER).await;
    let federated_token = foreign_jwt(&federated).await;
    let other_token = foreign_jwt(&other).await;
    put_foreign_bundle(&node, &federated.bundle()).await;
    put_foreign_bundle(&node, &other.bundle()).await;

    // This test process federates with FEDERATED only; the Python
    // interpreter, at first, with nothing.
    let this_exe = std::env::current_exe().unwrap();
    register(
        &node,
        "spiffe://example.org/federating",
        Some(&this_exe),
        &[FEDERATED],
    )
    .await;
    register(
        &node,
        "spiffe://example.org/plain",
        Some(&python_exe()),
        &[],
    )
    .await;
    wait_for_federated(&node, "the foreign bundles", |s| {
        holds(s, &federated.bundle()) && holds(s, &other.bundle())
    })
    .await;

    // The Rust spiffe crate, as the federating identity.
    let federated_td = SpiffeTd::new(FEDERATED).unwrap();
    let other_td = SpiffeTd::new(OTHER).unwrap();
    let client = WorkloadApiClient::connect_to(node.endpoint())
        .await
        .unwrap();
    let context = client.fetch_x509_context().await.unwrap();
    let ids: Vec<String> = context
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    assert_eq!(ids, ["spiffe://example.org/federating"]);
    let x509 = context
        .bundle_set()
        .get(&federated_td)
        .expect("the federated domain's X.509 bundle");
    let authorities: Vec<&[u8]> = x509.authorities().iter().map(|c| c.as_bytes()).collect();
    let federated_bundle = federated.bundle();
    let expected: Vec<&[u8]> = federated_bundle
        .x509_authorities()
        .iter()
        .map(Vec::as_slice)
        .collect();
    assert_eq!(authorities, expected);
    assert!(context.bundle_set().get(&other_td).is_none());
    assert!(context
        .bundle_set()
        .get(&SpiffeTd::new("example.org").unwrap())
        .is_some());

    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let kids: Vec<String> = jwt_bundles
        .get(&federated_td)
        .expect("the federated domain's JWT bundle")
        .jwt_authorities()
        .map(|a| a.key_id().to_owned())
        .collect();
    let expected_kids: Vec<String> = federated
        .bundle()
        .jwt_authorities()
        .iter()
        .map(|a| a.kid.clone())
        .collect();
    assert_eq!(kids, expected_kids);
    assert!(jwt_bundles.get(&other_td).is_none());

    // ValidateJWTSVID: the federated domain's token is accepted for this
    // caller; the other domain's is refused, its bundle held or not.
    let validated = client
        .validate_jwt_token(AUDIENCE, &federated_token)
        .await
        .unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://example-federated.org/client"
    );
    let refused = client
        .validate_jwt_token(AUDIENCE, &other_token)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(OTHER) && refused.contains("federates"),
        "{refused}"
    );
    let mut raw = proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
        workload_api::client::unix_channel(&node.socket)
            .await
            .unwrap(),
    );
    let mut request = tonic::Request::new(proto::workload::ValidateJwtsvidRequest {
        audience: AUDIENCE.into(),
        svid: other_token.clone(),
    });
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let status = raw.validate_jwtsvid(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "the JWT-SVID is from trust domain example-other.org, which none of the caller's \
         identities federates with"
    );

    // The Python package, as an identity that federates with nothing.
    let authorities = federated.bundle().x509_authorities().len();
    python_client(&node, "absent", authorities, &federated_token).await;
    // Once one of its identities federates, it sees the bundle and the
    // federated domain's token validates.
    register(
        &node,
        "spiffe://example.org/python-federating",
        Some(&python_exe()),
        &[FEDERATED],
    )
    .await;
    python_client(&node, "present", authorities, &federated_token).await;
}

/// A fresh self-signed CA certificate (DER).
fn new_ca() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().der().to_vec()
}

#[tokio::test]
async fn changes_to_a_foreign_bundle_reach_open_streams_and_survive_a_restart() {
    let mut node = TestNode::start().await;
    let federated = foreign_issuer(FEDERATED).await;
    let original = federated.bundle();
    put_foreign_bundle(&node, &original).await;
    register(&node, "spiffe://example.org/federating", None, &[FEDERATED]).await;
    wait_for_federated(&node, "the foreign bundle", |s| holds(s, &original)).await;

    let td = SpiffeTd::new(FEDERATED).unwrap();
    let source = X509Source::builder()
        .endpoint(node.endpoint())
        .build()
        .await
        .unwrap();
    let authorities = |source: &X509Source| {
        source
            .bundle_for_trust_domain(&td)
            .unwrap()
            .map(|b| b.authorities().len())
    };
    assert_eq!(
        authorities(&source),
        Some(original.x509_authorities().len())
    );
    let mut updates = source.updated();
    let mut wait_until = async |wanted: Option<usize>, what: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while authorities(&source) != wanted {
            tokio::time::timeout_at(deadline, updates.changed())
                .await
                .unwrap_or_else(|_| panic!("{what} never reached the open X509 stream"))
                .unwrap();
        }
    };

    // A changed bundle under the same sequence, as an operator may set it.
    let mut changed = original.clone();
    changed.add_x509_authority(new_ca());
    put_foreign_bundle(&node, &changed).await;
    wait_until(Some(changed.x509_authorities().len()), "the changed bundle").await;

    node.issuer
        .running
        .state
        .store
        .delete_foreign_bundle(FEDERATED)
        .await
        .unwrap();
    wait_until(None, "the deletion").await;
    source.shutdown().await;

    // Kept on disk, 0600: an agent restarted while its issuer is away
    // serves the bundle it last received.
    put_foreign_bundle(&node, &changed).await;
    wait_for_federated(&node, "the bundle put back", |s| holds(s, &changed)).await;
    let path = node
        .agent
        .as_ref()
        .unwrap()
        .node
        .dir
        .federated_bundles_path();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Nothing listens there: what the agent holds comes from its disk.
    let unreachable = format!("127.0.0.1:{}", free_port());
    node.restart_agent_with(|config| config.issuer_address = unreachable.parse().unwrap())
        .await;
    wait_for_federated(&node, "the stored bundle", |s| holds(s, &changed)).await;
    node.stop_agent().await;
}
