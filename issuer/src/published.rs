//! What the issuer currently publishes about revocations: the CRLs and the
//! signed revocation list, held for the entry streams and the HTTP endpoint
//! to watch. [`crate::revocations`] derives and re-signs them.

use std::sync::Arc;

use tokio::sync::watch;
use workload_api::revocation::RevokedOwner;

use crate::ca::{RevokedCounters, SignedCrl};

/// What is currently published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Increases with every publication, across restarts (it starts from
    /// the clock), so consumers can tell news from a replay.
    pub seq: u64,
    /// Every replica's CRLs: this one's, then the others'.
    pub crls: Vec<SignedCrl>,
    /// The signed revocation list (compact JWS); empty before the first.
    pub list: String,
    pub expires_at: i64,
    /// What was revoked, to tell whether a re-sign is needed.
    pub(crate) revoked: Vec<RevokedCounters>,
    pub(crate) owners: Vec<RevokedOwner>,
    pub(crate) authorities: Vec<String>,
    /// The CRLs this replica signed, and those other replicas published.
    pub(crate) own_crls: Vec<SignedCrl>,
    pub(crate) others_crls: Vec<SignedCrl>,
}

/// The publisher: holds the current publication for everyone to watch.
#[derive(Debug)]
pub struct Revocations {
    current: watch::Sender<Arc<Published>>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

impl Revocations {
    pub fn new() -> Self {
        let (current, _) = watch::channel(Arc::new(Published::default()));
        Revocations { current }
    }

    pub fn current(&self) -> Arc<Published> {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.current.subscribe()
    }

    /// Publishes `next`.
    pub(crate) fn publish(&self, next: Published) {
        self.current.send_replace(Arc::new(next));
    }
}
