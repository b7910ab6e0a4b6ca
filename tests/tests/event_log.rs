//! The signed event log end to end: issuance and registration reach the
//! tree; `sigil-issuer audit export` and `audit verify` (the real CLI)
//! check it offline; tampered exports name their first bad index; forks are
//! caught; the Go reference implementation of signed notes and tlog
//! (golang.org/x/mod/sumdb) verifies Sigil's checkpoints, tiles and proofs;
//! and an issuer killed with SIGKILL mid-stream loses no acknowledged event.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::workload as wpb;
use sigil_issuer::eventlog::tree::Hash;
use sigil_tests::c2sp_check::run_c2sp_check_async;
use sigil_tests::{binary, free_port, run, TestIssuer, TestNode, TRUST_DOMAIN};
use workload_api::client::{connect, EndpointAddress};

/// The caller's first JWT-SVID for `audience`, from the node's agent.
async fn fetch_jwt(node: &TestNode, audience: &str) -> String {
    let address = EndpointAddress::Unix(node.socket.clone());
    let mut client = connect(&address).await.unwrap();
    client
        .fetch_jwtsvid(wpb::JwtsvidRequest {
            audience: vec![audience.into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .svids[0]
        .svid
        .clone()
}

/// The tree size of the issuer's latest checkpoint.
async fn checkpoint_size(issuer: &TestIssuer) -> u64 {
    let (status, note) = issuer.http_get("/log/checkpoint").await;
    assert_eq!(status, 200, "{note}");
    note.lines().nth(1).unwrap().parse().unwrap()
}

/// Waits until the log holds at least `size` leaves.
async fn wait_for_size(issuer: &TestIssuer, size: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while checkpoint_size(issuer).await < size {
        assert!(
            Instant::now() < deadline,
            "the log did not reach {size} leaves"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn url(issuer: &TestIssuer) -> String {
    format!("http://{}", issuer.running.http_address.unwrap())
}

/// `sigil-issuer audit export` into `dir/name`.
fn export(base_url: &str, dir: &Path, name: &str, from: u64) -> PathBuf {
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(Command::new(binary("sigil-issuer")).args([
            "audit",
            "export",
            "--url",
            base_url,
            "--from",
            &from.to_string(),
        ]))
    });
    assert!(ok, "{err}");
    let path = dir.join(name);
    std::fs::write(&path, out).unwrap();
    path
}

/// `sigil-issuer audit verify FILE --log-key KEY [--checkpoint OLD]`.
fn verify(file: &Path, key: &str, older: Option<&Path>) -> (bool, String, String) {
    let mut command = Command::new(binary("sigil-issuer"));
    command
        .args(["audit", "verify"])
        .arg(file)
        .args(["--log-key", key]);
    if let Some(older) = older {
        command.arg("--checkpoint").arg(older);
    }
    tokio::task::block_in_place(|| run(&mut command))
}

fn leaves(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_and_registration_are_logged_and_the_export_verifies() {
    let node = TestNode::start().await;
    let entry = node.register("spiffe://example.org/web", 3600, "").await;
    node.wait_for_entry(&entry.id).await;
    let key = node.issuer.running.state.events.key().verifier_key();
    let dir = tempfile::tempdir().unwrap();
    // Issuance waits for the append, not the checkpoint: poll for the tree.
    let deadline = Instant::now() + Duration::from_secs(20);
    let file = loop {
        let file = export(&url(&node.issuer), dir.path(), "events.jsonl", 0);
        let issued = leaves(&file).iter().any(|l| {
            l["event"]["type"] == "x509_svid.issued"
                && l["event"]["subject"] == "spiffe://example.org/web"
        });
        if issued {
            break file;
        }
        assert!(
            Instant::now() < deadline,
            "the issuance never reached the log"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (ok, out, err) = verify(&file, &key, None);
    assert!(ok, "{out}{err}");
    assert!(out.contains("log key (pinned)"), "{out}");

    let events: Vec<serde_json::Value> = leaves(&file)
        .into_iter()
        .map(|l| l["event"].clone())
        .collect();
    let of = |kind: &str| {
        events
            .iter()
            .filter(|e| e["type"] == kind)
            .collect::<Vec<_>>()
    };
    let attested = of("node.attested");
    assert_eq!(attested.len(), 1);
    assert_eq!(attested[0]["subject"], node.agent_id.as_str());
    assert_eq!(attested[0]["actor"], "spiffe://example.org/sigil/issuer");
    // The agent's own SVID is logged with its key's thumbprint.
    assert!(of("x509_svid.issued")
        .iter()
        .any(|e| e["subject"] == node.agent_id.as_str() && e["jkt"].is_string()));
    // Every CA, JWT and WIT key made at start is logged as active.
    let activated: Vec<&str> = of("key.activated")
        .iter()
        .filter_map(|e| e["details"]["key_kind"].as_str())
        .collect();
    for kind in ["x509", "jwt", "wit"] {
        assert!(
            activated.contains(&kind),
            "{kind} key not logged: {activated:?}"
        );
    }
    assert!(!of("crl.published").is_empty());
    let lists = of("revocations.published");
    assert!(
        lists
            .iter()
            .all(|e| e["details"]["revoked_owners"].is_array()),
        "{lists:?}"
    );
    assert!(!lists.is_empty());
    let created = of("entry.created");
    assert_eq!(created[0]["entry_id"], entry.id.as_str());
    let svid = of("x509_svid.issued")
        .into_iter()
        .find(|e| e["subject"] == "spiffe://example.org/web")
        .unwrap();
    assert_eq!(svid["entry_id"], entry.id.as_str());
    assert_eq!(svid["details"]["agent"], node.agent_id.as_str());
    assert!(svid["serial"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(svid["jkt"].as_str().is_some_and(|s| s.len() == 43));
    // Never a key or a token.
    let text = std::fs::read_to_string(&file).unwrap();
    for secret in ["BEGIN", "\"d\":", "eyJ"] {
        assert!(!text.contains(secret), "the export holds {secret}");
    }

    // The agent's JWT-SVID and WIT requests are logged with their jti.
    let token = fetch_jwt(&node, "audience-a").await;
    let claims: serde_json::Value = {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    let jti = claims["jti"]
        .as_str()
        .expect("JWT-SVIDs carry a jti")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let file = export(&url(&node.issuer), dir.path(), "events2.jsonl", 0);
        let found = leaves(&file)
            .iter()
            .any(|l| l["event"]["type"] == "jwt_svid.issued" && l["event"]["jti"] == jti.as_str());
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the JWT-SVID never reached the log"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rewrites the export's leaf lines (after the header) with `change`.
fn tampered(file: &Path, name: &str, change: impl FnOnce(&mut Vec<String>)) -> PathBuf {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut leaves = lines.split_off(1);
    change(&mut leaves);
    lines.extend(leaves);
    let path = file.with_file_name(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_export_names_its_first_bad_index_and_a_fork_is_caught() {
    let issuer = TestIssuer::start().await;
    let key = issuer.running.state.events.key().verifier_key();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..8 {
        issuer
            .create_entry(
                &format!("spiffe://example.org/w{i}"),
                "spiffe://example.org/agent/x",
                &[],
            )
            .await;
    }
    wait_for_size(&issuer, 8).await;
    let (_, older) = issuer.http_get("/log/checkpoint").await;
    let older_size: u64 = older.lines().nth(1).unwrap().parse().unwrap();
    let older_path = dir.path().join("older.note");
    std::fs::write(&older_path, &older).unwrap();
    for i in 8..12 {
        issuer
            .create_entry(
                &format!("spiffe://example.org/w{i}"),
                "spiffe://example.org/agent/x",
                &[],
            )
            .await;
    }
    wait_for_size(&issuer, older_size + 4).await;
    let file = export(&url(&issuer), dir.path(), "events.jsonl", 0);
    let (ok, out, err) = verify(&file, &key, Some(&older_path));
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "consistent with the older checkpoint of size {older_size}"
        )),
        "{out}"
    );

    let cases: Vec<(&str, PathBuf)> = vec![
        (
            "edited",
            tampered(&file, "edited.jsonl", |l| {
                l[3] = l[3].replacen("\"actor\":\"spiffe://", "\"actor\":\"spiffe://x.", 1)
            }),
        ),
        (
            "deleted",
            tampered(&file, "deleted.jsonl", |l| {
                l.remove(3);
            }),
        ),
        (
            "reordered",
            tampered(&file, "reordered.jsonl", |l| l.swap(3, 4)),
        ),
        (
            "inserted",
            tampered(&file, "inserted.jsonl", |l| {
                let copy = l[1].clone();
                l.insert(3, copy)
            }),
        ),
    ];
    for (what, path) in cases {
        let (ok, out, err) = verify(&path, &key, None);
        assert!(!ok, "{what}: {out}");
        assert!(err.contains("index 3:"), "{what}: {err}");
    }
    // The last event cut off: the checkpoint still counts it.
    let truncated = tampered(&file, "truncated.jsonl", |l| {
        l.pop();
    });
    let size = leaves(&file).len();
    let (ok, _, err) = verify(&truncated, &key, None);
    assert!(
        !ok && err.contains(&format!("index {}:", size - 1)),
        "{err}"
    );

    // Another key: the checkpoint does not verify.
    let other = tempfile::tempdir().unwrap();
    let other_key = sigil_issuer::eventlog::key::LogKey::load_or_create(
        &other.path().join("k.jwk"),
        &sigil_issuer::eventlog::origin(&workload_api::id::TrustDomain::new(TRUST_DOMAIN).unwrap()),
    )
    .unwrap();
    let (ok, _, err) = verify(&file, &other_key.verifier_key(), None);
    assert!(!ok && err.contains("checkpoint signature"), "{err}");

    // A fork: the log's own key signed another root for the older size.
    let forked = sigil_issuer::eventlog::sequencer::sign_checkpoint(
        &issuer.running.state.events,
        older_size,
        Hash([7; 32]),
    );
    let forked_path = dir.path().join("forked.note");
    std::fs::write(&forked_path, &forked).unwrap();
    let (ok, _, err) = verify(&file, &key, Some(&forked_path));
    assert!(!ok && err.contains("fork"), "{err}");

    // The Go reference implementation agrees on all of it.
    let base = format!("{}/log", url(&issuer));
    let output = run_c2sp_check_async(&key, &base, Some(&older_path), None).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = run_c2sp_check_async(&key, &base, Some(&forked_path), None).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("fork"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_reference_implementation_verifies_a_log_of_several_tile_levels() {
    let issuer = TestIssuer::start().await;
    let key = issuer.running.state.events.key().verifier_key();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/log", url(&issuer));
    let saved = dir.path().join("first.note");
    let first = checkpoint_size(&issuer).await;
    let output = run_c2sp_check_async(&key, &base, None, Some(&saved)).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Past 256 leaves: a full level-0 tile, a level-1 tile and partial tiles.
    let mut admin = issuer.admin().await;
    for i in 0..300 {
        sigil_tests::create_with(&mut admin, &format!("spiffe://example.org/bulk/{i}")).await;
    }
    wait_for_size(&issuer, first + 300).await;
    let output = run_c2sp_check_async(&key, &base, Some(&saved), None).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("consistent with size"));
    // Sigil's own verifier, from an index past the first tile.
    let file = export(&url(&issuer), dir.path(), "tail.jsonl", 260);
    let (ok, out, err) = verify(&file, &key, None);
    assert!(ok, "{out}{err}");
    assert!(out.contains("(indexes 260.."), "{out}");
}

/// `sigil-issuer run` as a child process, killed with SIGKILL on drop.
struct IssuerProcess {
    child: std::process::Child,
}

impl Drop for IssuerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sigil-issuer run` with its data in `dir/data`, its admin socket
/// at `dir/admin/admin.sock`, the agent API on `api_port` (any free one
/// when 0) and the HTTP endpoint on `http_port`; returns once it answers.
fn start_issuer_on(dir: &Path, api_port: u16, http_port: u16) -> IssuerProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("issuer.log"))
        .unwrap();
    let child = Command::new(binary("sigil-issuer"))
        .args(["run", "--trust-domain", TRUST_DOMAIN])
        .arg("--agent-api-address")
        .arg(format!("127.0.0.1:{api_port}"))
        .arg("--http-address")
        .arg(format!("127.0.0.1:{http_port}"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--admin-socket-path")
        .arg(dir.join("admin/admin.sock"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // The HTTP endpoint answers once the issuer is up (an admin socket
    // left by a killed issuer would not tell).
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err() {
        assert!(Instant::now() < deadline, "the issuer did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    IssuerProcess { child }
}

fn start_issuer(dir: &Path, http_port: u16) -> IssuerProcess {
    start_issuer_on(dir, 0, http_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_killed_mid_stream_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let socket = dir.path().join("admin/admin.sock");
    let mut issuer = start_issuer(dir.path(), http_port);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..4 {
        let acked = acked.clone();
        let socket = socket.clone();
        writers.push(tokio::spawn(async move {
            let Ok(mut admin) = sigil_issuer::admin_client::connect(&socket).await else {
                return;
            };
            for i in 0.. {
                let id = format!("spiffe://example.org/stream/{writer}/{i}");
                match sigil_tests::try_create_with(&mut admin, &id).await {
                    Ok(entry_id) => acked.lock().unwrap().push(entry_id),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill it in the middle of the stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 150 {
        assert!(Instant::now() < deadline, "appends did not flow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    issuer.child.kill().unwrap();
    issuer.child.wait().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    drop(issuer);

    let _issuer = tokio::task::block_in_place(|| start_issuer(dir.path(), http_port));
    let base = format!("http://127.0.0.1:{http_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let file = loop {
        let file = export(&base, dir.path(), "after.jsonl", 0);
        let logged: std::collections::HashSet<String> = leaves(&file)
            .iter()
            .filter(|l| l["event"]["type"] == "entry.created")
            .filter_map(|l| l["event"]["entry_id"].as_str().map(str::to_string))
            .collect();
        if acked.iter().all(|id| logged.contains(id)) {
            break file;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged events are missing after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let key = std::fs::read_to_string(dir.path().join("data/log/log.jwk"))
        .map(|_| ())
        .ok();
    assert!(key.is_some(), "the log key is kept in the data directory");
    let (ok, vkey, err) = tokio::task::block_in_place(|| {
        run(Command::new(binary("sigil-issuer")).args(["audit", "key", "--url", &base]))
    });
    assert!(ok, "{err}");
    let (ok, out, err) = verify(&file, vkey.trim(), None);
    assert!(ok, "{out}{err}");
    // No entry was logged twice.
    let created: Vec<String> = leaves(&file)
        .iter()
        .filter(|l| l["event"]["type"] == "entry.created")
        .map(|l| l["event"]["entry_id"].as_str().unwrap().to_string())
        .collect();
    let unique: std::collections::HashSet<&String> = created.iter().collect();
    assert_eq!(unique.len(), created.len());
}

/// The event leaves of an export whose event is `kind`.
fn events_of(file: &Path, kind: &str) -> Vec<serde_json::Value> {
    leaves(file)
        .into_iter()
        .filter(|l| l["event"]["type"] == kind)
        .collect()
}

/// Exports until `done` holds for the leaves, then returns the file.
async fn export_until(
    base_url: &str,
    dir: &Path,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let file = export(base_url, dir, "until.jsonl", 0);
        if done(&leaves(&file)) {
            return file;
        }
        assert!(Instant::now() < deadline, "{what} never reached the log");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn serial_of(chain: &[u8]) -> String {
    let certs = workload_api::bundle::split_der_concat(chain).unwrap();
    workload_api::x509svid::check_leaf(&certs[0])
        .unwrap()
        .serial_hex
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_logged_once_per_process_and_credential_signed_by_the_agent() {
    let node = TestNode::start().await;
    let entry = node.register("spiffe://example.org/web", 3600, "").await;
    node.wait_for_entry(&entry.id).await;
    let address = EndpointAddress::Unix(node.socket.clone());
    // Twice from this process: one event.
    let mut serials = Vec::new();
    for _ in 0..2 {
        let mut client = connect(&address).await.unwrap();
        let mut stream = client
            .fetch_x509svid(wpb::X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        let message = stream.message().await.unwrap().unwrap();
        serials.push(serial_of(&message.svids[0].x509_svid));
    }
    assert_eq!(serials[0], serials[1]);
    let serial = serials[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let base = url(&node.issuer);
    let pid = i64::from(std::process::id());
    export_until(&base, dir.path(), "the delivery", |leaves| {
        leaves.iter().any(|l| {
            l["event"]["type"] == "credential.delivered" && l["event"]["serial"] == serial.as_str()
        })
    })
    .await;
    // Let a duplicate, if the agent made one, reach the log too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let file = export(&base, dir.path(), "after.jsonl", 0);
    let delivered: Vec<serde_json::Value> = events_of(&file, "credential.delivered")
        .into_iter()
        .filter(|l| l["event"]["serial"] == serial.as_str())
        .collect();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let leaf = &delivered[0];
    let event = &leaf["event"];
    assert_eq!(event["actor"], node.agent_id.as_str());
    assert_eq!(event["subject"], "spiffe://example.org/web");
    assert_eq!(event["entry_id"], entry.id.as_str());
    assert_eq!(event["details"]["pid"], pid);
    assert_eq!(event["details"]["credential"], "x509_svid");
    assert!(event["details"]["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == &format!("unix:uid:{}", sigil_tests::current_uid())));
    // Signed by the agent, with the key of its logged SVID.
    assert_eq!(leaf["agent_sig"]["seq"].as_u64(), Some(1));
    let jkt = sigil_issuer::eventlog::leaf::open(
        serde_json::to_string(leaf).unwrap().as_bytes(),
        leaf["index"].as_u64().unwrap(),
        &sigil_issuer::eventlog::origin(&workload_api::id::TrustDomain::new(TRUST_DOMAIN).unwrap()),
        &sigil_issuer::eventlog::signed_note::StandardVerifier::new(
            &node.issuer.running.state.events.key().verifier_key(),
        )
        .unwrap(),
    )
    .unwrap()
    .agent
    .unwrap()
    .jkt;
    assert!(events_of(&file, "x509_svid.issued")
        .iter()
        .any(|l| l["event"]["subject"] == node.agent_id.as_str()
            && l["event"]["jkt"] == jkt.as_str()));
    let key = node.issuer.running.state.events.key().verifier_key();
    let (ok, out, err) = verify(&file, &key, None);
    assert!(ok, "{out}{err}");
    assert!(out.contains("agent signatures: 1 checked"), "{out}");

    // An altered agent event fails at its index, though the log re-signed
    // nothing: the agent's signature is checked too.
    let index = leaf["index"].as_u64().unwrap() as usize;
    let forged = tampered(&file, "forged.jsonl", |l| {
        l[index] = l[index].replace("\"uid\":", "\"uid\":1");
    });
    let (ok, _, err) = verify(&forged, &key, None);
    assert!(!ok && err.contains(&format!("index {index}:")), "{err}");

    // audit show lists the issuance and the delivery for the SPIFFE ID.
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(Command::new(binary("sigil-issuer")).args([
            "audit",
            "show",
            "--spiffe-id",
            "spiffe://example.org/web",
            "--url",
            &base,
            "--log-key",
            &key,
        ]))
    });
    assert!(ok, "{err}");
    assert!(out.contains("x509_svid.issued"), "{out}");
    assert!(out.contains("credential.delivered"), "{out}");
    assert!(out.contains(&format!("serial={serial}")), "{out}");
    assert!(out.contains("entry.created"), "{out}");
}

/// An agent process's configuration against an issuer on fixed ports.
fn agent_command(issuer_port: u16, bundle: &Path, data: &Path, socket: &Path) -> Command {
    let mut command = Command::new(binary("sigil-agent"));
    command
        .args(["run", "--trust-domain", TRUST_DOMAIN])
        .arg("--issuer-address")
        .arg(format!("127.0.0.1:{issuer_port}"))
        .arg("--data-dir")
        .arg(data)
        .arg("--socket-path")
        .arg(socket)
        .arg("--trust-bundle")
        .arg(bundle)
        .stdout(Stdio::null());
    command
}

/// `sigil-agent api fetch x509` from a process of its own: the serial of
/// the SVID it was handed.
fn try_fetch_in_new_process(socket: &Path) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(Command::new(binary("sigil-agent"))
        .args(["api", "fetch", "x509", "--write"])
        .arg(dir.path())
        .arg("--socket-path")
        .arg(socket));
    if !ok {
        return Err(err);
    }
    let pem = std::fs::read_to_string(dir.path().join("svid.pem")).unwrap();
    let der = workload_api::pem::blocks(&pem, "CERTIFICATE");
    Ok(workload_api::x509svid::check_leaf(&der[0])
        .unwrap()
        .serial_hex)
}

fn fetch_in_new_process(socket: &Path) -> String {
    try_fetch_in_new_process(socket).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_queue_survives_an_agent_restart_and_an_issuer_outage() {
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let api_port = free_port();
    let admin = |args: &[&str]| {
        run(Command::new(binary("sigil-issuer"))
            .args(args)
            .arg("--socket-path")
            .arg(dir.path().join("admin/admin.sock")))
    };
    let mut issuer =
        tokio::task::block_in_place(|| start_issuer_on(dir.path(), api_port, http_port));
    let (ok, jwks, err) = admin(&["bundle", "show", "--format", "spiffe"]);
    assert!(ok, "{err}");
    let bundle = dir.path().join("bundle.json");
    std::fs::write(&bundle, jwks).unwrap();
    let (ok, token, err) = admin(&["token", "generate", "--json"]);
    assert!(ok, "{err}");
    let token: serde_json::Value = serde_json::from_str(&token).unwrap();
    let socket = dir.path().join("agent-run/api.sock");
    let spawn_agent = |token: Option<&str>| {
        let mut command = agent_command(api_port, &bundle, &dir.path().join("agent"), &socket);
        if let Some(token) = token {
            command.env("SIGIL_JOIN_TOKEN", token);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("agent.log"))
            .unwrap();
        IssuerProcess {
            child: command.stderr(log).spawn().unwrap(),
        }
    };
    let mut agent = spawn_agent(token["token"].as_str());
    let agent_id = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, out, _) = admin(&["agent", "list", "--json"]);
            let agents: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            if let Some(id) = agents.get(0).and_then(|a| a["spiffe_id"].as_str()) {
                break id.to_string();
            }
            assert!(Instant::now() < deadline, "the agent did not attest");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let uid = sigil_tests::current_uid().to_string();
    let (ok, _, err) = admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/queued",
        "--parent-id",
        &agent_id,
        "--selector",
        &format!("unix:uid:{uid}"),
    ]);
    assert!(ok, "{err}");
    let fetch = || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match try_fetch_in_new_process(&socket) {
                Ok(serial) => return serial,
                Err(err) => assert!(Instant::now() < deadline, "no SVID was served: {err}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let serial = tokio::task::block_in_place(fetch);

    // The issuer goes away; workloads in new processes keep fetching.
    issuer.child.kill().unwrap();
    issuer.child.wait().unwrap();
    for _ in 0..2 {
        assert_eq!(
            tokio::task::block_in_place(|| fetch_in_new_process(&socket)),
            serial
        );
    }
    // The agent restarts during the outage: its queue is on disk.
    let queue = dir.path().join("agent/events/queue.jsonl");
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    assert!(
        std::fs::metadata(&queue).unwrap().len() > 0,
        "the queued events are on disk"
    );
    agent = spawn_agent(None);

    // The issuer is back: every delivery arrives, each once.
    issuer = tokio::task::block_in_place(|| start_issuer_on(dir.path(), api_port, http_port));
    // A restarted agent serves once it has its entries again (with an SVID
    // it minted anew).
    tokio::task::block_in_place(fetch);
    let base = format!("http://127.0.0.1:{http_port}");
    let file = export_until(&base, dir.path(), "the queued deliveries", |leaves| {
        leaves
            .iter()
            .filter(|l| {
                l["event"]["type"] == "credential.delivered"
                    && l["event"]["subject"] == "spiffe://example.org/queued"
            })
            .count()
            >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let file2 = export(&base, dir.path(), "settled.jsonl", 0);
    let delivered: Vec<serde_json::Value> = events_of(&file2, "credential.delivered");
    let seqs: Vec<u64> = delivered
        .iter()
        .map(|l| l["agent_sig"]["seq"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every event once, in the agent's order");
    let pids: std::collections::HashSet<i64> = delivered
        .iter()
        .map(|l| l["event"]["details"]["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(pids.len(), delivered.len(), "one event per process");
    assert_eq!(
        delivered.len(),
        4,
        "one fetch before the outage, two during it, one after the restarts"
    );
    let (ok, vkey, err) = tokio::task::block_in_place(|| {
        run(Command::new(binary("sigil-issuer")).args(["audit", "key", "--url", &base]))
    });
    assert!(ok, "{err}");
    let (ok, out, err) = verify(&file2, vkey.trim(), None);
    assert!(ok, "{out}{err}");
    drop(file);
    drop(agent);
    drop(issuer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proof_verifications_reach_the_log_through_the_agent() {
    use sigil_tests::web::{http_call, ExampleService};
    use workload_api::wimse::WptForm;
    const WEB: &str = "spiffe://example.org/web";
    let node = TestNode::start().await;
    node.register(WEB, 3600, "").await;
    let address = EndpointAddress::Unix(node.socket.clone());
    let mut client = connect(&address).await.unwrap();
    let response = client
        .fetch_witsvid(wpb::WitsvidRequest::default())
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let wit = response.svids[0].wit_svid.clone();
    let key =
        workload_api::keypair::KeyPair::from_jwk_json(&response.svids[0].wit_svid_key).unwrap();
    let wit_jti = workload_api::source::token_jti(&wit);
    let endpoint = node.endpoint();
    let service = tokio::task::spawn_blocking(move || {
        ExampleService::start_with(endpoint, &["--usage-report-interval", "1s"])
    })
    .await
    .unwrap();
    let proof = || {
        let mut headers = http::HeaderMap::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        workload_api::wimse::http::add_proof_headers_as(
            WptForm::Authorization,
            &mut headers,
            &wit,
            &key,
            "https://orders.example.org/orders",
            60,
            &[],
            now,
        )
        .unwrap();
        headers
    };
    let mut used = http::HeaderMap::new();
    for _ in 0..3 {
        used = proof();
        let answer = http_call(&service.address, "GET", "/orders", &used, b"").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    // A replayed proof is refused, and reported.
    let answer = http_call(&service.address, "GET", "/orders", &used, b"").await;
    assert_eq!(answer.status, 401);

    let dir = tempfile::tempdir().unwrap();
    let base = url(&node.issuer);
    let counted = |leaves: &[serde_json::Value]| -> u64 {
        leaves
            .iter()
            .filter(|l| l["event"]["type"] == "proof.verified" && l["event"]["subject"] == WEB)
            .map(|l| l["event"]["details"]["count"].as_u64().unwrap())
            .sum()
    };
    let rejected = |leaves: &[serde_json::Value]| {
        leaves.iter().any(|l| {
            l["event"]["type"] == "proof.rejected"
                && l["event"]["details"]["check"] == "wpt.jti"
                && l["event"]["details"]["claimed_sender"] == WEB
        })
    };
    let file = export_until(&base, dir.path(), "the verifications", |leaves| {
        counted(leaves) >= 3 && rejected(leaves)
    })
    .await;
    let leaves = leaves(&file);
    assert_eq!(counted(&leaves), 3, "three requests, counted once");
    let verified = leaves
        .iter()
        .find(|l| l["event"]["type"] == "proof.verified")
        .unwrap();
    let event = &verified["event"];
    assert_eq!(event["actor"], node.agent_id.as_str());
    assert_eq!(event["jti"], wit_jti.as_str());
    assert_eq!(event["details"]["route"], "GET /orders");
    assert_eq!(event["details"]["proof"], "wpt");
    assert!(event["details"]["verifier_pid"].as_i64().is_some());
    let key = node.issuer.running.state.events.key().verifier_key();
    let (ok, out, err) = verify(&file, &key, None);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(Command::new(binary("sigil-issuer")).args([
            "audit",
            "show",
            "--spiffe-id",
            WEB,
            "--url",
            &base,
            "--log-key",
            &key,
        ]))
    });
    assert!(ok, "{err}");
    for kind in ["wit.issued", "credential.delivered", "proof.verified"] {
        assert!(out.contains(kind), "{kind}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_quickstart_audit_show_lists_issuance_delivery_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sigil");
    let up = tokio::task::block_in_place(|| sigil_tests::UpProcess::start(&data, &[]));
    let lines = tokio::task::block_in_place(|| up.wait_for("Press Ctrl-C"));
    let value = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("no {prefix:?} in {lines:?}"))
    };
    let socket = value("export SPIFFE_ENDPOINT_SOCKET=unix://");
    let admin_socket = value("export SIGIL_ADMIN_SOCKET=");
    let base = value("export SIGIL_ISSUER_URL=");
    let key = lines
        .iter()
        .find_map(|l| {
            l.split("(key ")
                .nth(1)
                .and_then(|rest| rest.split(')').next())
                .filter(|k| k.contains("sigil-event-log+"))
                .map(str::to_string)
        })
        .expect("up prints the log's verifier key");
    let user_id = lines
        .iter()
        .find_map(|l| {
            l.strip_prefix("Processes of uid ")
                .and_then(|rest| rest.split(" are ").nth(1))
                .map(|id| id.trim_end_matches('.').to_string())
        })
        .expect("up names the user's SPIFFE ID");
    let owner = format!(
        "spiffe://example.org/owner/{}",
        user_id.rsplit('/').next().unwrap()
    );
    let serial = tokio::task::block_in_place(|| fetch_in_new_process(Path::new(&socket)));

    let show = |args: &[&str]| {
        tokio::task::block_in_place(|| {
            run(Command::new(binary("sigil-issuer"))
                .args(["audit", "show"])
                .args(args)
                .env("SIGIL_ISSUER_URL", &base)
                .env("SIGIL_LOG_KEY", &key))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = show(&["--spiffe-id", &user_id]);
        assert!(ok, "{err}");
        let issued = out.lines().any(|l| l.contains("x509_svid.issued"));
        let delivered = out
            .lines()
            .any(|l| l.contains("credential.delivered") && l.contains(&format!("serial={serial}")));
        if issued && delivered {
            assert!(out.contains(&format!("owner={owner}")), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Revoking the owner is in the log too.
    let (ok, _, err) = tokio::task::block_in_place(|| {
        run(Command::new(binary("sigil-issuer"))
            .args(["owner", "revoke", "--id", &owner])
            .env("SIGIL_ADMIN_SOCKET", &admin_socket))
    });
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = show(&["--owner", &owner]);
        assert!(ok, "{err}");
        if out.contains("owner.revoked") {
            assert!(out.contains("owner.registered"), "{out}");
            // Under the owner: its workloads' issuance and use too.
            assert!(out.contains("x509_svid.issued"), "{out}");
            assert!(out.contains("credential.delivered"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tail_follows_the_log_as_it_grows() {
    use std::io::BufRead;
    let issuer = TestIssuer::start().await;
    let key = issuer.running.state.events.key().verifier_key();
    let mut tail = Command::new(binary("sigil-issuer"))
        .args(["audit", "tail", "--from", "0", "--interval", "200ms"])
        .args(["--url", &url(&issuer), "--log-key", &key])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => {
                    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
                    return value;
                }
                Ok(_) => {}
                Err(_) => panic!("audit tail never printed {needle}"),
            }
        }
    };
    issuer
        .create_entry(
            "spiffe://example.org/first",
            "spiffe://example.org/agent/x",
            &[],
        )
        .await;
    let first = tokio::task::block_in_place(|| wait_for("spiffe://example.org/first"));
    assert_eq!(first["event"]["type"], "entry.created");
    // Events arriving later are printed as they come.
    issuer
        .create_entry(
            "spiffe://example.org/second",
            "spiffe://example.org/agent/x",
            &[],
        )
        .await;
    let second = tokio::task::block_in_place(|| wait_for("spiffe://example.org/second"));
    assert!(second["index"].as_u64() > first["index"].as_u64());
    let _ = tail.kill();
    let _ = tail.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_events_arrive_a_checkpoint_is_signed_every_second() {
    let issuer = TestIssuer::start().await;
    let mut admin = issuer.admin().await;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let until = Instant::now() + Duration::from_millis(4500);
    let mut i = 0;
    while Instant::now() < until {
        sigil_tests::create_with(&mut admin, &format!("spiffe://example.org/steady/{i}")).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every whole second strictly inside the stream has a checkpoint.
    let db = issuer.dir.path().join("data/sigil.db");
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(Command::new(sigil_tests::python()).args([
            "-c",
            "import sqlite3, sys; print(' '.join(str(r[0]) for r in sqlite3.connect(sys.argv[1]).execute('SELECT DISTINCT signed_at FROM log_checkpoints')))",
            db.to_str().unwrap(),
        ]))
    });
    assert!(ok, "{err}");
    let seconds: std::collections::HashSet<u64> =
        out.split_whitespace().map(|s| s.parse().unwrap()).collect();
    for second in started + 1..started + 4 {
        assert!(
            seconds.contains(&second),
            "no checkpoint signed in second {second}: {seconds:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svid_checks_a_service_reports_reach_the_log() {
    use workload_api::wimse::usage::UsageReporter;
    const WEB: &str = "spiffe://example.org/web";
    let node = TestNode::start().await;
    node.register(WEB, 3600, "").await;
    let token = fetch_jwt(&node, "db").await;
    let address = EndpointAddress::Unix(node.socket.clone());
    let mut client = connect(&address).await.unwrap();
    let bundles = client
        .fetch_jwt_bundles(wpb::JwtBundlesRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let td = workload_api::id::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let bundle =
        workload_api::Bundle::from_jwks_json(td.clone(), &bundles.bundles["spiffe://example.org"])
            .unwrap();
    // A service checks JWT-SVIDs with the library and reports each result.
    let reporter = UsageReporter::start_every(address.clone(), Duration::from_millis(500)).unwrap();
    let now = std::time::SystemTime::now();
    let check = |token: &str| {
        workload_api::jwtsvid::validate(token, "db", |d| (*d == td).then_some(&bundle), now)
    };
    for _ in 0..2 {
        reporter.jwt_svid(&token, &check(&token), "query orders");
    }
    // The same token with its signature's first character changed.
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let first = if signature.starts_with('A') { "B" } else { "A" };
    let forged = format!("{signed}.{first}{}", &signature[1..]);
    let refused = check(&forged);
    assert!(refused.is_err());
    reporter.jwt_svid(&forged, &refused, "query orders");

    let dir = tempfile::tempdir().unwrap();
    let jti = workload_api::source::token_jti(&token);
    let file = export_until(
        &url(&node.issuer),
        dir.path(),
        "the JWT-SVID checks",
        |leaves| {
            let verified = leaves.iter().any(|l| {
                l["event"]["type"] == "proof.verified"
                    && l["event"]["details"]["proof"] == "jwt_svid"
                    && l["event"]["jti"] == jti.as_str()
                    && l["event"]["details"]["count"] == 2
            });
            let rejected = leaves.iter().any(|l| {
                l["event"]["type"] == "proof.rejected"
                    && l["event"]["details"]["check"] == "jwt_svid.signature"
            });
            verified && rejected
        },
    )
    .await;
    let key = node.issuer.running.state.events.key().verifier_key();
    let (ok, out, err) = verify(&file, &key, None);
    assert!(ok, "{out}{err}");
    drop(reporter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_changes_to_entries_and_agents_are_logged() {
    use proto::admin as adm;
    let issuer = TestIssuer::start().await;
    let mut admin = issuer.admin().await;
    let entry = issuer
        .create_entry(
            "spiffe://example.org/changed",
            "spiffe://example.org/agent/x",
            &[],
        )
        .await;
    let mut fields = adm::EntryFields {
        spiffe_id: entry.spiffe_id.clone(),
        parent_id: entry.parent_id.clone(),
        selectors: entry.selectors.clone(),
        ..Default::default()
    };
    fields.x509_svid_ttl = 600;
    admin
        .update_entry(adm::UpdateEntryRequest {
            id: entry.id.clone(),
            entry: Some(fields),
            revision: entry.revision,
        })
        .await
        .unwrap();
    admin
        .delete_entry(adm::EntryId {
            id: entry.id.clone(),
        })
        .await
        .unwrap();
    let banned = issuer.attest().await;
    let evicted = issuer.attest().await;
    admin
        .ban_agent(adm::AgentId {
            spiffe_id: banned.id.clone(),
        })
        .await
        .unwrap();
    admin
        .evict_agent(adm::AgentId {
            spiffe_id: evicted.id.clone(),
        })
        .await
        .unwrap();

    for (kind, subject) in [
        ("entry.updated", entry.spiffe_id.as_str()),
        ("entry.deleted", entry.spiffe_id.as_str()),
        ("node.attested", banned.id.as_str()),
        ("agent.banned", banned.id.as_str()),
        ("agent.evicted", evicted.id.as_str()),
    ] {
        let event = issuer
            .wait_for_event(kind, |e| e["type"] == kind && e["subject"] == subject)
            .await;
        assert_eq!(
            event["actor"], "spiffe://example.org/sigil/issuer",
            "{kind}"
        );
    }
    let updated = issuer
        .wait_for_event("the update", |e| e["type"] == "entry.updated")
        .await;
    assert_eq!(updated["details"]["revision"], entry.revision + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_is_logged_step_by_step() {
    let clock = sigil_issuer::clock::ManualClock::new(std::time::SystemTime::now());
    let issuer = TestIssuer::start_with(Arc::new(clock.clone()), |_| {}).await;
    let ttl = issuer.running.state.config.ca_ttl;
    let first_x509 = issuer
        .wait_for_event("the first CA key", |e| {
            e["type"] == "key.activated" && e["details"]["key_kind"] == "x509"
        })
        .await;
    let first_id = first_x509["details"]["key_id"].clone();
    // Past half the CA's life its successor is prepared and published...
    clock.advance(ttl * 11 / 20);
    let prepared = issuer
        .wait_for_event("a prepared CA key", |e| {
            e["type"] == "key.prepared" && e["details"]["key_kind"] == "x509"
        })
        .await;
    let next_id = prepared["details"]["key_id"].clone();
    assert_ne!(next_id, first_id);
    // ... and past five sixths it takes over; the old one is retired.
    clock.advance(ttl * 7 / 20);
    issuer
        .wait_for_event("the successor's activation", |e| {
            e["type"] == "key.activated" && e["details"]["key_id"] == next_id
        })
        .await;
    issuer
        .wait_for_event("the old key's retirement", |e| {
            e["type"] == "key.retired" && e["details"]["key_id"] == first_id
        })
        .await;
    for kind in ["jwt", "wit"] {
        issuer
            .wait_for_event("the token keys' rotation", |e| {
                e["type"] == "key.retired" && e["details"]["key_kind"] == kind
            })
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_with_no_issuer_running() {
    let issuer = TestIssuer::start().await;
    let key = issuer.running.state.events.key().verifier_key();
    issuer
        .create_entry(
            "spiffe://example.org/offline",
            "spiffe://example.org/agent/x",
            &[],
        )
        .await;
    wait_for_size(&issuer, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let file = export(&url(&issuer), dir.path(), "events.jsonl", 0);
    let TestIssuer {
        dir: _data,
        running,
    } = issuer;
    running.shutdown().await;
    let (ok, out, err) = verify(&file, &key, None);
    assert!(ok, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_events_refuses_what_an_agent_may_not_log_and_takes_each_seq_once() {
    use proto::issuer as pb;
    use workload_api::events::{signed, Event, EventKind};
    use workload_api::jwk::Algorithm;
    use workload_api::keypair::KeyPair;
    let issuer = TestIssuer::start().await;
    let agent = issuer.attest().await;
    let key = KeyPair::from_pkcs8(Algorithm::ES256, &agent.identity.pkcs8).unwrap();
    let delivered = |actor: &str| {
        Event::new(
            EventKind::CredentialDelivered,
            actor,
            std::time::SystemTime::now(),
        )
        .subject("spiffe://example.org/web")
    };
    let submit = |records: Vec<String>| {
        let mut client = agent.client.clone();
        async move {
            client
                .submit_events(pb::SubmitEventsRequest { records })
                .await
                .map(|r| r.into_inner().acknowledged_through)
        }
    };
    let refused = |result: Result<u64, tonic::Status>, code: tonic::Code, text: &str| {
        let status = result.expect_err(text);
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(text), "{status:?}");
    };
    let id = agent.id.clone();
    // Another agent's name as actor.
    let other = signed::sign(&delivered("spiffe://example.org/agent/other"), 1, &key).unwrap();
    refused(
        submit(vec![other]).await,
        tonic::Code::InvalidArgument,
        "records[0]: the event's actor",
    );
    // A kind only the issuer witnesses.
    let issued = Event::new(
        EventKind::X509SvidIssued,
        id.as_str(),
        std::time::SystemTime::now(),
    );
    let issued = signed::sign(&issued, 1, &key).unwrap();
    refused(
        submit(vec![issued]).await,
        tonic::Code::InvalidArgument,
        "may not report x509_svid.issued",
    );
    // Signed with a key that is not the caller's SVID key.
    let stranger = KeyPair::generate(Algorithm::ES256).unwrap();
    let foreign = signed::sign(&delivered(&id), 1, &stranger).unwrap();
    refused(
        submit(vec![foreign]).await,
        tonic::Code::InvalidArgument,
        "other than the agent's current SVID key",
    );
    // An altered record.
    let altered = signed::sign(&delivered(&id), 1, &key)
        .unwrap()
        .replace("/web", "/db");
    refused(
        submit(vec![altered]).await,
        tonic::Code::InvalidArgument,
        "signature does not verify",
    );
    // A gap in the numbering.
    let third = signed::sign(&delivered(&id), 3, &key).unwrap();
    refused(
        submit(vec![third]).await,
        tonic::Code::FailedPrecondition,
        "expected 1",
    );
    // Too many in one call.
    let many = vec![signed::sign(&delivered(&id), 1, &key).unwrap(); 257];
    refused(
        submit(many).await,
        tonic::Code::InvalidArgument,
        "257 records in one call",
    );
    // In order, each seq is taken once however often it is sent.
    let first = signed::sign(&delivered(&id), 1, &key).unwrap();
    assert_eq!(submit(vec![first.clone()]).await.unwrap(), 1);
    assert_eq!(submit(vec![first]).await.unwrap(), 1);
    let second = signed::sign(&delivered(&id), 2, &key).unwrap();
    assert_eq!(submit(vec![second]).await.unwrap(), 2);
    let leaves = issuer.log_leaves().await;
    let from_agent = |l: &&serde_json::Value| l["event"]["actor"] == id.as_str();
    // Give the sequencer its step before counting.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut count = leaves.iter().filter(from_agent).count();
    while count < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        count = issuer.log_leaves().await.iter().filter(from_agent).count();
    }
    assert_eq!(count, 2, "each seq logged once");
}
