//! Workload API benchmarks, with the agent in a process of its own:
//!
//! - FetchX509SVID and FetchJWTSVID served from the agent's cache: latency
//!   p50/p99 at a fixed offered load of 1,000 requests/s spread evenly over 100
//!   clients (open loop: requests go out on schedule), and
//!   throughput with 100 clients calling back to back. Beside them, the same
//!   figures for a minimal tonic server on a unix socket answering from a
//!   prebuilt response: the floor on this machine.
//! - Propagation: `entry create` to the new SVID on an open stream, p50/p99
//!   over 50 entries.
//! - Agent resident memory with 1,000 entries and 1,000 open streams, each
//!   on a connection of its own, read before the entries, with them, with the
//!   connections and with the streams, so the cost of each shows apart.
//!
//! The server under test (agent or floor) is pinned to core 0 and the load
//! generator (with the issuer, idle during load) to core 1, so each side has a
//! core of its own and the ratio compares server capacity.
//!
//! Run: cargo bench -p sigil-tests --bench workload_api
//! SIGIL_BENCH_SECS sets the length of each load phase (default 5);
//! SIGIL_BENCH_ONLY=memory or =audiences runs that phase alone, on a fresh agent.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::workload as pb;
use proto::workload::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use sigil_tests::*;
use tonic::{Request, Response, Status};
use workload_api::client::{connect, EndpointAddress, WorkloadClient};

const CLIENTS: usize = 100;
const SERVER_CORE: usize = 0;
const CLIENT_CORE: usize = 1;

/// Pins the calling thread (and the threads it starts later) to `core`.
/// Child processes inherit the parent's mask, so the core is named directly
/// rather than looked up among the cores this thread may use now.
fn pin(core: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("warning: core {core} not available; running unpinned");
    }
}
const OFFERED_RPS: u64 = 1_000;
const AUDIENCE: &str = "spiffe://example.org/db";

fn secs() -> u64 {
    std::env::var("SIGIL_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

// ---------------------------------------------------------------------------
// Child processes: the agent, and the floor server.

fn child_main(role: &str) {
    pin(SERVER_CORE);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = PathBuf::from(std::env::var("SIGIL_BENCH_SOCKET").unwrap());
        match role {
            "agent" => {
                let config =
                    sigil_agent::config::AgentConfig::from_file(sigil_agent::config::FileConfig {
                        trust_domain: Some(TRUST_DOMAIN.into()),
                        issuer_address: Some(std::env::var("SIGIL_BENCH_ISSUER").unwrap()),
                        data_dir: Some(std::env::var("SIGIL_BENCH_DATA").unwrap().into()),
                        socket_path: Some(socket),
                        join_token: Some(std::env::var("SIGIL_BENCH_TOKEN").unwrap()),
                        trust_bundle_path: Some(
                            std::env::var("SIGIL_BENCH_BUNDLE").unwrap().into(),
                        ),
                        ..Default::default()
                    })
                    .unwrap();
                let agent = sigil_agent::agent::start(config).await.unwrap();
                println!("READY {}", agent.node.svid().spiffe_id);
                let mut status = agent.status.clone();
                loop {
                    println!("SVIDS {}", status.borrow_and_update().svids);
                    if status.changed().await.is_err() {
                        return;
                    }
                }
            }
            _ => {
                let _ = std::fs::remove_file(&socket);
                let listener = tokio::net::UnixListener::bind(&socket).unwrap();
                println!("READY floor");
                workload_api::connection::server_builder()
                    .add_service(SpiffeWorkloadApiServer::new(Floor::new()))
                    .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                    .await
                    .unwrap();
            }
        }
    });
}

/// The floor: a Workload API that answers from prebuilt responses.
struct Floor {
    x509: pb::X509svidResponse,
    jwt: pb::JwtsvidResponse,
}

impl Floor {
    fn new() -> Self {
        let svid = pb::X509svid {
            spiffe_id: "spiffe://example.org/bench".into(),
            x509_svid: vec![0x30; 600],
            x509_svid_key: vec![0x30; 138],
            bundle: vec![0x30; 520],
            hint: String::new(),
        };
        Floor {
            x509: pb::X509svidResponse {
                svids: vec![svid],
                crl: vec![],
                federated_bundles: Default::default(),
            },
            jwt: pb::JwtsvidResponse {
                svids: vec![pb::Jwtsvid {
                    spiffe_id: "spiffe://example.org/bench".into(),
                    svid: "e".repeat(330),
                    hint: String::new(),
                }],
            },
        }
    }
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for Floor {
    type FetchX509SVIDStream = Stream<pb::X509svidResponse>;
    async fn fetch_x509svid(
        &self,
        _: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        use tokio_stream::StreamExt;
        let first = tokio_stream::once(Ok(self.x509.clone()));
        Ok(Response::new(Box::pin(
            first.chain(tokio_stream::pending()),
        )))
    }
    type FetchX509BundlesStream = Stream<pb::X509BundlesResponse>;
    async fn fetch_x509_bundles(
        &self,
        _: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn fetch_jwtsvid(
        &self,
        _: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        Ok(Response::new(self.jwt.clone()))
    }
    type FetchJWTBundlesStream = Stream<pb::JwtBundlesResponse>;
    async fn fetch_jwt_bundles(
        &self,
        _: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn validate_jwtsvid(
        &self,
        _: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }
    type FetchWITSVIDStream = Stream<pb::WitsvidResponse>;
    async fn fetch_witsvid(
        &self,
        _: Request<pb::WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented("floor"))
    }
    type FetchWITBundlesStream = Stream<pb::WitBundlesResponse>;
    async fn fetch_wit_bundles(
        &self,
        _: Request<pb::WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("floor"))
    }
}

// ---------------------------------------------------------------------------
// The parent: issuer, load generation, reporting.

struct ChildProcess {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ChildProcess {
    fn spawn(role: &str, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env("SIGIL_BENCH_ROLE", role)
            .stdout(Stdio::piped())
            .stdin(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        ChildProcess { child, lines }
    }

    fn wait_for(&self, prefix: &str, accept: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                if let Some(rest) = line.strip_prefix(prefix) {
                    if accept(rest) {
                        return rest.to_owned();
                    }
                }
            }
        }
        panic!("child never printed {prefix}");
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.stdin.take().map(|mut s| s.flush());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    X509,
    Jwt,
}

async fn call(client: &mut WorkloadClient, rpc: Rpc) {
    match rpc {
        Rpc::X509 => {
            let mut stream = client
                .fetch_x509svid(pb::X509svidRequest {})
                .await
                .unwrap()
                .into_inner();
            let first = stream.message().await.unwrap().unwrap();
            assert!(!first.svids.is_empty());
        }
        Rpc::Jwt => {
            let response = client
                .fetch_jwtsvid(pb::JwtsvidRequest {
                    audience: vec![AUDIENCE.into()],
                    spiffe_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(!response.svids.is_empty());
        }
    }
}

async fn clients(socket: &Path, n: usize) -> Vec<WorkloadClient> {
    let address = EndpointAddress::Unix(socket.to_path_buf());
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(connect(&address).await.unwrap());
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Open loop: each client calls every CLIENTS/OFFERED_RPS seconds, staggered,
/// whatever the previous answer took. Latency runs from the moment the request
/// is sent (the generator's timer wakes up to a millisecond late, which is the
/// generator's delay, not the server's).
async fn open_loop(socket: &Path, rpc: Rpc, duration: Duration) -> (Duration, Duration, usize) {
    let period = Duration::from_micros(1_000_000 * CLIENTS as u64 / OFFERED_RPS);
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for (i, mut client) in clients(socket, CLIENTS).await.into_iter().enumerate() {
        call(&mut client, rpc).await; // warm the connection
        let offset = period * i as u32 / CLIENTS as u32;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut next = start + offset;
            while next < start + duration {
                tokio::time::sleep_until(next).await;
                let sent = tokio::time::Instant::now();
                call(&mut client, rpc).await;
                latencies.push(sent.elapsed());
                next += period;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    (percentile(&all, 0.50), percentile(&all, 0.99), all.len())
}

/// Closed loop: every client calls back to back.
async fn throughput(socket: &Path, rpc: Rpc, duration: Duration) -> f64 {
    let mut tasks = Vec::new();
    let started = Instant::now();
    for mut client in clients(socket, CLIENTS).await {
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < duration {
                call(&mut client, rpc).await;
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    if let Ok(role) = std::env::var("SIGIL_BENCH_ROLE") {
        return child_main(&role);
    }
    pin(CLIENT_CORE);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(parent());
}

async fn parent() {
    let duration = Duration::from_secs(secs());
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.json");
    std::fs::write(&bundle, issuer.bundle().to_jwks_json()).unwrap();
    let agent_socket = dir.path().join("agent.sock");
    let agent = ChildProcess::spawn(
        "agent",
        &[
            ("SIGIL_BENCH_SOCKET", agent_socket.display().to_string()),
            (
                "SIGIL_BENCH_ISSUER",
                issuer.running.agent_api_address.to_string(),
            ),
            (
                "SIGIL_BENCH_DATA",
                dir.path().join("agent").display().to_string(),
            ),
            ("SIGIL_BENCH_TOKEN", issuer.join_token(0).await),
            ("SIGIL_BENCH_BUNDLE", bundle.display().to_string()),
        ],
    );
    let agent_id = agent.wait_for("READY ", |_| true);
    let admin = &issuer.running.admin_socket_path;
    register_at(admin, &agent_id, "spiffe://example.org/bench", 3600, "").await;
    agent.wait_for("SVIDS ", |n| n == "1");
    let floor_socket = dir.path().join("floor.sock");
    let floor = ChildProcess::spawn(
        "floor",
        &[("SIGIL_BENCH_SOCKET", floor_socket.display().to_string())],
    );
    floor.wait_for("READY", |_| true);

    if only(None) {
        load(&agent_socket, &floor_socket, duration).await;
    }
    drop(floor);
    if only(None) {
        propagation(&agent_socket, admin, &agent_id).await;
    }
    if only(Some("memory")) {
        memory(&agent, &agent_socket, admin, &agent_id).await;
    }
    if only(Some("audiences")) {
        jwt_audiences(&agent, &agent_socket).await;
    }
    drop(agent);
    issuer.running.shutdown().await;
}

/// Whether to run a phase: every phase without `SIGIL_BENCH_ONLY`; with
/// `SIGIL_BENCH_ONLY=memory` or `=audiences` only that phase (on an agent
/// that ran nothing before, so no freed heap hides what it costs).
fn only(phase: Option<&str>) -> bool {
    match std::env::var("SIGIL_BENCH_ONLY") {
        Err(_) => true,
        Ok(chosen) => phase == Some(chosen.as_str()),
    }
}

/// Load rounds; each figure reported is the median over the rounds.
const ROUNDS: usize = 3;

/// The median of `values` (sorted in place).
fn median<T: PartialOrd + Copy>(values: &mut [T]) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    values[values.len() / 2]
}

/// Latency and throughput of the agent and the floor. Each round measures
/// both servers back to back for each RPC, so a change in the machine's
/// load touches the pair alike; the medians over the rounds are compared.
async fn load(agent_socket: &Path, floor_socket: &Path, duration: Duration) {
    println!(
        "workload_api: {CLIENTS} clients, {OFFERED_RPS} req/s offered (open loop), {} s per phase, median of {ROUNDS} rounds",
        duration.as_secs()
    );
    println!(
        "  {:<26} {:>5} {:>10} {:>10} {:>12} {:>14}",
        "", "round", "p50", "p99", "samples", "throughput/s"
    );
    for (name, rpc) in [("FetchX509SVID", Rpc::X509), ("FetchJWTSVID", Rpc::Jwt)] {
        // [agent, floor] p99s (ms) and rates per round.
        let mut p99s = [Vec::new(), Vec::new()];
        let mut rates = [Vec::new(), Vec::new()];
        for round in 1..=ROUNDS {
            for (k, (server, socket)) in [("agent", agent_socket), ("floor", floor_socket)]
                .into_iter()
                .enumerate()
            {
                let (p50, p99, n) = open_loop(socket, rpc, duration).await;
                let rate = throughput(socket, rpc, duration).await;
                println!(
                    "  {:<26} {:>5} {:>8.3}ms {:>8.3}ms {:>12} {:>14.0}",
                    format!("{name} ({server})"),
                    round,
                    p50.as_secs_f64() * 1e3,
                    p99.as_secs_f64() * 1e3,
                    n,
                    rate
                );
                p99s[k].push(p99.as_secs_f64() * 1e3);
                rates[k].push(rate);
            }
        }
        let [agent_p99, floor_p99] = p99s.map(|mut v| median(&mut v));
        let [agent_rate, floor_rate] = rates.map(|mut v| median(&mut v));
        println!(
            "  {name}: p99 {agent_p99:.3} ms = {:.2}x the floor's {floor_p99:.3} ms (target <= 1.5x); \
             throughput {agent_rate:.0}/s = {:.0}% of the floor's {floor_rate:.0}/s (target >= 80%)",
            agent_p99 / floor_p99,
            100.0 * agent_rate / floor_rate
        );
    }
}

/// Entry create -> new SVID on an open stream, over 50 entries, which are
/// deleted afterwards.
async fn propagation(agent_socket: &Path, admin: &Path, agent_id: &str) {
    let mut stream_client = clients(agent_socket, 1).await.remove(0);
    let mut stream = stream_client
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let mut propagation = Vec::new();
    for i in 0..50 {
        let id = format!("spiffe://example.org/propagation/{i}");
        let started = Instant::now();
        register_at(admin, agent_id, &id, 3600, "").await;
        loop {
            let update = stream.message().await.unwrap().unwrap();
            if update.svids.iter().any(|s| s.spiffe_id == id) {
                break;
            }
        }
        propagation.push(started.elapsed());
    }
    propagation.sort();
    println!(
        "  propagation entry create -> SVID on stream: p50 {:.1} ms, p99 {:.1} ms over 50 entries (target p99 < 1 s)",
        percentile(&propagation, 0.5).as_secs_f64() * 1e3,
        percentile(&propagation, 0.99).as_secs_f64() * 1e3
    );
    drop(stream);
    let mut admin_client = sigil_issuer::admin_client::connect(admin).await.unwrap();
    let entries = admin_client
        .list_entries(proto::admin::ListEntriesRequest {
            spiffe_id: String::new(),
            parent_id: agent_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    for entry in entries
        .iter()
        .filter(|e| e.spiffe_id.contains("/propagation/"))
    {
        admin_client
            .delete_entry(proto::admin::EntryId {
                id: entry.id.clone(),
            })
            .await
            .unwrap();
    }
}

/// Memory: 1,000 entries (all minted, X.509 and WIT, held and rotated by the
/// agent), one of them this process's, and 1,000 open streams, each on a
/// connection of its own as a workload has. The agent's RSS is read at each
/// step, so the cost of an entry, a connection and a stream shows apart.
/// After the load phases the heap they freed is reused first, so the steps
/// show less than with `SIGIL_BENCH_ONLY=memory`.
async fn memory(agent: &ChildProcess, agent_socket: &Path, admin: &Path, agent_id: &str) {
    const TOTAL: usize = 1_000;
    let settle = || tokio::time::sleep(Duration::from_secs(1));
    let mut admin_client = sigil_issuer::admin_client::connect(admin).await.unwrap();
    let before = agent.rss_kib();
    for i in 0..(TOTAL - 1) {
        let entry = proto::admin::EntryFields {
            spiffe_id: format!("spiffe://example.org/other/{i}"),
            parent_id: agent_id.to_owned(),
            selectors: vec![proto::issuer::Selector {
                r#type: "unix".into(),
                value: format!("uid:{}", 100_000 + i),
            }],
            ..Default::default()
        };
        admin_client
            .create_entry(proto::admin::CreateEntryRequest { entry: Some(entry) })
            .await
            .unwrap();
    }
    agent.wait_for("SVIDS ", |n| n.parse::<usize>().unwrap_or(0) >= TOTAL);
    settle().await;
    let with_entries = agent.rss_kib();
    let connected = clients(agent_socket, TOTAL).await;
    settle().await;
    let with_connections = agent.rss_kib();
    let mut streams = Vec::new();
    for mut client in connected {
        let mut stream = client
            .fetch_x509svid(pb::X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        streams.push((client, stream));
    }
    settle().await;
    let after = agent.rss_kib();
    drop(streams);
    settle().await;
    let closed = agent.rss_kib();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let each = |from: u64, to: u64, n: usize| (to as f64 - from as f64) / n as f64;
    println!(
        "  agent RSS: {:.1} MiB with 1,000 entries and 1,000 open streams ({:.1} MiB before; target <= 32 MiB)",
        mib(after),
        mib(before)
    );
    println!(
        "  agent RSS per entry {:.1} KiB, per connection {:.1} KiB, per stream {:.1} KiB \
         ({:.1} MiB with entries, {:.1} with connections, {:.1} after closing them)",
        each(before, with_entries, TOTAL - 1),
        each(with_entries, with_connections, TOTAL),
        each(with_connections, after, TOTAL),
        mib(with_entries),
        mib(with_connections),
        mib(closed)
    );
}

/// The agent's RSS before and after JWT-SVIDs for 2,000 distinct audiences
/// of the largest size it accepts: its JWT-SVID cache is bounded in bytes,
/// so workloads choosing audiences cannot grow it past its budget.
async fn jwt_audiences(agent: &ChildProcess, agent_socket: &Path) {
    const AUDIENCES: usize = 2_000;
    const IN_FLIGHT: usize = 8;
    let width = workload_api::server::MAX_AUDIENCE_BYTES;
    let before = agent.rss_kib();
    let clients = clients(agent_socket, IN_FLIGHT).await;
    let mut tasks = Vec::new();
    for (k, mut client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in (k..AUDIENCES).step_by(IN_FLIGHT) {
                client
                    .fetch_jwtsvid(pb::JwtsvidRequest {
                        audience: vec![format!("{i:0>width$}")],
                        spiffe_id: String::new(),
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = agent.rss_kib();
    println!(
        "  agent RSS: {:.1} MiB before and {:.1} MiB after JWT-SVIDs for {AUDIENCES} distinct \
         {width}-byte audiences (JWT-SVID cache budget {} MiB)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        sigil_agent::svid::jwt::CACHE_BUDGET_BYTES / (1024 * 1024)
    );
}
