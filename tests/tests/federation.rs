//! Federation end to end: two trust domains, example.org and
//! example-federated.org, each a real issuer serving its bundle endpoint
//! (https_spiffe) with a real agent. Each issuer polls the other's endpoint;
//! the bundles reach the workloads that federate, which then verify each
//! other's X509-SVIDs in mTLS (rustls, and Python's ssl module), JWT-SVIDs
//! and WPTs, while a domain that is not federated is refused. A CA rotation
//! reaches the peer by itself, and the bundle endpoint's authentication and
//! the bundle's sequence are checked as SPIFFE_Federation.md says.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use proto::admin as adm;
use proto::workload as wl;
use sigil_issuer::config::federation::{BundleEndpoint, BundleEndpointProfile};
use sigil_issuer::config::Config;
use sigil_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use workload_api::client::{connect, EndpointAddress};
use workload_api::id::TrustDomain;
use workload_api::wimse::verifier::{Presented, Verifier, VerifierConfig};
use workload_api::wimse::wpt::{self, BoundTokens};
use workload_api::Bundle;

const EXAMPLE: &str = "example.org";
const FEDERATED: &str = "example-federated.org";
const OTHER: &str = "example-other.org";
const WEB: &str = "spiffe://example.org/web";
const CLIENT: &str = "spiffe://example-federated.org/client";
const WEB_DNS: &str = "web.example.org";

/// Serves the bundle on 127.0.0.1 with the issuer's own X509-SVID.
fn with_bundle_endpoint(config: &mut Config, trust_domain: &str) {
    config.trust_domain = TrustDomain::new(trust_domain).unwrap();
    config.bundle_endpoint = Some(BundleEndpoint {
        address: "127.0.0.1:0".parse().unwrap(),
        path: "/bundle".into(),
        profile: BundleEndpointProfile::HttpsSpiffe,
    });
}

/// A node (issuer and agent) of `trust_domain` with its bundle endpoint on.
async fn domain(trust_domain: &str) -> TestNode {
    let td = trust_domain.to_owned();
    TestNode::start_with(move |config| with_bundle_endpoint(config, &td)).await
}

fn endpoint_url(issuer: &TestIssuer) -> String {
    let address: SocketAddr = issuer.running.bundle_endpoint_address.unwrap();
    format!("https://{address}/bundle")
}

fn td_of(issuer: &TestIssuer) -> String {
    issuer.running.state.config.trust_domain.to_string()
}

/// Makes `from` federate with `to`: an https_spiffe relationship to `to`'s
/// endpoint, bootstrapped with `to`'s current bundle.
async fn federate(from: &TestIssuer, to: &TestIssuer) -> adm::Federation {
    from.admin()
        .await
        .create_federation(adm::FederationRequest {
            federation: Some(adm::Federation {
                trust_domain: td_of(to),
                bundle_endpoint_url: endpoint_url(to),
                profile: "https_spiffe".into(),
                endpoint_spiffe_id: format!("spiffe://{}/sigil/issuer", td_of(to)),
                ..Default::default()
            }),
            bootstrap_bundle: to.bundle().to_jwks_json(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Waits until `issuer` holds a bundle of `trust_domain` fetched from its
/// endpoint for which `done` holds.
async fn wait_for_fetched(issuer: &TestIssuer, trust_domain: &str, done: impl Fn(&Bundle) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = issuer
            .admin()
            .await
            .get_foreign_bundle(adm::TrustDomainRequest {
                trust_domain: trust_domain.into(),
            })
            .await;
        if let Ok(held) = held {
            let held = held.into_inner();
            let bundle =
                Bundle::from_jwks_json(TrustDomain::new(trust_domain).unwrap(), &held.jwks)
                    .unwrap();
            if held.origin == "endpoint" && done(&bundle) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{trust_domain}'s bundle never arrived as wanted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers `spiffe_id` for this process under the node's agent.
async fn register(node: &TestNode, spiffe_id: &str, dns: &[&str], federates_with: &[&str]) {
    let entry = create_at(
        &node.issuer.running.admin_socket_path,
        adm::EntryFields {
            spiffe_id: spiffe_id.into(),
            parent_id: node.agent_id.clone(),
            selectors: vec![proto::issuer::Selector {
                r#type: "unix".into(),
                value: format!("uid:{}", current_uid()),
            }],
            dns_names: dns.iter().map(|d| d.to_string()).collect(),
            federates_with: federates_with.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        },
    )
    .await;
    node.wait_for_entry(&entry.id).await;
}

/// The node's first X509-SVID answer for this process.
async fn x509(node: &TestNode) -> wl::X509svidResponse {
    let mut client = connect(&EndpointAddress::Unix(node.socket.clone()))
        .await
        .unwrap();
    first_message(client.fetch_x509svid(wl::X509svidRequest {}).await).await
}

/// Waits until the node serves this process `trust_domain`'s federated bundle.
async fn wait_for_served(node: &TestNode, trust_domain: &str) -> wl::X509svidResponse {
    let key = format!("spiffe://{trust_domain}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = x509(node).await;
        if answer.federated_bundles.contains_key(&key) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never reached the workload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Root certificates from a concatenation of DER certificates.
fn roots(der_concat: &[u8]) -> rustls::RootCertStore {
    let mut store = rustls::RootCertStore::empty();
    for der in workload_api::bundle::split_der_concat(der_concat).unwrap() {
        store.add(der.into()).unwrap();
    }
    store
}

fn identity(
    svid: &wl::X509svid,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let chain = workload_api::bundle::split_der_concat(&svid.x509_svid)
        .unwrap()
        .into_iter()
        .map(Into::into)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(svid.x509_svid_key.clone().into());
    (chain, key)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SPIFFE ID in a peer's leaf certificate.
fn peer_id(chain: &[rustls::pki_types::CertificateDer<'_>]) -> String {
    workload_api::x509svid::check_leaf(chain[0].as_ref())
        .unwrap()
        .spiffe_id
        .to_string()
}

/// An mTLS server with `svid`, trusting clients of `client_bundle`: it
/// answers each connection with the client's SPIFFE ID, or with the
/// handshake error, on the returned channel.
async fn mtls_server(
    svid: &wl::X509svid,
    client_bundle: &[u8],
) -> (
    SocketAddr,
    tokio::sync::mpsc::Receiver<Result<String, String>>,
) {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(client_bundle)),
        provider(),
    )
    .build()
    .unwrap();
    let (chain, key) = identity(svid);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let result = match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let id = peer_id(tls.get_ref().1.peer_certificates().unwrap());
                    let _ = tls.write_all(format!("hello {id}\n").as_bytes()).await;
                    let _ = tls.shutdown().await;
                    Ok(id)
                }
                Err(e) => Err(e.to_string()),
            };
            let _ = tx.send(result).await;
        }
    });
    (address, rx)
}

/// Connects with rustls as `svid`, trusting servers of `server_bundle`;
/// returns the server's SPIFFE ID and its greeting.
async fn mtls_client(
    address: SocketAddr,
    svid: &wl::X509svid,
    server_bundle: &[u8],
) -> Result<(String, String), String> {
    let (chain, key) = identity(svid);
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(server_bundle))
        .with_client_auth_cert(chain, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(WEB_DNS).unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let id = peer_id(tls.get_ref().1.peer_certificates().unwrap());
    let mut greeting = String::new();
    tls.read_to_string(&mut greeting)
        .await
        .map_err(|e| e.to_string())?;
    Ok((id, greeting.trim().to_owned()))
}

/// Connects with Python's ssl module as `svid`, trusting `server_bundle`.
async fn python_client(
    address: SocketAddr,
    svid: &wl::X509svid,
    server_bundle: &[u8],
) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let chain = workload_api::bundle::split_der_concat(&svid.x509_svid).unwrap();
    write_pem(&dir.path().join("svid.pem"), &chain);
    std::fs::write(
        dir.path().join("key.pem"),
        workload_api::pem::encode("PRIVATE KEY", &svid.x509_svid_key),
    )
    .unwrap();
    write_pem(
        &dir.path().join("bundle.pem"),
        &workload_api::bundle::split_der_concat(server_bundle).unwrap(),
    );
    let script = workspace_root().join("tests/python/federated_tls_client.py");
    let path = dir.path().to_owned();
    let result = tokio::task::spawn_blocking(move || {
        run(Command::new(python())
            .arg(script)
            .arg("127.0.0.1")
            .arg(address.port().to_string())
            .arg(WEB_DNS)
            .arg(path.join("svid.pem"))
            .arg(path.join("key.pem"))
            .arg(path.join("bundle.pem")))
    })
    .await
    .unwrap();
    drop(dir);
    result
}

/// A JWT-SVID for `audience` from the node's agent.
async fn jwt(node: &TestNode, audience: &str) -> String {
    let mut client = connect(&EndpointAddress::Unix(node.socket.clone()))
        .await
        .unwrap();
    client
        .fetch_jwtsvid(wl::JwtsvidRequest {
            audience: vec![audience.into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .svids
        .remove(0)
        .svid
}

async fn validate(node: &TestNode, audience: &str, token: &str) -> Result<String, tonic::Status> {
    let mut client = connect(&EndpointAddress::Unix(node.socket.clone()))
        .await
        .unwrap();
    let answer = client
        .validate_jwtsvid(wl::ValidateJwtsvidRequest {
            audience: audience.into(),
            svid: token.into(),
        })
        .await?;
    Ok(answer.into_inner().spiffe_id)
}

/// A verifier for `audience` trusting the WIT bundles `node` gives this
/// process, as the WIMSE layer takes them.
async fn wit_verifier(node: &TestNode, audience: &str) -> Verifier {
    let mut client = connect(&EndpointAddress::Unix(node.socket.clone()))
        .await
        .unwrap();
    let bundles = first_message(client.fetch_wit_bundles(wl::WitBundlesRequest {}).await).await;
    let verifier = Verifier::new(VerifierConfig::new(vec![audience.into()]));
    verifier.set_bundles(bundles.bundles.iter().map(|(id, json)| {
        let td = TrustDomain::new(id.strip_prefix("spiffe://").unwrap()).unwrap();
        Bundle::from_jwks_json(td, json.as_bytes()).unwrap()
    }));
    verifier
}

/// The node's WIT-SVID for this process and a WPT for `audience` made with it.
async fn wit_and_wpt(node: &TestNode, audience: &str) -> (String, String) {
    let mut client = connect(&EndpointAddress::Unix(node.socket.clone()))
        .await
        .unwrap();
    let answer = first_message(client.fetch_witsvid(wl::WitsvidRequest::default()).await).await;
    let svid = &answer.svids[0];
    let key = workload_api::keypair::KeyPair::from_jwk_json(&svid.wit_svid_key).unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let proof = wpt::mint(
        &svid.wit_svid,
        &key,
        audience,
        60,
        &BoundTokens::default(),
        now,
    );
    (svid.wit_svid.clone(), proof)
}

fn verify_wpt(verifier: &Verifier, wit: &str, proof: &str) -> Result<String, String> {
    let no_headers = |_: &str| None;
    let presented = Presented {
        wit,
        wpt: proof,
        path: Some("/orders"),
        authorization: None,
        txn_token: None,
        header: &no_headers,
    };
    verifier
        .verify(&presented, SystemTime::now())
        .map(|v| v.spiffe_id().unwrap().to_string())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_federated_domains_verify_each_other_and_refuse_a_third() {
    let example = domain(EXAMPLE).await;
    let federated = domain(FEDERATED).await;
    let other = domain(OTHER).await;
    federate(&example.issuer, &federated.issuer).await;
    federate(&federated.issuer, &example.issuer).await;
    wait_for_fetched(&example.issuer, FEDERATED, |_| true).await;
    wait_for_fetched(&federated.issuer, EXAMPLE, |_| true).await;

    register(&example, WEB, &[WEB_DNS], &[FEDERATED]).await;
    register(&federated, CLIENT, &[], &[EXAMPLE]).await;
    register(&other, "spiffe://example-other.org/intruder", &[], &[]).await;
    let at_example = wait_for_served(&example, FEDERATED).await;
    let at_federated = wait_for_served(&federated, EXAMPLE).await;
    let other_svid = x509(&other).await.svids.remove(0);
    let federated_key = format!("spiffe://{FEDERATED}");
    let example_key = format!("spiffe://{EXAMPLE}");
    // Each side holds the other's roots exactly as the other publishes them.
    assert_eq!(
        at_example.federated_bundles[&federated_key],
        federated.issuer.bundle().x509_der_concat()
    );
    assert_eq!(
        at_federated.federated_bundles[&example_key],
        example.issuer.bundle().x509_der_concat()
    );

    // mTLS across the domains: the web server of example.org trusts
    // example-federated.org's clients through the federated bundle, and the
    // client trusts the server the same way.
    let (address, mut accepted) = mtls_server(
        &at_example.svids[0],
        &at_example.federated_bundles[&federated_key],
    )
    .await;
    let (server_id, greeting) = mtls_client(
        address,
        &at_federated.svids[0],
        &at_federated.federated_bundles[&example_key],
    )
    .await
    .unwrap();
    assert_eq!(server_id, WEB);
    assert_eq!(greeting, format!("hello {CLIENT}"));
    assert_eq!(accepted.recv().await.unwrap().unwrap(), CLIENT);
    // Python's ssl module, as the same client.
    let (ok, stdout, stderr) = python_client(
        address,
        &at_federated.svids[0],
        &at_federated.federated_bundles[&example_key],
    )
    .await;
    assert!(ok, "python ssl client failed: {stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [WEB, &format!("hello {CLIENT}")]
    );
    assert_eq!(accepted.recv().await.unwrap().unwrap(), CLIENT);
    // A workload of a domain example.org does not federate with is refused.
    let refused = mtls_client(
        address,
        &other_svid,
        &at_federated.federated_bundles[&example_key],
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    let server_side = accepted.recv().await.unwrap().unwrap_err();
    assert!(server_side.contains("UnknownIssuer"), "{server_side}");

    // JWT-SVIDs: example.org's agent validates the federated domain's token
    // for its federating caller, and refuses the third domain's.
    let token = jwt(&federated, WEB).await;
    assert_eq!(validate(&example, WEB, &token).await.unwrap(), CLIENT);
    let intruder = jwt(&other, WEB).await;
    let refused = validate(&example, WEB, &intruder).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // And the other way round.
    let token = jwt(&example, CLIENT).await;
    assert_eq!(validate(&federated, CLIENT, &token).await.unwrap(), WEB);

    // WPTs: a service of example.org verifies a proof made with the
    // federated domain's WIT, and refuses the third domain's.
    let verifier = wit_verifier(&example, "https://orders.example.org/orders").await;
    let (wit, proof) = wit_and_wpt(&federated, "https://orders.example.org/orders").await;
    assert_eq!(verify_wpt(&verifier, &wit, &proof).unwrap(), CLIENT);
    let (wit, proof) = wit_and_wpt(&other, "https://orders.example.org/orders").await;
    let refused = verify_wpt(&verifier, &wit, &proof).unwrap_err();
    assert!(refused.contains(OTHER), "{refused}");
    // And the other way round.
    let verifier = wit_verifier(&federated, "https://orders.example.org/orders").await;
    let (wit, proof) = wit_and_wpt(&example, "https://orders.example.org/orders").await;
    assert_eq!(verify_wpt(&verifier, &wit, &proof).unwrap(), WEB);

    // Ending the relationship takes the bundle away from the workloads: a
    // fresh verifier no longer accepts the federated domain's WITs.
    example
        .issuer
        .admin()
        .await
        .delete_federation(adm::TrustDomainRequest {
            trust_domain: FEDERATED.into(),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while x509(&example)
        .await
        .federated_bundles
        .contains_key(&federated_key)
    {
        assert!(
            Instant::now() < deadline,
            "the ended federation's bundle stayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let verifier = wit_verifier(&example, "https://orders.example.org/orders").await;
    let (wit, proof) = wit_and_wpt(&federated, "https://orders.example.org/orders").await;
    assert!(verify_wpt(&verifier, &wit, &proof).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_reaches_the_peer_and_handshakes_outlive_the_old_ca() {
    // A 30 s CA: its successor is published 10 s ahead, at least three
    // refresh hints of 2 s, as the issuer's configuration check requires.
    let short_lived = |td: &'static str| {
        move |config: &mut Config| {
            with_bundle_endpoint(config, td);
            config.ca_ttl = Duration::from_secs(30);
            config.bundle_refresh_hint = Duration::from_secs(2);
            config.default_x509_svid_ttl = Duration::from_secs(10);
            config.agent_svid_ttl = Duration::from_secs(10);
        }
    };
    let example = TestNode::start_with(short_lived(EXAMPLE)).await;
    let federated = TestNode::start_with(short_lived(FEDERATED)).await;
    federate(&example.issuer, &federated.issuer).await;
    federate(&federated.issuer, &example.issuer).await;
    register(&example, WEB, &[WEB_DNS], &[FEDERATED]).await;
    register(&federated, CLIENT, &[], &[EXAMPLE]).await;
    let first_roots: Vec<Vec<u8>> = federated.issuer.bundle().x509_authorities().to_vec();

    let started = Instant::now();
    let mut rotated_seen = false;
    // Past the first CA's whole life, without any manual refresh.
    while started.elapsed() < Duration::from_secs(45) {
        let published = federated.issuer.bundle();
        // Whatever the federated domain publishes reaches example.org
        // within a few refresh hints.
        let wanted = published.x509_authorities().to_vec();
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let at_example = x509(&example).await;
            let held = at_example
                .federated_bundles
                .get(&format!("spiffe://{FEDERATED}"))
                .map(|der| workload_api::bundle::split_der_concat(der).unwrap())
                .unwrap_or_default();
            if wanted.iter().all(|root| held.contains(root)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the federated domain's new root did not arrive within 8 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        rotated_seen |= wanted.iter().any(|root| !first_roots.contains(root));
        // And a cross-domain handshake works with whatever each side holds now.
        let at_example = x509(&example).await;
        let at_federated = x509(&federated).await;
        let (address, mut accepted) = mtls_server(
            &at_example.svids[0],
            &at_example.federated_bundles[&format!("spiffe://{FEDERATED}")],
        )
        .await;
        let (server_id, _) = mtls_client(
            address,
            &at_federated.svids[0],
            &at_federated.federated_bundles[&format!("spiffe://{EXAMPLE}")],
        )
        .await
        .unwrap();
        assert_eq!(server_id, WEB);
        assert_eq!(accepted.recv().await.unwrap().unwrap(), CLIENT);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert!(rotated_seen, "the federated domain never rotated its CA");
    // The first CA has expired: none of its roots is still published.
    let now_roots = federated.issuer.bundle().x509_authorities().to_vec();
    assert!(
        first_roots.iter().all(|root| !now_roots.contains(root)),
        "the first CA is still in the bundle after its life"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_the_wrong_spiffe_id_is_refused_and_named() {
    let example = domain(EXAMPLE).await;
    let federated = domain(FEDERATED).await;
    let admin = || async { example.issuer.admin().await };
    admin()
        .await
        .create_federation(adm::FederationRequest {
            federation: Some(adm::Federation {
                trust_domain: FEDERATED.into(),
                bundle_endpoint_url: endpoint_url(&federated.issuer),
                profile: "https_spiffe".into(),
                endpoint_spiffe_id: format!("spiffe://{FEDERATED}/bundle-server"),
                ..Default::default()
            }),
            bootstrap_bundle: federated.issuer.bundle().to_jwks_json(),
        })
        .await
        .unwrap();
    let refused = admin()
        .await
        .refresh_federation(adm::TrustDomainRequest {
            trust_domain: FEDERATED.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let message = refused.message();
    assert!(
        message.contains(&format!("spiffe://{FEDERATED}/sigil/issuer"))
            && message.contains(&format!("spiffe://{FEDERATED}/bundle-server")),
        "{message}"
    );
    // The relationship shows the failure; the bootstrap bundle stays.
    let shown = admin()
        .await
        .get_federation(adm::TrustDomainRequest {
            trust_domain: FEDERATED.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(shown.last_error.contains("bundle-server"), "{shown:?}");
    assert_eq!(shown.bundle.unwrap().origin, "bootstrap");

    // Bad requests are refused before anything is written.
    let bad = |federation: adm::Federation, bootstrap: Vec<u8>| {
        let admin = admin();
        async move {
            admin
                .await
                .create_federation(adm::FederationRequest {
                    federation: Some(federation),
                    bootstrap_bundle: bootstrap,
                })
                .await
                .unwrap_err()
                .message()
                .to_owned()
        }
    };
    let base = adm::Federation {
        trust_domain: OTHER.into(),
        bundle_endpoint_url: "https://127.0.0.1:1/bundle".into(),
        profile: "https_web".into(),
        ..Default::default()
    };
    let cases: Vec<(adm::Federation, Vec<u8>, &str)> = vec![
        (
            adm::Federation {
                bundle_endpoint_url: "http://127.0.0.1:1/bundle".into(),
                ..base.clone()
            },
            vec![],
            "bundle_endpoint_url",
        ),
        (
            adm::Federation {
                bundle_endpoint_url: "https://user:secret@127.0.0.1/b".into(),
                ..base.clone()
            },
            vec![],
            "bundle_endpoint_url",
        ),
        (
            adm::Federation {
                profile: "https".into(),
                ..base.clone()
            },
            vec![],
            "profile",
        ),
        (
            adm::Federation {
                trust_domain: EXAMPLE.into(),
                ..base.clone()
            },
            vec![],
            "own trust domain",
        ),
        (
            adm::Federation {
                profile: "https_spiffe".into(),
                endpoint_spiffe_id: format!("spiffe://{OTHER}/x"),
                ..base.clone()
            },
            vec![],
            "bootstrap_bundle: required",
        ),
        (base.clone(), b"{not a bundle".to_vec(), "bootstrap_bundle"),
    ];
    for (federation, bootstrap, expected) in cases {
        let message = bad(federation, bootstrap).await;
        assert!(message.contains(expected), "{expected}: {message}");
        assert!(!message.contains("secret"), "{message}");
    }
    let listed = admin()
        .await
        .list_federations(adm::Empty {})
        .await
        .unwrap()
        .into_inner()
        .federations;
    assert_eq!(listed.len(), 1);
}

/// Serves `bundle` over https_web with `cert`, one answer per connection.
async fn web_endpoint(
    cert: &fake_tls::ServingCertificate,
    body: Arc<std::sync::Mutex<Vec<u8>>>,
) -> SocketAddr {
    let acceptor = cert.acceptor(&[b"http/1.1"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let body = body.lock().unwrap().clone();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = tls.write_all(head.as_bytes()).await;
            let _ = tls.write_all(&body).await;
            let _ = tls.shutdown().await;
        }
    });
    address
}

/// A bundle of OTHER with `sequence`, its roots from `issuer`.
fn sequenced(issuer: &TestIssuer, sequence: u64) -> Vec<u8> {
    let mut bundle = issuer.bundle();
    bundle.set_sequence(sequence);
    bundle.to_jwks_json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_web_checks_the_certificate_and_an_older_bundle_is_refused() {
    // The Web PKI roots are the system's; this test's CA stands in for a
    // public one through SSL_CERT_FILE, as an operator's private CA would.
    let cert = fake_tls::ServingCertificate::generate(
        "Example Web PKI Root",
        "bundles.example-other.org",
        &["localhost"],
        &[[127, 0, 0, 1]],
    );
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("roots.pem");
    std::fs::write(&ca_file, &cert.ca_pem).unwrap();
    // Only this test in this binary fetches over https_web.
    std::env::set_var("SSL_CERT_FILE", &ca_file);

    let source = TestIssuer::start_with(Arc::new(sigil_issuer::clock::SystemClock), |c| {
        c.trust_domain = TrustDomain::new(OTHER).unwrap();
    })
    .await;
    let served = Arc::new(std::sync::Mutex::new(sequenced(&source, 5)));
    let address = web_endpoint(&cert, served.clone()).await;
    let example = TestIssuer::start().await;
    let create = |url: String| {
        let example = &example;
        async move {
            example
                .admin()
                .await
                .create_federation(adm::FederationRequest {
                    federation: Some(adm::Federation {
                        trust_domain: OTHER.into(),
                        bundle_endpoint_url: url,
                        profile: "https_web".into(),
                        ..Default::default()
                    }),
                    bootstrap_bundle: Vec::new(),
                })
                .await
                .unwrap()
        }
    };
    let refresh = || async {
        example
            .admin()
            .await
            .refresh_federation(adm::TrustDomainRequest {
                trust_domain: OTHER.into(),
            })
            .await
    };
    create(format!("https://localhost:{}/bundle", address.port())).await;
    let fetched = refresh().await.unwrap().into_inner();
    let held = fetched.bundle.unwrap();
    assert_eq!((held.sequence, held.origin.as_str()), (5, "endpoint"));

    // An older bundle (a lower sequence) is refused; the held one stays,
    // and the refusal is in the event log.
    *served.lock().unwrap() = sequenced(&source, 3);
    let after = refresh().await.unwrap().into_inner();
    assert_eq!(after.bundle.as_ref().unwrap().sequence, 5);
    assert!(after.last_error.contains("older"), "{after:?}");
    let event = example
        .wait_for_event("the refusal", |e| e["type"] == "foreign_bundle.refused")
        .await;
    assert_eq!(event["details"]["held_sequence"], 5, "{event}");
    assert_eq!(event["details"]["fetched_sequence"], 3, "{event}");
    // A newer one replaces it.
    *served.lock().unwrap() = sequenced(&source, 6);
    let after = refresh().await.unwrap().into_inner();
    assert_eq!(after.bundle.unwrap().sequence, 6);

    // A certificate the Web PKI roots do not vouch for is refused.
    let untrusted = fake_tls::ServingCertificate::generate(
        "Someone Else",
        "bundles.example-other.org",
        &["localhost"],
        &[[127, 0, 0, 1]],
    );
    let rogue = web_endpoint(&untrusted, served.clone()).await;
    example
        .admin()
        .await
        .update_federation(adm::FederationRequest {
            federation: Some(adm::Federation {
                trust_domain: OTHER.into(),
                bundle_endpoint_url: format!("https://localhost:{}/bundle", rogue.port()),
                profile: "https_web".into(),
                ..Default::default()
            }),
            bootstrap_bundle: Vec::new(),
        })
        .await
        .unwrap();
    let refused = refresh().await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("UnknownIssuer"), "{refused:?}");
}

/// `sigil-issuer ARGS` against the issuer's admin socket.
async fn cli(issuer: &TestIssuer, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(binary("sigil-issuer"));
    cmd.args(args)
        .env("SIGIL_ADMIN_SOCKET", &issuer.running.admin_socket_path);
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_relationships_and_foreign_bundles() {
    let example = domain(EXAMPLE).await;
    let federated = domain(FEDERATED).await;
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("federated.json");
    std::fs::write(&bootstrap, federated.issuer.bundle().to_jwks_json()).unwrap();
    let url = endpoint_url(&federated.issuer);
    let endpoint_id = format!("spiffe://{FEDERATED}/sigil/issuer");
    let issuer = &example.issuer;

    let (ok, out, err) = cli(
        issuer,
        &[
            "federation",
            "create",
            "--trust-domain",
            FEDERATED,
            "--bundle-endpoint-url",
            &url,
            "--profile",
            "https_spiffe",
            "--endpoint-spiffe-id",
            &endpoint_id,
            "--bootstrap-bundle",
            bootstrap.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["profile"], "https_spiffe");
    assert_eq!(created["bundle"]["origin"], "bootstrap");

    let (ok, out, err) = cli(
        issuer,
        &["federation", "refresh", "--trust-domain", FEDERATED],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("Bundle           : sequence"), "{out}");
    assert!(out.contains("endpoint at"), "{out}");
    let (ok, out, _) = cli(issuer, &["federation", "list", "--json"]).await;
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["trust_domain"], FEDERATED);

    // The held bundle, as PEM: the federated domain's roots.
    let (ok, pem, _) = cli(issuer, &["bundle", "show", "--trust-domain", FEDERATED]).await;
    assert!(ok);
    assert_eq!(pem, federated.issuer.bundle().x509_pem());
    // This trust domain's own bundle is still `bundle show`.
    let (ok, own, _) = cli(issuer, &["bundle", "show"]).await;
    assert!(ok);
    assert_eq!(own, issuer.bundle().x509_pem());

    // A static bundle for a domain without a relationship, from PEM.
    let pem_file = dir.path().join("other.pem");
    std::fs::write(&pem_file, federated.issuer.bundle().x509_pem()).unwrap();
    let (ok, out, err) = cli(
        issuer,
        &[
            "bundle",
            "set",
            "--trust-domain",
            OTHER,
            "--path",
            pem_file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("Origin           : operator"), "{out}");
    let (ok, out, _) = cli(issuer, &["bundle", "list", "--json"]).await;
    assert!(ok);
    let held: serde_json::Value = serde_json::from_str(&out).unwrap();
    let domains: Vec<&str> = held
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["trust_domain"].as_str().unwrap())
        .collect();
    assert_eq!(domains, [FEDERATED, OTHER]);
    let (ok, _, _) = cli(issuer, &["bundle", "delete", "--trust-domain", OTHER]).await;
    assert!(ok);

    // Mistakes are refused, naming the field, and change nothing.
    let (ok, _, err) = cli(
        issuer,
        &[
            "federation",
            "update",
            "--trust-domain",
            FEDERATED,
            "--bundle-endpoint-url",
            "http://127.0.0.1:1/bundle",
            "--profile",
            "https_spiffe",
            "--endpoint-spiffe-id",
            &endpoint_id,
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("bundle_endpoint_url"), "{err}");
    let (ok, _, err) = cli(issuer, &["bundle", "show", "--trust-domain", OTHER]).await;
    assert!(!ok);
    assert!(err.contains("NotFound"), "{err}");

    let (ok, out, err) = cli(
        issuer,
        &["federation", "delete", "--trust-domain", FEDERATED],
    )
    .await;
    assert!(ok, "{out}{err}");
    let (ok, out, _) = cli(issuer, &["federation", "list"]).await;
    assert!(ok);
    assert!(out.contains("Found 0 federation relationships"), "{out}");
    // Every change is in the signed event log.
    for kind in [
        "federation.created",
        "foreign_bundle.updated",
        "foreign_bundle.deleted",
        "federation.deleted",
    ] {
        issuer.wait_for_event(kind, |e| e["type"] == kind).await;
    }
}
