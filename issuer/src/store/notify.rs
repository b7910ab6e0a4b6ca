//! Telling entry streams that the store changed, on every replica.
//!
//! Within a process, a change bumps a counter that streams watch. Across
//! replicas sharing PostgreSQL, the writing transaction also sends a
//! `NOTIFY` (delivered only if it commits), and every replica listens: a
//! notification from another replica bumps the same counters. When the
//! listening connection drops, notifications sent meanwhile are lost, so
//! once it is back every stream is told to read the store again: a
//! catch-up read that misses nothing, since the store is the truth.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::StoreError;
use crate::config::database::PostgresUrl;

/// The PostgreSQL channel changes are announced on.
const CHANNEL: &str = "sigil_store_changes";

/// PostgreSQL refuses a notification payload of 8000 bytes or more. A
/// change naming more than fits is announced without its ids.
const MAX_PAYLOAD_BYTES: usize = 7900;

/// How many counted changes a slow reader may fall behind before it is
/// told it lagged (and must read the store again).
const NOTED_BACKLOG: usize = 1024;

/// What a write changed. Entries and agents are named, so a replica's
/// view reads those rows again rather than every row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Entries created, updated or deleted, by id. `revoking` when the
    /// write revoked SVIDs bound to them (a deletion).
    Entries { ids: Vec<String>, revoking: bool },
    /// One agent's record: attested, banned or evicted.
    Agent(String),
    /// Entries, agents or owners, without saying which: an owner was
    /// revoked (its entries stop being served and its SVIDs are revoked),
    /// or a change named too many rows to announce.
    Registrations,
    /// Federation relationships; deleting one deletes its bundle, so
    /// streams compare foreign bundles again.
    Federations,
    /// Foreign trust domains' bundles (and so also what streams send).
    ForeignBundles,
    /// The keys replicas publish in this trust domain's bundle.
    TrustBundle,
    /// The CRLs a replica signed.
    Revocations,
}

impl Change {
    /// The payload after the replica's name.
    fn encode(&self) -> String {
        let text = match self {
            Change::Entries { ids, revoking } => {
                let mut text = format!("entries {}", u8::from(*revoking));
                for id in ids {
                    text.push(' ');
                    text.push_str(id);
                }
                text
            }
            Change::Agent(id) => format!("agent {id}"),
            Change::Registrations => "registrations".to_owned(),
            Change::Federations => "federations".to_owned(),
            Change::ForeignBundles => "foreign_bundles".to_owned(),
            Change::TrustBundle => "trust_bundle".to_owned(),
            Change::Revocations => "revocations".to_owned(),
        };
        let named = match self {
            Change::Entries { ids, .. } => ids.iter().all(|id| nameable(id)),
            Change::Agent(id) => nameable(id),
            _ => true,
        };
        if !named || text.len() > MAX_PAYLOAD_BYTES {
            return "registrations".to_owned();
        }
        text
    }

    /// The change a payload (after the replica's name) announces; None
    /// for one this version cannot read, which must be taken as any change.
    fn decode(text: &str) -> Option<Change> {
        let mut words = text.split(' ');
        let change = match words.next()? {
            "entries" => {
                let revoking = match words.next()? {
                    "0" => false,
                    "1" => true,
                    _ => return None,
                };
                let ids: Vec<String> = words.by_ref().map(str::to_owned).collect();
                if ids.is_empty() || !ids.iter().all(|id| nameable(id)) {
                    return None;
                }
                Change::Entries { ids, revoking }
            }
            "agent" => Change::Agent(words.next().filter(|id| nameable(id))?.to_owned()),
            "registrations" => Change::Registrations,
            "federations" => Change::Federations,
            "foreign_bundles" => Change::ForeignBundles,
            "trust_bundle" => Change::TrustBundle,
            "revocations" => Change::Revocations,
            _ => return None,
        };
        words.next().is_none().then_some(change)
    }

    /// Whether the change may have revoked SVIDs or owners.
    fn may_revoke(&self) -> bool {
        matches!(
            self,
            Change::Entries { revoking: true, .. } | Change::Registrations
        )
    }
}

/// Whether an id can be named in a payload, whose words are separated by
/// single spaces.
fn nameable(id: &str) -> bool {
    !id.is_empty() && !id.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The notification payload of `change` made by `replica`.
fn payload(replica: &str, change: &Change) -> String {
    format!("{replica} {}", change.encode())
}

/// Who sent a payload and what it announces; `None` as the change when it
/// cannot be read.
fn parse_payload(payload: &str) -> Option<(&str, Option<Change>)> {
    let (from, text) = payload.split_once(' ')?;
    Some((from, Change::decode(text)))
}

/// Sends the notification of `change` inside the writing transaction.
pub(super) async fn announce(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    change: &Change,
    replica: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT 1 FROM (SELECT pg_notify($1, $2)) AS notified")
        .bind(CHANNEL)
        .bind(payload(replica, change))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// One counted change to what entry streams serve: what it was, and the
/// count it brought [`Store::subscribe`](super::Store::subscribe) to.
#[derive(Debug, Clone)]
pub struct Noted {
    pub count: u64,
    pub change: Arc<Change>,
}

/// The counters streams watch.
#[derive(Debug)]
struct Counters {
    /// Every change to what decides an agent's entries and federated
    /// bundles.
    all: watch::Sender<u64>,
    /// What each of those was, in the order counted.
    noted: broadcast::Sender<Noted>,
    /// Changes that may have revoked SVIDs or owners.
    revoking: watch::Sender<u64>,
    /// Changes to foreign bundles alone.
    foreign_bundles: watch::Sender<u64>,
    /// Changes to federation relationships (counted among `all` too).
    federations: watch::Sender<u64>,
    /// Changes to the replicas' published keys. Streams learn of these
    /// through the CA's bundle, not by reading entries again.
    trust_bundle: watch::Sender<u64>,
    /// CRLs published by a replica; these too reach streams another way.
    revocations: watch::Sender<u64>,
}

impl Counters {
    fn note(&self, change: Change) {
        let bump = |counter: &watch::Sender<u64>| counter.send_modify(|n| *n += 1);
        if change.may_revoke() {
            bump(&self.revoking);
        }
        match change {
            Change::TrustBundle => return bump(&self.trust_bundle),
            Change::Revocations => return bump(&self.revocations),
            Change::Federations => bump(&self.federations),
            Change::ForeignBundles => bump(&self.foreign_bundles),
            Change::Entries { .. } | Change::Agent(_) | Change::Registrations => {}
        }
        let change = Arc::new(change);
        // Counted and sent under the counter's lock, so readers see the
        // changes in the order of their counts.
        self.all.send_modify(|n| {
            *n += 1;
            let _ = self.noted.send(Noted {
                count: *n,
                change: change.clone(),
            });
        });
    }

    /// Something may have changed that no notification told of.
    fn note_unknown(&self) {
        for change in [
            Change::ForeignBundles,
            Change::Federations,
            Change::TrustBundle,
            Change::Revocations,
            Change::Registrations,
        ] {
            self.note(change);
        }
    }
}

/// A process's change counters and, on PostgreSQL, its listener.
#[derive(Debug)]
pub(super) struct Changes {
    counters: Arc<Counters>,
    /// Names this process in its notifications, so it skips its own: it
    /// noted them when it committed.
    replica: String,
    listener: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Changes {
    fn drop(&mut self) {
        if let Some(task) = self.listener.lock().expect("listener lock").take() {
            task.abort();
        }
    }
}

impl Changes {
    pub(super) fn new() -> Self {
        Changes {
            counters: Arc::new(Counters {
                all: watch::channel(0).0,
                noted: broadcast::channel(NOTED_BACKLOG).0,
                revoking: watch::channel(0).0,
                foreign_bundles: watch::channel(0).0,
                federations: watch::channel(0).0,
                trust_bundle: watch::channel(0).0,
                revocations: watch::channel(0).0,
            }),
            replica: crate::ids::uuid_v4(),
            listener: std::sync::Mutex::new(None),
        }
    }

    pub(super) fn replica(&self) -> &str {
        &self.replica
    }

    /// A change committed here.
    pub(super) fn note(&self, change: Change) {
        self.counters.note(change);
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.counters.all.subscribe()
    }

    pub(super) fn subscribe_noted(&self) -> broadcast::Receiver<Noted> {
        self.counters.noted.subscribe()
    }

    pub(super) fn subscribe_revoking(&self) -> watch::Receiver<u64> {
        self.counters.revoking.subscribe()
    }

    pub(super) fn subscribe_federations(&self) -> watch::Receiver<u64> {
        self.counters.federations.subscribe()
    }

    pub(super) fn subscribe_trust_bundle(&self) -> watch::Receiver<u64> {
        self.counters.trust_bundle.subscribe()
    }

    pub(super) fn subscribe_revocations(&self) -> watch::Receiver<u64> {
        self.counters.revocations.subscribe()
    }

    pub(super) fn foreign_bundles_version(&self) -> u64 {
        *self.counters.foreign_bundles.borrow()
    }

    /// Listens for other replicas' changes until this is dropped.
    /// Starts listening before it returns, so a store handed out misses
    /// no other replica's change; then keeps listening until dropped.
    pub(super) async fn listen(&self, url: PostgresUrl) -> Result<(), sqlx::Error> {
        let first = connect_listener(&url).await?;
        let task = tokio::spawn(listen(
            url,
            self.replica.clone(),
            self.counters.clone(),
            first,
        ));
        *self.listener.lock().expect("listener lock") = Some(task);
        Ok(())
    }
}

/// The first wait before reconnecting a dropped listener, and the most.
const RECONNECT_FIRST: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

async fn listen(url: PostgresUrl, replica: String, counters: Arc<Counters>, first: PgListener) {
    let mut wait = RECONNECT_FIRST;
    let mut failing = false;
    let mut listener = Some(first);
    loop {
        let mut connected = false;
        let error = listen_once(&url, listener.take(), &replica, &counters, &mut connected).await;
        if connected {
            wait = RECONNECT_FIRST;
            if failing {
                tracing::info!(database = %url, "change notifications are back");
                failing = false;
            }
        }
        // Logged once per outage, not once per attempt.
        if !failing {
            tracing::warn!(
                database = %url,
                error = %workload_api::display::error_chain(&error),
                "lost the database's change notifications; streams catch up once they are back"
            );
            failing = true;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

/// A connection listening on [`CHANNEL`].
async fn connect_listener(url: &PostgresUrl) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url.expose()).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// One listening connection (`listening`, or a new one), until it fails.
/// Every reconnection is followed by a catch-up, after LISTEN, so nothing
/// committed while the connection was down is missed.
async fn listen_once(
    url: &PostgresUrl,
    listening: Option<PgListener>,
    replica: &str,
    counters: &Counters,
    connected: &mut bool,
) -> sqlx::Error {
    let mut listener = match listening {
        // The first connection, made before the store was handed out.
        Some(listener) => listener,
        None => match connect_listener(url).await {
            Ok(listener) => {
                counters.note_unknown();
                listener
            }
            Err(error) => return error,
        },
    };
    *connected = true;
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match parse_payload(notification.payload()) {
                Some((from, _)) if from == replica => {}
                Some((_, Some(change))) => counters.note(change),
                // From a version that announces what this one cannot read.
                Some((_, None)) | None => counters.note_unknown(),
            },
            // The connection dropped and was made again, LISTEN included.
            Ok(None) => counters.note_unknown(),
            Err(error) => return error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Change> {
        vec![
            Change::Entries {
                ids: vec!["6f1c0f7e-1f7b-4b0c-9f1e-2a3b4c5d6e7f".into()],
                revoking: false,
            },
            Change::Entries {
                ids: vec!["a".into(), "b".into(), "c".into()],
                revoking: true,
            },
            Change::Agent("spiffe://td/agent/join_token/t1".into()),
            Change::Registrations,
            Change::Federations,
            Change::ForeignBundles,
            Change::TrustBundle,
            Change::Revocations,
        ]
    }

    #[test]
    fn every_change_travels_in_a_payload_and_back() {
        for change in every_kind() {
            let payload = payload("replica-1", &change);
            assert_eq!(
                parse_payload(&payload),
                Some(("replica-1", Some(change.clone()))),
                "{payload}"
            );
        }
    }

    #[test]
    fn a_change_naming_too_much_is_announced_without_names() {
        let ids: Vec<String> = (0..400).map(|_| crate::ids::uuid_v4()).collect();
        let many = Change::Entries {
            ids,
            revoking: false,
        };
        let payload = payload("r", &many);
        assert!(payload.len() < 8000);
        assert_eq!(
            parse_payload(&payload),
            Some(("r", Some(Change::Registrations)))
        );
        // A name that would not survive the space-separated form.
        for odd in ["", "a b", "a\tb"] {
            let agent = Change::Agent(odd.into());
            assert_eq!(agent.encode(), "registrations", "{odd:?}");
        }
    }

    #[test]
    fn payloads_this_version_cannot_read_mean_any_change() {
        for text in [
            "r",
            "r ",
            "r unknown",
            "r entries",
            "r entries 2 a",
            "r entries 1",
            "r entries 0 a  b",
            "r agent",
            "r agent a b",
            "r trust_bundle extra",
        ] {
            let parsed = parse_payload(text);
            assert!(
                matches!(parsed, None | Some((_, None))),
                "{text:?} read as {parsed:?}"
            );
        }
    }

    /// Mutated payloads read as a change or as unreadable, never a panic;
    /// a change read back encodes to the same text.
    #[test]
    fn mutated_payloads_never_panic() {
        let mut next = crate::store::seeded(0x9e37_79b9_7f4a_7c15);
        let seeds: Vec<String> = every_kind().iter().map(|c| payload("r", c)).collect();
        for _ in 0..20_000 {
            let mut bytes = seeds[next(seeds.len())].clone().into_bytes();
            for _ in 0..=next(3) {
                let at = next(bytes.len() + 1);
                match next(3) {
                    0 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, b" 01ax\t\n\0"[next(8)]),
                    _ if at < bytes.len() => bytes[at] ^= 1 << next(8),
                    _ => {}
                }
            }
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            if let Some((from, Some(change))) = parse_payload(&text) {
                assert_eq!(payload(from, &change), text);
            }
        }
    }
}
