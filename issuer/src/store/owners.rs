//! Owners: the people or services entries are bound to, each with one public
//! key. Revoking an owner is permanent; it cuts off the owner's entries and
//! marks the SVIDs minted for them revoked so they reach the CRLs.

use sqlx::Row;

use super::notify::Change;
use super::{finish, Owner, Store, StoreError};

const OWNER_COLUMNS: &str = "id, public_key, thumbprint, created_at, revoked_at";

impl Store {
    /// Registers an owner. An id is never reused, not even a revoked one, and
    /// a key belongs to at most one owner.
    pub async fn register_owner(&self, owner: &Owner) -> Result<Owner, StoreError> {
        let mut tx = self.write_tx().await?;
        let result = insert_owner(&mut tx, owner).await;
        match finish(tx, result).await {
            Ok(()) => {}
            Err(StoreError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                // A concurrent registration won between the look and the
                // insert. The failed transaction is unusable on PostgreSQL, so
                // look again after it.
                let mut conn = self.pool.acquire().await?;
                return Err(owner_clash(&mut conn, owner)
                    .await?
                    .unwrap_or(StoreError::Database(sqlx::Error::Database(e))));
            }
            Err(e) => return Err(e),
        }
        self.get_owner(&owner.id).await
    }

    pub async fn get_owner(&self, id: &str) -> Result<Owner, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_owner(&mut conn, id).await
    }

    /// Every owner, revoked ones included, in registration order.
    pub async fn list_owners(&self) -> Result<Vec<Owner>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {OWNER_COLUMNS} FROM owners ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(owner_from_row).collect()
    }

    /// Revokes an owner at `now` and marks its unexpired bound SVIDs revoked.
    /// Revoking again succeeds and keeps the first revocation time.
    pub async fn revoke_owner(&self, id: &str, now: i64) -> Result<Owner, StoreError> {
        let mut tx = self.write_tx().await?;
        let result = write_revocation(&mut tx, id, now).await;
        // Entry streams re-evaluate, dropping the owner's entries.
        self.commit_change(tx, result, |_| Change::Registrations)
            .await
    }
}

/// The writes of [`Store::register_owner`], inside its transaction.
async fn insert_owner(conn: &mut sqlx::AnyConnection, owner: &Owner) -> Result<(), StoreError> {
    // Looking first tells which constraint an insert would break, so the
    // error can name the owner that holds the key.
    if let Some(clash) = owner_clash(&mut *conn, owner).await? {
        return Err(clash);
    }
    sqlx::query(&format!(
        "INSERT INTO owners ({OWNER_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
    ))
    .bind(&owner.id)
    .bind(&owner.public_key)
    .bind(&owner.thumbprint)
    .bind(owner.created_at)
    .bind(owner.revoked_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The writes of [`Store::revoke_owner`], inside its transaction; returns
/// the owner row after them.
async fn write_revocation(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    now: i64,
) -> Result<Owner, StoreError> {
    // Writing first takes the write lock (SQLite) or the row lock
    // (PostgreSQL) before anything is read, so an entry being bound to this
    // owner either commits before the revocation or sees it.
    sqlx::query("UPDATE owners SET revoked_at = $2 WHERE id = $1 AND revoked_at = 0")
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    let owner = fetch_owner(&mut *conn, id).await?;
    // Every call marks them, so an SVID recorded after a first revocation
    // still reaches the CRL on a second.
    sqlx::query("UPDATE bound_serials SET revoked_at = $2 WHERE owner_id = $1 AND revoked_at = 0")
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(owner)
}

/// The error registering `owner` would meet, if its id or key is taken.
async fn owner_clash(
    conn: &mut sqlx::AnyConnection,
    owner: &Owner,
) -> Result<Option<StoreError>, StoreError> {
    let id_taken: Option<String> = sqlx::query_scalar("SELECT id FROM owners WHERE id = $1")
        .bind(&owner.id)
        .fetch_optional(&mut *conn)
        .await?;
    if id_taken.is_some() {
        return Ok(Some(StoreError::OwnerExists(owner.id.clone())));
    }
    let holder: Option<String> = sqlx::query_scalar("SELECT id FROM owners WHERE thumbprint = $1")
        .bind(&owner.thumbprint)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(holder.map(|holder| StoreError::OwnerKeyInUse {
        thumbprint: owner.thumbprint.clone(),
        owner: holder,
    }))
}

async fn fetch_owner(conn: &mut sqlx::AnyConnection, id: &str) -> Result<Owner, StoreError> {
    let row = sqlx::query(&format!("SELECT {OWNER_COLUMNS} FROM owners WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::OwnerNotFound(id.to_owned()))?;
    owner_from_row(&row)
}

fn owner_from_row(row: &sqlx::any::AnyRow) -> Result<Owner, StoreError> {
    Ok(Owner {
        id: row.try_get("id")?,
        public_key: row.try_get("public_key")?,
        thumbprint: row.try_get("thumbprint")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{temp_store as store, Table};
    use super::*;

    /// An owner in good standing whose key thumbprint is derived from `id`.
    pub(in crate::store) fn owner(id: &str, created_at: i64) -> Owner {
        Owner {
            id: id.into(),
            public_key: format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{id}"}}"#),
            thumbprint: format!("tp-{id}"),
            created_at,
            revoked_at: 0,
        }
    }

    #[tokio::test]
    async fn owners_register_get_and_list() {
        let (_dir, store) = store().await;
        let bob = owner("mailto:bob@example.com", 20);
        let alice = owner("https://alice.example", 10);
        let carol = owner("spiffe://td/carol", 20);
        assert_eq!(store.register_owner(&bob).await.unwrap(), bob);
        assert_eq!(store.register_owner(&alice).await.unwrap(), alice);
        assert_eq!(store.register_owner(&carol).await.unwrap(), carol);
        assert_eq!(store.get_owner(&bob.id).await.unwrap(), bob);
        // Ordered by created_at, then id.
        assert_eq!(store.list_owners().await.unwrap(), [alice, bob, carol]);
        let missing = store.get_owner("mailto:nobody@example.com").await;
        let Err(StoreError::OwnerNotFound(id)) = missing else {
            panic!("an unknown owner must not be found: {missing:?}");
        };
        assert_eq!(id, "mailto:nobody@example.com");
        assert_eq!(
            StoreError::OwnerNotFound(id).to_string(),
            "owner mailto:nobody@example.com not found"
        );
    }

    #[tokio::test]
    async fn duplicate_owner_id_is_refused_even_when_revoked() {
        let (_dir, store) = store().await;
        let first = owner("mailto:a@example.com", 1);
        store.register_owner(&first).await.unwrap();
        let mut again = owner("mailto:a@example.com", 2);
        again.thumbprint = "another-key".into();
        let error = store.register_owner(&again).await.unwrap_err();
        let StoreError::OwnerExists(ref id) = error else {
            panic!("a duplicate id must clash: {error}");
        };
        assert_eq!(id, "mailto:a@example.com");
        assert_eq!(
            error.to_string(),
            "owner mailto:a@example.com is already registered"
        );
        store.revoke_owner(&first.id, 5).await.unwrap();
        assert!(matches!(
            store.register_owner(&again).await,
            Err(StoreError::OwnerExists(id)) if id == "mailto:a@example.com"
        ));
        assert_eq!(store.count(Table::Owners).await.unwrap(), 1);
        assert_eq!(store.get_owner(&first.id).await.unwrap().created_at, 1);
    }

    #[tokio::test]
    async fn a_key_belongs_to_one_owner() {
        let (_dir, store) = store().await;
        store
            .register_owner(&owner("mailto:a@example.com", 1))
            .await
            .unwrap();
        let mut thief = owner("mailto:b@example.com", 2);
        thief.thumbprint = "tp-mailto:a@example.com".into();
        let error = store.register_owner(&thief).await.unwrap_err();
        let StoreError::OwnerKeyInUse {
            ref thumbprint,
            ref owner,
        } = error
        else {
            panic!("a reused key must clash: {error}");
        };
        assert_eq!(thumbprint, "tp-mailto:a@example.com");
        assert_eq!(owner, "mailto:a@example.com");
        assert_eq!(
            error.to_string(),
            "the key tp-mailto:a@example.com already belongs to owner mailto:a@example.com"
        );
        assert_eq!(store.count(Table::Owners).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn revoking_twice_keeps_the_first_time() {
        let (_dir, store) = store().await;
        let a = owner("mailto:a@example.com", 1);
        store.register_owner(&a).await.unwrap();
        let changes = store.subscribe();
        let revoked = store.revoke_owner(&a.id, 100).await.unwrap();
        assert_eq!(revoked.revoked_at, 100);
        assert!(changes.has_changed().unwrap());
        let again = store.revoke_owner(&a.id, 200).await.unwrap();
        assert_eq!(again.revoked_at, 100);
        assert_eq!(store.get_owner(&a.id).await.unwrap().revoked_at, 100);
        assert!(matches!(
            store.revoke_owner("mailto:nobody@example.com", 1).await,
            Err(StoreError::OwnerNotFound(id)) if id == "mailto:nobody@example.com"
        ));
        assert_eq!(
            StoreError::OwnerRevoked {
                id: a.id.clone(),
                revoked_at: 100
            }
            .to_string(),
            "owner mailto:a@example.com was revoked at 1970-01-01T00:01:40Z"
        );
    }

    #[tokio::test]
    async fn revocation_marks_only_the_owners_reservations() {
        let (_dir, store) = store().await;
        let a = owner("mailto:a@example.com", 1);
        let b = owner("mailto:b@example.com", 1);
        store.register_owner(&a).await.unwrap();
        store.register_owner(&b).await.unwrap();
        for (entry, owner_id) in [("ea1", &a.id), ("ea2", &a.id), ("eb1", &b.id)] {
            store.reserve_serials(entry, owner_id, 64, 1).await.unwrap();
        }
        // No entry rows exist here, so every reservation counts as deleted
        // at 1; revoking marks the rest. Clear that first.
        sqlx::query("UPDATE bound_serials SET revoked_at = 0")
            .execute(&store.pool)
            .await
            .unwrap();
        store.revoke_owner(&a.id, 100).await.unwrap();
        assert_eq!(
            super::super::reservations_revoked_at(&store).await,
            [("ea1".into(), 100), ("ea2".into(), 100), ("eb1".into(), 0)]
        );
        // A reservation made after the revocation is born revoked.
        store.reserve_serials("ea3", &a.id, 64, 200).await.unwrap();
        let late = store.revoked_reservations().await.unwrap();
        assert_eq!(
            late.iter()
                .find(|r| r.entry_id == "ea3")
                .unwrap()
                .revoked_at,
            100
        );
    }
}
