//! Three `sigil-issuer run` processes sharing one PostgreSQL database (a
//! real server, see `sigil_tests::postgres`) and one event log key, with
//! agents configured with all three. An entry created through one replica
//! reaches an agent connected to another; the replica holding the event
//! log's sequencer is killed with SIGKILL; its agents move to the others
//! within 5 s, the sequencer moves within 10 s, no entry and no
//! acknowledged event is lost, and `sigil-issuer audit verify` accepts the
//! log against the key pinned when it was made.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sigil_agent::agent::RunningAgent;
use sigil_agent::failover::Link;
use sigil_tests::postgres::Postgres;
use sigil_tests::{binary, free_port, issuer_process, join_token_at, register_at, run};

/// A `sigil-issuer run` process.
struct Replica {
    child: Child,
    dir: tempfile::TempDir,
    agent_api: SocketAddr,
    http: SocketAddr,
    admin: PathBuf,
    /// The id it names itself by in the database.
    id: String,
}

impl Replica {
    fn start(database_url: &str, log_key: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let agent_api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin = issuer_process::admin_socket(dir.path());
        let log = std::fs::File::create(dir.path().join("issuer.log")).unwrap();
        let child =
            issuer_process::issuer_run(dir.path(), &agent_api.to_string(), &http.to_string())
                .env("SIGIL_DATABASE_URL", database_url)
                .env("SIGIL_LOG_KEY_FILE", log_key)
                .env("SIGIL_LOG_LEVEL", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
        issuer_process::wait_healthy(&admin);
        let id = std::fs::read_to_string(dir.path().join("data/replica_id"))
            .unwrap()
            .trim()
            .to_owned();
        Replica {
            child,
            dir,
            agent_api,
            http,
            admin,
            id,
        }
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("issuer.log")).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The trust bundle `replica` serves, as SPIFFE bundle JSON.
fn bundle_of(replica: &Replica) -> String {
    cli(&[
        "bundle",
        "show",
        "--format",
        "spiffe",
        "--socket-path",
        replica.admin.to_str().unwrap(),
    ])
}

fn cli(args: &[&str]) -> String {
    let (ok, stdout, stderr) = run(Command::new(binary("sigil-issuer")).args(args));
    assert!(ok, "sigil-issuer {args:?}: {stderr}");
    stdout
}

/// An agent in this process, given every replica's address.
struct TestAgent {
    running: RunningAgent,
    _dir: tempfile::TempDir,
}

impl TestAgent {
    async fn start(replicas: &[Replica], bundle: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token = join_token_at(&replicas[0].admin, 0).await;
        let addresses: Vec<String> = replicas.iter().map(|r| r.agent_api.to_string()).collect();
        let config = sigil_agent::config::AgentConfig::from_file(sigil_agent::config::FileConfig {
            trust_domain: Some("example.org".into()),
            issuer_address: Some(addresses.join(",")),
            data_dir: Some(dir.path().join("agent")),
            socket_path: Some(dir.path().join("api.sock")),
            join_token: Some(token),
            trust_bundle_path: Some(bundle.to_owned()),
            ..Default::default()
        })
        .unwrap();
        let running = sigil_agent::agent::start(config).await.unwrap();
        TestAgent { running, _dir: dir }
    }

    fn id(&self) -> String {
        self.running.node.svid().spiffe_id.to_string()
    }

    /// The replica this agent's connection is open to, if one is.
    fn connected_to(&self) -> Option<SocketAddr> {
        match self.running.node.issuer.link() {
            Link::Up { address, .. } => Some(address),
            _ => None,
        }
    }

    /// Waits until this agent holds an X509-SVID for `entry_id`.
    async fn wait_for_svid(&self, entry_id: &str, within: Duration) -> Duration {
        let start = Instant::now();
        let mut snapshots = self.running.snapshots.clone();
        tokio::time::timeout(
            within,
            snapshots.wait_for(|s| {
                s.identities
                    .iter()
                    .any(|i| i.entry_id == entry_id && i.x509.is_some())
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("entry {entry_id} never reached its agent"))
        .unwrap();
        start.elapsed()
    }
}

/// The replica whose id holds the event log's sequencer lease now.
fn sequencer(pg: &Postgres, database: &str) -> String {
    let holder = pg.psql_in(
        &pg.database_url(database),
        "SELECT holder FROM leases WHERE name = 'log-sequencer'",
    );
    holder.split('/').next().unwrap_or_default().to_owned()
}

/// A PostgreSQL server with the database `name`, and a new event log key
/// for its replicas: the server, the directory holding the key, the key's
/// file and its verifier key, and the database's URL.
fn shared_database(name: &str) -> (Postgres, tempfile::TempDir, PathBuf, String, String) {
    let pg = Postgres::start();
    pg.create_database(name);
    let keys = tempfile::tempdir().unwrap();
    let log_key = keys.path().join("log.jwk");
    let pinned = cli(&[
        "audit",
        "new-key",
        "--trust-domain",
        "example.org",
        "--out",
        log_key.to_str().unwrap(),
    ]);
    let url = pg.database_url(name);
    (pg, keys, log_key, pinned.trim().to_owned(), url)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_loses_nothing_and_its_agents_and_sequencer_move() {
    let database = "failover";
    let (pg, keys, log_key, pinned, url) = shared_database(database);
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&url, &log_key)).collect();

    // One bundle: every replica's CA, from any of them.
    let bundle_path = keys.path().join("bundle.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bundle = bundle_of(&replicas[2]);
        let set: serde_json::Value = serde_json::from_str(&bundle).unwrap();
        let roots = set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["use"] == "x509-svid")
            .count();
        if roots == 3 {
            std::fs::write(&bundle_path, bundle).unwrap();
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bundle holds {roots} roots, not 3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut agents = Vec::new();
    for _ in 0..6 {
        agents.push(TestAgent::start(&replicas, &bundle_path).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while agents.iter().any(|a| a.connected_to().is_none()) {
        assert!(Instant::now() < deadline, "not every agent connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Created through one replica, served to an agent connected to another.
    let first = &agents[0];
    let home = first.connected_to().unwrap();
    let other = replicas.iter().find(|r| r.agent_api != home).unwrap();
    let before = register_at(
        &other.admin,
        &first.id(),
        "spiffe://example.org/before",
        3600,
        "",
    )
    .await;
    let took = first
        .wait_for_svid(&before.id, Duration::from_secs(5))
        .await;
    println!("an entry created through one replica reached an agent on another in {took:?}");

    // The replica holding the sequencer goes, right after it acknowledged
    // an entry (and queued its event).
    let deadline = Instant::now() + Duration::from_secs(10);
    let holder = loop {
        let id = sequencer(&pg, database);
        if let Some(index) = replicas.iter().position(|r| r.id == id) {
            break index;
        }
        assert!(Instant::now() < deadline, "no replica holds the sequencer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let doomed_address = replicas[holder].agent_api;
    let its_agents: Vec<usize> = (0..agents.len())
        .filter(|&i| agents[i].connected_to() == Some(doomed_address))
        .collect();
    let last_words = register_at(
        &replicas[holder].admin,
        &agents[its_agents.first().copied().unwrap_or(0)].id(),
        "spiffe://example.org/last-words",
        3600,
        "",
    )
    .await;
    let mut replicas = replicas;
    let mut doomed = replicas.remove(holder);
    let killed_at = Instant::now();
    doomed.kill9();

    // Its agents move within 5 s; the sequencer within 10 s.
    let mut moved = Duration::ZERO;
    while agents.iter().any(|a| {
        a.connected_to()
            .is_none_or(|address| address == doomed_address)
    }) {
        moved = killed_at.elapsed();
        assert!(
            moved < Duration::from_secs(5),
            "agents still away from a live replica 5 s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{} of 6 agents were on the killed replica; all were on live ones {moved:?} after the kill",
        its_agents.len()
    );
    loop {
        let id = sequencer(&pg, database);
        if id != doomed.id && replicas.iter().any(|r| r.id == id) {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "the sequencer did not move within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the sequencer moved {:?} after the kill",
        killed_at.elapsed()
    );

    // Nothing lost: every entry is served, the new one included.
    let after = register_at(
        &replicas[0].admin,
        &first.id(),
        "spiffe://example.org/after",
        3600,
        "",
    )
    .await;
    for (agent, entry) in [(first, &before), (first, &after)] {
        agent
            .wait_for_svid(&entry.id, Duration::from_secs(10))
            .await;
    }
    let owner_of_last_words = &agents[its_agents.first().copied().unwrap_or(0)];
    owner_of_last_words
        .wait_for_svid(&last_words.id, Duration::from_secs(10))
        .await;

    // Every acknowledged creation is in the log, which verifies offline
    // against the key pinned when it was made.
    let url = format!("http://{}", replicas[1].http);
    let deadline = Instant::now() + Duration::from_secs(15);
    let export = loop {
        let export = cli(&["audit", "export", "--url", &url]);
        let logged = |id: &str| export.contains(&format!("\"subject\":\"{id}\""));
        if ["before", "last-words", "after"]
            .iter()
            .all(|name| logged(&format!("spiffe://example.org/{name}")))
        {
            break export;
        }
        assert!(
            Instant::now() < deadline,
            "not every acknowledged entry reached the log; the killed replica said:\n{}",
            doomed.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let file = keys.path().join("export.jsonl");
    std::fs::write(&file, export).unwrap();
    let report = cli(&[
        "audit",
        "verify",
        file.to_str().unwrap(),
        "--log-key",
        &pinned,
    ]);
    assert!(report.contains("pinned"), "{report}");
}

/// The SPIFFE IDs the agent's Workload API serves this process now.
async fn served(agent: &TestAgent) -> Result<Vec<String>, String> {
    use workload_api::client::{connect, EndpointAddress};
    let mut client = connect(&EndpointAddress::Unix(agent.running.socket_path.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = client
        .fetch_x509svid(proto::workload::X509svidRequest {})
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let message = stream
        .message()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the stream ended")?;
    Ok(message.svids.into_iter().map(|s| s.spiffe_id).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_under_load_heals_by_itself_while_workloads_are_served() {
    let (pg, keys, log_key, _, url) = shared_database("restart");
    let replicas: Vec<Replica> = (0..2).map(|_| Replica::start(&url, &log_key)).collect();
    let bundle_path = keys.path().join("bundle.json");
    std::fs::write(&bundle_path, bundle_of(&replicas[0])).unwrap();
    // Each replica's bundle holds both CAs once it read the other's keys.
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(&bundle_path, bundle_of(&replicas[1])).unwrap();
    let mut agents = Vec::new();
    for i in 0..4 {
        let agent = TestAgent::start(&replicas, &bundle_path).await;
        let name = format!("spiffe://example.org/workload/{i}");
        let entry = register_at(&replicas[i % 2].admin, &agent.id(), &name, 3600, "").await;
        agent
            .wait_for_svid(&entry.id, Duration::from_secs(10))
            .await;
        agents.push(agent);
    }
    let agents = std::sync::Arc::new(agents);

    // Load: workloads fetch their SVIDs, and entries are created through
    // both replicas, while the database restarts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fetching = {
        let (agents, stop) = (agents.clone(), stop.clone());
        tokio::spawn(async move {
            let mut fetches = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for (i, agent) in agents.iter().enumerate() {
                    let ids = served(agent).await.unwrap_or_else(|e| {
                        panic!("workload {i} went unserved during the restart: {e}")
                    });
                    assert!(ids.contains(&format!("spiffe://example.org/workload/{i}")));
                    fetches += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            fetches
        })
    };
    let creating = {
        let stop = stop.clone();
        let sockets: Vec<PathBuf> = replicas.iter().map(|r| r.admin.clone()).collect();
        let parent = agents[0].id();
        tokio::spawn(async move {
            let (mut created, mut refused) = (0u64, 0u64);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let socket = &sockets[n % sockets.len()];
                let result = async {
                    let mut admin = sigil_issuer::admin_client::connect(socket)
                        .await
                        .map_err(|e| e.to_string())?;
                    admin
                        .create_entry(proto::admin::CreateEntryRequest {
                            entry: Some(proto::admin::EntryFields {
                                spiffe_id: format!("spiffe://example.org/load/{n}"),
                                parent_id: parent.clone(),
                                selectors: vec![proto::issuer::Selector {
                                    r#type: "unix".into(),
                                    value: "uid:4242".into(),
                                }],
                                ..Default::default()
                            }),
                        })
                        .await
                        .map_err(|e| e.to_string())
                }
                .await;
                match result {
                    Ok(_) => created += 1,
                    Err(_) => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (created, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted_at = Instant::now();
    let server = std::sync::Arc::new(pg);
    {
        let server = server.clone();
        tokio::task::spawn_blocking(move || server.restart())
            .await
            .unwrap();
    }
    println!("PostgreSQL restarted in {:?}", restarted_at.elapsed());

    // Both replicas take writes again, and a change through one reaches an
    // agent through the other's stream, with no one restarting anything.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut healed = None;
    for (i, replica) in replicas.iter().enumerate() {
        loop {
            let mut admin = sigil_issuer::admin_client::connect(&replica.admin)
                .await
                .unwrap();
            let tried = admin
                .create_entry(proto::admin::CreateEntryRequest {
                    entry: Some(proto::admin::EntryFields {
                        spiffe_id: format!("spiffe://example.org/healed/{i}"),
                        parent_id: agents[(i + 1) % agents.len()].id(),
                        selectors: vec![proto::issuer::Selector {
                            r#type: "unix".into(),
                            value: format!("uid:{}", sigil_tests::current_uid()),
                        }],
                        ..Default::default()
                    }),
                })
                .await;
            match tried {
                Ok(entry) => {
                    healed.get_or_insert(restarted_at.elapsed());
                    let entry = entry.into_inner();
                    agents[(i + 1) % agents.len()]
                        .wait_for_svid(&entry.id, Duration::from_secs(10))
                        .await;
                    break;
                }
                Err(status) => {
                    assert!(
                        Instant::now() < deadline,
                        "replica {i} still refuses writes 20 s after the restart: {status}\n{}",
                        replica.log()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    println!(
        "writes succeeded again {:?} after the restart began",
        healed.unwrap()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let fetches = fetching.await.expect("workloads were served throughout");
    let (created, refused) = creating.await.unwrap();
    println!(
        "{fetches} workload fetches, all served; {created} entries created and {refused} refused under load"
    );
    assert!(created > 0);
}
