//! Federation relationships and the bundles of foreign trust domains. A
//! fetched bundle whose `spiffe_sequence` is lower than the one held is
//! older (SPIFFE_Federation.md section 4.2) and is refused in the same
//! transaction that compares them, so two concurrent fetches cannot put an
//! older bundle back. An operator's bundle replaces whatever is held, and
//! the next fetch replaces it in turn.

use sqlx::Row;

use super::notify::Change;
use super::{finish, BundleOrigin, Federation, FederationPoll, ForeignBundle, Store, StoreError};

const FEDERATION_COLUMNS: &str =
    "trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id, created_at, updated_at";
const BUNDLE_COLUMNS: &str = "trust_domain, bundle, sequence, origin, updated_at";

/// What storing a foreign bundle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleWrite {
    /// Stored: new, or different from the one held.
    Stored,
    /// The same bundle was held already.
    Unchanged,
    /// A fetched bundle older than the one held (a lower sequence): kept out.
    Older { held: i64, fetched: i64 },
}

impl Store {
    pub async fn create_federation(&self, federation: &Federation) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO federations ({FEDERATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (trust_domain) DO NOTHING"
        );
        let insert = sqlx::query(&sql)
            .bind(&federation.trust_domain)
            .bind(&federation.bundle_endpoint_url)
            .bind(&federation.profile)
            .bind(&federation.endpoint_spiffe_id)
            .bind(federation.created_at)
            .bind(federation.updated_at);
        self.change_row(insert, Change::Federations, || {
            StoreError::FederationExists(federation.trust_domain.clone())
        })
        .await
    }

    /// Replaces a relationship's endpoint parameters.
    pub async fn update_federation(&self, federation: &Federation) -> Result<(), StoreError> {
        let update = sqlx::query(
            "UPDATE federations SET bundle_endpoint_url = $2, profile = $3, \
             endpoint_spiffe_id = $4, updated_at = $5 WHERE trust_domain = $1",
        )
        .bind(&federation.trust_domain)
        .bind(&federation.bundle_endpoint_url)
        .bind(&federation.profile)
        .bind(&federation.endpoint_spiffe_id)
        .bind(federation.updated_at);
        self.change_row(update, Change::Federations, || {
            StoreError::FederationNotFound(federation.trust_domain.clone())
        })
        .await
    }

    /// Ends a relationship: it is no longer polled, and its bundle goes
    /// (section 6.3). Says whether a bundle was held.
    pub async fn delete_federation(&self, trust_domain: &str) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let result = async {
            let done = sqlx::query("DELETE FROM federations WHERE trust_domain = $1")
                .bind(trust_domain)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::FederationNotFound(trust_domain.to_owned()));
            }
            sqlx::query("DELETE FROM federation_polls WHERE trust_domain = $1")
                .bind(trust_domain)
                .execute(&mut *tx)
                .await?;
            let bundle = sqlx::query("DELETE FROM foreign_bundles WHERE trust_domain = $1")
                .bind(trust_domain)
                .execute(&mut *tx)
                .await?;
            Ok(bundle.rows_affected() > 0)
        }
        .await;
        self.commit_change(tx, result, |_| Change::Federations)
            .await
    }

    /// Records a poll of `trust_domain`'s endpoint by `replica`, while the
    /// relationship exists: `failed` counts it among the failures (a good
    /// poll clears them), and `last_error` says what went wrong, if
    /// anything did.
    pub async fn record_federation_poll(
        &self,
        trust_domain: &str,
        replica: &str,
        polled_at: i64,
        failed: bool,
        last_error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO federation_polls (trust_domain, polled_at, failures, last_error, replica) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS \
             (SELECT 1 FROM federations WHERE trust_domain = $1) \
             ON CONFLICT (trust_domain) DO UPDATE SET polled_at = $2, \
             failures = CASE WHEN $3 = 0 THEN 0 ELSE federation_polls.failures + 1 END, \
             last_error = $4, replica = $5",
        )
        .bind(trust_domain)
        .bind(polled_at)
        .bind(i64::from(failed))
        .bind(last_error)
        .bind(replica)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How the last polls of `trust_domain`'s endpoint went; none before
    /// the first.
    pub async fn federation_poll(
        &self,
        trust_domain: &str,
    ) -> Result<Option<FederationPoll>, StoreError> {
        let row = sqlx::query(
            "SELECT polled_at, failures, last_error, replica FROM federation_polls \
             WHERE trust_domain = $1",
        )
        .bind(trust_domain)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(FederationPoll {
                polled_at: row.try_get("polled_at")?,
                failures: row.try_get("failures")?,
                last_error: row.try_get("last_error")?,
                replica: row.try_get("replica")?,
            })
        })
        .transpose()
    }

    pub async fn get_federation(&self, trust_domain: &str) -> Result<Federation, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {FEDERATION_COLUMNS} FROM federations WHERE trust_domain = $1"
        ))
        .bind(trust_domain)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::FederationNotFound(trust_domain.to_owned()))?;
        federation_from_row(&row)
    }

    pub async fn list_federations(&self) -> Result<Vec<Federation>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {FEDERATION_COLUMNS} FROM federations ORDER BY trust_domain"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(federation_from_row).collect()
    }

    /// Stores `bundle` as the latest of its trust domain. With
    /// `refuse_older` (a fetched bundle that carries a sequence), one with a
    /// lower sequence than the held one is refused as older; an operator's
    /// or a bootstrap bundle, or one without a sequence, replaces it.
    pub async fn put_foreign_bundle(
        &self,
        bundle: &ForeignBundle,
        refuse_older: bool,
    ) -> Result<BundleWrite, StoreError> {
        let mut tx = self.write_tx().await?;
        let result = async {
            let held: Option<(String, i64, String)> = sqlx::query(
                "SELECT bundle, sequence, origin FROM foreign_bundles WHERE trust_domain = $1",
            )
            .bind(&bundle.trust_domain)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .transpose()?;
            match held {
                Some((text, _, origin)) if text == bundle.bundle => {
                    // The same bundle, now vouched for by another source
                    // (the endpoint confirming a bootstrap bundle): say so.
                    if origin != bundle.origin.as_str() {
                        sqlx::query(
                            "UPDATE foreign_bundles SET origin = $2, updated_at = $3 \
                             WHERE trust_domain = $1",
                        )
                        .bind(&bundle.trust_domain)
                        .bind(bundle.origin.as_str())
                        .bind(bundle.updated_at)
                        .execute(&mut *tx)
                        .await?;
                    }
                    return Ok(BundleWrite::Unchanged);
                }
                Some((_, sequence, _)) if refuse_older && bundle.sequence < sequence => {
                    return Ok(BundleWrite::Older {
                        held: sequence,
                        fetched: bundle.sequence,
                    })
                }
                _ => {}
            }
            sqlx::query(&format!(
                "INSERT INTO foreign_bundles ({BUNDLE_COLUMNS}) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (trust_domain) DO UPDATE SET bundle = $2, sequence = $3, \
                 origin = $4, updated_at = $5"
            ))
            .bind(&bundle.trust_domain)
            .bind(&bundle.bundle)
            .bind(bundle.sequence)
            .bind(bundle.origin.as_str())
            .bind(bundle.updated_at)
            .execute(&mut *tx)
            .await?;
            Ok(BundleWrite::Stored)
        }
        .await;
        match result {
            Ok(BundleWrite::Stored) => {
                self.commit_change(tx, result, |_| Change::ForeignBundles)
                    .await
            }
            _ => finish(tx, result).await,
        }
    }

    pub async fn get_foreign_bundle(
        &self,
        trust_domain: &str,
    ) -> Result<ForeignBundle, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {BUNDLE_COLUMNS} FROM foreign_bundles WHERE trust_domain = $1"
        ))
        .bind(trust_domain)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::BundleNotFound(trust_domain.to_owned()))?;
        bundle_from_row(&row)
    }

    pub async fn list_foreign_bundles(&self) -> Result<Vec<ForeignBundle>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BUNDLE_COLUMNS} FROM foreign_bundles ORDER BY trust_domain"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(bundle_from_row).collect()
    }

    pub async fn delete_foreign_bundle(&self, trust_domain: &str) -> Result<(), StoreError> {
        let delete =
            sqlx::query("DELETE FROM foreign_bundles WHERE trust_domain = $1").bind(trust_domain);
        self.change_row(delete, Change::ForeignBundles, || {
            StoreError::BundleNotFound(trust_domain.to_owned())
        })
        .await
    }
}

fn federation_from_row(row: &sqlx::any::AnyRow) -> Result<Federation, StoreError> {
    Ok(Federation {
        trust_domain: row.try_get("trust_domain")?,
        bundle_endpoint_url: row.try_get("bundle_endpoint_url")?,
        profile: row.try_get("profile")?,
        endpoint_spiffe_id: row.try_get("endpoint_spiffe_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn bundle_from_row(row: &sqlx::any::AnyRow) -> Result<ForeignBundle, StoreError> {
    let origin: String = row.try_get("origin")?;
    Ok(ForeignBundle {
        trust_domain: row.try_get("trust_domain")?,
        bundle: row.try_get("bundle")?,
        sequence: row.try_get("sequence")?,
        origin: BundleOrigin::parse(&origin).ok_or_else(|| StoreError::Corrupt {
            column: "foreign_bundles.origin",
            source: serde::de::Error::custom(format!("unknown origin {origin:?}")),
        })?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::temp_store as store;
    use super::*;

    fn bundle(sequence: i64, origin: BundleOrigin, text: &str) -> ForeignBundle {
        ForeignBundle {
            trust_domain: "partner.org".into(),
            bundle: text.into(),
            sequence,
            origin,
            updated_at: 1,
        }
    }

    /// An https_web relationship with partner.org.
    fn relationship() -> Federation {
        Federation {
            trust_domain: "partner.org".into(),
            bundle_endpoint_url: "https://partner.org/bundle".into(),
            profile: "https_web".into(),
            endpoint_spiffe_id: String::new(),
            created_at: 1,
            updated_at: 1,
        }
    }

    #[tokio::test]
    async fn polls_are_counted_while_the_relationship_lasts() {
        let (_dir, store) = store().await;
        let poll = |at: i64, failed: bool, error: &'static str| {
            let store = store.clone();
            async move {
                store
                    .record_federation_poll("partner.org", "replica-a", at, failed, error)
                    .await
                    .unwrap();
                store.federation_poll("partner.org").await.unwrap()
            }
        };
        // No relationship, no record.
        assert_eq!(poll(1, true, "refused").await, None);
        store.create_federation(&relationship()).await.unwrap();
        assert_eq!(poll(2, true, "refused").await.unwrap().failures, 1);
        let second = poll(3, true, "timed out").await.unwrap();
        assert_eq!(
            second,
            FederationPoll {
                polled_at: 3,
                failures: 2,
                last_error: "timed out".into(),
                replica: "replica-a".into(),
            }
        );
        // A good poll clears the failures; a refused bundle is no failure
        // but says why.
        assert_eq!(poll(4, false, "").await.unwrap().failures, 0);
        let refused = poll(5, false, "older").await.unwrap();
        assert_eq!(
            (refused.failures, refused.last_error.as_str()),
            (0, "older")
        );
        store.delete_federation("partner.org").await.unwrap();
        assert_eq!(store.federation_poll("partner.org").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_fetched_bundle_older_than_the_held_one_is_refused() {
        let (_dir, store) = store().await;
        let put = |b: ForeignBundle| {
            let store = store.clone();
            let fetched = b.origin == BundleOrigin::Endpoint;
            async move { store.put_foreign_bundle(&b, fetched).await.unwrap() }
        };
        assert_eq!(
            put(bundle(5, BundleOrigin::Endpoint, "v5")).await,
            BundleWrite::Stored
        );
        assert_eq!(
            put(bundle(5, BundleOrigin::Endpoint, "v5")).await,
            BundleWrite::Unchanged
        );
        // The same bundle from another source is unchanged, its origin noted.
        assert_eq!(
            put(bundle(5, BundleOrigin::Operator, "v5")).await,
            BundleWrite::Unchanged
        );
        let held = store.get_foreign_bundle("partner.org").await.unwrap();
        assert_eq!(held.origin, BundleOrigin::Operator);
        assert_eq!(
            put(bundle(4, BundleOrigin::Endpoint, "v4")).await,
            BundleWrite::Older {
                held: 5,
                fetched: 4
            }
        );
        assert_eq!(
            store
                .get_foreign_bundle("partner.org")
                .await
                .unwrap()
                .bundle,
            "v5"
        );
        // An operator may set any bundle; the next fetch replaces it.
        assert_eq!(
            put(bundle(1, BundleOrigin::Operator, "set")).await,
            BundleWrite::Stored
        );
        assert_eq!(
            put(bundle(2, BundleOrigin::Endpoint, "v2")).await,
            BundleWrite::Stored
        );
        assert_eq!(store.list_foreign_bundles().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn deleting_a_relationship_deletes_its_bundle() {
        let (_dir, store) = store().await;
        let federation = relationship();
        store.create_federation(&federation).await.unwrap();
        assert!(matches!(
            store.create_federation(&federation).await,
            Err(StoreError::FederationExists(_))
        ));
        store
            .put_foreign_bundle(&bundle(1, BundleOrigin::Endpoint, "v1"), true)
            .await
            .unwrap();
        assert!(store.delete_federation("partner.org").await.unwrap());
        assert!(matches!(
            store.get_foreign_bundle("partner.org").await,
            Err(StoreError::BundleNotFound(_))
        ));
        assert!(matches!(
            store.delete_federation("partner.org").await,
            Err(StoreError::FederationNotFound(_))
        ));
    }
}
