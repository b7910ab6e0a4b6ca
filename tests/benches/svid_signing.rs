//! X.509-SVIDs signed per second through the agent API, with the issuer pinned
//! to one core, beside the rate at which ring alone does the same cryptographic
//! work per SVID (one ECDSA P-256 CSR signature check and one certificate
//! signature) on that core, in the same run.
//!
//! Run: cargo bench -p sigil-tests --bench svid_signing
//! Tunables: SIGIL_BENCH_SECS (default 5), SIGIL_BENCH_BATCH (100),
//! SIGIL_BENCH_IN_FLIGHT (4).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use proto::issuer as pb;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
    ECDSA_P256_SHA256_ASN1_SIGNING,
};
use sigil_tests::{new_key_and_csr, TestIssuer};

const ISSUER_CORE: usize = 0;
const CLIENT_CORE: usize = 1;

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

fn main() {
    let secs = env_or("SIGIL_BENCH_SECS", 5);
    let batch = env_or("SIGIL_BENCH_BATCH", 100) as usize;
    let in_flight = env_or("SIGIL_BENCH_IN_FLIGHT", 4) as usize;
    let duration = Duration::from_secs(secs);
    cores();

    // The issuer runs on a single-threaded runtime pinned to one core.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let issuer_thread = std::thread::spawn(move || {
        pin(ISSUER_CORE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let issuer = TestIssuer::start().await;
            ready_tx.send(issuer_handle(&issuer)).unwrap();
            let _ = stop_rx.await;
            issuer.running.shutdown().await;
        });
    });
    let handle = ready_rx.recv().unwrap();

    pin(CLIENT_CORE);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let end_to_end = runtime.block_on(async move {
        let issuer = handle.issuer();
        let agent = issuer.attest().await;
        let entry = issuer
            .create_entry("spiffe://example.org/bench", &agent.id, &[])
            .await;
        let csrs: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..batch)
                .map(|_| new_key_and_csr(Some("spiffe://example.org/bench")).1)
                .collect(),
        );
        let request = pb::BatchSignX509SvidsRequest {
            params: csrs
                .iter()
                .map(|csr| pb::X509SvidParams {
                    entry_id: entry.id.clone(),
                    csr: csr.clone(),
                })
                .collect(),
        };
        let signed = Arc::new(AtomicU64::new(0));
        let run_for = |d: Duration, count: bool| {
            let tasks: Vec<_> = (0..in_flight)
                .map(|_| {
                    let mut client = agent.client.clone();
                    let request = request.clone();
                    let signed = signed.clone();
                    tokio::spawn(async move {
                        let started = Instant::now();
                        while started.elapsed() < d {
                            let results = client
                                .batch_sign_x509_svids(request.clone())
                                .await
                                .unwrap()
                                .into_inner()
                                .results;
                            assert!(results.iter().all(|r| r.code == 0));
                            if count {
                                signed.fetch_add(results.len() as u64, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            async move {
                for task in tasks {
                    task.await.unwrap();
                }
            }
        };
        run_for(Duration::from_secs(1), false).await;
        let started = Instant::now();
        run_for(duration, true).await;
        let rate = signed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        handle.stop(stop_tx);
        rate
    });
    // Dropping the client runtime closes its connections, which the issuer's
    // graceful shutdown waits for.
    drop(runtime);
    issuer_thread.join().unwrap();

    // The baseline runs on the core the issuer had.
    let baseline = std::thread::spawn(move || {
        pin(ISSUER_CORE);
        ring_rate(duration)
    })
    .join()
    .unwrap();

    println!(
        "svid_signing: X.509-SVIDs through the agent API, issuer pinned to core {ISSUER_CORE}"
    );
    println!(
        "  end to end    : {end_to_end:>9.0} SVIDs/s  (batches of {batch}, {in_flight} in flight, {secs} s, mTLS gRPC on loopback)"
    );
    println!("  ring baseline : {baseline:>9.0} SVIDs/s  (1 ECDSA P-256 verify + 1 ECDSA P-256 sign per SVID)");
    println!(
        "  ratio         : {:>8.1}%   (target >= 50%)",
        100.0 * end_to_end / baseline
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
    fn stop(&self, stop: tokio::sync::oneshot::Sender<()>) {
        let _ = stop.send(());
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
