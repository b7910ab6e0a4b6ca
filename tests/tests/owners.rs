//! Owner binding end to end, with real components and independent clients.
//!
//! What it proves:
//! - CreateEntry/UpdateEntry refuse every bad consent (none, another SPIFFE
//!   ID, expired, another key, other selectors, a revoked or unknown owner)
//!   with the gRPC code and the message the product defines, and write
//!   nothing; a valid consent binds the entry to the owner's id, key
//!   thumbprint and consent.
//! - The binding an owner-bound workload's credentials carry reads the same
//!   to independent readers: the X.509 extension found by `cryptography`
//!   and decoded by pyasn1, named by `openssl x509 -text`, the `owner` claim
//!   of a JWT-SVID (Python `spiffe`) and a WIT-SVID, both verified by PyJWT;
//!   and the Rust `spiffe` crate accepts the SVID despite the OID's 128-bit
//!   arc.
//! - `sigil-issuer owner revoke` takes the SVID off an open Python
//!   X509Source within 5 s (measured, printed), and the agent's
//!   ValidateJWTSVID then refuses a JWT-SVID minted before it.
//! - Owner ids and consents over their limits are refused before any
//!   lookup, naming the limit.
//! - The `sigil-issuer owner` commands round-trip: register (PEM and JWK),
//!   list, show, revoke, re-register refused, and `owner consent` output
//!   verifies against the registered key.
//!
//! Owner keys come from the `openssl` CLI and consent from the real
//! `sigil-issuer owner consent`, except the expired consent, which only the
//! library can sign.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use proto::admin as adm;
use proto::workload as wl;
use serde_json::{json, Value};
use sigil_issuer::clock::rfc3339;
use sigil_issuer::store::Table;
use sigil_tests::owners::*;
use sigil_tests::*;
use tonic::Code;
use workload_api::consent::{self, ConsentClaims};
use workload_api::owner::{OWNER_BINDING_OID, OWNER_BINDING_OID_DER};

const ALICE: &str = "mailto:alice@example.org";
const CAROL: &str = "https://example.org/people/carol";
const BOT: &str = "spiffe://example.org/agents/alice/bot";
const PARENT: &str = "spiffe://example.org/agent/join_token/abc";

/// `owner_binding.py ARGS`, which must succeed; the JSON it printed last.
async fn python_json(args: &[&str]) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(workspace_root().join("tests/python/owner_binding.py"))
        .args(args);
    let (ok, out, err) = run_blocking(cmd).await;
    assert!(ok, "owner_binding.py {args:?} failed:\n{out}\n{err}");
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("no JSON from {args:?} ({e}):\n{out}"))
}

/// The public key (JWK) and RFC 7638 thumbprint of a PEM public key, as
/// PyJWT and Python's hashlib compute them.
async fn python_jwk(public_pem: &Path) -> (Value, String) {
    let out = python_json(&["jwk", public_pem.to_str().unwrap()]).await;
    (
        out["jwk"].clone(),
        out["thumbprint"].as_str().unwrap().to_owned(),
    )
}

async fn entry_count(issuer: &TestIssuer) -> i64 {
    issuer
        .running
        .state
        .store
        .count(Table::Entries)
        .await
        .unwrap()
}

/// CreateEntry with `f` must fail with `code` and exactly `message`, and
/// leave the entries table as it was.
async fn assert_create_refused(
    issuer: &TestIssuer,
    case: &str,
    f: adm::EntryFields,
    code: Code,
    message: &str,
) {
    let before = entry_count(issuer).await;
    let status = issuer
        .admin()
        .await
        .create_entry(adm::CreateEntryRequest { entry: Some(f) })
        .await
        .expect_err(case);
    assert_eq!(
        (status.code(), status.message()),
        (code, message),
        "{case}: code and message"
    );
    assert_eq!(
        entry_count(issuer).await,
        before,
        "{case}: an entry was written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_consent_is_refused_precisely_and_writes_nothing() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (alice_key, alice_pub) = openssl_key(d, "alice", false).await;
    let (mallory_key, mallory_pub) = openssl_key(d, "mallory", false).await;
    let (carol_key, carol_pub) = openssl_key(d, "carol", true).await;
    let alice = register_owner(&issuer, ALICE, &alice_pub).await;
    let (_, alice_tp) = python_jwk(&alice_pub).await;
    let (_, mallory_tp) = python_jwk(&mallory_pub).await;
    assert_eq!(
        alice.thumbprint, alice_tp,
        "the registered thumbprint is RFC 7638's"
    );
    assert_eq!(alice.revoked_at, 0);
    let uid1000 = ["unix:uid:1000"];

    let (good, _) = cli_consent(d, "good", ALICE, &alice_key, BOT, &uid1000, "1h").await;
    let baseline = entry_count(&issuer).await;

    // Owner given, no consent.
    assert_create_refused(
        &issuer,
        "no consent",
        fields(BOT, PARENT, &uid1000, ALICE, ""),
        Code::InvalidArgument,
        "consent: required for an entry with an owner",
    )
    .await;
    // Consent given, no owner.
    assert_create_refused(
        &issuer,
        "no owner",
        fields(BOT, PARENT, &uid1000, "", &good),
        Code::InvalidArgument,
        "owner_id: required with a consent",
    )
    .await;

    // Consent for another SPIFFE ID.
    let other_id = "spiffe://example.org/agents/alice/other";
    let (other, _) = cli_consent(d, "other-id", ALICE, &alice_key, other_id, &uid1000, "1h").await;
    assert_create_refused(
        &issuer,
        "another SPIFFE ID",
        fields(BOT, PARENT, &uid1000, ALICE, &other),
        Code::InvalidArgument,
        &format!("consent: covers {other_id}, not {BOT}"),
    )
    .await;

    // Expired consent: only the library signs one with exp in the past.
    let signer =
        workload_api::owner::load_signing_key(&std::fs::read_to_string(&alice_key).unwrap())
            .unwrap();
    let now = unix_now();
    let expired_claims = ConsentClaims {
        iss: ALICE.into(),
        spiffe_id: Some(BOT.into()),
        spiffe_id_prefix: None,
        selectors: vec!["unix:uid:1000".into()],
        iat: now - 7200,
        nbf: now - 7200,
        exp: now - 3600,
        jti: "expired-1".into(),
        delegation: None,
    };
    let expired = consent::sign(&expired_claims, &signer).unwrap();
    let expired_message = format!("consent expired at {}", rfc3339((now - 3600) as i64));
    assert_create_refused(
        &issuer,
        "expired",
        fields(BOT, PARENT, &uid1000, ALICE, &expired),
        Code::InvalidArgument,
        &expired_message,
    )
    .await;

    // Signed by another key, claiming to be alice's.
    let (forged, _) = cli_consent(d, "forged", ALICE, &mallory_key, BOT, &uid1000, "1h").await;
    assert_create_refused(
        &issuer,
        "another key",
        fields(BOT, PARENT, &uid1000, ALICE, &forged),
        Code::InvalidArgument,
        &format!(
            "consent was signed by another key: kid {:?}, the owner's key is {alice_tp}",
            Some(mallory_tp.as_str())
        ),
    )
    .await;

    // Selectors differ from the entry's.
    let (uid1001, _) = cli_consent(
        d,
        "uid1001",
        ALICE,
        &alice_key,
        BOT,
        &["unix:uid:1001"],
        "1h",
    )
    .await;
    assert_create_refused(
        &issuer,
        "other selectors",
        fields(BOT, PARENT, &uid1000, ALICE, &uid1001),
        Code::InvalidArgument,
        "consent: its selectors [unix:uid:1001] differ from the entry's [unix:uid:1000]",
    )
    .await;

    // A revoked owner (P-256, so ES256 consent goes through the CLI too):
    // its own valid consent no longer binds.
    register_owner(&issuer, CAROL, &carol_pub).await;
    let (carols, _) = cli_consent(d, "carol", CAROL, &carol_key, BOT, &uid1000, "1h").await;
    let revoked = issuer
        .admin()
        .await
        .revoke_owner(adm::OwnerId { id: CAROL.into() })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked_at > 0);
    assert_create_refused(
        &issuer,
        "revoked owner",
        fields(BOT, PARENT, &uid1000, CAROL, &carols),
        Code::FailedPrecondition,
        &format!(
            "owner {CAROL} was revoked at {}",
            rfc3339(revoked.revoked_at)
        ),
    )
    .await;

    // An owner never registered.
    assert_create_refused(
        &issuer,
        "unknown owner",
        fields(BOT, PARENT, &uid1000, "mailto:nobody@example.org", &good),
        Code::FailedPrecondition,
        "owner_id: owner mailto:nobody@example.org is not registered",
    )
    .await;
    assert_eq!(entry_count(&issuer).await, baseline);

    // The valid consent binds: the stored entry names the owner, its key
    // and the consent, and expires with the consent.
    let created = issuer
        .admin()
        .await
        .create_entry(adm::CreateEntryRequest {
            entry: Some(fields(BOT, PARENT, &uid1000, ALICE, &good)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(entry_count(&issuer).await, baseline + 1);
    let stored = issuer
        .admin()
        .await
        .get_entry(adm::EntryId {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let owner = stored.owner.clone().expect("the stored entry has an owner");
    assert_eq!(owner.id, ALICE);
    assert_eq!(owner.key_thumbprint, alice_tp);
    assert_eq!(owner.consent, good);
    assert_eq!(owner.consent_sha256, sha256_b64(&good));
    assert_eq!((owner.delegated_from.as_str(), owner.actors.len()), ("", 0));
    let key = workload_api::owner::parse_public_key(&alice.public_key).unwrap();
    let claims = consent::verify(&good, &key, unix_now()).unwrap();
    assert_eq!(
        stored.expires_at, claims.exp as i64,
        "capped to the consent's exp"
    );

    // UpdateEntry with an expired consent: refused, revision unchanged.
    let status = issuer
        .admin()
        .await
        .update_entry(adm::UpdateEntryRequest {
            id: created.id.clone(),
            entry: Some(fields(BOT, PARENT, &uid1000, ALICE, &expired)),
            revision: stored.revision,
        })
        .await
        .expect_err("update with an expired consent");
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, expired_message.as_str())
    );
    let after = issuer
        .admin()
        .await
        .get_entry(adm::EntryId { id: created.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.revision, stored.revision);
    assert_eq!(after.owner.unwrap().consent, good);
    assert_eq!(entry_count(&issuer).await, baseline + 1);
}

/// A TestNode with alice registered (Ed25519 key from openssl) and BOT
/// bound to her for this process's uid; (alice, consent text, consent file).
async fn bound_node(node: &TestNode, dir: &Path) -> (adm::Owner, String, PathBuf) {
    let (key, public) = openssl_key(dir, "alice", false).await;
    let alice = register_owner(&node.issuer, ALICE, &public).await;
    let selector = format!("unix:uid:{}", current_uid());
    let (consent, file) =
        cli_consent(dir, "bot", ALICE, &key, BOT, &[selector.as_str()], "1h").await;
    create_at(
        &node.issuer.running.admin_socket_path,
        fields(BOT, &node.agent_id, &[selector.as_str()], ALICE, &consent),
    )
    .await;
    node.wait_for_svids(1).await;
    (alice, consent, file)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binding_reads_independently() {
    let node = TestNode::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, consent, consent_file) = bound_node(&node, dir.path()).await;
    let consent_hash = sha256_b64(&consent);
    let endpoint = node.endpoint();

    // (a) Python `spiffe` fetches the SVID, `cryptography` finds the
    // extension by OID, pyasn1 decodes it.
    let pem = dir.path().join("svid.pem");
    let read = python_json(&[
        "x509",
        &endpoint,
        consent_file.to_str().unwrap(),
        pem.to_str().unwrap(),
    ])
    .await;
    assert_eq!(
        read,
        json!({
            "spiffe_id": BOT,
            "critical": false,
            "owner": ALICE,
            "key_thumbprint": alice.thumbprint,
            "consent_sha256": consent_hash,
            "consent_file_sha256": consent_hash,
            "actors": null,
        }),
        "the X.509 binding as Python reads it"
    );

    // (b) openssl names the extension by its dotted OID.
    let mut cmd = Command::new("openssl");
    cmd.args(["x509", "-noout", "-text", "-in"]).arg(&pem);
    let (ok, text, err) = run_blocking(cmd).await;
    assert!(ok, "openssl x509: {err}");
    assert!(text.contains(OWNER_BINDING_OID), "{text}");
    assert!(text.contains(&format!("URI:{BOT}")), "{text}");

    // (c) The `owner` claim of a JWT-SVID (Python `spiffe`, PyJWT against the
    // JWT bundle) and of a WIT-SVID (PyJWT against the WIT bundle).
    let claim = json!({"id": ALICE, "jkt": alice.thumbprint, "consent_sha256": consent_hash});
    let audience = "spiffe://example.org/db";
    let jwt = python_json(&["jwt", &endpoint, audience]).await;
    assert_eq!(jwt["claims"]["sub"], BOT);
    assert_eq!(jwt["claims"]["owner"], claim, "JWT-SVID owner claim: {jwt}");
    println!("JWT-SVID owner claim (PyJWT): {}", jwt["claims"]["owner"]);

    let mut client = workload_api::client::connect(&workload_api::client::EndpointAddress::Unix(
        node.socket.clone(),
    ))
    .await
    .unwrap();
    let wits = first_message(client.fetch_witsvid(wl::WitsvidRequest::default()).await).await;
    let wit = wits.svids[0].wit_svid.clone();
    let wit_bundles = first_message(client.fetch_wit_bundles(wl::WitBundlesRequest {}).await).await;
    let bundle_file = dir.path().join("wit-bundle.json");
    std::fs::write(&bundle_file, &wit_bundles.bundles["spiffe://example.org"]).unwrap();
    let wit_read = python_json(&["wit", bundle_file.to_str().unwrap(), &wit]).await;
    assert_eq!(wit_read["header"]["typ"], "wit+jwt");
    assert_eq!(wit_read["claims"]["sub"], BOT);
    assert_eq!(
        wit_read["claims"]["owner"], claim,
        "WIT owner claim: {wit_read}"
    );
    println!(
        "WIT-SVID owner claim (PyJWT): {}",
        wit_read["claims"]["owner"]
    );

    // (d) The Rust `spiffe` crate, a reference client, takes the SVID whose
    // extension OID has a 128-bit arc.
    let reference = spiffe::WorkloadApiClient::connect_to(&endpoint)
        .await
        .unwrap();
    let svid = reference
        .fetch_x509_svid()
        .await
        .expect("the spiffe crate accepts the owner-bound SVID");
    assert_eq!(svid.spiffe_id().to_string(), BOT);
    let leaf = svid.leaf().as_bytes();
    assert!(
        leaf.windows(OWNER_BINDING_OID_DER.len())
            .any(|w| w == OWNER_BINDING_OID_DER),
        "the leaf the crate returned carries the extension"
    );
    let source = spiffe::X509Source::builder()
        .endpoint(endpoint.clone())
        .build()
        .await
        .expect("an X509Source opens on the owner-bound SVID");
    assert_eq!(source.svid().unwrap().spiffe_id().to_string(), BOT);
    source.shutdown().await;
}

/// A running `owner_binding.py watch`: its JSON lines with their arrival
/// times.
struct Watcher {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<(Instant, Value)>,
    seen: Vec<(Instant, Value)>,
}

impl Watcher {
    fn start(endpoint: &str) -> Self {
        let mut child = Command::new(python())
            .arg(workspace_root().join("tests/python/owner_binding.py"))
            .args(["watch", endpoint])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let value =
                    serde_json::from_str(&line).unwrap_or_else(|_| json!({"unparsed": line}));
                if tx.send((Instant::now(), value)).is_err() {
                    return;
                }
            }
        });
        Watcher {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (blocking) up to `limit` for a line `pred` accepts; its arrival.
    fn wait_for(&mut self, limit: Duration, pred: impl Fn(&Value) -> bool) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, value)) => {
                    let hit = pred(&value);
                    self.seen.push((at, value));
                    if hit {
                        return Some(at);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Every line that has arrived so far, without waiting.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Closing stdin stops the script; kill it if it does not.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_state(value: &Value, source: &str, state: &str) -> bool {
    value["source"] == source && value["state"] == state
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_the_owner_takes_the_svid_off_an_open_python_source_within_5s() {
    let node = TestNode::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let socket = node.issuer.running.admin_socket_path.clone();
    let (key, public) = openssl_key(d, "alice", false).await;
    let alice = register_owner(&node.issuer, ALICE, &public).await;
    let selector = format!("unix:uid:{}", current_uid());
    let (consent, consent_file) =
        cli_consent(d, "bot", ALICE, &key, BOT, &[selector.as_str()], "1h").await;

    // The entry through the CLI: `entry create --owner --consent FILE`.
    let created = issuer_json(
        &socket,
        &[
            "entry",
            "create",
            "--spiffe-id",
            BOT,
            "--parent-id",
            &node.agent_id,
            "--selector",
            &selector,
            "--owner",
            ALICE,
            "--consent",
            consent_file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(created["owner"]["id"], ALICE);
    assert_eq!(
        created["owner"]["key_thumbprint"],
        alice.thumbprint.as_str()
    );
    assert_eq!(created["owner"]["consent"], consent.as_str());
    assert_eq!(created["owner"]["consent_sha256"], sha256_b64(&consent));
    node.wait_for_svids(1).await;

    // A JWT-SVID minted before the revocation, for ValidateJWTSVID after it.
    let mut client = workload_api::client::connect(&workload_api::client::EndpointAddress::Unix(
        node.socket.clone(),
    ))
    .await
    .unwrap();
    let audience = "spiffe://example.org/db";
    let jwt = client
        .fetch_jwtsvid(wl::JwtsvidRequest {
            audience: vec![audience.into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .svids[0]
        .svid
        .clone();

    let endpoint = node.endpoint();
    let mut watcher = tokio::task::spawn_blocking(move || {
        let mut watcher = Watcher::start(&endpoint);
        let up = watcher.wait_for(Duration::from_secs(30), |v| {
            is_state(v, "fail_closed", "svid")
                && v["ids"] == json!([BOT])
                && v["owner_bound"] == json!([true])
        });
        assert!(
            up.is_some(),
            "the Python source never held the SVID: {:?}",
            watcher.seen
        );
        watcher
    })
    .await
    .unwrap();

    // Revoke with the real CLI; measure until Python reports the SVID gone.
    let started = Instant::now();
    let revoked = issuer_json(&socket, &["owner", "revoke", "--id", ALICE]).await;
    assert_eq!(revoked["id"], ALICE);
    assert!(revoked["revoked_at"].as_i64().unwrap() > 0, "{revoked}");
    let (mut watcher, gone) = tokio::task::spawn_blocking(move || {
        let gone = watcher.wait_for(Duration::from_secs(15), |v| {
            is_state(v, "fail_closed", "error")
        });
        (watcher, gone)
    })
    .await
    .unwrap();
    let gone = gone.unwrap_or_else(|| {
        panic!(
            "the Python source still holds the SVID 15 s after revocation: {:?}",
            watcher.seen
        )
    });
    let latency = gone - started;
    println!(
        "owner revoke -> SVID gone from the Python X509Source: {} ms",
        latency.as_millis()
    );
    assert!(
        latency < Duration::from_secs(5),
        "revocation took {latency:?} to reach the Python source"
    );

    // The agent now issues nothing to this workload.
    let reference = spiffe::WorkloadApiClient::connect_to(node.endpoint())
        .await
        .unwrap();
    assert!(
        reference.fetch_x509_svid().await.is_err(),
        "the agent still serves an X509-SVID after the revocation"
    );

    // ValidateJWTSVID on the agent refuses a JWT-SVID minted before the
    // revocation (polled: the agent learns revocations asynchronously).
    let refused = loop {
        let validated = client
            .validate_jwtsvid(wl::ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: jwt.clone(),
            })
            .await;
        match validated {
            Err(status) => break status,
            Ok(response) => assert!(
                started.elapsed() < Duration::from_secs(5),
                "ValidateJWTSVID still accepts the revoked owner's JWT-SVID (as {}) 5 s after the revocation",
                response.into_inner().spiffe_id
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "owner revoke -> ValidateJWTSVID refuses: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(
        (refused.code(), refused.message()),
        (
            Code::InvalidArgument,
            format!("the JWT-SVID is refused: its owner {ALICE} is revoked").as_str()
        )
    );

    // Observation, not an assertion: an X509Source on the package's default
    // (retrying) client keeps serving its last SVID; printed for the record.
    watcher.drain();
    let default_states: Vec<&Value> = watcher
        .seen
        .iter()
        .filter(|(_, v)| v["source"] == "default")
        .map(|(_, v)| v)
        .collect();
    println!(
        "default-retry Python X509Source states seen: {}",
        serde_json::to_string(&default_states).unwrap()
    );
    drop(watcher);
}

#[tokio::test(flavor = "multi_thread")]
async fn owner_cli_round_trip() {
    let issuer = TestIssuer::start().await;
    let socket = issuer.running.admin_socket_path.clone();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (alice_key, alice_pub) = openssl_key(d, "alice", false).await;
    let (carol_key, carol_pub) = openssl_key(d, "carol", true).await;
    let (alice_jwk, alice_tp) = python_jwk(&alice_pub).await;
    let (carol_jwk, carol_tp) = python_jwk(&carol_pub).await;
    let carol_jwk_file = d.join("carol.jwk");
    std::fs::write(&carol_jwk_file, carol_jwk.to_string()).unwrap();

    // Register: a PEM public key and, for the second owner, a JWK.
    let before = unix_now() as i64;
    let alice = issuer_json(
        &socket,
        &[
            "owner",
            "register",
            "--id",
            ALICE,
            "--public-key",
            alice_pub.to_str().unwrap(),
        ],
    )
    .await;
    let carol = issuer_json(
        &socket,
        &[
            "owner",
            "register",
            "--id",
            CAROL,
            "--public-key",
            carol_jwk_file.to_str().unwrap(),
        ],
    )
    .await;
    let after = unix_now() as i64;
    for (owner, id, tp, jwk) in [
        (&alice, ALICE, &alice_tp, &alice_jwk),
        (&carol, CAROL, &carol_tp, &carol_jwk),
    ] {
        assert_eq!(owner["id"], id);
        assert_eq!(
            owner["thumbprint"],
            tp.as_str(),
            "RFC 7638 thumbprint of {id}"
        );
        assert_eq!(owner["revoked_at"], 0);
        let created = owner["created_at"].as_i64().unwrap();
        assert!((before..=after).contains(&created), "{owner}");
        for member in ["kty", "crv", "x"] {
            assert_eq!(owner["public_key"][member], jwk[member], "{id} {member}");
        }
    }
    assert_eq!(carol["public_key"]["y"], carol_jwk["y"]);

    // List and show.
    let list = issuer_json(&socket, &["owner", "list"]).await;
    // Listed by (created_at, id): registration order, ties within a second
    // by id.
    let listed: Vec<(i64, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["created_at"].as_i64().unwrap(), o["id"].as_str().unwrap()))
        .collect();
    let mut expected = vec![
        (alice["created_at"].as_i64().unwrap(), ALICE),
        (carol["created_at"].as_i64().unwrap(), CAROL),
    ];
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(
        list.as_array().unwrap().iter().find(|o| o["id"] == ALICE),
        Some(&alice)
    );
    let shown = issuer_json(&socket, &["owner", "show", "--id", ALICE]).await;
    assert_eq!(shown, alice);
    // `--socket-path` instead of the environment.
    let mut cmd = Command::new(binary("sigil-issuer"));
    cmd.args(["owner", "show", "--id", CAROL, "--json", "--socket-path"])
        .arg(&socket)
        .env_remove("SIGIL_ADMIN_SOCKET");
    let (ok, out, err) = run_blocking(cmd).await;
    assert!(ok, "{out}{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), carol);

    // `owner consent` output verifies against the registered key, for both
    // key types.
    for (id, key, registered, alg) in [
        (ALICE, &alice_key, &alice, "EdDSA"),
        (CAROL, &carol_key, &carol, "ES256"),
    ] {
        let t0 = unix_now();
        let (jws, _) = cli_consent(
            d,
            "consent",
            id,
            key,
            BOT,
            &["unix:uid:1000", "unix:gid:1000"],
            "2h",
        )
        .await;
        let public =
            workload_api::owner::parse_public_key(&registered["public_key"].to_string()).unwrap();
        let claims = consent::verify(&jws, &public, unix_now()).expect("consent verifies");
        assert_eq!(claims.iss, id);
        assert_eq!(claims.spiffe_id.as_deref(), Some(BOT));
        assert_eq!(claims.spiffe_id_prefix, None);
        assert_eq!(claims.selectors, ["unix:gid:1000", "unix:uid:1000"]);
        assert!(claims.iat >= t0 && claims.iat <= unix_now());
        assert_eq!((claims.nbf, claims.exp), (claims.iat, claims.iat + 7200));
        assert!(!claims.jti.is_empty());
        let header: Value =
            serde_json::from_slice(&B64URL.decode(jws.split('.').next().unwrap()).unwrap())
                .unwrap();
        assert_eq!(header["alg"], alg);
        assert_eq!(header["typ"], consent::CONSENT_TYP);
        assert_eq!(header["kid"], registered["thumbprint"]);
        // The other owner's key does not verify it.
        let other = if id == ALICE { &carol } else { &alice };
        let other_key =
            workload_api::owner::parse_public_key(&other["public_key"].to_string()).unwrap();
        assert!(consent::verify(&jws, &other_key, unix_now()).is_err());
    }

    // Revoke: revoked_at set, shown and listed; revoking again keeps it.
    let t0 = unix_now() as i64;
    let revoked = issuer_json(&socket, &["owner", "revoke", "--id", ALICE]).await;
    let revoked_at = revoked["revoked_at"].as_i64().unwrap();
    assert!((t0..=unix_now() as i64).contains(&revoked_at), "{revoked}");
    assert_eq!(revoked["thumbprint"], alice["thumbprint"]);
    assert_eq!(
        issuer_json(&socket, &["owner", "show", "--id", ALICE]).await["revoked_at"],
        revoked_at
    );
    let again = issuer_json(&socket, &["owner", "revoke", "--id", ALICE]).await;
    assert_eq!(
        again["revoked_at"], revoked_at,
        "a second revoke keeps the first time"
    );
    let list = issuer_json(&socket, &["owner", "list"]).await;
    let listed = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|o| o["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {list}"))
    };
    assert_eq!(listed(ALICE)["revoked_at"], revoked_at);
    assert_eq!(listed(CAROL)["revoked_at"], 0);

    // Registering the same id again (even revoked, with a fresh key) is
    // refused, naming it; so is registering the same key under another id.
    let (_, fresh_pub) = openssl_key(d, "fresh", false).await;
    let (ok, out, err) = issuer_cli(
        &socket,
        &[
            "owner",
            "register",
            "--id",
            ALICE,
            "--public-key",
            fresh_pub.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!ok, "re-registering {ALICE} succeeded: {out}");
    assert_eq!(
        err.trim(),
        format!("error: owner {ALICE} is already registered (AlreadyExists)")
    );
    let (ok, out, err) = issuer_cli(
        &socket,
        &[
            "owner",
            "register",
            "--id",
            "mailto:alias@example.org",
            "--public-key",
            carol_pub.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!ok, "a second owner with carol's key was registered: {out}");
    assert_eq!(
        err.trim(),
        format!("error: the key {carol_tp} already belongs to owner {CAROL} (AlreadyExists)")
    );
    // Unknown owner on show.
    let (ok, _, err) = issuer_cli(
        &socket,
        &["owner", "show", "--id", "mailto:nobody@example.org"],
    )
    .await;
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "error: owner mailto:nobody@example.org not found (NotFound)"
    );
    let list = issuer_json(&socket, &["owner", "list"]).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "a refused register wrote an owner"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_owner_ids_and_consents_are_refused_before_any_lookup() {
    let issuer = TestIssuer::start().await;
    let long_id = format!("mailto:{}@example.org", "a".repeat(2100));
    let status = issuer
        .admin()
        .await
        .register_owner(adm::RegisterOwnerRequest {
            id: long_id.clone(),
            public_key: "{}".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        format!("id: owner id is {} bytes; at most 2048", long_id.len())
    );
    assert_create_refused(
        &issuer,
        "oversized owner id",
        fields(BOT, PARENT, &["unix:uid:1000"], &long_id, "a.b.c"),
        Code::InvalidArgument,
        &format!(
            "owner_id: owner id is {} bytes; at most 2048",
            long_id.len()
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = openssl_key(dir.path(), "alice", false).await;
    register_owner(&issuer, ALICE, &public).await;
    let huge = "a".repeat(100 * 1024);
    assert_create_refused(
        &issuer,
        "oversized consent",
        fields(BOT, PARENT, &["unix:uid:1000"], ALICE, &huge),
        Code::InvalidArgument,
        "consent is 102400 bytes; at most 16384",
    )
    .await;
}
