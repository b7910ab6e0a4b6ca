//! Shared helpers for the end-to-end tests: real issuers on loopback and temp
//! sockets, agents that attest over mTLS, and the independent tools (openssl,
//! Python with PyJWT) used to check what Sigil produces.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use proto::admin::admin_client::AdminClient;
use proto::issuer as pb;
use proto::issuer::agent_api_client::AgentApiClient;
use sigil_agent::issuer_client::{self, ClientIdentity};
use sigil_issuer::clock::{Clock, ManualClock, SystemClock};
use sigil_issuer::config::Config;
use sigil_issuer::server::RunningIssuer;
use tonic::transport::Channel;
use workload_api::bundle::split_der_concat;
use workload_api::id::TrustDomain;
use workload_api::Bundle;

pub mod c2sp_check;
pub mod fake_apiserver;
pub mod fake_http;
pub mod fake_kubelet;
pub mod fake_tls;
pub mod issuer_process;
pub mod owners;
pub mod postgres;
pub mod tcp_proxy;
pub mod web;

pub const TRUST_DOMAIN: &str = "example.org";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Python interpreter of the test venv that the test command creates.
pub fn python() -> PathBuf {
    let path = std::env::var_os("SIGIL_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: run the test command from the README (scripts/test), which creates the venv",
        path.display()
    );
    path
}

/// A binary built from this workspace, next to the test executable's directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Runs a command and returns (exit success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An issuer running in this process on loopback, with its data in a temp dir.
#[allow(missing_debug_implementations)]
pub struct TestIssuer {
    pub dir: tempfile::TempDir,
    pub running: RunningIssuer,
}

impl TestIssuer {
    pub async fn start() -> Self {
        Self::start_with(Arc::new(SystemClock), |_| {}).await
    }

    pub async fn start_with_clock(clock: ManualClock) -> Self {
        Self::start_with(Arc::new(clock), |_| {}).await
    }

    pub async fn start_with(clock: Arc<dyn Clock>, customize: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(
            TrustDomain::new(TRUST_DOMAIN).unwrap(),
            dir.path().join("data"),
        );
        config.agent_api_address = "127.0.0.1:0".parse().unwrap();
        config.http_address = Some("127.0.0.1:0".parse().unwrap());
        config.admin_socket_path = dir.path().join("admin/admin.sock");
        customize(&mut config);
        let running = sigil_issuer::server::start(config, clock).await.unwrap();
        TestIssuer { dir, running }
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        sigil_issuer::admin_client::connect(&self.running.admin_socket_path)
            .await
            .unwrap()
    }

    pub fn bundle(&self) -> Bundle {
        (*self.running.state.ca.bundle()).clone()
    }

    pub async fn join_token(&self, ttl_secs: i64) -> String {
        join_token_at(&self.running.admin_socket_path, ttl_secs).await
    }

    /// An unauthenticated (attestation-only) client.
    pub async fn anonymous_client(&self) -> AgentApiClient<Channel> {
        issuer_client::connect(self.running.agent_api_address, &self.bundle(), None)
            .await
            .unwrap()
    }

    /// Attests a new agent with a fresh join token.
    pub async fn attest(&self) -> TestAgent {
        attest_with(
            self.running.agent_api_address,
            &self.running.admin_socket_path,
            &self.bundle(),
        )
        .await
    }

    /// Stops this issuer and starts it again on the same data directory:
    /// what it knows after is what it kept on disk.
    pub async fn restart(self) -> Self {
        self.restart_with(|_| {}).await
    }

    /// As [`TestIssuer::restart`], with the configuration adjusted.
    pub async fn restart_with(self, customize: impl FnOnce(&mut Config)) -> Self {
        let TestIssuer { dir, running } = self;
        let mut config = (*running.state.config).clone();
        customize(&mut config);
        running.shutdown().await;
        let running = sigil_issuer::server::start(config, Arc::new(SystemClock))
            .await
            .unwrap();
        TestIssuer { dir, running }
    }

    /// `GET path` on the issuer's public HTTP endpoint: status and body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let address = self.running.http_address.expect("HTTP endpoint on");
        let answer = web::http_call(
            &address.to_string(),
            "GET",
            path,
            &::http::HeaderMap::new(),
            b"",
        )
        .await;
        (answer.status, answer.body)
    }

    /// The leaves of the signed event log, read from `GET /log/export`.
    pub async fn log_leaves(&self) -> Vec<serde_json::Value> {
        let (status, body) = self.http_get("/log/export").await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .skip(1)
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Waits until the event log holds an event for which `wanted` holds;
    /// returns that event.
    pub async fn wait_for_event(
        &self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leaves = self.log_leaves().await;
            if let Some(leaf) = leaves.iter().find(|l| wanted(&l["event"])) {
                return leaf["event"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{what} never reached the event log"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates an entry parented by `parent` with selector `unix:uid:1000`.
    pub async fn create_entry(&self, spiffe_id: &str, parent: &str, dns: &[&str]) -> pb::Entry {
        create_entry_at(&self.running.admin_socket_path, spiffe_id, parent, dns).await
    }
}

/// Generates a join token through the admin socket at `socket`.
pub async fn join_token_at(socket: &Path, ttl_secs: i64) -> String {
    sigil_issuer::admin_client::connect(socket)
        .await
        .unwrap()
        .create_join_token(proto::admin::CreateJoinTokenRequest {
            ttl: ttl_secs,
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// Attests a new agent to the issuer at `address`, with a token from `socket`.
pub async fn attest_with(address: SocketAddr, socket: &Path, bundle: &Bundle) -> TestAgent {
    let token = join_token_at(socket, 0).await;
    let (pkcs8, csr) = new_key_and_csr(None);
    let response = issuer_client::connect(address, bundle, None)
        .await
        .unwrap()
        .attest_agent(attest_request(&token, csr))
        .await
        .unwrap()
        .into_inner();
    let svid = response.svid.unwrap();
    let identity = ClientIdentity {
        chain: split_der_concat(&svid.cert_chain).unwrap(),
        pkcs8: Arc::new(pkcs8),
    };
    let client = issuer_client::connect(address, bundle, Some(&identity))
        .await
        .unwrap();
    TestAgent {
        id: svid.spiffe_id,
        identity,
        client,
    }
}

/// Creates an entry with the given fields through the admin socket at `socket`.
pub async fn create_at(socket: &Path, fields: proto::admin::EntryFields) -> pb::Entry {
    sigil_issuer::admin_client::connect(socket)
        .await
        .unwrap()
        .create_entry(proto::admin::CreateEntryRequest {
            entry: Some(fields),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Creates an entry for `spiffe_id` (uid 1000 under a fixed agent) on an
/// open admin client; the entry's id, or why it was refused.
pub async fn try_create_with(
    admin: &mut AdminClient<Channel>,
    spiffe_id: &str,
) -> Result<String, tonic::Status> {
    let fields = proto::admin::EntryFields {
        spiffe_id: spiffe_id.into(),
        parent_id: "spiffe://example.org/agent/bulk".into(),
        selectors: uid_selector(1000),
        ..Default::default()
    };
    let entry = admin
        .create_entry(proto::admin::CreateEntryRequest {
            entry: Some(fields),
        })
        .await?
        .into_inner();
    Ok(entry.id)
}

/// [`try_create_with`] that must succeed.
pub async fn create_with(admin: &mut AdminClient<Channel>, spiffe_id: &str) -> String {
    try_create_with(admin, spiffe_id).await.unwrap()
}

fn uid_selector(uid: u32) -> Vec<pb::Selector> {
    vec![pb::Selector {
        r#type: "unix".into(),
        value: format!("uid:{uid}"),
    }]
}

/// Creates an entry for uid 1000 through the admin socket at `socket`.
pub async fn create_entry_at(
    socket: &Path,
    spiffe_id: &str,
    parent: &str,
    dns: &[&str],
) -> pb::Entry {
    let fields = proto::admin::EntryFields {
        spiffe_id: spiffe_id.into(),
        parent_id: parent.into(),
        selectors: uid_selector(1000),
        dns_names: dns.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    create_at(socket, fields).await
}

/// An attested agent and its mTLS client.
#[allow(missing_debug_implementations)]
pub struct TestAgent {
    pub id: String,
    pub identity: ClientIdentity,
    pub client: AgentApiClient<Channel>,
}

pub fn attest_request(token: &str, csr: Vec<u8>) -> pb::AttestAgentRequest {
    pb::AttestAgentRequest {
        method: Some(pb::attest_agent_request::Method::JoinToken(
            pb::JoinTokenAttestation {
                token: token.into(),
            },
        )),
        csr,
    }
}

/// A fresh P-256 key (PKCS#8 DER) and a CSR for it, with `uri` as URI SAN.
pub fn new_key_and_csr(uri: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    if let Some(uri) = uri {
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    }
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    (key.serialize_der(), csr)
}

pub fn now() -> SystemTime {
    SystemTime::now()
}

/// Writes DER certificates as one PEM file.
pub fn write_pem(path: &Path, ders: &[Vec<u8>]) {
    let text: String = ders
        .iter()
        .map(|d| workload_api::pem::certificate(d))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// A TCP port on loopback free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The uid of this test process.
pub fn current_uid() -> u32 {
    workload_api::files::current_uid().unwrap()
}

/// A `sigil-agent up` process, its stdout read line by line.
#[allow(missing_debug_implementations)]
pub struct UpProcess {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl UpProcess {
    /// Starts `sigil-agent up --trust-domain example.org --data-dir DIR ARGS`.
    pub fn start(data_dir: &Path, args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(binary("sigil-agent"))
            .args(["up", "--trust-domain", "example.org", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        UpProcess { child, lines }
    }

    /// Collects output lines until one contains `needle`.
    pub fn wait_for(&self, needle: &str) -> Vec<String> {
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

    /// Sends SIGINT and waits for the exit.
    pub fn interrupt(mut self) -> std::process::ExitStatus {
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

/// A test that fails before stopping `up` must not leave it running.
impl Drop for UpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An issuer and an agent, both in this process, with the Workload API on a
/// temp unix socket that any local user can reach.
#[allow(missing_debug_implementations)]
pub struct TestNode {
    pub issuer: TestIssuer,
    pub agent: Option<sigil_agent::agent::RunningAgent>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub agent_id: String,
}

impl TestNode {
    /// Starts an issuer and an agent attested with a fresh join token.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestNode::start`], with the issuer's configuration adjusted.
    pub async fn start_with(customize: impl FnOnce(&mut Config)) -> Self {
        let issuer = TestIssuer::start_with(Arc::new(SystemClock), customize).await;
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("public/api.sock");
        let mut node = TestNode {
            issuer,
            agent: None,
            dir,
            socket,
            agent_id: String::new(),
        };
        let token = node.issuer.join_token(0).await;
        node.start_agent(Some(token)).await;
        node
    }

    /// The agent's configuration; `join_token` only matters without a stored SVID.
    pub fn agent_config(&self, join_token: Option<String>) -> sigil_agent::config::AgentConfig {
        let bundle_path = self.dir.path().join("bootstrap-bundle.json");
        std::fs::write(&bundle_path, self.issuer.bundle().to_jwks_json()).unwrap();
        sigil_agent::config::AgentConfig::from_file(sigil_agent::config::FileConfig {
            trust_domain: Some(self.issuer.running.state.config.trust_domain.to_string()),
            issuer_address: Some(self.issuer.running.agent_api_address.to_string()),
            data_dir: Some(self.dir.path().join("agent")),
            socket_path: Some(self.socket.clone()),
            join_token,
            trust_bundle_path: Some(bundle_path),
            ..Default::default()
        })
        .unwrap()
    }

    pub async fn start_agent(&mut self, join_token: Option<String>) {
        let agent = sigil_agent::agent::start(self.agent_config(join_token))
            .await
            .unwrap();
        self.agent_id = agent.node.svid().spiffe_id.to_string();
        self.agent = Some(agent);
    }

    /// Restarts the agent (on its stored SVID) with its configuration adjusted.
    pub async fn restart_agent_with(
        &mut self,
        customize: impl FnOnce(&mut sigil_agent::config::AgentConfig),
    ) {
        self.stop_agent().await;
        let mut config = self.agent_config(None);
        customize(&mut config);
        let agent = sigil_agent::agent::start(config).await.unwrap();
        self.agent_id = agent.node.svid().spiffe_id.to_string();
        self.agent = Some(agent);
    }

    pub async fn stop_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.shutdown().await;
        }
    }

    /// Registers `spiffe_id` for this process's uid under the agent.
    pub async fn register(&self, spiffe_id: &str, x509_ttl_secs: i64, hint: &str) -> pb::Entry {
        register_at(
            &self.issuer.running.admin_socket_path,
            &self.agent_id,
            spiffe_id,
            x509_ttl_secs,
            hint,
        )
        .await
    }

    /// `unix:///...` for SPIFFE_ENDPOINT_SOCKET.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Waits until the agent serves an X509-SVID for entry `entry_id`.
    pub async fn wait_for_entry(&self, entry_id: &str) {
        let mut snapshots = self.agent.as_ref().unwrap().snapshots.clone();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            snapshots.wait_for(|s| {
                s.identities
                    .iter()
                    .any(|i| i.entry_id == entry_id && i.x509.is_some())
            }),
        )
        .await
        .expect("the entry's SVID was minted in time")
        .unwrap();
    }

    /// Waits until the agent holds `count` X509-SVIDs.
    pub async fn wait_for_svids(&self, count: usize) {
        let mut status = self.agent.as_ref().unwrap().status.clone();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            status.wait_for(|s| s.svids >= count),
        )
        .await
        .expect("SVIDs were minted in time")
        .unwrap();
    }
}

/// Registers `spiffe_id` for this process's uid under `parent`.
pub async fn register_at(
    socket: &Path,
    parent: &str,
    spiffe_id: &str,
    x509_ttl_secs: i64,
    hint: &str,
) -> pb::Entry {
    let fields = proto::admin::EntryFields {
        spiffe_id: spiffe_id.into(),
        parent_id: parent.into(),
        selectors: uid_selector(current_uid()),
        x509_svid_ttl: x509_ttl_secs,
        hint: hint.into(),
        ..Default::default()
    };
    create_at(socket, fields).await
}

/// The first message of a Workload API stream the server opened.
pub async fn first_message<T>(
    opened: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> T {
    opened
        .expect("the stream opens")
        .into_inner()
        .message()
        .await
        .expect("the first message arrives")
        .expect("the stream has a first message")
}
