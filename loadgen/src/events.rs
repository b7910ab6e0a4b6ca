//! What the simulated agents report, and the ledger the run reads its
//! measurements from. Agents send events as they happen, stamped with the
//! moment they happened; the run waits on the ledger for a condition.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use tokio::sync::mpsc;

/// Something one simulated agent saw or did.
#[derive(Debug)]
pub enum Event {
    /// The agent holds a stream whose first snapshot is complete.
    Attached {
        agent: usize,
        spiffe_id: String,
        at: Instant,
    },
    AttachFailed {
        agent: usize,
        error: String,
    },
    /// The agent holds a verified X509-SVID for the entry.
    SvidSigned {
        entry_id: String,
        at: Instant,
    },
    SignFailed {
        error: String,
    },
    /// The agent's stream delivered a foreign trust domain's bundle.
    FederatedBundle {
        agent: usize,
        trust_domain: String,
        at: Instant,
    },
    Renewed {
        at: Instant,
    },
    RenewFailed {
        error: String,
    },
    /// The entry stream ended or failed and is being reopened.
    StreamBroken {
        error: String,
        at: Instant,
    },
}

/// How many distinct error messages the ledger keeps; more are counted together.
const MAX_DISTINCT_ERRORS: usize = 20;
const OTHER_ERRORS: &str = "(other errors)";

/// Everything reported so far.
#[derive(Debug, Default)]
pub struct Ledger {
    /// By agent index: its SPIFFE ID and when it attached.
    pub attached: BTreeMap<usize, (String, Instant)>,
    pub attach_failed: BTreeMap<usize, String>,
    /// By entry ID: when its first SVID was held.
    pub signed: HashMap<String, Instant>,
    /// By trust domain, by agent: when its bundle first arrived.
    pub federated: HashMap<String, HashMap<usize, Instant>>,
    pub renewals: Vec<Instant>,
    pub renew_failures: u64,
    pub sign_failures: u64,
    pub stream_breaks: Vec<Instant>,
    /// Error messages with how often each was seen.
    pub errors: BTreeMap<String, u64>,
}

impl Ledger {
    pub fn record(&mut self, event: Event) {
        match event {
            Event::Attached {
                agent,
                spiffe_id,
                at,
            } => {
                self.attached.insert(agent, (spiffe_id, at));
            }
            Event::AttachFailed { agent, error } => {
                self.error(format!("attach: {error}"));
                self.attach_failed.insert(agent, error);
            }
            Event::SvidSigned { entry_id, at } => {
                self.signed.entry(entry_id).or_insert(at);
            }
            Event::SignFailed { error } => {
                self.sign_failures += 1;
                self.error(format!("sign: {error}"));
            }
            Event::FederatedBundle {
                agent,
                trust_domain,
                at,
            } => {
                self.federated
                    .entry(trust_domain)
                    .or_default()
                    .entry(agent)
                    .or_insert(at);
            }
            Event::Renewed { at } => self.renewals.push(at),
            Event::RenewFailed { error } => {
                self.renew_failures += 1;
                self.error(format!("renew: {error}"));
            }
            Event::StreamBroken { error, at } => {
                self.stream_breaks.push(at);
                self.error(format!("stream: {error}"));
            }
        }
    }

    /// Agents that attached or gave up.
    pub fn settled(&self) -> usize {
        self.attached.len() + self.attach_failed.len()
    }

    /// Agents whose stream delivered `trust_domain`'s bundle.
    pub fn holding(&self, trust_domain: &str) -> usize {
        self.federated.get(trust_domain).map_or(0, HashMap::len)
    }

    fn error(&mut self, message: String) {
        let key = if self.errors.len() < MAX_DISTINCT_ERRORS || self.errors.contains_key(&message) {
            message
        } else {
            OTHER_ERRORS.to_owned()
        };
        *self.errors.entry(key).or_default() += 1;
    }
}

/// The receiving end of every agent's events, and the ledger they fill.
#[derive(Debug)]
pub struct Collector {
    events: mpsc::UnboundedReceiver<Event>,
    pub ledger: Ledger,
}

impl Collector {
    pub fn new() -> (mpsc::UnboundedSender<Event>, Collector) {
        let (tx, events) = mpsc::unbounded_channel();
        (
            tx,
            Collector {
                events,
                ledger: Ledger::default(),
            },
        )
    }

    /// Records events until `done` holds or `deadline` passes; says which.
    pub async fn until(&mut self, deadline: Instant, done: impl Fn(&Ledger) -> bool) -> bool {
        loop {
            while let Ok(event) = self.events.try_recv() {
                self.ledger.record(event);
            }
            if done(&self.ledger) {
                return true;
            }
            match tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
                Ok(Some(event)) => self.ledger.record(event),
                Ok(None) | Err(_) => return done(&self.ledger),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_arrivals_count_and_errors_are_bounded() {
        let mut ledger = Ledger::default();
        let early = Instant::now();
        let late = early + Duration::from_secs(1);
        for at in [early, late] {
            ledger.record(Event::SvidSigned {
                entry_id: "e".into(),
                at,
            });
            ledger.record(Event::FederatedBundle {
                agent: 3,
                trust_domain: "t.example".into(),
                at,
            });
        }
        assert_eq!(ledger.signed["e"], early);
        assert_eq!(ledger.federated["t.example"][&3], early);
        assert_eq!(ledger.holding("t.example"), 1);
        assert_eq!(ledger.holding("u.example"), 0);

        for n in 0..(MAX_DISTINCT_ERRORS + 5) {
            ledger.record(Event::SignFailed {
                error: format!("error {n}"),
            });
        }
        ledger.record(Event::SignFailed {
            error: "error 0".into(),
        });
        assert_eq!(ledger.sign_failures, MAX_DISTINCT_ERRORS as u64 + 6);
        assert_eq!(ledger.errors.len(), MAX_DISTINCT_ERRORS + 1);
        assert_eq!(ledger.errors["sign: error 0"], 2);
        assert_eq!(ledger.errors[OTHER_ERRORS], 5);
    }

    #[tokio::test]
    async fn waiting_ends_when_the_condition_holds_or_time_is_up() {
        let (tx, mut collector) = Collector::new();
        tx.send(Event::AttachFailed {
            agent: 1,
            error: "refused".into(),
        })
        .unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(collector.until(soon, |l| l.settled() == 1).await);
        assert!(!collector.until(soon, |l| l.settled() == 2).await);
        assert!(Instant::now() >= soon);
    }
}
