//! The owners' revocation list, signed by one replica at a time and served
//! by all: stored so that its `seq` rises across replicas.

use sqlx::Row;

use super::notify::Change;
use super::{Store, StoreError};

/// The list as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredList {
    pub seq: u64,
    /// The signed list (compact JWS).
    pub jws: String,
    /// Its `exp` (Unix seconds).
    pub expires_at: i64,
    /// The replica that signed it.
    pub replica: String,
}

impl Store {
    /// The stored list, if one was ever stored.
    pub async fn revocation_list(&self) -> Result<Option<StoredList>, StoreError> {
        let row =
            sqlx::query("SELECT seq, jws, expires_at, replica FROM revocation_list WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            Ok(StoredList {
                seq: row.try_get::<i64, _>("seq")?.max(0) as u64,
                jws: row.try_get("jws")?,
                expires_at: row.try_get("expires_at")?,
                replica: row.try_get("replica")?,
            })
        })
        .transpose()
    }

    /// Stores `next` in place of the list numbered `previous` (`None`: no
    /// list yet), and tells every replica. False, storing nothing, when
    /// another list was stored since `previous` was read: its signer won,
    /// and `next` would have been numbered without it.
    pub async fn replace_revocation_list(
        &self,
        previous: Option<u64>,
        next: &StoredList,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let sql = match previous {
            None => {
                "INSERT INTO revocation_list (id, seq, jws, expires_at, replica) \
                 VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING"
            }
            Some(_) => {
                "UPDATE revocation_list SET seq = $1, jws = $2, expires_at = $3, replica = $4 \
                 WHERE id = 1 AND seq = $5"
            }
        };
        let mut query = sqlx::query(sql)
            .bind(next.seq as i64)
            .bind(next.jws.clone())
            .bind(next.expires_at)
            .bind(next.replica.clone());
        if let Some(previous) = previous {
            query = query.bind(previous as i64);
        }
        let result = query
            .execute(&mut *tx)
            .await
            .map(|done| done.rows_affected() == 1)
            .map_err(StoreError::from);
        self.commit_change(tx, result, |_| Change::Revocations)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_store;

    fn list(seq: u64, replica: &str) -> StoredList {
        StoredList {
            seq,
            jws: format!("list-{seq}"),
            expires_at: seq as i64 + 3600,
            replica: replica.into(),
        }
    }

    #[tokio::test]
    async fn a_list_replaces_only_the_one_it_was_numbered_after() {
        let (_dir, store) = temp_store().await;
        assert_eq!(store.revocation_list().await.unwrap(), None);
        let mut changes = store.subscribe_revocations();
        changes.mark_unchanged();
        assert!(store
            .replace_revocation_list(None, &list(10, "a"))
            .await
            .unwrap());
        assert!(changes.has_changed().unwrap());
        // b also read "no list" and signed one: a's stands.
        assert!(!store
            .replace_revocation_list(None, &list(11, "b"))
            .await
            .unwrap());
        assert_eq!(store.revocation_list().await.unwrap(), Some(list(10, "a")));
        // Numbered after 10: stored. After 10 again: refused.
        assert!(store
            .replace_revocation_list(Some(10), &list(12, "b"))
            .await
            .unwrap());
        assert!(!store
            .replace_revocation_list(Some(10), &list(13, "a"))
            .await
            .unwrap());
        assert_eq!(store.revocation_list().await.unwrap(), Some(list(12, "b")));
    }
}
