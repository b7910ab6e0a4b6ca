//! Owner revocation on every path a credential travels, with real
//! components and independent tools:
//! - the CRL the Workload API delivers after `owner revoke` lists the old
//!   X509-SVID's serial and verifies against the bundle (`openssl crl
//!   -verify -CAfile`), within 5 s; the issuer serves the same CRL and a
//!   signed revocation list naming the owner over HTTP;
//! - the agent's ValidateJWTSVID refuses a JWT-SVID minted before, and
//!   still does after the agent restarts with its issuer out of reach;
//! - an issuer restarted on its data directory still publishes both, and
//!   still refuses the revoked owner's consent.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use der::Decode;
use proto::admin as adm;
use proto::issuer as pb;
use proto::workload as wl;
use sigil_tests::owners::*;
use sigil_tests::*;
use tonic::Code;
use workload_api::client::{connect, EndpointAddress};
use workload_api::pem;

const ALICE: &str = "mailto:alice@example.org";
const BOT: &str = "spiffe://example.org/agents/alice/bot";
const RELYING: &str = "spiffe://example.org/relying";

/// The serials (hex, lowercase) a DER CRL lists.
fn crl_serials(der: &[u8]) -> Vec<String> {
    let crl = x509_cert::crl::CertificateList::from_der(der).unwrap();
    crl.tbs_cert_list
        .revoked_certificates
        .unwrap_or_default()
        .iter()
        .map(|r| hex::encode(r.serial_number.as_bytes()))
        .collect()
}

/// `openssl crl -verify` of the PEM CRL at `crl` against the CAs in `ca`,
/// and its text.
fn openssl_crl(crl: &Path, ca: &Path) -> (bool, String) {
    let (ok, out, err) = run(Command::new("openssl")
        .args(["crl", "-noout", "-text", "-verify", "-in"])
        .arg(crl)
        .arg("-CAfile")
        .arg(ca));
    (ok && err.contains("verify OK"), format!("{out}{err}"))
}

async fn validate(
    socket: &Path,
    jwt: &str,
    audience: &str,
) -> Result<wl::ValidateJwtsvidResponse, tonic::Status> {
    connect(&EndpointAddress::Unix(socket.to_path_buf()))
        .await
        .unwrap()
        .validate_jwtsvid(wl::ValidateJwtsvidRequest {
            audience: audience.into(),
            svid: jwt.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_reaches_crls_http_and_token_validation_and_survives_an_agent_restart() {
    let mut node = TestNode::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = openssl_key(d, "alice", false).await;
    let alice = register_owner(&node.issuer, ALICE, &public).await;
    let selector = format!("unix:uid:{}", current_uid());
    let (consent, _) = cli_consent(d, "bot", ALICE, &key, BOT, &[selector.as_str()], "1h").await;
    let admin_socket = node.issuer.running.admin_socket_path.clone();
    create_at(
        &admin_socket,
        fields(BOT, &node.agent_id, &[selector.as_str()], ALICE, &consent),
    )
    .await;
    // A second, unbound identity for the same workload: it still holds one
    // after the revocation, so its streams carry the CRLs.
    register_at(&admin_socket, &node.agent_id, RELYING, 0, "").await;
    node.wait_for_svids(2).await;

    let mut client = connect(&EndpointAddress::Unix(node.socket.clone()))
        .await
        .unwrap();
    let before = first_message(client.fetch_x509svid(wl::X509svidRequest {}).await).await;
    let leaf = served_leaf(&before, BOT);
    assert_eq!(leaf.owner.unwrap().owner_id, ALICE);
    // Every authority has a CRL from the start, empty until something is revoked.
    assert_eq!(before.crl.len(), 1, "one CRL per authority");
    assert!(crl_serials(&before.crl[0]).is_empty());
    let audience = "spiffe://example.org/db";
    let jwt = client
        .fetch_jwtsvid(wl::JwtsvidRequest {
            audience: vec![audience.into()],
            spiffe_id: BOT.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .svids[0]
        .svid
        .clone();
    // ValidateJWTSVID returns the owner claim among the claims.
    let validated = validate(&node.socket, &jwt, audience).await.unwrap();
    assert_eq!(validated.spiffe_id, BOT);
    let claims = validated.claims.unwrap().fields;
    let Some(prost_types::value::Kind::StructValue(owner)) =
        claims.get("owner").and_then(|v| v.kind.clone())
    else {
        panic!("no owner claim among {:?}", claims.keys());
    };
    let member = |name: &str| match owner.fields.get(name).and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::StringValue(text)) => text,
        other => panic!("owner.{name} is {other:?}"),
    };
    assert_eq!(member("id"), ALICE);
    assert_eq!(member("jkt"), alice.thumbprint);

    let started = Instant::now();
    revoke_owner(&node.issuer, ALICE).await;
    // The X.509 bundles stream of the still-entitled workload brings the CRL.
    let mut bundles = client
        .fetch_x509_bundles(wl::X509BundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let crl = loop {
        let message = tokio::time::timeout(Duration::from_secs(5), bundles.message())
            .await
            .expect("a new X.509 bundles message within 5 s of the revocation")
            .unwrap()
            .expect("the stream stays open");
        if message
            .crl
            .iter()
            .any(|c| crl_serials(c).contains(&leaf.serial_hex))
        {
            break message.crl[0].clone();
        }
    };
    let latency = started.elapsed();
    println!(
        "owner revoke -> serial on the Workload API's CRL: {} ms",
        latency.as_millis()
    );
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    let after = first_message(client.fetch_x509svid(wl::X509svidRequest {}).await).await;
    let ids: Vec<&str> = after.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, [RELYING], "the revoked owner's SVID is gone");
    assert_eq!(
        after.crl,
        vec![crl.clone()],
        "X509-SVID responses carry it too"
    );

    // openssl verifies the CRL against the bundle and reads the serial.
    let crl_file = d.join("crl.pem");
    std::fs::write(&crl_file, pem::encode("X509 CRL", &crl)).unwrap();
    let ca_file = d.join("bundle.pem");
    std::fs::write(&ca_file, node.issuer.bundle().x509_pem()).unwrap();
    let (verified, text) = openssl_crl(&crl_file, &ca_file);
    assert!(verified, "openssl crl -verify failed:\n{text}");
    assert!(
        text.contains(&leaf.serial_hex.to_ascii_uppercase()),
        "{text}"
    );
    assert!(text.contains("Privilege Withdrawn"), "{text}");

    // The issuer's HTTP endpoint serves the same CRL and the signed list.
    let (status, body) = node.issuer.http_get("/v1/crl").await;
    assert_eq!(status, 200);
    assert_eq!(pem::blocks(&body, "X509 CRL"), vec![crl.clone()]);
    let (status, body) = node.issuer.http_get("/v1/revocations").await;
    assert_eq!(status, 200);
    let list = workload_api::revocation::verify(&body, &node.issuer.bundle()).unwrap();
    assert_eq!(list.revoked_owners(), 1);
    let bundle = node.issuer.bundle();
    let bound = workload_api::jwtsvid::validate(
        &jwt,
        audience,
        |_| Some(&bundle),
        std::time::SystemTime::now(),
    )
    .unwrap()
    .owner
    .unwrap();
    assert!(list.revokes(&bound));
    assert_eq!(bound.key_thumbprint_b64(), alice.thumbprint);
    let (status, _) = node.issuer.http_get("/v1/revocations?later=1").await;
    assert_eq!(status, 400);

    // ValidateJWTSVID refuses the JWT-SVID minted before the revocation...
    let refused = "the JWT-SVID is refused: its owner mailto:alice@example.org is revoked";
    let status = validate(&node.socket, &jwt, audience).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, refused)
    );
    // ...and still does after a restart with the issuer out of reach: the
    // agent kept the revocations on disk.
    node.restart_agent_with(|config| config.issuer_address = "127.0.0.1:1".parse().unwrap())
        .await;
    let status = validate(&node.socket, &jwt, audience).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, refused)
    );
}

/// An owner-bound X509-SVID signed through the agent API, with the agent
/// that asked for it and the consent that binds it.
struct BoundSvid {
    leaf: workload_api::x509svid::LeafInfo,
    agent: TestAgent,
    consent: String,
}

async fn sign_bound_svid(issuer: &TestIssuer, dir: &Path) -> BoundSvid {
    let (key, public) = openssl_key(dir, "alice", true).await;
    register_owner(issuer, ALICE, &public).await;
    let agent = issuer.attest().await;
    let (consent, _) = cli_consent(dir, "bot", ALICE, &key, BOT, &["unix:uid:1000"], "1h").await;
    let entry = create_at(
        &issuer.running.admin_socket_path,
        fields(BOT, &agent.id, &["unix:uid:1000"], ALICE, &consent),
    )
    .await;
    let (_key, csr) = new_key_and_csr(Some(BOT));
    let signed = agent
        .client
        .clone()
        .batch_sign_x509_svids(pb::BatchSignX509SvidsRequest {
            params: vec![pb::X509SvidParams {
                entry_id: entry.id.clone(),
                csr,
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    assert_eq!(signed.code, 0, "{}", signed.message);
    let chain = workload_api::bundle::split_der_concat(&signed.cert_chain).unwrap();
    BoundSvid {
        leaf: workload_api::x509svid::check_leaf(&chain[0]).unwrap(),
        agent,
        consent,
    }
}

/// Issuers for Go relying parties leave the extension out; the SVID is
/// still recorded and revoked.
#[tokio::test(flavor = "multi_thread")]
async fn without_the_x509_extension_bound_svids_are_still_revoked() {
    let issuer =
        TestIssuer::start_with(std::sync::Arc::new(sigil_issuer::clock::SystemClock), |c| {
            c.x509_owner_extension = false
        })
        .await;
    let dir = tempfile::tempdir().unwrap();
    let bound = sign_bound_svid(&issuer, dir.path()).await;
    assert_eq!(bound.leaf.owner, None, "no owner extension");
    revoke_owner(&issuer, ALICE).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = issuer.http_get("/v1/crl").await;
        let crls = pem::blocks(&body, "X509 CRL");
        if crls
            .iter()
            .any(|c| crl_serials(c).contains(&bound.leaf.serial_hex))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the serial never reached a CRL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_issuer_keeps_publishing_revocations() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bound = sign_bound_svid(&issuer, dir.path()).await;
    assert!(bound.leaf.owner.is_some());
    let (serial, agent, consent) = (bound.leaf.serial_hex, bound.agent, bound.consent);
    revoke_owner(&issuer, ALICE).await;

    let issuer = issuer.restart().await;
    let (status, body) = issuer.http_get("/v1/crl").await;
    assert_eq!(status, 200);
    let crls = pem::blocks(&body, "X509 CRL");
    assert!(
        crls.iter().any(|c| crl_serials(c).contains(&serial)),
        "the restarted issuer's CRLs lack {serial}"
    );
    let (_, body) = issuer.http_get("/v1/revocations").await;
    let list = workload_api::revocation::verify(&body, &issuer.bundle()).unwrap();
    assert_eq!(list.revoked_owners(), 1);
    // Nothing can be bound to the revoked owner again.
    let status = issuer
        .admin()
        .await
        .create_entry(adm::CreateEntryRequest {
            entry: Some(fields(
                "spiffe://example.org/agents/alice/other",
                &agent.id,
                &["unix:uid:1000"],
                ALICE,
                &consent,
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "{}",
        status.message()
    );
    assert!(status
        .message()
        .starts_with("owner mailto:alice@example.org was revoked at "));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wpt_from_a_revoked_owners_wit_fails_at_the_example_service() {
    use workload_api::wimse::WptForm;
    let node = TestNode::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = openssl_key(d, "alice", false).await;
    register_owner(&node.issuer, ALICE, &public).await;
    let selector = format!("unix:uid:{}", current_uid());
    let (consent, _) = cli_consent(d, "bot", ALICE, &key, BOT, &[selector.as_str()], "1h").await;
    let admin_socket = node.issuer.running.admin_socket_path.clone();
    let bound = create_at(
        &admin_socket,
        fields(BOT, &node.agent_id, &[selector.as_str()], ALICE, &consent),
    )
    .await;
    // The service runs as this uid too: this identity keeps its bundle
    // streams open after the revocation.
    register_at(&admin_socket, &node.agent_id, RELYING, 0, "").await;
    node.wait_for_entry(&bound.id).await;
    let wits = first_message(
        connect(&EndpointAddress::Unix(node.socket.clone()))
            .await
            .unwrap()
            .fetch_witsvid(wl::WitsvidRequest {
                spiffe_id: BOT.into(),
            })
            .await,
    )
    .await;
    let wit = wits.svids[0].wit_svid.clone();
    let wit_key =
        workload_api::keypair::KeyPair::from_jwk_json(&wits.svids[0].wit_svid_key).unwrap();

    let endpoint = node.endpoint();
    let url = format!(
        "http://{}/v1/revocations",
        node.issuer.running.http_address.unwrap()
    );
    let service = tokio::task::spawn_blocking(move || {
        sigil_tests::web::ExampleService::start_with(endpoint, &["--revocations-url", &url])
    })
    .await
    .unwrap();
    let call = || async {
        let mut headers = ::http::HeaderMap::new();
        workload_api::wimse::http::add_proof_headers_as(
            WptForm::Authorization,
            &mut headers,
            &wit,
            &wit_key,
            "https://orders.example.org/orders",
            60,
            &[],
            unix_now(),
        )
        .unwrap();
        sigil_tests::web::http_call(&service.address, "GET", "/orders", &headers, b"").await
    };
    // Accepted while the owner stands (once the service holds a list).
    let deadline = Instant::now() + Duration::from_secs(10);
    let accepted = loop {
        let answer = call().await;
        if answer.status == 200 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert!(accepted.body.contains(ALICE), "{}", accepted.body);

    let started = Instant::now();
    revoke_owner(&node.issuer, ALICE).await;
    let refused = loop {
        let answer = call().await;
        if answer.status != 200 {
            break answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the service still accepts the revoked owner's WIT"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "owner revoke -> the example service refuses a WPT from the old WIT: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    let problem: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(problem["check"], "wit.owner_revoked", "{problem}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
