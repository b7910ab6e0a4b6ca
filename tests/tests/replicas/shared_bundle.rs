//! Several issuer replicas sharing one PostgreSQL database (a real server,
//! see `sigil_tests::postgres`): each keeps its own CA, all serve one bundle
//! holding every replica's keys, an agent attested by one is served by
//! another, and an entry created through one reaches a stream open on
//! another without polling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::issuer as pb;
use sigil_agent::issuer_client;
use sigil_issuer::clock::SystemClock;
use sigil_issuer::config::database::DatabaseUrl;
use sigil_tests::postgres::Postgres;
use sigil_tests::{create_entry_at, TestIssuer};
use workload_api::Bundle;

async fn replica(url: &DatabaseUrl) -> TestIssuer {
    TestIssuer::start_with(Arc::new(SystemClock), |config| {
        config.database_url = url.clone();
    })
    .await
}

/// Waits until every replica serves the same bundle, holding every
/// replica's own X.509 authorities; returns it.
async fn one_bundle(replicas: &[&TestIssuer]) -> Bundle {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let bundles: Vec<Bundle> = replicas.iter().map(|r| r.bundle()).collect();
        let all_roots = replicas.iter().all(|r| {
            r.running
                .state
                .ca
                .local_bundle()
                .x509_authorities()
                .iter()
                .all(|root| bundles[0].x509_authorities().contains(root))
        });
        if all_roots && bundles.iter().all(|b| *b == bundles[0]) {
            return bundles[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the replicas did not converge on one bundle: {:?}",
            bundles
                .iter()
                .map(|b| (b.sequence(), b.x509_authorities().len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `stream` until an upsert of `entry_id` arrives; how long it took.
async fn until_upserted(
    stream: &mut tonic::Streaming<pb::SyncEntriesResponse>,
    entry_id: &str,
) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let message = stream
                .message()
                .await
                .unwrap()
                .expect("the stream stays open");
            if message.upserted.iter().any(|e| e.id == entry_id) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("entry {entry_id} did not reach the stream within 5 s"));
    start.elapsed()
}

/// Two replicas on a new database `name`, once they serve one bundle.
pub(crate) async fn two_replicas(
    name: &str,
) -> (Postgres, DatabaseUrl, TestIssuer, TestIssuer, Bundle) {
    let pg = Postgres::start();
    let url = pg.create_database(name);
    let a = replica(&url).await;
    let b = replica(&url).await;
    let bundle = one_bundle(&[&a, &b]).await;
    (pg, url, a, b, bundle)
}

/// An entry stream opened on `replica` by `agent`, attested elsewhere.
async fn stream_on(
    replica: &TestIssuer,
    agent: &sigil_tests::TestAgent,
    bundle: &Bundle,
) -> (
    proto::issuer::agent_api_client::AgentApiClient<tonic::transport::Channel>,
    tonic::Streaming<pb::SyncEntriesResponse>,
) {
    let mut client = issuer_client::connect(
        replica.running.agent_api_address,
        bundle,
        Some(&agent.identity),
    )
    .await
    .unwrap();
    let stream = client
        .sync_entries(pb::SyncEntriesRequest {})
        .await
        .expect("a replica serves an agent another attested")
        .into_inner();
    (client, stream)
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_serve_one_bundle_and_each_others_agents() {
    let (_pg, _url, a, b, bundle) = two_replicas("replicas").await;
    assert_eq!(bundle.x509_authorities().len(), 2, "one CA per replica");
    assert_ne!(
        a.running.state.ca.local_bundle().x509_authorities(),
        b.running.state.ca.local_bundle().x509_authorities(),
        "no replica has another's CA"
    );
    assert_eq!(bundle.jwt_authorities().len(), 2);
    assert_eq!(bundle.wit_authorities().len(), 2);

    // An agent attested through a holds an SVID from a's CA; b accepts it.
    let agent = a.attest().await;
    let (mut on_b, mut stream) = stream_on(&b, &agent, &bundle).await;

    // Created through a, pushed to the stream open on b.
    let entry = create_entry_at(
        &a.running.admin_socket_path,
        "spiffe://example.org/web",
        &agent.id,
        &[],
    )
    .await;
    let took = until_upserted(&mut stream, &entry.id).await;
    println!("an entry created through replica a reached a stream on replica b in {took:?}");

    // b signs the SVID with its own CA; it verifies against the one bundle.
    let (_key, csr) = sigil_tests::new_key_and_csr(Some("spiffe://example.org/web"));
    let signed = on_b
        .batch_sign_x509_svids(pb::BatchSignX509SvidsRequest {
            params: vec![pb::X509SvidParams {
                entry_id: entry.id.clone(),
                csr,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let result = &signed.results[0];
    assert_eq!(result.code, 0, "{}", result.message);
    let chain = workload_api::bundle::split_der_concat(&result.cert_chain).unwrap();
    let verified = workload_api::x509svid::verify_chain(
        &chain,
        |_| Some(&bundle),
        std::time::SystemTime::now(),
    );
    assert!(verified.is_ok(), "{verified:?}");
}

/// A replica on `url` that signs the event log with the key in `log_key`.
async fn replica_with_log_key(url: &DatabaseUrl, log_key: &std::path::Path) -> TestIssuer {
    let log_key = log_key.to_owned();
    TestIssuer::start_with(Arc::new(SystemClock), |config| {
        config.database_url = url.clone();
        config.log_key_file = log_key;
    })
    .await
}

/// Creates an entry for `spiffe_id` through `through` and waits until the
/// event log, as `witness` serves it, holds its creation.
async fn create_logged(through: &TestIssuer, witness: &TestIssuer, spiffe_id: &str) {
    let agent = "spiffe://example.org/agent/join_token/x";
    create_entry_at(&through.running.admin_socket_path, spiffe_id, agent, &[]).await;
    witness
        .wait_for_event(spiffe_id, |e| {
            e["type"] == "entry.created" && e["subject"] == spiffe_id
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_log_key_signs_the_log_whichever_replica_sequences() {
    let pg = Postgres::start();
    let url = pg.create_database("log");
    let keys = tempfile::tempdir().unwrap();
    let log_key = keys.path().join("log.jwk");
    let a = replica_with_log_key(&url, &log_key).await;
    let b = replica_with_log_key(&url, &log_key).await;
    // A replica with a key of its own appends but never sequences.
    let stranger = replica(&url).await;
    assert!(a.running.state.events.signs());
    assert!(b.running.state.events.signs());
    assert!(!stranger.running.state.events.signs());

    // Created through a replica that cannot sign: sequenced by another.
    create_logged(&stranger, &b, "spiffe://example.org/before").await;
    // The sequencer stops with its replica; the other takes it over.
    a.running.shutdown().await;
    create_logged(&b, &b, "spiffe://example.org/after").await;

    // The whole log verifies against the one key, pinned.
    let (status, export) = b.http_get("/log/export").await;
    assert_eq!(status, 200);
    let pinned = b.running.state.events.key().verifier_key();
    let report =
        sigil_issuer::eventlog::verify::verify_export(export.as_bytes(), Some(&pinned), None)
            .expect("the log verifies");
    assert!(report.key_pinned);
    assert!(report.checkpoint.size >= 2, "{:?}", report.checkpoint);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replica_serves_every_replicas_crls() {
    let pg = Postgres::start();
    let url = pg.create_database("crls");
    let a = replica(&url).await;
    let b = replica(&url).await;
    let now = std::time::SystemTime::now();
    let mut wanted: Vec<String> = [&a, &b]
        .iter()
        .flat_map(|r| r.running.state.ca.valid_x509_authorities(now))
        .map(|(id, _)| id)
        .collect();
    wanted.sort();
    let deadline = Instant::now() + Duration::from_secs(5);
    for r in [&a, &b] {
        loop {
            let mut served: Vec<String> = r
                .running
                .state
                .revocations
                .current()
                .crls
                .iter()
                .map(|c| c.authority_id.clone())
                .collect();
            served.sort();
            if served == wanted {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a replica serves CRLs of {served:?}, not of {wanted:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_change_on_one_replica_reaches_agents_on_another() {
    let (_pg, url, a, b, bundle) = two_replicas("bundle_change").await;
    let agent = a.attest().await;
    let (_on_b, mut stream) = stream_on(&b, &agent, &bundle).await;

    // A third replica joins: its CA enters the bundle, and b's stream
    // carries the new bundle to the agent.
    let started = Instant::now();
    let c = replica(&url).await;
    let c_root = c.running.state.ca.local_bundle().x509_authorities()[0].clone();
    let delivered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let message = stream
                .message()
                .await
                .unwrap()
                .expect("the stream stays open");
            if message.bundle.is_empty() {
                continue;
            }
            let sent =
                Bundle::from_jwks_json(bundle.trust_domain().clone(), &message.bundle).unwrap();
            if sent.x509_authorities().contains(&c_root) {
                return sent;
            }
        }
    })
    .await
    .expect("the new replica's CA reached the agent on b within 5 s");
    println!(
        "a new replica's CA reached an agent on another replica {:?} after it started",
        started.elapsed()
    );
    assert_eq!(delivered.x509_authorities().len(), 3);
    assert!(delivered.sequence() > bundle.sequence());
}

/// How the polls of `trust_domain`'s endpoint went, as `replica` reports.
async fn polls_seen_by(replica: &TestIssuer, trust_domain: &str) -> (String, i64) {
    let shown = replica
        .admin()
        .await
        .get_federation(proto::admin::TrustDomainRequest {
            trust_domain: trust_domain.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (shown.last_error, shown.last_polled_at)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replica_reports_the_same_federation_polls() {
    let (_pg, _url, a, b, _) = two_replicas("federation_polls").await;
    // Nothing listens there: every poll fails.
    let endpoint = format!("https://127.0.0.1:{}/bundle", sigil_tests::free_port());
    let relationship = proto::admin::Federation {
        trust_domain: "peer.example".into(),
        bundle_endpoint_url: endpoint,
        profile: "https_web".into(),
        ..Default::default()
    };
    b.admin()
        .await
        .create_federation(proto::admin::FederationRequest {
            federation: Some(relationship),
            bootstrap_bundle: Vec::new(),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (on_a, on_b) = (
            polls_seen_by(&a, "peer.example").await,
            polls_seen_by(&b, "peer.example").await,
        );
        if !on_a.0.is_empty() && on_a == on_b {
            assert!(on_a.1 > 0, "a failed poll has a time: {on_a:?}");
            assert!(on_a.0.contains("127.0.0.1"), "{}", on_a.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas did not report the same poll: {on_a:?} and {on_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
