//! WPT verifications per second on one core: with the WIT already in the
//! verifier's cache (the steady state of a caller making many requests),
//! for each wire form (`Authorization: WPT`, draft-ietf-wimse-wpt-02, and
//! `Workload-Proof-Token`, -01) read off the request's headers, and with
//! every WIT new (one more signature check each), beside raw ring ECDSA
//! P-256 verifications of the WPT's signature in the same run.
//!
//! Run: cargo bench -p sigil-tests --bench wimse_verify
//! Tunables: SIGIL_BENCH_SECS (default 3 per phase).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use workload_api::bundle::{Bundle, JwtAuthority};
use workload_api::jwk::Algorithm;
use workload_api::keypair::KeyPair;
use workload_api::wimse::layer::verify_request_at;
use workload_api::wimse::replay::ReplayLimits;
use workload_api::wimse::wit::{Confirmation, WitClaims};
use workload_api::wimse::wpt::{self, BoundTokens};
use workload_api::wimse::{AcceptedForms, Presented, Verifier, VerifierConfig, WptForm};
use workload_api::TrustDomain;

const CORE: usize = 0;
const AUDIENCE: &str = "https://orders.example.org/orders";
/// Tokens minted ahead of each timed batch (minting is not what is measured).
const BATCH: usize = 1000;

fn secs() -> u64 {
    std::env::var("SIGIL_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Setup {
    issuer: KeyPair,
    workload: KeyPair,
}

impl Setup {
    fn wit(&self, jti: usize) -> String {
        let claims = WitClaims {
            sub: "spiffe://example.org/client".into(),
            iss: None,
            iat: now(),
            nbf: Some(now()),
            exp: now() + 3600,
            jti: format!("wit-{jti}"),
            cnf: Confirmation {
                jwk: self.workload.public_jwk(),
            },
            owner: None,
        };
        let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "wit+jwt"});
        self.issuer.sign_jws(&header, &claims)
    }

    fn verifier(&self) -> Verifier {
        let mut bundle = Bundle::new(TrustDomain::new("example.org").unwrap());
        bundle.add_wit_authority(JwtAuthority {
            kid: "k1".into(),
            key: self.issuer.public_key().clone(),
        });
        let mut config = VerifierConfig::new(vec!["https://orders.example.org".into()]);
        // Every proof of the run stays in the window: size it for that.
        config.replay = ReplayLimits {
            per_sender: 50_000_000,
            senders: 16,
        };
        let verifier = Verifier::new(config);
        verifier.set_bundle(bundle);
        verifier
    }
}

/// Verifies batches of `(wit, wpt)` pairs made by `make` for `duration`;
/// returns verifications per second (only verification is timed).
fn rate(
    verifier: &Verifier,
    duration: Duration,
    mut make: impl FnMut(usize) -> (String, String),
) -> f64 {
    let no_headers = |_: &str| None;
    let mut timed = Duration::ZERO;
    let mut done = 0usize;
    while timed < duration {
        let batch: Vec<(String, String)> = (0..BATCH).map(|i| make(done + i)).collect();
        let started = Instant::now();
        for (wit, wpt) in &batch {
            let presented = Presented {
                wit,
                wpt,
                path: Some("/orders"),
                authorization: None,
                txn_token: None,
                header: &no_headers,
            };
            verifier
                .verify(&presented, SystemTime::now())
                .expect("bench proofs verify");
        }
        timed += started.elapsed();
        done += batch.len();
    }
    done as f64 / timed.as_secs_f64()
}

/// Like [`rate`], for whole requests carrying the WPT in `form`: the layer's
/// path, reading the tokens off the headers, then verifying.
fn request_rate(
    verifier: &Verifier,
    duration: Duration,
    form: WptForm,
    mut make: impl FnMut(usize) -> (String, String),
) -> f64 {
    let mut timed = Duration::ZERO;
    let mut done = 0usize;
    while timed < duration {
        let batch: Vec<http::Request<()>> = (0..BATCH)
            .map(|i| {
                let (wit, wpt) = make(done + i);
                let builder = http::Request::builder()
                    .uri("/orders")
                    .header("workload-identity-token", wit);
                match form {
                    WptForm::Authorization => builder.header("authorization", format!("WPT {wpt}")),
                    WptForm::Header => builder.header("workload-proof-token", wpt),
                }
                .body(())
                .unwrap()
            })
            .collect();
        let started = Instant::now();
        for request in &batch {
            verify_request_at(verifier, request, AcceptedForms::Both, SystemTime::now())
                .expect("bench proofs verify");
        }
        timed += started.elapsed();
        done += batch.len();
    }
    done as f64 / timed.as_secs_f64()
}

/// ring alone: the ECDSA P-256 check of a WPT signature, nothing else.
fn raw_rate(setup: &Setup, wit: &str, duration: Duration) -> f64 {
    let proof = wpt::mint(
        wit,
        &setup.workload,
        AUDIENCE,
        60,
        &BoundTokens::default(),
        now(),
    );
    let (signing_input, signature) = proof.rsplit_once('.').unwrap();
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .unwrap();
    let workload_api::jwk::PublicKey::Ec { x, y, .. } = setup.workload.public_key() else {
        unreachable!("the workload key is P-256");
    };
    let point = [&[0x04][..], x, y].concat();
    let key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration {
        for _ in 0..1000 {
            key.verify(signing_input.as_bytes(), &signature).unwrap();
        }
        n += 1000;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: CORE }) {
        eprintln!("warning: core {CORE} not available; running unpinned");
    }
    let duration = Duration::from_secs(secs());
    let setup = Setup {
        issuer: KeyPair::generate(Algorithm::ES256).unwrap(),
        workload: KeyPair::generate(Algorithm::ES256).unwrap(),
    };
    let wit = setup.wit(0);

    let mint_cached = |_| {
        let proof = wpt::mint(
            &wit,
            &setup.workload,
            AUDIENCE,
            60,
            &BoundTokens::default(),
            now(),
        );
        (wit.clone(), proof)
    };
    // The machine may be shared: the raw and cache-hit phases take turns in
    // short slices, so a change of load touches all of them alike.
    const SLICE: Duration = Duration::from_millis(250);
    let slices = (duration.as_millis() / SLICE.as_millis()).max(1) as u32;
    let (hit_verifier, authorization_verifier, header_verifier) =
        (setup.verifier(), setup.verifier(), setup.verifier());
    let (mut raw, mut hit, mut authorization, mut header) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..slices {
        raw += raw_rate(&setup, &wit, SLICE);
        hit += rate(&hit_verifier, SLICE, mint_cached);
        authorization += request_rate(
            &authorization_verifier,
            SLICE,
            WptForm::Authorization,
            mint_cached,
        );
        header += request_rate(&header_verifier, SLICE, WptForm::Header, mint_cached);
    }
    let slices = f64::from(slices);
    let (raw, hit, authorization, header) = (
        raw / slices,
        hit / slices,
        authorization / slices,
        header / slices,
    );
    let miss_verifier = setup.verifier();
    let miss = rate(&miss_verifier, duration, |i| {
        let fresh = setup.wit(i + 1);
        let proof = wpt::mint(
            &fresh,
            &setup.workload,
            AUDIENCE,
            60,
            &BoundTokens::default(),
            now(),
        );
        (fresh, proof)
    });
    println!(
        "wimse_verify: one core, ES256 WIT and WPT, {} s per phase",
        duration.as_secs()
    );
    println!("  raw ring P-256 verify          {raw:>10.0} /s");
    println!(
        "  WPT verify, WIT cache hit      {hit:>10.0} /s  ({:.1}% of raw; target >= 90%)",
        100.0 * hit / raw
    );
    for (form, rate) in [
        ("Authorization: WPT", authorization),
        ("Workload-Proof-Token", header),
    ] {
        println!(
            "  request, {form:<20}  {rate:>10.0} /s  ({:.1}% of raw; WIT cache hit, target >= 90%)",
            100.0 * rate / raw
        );
    }
    println!(
        "  WPT verify, WIT cache miss     {miss:>10.0} /s  ({:.1}% of raw; two signatures each)",
        100.0 * miss / raw
    );
}
