//! The SVID cache: an X509-SVID and a WIT-SVID for every workload entry, with
//! keys generated here, minted in batches and rotated at 40-50% of their life
//! (see [`schedule`] for the timetable); and the snapshot the Workload API
//! serves, with the local and the foreign trust domains' bundles. Expired credentials stay in the snapshot, marked by their expiry,
//! so the Workload API can tell "expired" from "not minted yet" and leave
//! them out; the loop republishes when one expires so open streams look again.

pub mod jwt;
pub mod lru;
pub mod schedule;
pub mod wit;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::issuer as pb;
use tokio::sync::watch;
use tokio::time::Instant;
use workload_api::id::parse_trust_domain;
use workload_api::selector::Selector;
use workload_api::source::{Identity, Snapshot, X509Material};

use crate::issuer_health::IssuerHealth;
use crate::keys::new_key_and_csr;
use crate::node::{Node, Standing};
use crate::sync::Entries;
use schedule::Held;

/// CSRs per signing call.
const BATCH: usize = 500;
/// The first wait before minting again after a failure.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between minting attempts while the issuer is unreachable.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// What the cache shows about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub svids: usize,
    /// The next rotation not yet due; never in the past when published.
    pub next_rotation: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Since when the issuer has failed every call, if it has.
    pub issuer_unreachable_since: Option<SystemTime>,
}

/// Why a batch could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The signing call failed as a whole: the issuer is down, unreachable
    /// or refusing this agent.
    #[error("{what}: {code:?}: {message}")]
    Call {
        what: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// The issuer answered but refused or botched some items, reported as
    /// `<entry>: <why>`.
    #[error("{what}: {failed}")]
    Items { what: &'static str, failed: String },
    /// A key or CSR could not be made here.
    #[error("{what}: key generation: {reason}")]
    Key { what: &'static str, reason: String },
}

impl MintError {
    fn call(what: &'static str, status: &tonic::Status) -> Self {
        MintError::Call {
            what,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// The two credentials the cache holds per workload entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    X509,
    Wit,
}

struct Minted {
    revision: i64,
    material: Arc<X509Material>,
    rotate_at: SystemTime,
}

impl Minted {
    fn held(&self) -> Held {
        Held {
            revision: self.revision,
            rotate_at: self.rotate_at,
            expires_at: self.material.expires_at(),
        }
    }
}

/// Whether an entry is a workload's: node alias entries (selected by the
/// agent's own SPIFFE ID) identify nodes, not workloads.
fn is_workload_entry(entry: &pb::Entry) -> bool {
    !entry.selectors.is_empty() && entry.selectors.iter().all(|s| s.r#type != "spiffe_id")
}

/// When to replace a credential received now, with fresh jitter.
fn rotate_at(received: SystemTime, expires_at: SystemTime) -> SystemTime {
    schedule::rotate_at(received, expires_at, crate::jitter_byte())
}

/// The cache's plan at `now`: an X509-SVID and a WIT per workload entry.
fn plan_cache(
    workloads: &[&pb::Entry],
    minted: &HashMap<String, Minted>,
    wits: &HashMap<String, wit::MintedWit>,
    now: SystemTime,
) -> schedule::Plan<(Kind, usize)> {
    let wanted = workloads.iter().enumerate().flat_map(|(index, entry)| {
        [
            (
                (Kind::X509, index),
                entry.revision,
                minted.get(&entry.id).map(Minted::held),
            ),
            (
                (Kind::Wit, index),
                entry.revision,
                wits.get(&entry.id).map(wit::MintedWit::held),
            ),
        ]
    });
    schedule::plan(wanted, now)
}

/// Keeps SVIDs fresh for the current entries and publishes snapshots.
/// `health` hears of every minting call's outcome.
pub async fn run(
    node: Arc<Node>,
    mut entries: watch::Receiver<Entries>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    status: watch::Sender<Status>,
    health: Arc<IssuerHealth>,
    mut stop: watch::Receiver<bool>,
) {
    let mut minted: HashMap<String, Minted> = HashMap::new();
    let mut awaiting_entries = true;
    let mut wits: HashMap<String, wit::MintedWit> = HashMap::new();
    let mut bundles = node.subscribe_bundle();
    let mut revocations = node.subscribe_revocations();
    let mut federated = node.subscribe_federated();
    let mut backoff = FIRST_RETRY;
    // After a failure, minting waits until then (monotonic, so a clock step
    // neither cuts the wait short nor stretches it).
    let mut retry_at: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    // The earliest expiry in the last snapshot published.
    let mut watched_expiry: Option<SystemTime> = None;
    loop {
        // The channel's first value is a placeholder until sync delivers; a
        // delivery is seen here or, while the loop waits, below.
        awaiting_entries &= !entries.has_changed().unwrap_or(false);
        let current = entries.borrow_and_update().clone();
        let bundle = bundles.borrow_and_update().clone();
        let revoked = revocations.borrow_and_update().clone();
        let foreign = federated.borrow_and_update().clone();
        minted.retain(|id, _| current.iter().any(|e| &e.id == id));
        wits.retain(|id, _| current.iter().any(|e| &e.id == id));
        let workloads: Vec<&pb::Entry> = current.iter().filter(|e| is_workload_entry(e)).collect();
        let plan = plan_cache(&workloads, &minted, &wits, SystemTime::now());
        let held_back = retry_at.is_some_and(|at| Instant::now() < at);
        if !plan.due.is_empty() && !held_back {
            let due = |kind| -> Vec<&pb::Entry> {
                plan.due
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|&(_, index)| workloads[index])
                    .collect()
            };
            match mint_due(
                &node,
                &due(Kind::X509),
                &due(Kind::Wit),
                &mut minted,
                &mut wits,
            )
            .await
            {
                Ok(()) => {
                    health.succeeded();
                    backoff = FIRST_RETRY;
                    retry_at = None;
                    last_error = None;
                }
                Err(error) => {
                    match &error {
                        MintError::Call { .. } => {
                            health.failed(SystemTime::now(), &error.to_string())
                        }
                        MintError::Items { .. } => health.succeeded(),
                        MintError::Key { .. } => {}
                    }
                    if node.issuer.is_up() {
                        tracing::warn!(%error, "minting SVIDs failed; cached SVIDs stay in use until they expire");
                    } else {
                        // The pool logs the outage once; each retry is detail.
                        tracing::debug!(%error, "minting SVIDs failed; cached SVIDs stay in use until they expire");
                    }
                    retry_at = Some(Instant::now() + crate::with_jitter(backoff));
                    backoff = (backoff * 2).min(MAX_RETRY);
                    last_error = Some(error.to_string());
                }
            }
        }
        let identities = workloads
            .iter()
            .map(|e| identity(e, minted.get(&e.id), wits.get(&e.id)))
            .collect();
        let now = SystemTime::now();
        let modified = snapshots.send_if_modified(|snapshot| {
            let next = Snapshot {
                bundle: bundle.clone(),
                federated: (*foreign).clone(),
                identities,
                awaiting_entries,
                refused: match node.standing() {
                    Standing::Good => None,
                    Standing::Refused { reason, .. } => Some(reason.into()),
                },
                revocations: revoked,
            };
            if same(snapshot, &next) {
                false
            } else {
                *snapshot = Arc::new(next);
                true
            }
        });
        if !modified && watched_expiry.is_some_and(|at| now >= at) {
            // Nothing new to serve, but something served has expired: open
            // streams look again and drop it.
            snapshots.send_modify(|_| {});
        }
        let after = plan_cache(&workloads, &minted, &wits, now);
        watched_expiry = after.next_expiry;
        status.send_replace(Status {
            svids: minted.len(),
            next_rotation: after.next_rotation,
            last_error: last_error.clone(),
            issuer_unreachable_since: health.outage().map(|o| o.since),
        });
        let retry_in = retry_at.map(|at| at.saturating_duration_since(Instant::now()));
        let wait = schedule::sleep_for(&after, now, retry_in);
        tokio::select! {
            changed = entries.changed() => {
                if changed.is_err() {
                    return;
                }
                // New or changed entries are minted at once, not after the
                // backoff of an earlier failure.
                retry_at = None;
                awaiting_entries = false;
            }
            changed = bundles.changed() => if changed.is_err() { return },
            changed = revocations.changed() => if changed.is_err() { return },
            changed = federated.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Mints the due X509-SVIDs, then the due WITs, in batches; stops at the
/// first failure.
async fn mint_due(
    node: &Node,
    x509: &[&pb::Entry],
    wits: &[&pb::Entry],
    minted: &mut HashMap<String, Minted>,
    minted_wits: &mut HashMap<String, wit::MintedWit>,
) -> Result<(), MintError> {
    for chunk in x509.chunks(BATCH) {
        mint(node, chunk, minted).await?;
    }
    for chunk in wits.chunks(BATCH) {
        wit::mint(node, chunk, minted_wits).await?;
    }
    Ok(())
}

/// Snapshots differ when any identity, SVID or bundle differs.
fn same(a: &Snapshot, b: &Snapshot) -> bool {
    Arc::ptr_eq(&a.bundle, &b.bundle)
        && a.federated.len() == b.federated.len()
        && a.federated
            .iter()
            .zip(&b.federated)
            .all(|((x_td, x), (y_td, y))| x_td == y_td && Arc::ptr_eq(x, y))
        && Arc::ptr_eq(&a.revocations, &b.revocations)
        && a.awaiting_entries == b.awaiting_entries
        && a.refused == b.refused
        && a.identities.len() == b.identities.len()
        && a.identities.iter().zip(&b.identities).all(|(x, y)| {
            x.entry_id == y.entry_id
                && x.spiffe_id == y.spiffe_id
                && x.hint == y.hint
                && x.selectors == y.selectors
                && same_material(&x.x509, &y.x509)
                && same_material(&x.wit, &y.wit)
        })
}

fn same_material<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(p), Some(q)) => Arc::ptr_eq(p, q),
        (None, None) => true,
        _ => false,
    }
}

fn identity(entry: &pb::Entry, minted: Option<&Minted>, wit: Option<&wit::MintedWit>) -> Identity {
    Identity {
        entry_id: entry.id.clone(),
        spiffe_id: entry.spiffe_id.clone(),
        hint: entry.hint.clone(),
        selectors: entry
            .selectors
            .iter()
            .map(|s| Selector::new(s.r#type.clone(), s.value.clone()))
            .collect(),
        federates_with: entry
            .federates_with
            .iter()
            .filter_map(|td| parse_trust_domain(td).ok())
            .collect(),
        x509: minted.map(|m| m.material.clone()),
        wit: wit.map(|m| m.material.clone()),
    }
}

/// Signs one batch: a fresh key and CSR per entry, one call to the issuer.
async fn mint(
    node: &Node,
    entries: &[&pb::Entry],
    minted: &mut HashMap<String, Minted>,
) -> Result<(), MintError> {
    const WHAT: &str = "X509-SVIDs";
    let mut keys = HashMap::new();
    let mut params = Vec::with_capacity(entries.len());
    for entry in entries {
        let (key, csr) = new_key_and_csr(Some(&entry.spiffe_id)).map_err(|e| MintError::Key {
            what: WHAT,
            reason: e.to_string(),
        })?;
        keys.insert(entry.id.clone(), (key, entry.revision));
        params.push(pb::X509SvidParams {
            entry_id: entry.id.clone(),
            csr,
        });
    }
    let results = node
        .client()
        .batch_sign_x509_svids(pb::BatchSignX509SvidsRequest { params })
        .await
        .map_err(|s| MintError::call(WHAT, &s))?
        .into_inner()
        .results;
    let received = SystemTime::now();
    settle(WHAT, keys, results, |result, key, revision| {
        let leaf = workload_api::bundle::split_der_concat(&result.cert_chain)
            .ok()
            .and_then(|chain| {
                chain
                    .first()
                    .and_then(|leaf| workload_api::x509svid::check_leaf(leaf).ok())
            })
            .ok_or("issuer returned an invalid SVID")?;
        tracing::debug!(entry_id = %result.entry_id, spiffe_id = %leaf.spiffe_id, "X509-SVID minted");
        crate::metrics::minted("x509", 1);
        minted.insert(
            result.entry_id,
            Minted {
                revision,
                rotate_at: rotate_at(received, leaf.not_after),
                material: Arc::new(X509Material::new(
                    result.cert_chain,
                    key,
                    leaf.not_after
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64),
                )),
            },
        );
        Ok(())
    })
}

/// One item of a batch signing answer.
trait SignedItem {
    fn entry_id(&self) -> &str;
    /// A google.rpc.Code value; 0 when signed.
    fn code(&self) -> i32;
    fn message(&self) -> &str;
}

impl SignedItem for pb::X509SvidResult {
    fn entry_id(&self) -> &str {
        &self.entry_id
    }
    fn code(&self) -> i32 {
        self.code
    }
    fn message(&self) -> &str {
        &self.message
    }
}

impl SignedItem for pb::WitSvidResult {
    fn entry_id(&self) -> &str {
        &self.entry_id
    }
    fn code(&self) -> i32 {
        self.code
    }
    fn message(&self) -> &str {
        &self.message
    }
}

/// Matches a batch's results to the keys made for them (with their entry
/// revisions): each signed item goes to `accept`, which says why it is
/// unusable if it is; refused and unusable items are reported together as
/// `<entry>: <why>`.
fn settle<K, R: SignedItem>(
    what: &'static str,
    mut pending: HashMap<String, (K, i64)>,
    results: Vec<R>,
    mut accept: impl FnMut(R, K, i64) -> Result<(), &'static str>,
) -> Result<(), MintError> {
    let mut failed = Vec::new();
    for result in results {
        let Some((key, revision)) = pending.remove(result.entry_id()) else {
            continue;
        };
        if result.code() != 0 {
            failed.push(format!("{}: {}", result.entry_id(), result.message()));
            continue;
        }
        let entry_id = result.entry_id().to_owned();
        if let Err(why) = accept(result, key, revision) {
            failed.push(format!("{entry_id}: {why}"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(MintError::Items {
            what,
            failed: failed.join("; "),
        })
    }
}
