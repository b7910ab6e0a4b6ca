//! WIT and WPT validation: the published WIMSE examples, one-byte changes to
//! them, and a negative table with one case per rule.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use workload_api::bundle::{Bundle, JwtAuthority};
use workload_api::jwk::{Algorithm, Jwk, PublicKey};
use workload_api::keypair::KeyPair;
use workload_api::wimse::http::request_tokens;
use workload_api::wimse::wit::{Confirmation, WitClaims};
use workload_api::wimse::wpt::{self, BoundTokens};
use workload_api::wimse::{Presented, Profile, Token, Verifier, VerifierConfig, WimseError};
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
        let issuer = KeyPair::generate(Algorithm::ES256).unwrap();
        let workload = KeyPair::generate(Algorithm::ES256).unwrap();
        let now = 1_800_000_000;
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
        }
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
