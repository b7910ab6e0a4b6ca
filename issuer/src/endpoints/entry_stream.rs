//! The entry stream: what an agent's `SyncEntries` call receives. First
//! a snapshot of its authorised entries, this trust domain's bundle, the
//! foreign bundles and the revocations, in bounded messages; then, after
//! each change that concerns it, only what changed. It ends when the agent
//! hangs up or loses its standing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use proto::issuer as pb;
use tokio::sync::mpsc;
use tonic::Status;

use super::convert::{entry_to_proto, Reader};
use super::standing::{banned, evicted};
use super::store_status;
use crate::clock::unix_secs;
use crate::registrations::{HeldForeignBundle, View};
use crate::state::IssuerState;
use crate::store::{issuer_of, Selector, StoreError};

/// Entries per message of the entry stream: far below gRPC's 4 MB default.
pub const SYNC_CHUNK: usize = 500;
/// Bytes of foreign bundles per message of the entry stream, so that a
/// message stays well below gRPC's 4 MB default however many there are.
const FOREIGN_BUNDLE_CHUNK_BYTES: usize = 2 * 1024 * 1024;

/// How long a new stream waits for the registrations to catch up with the
/// store before it is refused UNAVAILABLE (the database is unreachable).
const VIEW_WAIT: Duration = Duration::from_secs(10);

/// What the stream has sent so far.
#[derive(Debug, Default)]
struct Sent {
    /// Entry ids and the revisions sent.
    entries: HashMap<String, i64>,
    bundle_sequence: Option<u64>,
    revocations_version: Option<u64>,
    foreign: ForeignBundles,
    foreign_version: Option<u64>,
}

/// Sends `agent_id`'s entry stream on `tx` until the agent hangs up or
/// loses its standing.
pub(super) async fn serve(
    state: IssuerState,
    agent_id: String,
    tx: mpsc::Sender<Result<pb::SyncEntriesResponse, Status>>,
) {
    let _connected = crate::metrics::ConnectedAgent::start();
    let registrations = state.registrations.clone();
    let mut interest = registrations.watch();
    let mut bundle_changes = state.ca.subscribe_bundle();
    let mut revocation_changes = state.revocations.subscribe();
    let issuer_id = issuer_of(&agent_id);
    let mut sent = Sent::default();
    let mut first = true;
    // The first round holds every change committed before the stream
    // opened (the agent's own attestation among them).
    if tokio::time::timeout(VIEW_WAIT, registrations.caught_up())
        .await
        .is_err()
    {
        let _ = tx
            .send(Err(Status::unavailable(
                "the registrations could not be read in time; retry",
            )))
            .await;
        return;
    }
    loop {
        let selectors = match standing(&state, &agent_id).await {
            Ok(selectors) => selectors,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let bundle = bundle_changes.borrow_and_update().clone();
        let revocations = revocation_changes.borrow_and_update().clone();
        let now = unix_secs(state.clock.now());
        let (round, version) = registrations.read(|view, version| {
            let round = Round::plan(
                view,
                &mut sent,
                &agent_id,
                issuer_id.as_deref(),
                &selectors,
                now,
            );
            (round, version)
        });
        interest.follow(round.parents, version);
        let bundle_bytes = if sent.bundle_sequence != Some(bundle.sequence()) {
            state.ca.bundle_jwks(&bundle).to_vec()
        } else {
            Vec::new()
        };
        let new_revocations = (sent.revocations_version != Some(revocations.version))
            .then_some(revocations.list.as_ref())
            .flatten()
            .map(|list| (&revocations.crls, list));
        let mut foreign_update = round.foreign;
        if first
            || !round.upserted.is_empty()
            || !round.removed.is_empty()
            || !bundle_bytes.is_empty()
            || new_revocations.is_some()
            || foreign_update
                .as_ref()
                .is_some_and(ForeignUpdate::has_changes)
        {
            let mut messages = chunk(
                Update {
                    upserted: round.upserted,
                    removed_ids: round.removed,
                    bundle: bundle_bytes,
                    foreign: foreign_update
                        .as_mut()
                        .map(|u| std::mem::take(&mut u.changed))
                        .unwrap_or_default(),
                    removed_foreign: foreign_update
                        .as_mut()
                        .map(|u| std::mem::take(&mut u.removed))
                        .unwrap_or_default(),
                },
                first,
            );
            if let Some((crls, list)) = new_revocations {
                // With the last message: an agent applies revocations
                // after the entries that go with them.
                let last = messages.last_mut().expect("at least one message");
                last.crls = crls.iter().map(|c| c.der.clone()).collect();
                last.revocation_list = list.jws.clone();
            }
            for message in messages {
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            sent.entries = round.current;
            sent.bundle_sequence = Some(bundle.sequence());
            sent.revocations_version = Some(revocations.version);
            if let Some(update) = foreign_update {
                sent.foreign.sent(update.current);
            }
            first = false;
        }
        sent.foreign_version = Some(round.foreign_version);
        tokio::select! {
            () = interest.changed() => {}
            changed = bundle_changes.changed() => if changed.is_err() { return },
            changed = revocation_changes.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

/// The agent's attested selectors while it is in good standing. The view
/// answers; an agent missing from it, or banned in it, is looked up in the
/// store, as the view may trail a change made through another replica.
async fn standing(state: &IssuerState, agent_id: &str) -> Result<Vec<Selector>, Status> {
    let held = state.registrations.read(|view, _| {
        view.agents
            .get(agent_id)
            .filter(|a| !a.banned)
            .map(|a| a.selectors.clone())
    });
    if let Some(selectors) = held {
        return Ok(selectors);
    }
    match state.store.get_agent(agent_id).await {
        Ok(agent) if !agent.banned => Ok(agent.selectors),
        Ok(_) => Err(banned(agent_id)),
        Err(StoreError::AgentNotFound(_)) => Err(evicted(agent_id)),
        Err(error) => Err(store_status(error)),
    }
}

/// What one round of the stream found in the view, against what was sent.
struct Round {
    /// Entries new or changed since sent, in registration order.
    upserted: Vec<pb::Entry>,
    /// Entries sent that are no longer authorised.
    removed: Vec<String>,
    /// Every authorised entry's id and revision.
    current: HashMap<String, i64>,
    /// The IDs whose children decided the entries: the stream follows them.
    parents: BTreeSet<String>,
    /// The foreign bundles, when they changed since last compared.
    foreign: Option<ForeignUpdate>,
    foreign_version: u64,
}

impl Round {
    fn plan(
        view: &View,
        sent: &mut Sent,
        agent_id: &str,
        issuer_id: Option<&str>,
        selectors: &[Selector],
        now: i64,
    ) -> Round {
        let authorized = view.entries.authorized(agent_id, issuer_id, selectors, now);
        let current: HashMap<String, i64> = authorized
            .entries
            .iter()
            .map(|e| (e.id.clone(), e.revision))
            .collect();
        let upserted = authorized
            .entries
            .iter()
            .filter(|e| sent.entries.get(&e.id) != Some(&e.revision))
            .map(|e| entry_to_proto(e, Reader::Agent))
            .collect();
        let removed = sent
            .entries
            .keys()
            .filter(|id| !current.contains_key(*id))
            .cloned()
            .collect();
        // Foreign bundles are compared again only when they changed: most
        // changes are entries and agents.
        let foreign = (sent.foreign_version != Some(view.foreign_version))
            .then(|| sent.foreign.update(&view.foreign_bundles));
        Round {
            upserted,
            removed,
            current,
            parents: authorized.parents,
            foreign,
            foreign_version: view.foreign_version,
        }
    }
}

/// What one round of the entry stream sends.
struct Update {
    upserted: Vec<pb::Entry>,
    removed_ids: Vec<String>,
    /// The local bundle (JWK Set JSON); empty when unchanged.
    bundle: Vec<u8>,
    /// Foreign bundles (JWK Set JSON) new or changed, by trust domain.
    foreign: Vec<(String, Vec<u8>)>,
    removed_foreign: Vec<String>,
}

/// Splits one update into messages of at most [`SYNC_CHUNK`] entries, and
/// foreign bundles of at most [`FOREIGN_BUNDLE_CHUNK_BYTES`] each (or a
/// single one). Removals come with the last message.
fn chunk(update: Update, snapshot: bool) -> Vec<pb::SyncEntriesResponse> {
    let mut messages: Vec<pb::SyncEntriesResponse> = update
        .upserted
        .chunks(SYNC_CHUNK)
        .map(|c| pb::SyncEntriesResponse {
            upserted: c.to_vec(),
            snapshot,
            ..Default::default()
        })
        .collect();
    for bundles in foreign_chunks(update.foreign) {
        messages.push(pb::SyncEntriesResponse {
            federated_bundles: bundles,
            snapshot,
            ..Default::default()
        });
    }
    if messages.is_empty() {
        messages.push(pb::SyncEntriesResponse {
            snapshot,
            ..Default::default()
        });
    }
    messages[0].bundle = update.bundle;
    let last = messages.last_mut().expect("at least one message");
    last.removed_ids = update.removed_ids;
    last.removed_federated_bundles = update.removed_foreign;
    last.snapshot_complete = snapshot;
    messages
}

/// Groups foreign bundles into maps of at most
/// [`FOREIGN_BUNDLE_CHUNK_BYTES`]; a larger bundle travels alone.
fn foreign_chunks(bundles: Vec<(String, Vec<u8>)>) -> Vec<HashMap<String, Vec<u8>>> {
    let mut chunks: Vec<HashMap<String, Vec<u8>>> = Vec::new();
    let mut size = 0;
    for (trust_domain, json) in bundles {
        let bytes = trust_domain.len() + json.len();
        if chunks.is_empty() || size + bytes > FOREIGN_BUNDLE_CHUNK_BYTES {
            chunks.push(HashMap::new());
            size = 0;
        }
        size += bytes;
        chunks
            .last_mut()
            .expect("pushed above")
            .insert(trust_domain, json);
    }
    chunks
}

/// The foreign bundles one entry stream has sent, by trust domain, as
/// SHA-256 digests of their JSON, so that a stream holds no copy of them.
#[derive(Debug, Default)]
struct ForeignBundles {
    sent: BTreeMap<String, [u8; 32]>,
    /// Stored bundles found unusable, not sent: logged once per content.
    refused: BTreeMap<String, [u8; 32]>,
}

/// The foreign bundles to send now, against those sent before.
#[derive(Debug)]
struct ForeignUpdate {
    /// Every usable foreign bundle's digest.
    current: BTreeMap<String, [u8; 32]>,
    changed: Vec<(String, Vec<u8>)>,
    removed: Vec<String>,
}

impl ForeignUpdate {
    fn has_changes(&self) -> bool {
        !self.changed.is_empty() || !self.removed.is_empty()
    }
}

impl ForeignBundles {
    /// Compares the held bundles with those sent. A bundle that is not a
    /// valid SPIFFE bundle of a foreign trust domain, or is too large, is
    /// never sent: agents drop one they held, as if it were deleted.
    /// `held` is shared by every stream of the replica: only what this
    /// stream sends is copied out of it.
    fn update(&mut self, held: &[HeldForeignBundle]) -> ForeignUpdate {
        let mut current = BTreeMap::new();
        let mut changed = Vec::new();
        for foreign in held {
            let trust_domain = &foreign.stored.trust_domain;
            if self.sent.get(trust_domain) == Some(&foreign.digest) {
                current.insert(trust_domain.clone(), foreign.digest);
                continue;
            }
            if let Some(reason) = &foreign.unusable {
                if self.refused.get(trust_domain) != Some(&foreign.digest) {
                    tracing::error!(
                        %trust_domain,
                        %reason,
                        "the stored foreign bundle is unusable; not sent to agents"
                    );
                    self.refused.insert(trust_domain.clone(), foreign.digest);
                }
                continue;
            }
            self.refused.remove(trust_domain);
            current.insert(trust_domain.clone(), foreign.digest);
            changed.push((
                trust_domain.clone(),
                foreign.stored.bundle.clone().into_bytes(),
            ));
        }
        let removed = self
            .sent
            .keys()
            .filter(|td| !current.contains_key(*td))
            .cloned()
            .collect();
        ForeignUpdate {
            current,
            changed,
            removed,
        }
    }

    /// Records the digests of an update's `current` bundles as sent.
    fn sent(&mut self, current: BTreeMap<String, [u8; 32]>) {
        self.sent = current;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registrations::MAX_FOREIGN_BUNDLE_BYTES;
    use crate::store::{BundleOrigin, ForeignBundle};
    use workload_api::id::{parse_trust_domain, TrustDomain};
    use workload_api::Bundle;

    fn td(name: &str) -> TrustDomain {
        parse_trust_domain(name).unwrap()
    }

    /// A stored bundle, as an issuer of example.org holds it.
    fn stored(name: &str, bundle: &str) -> HeldForeignBundle {
        let stored = ForeignBundle {
            trust_domain: name.into(),
            bundle: bundle.into(),
            sequence: 0,
            origin: BundleOrigin::Operator,
            updated_at: 1,
        };
        HeldForeignBundle::check(stored, &td("example.org"))
    }

    fn jwks(name: &str, sequence: u64) -> String {
        let mut bundle = Bundle::new(td(name));
        bundle.set_sequence(sequence);
        String::from_utf8(bundle.to_jwks_json()).unwrap()
    }

    fn names(changed: &[(String, Vec<u8>)]) -> Vec<&str> {
        changed.iter().map(|(name, _)| name.as_str()).collect()
    }

    #[test]
    fn foreign_bundles_are_sent_all_then_only_what_changed() {
        let mut foreign = ForeignBundles::default();
        let first = foreign.update(&[
            stored("a.org", &jwks("a.org", 1)),
            stored("b.org", &jwks("b.org", 1)),
        ]);
        assert_eq!(names(&first.changed), ["a.org", "b.org"]);
        assert!(first.removed.is_empty());
        foreign.sent(first.current);

        let same = foreign.update(&[
            stored("a.org", &jwks("a.org", 1)),
            stored("b.org", &jwks("b.org", 1)),
        ]);
        assert!(!same.has_changes());

        let next = foreign.update(&[stored("a.org", &jwks("a.org", 2))]);
        assert_eq!(names(&next.changed), ["a.org"]);
        assert_eq!(next.removed, ["b.org"]);
        foreign.sent(next.current);
        assert!(!foreign
            .update(&[stored("a.org", &jwks("a.org", 2))])
            .has_changes());
    }

    #[test]
    fn unusable_foreign_bundles_are_never_sent() {
        let mut foreign = ForeignBundles::default();
        let big = format!(
            "{{\"keys\": [], \"pad\": \"{}\"}}",
            "x".repeat(MAX_FOREIGN_BUNDLE_BYTES)
        );
        let update = foreign.update(&[
            stored("a.org", "{not json"),
            stored("example.org", &jwks("example.org", 1)),
            stored("Bad Name", &jwks("a.org", 1)),
            stored("big.org", &big),
            stored("c.org", &jwks("c.org", 1)),
        ]);
        assert_eq!(names(&update.changed), ["c.org"]);
        foreign.sent(update.current);
        // A sent bundle that turns unusable is taken back.
        let update = foreign.update(&[stored("c.org", "[]")]);
        assert!(update.changed.is_empty());
        assert_eq!(update.removed, ["c.org"]);
    }

    #[test]
    fn foreign_bundles_travel_in_bounded_messages_before_the_last() {
        let half = vec![b'x'; FOREIGN_BUNDLE_CHUNK_BYTES / 2];
        let update = Update {
            upserted: Vec::new(),
            removed_ids: vec!["gone".into()],
            bundle: b"local".to_vec(),
            foreign: (0..3)
                .map(|i| (format!("d{i}.org"), half.clone()))
                .collect(),
            removed_foreign: vec!["old.org".into()],
        };
        let messages = chunk(update, true);
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages
                .iter()
                .map(|m| m.federated_bundles.len())
                .collect::<Vec<_>>(),
            [1, 1, 1]
        );
        assert!(messages.iter().all(|m| m.snapshot));
        assert_eq!(messages[0].bundle, b"local");
        let last = messages.last().unwrap();
        assert!(last.snapshot_complete);
        assert_eq!(last.removed_ids, ["gone"]);
        assert_eq!(last.removed_federated_bundles, ["old.org"]);
        assert!(messages[..2]
            .iter()
            .all(|m| !m.snapshot_complete && m.removed_federated_bundles.is_empty()));
    }
}
