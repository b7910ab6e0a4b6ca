//! Events the agent witnesses for the issuer's event log: credentials it
//! hands to workloads (one event per process and credential) and the
//! verification reports of services on its socket. They queue on disk in
//! order ([`queue`]) and are sent signed with the agent's SVID key, each
//! numbered so the issuer takes it exactly once ([`sender`]).

pub mod queue;
pub mod sender;

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::Notify;
use workload_api::events::{Event, EventKind};
use workload_api::source::{CredentialKind, Delivery};

use queue::{EventQueue, QueueError};

/// How many (process, credential) pairs are remembered as already logged:
/// a bound on memory; a pair forgotten and seen again is logged again.
const REMEMBERED_DELIVERIES: usize = 16_384;

/// The agent's events.
#[derive(Debug)]
pub struct AgentEvents {
    queue: Mutex<EventQueue>,
    /// Rung when events are queued.
    pub(crate) queued: Notify,
    seen: Mutex<SeenDeliveries>,
}

/// Who got which credential, bounded, oldest forgotten first.
#[derive(Debug, Default)]
struct SeenDeliveries {
    set: HashSet<DeliveryKey>,
    order: VecDeque<DeliveryKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DeliveryKey {
    pid: Option<i32>,
    uid: u32,
    kind: CredentialKind,
    handle: String,
}

impl SeenDeliveries {
    /// True the first time `key` is seen (while remembered).
    fn first(&mut self, key: DeliveryKey) -> bool {
        if self.set.contains(&key) {
            return false;
        }
        if self.order.len() >= REMEMBERED_DELIVERIES {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(key.clone());
        self.set.insert(key);
        true
    }
}

impl AgentEvents {
    /// Opens the queue under `data_dir` for `agent_id`.
    pub fn open(data_dir: &Path, agent_id: &str) -> Result<Self, QueueError> {
        Ok(AgentEvents {
            queue: Mutex::new(EventQueue::open(&data_dir.join("events"), agent_id)?),
            queued: Notify::new(),
            seen: Mutex::new(SeenDeliveries::default()),
        })
    }

    /// Queues an event. A full queue or a failing disk loses it, loudly.
    pub fn record(&self, event: Event) {
        let result = self.queue.lock().expect("event queue").push(event);
        match result {
            Ok(_) => self.queued.notify_one(),
            Err(error) => tracing::error!(%error, "an event for the log was lost"),
        }
    }

    /// Logs what a workload was handed: once per process and credential.
    pub fn delivered(&self, agent_id: &str, delivery: &Delivery<'_>) {
        let selectors: Vec<String> = delivery.selectors.iter().map(|s| s.to_string()).collect();
        let now = SystemTime::now();
        for credential in &delivery.credentials {
            let key = DeliveryKey {
                pid: delivery.pid,
                uid: delivery.uid,
                kind: credential.kind,
                handle: credential.handle.clone(),
            };
            if !self.seen.lock().expect("deliveries").first(key) {
                continue;
            }
            let mut event = Event::new(EventKind::CredentialDelivered, agent_id, now)
                .subject(credential.spiffe_id.clone())
                .entry(credential.entry_id.clone())
                .detail("credential", credential.kind.name())
                .detail("uid", delivery.uid)
                .bounded_list("selectors", &selectors);
            if let Some(pid) = delivery.pid {
                event = event.detail("pid", pid);
            }
            event = match credential.kind {
                CredentialKind::X509Svid => event.serial(credential.handle.clone()),
                CredentialKind::JwtSvid | CredentialKind::WitSvid => {
                    event.jti(credential.handle.clone())
                }
            };
            self.record(event);
        }
    }

    /// How many events wait for the issuer.
    pub fn pending(&self) -> usize {
        self.queue.lock().expect("event queue").pending_len()
    }

    pub(crate) fn with_queue<T>(&self, f: impl FnOnce(&mut EventQueue) -> T) -> T {
        f(&mut self.queue.lock().expect("event queue"))
    }
}
