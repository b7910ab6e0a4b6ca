//! X.509-SVIDs signed per second through the agent API, with the issuer pinned
//! to one core, for an unbound entry and an owner-bound one in the same run,
//! beside the rate at which ring alone does the same cryptographic work per
//! SVID (one ECDSA P-256 CSR signature check and one certificate signature) on
//! that core.
//!
//! An owner-bound SVID costs more than an unbound one in two places: its leaf
//! carries the owner extension, and the issuer records its serial before it
//! leaves (one SQLite transaction per batch, committed with
//! `synchronous = FULL`, so one WAL fsync per batch). Both are measured here:
//! the rows go to the issuer's real store in a temporary data directory.
//! Every SVID, bound or not, also has its issuance event made durable in
//! the event log before it leaves, and the log's sequencer (sealing each
//! leaf with an Ed25519 signature, hashing the tree, signing checkpoints)
//! runs on the same pinned core: the figures include the log's whole cost.
//!
//! Run: cargo bench -p sigil-tests --bench svid_signing
//! Tunables: SIGIL_BENCH_SECS (default 5, per phase), SIGIL_BENCH_BATCH (100),
//! SIGIL_BENCH_IN_FLIGHT (4), SIGIL_BENCH_ROUNDS (3).

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::admin as adm;
use proto::issuer as pb;
use proto::issuer::agent_api_client::AgentApiClient;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
    ECDSA_P256_SHA256_ASN1_SIGNING,
};
use sigil_tests::{new_key_and_csr, TestIssuer};
use tonic::transport::Channel;
use workload_api::consent::ConsentClaims;
use workload_api::jwk::Algorithm;

const ISSUER_CORE: usize = 0;
const CLIENT_CORE: usize = 1;

const UNBOUND_ID: &str = "spiffe://example.org/bench";
const BOUND_ID: &str = "spiffe://example.org/bench-bound";
const OWNER_ID: &str = "mailto:bench-owner@example.org";
/// The selectors `create_entry_at` gives an entry; the consent must name them.
const SELECTORS: &[&str] = &["unix:uid:1000"];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The machine's cores, read once before any thread narrows its affinity.
fn cores() -> &'static [core_affinity::CoreId] {
    static CORES: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();
    CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default())
}

fn pin(core: usize) {
    match cores().iter().find(|c| c.id == core) {
        Some(id) => assert!(
            core_affinity::set_for_current(*id),
            "pinning to core {core} failed"
        ),
        None => eprintln!("warning: core {core} not available; running unpinned"),
    }
}

/// ring doing one CSR signature check and one certificate signature per SVID,
/// on messages of the sizes Sigil handles.
fn ring_rate(duration: Duration) -> f64 {
    let rng = SystemRandom::new();
    let ca_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let ca =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, ca_pkcs8.as_ref(), &rng).unwrap();
    let workload_pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let workload = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        workload_pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let csr_info = vec![0x5a_u8; 180];
    let csr_signature = workload.sign(&rng, &csr_info).unwrap();
    let workload_public = workload.public_key().as_ref().to_vec();
    let tbs_certificate = vec![0xa5_u8; 420];
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < duration {
        for _ in 0..64 {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &workload_public)
                .verify(&csr_info, csr_signature.as_ref())
                .unwrap();
            std::hint::black_box(ca.sign(&rng, &tbs_certificate).unwrap());
            done += 1;
        }
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// What one timed phase did.
#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    svids: u64,
    batches: u64,
    /// Summed round-trip time of the batches (overlapping, `in_flight` deep).
    batch_time: Duration,
    elapsed: Duration,
    /// Busy and total jiffies of the issuer's core over the phase.
    issuer_core: (u64, u64),
}

impl Phase {
    fn rate(&self) -> f64 {
        self.svids as f64 / self.elapsed.as_secs_f64()
    }

    /// Mean round trip of one batch, in milliseconds.
    fn batch_ms(&self) -> f64 {
        1e3 * self.batch_time.as_secs_f64() / self.batches.max(1) as f64
    }

    /// The share of the phase the issuer's core was busy, in percent.
    fn busy_percent(&self) -> f64 {
        100.0 * self.issuer_core.0 as f64 / self.issuer_core.1.max(1) as f64
    }

    /// CPU time of the issuer's core per SVID, in microseconds: the work,
    /// apart from any waiting.
    fn cpu_us_per_svid(&self) -> f64 {
        1e6 * self.elapsed.as_secs_f64() * self.busy_percent() / 100.0 / self.svids.max(1) as f64
    }
}

/// Busy and total jiffies of `core` since boot, from /proc/stat (zero where
/// that cannot be read). Idle and iowait count as not busy.
fn core_jiffies(core: usize) -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let label = format!("cpu{core}");
    let Some(line) = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
    else {
        return (0, 0);
    };
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Sends `request` from `in_flight` concurrent callers for `duration`.
async fn run_phase(
    client: &AgentApiClient<Channel>,
    request: &Arc<pb::BatchSignX509SvidsRequest>,
    in_flight: usize,
    duration: Duration,
) -> Phase {
    let core_before = core_jiffies(ISSUER_CORE);
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let mut client = client.clone();
            let request = request.clone();
            tokio::spawn(async move {
                let mut phase = Phase::default();
                while started.elapsed() < duration {
                    let sent = Instant::now();
                    let results = client
                        .batch_sign_x509_svids((*request).clone())
                        .await
                        .unwrap()
                        .into_inner()
                        .results;
                    phase.batch_time += sent.elapsed();
                    phase.batches += 1;
                    assert!(
                        results.iter().all(|r| r.code == 0),
                        "a signing failed: {:?}",
                        results.iter().find(|r| r.code != 0)
                    );
                    phase.svids += results.len() as u64;
                }
                phase
            })
        })
        .collect();
    let mut total = Phase::default();
    for task in tasks {
        let phase = task.await.unwrap();
        total.svids += phase.svids;
        total.batches += phase.batches;
        total.batch_time += phase.batch_time;
    }
    total.elapsed = started.elapsed();
    let core_after = core_jiffies(ISSUER_CORE);
    total.issuer_core = (core_after.0 - core_before.0, core_after.1 - core_before.1);
    total
}

/// Signs one batch and checks that every leaf carries an owner binding
/// exactly when `bound`, and for `owner` when it does.
async fn check_binding(
    client: &AgentApiClient<Channel>,
    request: &pb::BatchSignX509SvidsRequest,
    bound: bool,
) {
    let results = client
        .clone()
        .batch_sign_x509_svids(request.clone())
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), request.params.len());
    for result in &results {
        assert_eq!(result.code, 0, "signing failed: {}", result.message);
        let chain = workload_api::bundle::split_der_concat(&result.cert_chain).unwrap();
        let leaf = workload_api::x509svid::check_leaf(&chain[0]).unwrap();
        match (&leaf.owner, bound) {
            (Some(owner), true) => assert_eq!(owner.owner_id, OWNER_ID),
            (None, false) => {}
            (owner, _) => panic!(
                "leaf for {} has owner binding {owner:?}; expected bound = {bound}",
                leaf.spiffe_id
            ),
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Registers an owner whose key is made here, and signs its consent for
/// exactly the bound entry (SPIFFE ID and selectors), valid for an hour.
async fn register_owner_and_consent(socket: &std::path::Path) -> String {
    let key = workload_api::keypair::KeyPair::generate(Algorithm::EdDSA).unwrap();
    sigil_issuer::admin_client::connect(socket)
        .await
        .unwrap()
        .register_owner(adm::RegisterOwnerRequest {
            id: OWNER_ID.into(),
            public_key: serde_json::to_string(&key.public_jwk()).unwrap(),
        })
        .await
        .unwrap();
    let mut jti = [0u8; 16];
    SystemRandom::new().fill(&mut jti).unwrap();
    let now = unix_now();
    let claims = ConsentClaims {
        iss: OWNER_ID.into(),
        spiffe_id: Some(BOUND_ID.into()),
        spiffe_id_prefix: None,
        selectors: ConsentClaims::canonical_selectors(SELECTORS.iter().copied()),
        iat: now,
        nbf: now,
        exp: now + 3600,
        jti: hex::encode(jti),
        delegation: None,
    };
    workload_api::consent::sign(&claims, &key).unwrap()
}

fn request_for(entry_id: &str, spiffe_id: &str, batch: usize) -> pb::BatchSignX509SvidsRequest {
    pb::BatchSignX509SvidsRequest {
        params: (0..batch)
            .map(|_| pb::X509SvidParams {
                entry_id: entry_id.to_owned(),
                csr: new_key_and_csr(Some(spiffe_id)).1,
            })
            .collect(),
    }
}

/// How far the bound entry's serial counters were reserved by the end:
/// the reservations are the store writes owner binding adds to issuance.
async fn reserved_counters(issuer: &TestIssuer, entry_id: &str) -> u64 {
    issuer
        .running
        .state
        .store
        .serial_reservation(entry_id)
        .await
        .unwrap()
        .unwrap_or(0)
}

struct Results {
    unbound: Vec<f64>,
    bound: Vec<f64>,
    unbound_batch_ms: Vec<f64>,
    bound_batch_ms: Vec<f64>,
    unbound_busy: Vec<f64>,
    bound_busy: Vec<f64>,
    unbound_cpu_us: Vec<f64>,
    bound_cpu_us: Vec<f64>,
    bound_svids: u64,
}

fn main() {
    let secs = env_or("SIGIL_BENCH_SECS", 5);
    let batch = env_or("SIGIL_BENCH_BATCH", 100) as usize;
    let in_flight = env_or("SIGIL_BENCH_IN_FLIGHT", 4) as usize;
    let rounds = env_or("SIGIL_BENCH_ROUNDS", 3).max(1) as usize;
    let duration = Duration::from_secs(secs);
    cores();

    // The issuer runs on a single-threaded runtime pinned to one core. Once
    // the client is done it sends the bound entry's id, and the issuer
    // thread reads how far its serial counters were reserved.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<String>();
    let issuer_thread = std::thread::spawn(move || {
        pin(ISSUER_CORE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let issuer = TestIssuer::start().await;
            ready_tx.send(issuer_handle(&issuer)).unwrap();
            let probe = match stop_rx.await {
                Ok(entry_id) => Some(reserved_counters(&issuer, &entry_id).await),
                Err(_) => None,
            };
            issuer.running.shutdown().await;
            probe
        })
    });
    let handle = ready_rx.recv().unwrap();

    pin(CLIENT_CORE);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime.block_on(async move {
        let issuer = handle.issuer();
        let agent = issuer.attest().await;
        let unbound_entry = issuer.create_entry(UNBOUND_ID, &agent.id, &[]).await;
        let consent = register_owner_and_consent(&issuer.admin_socket_path).await;
        let bound_entry = sigil_tests::create_at(
            &issuer.admin_socket_path,
            sigil_tests::owners::fields(BOUND_ID, &agent.id, SELECTORS, OWNER_ID, &consent),
        )
        .await;
        let unbound = Arc::new(request_for(&unbound_entry.id, UNBOUND_ID, batch));
        let bound = Arc::new(request_for(&bound_entry.id, BOUND_ID, batch));

        // A bench that measures the wrong thing is worse than none.
        check_binding(&agent.client, &unbound, false).await;
        check_binding(&agent.client, &bound, true).await;

        run_phase(&agent.client, &unbound, in_flight, Duration::from_secs(1)).await;
        let warm_up = run_phase(&agent.client, &bound, in_flight, Duration::from_secs(1)).await;

        // Alternating phases, so drift (heat, caches, the WAL growing with
        // every bound batch) reaches both kinds alike; the order flips each
        // round (U B, B U, U B, ...) so neither always follows the other.
        let mut results = Results {
            unbound: Vec::new(),
            bound: Vec::new(),
            unbound_batch_ms: Vec::new(),
            bound_batch_ms: Vec::new(),
            unbound_busy: Vec::new(),
            bound_busy: Vec::new(),
            unbound_cpu_us: Vec::new(),
            bound_cpu_us: Vec::new(),
            bound_svids: warm_up.svids + batch as u64,
        };
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for is_bound in order {
                let request = if is_bound { &bound } else { &unbound };
                let phase = run_phase(&agent.client, request, in_flight, duration).await;
                if is_bound {
                    results.bound.push(phase.rate());
                    results.bound_batch_ms.push(phase.batch_ms());
                    results.bound_busy.push(phase.busy_percent());
                    results.bound_cpu_us.push(phase.cpu_us_per_svid());
                    results.bound_svids += phase.svids;
                } else {
                    results.unbound.push(phase.rate());
                    results.unbound_batch_ms.push(phase.batch_ms());
                    results.unbound_busy.push(phase.busy_percent());
                    results.unbound_cpu_us.push(phase.cpu_us_per_svid());
                }
            }
        }
        handle.stop(stop_tx, bound_entry.id);
        results
    });
    // Dropping the client runtime closes its connections, which the issuer's
    // graceful shutdown waits for.
    drop(runtime);
    let probe = issuer_thread.join().unwrap();

    // The baseline runs on the core the issuer had.
    let baseline = std::thread::spawn(move || {
        pin(ISSUER_CORE);
        ring_rate(duration)
    })
    .join()
    .unwrap();

    let unbound = median(&results.unbound);
    let bound = median(&results.bound);
    let list = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "svid_signing: X.509-SVIDs through the agent API, issuer pinned to core {ISSUER_CORE}"
    );
    println!(
        "  setup         : batches of {batch}, {in_flight} in flight, {rounds} rounds of {secs} s per kind, mTLS gRPC on loopback"
    );
    println!(
        "  unbound       : {unbound:>9.0} SVIDs/s  (median of {rounds}: {})",
        list(&results.unbound)
    );
    println!(
        "  owner-bound   : {bound:>9.0} SVIDs/s  (median of {rounds}: {})",
        list(&results.bound)
    );
    println!(
        "  binding cost  : {:>8.1}%   (target <= 5%)",
        100.0 * (unbound - bound) / unbound
    );
    println!(
        "  per SVID      : {:>9.1} us unbound, {:.1} us owner-bound (+{:.1} us)",
        1e6 / unbound,
        1e6 / bound,
        1e6 / bound - 1e6 / unbound
    );
    println!(
        "  batch RTT     : {:>9.2} ms unbound, {:.2} ms owner-bound  (median, {in_flight} in flight)",
        median(&results.unbound_batch_ms),
        median(&results.bound_batch_ms)
    );
    println!(
        "  issuer core   : {:>8.1}% busy unbound, {:.1}% owner-bound; CPU per SVID {:.1} us unbound, {:.1} us owner-bound  (medians, /proc/stat)",
        median(&results.unbound_busy),
        median(&results.bound_busy),
        median(&results.unbound_cpu_us),
        median(&results.bound_cpu_us)
    );
    if let Some(reserved) = probe {
        println!(
            "  serials       : {reserved:>9} counters reserved for {} owner-bound SVIDs (blocks of {} doubling to {}: the only store writes the binding adds)",
            results.bound_svids,
            sigil_issuer::serials::FIRST_BLOCK,
            sigil_issuer::serials::LARGEST_BLOCK
        );
    }
    println!("  end to end    : {unbound:>9.0} SVIDs/s  (unbound median)");
    println!("  ring baseline : {baseline:>9.0} SVIDs/s  (1 ECDSA P-256 verify + 1 ECDSA P-256 sign per SVID)");
    println!(
        "  ratio         : {:>8.1}%   (target >= 50%)",
        100.0 * unbound / baseline
    );
}

/// What the client thread needs from the issuer thread.
struct IssuerHandle {
    issuer: TestIssuerRef,
}

/// A cheap view of the running issuer usable from another runtime.
struct TestIssuerRef {
    agent_api_address: std::net::SocketAddr,
    admin_socket_path: std::path::PathBuf,
    bundle: workload_api::Bundle,
}

fn issuer_handle(issuer: &TestIssuer) -> IssuerHandle {
    IssuerHandle {
        issuer: TestIssuerRef {
            agent_api_address: issuer.running.agent_api_address,
            admin_socket_path: issuer.running.admin_socket_path.clone(),
            bundle: issuer.bundle(),
        },
    }
}

impl IssuerHandle {
    fn issuer(&self) -> &TestIssuerRef {
        &self.issuer
    }
    /// Ends the run; the issuer reads `bound_entry`'s reservation first.
    fn stop(&self, stop: tokio::sync::oneshot::Sender<String>, bound_entry: String) {
        let _ = stop.send(bound_entry);
    }
}

impl TestIssuerRef {
    async fn attest(&self) -> sigil_tests::TestAgent {
        sigil_tests::attest_with(
            self.agent_api_address,
            &self.admin_socket_path,
            &self.bundle,
        )
        .await
    }

    async fn create_entry(&self, spiffe_id: &str, parent: &str, dns: &[&str]) -> pb::Entry {
        sigil_tests::create_entry_at(&self.admin_socket_path, spiffe_id, parent, dns).await
    }
}
