//! WIMSE end to end: a real issuer signs WIT-SVIDs, a real agent serves them
//! over the Workload API and rotates them, and the `sigil-agent` commands
//! mint and verify proofs.

use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine;
use proto::workload as pb;
use sigil_tests::web::*;
use sigil_tests::*;
use workload_api::client::{connect, EndpointAddress, WorkloadClient};
use workload_api::keypair::KeyPair;
use workload_api::wimse::wpt::{self, BoundTokens};
use workload_api::wimse::{Presented, Verifier, VerifierConfig};
use workload_api::{Bundle, TrustDomain};

const WEB: &str = "spiffe://example.org/web";

async fn client(node: &TestNode) -> WorkloadClient {
    connect(&EndpointAddress::Unix(node.socket.clone()))
        .await
        .unwrap()
}

fn json_part(token: &str, index: usize) -> serde_json::Value {
    let part = token.split('.').nth(index).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn the_agent_serves_wit_svids_that_verify_and_rotate() {
    let node = TestNode::start_with(|config| {
        config.default_wit_svid_ttl = Duration::from_secs(4);
    })
    .await;
    node.register(WEB, 3600, "internal").await;
    let mut client = client(&node).await;
    let mut stream = client
        .fetch_witsvid(pb::WitsvidRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.svids.len(), 1);
    let svid = &first.svids[0];
    assert_eq!(
        (svid.spiffe_id.as_str(), svid.hint.as_str()),
        (WEB, "internal")
    );

    // The WIT-SVID profile: typ, kid, alg; sub, exp, iat, jti, cnf.jwk with
    // alg; no aud. Its cnf key is the private key handed over.
    let header = json_part(&svid.wit_svid, 0);
    assert_eq!(header["typ"], "wit+jwt");
    assert_eq!(header["alg"], "ES256");
    assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()));
    let claims = json_part(&svid.wit_svid, 1);
    assert_eq!(claims["sub"], WEB);
    assert!(claims.get("aud").is_none(), "{claims}");
    for claim in ["exp", "iat", "jti"] {
        assert!(claims.get(claim).is_some(), "{claim} missing: {claims}");
    }
    let key = KeyPair::from_jwk_json(&svid.wit_svid_key).unwrap();
    assert_eq!(
        serde_json::to_value(key.public_jwk()).unwrap(),
        claims["cnf"]["jwk"]
    );
    assert_eq!(claims["cnf"]["jwk"]["alg"], "ES256");

    // The WIT bundle carries only wit-svid keys; the JWT bundle none of them.
    let wit_bundles = first_message(client.fetch_wit_bundles(pb::WitBundlesRequest {}).await).await;
    let jwks: serde_json::Value =
        serde_json::from_str(&wit_bundles.bundles["spiffe://example.org"]).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(!keys.is_empty() && keys.iter().all(|k| k["use"] == "wit-svid"));
    let jwt_bundles = first_message(client.fetch_jwt_bundles(pb::JwtBundlesRequest {}).await).await;
    let jwt_jwks: serde_json::Value =
        serde_json::from_slice(&jwt_bundles.bundles["spiffe://example.org"]).unwrap();
    assert!(jwt_jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["use"] == "jwt-svid"));

    // A proof made with the handed-over key verifies against that bundle.
    let bundle = Bundle::from_jwks_json(
        TrustDomain::new("example.org").unwrap(),
        wit_bundles.bundles["spiffe://example.org"].as_bytes(),
    )
    .unwrap();
    let verifier = Verifier::new(VerifierConfig::new(vec!["https://db.example.org".into()]));
    verifier.set_bundle(bundle);
    let proof = wpt::mint(
        &svid.wit_svid,
        &key,
        "https://db.example.org/rows",
        60,
        &BoundTokens::default(),
        unix_now(),
    );
    let no_headers = |_: &str| None;
    let presented = Presented {
        wit: &svid.wit_svid,
        wpt: &proof,
        path: Some("/rows"),
        authorization: None,
        txn_token: None,
        header: &no_headers,
    };
    let verified = verifier.verify(&presented, SystemTime::now()).unwrap();
    assert_eq!(verified.spiffe_id().unwrap().to_string(), WEB);

    // Rotation at half of the 4 s life arrives on the open stream, with a
    // new key.
    let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a rotated WIT in time")
        .unwrap()
        .unwrap();
    assert_ne!(next.svids[0].wit_svid, svid.wit_svid);
    assert_ne!(next.svids[0].wit_svid_key, svid.wit_svid_key);

    // Another SPIFFE ID than the caller's entries: PermissionDenied.
    let err = client
        .fetch_witsvid(pb::WitsvidRequest {
            spiffe_id: "spiffe://example.org/other".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

// draft-ietf-wimse-workload-creds / draft-ietf-wimse-wpt published examples.
const EXAMPLE_WIT: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6Ikp1bmUgNSIsInR5cCI6IndpdCtqd3QifQ.eyJjbmYiOnsiandrIjp7ImFsZyI6IkVkRFNBIiwiY3J2IjoiRWQyNTUxOSIsImt0eSI6Ik9LUCIsIngiOiIxQ1hYdmZsTl9MVlZzSXNZWHNVdkIwM0ptbEdXZUNIcVFWdW91Q0Y5MmJnIn19LCJleHAiOjE3NDU1MTI1MTAsImlhdCI6MTc0NTUwODkxMCwianRpIjoieC1fMUNUTDJjY2EzQ1NFNGN3Yl9sIiwic3ViIjoid2ltc2U6Ly9leGFtcGxlLmNvbS9zcGVjaWZpYy13b3JrbG9hZCJ9.6KraSQUxWdl9dxFQ3Fj6dPY0Vi88OkwFwZpAIOhLeq6AbXAnLLQgOp8U9UDGcBuYF3KiNv6oKQD1ZWAzrMZOJw";
const EXAMPLE_WPT: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IndwdCtqd3QifQ.eyJhdGgiOiJDTDR3amZwUm1OZi1iZFlJYllMblY5ZDVyTUFSR3dLWUUxMHdVd3pDMGpJIiwiYXVkIjoiaHR0cHM6Ly93b3JrbG9hZC5leGFtcGxlLmNvbS9wYXRoIiwiZXhwIjoxNzQ1NTEwMDE2LCJqdGkiOiJfX2J3YzRFU0MzYWNjMkxUQzEtX3giLCJ3dGgiOiJBYVlVZkMzNEQxZGkyRnhRTHBpSUpKN1NnOFZaNm84T0Nkd1NmOUlUb0xnIn0.PI7d9AcYhLoEgPgbJvcM132lkBKnM1NXU-5hZUzVTIyj2dRJaTLFs6e5NYv5gg6AqcV7NvkYCwfgMgWasWQzCA";

#[tokio::test]
async fn cli_fetches_mints_and_verifies() {
    let node = TestNode::start().await;
    node.register(WEB, 3600, "").await;
    let endpoint = node.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_owned();
    let (first_results, authorization_results) =
        tokio::task::spawn_blocking(move || {
            let agent = |args: &[&str]| {
                run(Command::new(binary("sigil-agent"))
                    .args(args)
                    .env("SPIFFE_ENDPOINT_SOCKET", &endpoint))
            };
            let fetched = agent(&["api", "fetch", "wit", "--write", dir_path.to_str().unwrap()]);
            let minted = agent(&[
                "wpt", "mint", "--form", "header", "--audience", "https://db.example.org/rows",
            ]);
            let header = |name: &str| {
                minted
                    .1
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            let (wit, proof) = (header("Workload-Identity-Token:"), header("Workload-Proof-Token:"));
            let verify = |audience: &str| {
                agent(&[
                    "wpt", "verify", "--audience", audience, "--wit", &wit, "--wpt", &proof,
                ])
            };
            let verified = verify("https://db.example.org/rows");
            let wrong_audience = verify("https://other.example.org/rows");

            // The Authorization form (the default): its header, verified.
            let minted_authorization =
                agent(&["wpt", "mint", "--audience", "https://db.example.org/rows"]);
            let authorization = minted_authorization
                .1
                .lines()
                .find_map(|l| l.strip_prefix("Authorization: "))
                .unwrap_or_default()
                .to_owned();
            let verified_authorization = agent(&[
                "wpt", "verify", "--audience", "https://db.example.org/rows", "--wit", &wit,
                "--form", "authorization", "--wpt", &authorization,
            ]);
            let no_access_token = agent(&[
                "wpt", "mint", "--audience", "https://db.example.org/rows",
                "--access-token", "at-1",
            ]);
            let minted_json = agent(&[
                "wpt", "mint", "--json", "--audience", "https://db.example.org/rows",
            ]);

            // The published examples, against a bundle file holding the
            // example issuer key, with the clock set before their exp.
            let bundle = dir_path.join("example-bundle.json");
            std::fs::write(
                &bundle,
                r#"{"keys":[{"kty":"EC","use":"wit-svid","kid":"June 5","crv":"P-256","x":"kXqnA2Op7hgd4zRMbw0iFcc_hDxUxhojxOFVGjE2gks","y":"n__VndPMR021-59UAs0b9qDTFT-EZtT6xSNs_xFskLo"}]}"#,
            )
            .unwrap();
            let verify_example = |wpt: &str| {
                agent(&[
                    "wpt", "verify", "--profile", "wimse",
                    "--audience", "https://workload.example.com/path",
                    "--wit", EXAMPLE_WIT, "--wpt", wpt,
                    "--bundle", bundle.to_str().unwrap(),
                    "--now", "1745509900",
                    "--access-token", "16_mAd0GiwaZokU26_0902100",
                ])
            };
            let example = verify_example(EXAMPLE_WPT);
            let mut changed = EXAMPLE_WPT.to_owned();
            changed.replace_range(90..91, if &EXAMPLE_WPT[90..91] == "A" { "B" } else { "A" });
            let tampered = verify_example(&changed);
            (
                (fetched, minted, verified, wrong_audience, example, tampered),
                (
                    minted_authorization,
                    authorization,
                    verified_authorization,
                    no_access_token,
                    minted_json,
                ),
            )
        })
        .await
        .unwrap();
    let (
        (fetched, minted, verified, wrong_audience, example, tampered),
        (minted_authorization, authorization, verified_authorization, no_access_token, minted_json),
    ) = (first_results, authorization_results);
    assert!(minted_authorization.0, "mint: {minted_authorization:?}");
    assert!(
        authorization.starts_with("WPT ey"),
        "{minted_authorization:?}"
    );
    assert!(
        !minted_authorization.1.contains("Workload-Proof-Token"),
        "{}",
        minted_authorization.1
    );
    assert!(
        verified_authorization.0,
        "verify --form authorization: {verified_authorization:?}"
    );
    assert!(!no_access_token.0);
    assert!(
        no_access_token.2.contains("--form header"),
        "{}",
        no_access_token.2
    );
    assert!(minted_json.0, "{minted_json:?}");
    let json: serde_json::Value = serde_json::from_str(minted_json.1.trim()).unwrap();
    assert_eq!(json["form"], "authorization");
    assert_eq!(
        json["authorization"],
        format!("WPT {}", json["workload_proof_token"].as_str().unwrap())
    );

    assert!(fetched.0, "fetch wit: {fetched:?}");
    assert!(fetched.1.contains(WEB), "{}", fetched.1);
    let key_file = dir.path().join("wit.key.jwk");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    KeyPair::from_jwk_json(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    assert!(minted.0, "mint: {minted:?}");
    assert!(verified.0, "verify: {verified:?}");
    assert!(
        verified.1.contains(&format!("Subject   : {WEB}")),
        "{}",
        verified.1
    );
    assert!(!wrong_audience.0);
    assert!(wrong_audience.2.contains("wpt.aud"), "{}", wrong_audience.2);
    assert!(example.0, "example: {example:?}");
    assert!(
        example.1.contains("wimse://example.com/specific-workload"),
        "{}",
        example.1
    );
    assert!(!tampered.0);
    assert!(tampered.2.contains("wpt."), "{}", tampered.2);
}

async fn http_get(address: &str, path: &str, headers: &http::HeaderMap) -> (u16, String, String) {
    let answer = http_call(address, "GET", path, headers, b"").await;
    (answer.status, answer.content_type().to_owned(), answer.body)
}

/// A verifier for `audience` trusting the WIT bundles the Workload API gives.
async fn verifier_for(node: &TestNode, audience: &str) -> Verifier {
    let bundles = first_message(
        client(node)
            .await
            .fetch_wit_bundles(pb::WitBundlesRequest {})
            .await,
    )
    .await;
    let verifier = Verifier::new(VerifierConfig::new(vec![audience.into()]));
    for (id, json) in &bundles.bundles {
        let td = TrustDomain::new(id.strip_prefix("spiffe://").unwrap()).unwrap();
        verifier.set_bundle(Bundle::from_jwks_json(td, json.as_bytes()).unwrap());
    }
    verifier
}

/// The caller's first WIT-SVID and its key.
async fn fetch_wit(node: &TestNode) -> (String, KeyPair) {
    let response = first_message(
        client(node)
            .await
            .fetch_witsvid(pb::WitsvidRequest::default())
            .await,
    )
    .await;
    let svid = &response.svids[0];
    (
        svid.wit_svid.clone(),
        KeyPair::from_jwk_json(&svid.wit_svid_key).unwrap(),
    )
}

/// A node with WEB registered for this process, its WIT and key, and the
/// example service running against the node's Workload API.
async fn node_and_service() -> (TestNode, String, KeyPair, ExampleService) {
    let node = TestNode::start().await;
    node.register(WEB, 3600, "").await;
    let (wit, key) = fetch_wit(&node).await;
    let endpoint = node.endpoint();
    let service = tokio::task::spawn_blocking(move || ExampleService::start(endpoint))
        .await
        .unwrap();
    (node, wit, key, service)
}

#[tokio::test]
async fn a_workload_calls_the_example_service_with_a_proof_in_either_form() {
    use workload_api::wimse::WptForm;
    let (_node, wit, key, service) = node_and_service().await;
    let proof_headers = |form: WptForm, audience: &str| {
        let mut headers = http::HeaderMap::new();
        workload_api::wimse::http::add_proof_headers_as(
            form,
            &mut headers,
            &wit,
            &key,
            audience,
            60,
            &[],
            unix_now(),
        )
        .unwrap();
        headers
    };
    let challenge = |answer: &Answer| {
        answer
            .headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
    };

    // wpt-02 answers a refused Authorization-form WPT with 401 and a WPT
    // challenge; wpt-01's header form keeps 400.
    for (form, refused, expected_challenge) in [
        (WptForm::Authorization, 401, Some("WPT")),
        (WptForm::Header, 400, None),
    ] {
        let headers = proof_headers(form, "https://orders.example.org/orders");
        assert_eq!(
            headers.contains_key("authorization"),
            form == WptForm::Authorization
        );
        let (status, _, body) = http_get(&service.address, "/orders", &headers).await;
        assert_eq!(status, 200, "{form}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["caller"], WEB);

        // The identical request again: the proof was used.
        let answer = http_call(&service.address, "GET", "/orders", &headers, b"").await;
        assert_eq!(answer.status, refused, "{form}: {}", answer.body);
        assert_eq!(challenge(&answer).as_deref(), expected_challenge, "{form}");
        assert_eq!(answer.content_type(), "application/problem+json");
        let problem: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(problem["check"], "wpt.jti", "{problem}");
        assert_eq!(problem["status"], refused);
        assert!(
            problem["detail"].as_str().unwrap().contains(WEB),
            "{problem}"
        );

        // A proof for another path.
        let elsewhere = proof_headers(form, "https://orders.example.org/refunds");
        let answer = http_call(&service.address, "GET", "/orders", &elsewhere, b"").await;
        assert_eq!(answer.status, refused, "{form}");
        assert!(answer.body.contains("wpt.aud"), "{}", answer.body);
    }

    // No proof at all: the service (both forms) asks for the WPT scheme.
    let answer = http_call(
        &service.address,
        "GET",
        "/orders",
        &http::HeaderMap::new(),
        b"",
    )
    .await;
    assert_eq!(
        (answer.status, challenge(&answer).as_deref()),
        (401, Some("WPT"))
    );
    assert!(answer.body.contains("header.missing"), "{}", answer.body);

    // Both forms in one request.
    let mut both = proof_headers(WptForm::Authorization, "https://orders.example.org/orders");
    both.insert(
        "workload-proof-token",
        proof_headers(WptForm::Header, "https://orders.example.org/orders")["workload-proof-token"]
            .clone(),
    );
    let answer = http_call(&service.address, "GET", "/orders", &both, b"").await;
    assert_eq!(answer.status, 401);
    assert!(
        answer.body.contains("request.both_forms"),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn python_spiffe_pyjwt_and_httpx_call_the_service_with_an_authorization_wpt() {
    let (node, _wit, _key, service) = node_and_service().await;
    let script = workspace_root().join("tests/python/wpt_authorization_client.py");
    let endpoint = node.endpoint();
    let url = format!("http://{}/orders", service.address);
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run(Command::new(python()).arg(&script).args([
            endpoint.as_str(),
            url.as_str(),
            "https://orders.example.org/orders",
        ]))
    })
    .await
    .unwrap();
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("verified {WEB}")), "{stdout}");
    assert!(
        stdout.contains("ok   the identical request is refused with 401"),
        "{stdout}"
    );
}

#[tokio::test]
async fn python_pyjwt_verifies_a_sigil_wit_and_wpt_step_by_step() {
    let node = TestNode::start().await;
    node.register(WEB, 3600, "").await;
    let (wit, key) = fetch_wit(&node).await;
    let bundles = first_message(
        client(&node)
            .await
            .fetch_wit_bundles(pb::WitBundlesRequest {})
            .await,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.json");
    std::fs::write(&bundle, &bundles.bundles["spiffe://example.org"]).unwrap();
    let audience = "https://orders.example.org/orders";
    let proof = wpt::mint(
        &wit,
        &key,
        audience,
        60,
        &BoundTokens::default(),
        unix_now(),
    );
    let script = workspace_root().join("tests/python/verify_wimse.py");
    let check = |wpt: &str| {
        run(Command::new(python())
            .arg(&script)
            .arg(&bundle)
            .args([wit.as_str(), wpt, audience]))
    };
    let (ok, stdout, stderr) = check(&proof);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("verified {WEB}")), "{stdout}");
    assert!(
        stdout.contains("ok   WPT wth is the hash of the WIT"),
        "{stdout}"
    );
    // A proof from another key does not pass the independent check.
    let stranger = KeyPair::generate(workload_api::jwk::Algorithm::ES256).unwrap();
    let forged = wpt::mint(
        &wit,
        &stranger,
        audience,
        60,
        &BoundTokens::default(),
        unix_now(),
    );
    let (ok, _, stderr) = check(&forged);
    assert!(!ok);
    assert!(stderr.contains("WPT signature"), "{stderr}");
}

#[tokio::test]
async fn a_workload_calls_the_example_service_with_a_signed_request_and_gets_a_signed_answer() {
    use workload_api::wimse::httpsig::{RequestSigning, RequestView, ResponseView};
    let (node, wit, key, service) = node_and_service().await;

    let body = br#"{"item":"ice cream","flavor":"vanilla"}"#;
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let signing = RequestSigning {
        audience: "https://orders.example.org/orders".into(),
        lifetime_secs: 60,
        sign_response: true,
        now: unix_now(),
    };
    let nonce = workload_api::wimse::http::sign_http_request(
        "POST",
        "/orders",
        &mut headers,
        body,
        &wit,
        &key,
        &signing,
    )
    .unwrap();
    let answer = http_call(&service.address, "POST", "/orders", &headers, body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(json["caller"], WEB);
    assert_eq!(json["proof"], "http-signature");
    assert_eq!(json["accepted"]["flavor"], "vanilla");

    // The answer is signed by the service's own WIT, for this request.
    let verifier = verifier_for(&node, "https://orders.example.org").await;
    let response_wit = answer.headers["workload-identity-token"].to_str().unwrap();
    let request_view = RequestView {
        method: "POST",
        target: "/orders",
        headers: &headers,
    };
    let response = ResponseView {
        status: answer.status,
        headers: &answer.headers,
        request: request_view,
    };
    let responder = verifier
        .verify_signed_response(
            response_wit,
            &response,
            answer.body.as_bytes(),
            &nonce,
            SystemTime::now(),
        )
        .unwrap();
    assert_eq!(responder.subject, WEB);
    let err = verifier
        .verify_signed_response(response_wit, &response, b"{}", &nonce, SystemTime::now())
        .unwrap_err();
    assert_eq!(err.check(), "httpsig.digest");
    let err = verifier
        .verify_signed_response(
            response_wit,
            &response,
            answer.body.as_bytes(),
            "other",
            SystemTime::now(),
        )
        .unwrap_err();
    assert_eq!(err.check(), "httpsig.req_nonce");

    // The same signed request again: its nonce was used.
    let again = http_call(&service.address, "POST", "/orders", &headers, body).await;
    assert_eq!(again.status, 400);
    assert!(again.body.contains("httpsig.nonce"), "{}", again.body);
    // A fresh signature but a body that is not the one digested.
    let mut fresh = http::HeaderMap::new();
    fresh.insert("content-type", "application/json".parse().unwrap());
    workload_api::wimse::http::sign_http_request(
        "POST", "/orders", &mut fresh, body, &wit, &key, &signing,
    )
    .unwrap();
    let tampered = http_call(
        &service.address,
        "POST",
        "/orders",
        &fresh,
        br#"{"item":"ice cream","flavor":"pistachio"}"#,
    )
    .await;
    assert_eq!(tampered.status, 400);
    assert!(
        tampered.body.contains("httpsig.digest"),
        "{}",
        tampered.body
    );
}

#[tokio::test]
async fn wit_key_algorithms_and_the_issuer_claim_are_configurable() {
    use sigil_issuer::ca::keys::KeyType;
    use workload_api::jwk::Algorithm;
    let mut node = TestNode::start_with(|config| {
        config.wit_issuer = Some("https://sigil.example.org".into());
        config.wit_key_type = KeyType::Rsa2048;
    })
    .await;
    node.register(WEB, 3600, "").await;
    for (alg, kty) in [
        (Algorithm::PS256, "RSA"),
        (Algorithm::RS256, "RSA"),
        (Algorithm::ES384, "EC"),
    ] {
        node.restart_agent_with(|config| config.wit_key_alg = alg)
            .await;
        node.wait_for_svids(1).await;
        let (wit, key) = fetch_wit(&node).await;
        // The issuer signs with its RSA WIT key and sets the configured iss.
        assert_eq!(json_part(&wit, 0)["alg"], "RS256");
        let claims = json_part(&wit, 1);
        assert_eq!(claims["iss"], "https://sigil.example.org");
        assert_eq!(claims["cnf"]["jwk"]["alg"], alg.name());
        assert_eq!(claims["cnf"]["jwk"]["kty"], kty);
        assert_eq!(key.algorithm(), alg);

        let verifier = verifier_for(&node, "https://db.example.org").await;
        let proof = wpt::mint(
            &wit,
            &key,
            "https://db.example.org/rows",
            60,
            &BoundTokens::default(),
            unix_now(),
        );
        assert_eq!(json_part(&proof, 0)["alg"], alg.name());
        let no_headers = |_: &str| None;
        let presented = Presented {
            wit: &wit,
            wpt: &proof,
            path: Some("/rows"),
            authorization: None,
            txn_token: None,
            header: &no_headers,
        };
        let verified = verifier.verify(&presented, SystemTime::now()).unwrap();
        assert_eq!(verified.subject(), WEB, "{alg:?}");
    }
}
