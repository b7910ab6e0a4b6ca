//! The CRLs replicas sign, shared so that every replica serves them all:
//! each replica can sign CRLs only for its own X.509 authorities.

use sqlx::Row;

use super::notify::Change;
use super::{Store, StoreError};

/// One CRL as stored: the authority that signed it and its DER.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredCrl {
    pub authority_id: String,
    #[serde(with = "base64_bytes")]
    pub der: Vec<u8>,
}

mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

impl Store {
    /// Replaces the CRLs `replica` publishes, valid until `expires_at`,
    /// and tells every replica.
    pub async fn put_replica_crls(
        &self,
        replica: &str,
        expires_at: i64,
        crls: &[StoredCrl],
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(crls).expect("CRLs serialize");
        let mut tx = self.write_tx().await?;
        let result = sqlx::query(
            "INSERT INTO replica_crls (replica, expires_at, crls) VALUES ($1, $2, $3) \
             ON CONFLICT (replica) DO UPDATE SET expires_at = $2, crls = $3",
        )
        .bind(replica)
        .bind(expires_at)
        .bind(text)
        .execute(&mut *tx)
        .await
        .map(drop)
        .map_err(StoreError::from);
        self.commit_change(tx, result, |_| Change::Revocations)
            .await
    }

    /// The CRLs other replicas publish that are not stale at `now`.
    pub async fn other_replicas_crls(
        &self,
        replica: &str,
        now: i64,
    ) -> Result<Vec<StoredCrl>, StoreError> {
        let rows = sqlx::query(
            "SELECT crls FROM replica_crls WHERE replica <> $1 AND expires_at > $2 \
             ORDER BY replica",
        )
        .bind(replica)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut all = Vec::new();
        for row in rows {
            let text: String = row.try_get("crls")?;
            let crls: Vec<StoredCrl> =
                serde_json::from_str(&text).map_err(|source| StoreError::Corrupt {
                    column: "replica_crls.crls",
                    source,
                })?;
            all.extend(crls);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_store;

    #[tokio::test]
    async fn each_replica_serves_the_others_fresh_crls() {
        let (_dir, store) = temp_store().await;
        let crl = |id: &str| StoredCrl {
            authority_id: id.into(),
            der: id.as_bytes().to_vec(),
        };
        let mut changes = store.subscribe_revocations();
        changes.mark_unchanged();
        store
            .put_replica_crls("a", 100, &[crl("a1")])
            .await
            .unwrap();
        assert!(changes.has_changed().unwrap());
        store
            .put_replica_crls("b", 50, &[crl("b1"), crl("b2")])
            .await
            .unwrap();
        assert_eq!(
            store.other_replicas_crls("a", 10).await.unwrap(),
            [crl("b1"), crl("b2")]
        );
        assert_eq!(
            store.other_replicas_crls("b", 10).await.unwrap(),
            [crl("a1")]
        );
        // b's went stale and b is gone: a no longer serves them.
        assert!(store.other_replicas_crls("a", 50).await.unwrap().is_empty());
        // A replacement replaces.
        store
            .put_replica_crls("a", 200, &[crl("a2")])
            .await
            .unwrap();
        assert_eq!(
            store.other_replicas_crls("b", 150).await.unwrap(),
            [crl("a2")]
        );
    }
}
