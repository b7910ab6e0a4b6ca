//! The event log's tables: queued records, leaves, node hashes and
//! checkpoints. The tree logic lives in `crate::eventlog`; this is its SQL.

use std::collections::HashMap;

use sqlx::{Any, Row, Transaction};

use super::{Store, StoreError};

/// The latest checkpoint: the tree's size and root, and the signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    pub size: u64,
    pub root: [u8; 32],
    pub note: String,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn hash_from_hex(column: &'static str, text: &str) -> Result<[u8; 32], StoreError> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash).map_err(|e| StoreError::Corrupt {
        column,
        source: serde::de::Error::custom(e),
    })?;
    Ok(hash)
}

fn head_from_row(row: &sqlx::any::AnyRow) -> Result<LogHead, StoreError> {
    Ok(LogHead {
        size: row.try_get::<i64, _>("size")?.max(0) as u64,
        root: hash_from_hex("log_checkpoints.root", row.try_get("root")?)?,
        note: row.try_get("note")?,
    })
}

const HEAD_SQL: &str = "SELECT size, root, note FROM log_checkpoints ORDER BY size DESC LIMIT 1";

impl Store {
    /// Queues records (id, canonical record) in one transaction: once this
    /// returns, they are durable and will be sequenced.
    pub async fn queue_log_records(&self, records: &[(String, String)]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let result = insert_queued(&mut tx, records.iter().map(|(id, r)| (id, r))).await;
        super::finish(tx, result).await
    }

    /// Queues an agent's records, (seq, id, record) in seq order, in one
    /// transaction with its sequence mark: records at or below the mark are
    /// already held and skipped; the rest must follow it without a gap.
    /// Returns the new mark.
    pub async fn queue_agent_records(
        &self,
        agent_id: &str,
        records: &[(u64, String, String)],
    ) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let result = async {
            let last: Option<i64> =
                sqlx::query_scalar("SELECT last_seq FROM agent_event_seqs WHERE agent_id = $1")
                    .bind(agent_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let mut last = last.unwrap_or(0).max(0) as u64;
            let before = last;
            let mut fresh = Vec::with_capacity(records.len());
            for (seq, id, record) in records {
                if *seq <= last {
                    continue;
                }
                if *seq != last + 1 {
                    return Err(StoreError::EventGap {
                        expected: last + 1,
                        got: *seq,
                    });
                }
                fresh.push((id, record));
                last = *seq;
            }
            insert_queued(&mut tx, fresh.into_iter()).await?;
            if last != before {
                sqlx::query(
                    "INSERT INTO agent_event_seqs (agent_id, last_seq) VALUES ($1, $2) \
                     ON CONFLICT (agent_id) DO UPDATE SET last_seq = excluded.last_seq",
                )
                .bind(agent_id)
                .bind(to_i64(last))
                .execute(&mut *tx)
                .await?;
            }
            Ok(last)
        }
        .await;
        super::finish(tx, result).await
    }

    /// How many records wait for the sequencer.
    pub async fn log_queue_len(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM log_queue")
            .fetch_one(&self.pool)
            .await?;
        Ok(n.max(0) as u64)
    }

    /// The latest checkpoint, if one was ever signed.
    pub async fn log_head(&self) -> Result<Option<LogHead>, StoreError> {
        let row = sqlx::query(HEAD_SQL).fetch_optional(&self.pool).await?;
        row.as_ref().map(head_from_row).transpose()
    }

    /// The checkpoint signed at `size`, if any.
    pub async fn log_checkpoint(&self, size: u64) -> Result<Option<LogHead>, StoreError> {
        let row = sqlx::query("SELECT size, root, note FROM log_checkpoints WHERE size = $1")
            .bind(to_i64(size))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(head_from_row).transpose()
    }

    /// Leaves `from..to`, in index order.
    pub async fn log_leaves(&self, from: u64, to: u64) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT leaf FROM log_leaves WHERE idx >= $1 AND idx < $2 ORDER BY idx")
                .bind(to_i64(from))
                .bind(to_i64(to))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| Ok(r.try_get("leaf")?)).collect()
    }

    /// The stored hashes at `indexes` that exist.
    pub async fn log_hashes(&self, indexes: &[u64]) -> Result<HashMap<u64, [u8; 32]>, StoreError> {
        read_hashes(&mut *self.pool.acquire().await?, indexes).await
    }

    /// Which of `names` are marked as logged.
    pub async fn log_marks(&self, names: &[String]) -> Result<Vec<bool>, StoreError> {
        let mut marked = Vec::with_capacity(names.len());
        for name in names {
            let found: Option<String> =
                sqlx::query_scalar("SELECT name FROM log_marks WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
            marked.push(found.is_some());
        }
        Ok(marked)
    }

    /// Names `verifier_key` as the log's signing key, unless one is named
    /// already; returns the log's.
    pub async fn claim_log_key(&self, verifier_key: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO log_key (id, verifier_key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        )
        .bind(verifier_key)
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT verifier_key FROM log_key WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Marks `name` as logged.
    pub async fn mark_logged(&self, name: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO log_marks (name, marked_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Starts a sequencing transaction.
    pub async fn begin_sequencing(&self) -> Result<Sequencing, StoreError> {
        Ok(Sequencing {
            tx: self.write_tx().await?,
        })
    }
}

/// Rows per multi-row statement: well inside every backend's limit on
/// bound parameters.
const ROWS_PER_STATEMENT: usize = 200;

/// `INSERT INTO <table> (<columns>) VALUES ($1, $2), ($3, $4), ...` for
/// `rows` rows of `columns.len()` values.
fn insert_sql(table: &str, columns: &[&str], rows: usize) -> String {
    let width = columns.len();
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", params.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO {table} ({}) VALUES {}",
        columns.join(", "),
        tuples.join(", ")
    )
}

async fn insert_queued<'a>(
    tx: &mut Transaction<'static, Any>,
    rows: impl Iterator<Item = (&'a String, &'a String)>,
) -> Result<(), StoreError> {
    let rows: Vec<_> = rows.collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = insert_sql("log_queue", &["id", "record"], chunk.len());
        let mut query = sqlx::query(&sql);
        for (id, record) in chunk {
            query = query.bind(*id).bind(*record);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

async fn read_hashes(
    conn: &mut sqlx::AnyConnection,
    indexes: &[u64],
) -> Result<HashMap<u64, [u8; 32]>, StoreError> {
    let mut found = HashMap::with_capacity(indexes.len());
    // Bounded IN lists keep every statement within the backends' limits.
    for chunk in indexes.chunks(256) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT idx, hash FROM log_hashes WHERE idx IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for index in chunk {
            query = query.bind(to_i64(*index));
        }
        for row in query.fetch_all(&mut *conn).await? {
            let idx: i64 = row.try_get("idx")?;
            found.insert(
                idx as u64,
                hash_from_hex("log_hashes.hash", row.try_get("hash")?)?,
            );
        }
    }
    Ok(found)
}

/// One sequencing step as a transaction: read the head and the queue,
/// write leaves, hashes and the checkpoint, drop the queued records, and
/// commit all of it or none.
#[derive(Debug)]
pub struct Sequencing {
    tx: Transaction<'static, Any>,
}

impl Sequencing {
    pub async fn head(&mut self) -> Result<Option<LogHead>, StoreError> {
        let row = sqlx::query(HEAD_SQL).fetch_optional(&mut *self.tx).await?;
        row.as_ref().map(head_from_row).transpose()
    }

    /// Up to `limit` queued records, (id, record), in id order.
    pub async fn queued(&mut self, limit: u32) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT id, record FROM log_queue ORDER BY id LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("record")?)))
            .collect()
    }

    pub async fn hashes(&mut self, indexes: &[u64]) -> Result<HashMap<u64, [u8; 32]>, StoreError> {
        read_hashes(&mut self.tx, indexes).await
    }

    /// Stores leaves (index, leaf).
    pub async fn add_leaves(&mut self, leaves: &[(u64, String)]) -> Result<(), StoreError> {
        for chunk in leaves.chunks(ROWS_PER_STATEMENT) {
            let sql = insert_sql("log_leaves", &["idx", "leaf"], chunk.len());
            let mut query = sqlx::query(&sql);
            for (index, leaf) in chunk {
                query = query.bind(to_i64(*index)).bind(leaf);
            }
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Stores node hashes (stored-hash index, hash).
    pub async fn add_hashes(&mut self, hashes: &[(u64, [u8; 32])]) -> Result<(), StoreError> {
        for chunk in hashes.chunks(ROWS_PER_STATEMENT) {
            let sql = insert_sql("log_hashes", &["idx", "hash"], chunk.len());
            let mut query = sqlx::query(&sql);
            for (index, hash) in chunk {
                query = query.bind(to_i64(*index)).bind(hex::encode(hash));
            }
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    pub async fn add_checkpoint(
        &mut self,
        head: &LogHead,
        signed_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO log_checkpoints (size, root, note, signed_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(to_i64(head.size))
        .bind(hex::encode(head.root))
        .bind(&head.note)
        .bind(signed_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Drops the queued records `ids`, now leaves.
    pub async fn dequeue(&mut self, ids: &[String]) -> Result<(), StoreError> {
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!("DELETE FROM log_queue WHERE id IN ({})", params.join(", "));
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Commits the step; dropping a `Sequencing` instead rolls it back.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    pub async fn rollback(self) {
        let _ = self.tx.rollback().await;
    }
}
