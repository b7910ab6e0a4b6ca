//! What every endpoint of the issuer shares.

use std::sync::Arc;

use crate::ca::Ca;
use crate::clock::Clock;
use crate::config::Config;
use crate::eventlog::EventLog;
use crate::published::Revocations;
use crate::serials::SerialCounters;
use crate::store::{Store, StoreError};

/// The issuer's subsystems, shared by its endpoints.
#[derive(Debug, Clone)]
pub struct IssuerState {
    pub config: Arc<Config>,
    pub store: Store,
    pub ca: Arc<Ca>,
    pub clock: Arc<dyn Clock>,
    /// The CRLs and revocation list currently published.
    pub revocations: Arc<Revocations>,
    /// The serial counters of owner-bound entries.
    pub serial_counters: Arc<SerialCounters>,
    /// The signed event log.
    pub events: EventLog,
    /// This replica's name among those sharing the database (see
    /// [`crate::trust_bundle::replica_id`]).
    pub replica: Arc<str>,
    /// What entry streams serve, read once per change for all of them.
    pub registrations: Arc<crate::registrations::Registrations>,
}

impl IssuerState {
    /// Deletes an entry and everything delegated below it (revoking their
    /// SVIDs), and forgets their serial counters. Returns the ids deleted.
    pub async fn delete_entry(&self, id: &str, now: i64) -> Result<Vec<String>, StoreError> {
        let deleted = self.store.delete_entry(id, now).await?;
        self.serial_counters.forget(&deleted).await;
        Ok(deleted)
    }
}
