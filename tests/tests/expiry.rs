//! Expiry and rotation with a real issuer and agent in this process: very
//! short TTLs rotate on time without stalling longer ones, and no expired
//! X509-SVID, JWT-SVID or WIT-SVID is ever served, not even while the issuer
//! is down. Once everything a workload holds has expired, it is told
//! UNAVAILABLE with the length of the outage.
//!
//! Every credential received is checked against the time the request was
//! sent: the agent filters at serve time, which is no earlier, so a valid
//! answer always has `notAfter`/`exp` after that moment.
//!
//! The wall-clock jump test runs the agent binary under libfaketime and is
//! skipped, saying so, where libfaketime is not installed.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use der::Decode;
use proto::issuer as pb;
use proto::workload as wpb;
use sigil_tests::*;
use workload_api::client::{connect, EndpointAddress, WorkloadClient};

/// The leaf's serial number and notAfter.
fn leaf(svid: &wpb::X509svid) -> (Vec<u8>, SystemTime) {
    let chain = workload_api::bundle::split_der_concat(&svid.x509_svid).unwrap();
    let cert = x509_cert::Certificate::from_der(&chain[0]).unwrap();
    (
        cert.tbs_certificate.serial_number.as_bytes().to_vec(),
        cert.tbs_certificate.validity.not_after.to_system_time(),
    )
}

/// The `exp` of a compact JWS (JWT-SVID or WIT).
fn exp(token: &str) -> SystemTime {
    let jws = workload_api::jws::parse(token).unwrap();
    UNIX_EPOCH + Duration::from_secs(jws.numeric_date("exp").unwrap().unwrap())
}

/// Registers `spiffe_id` for this process's uid with both TTLs.
async fn register(node: &TestNode, spiffe_id: &str, x509_ttl: i64, jwt_ttl: i64) {
    create_at(
        &node.issuer.running.admin_socket_path,
        proto::admin::EntryFields {
            spiffe_id: spiffe_id.into(),
            parent_id: node.agent_id.clone(),
            selectors: vec![pb::Selector {
                r#type: "unix".into(),
                value: format!("uid:{}", current_uid()),
            }],
            x509_svid_ttl: x509_ttl,
            jwt_svid_ttl: jwt_ttl,
            ..Default::default()
        },
    )
    .await;
}

async fn client(node: &TestNode) -> WorkloadClient {
    connect(&EndpointAddress::Unix(node.socket.clone()))
        .await
        .unwrap()
}

/// One FetchX509SVID call: its first message, or the call's error.
async fn fetch_x509(client: &mut WorkloadClient) -> Result<wpb::X509svidResponse, tonic::Status> {
    let mut stream = client
        .fetch_x509svid(wpb::X509svidRequest {})
        .await?
        .into_inner();
    Ok(stream.message().await?.expect("a first message"))
}

/// Checks every X509-SVID in `response` is valid after `asked`; returns
/// them by SPIFFE ID.
fn valid_x509(
    response: &wpb::X509svidResponse,
    asked: SystemTime,
) -> HashMap<String, (Vec<u8>, SystemTime)> {
    response
        .svids
        .iter()
        .map(|svid| {
            let (serial, not_after) = leaf(svid);
            assert!(
                not_after > asked,
                "{} served with notAfter {not_after:?}, asked at {asked:?}",
                svid.spiffe_id
            );
            (svid.spiffe_id.clone(), (serial, not_after))
        })
        .collect()
}

/// The outage length an UNAVAILABLE message names, in seconds
/// ("... unreachable for 1m 12s: ...").
fn outage_secs(message: &str) -> u64 {
    let (_, rest) = message
        .split_once("the issuer has been unreachable for ")
        .unwrap_or_else(|| panic!("the message names the outage: {message}"));
    let (lasted, _) = rest.split_once(": ").unwrap();
    lasted
        .split(' ')
        .map(|part| {
            let (n, unit) = part.split_at(part.len() - 1);
            let n: u64 = n.parse().unwrap();
            match unit {
                "h" => n * 3600,
                "m" => n * 60,
                "s" => n,
                _ => panic!("unit in {lasted:?}"),
            }
        })
        .sum()
}

const SHORT: &str = "spiffe://example.org/short";
const LONG: &str = "spiffe://example.org/long";

#[tokio::test]
async fn a_one_second_ttl_rotates_beside_a_ten_second_one_and_nothing_expired_is_served() {
    let node = TestNode::start().await;
    register(&node, SHORT, 1, 0).await;
    register(&node, LONG, 10, 0).await;
    node.wait_for_svids(2).await;
    let mut client = client(&node).await;

    let mut fetches = 0;
    let mut short_seen = 0;
    let mut short_expiries = BTreeSet::new();
    // The long SVID's serials in the order seen, with their notAfter and
    // when each was first seen.
    let mut long_serials: Vec<(Vec<u8>, SystemTime, SystemTime)> = Vec::new();
    let end = Instant::now() + Duration::from_secs(12);
    while Instant::now() < end {
        let asked = SystemTime::now();
        let response = fetch_x509(&mut client).await.expect("a fetch is answered");
        let svids = valid_x509(&response, asked);
        fetches += 1;
        if let Some((_, not_after)) = svids.get(SHORT) {
            short_seen += 1;
            short_expiries.insert(*not_after);
        }
        let (serial, not_after) = svids
            .get(LONG)
            .unwrap_or_else(|| panic!("the 10 s SVID is always served: {:?}", svids.keys()));
        if long_serials.last().is_none_or(|(s, _, _)| s != serial) {
            long_serials.push((serial.clone(), *not_after, asked));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{fetches} fetches; the 1 s SVID in {short_seen}, with {} expiries; the 10 s SVID had {} serials",
        short_expiries.len(),
        long_serials.len()
    );
    assert!(
        long_serials.len() >= 2,
        "the 10 s SVID rotated within 12 s: {long_serials:?}"
    );
    for pair in long_serials.windows(2) {
        let (_, old_not_after, _) = &pair[0];
        let (_, _, replaced_at) = &pair[1];
        assert!(
            replaced_at < old_not_after,
            "the 10 s SVID was replaced before it expired"
        );
    }
    // A new notAfter every second: the 1 s SVID kept rotating all along.
    assert!(
        short_expiries.len() >= 10,
        "the 1 s SVID rotated every second: {} expiries",
        short_expiries.len()
    );
    // It may be missing between its expiry and its replacement, never long.
    assert!(
        short_seen * 2 >= fetches,
        "the 1 s SVID was served in {short_seen} of {fetches} fetches"
    );
    let status = node.agent.as_ref().unwrap().status.borrow().clone();
    assert!(
        status.next_rotation.is_some(),
        "a rotation is scheduled: {status:?}"
    );
    assert_eq!(status.issuer_unreachable_since, None);
}

/// A background reader of one FetchX509SVID stream: the SPIFFE IDs of each
/// message, checked for expiry on arrival, and how the stream ended.
fn watch_stream(
    mut stream: tonic::Streaming<wpb::X509svidResponse>,
) -> tokio::task::JoinHandle<(Vec<Vec<String>>, tonic::Status)> {
    tokio::spawn(async move {
        let mut messages = Vec::new();
        loop {
            let received = SystemTime::now() - Duration::from_millis(50);
            match stream.message().await {
                Ok(Some(response)) => {
                    // Checked against a moment just before arrival: the
                    // message was rendered no earlier than that.
                    let mut ids: Vec<_> = valid_x509(&response, received).into_keys().collect();
                    ids.sort();
                    messages.push(ids);
                }
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return (messages, status),
            }
        }
    })
}

#[tokio::test]
async fn while_the_issuer_is_down_only_unexpired_credentials_are_served() {
    let node =
        TestNode::start_with(|config| config.default_wit_svid_ttl = Duration::from_secs(6)).await;
    // X.509: 3 s and 8 s, so that the long one outlives the short one
    // wherever each is in its rotation when the issuer stops. JWT: 3 s and
    // 9 s (past half-life during the outage, so its refresh fails and the
    // cached token is served). WITs: 6 s.
    register(&node, SHORT, 3, 3).await;
    register(&node, LONG, 8, 9).await;
    node.wait_for_svids(2).await;
    let mut client = client(&node).await;
    let jwt_request = wpb::JwtsvidRequest {
        audience: vec!["db".into()],
        spiffe_id: String::new(),
    };
    let start = Instant::now();
    let (x509_expiry, jwts) = loop {
        let asked = SystemTime::now();
        let svids = valid_x509(&fetch_x509(&mut client).await.unwrap(), asked);
        let jwts = client
            .fetch_jwtsvid(jwt_request.clone())
            .await
            .unwrap()
            .into_inner()
            .svids;
        if svids.len() == 2 && jwts.len() == 2 {
            let expiry: HashMap<_, _> = svids.into_iter().map(|(id, (_, na))| (id, na)).collect();
            break (expiry, jwts);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "both identities are served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let jwt_expiry: HashMap<_, _> = jwts
        .iter()
        .map(|s| (s.spiffe_id.clone(), exp(&s.svid)))
        .collect();
    let stream = client
        .fetch_x509svid(wpb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let watcher = watch_stream(stream);

    let TestNode {
        issuer,
        agent,
        dir: _dir,
        ..
    } = node;
    let TestIssuer {
        dir: _issuer_dir,
        running,
    } = issuer;
    // The issuer refuses connections from the start of its shutdown, which
    // then waits a while for open streams.
    let down = Instant::now();
    running.shutdown().await;

    let mut x509_failure = None;
    let mut served_long_alone = false;
    let mut jwt_long_alone = false;
    let mut jwt_failure = None;
    let mut wit_failure = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while jwt_failure.is_none() || x509_failure.is_none() || wit_failure.is_none() {
        assert!(Instant::now() < deadline, "everything expired in time");
        let asked = SystemTime::now();
        if x509_failure.is_none() {
            match fetch_x509(&mut client).await {
                Ok(response) => {
                    let ids: BTreeSet<_> = valid_x509(&response, asked).into_keys().collect();
                    served_long_alone |= ids == BTreeSet::from([LONG.to_owned()]);
                }
                Err(status) => x509_failure = Some((status, asked)),
            }
        }
        if jwt_failure.is_none() {
            match client.fetch_jwtsvid(jwt_request.clone()).await {
                Ok(response) => {
                    let svids = response.into_inner().svids;
                    for svid in &svids {
                        assert!(
                            exp(&svid.svid) > asked,
                            "{} JWT-SVID expired",
                            svid.spiffe_id
                        );
                    }
                    jwt_long_alone |= svids.len() == 1 && svids[0].spiffe_id == LONG;
                }
                Err(status) => jwt_failure = Some((status, asked)),
            }
        }
        if wit_failure.is_none() {
            match client.fetch_witsvid(wpb::WitsvidRequest::default()).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    match stream.message().await {
                        Ok(Some(response)) => {
                            for svid in &response.svids {
                                assert!(
                                    exp(&svid.wit_svid) > asked,
                                    "{} WIT expired",
                                    svid.spiffe_id
                                );
                            }
                        }
                        Ok(None) => panic!("a WIT stream without a message"),
                        Err(status) => wit_failure = Some(status),
                    }
                }
                Err(status) => wit_failure = Some(status),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "every credential had expired {:?} after the issuer stopped; X.509: {:?}",
        down.elapsed(),
        x509_failure.as_ref().map(|(s, _)| s.message())
    );

    let (status, failed_at) = x509_failure.unwrap();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("every SVID for this workload has expired"),
        "{status:?}"
    );
    let lasted = outage_secs(status.message());
    assert!(
        lasted >= 1 && lasted <= down.elapsed().as_secs() + 1,
        "an outage of {lasted} s named, {:?} since the issuer stopped",
        down.elapsed()
    );
    assert!(
        failed_at + Duration::from_secs(1) >= x509_expiry[LONG],
        "the 8 s SVID was served until it expired"
    );
    assert!(
        served_long_alone,
        "the 8 s SVID was served alone after the 3 s one expired"
    );

    let (status, failed_at) = jwt_failure.unwrap();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    outage_secs(status.message());
    assert!(
        failed_at + Duration::from_secs(1) >= jwt_expiry[LONG],
        "the 9 s JWT-SVID was served until it expired"
    );
    assert!(
        jwt_long_alone,
        "the 9 s JWT-SVID was served alone after the 3 s one expired"
    );
    let wit_status = wit_failure.unwrap();
    assert_eq!(
        wit_status.code(),
        tonic::Code::Unavailable,
        "{wit_status:?}"
    );

    let (messages, end) = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the open stream ended")
        .unwrap();
    let both = vec![LONG.to_owned(), SHORT.to_owned()];
    assert_eq!(messages.first(), Some(&both), "{messages:?}");
    assert!(
        messages.contains(&vec![LONG.to_owned()]),
        "the open stream was sent the 8 s SVID alone when the 3 s one expired: {messages:?}"
    );
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    outage_secs(end.message());

    let agent = agent.unwrap();
    assert!(agent.status.borrow().issuer_unreachable_since.is_some());
    agent.shutdown().await;
}

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The agent process, killed when the test ends however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A host resumed from suspend: the agent's wall clock jumps 40 s forward
/// while its monotonic clock does not (libfaketime with
/// FAKETIME_DONT_FAKE_MONOTONIC). The 60 s SVID's rotation time (24-30 s
/// after minting) is then past, and the agent rotates within seconds rather
/// than sleeping out a timer computed before the jump.
#[tokio::test]
async fn a_wall_clock_jump_forward_is_noticed_within_seconds() {
    if !std::path::Path::new(FAKETIME).exists() {
        eprintln!("skipped: {FAKETIME} is absent (apt-get install faketime)");
        return;
    }
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node_id = "spiffe://example.org/node/suspended";
    let token = issuer
        .admin()
        .await
        .create_join_token(proto::admin::CreateJoinTokenRequest {
            ttl: 0,
            spiffe_id: node_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    register_at(
        &issuer.running.admin_socket_path,
        node_id,
        "spiffe://example.org/sleeper",
        60,
        "",
    )
    .await;
    let bundle = dir.path().join("bundle.json");
    std::fs::write(&bundle, issuer.bundle().to_jwks_json()).unwrap();
    let offset = dir.path().join("faketime.rc");
    std::fs::write(&offset, "+0\n").unwrap();
    let socket = dir.path().join("api.sock");
    let log = dir.path().join("agent.log");
    let output = std::fs::File::create(&log).unwrap();
    let _agent = Child(
        std::process::Command::new(binary("sigil-agent"))
            .arg("run")
            .args(["--trust-domain", TRUST_DOMAIN, "--issuer-address"])
            .arg(issuer.running.agent_api_address.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("agent"))
            .arg("--socket-path")
            .arg(&socket)
            .arg("--trust-bundle")
            .arg(&bundle)
            .args(["--join-token", &token, "--log-level", "info"])
            .env("LD_PRELOAD", FAKETIME)
            .env("FAKETIME_TIMESTAMP_FILE", &offset)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap(),
    );
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = Instant::now();
    let mut stream = loop {
        if let Ok(mut client) = connect(&EndpointAddress::Unix(socket.clone())).await {
            if let Ok(Ok(opened)) = tokio::time::timeout(
                Duration::from_secs(15),
                client.fetch_x509svid(wpb::X509svidRequest {}),
            )
            .await
            {
                break opened.into_inner();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the agent serves: {}",
            agent_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let first = stream.message().await.unwrap().unwrap();
    let (serial, _) = leaf(&first.svids[0]);

    std::fs::write(&offset, "+40\n").unwrap();
    let jumped = Instant::now();
    let rotated = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            let message = stream.message().await.unwrap().unwrap();
            let (next, _) = leaf(&message.svids[0]);
            if next != serial {
                return next;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no rotation within 8 s of a 40 s clock jump; agent log:\n{}",
            agent_log()
        )
    });
    assert_ne!(rotated, serial);
    eprintln!("rotated {:?} after the clock jump", jumped.elapsed());
}
