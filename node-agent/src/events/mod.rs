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

/// Who got which credential, bounded, oldest forgotten first. Pairs are
/// kept as 64-bit SipHash digests under a key drawn at start: a repeat
/// fetch, the common case on the serving path, allocates nothing.
#[derive(Debug)]
struct SeenDeliveries {
    hasher: std::collections::hash_map::RandomState,
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Default for SeenDeliveries {
    fn default() -> Self {
        SeenDeliveries {
            hasher: std::collections::hash_map::RandomState::new(),
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }
}

impl SeenDeliveries {
    /// True the first time (`pid`, `uid`, `kind`, `handle`) is seen while
    /// remembered.
    fn first(&mut self, pid: Option<i32>, uid: u32, kind: CredentialKind, handle: &str) -> bool {
        use std::hash::BuildHasher;
        let key = self.hasher.hash_one((pid, uid, kind, handle));
        if self.set.contains(&key) {
            return false;
        }
        if self.order.len() >= REMEMBERED_DELIVERIES {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(key);
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
        let now = SystemTime::now();
        let fresh: Vec<_> = {
            let mut seen = self.seen.lock().expect("deliveries");
            delivery
                .credentials
                .iter()
                .filter(|c| seen.first(delivery.pid, delivery.uid, c.kind, &c.handle))
                .collect()
        };
        for credential in fresh {
            let selectors: Vec<String> = delivery.selectors.iter().map(|s| s.to_string()).collect();
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
