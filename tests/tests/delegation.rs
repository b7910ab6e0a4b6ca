//! Delegated registration end to end: an owner-bound workload (this test
//! process, attested by its uid like any workload) registers a child through
//! the Delegation service on the agent socket, with no operator involved.
//! The child's SVID names the owner and the parent as its actor chain; a
//! child outside the prefix or the parent's path, past the depth or count
//! limit, with a longer TTL or fewer selectors is refused and nothing is
//! written; deleting the parent takes the child's SVID off its stream
//! within 5 s.

use std::time::{Duration, Instant};

use proto::admin as adm;
use proto::agent as ag;
use proto::agent::delegation_client::DelegationClient;
use proto::issuer as pb;
use proto::workload as wl;
use serde_json::Value;
use sigil_issuer::store::Table;
use sigil_tests::owners::*;
use sigil_tests::*;
use tonic::Code;
use workload_api::client::{channel, connect, EndpointAddress, SecurityHeader};

const ALICE: &str = "mailto:alice@example.org";
const PREFIX: &str = "spiffe://example.org/agents/alice/";
const PLANNER: &str = "spiffe://example.org/agents/alice/planner";
const RELYING: &str = "spiffe://example.org/relying";

type Delegation = DelegationClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, SecurityHeader>,
>;

async fn delegation(node: &TestNode) -> Delegation {
    let channel = channel(&EndpointAddress::Unix(node.socket.clone()))
        .await
        .unwrap();
    DelegationClient::with_interceptor(channel, SecurityHeader)
}

fn child(spiffe_id: &str) -> ag::RegisterChildRequest {
    ag::RegisterChildRequest {
        spiffe_id: spiffe_id.into(),
        ..Default::default()
    }
}

/// A consent over PREFIX allowing delegation, signed by the real CLI.
async fn prefix_consent(dir: &std::path::Path, key: &std::path::Path, selector: &str) -> String {
    let mut cmd = std::process::Command::new(binary("sigil-issuer"));
    cmd.args(["owner", "consent", "--id", ALICE, "--key"])
        .arg(key)
        .args(["--spiffe-id-prefix", PREFIX, "--selector", selector])
        .args([
            "--valid-for",
            "1h",
            "--max-depth",
            "1",
            "--max-children",
            "2",
        ])
        .env("SIGIL_ADMIN_SOCKET", dir.join("no-such.sock"));
    let (ok, out, err) = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap();
    assert!(ok, "owner consent: {out}{err}");
    out.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_registers_a_child_within_its_owners_consent() {
    let node = TestNode::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = openssl_key(d, "alice", false).await;
    register_owner(&node.issuer, ALICE, &public).await;
    let selector = format!("unix:uid:{}", current_uid());
    let consent = prefix_consent(d, &key, &selector).await;
    let admin_socket = node.issuer.running.admin_socket_path.clone();
    let mut parent_fields = fields(
        PLANNER,
        &node.agent_id,
        &[selector.as_str()],
        ALICE,
        &consent,
    );
    parent_fields.x509_svid_ttl = 600;
    let parent = create_at(&admin_socket, parent_fields).await;
    // An unbound identity, so the workload's streams outlive the parent.
    register_at(&admin_socket, &node.agent_id, RELYING, 0, "").await;
    node.wait_for_svids(2).await;

    let mut delegation = delegation(&node).await;
    let search = format!("{PLANNER}/search");
    let registered = delegation
        .register_child(child(&search))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(registered.spiffe_id, search);
    assert_eq!(registered.x509_svid_ttl, 600, "the parent's TTL by default");
    let bound = registered.owner.clone().unwrap();
    assert_eq!(
        (bound.id.as_str(), bound.delegated_from.as_str()),
        (ALICE, parent.id.as_str())
    );
    assert_eq!(bound.actors, [PLANNER]);
    node.wait_for_entry(&registered.id).await;

    // The log records the consent the parent was bound by, and the child
    // registered under it, with its actor chain.
    let consented = node
        .issuer
        .wait_for_event("the consent", |e| {
            e["type"] == "consent.accepted" && e["entry_id"] == parent.id.as_str()
        })
        .await;
    assert_eq!(consented["owner"], ALICE);
    assert_eq!(
        consented["details"]["consent_sha256"],
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            consent.as_bytes()
        ))
    );
    let delegated = node
        .issuer
        .wait_for_event("the delegated child", |e| {
            e["type"] == "entry.delegated" && e["entry_id"] == registered.id.as_str()
        })
        .await;
    assert_eq!(delegated["subject"], search.as_str());
    assert_eq!(delegated["details"]["delegated_from"], parent.id.as_str());
    assert_eq!(delegated["details"]["actors"], serde_json::json!([PLANNER]));
    assert_eq!(delegated["details"]["agent"], node.agent_id.as_str());

    // The child's SVID names the owner and, as its actor chain, the parent.
    let mut client = connect(&EndpointAddress::Unix(node.socket.clone()))
        .await
        .unwrap();
    let svids = first_message(client.fetch_x509svid(wl::X509svidRequest {}).await).await;
    let owner = served_leaf(&svids, &search).owner.unwrap();
    assert_eq!(owner.owner_id, ALICE);
    assert_eq!(owner.actors, [PLANNER]);
    assert_eq!(
        owner.consent_sha256,
        workload_api::owner::consent_sha256(&consent)
    );

    // Every refusal names its rule and writes nothing.
    let store = &node.issuer.running.state.store;
    let entries = store.count(Table::Entries).await.unwrap();
    let refusals = [
        (
            child("spiffe://example.org/agents/bob/x"),
            "spiffe_id: spiffe://example.org/agents/bob/x is not under the parent's path spiffe://example.org/agents/alice/planner/",
        ),
        (
            child("spiffe://example.org/agents/alice/other"),
            "spiffe_id: spiffe://example.org/agents/alice/other is not under the parent's path spiffe://example.org/agents/alice/planner/",
        ),
        (
            ag::RegisterChildRequest {
                x509_svid_ttl: 601,
                ..child(&format!("{PLANNER}/long"))
            },
            "x509_svid_ttl: 601 s is longer than the parent's 600 s",
        ),
        (
            ag::RegisterChildRequest {
                parent_spiffe_id: search.clone(),
                ..child(&format!("{search}/deeper"))
            },
            "depth 2 exceeds the consent's max_depth 1",
        ),
        (
            ag::RegisterChildRequest {
                selectors: vec![pb::Selector {
                    r#type: "unix".into(),
                    value: "gid:0".into(),
                }],
                ..child(&format!("{PLANNER}/narrow"))
            },
            &format!("selectors: the child must be selected by every selector of its parent; {selector} is missing"),
        ),
    ];
    for (request, message) in refusals {
        let status = delegation.register_child(request).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::PermissionDenied, message)
        );
    }
    assert_eq!(store.count(Table::Entries).await.unwrap(), entries);
    // The consent allows two children: the third is refused.
    delegation
        .register_child(child(&format!("{PLANNER}/fetch")))
        .await
        .unwrap();
    let status = delegation
        .register_child(child(&format!("{PLANNER}/third")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        format!(
            "entry {} already has 2 children, the most its owner's consent allows",
            parent.id
        )
    );
    assert_eq!(store.count(Table::Entries).await.unwrap(), entries + 1);

    // The CLI lists the children, as the workload runs it.
    let mut list = std::process::Command::new(binary("sigil-agent"));
    list.args(["delegate", "list", "--json", "--socket-path"])
        .arg(&node.socket);
    let (ok, out, err) = tokio::task::spawn_blocking(move || run(&mut list))
        .await
        .unwrap();
    assert!(ok, "delegate list: {out}{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let mut ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["spiffe_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [format!("{PLANNER}/fetch"), search.clone()]);

    // Deleting the parent takes the children off the workload's stream.
    let mut stream = client
        .fetch_x509svid(wl::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let started = Instant::now();
    node.issuer
        .admin()
        .await
        .delete_entry(adm::EntryId {
            id: parent.id.clone(),
        })
        .await
        .unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("an update within 5 s of deleting the parent")
            .unwrap()
            .unwrap();
        let ids: Vec<&str> = message.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
        if ids == [RELYING] {
            break;
        }
    }
    println!(
        "parent deleted -> children's SVIDs off the stream: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(store.count(Table::Entries).await.unwrap(), entries - 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_owner_bound_workloads_with_delegating_consent_register_children() {
    let node = TestNode::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let admin_socket = node.issuer.running.admin_socket_path.clone();
    // An unbound workload.
    let unbound = register_at(&admin_socket, &node.agent_id, PLANNER, 0, "").await;
    node.wait_for_svids(1).await;
    let mut delegation = delegation(&node).await;
    let status = delegation
        .register_child(child(&format!("{PLANNER}/x")))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            format!(
                "entry {} is not bound to an owner; only owner-bound workloads register children",
                unbound.id
            )
            .as_str()
        )
    );
    // Bound by an exact consent (no prefix): no delegation.
    node.issuer
        .admin()
        .await
        .delete_entry(adm::EntryId { id: unbound.id })
        .await
        .unwrap();
    let (key, public) = openssl_key(d, "alice", true).await;
    register_owner(&node.issuer, ALICE, &public).await;
    let selector = format!("unix:uid:{}", current_uid());
    let (consent, _) =
        cli_consent(d, "exact", ALICE, &key, PLANNER, &[selector.as_str()], "1h").await;
    let bound = create_at(
        &admin_socket,
        fields(
            PLANNER,
            &node.agent_id,
            &[selector.as_str()],
            ALICE,
            &consent,
        ),
    )
    .await;
    node.wait_for_entry(&bound.id).await;
    let status = delegation
        .register_child(child(&format!("{PLANNER}/x")))
        .await
        .unwrap_err();
    assert_eq!(
        status.message(),
        format!(
            "the owner's consent for entry {} allows no delegation",
            bound.id
        )
    );
}
