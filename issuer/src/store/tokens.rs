//! Join tokens: single-use secrets an operator hands to a node so its agent
//! can attest. Only a hash of the secret is stored.

use sqlx::Row;

use super::{JoinTokenRecord, Store, StoreError};

impl Store {
    /// Records a join token by the hash of its secret.
    pub async fn create_join_token(
        &self,
        id: &str,
        secret_hash: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO join_tokens (id, secret_hash, expires_at, used_at, created_at) \
             VALUES ($1, $2, $3, NULL, $4)",
        )
        .bind(id)
        .bind(secret_hash)
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a join token used, exactly once. Returns its id.
    pub async fn consume_join_token(
        &self,
        secret_hash: &str,
        now: i64,
    ) -> Result<JoinTokenRecord, StoreError> {
        let mut tx = self.write_tx().await?;
        let row =
            sqlx::query("SELECT id, expires_at, used_at FROM join_tokens WHERE secret_hash = $1")
                .bind(secret_hash)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::TokenUnknown)?;
        let record = JoinTokenRecord {
            id: row.try_get("id")?,
            expires_at: row.try_get("expires_at")?,
            used_at: row.try_get("used_at")?,
        };
        if record.used_at.is_some() {
            return Err(StoreError::TokenUsed);
        }
        if record.expires_at <= now {
            return Err(StoreError::TokenExpired {
                expires_at: record.expires_at,
            });
        }
        // The guard on used_at makes the claim atomic even across replicas.
        let claimed =
            sqlx::query("UPDATE join_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL")
                .bind(&record.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        if claimed.rows_affected() != 1 {
            return Err(StoreError::TokenUsed);
        }
        tx.commit().await?;
        Ok(JoinTokenRecord {
            used_at: Some(now),
            ..record
        })
    }

    /// Un-claims a token whose attestation failed after the claim, so a
    /// rejected attempt leaves nothing written.
    pub async fn release_join_token(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE join_tokens SET used_at = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{temp_store as store, Table};
    use super::*;

    #[tokio::test]
    async fn join_tokens_are_single_use_and_expire() {
        let (_dir, store) = store().await;
        store
            .create_join_token("id1", "hash1", 100, 0)
            .await
            .unwrap();
        store
            .create_join_token("id2", "hash2", 100, 0)
            .await
            .unwrap();
        assert_eq!(
            store.consume_join_token("hash1", 50).await.unwrap().id,
            "id1"
        );
        assert!(matches!(
            store.consume_join_token("hash1", 51).await,
            Err(StoreError::TokenUsed)
        ));
        assert!(matches!(
            store.consume_join_token("hash2", 100).await,
            Err(StoreError::TokenExpired { expires_at: 100 })
        ));
        assert!(matches!(
            store.consume_join_token("nope", 1).await,
            Err(StoreError::TokenUnknown)
        ));
        assert_eq!(store.count(Table::UsedJoinTokens).await.unwrap(), 1);
    }
}
