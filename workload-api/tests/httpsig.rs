//! HTTP Message Signatures for WIMSE: the published signed request and
//! response verify, changes to them fail, and Sigil's own signatures round
//! trip with every rule of the profile enforced.

use base64::Engine;
use http::{HeaderMap, HeaderValue};
use workload_api::jwk::{Algorithm, Jwk, PublicKey};
use workload_api::keypair::KeyPair;
use workload_api::wimse::httpsig::{
    self, check_content_digest, content_digest, HttpSigError, RequestView, ResponseView, TimePolicy,
};

// draft-ietf-wimse-http-signature examples (includes/sigs-request.txt,
// sigs-response.txt, sigs-svca-jwk.txt, sigs-svcb-jwk.txt).
const REQUEST_WIT: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6Imlzc3Vlci1rZXkiLCJ0eXAiOiJ3aXQrand0In0.eyJjbmYiOnsiandrIjp7ImFsZyI6IkVkRFNBIiwiY3J2IjoiRWQyNTUxOSIsImtpZCI6InN2Yy1hLWtleSIsImt0eSI6Ik9LUCIsIngiOiJaamxWVDRDT3NDa1FPOUhJbzZ0RFdBWGF5UTBNeW1vRlVLSlJJUTdTOFI4In19LCJleHAiOjE3ODUxNTYwOTcsImlhdCI6MTc4NTE1NTc5NywiaXNzIjoiaHR0cHM6Ly9leGFtcGxlLmNvbS9pc3N1ZXIiLCJqdGkiOiJ3aXQtMTc4NTE1NTc5NzIxNjU0NTcxOSIsInN1YiI6IndpbXNlOi8vZXhhbXBsZS5jb20vc3ZjQSJ9.BqJfcsbrYlS9GSQ7NpFBBVz4CeszShqleIyr2sSnd0Ic6l2HXX27giZcdAOGnXjtv_7h-9vV16GZbVcrQt6hCg";
const REQUEST_SIGNATURE: &str = "wimse=:zSK+kx5EnoZct9FZ6LMYzfx0mk32oI/hHpB7y4rgHxkRDcAA72yBW5xgzA03nKviXLjL7nphq840Uwznp6IKAw==:";
const REQUEST_SIGNATURE_INPUT: &str = r#"wimse=("@method" "@request-target" "workload-identity-token");created=1785155797;expires=1785156097;nonce="abcd1111";tag="wimse-workload-to-workload";wimse-aud="https://svcb.example.com/gimme-ice-cream";wimse-sign-response"#;
const RESPONSE_WIT: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6Imlzc3Vlci1rZXkiLCJ0eXAiOiJ3aXQrand0In0.eyJjbmYiOnsiandrIjp7ImFsZyI6IkVkRFNBIiwiY3J2IjoiRWQyNTUxOSIsImtpZCI6InN2Yy1iLWtleSIsImt0eSI6Ik9LUCIsIngiOiJsQnRMUzhjTnRfN3BXc2RpMnhneDc2MGxXcHpFdnFZZTJEcFNrOUVMSDJ3In19LCJleHAiOjE3ODUxNTYwOTksImlhdCI6MTc4NTE1NTc5OSwiaXNzIjoiaHR0cHM6Ly9leGFtcGxlLmNvbS9pc3N1ZXIiLCJqdGkiOiJ3aXQtMTc4NTE1NTc5NzIxNjY3MDUxOCIsInN1YiI6IndpbXNlOi8vZXhhbXBsZS5jb20vc3ZjQiJ9.HIAU2288ryXoym1M9fnKZqd0p2Vl7spOh-FY2jCFY-05H74-WPUFWrg5lH5f2rHl47TfxEGri3fmMP4zhYzeAw";
const RESPONSE_SIGNATURE: &str = "wimse=:57ZChndLoz5toS+/0RGeQJG53gLrZD/bBterOWnHF1vb0cdceeUOKH/t4A+/bvquC/0VCb5DYFRdFNz4CW8yBQ==:";
const RESPONSE_SIGNATURE_INPUT: &str = r#"wimse=("@status" "workload-identity-token" "content-type" "content-digest" "@method";req "@request-target";req);created=1785155797;expires=1785156099;nonce="abcd2222";tag="wimse-workload-to-workload";wimse-req-nonce="abcd1111""#;
const RESPONSE_BODY: &[u8] = b"No ice cream today.\n\n";
const SVC_A: &str = r#"{"alg":"EdDSA","crv":"Ed25519","d":"HQdG2ekHF4COyoHNYvCh2fMHhIaKvkrStjmyfndFyGI","kid":"svc-a-key","kty":"OKP","x":"ZjlVT4COsCkQO9HIo6tDWAXayQ0MymoFUKJRIQ7S8R8"}"#;
const NOW: u64 = 1_785_155_900;

fn time(now: u64) -> TimePolicy {
    TimePolicy {
        now,
        skew: 30,
        max_lifetime: 300,
    }
}

/// The `cnf.jwk` of a WIT, read without validating the WIT (the examples'
/// issuer key is not published; the signature check is what is tested).
fn cnf_key(wit: &str) -> PublicKey {
    let claims = wit.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    let jwk: Jwk = serde_json::from_value(claims["cnf"]["jwk"].clone()).unwrap();
    PublicKey::from_jwk(&jwk).unwrap()
}

fn example_request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("svcb.example.com"));
    headers.insert("signature", HeaderValue::from_static(REQUEST_SIGNATURE));
    headers.insert(
        "signature-input",
        HeaderValue::from_static(REQUEST_SIGNATURE_INPUT),
    );
    headers.insert(
        "workload-identity-token",
        HeaderValue::from_static(REQUEST_WIT),
    );
    headers
}

const EXAMPLE_TARGET: &str = "/gimme-ice-cream?flavor=vanilla";

fn verify_example_request(
    headers: &HeaderMap,
    method: &str,
    target: &str,
) -> Result<httpsig::CheckedSignature, HttpSigError> {
    httpsig::verify_request(
        &RequestView {
            method,
            target,
            headers,
        },
        &cnf_key(REQUEST_WIT),
        Algorithm::EdDSA,
        |aud: &str| aud == "https://svcb.example.com/gimme-ice-cream",
        time(NOW),
    )
}

#[test]
fn the_published_signed_request_and_response_verify() {
    let request_headers = example_request_headers();
    let checked = verify_example_request(&request_headers, "GET", EXAMPLE_TARGET).unwrap();
    assert_eq!(checked.nonce, "abcd1111");
    assert!(checked.sign_response);

    let mut headers = HeaderMap::new();
    headers.insert("connection", HeaderValue::from_static("close"));
    headers.insert(
        "content-digest",
        HeaderValue::from_static("sha-256=:UHKweBl9cpjdVqgTB65El8SexXlJYGG+XIslAYqC1mY=:"),
    );
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.insert("signature", HeaderValue::from_static(RESPONSE_SIGNATURE));
    headers.insert(
        "signature-input",
        HeaderValue::from_static(RESPONSE_SIGNATURE_INPUT),
    );
    headers.insert(
        "workload-identity-token",
        HeaderValue::from_static(RESPONSE_WIT),
    );
    check_content_digest(&headers, RESPONSE_BODY).unwrap();
    assert_eq!(
        check_content_digest(&headers, b"Plenty of ice cream.\n"),
        Err(HttpSigError::DigestMismatch)
    );
    let response = ResponseView {
        status: 404,
        headers: &headers,
        request: RequestView {
            method: "GET",
            target: EXAMPLE_TARGET,
            headers: &request_headers,
        },
    };
    let key = cnf_key(RESPONSE_WIT);
    httpsig::verify_response(&response, &key, Algorithm::EdDSA, "abcd1111", time(NOW)).unwrap();
    assert_eq!(
        httpsig::verify_response(&response, &key, Algorithm::EdDSA, "abcd9999", time(NOW)),
        Err(HttpSigError::WrongRequestNonce)
    );
    let other_status = ResponseView {
        status: 200,
        ..response
    };
    assert_eq!(
        httpsig::verify_response(&other_status, &key, Algorithm::EdDSA, "abcd1111", time(NOW)),
        Err(HttpSigError::BadSignature)
    );
}

#[test]
fn changes_to_the_published_request_fail() {
    let headers = example_request_headers();
    // Another method, another target, another query.
    for (method, target) in [
        ("POST", EXAMPLE_TARGET),
        ("GET", "/gimme-ice-cream?flavor=chocolate"),
        ("GET", "/gimme-ice-cream"),
    ] {
        assert_eq!(
            verify_example_request(&headers, method, target),
            Err(HttpSigError::BadSignature),
            "{method} {target}"
        );
    }
    // Any changed byte of the signature or of the signed WIT header.
    let signature_body = &REQUEST_SIGNATURE[7..REQUEST_SIGNATURE.len() - 3];
    for i in 0..signature_body.len() {
        let mut changed = signature_body.as_bytes().to_vec();
        changed[i] = if changed[i] == b'A' { b'B' } else { b'A' };
        let value = format!("wimse=:{}==:", String::from_utf8(changed).unwrap());
        let mut headers = example_request_headers();
        headers.insert("signature", value.parse().unwrap());
        let err = verify_example_request(&headers, "GET", EXAMPLE_TARGET).unwrap_err();
        assert!(
            matches!(
                err,
                HttpSigError::BadSignature | HttpSigError::Malformed { .. }
            ),
            "byte {i}: {err}"
        );
    }
    let mut other_wit = example_request_headers();
    other_wit.insert("workload-identity-token", RESPONSE_WIT.parse().unwrap());
    assert_eq!(
        verify_example_request(&other_wit, "GET", EXAMPLE_TARGET),
        Err(HttpSigError::BadSignature)
    );
    // After expires (+ skew), and for another audience.
    assert!(matches!(
        httpsig::verify_request(
            &RequestView {
                method: "GET",
                target: EXAMPLE_TARGET,
                headers: &headers,
            },
            &cnf_key(REQUEST_WIT),
            Algorithm::EdDSA,
            |aud: &str| aud == "https://svcb.example.com/gimme-ice-cream",
            time(1_785_156_097 + 30),
        ),
        Err(HttpSigError::Expired { .. })
    ));
    assert!(matches!(
        httpsig::verify_request(
            &RequestView {
                method: "GET",
                target: EXAMPLE_TARGET,
                headers: &headers,
            },
            &cnf_key(REQUEST_WIT),
            Algorithm::EdDSA,
            |aud: &str| aud == "https://svcc.example.com/gimme-ice-cream",
            time(NOW),
        ),
        Err(HttpSigError::WrongAudience { .. })
    ));
}

#[test]
fn sigil_signs_requests_and_responses_that_verify() {
    let caller = KeyPair::from_jwk_json(SVC_A).unwrap();
    let callee = KeyPair::generate(Algorithm::ES256).unwrap();
    let now = NOW;
    let body = br#"{"order":42}"#;
    let mut headers = HeaderMap::new();
    headers.insert("workload-identity-token", REQUEST_WIT.parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("content-digest", content_digest(body).parse().unwrap());
    headers.insert("authorization", "Bearer at-1".parse().unwrap());
    let nonce = httpsig::sign_request(
        "POST",
        "/orders?dry-run=1",
        &mut headers,
        &caller,
        &httpsig::RequestSigning {
            audience: "https://orders.example.org/orders".into(),
            lifetime_secs: 60,
            sign_response: true,
            now,
        },
    )
    .unwrap();
    let request = RequestView {
        method: "POST",
        target: "/orders?dry-run=1",
        headers: &headers,
    };
    let audiences = ["https://orders.example.org/orders".to_owned()];
    let checked = httpsig::verify_request(
        &request,
        caller.public_key(),
        Algorithm::EdDSA,
        |aud: &str| audiences.contains(&aud.to_owned()),
        time(now),
    )
    .unwrap();
    assert_eq!(checked.nonce, nonce);
    assert!(checked.sign_response);
    check_content_digest(&headers, body).unwrap();
    assert_eq!(
        check_content_digest(&headers, br#"{"order":43}"#),
        Err(HttpSigError::DigestMismatch)
    );

    // A covered header removed after signing, one added that must be covered.
    let mut stripped = headers.clone();
    stripped.remove("authorization");
    assert_eq!(
        httpsig::verify_request(
            &RequestView {
                headers: &stripped,
                ..request
            },
            caller.public_key(),
            Algorithm::EdDSA,
            |aud: &str| audiences.contains(&aud.to_owned()),
            time(now)
        ),
        Err(HttpSigError::Component {
            component: "authorization".into(),
            reason: "the header is absent".into()
        })
    );
    let mut added = headers.clone();
    added.insert("txn-token", "txn".parse().unwrap());
    assert_eq!(
        httpsig::verify_request(
            &RequestView {
                headers: &added,
                ..request
            },
            caller.public_key(),
            Algorithm::EdDSA,
            |aud: &str| audiences.contains(&aud.to_owned()),
            time(now)
        ),
        Err(HttpSigError::NotCovered {
            component: "txn-token".into()
        })
    );

    // The signed response.
    let mut response_headers = HeaderMap::new();
    response_headers.insert("workload-identity-token", RESPONSE_WIT.parse().unwrap());
    response_headers.insert("content-type", "text/plain".parse().unwrap());
    response_headers.insert("content-digest", content_digest(b"ok").parse().unwrap());
    httpsig::sign_response(
        201,
        &mut response_headers,
        request,
        &nonce,
        &callee,
        60,
        now,
    )
    .unwrap();
    let response = ResponseView {
        status: 201,
        headers: &response_headers,
        request,
    };
    httpsig::verify_response(
        &response,
        callee.public_key(),
        Algorithm::ES256,
        &nonce,
        time(now),
    )
    .unwrap();
}

#[test]
fn profile_rules_are_enforced() {
    let caller = KeyPair::generate(Algorithm::ES256).unwrap();
    let sign = |input: &str| {
        // A hand-made Signature-Input, signed over its own base.
        let mut headers = HeaderMap::new();
        headers.insert("workload-identity-token", "wit".parse().unwrap());
        headers.insert("signature-input", input.parse().unwrap());
        headers.insert("signature", "wimse=:AAAA:".parse().unwrap());
        headers
    };
    let verify = |headers: &HeaderMap| {
        httpsig::verify_request(
            &RequestView {
                method: "GET",
                target: "/",
                headers,
            },
            caller.public_key(),
            Algorithm::ES256,
            |aud: &str| aud == "https://a.example",
            time(NOW),
        )
    };
    let base = r#"("@method" "@request-target" "workload-identity-token");created=1785155880;expires=1785155940;nonce="n";tag="wimse-workload-to-workload";wimse-aud="https://a.example""#;
    let cases: Vec<(String, HttpSigError)> = vec![
        (
            format!("other={}", base.replace("wimse-workload-to-workload", "x")),
            HttpSigError::NoWimseSignature,
        ),
        (
            format!("a={base}, b={base}"),
            HttpSigError::SeveralWimseSignatures,
        ),
        (
            format!("wimse={base};keyid=\"k\""),
            HttpSigError::ForbiddenParam { name: "keyid" },
        ),
        (
            format!("wimse={base};alg=\"ecdsa-p256-sha256\""),
            HttpSigError::ForbiddenParam { name: "alg" },
        ),
        (
            format!("wimse={}", base.replace(";nonce=\"n\"", "")),
            HttpSigError::MissingParam { name: "nonce" },
        ),
        (
            format!("wimse={}", base.replace(";created=1785155880", "")),
            HttpSigError::MissingParam { name: "created" },
        ),
        (
            format!(
                "wimse={}",
                base.replace(";wimse-aud=\"https://a.example\"", "")
            ),
            HttpSigError::MissingParam { name: "wimse-aud" },
        ),
        (
            format!("wimse={}", base.replace(" \"workload-identity-token\"", "")),
            HttpSigError::NotCovered {
                component: "workload-identity-token".into(),
            },
        ),
        (
            format!("wimse={}", base.replace("\"@request-target\" ", "")),
            HttpSigError::NotCovered {
                component: "@path".into(),
            },
        ),
        (
            format!(
                "wimse={}",
                base.replace("expires=1785155940", "expires=1785159080")
            ),
            HttpSigError::TooLong {
                secs: 3200,
                max_secs: 300,
            },
        ),
        (
            "wimse=(".into(),
            HttpSigError::Malformed {
                header: "Signature-Input",
                reason: String::new(),
            },
        ),
    ];
    for (input, expected) in cases {
        let err = verify(&sign(&input)).unwrap_err();
        match expected {
            HttpSigError::Malformed { header, .. } => {
                assert!(
                    matches!(err, HttpSigError::Malformed { header: h, .. } if h == header),
                    "{input}: {err}"
                )
            }
            expected => assert_eq!(err, expected, "{input}"),
        }
    }
}
