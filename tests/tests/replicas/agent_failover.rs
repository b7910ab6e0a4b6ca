//! An agent configured with several issuer addresses fails over between
//! them. Two TCP proxies in front of one issuer stand in for two replicas,
//! so that a replica's death (port closed, connections reset) is staged
//! exactly; `replica_failover` kills real replicas sharing PostgreSQL.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proto::workload as wl;
use sigil_agent::failover::Link;
use sigil_tests::tcp_proxy::TcpProxy;
use sigil_tests::*;
use workload_api::client::{connect, EndpointAddress};

/// What the agent must take to reach a live replica.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);

/// The SPIFFE IDs the Workload API serves this process now; fails on any
/// error.
async fn served_ids(node: &TestNode) -> Vec<String> {
    let mut client = connect(&EndpointAddress::Unix(node.socket.clone()))
        .await
        .unwrap();
    let response = first_message(client.fetch_x509svid(wl::X509svidRequest {}).await).await;
    response.svids.into_iter().map(|s| s.spiffe_id).collect()
}

fn link(node: &TestNode) -> Link {
    node.agent.as_ref().unwrap().node.issuer.link()
}

/// Waits until `wanted` holds of the agent's link, for at most `within`;
/// returns when it did, measured from `since`.
async fn wait_for_link(
    node: &TestNode,
    since: Instant,
    within: Duration,
    what: &str,
    wanted: impl Fn(Link) -> bool,
) -> Duration {
    loop {
        if wanted(link(node)) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "{what} within {within:?}; link: {:?}",
            link(node)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn up_at(link: Link, address: SocketAddr) -> bool {
    matches!(link, Link::Up { address: a, .. } if a == address)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_replica_dies_is_back_on_another_within_five_seconds() {
    let mut node = TestNode::start().await;
    let issuer = node.issuer.running.agent_api_address;
    let proxies = [TcpProxy::start(issuer).await, TcpProxy::start(issuer).await];
    let both = format!("{},{}", proxies[0].address, proxies[1].address);
    node.restart_agent_with(|config| config.issuer_address = both.parse().unwrap())
        .await;
    let before = node.register("spiffe://example.org/before", 3600, "").await;
    node.wait_for_entry(&before.id).await;

    // The agent uses one replica; the other has seen nothing of it.
    let Link::Up { address, .. } = link(&node) else {
        panic!("the agent is connected: {:?}", link(&node));
    };
    let (dying, surviving) = if address == proxies[0].address {
        (&proxies[0], &proxies[1])
    } else {
        (&proxies[1], &proxies[0])
    };
    assert_eq!(address, dying.address);
    assert_eq!(surviving.accepted(), 0);

    let killed_at = Instant::now();
    dying.kill().await;
    // Created on the issuer while the agent's replica is gone: it can reach
    // the agent only over a new stream through the other one.
    let after = node.register("spiffe://example.org/after", 3600, "").await;

    // Meanwhile the workload is served what the agent holds.
    let during = served_ids(&node).await;
    let outage_seen = !up_at(link(&node), surviving.address);
    assert!(
        during.contains(&"spiffe://example.org/before".to_owned()),
        "{during:?}"
    );

    let reconnected = wait_for_link(
        &node,
        killed_at,
        FAILOVER_BOUND,
        "the agent is connected through the surviving proxy",
        |link| up_at(link, surviving.address),
    )
    .await;
    let accepted = surviving
        .first_accepted_at()
        .expect("the surviving proxy accepted the agent")
        .duration_since(killed_at);
    node.wait_for_entry(&after.id).await;
    let synced = killed_at.elapsed();
    eprintln!(
        "failover: surviving proxy accepted after {accepted:?}, connected after \
         {reconnected:?}, entry created after the kill served after {synced:?} \
         (workload fetch during the outage: {outage_seen})"
    );
    assert!(
        synced < FAILOVER_BOUND,
        "the entry stream is back within {FAILOVER_BOUND:?}: {synced:?}"
    );
    let served = served_ids(&node).await;
    for id in ["spiffe://example.org/before", "spiffe://example.org/after"] {
        assert!(served.contains(&id.to_owned()), "{id} in {served:?}");
    }
    assert!(node.agent.as_ref().unwrap().health.outage().is_none());

    // Every replica gone: the agent says so and still serves what it holds.
    let all_down_at = Instant::now();
    surviving.kill().await;
    wait_for_link(
        &node,
        all_down_at,
        FAILOVER_BOUND,
        "the agent finds every replica down",
        |link| link == Link::Down,
    )
    .await;
    let served = served_ids(&node).await;
    for id in ["spiffe://example.org/before", "spiffe://example.org/after"] {
        assert!(served.contains(&id.to_owned()), "{id} in {served:?}");
    }
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_attests_through_the_first_address_that_answers() {
    let mut node = TestNode::start().await;
    let proxy = TcpProxy::start(node.issuer.running.agent_api_address).await;
    let nobody = format!("127.0.0.1:{}", free_port());
    let token = node.issuer.join_token(0).await;
    let fresh_dir = node.dir.path().join("fresh-agent");
    let first_agent = node.agent_id.clone();
    // A new agent (fresh data directory, new join token) whose first
    // address has nothing listening.
    node.restart_agent_with(|config| {
        config.issuer_address = format!("{nobody},{}", proxy.address).parse().unwrap();
        config.data_dir = fresh_dir;
        config.join_token = Some(token);
    })
    .await;
    assert_ne!(node.agent_id, first_agent);
    assert!(up_at(link(&node), proxy.address), "{:?}", link(&node));
    let entry = node.register("spiffe://example.org/fresh", 3600, "").await;
    node.wait_for_entry(&entry.id).await;
    assert!(served_ids(&node)
        .await
        .contains(&"spiffe://example.org/fresh".to_owned()));
    node.stop_agent().await;
}
