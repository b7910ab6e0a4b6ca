//! OIDC discovery for JWT-SVIDs: the issuer's HTTP endpoint serves
//! `/.well-known/openid-configuration` and `/keys` for its configured
//! issuer URL, JWT-SVIDs carry that `iss`, and PyJWT's PyJWKClient verifies
//! one against the discovered keys, as a cloud provider federating with the
//! issuer would. Without `oidc_issuer` the documents are not served.

use std::process::Command;
use std::sync::Arc;

use proto::issuer as pb;
use sigil_issuer::clock::SystemClock;
use sigil_tests::*;

const ISSUER_URL: &str = "https://oidc.example.org";
const AUDIENCE: &str = "https://cloud.example.com";

#[tokio::test(flavor = "multi_thread")]
async fn a_jwt_svid_verifies_against_the_discovered_keys() {
    let issuer = TestIssuer::start_with(Arc::new(SystemClock), |c| {
        c.oidc_issuer = Some(ISSUER_URL.into());
    })
    .await;
    let (status, body) = issuer.http_get("/.well-known/openid-configuration").await;
    assert_eq!(status, 200, "{body}");
    let discovery: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(discovery["issuer"], ISSUER_URL);
    assert_eq!(discovery["jwks_uri"], format!("{ISSUER_URL}/keys"));
    let (status, body) = issuer.http_get("/keys").await;
    assert_eq!(status, 200);
    let keys: serde_json::Value = serde_json::from_str(&body).unwrap();
    let keys = keys["keys"].as_array().unwrap();
    assert_eq!(
        keys.len(),
        issuer.bundle().jwt_authorities().len(),
        "JWT-SVID keys only"
    );
    assert!(keys
        .iter()
        .all(|k| k["use"] == "sig" && k["alg"] == "ES256"));

    let agent = issuer.attest().await;
    let entry = issuer
        .create_entry("spiffe://example.org/web", &agent.id, &[])
        .await;
    let token = agent
        .client
        .clone()
        .sign_jwt_svid(pb::SignJwtSvidRequest {
            entry_id: entry.id,
            audience: vec![AUDIENCE.into()],
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let base = format!("http://{}", issuer.running.http_address.unwrap());
    let script = workspace_root().join("tests/python/oidc_verify.py");
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        run(Command::new(python())
            .arg(&script)
            .args([base.as_str(), token.as_str(), AUDIENCE]))
    })
    .await
    .unwrap();
    assert!(
        ok,
        "PyJWKClient could not verify the JWT-SVID:\n{out}\n{err}"
    );
    let verified: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(verified["claims"]["iss"], ISSUER_URL);
    assert_eq!(verified["claims"]["sub"], "spiffe://example.org/web");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_oidc_issuer_discovery_is_not_served() {
    let issuer = TestIssuer::start().await;
    for path in ["/.well-known/openid-configuration", "/keys"] {
        let (status, body) = issuer.http_get(path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(
            body,
            "OIDC discovery is off: set oidc_issuer in the issuer's configuration"
        );
    }
}
