//! Reservations of serial counters for owner-bound entries (see the CA's
//! `serials`): how far each entry's counter may have gone, and whether the
//! entry is revoked, so the CRLs can list every serial it may have been
//! given.

use sqlx::Row;

use super::{SerialReservation, Store, StoreError};

impl Store {
    /// How far `entry_id`'s counters are reserved, if they ever were.
    pub async fn serial_reservation(&self, entry_id: &str) -> Result<Option<u64>, StoreError> {
        let reserved: Option<i64> =
            sqlx::query_scalar("SELECT reserved FROM bound_serials WHERE entry_id = $1")
                .bind(entry_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(reserved.map(|r| r.max(0) as u64))
    }

    /// Reserves `entry_id`'s counters below `up_to` (a reservation never
    /// shrinks). An entry whose owner is already revoked, or which is
    /// already deleted, is recorded as revoked, so its serials still reach
    /// the CRL.
    pub async fn reserve_serials(
        &self,
        entry_id: &str,
        owner_id: &str,
        up_to: u64,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO bound_serials (entry_id, owner_id, reserved, revoked_at) \
             VALUES ($1, $2, $3, COALESCE( \
                 (SELECT o.revoked_at FROM owners o WHERE o.id = $2 AND o.revoked_at <> 0), \
                 CASE WHEN EXISTS (SELECT 1 FROM entries e WHERE e.id = $1) THEN 0 ELSE $4 END)) \
             ON CONFLICT (entry_id) DO UPDATE SET reserved = CASE \
                 WHEN excluded.reserved > bound_serials.reserved THEN excluded.reserved \
                 ELSE bound_serials.reserved END",
        )
        .bind(entry_id)
        .bind(owner_id)
        .bind(i64::try_from(up_to).unwrap_or(i64::MAX))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every revoked reservation: what the CRLs list.
    pub async fn revoked_reservations(&self) -> Result<Vec<SerialReservation>, StoreError> {
        let rows = sqlx::query(
            "SELECT entry_id, owner_id, reserved, revoked_at FROM bound_serials \
             WHERE revoked_at <> 0 ORDER BY entry_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SerialReservation {
                    entry_id: row.try_get("entry_id")?,
                    owner_id: row.try_get("owner_id")?,
                    reserved: row.try_get::<i64, _>("reserved")?.max(0) as u64,
                    revoked_at: row.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    /// Forgets reservations revoked before `before`: no SVID signed before
    /// then can still be valid once every authority that existed then has
    /// expired. Returns how many went.
    pub async fn prune_reservations(&self, before: i64) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM bound_serials WHERE revoked_at <> 0 AND revoked_at < $1")
                .bind(before)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::owners::tests::owner;
    use super::super::{temp_store as store, Table};

    #[tokio::test]
    async fn reservations_grow_only_and_are_revoked_with_their_owner() {
        let (_dir, store) = store().await;
        let alice = owner("mailto:a@example.com", 1);
        store.register_owner(&alice).await.unwrap();
        assert_eq!(store.serial_reservation("e1").await.unwrap(), None);
        store
            .reserve_serials("e1", &alice.id, 64, 10)
            .await
            .unwrap();
        store
            .reserve_serials("e1", &alice.id, 32, 10)
            .await
            .unwrap();
        assert_eq!(store.serial_reservation("e1").await.unwrap(), Some(64));
        assert_eq!(store.count(Table::BoundSerials).await.unwrap(), 1);
        // "e1" is no entry: its reservation counts as deleted, so revoked.
        let revoked = store.revoked_reservations().await.unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!((revoked[0].reserved, revoked[0].revoked_at), (64, 10));
        assert_eq!(store.prune_reservations(10).await.unwrap(), 0);
        assert_eq!(store.prune_reservations(11).await.unwrap(), 1);
        assert_eq!(store.revoked_reservations().await.unwrap(), []);
    }
}
