//! The issuer's agent API end to end: a real issuer on loopback, agents over
//! mTLS, and the results checked with openssl and PyJWT.

use std::process::Command;
use std::time::Duration;

use proto::issuer as pb;
use sigil_issuer::clock::ManualClock;
use sigil_issuer::store::Table;
use sigil_tests::*;
use tokio_stream::StreamExt;
use tonic::Code;
use workload_api::bundle::split_der_concat;

fn sign_params(entry_id: &str, csr: Vec<u8>) -> pb::BatchSignX509SvidsRequest {
    pb::BatchSignX509SvidsRequest {
        params: vec![pb::X509SvidParams {
            entry_id: entry_id.into(),
            csr,
        }],
    }
}

#[tokio::test]
async fn workload_svid_passes_openssl_strict_verification() {
    let issuer = TestIssuer::start().await;
    let mut agent = issuer.attest().await;
    assert!(agent
        .id
        .starts_with("spiffe://example.org/agent/join_token/"));
    let entry = issuer
        .create_entry("spiffe://example.org/web", &agent.id, &["web.example.org"])
        .await;
    let (_key, csr) = new_key_and_csr(Some("spiffe://example.org/web"));
    let result = agent
        .client
        .batch_sign_x509_svids(sign_params(&entry.id, csr))
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    assert_eq!(result.code, 0, "{}", result.message);
    let chain = split_der_concat(&result.cert_chain).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (leaf, roots) = (dir.path().join("leaf.pem"), dir.path().join("bundle.pem"));
    write_pem(&leaf, &chain[..1]);
    write_pem(&roots, issuer.bundle().x509_authorities());
    let (ok, stdout, stderr) = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
        .arg(&roots)
        .arg(&leaf));
    assert!(ok, "openssl verify failed: {stdout}{stderr}");
    let (ok, _, _) = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile"])
        .arg(&roots)
        .arg(&leaf));
    assert!(ok, "serverAuth purpose");

    let (ok, text, _) = run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&leaf));
    assert!(ok);
    let expect = [
        "URI:spiffe://example.org/web",
        "DNS:web.example.org",
        "CA:FALSE",
        "X509v3 Key Usage: critical",
        "Digital Signature",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "Subject: C = US, O = Sigil, CN = web.example.org",
        "X509v3 Authority Key Identifier",
    ];
    for needle in expect {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert_eq!(text.matches("URI:").count(), 1, "exactly one URI SAN");
    assert!(!text.contains("Certificate Sign"));
}

#[tokio::test]
async fn jwt_svid_verifies_with_pyjwt_for_the_right_audience_only() {
    let issuer = TestIssuer::start().await;
    let mut agent = issuer.attest().await;
    let entry = issuer
        .create_entry("spiffe://example.org/api", &agent.id, &[])
        .await;
    let token = agent
        .client
        .sign_jwt_svid(pb::SignJwtSvidRequest {
            entry_id: entry.id.clone(),
            audience: vec!["spiffe://example.org/db".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("bundle.json");
    std::fs::write(&jwks, issuer.bundle().to_jwks_json()).unwrap();
    let script = workspace_root().join("tests/python/verify_jwt_svid.py");
    let verify = |audience: &str| {
        run(Command::new(python())
            .arg(&script)
            .arg(&jwks)
            .arg(&token)
            .arg(audience))
    };
    let (ok, stdout, stderr) = verify("spiffe://example.org/db");
    assert!(ok, "PyJWT rejected a valid JWT-SVID: {stdout}{stderr}");
    assert!(stdout.contains("sub=spiffe://example.org/api"), "{stdout}");
    let (ok, stdout, stderr) = verify("spiffe://example.org/other");
    assert!(!ok, "PyJWT accepted a wrong audience: {stdout}");
    assert!(stderr.contains("InvalidAudienceError"), "{stderr}");
}

#[tokio::test]
async fn rejections_carry_their_own_status_and_write_nothing() {
    let clock = ManualClock::new(now());
    let issuer = TestIssuer::start_with_clock(clock.clone()).await;
    let store = issuer.running.state.store.clone();
    let mut anonymous = issuer.anonymous_client().await;

    // Reused join token.
    let token = issuer.join_token(0).await;
    anonymous
        .attest_agent(attest_request(&token, new_key_and_csr(None).1))
        .await
        .unwrap();
    let agents = store.count(Table::Agents).await.unwrap();
    let used = store.count(Table::UsedJoinTokens).await.unwrap();
    let reused = anonymous
        .attest_agent(attest_request(&token, new_key_and_csr(None).1))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::PermissionDenied, "{reused:?}");
    assert!(
        reused.message().contains("already used"),
        "{}",
        reused.message()
    );

    // Expired join token.
    let token = issuer.join_token(60).await;
    clock.advance(Duration::from_secs(61));
    let expired = anonymous
        .attest_agent(attest_request(&token, new_key_and_csr(None).1))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated, "{expired:?}");
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );
    // Back to real time: the certificates minted next are checked by peers
    // that read the system clock.
    clock.set(now());

    // Unknown join token.
    let unknown = anonymous
        .attest_agent(attest_request("0123456789abcdef", new_key_and_csr(None).1))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert!(unknown.message().contains("unknown"));

    // Malformed CSR at attestation: refused before the token is spent.
    let token = issuer.join_token(0).await;
    let bad_csr = anonymous
        .attest_agent(attest_request(&token, b"not a csr".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(bad_csr.code(), Code::InvalidArgument);
    assert!(
        bad_csr.message().starts_with("csr:"),
        "{}",
        bad_csr.message()
    );
    assert_eq!(store.count(Table::Agents).await.unwrap(), agents);
    assert_eq!(store.count(Table::UsedJoinTokens).await.unwrap(), used);
    // ... and the token still works.
    anonymous
        .attest_agent(attest_request(&token, new_key_and_csr(None).1))
        .await
        .unwrap();

    // CSR for a SPIFFE ID the agent is not authorised for, and a malformed CSR.
    let mut agent = issuer.attest().await;
    let entry = issuer
        .create_entry("spiffe://example.org/web", &agent.id, &[])
        .await;
    let other_agent = issuer.attest().await;
    let foreign = issuer
        .create_entry("spiffe://example.org/secret", &other_agent.id, &[])
        .await;
    let request = pb::BatchSignX509SvidsRequest {
        params: vec![
            pb::X509SvidParams {
                entry_id: entry.id.clone(),
                csr: new_key_and_csr(Some("spiffe://example.org/secret")).1,
            },
            pb::X509SvidParams {
                entry_id: foreign.id.clone(),
                csr: new_key_and_csr(Some("spiffe://example.org/secret")).1,
            },
            pb::X509SvidParams {
                entry_id: entry.id.clone(),
                csr: b"\x30\x00garbage".to_vec(),
            },
            pb::X509SvidParams {
                entry_id: entry.id.clone(),
                csr: new_key_and_csr(None).1,
            },
            pb::X509SvidParams {
                entry_id: entry.id.clone(),
                csr: new_key_and_csr(Some("spiffe://example.org/web")).1,
            },
        ],
    };
    let results = agent
        .client
        .batch_sign_x509_svids(request)
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<Code> = results.iter().map(|r| Code::from_i32(r.code)).collect();
    assert_eq!(
        codes,
        [
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::InvalidArgument,
            Code::Ok
        ],
        "{results:?}"
    );
    assert!(
        results[0].message.contains("spiffe://example.org/secret"),
        "{}",
        results[0].message
    );
    assert!(
        results[1].message.contains("not authorized"),
        "{}",
        results[1].message
    );
    assert!(
        results[2].message.starts_with("csr:"),
        "{}",
        results[2].message
    );
    for failed in &results[..4] {
        assert!(failed.cert_chain.is_empty());
    }
    assert!(!results[4].cert_chain.is_empty());

    // JWT for an entry of another agent.
    let denied = agent
        .client
        .sign_jwt_svid(pb::SignJwtSvidRequest {
            entry_id: foreign.id.clone(),
            audience: vec!["x".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let no_aud = agent
        .client
        .sign_jwt_svid(pb::SignJwtSvidRequest {
            entry_id: entry.id.clone(),
            audience: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(no_aud.code(), Code::InvalidArgument);

    // WITs: each refused key says what is wrong with it; the good one is signed.
    let es256 = workload_api::keypair::KeyPair::generate(workload_api::jwk::Algorithm::ES256)
        .unwrap()
        .public_jwk();
    let jwk = |alg: &str| {
        let mut jwk = es256.clone();
        jwk.alg = Some(alg.into());
        serde_json::to_string(&jwk).unwrap()
    };
    let ed25519 = workload_api::keypair::KeyPair::generate(workload_api::jwk::Algorithm::EdDSA)
        .unwrap()
        .public_jwk();
    let wit_cases = [
        (
            foreign.id.clone(),
            jwk("ES256"),
            Code::PermissionDenied,
            "not authorized",
        ),
        (
            entry.id.clone(),
            "{not json".into(),
            Code::InvalidArgument,
            "not a JWK",
        ),
        (
            entry.id.clone(),
            jwk("HS256"),
            Code::InvalidArgument,
            "\"HS256\" is not allowed",
        ),
        (
            entry.id.clone(),
            serde_json::to_string(&ed25519).unwrap(),
            Code::InvalidArgument,
            "\"EdDSA\" is not allowed",
        ),
        (
            entry.id.clone(),
            jwk("RS256"),
            Code::InvalidArgument,
            "does not fit a EC key",
        ),
        (entry.id.clone(), jwk("ES256"), Code::Ok, ""),
    ];
    let params = wit_cases
        .iter()
        .map(|(entry_id, public_jwk, _, _)| pb::WitSvidParams {
            entry_id: entry_id.clone(),
            public_jwk: public_jwk.clone(),
        })
        .collect();
    let results = agent
        .client
        .batch_sign_wit_svids(pb::BatchSignWitSvidsRequest { params })
        .await
        .unwrap()
        .into_inner()
        .results;
    for ((_, _, code, message), result) in wit_cases.iter().zip(&results) {
        assert_eq!(Code::from_i32(result.code), *code, "{result:?}");
        assert!(result.message.contains(message), "{result:?}");
        assert_eq!(result.token.is_empty(), *code != Code::Ok, "{result:?}");
    }

    // Without a client certificate, only attestation is allowed.
    let anonymous_sign = anonymous
        .batch_sign_x509_svids(sign_params(&entry.id, new_key_and_csr(None).1))
        .await
        .unwrap_err();
    assert_eq!(anonymous_sign.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn entry_stream_pushes_snapshot_in_chunks_then_changes() {
    let issuer = TestIssuer::start().await;
    let mut agent = issuer.attest().await;
    let count = 1_200;
    for i in 0..count {
        issuer
            .create_entry(&format!("spiffe://example.org/w/{i}"), &agent.id, &[])
            .await;
    }
    let mut stream = agent
        .client
        .sync_entries(pb::SyncEntriesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    let mut messages = 0;
    loop {
        let message = stream.next().await.unwrap().unwrap();
        assert!(message.snapshot);
        if messages == 0 {
            assert!(
                !message.bundle.is_empty(),
                "the first message carries the bundle"
            );
        }
        messages += 1;
        received += message.upserted.len();
        if message.snapshot_complete {
            break;
        }
    }
    assert_eq!(received, count);
    assert_eq!(messages, 3, "1,200 entries arrive in chunks of 500");

    // A new entry is pushed without polling.
    let started = std::time::Instant::now();
    let created = issuer
        .create_entry("spiffe://example.org/new", &agent.id, &[])
        .await;
    let update = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!update.snapshot);
    assert_eq!(update.upserted.len(), 1);
    assert_eq!(update.upserted[0].id, created.id);
    eprintln!("entry create to push: {:?}", started.elapsed());

    // A deletion is pushed as a removal.
    issuer
        .admin()
        .await
        .delete_entry(proto::admin::EntryId {
            id: created.id.clone(),
        })
        .await
        .unwrap();
    let update = stream.next().await.unwrap().unwrap();
    assert_eq!(update.removed_ids, [created.id]);

    // Eviction ends the stream with PermissionDenied and refuses further calls.
    issuer
        .admin()
        .await
        .evict_agent(proto::admin::AgentId {
            spiffe_id: agent.id.clone(),
        })
        .await
        .unwrap();
    let ended = stream.next().await.unwrap().unwrap_err();
    assert_eq!(ended.code(), Code::PermissionDenied);
    let refused = agent
        .client
        .fetch_bundle(pb::FetchBundleRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("attest again"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn renewal_rotates_the_agent_serial_and_ban_refuses() {
    let issuer = TestIssuer::start().await;
    let mut agent = issuer.attest().await;
    let (pkcs8, csr) = new_key_and_csr(None);
    let renewed = agent
        .client
        .renew_agent(pb::RenewAgentRequest { csr })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    assert_eq!(renewed.spiffe_id, agent.id);
    let identity = sigil_agent::issuer_client::ClientIdentity {
        chain: split_der_concat(&renewed.cert_chain).unwrap(),
        pkcs8: std::sync::Arc::new(pkcs8),
    };
    let mut renewed_client = sigil_agent::issuer_client::connect(
        issuer.running.agent_api_address,
        &issuer.bundle(),
        Some(&identity),
    )
    .await
    .unwrap();
    renewed_client
        .fetch_bundle(pb::FetchBundleRequest {})
        .await
        .unwrap();
    // Once the renewed SVID is used, the old one is no longer current.
    let stale = agent
        .client
        .fetch_bundle(pb::FetchBundleRequest {})
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::PermissionDenied);
    assert!(stale.message().contains("no longer current"));

    issuer
        .admin()
        .await
        .ban_agent(proto::admin::AgentId {
            spiffe_id: agent.id.clone(),
        })
        .await
        .unwrap();
    let banned = renewed_client
        .fetch_bundle(pb::FetchBundleRequest {})
        .await
        .unwrap_err();
    assert_eq!(banned.code(), Code::PermissionDenied);
    assert!(banned.message().contains("banned"));
}
