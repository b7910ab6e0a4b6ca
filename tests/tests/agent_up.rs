//! `sigil-agent up` as a user runs it: the real binary, an embedded issuer,
//! identities at once, a clean Ctrl-C, and a second run that reuses everything.
//! Also the agent's bootstrap choices: a trust bundle, insecure_bootstrap, or
//! neither (refused with what to do).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sigil_tests::*;

struct Up {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

fn start_up(data_dir: &std::path::Path) -> Up {
    let mut child = Command::new(binary("sigil-agent"))
        .args(["up", "--trust-domain", "example.org", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Up { child, lines }
}

impl Up {
    /// Collects output lines until one contains `needle`.
    fn wait_for(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                let done = line.contains(needle);
                seen.push(line);
                if done {
                    return seen;
                }
            }
        }
        panic!("no line with {needle:?}; saw {seen:?}");
    }

    fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sigil-agent up did not stop on Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn fetch_x509(endpoint: &str) -> (bool, String, String) {
    run(Command::new(binary("sigil-agent"))
        .args(["api", "fetch", "x509"])
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint))
}

#[test]
fn up_serves_the_invoking_user_at_once_and_restarts_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = start_up(&data);
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
    up.wait_for("SVIDs held: 1");
    let status = up.interrupt();
    assert!(status.success(), "Ctrl-C exits cleanly: {status:?}");
    assert!(
        !data.join("api.sock").exists(),
        "the socket is removed on exit"
    );

    // A second run reuses the data directory: same agent, no duplicate entries.
    let agent_svid = std::fs::read(data.join("agent/agent/svid.der")).unwrap();
    let up = start_up(&data);
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
