//! X509-SVIDs minted for owner-bound entries: recorded at minting so that
//! revoking the owner or deleting the entry can list their serials on the
//! CRL of the authority that signed them, and pruned once they expire.

use sqlx::Row;

use super::{finish, BoundSvid, Store, StoreError};

/// Rows per INSERT statement: 5 parameters each stays far below SQLite's and
/// PostgreSQL's limits on parameters per statement.
const ROWS_PER_INSERT: usize = 100;

impl Store {
    /// Records minted SVIDs, all or none. An SVID whose owner is already
    /// revoked is recorded as revoked then, so it still reaches the CRL.
    pub async fn record_bound_svids(&self, svids: &[BoundSvid]) -> Result<(), StoreError> {
        if svids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let result = insert_svids(&mut tx, svids).await;
        finish(tx, result).await
    }

    /// The revoked SVIDs that have not yet expired at `now`, each with the
    /// time it was revoked: what the CRLs must list, revocation dates
    /// included. Ordered by authority, then serial.
    pub async fn revoked_svids(&self, now: i64) -> Result<Vec<(BoundSvid, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT serial, authority, entry_id, owner_id, not_after, revoked_at \
             FROM bound_x509_svids WHERE revoked_at <> 0 AND not_after > $1 \
             ORDER BY authority, serial",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let svid = BoundSvid {
                    serial: row.try_get("serial")?,
                    authority: row.try_get("authority")?,
                    entry_id: row.try_get("entry_id")?,
                    owner_id: row.try_get("owner_id")?,
                    not_after: row.try_get("not_after")?,
                };
                Ok((svid, row.try_get("revoked_at")?))
            })
            .collect()
    }

    /// Forgets SVIDs expired at `now`; returns how many.
    pub async fn prune_bound_svids(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM bound_x509_svids WHERE not_after <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// The writes of [`Store::record_bound_svids`], inside its transaction.
async fn insert_svids(
    conn: &mut sqlx::SqliteConnection,
    svids: &[BoundSvid],
) -> Result<(), StoreError> {
    for chunk in svids.chunks(ROWS_PER_INSERT) {
        let sql = insert_sql(chunk.len());
        let mut query = sqlx::query(&sql);
        for svid in chunk {
            query = query
                .bind(&svid.serial)
                .bind(&svid.authority)
                .bind(&svid.entry_id)
                .bind(&svid.owner_id)
                .bind(svid.not_after);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A multi-row INSERT of `rows` SVIDs, numbering parameters `$1`.. in row order.
fn insert_sql(rows: usize) -> String {
    let values = (0..rows)
        .map(|row| {
            let p = row * 5;
            format!(
                "(${}, ${}, ${}, ${}, ${}, COALESCE((SELECT o.revoked_at FROM owners o \
                 WHERE o.id = ${} AND o.revoked_at <> 0), 0))",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 4
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO bound_x509_svids (serial, authority, entry_id, owner_id, not_after, \
         revoked_at) VALUES {values}"
    )
}

#[cfg(test)]
mod tests {
    use super::super::owners::tests::owner;
    use super::super::{temp_store as store, Table};
    use super::*;

    fn svid(n: usize, owner_id: &str, not_after: i64) -> BoundSvid {
        BoundSvid {
            serial: format!("{n:04x}"),
            authority: "x509-1".into(),
            entry_id: "e1".into(),
            owner_id: owner_id.into(),
            not_after,
        }
    }

    #[tokio::test]
    async fn batches_are_recorded_whole_and_pruned_when_expired() {
        let (_dir, store) = store().await;
        store.record_bound_svids(&[]).await.unwrap();
        // Spans several INSERT statements.
        let batch: Vec<BoundSvid> = (0..250)
            .map(|n| svid(n, "mailto:a@example.com", if n < 40 { 10 } else { 20 }))
            .collect();
        store.record_bound_svids(&batch).await.unwrap();
        assert_eq!(store.count(Table::BoundX509Svids).await.unwrap(), 250);
        // A clash anywhere rolls back the whole batch.
        let clashing = [svid(1000, "o", 30), svid(249, "o", 30)];
        assert!(store.record_bound_svids(&clashing).await.is_err());
        assert_eq!(store.count(Table::BoundX509Svids).await.unwrap(), 250);
        assert_eq!(store.prune_bound_svids(10).await.unwrap(), 40);
        assert_eq!(store.prune_bound_svids(10).await.unwrap(), 0);
        assert_eq!(store.count(Table::BoundX509Svids).await.unwrap(), 210);
        assert_eq!(store.revoked_svids(0).await.unwrap(), []);
    }

    #[tokio::test]
    async fn svids_recorded_after_their_owner_was_revoked_are_revoked() {
        let (_dir, store) = store().await;
        let a = owner("mailto:a@example.com", 1);
        store.register_owner(&a).await.unwrap();
        store
            .register_owner(&owner("mailto:b@example.com", 1))
            .await
            .unwrap();
        store.revoke_owner(&a.id, 50).await.unwrap();
        let late = svid(1, &a.id, 100);
        store
            .record_bound_svids(&[late.clone(), svid(2, "mailto:b@example.com", 100)])
            .await
            .unwrap();
        // Revoked as of the owner's revocation.
        assert_eq!(store.revoked_svids(60).await.unwrap(), [(late, 50)]);
    }
}
