//! Counters for the derived serials of owner-bound X509-SVIDs (see the
//! CA's `serials`). A counter is reserved in the store before it is used,
//! in blocks that double from [`FIRST_BLOCK`] to [`LARGEST_BLOCK`], so most
//! signing calls write nothing and a CRL lists at most a block more than
//! was used. After a restart counting resumes past the stored
//! reservation: a serial is never given twice.

use std::collections::HashMap;

use tokio::sync::Mutex;

use crate::store::{Store, StoreError};

/// The first block an entry reserves.
pub const FIRST_BLOCK: u64 = 64;
/// The largest block an entry reserves at once.
pub const LARGEST_BLOCK: u64 = 4096;

/// One entry's counters in this process.
#[derive(Debug, Clone, Copy)]
struct Block {
    next: u64,
    reserved: u64,
    size: u64,
}

/// Every owner-bound entry's counters, shared by the signing calls.
#[derive(Debug, Default)]
pub struct SerialCounters {
    blocks: Mutex<HashMap<String, Block>>,
}

impl SerialCounters {
    /// `count` consecutive counters for `entry_id` (of owner `owner_id`):
    /// the first of them. Reserves more in the store when the block held
    /// runs out.
    pub async fn take(
        &self,
        store: &Store,
        entry_id: &str,
        owner_id: &str,
        count: u64,
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut blocks = self.blocks.lock().await;
        let mut block = match blocks.get(entry_id) {
            Some(block) => *block,
            None => {
                // Counters below the stored reservation may have been used
                // before a restart: continue above it.
                let held = store.serial_reservation(entry_id).await?.unwrap_or(0);
                Block {
                    next: held,
                    reserved: held,
                    size: FIRST_BLOCK,
                }
            }
        };
        if block.next + count > block.reserved {
            let up_to = block.next + count + block.size;
            store
                .reserve_serials(entry_id, owner_id, up_to, now)
                .await?;
            block.reserved = up_to;
            block.size = (block.size * 2).min(LARGEST_BLOCK);
        }
        let first = block.next;
        block.next += count;
        blocks.insert(entry_id.to_owned(), block);
        Ok(first)
    }

    /// Forgets the counters of deleted entries, so memory follows the
    /// entries that exist. (Entry ids are never reused.)
    pub async fn forget(&self, entry_ids: &[String]) {
        let mut blocks = self.blocks.lock().await;
        for id in entry_ids {
            blocks.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_are_reserved_in_growing_blocks_and_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("sigil.db"))
            .await
            .unwrap();
        let counters = SerialCounters::default();
        assert_eq!(counters.take(&store, "e1", "o", 10, 1).await.unwrap(), 0);
        assert_eq!(store.serial_reservation("e1").await.unwrap(), Some(74));
        assert_eq!(counters.take(&store, "e1", "o", 60, 1).await.unwrap(), 10);
        // Still within the first block: nothing written.
        assert_eq!(store.serial_reservation("e1").await.unwrap(), Some(74));
        assert_eq!(counters.take(&store, "e1", "o", 10, 1).await.unwrap(), 70);
        assert_eq!(
            store.serial_reservation("e1").await.unwrap(),
            Some(70 + 10 + 128)
        );
        // A restarted issuer continues above the reservation.
        let restarted = SerialCounters::default();
        assert_eq!(restarted.take(&store, "e1", "o", 1, 1).await.unwrap(), 208);
        // Forgotten counters resume past the reservation too.
        restarted.forget(&["e1".to_owned()]).await;
        assert_eq!(
            restarted.take(&store, "e1", "o", 1, 1).await.unwrap(),
            208 + 1 + 64
        );
    }
}
