//! What every endpoint of the issuer shares.

use std::sync::Arc;

use crate::ca::Ca;
use crate::clock::Clock;
use crate::config::Config;
use crate::published::Revocations;
use crate::serials::SerialCounters;
use crate::store::Store;

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
}
