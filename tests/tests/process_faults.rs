//! Faults injected into real processes: `sigil-issuer run` and `sigil-agent
//! run` as an operator starts them, killed with SIGKILL and started again.
//! Every fetch is checked: no expired credential is ever returned, and every
//! error names its cause.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use sigil_tests::*;

/// A child process killed when dropped; its stderr goes to a file.
struct Process {
    child: Child,
    stderr: PathBuf,
}

impl Process {
    fn spawn(command: &mut Command, stderr: PathBuf) -> Self {
        let child = command
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Process { child, stderr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An issuer and an agent run as separate processes in one directory.
struct Deployment {
    dir: tempfile::TempDir,
    port: u16,
}

impl Deployment {
    fn new() -> Self {
        Deployment {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
        }
    }

    fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("issuer-run/admin.sock")
    }

    fn api_socket(&self) -> PathBuf {
        self.dir.path().join("agent-run/api.sock")
    }

    fn start_issuer(&self) -> Process {
        let process = Process::spawn(
            Command::new(binary("sigil-issuer"))
                .stdout(Stdio::null())
                .args(["run", "--trust-domain", TRUST_DOMAIN])
                .arg("--agent-api-address")
                .arg(format!("127.0.0.1:{}", self.port))
                .args(["--http-address", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(self.dir.path().join("issuer"))
                .arg("--admin-socket-path")
                .arg(self.admin_socket()),
            self.dir.path().join("issuer.log"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.admin(&["healthcheck"]).0 {
            assert!(Instant::now() < deadline, "issuer did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        process
    }

    fn admin(&self, args: &[&str]) -> (bool, String, String) {
        run(Command::new(binary("sigil-issuer"))
            .args(args)
            .arg("--socket-path")
            .arg(self.admin_socket()))
    }

    /// `sigil-agent run` against this issuer, trusting its bundle, with its
    /// data in `data_dir` and the Workload API on `socket`.
    fn agent_command(&self, data_dir: &Path, socket: &Path) -> Command {
        let bundle = self.dir.path().join("bootstrap.json");
        if !bundle.exists() {
            let (ok, jwks, stderr) = self.admin(&["bundle", "show", "--format", "spiffe"]);
            assert!(ok, "{stderr}");
            std::fs::write(&bundle, jwks).unwrap();
        }
        let mut command = Command::new(binary("sigil-agent"));
        command
            .args(["run", "--trust-domain", TRUST_DOMAIN])
            .arg("--issuer-address")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--socket-path")
            .arg(socket)
            .arg("--trust-bundle")
            .arg(&bundle);
        command
    }

    /// Starts the agent; with `join_token` for its first start.
    fn start_agent(&self, join_token: Option<&str>) -> Process {
        let mut command = self.agent_command(&self.dir.path().join("agent"), &self.api_socket());
        command.stdout(Stdio::null());
        if let Some(token) = join_token {
            command.env("SIGIL_JOIN_TOKEN", token);
        }
        Process::spawn(&mut command, self.dir.path().join("agent.log"))
    }

    fn join_token(&self) -> String {
        let (ok, out, stderr) = self.admin(&["token", "generate", "--json"]);
        assert!(ok, "{stderr}");
        let token: serde_json::Value = serde_json::from_str(&out).unwrap();
        token["token"].as_str().unwrap().to_owned()
    }

    /// The agent's SPIFFE ID, once it has attested.
    fn agent_id(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, out, _) = self.admin(&["agent", "list", "--json"]);
            let agents: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            if let Some(id) = agents.get(0).and_then(|a| a["spiffe_id"].as_str()) {
                return id.to_owned();
            }
            assert!(ok && Instant::now() < deadline, "the agent did not attest");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `sigil-agent api fetch x509 --write DIR`: the SVID's notAfter, or
    /// the error the client printed.
    fn fetch_x509(&self) -> Result<SystemTime, String> {
        let out = tempfile::tempdir().unwrap();
        let (ok, _, stderr) = run(Command::new(binary("sigil-agent"))
            .args(["api", "fetch", "x509", "--socket-path"])
            .arg(self.api_socket())
            .arg("--write")
            .arg(out.path()));
        if !ok {
            return Err(stderr);
        }
        Ok(not_after(&out.path().join("svid.pem")))
    }
}

/// The notAfter of the first certificate in a PEM file.
fn not_after(pem: &Path) -> SystemTime {
    use der::Decode;
    let text = std::fs::read_to_string(pem).unwrap();
    let der = &workload_api::pem::blocks(&text, "CERTIFICATE")[0];
    let cert = x509_cert::Certificate::from_der(der).unwrap();
    cert.tbs_certificate.validity.not_after.to_system_time()
}

/// Fetches until `wanted` holds for the result or `limit` passes; every
/// SVID returned on the way must be unexpired.
fn fetch_until(
    deployment: &Deployment,
    limit: Duration,
    wanted: impl Fn(&Result<SystemTime, String>) -> bool,
) -> Result<SystemTime, String> {
    let deadline = Instant::now() + limit;
    loop {
        let asked = SystemTime::now();
        let result = deployment.fetch_x509();
        if let Ok(not_after) = &result {
            assert!(*not_after > asked, "an expired X509-SVID was served");
        }
        if wanted(&result) {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting; last result {result:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_agent_started_while_the_issuer_is_down_waits_and_recovers() {
    let deployment = Deployment::new();
    let mut issuer = deployment.start_issuer();
    let token = deployment.join_token();
    let mut agent = deployment.start_agent(Some(&token));
    let agent_id = deployment.agent_id();
    let (ok, _, stderr) = deployment.admin(&[
        "entry",
        "create",
        "--parent-id",
        &agent_id,
        "--spiffe-id",
        "spiffe://example.org/outage",
        "--selector",
        &format!("unix:uid:{}", current_uid()),
    ]);
    assert!(ok, "{stderr}");
    fetch_until(&deployment, Duration::from_secs(20), Result::is_ok).unwrap();

    // Both die without cleaning up; the agent comes back first, on its
    // stored SVID, while the issuer is still down.
    agent.kill();
    issuer.kill();
    let agent = deployment.start_agent(None);
    let refused = fetch_until(&deployment, Duration::from_secs(20), |r| {
        r.as_ref().is_err_and(|e| e.contains("unreachable"))
    })
    .unwrap_err();
    assert!(
        refused.contains("Unavailable") && refused.contains("registration entries"),
        "the refusal names the cause: {refused}"
    );

    // The issuer returns on the same address: the agent recovers by itself.
    let _issuer = deployment.start_issuer();
    fetch_until(&deployment, Duration::from_secs(30), Result::is_ok).unwrap();
    let log = agent.stderr();
    assert!(
        !log.contains("re-bootstrap"),
        "a refused connection is an outage, not a reason to re-bootstrap: {log}"
    );
}

impl Deployment {
    fn healthcheck(&self) -> (bool, String, String) {
        run(Command::new(binary("sigil-agent"))
            .args(["healthcheck", "--socket-path"])
            .arg(self.api_socket()))
    }

    fn create_entry(&self, parent: &str, spiffe_id: &str) {
        let selector = format!("unix:uid:{}", current_uid());
        let (ok, _, stderr) = self.admin(&[
            "entry",
            "create",
            "--parent-id",
            parent,
            "--spiffe-id",
            spiffe_id,
            "--selector",
            &selector,
        ]);
        assert!(ok, "{stderr}");
    }
}

#[test]
fn a_banned_agent_stops_serving_within_seconds_and_says_so() {
    let deployment = Deployment::new();
    let _issuer = deployment.start_issuer();
    let _agent = deployment.start_agent(Some(&deployment.join_token()));
    let agent_id = deployment.agent_id();
    deployment.create_entry(&agent_id, "spiffe://example.org/banned");
    fetch_until(&deployment, Duration::from_secs(20), Result::is_ok).unwrap();
    let (ok, healthy, _) = deployment.healthcheck();
    assert!(ok && healthy.contains("healthy"), "{healthy}");
    let watch_log = deployment.dir.path().join("watch.log");
    let mut watch = Process::spawn(
        Command::new(binary("sigil-agent"))
            .args(["api", "watch", "--socket-path"])
            .arg(deployment.api_socket()),
        watch_log,
    );

    let (ok, _, stderr) = deployment.admin(&["agent", "ban", "--spiffe-id", &agent_id]);
    assert!(ok, "{stderr}");
    let banned_at = Instant::now();
    let refused = fetch_until(&deployment, Duration::from_secs(5), |r| {
        r.as_ref().is_err_and(|e| e.contains("banned"))
    })
    .unwrap_err();
    assert!(refused.contains("PermissionDenied"), "{refused}");
    let deadline = banned_at + Duration::from_secs(5);
    let watch_status = loop {
        if let Some(status) = watch.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the open stream did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!watch_status.success());
    let ended = watch.stderr();
    assert!(
        ended.contains("banned") && ended.contains("PermissionDenied"),
        "{ended}"
    );
    let (ok, out, stderr) = deployment.healthcheck();
    assert!(!ok, "healthcheck must fail for a banned agent: {out}");
    assert!(
        stderr.contains("banned") && stderr.contains(&agent_id),
        "{stderr}"
    );
}

#[test]
fn an_evicted_agent_attests_anew_with_a_new_token_and_no_files_deleted() {
    let deployment = Deployment::new();
    let _issuer = deployment.start_issuer();
    let node = "spiffe://example.org/node/n1";
    let token = |d: &Deployment| {
        let (ok, out, stderr) = d.admin(&["token", "generate", "--json", "--spiffe-id", node]);
        assert!(ok, "{stderr}");
        let token: serde_json::Value = serde_json::from_str(&out).unwrap();
        token["token"].as_str().unwrap().to_owned()
    };
    let first = token(&deployment);
    let mut agent = deployment.start_agent(Some(&first));
    let agent_id = deployment.agent_id();
    deployment.create_entry(node, "spiffe://example.org/evicted");
    fetch_until(&deployment, Duration::from_secs(20), Result::is_ok).unwrap();

    let (ok, _, stderr) = deployment.admin(&["agent", "evict", "--spiffe-id", &agent_id]);
    assert!(ok, "{stderr}");
    let refused = fetch_until(&deployment, Duration::from_secs(5), |r| r.is_err()).unwrap_err();
    assert!(
        refused.contains("PermissionDenied") && refused.contains("new join token"),
        "{refused}"
    );
    let (ok, _, stderr) = deployment.healthcheck();
    assert!(!ok && stderr.contains("new join token"), "{stderr}");

    // The operator restarts it with a new token, on the same data directory.
    agent.kill();
    let _agent = deployment.start_agent(Some(&token(&deployment)));
    fetch_until(&deployment, Duration::from_secs(20), Result::is_ok).unwrap();
    let (ok, healthy, stderr) = deployment.healthcheck();
    assert!(ok && healthy.contains("healthy"), "{healthy}{stderr}");
    assert!(
        !healthy.contains(&agent_id),
        "attested anew under a new agent ID: {healthy}"
    );
}

#[test]
fn refused_attestations_are_logged_with_peer_and_cause_never_the_token() {
    let deployment = Deployment::new();
    let issuer = deployment.start_issuer();
    let token = deployment.join_token();
    let mut first = deployment.start_agent(Some(&token));
    deployment.agent_id();
    first.kill();
    let bogus = "0123456789abcdef0123456789abcdef01234567";
    for (secret, data_dir) in [(bogus, "bogus"), (token.as_str(), "reused")] {
        let dir = deployment.dir.path().join(data_dir);
        let (ok, _, stderr) = run(deployment
            .agent_command(&dir, &dir.join("api.sock"))
            .env("SIGIL_JOIN_TOKEN", secret));
        assert!(!ok, "{data_dir}: attestation must be refused");
        assert!(stderr.contains("attestation refused"), "{stderr}");
    }
    let log = issuer.stderr();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("node attestation refused"))
        .collect();
    assert_eq!(refusals.len(), 2, "{log}");
    assert!(refusals
        .iter()
        .all(|l| l.contains("WARN") && l.contains("127.0.0.1:")));
    assert!(refusals[0].contains("unknown"), "{}", refusals[0]);
    assert!(refusals[1].contains("already used"), "{}", refusals[1]);
    assert!(!log.contains(bogus) && !log.contains(&token), "{log}");
}

#[test]
fn an_issuer_killed_again_and_again_never_makes_the_agent_serve_an_expired_svid() {
    let deployment = Deployment::new();
    let mut issuer = deployment.start_issuer();
    let _agent = deployment.start_agent(Some(&deployment.join_token()));
    let agent_id = deployment.agent_id();
    let selector = format!("unix:uid:{}", current_uid());
    // An 8 s SVID rotates every 3-4 s: across the kills below.
    let (ok, _, stderr) = deployment.admin(&[
        "entry",
        "create",
        "--parent-id",
        &agent_id,
        "--spiffe-id",
        "spiffe://example.org/churn",
        "--selector",
        &selector,
        "--x509-svid-ttl",
        "8",
    ]);
    assert!(ok, "{stderr}");
    fetch_until(&deployment, Duration::from_secs(20), Result::is_ok).unwrap();
    let watch_log = deployment.dir.path().join("watch.out");
    let mut watch = Process::spawn(
        Command::new(binary("sigil-agent"))
            .args(["api", "watch", "--socket-path"])
            .arg(deployment.api_socket())
            .stdout(std::fs::File::create(&watch_log).unwrap()),
        deployment.dir.path().join("watch.err"),
    );

    let mut served = std::collections::BTreeSet::new();
    let mut refusals = 0;
    let mut fetch_for = |how_long: Duration| {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            let asked = SystemTime::now();
            match deployment.fetch_x509() {
                Ok(not_after) => {
                    assert!(not_after > asked, "an expired X509-SVID was served");
                    served.insert(not_after);
                }
                Err(error) => {
                    assert!(error.contains("Unavailable"), "unnamed failure: {error}");
                    refusals += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for _ in 0..5 {
        fetch_for(Duration::from_millis(1500));
        issuer.kill();
        fetch_for(Duration::from_millis(800));
        issuer = deployment.start_issuer();
    }
    fetch_for(Duration::from_secs(5));
    assert!(
        served.len() >= 3,
        "rotation carried on across the kills: {served:?}"
    );
    println!(
        "{} distinct SVIDs served, {refusals} refusals",
        served.len()
    );

    assert!(
        watch.child.try_wait().unwrap().is_none(),
        "the open stream survived every kill: {}",
        watch.stderr()
    );
    watch.kill();
    let updates = std::fs::read_to_string(&watch_log).unwrap();
    let mut lines = 0;
    for line in updates.lines() {
        let (received, rest) = line.split_once(" received ").unwrap();
        let received = humantime::parse_rfc3339(received).unwrap();
        let expires = rest
            .split("(expires ")
            .nth(1)
            .unwrap()
            .trim_end_matches(')');
        let expires = humantime::parse_rfc3339(expires).unwrap();
        assert!(
            expires > received,
            "the stream sent an expired SVID: {line}"
        );
        lines += 1;
    }
    assert!(lines >= 3, "the stream saw the rotations: {updates}");
}

impl Deployment {
    /// `api fetch x509 --json`: each SVID's SPIFFE ID and notAfter.
    fn fetch_all(&self) -> Result<Vec<(String, SystemTime)>, String> {
        let (ok, out, stderr) = run(Command::new(binary("sigil-agent"))
            .args(["api", "fetch", "x509", "--json", "--socket-path"])
            .arg(self.api_socket()));
        if !ok {
            return Err(stderr);
        }
        let svids: serde_json::Value = serde_json::from_str(&out).unwrap();
        Ok(svids
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let expires = s["expires_at"].as_u64().unwrap();
                (
                    s["spiffe_id"].as_str().unwrap().to_owned(),
                    SystemTime::UNIX_EPOCH + Duration::from_secs(expires),
                )
            })
            .collect())
    }
}

#[test]
fn a_second_agent_on_the_same_data_directory_is_refused() {
    let deployment = Deployment::new();
    let _issuer = deployment.start_issuer();
    let first = deployment.start_agent(Some(&deployment.join_token()));
    deployment.agent_id();
    let second = deployment.start_agent(None);
    let mut second = second;
    let status = second.child.wait().unwrap();
    assert!(!status.success());
    let refused = second.stderr();
    assert!(
        refused.contains("in use") && refused.contains(&first.child.id().to_string()),
        "{refused}"
    );
    fetch_until(&deployment, Duration::from_secs(5), |r| {
        r.as_ref().is_err_and(|e| e.contains("no identity issued"))
    })
    .unwrap_err();
}

#[test]
fn a_one_second_svid_beside_a_ten_second_one_both_rotate_on_time() {
    let deployment = Deployment::new();
    let _issuer = deployment.start_issuer();
    let _agent = deployment.start_agent(Some(&deployment.join_token()));
    let agent_id = deployment.agent_id();
    let selector = format!("unix:uid:{}", current_uid());
    for (name, ttl) in [("short", "1"), ("long", "10")] {
        let spiffe_id = format!("spiffe://example.org/{name}");
        let (ok, _, stderr) = deployment.admin(&[
            "entry",
            "create",
            "--parent-id",
            &agent_id,
            "--spiffe-id",
            &spiffe_id,
            "--selector",
            &selector,
            "--x509-svid-ttl",
            ttl,
        ]);
        assert!(ok, "{stderr}");
    }
    let long = "spiffe://example.org/long";
    let start = Instant::now();
    let mut long_expiries = std::collections::BTreeSet::new();
    let mut fetches = 0;
    while start.elapsed() < Duration::from_secs(13) {
        let asked = SystemTime::now();
        if let Ok(svids) = deployment.fetch_all() {
            fetches += 1;
            for (id, not_after) in &svids {
                assert!(*not_after > asked, "{id} was served expired");
                if id == long {
                    long_expiries.insert(*not_after);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(fetches > 50, "{fetches} fetches");
    // Over 13 s a 10 s SVID replaced at 40-50% of its life is seen with at
    // least three different expiries: the short one never stalls it.
    assert!(long_expiries.len() >= 3, "{long_expiries:?}");
}
