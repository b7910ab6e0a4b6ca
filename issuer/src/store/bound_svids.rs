//! X509-SVIDs minted for owner-bound entries: recorded at minting so that
//! revoking the owner or deleting the entry can list their serials on the
//! CRL of the authority that signed them, and pruned once they expire.
//!
//! A signing call is recorded as one row per entry (and authority), with
//! all its serials: the cost of recording is a row per call, not per SVID.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{finish, BoundSvid, Store, StoreError};

/// Rows per INSERT statement: 6 parameters each stays far below SQLite's and
/// PostgreSQL's limits on parameters per statement.
const ROWS_PER_INSERT: usize = 100;

/// SVIDs of one entry signed by one authority in one call.
struct Group<'a> {
    authority: &'a str,
    entry_id: &'a str,
    owner_id: &'a str,
    serials: Vec<&'a str>,
    not_after: i64,
}

/// `svids` gathered by authority, entry and owner.
fn groups(svids: &[BoundSvid]) -> Vec<Group<'_>> {
    let mut by_key: BTreeMap<(&str, &str, &str), Group<'_>> = BTreeMap::new();
    for svid in svids {
        let key = (
            svid.authority.as_str(),
            svid.entry_id.as_str(),
            svid.owner_id.as_str(),
        );
        let group = by_key.entry(key).or_insert_with(|| Group {
            authority: key.0,
            entry_id: key.1,
            owner_id: key.2,
            serials: Vec::new(),
            not_after: svid.not_after,
        });
        group.serials.push(&svid.serial);
        group.not_after = group.not_after.max(svid.not_after);
    }
    by_key.into_values().collect()
}

impl Store {
    /// Records minted SVIDs, all or none. An SVID whose owner is already
    /// revoked is recorded as revoked then, so it still reaches the CRL.
    pub async fn record_bound_svids(&self, svids: &[BoundSvid]) -> Result<(), StoreError> {
        if svids.is_empty() {
            return Ok(());
        }
        let groups = groups(svids);
        // One statement is atomic by itself: no transaction round trips
        // for the common call, which signs for a few entries.
        if groups.len() <= ROWS_PER_INSERT {
            let mut conn = self.pool.acquire().await?;
            return insert_groups(&mut conn, &groups).await;
        }
        let mut tx = self.pool.begin().await?;
        let result = insert_groups(&mut tx, &groups).await;
        finish(tx, result).await
    }

    /// The revoked SVIDs that have not yet expired at `now`, each with the
    /// time it was revoked: what the CRLs must list, revocation dates
    /// included. Ordered by authority, then serial.
    pub async fn revoked_svids(&self, now: i64) -> Result<Vec<(BoundSvid, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT serials, authority, entry_id, owner_id, not_after, revoked_at \
             FROM bound_x509_svids WHERE revoked_at <> 0 AND not_after > $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut revoked = Vec::new();
        for row in &rows {
            let serials: String = row.try_get("serials")?;
            let revoked_at: i64 = row.try_get("revoked_at")?;
            for serial in serials.split_whitespace() {
                let svid = BoundSvid {
                    serial: serial.to_owned(),
                    authority: row.try_get("authority")?,
                    entry_id: row.try_get("entry_id")?,
                    owner_id: row.try_get("owner_id")?,
                    not_after: row.try_get("not_after")?,
                };
                revoked.push((svid, revoked_at));
            }
        }
        revoked.sort_by(|(a, _), (b, _)| (&a.authority, &a.serial).cmp(&(&b.authority, &b.serial)));
        Ok(revoked)
    }

    /// Forgets recorded SVIDs all expired at `now`; returns how many rows
    /// (signing calls) went.
    pub async fn prune_bound_svids(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM bound_x509_svids WHERE not_after <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// The writes of [`Store::record_bound_svids`], inside its transaction.
async fn insert_groups(
    conn: &mut sqlx::SqliteConnection,
    groups: &[Group<'_>],
) -> Result<(), StoreError> {
    for chunk in groups.chunks(ROWS_PER_INSERT) {
        let sql = insert_sql(chunk.len());
        let mut query = sqlx::query(&sql);
        for group in chunk {
            query = query
                .bind(group.serials.join(" "))
                .bind(group.authority)
                .bind(group.entry_id)
                .bind(group.owner_id)
                .bind(group.not_after);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A multi-row INSERT of `rows` groups, numbering parameters `$1`.. in row
/// order. A group whose owner is already revoked is recorded revoked.
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
        "INSERT INTO bound_x509_svids (serials, authority, entry_id, owner_id, not_after, \
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
            // Entries by expiry, as a call signs one entry's SVIDs alike.
            entry_id: format!("e{not_after}"),
            owner_id: owner_id.into(),
            not_after,
        }
    }

    #[tokio::test]
    async fn a_call_is_one_row_per_entry_and_pruned_when_expired() {
        let (_dir, store) = store().await;
        store.record_bound_svids(&[]).await.unwrap();
        let owner = owner("mailto:a@example.com", 1);
        store.register_owner(&owner).await.unwrap();
        // Two entries (by expiry), and more groups than one INSERT holds.
        let mut batch: Vec<BoundSvid> = (0..250)
            .map(|n| svid(n, &owner.id, if n < 40 { 10 } else { 20 }))
            .collect();
        batch.extend((0..150).map(|n| BoundSvid {
            entry_id: format!("many{n}"),
            ..svid(1000 + n, &owner.id, 30)
        }));
        store.record_bound_svids(&batch).await.unwrap();
        assert_eq!(store.count(Table::BoundX509Svids).await.unwrap(), 152);
        store.revoke_owner(&owner.id, 5).await.unwrap();
        let revoked = store.revoked_svids(5).await.unwrap();
        assert_eq!(revoked.len(), 400, "every serial is listed");
        assert!(revoked.windows(2).all(|w| w[0].0.serial < w[1].0.serial));
        assert_eq!(store.prune_bound_svids(10).await.unwrap(), 1);
        assert_eq!(store.prune_bound_svids(10).await.unwrap(), 0);
        assert_eq!(store.revoked_svids(10).await.unwrap().len(), 360);
        assert_eq!(store.count(Table::BoundX509Svids).await.unwrap(), 151);
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
