//! The issuer's health and Prometheus metrics on its HTTP endpoint: what an
//! orchestrator's probes and a Prometheus scrape see.

use std::collections::HashMap;
use std::process::{Command, Stdio};

use proto::workload as wpb;
use sigil_tests::TestNode;
use workload_api::client::{connect, EndpointAddress};

/// A JWT-SVID for audience `db` from the node's agent.
async fn fetch_jwt(node: &TestNode) {
    let mut client = connect(&EndpointAddress::Unix(node.socket.clone()))
        .await
        .unwrap();
    client
        .fetch_jwtsvid(wpb::JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap();
}

/// Every sample of a Prometheus text exposition, parsed by the reference
/// Python client's parser (which refuses a malformed exposition), keyed as
/// `name{label="value",...}`.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    use std::io::Write;
    let mut child = Command::new(sigil_tests::python())
        .arg(sigil_tests::workspace_root().join("tests/python/prometheus_parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` (with its labels, as keyed by
/// [`parse_metrics`]).
fn sample(samples: &HashMap<String, f64>, name: &str) -> Option<f64> {
    samples.get(name).copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_says_it_is_live_and_ready_and_counts_what_it_issues() {
    let node = TestNode::start().await;
    let issuer = &node.issuer;
    assert_eq!(issuer.http_get("/live").await, (200, "live\n".to_string()));
    assert_eq!(
        issuer.http_get("/ready").await,
        (200, "ready\n".to_string())
    );

    let entry = node.register("spiffe://example.org/web", 3600, "").await;
    node.wait_for_entry(&entry.id).await;
    fetch_jwt(&node).await;
    // Events reach the tree within a second.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let (status, text) = issuer.http_get("/metrics").await;
    assert_eq!(status, 200);
    let samples = parse_metrics(&text);
    assert!(
        text.contains("# HELP sigil_issuer_svids_issued_total"),
        "{text}"
    );
    // The recorder is process-wide: other tests' issuers count too.
    let at_least = |name: &str, floor: f64| {
        let value = sample(&samples, name).unwrap_or_else(|| panic!("no {name} in {text}"));
        assert!(
            value >= floor,
            "{name} is {value}, expected at least {floor}"
        );
    };
    at_least(r#"sigil_issuer_svids_issued_total{kind="x509"}"#, 2.0);
    at_least(r#"sigil_issuer_svids_issued_total{kind="wit"}"#, 1.0);
    at_least(r#"sigil_issuer_svids_issued_total{kind="jwt"}"#, 1.0);
    at_least("sigil_issuer_connected_agents", 1.0);
    at_least("sigil_issuer_event_log_size", 5.0);

    // The agent's entry stream ends with the agent.
    let before = sample(&samples, "sigil_issuer_connected_agents").unwrap();
    let mut node = node;
    node.stop_agent().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, text) = node.issuer.http_get("/metrics").await;
        if sample(&parse_metrics(&text), "sigil_issuer_connected_agents").unwrap() < before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream was never counted out"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_says_it_is_live_and_ready_and_counts_its_calls() {
    let mut node = TestNode::start().await;
    node.restart_agent_with(|config| {
        config.health_address = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let address = node
        .agent
        .as_ref()
        .unwrap()
        .health_address
        .expect("the health endpoint is on")
        .to_string();
    let get = |path: &'static str| {
        let address = address.clone();
        async move {
            let answer =
                sigil_tests::web::http_call(&address, "GET", path, &http::HeaderMap::new(), b"")
                    .await;
            (answer.status, answer.body)
        }
    };
    assert_eq!(get("/live").await, (200, "live\n".to_string()));
    let entry = node.register("spiffe://example.org/web", 3600, "").await;
    node.wait_for_entry(&entry.id).await;
    assert_eq!(get("/ready").await, (200, "ready\n".to_string()));

    fetch_jwt(&node).await;
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    let samples = parse_metrics(&text);
    let at_least = |name: &str, floor: f64| {
        let value = sample(&samples, name).unwrap_or_else(|| panic!("no {name} in {text}"));
        assert!(
            value >= floor,
            "{name} is {value}, expected at least {floor}"
        );
    };
    at_least(
        r#"sigil_agent_workload_api_calls_total{method="FetchJWTSVID"}"#,
        1.0,
    );
    at_least(
        r#"sigil_agent_workload_api_call_seconds_count{method="FetchJWTSVID"}"#,
        1.0,
    );
    at_least(r#"sigil_agent_svids_minted_total{kind="x509"}"#, 1.0);
    at_least(r#"sigil_agent_svids_minted_total{kind="wit"}"#, 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    at_least("sigil_agent_last_sync_timestamp_seconds", now - 600.0);
    assert!(
        sample(&samples, "sigil_agent_issuer_unreachable_seconds").is_some(),
        "{text}"
    );
    assert!(
        sample(&samples, "sigil_agent_events_pending").is_some(),
        "{text}"
    );
}
