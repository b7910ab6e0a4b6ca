//! Owner revocation in the WIMSE verifier and layer: the layer follows a
//! revocation list served over real HTTP/1.1 by a small in-test issuer
//! (with the issuer's `?after=SEQ` long poll), and refuses WITs whose owner
//! the list revokes, or, while it holds no current list, every owner-bound
//! WIT.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use workload_api::bundle::{Bundle, JwtAuthority};
use workload_api::jwk::Algorithm;
use workload_api::keypair::KeyPair;
use workload_api::owner::OwnerBinding;
use workload_api::revocation::{self, RevocationClaims, RevocationError, RevokedOwner};
use workload_api::wimse::layer::{verify_request_at, WimseLayer};
use workload_api::wimse::revocations::FollowError;
use workload_api::wimse::wit::{Confirmation, WitClaims};
use workload_api::wimse::wpt::{self, BoundTokens};
use workload_api::wimse::{AcceptedForms, Verifier, VerifierConfig, WimseError};
use workload_api::TrustDomain;

const SVC: &str = "https://svc.example.org/api";
const ALICE: &str = "mailto:alice@example.org";
const BOB: &str = "mailto:bob@example.org";
/// How long a revocation may take to reach the layer.
const PROMPTLY: Duration = Duration::from_secs(5);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

/// An ES256 key, both as a [`KeyPair`] (to sign WITs) and as a
/// jsonwebtoken key (to sign revocation lists, as the issuer does).
struct Authority {
    pair: KeyPair,
    encoding: jsonwebtoken::EncodingKey,
}

impl Authority {
    fn generate() -> Self {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        Authority {
            pair: KeyPair::from_pkcs8(Algorithm::ES256, pkcs8.as_ref()).unwrap(),
            encoding: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
        }
    }
}

/// The trust domain's WIT authority ("k1"), a workload key, and WITs.
struct Setup {
    authority: Authority,
    workload: KeyPair,
    now: u64,
}

impl Setup {
    fn new() -> Self {
        Setup {
            authority: Authority::generate(),
            workload: KeyPair::generate(Algorithm::ES256).unwrap(),
            now: now(),
        }
    }

    fn verifier(&self) -> Arc<Verifier> {
        let mut bundle = Bundle::new(td());
        bundle.add_wit_authority(JwtAuthority {
            kid: "k1".into(),
            key: self.authority.pair.public_key().clone(),
        });
        let verifier = Verifier::new(VerifierConfig::new(vec!["https://svc.example.org".into()]));
        verifier.set_bundle(bundle);
        Arc::new(verifier)
    }

    /// The client's WIT, bound to `owner` when there is one.
    fn wit(&self, owner: Option<OwnerBinding>) -> String {
        let claims = WitClaims {
            sub: "spiffe://example.org/client".into(),
            iss: None,
            iat: self.now,
            nbf: None,
            exp: self.now + 3600,
            jti: "wit-1".into(),
            cnf: Confirmation {
                jwk: self.workload.public_jwk(),
            },
            owner,
        };
        let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "wit+jwt"});
        self.authority.pair.sign_jws(&header, &claims)
    }

    /// A fresh WPT for `wit` (each has its own `jti`).
    fn wpt(&self, wit: &str) -> String {
        wpt::mint(wit, &self.workload, SVC, 60, &BoundTokens::default(), now())
    }

    /// A revocation list `seq` revoking `owners` (by id, with a thumbprint
    /// no WIT here has), valid for an hour, signed by the authority.
    fn list(&self, seq: u64, owners: &[&str]) -> String {
        self.list_with(seq, owners, self.now + 3600, "k1", &self.authority)
    }

    fn list_with(
        &self,
        seq: u64,
        owners: &[&str],
        exp: u64,
        kid: &str,
        signer: &Authority,
    ) -> String {
        let claims = RevocationClaims {
            iss: "spiffe://example.org".into(),
            seq,
            iat: self.now,
            exp,
            owners: owners
                .iter()
                .map(|id| RevokedOwner {
                    id: (*id).into(),
                    jkt: "bm90LWEta2V5".into(),
                    revoked_at: self.now,
                })
                .collect(),
        };
        revocation::sign(&claims, kid, Algorithm::ES256, &signer.encoding).unwrap()
    }
}

fn owner(id: &str, thumbprint: u8) -> OwnerBinding {
    OwnerBinding {
        owner_id: id.into(),
        key_thumbprint: [thumbprint; 32],
        consent_sha256: workload_api::owner::consent_sha256("consent.jws.sig"),
        actors: Vec::new(),
    }
}

/// What the in-test issuer publishes: the `seq` its long poll compares
/// `after` with, and the body (`None`: 503, as before the first list).
#[derive(Debug, Clone, Default)]
struct Published {
    seq: u64,
    body: Option<String>,
}

/// What the in-test issuer saw and said, in order.
#[derive(Debug, Default)]
struct Log {
    /// Each request's `after`, on arrival.
    requests: Vec<Option<u64>>,
    /// Each answer's body, once written.
    answers: Vec<String>,
}

/// A minimal issuer revocation endpoint speaking HTTP/1.1 over TCP: one
/// request per connection, `?after=SEQ` waits (up to 30 s, as the issuer's)
/// for a publication whose seq is greater.
struct TestIssuer {
    url: String,
    published: watch::Sender<Published>,
    log: Arc<Mutex<Log>>,
}

impl TestIssuer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/revocations", listener.local_addr().unwrap());
        let (published, _) = watch::channel(Published::default());
        let log = Arc::new(Mutex::new(Log::default()));
        let serving = published.clone();
        let kept = log.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let subscription = serving.subscribe();
                let log = kept.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, subscription, &log).await;
                });
            }
        });
        TestIssuer {
            url,
            published,
            log,
        }
    }

    fn publish(&self, seq: u64, body: String) {
        self.published.send_replace(Published {
            seq,
            body: Some(body),
        });
    }

    fn requests(&self) -> Vec<Option<u64>> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Waits until the follower was answered `body` and then asked again,
    /// so it has dealt with that answer. The follower asks one thing at a
    /// time, so answer `i` answers request `i`.
    async fn wait_until_dealt_with(&self, body: &str) {
        let start = Instant::now();
        loop {
            {
                let log = self.log.lock().unwrap();
                if let Some(i) = log.answers.iter().position(|a| a == body) {
                    if log.requests.len() > i + 1 {
                        return;
                    }
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the follower did not ask again: {:?}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    mut published: watch::Receiver<Published>,
    log: &Mutex<Log>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.strip_suffix(" HTTP/1.1"))
        .unwrap_or_default()
        .to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let after = query
        .strip_prefix("after=")
        .map(|seq| seq.parse::<u64>().unwrap());
    log.lock().unwrap().requests.push(after);
    let (status, content_type, body) = if path != "/v1/revocations" {
        ("404 Not Found", "text/plain", "no such path".to_owned())
    } else {
        if let Some(after) = after {
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                published.wait_for(|p| p.seq > after),
            )
            .await;
        }
        match published.borrow().body.clone() {
            Some(body) => ("200 OK", "application/jwt", body),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "no revocation list is published yet".to_owned(),
            ),
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    log.lock().unwrap().answers.push(body);
    Ok(())
}

type Body = http_body_util::Full<Bytes>;

/// A request in the Authorization form (or the header form).
fn request(wit: &str, wpt: &str, header_form: bool) -> http::Request<Body> {
    let builder = http::Request::builder()
        .uri("/api")
        .header("workload-identity-token", wit);
    let builder = if header_form {
        builder.header("workload-proof-token", wpt)
    } else {
        builder.header("authorization", format!("WPT {wpt}"))
    };
    builder.body(Body::default()).unwrap()
}

/// What the layer answered: status, and the problem's `check` or the
/// caller the inner service saw.
async fn send(layer: &WimseLayer, request: http::Request<Body>) -> (u16, String) {
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};
    let inner = tower::service_fn(|request: http::Request<Body>| async move {
        let caller = request
            .extensions()
            .get::<OwnerBinding>()
            .map_or("no owner".to_owned(), |o| o.owner_id.clone());
        Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(caller)))
    });
    let response = layer.layer(inner).oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    if status == 200 {
        return (status, text);
    }
    let problem: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(problem["status"], status, "{text}");
    (status, problem["check"].as_str().unwrap().to_owned())
}

async fn send_wpt(layer: &WimseLayer, s: &Setup, wit: &str) -> (u16, String) {
    send(layer, request(wit, &s.wpt(wit), false)).await
}

/// Sends `wit` until the answer is `expected`; how long that took.
async fn until(layer: &WimseLayer, s: &Setup, wit: &str, expected: (u16, &str)) -> Duration {
    let start = Instant::now();
    loop {
        let answer = send_wpt(layer, s, wit).await;
        if (answer.0, answer.1.as_str()) == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PROMPTLY,
            "still {answer:?} after {:?}, expected {expected:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the verifier holds list `seq`.
async fn until_held(verifier: &Verifier, seq: u64) {
    let start = Instant::now();
    while verifier.revocations(&td()).map(|l| l.seq) != Some(seq) {
        assert!(start.elapsed() < PROMPTLY, "list {seq} never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_follows_the_list_and_refuses_a_revoked_owner_at_once() {
    let s = Setup::new();
    let issuer = TestIssuer::start().await;
    let verifier = s.verifier();
    let layer = WimseLayer::new(verifier.clone())
        .following_revocations(&issuer.url)
        .unwrap();
    assert!(verifier.requires_revocations());
    let alice = s.wit(Some(owner(ALICE, 1)));
    let bob = s.wit(Some(owner(BOB, 2)));
    let ownerless = s.wit(None);

    // No list yet (the issuer answers 503): owner-bound WITs are refused,
    // fail closed; a WIT without an owner is not concerned.
    assert_eq!(
        send_wpt(&layer, &s, &alice).await,
        (403, "revocations".into())
    );
    assert_eq!(
        send_wpt(&layer, &s, &ownerless).await,
        (200, "no owner".into())
    );

    // A list that revokes someone else: Alice passes.
    issuer.publish(1, s.list(1, &["mailto:mallory@example.org"]));
    until(&layer, &s, &alice, (200, ALICE)).await;
    until_held(&verifier, 1).await;

    // The follower's requests: the first without `after`, then `after` the
    // seq it holds.
    let requests = issuer.requests();
    assert_eq!(requests[0], None, "{requests:?}");
    let start = Instant::now();
    while !issuer.requests().contains(&Some(1)) {
        assert!(start.elapsed() < PROMPTLY, "{:?}", issuer.requests());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Alice is revoked: her WIT, cached since it passed, is refused as soon
    // as the long poll brings the news.
    issuer.publish(2, s.list(2, &["mailto:mallory@example.org", ALICE]));
    let took = until(&layer, &s, &alice, (403, "wit.owner_revoked")).await;
    assert!(took < PROMPTLY, "{took:?}");
    // In every form: the header form and HTTP signatures too get 403.
    assert_eq!(
        send(&layer, request(&alice, &s.wpt(&alice), true)).await,
        (403, "wit.owner_revoked".into())
    );
    assert_eq!(
        send(&layer, signed_request(&s, &alice)).await,
        (403, "wit.owner_revoked".into())
    );
    // Others are not affected.
    assert_eq!(send_wpt(&layer, &s, &bob).await, (200, BOB.into()));
    assert_eq!(
        send_wpt(&layer, &s, &ownerless).await,
        (200, "no owner".into())
    );
    assert_eq!(
        send(&layer, signed_request(&s, &bob)).await,
        (200, BOB.into())
    );
}

/// A GET of /api signed with HTTP Message Signatures by the workload key.
fn signed_request(s: &Setup, wit: &str) -> http::Request<Body> {
    use workload_api::wimse::httpsig::{self, RequestSigning};
    let mut headers = HeaderMap::new();
    headers.insert("workload-identity-token", wit.parse().unwrap());
    let signing = RequestSigning {
        audience: SVC.into(),
        lifetime_secs: 60,
        sign_response: false,
        now: now(),
    };
    httpsig::sign_request("GET", "/api", &mut headers, &s.workload, &signing).unwrap();
    let mut request = http::Request::builder()
        .uri("/api")
        .body(Body::default())
        .unwrap();
    *request.headers_mut() = headers;
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_list_refuses_owner_bound_wits_until_a_current_one_arrives() {
    let s = Setup::new();
    let issuer = TestIssuer::start().await;
    // Past its exp: it revokes no one, yet cannot vouch for anyone.
    issuer.publish(1, s.list_with(1, &[], s.now - 1, "k1", &s.authority));
    let verifier = s.verifier();
    let layer = WimseLayer::new(verifier.clone())
        .following_revocations(&issuer.url)
        .unwrap();
    until_held(&verifier, 1).await;
    let alice = s.wit(Some(owner(ALICE, 1)));
    assert_eq!(
        send_wpt(&layer, &s, &alice).await,
        (403, "revocations".into())
    );
    let ownerless = s.wit(None);
    assert_eq!(
        send_wpt(&layer, &s, &ownerless).await,
        (200, "no owner".into())
    );
    // The problem says why.
    let err = verifier.validate_wit(&alice, now()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no current revocation list from example.org; owner-bound WITs are refused until one arrives"
    );

    // A current list: Alice passes again.
    issuer.publish(2, s.list(2, &[]));
    until(&layer, &s, &alice, (200, ALICE)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_older_list_from_the_url_is_refused_and_the_held_one_kept() {
    let s = Setup::new();
    let issuer = TestIssuer::start().await;
    issuer.publish(5, s.list(5, &[ALICE]));
    let verifier = s.verifier();
    let layer = WimseLayer::new(verifier.clone())
        .following_revocations(&issuer.url)
        .unwrap();
    until_held(&verifier, 5).await;
    let alice = s.wit(Some(owner(ALICE, 1)));
    assert_eq!(
        send_wpt(&layer, &s, &alice).await,
        (403, "wit.owner_revoked".into())
    );

    // A newer list signed by a key the bundle does not hold, which would
    // clear Alice: refused, list 5 kept.
    let stranger = Authority::generate();
    let forged = s.list_with(6, &[], s.now + 3600, "k9", &stranger);
    issuer.publish(6, forged.clone());
    issuer.wait_until_dealt_with(&forged).await;
    assert_eq!(verifier.revocations(&td()).unwrap().seq, 5);
    assert_eq!(
        send_wpt(&layer, &s, &alice).await,
        (403, "wit.owner_revoked".into())
    );

    // An older list (a server going back; its long poll says it is news):
    // refused, list 5 kept.
    let older = s.list(4, &[]);
    issuer.publish(7, older.clone());
    issuer.wait_until_dealt_with(&older).await;
    assert_eq!(verifier.revocations(&td()).unwrap().seq, 5);
    assert_eq!(
        send_wpt(&layer, &s, &alice).await,
        (403, "wit.owner_revoked".into())
    );
    // The follower kept asking after the seq it holds.
    assert!(
        issuer.requests().iter().skip(1).all(|a| *a == Some(5)),
        "{:?}",
        issuer.requests()
    );
}

#[test]
fn set_revocations_verifies_orders_and_applies_lists_to_cached_wits() {
    let s = Setup::new();
    let verifier = s.verifier();
    let alice = s.wit(Some(owner(ALICE, 1)));
    let ownerless = s.wit(None);
    let verify = |wit: &str| {
        let request = request(wit, &s.wpt(wit), false);
        verify_request_at(&verifier, &request, AcceptedForms::Both, SystemTime::now())
    };

    // Not following and no list: owners are not looked up.
    assert!(!verifier.requires_revocations());
    assert_eq!(verify(&alice).unwrap().owner().unwrap().owner_id, ALICE);

    // A list revoking Alice applies to her cached WIT, following or not.
    assert_eq!(verifier.set_revocations(&s.list(3, &[ALICE])), Ok(3));
    let err = verify(&alice).unwrap_err();
    assert_eq!(
        err,
        WimseError::OwnerRevoked {
            owner: ALICE.into()
        }
    );
    assert_eq!(err.check(), "wit.owner_revoked");
    assert_eq!(
        err.to_string(),
        "the WIT's owner mailto:alice@example.org is revoked"
    );
    assert!(verify(&ownerless).is_ok());
    assert!(matches!(
        verifier.validate_wit(&alice, now()),
        Err(WimseError::OwnerRevoked { .. })
    ));

    // Revoked by key: a list naming Alice's thumbprint under another id.
    let by_key = RevocationClaims {
        iss: "spiffe://example.org".into(),
        seq: 4,
        iat: s.now,
        exp: s.now + 3600,
        owners: vec![RevokedOwner {
            id: "mailto:someone-else@example.org".into(),
            jkt: owner(ALICE, 1).key_thumbprint_b64(),
            revoked_at: s.now,
        }],
    };
    let by_key = revocation::sign(&by_key, "k1", Algorithm::ES256, &s.authority.encoding).unwrap();
    assert_eq!(verifier.set_revocations(&by_key), Ok(4));
    assert_eq!(verify(&alice).unwrap_err().check(), "wit.owner_revoked");

    // An older list is refused and the held one kept.
    assert_eq!(
        verifier.set_revocations(&s.list(2, &[])),
        Err(RevocationError::Older { seq: 2, held: 4 })
    );
    assert_eq!(verifier.revocations(&td()).unwrap().seq, 4);
    // Unknown key, forged signature, unknown trust domain: refused, kept.
    let stranger = Authority::generate();
    assert!(matches!(
        verifier.set_revocations(&s.list_with(9, &[], s.now + 60, "k9", &stranger)),
        Err(RevocationError::UnknownKey { .. })
    ));
    assert_eq!(
        verifier.set_revocations(&s.list_with(9, &[], s.now + 60, "k1", &stranger)),
        Err(RevocationError::BadSignature)
    );
    let foreign = RevocationClaims {
        iss: "spiffe://other.org".into(),
        seq: 9,
        iat: s.now,
        exp: s.now + 60,
        owners: Vec::new(),
    };
    let foreign =
        revocation::sign(&foreign, "k1", Algorithm::ES256, &s.authority.encoding).unwrap();
    assert!(matches!(
        verifier.set_revocations(&foreign),
        Err(RevocationError::UnknownKey { trust_domain, .. }) if trust_domain == "other.org"
    ));
    assert!(matches!(
        verifier.set_revocations("not.a.jws"),
        Err(RevocationError::Malformed(_))
    ));
    assert_eq!(verifier.revocations(&td()).unwrap().seq, 4);
    assert_eq!(verify(&alice).unwrap_err().check(), "wit.owner_revoked");

    // The same seq again is taken (the issuer's long poll answers with the
    // current list when nothing changed); a newer one clears Alice.
    assert_eq!(verifier.set_revocations(&by_key), Ok(4));
    assert_eq!(verifier.set_revocations(&s.list(5, &[])), Ok(5));
    assert!(verify(&alice).is_ok());

    // Once revocations are required, a stale list refuses owner-bound WITs.
    verifier.require_revocations();
    assert!(verify(&alice).is_ok());
    assert_eq!(
        verifier.set_revocations(&s.list_with(6, &[], s.now - 1, "k1", &s.authority)),
        Ok(6)
    );
    let err = verify(&alice).unwrap_err();
    assert_eq!(
        err,
        WimseError::RevocationsUnavailable {
            trust_domain: "example.org".into()
        }
    );
    assert_eq!(err.check(), "revocations");
    assert!(verify(&ownerless).is_ok());
}

#[test]
fn following_refuses_https_and_needs_a_runtime() {
    let s = Setup::new();
    let verifier = s.verifier();
    let err = WimseLayer::new(verifier.clone())
        .following_revocations("https://issuer.example.org/v1/revocations")
        .unwrap_err();
    assert!(matches!(err, FollowError::Https { .. }), "{err}");
    // Outside a runtime: an error, no panic, and nothing changed.
    assert_eq!(
        WimseLayer::new(verifier.clone())
            .following_revocations("http://127.0.0.1:9/v1/revocations")
            .unwrap_err(),
        FollowError::NoRuntime
    );
    assert!(!verifier.requires_revocations());
}
