//! The sequencer: the one lease holder that moves queued records into the
//! tree. Each step is one transaction: read the head, take queued records in
//! id order, seal them as leaves at the next indexes, store their hashes,
//! sign a checkpoint and drop the records. A crash at any point leaves
//! either the whole step or none of it; checkpoints are keyed by size, so
//! two holders can never record two roots for one size.

use std::collections::HashMap;
use std::time::Duration;

use signed_note::Note;
use tlog_tiles::Checkpoint;
use tokio::sync::watch;

use super::tree::{frontier_indexes, Frontier, Hash};
use super::{leaf, EventLog};
use crate::store::{LogHead, StoreError};

/// The lease's name in the database.
pub const LEASE: &str = "log-sequencer";
/// How long a holder's lease lasts unless renewed.
const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often the sequencer looks for records when nobody rings.
const TICK: Duration = Duration::from_millis(500);
/// The least time between steps: records arriving meanwhile share one
/// transaction and one checkpoint.
const BATCH_GAP: Duration = Duration::from_millis(200);
/// Records per step: bounds a step's transaction.
const STEP_RECORDS: u32 = 2048;

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored tree is inconsistent: {0}")]
    Tree(String),
}

/// Signs the checkpoint of a tree of `size` leaves with root `root`.
pub fn sign_checkpoint(log: &EventLog, size: u64, root: Hash) -> String {
    let body = Checkpoint::new(log.origin(), size, root, "")
        .expect("the origin is a valid key name")
        .to_bytes();
    let mut note = Note::new(&body, &[]).expect("a checkpoint is a valid note text");
    note.add_sigs(&[log.key()]).expect("the log key signs");
    String::from_utf8(note.to_bytes()).expect("notes are UTF-8")
}

/// One sequencing step. Returns the new head when the tree grew (or was
/// first made), None when nothing was queued.
pub async fn step(log: &EventLog, now: i64) -> Result<Option<LogHead>, StepError> {
    let mut tx = log.store().begin_sequencing().await?;
    let head = tx.head().await?;
    let queued = tx.queued(STEP_RECORDS).await?;
    if queued.is_empty() && head.is_some() {
        tx.rollback().await;
        return Ok(None);
    }
    let size = head.as_ref().map_or(0, |h| h.size);
    let stored = tx.hashes(&frontier_indexes(size)).await?;
    let stored: HashMap<u64, Hash> = stored.into_iter().map(|(i, h)| (i, Hash(h))).collect();
    let mut frontier = Frontier::new(size, &stored).map_err(|e| StepError::Tree(e.to_string()))?;
    if let Some(head) = &head {
        if frontier.root().0 != head.root {
            return Err(StepError::Tree(format!(
                "the stored hashes give another root than the checkpoint of size {size}"
            )));
        }
    }
    let mut leaves = Vec::with_capacity(queued.len());
    let mut hashes = Vec::with_capacity(queued.len() * 2);
    for (id, record) in &queued {
        let index = frontier.size();
        match leaf::seal(record, index, log.key()) {
            Ok(sealed) => {
                let (first, new) = frontier.append(sealed.as_bytes());
                hashes.extend(
                    new.iter()
                        .enumerate()
                        .map(|(offset, hash)| (first + offset as u64, hash.0)),
                );
                leaves.push((index, sealed));
            }
            // Appends check records, so this is a record written by other
            // means; it cannot become a leaf, and must not stop the rest.
            Err(error) => {
                tracing::error!(%id, %error, "event log: dropping a queued record that cannot be sealed")
            }
        }
    }
    tx.add_leaves(&leaves).await?;
    tx.add_hashes(&hashes).await?;
    let ids: Vec<String> = queued.into_iter().map(|(id, _)| id).collect();
    tx.dequeue(&ids).await?;
    let root = frontier.root();
    let new_head = LogHead {
        size: frontier.size(),
        root: root.0,
        note: sign_checkpoint(log, frontier.size(), root),
    };
    if head.as_ref().is_some_and(|h| h.size == new_head.size) {
        // Only unsealable records were taken: nothing new to sign.
        tx.commit().await?;
        return Ok(None);
    }
    tx.add_checkpoint(&new_head, now).await?;
    tx.commit().await?;
    metrics::gauge!(crate::metrics::EVENT_LOG_SIZE).set(new_head.size as f64);
    Ok(Some(new_head))
}

/// Sequences everything queued, if this process can take the lease: at
/// start, so the first request finds a checkpoint. The lease is released
/// after, for [`run`] to take with its own holder id.
pub async fn catch_up(log: &EventLog) -> Result<(), StepError> {
    if !log.signs() {
        return Ok(());
    }
    let holder = hex::encode(crate::ids::random_bytes::<8>());
    let now_ms = crate::clock::unix_millis_now();
    if !log
        .store()
        .hold_lease(
            LEASE,
            &holder,
            now_ms,
            now_ms + LEASE_TTL.as_millis() as i64,
        )
        .await?
    {
        return Ok(());
    }
    let result = async {
        while let Some(head) = step(log, now_ms / 1000).await? {
            log.inner.heads.send_replace(Some(head));
        }
        Ok(())
    }
    .await;
    log.store().release_lease(LEASE, &holder).await?;
    result
}

/// Runs the sequencer while this process holds the lease. A process
/// without the log's key never competes for it. The lease's holder names
/// `replica`, so an operator can tell which replica sequences.
pub async fn run(log: EventLog, replica: &str, mut shutdown: watch::Receiver<bool>) {
    if !log.signs() {
        let _ = shutdown.wait_for(|stop| *stop).await;
        return;
    }
    let holder = format!("{replica}/{}", hex::encode(crate::ids::random_bytes::<8>()));
    let mut held = false;
    loop {
        let now_ms = crate::clock::unix_millis_now();
        match log
            .store()
            .hold_lease(
                LEASE,
                &holder,
                now_ms,
                now_ms + LEASE_TTL.as_millis() as i64,
            )
            .await
        {
            Ok(holds) => {
                if holds != held {
                    tracing::info!(holder = %holder, holds, "event log sequencer lease");
                }
                held = holds;
            }
            Err(error) => {
                tracing::warn!(%error, "event log: cannot renew the sequencer lease");
                held = false;
            }
        }
        if held {
            // Drain what is queued, a step at a time.
            loop {
                match step(&log, now_ms / 1000).await {
                    Ok(Some(head)) => {
                        log.inner.heads.send_replace(Some(head));
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::error!(%error, "event log: sequencing failed; retrying");
                        break;
                    }
                }
            }
        }
        let stop = tokio::select! {
            _ = async {
                tokio::select! {
                    _ = log.inner.queued.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
                tokio::time::sleep(BATCH_GAP).await;
            } => false,
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        if stop {
            if held {
                let _ = log.store().release_lease(LEASE, &holder).await;
            }
            return;
        }
    }
}
