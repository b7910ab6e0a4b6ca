//! Rotation and signing tests of the whole CA: a clock jumped across two CA
//! lifetimes with a restart from disk, lifetimes capped by the signer, and
//! private key files.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use workload_api::bundle::Bundle;
use workload_api::id::{SpiffeId, TrustDomain};
use workload_api::{jwtsvid, x509svid};

use super::keys::KeyType;
use super::{Ca, CaConfig};
use crate::clock::unix_secs;
use crate::csr::SubjectKey;

const HOUR: Duration = Duration::from_secs(3600);

/// When, and the X.509 chain, JWT-SVID and WIT-SVID issued then.
type Issued = (SystemTime, Vec<Vec<u8>>, String, String);

fn config(dir: &std::path::Path) -> CaConfig {
    CaConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        dir: dir.to_path_buf(),
        ca_ttl: 6 * HOUR,
        x509_key_type: KeyType::EcP256,
        jwt_key_type: KeyType::EcP256,
        wit_key_type: KeyType::EcP256,
        wit_issuer: None,
        jwt_issuer: None,
        upstream: None,
        refresh_hint: Duration::from_secs(300),
    }
}

/// An unbound workload's X509-SVID request.
fn subject<'a>(key: &'a SubjectKey, id: &'a SpiffeId) -> super::SvidSubject<'a> {
    super::SvidSubject {
        key,
        spiffe_id: id,
        dns_names: &[],
        owner: None,
        counter: None,
    }
}

fn svid(ca: &Ca, now: SystemTime) -> Vec<Vec<u8>> {
    let key = rcgen::KeyPair::generate().unwrap();
    let public = workload_api::jwk::PublicKey::from_spki_der(
        &rcgen::PublicKeyData::subject_public_key_info(&key),
    )
    .unwrap();
    let id = SpiffeId::new("spiffe://example.org/web").unwrap();
    ca.sign_x509_svid(subject(&SubjectKey::new(&public), &id), HOUR, now)
        .unwrap()
        .chain
}

fn jwt(ca: &Ca, now: SystemTime) -> String {
    let id = SpiffeId::new("spiffe://example.org/web").unwrap();
    ca.sign_jwt_svid(&id, &["db".into()], None, Duration::from_secs(300), now)
        .unwrap()
        .token
}

fn wit(ca: &Ca, now: SystemTime) -> String {
    let id = SpiffeId::new("spiffe://example.org/web").unwrap();
    let workload =
        workload_api::keypair::KeyPair::generate(workload_api::jwk::Algorithm::ES256).unwrap();
    ca.sign_wit_svid(
        &id,
        workload.public_jwk(),
        None,
        Duration::from_secs(300),
        now,
    )
    .unwrap()
    .token
}

/// Every credential still within its lifetime verifies against `bundle` at `now`.
fn assert_all_verify(issued: &[Issued], bundle: &Bundle, now: SystemTime) {
    let shared = std::sync::Arc::new(bundle.clone());
    for (at, chain, token, wit_token) in issued {
        if now < *at + Duration::from_secs(300) {
            jwtsvid::validate(token, "db", |_| Some(bundle), now)
                .unwrap_or_else(|e| panic!("JWT from {at:?} at {now:?}: {e}"));
            workload_api::wimse::wit::validate(
                wit_token,
                workload_api::wimse::Profile::Spiffe,
                |_| Some(shared.clone()),
                unix_secs(now) as u64,
                0,
            )
            .unwrap_or_else(|e| panic!("WIT from {at:?} at {now:?}: {e}"));
        }
        if now < *at + HOUR {
            x509svid::verify_chain(chain, |_| Some(bundle), now)
                .unwrap_or_else(|e| panic!("SVID from {at:?} at {now:?}: {e}"));
        }
    }
}

#[test]
fn rotation_with_a_jumped_clock_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let ca = Ca::open(config(dir.path()), start).unwrap();
    let first = ca.local_bundle();
    assert_eq!(first.x509_authorities().len(), 1);
    assert_eq!(first.jwt_authorities().len(), 1);
    assert_eq!(first.wit_authorities().len(), 1);

    let mut issued = vec![(start, svid(&ca, start), jwt(&ca, start), wit(&ca, start))];
    // Walk the clock in 30-minute steps across two full CA lifetimes,
    // restarting the issuer from disk halfway through.
    let mut now = start;
    let mut saw = (false, false, false);
    let mut ca = ca;
    for step in 1..=24 {
        now += HOUR / 2;
        if step == 9 {
            let sequence = ca.local_bundle().sequence();
            drop(ca);
            ca = Ca::open(config(dir.path()), now).unwrap();
            assert!(
                ca.local_bundle().sequence() >= sequence,
                "sequence survives restart"
            );
        }
        let before = ca.local_bundle();
        ca.rotate(now).unwrap();
        let bundle = ca.local_bundle();
        let n = bundle.x509_authorities().len();
        if n == 2 && before.x509_authorities().len() == 1 {
            saw.0 = true; // prepared and published before use
        }
        if before.sequence() != bundle.sequence() {
            assert!(bundle.sequence() > before.sequence());
        }
        let first_ca = &first.x509_authorities()[0];
        if before.x509_authorities().contains(first_ca)
            && !bundle.x509_authorities().contains(first_ca)
        {
            // The retired CA leaves the bundle only once it has expired.
            assert!(
                now >= start + 6 * HOUR,
                "retired CA dropped early at {now:?}"
            );
            saw.2 = true;
        }
        assert!(n <= 2, "at most the active key and one other are published");
        issued.push((now, svid(&ca, now), jwt(&ca, now), wit(&ca, now)));
        // Signed after activation by a different CA than the first?
        if issued.last().unwrap().1[0] != issued[0].1[0]
            && !first
                .x509_authorities()
                .contains(&bundle.x509_authorities()[0])
        {
            saw.1 = true;
        }
        assert_all_verify(&issued, &bundle, now);
    }
    assert!(
        saw.0 && saw.1 && saw.2,
        "prepare/activate/retire all happened: {saw:?}"
    );
}

#[test]
fn a_bundle_is_serialized_once_until_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let ca = Ca::open(config(dir.path()), start).unwrap();
    let first = ca.current_bundle_jwks();
    assert_eq!(*first, ca.bundle().to_jwks_json());
    assert!(Arc::ptr_eq(&first, &ca.current_bundle_jwks()));
    let mut next = (*ca.bundle()).clone();
    next.set_sequence(next.sequence() + 1);
    ca.set_published_bundle(next.clone());
    let second = ca.current_bundle_jwks();
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(*second, next.to_jwks_json());
}

#[test]
fn svid_lifetime_is_capped_by_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut cfg = config(dir.path());
    cfg.ca_ttl = HOUR;
    let ca = Ca::open(cfg, start).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let public = workload_api::jwk::PublicKey::from_spki_der(
        &rcgen::PublicKeyData::subject_public_key_info(&key),
    )
    .unwrap();
    let id = SpiffeId::new("spiffe://example.org/web").unwrap();
    let signed = ca
        .sign_x509_svid(subject(&SubjectKey::new(&public), &id), 2 * HOUR, start)
        .unwrap();
    assert!(signed.shortened);
    assert_eq!(Some(signed.not_after), ca.active_x509_not_after());
}

#[test]
fn keys_on_disk_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let _ca = Ca::open(config(dir.path()), SystemTime::now()).unwrap();
    let mut keys = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        if entry.path().extension().is_some_and(|e| e == "key") {
            keys += 1;
            assert_eq!(
                entry.metadata().unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
    // The X.509 CA key, the JWT-SVID key, the WIT-SVID key and the serial key.
    assert_eq!(keys, 4);
}

#[test]
fn errors_name_the_file_at_fault() {
    use super::{CaError, UpstreamCa};
    let dir = tempfile::tempdir().unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["upstream".into()]).unwrap();
    let cert_file = dir.path().join("cert.pem");
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    let upstream = |cert_file: &std::path::Path, key_file: &std::path::Path| {
        let mut cfg = config(&dir.path().join("ca"));
        cfg.upstream = Some(UpstreamCa {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            bundle_file: None,
        });
        Ca::open(cfg, now).unwrap_err()
    };
    let missing = dir.path().join("missing.pem");
    let cases = [
        (upstream(&missing, &empty), "upstream CA: ", &missing),
        (upstream(&empty, &empty), "has no certificate", &empty),
        (
            upstream(&cert_file, &empty),
            "has no PKCS#8 \"PRIVATE KEY\" block",
            &empty,
        ),
    ];
    for (error, text, path) in cases {
        let shown = error.to_string();
        assert!(shown.contains(text), "{shown}");
        assert!(shown.contains(&path.display().to_string()), "{shown}");
    }
    assert!(matches!(
        upstream(&empty, &empty),
        CaError::UpstreamNoCertificate { .. }
    ));

    let ca_dir = dir.path().join("broken");
    std::fs::create_dir(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("journal.json"), "{").unwrap();
    let error = Ca::open(config(&ca_dir), now).unwrap_err();
    assert!(matches!(error, CaError::JournalFormat { .. }), "{error}");
    assert!(error.to_string().starts_with("CA journal "), "{error}");
}
