//! The signed event log: every issuance and every use of a credential in
//! one append-only RFC 6962 Merkle tree, with C2SP checkpoints signed by the
//! log key and served as C2SP tlog-tiles.
//!
//! - [`EventLog::append`]: events become durable rows before it returns
//!   (grouped into one transaction with concurrent appends); callers such as
//!   issuance wait for that, not for the tree.
//! - [`sequencer`]: the one holder of the sequencer lease moves queued
//!   records into the tree and signs a checkpoint, several times a second
//!   while events arrive.
//! - [`reads`]: tiles, proofs and exports from the stored tree.
//! - [`verify`]: the offline check of an export, for auditors.

/// The signed-note crate whose types this module's API takes.
pub use signed_note;

pub mod key;
pub mod leaf;
pub mod reads;
pub mod sequencer;
pub mod tiles;
pub mod tree;
pub mod verify;
pub mod witnessed;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch, Notify};
use workload_api::events::Event;

use crate::store::{LogHead, Store};
use key::LogKey;

/// The log's origin (and its key's name) for a trust domain.
pub fn origin(trust_domain: &workload_api::id::TrustDomain) -> String {
    format!("{trust_domain}/sigil-event-log")
}

/// Why events could not be appended.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    #[error("event refused: {0}")]
    Refused(String),
    #[error("the event log could not store the events: {0}")]
    Store(String),
    #[error("the event log is shut down")]
    Closed,
}

/// How many queued records one write takes at most.
const WRITE_BATCH: usize = 512;

struct Pending {
    records: Vec<String>,
    done: oneshot::Sender<Result<(), AppendError>>,
}

/// The issuer's handle on the log.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    key: LogKey,
    /// The issuer's SPIFFE ID: the actor of the events it witnesses.
    actor: String,
    writer: mpsc::Sender<Pending>,
    ids: QueueIds,
    /// Rung after records are queued, so the sequencer need not poll hard.
    queued: Notify,
    heads: watch::Sender<Option<LogHead>>,
    /// Whether `key` is the log's key: only then may this process sequence.
    signs: bool,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("origin", &self.origin())
            .field("actor", &self.inner.actor)
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// Opens the log on `store` with `key`, starting its writer task.
    pub async fn open(store: Store, key: LogKey, actor: String) -> Result<Self, AppendError> {
        let head = store
            .log_head()
            .await
            .map_err(|e| AppendError::Store(e.to_string()))?;
        let ours = key.verifier_key();
        let logs = store
            .claim_log_key(&ours)
            .await
            .map_err(|e| AppendError::Store(e.to_string()))?;
        let signs = logs == ours;
        if !signs {
            tracing::warn!(
                this_key = %ours,
                log_key = %logs,
                "this issuer's log key is not the event log's: it appends events but never \
                 sequences them; give every replica the log's key (log_key_file) so any can take over"
            );
        }
        let (writer, requests) = mpsc::channel(1024);
        let inner = Arc::new(Inner {
            store,
            key,
            actor,
            writer,
            ids: QueueIds::new(),
            queued: Notify::new(),
            heads: watch::channel(head).0,
            signs,
        });
        tokio::spawn(write_loop(Arc::downgrade(&inner), requests));
        Ok(EventLog { inner })
    }

    /// The log's origin, which is also its key's name.
    pub fn origin(&self) -> &str {
        self.inner.key.name()
    }

    pub fn key(&self) -> &LogKey {
        &self.inner.key
    }

    /// Whether this process holds the log's key, and so may sequence.
    pub fn signs(&self) -> bool {
        self.inner.signs
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The issuer's SPIFFE ID, the actor of its own events.
    pub fn actor(&self) -> &str {
        &self.inner.actor
    }

    /// The latest checkpoint, as the sequencer last signed it.
    pub fn subscribe(&self) -> watch::Receiver<Option<LogHead>> {
        self.inner.heads.subscribe()
    }

    /// Appends events the issuer witnessed. Returns once they are durable;
    /// they reach the tree at the sequencer's next step.
    pub async fn append(&self, events: &[Event]) -> Result<(), AppendError> {
        if events.is_empty() {
            return Ok(());
        }
        let records = events
            .iter()
            .map(|e| leaf::record(e).map_err(|e| AppendError::Refused(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        self.append_records(records).await
    }

    /// Appends queued records (canonical JSON) as they are.
    pub async fn append_records(&self, records: Vec<String>) -> Result<(), AppendError> {
        if let Some(big) = records.iter().find(|r| r.len() > leaf::MAX_RECORD_BYTES) {
            return Err(AppendError::Refused(format!(
                "a record of {} bytes is over the {} byte limit",
                big.len(),
                leaf::MAX_RECORD_BYTES
            )));
        }
        let (done, result) = oneshot::channel();
        self.inner
            .writer
            .send(Pending { records, done })
            .await
            .map_err(|_| AppendError::Closed)?;
        result.await.map_err(|_| AppendError::Closed)?
    }

    /// Appends records an agent signed, checked by the caller, in seq
    /// order; returns the highest seq now held for `agent_id`.
    pub async fn append_agent_records(
        &self,
        agent_id: &str,
        records: Vec<(u64, String)>,
    ) -> Result<u64, crate::store::StoreError> {
        let rows: Vec<(u64, String, String)> = records
            .into_iter()
            .map(|(seq, record)| (seq, self.inner.ids.next(), record))
            .collect();
        let last = self
            .inner
            .store
            .queue_agent_records(agent_id, &rows)
            .await?;
        self.inner.queued.notify_one();
        Ok(last)
    }

    /// An event by the issuer, at `at`.
    pub fn event(&self, kind: workload_api::events::EventKind, at: SystemTime) -> Event {
        Event::new(kind, self.inner.actor.clone(), at)
    }
}

/// Queue ids sort by time, then by a per-process counter, then by a random
/// writer id that keeps replicas' ids apart.
struct QueueIds {
    writer: String,
    counter: AtomicU32,
}

impl QueueIds {
    fn new() -> Self {
        QueueIds {
            writer: hex::encode(crate::ids::random_bytes::<4>()),
            counter: AtomicU32::new(0),
        }
    }

    fn next(&self) -> String {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{ms:016x}{n:08x}{}", self.writer)
    }
}

/// Takes every append waiting and writes them in one transaction: a burst
/// of issuance costs one commit, not one per event.
async fn write_loop(inner: std::sync::Weak<Inner>, mut requests: mpsc::Receiver<Pending>) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        let mut count = batch[0].records.len();
        while count < WRITE_BATCH {
            match requests.try_recv() {
                Ok(more) => {
                    count += more.records.len();
                    batch.push(more);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let rows: Vec<(String, String)> = batch
            .iter()
            .flat_map(|p| p.records.iter().map(|r| (inner.ids.next(), r.clone())))
            .collect();
        let result = inner
            .store
            .queue_log_records(&rows)
            .await
            .map_err(|e| AppendError::Store(e.to_string()));
        if result.is_ok() {
            inner.queued.notify_one();
        }
        for pending in batch {
            let _ = pending.done.send(result.clone());
        }
    }
}
