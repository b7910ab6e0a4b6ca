//! Faults: the issuer goes away and comes back while workloads hold open
//! streams. Workloads keep their cached SVIDs and JWT-SVIDs and their streams
//! stay open; once the issuer is back, rotation resumes without an agent restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::workload as pb;
use sigil_issuer::clock::SystemClock;
use sigil_issuer::config::Config;
use sigil_tests::*;
use workload_api::client::{connect, EndpointAddress};
use workload_api::id::TrustDomain;

fn leaf_of(response: &pb::X509svidResponse) -> Vec<u8> {
    workload_api::bundle::split_der_concat(&response.svids[0].x509_svid).unwrap()[0].clone()
}

#[tokio::test]
async fn issuer_outage_keeps_workloads_served_and_rotation_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(
        TrustDomain::new(TRUST_DOMAIN).unwrap(),
        dir.path().join("issuer"),
    );
    config.agent_api_address = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    config.admin_socket_path = dir.path().join("admin/admin.sock");
    let issuer = sigil_issuer::server::start(config.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let bundle_path = dir.path().join("bundle.json");
    std::fs::write(&bundle_path, issuer.state.ca.bundle().to_jwks_json()).unwrap();
    let token = join_token_at(&config.admin_socket_path, 0).await;
    let agent = sigil_agent::agent::start(
        sigil_agent::config::AgentConfig::from_file(sigil_agent::config::FileConfig {
            trust_domain: Some(TRUST_DOMAIN.into()),
            issuer_address: Some(config.agent_api_address.to_string()),
            data_dir: Some(dir.path().join("agent")),
            socket_path: Some(dir.path().join("api.sock")),
            join_token: Some(token),
            trust_bundle_path: Some(bundle_path),
            ..Default::default()
        })
        .unwrap(),
    )
    .await
    .unwrap();
    let agent_id = agent.node.svid().spiffe_id.to_string();
    // A 20 s SVID rotates after 8-10 s: inside the outage below (3 s of
    // issuer shutdown, then 7 s), and expires after it: an expired SVID
    // would no longer be served.
    register_at(
        &config.admin_socket_path,
        &agent_id,
        "spiffe://example.org/web",
        20,
        "",
    )
    .await;

    let address = EndpointAddress::Unix(dir.path().join("api.sock"));
    let mut client = connect(&address).await.unwrap();
    let mut stream = client
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = leaf_of(&stream.message().await.unwrap().unwrap());
    let jwt_request = pb::JwtsvidRequest {
        audience: vec!["db".into()],
        spiffe_id: String::new(),
    };
    let jwt_before = client
        .fetch_jwtsvid(jwt_request.clone())
        .await
        .unwrap()
        .into_inner()
        .svids[0]
        .svid
        .clone();

    issuer.shutdown().await;
    let outage_started = Instant::now();
    // Past the rotation point, with the issuer down: the stream stays open and
    // delivers nothing new; fetches are answered from the cache.
    let during = tokio::time::timeout(Duration::from_secs(7), stream.message()).await;
    assert!(
        during.is_err(),
        "the stream stays open and quiet during the outage: {during:?}"
    );
    let cached = client
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(leaf_of(&cached), first, "the cached SVID is served");
    let jwt_during = client
        .fetch_jwtsvid(jwt_request)
        .await
        .unwrap()
        .into_inner()
        .svids[0]
        .svid
        .clone();
    assert_eq!(jwt_during, jwt_before, "the cached JWT-SVID is served");
    assert!(
        agent.status.borrow().last_error.is_some(),
        "the agent knows minting fails"
    );
    assert!(
        agent.status.borrow().issuer_unreachable_since.is_some(),
        "the agent knows since when"
    );

    let issuer = sigil_issuer::server::start(config, Arc::new(SystemClock))
        .await
        .unwrap();
    let back = Instant::now();
    let rotated = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("rotation resumes once the issuer is back")
        .unwrap()
        .unwrap();
    assert_ne!(leaf_of(&rotated), first);
    assert_eq!(
        agent.status.borrow().issuer_unreachable_since,
        None,
        "the outage is over once minting succeeds"
    );
    eprintln!(
        "outage {:?}; rotated SVID delivered {:?} after the issuer came back",
        back - outage_started,
        back.elapsed()
    );
    agent.shutdown().await;
    issuer.shutdown().await;
}

#[tokio::test]
async fn agent_svid_renews_at_half_life_and_the_agent_keeps_working() {
    let node = TestNode::start_with(|c| c.agent_svid_ttl = Duration::from_secs(6)).await;
    let agent = node.agent.as_ref().unwrap();
    let first = agent.node.svid();
    let stored = node.dir.path().join("agent/agent/svid.der");
    let on_disk = std::fs::read(&stored).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.node.svid().chain == first.chain {
        assert!(Instant::now() < deadline, "the agent SVID was not renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed = agent.node.svid();
    assert_eq!(
        renewed.spiffe_id, first.spiffe_id,
        "renewal keeps the agent's identity"
    );
    assert!(
        renewed.not_after > first.not_after,
        "{first:?} then {renewed:?}; received {:?} then {:?}",
        first.received,
        renewed.received
    );
    assert_ne!(
        std::fs::read(&stored).unwrap(),
        on_disk,
        "the renewed SVID is stored"
    );
    // With its renewed SVID the agent still mints for workloads.
    node.register("spiffe://example.org/after-renewal", 3600, "")
        .await;
    node.wait_for_svids(1).await;
}
