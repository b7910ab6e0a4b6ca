//! Leases for singleton jobs: one holder at a time, taken over once the
//! holder stops renewing.

use super::{Store, StoreError};

impl Store {
    /// Takes or renews the lease `name` for `holder` until `until_ms` (Unix
    /// milliseconds). True when `holder` holds it now: it held it already,
    /// or the last holder's lease ran out before `now_ms`.
    pub async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(until_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the lease up at once, if `holder` has it, so another can take
    /// over without waiting for it to run out.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::temp_store;

    #[tokio::test]
    async fn one_holder_until_its_lease_runs_out() {
        let (_dir, store) = temp_store().await;
        assert!(store.hold_lease("job", "a", 1_000, 6_000).await.unwrap());
        assert!(!store.hold_lease("job", "b", 2_000, 7_000).await.unwrap());
        // The holder renews.
        assert!(store.hold_lease("job", "a", 5_000, 10_000).await.unwrap());
        assert!(!store.hold_lease("job", "b", 9_999, 14_999).await.unwrap());
        // Lapsed: another takes over, and the old holder is out.
        assert!(store.hold_lease("job", "b", 10_001, 15_001).await.unwrap());
        assert!(!store.hold_lease("job", "a", 10_002, 15_002).await.unwrap());
        store.release_lease("job", "b").await.unwrap();
        assert!(store.hold_lease("job", "a", 10_003, 15_003).await.unwrap());
    }
}
