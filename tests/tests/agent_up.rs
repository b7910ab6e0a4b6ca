//! `sigil-agent up` as a user runs it: the real binary, an embedded issuer,
//! identities at once, a clean Ctrl-C, and a second run that reuses everything.
//! Also the agent's bootstrap choices: a trust bundle, insecure_bootstrap, or
//! neither (refused with what to do). And the owner `up` makes of the
//! invoking user: a local key, registered, binding the user's credentials
//! from the first fetch, reused and renewed on later starts.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use proto::admin as adm;
use proto::workload as wl;
use serde_json::Value;
use sigil_tests::owners::{issuer_json, sha256_b64, unix_now};
use sigil_tests::*;
use workload_api::client::{connect, EndpointAddress};
use workload_api::consent::{self, ConsentClaims};
use workload_api::keypair::KeyPair;
use workload_api::x509svid::LeafInfo;

fn fetch_x509(endpoint: &str) -> (bool, String, String) {
    run(Command::new(binary("sigil-agent"))
        .args(["api", "fetch", "x509"])
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint))
}

#[test]
fn up_serves_the_invoking_user_at_once_and_restarts_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = UpProcess::start(&data, &[]);
    let lines = up.wait_for("export SPIFFE_ENDPOINT_SOCKET=");
    let export = lines.last().unwrap().trim().to_owned();
    let endpoint = export
        .strip_prefix("export SPIFFE_ENDPOINT_SOCKET=")
        .unwrap()
        .to_owned();
    assert_eq!(
        endpoint,
        format!("unix://{}/api.sock", data.canonicalize().unwrap().display())
    );
    assert!(
        lines.iter().any(|l| l.starts_with("Workload API socket: ")),
        "{lines:?}"
    );
    let user =
        sigil_agent::attestor::unix::name_of(std::path::Path::new("/etc/passwd"), current_uid())
            .unwrap();
    let expected_id = format!("spiffe://example.org/user/{user}");

    let (ok, stdout, stderr) = fetch_x509(&endpoint);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&expected_id), "{stdout}");
    let status = up.interrupt();
    assert!(status.success(), "Ctrl-C exits cleanly: {status:?}");
    assert!(
        !data.join("api.sock").exists(),
        "the socket is removed on exit"
    );

    // A second run reuses the data directory: same agent, no duplicate entries.
    let agent_svid = std::fs::read(data.join("agent/agent/svid.der")).unwrap();
    let up = UpProcess::start(&data, &[]);
    up.wait_for("export SPIFFE_ENDPOINT_SOCKET=");
    let (ok, stdout, _) = fetch_x509(&endpoint);
    assert!(ok && stdout.contains(&expected_id), "{stdout}");
    assert_eq!(
        std::fs::read(data.join("agent/agent/svid.der")).unwrap(),
        agent_svid,
        "the agent SVID is reused"
    );
    let (ok, list, _) = run(Command::new(binary("sigil-issuer"))
        .args(["entry", "list", "--json", "--socket-path"])
        .arg(data.join("issuer/private/admin.sock")));
    assert!(ok);
    let entries: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        entries.as_array().unwrap().len(),
        2,
        "node alias and user entry: {list}"
    );
    assert!(up.interrupt().success());

    // Another trust domain on the same data directory is refused, naming both.
    let (ok, _, stderr) = run(Command::new(binary("sigil-agent"))
        .args(["up", "--trust-domain", "other.org", "--data-dir"])
        .arg(&data));
    assert!(!ok);
    assert!(
        stderr.contains("example.org") && stderr.contains("other.org"),
        "{stderr}"
    );
}

#[tokio::test]
async fn bootstrap_needs_a_bundle_or_insecure_bootstrap() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |insecure: bool, sub: &str, token: String| {
        sigil_agent::config::AgentConfig::from_file(sigil_agent::config::FileConfig {
            trust_domain: Some(TRUST_DOMAIN.into()),
            issuer_address: Some(issuer.running.agent_api_address.to_string()),
            data_dir: Some(dir.path().join(sub)),
            socket_path: Some(dir.path().join(sub).join("api.sock")),
            join_token: Some(token),
            insecure_bootstrap: Some(insecure),
            ..Default::default()
        })
        .unwrap()
    };
    let refused = sigil_agent::agent::start(config(false, "a", issuer.join_token(0).await))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("trust_bundle_path") && refused.contains("insecure_bootstrap"),
        "{refused}"
    );

    let agent = sigil_agent::agent::start(config(true, "b", issuer.join_token(0).await))
        .await
        .unwrap();
    // From then on the bundle the issuer returned is stored and trusted.
    let stored = std::fs::read(dir.path().join("b/agent/bundle.json")).unwrap();
    let stored = workload_api::Bundle::from_jwks_json(
        workload_api::TrustDomain::new(TRUST_DOMAIN).unwrap(),
        &stored,
    )
    .unwrap();
    assert_eq!(
        stored.x509_authorities(),
        issuer.bundle().x509_authorities()
    );
    agent.shutdown().await;

    // A bundle of another CA does not authenticate the issuer: the error says
    // how to re-bootstrap.
    let other = TestIssuer::start().await;
    let wrong = dir.path().join("wrong.json");
    std::fs::write(&wrong, other.bundle().to_jwks_json()).unwrap();
    let mut c = config(false, "c", issuer.join_token(0).await);
    c.trust_bundle_path = Some(wrong);
    let error = sigil_agent::agent::start(c).await.unwrap_err().to_string();
    assert!(error.contains("re-bootstrap"), "{error}");
}

/// Serves `body` over HTTPS on loopback with a certificate for `localhost`
/// from a fresh CA, whose PEM is returned. Answers every request with `body`.
async fn https_server(body: Vec<u8>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test Web PKI Root");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, ca_cert.pem())
}

#[tokio::test]
async fn bootstrap_from_a_bundle_url() {
    let issuer = TestIssuer::start().await;
    let (port, ca_pem) = https_server(issuer.bundle().to_jwks_json()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("web-roots.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    // The URL is authenticated by the system roots, which SSL_CERT_FILE names.
    std::env::set_var("SSL_CERT_FILE", &ca_file);
    let config = |url: &str, sub: &str, token: String| {
        sigil_agent::config::AgentConfig::from_file(sigil_agent::config::FileConfig {
            trust_domain: Some(TRUST_DOMAIN.into()),
            issuer_address: Some(issuer.running.agent_api_address.to_string()),
            data_dir: Some(dir.path().join(sub)),
            socket_path: Some(dir.path().join(sub).join("api.sock")),
            join_token: Some(token),
            trust_bundle_url: Some(url.to_owned()),
            ..Default::default()
        })
    };
    let url = format!("https://localhost:{port}/bundle.json");
    let agent = sigil_agent::agent::start(config(&url, "a", issuer.join_token(0).await).unwrap())
        .await
        .unwrap();
    assert!(agent
        .node
        .svid()
        .spiffe_id
        .to_string()
        .starts_with("spiffe://example.org/agent/join_token/"));
    agent.shutdown().await;

    // A server the roots do not vouch for is refused.
    let wrong = format!("https://127.0.0.1:{port}/bundle.json");
    let error = sigil_agent::agent::start(config(&wrong, "b", issuer.join_token(0).await).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("trust bundle") && error.contains("127.0.0.1"),
        "{error}"
    );
    let plain = config("http://localhost/bundle.json", "c", "t".into())
        .unwrap_err()
        .to_string();
    assert!(
        plain.contains("trust_bundle_url") && plain.contains("https"),
        "{plain}"
    );
}

const DAY: u64 = 24 * 3600;

/// The name `up` gives the invoking user.
fn local_user() -> String {
    sigil_agent::attestor::unix::name_of(Path::new("/etc/passwd"), current_uid()).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every entry of the issuer at `admin`; there must be two (node alias and
/// user entry), and the user's is returned.
async fn user_entry(admin: &Path, user_id: &str) -> Value {
    let entries = issuer_json(admin, &["entry", "list"]).await;
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 2, "node alias and user entry: {entries:?}");
    entries
        .iter()
        .find(|e| e["spiffe_id"] == user_id)
        .unwrap_or_else(|| panic!("no entry for {user_id}: {entries:?}"))
        .clone()
}

/// The X509-SVID leaf the Workload API at `socket` serves for `spiffe_id`.
async fn fetch_leaf(socket: &Path, spiffe_id: &str) -> Result<LeafInfo, String> {
    let mut client = connect(&EndpointAddress::Unix(socket.to_owned()))
        .await
        .map_err(|e| e.to_string())?;
    let message = client
        .fetch_x509svid(wl::X509svidRequest {})
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .message()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the stream ended")?;
    let svid = message
        .svids
        .iter()
        .find(|s| s.spiffe_id == spiffe_id)
        .ok_or_else(|| format!("{spiffe_id} is not served"))?;
    let chain =
        workload_api::bundle::split_der_concat(&svid.x509_svid).map_err(|e| e.to_string())?;
    workload_api::x509svid::check_leaf(&chain[0]).map_err(|e| e.to_string())
}

/// The first leaf served for `spiffe_id`, waiting only while none is, or
/// (with `consent`) until the one served carries that consent's hash.
async fn leaf_for(socket: &Path, spiffe_id: &str, consent: Option<&str>) -> LeafInfo {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match fetch_leaf(socket, spiffe_id).await {
            Ok(leaf) => match consent {
                None => return leaf,
                Some(jws) => {
                    let carried = leaf.owner.as_ref().map(|o| B64URL.encode(o.consent_sha256));
                    if carried.as_deref() == Some(sha256_b64(jws).as_str()) {
                        return leaf;
                    }
                    format!("served binding {:?}", leaf.owner)
                }
            },
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "no SVID for {spiffe_id} with the expected binding: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts `up` on `data` and waits until it is ready.
fn start_up(data: &Path) -> (UpProcess, Vec<String>) {
    let up = UpProcess::start(data, &[]);
    let lines = up.wait_for("export SPIFFE_ENDPOINT_SOCKET=");
    (up, lines)
}

/// Runs `up` on `data`, which must fail within 30 seconds; its stderr.
fn up_fails(data: &Path) -> String {
    let mut child = Command::new(binary("sigil-agent"))
        .args(["up", "--trust-domain", "example.org", "--data-dir"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("sigil-agent up kept running; it should have failed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "up failed with {status:?}: {stderr}");
    stderr
}

/// Updates the user entry, at its revision, to `owner_id` and `consent`
/// (both empty: unbound), as an operator would.
async fn rebind(admin: &Path, user_id: &str, owner_id: &str, consent: &str) {
    let mut client = sigil_issuer::admin_client::connect(admin).await.unwrap();
    let entry = client
        .list_entries(adm::ListEntriesRequest {
            spiffe_id: user_id.into(),
            parent_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .remove(0);
    client
        .update_entry(adm::UpdateEntryRequest {
            id: entry.id,
            entry: Some(adm::EntryFields {
                spiffe_id: entry.spiffe_id,
                parent_id: entry.parent_id,
                selectors: entry.selectors,
                owner_id: owner_id.into(),
                consent: consent.into(),
                ..Default::default()
            }),
            revision: entry.revision,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn up_binds_the_users_credentials_to_a_local_owner_and_keeps_them_bound() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let user = local_user();
    let uid = current_uid();
    let owner_id = format!("spiffe://example.org/owner/{user}");
    let user_id = format!("spiffe://example.org/user/{user}");

    let (up, lines) = start_up(&data);
    let data = data.canonicalize().unwrap();
    let socket = data.join("api.sock");
    let admin = data.join("issuer/private/admin.sock");
    let key_path = data.join("owner/owner.jwk");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("bound to owner {owner_id}"))),
        "the status names the owner: {lines:?}"
    );

    // The key: a private Ed25519 JWK, 0600 in a 0700 directory, never printed.
    assert_eq!(mode(&key_path), 0o600, "{}", key_path.display());
    assert_eq!(mode(key_path.parent().unwrap()), 0o700);
    let key_text = std::fs::read_to_string(&key_path).unwrap();
    let jwk: Value = serde_json::from_str(&key_text).unwrap();
    assert_eq!(jwk["kty"], "OKP", "{}", jwk["kty"]);
    assert_eq!(jwk["crv"], "Ed25519");
    assert_eq!(jwk["alg"], "EdDSA");
    let secret = jwk["d"]
        .as_str()
        .expect("the key file holds the private key");
    assert!(
        !lines.iter().any(|l| l.contains(secret)),
        "the private key is never printed"
    );
    let key = workload_api::owner::load_signing_key(&key_text).unwrap();
    let thumbprint = key.public_key().thumbprint();

    // The owner, registered with that key.
    let owners = issuer_json(&admin, &["owner", "list"]).await;
    assert_eq!(owners.as_array().unwrap().len(), 1, "{owners}");
    assert_eq!(owners[0]["id"], owner_id.as_str());
    assert_eq!(owners[0]["thumbprint"], thumbprint.as_str());
    assert_eq!(owners[0]["revoked_at"], 0);

    // The user's entry, bound by a consent for exactly it, for 30 days.
    let entry = user_entry(&admin, &user_id).await;
    assert_eq!(entry["owner"]["id"], owner_id.as_str(), "{entry}");
    assert_eq!(entry["owner"]["key_thumbprint"], thumbprint.as_str());
    let jws = entry["owner"]["consent"].as_str().unwrap().to_owned();
    assert_eq!(entry["owner"]["consent_sha256"], sha256_b64(&jws).as_str());
    let claims = consent::verify(&jws, key.public_key(), unix_now()).unwrap();
    assert_eq!(claims.iss, owner_id);
    assert_eq!(claims.spiffe_id.as_deref(), Some(user_id.as_str()));
    assert_eq!(claims.selectors, vec![format!("unix:uid:{uid}")]);
    assert_eq!(claims.exp - claims.nbf, 30 * DAY);
    assert!(
        claims.exp.abs_diff(unix_now() + 30 * DAY) < 120,
        "{claims:?}"
    );
    assert_eq!(entry["expires_at"], claims.exp, "capped to the consent");

    // The very first SVID served carries the binding.
    let leaf = leaf_for(&socket, &user_id, None).await;
    let bound = leaf.owner.expect("the first X509-SVID is owner-bound");
    assert_eq!(bound.owner_id, owner_id);
    assert_eq!(bound.key_thumbprint_b64(), thumbprint);
    assert_eq!(B64URL.encode(bound.consent_sha256), sha256_b64(&jws));
    assert!(up.interrupt().success());

    // A second start reuses the key, the owner and the entry, untouched.
    let (up, lines) = start_up(&data);
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key_text);
    assert!(lines.iter().any(|l| l.contains(&owner_id)), "{lines:?}");
    let owners = issuer_json(&admin, &["owner", "list"]).await;
    assert_eq!(owners.as_array().unwrap().len(), 1, "{owners}");
    assert_eq!(owners[0]["thumbprint"], thumbprint.as_str());
    let again = user_entry(&admin, &user_id).await;
    assert_eq!(
        (&again["id"], &again["revision"], &again["owner"]["consent"]),
        (&entry["id"], &entry["revision"], &entry["owner"]["consent"]),
        "a fresh consent is kept as it is"
    );

    // Unbound by an operator: the next start binds the same entry again.
    rebind(&admin, &user_id, "", "").await;
    let unbound = user_entry(&admin, &user_id).await;
    assert!(unbound["owner"].is_null(), "{unbound}");
    assert!(up.interrupt().success());
    let (up, _) = start_up(&data);
    let rebound = user_entry(&admin, &user_id).await;
    assert_eq!(rebound["id"], entry["id"], "updated, not duplicated");
    assert!(rebound["revision"].as_i64() > unbound["revision"].as_i64());
    assert_eq!(rebound["owner"]["id"], owner_id.as_str());
    let rebound_jws = rebound["owner"]["consent"].as_str().unwrap().to_owned();
    assert_ne!(rebound_jws, jws);
    consent::verify(&rebound_jws, key.public_key(), unix_now()).unwrap();
    leaf_for(&socket, &user_id, Some(&rebound_jws)).await;

    // A consent that lapses within a week is renewed at the next start.
    let now = unix_now();
    let short = consent::sign(
        &ConsentClaims {
            exp: now + 3 * DAY,
            iat: now,
            nbf: now,
            jti: "short".into(),
            ..claims.clone()
        },
        &key,
    )
    .unwrap();
    rebind(&admin, &user_id, &owner_id, &short).await;
    let expiring = user_entry(&admin, &user_id).await;
    assert_eq!(expiring["expires_at"], now + 3 * DAY);
    assert!(up.interrupt().success());
    let (up, _) = start_up(&data);
    let renewed = user_entry(&admin, &user_id).await;
    assert_eq!(renewed["id"], entry["id"], "updated, not duplicated");
    assert!(renewed["revision"].as_i64() > expiring["revision"].as_i64());
    let renewed_jws = renewed["owner"]["consent"].as_str().unwrap().to_owned();
    let renewed_claims = consent::verify(&renewed_jws, key.public_key(), unix_now()).unwrap();
    assert!(renewed_claims.exp >= now + 30 * DAY, "{renewed_claims:?}");
    assert_eq!(renewed["expires_at"], renewed_claims.exp);
    let leaf = leaf_for(&socket, &user_id, Some(&renewed_jws)).await;
    assert_eq!(leaf.owner.unwrap().owner_id, owner_id);
    assert!(up.interrupt().success());
}

#[tokio::test]
async fn up_refuses_an_owner_registered_with_another_key_or_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let owner_id = format!("spiffe://example.org/owner/{}", local_user());
    let (up, _) = start_up(&data);
    assert!(up.interrupt().success());
    let data = data.canonicalize().unwrap();
    let key_path: PathBuf = data.join("owner/owner.jwk");
    let original = std::fs::read(&key_path).unwrap();

    // Another key in the file: refused, naming the file and the owner.
    let other = KeyPair::generate(workload_api::jwk::Algorithm::EdDSA).unwrap();
    workload_api::files::write_private(&key_path, other.to_jwk_json().as_bytes()).unwrap();
    let stderr = up_fails(&data);
    assert!(
        stderr.contains(&key_path.display().to_string())
            && stderr.contains(&owner_id)
            && stderr.contains(&other.public_key().thumbprint()),
        "{stderr}"
    );
    assert!(!stderr.contains(other.to_jwk_json().as_str()));

    // The right key again, then the owner revoked: refused, not re-registered.
    workload_api::files::write_private(&key_path, &original).unwrap();
    let (up, _) = start_up(&data);
    let admin = data.join("issuer/private/admin.sock");
    let revoked = issuer_json(&admin, &["owner", "revoke", "--id", &owner_id]).await;
    assert_ne!(revoked["revoked_at"], 0, "{revoked}");
    assert!(up.interrupt().success());
    let stderr = up_fails(&data);
    assert!(
        stderr.contains("revoked") && stderr.contains(&owner_id),
        "{stderr}"
    );
}
