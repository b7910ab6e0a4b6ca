//! `sigil-agent up` as a user runs it: the real binary, an embedded issuer,
//! identities at once, a clean Ctrl-C, and a second run that reuses everything.
//! Also the agent's bootstrap choices: a trust bundle, insecure_bootstrap, or
//! neither (refused with what to do).

use std::process::Command;

use sigil_tests::*;

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
