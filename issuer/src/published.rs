//! What the issuer currently publishes about revocations: the CRLs and the
//! signed revocation list, held for the entry streams and the HTTP endpoint
//! to watch. [`crate::revocations`] derives and re-signs them.

use std::sync::Arc;

use tokio::sync::watch;
use workload_api::revocation::RevokedOwner;

use crate::ca::{RevokedCounters, SignedCrl};

/// The owners' revocation list as served: the one stored, which one
/// replica at a time signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedList {
    /// Rises with every list, across replicas and restarts (it starts
    /// from the clock), so consumers can tell news from a replay.
    pub seq: u64,
    /// The signed list (compact JWS).
    pub jws: String,
    pub expires_at: i64,
    /// The replica that signed it.
    pub(crate) signer: String,
    /// The owners it names, to tell whether a new one is needed.
    pub(crate) owners: Vec<RevokedOwner>,
}

/// The CRLs this replica signed for its own X.509 authorities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnCrls {
    /// The CRL number: rises with every signing by this replica.
    pub(crate) number: u64,
    pub(crate) expires_at: i64,
    /// What they revoke, and for which authorities, to tell whether a
    /// re-sign is needed.
    pub(crate) revoked: Vec<RevokedCounters>,
    pub(crate) authorities: Vec<String>,
    pub(crate) crls: Vec<SignedCrl>,
}

/// What is currently published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Rises with every publication of this replica: a stream sends the
    /// revocations again when it moves.
    pub version: u64,
    /// Every replica's CRLs: this one's, then the others'.
    pub crls: Vec<SignedCrl>,
    /// `None` before the first list.
    pub list: Option<PublishedList>,
    pub(crate) own: OwnCrls,
    pub(crate) others_crls: Vec<SignedCrl>,
}

impl Published {
    /// What is served once `own`, `others_crls` and `list` are.
    pub(crate) fn of(
        own: OwnCrls,
        others_crls: Vec<SignedCrl>,
        list: Option<PublishedList>,
    ) -> Self {
        Published {
            version: 0,
            crls: own.crls.iter().chain(&others_crls).cloned().collect(),
            list,
            own,
            others_crls,
        }
    }

    /// The list's seq; 0 before the first.
    pub fn list_seq(&self) -> u64 {
        self.list.as_ref().map_or(0, |list| list.seq)
    }
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

    /// Publishes `next` as the next version.
    pub(crate) fn publish(&self, mut next: Published) {
        self.current.send_modify(|current| {
            next.version = current.version + 1;
            *current = Arc::new(next);
        });
    }
}
