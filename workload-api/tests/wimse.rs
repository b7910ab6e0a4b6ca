//! WIT and WPT validation: the published WIMSE examples, one-byte changes to
//! them, and a negative table with one case per rule.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use workload_api::bundle::{Bundle, JwtAuthority};
use workload_api::jwk::{Algorithm, Jwk, PublicKey};
use workload_api::keypair::KeyPair;
use workload_api::owner::OwnerBinding;
use workload_api::wimse::http::request_tokens;
use workload_api::wimse::layer::{verify_request_at, WimseLayer};
use workload_api::wimse::wit::{Confirmation, WitClaims};
use workload_api::wimse::wpt::{self, BoundTokens};
use workload_api::wimse::{
    AcceptedForms, Presented, Profile, Token, Verifier, VerifierConfig, WimseError, WptForm,
};
use workload_api::TrustDomain;

// draft-ietf-wimse-workload-creds section 3.1 and draft-ietf-wimse-wpt
// (ietf-wg-wimse/draft-ietf-wimse-s2s-protocol, includes/wit.txt, wpt.txt).
const EXAMPLE_WIT: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6Ikp1bmUgNSIsInR5cCI6IndpdCtqd3QifQ.eyJjbmYiOnsiandrIjp7ImFsZyI6IkVkRFNBIiwiY3J2IjoiRWQyNTUxOSIsImt0eSI6Ik9LUCIsIngiOiIxQ1hYdmZsTl9MVlZzSXNZWHNVdkIwM0ptbEdXZUNIcVFWdW91Q0Y5MmJnIn19LCJleHAiOjE3NDU1MTI1MTAsImlhdCI6MTc0NTUwODkxMCwianRpIjoieC1fMUNUTDJjY2EzQ1NFNGN3Yl9sIiwic3ViIjoid2ltc2U6Ly9leGFtcGxlLmNvbS9zcGVjaWZpYy13b3JrbG9hZCJ9.6KraSQUxWdl9dxFQ3Fj6dPY0Vi88OkwFwZpAIOhLeq6AbXAnLLQgOp8U9UDGcBuYF3KiNv6oKQD1ZWAzrMZOJw";
const EXAMPLE_WPT: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IndwdCtqd3QifQ.eyJhdGgiOiJDTDR3amZwUm1OZi1iZFlJYllMblY5ZDVyTUFSR3dLWUUxMHdVd3pDMGpJIiwiYXVkIjoiaHR0cHM6Ly93b3JrbG9hZC5leGFtcGxlLmNvbS9wYXRoIiwiZXhwIjoxNzQ1NTEwMDE2LCJqdGkiOiJfX2J3YzRFU0MzYWNjMkxUQzEtX3giLCJ3dGgiOiJBYVlVZkMzNEQxZGkyRnhRTHBpSUpKN1NnOFZaNm84T0Nkd1NmOUlUb0xnIn0.PI7d9AcYhLoEgPgbJvcM132lkBKnM1NXU-5hZUzVTIyj2dRJaTLFs6e5NYv5gg6AqcV7NvkYCwfgMgWasWQzCA";
/// The issuer key of the example (kid "June 5").
const EXAMPLE_ISSUER_JWK: &str = r#"{"kty":"EC","kid":"June 5","crv":"P-256","x":"kXqnA2Op7hgd4zRMbw0iFcc_hDxUxhojxOFVGjE2gks","y":"n__VndPMR021-59UAs0b9qDTFT-EZtT6xSNs_xFskLo"}"#;
/// The access token of the example request, bound by the WPT's `ath`.
const EXAMPLE_ACCESS_TOKEN: &str = "16_mAd0GiwaZokU26_0902100";
/// Before the WPT's `exp` (1745510016) and the WIT's (1745512510).
const EXAMPLE_NOW: u64 = 1_745_509_900;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn no_headers(_: &str) -> Option<String> {
    None
}

fn example_verifier() -> Verifier {
    let jwk: Jwk = serde_json::from_str(EXAMPLE_ISSUER_JWK).unwrap();
    let mut bundle = Bundle::new(TrustDomain::new("example.com").unwrap());
    bundle.add_wit_authority(JwtAuthority {
        kid: "June 5".into(),
        key: PublicKey::from_jwk(&jwk).unwrap(),
    });
    let mut config = VerifierConfig::new(vec!["https://workload.example.com/path".into()]);
    config.profile = Profile::Wimse;
    // The example WPT lives 1000 s past EXAMPLE_NOW's neighbourhood.
    config.max_wpt_lifetime_secs = 3600;
    let verifier = Verifier::new(config);
    verifier.set_bundle(bundle);
    verifier
}

fn verify_example(wit: &str, wpt: &str) -> Result<String, WimseError> {
    let authorization = format!("Bearer {EXAMPLE_ACCESS_TOKEN}");
    let presented = Presented {
        wit,
        wpt,
        path: Some("/path"),
        authorization: Some(&authorization),
        txn_token: None,
        header: &no_headers,
    };
    example_verifier()
        .verify(&presented, at(EXAMPLE_NOW))
        .map(|v| v.subject().to_owned())
}

#[test]
fn the_published_examples_verify_under_the_generic_profile() {
    assert_eq!(
        verify_example(EXAMPLE_WIT, EXAMPLE_WPT).unwrap(),
        "wimse://example.com/specific-workload"
    );
    // The SPIFFE profile refuses it: its subject is not a SPIFFE ID.
    let mut config = VerifierConfig::new(vec!["https://workload.example.com/path".into()]);
    config.max_wpt_lifetime_secs = 3600;
    let spiffe = Verifier::new(config);
    let err = spiffe.validate_wit(EXAMPLE_WIT, EXAMPLE_NOW).unwrap_err();
    assert!(matches!(err, WimseError::BadSubject { .. }), "{err}");
    // After the WIT's exp it is refused as expired.
    let err = example_verifier()
        .validate_wit(EXAMPLE_WIT, 1_745_512_510 + 31)
        .unwrap_err();
    assert_eq!(err.check(), "wit.exp");
}

/// Every byte of each token, changed to another base64url character.
fn one_byte_changes(token: &str) -> impl Iterator<Item = (usize, String)> + '_ {
    (0..token.len())
        .filter(move |&i| token.as_bytes()[i] != b'.')
        .map(move |i| {
            let mut bytes = token.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            (i, String::from_utf8(bytes).unwrap())
        })
}

#[test]
fn a_one_byte_change_anywhere_fails_with_the_check_of_that_part() {
    for (name, original, token) in [
        ("WIT", EXAMPLE_WIT, Token::Wit),
        ("WPT", EXAMPLE_WPT, Token::Wpt),
    ] {
        let signature_starts = original.rfind('.').unwrap() + 1;
        let mut checked = 0;
        for (i, changed) in one_byte_changes(original) {
            let result = match token {
                Token::Wit => verify_example(&changed, EXAMPLE_WPT),
                Token::Wpt => verify_example(EXAMPLE_WIT, &changed),
            };
            let err = result.expect_err(&format!("{name} changed at byte {i} still verified"));
            let prefix = if token == Token::Wit { "wit." } else { "wpt." };
            assert!(err.check().starts_with(prefix), "{name} byte {i}: {err}");
            if i >= signature_starts {
                assert!(
                    matches!(
                        err,
                        WimseError::BadSignature { .. } | WimseError::Malformed { .. }
                    ),
                    "{name} signature byte {i}: {err}"
                );
            }
            checked += 1;
        }
        assert!(checked > 200, "{name}: only {checked} changes tried");
    }
}

/// A Sigil-like setup: an ES256 issuer key, a workload key, a WIT-SVID.
struct Setup {
    issuer: KeyPair,
    workload: KeyPair,
    wit: String,
    now: u64,
}

const SVC: &str = "https://svc.example.org/api";

impl Setup {
    fn new() -> Self {
        Setup::at(1_800_000_000)
    }

    fn at(now: u64) -> Self {
        let issuer = KeyPair::generate(Algorithm::ES256).unwrap();
        let workload = KeyPair::generate(Algorithm::ES256).unwrap();
        let mut setup = Setup {
            issuer,
            workload,
            wit: String::new(),
            now,
        };
        setup.wit = setup.wit_for("spiffe://example.org/client", "k1", &setup.issuer);
        setup
    }

    fn claims(&self, sub: &str) -> WitClaims {
        WitClaims {
            sub: sub.into(),
            iss: None,
            iat: self.now,
            nbf: None,
            exp: self.now + 3600,
            jti: "wit-1".into(),
            cnf: Confirmation {
                jwk: self.workload.public_jwk(),
            },
            owner: None,
        }
    }

    /// The client's WIT, bound to `owner`.
    fn wit_owned_by(&self, owner: Option<OwnerBinding>) -> String {
        let claims = WitClaims {
            owner,
            ..self.claims("spiffe://example.org/client")
        };
        let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "wit+jwt"});
        self.issuer.sign_jws(&header, &claims)
    }

    /// A WPT for `wit`, for the service.
    fn wpt_for(&self, wit: &str) -> String {
        wpt::mint(
            wit,
            &self.workload,
            SVC,
            60,
            &BoundTokens::default(),
            self.now,
        )
    }

    fn wit_for(&self, sub: &str, kid: &str, signer: &KeyPair) -> String {
        let header = serde_json::json!({"alg": "ES256", "kid": kid, "typ": "wit+jwt"});
        signer.sign_jws(&header, &self.claims(sub))
    }

    fn verifier(&self, other_tokens: &[&str]) -> Verifier {
        let mut bundle = Bundle::new(TrustDomain::new("example.org").unwrap());
        bundle.add_wit_authority(JwtAuthority {
            kid: "k1".into(),
            key: self.issuer.public_key().clone(),
        });
        let mut config = VerifierConfig::new(vec!["https://svc.example.org".into()]);
        config.other_tokens = other_tokens.iter().map(|s| s.to_string()).collect();
        let verifier = Verifier::new(config);
        verifier.set_bundle(bundle);
        verifier
    }

    fn wpt(
        &self,
        audience: &str,
        lifetime: u64,
        bound: &BoundTokens<'_>,
        minted_at: u64,
    ) -> String {
        wpt::mint(
            &self.wit,
            &self.workload,
            audience,
            lifetime,
            bound,
            minted_at,
        )
    }

    fn good_wpt(&self) -> String {
        self.wpt(SVC, 60, &BoundTokens::default(), self.now)
    }

    /// A WPT with a hand-made header, signed by the workload key.
    fn wpt_with_header(&self, header: serde_json::Value) -> String {
        let claims = serde_json::json!({
            "aud": SVC, "exp": self.now + 60, "jti": "hand-made",
            "wth": workload_api::jws::token_hash(&self.wit),
        });
        self.workload.sign_jws(&header, &claims)
    }
}

struct Request<'a> {
    wit: &'a str,
    wpt: &'a str,
    authorization: Option<&'a str>,
    headers: HeaderMap,
}

impl<'a> Request<'a> {
    fn new(wit: &'a str, wpt: &'a str) -> Self {
        Request {
            wit,
            wpt,
            authorization: None,
            headers: HeaderMap::new(),
        }
    }

    fn verify(&self, verifier: &Verifier, now: u64) -> Result<String, WimseError> {
        let headers = &self.headers;
        let lookup = |name: &str| workload_api::wimse::http::header_text(headers, name);
        let txn = workload_api::wimse::http::header_text(headers, "txn-token");
        let presented = Presented {
            wit: self.wit,
            wpt: self.wpt,
            path: Some("/api"),
            authorization: self.authorization,
            txn_token: txn.as_deref(),
            header: &lookup,
        };
        verifier
            .verify(&presented, at(now))
            .map(|v| v.spiffe_id().unwrap().to_string())
    }
}

#[test]
fn a_sigil_style_request_verifies_with_its_bindings() {
    let s = Setup::new();
    let mut headers = HeaderMap::new();
    headers.insert("txn-token", HeaderValue::from_static("txn.token.value"));
    headers.insert("x-user-context", HeaderValue::from_static(" ctx "));
    let bound = BoundTokens {
        access_token: Some("at-123"),
        txn_token: Some("txn.token.value"),
        other: vec![("X-User-Context", "ctx")],
    };
    let wpt = s.wpt(SVC, 60, &bound, s.now);
    let mut request = Request::new(&s.wit, &wpt);
    request.authorization = Some("Bearer at-123");
    request.headers = headers;
    let verifier = s.verifier(&["X-User-Context"]);
    assert_eq!(
        request.verify(&verifier, s.now).unwrap(),
        "spiffe://example.org/client"
    );
    // The second WIT validation is a cache hit and still yields the same.
    let again = s.good_wpt();
    assert_eq!(
        Request::new(&s.wit, &again)
            .verify(&verifier, s.now)
            .unwrap(),
        "spiffe://example.org/client"
    );
}

#[test]
fn each_rule_rejects_with_its_own_error() {
    let s = Setup::new();
    let good = s.good_wpt();
    let none_wit = {
        let header = serde_json::json!({"alg": "none", "kid": "k1", "typ": "wit+jwt"});
        s.issuer
            .sign_jws(&header, &s.claims("spiffe://example.org/client"))
    };
    let hs_wit = {
        let header = serde_json::json!({"alg": "HS256", "kid": "k1", "typ": "wit+jwt"});
        s.issuer
            .sign_jws(&header, &s.claims("spiffe://example.org/client"))
    };
    let jwt_typed_wit = {
        let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
        s.issuer
            .sign_jws(&header, &s.claims("spiffe://example.org/client"))
    };
    let foreign_wit = s.wit_for("spiffe://other.org/client", "k1", &s.issuer);
    let retired = KeyPair::generate(Algorithm::ES256).unwrap();
    let retired_wit = s.wit_for("spiffe://example.org/client", "k0", &retired);
    let other_wit = {
        let mut claims = s.claims("spiffe://example.org/client");
        claims.jti = "wit-2".into();
        let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "wit+jwt"});
        s.issuer.sign_jws(&header, &claims)
    };
    let wth_mismatch = wpt::mint(
        &other_wit,
        &s.workload,
        SVC,
        60,
        &BoundTokens::default(),
        s.now,
    );
    let oth = s.wpt(
        SVC,
        60,
        &BoundTokens {
            other: vec![("x-custom", "v")],
            ..BoundTokens::default()
        },
        s.now,
    );

    type Case<'a> = (&'a str, &'a str, String, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        ("WIT alg none", &none_wit, good.clone(), None, "wit.alg"),
        ("WIT alg HS256", &hs_wit, good.clone(), None, "wit.alg"),
        (
            "WPT alg none",
            &s.wit,
            s.wpt_with_header(serde_json::json!({"alg": "none", "typ": "wpt+jwt"})),
            None,
            "wpt.alg",
        ),
        (
            "WPT alg HS256",
            &s.wit,
            s.wpt_with_header(serde_json::json!({"alg": "HS256", "typ": "wpt+jwt"})),
            None,
            "wpt.alg",
        ),
        ("WIT typ JWT", &jwt_typed_wit, good.clone(), None, "wit.typ"),
        (
            "WPT typ jwt",
            &s.wit,
            s.wpt_with_header(serde_json::json!({"alg": "ES256", "typ": "jwt"})),
            None,
            "wpt.typ",
        ),
        (
            "WPT alg is not cnf.jwk.alg",
            &s.wit,
            s.wpt_with_header(serde_json::json!({"alg": "ES384", "typ": "wpt+jwt"})),
            None,
            "wpt.alg",
        ),
        (
            "wrong audience",
            &s.wit,
            s.wpt(
                "https://other.example.org/api",
                60,
                &BoundTokens::default(),
                s.now,
            ),
            None,
            "wpt.aud",
        ),
        (
            "expired",
            &s.wit,
            s.wpt(SVC, 60, &BoundTokens::default(), s.now - 120),
            None,
            "wpt.exp",
        ),
        (
            "exp too far ahead",
            &s.wit,
            s.wpt(SVC, 3600, &BoundTokens::default(), s.now),
            None,
            "wpt.exp",
        ),
        ("wth mismatch", &s.wit, wth_mismatch, None, "wpt.wth"),
        (
            "Authorization without ath",
            &s.wit,
            good.clone(),
            Some("Bearer at-1"),
            "wpt.ath",
        ),
        ("unknown oth entry", &s.wit, oth, None, "wpt.oth"),
        (
            "WIT from an unknown trust domain",
            &foreign_wit,
            good.clone(),
            None,
            "wit.trust_domain",
        ),
        (
            "WIT signed by a retired key",
            &retired_wit,
            good.clone(),
            None,
            "wit.key",
        ),
    ];
    let mut seen = Vec::new();
    for (name, wit, wpt, authorization, check) in &cases {
        let mut request = Request::new(wit, wpt);
        request.authorization = *authorization;
        let err = request
            .verify(&s.verifier(&[]), s.now)
            .expect_err(&format!("{name}: accepted"));
        assert_eq!(err.check(), *check, "{name}: {err}");
        seen.push(std::mem::discriminant(&err));
        println!("{name}: {err}");
    }
    // Each rule has its own error: none/HS256 share "alg not allowed" (for
    // each token), the two typ cases "wrong typ"; the other nine cases
    // nine more.
    let kinds: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(kinds.len(), 11, "distinct errors");

    // A replayed proof: the same request twice.
    let verifier = s.verifier(&[]);
    let request = Request::new(&s.wit, &good);
    request.verify(&verifier, s.now).unwrap();
    let err = request.verify(&verifier, s.now).unwrap_err();
    assert!(matches!(err, WimseError::Replayed { .. }), "{err}");

    // Two Workload-Proof-Token headers.
    let mut headers = HeaderMap::new();
    headers.insert("workload-identity-token", s.wit.parse().unwrap());
    headers.append("workload-proof-token", good.parse().unwrap());
    headers.append("workload-proof-token", s.good_wpt().parse().unwrap());
    let err = request_tokens(&headers).unwrap_err();
    assert_eq!(
        err,
        WimseError::DuplicateHeader {
            header: "workload-proof-token"
        }
    );
}

#[test]
fn a_bundle_update_drops_cached_wits() {
    let s = Setup::new();
    let verifier = s.verifier(&[]);
    let wpt = s.good_wpt();
    Request::new(&s.wit, &wpt).verify(&verifier, s.now).unwrap();
    // The key is retired from the bundle: the cached WIT is not trusted.
    verifier.set_bundle(Bundle::new(TrustDomain::new("example.org").unwrap()));
    let err = verifier.validate_wit(&s.wit, s.now).unwrap_err();
    assert_eq!(err.check(), "wit.key");
}

// draft-ietf-wimse-wpt-02 section 2, Figures 2 and 5 (the Authorization
// form; no `ath`). The WIT has the claims of EXAMPLE_WIT, signed anew by
// the same issuer key.
const EXAMPLE_02_WIT: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6Ikp1bmUgNSIsInR5cCI6IndpdCtqd3QifQ.eyJjbmYiOnsiandrIjp7ImFsZyI6IkVkRFNBIiwiY3J2IjoiRWQyNTUxOSIsImt0eSI6Ik9LUCIsIngiOiIxQ1hYdmZsTl9MVlZzSXNZWHNVdkIwM0ptbEdXZUNIcVFWdW91Q0Y5MmJnIn19LCJleHAiOjE3NDU1MTI1MTAsImlhdCI6MTc0NTUwODkxMCwianRpIjoieC1fMUNUTDJjY2EzQ1NFNGN3Yl9sIiwic3ViIjoid2ltc2U6Ly9leGFtcGxlLmNvbS9zcGVjaWZpYy13b3JrbG9hZCJ9.ohKJ50QaW8ydALJwaA0Sz4ys3hcN_1S-aTZBytMGc3u8QWUmn5uxUDSonoZFAfZk1Ro1kR4vE_xa7mvoE37R-Q";
const EXAMPLE_02_WPT: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IndwdCtqd3QifQ.eyJhdWQiOiJodHRwczovL3dvcmtsb2FkLmV4YW1wbGUuY29tL3BhdGgiLCJleHAiOjE3NDU1MTAwMTYsImp0aSI6Il9fYndjNEVTQzNhY2MyTFRDMS1feCIsInd0aCI6Ilg5d2lQZ3EzamxTR3pBZWdIQ0doTk8xbEpnVWJEb0kxTWprYXQ1UUhKQjAifQ.sa5ZYHTeCx4AsurafaBJ2rrMnE7TBHBB47ZUT7yoiyz2lcGY5XAnpGPjPnzeRroJJiR7Nr_C5J7mexxrsHM3CQ";

/// A request to `https://svc.example.org/api` (or the example's `/path`)
/// carrying `wit` and `wpt` in `form`.
fn http_request(form: WptForm, path: &str, wit: &str, wpt: &str) -> http::Request<()> {
    let mut request = http::Request::builder()
        .uri(path)
        .header("workload-identity-token", wit);
    request = match form {
        WptForm::Authorization => request.header("authorization", format!("WPT {wpt}")),
        WptForm::Header => request.header("workload-proof-token", wpt),
    };
    request.body(()).unwrap()
}

#[test]
fn the_wpt_02_example_verifies_in_the_authorization_form_only() {
    let verifier = example_verifier();
    let request = http_request(
        WptForm::Authorization,
        "/path",
        EXAMPLE_02_WIT,
        EXAMPLE_02_WPT,
    );
    let verified =
        verify_request_at(&verifier, &request, AcceptedForms::Both, at(EXAMPLE_NOW)).unwrap();
    assert_eq!(verified.subject(), "wimse://example.com/specific-workload");
    // The scheme name is case-insensitive (RFC 9110 section 11.1).
    for scheme in ["wpt", "Wpt"] {
        let mut request = http_request(
            WptForm::Authorization,
            "/path",
            EXAMPLE_02_WIT,
            EXAMPLE_02_WPT,
        );
        request.headers_mut().insert(
            "authorization",
            format!("{scheme}  {EXAMPLE_02_WPT}").parse().unwrap(),
        );
        verify_request_at(
            &example_verifier(),
            &request,
            AcceptedForms::Both,
            at(EXAMPLE_NOW),
        )
        .unwrap_or_else(|e| panic!("scheme {scheme}: {e}"));
    }
    // A service taking only the header form refuses it.
    let err = verify_request_at(
        &example_verifier(),
        &request,
        AcceptedForms::Header,
        at(EXAMPLE_NOW),
    )
    .unwrap_err();
    assert_eq!(err.check(), "wpt.form");
}

/// A WIT whose `cnf.jwk` has no `alg`, as some implementations still issue.
fn wit_without_cnf_alg(s: &Setup) -> String {
    let mut jwk = serde_json::to_value(s.workload.public_jwk()).unwrap();
    jwk.as_object_mut().unwrap().remove("alg");
    let claims = serde_json::json!({
        "sub": "spiffe://example.org/client", "iat": s.now, "exp": s.now + 3600,
        "jti": "wit-no-alg", "cnf": {"jwk": jwk},
    });
    let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "wit+jwt"});
    s.issuer.sign_jws(&header, &claims)
}

#[test]
fn the_negative_table_fails_each_rule_in_both_forms() {
    let s = Setup::new();
    let other_wit = {
        let mut claims = s.claims("spiffe://example.org/client");
        claims.jti = "wit-2".into();
        let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "wit+jwt"});
        s.issuer.sign_jws(&header, &claims)
    };
    let none_wit = {
        let header = serde_json::json!({"alg": "none", "kid": "k1", "typ": "wit+jwt"});
        s.issuer
            .sign_jws(&header, &s.claims("spiffe://example.org/client"))
    };
    let no_alg_wit = wit_without_cnf_alg(&s);
    let txn = |token: &'static str| {
        move |h: &mut HeaderMap| {
            h.insert("txn-token", HeaderValue::from_static(token));
        }
    };
    type Edit = Box<dyn Fn(&mut HeaderMap)>;
    for form in [WptForm::Authorization, WptForm::Header] {
        let good = || s.good_wpt();
        let bound = |b: BoundTokens<'_>| s.wpt(SVC, 60, &b, s.now);
        // (name, WIT, WPT, edit of the request's headers, expected check)
        let cases: Vec<(&str, String, String, Edit, &str)> = vec![
            (
                "WIT alg none",
                none_wit.clone(),
                good(),
                Box::new(|_| ()),
                "wit.alg",
            ),
            (
                "WIT cnf.jwk without alg",
                no_alg_wit.clone(),
                good(),
                Box::new(|_| ()),
                "wit.cnf",
            ),
            (
                "WPT alg none",
                s.wit.clone(),
                s.wpt_with_header(serde_json::json!({"alg": "none", "typ": "wpt+jwt"})),
                Box::new(|_| ()),
                "wpt.alg",
            ),
            (
                "WPT alg HS256",
                s.wit.clone(),
                s.wpt_with_header(serde_json::json!({"alg": "HS256", "typ": "wpt+jwt"})),
                Box::new(|_| ()),
                "wpt.alg",
            ),
            (
                "WPT typ jwt",
                s.wit.clone(),
                s.wpt_with_header(serde_json::json!({"alg": "ES256", "typ": "jwt"})),
                Box::new(|_| ()),
                "wpt.typ",
            ),
            (
                "WPT alg is not cnf.jwk.alg",
                s.wit.clone(),
                s.wpt_with_header(serde_json::json!({"alg": "ES384", "typ": "wpt+jwt"})),
                Box::new(|_| ()),
                "wpt.alg",
            ),
            (
                "wrong audience",
                s.wit.clone(),
                s.wpt(
                    "https://other.example.org/api",
                    60,
                    &BoundTokens::default(),
                    s.now,
                ),
                Box::new(|_| ()),
                "wpt.aud",
            ),
            (
                "expired",
                s.wit.clone(),
                s.wpt(SVC, 60, &BoundTokens::default(), s.now - 120),
                Box::new(|_| ()),
                "wpt.exp",
            ),
            (
                "exp too far ahead",
                s.wit.clone(),
                s.wpt(SVC, 3600, &BoundTokens::default(), s.now),
                Box::new(|_| ()),
                "wpt.exp",
            ),
            (
                "wth mismatch",
                s.wit.clone(),
                wpt::mint(
                    &other_wit,
                    &s.workload,
                    SVC,
                    60,
                    &BoundTokens::default(),
                    s.now,
                ),
                Box::new(|_| ()),
                "wpt.wth",
            ),
            (
                "unknown oth entry",
                s.wit.clone(),
                bound(BoundTokens {
                    other: vec![("x-custom", "v")],
                    ..BoundTokens::default()
                }),
                Box::new(|h: &mut HeaderMap| {
                    h.insert("x-custom", HeaderValue::from_static("v"));
                }),
                "wpt.oth",
            ),
            (
                "unbound Txn-Token",
                s.wit.clone(),
                good(),
                Box::new(txn("txn.value")),
                "wpt.tth",
            ),
            (
                "mismatched Txn-Token",
                s.wit.clone(),
                bound(BoundTokens {
                    txn_token: Some("txn.value"),
                    ..BoundTokens::default()
                }),
                Box::new(txn("txn.other")),
                "wpt.tth",
            ),
            (
                "both forms in one request",
                s.wit.clone(),
                good(),
                Box::new(move |h: &mut HeaderMap| match form {
                    WptForm::Authorization => {
                        h.insert("workload-proof-token", HeaderValue::from_static("x.y.z"));
                    }
                    WptForm::Header => {
                        h.insert("authorization", HeaderValue::from_static("WPT x.y.z"));
                    }
                }),
                "request.both_forms",
            ),
            (
                "a second Authorization credential",
                s.wit.clone(),
                good(),
                Box::new(|h: &mut HeaderMap| {
                    h.append("authorization", HeaderValue::from_static("Bearer at-1"));
                    if !h.contains_key("workload-proof-token") {
                        return;
                    }
                    // Header form: a second access token beside the first.
                    h.append("authorization", HeaderValue::from_static("Bearer at-2"));
                }),
                match form {
                    WptForm::Authorization => "wpt.authorization",
                    WptForm::Header => "header.duplicate",
                },
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        for (name, wit, proof, edit, check) in &cases {
            let mut request = http_request(form, "/api", wit, proof);
            edit(request.headers_mut());
            let verifier = s.verifier(&[]);
            let err = verify_request_at(&verifier, &request, AcceptedForms::Both, at(s.now))
                .expect_err(&format!("{form} {name}: accepted"));
            assert_eq!(err.check(), *check, "{form} {name}: {err}");
            if *name == "WIT cnf.jwk without alg" {
                assert!(err.to_string().contains("\"alg\" is missing"), "{err}");
            }
            seen.insert(std::mem::discriminant(&err));
            println!("{form:>13} {name}: {err}");
        }
        // One error per rule: alg none (either token) and HS256 share
        // "alg not allowed"; every other case has its own variant.
        assert_eq!(seen.len(), cases.len() - 2, "{form}: distinct errors");

        // A replayed jti: the identical request twice.
        let verifier = s.verifier(&[]);
        let proof = good();
        let request = http_request(form, "/api", &s.wit, &proof);
        verify_request_at(&verifier, &request, AcceptedForms::Both, at(s.now)).unwrap();
        let err =
            verify_request_at(&verifier, &request, AcceptedForms::Both, at(s.now)).unwrap_err();
        assert!(matches!(err, WimseError::Replayed { .. }), "{form}: {err}");
    }

    // One Authorization field holding a list is a second credential too,
    // and `WPT` without a token68 is malformed.
    for (value, check) in [
        (
            format!("WPT {}, Bearer at-1", s.good_wpt()),
            "wpt.authorization",
        ),
        ("WPT".to_owned(), "wpt.malformed"),
        ("WPT a.b.c%".to_owned(), "wpt.malformed"),
    ] {
        let mut request = http_request(WptForm::Authorization, "/api", &s.wit, "a.b.c");
        request
            .headers_mut()
            .insert("authorization", value.parse().unwrap());
        let err = verify_request_at(&s.verifier(&[]), &request, AcceptedForms::Both, at(s.now))
            .unwrap_err();
        assert_eq!(err.check(), check, "{err}");
    }
}

#[test]
fn the_header_form_binds_an_access_token_and_the_authorization_form_has_none() {
    let s = Setup::new();
    let with_ath = s.wpt(
        SVC,
        60,
        &BoundTokens {
            access_token: Some("at-1"),
            ..BoundTokens::default()
        },
        s.now,
    );
    let mut request = http_request(WptForm::Header, "/api", &s.wit, &with_ath);
    request
        .headers_mut()
        .insert("authorization", HeaderValue::from_static("Bearer at-1"));
    verify_request_at(&s.verifier(&[]), &request, AcceptedForms::Both, at(s.now)).unwrap();
    // In the Authorization form the field holds the WPT: an `ath` claim
    // binds nothing and is ignored (wpt-02 section 2.3).
    let request = http_request(WptForm::Authorization, "/api", &s.wit, &with_ath);
    verify_request_at(&s.verifier(&[]), &request, AcceptedForms::Both, at(s.now)).unwrap();
    // A client cannot put the WPT into an Authorization field already used.
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer at-1"));
    let err = workload_api::wimse::http::add_proof_headers_as(
        WptForm::Authorization,
        &mut headers,
        &s.wit,
        &s.workload,
        SVC,
        60,
        &[],
        s.now,
    )
    .unwrap_err();
    assert_eq!(err.check(), "wpt.authorization");
}

/// Collects every tracing event's fields, as text, while it is the
/// default subscriber.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<String>>);

impl tracing::field::Visit for &Captured {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let line = format!("{}={:?} ", field.name(), value);
        self.0.lock().unwrap().push_str(&line);
    }
}

impl tracing::Subscriber for Captured {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        span.record(&mut &*self);
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut &*self);
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        event.record(&mut &*self);
        self.0.lock().unwrap().push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

type Body = http_body_util::Full<bytes::Bytes>;

/// Sends `request` through a [`WimseLayer`] in front of a service that
/// answers with the verified caller; returns the response and the logs.
fn through_layer(
    layer: &WimseLayer,
    request: http::Request<()>,
) -> (http::Response<Body>, String, String) {
    use http_body_util::BodyExt;
    use tower::{Layer, Service, ServiceExt};
    let inner = tower::service_fn(|request: http::Request<Body>| async move {
        let verified = request.extensions().get::<workload_api::wimse::Verified>();
        let mut caller = verified.map(|v| v.subject().to_owned()).unwrap_or_default();
        // The owner, as handlers read it, when the layer put one there.
        if let Some(owner) = request.extensions().get::<OwnerBinding>() {
            assert_eq!(verified.and_then(|v| v.owner()), Some(owner));
            caller.push_str(&format!(" owned by {}", owner.owner_id));
        }
        Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(caller)))
    });
    let mut service = layer.layer(inner);
    let (parts, ()) = request.into_parts();
    let request = http::Request::from_parts(parts, Body::default());
    let logs = Captured::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (response, body) = tracing::subscriber::with_default(logs.clone(), || {
        runtime.block_on(async {
            let response = service.ready().await.unwrap().call(request).await.unwrap();
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            (http::Response::from_parts(parts, Body::from(bytes)), text)
        })
    });
    let logs = logs.0.lock().unwrap().clone();
    (response, body, logs)
}

#[test]
fn the_layer_answers_each_form_by_its_rules_and_logs_no_token() {
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let s = Setup::at(now);
    let verifier = std::sync::Arc::new(s.verifier(&[]));
    let layer = WimseLayer::new(verifier.clone());
    let challenge = |r: &http::Response<Body>| {
        r.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
    };

    // Each form is accepted when valid.
    for form in [WptForm::Authorization, WptForm::Header] {
        let (response, body, _) =
            through_layer(&layer, http_request(form, "/api", &s.wit, &s.good_wpt()));
        assert_eq!(response.status(), 200, "{form}: {body}");
        assert_eq!(body, "spiffe://example.org/client");
    }

    // Failures: the Authorization form 401 with `WWW-Authenticate: WPT`,
    // the header form 400 without a challenge; both with an RFC 9457 body.
    let wrong_aud = || {
        s.wpt(
            "https://other.example.org/api",
            60,
            &BoundTokens::default(),
            now,
        )
    };
    for (form, status, expected_challenge) in [
        (WptForm::Authorization, 401, Some("WPT")),
        (WptForm::Header, 400, None),
    ] {
        let proof = wrong_aud();
        let (response, body, logs) =
            through_layer(&layer, http_request(form, "/api", &s.wit, &proof));
        assert_eq!(response.status(), status, "{form}: {body}");
        assert_eq!(
            challenge(&response).as_deref(),
            expected_challenge,
            "{form}"
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["check"], "wpt.aud", "{form}: {body}");
        assert_eq!(problem["status"], status);
        // Nothing secret: neither the WPT nor the WIT is in the logs, the
        // problem or the response headers.
        assert!(
            logs.contains("wpt.aud"),
            "{form}: the refusal is logged: {logs}"
        );
        let headers = format!("{:?}", response.headers());
        for (what, token) in [("WPT", proof.as_str()), ("WIT", s.wit.as_str())] {
            for (place, text) in [("logs", &logs), ("body", &body), ("headers", &headers)] {
                assert!(
                    !text.contains(token),
                    "{form}: the {what} is in the {place}"
                );
                let signature = token.rsplit('.').next().unwrap();
                assert!(!text.contains(signature), "{form}: {what} in {place}");
            }
        }
    }

    // No proof at all: the service asks for the WPT scheme.
    let request = http::Request::builder()
        .uri("/api")
        .header("workload-identity-token", s.wit.as_str())
        .body(())
        .unwrap();
    let (response, body, _) = through_layer(&layer, request);
    assert_eq!(
        (response.status().as_u16(), challenge(&response).as_deref()),
        (401, Some("WPT")),
        "{body}"
    );

    // Both forms at once: refused.
    let mut request = http_request(WptForm::Authorization, "/api", &s.wit, &s.good_wpt());
    request
        .headers_mut()
        .insert("workload-proof-token", s.good_wpt().parse().unwrap());
    let (response, body, _) = through_layer(&layer, request);
    assert_eq!(response.status(), 401, "{body}");
    assert!(body.contains("request.both_forms"), "{body}");

    // The per-layer setting: a form the service does not take is refused,
    // and a header-only service offers no WPT challenge.
    let header_only = WimseLayer::new(verifier.clone()).accepting(AcceptedForms::Header);
    let (response, body, _) = through_layer(
        &header_only,
        http_request(WptForm::Authorization, "/api", &s.wit, &s.good_wpt()),
    );
    assert_eq!(
        (response.status().as_u16(), challenge(&response)),
        (400, None)
    );
    assert!(body.contains("wpt.form"), "{body}");
    let authorization_only = WimseLayer::new(verifier).accepting(AcceptedForms::Authorization);
    let (response, body, _) = through_layer(
        &authorization_only,
        http_request(WptForm::Header, "/api", &s.wit, &s.good_wpt()),
    );
    assert_eq!(
        (response.status().as_u16(), challenge(&response).as_deref()),
        (401, Some("WPT"))
    );
    assert!(body.contains("wpt.form"), "{body}");
    let (response, _, _) = through_layer(
        &authorization_only,
        http_request(WptForm::Authorization, "/api", &s.wit, &s.good_wpt()),
    );
    assert_eq!(response.status(), 200);
}

fn owner(id: &str) -> OwnerBinding {
    OwnerBinding {
        owner_id: id.into(),
        key_thumbprint: [7; 32],
        consent_sha256: workload_api::owner::consent_sha256("consent.jws.sig"),
        actors: vec!["spiffe://example.org/agents/alice".into()],
    }
}

#[test]
fn a_wit_owner_is_returned_and_a_malformed_one_refused() {
    let s = Setup::new();
    let alice = owner("mailto:alice@example.org");
    let wit = s.wit_owned_by(Some(alice.clone()));
    let verifier = s.verifier(&[]);
    let validated = verifier.validate_wit(&wit, s.now).unwrap();
    assert_eq!(validated.owner.as_ref(), Some(&alice));
    let request = http_request(WptForm::Authorization, "/api", &wit, &s.wpt_for(&wit));
    let verified = verify_request_at(&verifier, &request, AcceptedForms::Both, at(s.now)).unwrap();
    assert_eq!(verified.owner(), Some(&alice));
    // Without the claim there is no owner, and none is serialized.
    let ownerless = serde_json::to_value(s.claims("spiffe://example.org/client")).unwrap();
    assert!(ownerless.get("owner").is_none(), "{ownerless}");
    let plain = verifier.validate_wit(&s.wit, s.now).unwrap();
    assert_eq!(plain.owner, None);
    assert!(!plain.claims.contains_key("owner"));

    // A malformed claim fails validation, naming the problem.
    let mut claims = serde_json::to_value(s.claims("spiffe://example.org/client")).unwrap();
    claims["owner"] = alice.to_claim();
    claims["owner"]["jkt"] = "AAAA".into();
    let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "wit+jwt"});
    let bad = s.issuer.sign_jws(&header, &claims);
    let err = verifier.validate_wit(&bad, s.now).unwrap_err();
    assert!(matches!(err, WimseError::BadOwner { .. }), "{err}");
    assert_eq!(err.check(), "owner");
    assert!(
        err.to_string().contains("keyThumbprint is 3 bytes"),
        "{err}"
    );
    let request = http_request(WptForm::Authorization, "/api", &bad, &s.wpt_for(&bad));
    let err = verify_request_at(&verifier, &request, AcceptedForms::Both, at(s.now)).unwrap_err();
    assert_eq!(err.check(), "owner", "{err}");
}

#[test]
fn a_route_restricted_to_owners_refuses_other_owners_with_403() {
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let s = Setup::at(now);
    let verifier = std::sync::Arc::new(s.verifier(&[]));
    let restricted = WimseLayer::new(verifier.clone()).accepting_owners([
        "mailto:alice@example.org",
        "https://example.org/people/carol",
    ]);
    let unrestricted = WimseLayer::new(verifier);
    let alice_wit = s.wit_owned_by(Some(owner("mailto:alice@example.org")));
    let bob_wit = s.wit_owned_by(Some(owner("mailto:bob@example.org")));
    let send = |layer: &WimseLayer, wit: &str| {
        let request = http_request(WptForm::Authorization, "/api", wit, &s.wpt_for(wit));
        let (response, body, _) = through_layer(layer, request);
        (response.status().as_u16(), body)
    };
    let problem = |body: &str| -> serde_json::Value { serde_json::from_str(body).unwrap() };

    // An accepted owner passes, and the handler sees it.
    let (status, body) = send(&restricted, &alice_wit);
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            "spiffe://example.org/client owned by mailto:alice@example.org"
        )
    );

    // Another owner: 403, check "owner", the detail naming it.
    let (status, body) = send(&restricted, &bob_wit);
    assert_eq!(status, 403, "{body}");
    let refused = problem(&body);
    assert_eq!(refused["check"], "owner");
    assert_eq!(refused["status"], 403);
    let detail = refused["detail"].as_str().unwrap();
    assert!(detail.contains("mailto:bob@example.org"), "{detail}");
    assert!(!body.contains(&bob_wit), "no token in the problem");

    // A WIT without an owner: 403 too, saying so.
    let (status, body) = send(&restricted, &s.wit);
    assert_eq!(status, 403, "{body}");
    let refused = problem(&body);
    assert_eq!(refused["check"], "owner");
    assert!(
        refused["detail"].as_str().unwrap().contains("no owner"),
        "{body}"
    );

    // A route without the option takes owned and ownerless WITs alike.
    let (status, body) = send(&unrestricted, &bob_wit);
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            "spiffe://example.org/client owned by mailto:bob@example.org"
        )
    );
    let (status, body) = send(&unrestricted, &s.wit);
    assert_eq!(
        (status, body.as_str()),
        (200, "spiffe://example.org/client")
    );
}

#[test]
fn a_signed_request_carries_its_owner_and_is_held_to_the_route_list() {
    use workload_api::wimse::httpsig::{self, RequestSigning};
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let s = Setup::at(now);
    let verifier = std::sync::Arc::new(s.verifier(&[]));
    let signed = |wit: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("workload-identity-token", wit.parse().unwrap());
        let signing = RequestSigning {
            audience: SVC.into(),
            lifetime_secs: 60,
            sign_response: false,
            now,
        };
        httpsig::sign_request("GET", "/api", &mut headers, &s.workload, &signing).unwrap();
        let mut request = http::Request::builder().uri("/api").body(()).unwrap();
        *request.headers_mut() = headers;
        request
    };
    let alice_wit = s.wit_owned_by(Some(owner("mailto:alice@example.org")));
    let bob_wit = s.wit_owned_by(Some(owner("mailto:bob@example.org")));
    let restricted =
        WimseLayer::new(verifier.clone()).accepting_owners(["mailto:alice@example.org"]);

    let (response, body, _) = through_layer(&restricted, signed(&alice_wit));
    assert_eq!(response.status(), 200, "{body}");
    assert_eq!(
        body,
        "spiffe://example.org/client owned by mailto:alice@example.org"
    );
    let (response, body, _) = through_layer(&restricted, signed(&bob_wit));
    assert_eq!(response.status(), 403, "{body}");
    assert!(body.contains(r#""check":"owner""#), "{body}");
    let (response, body, _) = through_layer(&WimseLayer::new(verifier), signed(&bob_wit));
    assert_eq!(response.status(), 200, "{body}");
}
