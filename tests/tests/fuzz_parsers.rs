//! Mutation fuzzing of every parser that takes untrusted bytes: SPIFFE IDs,
//! bundles, JWT-SVIDs, X509-SVID chains, CSRs, DER certificate lists, WITs,
//! WPTs (whole, and their JSON parts re-encoded), private JWKs, the
//! Signature-Input, Signature and Content-Digest fields of HTTP signatures,
//! owner bindings (DER and claim), owner keys, consents and revocation lists.
//! Each starts from a valid input and applies many seeded random mutations;
//! every result must be a value or a typed error, never a panic. The seed is
//! fixed so a failure reproduces; SIGIL_FUZZ_ITERATIONS raises the count.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sigil_issuer::ca::keys::KeyType;
use sigil_issuer::ca::{Ca, CaConfig};
use sigil_issuer::csr::{self, SubjectKey};
use workload_api::bundle::split_der_concat;
use workload_api::id::{parse_spiffe_id, parse_trust_domain, SpiffeId, TrustDomain};
use workload_api::jwk::{Algorithm, PublicKey};
use workload_api::keypair::KeyPair;
use workload_api::wimse::wpt::{self, BoundTokens};
use workload_api::wimse::{Presented, Verifier, VerifierConfig};
use workload_api::{jwtsvid, x509svid, Bundle};

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u8] = b"\x00\xff\x7f\x80/.:%@?#\"{}[],0123456789-_=AZaz \x30\x82\x04\x06";

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(out.len() + 1);
                out.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            3 if !out.is_empty() => {
                let i = rng.below(out.len());
                out.remove(i);
            }
            4 => {
                let len = rng.below(out.len() + 1);
                out.truncate(len);
            }
            _ if out.len() > 2 => {
                // Duplicate a slice somewhere else: stresses length fields.
                let a = rng.below(out.len());
                let b = a + rng.below(out.len() - a);
                let chunk = out[a..b].to_vec();
                let at = rng.below(out.len());
                out.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    out
}

fn iterations() -> usize {
    std::env::var("SIGIL_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

fn fuzz(name: &str, seed: &[u8], mut target: impl FnMut(&[u8])) {
    let mut rng = Rng(0x5eed_0000_0000_0001 ^ name.len() as u64);
    target(seed);
    for _ in 0..iterations() {
        let input = mutate(&mut rng, seed);
        target(&input);
    }
}

struct Fixture {
    bundle: Bundle,
    chain: Vec<Vec<u8>>,
    jwt: String,
    wit: String,
    revocations: String,
    workload: KeyPair,
    csr: Vec<u8>,
    now: SystemTime,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let ca = Ca::open(
        CaConfig {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            dir: dir.path().to_path_buf(),
            ca_ttl: Duration::from_secs(86_400),
            x509_key_type: KeyType::EcP256,
            jwt_key_type: KeyType::EcP256,
            wit_key_type: KeyType::EcP256,
            wit_issuer: None,
            jwt_issuer: None,
            upstream: None,
            refresh_hint: Duration::from_secs(300),
        },
        now,
    )
    .unwrap();
    let (_key, csr) = sigil_tests::new_key_and_csr(Some("spiffe://example.org/web"));
    let verified = csr::verify(&csr).unwrap();
    let id = SpiffeId::new("spiffe://example.org/web").unwrap();
    // Owner-bound credentials, so the owner binding's parsers are fuzzed too.
    let owner = workload_api::owner::OwnerBinding {
        owner_id: "mailto:alice@example.org".into(),
        key_thumbprint: [3; 32],
        consent_sha256: [4; 32],
        actors: vec!["spiffe://example.org/agents/alice".into()],
    };
    let chain = ca
        .sign_x509_svid(
            sigil_issuer::ca::SvidSubject {
                key: &SubjectKey::new(&verified.public_key),
                spiffe_id: &id,
                dns_names: &["web.example.org".into()],
                owner: Some(&owner),
                counter: Some(sigil_issuer::ca::SerialCounter {
                    entry_id: "e1",
                    counter: 0,
                }),
            },
            Duration::from_secs(3600),
            now,
        )
        .unwrap()
        .chain;
    let jwt = ca
        .sign_jwt_svid(
            &id,
            &["db".into()],
            Some(&owner),
            Duration::from_secs(300),
            now,
        )
        .unwrap()
        .token;
    let workload = KeyPair::generate(Algorithm::ES256).unwrap();
    let wit = ca
        .sign_wit_svid(
            &id,
            workload.public_jwk(),
            Some(&owner),
            Duration::from_secs(3600),
            now,
        )
        .unwrap()
        .token;
    let revocations = ca
        .sign_revocation_list(&workload_api::revocation::RevocationClaims {
            iss: "spiffe://example.org".into(),
            seq: 7,
            iat: 1_800_000_000,
            exp: 1_800_003_600,
            owners: vec![workload_api::revocation::RevokedOwner {
                id: "mailto:bob@example.org".into(),
                jkt: "a2V5".into(),
                revoked_at: 1_799_999_000,
            }],
        })
        .unwrap();
    Fixture {
        bundle: (*ca.bundle()).clone(),
        chain,
        jwt,
        wit,
        revocations,
        workload,
        csr,
        now,
        _dir: dir,
    }
}

#[test]
fn spiffe_ids_and_trust_domains() {
    fuzz("id", b"spiffe://example.org/ns/prod/sa/web", |input| {
        if let Ok(text) = std::str::from_utf8(input) {
            if let Ok(id) = parse_spiffe_id(text) {
                // Whatever parses must print back to the same text.
                assert_eq!(id.to_string(), text);
            }
            let _ = parse_trust_domain(text);
        }
    });
}

#[test]
fn bundles() {
    let f = fixture();
    let json = f.bundle.to_jwks_json();
    let td = TrustDomain::new("example.org").unwrap();
    fuzz("bundle", &json, |input| {
        if let Ok(bundle) = Bundle::from_jwks_json(td.clone(), input) {
            // A bundle that parses re-encodes to one that parses the same.
            let again = Bundle::from_jwks_json(td.clone(), &bundle.to_jwks_json()).unwrap();
            assert_eq!(again, bundle);
        }
    });
}

#[test]
fn jwt_svids() {
    let f = fixture();
    fuzz("jwt", f.jwt.as_bytes(), |input| {
        if let Ok(token) = std::str::from_utf8(input) {
            let result = jwtsvid::validate(token, "db", |_| Some(&f.bundle), f.now);
            if token != f.jwt {
                assert!(result.is_err(), "a mutated token validated: {token}");
            }
        }
    });
}

#[test]
fn x509_svid_chains_and_der_lists() {
    let f = fixture();
    let concat = f.chain.concat();
    fuzz("x509", &concat, |input| {
        if let Ok(chain) = split_der_concat(input) {
            let result = x509svid::verify_chain(&chain, |_| Some(&f.bundle), f.now);
            if chain != f.chain {
                assert!(result.is_err(), "a mutated chain verified");
            }
        }
        let _ = x509svid::check_leaf(input);
        let _ = x509svid::check_signing_certificate(1, input);
    });
}

#[test]
fn csrs_and_public_keys() {
    let f = fixture();
    fuzz("csr", &f.csr, |input| {
        if let Ok(verified) = csr::verify(input) {
            let _ = SubjectKey::new(&verified.public_key);
        }
        let _ = PublicKey::from_spki_der(input);
    });
}

/// `token` with its `index`th part replaced by base64url of `json`.
fn with_part(token: &str, index: usize, json: &[u8]) -> String {
    use base64::Engine;
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[index] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    parts.join(".")
}

fn decoded_part(token: &str, index: usize) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').nth(index).unwrap())
        .unwrap()
}

#[test]
fn wimse_wits_wpts_and_private_jwks() {
    let f = fixture();
    let now = f.now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let verifier = Verifier::new(VerifierConfig::new(vec!["https://svc.example.org".into()]));
    verifier.set_bundle(f.bundle.clone());
    let wpt = wpt::mint(
        &f.wit,
        &f.workload,
        "https://svc.example.org/api",
        60,
        &BoundTokens::default(),
        now,
    );
    let no_headers = |_: &str| None;
    let verify = |wit: &str, proof: &str| {
        let presented = Presented {
            wit,
            wpt: proof,
            path: Some("/api"),
            authorization: None,
            txn_token: None,
            header: &no_headers,
        };
        verifier.verify(&presented, f.now)
    };
    // Whole tokens.
    fuzz("wit", f.wit.as_bytes(), |input| {
        if let Ok(token) = std::str::from_utf8(input) {
            let result = verifier.validate_wit(token, now);
            if token != f.wit {
                assert!(result.is_err(), "a mutated WIT validated: {token}");
            }
        }
    });
    fuzz("wpt", wpt.as_bytes(), |input| {
        if let Ok(token) = std::str::from_utf8(input) {
            if token != wpt {
                assert!(
                    verify(&f.wit, token).is_err(),
                    "a mutated WPT verified: {token}"
                );
            }
        }
    });
    // The JSON inside them, re-encoded under the original signature: the
    // claim checks before the signature see arbitrary JSON.
    for (name, token, index) in [
        ("wit-header", &f.wit, 0),
        ("wit-claims", &f.wit, 1),
        ("wpt-header", &wpt, 0),
        ("wpt-claims", &wpt, 1),
    ] {
        let json = decoded_part(token, index);
        fuzz(name, &json, |input| {
            if input == json.as_slice() {
                return;
            }
            let changed = with_part(token, index, input);
            let result = if name.starts_with("wit") {
                verify(&changed, &wpt)
            } else {
                verify(&f.wit, &changed)
            };
            assert!(result.is_err(), "{name}: changed JSON verified");
        });
    }
    // Private JWKs, as FetchWITSVID hands them over.
    let jwk = f.workload.to_jwk_json();
    fuzz("private-jwk", jwk.as_bytes(), |input| {
        if let Ok(text) = std::str::from_utf8(input) {
            if let Ok(key) = KeyPair::from_jwk_json(text) {
                let signature = key.sign(b"m");
                assert!(key.public_key().verify(key.algorithm(), b"m", &signature));
            }
        }
    });
}

#[test]
fn http_message_signature_fields() {
    use http::{HeaderMap, HeaderValue};
    use workload_api::wimse::httpsig::{self, RequestSigning, RequestView, TimePolicy};
    let f = fixture();
    let now = f.now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let nonce = workload_api::wimse::http::sign_http_request(
        "POST",
        "/orders?x=1",
        &mut headers,
        b"{}",
        &f.wit,
        &f.workload,
        &RequestSigning {
            audience: "https://svc.example.org/orders".into(),
            lifetime_secs: 60,
            sign_response: true,
            now,
        },
    )
    .unwrap();
    assert!(!nonce.is_empty());
    let time = TimePolicy {
        now,
        skew: 30,
        max_lifetime: 300,
    };
    let audiences = ["https://svc.example.org/orders".to_owned()];
    for field in ["signature-input", "signature", "content-digest"] {
        let original = headers[field].as_bytes().to_vec();
        fuzz(field, &original, |input| {
            let Ok(value) = HeaderValue::from_bytes(input) else {
                return;
            };
            let mut changed = headers.clone();
            changed.insert(field, value);
            let request = RequestView {
                method: "POST",
                target: "/orders?x=1",
                headers: &changed,
            };
            let result = httpsig::verify_request(
                &request,
                f.workload.public_key(),
                Algorithm::ES256,
                |aud: &str| audiences.contains(&aud.to_owned()),
                time,
            )
            .and_then(|_| httpsig::check_content_digest(&changed, b"{}"));
            if result.is_ok() && input != original.as_slice() {
                // Content-Digest is covered as its trimmed value (RFC 9421
                // 2.1); the two signature fields are parsed, so a change may
                // only re-spell the same WIMSE member.
                if field == "content-digest" {
                    assert_eq!(
                        String::from_utf8_lossy(input).trim(),
                        String::from_utf8_lossy(&original).trim(),
                        "a changed digest verified"
                    );
                    return;
                }
                let member = |bytes: &[u8]| {
                    let dict: sfv::Dictionary = sfv::Parser::new(bytes).parse().unwrap();
                    match dict.get("wimse").cloned() {
                        Some(sfv::ListEntry::Item(item)) => {
                            sfv::ListEntry::Item(sfv::Item::new(item.bare_item))
                        }
                        other => other.unwrap(),
                    }
                };
                assert_eq!(
                    member(input),
                    member(&original),
                    "{field} changed yet verified"
                );
            }
        });
    }
}

#[test]
fn owner_bindings_keys_consents_and_revocation_lists() {
    use workload_api::consent::{self, ConsentClaims};
    use workload_api::owner::{self, OwnerBinding};
    use workload_api::revocation;
    let f = fixture();
    let binding = OwnerBinding {
        owner_id: "mailto:alice@example.org".into(),
        key_thumbprint: [5; 32],
        consent_sha256: [6; 32],
        actors: vec![
            "spiffe://example.org/a".into(),
            "spiffe://example.org/a/b".into(),
        ],
    };
    fuzz("owner binding DER", &binding.to_der(), |input| {
        let _ = OwnerBinding::from_der(input);
    });
    fuzz(
        "owner claim",
        binding.to_claim().to_string().as_bytes(),
        |input| {
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(input) {
                let _ = OwnerBinding::from_claim(&value);
            }
        },
    );
    let key = KeyPair::generate(Algorithm::EdDSA).unwrap();
    let public = serde_json::to_string(&key.public_key().to_jwk()).unwrap();
    fuzz("owner public key", public.as_bytes(), |input| {
        if let Ok(text) = std::str::from_utf8(input) {
            let _ = owner::parse_public_key(text);
        }
    });
    let claims = ConsentClaims {
        iss: "mailto:alice@example.org".into(),
        spiffe_id: None,
        spiffe_id_prefix: Some("spiffe://example.org/agents/alice/".into()),
        selectors: vec!["unix:uid:1000".into()],
        iat: 100,
        nbf: 100,
        exp: 200,
        jti: "j".into(),
        delegation: Some(consent::Delegation {
            max_depth: 2,
            max_children: 3,
        }),
    };
    let jws = consent::sign(&claims, &key).unwrap();
    fuzz("consent", jws.as_bytes(), |input| {
        if let Ok(token) = std::str::from_utf8(input) {
            let result = consent::verify(token, key.public_key(), 150);
            if token != jws {
                assert!(result.is_err(), "a mutated consent verified: {token}");
            }
            let _ = consent::claimed_owner(token);
        }
    });
    fuzz("consent claims", &decoded_part(&jws, 1), |input| {
        let _ = consent::verify(&with_part(&jws, 1, input), key.public_key(), 150);
    });
    fuzz("revocation list", f.revocations.as_bytes(), |input| {
        if let Ok(token) = std::str::from_utf8(input) {
            let result = revocation::verify(token, &f.bundle);
            if token != f.revocations {
                assert!(
                    result.is_err(),
                    "a mutated revocation list verified: {token}"
                );
            }
        }
    });
    fuzz(
        "revocation claims",
        &decoded_part(&f.revocations, 1),
        |input| {
            let _ = revocation::verify(&with_part(&f.revocations, 1, input), &f.bundle);
        },
    );
}

/// The event log's parsers: canonical JSON, leaves, tile paths, checkpoint
/// notes and whole exports (header and leaf lines), from a real log.
#[test]
fn event_log_leaves_tiles_checkpoints_and_exports() {
    use sigil_issuer::eventlog::key::LogKey;
    use sigil_issuer::eventlog::tiles::TilePath;
    use sigil_issuer::eventlog::tree::Frontier;
    use sigil_issuer::eventlog::{leaf, signed_note, verify};
    use workload_api::events::canonical;
    use workload_api::events::{Event, EventKind};

    let dir = tempfile::tempdir().unwrap();
    let origin = "example.org/sigil-event-log";
    let key = LogKey::load_or_create(&dir.path().join("log.jwk"), origin).unwrap();
    let vkey = key.verifier_key();
    let verifier = signed_note::StandardVerifier::new(&vkey).unwrap();
    let mut tree = Frontier::default();
    let mut lines = Vec::new();
    for i in 0..3u64 {
        let event = Event::new(
            EventKind::EntryCreated,
            "spiffe://example.org/sigil/issuer",
            SystemTime::now(),
        )
        .subject(format!("spiffe://example.org/w{i}"))
        .detail("selectors", vec!["unix:uid:1000"]);
        let sealed = leaf::seal(&leaf::record(&event).unwrap(), i, &key).unwrap();
        tree.append(sealed.as_bytes());
        lines.push(sealed);
    }
    let body = format!(
        "{origin}\n3\n{}\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, tree.root().0)
    );
    let mut note = signed_note::Note::new(body.as_bytes(), &[]).unwrap();
    note.add_sigs(&[&key]).unwrap();
    let note = String::from_utf8(note.to_bytes()).unwrap();
    let header = serde_json::json!({
        "format": "sigil-event-log-export/1", "origin": origin, "log_key": vkey,
        "checkpoint": note, "from": 0, "frontier": [],
    });
    let export = format!("{header}\n{}\n", lines.join("\n"));
    assert!(verify::verify_export(export.as_bytes(), Some(&vkey), None).is_ok());

    fuzz("canonical json", lines[0].as_bytes(), |input| {
        let _ = canonical::parse_canonical(input);
    });
    fuzz("leaf", lines[1].as_bytes(), |input| {
        let _ = leaf::open(input, 1, origin, &verifier);
    });
    fuzz("tile path", b"tile/entries/x001/234.p/5", |input| {
        let _ = TilePath::parse(&String::from_utf8_lossy(input));
    });
    fuzz("checkpoint", note.as_bytes(), |input| {
        let _ = verify::verify_checkpoint(&String::from_utf8_lossy(input), &vkey);
    });
    fuzz("export", export.as_bytes(), |input| {
        let _ = verify::verify_export(input, Some(&vkey), None);
    });
}
