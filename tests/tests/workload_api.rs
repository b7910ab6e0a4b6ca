//! The SPIFFE Workload API end to end: a real issuer and a real agent, with the
//! `spiffe` crate, the Python `spiffe` package, openssl and the `sigil-agent`
//! client commands on the other end.

use std::process::Command;
use std::time::{Duration, Instant};

use proto::workload as pb;
use sigil_tests::*;
use spiffe::{TrustDomain as SpiffeTd, WorkloadApiClient, X509Source};
use tonic::Code;

const WEB: &str = "spiffe://example.org/web";
const ADMIN: &str = "spiffe://example.org/admin";

#[tokio::test]
async fn rust_spiffe_crate_fetches_validates_and_sees_rotations() {
    let node = TestNode::start().await;
    node.register(WEB, 4, "internal").await;
    node.register(ADMIN, 3600, "external").await;
    node.wait_for_svids(2).await;

    let client = WorkloadApiClient::connect_to(node.endpoint())
        .await
        .unwrap();
    let svids = client.fetch_all_x509_svids().await.unwrap();
    let listed: Vec<(String, Option<&str>)> = svids
        .iter()
        .map(|s| (s.spiffe_id().to_string(), s.hint()))
        .collect();
    assert_eq!(
        listed,
        [
            (WEB.to_owned(), Some("internal")),
            (ADMIN.to_owned(), Some("external"))
        ],
        "both entries, in registration order, with their hints"
    );
    let td = SpiffeTd::new("example.org").unwrap();
    let bundles = client.fetch_x509_bundles().await.unwrap();
    assert!(bundles.get(&td).is_some());
    let jwt = client.fetch_jwt_svid(["db"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), WEB);
    let validated = client.validate_jwt_token("db", jwt.token()).await.unwrap();
    assert_eq!(validated.spiffe_id().to_string(), WEB);
    assert!(client
        .validate_jwt_token("other", jwt.token())
        .await
        .is_err());
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    assert!(jwt_bundles.get(&td).is_some());

    // The default SVID rotates at about half its 4 s life; the source's open
    // stream must deliver at least two rotations.
    let source = X509Source::builder()
        .endpoint(node.endpoint())
        .build()
        .await
        .unwrap();
    let mut updates = source.updated();
    let first = source.svid().unwrap().leaf().as_bytes().to_vec();
    let mut seen = vec![first];
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 && Instant::now() < deadline {
        tokio::time::timeout(Duration::from_secs(10), updates.changed())
            .await
            .expect("an update within 10 s")
            .unwrap();
        let leaf = source.svid().unwrap().leaf().as_bytes().to_vec();
        if !seen.contains(&leaf) {
            seen.push(leaf);
        }
    }
    assert!(seen.len() >= 3, "saw {} distinct SVIDs", seen.len());
    source.shutdown().await;
}

#[tokio::test]
async fn python_spiffe_client_works_unmodified() {
    let node = TestNode::start().await;
    node.register(WEB, 4, "internal").await;
    node.register(ADMIN, 3600, "").await;
    node.wait_for_svids(2).await;
    let endpoint = node.endpoint();
    let script = workspace_root().join("tests/python/workload_client.py");
    let output = tokio::task::spawn_blocking(move || {
        run(Command::new(python())
            .arg(script)
            .arg(endpoint)
            .arg(format!("{WEB},{ADMIN}"))
            .arg("spiffe://example.org/db")
            .arg("2"))
    })
    .await
    .unwrap();
    let (ok, stdout, stderr) = output;
    assert!(ok, "python client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("X509Source saw"), "{stdout}");
}

/// A raw client: no security header unless asked.
async fn raw_client(
    node: &TestNode,
) -> pb::spiffe_workload_api_client::SpiffeWorkloadApiClient<tonic::transport::Channel> {
    pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
        workload_api::client::unix_channel(&node.socket)
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn entitlement_and_header_rules() {
    let node = TestNode::start().await;
    node.register(WEB, 3600, "").await;
    node.wait_for_svids(1).await;

    // Without the security header: InvalidArgument, on every RPC.
    let mut raw = raw_client(&node).await;
    let missing = raw
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(missing.message(), "security header missing from request");
    let missing = raw
        .validate_jwtsvid(pb::ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);

    let mut client = workload_api::client::connect(&workload_api::client::EndpointAddress::Unix(
        node.socket.clone(),
    ))
    .await
    .unwrap();
    let no_audience = client
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_audience.code(), Code::InvalidArgument);
    let not_mine = client
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience: vec!["x".into()],
            spiffe_id: ADMIN.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(not_mine.code(), Code::PermissionDenied);
    let garbage = client
        .validate_jwtsvid(pb::ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "not.a.jwt".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    let wit_not_mine = client
        .fetch_witsvid(pb::WitsvidRequest {
            spiffe_id: ADMIN.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wit_not_mine.code(), Code::PermissionDenied);
    let wit_missing_header = raw
        .fetch_witsvid(pb::WitsvidRequest::default())
        .await
        .unwrap_err();
    assert_eq!(wit_missing_header.code(), Code::InvalidArgument);

    // Audiences are bounded in count and size; at the limits a token comes.
    let jwt = |audience: Vec<String>| {
        let mut client = client.clone();
        async move {
            client
                .fetch_jwtsvid(pb::JwtsvidRequest {
                    audience,
                    spiffe_id: String::new(),
                })
                .await
        }
    };
    let max = workload_api::server::MAX_AUDIENCE_BYTES;
    let widest = (0..workload_api::server::MAX_AUDIENCES)
        .map(|i| format!("{i:0>max$}"))
        .collect::<Vec<_>>();
    let signed = jwt(widest.clone()).await.unwrap().into_inner();
    assert_eq!(signed.svids.len(), 1);
    let mut too_many = widest;
    too_many.push("one more".into());
    let refused = jwt(too_many).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(refused.message(), "audience: 33 audiences; at most 32");
    let refused = jwt(vec!["a".repeat(max + 1)]).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "audience: 2049 bytes; at most 2048 per audience"
    );
    let refused = client
        .validate_jwtsvid(pb::ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "x".repeat(workload_api::server::MAX_JWT_BYTES + 1),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().starts_with("svid: "),
        "{}",
        refused.message()
    );

    // A caller with another uid is entitled to nothing.
    let socket = node.socket.clone();
    let (ok, _, stderr) = tokio::task::spawn_blocking(move || {
        use std::os::unix::process::CommandExt;
        run(Command::new(binary("sigil-agent"))
            .args(["api", "fetch", "x509", "--socket-path"])
            .arg(&socket)
            .uid(4242)
            .gid(4242))
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        stderr.contains("no identity issued") && stderr.contains("PermissionDenied"),
        "{stderr}"
    );
}

#[tokio::test]
async fn cli_commands_and_openssl() {
    let node = TestNode::start().await;
    node.register(WEB, 3600, "").await;
    node.wait_for_svids(1).await;
    let out = tempfile::tempdir().unwrap();
    let endpoint = node.endpoint();
    let dir = out.path().to_path_buf();
    let results = tokio::task::spawn_blocking(move || {
        let agent = |args: &[&str]| {
            run(Command::new(binary("sigil-agent"))
                .args(args)
                .env("SPIFFE_ENDPOINT_SOCKET", &endpoint))
        };
        let fetched = agent(&["api", "fetch", "x509", "--write", dir.to_str().unwrap()]);
        let jwt = agent(&["api", "fetch", "jwt", "--audience", "db"]);
        let token = jwt.1.lines().nth(1).unwrap_or_default().trim().to_owned();
        let valid = agent(&[
            "api",
            "validate",
            "jwt",
            "--audience",
            "db",
            "--token",
            &token,
        ]);
        let invalid = agent(&[
            "api",
            "validate",
            "jwt",
            "--audience",
            "nope",
            "--token",
            &token,
        ]);
        let bundles = agent(&["api", "fetch", "bundles"]);
        let health = agent(&["healthcheck"]);
        // Every data command speaks JSON too, times as Unix seconds.
        let as_json = |args: &[&str]| -> serde_json::Value {
            let (ok, out, err) = agent(&[args, &["--json"][..]].concat());
            assert!(ok, "{args:?}: {err}");
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
        };
        let x509 = as_json(&["api", "fetch", "x509"]);
        assert_eq!(x509[0]["spiffe_id"], WEB);
        assert!(x509[0]["expires_at"].is_u64(), "{x509}");
        assert!(x509[0]["x509_svid"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        let jwts = as_json(&["api", "fetch", "jwt", "--audience", "db"]);
        assert!(jwts[0]["expires_at"].is_u64(), "{jwts}");
        let token_json = jwts[0]["token"].as_str().unwrap().to_owned();
        let validated = as_json(&[
            "api",
            "validate",
            "jwt",
            "--audience",
            "db",
            "--token",
            &token_json,
        ]);
        assert_eq!(validated["spiffe_id"], WEB);
        assert_eq!(validated["claims"]["aud"][0], "db");
        let wits = as_json(&["api", "fetch", "wit"]);
        assert!(wits[0]["wit_svid"].is_string() && wits[0].get("wit_svid_key").is_none());
        let bundle_list = as_json(&["api", "fetch", "bundles"]);
        assert_eq!(bundle_list[0]["trust_domain"], "spiffe://example.org");
        assert!(
            bundle_list[0]["jwt_bundle"]["keys"].is_array(),
            "{bundle_list}"
        );
        let state = as_json(&["healthcheck"]);
        assert_eq!(state["state"], "healthy", "{state}");
        let verify = run(Command::new("openssl")
            .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
            .arg(dir.join("bundle.pem"))
            .arg(dir.join("svid.pem")));
        (fetched, jwt, valid, invalid, bundles, health, verify)
    })
    .await
    .unwrap();
    let (fetched, jwt, valid, invalid, bundles, health, verify) = results;
    assert!(fetched.0, "{}", fetched.2);
    assert!(fetched.1.contains(WEB), "{}", fetched.1);
    assert!(
        jwt.0 && jwt.1.contains(&format!("token({WEB})")),
        "{}{}",
        jwt.1,
        jwt.2
    );
    assert!(
        valid.0 && valid.1.contains("SVID is valid."),
        "{}{}",
        valid.1,
        valid.2
    );
    assert!(valid.1.contains("\"aud\":[\"db\"]"), "{}", valid.1);
    assert!(
        !invalid.0 && invalid.2.contains("InvalidArgument"),
        "{}",
        invalid.2
    );
    assert!(
        bundles.0 && bundles.1.contains("BEGIN CERTIFICATE"),
        "{}",
        bundles.2
    );
    assert!(bundles.1.contains("\"use\": \"jwt-svid\""), "{}", bundles.1);
    assert!(
        !bundles.1.contains("\"use\": \"x509-svid\""),
        "JWT bundles hold only JWT keys"
    );
    assert!(health.0, "{}", health.2);
    assert!(verify.0, "openssl: {}{}", verify.1, verify.2);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.path().join("svid.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // `api watch` prints one line per update.
    let mut watch = std::process::Command::new(binary("sigil-agent"))
        .args(["api", "watch", "--socket-path"])
        .arg(&node.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        line.contains("received 1 SVID(s)") && line.contains(WEB),
        "{line}"
    );
}

#[tokio::test]
async fn restarted_agent_reuses_its_svid_without_a_join_token() {
    let mut node = TestNode::start().await;
    node.register(WEB, 3600, "").await;
    node.wait_for_svids(1).await;
    let first_id = node.agent_id.clone();
    node.stop_agent().await;
    node.start_agent(None).await;
    assert_eq!(node.agent_id, first_id);
    node.wait_for_svids(1).await;
    let client = WorkloadApiClient::connect_to(node.endpoint())
        .await
        .unwrap();
    assert_eq!(
        client
            .fetch_x509_svid()
            .await
            .unwrap()
            .spiffe_id()
            .to_string(),
        WEB
    );
    // The key on disk is private.
    use std::os::unix::fs::PermissionsExt;
    let key = node.dir.path().join("agent/agent/svid.key");
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn grpc_reflection_lists_and_describes_the_workload_api() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let node = TestNode::start().await;
    let channel = workload_api::client::unix_channel(&node.socket)
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("SpiffeWorkloadAPI".into()),
    ]
    .map(|message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    });
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"SpiffeWorkloadAPI".to_owned()), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// An in-memory transport that, like many wrappers, writes one buffer at
/// a time (`is_write_vectored` is false).
struct PlainWrites(tokio::io::DuplexStream);

impl tokio::io::AsyncRead for PlainWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PlainWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The vendored h2 (see vendor/h2/SIGIL-PATCH.md) over a transport without
/// vectored writes: the server and the client both buffer frames larger
/// than the patched initial write buffer.
#[tokio::test]
async fn h2_works_over_a_transport_without_vectored_writes() {
    use bytes::Bytes;
    use tokio::io::AsyncWrite;

    const BODY: usize = 40_000;
    // A hang here would be the bug: bound it.
    let exchange = async move {
        let (client_io, server_io) = tokio::io::duplex(16 * 1024);
        let (client_io, server_io) = (PlainWrites(client_io), PlainWrites(server_io));
        assert!(!client_io.is_write_vectored() && !server_io.is_write_vectored());
        let server = tokio::spawn(async move {
            let mut connection = h2::server::handshake(server_io).await.unwrap();
            let (request, mut respond) = connection.accept().await.unwrap().unwrap();
            // Drives the connection; ends with the test.
            tokio::spawn(async move { while connection.accept().await.is_some() {} });
            let mut body = request.into_body();
            let mut received = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                received += chunk.len();
                body.flow_control().release_capacity(chunk.len()).unwrap();
            }
            let mut send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            send.send_data(Bytes::from(vec![b'r'; received]), true)
                .unwrap();
        });
        let (client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post("http://sigil.test/echo")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        send.send_data(Bytes::from(vec![b'q'; BODY]), true).unwrap();
        let mut body = response.await.unwrap().into_body();
        let mut received = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            received += chunk.len();
            body.flow_control().release_capacity(chunk.len()).unwrap();
        }
        assert_eq!(received, BODY);
        server.await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the h2 exchange did not finish within 10 s");
}
