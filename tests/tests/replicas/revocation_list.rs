//! The owners' revocation list across replicas on a real PostgreSQL server:
//! one replica at a time signs it and every replica serves the one stored,
//! so a verifier following `/v1/revocations` through a Service that
//! alternates replicas never receives a list older than the one it holds,
//! and an owner revoked through any replica is in the next list all serve.

use std::time::{Duration, Instant};

use sigil_tests::owners::{openssl_key, register_owner, revoke_owner};
use sigil_tests::postgres::Postgres;
use sigil_tests::TestIssuer;
use workload_api::revocation::{self, RevocationList};

use super::shared_bundle::two_replicas;

/// A verifier of revocation lists that asks whichever replica it is given,
/// as one behind a Service would, and refuses to go back.
#[derive(Default)]
struct Follower {
    held: Option<RevocationList>,
    fetched: usize,
}

impl Follower {
    /// Fetches the list from `replica`, verifies it against the bundle the
    /// replica serves, and takes it only if it is not older than the held.
    async fn fetch(&mut self, replica: &TestIssuer) -> &RevocationList {
        let (status, body) = replica.http_get("/v1/revocations").await;
        assert_eq!(status, 200, "{body}");
        let list = revocation::verify(&body, &replica.bundle())
            .unwrap_or_else(|e| panic!("a replica served a list that does not verify: {e}"));
        let list = revocation::newer(self.held.as_ref(), list)
            .unwrap_or_else(|e| panic!("after {} lists: {e}", self.fetched));
        self.fetched += 1;
        self.held.insert(list)
    }

    /// Alternates between `replicas` until each serves a list revoking
    /// `count` owners.
    async fn until_revoked(&mut self, replicas: &[&TestIssuer], count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut caught_up = vec![false; replicas.len()];
        for i in 0.. {
            let which = i % replicas.len();
            caught_up[which] = self.fetch(replicas[which]).await.revoked_owners() == count;
            if caught_up.iter().all(|&c| c) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas do not all serve a list of {count} revoked owners"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The replica holding the lease that signs the list.
fn signer(pg: &Postgres, database: &str) -> String {
    pg.psql_in(
        &pg.database_url(database),
        "SELECT holder FROM leases WHERE name = 'revocations'",
    )
    .trim()
    .to_owned()
}

/// What `replica` serves at `/v1/revocations`.
async fn served(replica: &TestIssuer) -> String {
    replica.http_get("/v1/revocations").await.1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verifier_moving_between_replicas_never_goes_back() {
    let (pg, _url, a, b, _bundle) = two_replicas("revocation_list").await;
    let keys = tempfile::tempdir().unwrap();
    let owners: Vec<String> = (0..4)
        .map(|i| format!("mailto:owner{i}@example.org"))
        .collect();
    for (i, owner) in owners.iter().enumerate() {
        let (_key, public) = openssl_key(keys.path(), &format!("owner{i}"), true).await;
        register_owner(if i % 2 == 0 { &a } else { &b }, owner, &public).await;
    }
    let mut follower = Follower::default();
    follower.until_revoked(&[&a, &b], 0).await;

    // Owners revoked through either replica, the signer and the other.
    for (i, owner) in owners.iter().enumerate() {
        revoke_owner(if i % 2 == 0 { &b } else { &a }, owner).await;
        follower.until_revoked(&[&a, &b], i + 1).await;
    }
    // One signer: both serve the very same list.
    assert_eq!(served(&a).await, served(&b).await);
    let before = follower.held.clone().unwrap();

    // The signer stops; the other replica takes the lease, signs a list of
    // its own numbered after the last, and the follower takes it.
    let holder = signer(&pg, "revocation_list");
    let (gone, left) = if holder == *a.running.state.replica {
        (a, b)
    } else {
        assert_eq!(holder, *b.running.state.replica, "a replica signs");
        (b, a)
    };
    gone.running.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while signer(&pg, "revocation_list") != *left.running.state.replica
        || served(&left).await == before.jws
    {
        assert!(Instant::now() < deadline, "no replica took the list over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = follower.fetch(&left).await.clone();
    assert!(after.seq > before.seq, "{} after {}", after.seq, before.seq);
    assert_eq!(after.revoked_owners(), owners.len());
    assert!(follower.fetched > 2 * owners.len());
}
