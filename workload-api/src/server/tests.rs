//! The server's rules with an injected clock and fake sources.

use super::jwt::*;
use super::outage::*;
use super::view::*;
use super::watch::*;
use super::*;
use crate::source::{unix_time, WitMaterial, X509Material};
use crate::Bundle;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use std::time::UNIX_EPOCH;
use tokio::sync::watch;

const T: i64 = 1_700_000_000;

fn at(secs: i64) -> SystemTime {
    unix_time(T + secs)
}

fn caller() -> Vec<Selector> {
    vec![Selector::new("unix", "uid:1000")]
}

/// An identity for the caller; `x509` and `wit` are expiries, relative to T.
fn identity(name: &str, x509: Option<i64>, wit: Option<i64>) -> Identity {
    Identity {
        entry_id: name.into(),
        spiffe_id: format!("spiffe://example.org/{name}"),
        hint: String::new(),
        selectors: caller(),
        federates_with: Vec::new(),
        x509: x509.map(|exp| {
            Arc::new(X509Material::new(
                name.as_bytes().to_vec(),
                Default::default(),
                T + exp,
            ))
        }),
        wit: wit.map(|exp| {
            Arc::new(WitMaterial::new(
                format!("wit-{name}"),
                Default::default(),
                T + exp,
            ))
        }),
    }
}

fn snapshot(identities: Vec<Identity>) -> Snapshot {
    Snapshot {
        identities,
        ..Snapshot::empty(Bundle::new(
            crate::id::TrustDomain::new("example.org").unwrap(),
        ))
    }
}

fn x509_ids(view: View<pb::X509svidResponse>) -> Vec<String> {
    match view {
        View::Ready(r) => r.svids.into_iter().map(|s| s.spiffe_id).collect(),
        other => panic!("not ready: {other:?}"),
    }
}

fn outage() -> IssuerOutage {
    IssuerOutage {
        since: at(0),
        last_error: "Unavailable: tcp connect error".into(),
    }
}

#[test]
fn expired_x509_svids_are_left_out_at_serve_time() {
    let snap = snapshot(vec![
        identity("a", Some(10), None),
        identity("b", Some(100), None),
    ]);
    let ids = |now| x509_ids(x509_response(&snap, &caller(), now).unwrap());
    let both = vec!["spiffe://example.org/a", "spiffe://example.org/b"];
    assert_eq!(ids(at(0)), both);
    assert_eq!(ids(at(10) - Duration::from_millis(1)), both);
    assert_eq!(
        ids(at(10)),
        vec!["spiffe://example.org/b"],
        "at notAfter: gone"
    );
    assert_eq!(ids(at(99)), vec!["spiffe://example.org/b"]);
    for now in [at(100), at(101), at(86_400)] {
        assert!(matches!(
            x509_response(&snap, &caller(), now),
            Ok(View::Expired)
        ));
    }
}

#[test]
fn pending_and_expired_identities_are_told_apart() {
    // (X509-SVID expiry or none, name) per identity; the view expected.
    type Held<'a> = &'a [(Option<i64>, &'a str)];
    let cases: &[(Held, &str)] = &[
        (&[(None, "a")], "pending"),
        (&[(None, "a"), (Some(100), "b")], "pending"),
        (&[(None, "a"), (Some(5), "b")], "expired"),
        (&[(Some(5), "a"), (Some(100), "b")], "ready"),
        (&[(Some(5), "a"), (Some(6), "b")], "expired"),
    ];
    for (held, expected) in cases {
        let snap = snapshot(held.iter().map(|(x, n)| identity(n, *x, None)).collect());
        let view = match x509_response(&snap, &caller(), at(50)).unwrap() {
            View::Ready(_) => "ready",
            View::Pending => "pending",
            View::Expired => "expired",
        };
        assert_eq!(view, *expected, "{held:?}");
    }
    let nobody = x509_response(&snapshot(vec![]), &caller(), at(0)).unwrap_err();
    assert_eq!(nobody.code(), tonic::Code::PermissionDenied);
}

#[test]
fn the_fingerprint_changes_when_an_svid_expires() {
    let snap = snapshot(vec![
        identity("a", Some(10), None),
        identity("b", Some(100), None),
    ]);
    let early = x509_fingerprint(&snap, &caller(), at(0));
    assert_eq!(early.next_expiry, Some(at(10)));
    assert_eq!(
        early,
        x509_fingerprint(&snap, &caller(), at(9)),
        "nothing changed"
    );
    let later = x509_fingerprint(&snap, &caller(), at(10));
    assert_ne!(later.hash, early.hash);
    assert_eq!(later.next_expiry, Some(at(100)));
    let gone = x509_fingerprint(&snap, &caller(), at(100));
    assert_ne!(gone.hash, later.hash);
    assert_eq!(gone.next_expiry, None);
}

#[test]
fn expired_wits_are_left_out_at_serve_time() {
    let snap = snapshot(vec![
        identity("a", None, Some(10)),
        identity("b", None, Some(100)),
    ]);
    let all = |_: &Identity| true;
    let ids = |now| match wit_response(&snap, &caller(), now, &all).unwrap() {
        View::Ready(r) => r.svids.into_iter().map(|s| s.wit_svid).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(ids(at(9)), vec!["wit-a", "wit-b"]);
    assert_eq!(ids(at(10)), vec!["wit-b"]);
    assert!(matches!(
        wit_response(&snap, &caller(), at(100), &all),
        Ok(View::Expired)
    ));
    let print = wit_fingerprint(&snap, &caller(), at(10), &all);
    assert_eq!(print.next_expiry, Some(at(100)));
    assert_ne!(
        print.hash,
        wit_fingerprint(&snap, &caller(), at(9), &all).hash
    );
}

#[test]
fn everything_expired_names_the_outage() {
    let status = all_expired(Some(outage()), at(72));
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status.message(),
        "every SVID for this workload has expired; the issuer has been unreachable for 1m 12s: \
         Unavailable: tcp connect error"
    );
    let status = all_expired(None, at(72));
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("being minted"), "{status:?}");
}

#[test]
fn outage_durations_read_like_a_clock() {
    for (secs, text) in [
        (0, "0s"),
        (59, "59s"),
        (60, "1m 0s"),
        (72, "1m 12s"),
        (3599, "59m 59s"),
        (3600, "1h 0m 0s"),
        (90_061, "25h 1m 1s"),
    ] {
        assert_eq!(format_lasted(Duration::from_secs(secs)), text);
    }
}

/// A compact JWS whose claims are only `exp` (relative to T).
fn token(exp: i64) -> String {
    let part = |json: &str| B64URL.encode(json);
    format!(
        "{}.{}.{}",
        part(r#"{"alg":"ES256"}"#),
        part(&format!(r#"{{"exp":{}}}"#, T + exp)),
        part("sig")
    )
}

/// An identity source with fixed answers.
struct Fake {
    snapshots: watch::Sender<Arc<Snapshot>>,
    /// JWT-SVID answers by SPIFFE ID.
    jwt: std::collections::HashMap<String, Result<String, Status>>,
    outage: Option<IssuerOutage>,
    /// What the server said it delivered, and to which pid.
    delivered: std::sync::Mutex<Vec<(Option<i32>, Delivered)>>,
}

impl Fake {
    fn new(snapshot: Snapshot) -> Self {
        Fake {
            snapshots: watch::channel(Arc::new(snapshot)).0,
            jwt: Default::default(),
            outage: None,
            delivered: Default::default(),
        }
    }
}

#[tonic::async_trait]
impl IdentitySource for Fake {
    fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.subscribe()
    }

    async fn attest(&self, _: Caller) -> Result<Selectors, Status> {
        Ok(caller().into())
    }

    async fn fetch_jwt_svid(
        &self,
        identity: &Identity,
        _: &[String],
        _: SystemTime,
    ) -> Result<JwtSvid, Status> {
        self.jwt[&identity.spiffe_id].clone().map(|token| JwtSvid {
            expires_at: token_exp(&token),
            jti: crate::source::token_jti(&token).into(),
            token,
        })
    }

    fn issuer_outage(&self) -> Option<IssuerOutage> {
        self.outage.clone()
    }

    fn delivered(&self, delivery: Delivery<'_>) {
        let mut delivered = self.delivered.lock().unwrap();
        for credential in delivery.credentials {
            delivered.push((delivery.pid, credential));
        }
    }
}

/// The caller of a stream: pid 7, uid 1000.
fn admitted() -> Admitted {
    Admitted {
        selectors: caller().into(),
        pid: Some(7),
        uid: 1000,
    }
}

fn jwt_fake(answers: Vec<(&str, Result<String, Status>)>) -> (Arc<Fake>, Vec<Identity>) {
    let identities: Vec<_> = answers
        .iter()
        .map(|(n, _)| identity(n, None, None))
        .collect();
    let mut fake = Fake::new(snapshot(identities.clone()));
    fake.jwt = answers
        .into_iter()
        .map(|(n, answer)| (format!("spiffe://example.org/{n}"), answer))
        .collect();
    fake.outage = Some(outage());
    (Arc::new(fake), identities)
}

#[tokio::test]
async fn jwt_svids_are_returned_for_the_identities_that_have_one() {
    let (fake, identities) = jwt_fake(vec![
        ("expired", Ok(token(10))),
        (
            "down",
            Err(Status::unavailable("JWT-SVID cannot be signed right now")),
        ),
        ("valid", Ok(token(300))),
        ("denied", Err(Status::permission_denied("not authorized"))),
        ("valid-too", Ok(token(11))),
    ]);
    let (response, delivered) = jwt_response(&fake, identities, vec!["db".into()], at(10))
        .await
        .unwrap();
    let ids: Vec<_> = response
        .svids
        .iter()
        .map(|s| s.spiffe_id.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "spiffe://example.org/valid",
            "spiffe://example.org/valid-too"
        ]
    );
    assert_eq!(response.svids[0].svid, token(300));
    // What is delivered is exactly what is answered, by entry.
    let entries: Vec<_> = delivered.iter().map(|d| d.entry_id.as_str()).collect();
    assert_eq!(entries, ["valid", "valid-too"]);
}

#[tokio::test]
async fn jwt_svids_fail_only_when_none_can_be_had() {
    let (fake, identities) = jwt_fake(vec![
        ("expired", Ok(token(10))),
        (
            "down",
            Err(Status::unavailable("JWT-SVID cannot be signed right now")),
        ),
    ]);
    let status = jwt_response(&fake, identities, vec!["db".into()], at(72))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status
            .message()
            .contains("unreachable for 1m 12s: Unavailable: tcp connect error"),
        "{status:?}"
    );
    // A refusal on the merits is passed on as it is.
    let (fake, identities) = jwt_fake(vec![(
        "denied",
        Err(Status::permission_denied("not authorized")),
    )]);
    let status = jwt_response(&fake, identities, vec!["db".into()], at(0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

/// The `exp` of a test token.
fn token_exp(token: &str) -> SystemTime {
    let exp = crate::jws::parse(token)
        .ok()
        .and_then(|jws| jws.numeric_date("exp").ok().flatten())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(exp)
}

#[test]
fn a_jwt_svid_is_served_strictly_before_its_exp() {
    let svid = |token: String| JwtSvid {
        expires_at: token_exp(&token),
        jti: "j".into(),
        token,
    };
    assert!(unexpired_jwt(svid(token(10)), at(9)).is_ok());
    let at_exp = unexpired_jwt(svid(token(10)), at(10)).unwrap_err();
    assert_eq!(at_exp.code(), tonic::Code::Unavailable);
    assert!(unexpired_jwt(svid(token(10)), UNIX_EPOCH).is_ok());
}

/// Real time: an open stream drops an SVID when it expires, without any
/// new snapshot, then ends with UNAVAILABLE once none is left.
#[tokio::test]
async fn an_open_stream_drops_svids_as_they_expire() {
    use tokio_stream::StreamExt;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut short = identity("short", None, None);
    short.x509 = Some(Arc::new(X509Material::new(
        vec![1],
        Default::default(),
        now + 2,
    )));
    let mut long = identity("long", None, None);
    long.x509 = Some(Arc::new(X509Material::new(
        vec![2],
        Default::default(),
        now + 4,
    )));
    let mut fake = Fake::new(snapshot(vec![short, long]));
    fake.outage = Some(outage());
    let fake = Arc::new(fake);
    let api = WorkloadApi::new(fake.clone());
    let mut stream = api
        .stream(admitted(), x509_response, x509_fingerprint, x509_delivered)
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.svids.len(), 2);
    // The source is told of each SVID handed over, and to whom.
    let told: Vec<(Option<i32>, String)> = fake
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|(pid, d)| (*pid, d.entry_id.clone()))
        .collect();
    assert_eq!(told, [(Some(7), "short".into()), (Some(7), "long".into())]);
    let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an update when the first SVID expires")
        .unwrap()
        .unwrap();
    let ids: Vec<_> = next.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://example.org/long"]);
    assert!(SystemTime::now() >= unix_time(now + 2));
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends when the last SVID expires")
        .unwrap()
        .unwrap_err();
    assert_eq!(end.code(), tonic::Code::Unavailable);
    assert!(
        end.message()
            .contains("the issuer has been unreachable for"),
        "{end:?}"
    );
    assert!(stream.next().await.is_none());
    // A new call is refused at once.
    let refused = api
        .stream(admitted(), x509_response, x509_fingerprint, x509_delivered)
        .err()
        .expect("refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
}

fn foreign_bundle(sequence: u64) -> Arc<Bundle> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let mut bundle = Bundle::new(crate::id::TrustDomain::new("partner.org").unwrap());
    bundle.add_x509_authority(params.self_signed(&key).unwrap().der().to_vec());
    bundle.set_sequence(sequence);
    Arc::new(bundle)
}

/// Two callers: uid 1000 federates with partner.org, uid 2000 does not.
fn federated_snapshot(bundle: Arc<Bundle>) -> Snapshot {
    let partner = crate::id::TrustDomain::new("partner.org").unwrap();
    let mut federating = identity("federating", Some(100), None);
    federating.federates_with = vec![partner.clone()];
    let mut plain = identity("plain", Some(100), None);
    plain.selectors = vec![Selector::new("unix", "uid:2000")];
    let mut snap = snapshot(vec![federating, plain]);
    snap.federated.insert(partner, bundle);
    snap
}

#[test]
fn foreign_bundles_reach_only_callers_whose_identities_federate() {
    let bundle = foreign_bundle(1);
    let snap = federated_snapshot(bundle.clone());
    let other = vec![Selector::new("unix", "uid:2000")];
    let partner = crate::id::TrustDomain::new("partner.org").unwrap();

    let View::Ready(response) = x509_response(&snap, &caller(), at(0)).unwrap() else {
        panic!("not ready");
    };
    assert_eq!(
        response.federated_bundles.get("spiffe://partner.org"),
        Some(&bundle.x509_der_concat())
    );
    let View::Ready(response) = x509_response(&snap, &other, at(0)).unwrap() else {
        panic!("not ready");
    };
    assert!(response.federated_bundles.is_empty());

    let keys = |selectors: &[Selector]| {
        let mut keys: Vec<String> = bundle_map(&snap, selectors, |_| ())
            .unwrap()
            .into_keys()
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(&caller()),
        ["spiffe://example.org", "spiffe://partner.org"]
    );
    assert_eq!(keys(&other), ["spiffe://example.org"]);
    assert!(federates_with(&snap, &caller(), &partner));
    assert!(!federates_with(&snap, &other, &partner));
}

#[test]
fn bundle_fingerprints_change_with_a_foreign_bundles_keys() {
    let before = federated_snapshot(foreign_bundle(1));
    // New keys under the same sequence, as an operator may set them.
    let after = federated_snapshot(foreign_bundle(1));
    let other = vec![Selector::new("unix", "uid:2000")];
    for fingerprint in [bundles_fingerprint, x509_bundles_fingerprint] {
        assert_ne!(
            fingerprint(&before, &caller(), at(0)).hash,
            fingerprint(&after, &caller(), at(0)).hash
        );
        assert_eq!(
            fingerprint(&before, &other, at(0)).hash,
            fingerprint(&after, &other, at(0)).hash,
            "a caller that does not federate sees no change"
        );
    }
    assert_ne!(
        x509_fingerprint(&before, &caller(), at(0)).hash,
        x509_fingerprint(&after, &caller(), at(0)).hash
    );
}

#[test]
fn a_tokens_trust_domain_is_read_from_its_subject() {
    let claims = |sub: &str| B64URL.encode(serde_json::json!({ "sub": sub }).to_string());
    let header = B64URL.encode(r#"{"alg":"ES256","kid":"k"}"#);
    let token = |sub: &str| format!("{header}.{}.c2ln", claims(sub));
    assert_eq!(
        token_trust_domain(&token("spiffe://partner.org/db")).map(|td| td.to_string()),
        Some("partner.org".to_string())
    );
    assert_eq!(token_trust_domain(&token("not an id")), None);
    assert_eq!(token_trust_domain("x.y"), None);
}
