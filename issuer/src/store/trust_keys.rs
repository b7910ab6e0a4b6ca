//! The keys issuer replicas publish in the trust domain's one bundle. Each
//! replica replaces its own rows; every row, whoever wrote it, is in the
//! bundle until it expires. One sequence numbers the bundle for all.

use std::collections::BTreeSet;

use sqlx::Row;

use super::notify::Change;
use super::{finish, Store, StoreError};

/// A public key a replica publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustKey {
    /// `x509`, `jwt` or `wit`.
    pub kind: String,
    pub id: String,
    /// Unix seconds.
    pub not_after: i64,
    /// The key as the bundle's JWK Set carries it (JSON).
    pub jwk: String,
}

/// Every replica's keys and the bundle's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBundleKeys {
    pub sequence: u64,
    /// JWK JSON, one per distinct (kind, id), in a stable order.
    pub keys: Vec<String>,
}

impl Store {
    /// Makes `keys` the keys `replica` publishes, and drops every replica's
    /// keys that expired before `now`. When that changes the bundle, its
    /// sequence moves on, to at least `local_sequence` (the replica's own
    /// count of changes, so a bundle never goes back in sequence when one
    /// replica's bundle becomes the shared one), and every replica is told.
    pub async fn publish_trust_keys(
        &self,
        replica: &str,
        keys: &[TrustKey],
        local_sequence: u64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let result = async {
            let held: BTreeSet<(String, String)> =
                sqlx::query("SELECT kind, id FROM trust_keys WHERE replica = $1")
                    .bind(replica)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|row| Ok((row.try_get("kind")?, row.try_get("id")?)))
                    .collect::<Result<_, sqlx::Error>>()?;
            let wanted: BTreeSet<(String, String)> = keys
                .iter()
                .map(|k| (k.kind.clone(), k.id.clone()))
                .collect();
            let mut changed = false;
            for (kind, id) in held.difference(&wanted) {
                sqlx::query("DELETE FROM trust_keys WHERE replica = $1 AND kind = $2 AND id = $3")
                    .bind(replica)
                    .bind(kind)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                changed = true;
            }
            for key in keys {
                if held.contains(&(key.kind.clone(), key.id.clone())) {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO trust_keys (replica, kind, id, not_after, jwk) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(replica)
                .bind(&key.kind)
                .bind(&key.id)
                .bind(key.not_after)
                .bind(&key.jwk)
                .execute(&mut *tx)
                .await?;
                changed = true;
            }
            let expired = sqlx::query("DELETE FROM trust_keys WHERE not_after < $1")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            changed |= expired.rows_affected() > 0;
            if changed {
                let floor = i64::try_from(local_sequence).unwrap_or(i64::MAX);
                sqlx::query(
                    "UPDATE trust_bundle SET sequence = CASE WHEN sequence + 1 > $1 \
                     THEN sequence + 1 ELSE $1 END WHERE id = 1",
                )
                .bind(floor)
                .execute(&mut *tx)
                .await?;
            }
            Ok(changed)
        }
        .await;
        match result {
            Ok(true) => {
                self.commit_change(tx, result, |_| Change::TrustBundle)
                    .await
            }
            _ => finish(tx, result).await,
        }
    }

    /// The bundle's keys, from every replica, and its sequence.
    pub async fn shared_bundle_keys(&self) -> Result<SharedBundleKeys, StoreError> {
        // One transaction, so the sequence and the keys agree.
        let mut tx = self.pool.begin().await?;
        let sequence: i64 = sqlx::query_scalar("SELECT sequence FROM trust_bundle WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT kind, id, MIN(jwk) AS jwk FROM trust_keys GROUP BY kind, id ORDER BY kind, id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let keys = rows
            .iter()
            .map(|row| row.try_get("jwk"))
            .collect::<Result<_, _>>()?;
        finish(tx, Ok(())).await?;
        Ok(SharedBundleKeys {
            sequence: sequence.max(0) as u64,
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_store;

    fn key(kind: &str, id: &str, not_after: i64) -> TrustKey {
        TrustKey {
            kind: kind.into(),
            id: id.into(),
            not_after,
            jwk: format!("{{\"kid\":\"{id}\"}}"),
        }
    }

    #[tokio::test]
    async fn replicas_share_one_bundle_until_their_keys_expire() {
        let (_dir, store) = temp_store().await;
        let mut changes = store.subscribe_trust_bundle();
        changes.mark_unchanged();
        let a = [key("x509", "a1", 100), key("jwt", "ka", 100)];
        assert!(store.publish_trust_keys("a", &a, 3, 10).await.unwrap());
        assert!(changes.has_changed().unwrap());
        // The sequence starts at the replica's own, never below it.
        assert_eq!(store.shared_bundle_keys().await.unwrap().sequence, 3);
        // The same keys again change nothing.
        assert!(!store.publish_trust_keys("a", &a, 3, 11).await.unwrap());

        let b = [key("x509", "b1", 50), key("x509", "a1", 100)];
        assert!(store.publish_trust_keys("b", &b, 1, 12).await.unwrap());
        let shared = store.shared_bundle_keys().await.unwrap();
        assert_eq!(shared.sequence, 4);
        // The root both publish (an upstream root) is in once.
        assert_eq!(
            shared.keys,
            ["{\"kid\":\"ka\"}", "{\"kid\":\"a1\"}", "{\"kid\":\"b1\"}"]
        );

        // a moves on to a new key: its old one leaves, b's stay.
        let a2 = [key("x509", "a2", 200)];
        assert!(store.publish_trust_keys("a", &a2, 4, 20).await.unwrap());
        let shared = store.shared_bundle_keys().await.unwrap();
        assert_eq!(shared.sequence, 5);
        assert_eq!(
            shared.keys,
            ["{\"kid\":\"a1\"}", "{\"kid\":\"a2\"}", "{\"kid\":\"b1\"}"]
        );
        // b is gone for good; its keys stay until they expire, then go.
        assert!(store.publish_trust_keys("a", &a2, 4, 60).await.unwrap());
        let shared = store.shared_bundle_keys().await.unwrap();
        assert_eq!(shared.keys, ["{\"kid\":\"a1\"}", "{\"kid\":\"a2\"}"]);
        assert_eq!(shared.sequence, 6);
    }
}
