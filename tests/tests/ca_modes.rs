//! CA modes: an upstream CA from disk (Sigil's CA as an intermediate, serving
//! the right chain) and the selectable key types, checked with openssl and PyJWT.

use std::process::Command;
use std::sync::Arc;

use proto::issuer as pb;
use sigil_issuer::ca::keys::KeyType;
use sigil_issuer::ca::UpstreamCa;
use sigil_issuer::clock::SystemClock;
use sigil_tests::*;
use workload_api::bundle::split_der_concat;

async fn sign_svid(issuer: &TestIssuer) -> Vec<Vec<u8>> {
    let mut agent = issuer.attest().await;
    let entry = issuer
        .create_entry("spiffe://example.org/web", &agent.id, &[])
        .await;
    let (_key, csr) = new_key_and_csr(Some("spiffe://example.org/web"));
    let result = agent
        .client
        .batch_sign_x509_svids(pb::BatchSignX509SvidsRequest {
            params: vec![pb::X509SvidParams {
                entry_id: entry.id,
                csr,
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    assert_eq!(result.code, 0, "{}", result.message);
    split_der_concat(&result.cert_chain).unwrap()
}

fn openssl_verify(dir: &std::path::Path, roots: &[Vec<u8>], chain: &[Vec<u8>]) -> (bool, String) {
    let (root_pem, untrusted, leaf) = (
        dir.join("roots.pem"),
        dir.join("untrusted.pem"),
        dir.join("leaf.pem"),
    );
    write_pem(&root_pem, roots);
    write_pem(&leaf, &chain[..1]);
    let mut cmd = Command::new("openssl");
    cmd.args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
        .arg(&root_pem);
    if chain.len() > 1 {
        write_pem(&untrusted, &chain[1..]);
        cmd.arg("-untrusted").arg(&untrusted);
    }
    let (ok, stdout, stderr) = run(cmd.arg(&leaf));
    (ok, format!("{stdout}{stderr}"))
}

#[tokio::test]
async fn upstream_ca_makes_sigil_an_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        dir.path().join("upstream.pem"),
        dir.path().join("upstream.key"),
    );
    let (ok, _, stderr) = run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
        ])
        .args(["-subj", "/O=Upstream/CN=Upstream Root CA"])
        .args([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert!(ok, "{stderr}");
    let upstream = UpstreamCa {
        cert_file: cert.clone(),
        key_file: key,
        bundle_file: None,
    };
    let issuer =
        TestIssuer::start_with(Arc::new(SystemClock), |c| c.upstream_ca = Some(upstream)).await;
    let bundle = issuer.bundle();
    let upstream_der =
        workload_api::pem::blocks(&std::fs::read_to_string(&cert).unwrap(), "CERTIFICATE");
    assert_eq!(
        bundle.x509_authorities(),
        upstream_der.as_slice(),
        "the bundle publishes the upstream root"
    );

    let chain = sign_svid(&issuer).await;
    assert_eq!(chain.len(), 2, "leaf and Sigil's intermediate");
    let (ok, out) = openssl_verify(dir.path(), bundle.x509_authorities(), &chain);
    assert!(ok, "{out}");
    write_pem(&dir.path().join("intermediate.pem"), &chain[1..]);
    let (_, text, _) = run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(dir.path().join("intermediate.pem")));
    assert!(
        text.contains("Issuer: O = Upstream, CN = Upstream Root CA"),
        "{text}"
    );
    assert!(text.contains("URI:spiffe://example.org"), "{text}");
    assert!(text.contains("CA:TRUE"), "{text}");
    // Without the intermediate, the leaf does not verify: the chain is needed.
    let (ok, _) = openssl_verify(dir.path(), bundle.x509_authorities(), &chain[..1]);
    assert!(!ok);
}

#[tokio::test]
async fn selectable_key_types_sign_verifiable_svids() {
    for (ca_key, jwt_key, alg) in [
        (KeyType::EcP384, KeyType::EcP384, "ES384"),
        (KeyType::Rsa2048, KeyType::Rsa2048, "RS256"),
    ] {
        let issuer = TestIssuer::start_with(Arc::new(SystemClock), |c| {
            c.ca_key_type = ca_key;
            c.jwt_key_type = jwt_key;
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let chain = sign_svid(&issuer).await;
        let (ok, out) = openssl_verify(dir.path(), issuer.bundle().x509_authorities(), &chain);
        assert!(ok, "{ca_key:?}: {out}");

        let mut agent = issuer.attest().await;
        let entry = issuer
            .create_entry("spiffe://example.org/api", &agent.id, &[])
            .await;
        let token = agent
            .client
            .sign_jwt_svid(pb::SignJwtSvidRequest {
                entry_id: entry.id,
                audience: vec!["db".into()],
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let jwks = dir.path().join("bundle.json");
        std::fs::write(&jwks, issuer.bundle().to_jwks_json()).unwrap();
        let (ok, stdout, stderr) = run(Command::new(python())
            .arg(workspace_root().join("tests/python/verify_jwt_svid.py"))
            .arg(&jwks)
            .arg(&token)
            .arg("db"));
        assert!(ok, "{alg}: {stdout}{stderr}");
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                token.split('.').next().unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], alg);
        issuer.running.shutdown().await;
    }
}
