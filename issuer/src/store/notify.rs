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
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::StoreError;
use crate::config::database::PostgresUrl;

/// The PostgreSQL channel changes are announced on.
const CHANNEL: &str = "sigil_store_changes";

/// What a write changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Entries, agents or owners: what decides which entries an agent gets.
    Registrations,
    /// Foreign trust domains' bundles (and so also what streams send).
    ForeignBundles,
    /// The keys replicas publish in this trust domain's bundle.
    TrustBundle,
    /// The CRLs a replica signed.
    Revocations,
}

impl Change {
    fn name(self) -> &'static str {
        match self {
            Change::Registrations => "registrations",
            Change::ForeignBundles => "foreign_bundles",
            Change::TrustBundle => "trust_bundle",
            Change::Revocations => "revocations",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "registrations" => Some(Change::Registrations),
            "foreign_bundles" => Some(Change::ForeignBundles),
            "trust_bundle" => Some(Change::TrustBundle),
            "revocations" => Some(Change::Revocations),
            _ => None,
        }
    }
}

/// Sends the notification of `change` inside the writing transaction.
pub(super) async fn announce(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    change: Change,
    replica: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT 1 FROM (SELECT pg_notify($1, $2)) AS notified")
        .bind(CHANNEL)
        .bind(format!("{replica} {}", change.name()))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The counters streams watch.
#[derive(Debug)]
struct Counters {
    /// Every change to what decides an agent's entries and federated
    /// bundles.
    all: watch::Sender<u64>,
    /// Changes to foreign bundles alone, so the many streams read them
    /// again only when they changed.
    foreign_bundles: watch::Sender<u64>,
    /// Changes to the replicas' published keys. Streams learn of these
    /// through the CA's bundle, not by reading entries again.
    trust_bundle: watch::Sender<u64>,
    /// CRLs published by a replica; these too reach streams another way.
    revocations: watch::Sender<u64>,
}

impl Counters {
    fn note(&self, change: Change) {
        match change {
            Change::Registrations => {}
            Change::ForeignBundles => self.foreign_bundles.send_modify(|n| *n += 1),
            Change::TrustBundle => {
                self.trust_bundle.send_modify(|n| *n += 1);
                return;
            }
            Change::Revocations => {
                self.revocations.send_modify(|n| *n += 1);
                return;
            }
        }
        self.all.send_modify(|n| *n += 1);
    }

    /// Something may have changed that no notification told of.
    fn note_unknown(&self) {
        self.note(Change::ForeignBundles);
        self.note(Change::TrustBundle);
        self.note(Change::Revocations);
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
                foreign_bundles: watch::channel(0).0,
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
            Ok(Some(notification)) => {
                let Some((from, name)) = notification.payload().split_once(' ') else {
                    continue;
                };
                if from == replica {
                    continue;
                }
                match Change::from_name(name) {
                    Some(change) => counters.note(change),
                    None => counters.note_unknown(),
                }
            }
            // The connection dropped and was made again, LISTEN included.
            Ok(None) => counters.note_unknown(),
            Err(error) => return error,
        }
    }
}
